"""Fixtures: one real nats-server per session (or --nats-url / NATS_URL), a connection per test,
and a unique subject prefix per test so tests share the server but not state."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from nats.js.client import JetStreamContext

from switchyard import credentials
from switchyard.natsd import NatsServer, find_binary
from switchyard.protocol import Subjects, grants
from switchyard.protocol.bus.provision import ensure_streams, provision
from switchyard.supervisor import authz
from switchyard.supervisor.policy import Policy


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--nats-url", default=os.environ.get("NATS_URL", ""),
                     help="run against this NATS server instead of starting one")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """How long each deployment and fault-injection test took, set-up (image builds) included:
    the numbers CI is asked to show."""
    took: dict[str, float] = {}
    outcome: dict[str, str] = {}
    told: dict[str, list[str]] = {}  # what a test recorded as its report (record_property)
    for status in ("passed", "failed", "error", "skipped"):
        for rep in terminalreporter.stats.get(status, []):
            keywords = getattr(rep, "keywords", {})
            if "deploy" in keywords or "chaos" in keywords:
                took[rep.nodeid] = took.get(rep.nodeid, 0.0) + rep.duration
                if rep.when == "call" or status != "passed":
                    outcome[rep.nodeid] = status
                told.setdefault(rep.nodeid, []).extend(
                    str(v) for k, v in getattr(rep, "user_properties", []) if k == "report")
    if took:
        terminalreporter.section("deployment and chaos tests: time taken (set-up included)")
        for nodeid, seconds in took.items():
            terminalreporter.write_line(f"{seconds:7.1f} s  {outcome.get(nodeid, '?'):7}  {nodeid}")
            for line in dict.fromkeys(told.get(nodeid, [])):
                terminalreporter.write_line(f"           {line}")


@pytest.fixture(autouse=True)
def _no_remote_model_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Model calls may only go to loopback (pydantic-ai's ALLOW_MODEL_REQUESTS idea)."""
    import httpx

    real_send = httpx.AsyncClient.send

    async def guarded(self: httpx.AsyncClient, request: httpx.Request, **kw: Any) -> httpx.Response:
        if request.url.host not in ("127.0.0.1", "localhost", "::1"):
            raise AssertionError(f"test tried to reach {request.url.host}; only loopback is allowed")
        return await real_send(self, request, **kw)

    monkeypatch.setattr(httpx.AsyncClient, "send", guarded)


def _docker_nats() -> Any:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from testcontainers.nats import NatsContainer  # type: ignore[import-not-found]

    return NatsContainer(nats_image()).with_command("-js")


def nats_image() -> str:
    """The NATS image ``compose.yaml`` pins: the container tests use that one, not a copy."""
    pinned = re.search(r"image: (docker\.io/library/nats:\S+)",
                       (Path(__file__).parents[1] / "compose.yaml").read_text())
    assert pinned, "compose.yaml pins no official NATS image"
    return pinned.group(1)


@pytest.fixture(scope="session")
async def nats_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    given = request.config.getoption("--nats-url")
    if given:
        yield given
        return
    try:
        find_binary()
    except FileNotFoundError:
        if not shutil.which("docker"):
            raise
        with _docker_nats() as container:  # a real server in Docker, never a mock
            yield container.nats_uri()
        return
    async with NatsServer(sync_always=False) as server:
        yield server.url


@pytest.fixture
def subjects() -> Subjects:
    return Subjects(f"t{uuid.uuid4().hex[:10]}")


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    conn = await nats.connect(nats_url)
    yield conn
    await conn.drain()


@pytest.fixture
async def js(nc: Client, subjects: Subjects) -> JetStreamContext:
    ctx = nc.jetstream()
    await ensure_streams(ctx, subjects)
    return ctx


@pytest.fixture(scope="session")
def seed() -> bytes:
    return grants.new_seed()


@pytest.fixture(scope="session")
def signer(seed: bytes) -> grants.Signer:
    return grants.Signer(seed)


class Watch:
    """Messages on a subject (from a stream, from the start), awaited with a bound."""

    def __init__(self, sub: Any) -> None:
        self.sub = sub

    async def next(self, timeout: float = 10.0) -> Msg:
        async with asyncio.timeout(timeout):
            msg: Msg = await self.sub.next_msg(timeout=None)
            return msg

    async def until(self, pred: Callable[[Msg], bool], timeout: float = 10.0) -> Msg:
        async with asyncio.timeout(timeout):
            while True:
                msg: Msg = await self.sub.next_msg(timeout=None)
                if pred(msg):
                    return msg


@pytest.fixture
async def watch(js: JetStreamContext) -> AsyncIterator[Callable[[str], Awaitable[Watch]]]:
    subs: list[Any] = []

    async def make(subject: str) -> Watch:
        sub = await js.subscribe(subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
        subs.append(sub)
        return Watch(sub)

    yield make
    for sub in subs:  # unread messages would hold up the connection's drain
        await sub.unsubscribe()


class SecuredBus:
    """A nats-server of its own under the authorization generated from a policy."""

    def __init__(self, server: NatsServer, creds: credentials.Credentials) -> None:
        self.server = server
        self.creds = creds
        self._conns: list[Client] = []

    async def connect(self, identity: str) -> Client:
        conn = await nats.connect(self.server.url, **self.creds.connect_options(identity))
        self._conns.append(conn)
        return conn

    def violations(self) -> list[str]:
        return [line for line in self.server.log if "Violation" in line]

    async def close(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(Exception):
                await conn.close()


@contextlib.asynccontextmanager
async def secured_bus(tmp: Path, subjects: Subjects, policy: Policy | None,
                      roles: Iterable[str]) -> AsyncIterator[SecuredBus]:
    creds = credentials.Credentials(tmp / "creds")
    auth = authz.authorization(authz.identities(policy, roles, subjects), creds.public_key)
    async with NatsServer(store_dir=tmp / "nats", sync_always=False, config_extra=auth) as server:
        bus = SecuredBus(server, creds)
        admin = await bus.connect(authz.ADMIN)  # provisions what the others may only use
        await provision(admin.jetstream(), subjects)
        try:
            yield bus
        finally:
            await bus.close()
