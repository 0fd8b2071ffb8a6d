"""The ``switchyard`` command line's app and what every command uses: settings (read once, here),
logging, output, connecting to the bus, and running a process until a signal. Signals are handled
here and only here; commands live in one module per family beside this one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import msgspec
import nats
import structlog
import typer
from nats.aio.client import Client
from prometheus_client import CollectorRegistry, start_http_server
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from switchyard.loop import run as run_on_loop
from switchyard.protocol.errors import ConfigError
from switchyard.settings import Settings

if TYPE_CHECKING:
    from switchyard.client import SwitchyardClient

T = TypeVar("T")
app = typer.Typer(help="Switchyard: a governed team of AI agents on a NATS bus.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
out = Console(emoji=False)  # ":smile:" in an id stays ":smile:"
# not a terminal (a container's log, a pipe): one line per message, not wrapped at 80 columns
err = Console(stderr=True, emoji=False, soft_wrap=not sys.stderr.isatty())
SHUTDOWN_LIMIT_S = 15.0  # after a stop signal: time to drain before in-flight work is cancelled
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]


def load_settings() -> Settings:
    """The settings, read from the environment once; logging configured by them. A bad value
    ends the command with a sentence naming the variable (exit 2), not a traceback."""
    try:
        settings = Settings()
    except ValidationError as exc:
        for problem in exc.errors():
            where = ".".join(str(p) for p in problem["loc"]) or "settings"
            name = where if where.isupper() else f"SWITCHYARD_{where.upper()}"
            given = problem.get("input")
            if isinstance(given, str):  # never a URL's password into a log
                given = re.sub(r"//[^/@\s]*@", "//***@", given)
            shown = f" (given: {given!r})" if isinstance(given, str | int | float) else ""
            err.print(f"[red]{name}: {escape(str(problem['msg']))}{escape(shown)}[/]")
        raise typer.Exit(2) from None
    level = getattr(logging, settings.log_level.upper(), logging.INFO)
    from switchyard.logs import redact_pii, trace_ids

    tail: list[Any] = (
        [redact_pii,
         structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)]
        if sys.stderr.isatty()
        else [structlog.processors.format_exc_info, redact_pii,
              structlog.processors.JSONRenderer()]
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            trace_ids,
            *tail,
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(level),
    )
    return settings


def metrics_registry(settings: Settings) -> CollectorRegistry:
    """This process's registry; served on 127.0.0.1:SWITCHYARD_METRICS_PORT when that is set."""
    registry = CollectorRegistry()
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=str(settings.metrics_addr), registry=registry)
    return registry


def serve(settings: Settings, main: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
          *, service: str = "") -> None:
    """Run until SIGINT/SIGTERM sets the stop event; a second signal cancels outright.
    ``service`` names the process in its traces, when an exporter is configured (``OTEL_*``)."""
    from switchyard.protocol.bus import tracing
    from switchyard.telemetry import start_tracing

    if not settings.trace:
        tracing.switch_off()
    if settings.trace_content:
        from switchyard.logs import redact_content

        tracing.record_contents(redact_content)
    stop_tracing = start_tracing(service, exporter=settings.tracing) if service else None

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()

        def on_signal() -> None:
            if stop.is_set() and task is not None:
                task.cancel()
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        watchdog = asyncio.create_task(_orphan_watch(stop, settings.parent_pid))
        work = asyncio.create_task(main(stop))
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():  # drain, but not forever (a dead bus must not hold us)
                try:
                    async with asyncio.timeout(SHUTDOWN_LIMIT_S):
                        await asyncio.shield(work)
                except TimeoutError:
                    err.print(f"shutdown took over {SHUTDOWN_LIMIT_S:g} s; stopping now")
                    work.cancel()
            await work
        finally:
            watchdog.cancel()
            stopping.cancel()

    try:
        run_on_loop(runner(), uvloop=settings.uvloop)
    except asyncio.CancelledError:
        raise typer.Exit(130) from None
    except ConfigError as exc:  # misuse found at start-up: a sentence, not a traceback
        err.print(f"[red]{escape(exc.message)}[/]")
        raise typer.Exit(2) from None
    finally:
        if stop_tracing is not None:
            stop_tracing()  # the spans still batched go out


async def _orphan_watch(stop: asyncio.Event, parent: int | None) -> None:
    """A process started by ``switchyard up`` (``SWITCHYARD_PARENT_PID``) stops, gracefully, when
    that parent is gone, even if it was killed outright and could not pass the signal on."""
    if not parent:
        return
    if not hasattr(os, "pidfd_open"):  # not Linux: notice being handed to another parent
        while os.getppid() == parent:  # noqa: ASYNC110 - no exit event to wait on here
            await asyncio.sleep(1.0)
        stop.set()
        return
    try:
        fd = os.pidfd_open(parent)
    except (OSError, ValueError):  # already gone
        stop.set()
        return
    gone = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(fd, gone.set)  # a pidfd becomes readable when the process exits
    try:
        await gone.wait()
        stop.set()
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def once(coro: Coroutine[Any, Any, T]) -> T:
    """Run a one-shot command's coroutine; misuse (an id that is no token, a bad name) ends it
    with the sentence and exit 2, for every command alike."""
    try:
        return asyncio.run(coro)
    except ConfigError as exc:
        err.print(f"[red]{escape(exc.message)}[/]")
        raise typer.Exit(2) from None
    except nats.errors.TimeoutError:
        secured = bool(os.environ.get("SWITCHYARD_NKEY_FILE"))
        err.print("[red]the bus did not answer a request in time[/]" + (
            ". On a secured bus that is how the server treats what this identity may not do, and "
            "what does not exist yet: are the streams and buckets provisioned (`switchyard "
            "provision` as the admin), and is SWITCHYARD_NKEY_FILE the identity this command "
            "needs?" if secured else " (a server under load, or a cluster electing a leader: "
            "try again)"))
        raise typer.Exit(2) from None


@contextlib.asynccontextmanager
async def client(settings: Settings) -> AsyncIterator[SwitchyardClient]:
    """A client on the configured bus, closed afterwards (exit 2 when nothing answers)."""
    from switchyard.client import SwitchyardClient
    from switchyard.protocol.bus.provision import check_layout

    nc = await connect(settings)
    try:
        await check_layout(nc.jetstream(), settings.subjects)  # a protocol 1 server: say so
        yield SwitchyardClient(nc, settings.subjects)
    finally:
        await nc.close()


async def connect(settings: Settings) -> Client:
    from switchyard.stack import nats_answers

    if await nats_answers(settings.nats_url):
        from switchyard.credentials import connect_or_refuse
        from switchyard.protocol.bus.component import servers

        return await connect_or_refuse(servers(settings.nats_url), settings.connect_options())
    else:
        err.print(f"[red]no NATS server answers at {settings.nats_url}[/] "
                  "(start the stack with `switchyard up`)")
        raise typer.Exit(2) from None


def dump(value: Any) -> None:
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(value), indent=2).decode() + "\n")
