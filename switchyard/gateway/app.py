"""The A2A gateway (``switchyard a2a serve``): Switchyard's workflows as one A2A v1.0 agent, a
skill per workflow, on the official a2a-sdk (its JSON-RPC dispatcher, types, request handler
and client; the 0.3 method names accepted too).

- **Who**: every call but the public card and ``/healthz`` presents a key (``Authorization:
  Bearer <key>`` or ``X-API-Key``) from the keys file, each naming the workflows it may call;
  the key's name owns the tasks it makes and is the submitter and decider on the bus.
- **The card** at ``/.well-known/agent-card.json`` says nothing a caller may not see: without a
  key, no skills; with one, the caller's workflows (name and description only). The extended
  card (``GetExtendedAgentCard``) is the same list.
- **Once per message**: a first message's task id is derived from the caller and its
  ``messageId``, and so is the run's workflow id: a retried ``SendMessage`` gets the task its
  first send made, and the journal takes the submission once.
- **State**: tasks in KV and their events on a stream (``gateway.store``), so any replica
  answers ``GetTask``, ``ListTasks`` and ``SubscribeToTask`` for a task another one runs.
- **People**: an escalation is ``input-required``. A caller may answer it with a message on the
  task only where the workflow says so (``a2a_answers: true``); it is then a ``Decision`` under
  the caller's name (``a2a:<key name>``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import nats
import structlog
from a2a.server.agent_execution import SimpleRequestContextBuilder
from a2a.server.cluster import ConcurrentTaskModificationError, VersionedEvent
from a2a.server.context import ServerCallContext
from a2a.server.events import Event
from a2a.server.request_handlers import DefaultRequestHandlerV2
from a2a.server.request_handlers.response_helpers import agent_card_to_dict
from a2a.server.routes import create_jsonrpc_routes
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    APIKeySecurityScheme,
    Artifact,
    GetTaskRequest,
    HTTPAuthSecurityScheme,
    ListTasksRequest,
    ListTasksResponse,
    Message,
    Part,
    Role,
    SecurityRequirement,
    SecurityScheme,
    SendMessageRequest,
    StringList,
    SubscribeToTaskRequest,
    Task,
    TaskState,
    TaskStatus,
    TaskStatusUpdateEvent,
)
from a2a.utils.errors import InvalidParamsError, UnsupportedOperationError
from google.protobuf.json_format import MessageToDict
from prometheus_client import CollectorRegistry, Counter
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, SimpleUser
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from switchyard.client import SwitchyardClient
from switchyard.gateway.executor import (
    BadRequest,
    WorkflowExecutor,
    data_part,
    request_of,
    whole,
)
from switchyard.gateway.keys import Caller, Keys
from switchyard.gateway.store import (
    TERMINAL,
    JetStreamEventStream,
    JetStreamTaskStore,
    owner_of,
    task_id_for,
)
from switchyard.protocol.bus.component import servers
from switchyard.protocol.bus.provision import open_bucket, ready_layout
from switchyard.protocol.subjects import Bucket, Stream
from switchyard.settings import Settings
from switchyard.supervisor.workflow import Workflow

log = structlog.get_logger("switchyard.gateway")
CARD_PATH = "/.well-known/agent-card.json"
END_STATES = {"completed": TaskState.TASK_STATE_COMPLETED,
              "rejected": TaskState.TASK_STATE_REJECTED, "failed": TaskState.TASK_STATE_FAILED}


class KeyAuth:
    """Refuses, with 401, a call that presents no known key (a pure ASGI middleware, so server-sent
    events pass through untouched); a known one becomes the request's user."""

    def __init__(self, app: ASGIApp, keys: Keys, refused: Counter) -> None:
        self.app, self.keys, self.refused = app, keys, refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in (CARD_PATH, "/healthz"):
            await self.app(scope, receive, send)
            return
        caller = caller_of(Headers(scope=scope), self.keys)
        if caller is None:
            log.warning("gateway.refused", path=scope["path"], why="no known key")
            self.refused.inc()
            await JSONResponse({"error": "unauthenticated",
                                "detail": "present a key: Authorization: Bearer <key>, or "
                                          "X-API-Key: <key>"}, status_code=401,
                               headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
            return
        scope["user"] = SimpleUser(caller.name)
        scope["auth"] = AuthCredentials(["authenticated"])
        scope.setdefault("state", {})["caller"] = caller
        await self.app(scope, receive, send)


def caller_of(headers: Headers, keys: Keys) -> Caller | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    key = token.strip() if scheme.lower() == "bearer" else headers.get("x-api-key", "").strip()
    return keys.caller(key) if key else None


class RunIds(SimpleRequestContextBuilder):
    """A first message's task id: derived from its sender and ``messageId``."""

    async def build(self, context: ServerCallContext, params: SendMessageRequest | None = None,
                    task_id: str | None = None, context_id: str | None = None,
                    task: Task | None = None) -> Any:
        if task_id is None and params is not None and params.message.message_id:
            task_id = task_id_for(owner_of(context), params.message.message_id)
            context_id = context_id or task_id  # so copies sent at once agree on it too
        return await super().build(context, params, task_id, context_id, task)


class Gateway(DefaultRequestHandlerV2):
    """The SDK's handler, with two doors of Switchyard's own before it: a message already taken
    (its task is returned, nothing runs again), and an answer to a person's question."""

    def __init__(self, *args: Any, client: SwitchyardClient, store: JetStreamTaskStore,
                 events: JetStreamEventStream, flows: dict[str, Workflow],
                 allowed: Callable[[str], list[str]], settle_s: float = 5.0,
                 **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "event_stream": events})
        self.client, self.store, self.events, self.flows = client, store, events, flows
        self.allowed, self.settle_s = allowed, settle_s

    async def on_get_task(self, params: GetTaskRequest,
                          context: ServerCallContext) -> Task | None:
        """The task; one its replica stopped following (it died, or the only gateway was
        restarted) is brought to its run's end here, from the outcome the bus keeps."""
        task: Task | None = await super().on_get_task(params, context)
        if task is None or task.status.state in TERMINAL:
            return task
        return await self._settle(task, context)

    async def on_list_tasks(self, params: ListTasksRequest,
                            context: ServerCallContext) -> ListTasksResponse:
        listed: ListTasksResponse = await super().on_list_tasks(params, context)
        for n, task in enumerate(listed.tasks):
            if task.status.state not in TERMINAL:
                listed.tasks[n].CopyFrom(await self._settle(task, context))
        return listed

    async def on_subscribe_to_task(
        self, params: SubscribeToTaskRequest, context: ServerCallContext,
    ) -> AsyncGenerator[Event, None]:
        stored = await self.store.get(params.id, context)
        if stored is not None and stored.task.status.state not in TERMINAL:
            settled = await self._settle(stored.task, context)
            if settled.status.state in TERMINAL:
                yield settled  # it ended while nobody followed it: its end, and no more
                return
        async for event in super().on_subscribe_to_task(params, context):
            yield event

    async def _settle(self, task: Task, context: ServerCallContext) -> Task:
        if await self._active_task_registry.get(task.id) is not None:
            return task  # this replica follows it
        out = await self.client.outcome(task.id)
        if out is None or time.time() - out.finished_at < self.settle_s:
            return task  # not ended, or its own replica has a moment yet to say so
        stored = await self.store.get(task.id, context)
        if stored is None or stored.task.status.state in TERMINAL:
            return stored.task if stored else task
        settled = Task()
        settled.CopyFrom(stored.task)
        settled.status.CopyFrom(TaskStatus(state=END_STATES.get(
            str(out.status), TaskState.TASK_STATE_FAILED), message=Message(
                role=Role.ROLE_AGENT, message_id=f"{task.id}:end",
                parts=[Part(text=out.reason or str(out.status))])))
        if out.status == "completed":
            settled.artifacts.append(Artifact(artifact_id=f"{task.id}:output", name="output",
                                              parts=[data_part(dict(out.output or {}))]))
        try:
            version = await self.store.save(settled, event=None, prev=stored.task,
                                            prev_version=stored.version, context=context)
        except ConcurrentTaskModificationError:  # its replica said it first after all
            again = await self.store.get(task.id, context)
            return again.task if again else task
        await self.events.publish(task.id, VersionedEvent(TaskStatusUpdateEvent(
            task_id=task.id, context_id=task.context_id, status=settled.status), version))
        log.info("gateway.settled", task=task.id, status=str(out.status))
        return settled

    async def _taken(self, params: SendMessageRequest, context: ServerCallContext) -> Task | None:
        message = params.message
        if message.task_id:
            return await self._answer(message, context)
        if not message.message_id:
            raise InvalidParamsError(message="a message needs a messageId")
        try:
            request_of(message, MessageToDict(params.metadata), self.allowed(owner_of(context)))
        except BadRequest as exc:
            raise InvalidParamsError(message=str(exc)) from None
        stored = await self.store.get(task_id_for(owner_of(context), message.message_id),
                                      context)
        if stored is not None:
            log.info("gateway.retried", task=stored.task.id, message_id=message.message_id)
            return stored.task
        return None

    async def _answer(self, message: Message, context: ServerCallContext) -> Task:
        stored = await self.store.get(message.task_id, context)
        if stored is None:
            return None  # type: ignore[return-value]  # the SDK answers: task not found
        task = stored.task
        if task.status.state != TaskState.TASK_STATE_INPUT_REQUIRED:
            raise UnsupportedOperationError(
                message=f"task {task.id} waits for nobody ({TaskState.Name(task.status.state)})")
        state = await self.client.outcome(task.id)
        waiting = [e for e in await self.client.escalations() if e.workflow_id == task.id]
        flow = self.flows.get(waiting[0].workflow) if waiting else None
        if state is not None or not waiting:
            raise UnsupportedOperationError(message=f"task {task.id} waits for nobody now")
        if flow is None or not flow.a2a_answers:
            raise UnsupportedOperationError(message=(
                f"a person in Switchyard decides this (workflow {waiting[0].workflow} does not "
                "let A2A callers answer its escalations)"))
        decision = decision_of(message)
        caller = owner_of(context)
        await self.client.decide(waiting[0].id, decision["action"], reviewer=f"a2a:{caller}",
                                 output=decision.get("output"), note=decision.get("note", ""))
        log.info("gateway.answered", task=task.id, action=decision["action"], caller=caller)
        return task

    async def on_message_send(self, params: SendMessageRequest,
                              context: ServerCallContext) -> Message | Task:
        taken = await self._taken(params, context)
        if taken is not None:
            return taken
        sent: Message | Task = await super().on_message_send(params, context)
        return sent

    async def on_message_send_stream(
        self, params: SendMessageRequest, context: ServerCallContext,
    ) -> AsyncGenerator[Event, None]:
        taken = await self._taken(params, context)
        if taken is None:
            async for event in super().on_message_send_stream(params, context):
                yield event
            return
        if taken.status.state in TERMINAL:
            yield taken
            return
        async for event in self.on_subscribe_to_task(SubscribeToTaskRequest(id=taken.id),
                                                     context):
            yield event


def decision_of(message: Message) -> dict[str, Any]:
    """A caller's answer: a data part ``{"action": "approve"|"reject"|"edit", "output": {...},
    "note": "..."}``, or a text that starts with approve or reject."""
    for part in message.parts:
        if part.WhichOneof("content") == "data":
            found = whole(MessageToDict(part.data))
            if isinstance(found, dict) and found.get("action") in ("approve", "reject", "edit"):
                if found["action"] == "edit" and not isinstance(found.get("output"), dict):
                    raise InvalidParamsError(message="an edit carries its output as an object")
                return found
    text = " ".join(p.text for p in message.parts if p.WhichOneof("content") == "text").strip()
    word = text[:7].lower()
    if word.startswith("approve") or word.startswith("reject"):
        action = "approve" if word.startswith("approve") else "reject"
        return {"action": action, "note": text[len(action):].lstrip(" :,-").strip()}
    raise InvalidParamsError(message="answer with a data part {\"action\": \"approve\" | "
                                     "\"reject\" | \"edit\", ...}, or a text: approve / reject")


def card(settings: Settings, flows: list[Workflow], *, public: bool = False) -> AgentCard:
    """The card: a skill per workflow the caller may call; without a key, one skill that only
    says to present one (the spec wants a skill, and the workflows are no stranger's to know)."""
    url = settings.a2a_public_url
    skills = [AgentSkill(id=wf.name, name=wf.name, description=wf.description or wf.name,
                         tags=["switchyard", "workflow"]) for wf in flows]
    if public:
        skills = [AgentSkill(id="workflows", name="workflows", tags=["switchyard"],
                             description="Present a key to see the workflows you may call.")]
    return AgentCard(
        name="Switchyard", version="2.0",
        description="Governed workflows of a Switchyard deployment, a skill each.",
        supported_interfaces=[
            AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="1.0"),
            AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="0.3")],
        capabilities=AgentCapabilities(streaming=True, push_notifications=False,
                                       extended_agent_card=True),
        default_input_modes=["text/plain", "application/json"],
        default_output_modes=["application/json", "text/plain"],
        skills=skills,
        security_schemes={
            "bearer": SecurityScheme(http_auth_security_scheme=HTTPAuthSecurityScheme(
                scheme="bearer", bearer_format="opaque")),
            "apiKey": SecurityScheme(api_key_security_scheme=APIKeySecurityScheme(
                location="header", name="X-API-Key"))},
        security_requirements=[SecurityRequirement(schemes={"bearer": StringList(list=[])}),
                               SecurityRequirement(schemes={"apiKey": StringList(list=[])})],
    )


def create_gateway(settings: Settings, *, metrics: CollectorRegistry | None = None) -> Starlette:
    keys = Keys(settings.a2a_keys_file)
    registry = metrics or CollectorRegistry()
    refused = Counter("switchyard_a2a_refused", "Calls refused for want of a known key",
                      registry=registry)
    runs = Counter("switchyard_a2a_runs", "Workflow runs submitted through the gateway",
                   ["workflow"], registry=registry)
    exposed = settings.a2a_exposed()
    state: dict[str, Any] = {}

    def allowed(name: str) -> list[str]:
        found = next((c for _, c in keys.load().values() if c.name == name), None)
        return [w for w in exposed if found is not None and found.may_call(w)]

    def card_for(caller: Caller | None) -> AgentCard:
        mine = [exposed[w] for w in (allowed(caller.name) if caller else [])]
        return card(settings, mine, public=caller is None)

    async def public_card(request: Request) -> Response:
        return JSONResponse(agent_card_to_dict(card_for(caller_of(request.headers, keys))))

    async def healthz(request: Request) -> Response:
        nc = state.get("nc")
        ok = nc is not None and nc.is_connected
        return JSONResponse({"nats": "connected" if ok else "reconnecting"},
                            status_code=200 if ok else 503)

    async def extended(base: AgentCard, context: ServerCallContext) -> AgentCard:
        return card_for(next((c for _, c in keys.load().values()
                              if c.name == owner_of(context)), None))

    handler_box: dict[str, Gateway] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nc = await nats.connect(servers(settings.nats_url), name="switchyard-a2a",
                                max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                                **settings.connect_options())
        state["nc"] = nc
        js = nc.jetstream()
        s = settings.subjects
        await ready_layout(js, s, provisions=settings.provisions, replicas=settings.replicas,
                           trail_max_age=settings.trail_max_age_s)
        store = JetStreamTaskStore(await open_bucket(js, s.bucket(Bucket.A2A_TASKS)))
        events = JetStreamEventStream(js, f"{s.prefix}.a2a.events", s.stream(Stream.A2A_EVENTS))
        client = SwitchyardClient(nc, s)
        handler = Gateway(
            agent_executor=WorkflowExecutor(client, allowed, runs), task_store=store,
            agent_card=card(settings, list(exposed.values())), events=events,
            request_context_builder=RunIds(), extended_agent_card=card(settings, []),
            extended_card_modifier=extended, client=client, store=store, flows=exposed,
            allowed=allowed, settle_s=settings.a2a_settle_s)
        handler_box["h"] = handler
        try:
            yield
        finally:
            await handler.aclose()
            await nc.close()

    class Dispatch:
        """The SDK's JSON-RPC routes, bound to the handler made at start."""

        def __init__(self) -> None:
            self.app: ASGIApp | None = None

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if self.app is None:
                routes = create_jsonrpc_routes(handler_box["h"], rpc_url="/",
                                               enable_v0_3_compat=True)
                self.app = Starlette(routes=routes)
            await self.app(scope, receive, send)

    dispatch = Dispatch()
    app = Starlette(routes=[Route(CARD_PATH, public_card), Route("/healthz", healthz),
                            Route("/", dispatch, methods=["POST"])],
                    lifespan=lifespan)
    return BodyLimit(KeyAuth(app, keys, refused),  # type: ignore[return-value]
                     settings.a2a_max_body)


class BodyLimit:
    """Refuses a request body over ``limit`` bytes before anything reads it: 413 for a declared
    length, a JSON-RPC invalid request (-32600) for a chunked one that grows past it."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await JSONResponse({"jsonrpc": "2.0", "id": None, "error": {
                "code": -32600, "message": f"the request is over {self.limit} bytes"}},
                status_code=413)(scope, receive, send)
            return
        seen = 0

        async def limited() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except TooLarge:
            await JSONResponse({"jsonrpc": "2.0", "id": None, "error": {
                "code": -32600, "message": f"the request is over {self.limit} bytes"}},
                status_code=413)(scope, receive, send)


class TooLarge(Exception):
    pass
