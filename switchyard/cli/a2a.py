"""``switchyard a2a``: the A2A gateway (``serve``) and its callers' keys (``add-key``)."""

from __future__ import annotations

import asyncio
import socket
from typing import Annotated

import typer
from prometheus_client import CollectorRegistry
from rich.markup import escape

from switchyard.cli.app import app, err, load_settings, out, serve
from switchyard.cli.web import bind, serve_app
from switchyard.protocol.errors import ConfigError
from switchyard.settings import Settings

a2a_app = typer.Typer(help="Agent2Agent (A2A v1.0): workflows as an A2A agent.",
                      no_args_is_help=True)
app.add_typer(a2a_app, name="a2a")


@a2a_app.command("serve")
def a2a_serve(
    port: Annotated[int | None, typer.Option(help="instead of SWITCHYARD_A2A_PORT",
                                             min=0, max=65535)] = None,
) -> None:
    """Serve the configured workflows as one A2A agent, a skill each, until Ctrl-C."""
    from switchyard.gateway.keys import Keys

    settings = load_settings()
    if port is not None:
        settings = settings.model_copy(update={"a2a_port": port})
    try:
        exposed = settings.a2a_exposed()
        callers = Keys(settings.a2a_keys_file).load()
    except (ConfigError, OSError) as exc:
        err.print(f"[red]{escape(str(exc))}[/]")
        raise typer.Exit(2) from None
    sock = bind(settings.a2a_addr, settings.a2a_port, "the gateway", "SWITCHYARD_A2A_PORT")
    from switchyard.cli.app import metrics_registry

    registry = metrics_registry(settings)
    if not callers:
        err.print(f"no callers yet: add one with `switchyard a2a add-key NAME --workflow W` "
                  f"(the keys file is {settings.a2a_keys_file})")
    out.print(f"A2A gateway at http://{settings.a2a_addr}:{sock.getsockname()[1]}/ "
              f"(card: {settings.a2a_public_url}.well-known/agent-card.json); skills: "
              f"{', '.join(exposed)}")
    serve(settings, lambda stop: run_gateway(settings, sock, stop, registry),
          service="switchyard-a2a")


async def run_gateway(settings: Settings, sock: socket.socket, stop: asyncio.Event,
                      registry: CollectorRegistry | None = None) -> None:
    from switchyard.gateway.app import create_gateway

    await serve_app(create_gateway(settings, metrics=registry), sock, stop)


@a2a_app.command("add-key")
def add_key(
    name: str,
    workflow: Annotated[list[str], typer.Option(
        help="a workflow it may call (repeatable; '*': every one the gateway offers)")],
) -> None:
    """Make a key for caller NAME (replacing its old one) and print it, once."""
    from switchyard.gateway.keys import Keys

    settings = load_settings()
    known = settings.load_workflows()
    unknown = [w for w in workflow if w != "*" and w not in known]
    if unknown:
        err.print(f"[red]no workflow {escape(', '.join(unknown))} is configured "
                  f"(SWITCHYARD_WORKFLOWS: {escape(', '.join(known))})[/]")
        raise typer.Exit(2)
    try:
        key = Keys(settings.a2a_keys_file).add(name, workflow)
    except ConfigError as exc:
        err.print(f"[red]{escape(str(exc))}[/]")
        raise typer.Exit(2) from None
    err.print(f"caller {name} may call {', '.join(workflow)}; its key (shown only now):")
    print(key)
