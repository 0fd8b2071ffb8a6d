"""The console's web application: Starlette, server-rendered (Jinja2, autoescaped), live through
server-sent events, with no build step.

Who is signed in: a session (a signed cookie, SameSite=Lax) made by ``/login`` against the
users file, or, behind a company SSO proxy, the proxy's header, believed only from the proxy's
own addresses (``SWITCHYARD_CONSOLE_TRUSTED_PROXIES``). Every page but ``/login`` and
``/healthz`` wants a reviewer; every form carries the session's CSRF token, checked on every
POST."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import hmac
import ipaddress
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import jsonschema
import structlog
from nats.errors import Error as NatsError
from prometheus_client import CollectorRegistry, Counter
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from switchyard.console.bus import ClaimedByOther, ConsoleBus
from switchyard.console.users import NAME, Users
from switchyard.console.views import anchor, item, timeline
from switchyard.protocol import Escalation
from switchyard.protocol.bus.provision import open_bucket
from switchyard.protocol.errors import ConfigError
from switchyard.protocol.subjects import Bucket, check_token
from switchyard.settings import Settings
from switchyard.supervisor.catalog import WorkflowCatalog, definitions_of
from switchyard.supervisor.workflow import Workflow

log = structlog.get_logger("switchyard.console")
HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.filters["when"] = lambda at: datetime.datetime.fromtimestamp(
    float(at), tz=datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
HEADERS = {  # defence in depth beside the escaping: no inline script runs, no framing
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; "
                               "base-uri 'none'",
    "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin", "Cache-Control": "no-store",
}
Handler = Callable[[Request], Awaitable[Response]]


class Console:
    def __init__(self, settings: Settings, bus: ConsoleBus,
                 metrics: CollectorRegistry | None = None) -> None:
        self.settings, self.bus = settings, bus
        registry = metrics or CollectorRegistry()
        self.decisions = Counter("switchyard_console_decisions", "Decisions sent, by action",
                                 ["action"], registry=registry)
        self.refusals = Counter("switchyard_console_refusals",
                                "Requests refused, by HTTP status", ["status"], registry=registry)
        self.users = Users(settings.console_users_file)
        self._catalog: WorkflowCatalog | None = None
        self.proxies = [ipaddress.ip_network(p.strip(), strict=False)
                        for p in settings.console_trusted_proxies.split(",") if p.strip()]

    # who ----------------------------------------------------------------------------------------

    def reviewer(self, request: Request) -> str | None:
        header = self.settings.console_user_header
        if self.proxies and request.client is not None:
            try:
                peer = ipaddress.ip_address(request.client.host)
            except ValueError:
                peer = None
            if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
                peer = peer.ipv4_mapped  # a dual-stack socket's view of an IPv4 proxy
            if peer is not None and any(peer in net for net in self.proxies):
                named = request.headers.getlist(header)
                proxied = named[0] if len(named) == 1 else ""  # twice is nobody
                return proxied if NAME.fullmatch(proxied) else None
        name = request.session.get("reviewer")
        if not isinstance(name, str):
            return None
        stored = self.users.load().get(name)
        at = request.session.get("at")
        if stored is None or request.session.get("fp") != fingerprint(stored) or not isinstance(
                at, int | float) or time.time() - at > SESSION_S:
            return None  # removed, its password changed, or signed in too long ago
        return name

    @staticmethod
    def csrf(request: Request) -> str:
        token = request.session.get("csrf")
        if not isinstance(token, str):
            token = request.session["csrf"] = secrets.token_urlsafe(32)
        return token

    async def form(self, request: Request) -> dict[str, str] | None:
        """The POSTed form, if it carries this session's CSRF token; else None."""
        try:
            form = await request.form(max_files=0, max_fields=20, max_part_size=256 * 1024)
        except HTTPException:  # a field over 256 KB, too many fields, a file
            return None
        sent = form.get("csrf")
        want = request.session.get("csrf")
        if not isinstance(sent, str) or not isinstance(want, str) or not hmac.compare_digest(
                sent.encode(), want.encode()):
            return None
        return {k: v for k, v in form.items() if isinstance(v, str)}

    def page(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        return templates.TemplateResponse(request, name, {
            "reviewer": self.reviewer(request), "csrf": self.csrf(request),
            "connected": self.bus.connected, "flash": request.session.pop("flash", ""),
            **context}, status_code=status, headers=HEADERS)

    def refuse(self, request: Request, status: int, why: str) -> Response:
        """An error page, counted and logged."""
        log.warning("console.refused", path=request.url.path, status=status, why=why)
        self.refusals.labels(str(status)).inc()
        return self.page(request, "refused.html", status=status, why=why)

    def signed_in(self, handler: Handler) -> Handler:
        async def wrapped(request: Request) -> Response:
            if self.reviewer(request) is None:
                if request.method == "GET":
                    return RedirectResponse("/login", status_code=303, headers=HEADERS)
                return self.refuse(request, 401, "sign in first: only signed-in reviewers decide")
            return await handler(request)
        return wrapped

    # sign-in ------------------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        if request.method == "GET":
            return self.page(request, "login.html")
        form = await self.form(request)
        if form is None:
            return self.refuse(request, 403, "the form's CSRF token is missing or stale: reload "
                                             "the page and sign in again")
        name = form.get("name", "")
        valid = await asyncio.to_thread(self.users.check, name, form.get("password", ""))
        if NAME.fullmatch(name) and valid:
            request.session.clear()
            request.session["reviewer"] = name
            request.session["fp"] = fingerprint(self.users.load()[name])
            request.session["at"] = time.time()
            request.session["csrf"] = secrets.token_urlsafe(32)  # a new session, a new token
            log.info("console.signed_in", reviewer=name)
            return RedirectResponse("/", status_code=303, headers=HEADERS)
        log.warning("console.sign_in_refused", name=name[:64])
        return self.page(request, "login.html", status=401, error="wrong name or password")

    async def logout(self, request: Request) -> Response:
        if await self.form(request) is None:
            return self.refuse(request, 403, "the form's CSRF token is missing or stale")
        request.session.clear()
        return RedirectResponse("/login", status_code=303, headers=HEADERS)

    # the queue ----------------------------------------------------------------------------------

    async def catalog(self) -> WorkflowCatalog:
        """The workflows as the supervisor admits them: the configured files and those put on
        the bus (``workflow put``), each version by digest."""
        if self._catalog is None:
            kv = await open_bucket(self.bus.client.js, self.settings.subjects.bucket(
                Bucket.WORKFLOW_DEFS), history=5)
            self._catalog = WorkflowCatalog(self.settings.load_workflows(), kv,
                                            policy=self.settings.load_policy())
        return self._catalog

    async def definitions(self, names: Iterable[str]) -> dict[str, Workflow]:
        """The latest definition of each of these workflows (what names a step's agent and
        threshold)."""
        catalog = await self.catalog()
        found = {}
        for name in set(names):
            if (wf := await catalog.latest(name)) is not None:
                found[name] = wf
        return found

    async def items(self) -> list[Any]:
        queue = await self.bus.queue()
        flows = await self.definitions(e.workflow for e, _ in queue)
        return [item(e, flows.get(e.workflow), claim.reviewer if claim else "")
                for e, claim in queue]

    async def queue(self, request: Request) -> Response:
        return self.page(request, "queue.html", items=await self.items())

    async def queue_fragment(self, request: Request) -> Response:
        return self.page(request, "_items.html", items=await self.items())

    async def posted_item(self, request: Request) -> Response | tuple[
            dict[str, str], str, str, Escalation]:
        """A POST on an item: its form (with this session's CSRF token), the escalation's id,
        the reviewer and the escalation; or the refusal to answer with."""
        form = await self.form(request)
        if form is None:
            return self.refuse(request, 403, "the form's CSRF token is missing or stale")
        eid = request.path_params["eid"]
        reviewer = self.reviewer(request)
        assert reviewer is not None
        esc = await self.bus.escalation(eid)
        if esc is None:
            return self.refuse(request, 404, f"no open escalation {eid!r}: decided already?")
        return form, eid, reviewer, esc

    async def claim(self, request: Request) -> Response:
        posted = await self.posted_item(request)
        if isinstance(posted, Response):
            return posted
        _, eid, reviewer, _ = posted
        try:
            await self.bus.claim(eid, reviewer)
        except ClaimedByOther as exc:
            request.session["flash"] = f"{eid} is claimed by {exc.claim.reviewer}"
        return RedirectResponse(f"/#{anchor(eid)}", status_code=303, headers=HEADERS)

    async def decide(self, request: Request) -> Response:
        posted = await self.posted_item(request)
        if isinstance(posted, Response):
            return posted
        form, eid, reviewer, esc = posted
        action = form.get("action", "")
        note = form.get("note", "").strip()
        if action not in ("approve", "reject", "edit"):
            return self.refuse(request, 400, f"unknown action {action[:40]!r}")
        kept = {"eid": eid, "note": note, "edited": form.get("edited", "")}
        if action == "reject" and not note:
            return await self.back(request, eid, "a rejection needs a reason", kept)
        try:
            claim = await self.bus.claim(eid, reviewer)  # deciding claims it, unless another has
        except ClaimedByOther as exc:
            return await self.back(request, eid, f"claimed by {exc.claim.reviewer}: they decide",
                                   kept)
        output: dict[str, Any] | None = None
        if action == "edit":
            parsed = await self.edited(esc, form.get("edited", ""))
            if isinstance(parsed, str):
                return await self.back(request, eid, parsed, kept)
            output = parsed
        try:
            await self.bus.client.decide(eid, action, reviewer=claim.reviewer,  # type: ignore[arg-type]
                                         output=output, note=note[:2000])
        except LookupError as exc:
            return self.refuse(request, 409, str(exc))
        await self.bus.release(eid)
        self.decisions.labels(action).inc()
        log.info("console.decided", escalation=eid, action=action, reviewer=reviewer)
        request.session["flash"] = f"{action} of {esc.workflow} / {esc.step} sent"
        return RedirectResponse("/", status_code=303, headers=HEADERS)

    async def edited(self, esc: Any, text: str) -> dict[str, Any] | str:
        """The edited JSON, checked against its schema; else why not."""
        try:
            value = json.loads(text, parse_constant=_no_constant)
        except (json.JSONDecodeError, ValueError, RecursionError) as exc:
            return f"the edit is not JSON: {exc}"
        if not isinstance(value, dict):
            return "the edit must be a JSON object"
        if esc.kind == "approval":
            tool = str(((esc.output or {}).get("approval") or {}).get("tool", ""))
            schema = await self.bus.tool_schema(tool)
            if schema is None:
                return f"cannot check the edit: no tool host serves {tool!r} now"
            try:
                jsonschema.validate(value, schema)
            except jsonschema.ValidationError as exc:
                where = "/".join(map(str, exc.absolute_path)) or "(the whole object)"
                return f"the arguments do not fit {tool}'s schema at {where}: {exc.message}"
            except (jsonschema.SchemaError, RecursionError):
                return f"cannot check the edit: {tool}'s declared schema is not valid"
            return {"args": value}  # the engine approves this call in place of the held one
        wf = (await self.definitions([esc.workflow])).get(esc.workflow)
        step = next((s for s in wf.steps if s.name == esc.step), None) if wf else None
        schema = await self.bus.schema(step.role) if step else None
        if schema is None:
            return (f"cannot check the edit: no agent of role {step.role if step else '?'} "
                    "answers with its output schema now")
        try:
            jsonschema.validate(value, schema)
        except jsonschema.ValidationError as exc:
            where = "/".join(map(str, exc.absolute_path)) or "(the whole object)"
            return f"the edit does not fit the step's schema at {where}: {exc.message}"
        except (jsonschema.SchemaError, RecursionError):
            role = step.role if step else "?"
            return f"cannot check the edit: the {role} agent's output schema is not valid"
        return value

    async def back(self, request: Request, eid: str, why: str,
                   kept: dict[str, str] | None = None) -> Response:
        """The queue again, with why the decision was not sent and what the reviewer wrote."""
        self.refusals.labels("422").inc()
        return self.page(request, "queue.html", status=422, items=await self.items(),
                         error=why, error_for=eid, kept=kept)

    async def events(self, request: Request) -> Response:
        """Server-sent events: ``changed`` whenever the bus does (the page fetches what it
        shows), ``status`` with the connection's state, and a comment every 15 s."""
        async def stream() -> AsyncIterator[bytes]:
            seen = -1
            was = None
            while not await request.is_disconnected():
                version = await self.bus.changed(seen, 15.0)
                if self.bus.connected != was:
                    was = self.bus.connected
                    yield f"event: status\ndata: {'connected' if was else 'reconnecting'}\n\n".encode()
                if version != seen:
                    seen = version
                    yield f"event: changed\ndata: {version}\n\n".encode()
                else:
                    yield b"event: tick\ndata: 15\n\n"
        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", **HEADERS})

    # runs and agents ----------------------------------------------------------------------------

    async def workflows(self, request: Request) -> Response:
        state = request.query_params.get("state", "")
        name = request.query_params.get("workflow", "")
        why = {e.workflow_id: e.reason for e in self.bus.open.values()}  # those waiting
        waiting = set(why)
        runs = [(r, self.bus.status_of(r, waiting)) for r in reversed(self.bus.runs.values())]
        names = sorted({r.workflow for r, _ in runs})
        states = sorted({s for _, s in runs})
        shown = [(r, s) for r, s in runs if (not state or s == state)
                 and (not name or r.workflow == name)][:500]
        return self.page(request, "workflows.html", runs=shown, names=names, states=states,
                         state=state, workflow=name, total=len(runs), why=why)

    async def workflow(self, request: Request) -> Response:
        wid = request.path_params["wid"]
        try:
            check_token("workflow id", wid)
        except ConfigError as exc:
            return self.refuse(request, 400, str(exc))
        client = self.bus.client
        definitions = definitions_of(await self.catalog())
        audit = await client.audit(wid, definitions)
        state = audit.replay.state
        wf = await definitions(state.workflow, state.definition) if state else None
        line = timeline(audit, wf, await client.events(wid)) if state else None
        if line is None:
            return self.page(request, "workflow.html", status=404, wid=wid, line=None)
        return self.page(request, "workflow.html", wid=wid, line=line)

    async def agents(self, request: Request) -> Response:
        services = await self.bus.client.services(window=0.5)
        rows = []
        for svc in sorted(services, key=lambda s: (str(s.get("name", "")), str(s.get("id", "")))):
            try:
                rows.append(service_row(svc, self.settings.prefix))
            except (TypeError, ValueError, AttributeError):  # a responder of another making
                rows.append({"name": str(svc.get("name", "?")), "kind": "", "version": "",
                             "instance": str(svc.get("id", ""))[:8], "counters": {},
                             "calls": {}, "errors": 0, "latency_ms": 0.0, "breakers": {},
                             "last_error": "its $SRV stats could not be read"})
        return self.page(request, "agents.html", rows=rows)

    async def healthz(self, request: Request) -> Response:
        """Alive (200) whatever the bus does: the pages say they are reconnecting."""
        return JSONResponse({"nats": "connected" if self.bus.connected else "reconnecting"})

    async def readyz(self, request: Request) -> Response:
        ok = self.bus.connected
        return JSONResponse({"nats": "connected" if ok else "reconnecting"},
                            status_code=200 if ok else 503)


COUNTERS = ("received", "ok", "needs_human", "errors", "retried", "dead_lettered", "in_flight")


def service_row(svc: dict[str, Any], prefix: str) -> dict[str, Any]:
    """One process of ``$SRV`` as the agents page shows it: its counters (an agent's tasks, a
    tool host's calls per tool), latency, last error and circuit breakers."""
    endpoints = (svc.get("stats") or {}).get("endpoints") or []
    data: dict[str, Any] = next(
        (ep["data"] for ep in endpoints if isinstance(ep.get("data"), dict)), {})
    requests = sum(int(ep.get("num_requests", 0) or 0) for ep in endpoints)
    busy_ns = sum(int(ep.get("processing_time", 0) or 0) for ep in endpoints)
    meta = svc.get("metadata") or {}
    counters = {k: data[k] for k in COUNTERS if isinstance(data.get(k), int)}
    calls = {ep.get("name", ""): (int(ep.get("num_requests", 0) or 0), int(ep.get("num_errors", 0) or 0))
             for ep in endpoints if meta.get("kind") == "toolhost" or ep.get("name") not in (
                 "schema", "status")}
    breakers = {str(name): str(b.get("state", b) if isinstance(b, dict) else b)
                for name, b in (data.get("breakers") or {}).items()}
    return {
        "name": str(svc.get("name", "")).removeprefix(f"{prefix}-"), "kind": meta.get("kind", ""),
        "instance": meta.get("instance") or str(svc.get("id", ""))[:8],
        "version": svc.get("version", ""), "counters": counters, "calls": calls,
        "errors": sum(int(ep.get("num_errors", 0) or 0) for ep in endpoints),
        # an agent's $SRV endpoint is its schema, not its tasks: its latency says nothing
        "latency_ms": busy_ns / requests / 1e6 if requests and meta.get("kind") != "agent"
        else None,
        "last_error": next((ep["last_error"] for ep in endpoints if ep.get("last_error")), ""),
        "breakers": breakers,
    }


SESSION_S = 12 * 3600.0


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def fingerprint(stored: str) -> str:
    """What ties a session to the password it was made with (a reset ends it)."""
    return hashlib.sha256(stored.encode()).hexdigest()[:16]


def create_app(settings: Settings, bus: ConsoleBus | None = None, *,
               metrics: CollectorRegistry | None = None) -> Starlette:
    bus = bus or ConsoleBus(settings, claim_s=settings.console_claim_s)
    console = Console(settings, bus, metrics)
    guard = console.signed_in

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await bus.start()
        try:
            yield
        finally:
            await bus.stop()

    routes = [
        Route("/login", console.login, methods=["GET", "POST"]),
        Route("/logout", console.logout, methods=["POST"]),
        Route("/healthz", console.healthz),
        Route("/readyz", console.readyz),
        Route("/", guard(console.queue)),
        Route("/queue/items", guard(console.queue_fragment)),
        Route("/events", guard(console.events)),
        Route("/items/{eid}/claim", guard(console.claim), methods=["POST"]),
        Route("/items/{eid}/decide", guard(console.decide), methods=["POST"]),
        Route("/workflows", guard(console.workflows)),
        Route("/workflows/{wid}", guard(console.workflow)),
        Route("/agents", guard(console.agents)),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    middleware = [Middleware(SessionMiddleware, secret_key=settings.console_session_key(),
                             session_cookie="switchyard_console", same_site="lax",
                             https_only=settings.console_https_only, max_age=12 * 3600)]
    async def unreachable(request: Request, exc: Exception) -> Response:
        """The bus did not answer in time (it is restarting, say): the page says so."""
        log.warning("console.bus_unreachable", path=request.url.path, error=str(exc))
        console.refusals.labels("503").inc()
        return console.page(request, "refused.html", status=503, why=(
            "The bus is not answering right now (it may be restarting); nothing was sent. "
            "Try again in a moment."))

    handlers: dict[Any, Any] = {TimeoutError: unreachable, NatsError: unreachable,
                                ConnectionError: unreachable}
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                     exception_handlers=handlers)
