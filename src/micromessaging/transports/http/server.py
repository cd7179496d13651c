"""uvicorn run inside the caller's event loop, on a socket we bind ourselves.

Binding here rather than in uvicorn turns a busy port into our `Refused` (uvicorn would
`sys.exit`): a port another program holds, one this user may not take, or an address this
host does not have are not a broker still starting, so a worker stops at once rather than
trying again for ``--wait-for-broker`` seconds. It also sets SO_REUSEPORT: several worker
processes (``--processes N``) or in-process workers then listen on one port, and the kernel
spreads connections over them, the way a broker spreads messages over the workers of one
queue. Linux lets only sockets of the same user share a port this way.

uvicorn's own signal handling is left out: the process that embeds the server (the worker
command) owns SIGTERM and SIGINT, and stops the server through `EmbeddedServer.stop`. Its
HTTP protocol is uvicorn's with the limits uvicorn lacks (`micromessaging._http_server`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Generator

import uvicorn

from ..._asgi import ASGIApp, HttpLimits
from ..._exceptions import TransportError
from ..._http_server import protocol_factory
from .._shared import Refused
from .wire import KEEP_ALIVE_SECONDS

logger = logging.getLogger("micromessaging.transport")

_FOR_GOOD = (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL)
"""Why a bind fails that waiting won't mend: taken by another program, not ours, not here."""


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port with SO_REUSEPORT; `TransportError` when it can't."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        # With the protocol named, asyncio sets TCP_NODELAY on accepted connections; without
        # it (proto 0) Nagle's algorithm meets delayed ACKs and every reply waits 40 ms.
        sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
    except OSError as exc:
        raise TransportError(f"cannot listen on {host}:{port}: {exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(2048)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        error = Refused if exc.errno in _FOR_GOOD else TransportError
        raise error(f"cannot listen on {host}:{port}: {exc}") from exc
    return sock


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the embedding process owns the signals


class EmbeddedServer:
    """One uvicorn server serving `app` on `sock`, started and stopped from this loop."""

    def __init__(
        self,
        app: ASGIApp,
        sock: socket.socket,
        *,
        certfile: str | None = None,
        keyfile: str | None = None,
        limits: HttpLimits | None = None,
    ) -> None:
        config = uvicorn.Config(
            app,
            interface="asgi3",
            http=protocol_factory(limits or HttpLimits()),
            lifespan="off",
            proxy_headers=False,
            ws="none",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
            timeout_graceful_shutdown=None,
            ssl_certfile=certfile,
            ssl_keyfile=keyfile,
        )
        self._server = _Server(config)
        self._sock = sock
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Serve; return once the socket accepts connections (`TransportError` if it can't)."""
        try:
            self._server.config.load()
        except Exception as exc:  # uvicorn raises plain errors for bad certificates
            self._sock.close()
            raise TransportError(f"cannot start the HTTP server: {exc}") from exc
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]))
        while not self._server.started:
            if self._task.done():
                self._sock.close()
                error = self._task.exception()
                raise TransportError(f"the HTTP server did not start: {error!r}") from error
            await asyncio.sleep(0.005)

    def stop_accepting(self) -> None:
        """Accept no new connections, close idle ones, finish the responses under way."""
        for server in getattr(self._server, "servers", ()):
            server.close()
        self._server.should_exit = True

    async def stop(self, timeout: float = 10.0) -> None:
        """Shut down; connections still open after `timeout` seconds are dropped."""
        self.stop_accepting()
        task, self._task = self._task, None
        if task is None:
            return
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            logger.warning("HTTP server still busy after %.0fs; dropping connections", timeout)
            self._server.force_exit = True
            done, _ = await asyncio.wait({task}, timeout=1.0)
            if not done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if not task.cancelled() and task.exception() is not None:
            logger.warning("the HTTP server stopped with an error: %r", task.exception())
