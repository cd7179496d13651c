"""The HTTP worker: each POST becomes a `Delivery`, and settling it answers the request.

HTTP has no broker to hold what a worker can't start yet, so the server holds it: a request
that finds every slot taken waits, first come first served, for at most its deadline; when
`backlog` requests already wait it is refused at once with 503 and Retry-After. A refused
request was never handed to the service, so retrying it is safe.

HTTP has no redelivery either: `delivery_count` is always 1, the reply address is the open
connection (`can_reply` is always true), and dead-lettering logs the request and answers it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

import orjson

from ..._asgi import (
    RETRY_AFTER,
    BodyTooLarge,
    Headers,
    Receive,
    Scope,
    Send,
    error_body,
    not_run_body,
    read_body,
    request_context,
    request_deadline,
    respond,
    respond_too_large,
)
from ..._exceptions import TransportError
from ..._protocol import ErrorCode
from .._shared import LedgerDelivery, WorkerTransportBase
from ..base import TraceContext, WorkerOptions
from .server import EmbeddedServer, bind
from .wire import ServerAddress

logger = logging.getLogger("micromessaging.transport")

Answer = tuple[int, bytes, Headers]
_RETRY = RETRY_AFTER
_CLOSE = (b"connection", b"close")
HEALTHY = b'{"status":"ok"}'
STATUS_PATH = "/_mm/status"
"""Under the worker's prefix: ``GET`` answers the worker's record (docs/wire-http.md)."""


class Admission:
    """At most `limit` requests handed over at once; up to `backlog` more wait, in order."""

    def __init__(self, limit: int, backlog: int) -> None:
        self.limit = limit
        self.backlog = backlog
        self.used = 0
        self._waiting: deque[asyncio.Future[None]] = deque()

    async def enter(self, deadline: float | None) -> str | None:
        """Take a slot: None once taken, else why not ("busy", "expired" or "stopping")."""
        if self.used < self.limit and not self._waiting:
            self.used += 1
            return None
        if len(self._waiting) >= self.backlog:
            return "busy"
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        entered = False
        try:
            async with asyncio.timeout(None if deadline is None else deadline - time.time()):
                await waiter
            entered = True
            return None
        except TimeoutError:
            return "expired"
        except TransportError:
            return "stopping"
        finally:
            if waiter in self._waiting:
                self._waiting.remove(waiter)
            elif (
                not entered
                and waiter.done()
                and not waiter.cancelled()
                and waiter.exception() is None
            ):
                self.leave()  # a slot came as time ran out or the task was cancelled: pass it on

    def leave(self) -> None:
        """Give a slot back: to the first request waiting, else to the pool."""
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on; `used` stays
                return
        self.used -= 1

    def refuse_waiting(self) -> None:
        """Fail every waiting request (the worker is stopping)."""
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(TransportError("worker stopping"))


class HttpDelivery(LedgerDelivery):
    """One POST handed to the worker; settling it sends the HTTP response."""

    def __init__(
        self,
        transport: HttpWorkerTransport,
        body: bytes,
        deadline: float | None,
        sent: float | None = None,
        trace: TraceContext | None = None,
    ):
        self.transport = transport  # type: ignore[assignment]
        self.body = body
        self.deadline = deadline
        self.sent = sent
        self.trace = trace
        self.answer: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()

    @property
    def can_reply(self) -> bool:
        return True

    def respond(self, answer: Answer) -> None:
        """Send the HTTP response (once: the ledger settles each delivery once)."""
        if not self.answer.done():
            self.answer.set_result(answer)


class HttpWorkerTransport(WorkerTransportBase[HttpDelivery]):
    """Serves one queue as ``POST /<queue>`` (and ``POST /``) on an embedded uvicorn."""

    limit_slots = False  # `Admission` bounds what is handed over, and keeps the waiting in order
    settles_at_once = True  # the reply is handed to the request's own response

    def __init__(self, url: str, options: WorkerOptions) -> None:
        super().__init__(options)
        self.address = ServerAddress.from_url(url)
        self.max_message_size = options.max_message_size
        self.path = f"{self.address.prefix}/{options.queue}"
        self._paths = {self.path, self.address.prefix or "/", f"{self.address.prefix}/"}
        self._health = f"{self.address.prefix}/healthz"
        self._status = f"{self.address.prefix}{STATUS_PATH}"
        self._admission = Admission(options.concurrency, self.address.backlog)
        self._server: EmbeddedServer | None = None

    async def _open(self) -> None:
        sock = bind(self.address.host, self.address.port)
        server = EmbeddedServer(
            self.app,
            sock,
            certfile=self.address.certfile,
            keyfile=self.address.keyfile,
            limits=self.address.limits,
        )
        await server.start()
        self._server = server

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI application: one request, one delivery, one response."""
        if scope["type"] != "http":
            return
        if scope["path"] == self._health and scope["method"] in ("GET", "HEAD"):
            await respond(send, 200 if self.receiving else 503, HEALTHY if self.receiving else b"")
            return
        if scope["path"] == self._status and scope["method"] in ("GET", "HEAD"):
            await respond(send, 200, self._status_body())
            return
        if scope["path"] not in self._paths:
            detail = f"no queue at {scope['path']!r}: POST to {self.path!r}"
            await respond(send, 404, error_body(ErrorCode.INVALID_REQUEST, message=detail))
            return
        if scope["method"] != "POST":
            detail = f"{scope['method']} is not allowed: POST a JSON-RPC request"
            body = error_body(ErrorCode.INVALID_REQUEST, message=detail)
            await respond(send, 405, body, [(b"allow", b"POST")])
            return
        try:
            body = await read_body(scope, receive, self.max_message_size)
        except BodyTooLarge as exc:
            await respond_too_large(send, exc, self.max_message_size)
            return
        except ConnectionResetError:
            return
        sent, trace = request_context(scope)
        status, reply, headers = await self._handle(body, request_deadline(scope), sent, trace)
        await respond(send, status, reply, headers)

    def _status_body(self) -> bytes:
        record = self.reporter() if self.reporter is not None else None
        return orjson.dumps(
            {"queue": self.options.queue, "worker": record.to_json() if record else None}
        )

    async def _handle(
        self, body: bytes, deadline: float | None, sent: float | None, trace: TraceContext | None
    ) -> Answer:
        refused = "stopping" if not self.receiving else await self._admission.enter(deadline)
        if refused is None and not self.receiving:
            self._admission.leave()  # stopped while this request waited
            refused = "stopping"
        if refused == "expired":
            return 504, error_body(ErrorCode.DEADLINE_EXCEEDED), []
        if refused == "busy":
            detail = f"the worker is busy: {self._admission.backlog} requests wait already"
            return 503, not_run_body(detail), list(_RETRY)
        if refused is not None:
            return 503, not_run_body("the worker is stopping"), [*_RETRY, _CLOSE]
        delivery = HttpDelivery(self, body, deadline, sent, trace)
        self.hand_over(delivery)
        return await delivery.answer

    async def _complete(self, delivery: HttpDelivery, reply: bytes | None) -> None:
        if reply is not None:
            delivery.respond((200, reply, []))
        elif delivery.deadline is not None and time.time() >= delivery.deadline:
            # Skipped or cancelled because the caller gave up; tell it, should it still listen.
            delivery.respond((504, error_body(ErrorCode.DEADLINE_EXCEEDED), []))
        else:
            delivery.respond((204, b"", []))

    async def _bury(self, delivery: HttpDelivery, reason: str, reply: bytes | None) -> None:
        logger.warning("dead letter from HTTP %s: %s: %r", self.path, reason, delivery.body[:200])
        if reply is None:
            delivery.respond((500, error_body(ErrorCode.INTERNAL_ERROR, message=reason), []))
        else:
            delivery.respond((200, reply, []))

    def _slot_freed(self) -> None:
        self._admission.leave()

    async def _stop_taking(self) -> None:
        self._admission.refuse_waiting()
        if self._server is not None:
            self._server.stop_accepting()

    async def _give_back(self, deliveries: list[HttpDelivery]) -> None:
        # The worker stopped before settling these requests (which may have run): 503.
        detail = "the worker stopped before answering; the call may have run"
        body = error_body(ErrorCode.SERVER_ERROR, "Service unavailable", message=detail)
        for delivery in deliveries:
            delivery.respond((503, body, [*_RETRY, _CLOSE]))

    async def _disconnect(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop()

    def describe(self) -> str:
        address = self.address
        return f"{address.scheme}://{address.host}:{address.port} POST {self.path}"
