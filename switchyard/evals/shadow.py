"""``switchyard eval shadow``: how the shadow agents' records agree with what the live agents
did with the same tasks (their results on the journals)."""

from __future__ import annotations

import asyncio
import difflib
import statistics
from collections import defaultdict
from typing import Any

from nats.js.errors import NotFoundError
from rich.console import Console
from rich.table import Table

from switchyard.client import SwitchyardClient
from switchyard.protocol import codec, grants
from switchyard.protocol.errors import ConfigError, ProtocolError
from switchyard.protocol.messages import Result, ShadowResult
from switchyard.protocol.subjects import Stream, check_token

TEXT_SIMILAR = 0.9  # two long texts agree when difflib's ratio is at least this
LONG_TEXT = 80
DRY_PREFIX = "DRY-"  # ids a dry run answers with: not comparable to the live ones
MAX_EXAMPLES = 10


async def shadow_records(client: SwitchyardClient, role: str = "", *,
                         timeout: float = 30.0) -> list[ShadowResult]:
    """Every shadow record kept (of ``role``, or all), up to the last one when called."""
    subject = client.s.shadow_result(role) if role else client.s.all("shadow.result")
    stream = client.s.stream(Stream.SHADOW)
    try:
        info = await client.js.stream_info(stream, subjects_filter=subject)
        subjects = list((info.state.subjects or {}).keys())
        end = max([(await client.js.get_last_msg(stream, x)).seq or 0 for x in subjects],
                  default=0)
    except NotFoundError:
        return []
    out: list[ShadowResult] = []
    if not end:
        return out
    sub = await client.js.subscribe(subject, stream=stream, ordered_consumer=True)
    try:
        async with asyncio.timeout(timeout):
            while True:
                msg = await sub.next_msg(timeout=None)
                try:
                    out.append(codec.decode(msg.data, ShadowResult))
                except ProtocolError:
                    pass  # not a shadow's record: nothing to compare
                if msg.metadata.sequence.stream >= end:
                    break
    except TimeoutError:
        narrower = "" if role else "; --role reads one role's only"
        raise ConfigError(f"reading the shadow records took over {timeout:g} s ({len(out)} read, "
                          f"up to stream sequence {end}){narrower}") from None
    finally:
        await sub.unsubscribe()
    return out


async def _live_results(client: SwitchyardClient, workflow_id: str) -> dict[str, Result]:
    return {r.task_id: r for r in await client.results(workflow_id)}


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """An output as dotted paths to its leaves (lists are leaves)."""
    if not isinstance(value, dict) or not value:
        return {prefix: value} if prefix else {}
    out: dict[str, Any] = {}
    for key, v in value.items():
        out.update(_flat(v, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _as_live(rec: ShadowResult) -> tuple[str, dict[str, Any]]:
    """The shadow's status and output as the live agent's would read: a call that live would
    have waited for a person is where the live agent stops (``needs_human``, the held call)."""
    held = next((c for c in rec.calls if c.needs_approval), None)
    if held is None or rec.status != "ok":
        return rec.status, dict(rec.output or {})
    return "needs_human", {"approval": {"tool": held.tool, "args": held.args,
                                        "digest": grants.call_digest(held.tool, held.args)}}


def _agree(live: Any, shadow: Any) -> tuple[bool | None, float | None]:
    """Whether two values agree (None: not comparable, a dry run's id), and for long texts
    their similarity."""
    if isinstance(shadow, str) and shadow.startswith(DRY_PREFIX):
        return None, None
    if isinstance(live, str) and isinstance(shadow, str) and max(len(live), len(shadow)) > LONG_TEXT:
        # no "junk" heuristic: on texts of 200 characters it drops common letters and says two
        # replies that differ by a ticket number are 0.83 alike
        ratio = difflib.SequenceMatcher(None, live, shadow, autojunk=False).ratio()
        return ratio >= TEXT_SIMILAR, round(ratio, 4)
    if isinstance(live, float) or isinstance(shadow, float):
        if isinstance(live, int | float) and isinstance(shadow, int | float):
            return abs(live - shadow) <= 1e-6 * max(1.0, abs(live)), None
    return live == shadow, None



async def agreement(client: SwitchyardClient, *, role: str = "") -> dict[str, Any]:
    if role:
        check_token("role", role)
    records = await shadow_records(client, role)
    live_by_workflow: dict[str, dict[str, Result]] = {}
    per_role: dict[str, dict[str, Any]] = defaultdict(lambda: {
        "versions": set(), "copies": 0, "matched": 0, "status_agree": 0, "all_agree": 0,
        "fields": defaultdict(lambda: [0, 0]), "similarity": [], "shadow_errors": 0,
        "would_wait_for_approval": 0, "dry_calls": 0, "confidence": ([], []),
        "duration_ms": ([], []), "examples": []})
    for rec in records:  # one row per role and shadow version
        row = per_role[f"{rec.role}@{rec.version}"]
        row["versions"].add(rec.version)
        row["copies"] += 1
        row["shadow_errors"] += rec.status == "error"
        row["dry_calls"] += len(rec.calls)
        row["would_wait_for_approval"] += sum(c.needs_approval for c in rec.calls)
        if rec.workflow_id not in live_by_workflow:
            live_by_workflow[rec.workflow_id] = await _live_results(client, rec.workflow_id)
        live = live_by_workflow[rec.workflow_id].get(rec.task_id)
        if live is None:  # the live agent has not answered (yet), or the run is gone
            continue
        row["matched"] += 1
        status, output = _as_live(rec)
        row["status_agree"] += live.status == status
        row["confidence"][0].append(live.confidence)
        row["confidence"][1].append(rec.confidence)
        row["duration_ms"][0].append(live.duration_ms)
        row["duration_ms"][1].append(rec.duration_ms)
        a, b = _flat(live.output or {}), _flat(output)
        every = live.status == status
        for key in sorted(set(a) | set(b)):
            ok, ratio = _agree(a.get(key), b.get(key))
            if ok is None:
                continue
            tally = row["fields"][key]
            tally[0] += 1
            tally[1] += ok
            if ratio is not None:
                row["similarity"].append(ratio)
            if not ok:
                every = False
                if len(row["examples"]) < MAX_EXAMPLES:
                    row["examples"].append({"task_id": rec.task_id, "field": key,
                                            "live": a.get(key), "shadow": b.get(key)})
        row["all_agree"] += every
    return {"shadows": {name: _finish(row) for name, row in sorted(per_role.items())},
            "records": len(records)}


def _mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 4) if values else None


def _finish(row: dict[str, Any]) -> dict[str, Any]:
    matched = row["matched"]
    return {
        "versions": sorted(row["versions"]),
        "copies": row["copies"],
        "matched": matched,
        "agreement": round(row["all_agree"] / matched, 4) if matched else None,
        "status_agreement": round(row["status_agree"] / matched, 4) if matched else None,
        "fields": {k: {"n": n, "agree": ok, "rate": round(ok / n, 4)}
                   for k, (n, ok) in sorted(row["fields"].items())},
        "text_similarity": _mean(row["similarity"]),
        "confidence": {"live": _mean(row["confidence"][0]), "shadow": _mean(row["confidence"][1])},
        "duration_ms": {"live": _mean(row["duration_ms"][0]), "shadow": _mean(row["duration_ms"][1])},
        "shadow_errors": row["shadow_errors"],
        "dry_calls": row["dry_calls"],
        "would_wait_for_approval": row["would_wait_for_approval"],
        "disagreements": row["examples"],
    }


def print_agreement(result: dict[str, Any], out: Console) -> None:
    if not result["shadows"]:
        out.print("no shadow records: run a shadow with `switchyard agent run ROLE --shadow` "
                  "beside the live agent, then submit work")
        return
    table = Table(title="shadow agents against the live ones (same tasks)")
    for col in ("role@version", "copies", "compared", "agree", "status",
                "confidence live → shadow", "errors", "dry calls", "would wait"):
        table.add_column(col)
    for name, r in result["shadows"].items():
        pct = "-" if r["agreement"] is None else f"{100 * r['agreement']:.1f} %"
        status = "-" if r["status_agreement"] is None else f"{100 * r['status_agreement']:.1f} %"
        conf = r["confidence"]
        table.add_row(name, str(r["copies"]), str(r["matched"]), pct,
                      status, f"{conf['live']:.2f} → {conf['shadow']:.2f}" if conf["live"] is not None
                      else "-", str(r["shadow_errors"]),
                      str(r["dry_calls"]), str(r["would_wait_for_approval"]))
    out.print(table)
    out.print("agree: every field of the output agrees (texts within a similarity of "
              f"{TEXT_SIMILAR}, a dry run's ids left out); status: ok, needs a person or error "
              "alike; would wait: dry calls that live would have held for a person's approval")
    for name, r in result["shadows"].items():
        fields = ", ".join(f"{k} {100 * v['rate']:.0f} %" for k, v in r["fields"].items())
        if fields:
            out.print(f"{name}: {fields}", soft_wrap=True)
        for d in r["disagreements"][:5]:
            out.print(f"  {d['task_id']} {d['field']}: live {d['live']!r}, shadow {d['shadow']!r}",
                      soft_wrap=True, markup=False)
