"""The benchmark's drivers: each keeps a number of workflows in flight on one pipeline."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

from switchyard.bench.workers import HOPS, raw_subject
from switchyard.protocol import Result, Subjects, Task, WorkflowRequest, codec
from switchyard.protocol.bus.consumer import PullConsumer
from switchyard.protocol.bus.journal import Journal

# drivers ----------------------------------------------------------------------------------------


class Driver:
    """Keeps ``inflight`` workflows going until ``count`` have finished; returns latencies (s)."""

    async def one(self, i: int) -> None:
        raise NotImplementedError

    async def run(self, count: int, inflight: int) -> list[float]:
        latencies: list[float] = []
        slots = asyncio.Semaphore(inflight)

        async def timed(i: int) -> None:
            try:
                t0 = time.perf_counter()
                await self.one(i)
                latencies.append(time.perf_counter() - t0)
            finally:
                slots.release()

        async with asyncio.TaskGroup() as tg:
            for i in range(count):
                await slots.acquire()
                tg.create_task(timed(i))
        return latencies


class SwitchyardDriver(Driver):
    def __init__(self, nc: Client, subjects: Subjects, workflow: str, payload: int) -> None:
        self.nc, self.js, self.s = nc, nc.jetstream(), subjects
        self.journal = Journal(self.js, subjects)
        self.workflow = workflow
        self.input = {"payload": "x" * payload, "n": 0}
        self.waiting: dict[str, asyncio.Future[None]] = {}
        self.sub: Any = None
        self.run_id = uuid.uuid4().hex[:6]
        self.finished: list[str] = []

    async def start(self) -> None:
        async def done(msg: Msg) -> None:
            fut = self.waiting.pop(msg.subject.rsplit(".", 1)[1], None)
            if fut is not None and not fut.done():
                fut.set_result(None)

        self.sub = await self.nc.subscribe(self.s.all("workflow.outcome"), cb=done)

    async def one(self, i: int) -> None:
        wid = f"b{self.run_id}-{i}-{uuid.uuid4().hex[:6]}"
        fut = self.waiting[wid] = asyncio.get_running_loop().create_future()
        req = WorkflowRequest(id=wid, workflow=self.workflow, input=self.input, submitted_at=0)
        await self.journal.submit(req)
        await fut
        self.finished.append(wid)

    async def stop(self) -> None:
        await self.sub.unsubscribe()


class RawJetStreamDriver(Driver):
    def __init__(self, nc: Client, prefix: str, payload: int) -> None:
        self.nc, self.js, self.prefix = nc, nc.jetstream(), prefix
        self.payload = "x" * payload
        self.waiting: dict[str, asyncio.Future[None]] = {}
        self._consumer: PullConsumer | None = None

    async def start(self) -> None:
        p = self.prefix
        for name, subjects, retention in (
            ("TASKS", [f"{p}.task.*"], RetentionPolicy.WORK_QUEUE),
            ("RESULTS", [f"{p}.result.*"], RetentionPolicy.LIMITS),
        ):
            await self.js.add_stream(StreamConfig(name=f"{p.upper()}_{name}", subjects=subjects,
                                                  retention=retention, storage=StorageType.FILE))
        await self.js.add_consumer(f"{p.upper()}_RESULTS", ConsumerConfig(
            durable_name="driver", filter_subject=f"{p}.result.*", ack_policy=AckPolicy.EXPLICIT,
            max_ack_pending=20_000))
        self._consumer = await PullConsumer(self.nc, f"{p.upper()}_RESULTS", "driver",
                                            self._advance, capacity=256).start()

    async def _advance(self, msg: Msg) -> None:
        result = codec.decode(msg.data, Result)
        hop = int(msg.subject.rsplit(".", 1)[1])
        if hop < HOPS:
            await self._send(result.workflow_id, hop + 1)
        else:
            fut = self.waiting.pop(result.workflow_id, None)
            if fut is not None:
                fut.set_result(None)
        await msg.ack()

    async def _send(self, wid: str, hop: int) -> None:
        task = Task(id=f"{wid}:{hop}:1", workflow_id=wid, workflow="raw", step=str(hop),
                    role=f"hop{hop}", attempt=1, input={"payload": self.payload, "n": hop})
        await self.js.publish(raw_subject(self.prefix, "task", hop), codec.encode(task))

    async def one(self, i: int) -> None:
        wid = f"r{i}-{uuid.uuid4().hex[:6]}"
        fut = self.waiting[wid] = asyncio.get_running_loop().create_future()
        await self._send(wid, 1)
        await fut

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()


class RawCoreDriver(Driver):
    def __init__(self, nc: Client, prefix: str, payload: int) -> None:
        self.nc, self.prefix = nc, prefix
        self.payload = "x" * payload

    async def start(self) -> None:
        return None

    async def one(self, i: int) -> None:
        wid = f"c{i}"
        for hop in range(1, HOPS + 1):
            task = Task(id=f"{wid}:{hop}:1", workflow_id=wid, workflow="raw", step=str(hop),
                        role=f"hop{hop}", attempt=1, input={"payload": self.payload, "n": hop})
            reply = await self.nc.request(raw_subject(self.prefix, "core", hop),
                                          codec.encode(task), timeout=10)
            codec.decode(reply.data, Result)

    async def stop(self) -> None:
        return None


