"""The services behind the queues, as the console sees them: their methods, and calls to them.

Methods come from each service's ``rpc.discover`` (the OpenRPC document of _openrpc.py),
kept for `describe_ttl` seconds and asked once however many pages want them at once. Calls
go through one client transport, the way the gateway forwards: the page's method and params
become one JSON-RPC request, and the page gets the whole reply back (result or error
object) with the time the round trip took.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson

from .._client import request_ids, single_result
from .._exceptions import (
    CallTimeout,
    MicromessagingError,
    NoWorkers,
    ProtocolError,
    RemoteError,
    TransportError,
)
from .._openrpc import signature_line
from .._protocol import encode_request
from .._types import JSON, Params
from ..transports import ClientTransport, client_transport

DESCRIBE_TIMEOUT = 5.0


class Unanswered(Exception):
    """A call the console could not complete: what to tell the page, and the HTTP status."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message

    def to_json(self) -> dict[str, Any]:
        """The ``error`` member of the console's JSON answer."""
        return {"kind": self.kind, "message": self.message}


def described_methods(document: JSON) -> list[dict[str, JSON]]:
    """The methods of an OpenRPC document as the page shows them; `ProtocolError` if none."""
    methods = document.get("methods") if isinstance(document, dict) else None
    if not isinstance(methods, list):
        raise ProtocolError("rpc.discover answered something that is not an OpenRPC document")
    shown = []
    for method in methods:
        if not isinstance(method, dict) or not isinstance(method.get("name"), str):
            continue
        try:
            signature = signature_line(method)
        except (AttributeError, KeyError, TypeError):
            signature = method["name"]  # a foreign document's odd params: the name will do
        params = method.get("params")
        shown.append(
            {
                "name": method["name"],
                "signature": signature,
                "summary": _text(method.get("summary")),
                "description": _text(method.get("description")),
                "params": [p["name"] for p in params or [] if isinstance(p, dict) and "name" in p]
                if isinstance(params, list)
                else [],
                "paramStructure": _text(method.get("paramStructure")) or "either",
            }
        )
    return shown


def _text(value: JSON) -> str:
    return value if isinstance(value, str) else ""


class Services:
    """Describes and calls the services behind a broker's queues, over one connection."""

    def __init__(self, broker: str, *, timeout: float, describe_ttl: float = 10.0) -> None:
        self.broker = broker
        self.timeout = timeout
        self.describe_ttl = describe_ttl
        self._ids = request_ids()
        self._transport: ClientTransport | None = None
        self._connecting: asyncio.Lock | None = None
        self._described: dict[str, tuple[float, asyncio.Task[dict[str, Any]]]] = {}

    async def describe(self, queue: str) -> dict[str, Any]:
        """`queue`'s service, its title and methods; `Unanswered` when it can't be asked."""
        now = time.monotonic()
        kept = self._described.get(queue)
        if kept is None or now - kept[0] > self.describe_ttl or _failed(kept[1]):
            self._forget_older_than(now - self.describe_ttl)
            task = asyncio.create_task(self._discover(queue))
            task.add_done_callback(_retrieve)  # a page that left no longer awaits it
            kept = self._described[queue] = (now, task)
        return await asyncio.shield(kept[1])

    def _forget_older_than(self, moment: float) -> None:
        for queue, (asked, task) in list(self._described.items()):
            if asked < moment and task.done():
                del self._described[queue]

    async def _discover(self, queue: str) -> dict[str, Any]:
        id_ = next(self._ids)
        body = encode_request("rpc.discover", None, id_)
        reply = await self._request(queue, body, min(DESCRIBE_TIMEOUT, self.timeout))
        try:
            document = single_result(reply, id_)
            methods = described_methods(document)
        except RemoteError as exc:
            raise Unanswered(502, "not described", f"rpc.discover failed: {exc}") from exc
        except ProtocolError as exc:
            raise Unanswered(502, "not described", str(exc)) from exc
        info = document.get("info") if isinstance(document.get("info"), dict) else {}
        return {"queue": queue, "title": _text(info.get("title")), "methods": methods}

    async def call(self, queue: str, method: str, params: Params) -> dict[str, Any]:
        """Call `method` on `queue`: ``{"reply": <JSON-RPC response>, "ms": <round trip>}``."""
        body = encode_request(method, params, next(self._ids))
        started = time.perf_counter()
        reply = await self._request(queue, body, self.timeout)
        elapsed = (time.perf_counter() - started) * 1000
        try:
            response = orjson.loads(reply)
        except orjson.JSONDecodeError:
            raise Unanswered(502, "protocol", "the service's reply is not JSON") from None
        return {"reply": response, "ms": round(elapsed, 3)}

    async def _request(self, queue: str, body: bytes, timeout: float) -> bytes:
        try:
            transport = await self._connected()
            return await transport.request(queue, body, time.time() + timeout)
        except CallTimeout:
            detail = f"no reply from {queue!r} within {timeout:g}s"
            raise Unanswered(504, "timeout", detail) from None
        except NoWorkers as exc:
            raise Unanswered(503, "no workers", str(exc)) from exc
        except TransportError as exc:
            await self._disconnect()
            raise Unanswered(502, "broker", f"the broker does not answer: {exc}") from exc
        except MicromessagingError as exc:  # a URL or extra the broker needs
            raise Unanswered(502, "broker", str(exc)) from exc

    async def _connected(self) -> ClientTransport:
        if self._transport is not None:
            return self._transport
        self._connecting = self._connecting or asyncio.Lock()
        async with self._connecting:
            if self._transport is None:
                transport = client_transport(self.broker)
                try:
                    await transport.connect()
                except BaseException:
                    await transport.aclose()
                    raise
                self._transport = transport
        return self._transport

    async def _disconnect(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            with contextlib.suppress(MicromessagingError):
                await transport.aclose()

    async def aclose(self) -> None:
        """Close the connection; descriptions being asked for are dropped."""
        for _, task in self._described.values():
            task.cancel()
        self._described.clear()
        await self._disconnect()


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _failed(task: asyncio.Task[Any]) -> bool:
    return task.done() and (task.cancelled() or task.exception() is not None)
