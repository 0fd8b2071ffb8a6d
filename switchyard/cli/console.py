"""``switchyard console``: the web console for reviewers, and ``console add-user``."""

from __future__ import annotations

import asyncio
import socket
import sys
from typing import Annotated

import typer
from prometheus_client import CollectorRegistry
from rich.markup import escape

from switchyard.cli.app import app, err, load_settings, out, serve
from switchyard.cli.web import bind, serve_app
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
    sock = bind(settings.console_addr, settings.console_port, "the console",
                "SWITCHYARD_CONSOLE_PORT")
    from switchyard.cli.app import metrics_registry

    registry = metrics_registry(settings)
    if not users and not settings.console_trusted_proxies:
        err.print(f"no reviewers yet: add one with `switchyard console add-user NAME` (the users "
                  f"file is {settings.console_users_file})")
    out.print(f"console at http://{settings.console_addr}:{sock.getsockname()[1]}/")
    serve(settings, lambda stop: run_console(settings, sock, stop, registry),
          service="switchyard-console")


async def run_console(settings: Settings, sock: socket.socket, stop: asyncio.Event,
                      registry: CollectorRegistry | None = None) -> None:
    from switchyard.console.app import create_app

    await serve_app(create_app(settings, metrics=registry), sock, stop)


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
