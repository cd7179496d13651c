"""The little of ASGI that the HTTP worker and the gateway need, written by hand.

Two routes and a bounded body read do not justify a framework: these helpers read headers
and a body no larger than a limit, and send a complete response in two messages.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

from ._protocol import ErrorCode, dumps, error_response, too_large_response
from .transports._context import decode_sent, read_trace
from .transports._shared import decode_deadline
from .transports.base import TraceContext

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

JSON_CONTENT_TYPE = b"application/json"

DEADLINE_HEADER = b"x-mm-deadline"
"""When the caller stops waiting, in milliseconds since the epoch (the shared deadline rule)."""
SENT_HEADER = b"x-mm-sent"
"""When the client sent the request, in milliseconds since the epoch (read like a deadline)."""
NO_WORKERS_REASON = "no-workers"
"""``data.reason`` of the gateway's 503 when its broker has no worker for the queue."""
RETRY_AFTER_SECONDS = 1
RETRY_AFTER: Headers = [(b"retry-after", str(RETRY_AFTER_SECONDS).encode())]

DRAIN_LIMIT = 16 * 1024 * 1024
"""Past this many announced bytes a refused body is not drained: the connection is closed.

A server that answers 413 and closes while the client still writes makes the client see a
reset instead of the answer; below this size the server reads and discards the rest (uvicorn
does that by itself once the response is complete), above it closing is cheaper.
"""


DEFAULT_MAX_HEADER_SIZE = 32 * 1024
"""Bytes of a request head (request line and headers) a server reads at most: 431 beyond."""
DEFAULT_HEADER_TIMEOUT = 10.0
"""Seconds a request head may take to arrive: 408 beyond."""
DEFAULT_BODY_TIMEOUT = 30.0
"""Seconds a request body may take to arrive once its head has: 408 beyond."""
DEFAULT_CONNECTION_LIMIT = 1024
"""Connections one server (one process) holds open at once; the next is answered 503."""


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What an HTTP server allows each caller; enforced by `_http_server` (plain data, so it
    travels to uvicorn's worker processes)."""

    max_header_size: int = DEFAULT_MAX_HEADER_SIZE
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    max_connections: int = DEFAULT_CONNECTION_LIMIT


class BodyTooLarge(Exception):
    """The request body is larger than the limit; `size` is what is known of its length."""

    def __init__(self, size: int, keep_alive: bool) -> None:
        super().__init__(size)
        self.size = size
        self.keep_alive = keep_alive
        """Whether the connection may serve another request (the rest will be drained)."""


def error_body(code: int, title: str | None = None, **data: object) -> bytes:
    """A JSON-RPC error response with a null id, for answers HTTP gives before any service.

    `title` is the error's message (default: the code's standard one); `data` its data.
    """
    return dumps(error_response(None, code, title, dict(data) if data else None))


def not_run_body(detail: str) -> bytes:
    """The 503 body: the request was not handed to the service, so retrying it is safe."""
    return error_body(ErrorCode.SERVER_ERROR, "Service unavailable", message=detail, retry=True)


def request_deadline(scope: Scope) -> float | None:
    """The deadline a request's ``X-MM-Deadline`` header names (None for none)."""
    return decode_deadline(header(scope, DEADLINE_HEADER))


def request_context(scope: Scope) -> tuple[float | None, TraceContext | None]:
    """The send time (``X-MM-Sent``) and W3C trace context a request's headers carry.

    A malformed ``traceparent`` is dropped with its ``tracestate`` (`read_trace`), and so is
    one sent twice (W3C: a receiver given several must not pick one).
    """
    sent = parent = state = None
    parents = 0
    for key, value in scope["headers"]:
        if key == SENT_HEADER:
            sent = sent or value
        elif key == b"traceparent":
            parent, parents = value, parents + 1
        elif key == b"tracestate":
            state = value if state is None else state + b"," + value
    trace = None
    if parent is not None and parents == 1:
        trace = read_trace({"traceparent": parent, "tracestate": state})
    return decode_sent(sent), trace


def header(scope: Scope, name: bytes) -> bytes | None:
    """The value of header `name` (lower-case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request body; `BodyTooLarge` as soon as it is known to exceed `limit` bytes.

    A Content-Length over the limit is refused before any of the body is read; a chunked
    body is kept only up to the limit, and the rest discarded up to `DRAIN_LIMIT`.
    """
    length = header(scope, b"content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise BodyTooLarge(int(length), keep_alive=int(length) <= DRAIN_LIMIT)
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            raise ConnectionResetError("client disconnected")
        chunk = message.get("body", b"")
        more = message.get("more_body", False)
        size += len(chunk)
        if size > limit:
            if not more or size > DRAIN_LIMIT:
                raise BodyTooLarge(size, keep_alive=not more)
        elif chunk:
            chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def respond(
    send: Send, status: int, body: bytes = b"", headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    """Send a complete response: JSON when there is a body."""
    response_headers: Headers = list(headers)
    if body:
        response_headers.append((b"content-type", JSON_CONTENT_TYPE))
    if status != 204:
        response_headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": response_headers})
    await send({"type": "http.response.body", "body": body})


async def respond_too_large(send: Send, exc: BodyTooLarge, limit: int) -> None:
    """Answer 413 with the JSON-RPC error for an oversized message, without reading on."""
    headers: Headers = [] if exc.keep_alive else [(b"connection", b"close")]
    await respond(send, 413, dumps(too_large_response(exc.size, limit)), headers)
