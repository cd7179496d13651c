"""uvicorn's HTTP protocol with the limits it lacks: head size, head and body time, connections.

What uvicorn (0.30 to 0.54) offers, and why each is not enough for a server facing callers it
does not trust (the gateway faces the internet; the HTTP worker, its own network):

- with httptools (the parser `uvicorn[standard]` selects, and the fast one) there is no limit
  on the size of a request head: httptools joins each header value in memory until its end,
  uvicorn collects every header and the URL; twenty requests with 10 MB headers took the
  gateway from 41 MB to 258 MB before it could answer 401. ``h11_max_incomplete_event_size``
  bounds only the h11 parser, and answers 400, not 431;
- ``timeout_keep_alive`` runs only between requests: a connection that sends nothing, or its
  head one byte at a time, or its body one byte at a time, is held for ever (500 such
  connections were all held);
- ``limit_concurrency`` answers 503 once too many connections *or tasks* exist, but only
  when a request head is complete: it accepts and reads every connection anyway, and counts
  idle kept-alive ones; there is no cap on connections held.

So `LimitedHttpProtocol` is uvicorn's httptools protocol plus, per connection: a head of at
most `HttpLimits.max_header_size` bytes ever given to the parser (431 past it), the head
within `header_timeout` seconds of the connection opening or of the request's first byte
(408), the body within `body_timeout` seconds of the head (408, or a hang-up when the answer
has gone out already); and per server a cap on open connections (`max_connections`: the
next one is answered 503 at once, read nothing of, and closed). Everything else - parsing,
keep-alive, pipelining, flow control - is uvicorn's.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ._asgi import JSON_CONTENT_TYPE, RETRY_AFTER_SECONDS, HttpLimits, error_body, not_run_body
from ._protocol import ErrorCode

_REASONS = {
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


def refusal(status: int, body: bytes, *extra: tuple[bytes, bytes]) -> bytes:
    """A whole HTTP/1.1 response that closes the connection, written before any app runs."""
    lines = [b"HTTP/1.1 %d %s" % (status, _REASONS[status])]
    headers = [
        (b"content-type", JSON_CONTENT_TYPE),
        (b"content-length", b"%d" % len(body)),
        (b"connection", b"close"),
        *extra,
    ]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


LINGER_SECONDS = 1.0
"""How long a refused connection is kept, its input read and dropped, before it is closed:
closing with unread input makes the kernel send a reset, which can destroy the refusal on
its way to the caller, who then sees a reset instead of 431, 408 or 503."""


class OneWriteResponses:
    """A request's view of its connection that sends a response's head with its first body
    write: one send (one system call, one packet on loopback) per response, not two.

    uvicorn writes the status line and headers as soon as the app sends
    ``http.response.start``, and the body on ``http.response.body``; with small JSON
    answers the second send costs as much as the first (a third of the gateway's time under
    load went to those sends). The head is held only once the response has started, so an
    interim ``100 Continue`` goes out at once; anything else (close, write_eof, abort...)
    sends what is held first.
    """

    __slots__ = ("_cycle", "_done", "_held", "_transport")

    def __init__(self, transport: asyncio.Transport, cycle: Any) -> None:
        self._transport = transport
        self._cycle = cycle
        self._held: bytes | None = None
        self._done = False
        """Whether the head has gone: every write from then on goes straight through."""

    def write(self, data: bytes) -> None:
        """Hold the response's head; send it with the next write."""
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif not self._done and self._cycle.response_started:
            self._done = True
            self._held = bytes(data)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        """Send what is held."""
        held, self._held = self._held, None
        if held is not None:
            self._transport.write(held)

    def close(self) -> None:
        """Send what is held, then close."""
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        """Send what is held, then half-close."""
        self.flush()
        self._transport.write_eof()

    def __getattr__(self, name: str) -> Any:
        self.flush()
        return getattr(self._transport, name)


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the limits of `HttpLimits` (see the module)."""

    def __init__(self, *args: Any, limits: HttpLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._in_head = True
        self._head_bytes = 0
        self._begun = False
        self._refused = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            detail = f"the server holds {self.limits.max_connections} connections already"
            retry = (b"retry-after", b"%d" % RETRY_AFTER_SECONDS)
            self._refuse(503, not_run_body(detail), retry)
            return
        self._arm(self.limits.header_timeout, self._head_too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering: dropped
        view = memoryview(data)
        while view and not self._refused:
            if self._in_head:
                # Never more of a head than the limit reaches the parser, which keeps it.
                room = self.limits.max_header_size - self._head_bytes
                if room <= 0:
                    limit = self.limits.max_header_size
                    detail = f"the request head is larger than {limit} bytes"
                    self._refuse(431, error_body(ErrorCode.INVALID_REQUEST, message=detail))
                    return
                piece, view = view[:room], view[room:]
                self._head_bytes += len(piece)
            else:
                piece, view = view, view[len(view) :]
            super().data_received(piece)  # type: ignore[arg-type]  # httptools reads buffers
            if self.transport.is_closing():
                return

    # --- the parser's callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._begun = True
        if self._timer is None:  # a kept-alive connection's next request: its head's time
            self._arm(self.limits.header_timeout, self._head_too_slow)
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        super().on_headers_complete()
        cycle = getattr(self, "cycle", None)
        if cycle is not None and cycle.transport is self.transport:
            cycle.transport = OneWriteResponses(self.transport, cycle)
        self._arm(self.limits.body_timeout, self._body_too_slow)

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_head, self._head_bytes, self._begun = True, 0, False
        if not self._refused:
            super().on_message_complete()

    # --- refusing ----------------------------------------------------------------------------

    def _answer_due(self) -> bool:
        """Whether a response is still owed on this connection (a pipelined request waits
        behind it, its reading paused): a refusal now would cut that response off."""
        cycle = self.cycle
        return (cycle is not None and not cycle.response_complete) or self.flow.read_paused

    def _head_too_slow(self) -> None:
        self._timer = None
        if self._begun and self._answer_due():
            self._arm(self.limits.header_timeout, self._head_too_slow)  # after that answer
            return
        if not self._begun:
            self.transport.close()  # nothing was asked: nothing to answer
            return
        detail = f"the request head did not arrive within {self.limits.header_timeout:g}s"
        self._refuse(408, error_body(ErrorCode.INVALID_REQUEST, message=detail))

    def _body_too_slow(self) -> None:
        self._timer = None
        cycle = self.cycle
        if self.flow.read_paused:  # pipelined behind a response not yet sent: not its fault
            self._arm(self.limits.body_timeout, self._body_too_slow)
            return
        if cycle is not None and cycle.response_started:
            self.transport.close()  # answered already (a refusal): only the body is late
            return
        detail = f"the request body did not arrive within {self.limits.body_timeout:g}s"
        self._refuse(408, error_body(ErrorCode.INVALID_REQUEST, message=detail))

    def _refuse(self, status: int, body: bytes, *headers: tuple[bytes, bytes]) -> None:
        """Answer `status` at once and close; what else comes on this connection is dropped."""
        self._refused = True
        self._disarm()
        transport = self.transport
        if transport.is_closing():
            return
        transport.write(refusal(status, body, *headers))
        if not transport.can_write_eof():
            transport.close()  # TLS: no half-close
            return
        transport.write_eof()  # the refusal, then our end: the caller reads it, then EOF
        self._arm(LINGER_SECONDS, transport.close)

    def _arm(self, seconds: float, expired: Callable[[], None]) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def protocol_factory(limits: HttpLimits) -> type[asyncio.Protocol]:
    """What uvicorn's ``Config(http=...)`` takes to serve with `limits`.

    A picklable callable (uvicorn's worker processes receive it), typed as the class uvicorn
    expects: uvicorn calls it with keyword arguments only.
    """
    return cast("type[asyncio.Protocol]", functools.partial(LimitedHttpProtocol, limits=limits))
