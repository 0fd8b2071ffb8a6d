"""Quality gates: ``eval`` runs a golden set through the live stack and gates on it; ``eval
--compare`` shows what changed between two reports; ``eval shadow`` reports how shadow agents
agree with the live ones."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from switchyard.cli.app import JsonOpt, app, dump, err, load_settings, once, out
from switchyard.cli.processes import use_models

_PROBLEM = 2


@app.command("eval")
def eval_cmd(
    golden: Annotated[str | None, typer.Argument(
        help="a golden set (JSONL), a shipped one by name (support, support-2 … support-5), "
             "or 'shadow' for the shadow agents' agreement")] = None,
    workflow: Annotated[str, typer.Option(help="the workflow the cases run (default: support, "
                                               "or support-llm with --models llm)")] = "",
    min_pass: Annotated[float, typer.Option(min=0.0, max=1.0, help="the gate: the share of cases "
                                                                   "that must pass")] = 0.95,
    max_escalation_rate: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, help="the gate: the highest share of cases that may escalate")] = None,
    min_escalation_precision: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, help="the gate: the lowest share of escalated cases labelled to")] = None,
    report: Annotated[Path | None, typer.Option(help="write the report (JSON) here")] = None,
    compare: Annotated[tuple[Path, Path] | None, typer.Option(
        help="compare two reports: --compare A.json B.json")] = None,
    agent: Annotated[list[str] | None, typer.Option(
        help="run a role with another agent: ROLE=module:attr (repeatable)")] = None,
    only: Annotated[list[str] | None, typer.Option(help="only the cases with this tag (repeatable)")] = None,
    timeout: Annotated[float, typer.Option(min=1.0, help="seconds a case may take")] = 60.0,
    concurrency: Annotated[int, typer.Option(min=1, max=256, help="cases in flight")] = 8,
    connect: Annotated[bool, typer.Option(
        "--connect", help="use the stack running at NATS_URL instead of starting one")] = False,
    role: Annotated[str, typer.Option(help="eval shadow: only this role")] = "",
    models: Annotated[str, typer.Option(help="'reference' or 'llm', as for the demo")] = "",
    base_url: Annotated[str, typer.Option(help="with --models llm: the endpoint (…/v1)")] = "",
    model: Annotated[str, typer.Option(help="with --models llm: the model's id there")] = "",
    json_out: JsonOpt = False,
) -> None:
    """Run a golden set through the live stack and score every case; exit 1 under the gate.

    Each case is submitted as a run and followed to its outcome or to the person it waits for;
    its step outputs, tool calls, cost and latency are read back from the bus. The report names
    the agent versions, models, prompts and policy that produced it."""
    if compare is not None:
        if golden is not None:
            err.print("[red]--compare A.json B.json compares two reports; name no golden set "
                      f"({escape(repr(golden))}) beside it[/]")
            raise typer.Exit(_PROBLEM)
        _compare(*compare, json_out)
        return
    if golden == "shadow" and not Path("shadow").exists():
        _shadow(role, json_out)
        return
    if not golden:
        err.print("[red]name a golden set: switchyard eval support (or another shipped one: "
                  "support-2 … support-5), or a JSONL file[/] (or: eval shadow, eval "
                  "--compare A.json B.json)")
        raise typer.Exit(_PROBLEM)
    if agent and connect:
        err.print("[red]--agent runs a role with another agent on the stack eval starts; with "
                  "--connect the running stack's agents are what they are[/]")
        raise typer.Exit(_PROBLEM)
    agents = _agents(agent or [])
    use_models(models, base_url, model, connect)
    settings = load_settings()
    from switchyard.evals import golden as golden_set
    from switchyard.evals.report import Gate, build
    from switchyard.evals.runner import run_cases
    from switchyard.protocol.errors import ConfigError

    source = golden_set.resolve(golden)
    try:
        text = golden_set.read_text(source)
        cases = golden_set.parse(text, source)
    except ConfigError as exc:
        err.print(f"[red]{escape(exc.message)}[/]")
        raise typer.Exit(_PROBLEM) from None
    if only:
        unknown = sorted(set(only) - {t for c in cases for t in c.tags})
        if unknown:
            err.print(f"[red]no case has the tag{'s' if len(unknown) > 1 else ''} "
                      f"{escape(', '.join(unknown))}[/]")
            raise typer.Exit(_PROBLEM)
        cases = [c for c in cases if set(only) & set(c.tags)]
    if report is not None and not report.parent.is_dir():
        err.print(f"[red]--report {escape(str(report))}: no directory {escape(str(report.parent))}[/]")
        raise typer.Exit(_PROBLEM)
    try:
        loaded = settings.load_workflows()
        policy = settings.load_policy()
    except (ConfigError, OSError) as exc:
        err.print(f"[red]{escape(getattr(exc, 'message', str(exc)))}[/]")
        raise typer.Exit(_PROBLEM) from None
    name = workflow or ("support-llm" if "support-llm" in loaded else "support")
    for wanted, where in [(name, "--workflow")] + [(c.workflow, f"case {c.id}") for c in cases
                                                    if c.workflow]:
        if wanted not in loaded and not connect:
            err.print(f"[red]{escape(where)}: no workflow {escape(repr(wanted))} (configured: "
                      f"{', '.join(sorted(loaded))})[/]")
            raise typer.Exit(_PROBLEM)
    for case in cases:  # a field names a step of the case's workflow, or the run's outcome
        flow = loaded.get(case.workflow or name)
        if flow is None:  # --connect: the running stack's workflow, not known here
            continue
        steps = {s.name for s in flow.steps} | {"outcome"}
        wrong = sorted(f for f in case.expect.fields if f.split(".", 1)[0] not in steps)
        if wrong:
            err.print(f"[red]case {escape(case.id)}: {escape(wrong[0])} names no step of "
                      f"{escape(flow.name)} (its steps: {escape(', '.join(sorted(steps)))})[/]")
            raise typer.Exit(_PROBLEM)
    done: list[int] = []

    def progress(scored: Any) -> None:
        done.append(1)
        if not json_out and sys.stderr.isatty():
            err.print(f"\r{len(done)}/{len(cases)} cases", end="")

    err.print(f"running {len(cases)} case{'s' if len(cases) != 1 else ''} of {source} through "
              + (f"the stack at {settings.nats_url}" if connect else "a stack of its own") + "…")
    scores, services = once(run_cases(settings, cases, name, connect=connect, agents=agents,
                                      timeout=timeout, concurrency=concurrency, on_case=progress))
    gate = Gate(min_pass, max_escalation_rate, min_escalation_precision)
    catalogue = settings.catalogue()
    ids = {m: f"{spec.provider_model}" + (f" at {spec.base_url}" if spec.base_url else " (local)")
           for m in catalogue.names() if (spec := catalogue.get(m))}
    result = build(scores, services, source=str(source), text=text,
                   workflow=name, definition=loaded[name].digest() if name in loaded else "",
                   policy=policy.digest() if policy is not None else "", gate=gate,
                   model_ids=ids, only=only)
    if report is not None:
        report.write_text(json.dumps(result, indent=2) + "\n")
    if json_out:
        dump(result)
    else:
        _print_report(result)
    raise typer.Exit(0 if result["gate"]["passed"] else 1)


def _agents(pairs: list[str]) -> dict[str, str]:
    """``ROLE=module:attr`` pairs, each checked here (it loads, it is an agent of that role),
    before a stack starts."""
    from switchyard.cli.processes import load_agent
    from switchyard.stack import ROLES

    agents = {}
    for pair in pairs:
        role, sep, target = pair.partition("=")
        if not sep or not role or ":" not in target:
            err.print(f"[red]--agent is ROLE=module:attr, not {escape(repr(pair))}[/]")
            raise typer.Exit(_PROBLEM)
        if role not in ROLES:
            err.print(f"[red]--agent names a role the stack does not run: {escape(role)} "
                      f"(roles: {', '.join(ROLES)})[/]")
            raise typer.Exit(_PROBLEM)
        found = load_agent(target, target)
        if found.role != role:
            err.print(f"[red]--agent {escape(pair)}: that agent serves role "
                      f"{escape(repr(found.role))}, not {escape(repr(role))}[/]")
            raise typer.Exit(_PROBLEM)
        agents[role] = target
    return agents


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _print_report(r: dict[str, Any]) -> None:
    s = r["summary"]
    p = r["provenance"]
    out.print(f"[bold]{r['golden']['source']}[/] ({s['cases']} cases) on workflow {p['workflow']} "
              f"({p['definition']}), policy {p['policy'] or 'none'}", soft_wrap=True)
    out.print("agents: " + ", ".join(f"{k} {'/'.join(v)}" for k, v in p["agents"].items()),
              soft_wrap=True)
    if p["models"]:
        out.print("models: " + ", ".join(f"{m} ({p['model_ids'].get(m, m)})" for m in p["models"]),
                  soft_wrap=True)
    if p["prompts"]:
        out.print("prompts: " + ", ".join(p["prompts"]), soft_wrap=True)
    fields = Table(title="per-field accuracy")
    for col in ("field", "n", "accuracy"):
        fields.add_column(col)
    for name, f in r["fields"].items():
        fields.add_row(name, str(f["n"]), _pct(f["accuracy"]))
    out.print(fields)
    c = r["confusion"]
    if c["labels"]:
        matrix = Table(title=f"confusion: {c['field']} (rows expected, columns observed)")
        matrix.add_column("")
        for label in c["labels"]:
            matrix.add_column(label)
        for want, row in c["matrix"].items():
            matrix.add_row(want, *[str(row[g]) if row[g] else "·" for g in c["labels"]])
        out.print(matrix)
    failed = [row for row in r["cases"] if not row["passed"]]
    if failed:
        table = Table(title=f"{len(failed)} case{'s' if len(failed) != 1 else ''} failed")
        table.add_column("case")
        table.add_column("why")
        for row in failed:
            table.add_row(row["id"], escape("; ".join(row["failures"])))
        out.print(table)
    out.print(f"passed {s['passed']}/{s['cases']} ({_pct(s['pass_rate'])}); outcome right "
              f"{_pct(s['outcome_accuracy'])}; escalated "
              f"{_pct(s['escalation_rate'])}, precision {_pct(s['escalation_precision'])}, recall "
              f"{_pct(s['escalation_recall'])}; risky actions without approval: "
              f"{s['risky_unapproved']}; cost {s['cost_usd']['per_case']:.6f} USD and "
              f"{s['tokens_per_case']:g} tokens per case; latency mean {s['latency_s']['mean']:.2f} s, "
              f"p50 {s['latency_s']['p50']:.2f} s, p95 {s['latency_s']['p95']:.2f} s, max "
              f"{s['latency_s']['max']:.2f} s", soft_wrap=True)
    weak = {t: v for t, v in r["tags"].items() if v["passed"] < v["n"]}
    if weak:
        out.print("tags with failures: " + ", ".join(f"{t} {v['passed']}/{v['n']}"
                                                     for t, v in weak.items()), soft_wrap=True)
    gate = r["gate"]
    if gate["passed"]:
        out.print("[green]gate passed[/]")
    else:
        out.print("[red]gate failed:[/] " + escape("; ".join(gate["failed"])), soft_wrap=True)


def _read_report(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # JSON and UTF-8 errors are ValueErrors
        err.print(f"[red]cannot read the report {escape(str(path))}: {escape(str(exc))[:200]}[/]")
        raise typer.Exit(_PROBLEM) from None
    from switchyard.evals.report import report_problem

    if (problem := report_problem(data)) is not None:
        err.print(f"[red]{escape(str(path))} is not a report of switchyard eval --report "
                  f"({escape(problem)})[/]")
        raise typer.Exit(_PROBLEM)
    assert isinstance(data, dict)
    return data


def _compare(a: Path, b: Path, json_out: bool) -> None:
    from switchyard.evals.report import compare

    try:
        diff = compare(_read_report(a), _read_report(b))
    except (KeyError, TypeError, ValueError) as exc:  # checked above: a report bent otherwise
        err.print(f"[red]the reports cannot be compared: {escape(str(exc))[:200]}[/]")
        raise typer.Exit(_PROBLEM) from None
    if json_out:
        dump(diff)
        return
    if not diff["same_golden_set"]:
        out.print("[yellow]the two reports ran different golden sets[/]")
    elif not diff["same_cases"]:
        out.print("[yellow]the two reports ran different parts of the set (--only)[/]")
    for key, change in diff["provenance"].items():
        out.print(f"{key}: {json.dumps(change['from'])} → {json.dumps(change['to'])}",
                  soft_wrap=True, markup=False)
    table = Table(title=f"{a} → {b}")
    for col in ("figure", "A", "B", "Δ"):
        table.add_column(col)
    for key, f in diff["figures"].items():
        table.add_row(key, str(f["from"]), str(f["to"]), "" if f["delta"] is None else f"{f['delta']:+g}")
    out.print(table)
    for name, f in diff["fields"].items():
        out.print(f"field {name}: {_pct(f['from'])} → {_pct(f['to'])}")
    for row in diff["regressed"]:
        out.print(f"[red]regressed[/] {row['id']}: " + escape("; ".join(row["failures"])), soft_wrap=True)
    if diff["fixed"]:
        out.print("[green]fixed[/] " + ", ".join(diff["fixed"]))
    for side, key in (("A", "only_in_a"), ("B", "only_in_b")):
        if diff[key]:
            out.print(f"only in {side}: " + ", ".join(diff[key]), soft_wrap=True)
    if diff["gate"].get("thresholds_differ"):
        out.print("[yellow]the two reports were gated at different thresholds[/]")
    out.print(f"gate: {'passed' if diff['gate']['from'] else 'failed'} → "
              f"{'passed' if diff['gate']['to'] else 'failed'}")


def _shadow(role: str, json_out: bool) -> None:
    from switchyard.cli.app import client
    from switchyard.evals.shadow import agreement

    settings = load_settings()

    async def main() -> dict[str, Any]:
        async with client(settings) as bus:
            return await agreement(bus, role=role)

    result = once(main())
    if json_out:
        dump(result)
        return
    from switchyard.evals.shadow import print_agreement

    print_agreement(result, out)
