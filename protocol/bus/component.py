"""Component: the lifecycle the agent runtime, the supervisor and the tool host share.

Built as nats micro's ``add_service(nc, config)`` is: a config object plus an optional connection
(adopted, or opened from the config and then owned), an async context manager, and an idempotent
``stop()``. Starting connects (or adopts), provisions the streams and buckets, starts the publisher, the audit
writer and the dead letters, lets the component set itself up, registers its micro service and
then starts taking work. Stopping is one order for all::

    stop taking work (consumers, endpoints)
    -> wait for in-flight work, up to ``graceful_timeout``
    -> cancel what is left and ``nak`` its message, so it is redelivered (it was never acked)
    -> stop the service and the publisher, drain the connection if it is ours

The state is an enum; misuse (starting twice) raises a clear ``RuntimeError``. Signal handling is
not here: the CLI sets a stop event, and ``serve`` stops on it.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self, TypeVar

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext
from nats.micro import add_service
from nats.micro.service import Service, ServiceConfig
from prometheus_client import CollectorRegistry

from switchyard.protocol import codec
from switchyard.protocol.bus.audit import AuditLog
from switchyard.protocol.bus.consumer import PullConsumer
from switchyard.protocol.bus.dead_letters import DeadLetters
from switchyard.protocol.bus.faults import Faults
from switchyard.protocol.bus.journal import Journal
from switchyard.protocol.bus.provision import TRAIL_MAX_AGE_S, await_layout, provision
from switchyard.protocol.bus.publisher import Publisher
from switchyard.protocol.bus.tasks import cancel_and_wait, unless_stopped
from switchyard.protocol.bus.transient import START_WAIT_S, ride_out
from switchyard.protocol.faults import FaultPlan
from switchyard.protocol.subjects import Subjects

log = structlog.get_logger("switchyard.component")
T = TypeVar("T")
BUS_STEP_S = 3.0  # how long one stop step may wait on the bus


def servers(url: str) -> list[str]:
    """The server list of ``NATS_URL``, which may name several (``nats://a:4222,nats://b:4222``,
    the nodes of a cluster): ``nats.connect`` takes a string as one URL, so give it this list."""
    return [u.strip() for u in url.split(",") if u.strip()]


class ComponentState(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True, kw_only=True)
class ComponentConfig:
    """What every component is configured with; each component's config adds its own."""

    nats_url: str = "nats://127.0.0.1:4222"
    subjects: Subjects = field(default_factory=Subjects)
    # extra ``nats.connect`` options: credentials and inbox prefix under a secured bus
    connect_options: Mapping[str, Any] = field(default_factory=dict)
    graceful_timeout: float = 10.0  # how long stop() waits for in-flight work
    publish_timeout: float = 10.0
    max_bytes: int = codec.DEFAULT_MAX_BYTES
    faults: FaultPlan = field(default_factory=FaultPlan)  # inert unless the chaos suite sets one
    # how long journals, tool-call chains and dead letters are kept, for streams this creates
    trail_max_age_s: float = TRAIL_MAX_AGE_S
    # the replication factor of the streams and buckets this creates (3 on a three-node cluster)
    replicas: int = 1
    # create missing streams and buckets at start; else wait for them (on a secured bus only
    # the admin may create them)
    provisions: bool = True


class Component:
    """The shared lifecycle. Subclasses name themselves (``_kind``, ``_name``), build their service
    config, and fill in ``_setup`` (before the service) and ``_take_work`` (after it)."""

    _kind = "component"

    def __init__(
        self, config: ComponentConfig, *, nc: Client | None = None,
        metrics: CollectorRegistry | None = None,
    ) -> None:
        self._config = config
        self._nc = nc
        self._own_nc = False
        self._metrics_registry = metrics or CollectorRegistry()
        self._state = ComponentState.NEW
        self._js: JetStreamContext | None = None
        self._publisher: Publisher | None = None
        self._audit: AuditLog | None = None
        self._dead_letters: DeadLetters | None = None
        self._journal: Journal | None = None
        self._service: Service | None = None
        self._consumers: list[PullConsumer] = []
        self._inflight: dict[asyncio.Task[None], Msg | None] = {}  # work not under a consumer
        self.faults = Faults(config.faults)

    # what a subclass provides ------------------------------------------------------------------

    @property
    def _name(self) -> str:
        """Who this is, in audit records, dead letters and the connection name."""
        return self._kind

    def _service_config(self) -> ServiceConfig:
        raise NotImplementedError

    async def _setup(self) -> None:
        """After the bus is ready (streams, publisher, audit), before the service is added."""

    async def _take_work(self) -> None:
        """After the service is added: start consumers (``_consume``), endpoints, timers."""

    async def _stop_taking_work(self) -> None:
        """Beyond the consumers, which the lifecycle stops itself (endpoints, timers)."""

    async def _close(self) -> None:
        """After in-flight work is done or cancelled, before the connection drains."""

    # shared parts ------------------------------------------------------------------------------

    @property
    def state(self) -> ComponentState:
        return self._state

    @property
    def nc(self) -> Client:
        if self._nc is None:
            raise RuntimeError(f"{self._name} is not started")
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError(f"{self._name} is not started")
        return self._js

    @property
    def publisher(self) -> Publisher:
        if self._publisher is None:
            raise RuntimeError(f"{self._name} is not started")
        return self._publisher

    @property
    def audit(self) -> AuditLog:
        if self._audit is None:
            raise RuntimeError(f"{self._name} is not started")
        return self._audit

    @property
    def journal(self) -> Journal:
        if self._journal is None:
            raise RuntimeError(f"{self._name} is not started")
        return self._journal

    @property
    def dead_letters(self) -> DeadLetters:
        if self._dead_letters is None:
            raise RuntimeError(f"{self._name} is not started")
        return self._dead_letters

    async def _consume(
        self, stream: str, durable: str, handler: Callable[[Msg], Coroutine[Any, Any, None]],
        capacity: int,
    ) -> PullConsumer:
        async def guarded(msg: Msg) -> None:
            # the loop boundary: a handler that raises is a bug, logged with its traceback; the
            # message is kept (nak with a delay) and the process keeps serving
            try:
                await handler(msg)
            except Exception:
                log.exception(f"{self._kind}.handler_failed", name=self._name, subject=msg.subject)
                await self._bounded(msg.nak(delay=1.0), "nak")

        consumer = await PullConsumer(self.nc, stream, durable, guarded, capacity=capacity).start()
        self._consumers.append(consumer)
        return consumer

    async def _ride_out(self, op: Callable[[], Awaitable[T]], what: str) -> T:
        """A step of starting that is safe to repeat, retried while the bus says "not yet" (a
        cluster electing a leader, a node slow to answer) for up to ``START_WAIT_S``: a process
        started during a failover waits it out instead of dying of its first timeout."""
        return await ride_out(op, within=START_WAIT_S, what=f"{self._name}: {what}")

    def _spawn(self, work: Coroutine[Any, Any, None], msg: Msg | None = None) -> None:
        """Run work the lifecycle waits for on stop (and naks ``msg`` of, if cancelled)."""
        task = asyncio.ensure_future(work)
        self._inflight[task] = msg
        task.add_done_callback(self._inflight.pop)

    @property
    def in_flight(self) -> int:
        return len(self._inflight) + sum(len(c.inflight) for c in self._consumers)

    # the lifecycle -----------------------------------------------------------------------------

    async def start(self) -> Self:
        if self._state is not ComponentState.NEW:
            raise RuntimeError(f"{self._name} already {self._state.value}")
        self._state = ComponentState.STARTING
        cfg = self._config
        try:
            if self._nc is None:  # ours before it connects: a stop meanwhile closes it too
                self._nc, self._own_nc = Client(), True
                options = {"error_cb": self._bus_error, **cfg.connect_options}
                await self._nc.connect(servers(cfg.nats_url),
                                       name=f"{cfg.subjects.prefix}-{self._name}", **options)
            self._js = self._nc.jetstream()
            if cfg.provisions:  # idempotent: after a timeout (a cluster electing) all again
                await self._ride_out(lambda: provision(
                    self.js, cfg.subjects, replicas=cfg.replicas,
                    trail_max_age=cfg.trail_max_age_s), "provision")
            else:
                await await_layout(self._js, cfg.subjects, waiting=lambda missing: log.info(
                    f"{self._kind}.waiting_for_layout", name=self._name, missing=missing))
            self._publisher = await Publisher(self._nc, timeout=cfg.publish_timeout).start()
            self._audit = AuditLog(self._js, cfg.subjects, self._name, publisher=self._publisher,
                                   timeout=cfg.publish_timeout)
            self._dead_letters = DeadLetters(self._publisher, self._audit, cfg.subjects, self._name)
            self._journal = Journal(self._js, cfg.subjects, publisher=self._publisher,
                                    timeout=cfg.publish_timeout)
            await self._setup()
            self._service = await add_service(self._nc, self._service_config())
            await self._take_work()
        except BaseException:
            await self._shutdown(0.0)
            raise
        self._state = ComponentState.RUNNING
        log.info(f"{self._kind}.started", name=self._name)
        return self

    async def _bus_error(self, error: Exception) -> None:
        """One log line per error of the connection (a server not up yet, a reconnect), instead
        of nats.py's traceback each time it retries."""
        log.warning(f"{self._kind}.bus_error", name=self._name, error=str(error) or repr(error))

    async def stop(self, *, graceful_timeout: float | None = None) -> None:
        """Stop taking work, let in-flight work finish (bounded), nak the rest, drain. Idempotent."""
        if self._state in (ComponentState.STOPPING, ComponentState.STOPPED):
            return
        if self._state is ComponentState.NEW:
            self._state = ComponentState.STOPPED
            return
        wait = self._config.graceful_timeout if graceful_timeout is None else graceful_timeout
        await self._shutdown(wait)
        log.info(f"{self._kind}.stopped", name=self._name)

    async def _shutdown(self, wait: float) -> None:
        """The one stop order. Every step that talks to the bus is bounded, so a component whose
        server has gone (``switchyard up`` killed outright takes the embedded one with it) still
        stops by itself instead of waiting on a drain that cannot finish."""
        self._state = ComponentState.STOPPING
        for consumer in self._consumers:
            await self._bounded(consumer.stop(), "consumer stop")
        await self._bounded(self._stop_taking_work(), "stop taking work")
        inflight: dict[asyncio.Task[None], Msg | None] = dict(self._inflight)
        for consumer in self._consumers:
            inflight.update(consumer.inflight)
        if inflight:
            _, pending = await asyncio.wait(list(inflight), timeout=wait)
            for task in pending:
                await cancel_and_wait(task)
                msg = inflight[task]
                if msg is not None:  # never acked: let the server hand it out again
                    await self._bounded(msg.nak(), "nak")
        await self._close()
        if self._service is not None:
            await self._bounded(self._service.stop(), "service stop")
        if self._publisher is not None:
            await self._publisher.stop()
        if self._own_nc and self._nc is not None:
            if not await self._bounded(self._nc.drain(), "drain"):
                await self._bounded(self._nc.close(), "close")
        self._state = ComponentState.STOPPED

    async def _bounded(self, step: Coroutine[Any, Any, object], what: str) -> bool:
        """Run one stop step against the bus for at most ``BUS_STEP_S``; True if it finished."""
        try:
            async with asyncio.timeout(BUS_STEP_S):
                await step
        except TimeoutError:
            log.warning(f"{self._kind}.stop_step_timed_out", name=self._name, step=what)
            return False
        except Exception as exc:  # the bus is gone or refuses: stopping goes on regardless
            log.warning(f"{self._kind}.stop_step_failed", name=self._name, step=what,
                        error=str(exc))
            return False
        return True

    async def __aenter__(self) -> Self:
        if self._state is ComponentState.NEW:
            await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def serve(self, stop: asyncio.Event) -> None:
        """Start (unless ``stop`` is set first), run until ``stop`` is set, then stop gracefully."""
        if not await unless_stopped(stop, self.start()):
            return
        try:
            await stop.wait()
        finally:
            await self.stop()
