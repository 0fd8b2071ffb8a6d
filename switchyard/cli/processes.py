"""Processes: ``agent run``, ``tools run``, ``supervisor run``, ``up`` and ``demo``; and
``run_agent``, what ``Agent.run()`` hands over to."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlparse

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from switchyard.cli.app import (
    JsonOpt,
    app,
    err,
    load_settings,
    metrics_registry,
    once,
    out,
    serve,
)

if TYPE_CHECKING:
    from switchyard.agents import Agent

agent_app = typer.Typer(help="Run agent processes.", no_args_is_help=True)
tools_app = typer.Typer(help="Run the tool host.", no_args_is_help=True)
supervisor_app = typer.Typer(help="Run the supervisor.", no_args_is_help=True)
app.add_typer(agent_app, name="agent")
app.add_typer(tools_app, name="tools")
app.add_typer(supervisor_app, name="supervisor")
BUILTIN_AGENTS = {r: f"switchyard.agents.{r}:agent"
                  for r in ("triage", "retrieval", "action", "compliance", "reviewer")}
LLM_AGENTS = {r: f"switchyard.agents.llm.{r}:agent" for r in ("triage", "action", "reviewer")}


def run_agent(agent: Agent, *, instance: str = "") -> None:
    """Run ``agent`` in the foreground as ``switchyard agent run`` does: configured by settings
    (``NATS_URL`` and the rest), until SIGINT/SIGTERM. ``instance`` names it in its results
    (``trace`` shows it) instead of host and pid."""
    import dataclasses

    settings = load_settings()
    registry = metrics_registry(settings)
    config = settings.agent_config()
    if instance:
        config = dataclasses.replace(config, instance=instance)
    serve(settings, lambda stop: agent.serve(stop, config, metrics=registry),
          service=f"switchyard-agent-{agent.role}")




def load_agent(target: str, spec: str) -> Agent:
    """The ``Agent`` that ``spec`` (``module:attr``, from the working directory too) names; a
    sentence and exit 2 if it names none."""
    from switchyard.agents import Agent
    from switchyard.protocol.errors import ConfigError

    module_name, _, attr = spec.partition(":")
    if not attr:
        err.print(f"[red]{escape(repr(target))} is neither a built-in role nor module:attr[/]")
        raise typer.Exit(2)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        agent = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ConfigError) as exc:
        err.print(f"[red]cannot load {escape(spec)}: {escape(str(exc))}[/]")
        raise typer.Exit(2) from None
    if not isinstance(agent, Agent):
        err.print(f"[red]{escape(spec)} is a {type(agent).__name__}, not a switchyard.agents.Agent[/]")
        raise typer.Exit(2)
    return agent


@agent_app.command("run")
def agent_run(
    target: Annotated[str, typer.Argument(
        help="A built-in role (triage, retrieval, action, compliance, reviewer) or module:attr")
    ] = "",
    a2a: Annotated[str, typer.Option(
        "--a2a", help="serve --role with the remote A2A agent at this URL instead")] = "",
    role: Annotated[str, typer.Option(help="with --a2a: the role it serves")] = "",
    a2a_key: Annotated[str, typer.Option(
        "--a2a-key", envvar="SWITCHYARD_A2A_KEY", help="with --a2a: its bearer key")] = "",
    skill: Annotated[str, typer.Option(help="with --a2a: the remote skill to ask for")] = "",
    confidence: Annotated[float, typer.Option(
        help="with --a2a: the confidence of a reply that states none", min=0.0, max=1.0)] = 0.8,
    confidence_field: Annotated[str, typer.Option(
        help="with --a2a: the reply's field that states its confidence")] = "confidence",
    shadow: Annotated[bool, typer.Option(
        "--shadow", help="work copies of the role's tasks beside the live agent, dry, for "
                         "comparison only (switchyard eval shadow)")] = False,
) -> None:
    """Run one agent process (or, with --a2a, a bridge to a remote A2A agent)."""
    from switchyard.protocol.errors import ConfigError
    from switchyard.protocol.subjects import check_token

    settings = load_settings()
    if a2a and shadow:
        err.print("[red]--shadow runs an agent of ours beside the live one; a bridge (--a2a) "
                  "cannot be a shadow[/]")
        raise typer.Exit(2)
    if a2a and target:
        err.print(f"[red]--a2a serves --role with a remote agent: name no agent "
                  f"({escape(repr(target))}) beside it[/]")
        raise typer.Exit(2)
    if a2a:
        from switchyard.gateway.bridge import bridge

        try:
            check_token("role", role)
        except ConfigError as exc:
            err.print(f"[red]--role: {escape(str(exc))}[/]")
            raise typer.Exit(2) from None
        if not a2a.startswith(("http://", "https://")):
            err.print(f"[red]--a2a {escape(repr(a2a))} is not an http(s) URL[/]")
            raise typer.Exit(2)
        host = urlparse(a2a).netloc
        run_agent(bridge(a2a, role, key=a2a_key, confidence=confidence,
                         confidence_field=confidence_field, skill=skill),
                  instance=f"a2a:{host}-{os.getpid()}")
        return
    if not target:
        err.print("[red]name the agent (a built-in role or module:attr), or --a2a URL --role R[/]")
        raise typer.Exit(2)
    builtin = {**BUILTIN_AGENTS, **(LLM_AGENTS if settings.agents == "llm" else {})}
    spec = builtin.get(target, target)
    agent = load_agent(target, spec)
    if spec in LLM_AGENTS.values() and settings.model not in settings.catalogue().names():
        err.print(f"[red]the LLM agent {escape(target)} calls model {escape(repr(settings.model))}, "
                  "which the catalogue lacks: set SWITCHYARD_MODEL_BASE_URL (and "
                  "SWITCHYARD_MODEL_NAME) or a SWITCHYARD_MODEL_CATALOGUE naming it[/]")
        raise typer.Exit(2)
    if shadow:
        from switchyard.agents.shadow import ShadowAgent

        agent = ShadowAgent.of(agent)
    run_agent(agent)


@tools_app.command("run")
def tools_run(
    mcp: Annotated[list[str] | None, typer.Option(
        "--mcp", help="also serve an MCP server's tools: name=command [args] (repeatable)")] = None,
    extra: Annotated[list[str] | None, typer.Option(
        "--tools", help="also serve your tools: module:attr naming a ToolRegistry or a list of "
                        "tools (repeatable)")] = None,
) -> None:
    """Run the tool host: the built-in support tools (SQLite in the data dir), plus the tools of
    any MCP servers given, under the same grants, ledger and audit."""
    from switchyard.tools import ToolHost
    from switchyard.tools.builtin import support_registry
    from switchyard.tools.mcp import McpBridge, McpServerConfig

    settings = load_settings()
    metrics = metrics_registry(settings)
    servers = [McpServerConfig.parse(spec) for spec in mcp or []]

    async def main(stop: asyncio.Event) -> None:
        registry, store = support_registry(settings.data_dir / "support.db")
        sys.path.insert(0, os.getcwd())
        for spec in extra or []:
            module_name, _, attr = spec.partition(":")
            for t in getattr(importlib.import_module(module_name), attr):
                registry.add(t)
        try:
            async with contextlib.AsyncExitStack() as stack:
                for server in servers:
                    bridge = await stack.enter_async_context(McpBridge(server))
                    for t in bridge.tools:
                        registry.add(t)
                async with ToolHost(registry, settings.toolhost_config(), metrics=metrics):
                    await stop.wait()
        finally:
            store.close()

    serve(settings, main, service="switchyard-toolhost")


@supervisor_app.command("run")
def supervisor_run() -> None:
    """Run the supervisor."""
    from switchyard.supervisor import Supervisor

    settings = load_settings()
    registry = metrics_registry(settings)
    serve(settings, lambda stop: Supervisor(settings.supervisor_config(), metrics=registry).serve(stop),
          service="switchyard-supervisor")


SecureOpt = Annotated[bool, typer.Option(
    "--secure", help="run an embedded nats-server under the authorization generated from the "
                     "policy, each process with its own credentials")]


@app.command()
def up(secure: SecureOpt = False) -> None:
    """Start NATS (embedded if none answers), the supervisor, the tool host and five agents."""
    from switchyard.protocol.errors import ConfigError
    from switchyard.stack import LocalStack

    settings = load_settings()

    async def main(stop: asyncio.Event) -> None:
        stack = LocalStack(settings, secure=secure, console=True)
        try:
            with err.status("starting the stack…"):
                await stack.start()
        except ConfigError as exc:
            err.print(f"[red]{escape(str(exc))}[/]")
            raise typer.Exit(2) from None
        where = "embedded nats-server" if stack.nats else "existing NATS"
        out.print(f"[green]Switchyard is up[/] on {stack.url} ({where}); "
                  f"{len(stack.procs)} processes, logs in {stack.log_dir}. Ctrl-C stops.",
                  soft_wrap=True)
        out.print(f"  console: http://{settings.console_addr}:{settings.console_port}/ (reviewers "
                  "sign in; `switchyard console add-user NAME` adds one)", soft_wrap=True)
        for name, port in stack.metrics_ports.items():
            out.print(f"  {name}: metrics at http://127.0.0.1:{port}/metrics")
        if settings.tracing:
            out.print(f"  traces to {settings.otel_endpoint or 'the OTLP endpoint OTEL_* names'}")
        if secure:
            out.print("Secured: every process has its own identity. The CLI connects as the "
                      "console with SWITCHYARD_NKEY_FILE="
                      f"{stack.creds.seed_file('console').resolve()}")
        try:
            await stop.wait()
        finally:
            out.print("stopping…")
            await stack.stop()
            if secure:
                found = stack.violations()
                out.print(f"permission violations in the server log: {len(found)}")
                for line in found[:20]:
                    out.print(f"  {line}")

    serve(settings, main)


@app.command()
def demo(
    json_out: JsonOpt = False,
    tickets: Annotated[Path | None, typer.Option(help="YAML file of tickets")] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the batch")] = 120.0,
    secure: SecureOpt = False,
    connect: Annotated[bool, typer.Option(
        "--connect", help="use the stack running at NATS_URL (compose, say) instead of starting one",
    )] = False,
    models: Annotated[str, typer.Option(
        help="which agents: 'reference' (local models) or 'llm' (triage, action and reviewer "
             "call a language model)")] = "",
    base_url: Annotated[str, typer.Option(
        help="with --models llm: an OpenAI-compatible endpoint (…/v1)")] = "",
    model: Annotated[str, typer.Option(help="with --models llm: the model's id there")] = "",
) -> None:
    """Start the stack, work a batch of sample tickets, print a summary, stop."""
    from switchyard.demo import report_json, run_demo, sample_tickets

    use_models(models, base_url, model, connect)
    settings = load_settings()
    batch = sample_tickets(tickets)
    if json_out:
        report = once(run_demo(settings, batch, timeout=timeout, secure=secure,
                                    connect=connect))
        sys.stdout.write(report_json(report).decode() + "\n")
        raise typer.Exit(0 if report.ok else 1)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=out)
    bar = progress.add_task("working tickets", total=len(batch))

    def on_progress(runs: list[Any]) -> None:
        settled = [r for r in runs if r.status != "running"]
        c = {k: sum(r.status == k for r in runs) for k in ("completed", "escalated", "failed")}
        progress.update(bar, completed=len(settled),
                        description=f"completed {c['completed']} · escalated {c['escalated']} · "
                                    f"failed {c['failed']}")

    err.print(f"submitting to the stack at {settings.nats_url}…" if connect else
              "starting NATS, the supervisor, the tool host and five agents…")
    with progress:
        report = once(run_demo(settings, batch, timeout=timeout, on_progress=on_progress,
                                secure=secure, connect=connect))
    started = "" if connect else f" (stack start {report.startup_s:.1f} s)"
    table = Table(title=f"{report.tickets} tickets in {report.elapsed_s:.1f} s{started}")
    for col in ("ticket", "expected", "outcome", "why"):
        table.add_column(col)
    for run in report.runs:
        style = "green" if run.matched else "red"
        expected = f"{run.expect} ({run.expect_kind})" if run.expect_kind else run.expect
        got = f"{run.status} ({run.kind})" if run.kind else run.status
        table.add_row(run.ticket, expected, f"[{style}]{got}[/]", run.reason)
    out.print(table)
    steps = Table(title="per-step time (dispatch to result)")
    for col in ("step", "p50 ms", "max ms", "runs"):
        steps.add_column(col)
    for step, v in report.step_ms.items():
        steps.add_row(step, f"{v['p50']:.1f}", f"{v['max']:.1f}", str(int(v["n"])))
    out.print(steps)
    if report.usage.calls:
        u = report.usage
        out.print(f"models: {u.calls} calls, {u.input_tokens} tokens in, {u.output_tokens} out, "
                  f"{u.cost_usd:.6f} USD, {u.latency_ms / 1000:.1f} s waiting on them")
    counts = ", ".join(f"{k} {v}" for k, v in sorted(report.counts.items()))
    out.print(f"{counts}; {report.matched}/{report.tickets} as the sample set expects.")
    if secure:
        out.print(f"secured bus: {len(report.violations)} permission violations in the server log")
        for line in report.violations[:20]:
            out.print(f"  {line}")
    raise typer.Exit(0 if report.ok else 1)




def use_models(models: str, base_url: str, model: str, connect: bool) -> None:
    """``demo --models llm --base-url URL --model NAME``: the settings the stack's processes
    inherit (``SWITCHYARD_AGENTS``, ``SWITCHYARD_MODEL_BASE_URL``, ``SWITCHYARD_MODEL_NAME``)."""
    if models not in ("", "reference", "llm"):
        err.print(f"[red]--models is 'reference' or 'llm', not {escape(repr(models))}[/]")
        raise typer.Exit(2)
    if (base_url or model) and models != "llm":
        err.print("[red]--base-url and --model go with --models llm[/]")
        raise typer.Exit(2)
    if models and connect:
        err.print("[red]--models chooses the agents of the stack the demo starts; with --connect "
                  "the running stack's agents are what they are[/]")
        raise typer.Exit(2)
    if models:
        os.environ["SWITCHYARD_AGENTS"] = models
    if models == "llm" and not os.environ.get("SWITCHYARD_WORKFLOWS"):
        os.environ["SWITCHYARD_WORKFLOWS"] = "support-llm"  # the same steps, a model's timeouts
    if base_url:
        os.environ["SWITCHYARD_MODEL_BASE_URL"] = base_url
    if model:
        os.environ["SWITCHYARD_MODEL_NAME"] = model
    if models == "llm" and not os.environ.get("SWITCHYARD_MODEL_BASE_URL") \
            and not os.environ.get("SWITCHYARD_MODEL_CATALOGUE"):
        err.print("[red]--models llm needs an endpoint: --base-url http://HOST:PORT/v1 (an "
                  "OpenAI-compatible server: Ollama, vLLM, llama.cpp, a LiteLLM proxy)[/]")
        raise typer.Exit(2)
    if base_url:
        _answers(base_url)


def _answers(base_url: str) -> None:
    """Something answers at ``base_url`` (its ``/models``, which OpenAI-compatible servers
    serve): else say so now, not after 30 tickets escalated."""
    from urllib.parse import urlparse

    import httpx

    if urlparse(base_url).scheme not in ("http", "https") or not urlparse(base_url).hostname:
        err.print(f"[red]--base-url {escape(repr(base_url))} is not an http(s) URL "
                  "(http://host:port/v1)[/]")
        raise typer.Exit(2)
    try:
        httpx.get(f"{base_url.rstrip('/')}/models", timeout=10.0)
    except httpx.HTTPError as exc:
        err.print(f"[red]nothing answers at {escape(base_url)} ({escape(type(exc).__name__)}): "
                  "start the model server first[/]")
        raise typer.Exit(2) from None
