"""Processes the benchmark starts: trivial Switchyard agents, and the raw JetStream and raw core
NATS hop workers of the baselines. Each decodes and re-encodes the same msgspec envelope
(``Task`` in, ``Result`` out) that Switchyard uses, so the baselines pay the same codec cost.

``python -m switchyard.bench.workers js|core <nats url> <hop> <prefix>``
"""

from __future__ import annotations

import asyncio
import sys

import nats
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig
from pydantic import BaseModel

from switchyard.agents import Agent, TaskContext
from switchyard.cli.app import load_settings, serve
from switchyard.protocol import Result, Task, codec
from switchyard.protocol.bus.consumer import PullConsumer

HOPS = 5


class HopIn(BaseModel):
    payload: str = ""
    n: int = 0


class HopOut(BaseModel):
    n: int
    size: int


def _hop_agent(role: str) -> Agent:
    agent = Agent(role, version="1.0.0", description="benchmark: a trivial handler")

    @agent.task
    async def hop(inp: HopIn, ctx: TaskContext) -> HopOut:
        return HopOut(n=inp.n + 1, size=len(inp.payload))

    return agent


hop1, hop2, hop3, hop4, hop5 = (_hop_agent(f"hop{i}") for i in range(1, HOPS + 1))


def answer(task: Task) -> Result:
    """What every raw hop does with the envelope: the same work as a trivial agent."""
    return Result(task_id=task.id, workflow_id=task.workflow_id, step=task.step, role=task.role,
                  attempt=task.attempt, status="ok",
                  output={"n": task.input.get("n", 0) + 1, "size": len(task.input.get("payload", ""))})


def raw_subject(prefix: str, kind: str, hop: int) -> str:
    return f"{prefix}.{kind}.{hop}"


async def js_worker(url: str, hop: int, prefix: str, stop: asyncio.Event) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    stream = f"{prefix.upper()}_TASKS"
    await js.add_consumer(stream, ConsumerConfig(
        durable_name=f"hop{hop}", filter_subject=raw_subject(prefix, "task", hop),
        ack_policy=AckPolicy.EXPLICIT, ack_wait=30, max_ack_pending=10_000))
    result_subject = raw_subject(prefix, "result", hop)

    async def handle(msg: Msg) -> None:
        task = codec.decode(msg.data, Task)
        await js.publish(result_subject, codec.encode(answer(task)))
        await msg.ack()

    # the same consumer as Switchyard's agents: pull requests kept topped up, a callback
    consumer = await PullConsumer(nc, stream, f"hop{hop}", handle, capacity=256).start()
    await stop.wait()
    await consumer.stop()
    await nc.close()


async def core_worker(url: str, hop: int, prefix: str, stop: asyncio.Event) -> None:
    nc = await nats.connect(url)

    async def handle(msg: Msg) -> None:
        await msg.respond(codec.encode(answer(codec.decode(msg.data, Task))))

    sub = await nc.subscribe(raw_subject(prefix, "core", hop), queue="hop", cb=handle)
    await stop.wait()
    await sub.unsubscribe()
    await nc.close()


def main(argv: list[str]) -> None:
    kind, url, hop, prefix = argv[1], argv[2], int(argv[3]), argv[4]
    worker = js_worker if kind == "js" else core_worker

    serve(load_settings(), lambda stop: worker(url, hop, prefix, stop))  # the CLI's signal handling


if __name__ == "__main__":
    main(sys.argv)
