"""Work: ``submit`` a run, and ``review`` what waits for a person (list, approve, reject, edit,
next)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from switchyard.cli.app import JsonOpt, app, client, dump, err, load_settings, once, out
from switchyard.protocol.messages import Partial

live = Console(stderr=True, soft_wrap=True)  # partial output: beside stdout's outcome
review_app = typer.Typer(help="Escalations waiting for a person.", invoke_without_command=True)
app.add_typer(review_app, name="review")


@app.command()
def submit(
    text: Annotated[str | None, typer.Argument(help="ticket text")] = None,
    file: Annotated[Path | None, typer.Option(help="JSON file with the workflow input")] = None,
    email: Annotated[str | None, typer.Option(help="customer email")] = None,
    workflow: str = "support",
    timeout: float = 60.0,
    stream: Annotated[bool, typer.Option(
        "--stream", help="print the agents' partial output (model tokens) live, on stderr")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Submit a ticket, wait, print the outcome. Exit 0 completed, 1 failed or rejected,
    3 waiting for a person, 4 timed out."""

    if (text is None) == (file is None):
        err.print("[red]give the ticket text or --file (one of them)[/]")
        raise typer.Exit(2)
    payload: dict[str, Any] = json.loads(file.read_text()) if file else {"text": text}
    if email:
        payload["customer_email"] = email
    settings = load_settings()

    async def main() -> Any:
        async with client(settings) as bus:
            if not stream:
                return await bus.wait(await bus.submit(workflow, payload), timeout=timeout)
            wid = uuid.uuid4().hex
            step = ""

            async def show(p: Partial) -> None:
                nonlocal step
                if p.done:  # one reply ended (a retry or the next call starts afresh)
                    step = ""
                    return
                if p.step != step:
                    step = p.step
                    live.print(f"\n[bold]{escape(p.step)}[/] ", end="")
                live.print(escape(p.text), end="", soft_wrap=True, highlight=False)

            watching = await bus.partials(wid, show)  # before the run can start
            try:
                await bus.submit(workflow, payload, workflow_id=wid, metadata={"stream": "1"})
                return await bus.wait(wid, timeout=timeout)
            finally:
                await watching.unsubscribe()
                live.print()

    res = once(main())
    code = {"completed": 0, "escalated": 3, "timeout": 4}.get(res.status, 1)
    if json_out:
        dump({"workflow_id": res.workflow_id, "status": res.status, "reason": res.reason,
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

    settings = load_settings()

    async def main() -> list[Any]:
        async with client(settings) as bus:
            return await bus.escalations(queue=queue)

    pending = once(main())
    if json_out:
        dump([msgspec.to_builtins(e) for e in pending])
        return
    table = Table(title=f"{len(pending)} escalation(s) waiting")
    table.add_column("id", overflow="fold")  # whole, to copy into `review approve ID`
    for col in ("queue", "step", "kind", "reason", "confidence"):
        table.add_column(col)
    for e in pending:
        conf = f"{e.confidence:.2f}" if e.confidence is not None else ""
        table.add_row(e.id, e.queue or "default", e.step, e.kind, e.reason, conf)
    out.print(table)


def _decide(escalation_id: str, action: str, note: str, output: dict[str, Any] | None) -> None:

    settings = load_settings()
    reviewer = settings.user

    async def main() -> None:
        async with client(settings) as bus:
            await bus.decide(
                escalation_id, action, reviewer=reviewer, output=output, note=note  # type: ignore[arg-type]
            )

    try:
        once(main())
    except LookupError as exc:
        err.print(f"[red]{escape(str(exc))}[/]")
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

    settings = load_settings()
    reviewer = settings.user

    async def main() -> None:
        async with client(settings) as bus:
            while (claimed := await bus.claim(queue=queue)) is not None:
                esc, msg = claimed
                out.rule(f"{esc.id}")
                out.print(f"[bold]{esc.kind}[/]: {esc.reason}")
                out.print_json(data={"input": esc.input, "output": esc.output})
                choice = typer.prompt("approve / reject / edit / skip", default="skip")
                if choice in ("approve", "reject"):
                    await bus.decide(esc.id, "approve" if choice == "approve" else "reject",
                                     reviewer=reviewer)
                    await msg.ack()
                elif choice == "edit":
                    value = json.loads(typer.prompt("corrected output (JSON object)"))
                    await bus.decide(esc.id, "edit", reviewer=reviewer, output=value)
                    await msg.ack()
                else:
                    await msg.nak()
            out.print("nothing is waiting")

    once(main())
