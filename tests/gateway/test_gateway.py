"""The gateway called by a2a-sdk's own client: the card, a ticket to its end (and streamed, a
status update per step), a person's escalation as ``input-required`` decided with ``switchyard
review``, a retried message that runs once, a caller without a key refused, two replicas sharing
one task, and bad JSON-RPC answered with the spec's codes while nothing reaches the bus."""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

import httpx
import msgspec
import nats
import pytest
from a2a.types import (
    GetTaskRequest,
    ListTasksRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    SubscribeToTaskRequest,
    TaskState,
)
from a2a.utils.errors import InvalidParamsError
from google.protobuf.json_format import MessageToDict
from google.protobuf.struct_pb2 import Value

from switchyard.client import SwitchyardClient
from switchyard.gateway.keys import Keys
from switchyard.gateway.store import task_id_for
from switchyard.natsd import free_ports
from switchyard.protocol.bus.component import servers
from switchyard.protocol.subjects import Stream
from switchyard.supervisor import authz

from .conftest import CLI, Gateway, a2a_client, keys_file, stack_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
STEPS = 5  # the support workflow's


def ticket(text: str, email: str = "ada@example.com", message_id: str = "",
           skill: str = "support") -> Message:
    value = Value()
    value.struct_value.update({"text": text, "customer_email": email})
    message = Message(role=Role.ROLE_USER, message_id=message_id or uuid.uuid4().hex,
                      parts=[Part(data=value)])
    message.metadata.update({"skill": skill})
    return message


async def final(client: Any, message: Message) -> Any:
    task = None
    async for response in client.send_message(SendMessageRequest(message=message)):
        if response.WhichOneof("payload") == "task":
            task = response.task
    assert task is not None
    return task


@pytest.fixture(scope="module")
def key(gateway: Gateway) -> str:
    return Keys(keys_file(gateway.stack)).add("partner", ["support"])


async def bus(gateway: Gateway) -> tuple[Any, SwitchyardClient]:
    stack = gateway.stack
    nc = await nats.connect(servers(stack.url), **stack.connect_options(authz.CONSOLE))
    return nc, SwitchyardClient(nc, stack.settings.subjects)


async def test_the_card_resolves_and_shows_a_caller_only_its_workflows(
    gateway: Gateway, key: str,
) -> None:
    from a2a.client import A2ACardResolver

    async with httpx.AsyncClient() as http:
        public = await A2ACardResolver(http, gateway.url).get_agent_card()
    assert public.name == "Switchyard"  # without a key, no workflow: one skill saying so
    assert [s.id for s in public.skills] == ["workflows"]
    assert public.capabilities.streaming
    assert {i.protocol_version for i in public.supported_interfaces} == {"1.0", "0.3"}
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as http:
        mine = await A2ACardResolver(http, gateway.url).get_agent_card()
    assert [s.id for s in mine.skills] == ["support"]
    text = str(MessageToDict(mine))
    for internal in ("kb_search", "propose_refund", "threshold", "agent-", "approvals"):
        assert internal not in text  # its tools, roles and rules are nobody's business


async def test_a_ticket_completes_and_streamed_it_reports_each_step(
    gateway: Gateway, key: str,
) -> None:
    client, http = await a2a_client(gateway.url, key)
    try:
        task = await final(client, ticket("I was charged twice for my subscription"))
        assert task.status.state == TaskState.TASK_STATE_COMPLETED, task.status
        (artifact,) = task.artifacts
        output = MessageToDict(artifact.parts[0].data)
        assert output["reply"].startswith("Hello")
    finally:
        await http.aclose()
    streaming, http = await a2a_client(gateway.url, key, streaming=True)
    try:
        updates = []
        async for response in streaming.send_message(SendMessageRequest(
                message=ticket("I was charged twice for my subscription"))):
            if response.WhichOneof("payload") == "status_update":
                updates.append(response.status_update)
    finally:
        await http.aclose()
    working = [u for u in updates if u.status.state == TaskState.TASK_STATE_WORKING]
    assert len(working) == STEPS, [MessageToDict(u.status.message) for u in working]
    assert [MessageToDict(u.status.message.metadata)["step"] for u in working] == [
        "triage", "retrieval", "action", "compliance", "reviewer"]
    assert updates[-1].status.state == TaskState.TASK_STATE_COMPLETED


async def test_a_persons_escalation_is_input_required_until_decided_in_review(
    gateway: Gateway, key: str,
) -> None:
    client, http = await a2a_client(gateway.url, key)
    try:
        task = await final(client, ticket("hmm something maybe"))
        assert task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
        meta = MessageToDict(task.status.message.metadata)
        assert meta["kind"] == "low_confidence"
        # the caller may not answer it (the workflow does not let A2A callers decide)
        answer = Message(role=Role.ROLE_USER, message_id=uuid.uuid4().hex, task_id=task.id,
                         context_id=task.context_id, parts=[Part(text="approve")])
        with pytest.raises(Exception, match="a person in Switchyard decides"):
            await final(client, answer)
        follower, http2 = await a2a_client(gateway.url, key, streaming=True)
        subscribed = follower.subscribe(SubscribeToTaskRequest(id=task.id))
        async with asyncio.timeout(30):
            assert (await anext(subscribed)).WhichOneof("payload") == "task"
        env = {**os.environ, **stack_env(gateway.stack, "console"), "SWITCHYARD_USER": "ann"}
        review = await asyncio.create_subprocess_exec(
            CLI, "review", "approve", meta["escalation_id"], "--note", "fine", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        said, _ = await review.communicate()
        assert review.returncode == 0, said.decode()
        states = []
        async with asyncio.timeout(60):
            async for response in subscribed:
                kind = response.WhichOneof("payload")
                if kind == "status_update":
                    states.append(response.status_update.status.state)
                    if states[-1] == TaskState.TASK_STATE_COMPLETED:
                        break
        assert states[-1] == TaskState.TASK_STATE_COMPLETED
        done = await client.get_task(GetTaskRequest(id=task.id))
        assert done.status.state == TaskState.TASK_STATE_COMPLETED and done.artifacts
        listed = await client.list_tasks(ListTasksRequest())
        assert task.id in [t.id for t in listed.tasks]
        await http2.aclose()
    finally:
        await http.aclose()


async def test_a_retried_message_runs_once(gateway: Gateway, key: str) -> None:
    client, http = await a2a_client(gateway.url, key)
    message_id = uuid.uuid4().hex
    try:
        first = await final(client, ticket("I was charged twice", message_id=message_id))
        again = await final(client, ticket("I was charged twice", message_id=message_id))
    finally:
        await http.aclose()
    assert first.id == again.id and again.status.state == TaskState.TASK_STATE_COMPLETED
    nc, sw = await bus(gateway)
    try:
        records = await sw.journal_records(first.id)  # the run's id is the task's
    finally:
        await nc.close()
    assert [r.subject.rsplit(".", 1)[-1] for r in records].count("submit") == 1
    assert sum(".result." in r.subject for r in records) == STEPS  # each step ran once


async def test_copies_of_one_message_sent_at_once_are_one_task(gateway: Gateway, key: str) -> None:
    client, http = await a2a_client(gateway.url, key)
    message_id = uuid.uuid4().hex
    try:
        tasks = await asyncio.gather(*(final(client, ticket("I was charged twice",
                                                             message_id=message_id))
                                       for _ in range(4)))
    finally:
        await http.aclose()
    assert len({t.id for t in tasks}) == 1
    nc, sw = await bus(gateway)
    try:
        records = await sw.journal_records(tasks[0].id)
    finally:
        await nc.close()
    assert [r.subject.rsplit(".", 1)[-1] for r in records].count("submit") == 1


async def test_what_cannot_be_a_run_is_refused_and_nothing_is_stored(
    gateway: Gateway, key: str,
) -> None:
    client, http = await a2a_client(gateway.url, key)
    try:
        for message in (ticket("x", skill="support-open"), ticket("x", skill="nope"),
                        Message(role=Role.ROLE_USER, message_id=uuid.uuid4().hex, parts=[
                            Part(data=Value(list_value={"values": [{"number_value": 1}]}))])):
            with pytest.raises(InvalidParamsError, match=r"skill|JSON object"):  # -32602
                await final(client, message)
            derived = task_id_for("partner", message.message_id)
            with pytest.raises(Exception, match="not found"):
                await client.get_task(GetTaskRequest(id=derived))
    finally:
        await http.aclose()


async def test_a_call_without_a_known_key_is_refused(gateway: Gateway, key: str) -> None:
    from a2a.client import A2AClientError

    for bad in ("", "sya2a_forged"):
        client, http = await a2a_client(gateway.url, bad)
        try:
            with pytest.raises(A2AClientError, match="401"):
                await final(client, ticket("I was charged twice"))
        finally:
            await http.aclose()
    async with httpx.AsyncClient() as http:  # the other header form is a key too
        ok = await http.post(gateway.url, headers={"X-API-Key": key, "A2A-Version": "1.0"},
                             json={"jsonrpc": "2.0", "id": 1, "method": "ListTasks",
                                   "params": {}})
    assert ok.status_code == 200 and "result" in ok.json(), ok.text


async def test_two_replicas_serve_the_same_task(gateway: Gateway, key: str) -> None:
    other = await gateway.replica(free_ports(1))
    one, http1 = await a2a_client(gateway.url, key)
    two, http2 = await a2a_client(other, key, streaming=True)
    try:
        task = await final(one, ticket("hmm something maybe"))
        assert task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
        seen = await two.get_task(GetTaskRequest(id=task.id))  # made on one, read on two
        assert seen.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
        subscribed = two.subscribe(SubscribeToTaskRequest(id=task.id))
        async with asyncio.timeout(30):
            snapshot = await anext(subscribed)  # the task as it is, then what happens to it
        assert snapshot.WhichOneof("payload") == "task"
        nc, sw = await bus(gateway)
        try:
            (esc,) = [e for e in await sw.escalations() if e.workflow_id == task.id]
            await sw.decide(esc.id, "approve", reviewer="ann")
        finally:
            await nc.close()
        last = None
        async with asyncio.timeout(60):
            response = await anext(subscribed)
            while True:
                if response.WhichOneof("payload") == "status_update":
                    last = response.status_update.status.state
                    if last == TaskState.TASK_STATE_COMPLETED:
                        break
                response = await anext(subscribed)
        assert last == TaskState.TASK_STATE_COMPLETED  # followed on two, run by one
    finally:
        await http1.aclose()
        await http2.aclose()


async def test_bad_json_rpc_gets_the_specs_codes_and_nothing_reaches_the_bus(
    gateway: Gateway, key: str,
) -> None:
    nc, _ = await bus(gateway)
    js = nc.jetstream()
    journal = gateway.stack.settings.subjects.stream(Stream.JOURNAL)
    before = (await js.stream_info(journal)).state.messages
    auth = {"Authorization": f"Bearer {key}", "A2A-Version": "1.0"}

    def call(method: str, params: Any, rid: Any = 1) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": rid, "method": method, "params": params}

    try:
        async with httpx.AsyncClient(headers=auth) as http:
            malformed = await http.post(gateway.url, content=b'{"jsonrpc": "2.0", "id": 1,')
            assert malformed.json()["error"]["code"] == -32700
            unknown = await http.post(gateway.url, json=call("DeleteEverything", {}))
            assert unknown.json()["error"]["code"] == -32601
            wrong = await http.post(gateway.url, json=call("SendMessage", {"message": 5}))
            assert wrong.json()["error"]["code"] == -32602
            no_rpc = await http.post(gateway.url, json={"jsonrpc": "1.0", "id": 1,
                                                        "method": "GetTask"})
            assert no_rpc.json()["error"]["code"] == -32600
            huge = await http.post(gateway.url, json=call("SendMessage", {"message": {
                "messageId": "x", "role": "ROLE_USER",
                "parts": [{"text": "x" * 2_000_000}]}}))
            assert huge.status_code == 413 and huge.json()["error"]["code"] == -32600
            old = await http.post(gateway.url, headers={"A2A-Version": "0.3"},
                                  json=call("tasks/get", {"id": "a2a-nothing"}))
            assert old.json()["error"]["code"] == -32001  # the 0.3 name: task not found
        after = (await js.stream_info(journal)).state.messages
    finally:
        await nc.close()
    assert after == before


async def test_where_the_workflow_lets_it_a_caller_answers_the_escalation_itself(
    gateway: Gateway,
) -> None:
    key = Keys(keys_file(gateway.stack)).add("answerer", ["support-open"])
    client, http = await a2a_client(gateway.url, key)
    follower, http2 = await a2a_client(gateway.url, key, streaming=True)
    try:
        task = await final(client, ticket("hmm something maybe", skill="support-open"))
        assert task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
        subscribed = follower.subscribe(SubscribeToTaskRequest(id=task.id))
        async with asyncio.timeout(30):
            assert (await anext(subscribed)).WhichOneof("payload") == "task"
        answer = Message(role=Role.ROLE_USER, message_id=uuid.uuid4().hex, task_id=task.id,
                         context_id=task.context_id, parts=[Part(text="approve: a billing one")])
        await final(client, answer)
        last = None
        async with asyncio.timeout(60):
            async for response in subscribed:
                if response.WhichOneof("payload") == "status_update":
                    last = response.status_update.status.state
                    if last == TaskState.TASK_STATE_COMPLETED:
                        break
        assert last == TaskState.TASK_STATE_COMPLETED
    finally:
        await http.aclose()
        await http2.aclose()
    nc, sw = await bus(gateway)
    try:
        (record,) = [r for r in await sw.journal_records(task.id)
                     if r.subject.endswith(".decision")]
    finally:
        await nc.close()
    decision = msgspec.json.decode(record.data)
    assert (decision["reviewer"], decision["action"]) == ("a2a:answerer", "approve")
    assert decision["note"] == "a billing one"


async def test_a_task_whose_replica_died_is_settled_by_another_from_the_runs_outcome(
    gateway: Gateway, key: str,
) -> None:
    base = free_ports(2)
    one_url = await gateway.replica(base)
    one = gateway.procs[-1]
    gateway.env["SWITCHYARD_A2A_SETTLE_S"] = "0"  # the survivor settles at once
    try:
        two_url = await gateway.replica(base + 1)
    finally:
        del gateway.env["SWITCHYARD_A2A_SETTLE_S"]
    client, http = await a2a_client(one_url, key)
    try:
        task = await final(client, ticket("hmm something maybe"))
    finally:
        await http.aclose()
    assert task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
    one.proc.kill()  # the replica that follows the run dies
    await one.proc.wait()
    nc, sw = await bus(gateway)
    try:
        (esc,) = [e for e in await sw.escalations() if e.workflow_id == task.id]
        await sw.decide(esc.id, "approve", reviewer="ann")
        assert (await sw.wait(task.id, timeout=60, stop_at_escalation=False)).status == "completed"
    finally:
        await nc.close()
    two, http = await a2a_client(two_url, key, streaming=True)
    try:  # a subscription to it ends at once with its end; so does a get
        async with asyncio.timeout(30):
            first = await anext(two.subscribe(SubscribeToTaskRequest(id=task.id)))
        assert first.task.status.state == TaskState.TASK_STATE_COMPLETED
        settled = await two.get_task(GetTaskRequest(id=task.id))
    finally:
        await http.aclose()
    assert settled.status.state == TaskState.TASK_STATE_COMPLETED and settled.artifacts


async def test_cancel_ends_the_a2a_task_and_leaves_the_run_to_its_journal(
    gateway: Gateway, key: str,
) -> None:
    from a2a.types import CancelTaskRequest

    client, http = await a2a_client(gateway.url, key)
    try:
        task = await final(client, ticket("hmm something maybe"))
        assert task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
        canceled = await client.cancel_task(CancelTaskRequest(id=task.id))
        assert canceled.status.state == TaskState.TASK_STATE_CANCELED
        again = await client.get_task(GetTaskRequest(id=task.id))
        assert again.status.state == TaskState.TASK_STATE_CANCELED
    finally:
        await http.aclose()
    nc, sw = await bus(gateway)
    try:  # the run still waits for its person: a caller does not end it
        assert [e.workflow_id for e in await sw.escalations()].count(task.id) == 1
    finally:
        await nc.close()
