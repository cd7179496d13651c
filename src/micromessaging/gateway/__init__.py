"""The HTTP gateway: one authenticated front door to the services behind a broker.

``POST /<queue>`` with a JSON-RPC request or batch and ``Authorization: Bearer <token>``:
the gateway checks the token and every method against the token's grant, then forwards the
body unchanged over the broker (any transport: ``client_transport(broker)``) and answers with
the workers' reply. Nothing of a refused request reaches the broker. ``GET /healthz`` says
whether the gateway can reach its broker. With a console token in the tokens file, the
web console is mounted at ``/console/`` (the page at ``GET /console``; ``POST /console``
still calls the queue named console). docs/gateway.md describes the whole of it.

The app is built from `GatewaySettings`; `app_from_environment` is the factory uvicorn's
worker processes import (``--processes N``), reading the settings the command put in the
environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson

from .._asgi import (
    NO_WORKERS_REASON,
    RETRY_AFTER,
    BodyTooLarge,
    Headers,
    Receive,
    Scope,
    Send,
    header,
    read_body,
    request_context,
    request_deadline,
    respond,
    respond_too_large,
)
from .._asgi import error_body as asgi_error_body
from .._exceptions import CallTimeout, NoWorkers, TransportError
from .._protocol import DEFAULT_MAX_MESSAGE_SIZE, DecodeError, ErrorCode, loads
from .._settings import mask_password
from ..console import Console, ConsoleSettings
from ..transports import ClientTransport, client_transport
from .access import AccessEntry, AccessRecorder
from .auth import Authenticator, Grant, parse_tokens

if TYPE_CHECKING:
    from ..observability.metrics import GatewayMetrics

logger = logging.getLogger("micromessaging.gateway")

SETTINGS_VARIABLE = "MICROMESSAGING_GATEWAY_SETTINGS"
"""Where the gateway command leaves its settings for uvicorn's worker processes."""

UNAUTHORIZED = -32010
"""JSON-RPC error code answering HTTP 401: no bearer token, or one the gateway doesn't know."""
FORBIDDEN = -32011
"""JSON-RPC error code answering HTTP 403: the token may not call that queue or method."""

QUEUE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$")
HEALTH_CHECK_TIMEOUT = 2.0
CONSOLE_PATH = "/console"


@dataclass(frozen=True)
class GatewaySettings:
    """Everything the gateway app needs; plain data, so it can travel to worker processes."""

    broker: str
    grants: tuple[Grant, ...] = ()
    timeout: float = 30.0
    max_body: int = DEFAULT_MAX_MESSAGE_SIZE
    max_batch: int = 100
    console_secret: str = field(default_factory=lambda: secrets.token_hex(32))
    """Signs console sessions; one per gateway run, shared by its processes."""
    metrics: bool = False
    """Whether `app_from_environment` counts requests in Prometheus metrics."""
    log_level: str | None = None
    """When set, `app_from_environment` sends log lines to stderr at this level..."""
    log_format: str = "text"
    """...as text or JSON lines (each process of the gateway does it for itself)."""

    def to_json(self) -> str:
        """The settings as JSON (token hashes and the console's secret: never a token)."""
        return orjson.dumps(
            {
                "broker": self.broker,
                "tokens": [grant.as_entry() for grant in self.grants],
                "timeout": self.timeout,
                "max_body": self.max_body,
                "max_batch": self.max_batch,
                "console_secret": self.console_secret,
                "metrics": self.metrics,
                "log_level": self.log_level,
                "log_format": self.log_format,
            }
        ).decode()

    @classmethod
    def from_json(cls, text: str) -> GatewaySettings:
        """Settings written by `to_json`."""
        data = orjson.loads(text)
        grants = parse_tokens(orjson.dumps({"tokens": data["tokens"]}).decode(), SETTINGS_VARIABLE)
        return cls(
            broker=data["broker"],
            grants=tuple(grants),
            timeout=data["timeout"],
            max_body=data["max_body"],
            max_batch=data["max_batch"],
            console_secret=data["console_secret"],
            metrics=data.get("metrics", False),
            log_level=data.get("log_level"),
            log_format=data.get("log_format", "text"),
        )


def error_body(code: int, detail: str, title: str | None = None) -> bytes:
    """The JSON-RPC error (id null) a gateway refusal carries."""
    return asgi_error_body(code, title, message=detail)


def _retry_after() -> Headers:
    return list(RETRY_AFTER)


class Gateway:
    """The ASGI app: authenticate, check limits and grants, forward, answer."""

    def __init__(self, settings: GatewaySettings, metrics: GatewayMetrics | None = None) -> None:
        self.settings = settings
        self.auth = Authenticator(settings.grants)
        self.access = AccessRecorder((q for g in settings.grants for q in g.allow), metrics)
        """Writes each request's access line, and counts it in `metrics` when given."""
        self._transport: ClientTransport | None = None
        self._connecting = asyncio.Lock()
        self.console: Console | None = None
        """The web console at /console/, when some token may use it."""
        if any(grant.console for grant in settings.grants):
            console = ConsoleSettings(
                broker=settings.broker,
                timeout=settings.timeout,
                prefix=CONSOLE_PATH,
                allowed_hosts=None,  # a login guards it, not the Host header
                secret=bytes.fromhex(settings.console_secret),
            )
            self.console = Console(console, login=self._console_login)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            entry = AccessEntry(scope["method"], scope["path"])
            try:
                await self._http(scope, receive, entry.watch(send), entry)
            finally:
                self.access.finish(entry)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                with contextlib.suppress(TransportError):
                    await self.transport()  # a broker down now is retried per request
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def transport(self) -> ClientTransport:
        """The connected client transport to the broker (connecting on first use)."""
        if self._transport is not None:
            return self._transport
        async with self._connecting:
            if self._transport is None:
                transport = client_transport(self.settings.broker)
                try:
                    await transport.connect()
                except TransportError:
                    await transport.aclose()
                    raise
                self._transport = transport
        return self._transport

    async def aclose(self) -> None:
        """Close the connection to the broker (and the console's)."""
        transport, self._transport = self._transport, None
        if transport is not None:
            await transport.aclose()
        if self.console is not None:
            await self.console.aclose()

    def _console_login(self, token: str) -> str | None:
        grant = self.auth.identify(b"Bearer " + token.encode())
        if grant is None or not grant.console:
            logger.warning("console login refused: not a console token")
            return None
        logger.info("console login by token %r", grant.name)
        return grant.name

    async def _http(self, scope: Scope, receive: Receive, send: Send, entry: AccessEntry) -> None:
        path: str = scope["path"]
        if path == "/healthz" and scope["method"] in ("GET", "HEAD"):
            await self._health(send)
            return
        if self.console is not None and (
            path.startswith(CONSOLE_PATH + "/")
            or (path == CONSOLE_PATH and scope["method"] in ("GET", "HEAD"))
        ):
            await self.console(scope, receive, send)
            return
        queue = path[1:]
        if not QUEUE_NAME.match(queue):
            detail = "POST a JSON-RPC request to /<queue>"
            await respond(send, 404, error_body(ErrorCode.INVALID_REQUEST, detail))
            return
        entry.queue = queue
        if scope["method"] != "POST":
            body = error_body(ErrorCode.INVALID_REQUEST, f"{scope['method']} is not allowed")
            await respond(send, 405, body, [(b"allow", b"POST")])
            return
        grant = self.auth.identify(header(scope, b"authorization"))
        if grant is None:
            body = error_body(UNAUTHORIZED, "a valid bearer token is required", "Unauthorized")
            await respond(
                send, 401, body, [(b"www-authenticate", b'Bearer realm="micromessaging"')]
            )
            return
        entry.token = grant.name
        if not grant.may_use(queue):
            await self._forbid(send, grant, f"queue {queue!r}")
            return
        caller_deadline = request_deadline(scope)
        if caller_deadline is not None and caller_deadline <= time.time():
            # The caller has given up already: answered here, the broker never sees it.
            detail = "the request's X-MM-Deadline has passed"
            await respond(send, 504, error_body(ErrorCode.DEADLINE_EXCEEDED, detail))
            return
        try:
            body = await read_body(scope, receive, self.settings.max_body)
        except BodyTooLarge as exc:
            await respond_too_large(send, exc, self.settings.max_body)
            return
        except ConnectionResetError:
            return
        await self._forward(scope, send, grant, queue, body, entry, caller_deadline)

    async def _forward(
        self,
        scope: Scope,
        send: Send,
        grant: Grant,
        queue: str,
        body: bytes,
        entry: AccessEntry,
        caller_deadline: float | None,
    ) -> None:
        try:
            message = loads(body)  # as the workers read it: integers of any size included
        except DecodeError:
            await respond(send, 400, error_body(ErrorCode.PARSE_ERROR, "the body is not JSON"))
            return
        items = message if isinstance(message, list) else [message]
        if not items:
            await respond(send, 400, error_body(ErrorCode.INVALID_REQUEST, "an empty batch"))
            return
        if len(items) > self.settings.max_batch:
            detail = f"a batch of {len(items)} exceeds the limit of {self.settings.max_batch}"
            await respond(send, 413, error_body(ErrorCode.INVALID_REQUEST, detail))
            return
        methods = {
            i["method"] for i in items if isinstance(i, dict) and isinstance(i.get("method"), str)
        }
        entry.rpc = sorted(methods)
        denied = sorted(m for m in methods if not grant.permits(queue, m))
        if denied:
            await self._forbid(send, grant, f"{', '.join(denied)} on queue {queue!r}")
            return
        # What owes a reply: a request with an id, and anything invalid (it gets an error).
        owes_reply = any(not isinstance(i, dict) or "id" in i for i in items)
        deadline = time.time() + self.settings.timeout
        if caller_deadline is not None:
            deadline = min(deadline, caller_deadline)
        # The caller's trace context goes on (when well formed); the broker's transport
        # stamps its own send time, so workers measure the wait from the gateway on.
        _, trace = request_context(scope)
        try:
            transport = await self.transport()
            if not owes_reply:
                await transport.send(queue, body, deadline, trace)
                await respond(send, 204)
                return
            reply = await transport.request(queue, body, deadline, trace)
        except CallTimeout:
            detail = f"no reply from queue {queue!r} within {self.settings.timeout:g}s"
            await respond(send, 504, error_body(ErrorCode.DEADLINE_EXCEEDED, detail))
            return
        except NoWorkers as exc:
            # The broker answered: nobody serves the queue. Never run, so safe to retry.
            logger.warning("forwarding to %r: %s", queue, exc)
            body = asgi_error_body(
                ErrorCode.SERVER_ERROR,
                "No workers",
                message=str(exc),
                queue=queue,
                reason=NO_WORKERS_REASON,
                retry=True,
            )
            await respond(send, 503, body, _retry_after())
            return
        except TransportError as exc:
            logger.warning("forwarding to %r failed: %s", queue, exc)
            body = error_body(ErrorCode.SERVER_ERROR, "the broker is unreachable", "Bad gateway")
            await respond(send, 502, body, _retry_after())
            return
        await respond(send, 200, reply)

    async def _forbid(self, send: Send, grant: Grant, what: str) -> None:
        logger.info("token %r may not call %s", grant.name, what)
        body = error_body(FORBIDDEN, f"this token may not call {what}", "Forbidden")
        await respond(send, 403, body)

    async def _health(self, send: Send) -> None:
        problem = await self.check_broker()
        if problem is None:
            await respond(send, 200, b'{"status":"ok"}')
        else:
            body = orjson.dumps({"status": "unavailable", "detail": problem})
            await respond(send, 503, body, _retry_after())

    async def check_broker(self) -> str | None:
        """None when the broker answers a round trip now, else what is wrong."""
        try:
            async with asyncio.timeout(HEALTH_CHECK_TIMEOUT):
                transport = await self.transport()
                await transport.check()
        except TransportError as exc:
            return f"the broker does not answer: {exc}"
        except TimeoutError:
            return f"the broker did not answer within {HEALTH_CHECK_TIMEOUT:g}s"
        return None


def describe(settings: GatewaySettings, host: str, port: int, workers: int) -> str:
    """The gateway's start line: where it listens, what it forwards to, and its limits."""
    tokens = len(settings.grants)
    return (
        f"micromessaging gateway on http://{host}:{port} -> {mask_password(settings.broker)} "
        f"({tokens} token{'s' if tokens != 1 else ''}, {workers} "
        f"process{'es' if workers != 1 else ''}, timeout {settings.timeout:g}s, "
        f"body limit {settings.max_body} bytes, batch limit {settings.max_batch})"
    )


def app_from_environment() -> Gateway:
    """The gateway app, from the settings the gateway command left in the environment."""
    text = os.environ.get(SETTINGS_VARIABLE)
    if not text:
        raise RuntimeError(f"{SETTINGS_VARIABLE} is not set: start with `micromessaging gateway`")
    settings = GatewaySettings.from_json(text)
    if settings.log_level is not None:
        from ..observability.logs import configure

        configure(settings.log_level, settings.log_format)
    metrics = None
    if settings.metrics:
        from ..observability.metrics import GatewayMetrics

        metrics = GatewayMetrics()
    return Gateway(settings, metrics)


__all__ = [
    "FORBIDDEN",
    "UNAUTHORIZED",
    "Gateway",
    "GatewaySettings",
    "app_from_environment",
    "describe",
]
