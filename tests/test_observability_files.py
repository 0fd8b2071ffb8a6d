"""The dashboard and the scrape config say what the code does: every metric a panel asks for is
one some process registers, with the labels it groups by, and the scrape config parses."""

from __future__ import annotations

import json
import re
from pathlib import Path

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
        "triage", "retrieval", "action", "compliance", "reviewer"))]
    ports = [int(c["targets"][0].rsplit(":", 1)[1]) for c in job["static_configs"]]
    assert ports == list(range(ports[0], ports[0] + len(ports)))  # as `up` assigns them
