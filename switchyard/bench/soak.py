"""``switchyard soak``: the real stack at a steady rate for a long while, watching memory level off.

The support workflow with the reference agents and the tool host, on a nats-server of its own,
fed tickets from the sample set that complete without a person (so nothing waits for ever) at a
fixed rate. Every ``every`` seconds it samples each process's resident memory, the server's store
on disk, and the journal's messages and bytes. What bounds the server is retention: journals,
tool-call chains and outcomes age out by their streams' ``max_age`` (``trail_max_age``, short
here so the plateau shows within the run), finished runs' snapshots and tool-ledger entries by
their TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import nats

from switchyard.bench.run import rss_bytes
from switchyard.client import SwitchyardClient
from switchyard.demo import sample_tickets
from switchyard.natsd import NatsServer
from switchyard.protocol.subjects import Stream
from switchyard.settings import Settings
from switchyard.stack import LocalStack


@dataclass
class Sample:
    at_s: float
    submitted: int
    finished: int
    rss_mb: dict[str, float]
    store_mb: float
    journal_msgs: int
    journal_mb: float


@dataclass
class SoakReport:
    rate: float
    duration_s: float
    trail_max_age_s: float
    samples: list[Sample] = field(default_factory=list)
    journal_bytes_per_workflow: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)
    lost: int = 0  # submitted, and no outcome (nor a person waiting) by the end


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


async def run_soak(
    rate: float, duration: float, trail_max_age: float, every: float,
    log: Callable[[str], None], tmp: Path,
) -> SoakReport:
    report = SoakReport(rate=rate, duration_s=duration, trail_max_age_s=trail_max_age)
    tickets = [t for t in sample_tickets() if t["expect"] == "completed"]
    store = tmp / "nats"
    async with NatsServer(store_dir=store) as server:
        settings = Settings(nats_url=server.url, prefix=f"sk{uuid.uuid4().hex[:6]}",
                            data_dir=tmp / "data", trail_max_age_s=trail_max_age,
                            retention_s=trail_max_age)
        async with LocalStack(settings) as stack:
            nc = await nats.connect(server.url)
            client = SwitchyardClient(nc, settings.subjects)
            js = nc.jetstream()
            pids = {"nats-server": server.pid or 0,
                    **{name: p.pid for name, p in stack.procs.items()}}
            finished = 0
            waiting: set[str] = set()

            async def done(msg: Any) -> None:
                nonlocal finished
                wid = msg.subject.rsplit(".", 1)[1]
                if wid in waiting:
                    waiting.discard(wid)
                    finished += 1
                    status = msgspec.json.decode(msg.data).get("status", "?")
                    report.outcomes[status] = report.outcomes.get(status, 0) + 1

            sub = await nc.subscribe(settings.subjects.all("workflow.outcome"), cb=done)
            started = time.monotonic()
            submitted, next_sample = 0, 0.0
            journal = settings.subjects.stream(Stream.JOURNAL)

            async def sample(now: float, submitted: int) -> None:
                info = (await js.stream_info(journal)).state
                x = Sample(
                    at_s=round(now, 1), submitted=submitted, finished=finished,
                    rss_mb={n: round(rss_bytes(p, "VmRSS") / 2**20, 1) for n, p in pids.items()},
                    store_mb=round(_du(store) / 2**20, 1), journal_msgs=info.messages,
                    journal_mb=round(info.bytes / 2**20, 2))
                report.samples.append(x)
                log(f"{x.at_s:6.0f} s  {finished}/{submitted} done  nats "
                    f"{x.rss_mb['nats-server']} MB  store {x.store_mb} MB  journal "
                    f"{x.journal_msgs} msgs")

            while (now := time.monotonic() - started) < duration:  # bounded by the duration
                due = int(now * rate) - submitted
                for _ in range(due):
                    t = tickets[submitted % len(tickets)]
                    wid = await client.submit("support", {"text": t["text"],
                                                          "customer_email": t.get("customer_email")})
                    waiting.add(wid)
                    submitted += 1
                if now >= next_sample:
                    await sample(now, submitted)
                    next_sample += every
                await asyncio.sleep(min(0.05, 1 / rate))  # the pacing of a fixed-rate load
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(60):
                    while waiting:  # noqa: ASYNC110 - outcomes arrive on the subscription above
                        await asyncio.sleep(0.1)
            await sample(time.monotonic() - started, submitted)  # after the last ones ended
            held = {e.workflow_id: e for e in await client.escalations()}
            for wid in waiting & set(held):
                why = f"escalated: {held[wid].kind}: {held[wid].reason[:80]}"
                report.outcomes[why] = report.outcomes.get(why, 0) + 1
            report.lost = len(waiting - set(held))
            # at the plateau the journal holds the runs of the last ``trail_max_age`` seconds
            live = min(submitted, int(rate * min(duration, trail_max_age))) or 1
            peak = max(x.journal_mb for x in report.samples) * 2**20
            report.journal_bytes_per_workflow = round(peak / live, 1)
            await sub.unsubscribe()
            await nc.close()
    return report


def report_json(report: SoakReport) -> bytes:
    return msgspec.json.format(msgspec.json.encode(asdict(report)), indent=2)
