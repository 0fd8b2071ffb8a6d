"""The dashboard and the scrape config say what the code does: every metric a panel asks for is
one some process registers, with the labels it groups by, and the scrape config parses."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from switchyard.agents.model.routing import _ModelMetrics
from switchyard.supervisor.metrics import SupervisorMetrics
from switchyard.tools import ToolHost
from switchyard.tools.registry import ToolRegistry

ROOT = Path(__file__).resolve().parents[1]
OBS = ROOT / "deploy" / "observability"
SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")


def registered() -> dict[str, set[str]]:
    """Every metric name the processes register (as exposed), with its label names."""
    reg = CollectorRegistry()
    SupervisorMetrics(reg)
    _ModelMetrics(reg)
    ToolHost(ToolRegistry(), metrics=reg)
    found: dict[str, set[str]] = {m.name: set() for m in reg.collect()}
    for metric in reg.collect():
        for sample in metric.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    # the agent's own two, registered at start (against the registry it is given then)
    runtime = (ROOT / "agents" / "runtime.py").read_text()
    for name in re.findall(r'"(switchyard_agent_[a-z_]+)"', runtime):
        found.setdefault(name, set()).update({"role", "outcome"})
    return found


def test_every_panel_asks_for_a_registered_metric_by_its_labels() -> None:
    known = registered()
    names = {n for n in known} | {n + s for n in known for s in SUFFIXES}
    dashboard = json.loads((OBS / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 14
    for expr in exprs:
        for metric in re.findall(r"switchyard_[a-z_]+", expr):
            assert metric in names, f"{metric} (in {expr}) is registered by no process"
    asked = {m for e in exprs for m in re.findall(r"switchyard_[a-z_]+", e)}
    for family in ("switchyard_agent_tasks", "switchyard_supervisor_step_seconds",
                   "switchyard_supervisor_escalations", "switchyard_toolhost_calls",
                   "switchyard_agent_model_tokens", "switchyard_agent_model_cost_usd",
                   "switchyard_breaker_state"):
        assert any(m.startswith(family) for m in asked), f"no panel shows {family}"


def test_the_scrape_config_names_every_process_of_switchyard_up() -> None:
    config = yaml.safe_load((OBS / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    processes = [c["labels"]["process"] for c in job["static_configs"]]
    assert processes == ["supervisor", "toolhost", *(f"agent-{r}" for r in (
        "triage", "retrieval", "action", "compliance", "reviewer")), "console"]
    ports = [int(c["targets"][0].rsplit(":", 1)[1]) for c in job["static_configs"]]
    assert ports == list(range(ports[0], ports[0] + len(ports)))  # as `up` assigns them


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return loaded


def mounts(service: dict[str, Any]) -> dict[str, Path]:
    """A service's bind mounts: where in the container -> the file here."""
    found = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("./"):
            found[target] = ROOT / source
    return found


def test_the_profiles_prometheus_scrapes_every_component_service_where_it_serves() -> None:
    services = compose()["services"]
    prometheus = services["prometheus"]
    config_file = mounts(prometheus)["/etc/prometheus/prometheus.yml"]
    (job,) = yaml.safe_load(config_file.read_text())["scrape_configs"]
    (sd,) = job["dns_sd_configs"]
    components = {n for n, s in services.items() if s.get("image", "").startswith("${SWITCHYARD_IMAGE")
                  and "profiles" not in s}
    assert set(sd["names"]) == components and len(sd["names"]) == 9
    port = compose()["x-settings"]["SWITCHYARD_METRICS_PORT"]
    assert port == f"${{SWITCHYARD_METRICS_PORT:-{sd['port']}}}"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


def test_the_collector_config_wires_what_it_defines_and_listens_where_compose_says() -> None:
    collector = compose()["services"]["otel-collector"]
    config_file = mounts(collector)["/etc/otelcol/config.yaml"]
    assert "--config=/etc/otelcol/config.yaml" in collector["command"]
    config = yaml.safe_load(config_file.read_text())
    for pipeline in config["service"]["pipelines"].values():
        for kind in ("receivers", "processors", "exporters"):
            assert set(pipeline.get(kind, [])) <= set(config[kind]), (kind, pipeline)
    assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    assert any(p.endswith(":4318") for p in collector["ports"])
    readme = (ROOT / "README.md").read_text()
    assert "OTEL_EXPORTER_OTLP_ENDPOINT=http://otel-collector:4318" in readme
    # nothing is exported off the compose network by default
    assert set(config["exporters"]) == {"debug"}


def test_grafana_provisions_the_profiles_prometheus_and_the_dashboard_and_phones_no_home() -> None:
    services = compose()["services"]
    grafana = services["grafana"]
    files = mounts(grafana)
    (source,) = yaml.safe_load(
        (files["/etc/grafana/provisioning/datasources"] / "prometheus.yaml").read_text()
    )["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"]
    assert source["url"] == "http://prometheus:9090"
    assert any(p.endswith(":9090") for p in services["prometheus"]["ports"])
    (provider,) = yaml.safe_load(
        (files["/etc/grafana/provisioning/dashboards"] / "switchyard.yaml").read_text()
    )["providers"]
    dashboards = [t for t in files if t.startswith(provider["options"]["path"] + "/")]
    assert [files[t] for t in dashboards] == [OBS / "grafana-dashboard.json"]
    env = grafana["environment"]
    assert env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] in dashboards
    for off in ("GF_ANALYTICS_REPORTING_ENABLED", "GF_ANALYTICS_CHECK_FOR_UPDATES",
                "GF_ANALYTICS_CHECK_FOR_PLUGIN_UPDATES"):
        assert env[off] == "false", off
    # the dashboard's panels ask the data source chosen by its variable, the provisioned one
    dashboard = json.loads((OBS / "grafana-dashboard.json").read_text())
    (variable,) = dashboard["templating"]["list"]
    assert (variable["type"], variable["query"]) == ("datasource", source["type"])
