"""The caller's end over HTTP: POST each message to ``<base URL>/<queue>`` on a kept-alive pool."""

from __future__ import annotations

import asyncio
import ssl
import time
from urllib.parse import quote, urlsplit

import orjson

from ..._asgi import NO_WORKERS_REASON
from ..._exceptions import CallTimeout, NoWorkers, ProtocolError, TransportError
from ..._protocol import ErrorCode
from .._context import encode_sent, trace_headers
from ..base import ClientTransport, TraceContext
from .pool import ConnectionPool
from .wire import CLIENT_KEEP_ALIVE_SECONDS, ClientSettings, encode_deadline

CHECK_TIMEOUT = 5.0
"""How long a health check waits for the server's answer."""
SEND_TIMEOUT = 30.0
"""How long `send` (a notification, which has no deadline of its own) waits for its 204."""


def _error_object(content: bytes) -> dict[str, object] | None:
    """The error object of a JSON-RPC error body, {} for another JSON-RPC body, else None."""
    try:
        decoded = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    first = decoded[0] if isinstance(decoded, list) and decoded else decoded
    if not isinstance(first, dict) or first.get("jsonrpc") != "2.0":
        return None
    error = first.get("error")
    return error if isinstance(error, dict) else {}


def _jsonrpc_error(content: bytes) -> str | None:
    """The error message a JSON-RPC error body carries, or None when it is not one."""
    error = _error_object(content)
    if error is None:
        return None
    return str(error.get("message")) if error else ""


def _out_of_time(content: bytes) -> bool:
    """Whether `content` is the deadline error a worker or a gateway answers 504 with."""
    error = _error_object(content)
    return error is not None and error.get("code") == ErrorCode.DEADLINE_EXCEEDED


def _no_workers(status: int, content: bytes) -> str | None:
    """What a gateway's "no workers" answer says (503, ``data.reason``), else None."""
    if status != 503:
        return None
    error = _error_object(content)
    data = error.get("data") if error else None
    if isinstance(data, dict) and data.get("reason") == NO_WORKERS_REASON:
        return str(data.get("message", ""))
    return None


class HttpClientTransport(ClientTransport):
    """POSTs each message to ``<base URL>/<queue>`` over pooled, kept-alive connections."""

    def __init__(self, url: str) -> None:
        self.settings = settings = ClientSettings.from_url(url)
        parts = urlsplit(settings.base_url)
        self._https, self._host, self._port, self._prefix = settings.endpoint
        host_header = parts.netloc.encode()
        extra = b""
        if settings.token:
            extra = b"authorization: Bearer " + settings.token.encode() + b"\r\n"
        # Everything but the path, length and deadline is the same for every request.
        self._head = (
            b"host: " + host_header + b"\r\ncontent-type: application/json\r\n"
            b"accept: application/json\r\n" + extra
        )
        self._paths: dict[str, bytes] = {}
        self._pool: ConnectionPool | None = None
        self._closed = False

    async def connect(self) -> None:
        """Set up the connection pool; connections open as the first calls need them."""
        if self._closed:
            raise TransportError("HTTP client is closed")
        if self._pool is None:
            context: ssl.SSLContext | None = self.settings.ssl_context() if self._https else None
            self._pool = ConnectionPool(
                self._host,
                self._port,
                size=self.settings.max_connections,
                ssl_context=context,
                keep_alive=CLIENT_KEEP_ALIVE_SECONDS,
                max_body=self.settings.max_reply_size,
            )

    def _path(self, queue: str) -> bytes:
        path = self._paths.get(queue)
        if path is None:
            path = self._paths[queue] = f"{self._prefix}/{quote(queue, safe='')}".encode()
        return path

    def _where(self, queue: str) -> str:
        return f"{self.settings.base_url}/{queue}"

    async def _post(
        self, queue: str, body: bytes, deadline: float | None, trace: TraceContext | None
    ) -> tuple[int, bytes]:
        pool = self._pool
        if pool is None:
            raise TransportError("HTTP client is closed" if self._closed else "not connected")
        now = time.time()
        request = [b"POST ", self._path(queue), b" HTTP/1.1\r\n", self._head]
        request += [b"x-mm-sent: ", encode_sent(now).encode(), b"\r\n"]
        if trace:
            # Only a well-formed context goes out (no CR/LF can reach the head).
            for name, value in trace_headers(trace).items():
                request += [name.encode(), b": ", value.encode(), b"\r\n"]
        if deadline is None:
            timeout = SEND_TIMEOUT
        else:
            timeout = deadline - now
            if timeout <= 0:
                raise CallTimeout("the deadline passed before the request was sent")
            request += [b"x-mm-deadline: ", encode_deadline(deadline), b"\r\n"]
        request += [b"content-length: %d\r\n\r\n" % len(body), body]
        try:
            async with asyncio.timeout(timeout):
                status, _, content = await pool.request(b"".join(request))
        except TimeoutError:
            raise CallTimeout(f"no reply from {self._where(queue)} before the deadline") from None
        except ConnectionRefusedError as exc:
            # HTTP has no queue to hold the request: nothing listening is no worker, now.
            detail = f"nothing listens at {self.settings.base_url} (connection refused)"
            raise NoWorkers(queue, detail) from exc
        except (OSError, ssl.SSLError) as exc:
            raise TransportError(f"POST {self._where(queue)} failed: {exc!r}") from exc
        return status, content

    async def request(
        self, queue: str, body: bytes, deadline: float, trace: TraceContext | None = None
    ) -> bytes:
        status, content = await self._post(queue, body, deadline, trace)
        if 200 <= status < 300:
            if not content:
                raise ProtocolError(f"{self._where(queue)} answered {status} with no reply")
            return content
        no_workers = _no_workers(status, content)
        if no_workers is not None:
            raise NoWorkers(queue, f"the gateway at {self.settings.base_url} says: {no_workers}")
        if status == 504 and _out_of_time(content):
            # The worker (or a gateway) saw the deadline pass: what our own timer says.
            raise CallTimeout(f"{self._where(queue)} answered that the deadline passed")
        if _jsonrpc_error(content) is not None:
            return content  # so that the caller gets the RemoteError it carries
        raise TransportError(f"{self._where(queue)} answered HTTP {status}: {content[:200]!r}")

    async def send(
        self, queue: str, body: bytes, deadline: float | None, trace: TraceContext | None = None
    ) -> None:
        status, content = await self._post(queue, body, deadline, trace)
        no_workers = _no_workers(status, content)
        if no_workers is not None:
            raise NoWorkers(queue, f"the gateway at {self.settings.base_url} says: {no_workers}")
        if status >= 300:
            detail = _jsonrpc_error(content) or repr(content[:200])
            raise TransportError(f"{self._where(queue)} answered HTTP {status}: {detail}")

    async def check(self) -> None:
        pool = self._pool
        if pool is None:
            raise TransportError("HTTP client is closed" if self._closed else "not connected")
        request = b"GET " + self._prefix.encode() + b"/healthz HTTP/1.1\r\n" + self._head + b"\r\n"
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                status, _, _ = await pool.request(request)
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            raise TransportError(f"{self.settings.base_url} does not answer: {exc!r}") from exc
        if status >= 500:
            raise TransportError(f"{self.settings.base_url}/healthz answered HTTP {status}")

    async def aclose(self) -> None:
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
