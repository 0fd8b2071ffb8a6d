"""``switchyard console``: the web console for reviewers, and ``console add-user``."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from typing import Annotated

import typer
from prometheus_client import CollectorRegistry
from rich.markup import escape

from switchyard.cli.app import app, err, load_settings, out, serve
from switchyard.protocol.errors import ConfigError
from switchyard.settings import Settings

console_app = typer.Typer(help="The web console: the review queue, live workflows, agents.",
                          invoke_without_command=True)
app.add_typer(console_app, name="console")


@console_app.callback()
def console(
    ctx: typer.Context,
    port: Annotated[int | None, typer.Option(help="instead of SWITCHYARD_CONSOLE_PORT",
                                             min=0, max=65535)] = None,
) -> None:
    """Serve the console (http://127.0.0.1:8700 by default) until Ctrl-C."""
    if ctx.invoked_subcommand is not None:
        return
    settings = load_settings()
    if port is not None:
        settings = settings.model_copy(update={"console_port": port})
    try:
        settings.console_session_key()
        from switchyard.console.users import Users

        users = Users(settings.console_users_file).load()
    except (ConfigError, OSError) as exc:
        err.print(f"[red]{escape(str(exc))}[/]")
        raise typer.Exit(2) from None
    sock = bind(settings)
    from switchyard.cli.app import metrics_registry

    registry = metrics_registry(settings)
    if not users and not settings.console_trusted_proxies:
        err.print(f"no reviewers yet: add one with `switchyard console add-user NAME` (the users "
                  f"file is {settings.console_users_file})")
    out.print(f"console at http://{settings.console_addr}:{sock.getsockname()[1]}/")
    serve(settings, lambda stop: run_console(settings, sock, stop, registry),
          service="switchyard-console")


def bind(settings: Settings) -> socket.socket:
    family = socket.AF_INET6 if settings.console_addr.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((str(settings.console_addr), settings.console_port))
    except OSError as exc:
        sock.close()
        err.print(f"[red]the console cannot listen on {settings.console_addr}:"
                  f"{settings.console_port}: {escape(exc.strerror or str(exc))}[/] "
                  "(SWITCHYARD_CONSOLE_PORT picks another port)")
        raise typer.Exit(2) from None
    sock.listen(128)
    return sock


async def run_console(settings: Settings, sock: socket.socket, stop: asyncio.Event,
                      registry: CollectorRegistry | None = None) -> None:
    import uvicorn

    from switchyard.console.app import create_app

    # proxy_headers off: who connected is the socket's peer, never an X-Forwarded-For a client
    # wrote (the trusted-proxy check is about the connection itself)
    server = uvicorn.Server(uvicorn.Config(create_app(settings, metrics=registry),
                                           proxy_headers=False, log_level="warning",
                                           access_log=False, lifespan="on"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    with contextlib.suppress(asyncio.CancelledError):
        await serving
    stopping.cancel()


@console_app.command("add-user")
def add_user(
    name: str,
    password_stdin: Annotated[bool, typer.Option(
        "--password-stdin", help="read the password from standard input (a script's)")] = False,
) -> None:
    """Add a reviewer (or set a reviewer's password) in the users file."""
    from switchyard.console.users import Users

    settings = load_settings()
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        Users(settings.console_users_file).add(name, password)
    except ConfigError as exc:
        err.print(f"[red]{escape(str(exc))}[/]")
        raise typer.Exit(2) from None
    out.print(f"reviewer {name} can sign in ({settings.console_users_file})")
