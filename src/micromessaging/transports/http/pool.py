"""A small HTTP/1.1 client: kept-alive connections to one server, one request on each at a time.

Why not httpx: its connection pool re-examines every connection for every queued request
(`_assign_requests_to_connections`, which asks each socket whether it has expired), so with
64 calls in flight most of the client's time went there, and the transport could not beat a
plain httpx loop by the factor the issue asks (benchmarks/http_vs_uvicorn_httpx.py). This
client does only what the transport needs: POST a body, read a status, headers and body,
over asyncio protocols and the httptools parser that uvicorn already brings, plain or TLS.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque

import httptools

from .._shared import keep_reads_small

Response = tuple[int, dict[bytes, bytes], bytes]

DEFAULT_MAX_BODY = 64 * 1024 * 1024
"""The largest response body a pool accepts unless told otherwise."""


MAX_HEADER_BYTES = 64 * 1024
"""The most bytes of response headers a connection reads before giving up on the server."""


class ResponseTooLarge(ConnectionError):
    """The server's response is larger than the client accepts."""


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection, parsing the response to the request in flight."""

    def __init__(self, max_body: int) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.max_body = max_body
        self._waiter: asyncio.Future[Response] | None = None
        self._headers: dict[bytes, bytes] = {}
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._headers_done = False

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        keep_reads_small(transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"malformed HTTP response: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        framed = b"content-length" in self._headers or b"transfer-encoding" in self._headers
        if self._headers_done and not framed and exc is None:
            self.on_message_complete()  # a body that ends where the connection does
        else:
            self._fail(ConnectionResetError(f"the server closed the connection: {exc or 'EOF'}"))

    # --- httptools callbacks -------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES:
            self._give_up(ResponseTooLarge(f"response headers over {MAX_HEADER_BYTES} bytes"))
            return
        self._headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self.max_body:
            self._give_up(ResponseTooLarge(f"a reply over {self.max_body} bytes (max_reply_size)"))
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            self.close()  # a response nobody asked for: this connection can't be trusted
            return
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            # An interim response (100 Continue, 103 Early Hints): the answer follows.
            self._reset()
            return
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        if not self.parser.should_keep_alive():
            self.close()
        waiter.set_result((self.parser.get_status_code(), self._headers, body))

    # --- use -----------------------------------------------------------------------------

    async def exchange(self, request: bytes) -> Response:
        """Send one complete request and wait for its response."""
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self._reset()
        self.transport.write(request)
        try:
            return await self._waiter
        finally:
            self._waiter = None

    def _reset(self) -> None:
        self._headers, self._body, self._headers_done = {}, [], False
        self._header_bytes = self._body_bytes = 0

    def _give_up(self, exc: Exception) -> None:
        self._fail(exc)
        self.close()

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    def close(self) -> None:
        """Close the connection; a request in flight on it fails."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class ConnectionPool:
    """Up to `size` kept-alive connections to host:port; callers beyond that wait their turn."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        size: int,
        ssl_context: ssl.SSLContext | None,
        keep_alive: float,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        self.host = host
        self.max_body = max_body
        self.port = port
        self.size = size
        self._ssl = ssl_context
        self._keep_alive = keep_alive
        self._idle: list[_Connection] = []  # most recently used last
        self._all: set[_Connection] = set()
        self._open = 0
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._closed = False

    @property
    def open_connections(self) -> int:
        """How many connections are open or opening."""
        return self._open

    async def request(self, request: bytes) -> Response:
        """Send `request` (complete HTTP/1.1 bytes) on a free connection; its response.

        Raises OSError (ConnectionError included) when the server can't be reached or the
        connection breaks. Cancelled, the connection is closed: its response is unread.
        """
        connection = await self._acquire()
        try:
            response = await connection.exchange(request)
        except BaseException:
            connection.close()
            self._release(connection)
            raise
        self._release(connection)
        return response

    async def _acquire(self) -> _Connection:
        while True:
            if self._closed:
                raise ConnectionError("the connection pool is closed")
            now = time.monotonic()
            while self._idle:
                connection = self._idle.pop()
                if not connection.closed and now - connection.idle_since < self._keep_alive:
                    return connection
                self._forget(connection)
            if self._open < self.size:
                self._open += 1
                try:
                    return await self._connect()
                except BaseException:
                    self._open -= 1
                    self._wake()
                    raise
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # pass the turn we were given to the next caller
                raise
            finally:
                if waiter in self._waiting:
                    self._waiting.remove(waiter)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(
            lambda: _Connection(self.max_body),
            self.host,
            self.port,
            ssl=self._ssl,
            server_hostname=self.host if self._ssl is not None else None,
        )
        if self._closed:  # closed while connecting
            connection.close()
            raise ConnectionError("the connection pool is closed")
        self._all.add(connection)
        return connection

    def _forget(self, connection: _Connection) -> None:
        connection.close()
        self._all.discard(connection)
        self._open -= 1

    def _release(self, connection: _Connection) -> None:
        if connection.closed or self._closed:
            self._forget(connection)
        else:
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        self._wake()

    def _wake(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        """Close every connection: the requests in flight fail with ConnectionResetError."""
        self._closed = True
        for connection in self._idle:
            self._forget(connection)
        self._idle.clear()
        for connection in list(self._all):
            connection.close()  # its caller's `request` fails, and releases it
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)  # they find the pool closed
