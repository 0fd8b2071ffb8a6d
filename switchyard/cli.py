"""The ``switchyard`` command line. Signals are handled here and only here."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import msgspec
import nats
import structlog
import typer
from prometheus_client import CollectorRegistry, start_http_server
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from switchyard.agents._main import run as run_on_loop
from switchyard.settings import Settings

if TYPE_CHECKING:
    from switchyard.client import SwitchyardClient

T = TypeVar("T")
app = typer.Typer(help="Switchyard: a governed team of AI agents on a NATS bus.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
agent_app = typer.Typer(help="Run agent processes.", no_args_is_help=True)
tools_app = typer.Typer(help="Run the tool host.", no_args_is_help=True)
supervisor_app = typer.Typer(help="Run the supervisor.", no_args_is_help=True)
protocol_app = typer.Typer(help="The wire protocol, for other languages.", no_args_is_help=True)
policy_app = typer.Typer(help="The tool policy.", no_args_is_help=True)
workflow_app = typer.Typer(help="Workflow definitions on the bus.", no_args_is_help=True)
review_app = typer.Typer(help="Escalations waiting for a person.", invoke_without_command=True)
audit_app = typer.Typer(help="The tamper-evident audit trail.", no_args_is_help=True)
dlq_app = typer.Typer(help="Dead letters: what could not be processed, and why.",
                      no_args_is_help=True)
app.add_typer(agent_app, name="agent")
app.add_typer(tools_app, name="tools")
app.add_typer(supervisor_app, name="supervisor")
app.add_typer(protocol_app, name="protocol")
app.add_typer(review_app, name="review")
app.add_typer(workflow_app, name="workflow")
app.add_typer(policy_app, name="policy")
app.add_typer(audit_app, name="audit")
app.add_typer(dlq_app, name="dlq")

out = Console()
err = Console(stderr=True)
BUILTIN_AGENTS = {r: f"switchyard.agents.{r}:agent"
                  for r in ("triage", "retrieval", "action", "compliance", "reviewer")}
SHUTDOWN_LIMIT_S = 15.0  # after a stop signal: time to drain before in-flight work is cancelled
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]


def _settings() -> Settings:
    settings = Settings()
    level = getattr(logging, settings.log_level.upper(), logging.INFO)
    tail: list[Any] = (
        [structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)]
        if sys.stderr.isatty()
        else [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            *tail,
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(level),
    )
    return settings


def _metrics(settings: Settings) -> CollectorRegistry:
    """This process's registry; served on 127.0.0.1:SWITCHYARD_METRICS_PORT when that is set."""
    registry = CollectorRegistry()
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr="127.0.0.1", registry=registry)
    return registry


def _serve(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run until SIGINT/SIGTERM sets the stop event; a second signal cancels outright."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()

        def on_signal() -> None:
            if stop.is_set() and task is not None:
                task.cancel()
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        watchdog = asyncio.create_task(_orphan_watch(stop))
        work = asyncio.create_task(main(stop))
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():  # drain, but not forever (a dead bus must not hold us)
                try:
                    async with asyncio.timeout(SHUTDOWN_LIMIT_S):
                        await asyncio.shield(work)
                except TimeoutError:
                    err.print(f"shutdown took over {SHUTDOWN_LIMIT_S:g} s; stopping now")
                    work.cancel()
            await work
        finally:
            watchdog.cancel()
            stopping.cancel()

    try:
        run_on_loop(runner())
    except asyncio.CancelledError:
        raise typer.Exit(130) from None


async def _orphan_watch(stop: asyncio.Event) -> None:
    """A process started by ``switchyard up`` stops (gracefully) when that parent is gone, even
    if it was killed outright and could not pass the signal on."""
    parent = os.environ.get("SWITCHYARD_PARENT_PID")
    if not parent:
        return
    if not hasattr(os, "pidfd_open"):  # not Linux: notice being handed to another parent
        while os.getppid() == int(parent):  # noqa: ASYNC110 - no exit event to wait on here
            await asyncio.sleep(1.0)
        stop.set()
        return
    try:
        fd = os.pidfd_open(int(parent))
    except (OSError, ValueError):  # already gone
        stop.set()
        return
    gone = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(fd, gone.set)  # a pidfd becomes readable when the process exits
    try:
        await gone.wait()
        stop.set()
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def _once(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@contextlib.asynccontextmanager
async def _client(settings: Settings) -> AsyncIterator[SwitchyardClient]:
    """A client on the configured bus, closed afterwards (exit 2 when nothing answers)."""
    from switchyard.client import SwitchyardClient

    nc = await _connect(settings)
    try:
        yield SwitchyardClient(nc, settings.subjects)
    finally:
        await nc.close()


async def _connect(settings: Settings) -> nats.NATS:
    from switchyard.stack import nats_answers

    if await nats_answers(settings.nats_url):
        return await nats.connect(settings.nats_url, **settings.connect_options())
    else:
        err.print(f"[red]no NATS server answers at {settings.nats_url}[/] "
                  "(start the stack with `switchyard up`)")
        raise typer.Exit(2) from None


def _dump(value: Any) -> None:
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(value), indent=2).decode() + "\n")


# processes ----------------------------------------------------------------------------------


@agent_app.command("run")
def agent_run(target: Annotated[str, typer.Argument(
        help="A built-in role (triage, retrieval, action, compliance, reviewer) or module:attr")]
) -> None:
    """Run one agent process."""
    settings = _settings()
    spec = BUILTIN_AGENTS.get(target, target)
    module_name, _, attr = spec.partition(":")
    if not attr:
        err.print(f"[red]{target!r} is neither a built-in role nor module:attr[/]")
        raise typer.Exit(2)
    sys.path.insert(0, os.getcwd())
    agent = getattr(importlib.import_module(module_name), attr)
    registry = _metrics(settings)
    _serve(lambda stop: agent.serve(stop, settings.agent_config(), metrics=registry))


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
    from switchyard.tools.trust import resolve_trusted_keys

    settings = _settings()
    metrics = _metrics(settings)
    servers = [McpServerConfig.parse(spec) for spec in mcp or []]

    async def main(stop: asyncio.Event) -> None:
        nc = await nats.connect(settings.nats_url, name="sy-toolhost",
                                **settings.connect_options())
        registry, store = support_registry(settings.data_dir / "support.db")
        sys.path.insert(0, os.getcwd())
        for spec in extra or []:
            module_name, _, attr = spec.partition(":")
            for t in getattr(importlib.import_module(module_name), attr):
                registry.add(t)
        async with contextlib.AsyncExitStack() as stack:
            for server in servers:
                bridge = await stack.enter_async_context(McpBridge(server))
                for t in bridge.tools:
                    registry.add(t)
            trusted = await resolve_trusted_keys(nc.jetstream(), settings.subjects,
                                                 settings.trusted())
            async with ToolHost(nc, registry, settings.toolhost_config(trusted), metrics=metrics):
                await stop.wait()
        await nc.drain()
        store.close()

    _serve(main)


@supervisor_app.command("run")
def supervisor_run() -> None:
    """Run the supervisor."""
    from switchyard.supervisor import Supervisor

    settings = _settings()
    registry = _metrics(settings)
    _serve(lambda stop: Supervisor(settings.supervisor_config(), metrics=registry).serve(stop))


SecureOpt = Annotated[bool, typer.Option(
    "--secure", help="run an embedded nats-server under the authorization generated from the "
                     "policy, each process with its own credentials")]


@app.command()
def up(secure: SecureOpt = False) -> None:
    """Start NATS (embedded if none answers), the supervisor, the tool host and five agents."""
    from switchyard.protocol.errors import ConfigError
    from switchyard.stack import LocalStack

    settings = _settings()

    async def main(stop: asyncio.Event) -> None:
        stack = LocalStack(settings, secure=secure)
        try:
            with err.status("starting the stack…"):
                await stack.start()
        except ConfigError as exc:
            err.print(f"[red]{exc}[/]")
            raise typer.Exit(2) from None
        where = "embedded nats-server" if stack.nats else "existing NATS"
        out.print(f"[green]Switchyard is up[/] on {stack.url} ({where}); "
                  f"{len(stack.procs)} processes, logs in {stack.log_dir}. Ctrl-C stops.")
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

    _serve(main)


# using it -----------------------------------------------------------------------------------


@app.command()
def demo(
    json_out: JsonOpt = False,
    tickets: Annotated[Path | None, typer.Option(help="YAML file of tickets")] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the batch")] = 120.0,
    secure: SecureOpt = False,
) -> None:
    """Start the stack, work a batch of sample tickets, print a summary, stop."""
    from switchyard.demo import report_json, run_demo, sample_tickets

    settings = _settings()
    batch = sample_tickets(tickets)
    if json_out:
        report = _once(run_demo(settings, batch, timeout=timeout, secure=secure))
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

    err.print("starting NATS, the supervisor, the tool host and five agents…")
    with progress:
        report = _once(run_demo(settings, batch, timeout=timeout, on_progress=on_progress,
                                secure=secure))
    table = Table(title=f"{report.tickets} tickets in {report.elapsed_s:.1f} s "
                        f"(stack start {report.startup_s:.1f} s)")
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
    counts = ", ".join(f"{k} {v}" for k, v in sorted(report.counts.items()))
    out.print(f"{counts}; {report.matched}/{report.tickets} as the sample set expects.")
    if secure:
        out.print(f"secured bus: {len(report.violations)} permission violations in the server log")
        for line in report.violations[:20]:
            out.print(f"  {line}")
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def chaos(
    scenario: Annotated[list[str] | None, typer.Option(
        help="agents, supervisor, nats, poison (repeatable; default all)")] = None,
    scale: Annotated[str, typer.Option(help="ci (minutes) or full (the issue's sizes)")] = "ci",
    seed: Annotated[int, typer.Option(help="seeds the fault points and the kills")] = 1,
    json_file: Annotated[Path | None, typer.Option("--json", help="also write JSON here")] = None,
) -> None:
    """Run the real stack under named, seeded faults and count: submitted, completed, escalated,
    lost, duplicated side effects, faults fired. Exit 1 if any scenario lost or duplicated
    anything, or a fault it asked for never fired."""
    from switchyard.chaos import SCENARIOS, SIZES, reports_json, run_scenario

    _settings()
    names = scenario or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or scale not in SIZES:
        err.print(f"[red]unknown scenario {unknown} or scale {scale!r}[/] "
                  f"(scenarios: {', '.join(SCENARIOS)}; scales: {', '.join(SIZES)})")
        raise typer.Exit(2)
    reports = []
    for name in names:
        err.print(f"· {name} ({scale}, seed {seed})")
        reports.append(asyncio.run(run_scenario(name, scale=scale, seed=seed)))
    table = Table(title="fault injection (acknowledged work only)")
    for col in ("scenario", "submitted", "acked", "completed", "escalated", "failed", "lost",
                "dup effects", "faults fired", "kills", "restarts", "s", "ok"):
        table.add_column(col)
    for r in reports:
        fired = ", ".join(f"{k.split('.', 1)[1]} {v}" for k, v in sorted(r.faults_fired.items()))
        table.add_row(r.scenario, str(r.submitted), str(r.acknowledged), str(r.completed),
                      str(r.escalated), str(r.failed), str(r.lost), str(r.duplicated_effects),
                      fired or "-", str(r.kills), str(r.restarts), f"{r.elapsed_s:.0f}",
                      "[green]yes[/]" if r.ok else "[red]NO[/]")
    out.print(table)
    for r in reports:
        if r.scenario == "poison":
            out.print(f"poison: {r.dead_lettered}/{r.bad_inputs} bad inputs dead-lettered with a "
                      f"reason; processes restarted: {len(r.processes_restarted)}")
        for problem in r.problems:
            out.print(f"[red]{r.scenario}: {problem}[/]")
    if json_file is not None:
        json_file.write_bytes(reports_json(reports))
    raise typer.Exit(0 if all(r.ok for r in reports) else 1)


@app.command()
def bench(
    quick: Annotated[bool, typer.Option(help="a smaller run, under a minute")] = False,
    json_file: Annotated[Path | None, typer.Option("--json", help="also write JSON here")] = None,
) -> None:
    """Measure Switchyard beside raw JetStream and raw core NATS, on a nats-server of its own."""
    from switchyard.bench import FULL, QUICK, report_json, run_bench

    _settings()
    report = run_on_loop(run_bench(QUICK if quick else FULL, lambda m: err.print(f"· {m}")))
    table = Table(title="five-hop workflows (median of windows)")
    for col in ("pipeline", "fsync", "in flight", "steps", "payload", "wf/s", "p50 ms", "p99 ms",
                "CPU µs/wf", "CPU µs/step", "other CPU %"):
        table.add_column(col, justify="right" if col not in ("pipeline", "fsync") else "left")
    for r in report.rows:
        table.add_row(r.pipeline, r.sync, str(r.inflight), str(r.steps),
                      f"{r.payload_bytes // 1024} KB", f"{r.workflows_per_s:,.0f}",
                      f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}",
                      f"{sum(r.cpu_us_per_workflow.values()):,.0f}", f"{r.cpu_us_per_step:,.0f}",
                      f"{r.other_cpu_pct:.0f}")
    (out if out.is_terminal else Console(width=160)).print(table)
    for k, v in {**report.ratios, **report.growth}.items():
        out.print(f"{k}: {v}", markup=False)
    if json_file is not None:
        json_file.write_bytes(report_json(report) + b"\n")
        out.print(f"wrote {json_file}")


@app.command()
def submit(
    text: Annotated[str | None, typer.Argument(help="ticket text")] = None,
    file: Annotated[Path | None, typer.Option(help="JSON file with the workflow input")] = None,
    email: Annotated[str | None, typer.Option(help="customer email")] = None,
    workflow: str = "support",
    timeout: float = 60.0,
    json_out: JsonOpt = False,
) -> None:
    """Submit a ticket, wait, print the outcome. Exit 0 completed, 1 failed or rejected,
    3 waiting for a person, 4 timed out."""

    if (text is None) == (file is None):
        err.print("[red]give the ticket text or --file, not both[/]")
        raise typer.Exit(2)
    payload: dict[str, Any] = json.loads(file.read_text()) if file else {"text": text}
    if email:
        payload["customer_email"] = email
    settings = _settings()

    async def main() -> Any:
        async with _client(settings) as client:
            wid = await client.submit(workflow, payload)
            return await client.wait(wid, timeout=timeout)

    res = _once(main())
    code = {"completed": 0, "escalated": 3, "timeout": 4}.get(res.status, 1)
    if json_out:
        _dump({"workflow_id": res.workflow_id, "status": res.status, "reason": res.reason,
               "escalation_id": res.escalation_id,
               "outcome": msgspec.to_builtins(res.outcome) if res.outcome else None})
        raise typer.Exit(code)
    out.print(f"workflow [bold]{res.workflow_id}[/]: [bold]{res.status}[/]"
              + (f" — {res.reason}" if res.reason else ""))
    if res.outcome and res.outcome.output:
        reply = res.outcome.output.get("reply")
        out.print(reply if isinstance(reply, str) else res.outcome.output)
    raise typer.Exit(code)


@review_app.callback()
def review(
    ctx: typer.Context, json_out: JsonOpt = False,
    queue: Annotated[str | None, typer.Option(help="only this queue ('' is the default)")] = None,
) -> None:
    """List escalations waiting for a person (see the subcommands to decide one)."""
    if ctx.invoked_subcommand is not None:
        return

    settings = _settings()

    async def main() -> list[Any]:
        async with _client(settings) as client:
            return await client.escalations(queue=queue)

    pending = _once(main())
    if json_out:
        _dump([msgspec.to_builtins(e) for e in pending])
        return
    table = Table(title=f"{len(pending)} escalation(s) waiting")
    for col in ("id", "queue", "step", "kind", "reason", "confidence"):
        table.add_column(col)
    for e in pending:
        conf = f"{e.confidence:.2f}" if e.confidence is not None else ""
        table.add_row(e.id, e.queue or "default", e.step, e.kind, e.reason, conf)
    out.print(table)


def _decide(escalation_id: str, action: str, note: str, output: dict[str, Any] | None) -> None:

    settings = _settings()
    reviewer = os.environ.get("USER", "reviewer")

    async def main() -> None:
        async with _client(settings) as client:
            await client.decide(
                escalation_id, action, reviewer=reviewer, output=output, note=note  # type: ignore[arg-type]
            )

    try:
        _once(main())
    except LookupError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    out.print(f"{action} sent for {escalation_id}")


@review_app.command("approve")
def review_approve(escalation_id: str, note: str = "") -> None:
    """Approve: the workflow goes on from where it stopped."""
    _decide(escalation_id, "approve", note, None)


@review_app.command("reject")
def review_reject(escalation_id: str, note: str = "") -> None:
    """Reject: the workflow ends as rejected."""
    _decide(escalation_id, "reject", note, None)


@review_app.command("edit")
def review_edit(
    escalation_id: str,
    output: Annotated[str, typer.Option(help="the step's corrected output, as JSON")],
    note: str = "",
) -> None:
    """Edit the step's output and approve."""
    try:
        value = json.loads(output)
    except json.JSONDecodeError as exc:
        err.print(f"[red]--output is not JSON: {exc}[/]")
        raise typer.Exit(2) from None
    if not isinstance(value, dict):
        err.print("[red]--output must be a JSON object[/]")
        raise typer.Exit(2)
    _decide(escalation_id, "edit", note, value)


@review_app.command("next")
def review_next(
    queue: Annotated[str, typer.Option(help="the queue to work ('' is the default)")] = "",
) -> None:
    """Claim escalations from a human queue one at a time and decide them interactively."""

    settings = _settings()
    reviewer = os.environ.get("USER", "reviewer")

    async def main() -> None:
        async with _client(settings) as client:
            while (claimed := await client.claim(queue=queue)) is not None:
                esc, msg = claimed
                out.rule(f"{esc.id}")
                out.print(f"[bold]{esc.kind}[/]: {esc.reason}")
                out.print_json(data={"input": esc.input, "output": esc.output})
                choice = typer.prompt("approve / reject / edit / skip", default="skip")
                if choice in ("approve", "reject"):
                    await client.decide(esc.id, choice, reviewer=reviewer)  # type: ignore[arg-type]
                    await msg.ack()
                elif choice == "edit":
                    value = json.loads(typer.prompt("corrected output (JSON object)"))
                    await client.decide(esc.id, "edit", reviewer=reviewer, output=value)
                    await msg.ack()
                else:
                    await msg.nak()
            out.print("nothing is waiting")

    _once(main())


@app.command("nats-config")
def nats_config(
    policy: Annotated[str | None, typer.Option(help="policy file or built-in name")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="where to write the config and keys")] = Path(
        "nats-secure"),
    role: Annotated[list[str] | None, typer.Option(
        help="an agent role beyond the policy's and the workflows' (repeatable)")] = None,
    port: Annotated[int, typer.Option(help="the server's client port")] = 4222,
) -> None:
    """Generate a nats-server config from the policy: one nkey user per identity (admin,
    supervisor, toolhost, console, one per agent role), allow-lists only, per-identity inboxes."""
    from switchyard import buscfg
    from switchyard.protocol.errors import ConfigError
    from switchyard.supervisor.policy import load_policy

    settings = _settings()
    try:
        pol = load_policy(policy or settings.policy)
        workflows = settings.load_workflows()
    except ConfigError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    used, queues = buscfg.deployment_of(workflows.values())
    ids = buscfg.identities(pol, {*pol.roles, *used, *(role or [])}, settings.subjects, queues)
    creds = buscfg.Credentials(out_dir / "creds")
    auth = buscfg.authorization(ids, creds)
    (out_dir / "auth.conf").write_text(auth)
    (out_dir / "nats.conf").write_text(
        buscfg.server_config(auth, store_dir=(out_dir / "jetstream").resolve(), port=port))
    table = Table(title=f"identities ({out_dir / 'nats.conf'})")
    for col in ("identity", "nkey", "publish", "subscribe", "credentials"):
        table.add_column(col)
    for ident in ids:
        table.add_row(ident.name, creds.public_key(ident.name)[:12] + "…",
                      str(len(ident.publish)), str(len(ident.subscribe)),
                      str(creds.seed_file(ident.name)))
    out.print(table)
    out.print(f"Run it: nats-server -c {out_dir / 'nats.conf'}; give each process its key with "
              "SWITCHYARD_NKEY_FILE. Provision streams and buckets as the admin.")


@policy_app.command("check")
def policy_check(
    policy: Annotated[str | None, typer.Argument(help="policy file or built-in name")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Validate the policy (and the configured workflows against it); print the grant matrix."""
    from switchyard.protocol.errors import ConfigError
    from switchyard.supervisor.policy import load_policy

    settings = _settings()
    try:
        pol = load_policy(policy or settings.policy)
        for wf in settings.load_workflows().values():
            pol.check_workflow(wf)
    except ConfigError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    matrix = pol.matrix()
    if json_out:
        _dump({"matrix": matrix, "limits": {t: r.limits for t, r in pol.tools.items() if r.limits},
               "calls_per_task": {r: rule.calls_per_task for r, rule in pol.roles.items()}})
        return
    tools = sorted(pol.tools)
    table = Table(title="effective grants: role by tool")
    table.add_column("role")
    for tool in tools:
        table.add_column(tool)
    table.add_column("calls/task", justify="right")
    for role, allowed in matrix.items():
        table.add_row(role, *[allowed.get(t, "·") for t in tools],
                      str(pol.roles[role].calls_per_task))
    out.print(table)
    for tool, rule in sorted(pol.tools.items()):
        if rule.limits or rule.approval:
            out.print(f"{tool}: limits {rule.limits or 'none'}; approval when {rule.approval}",
                      markup=False)


@workflow_app.command("put")
def workflow_put(file: Path) -> None:
    """Validate a workflow YAML file and put it on the bus; running supervisors pick it up."""
    from switchyard.protocol.errors import ConfigError
    from switchyard.protocol.streams import open_bucket
    from switchyard.supervisor.catalog import put_workflow
    from switchyard.supervisor.workflow import parse_workflow

    settings = _settings()
    text = file.read_text()
    try:
        parse_workflow(text, str(file))  # before touching the bus
    except ConfigError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None

    async def main() -> str:
        async with _client(settings) as client:
            kv = await open_bucket(client.js, settings.subjects.bucket("workflow_defs"), history=5)
            wf = await put_workflow(kv, text, str(file))
            return f"workflow {wf.name!r} ({len(wf.steps)} steps) is on the bus"

    out.print(_once(main()))


@workflow_app.command("list")
def workflow_list() -> None:
    """Workflows put on the bus (the supervisor's built-in ones are not listed)."""
    from switchyard.protocol.streams import open_bucket
    from switchyard.supervisor.catalog import list_workflows

    settings = _settings()

    async def main() -> list[str]:
        async with _client(settings) as client:
            kv = await open_bucket(client.js, settings.subjects.bucket("workflow_defs"), history=5)
            return await list_workflows(kv)

    for name in _once(main()):
        out.print(name)


@app.command()
def trace(workflow_id: str, json_out: JsonOpt = False) -> None:
    """One run's audit trail as a tree: steps with timings, confidence and agent, tool calls,
    escalations and decisions."""
    from rich.tree import Tree


    settings = _settings()

    async def main() -> list[Any]:
        async with _client(settings) as client:
            return await client.events(workflow_id)

    events = _once(main())
    if not events:
        err.print(f"[red]no events recorded for workflow {workflow_id!r}[/]")
        raise typer.Exit(1)
    if json_out:
        _dump([msgspec.to_builtins(e) for e in events])
        return
    start = events[0].at
    first = events[0].entries[0].data if events[0].entries else {}
    root = Tree(f"[bold]{workflow_id}[/] ({first.get('workflow', '')})")
    attempts: dict[str, Any] = {}  # task id -> its node
    for ev, e in ((record, e) for record in events for e in record.entries):
        at = f"+{(ev.at - start) * 1000:8.1f} ms"
        d = e.data
        if e.type == "step.dispatched":
            attempts[str(d.get("task_id"))] = root.add(
                f"{at}  [bold]{e.step}[/] #{d.get('attempt')} -> {d.get('role')}"
                + (f"  tools {d.get('tools')}" if d.get("tools") else ""))
        elif e.type.startswith("tool."):
            node = attempts.get(str(d.get("task")), root)
            extra = d.get("code") or (f"approved by {d['approved_by']}" if d.get("approved_by") else "")
            node.add(f"{at}  {e.type} {d.get('tool', '')} {extra}".rstrip())
        elif e.type.startswith("step.") and e.type not in ("step.skipped", "step.routed"):
            node = next((n for t, n in reversed(attempts.items()) if f":{e.step}:" in t), root)
            conf = d.get("confidence")
            node.add(f"{at}  {e.type.split('.', 1)[1]}"
                     + (f"  confidence {conf:.2f}" if isinstance(conf, float) else "")
                     + (f"  {d['duration_ms']:.1f} ms in {d.get('agent')}" if d.get("duration_ms") else "")
                     + (f"  {d['error']}" if d.get("error") else ""))
        else:
            detail = d.get("reason") or d.get("reviewer") or d.get("to") or ""
            root.add(f"{at}  [bold]{e.type}[/] {e.step} {detail}".rstrip())
    out.print(root)


@audit_app.command("verify")
def audit_verify(workflow_ids: list[str], json_out: JsonOpt = False) -> None:
    """Check that each workflow's audit records form an unbroken hash chain (every record names
    the SHA-256 of the stored record before it). Exits 1 if any chain is broken or empty."""
    settings = _settings()

    async def main() -> dict[str, Any]:
        async with _client(settings) as client:
            return {wid: await client.verify(wid) for wid in workflow_ids}

    results = _once(main())
    if json_out:
        _dump({wid: v.as_dict() for wid, v in results.items()})
    for wid, v in results.items():
        if json_out:
            break
        if v.ok:
            writers = ", ".join(f"{w} {n}" for w, n in sorted(v.writers.items()))
            out.print(f"[green]ok[/] {wid}: {v.records} records, {v.entries} entries, "
                      f"seq {v.first_seq}..{v.last_seq}, head {v.head[:16]} ({writers})")
        else:
            out.print(f"[red]BROKEN[/] {wid}: {v.records} records")
            for problem in v.problems:
                out.print(f"  {problem}")
    if not all(v.ok for v in results.values()):
        raise typer.Exit(1)


@dlq_app.command("list")
def dlq_list(
    kind: Annotated[str, typer.Option(help="task, result, tool, submit or decision")] = "",
    limit: Annotated[int, typer.Option(help="the newest this many")] = 100,
    json_out: JsonOpt = False,
) -> None:
    """The newest dead letters: when, what kind, why (code and reason), who refused it."""
    import datetime

    settings = _settings()

    async def main() -> list[Any]:
        async with _client(settings) as client:
            return await client.dead_letters(kind=kind, limit=limit)

    letters = _once(main())
    if json_out:
        _dump([d.summary() for d in letters])
        return
    table = Table(title=f"dead letters ({len(letters)})")
    for col in ("seq", "at", "kind", "code", "reason", "source", "deliveries"):
        table.add_column(col)
    for d in letters:
        at = datetime.datetime.fromtimestamp(d.at).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(str(d.seq), at, d.kind, d.code, d.reason[:80], d.source, d.deliveries or "-")
    out.print(table)


@dlq_app.command("show")
def dlq_show(seq: int, json_out: JsonOpt = False) -> None:
    """One dead letter: its headers and its original body."""
    settings = _settings()

    async def main() -> Any:
        async with _client(settings) as client:
            return await client.dead_letter(seq)

    try:
        letter = _once(main())
    except LookupError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    try:
        body: Any = json.loads(letter.data)
    except ValueError:
        body = letter.data[:2000].decode(errors="replace")
    if json_out:
        _dump({**letter.summary(), "body": body})
        return
    for key, value in letter.summary().items():
        out.print(f"[bold]{key}[/]: {value}")
    out.print_json(data=body) if not isinstance(body, str) else out.print(repr(body))


@dlq_app.command("replay")
def dlq_replay(seqs: list[int]) -> None:
    """Put dead letters back on their original subjects (new message ids), once the cause is
    fixed; each replay is audited. Tool calls are not replayed (retry their task instead)."""
    settings = _settings()

    async def main() -> list[tuple[int, int | str]]:
        done: list[tuple[int, int | str]] = []
        async with _client(settings) as client:
            for seq in seqs:
                try:
                    done.append((seq, await client.replay(seq, operator=os.environ.get(
                        "USER", "operator"))))
                except (LookupError, ValueError) as exc:
                    done.append((seq, str(exc)))
        return done

    failed = False
    for seq, result in _once(main()):
        if isinstance(result, int):
            out.print(f"replayed {seq}: stream sequence {result}")
        else:
            failed = True
            err.print(f"[red]{result}[/]")
    if failed:
        raise typer.Exit(1)


@app.command()
def status(json_out: JsonOpt = False) -> None:
    """Live agents and tool hosts (from $SRV), their counters, workflows in flight and waiting."""

    settings = _settings()

    async def main() -> dict[str, Any]:
        async with _client(settings) as client:
            return {"services": await client.services(),
                    "workflows": await client.workflow_counts(),
                    "escalations_waiting": len(await client.escalations())}

    data = _once(main())
    if json_out:
        _dump(data)
        return
    table = Table(title="services")
    for col in ("name", "version", "instance", "counters", "circuits"):
        table.add_column(col)
    for svc in sorted(data["services"], key=lambda s: s["name"]):
        endpoints = svc["stats"].get("endpoints") or [{}]
        counters = dict(endpoints[0].get("data") or {})
        breakers = counters.pop("breakers", None) or {}
        shown = ", ".join(f"{k} {v}" for k, v in counters.items() if k != "role")
        tripped = [f"[red]{n} {b['state']}[/] ({b['failures']} failures)"
                   for n, b in breakers.items() if b["state"] != "closed"]
        circuits = ", ".join(tripped) or (f"{len(breakers)} closed" if breakers else "-")
        table.add_row(svc["name"], svc.get("version", ""), svc["id"][:10], shown, circuits)
    out.print(table)
    flows = ", ".join(f"{k} {v}" for k, v in sorted(data["workflows"].items())) or "none"
    out.print(f"workflows: {flows}; escalations waiting for people: "
              f"{data['escalations_waiting']}")


@protocol_app.command("schema")
def protocol_schema(
    out_dir: Annotated[Path, typer.Option("--out", help="directory to write into")] = Path(
        "schema"),
) -> None:
    """Write JSON Schema for every message and an AsyncAPI 3 document of the subjects."""
    from switchyard.protocol.schema import asyncapi, message_schemas

    settings = _settings()
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, schema in message_schemas().items():
        (out_dir / f"{name}.schema.json").write_text(json.dumps(schema, indent=2) + "\n")
    (out_dir / "asyncapi.json").write_text(
        json.dumps(asyncapi(settings.subjects), indent=2) + "\n")
    out.print(f"wrote {len(message_schemas())} message schemas and asyncapi.json to {out_dir}")


def main() -> None:
    app()
