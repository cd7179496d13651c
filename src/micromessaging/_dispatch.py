"""Run the requests of one message against a service and build the reply.

Every outcome becomes a JSON-RPC response: unknown names, params that don't fit, exceptions
from service code and results JSON can't carry. Nothing a caller sends can raise out of
`Dispatcher.handle`, so one bad message never stops a worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from concurrent.futures import Executor

from ._exceptions import RemoteError
from ._openrpc import openrpc_document
from ._placement import Placement, awaitable
from ._protocol import (
    DEFAULT_MAX_MESSAGE_SIZE,
    ErrorCode,
    Incoming,
    Request,
    encode_response,
    encode_responses,
    error_response,
    parse_incoming,
    result_response,
)
from ._service import InvalidParams, Method, Service
from ._types import JSON
from .observability.observer import CallContext, CallObserver

logger = logging.getLogger("micromessaging.worker")

DISCOVER = "rpc.discover"

_ECHOED_NAME = 100
"""At most this many characters of an unknown method's name go back in the error data."""
_NAMES_IN_TEXT = 20
"""At most this many method names in the text of a Method not found error (all are listed)."""


class Dispatcher:
    """Answers JSON-RPC messages from one service's methods."""

    def __init__(
        self,
        service: Service,
        *,
        executor: Executor | None = None,
        debug: bool = False,
        max_message_size: int | None = DEFAULT_MAX_MESSAGE_SIZE,
        inline: bool = True,
        observer: CallObserver | None = None,
    ) -> None:
        self.service = service
        self.observer = observer
        self.debug = debug
        self.max_message_size = max_message_size
        self._executor = executor
        self._methods: dict[str, Method] = dict(service.methods)
        self._placements = {
            name: Placement(name, inline) for name, m in self._methods.items() if not m.is_async
        }
        self.all_plain = not any(method.is_async for method in self._methods.values())
        """Whether every method is a plain ``def`` (none is ``async def``)."""
        self._document: dict[str, JSON] | None = None
        # Built once: every "Method not found" answer carries the same list.
        self._available: list[JSON] = sorted(self._methods)
        self._offers = _offers_text(sorted(self._methods))

    async def handle(self, data: bytes, deadline: float | None = None) -> bytes | None:
        """The reply to one message, or None when nothing is owed (notifications only)."""
        return await self.handle_incoming(parse_incoming(data, self.max_message_size), deadline)

    async def handle_incoming(
        self, incoming: Incoming, deadline: float | None, context: CallContext | None = None
    ) -> bytes | None:
        """The reply to an already parsed message (`context`: what its message carried)."""
        if not incoming.is_batch:
            item = incoming.items[0]
            if isinstance(item, Request):
                response = await self.run(item, deadline, context)
                return None if response is None else encode_response(response)
            return encode_response(item)
        responses = await asyncio.gather(
            *(self._answer(item, deadline, context) for item in incoming.items)
        )
        return encode_responses([r for r in responses if r is not None], is_batch=True)

    def answers_at_once(self, incoming: Incoming) -> bool:
        """Whether answering `incoming` runs no service code that could wait: one request
        (not a batch) for a plain method that runs inline, or one answered by the dispatcher
        itself (an unknown method, the service's description, an invalid request)."""
        if incoming.is_batch:
            return False
        item = incoming.items[0]
        if not isinstance(item, Request):
            return True
        method = self._methods.get(item.method)
        if method is None:
            return True
        return not method.is_async and self._placements[method.name].inline

    async def _answer(
        self, item: Request | dict[str, JSON], deadline: float | None, context: CallContext | None
    ) -> dict[str, JSON] | None:
        return await self.run(item, deadline, context) if isinstance(item, Request) else item

    async def run(
        self, request: Request, deadline: float | None = None, context: CallContext | None = None
    ) -> dict[str, JSON] | None:
        """Call one request: its response, or None for a notification.

        A request whose deadline has passed is not started. One already running is not
        stopped here: the worker cancels the whole message when its caller gives up.
        """
        observer = self.observer
        if observer is None:
            response = await self._call(request, deadline)
        else:
            started = time.perf_counter()
            if observer.tracing is None or not observer.tracing.active():
                response = await self._call(request, deadline)
            else:
                trace = context.trace if context is not None else None
                with observer.tracing.server_call(trace, request.method, request.id) as span:
                    response = await self._call(request, deadline)
                    observer.tracing.answered(span, response)
            known = request.method in self._methods
            observer.finished(request, known, response, time.perf_counter() - started, context)
        if request.is_notification:
            if "error" in response:
                logger.info("notification %s failed: %s", request.method, response["error"])
            return None
        return response

    async def _call(self, request: Request, deadline: float | None) -> dict[str, JSON]:
        id_ = request.id
        method = self._methods.get(request.method)
        if method is None:
            if request.method == DISCOVER and not request.params:
                return result_response(id_, self.document())
            return error_response(
                id_, ErrorCode.METHOD_NOT_FOUND, data=self._not_found_data(request.method)
            )
        if deadline is not None and time.time() >= deadline:
            return error_response(id_, ErrorCode.DEADLINE_EXCEEDED)
        try:
            args, kwargs = method.bind(request.params)
            if method.is_async:
                result = await method.func(*args, **kwargs)
            else:
                placement = self._placements[method.name]
                if placement.inline:  # the fast path: no coroutine, no thread
                    result = placement.call_inline(method.func, args, kwargs)
                    if awaitable(result):
                        result = await result
                else:
                    result = await placement.call(self._executor, method.func, *args, **kwargs)
            return result_response(id_, result)
        except InvalidParams as exc:
            return error_response(id_, ErrorCode.INVALID_PARAMS, data={"message": str(exc)})
        except RemoteError as exc:
            return {"jsonrpc": "2.0", "error": exc.to_error_object(), "id": id_}
        except Exception as exc:
            return error_response(
                id_, ErrorCode.SERVER_ERROR, data=self._server_error_data(method, exc)
            )

    def _not_found_data(self, name: str) -> dict[str, JSON]:
        if len(name) > _ECHOED_NAME:
            name = name[:_ECHOED_NAME] + "..."
        return {
            "message": f"no method {name!r}; {self._offers}",
            "method": name,
            "available": self._available,
        }

    def _server_error_data(self, method: Method, exc: Exception) -> dict[str, JSON]:
        name = type(exc).__name__
        # The traceback always goes to the worker's log; to the caller only with `debug`.
        logger.warning("%s raised %s: %s", method.name, name, exc, exc_info=exc)
        data: dict[str, JSON] = {"type": name, "message": str(exc)}
        if self.debug:
            data["traceback"] = "".join(traceback.format_exception(exc))
        return data

    def document(self) -> dict[str, JSON]:
        """The service's OpenRPC document (built once)."""
        if self._document is None:
            self._document = openrpc_document(self.service)
        return self._document


def _offers_text(names: list[str]) -> str:
    if not names:
        return "this service offers none"
    shown = ", ".join(names[:_NAMES_IN_TEXT])
    more = len(names) - _NAMES_IN_TEXT
    return f"this service offers: {shown}" + (f" and {more} more" if more > 0 else "")
