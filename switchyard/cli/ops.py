"""Operations: ``trace`` a run, ``audit verify`` its journal (links and replay), ``dlq list|show|replay`` and
``status``."""

from __future__ import annotations

import base64
import datetime
from typing import Annotated, Any

import msgspec
import typer
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from switchyard.cli.app import JsonOpt, app, client, dump, err, load_settings, once, out
from switchyard.client import Audit, SwitchyardClient
from switchyard.protocol.audit import Verification
from switchyard.protocol.bus.provision import open_bucket
from switchyard.protocol.codec import nests_deeper
from switchyard.protocol.events import EventType
from switchyard.protocol.messages import Entry, Event
from switchyard.protocol.subjects import Bucket, check_token
from switchyard.settings import Settings
from switchyard.supervisor.catalog import WorkflowCatalog, definitions_of
from switchyard.supervisor.journal import Definitions

audit_app = typer.Typer(help="The tamper-evident audit trail.", no_args_is_help=True)
dlq_app = typer.Typer(help="Dead letters: what could not be processed, and why.",
                      no_args_is_help=True)
app.add_typer(audit_app, name="audit")
app.add_typer(dlq_app, name="dlq")
UNATTRIBUTED = "(unattributed)"


async def definitions(settings: Settings, bus: SwitchyardClient) -> Definitions:
    """The definitions a replay folds under: the configured workflows and those on the bus,
    admitted under the configured policy, as the supervisor does."""
    kv = await open_bucket(bus.js, settings.subjects.bucket(Bucket.WORKFLOW_DEFS), history=5)
    return definitions_of(WorkflowCatalog(settings.load_workflows(), kv,
                                          policy=settings.load_policy()))


async def run_events(bus: SwitchyardClient, settings: Settings, workflow_id: str) -> list[Event]:
    """A run as records of what happened: its journal folded again (what the supervisor
    decided at each input, or why it changed nothing), with its tool calls, in time order."""
    audit = await bus.audit(workflow_id, await definitions(settings, bus))
    events: list[Event] = []
    for step in audit.replay.steps:
        rec, t = step.read.record, step.transition
        if t.changed:
            entries = t.entries
        else:
            why = step.read.refused or t.ignored
            entries = [Entry(type=EventType.INPUT_IGNORED, data={
                "kind": step.read.kind, "reason": why, "stream_seq": rec.seq})]
        events.append(Event(workflow_id=workflow_id, at=rec.at, source="journal",
                            entries=entries, n=rec.seq))
    events += await bus.events(workflow_id)
    return sorted(events, key=lambda e: e.at)


@app.command()
def trace(workflow_id: str, json_out: JsonOpt = False) -> None:
    """One run as a tree, folded from its journal: steps with timings, confidence and agent,
    tool calls, escalations and decisions, and inputs that changed nothing (with why)."""
    settings = load_settings()

    async def main() -> list[Event]:
        check_token("workflow id", workflow_id)
        async with client(settings) as bus:
            return await run_events(bus, settings, workflow_id)

    events = once(main())
    if not events:
        err.print(f"[red]no journal for workflow {escape(repr(workflow_id))}[/]")
        raise typer.Exit(1)
    if json_out:
        dump([msgspec.to_builtins(e) for e in events])
        return
    out.print(trace_tree(workflow_id, events))


def model_line(d: dict[str, Any]) -> str:
    """A result's model use, as the trace shows it."""
    if not d.get("model"):
        return ""
    line = f"  model {d['model']}"
    if d.get("calls"):
        line += (f": {d['calls']} call(s), {d.get('input_tokens', 0)}+{d.get('output_tokens', 0)} "
                 f"tokens, {float(d.get('cost_usd', 0)):.6f} USD, "
                 f"{float(d.get('latency_ms', 0)):.0f} ms")
        if d.get("cache_hits"):
            line += f", {d['cache_hits']} cached"
    if d.get("tried"):
        line += f"; passed over: {'; '.join(map(str, d['tried']))}"
    return line


def trace_tree(workflow_id: str, events: list[Event]) -> Tree:
    """The tree ``trace`` prints. A tool call is shown under the step attempt whose task made it,
    whatever order the records were stored in: the tool host's record can reach the chain before
    the supervisor's dispatch record, which goes out beside the task."""
    start = events[0].at
    first = events[0].entries[0].data if events[0].entries else {}
    root = Tree(f"[bold]{escape(workflow_id)}[/] ({escape(str(first.get('workflow', '')))})")
    attempts: dict[str, Tree] = {}  # task id -> its node
    early: dict[str, list[str]] = {}  # task id -> tool lines recorded before its dispatch
    for ev, e in ((record, e) for record in events for e in record.entries):
        at = f"+{(ev.at - start) * 1000:8.1f} ms"
        d = e.data
        if e.type == EventType.STEP_DISPATCHED:
            task = str(d.get("task_id"))
            node = attempts[task] = root.add(
                f"{at}  [bold]{escape(e.step)}[/] #{d.get('attempt')} -> {escape(str(d.get('role')))}"
                + (f"  tools {escape(str(d.get('tools')))}" if d.get("tools") else "")
                + (f"  model {escape(str(d['model']))} ({escape(str(d.get('model_reason')))})"
                   if d.get("model") else ""))
            for line in early.pop(task, []):
                node.add(line)
        elif e.type.startswith("tool."):
            extra = d.get("code") or (f"approved by {d['approved_by']}" if d.get("approved_by") else "")
            line = escape(f"{at}  {e.type} {d.get('tool', '')} {extra}".rstrip())
            task = str(d.get("task", ""))
            if task in attempts:
                attempts[task].add(line)
            else:
                early.setdefault(task, []).append(line)
        elif e.type.startswith("step.") and e.type not in (EventType.STEP_SKIPPED,
                                                           EventType.STEP_ROUTED):
            node = next((n for t, n in reversed(attempts.items()) if f":{e.step}:" in t), root)
            conf = d.get("confidence")
            node.add(escape(f"{at}  {e.type.split('.', 1)[1]}"
                     + (f"  confidence {conf:.2f}" if isinstance(conf, float) else "")
                     + (f"  {d['duration_ms']:.1f} ms in {d.get('agent')}" if d.get("duration_ms") else "")
                     + (f"  {d['error']}" if d.get("error") else "")
                     + model_line(d)))
        else:
            detail = d.get("reason") or (f"{d.get('action')} by {d['reviewer']}"
                                         if d.get("reviewer") else "") or d.get("to") or ""
            if d.get("model_calls"):
                detail += (f" (models: {d['model_calls']} calls, {d.get('input_tokens', 0)}+"
                           f"{d.get('output_tokens', 0)} tokens, "
                           f"{float(d.get('cost_usd', 0)):.6f} USD)")
            root.add(f"{at}  [bold]{escape(e.type)}[/] {escape(f'{e.step} {detail}'.rstrip())}")
    for lines in early.values():  # calls under a task that was never dispatched here
        for line in lines:
            root.add(line)
    return root


@audit_app.command("verify")
def audit_verify(
    workflow_ids: Annotated[list[str] | None, typer.Argument(help="workflow ids")] = None,
    unattributed: Annotated[bool, typer.Option(
        help="also check the chain of records that belong to no workflow")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Check each workflow's journal and replay it. The links: every record names the sequence
    and SHA-256 of the record before it, and so do the tool-call records beside it. The replay:
    the engine, folded again over the recorded inputs under the configured definitions, must
    reproduce every task a result answers, every escalation a decision answers, every timer and
    notice, and the outcome; it names the first input where it does not. Exits 1 on any
    problem."""
    settings = load_settings()
    if not workflow_ids and not unattributed:
        err.print("[red]name at least one workflow id, or --unattributed[/]")
        raise typer.Exit(2)

    async def main() -> tuple[dict[str, Audit], Verification | None]:
        for wid in workflow_ids or []:
            check_token("workflow id", wid)
        async with client(settings) as bus:
            found = await definitions(settings, bus)
            audits = {wid: await bus.audit(wid, found) for wid in workflow_ids or []}
            return audits, (await bus.verify(None) if unattributed else None)

    audits, loose = once(main())
    ok = all(a.ok for a in audits.values()) and (loose is None or loose.ok
                                                 or loose.records == 0)
    if json_out:
        dump({**{wid: a.as_dict() for wid, a in audits.items()},
              **({UNATTRIBUTED: loose.as_dict()} if loose is not None else {})})
    else:
        for a in audits.values():
            print_audit(a)
        if loose is not None:
            print_chain(UNATTRIBUTED, loose)
    if not ok:
        raise typer.Exit(1)


def print_audit(a: Audit) -> None:
    chain, r = a.chain, a.replay
    status = r.state.status if r.state is not None else "no run"
    if not chain.reads:
        out.print(f"[red]NOT FOUND[/] {escape(a.workflow_id)}: no journal (never submitted, or "
                  "aged out)")
        return
    if a.ok:
        out.print(f"[green]ok[/] {escape(a.workflow_id)}: journal {len(chain.reads)} records "
                  f"(last seq {chain.last_seq}, head {chain.head[:16]}), replay reproduces "
                  f"what was sent ({escape(status)})"
                  + (f"; {a.calls.records} tool-call records" if a.calls else ""))
    else:
        out.print(f"[red]BROKEN[/] {escape(a.workflow_id)}: journal {len(chain.reads)} records")
        for problem in a.problems:
            out.print(f"  {problem}", markup=False, soft_wrap=True)
        if r.divergence:
            out.print(f"  replay diverges at {r.divergence}", markup=False, soft_wrap=True)
        if a.calls is not None and not a.calls.ok:
            for problem in a.calls.problems:
                out.print(f"  tool calls: {problem}", markup=False, soft_wrap=True)
    for note in [*a.refused, *r.notes]:
        out.print(f"  note: {note}", markup=False, soft_wrap=True)


def print_chain(name: str, v: Verification) -> None:
    if v.records == 0:
        out.print(f"[green]ok[/] {escape(name)}: no records")
    elif v.ok:
        writers = ", ".join(f"{w} {n}" for w, n in sorted(v.writers.items()))
        out.print(f"[green]ok[/] {escape(name)}: {v.records} records, {v.entries} entries, "
                  f"seq {v.first_seq}..{v.last_seq}, head {v.head[:16]} ({escape(writers)})")
    else:
        out.print(f"[red]BROKEN[/] {escape(name)}: {v.records} records")
        for problem in v.problems:
            out.print(f"  {escape(problem)}", markup=False)


@dlq_app.command("list")
def dlq_list(
    kind: Annotated[str, typer.Option(
        help="task, result, tool, submit, decision or journal")] = "",
    limit: Annotated[int, typer.Option(help="the newest this many")] = 100,
    json_out: JsonOpt = False,
) -> None:
    """The newest dead letters: when, what kind, why (code and reason), who refused it."""

    settings = load_settings()

    async def main() -> list[Any]:
        if kind:
            check_token("dead-letter kind", kind)
        async with client(settings) as bus:
            return await bus.dead_letters(kind=kind, limit=limit)

    letters = once(main())
    if json_out:
        dump([d.summary() for d in letters])
        return
    table = Table(title=f"dead letters ({len(letters)})")
    for col in ("seq", "at", "kind", "code", "reason", "source", "deliveries"):
        table.add_column(col)
    for d in letters:
        at = datetime.datetime.fromtimestamp(d.at).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(str(d.seq), at, *(escape(printable(v)) for v in (
            d.kind, d.code, d.reason[:80], d.source, d.deliveries or "-")))
    out.print(table)


@dlq_app.command("show")
def dlq_show(seq: int, json_out: JsonOpt = False) -> None:
    """One dead letter: its headers and its original body."""
    settings = load_settings()

    async def main() -> Any:
        async with client(settings) as bus:
            return await bus.dead_letter(seq)

    try:
        letter = once(main())
    except LookupError as exc:
        err.print(f"[red]{escape(str(exc))}[/]")
        raise typer.Exit(1) from None
    body = body_view(letter.data)
    if json_out:
        dump({**letter.summary(), **body})
        return
    for key, value in letter.summary().items():
        out.print(f"[bold]{key}[/]: {escape(printable(str(value)))}")
    out.print(f"[bold]body[/] ({body['body_encoding']}):")
    if body["body_encoding"] == "json":
        out.print_json(data=body["body"])
    else:
        out.print(escape(str(body["body"])), markup=False)


SHOWN_DEPTH = 64  # deeper JSON is shown as text: rendering it as a tree would recurse too far
SHOWN_BYTES = 64 * 1024


def body_view(data: bytes) -> dict[str, object]:
    """A stored body as something every renderer can show: JSON when it is JSON of a sane depth,
    else its text, else (not UTF-8) its bytes in base64; truncated past ``SHOWN_BYTES``."""
    view: dict[str, object] = {"bytes": len(data), "truncated": len(data) > SHOWN_BYTES}
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return {**view, "body_encoding": "base64",
                "body": base64.b64encode(data[:SHOWN_BYTES]).decode()}
    if not view["truncated"] and not nests_deeper(data, SHOWN_DEPTH):  # looked at, not parsed
        try:
            doc = msgspec.json.decode(data)
        except msgspec.DecodeError:
            doc = None
        else:
            return {**view, "body_encoding": "json", "body": doc}
    return {**view, "body_encoding": "text", "body": text[:SHOWN_BYTES]}


def printable(text: str) -> str:
    """One line a terminal shows as it is: control characters written as escapes."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@dlq_app.command("replay")
def dlq_replay(seqs: list[int]) -> None:
    """Put dead letters back where they were going (new message ids), once the cause is fixed;
    each replay is audited. A journal record is appended again at its journal's end; a refused
    submission starts a new run, ``<id>-replay<seq>`` (a run id is used once). Tool calls are
    not replayed (retry their task instead)."""
    settings = load_settings()

    async def main() -> list[tuple[int, int | str]]:
        done: list[tuple[int, int | str]] = []
        async with client(settings) as bus:
            for seq in seqs:
                try:
                    done.append((seq, await bus.replay(seq, operator=settings.user)))
                except (LookupError, ValueError) as exc:
                    done.append((seq, str(exc)))
        return done

    failed = False
    for seq, result in once(main()):
        if isinstance(result, int):
            out.print(f"replayed {seq}: stream sequence {result}")
        else:
            failed = True
            err.print(f"[red]{escape(result)}[/]")
    if failed:
        raise typer.Exit(1)


@app.command()
def status(json_out: JsonOpt = False) -> None:
    """Live agents and tool hosts (from $SRV), their counters, workflows in flight and waiting."""

    settings = load_settings()

    async def main() -> dict[str, Any]:
        async with client(settings) as bus:
            return {"services": await bus.services(),
                    "workflows": await bus.workflow_counts(),
                    "escalations_waiting": len(await bus.escalations()),
                    "unserved_tasks": await bus.unserved()}

    data = once(main())
    if json_out:
        dump(data)
        return
    table = Table(title="services")
    for col in ("name", "version", "instance", "counters", "circuits"):
        table.add_column(col)
    for svc in sorted(data["services"], key=lambda s: s["name"]):
        endpoints = svc["stats"].get("endpoints") or [{}]
        counters = dict(endpoints[0].get("data") or {})
        breakers = counters.pop("breakers", None) or {}
        cache = counters.pop("model_cache", None) or {}
        shown = ", ".join(f"{k} {v}" for k, v in counters.items() if k != "role")
        if cache:
            shown += f", model cache {cache.get('hits', 0)} hits {cache.get('misses', 0)} misses"
        tripped = [f"[red]{n} {b['state']}[/] ({b['failures']} failures)"
                   for n, b in breakers.items() if b["state"] != "closed"]
        circuits = ", ".join(tripped) or (f"{len(breakers)} closed" if breakers else "-")
        table.add_row(svc["name"], svc.get("version", ""), svc["id"][:10], shown, circuits)
    out.print(table)
    flows = ", ".join(f"{k} {v}" for k, v in sorted(data["workflows"].items())) or "none"
    out.print(f"workflows: {flows}; escalations waiting for people: "
              f"{data['escalations_waiting']}")
    for subject, waiting in data["unserved_tasks"].items():
        out.print(f"[yellow]{waiting} task(s) wait on {escape(subject)} and no consumer serves it[/] "
                  "(start an agent for that role; tasks no workflow awaits are dead-lettered)")
