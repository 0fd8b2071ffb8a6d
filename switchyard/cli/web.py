"""What the console and the A2A gateway share as web servers: a socket bound before anything
else starts (a port in use is said at once, with the setting that moves it), and uvicorn
serving an app on it until the stop event."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from ipaddress import IPv4Address, IPv6Address
from typing import Any

import typer
from rich.markup import escape

from switchyard.cli.app import err


def bind(addr: IPv4Address | IPv6Address, port: int, what: str, setting: str) -> socket.socket:
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((str(addr), port))
    except OSError as exc:
        sock.close()
        err.print(f"[red]{what} cannot listen on {addr}:{port}: "
                  f"{escape(exc.strerror or str(exc))}[/] ({setting} picks another port)")
        raise typer.Exit(2) from None
    sock.listen(128)
    return sock


async def serve_app(app: Any, sock: socket.socket, stop: asyncio.Event) -> None:
    """``app`` on ``sock`` until ``stop``. Proxy headers off: who connected is the socket's
    peer, never an ``X-Forwarded-For`` a client wrote."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, proxy_headers=False, log_level="warning",
                                           access_log=False, lifespan="on"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    with contextlib.suppress(asyncio.CancelledError):
        await serving
    stopping.cancel()
