"""The console served by uvicorn inside our own event loop, until a signal says stop.

Its socket is bound here without SO_REUSEPORT (which the HTTP worker's `bind` sets so that
several workers share a port): two consoles on one port would each hold their own sessions,
and a page's requests would fail their CSRF check whenever the kernel picked the other.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Callable

from .._exceptions import ConfigurationError
from ..transports.admin import AdminTransport
from ..transports.http.server import EmbeddedServer
from .app import LOOPBACK, Console, ConsoleSettings


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine only (a console there needs no login)."""
    return host.lower() in LOOPBACK or host.startswith("127.")


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket of this process alone; `ConfigurationError` when it can't be."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        # The protocol named: asyncio then sets TCP_NODELAY on accepted connections.
        sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
    except OSError as exc:
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc}") from exc
    return sock


async def serve(
    settings: ConsoleSettings,
    admin: AdminTransport,
    sock: socket.socket,
    started: Callable[[int], None],
) -> None:
    """Serve the console on `sock` until SIGTERM or SIGINT; `started(port)` once it listens."""
    console = Console(settings, admin=admin)
    server = EmbeddedServer(console, sock)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await server.start()
        started(sock.getsockname()[1])
        await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await server.stop(timeout=5)
        await console.aclose()
