"""The dispatcher: sync and async methods, errors, and the answers it owes."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import orjson

from micromessaging import ErrorCode, RemoteError, Service
from micromessaging._dispatch import Dispatcher
from micromessaging._protocol import encode_request


def call(method: str, *params: object, id_: object = 1) -> bytes:
    return encode_request(method, list(params) if params else None, id_)  # type: ignore[arg-type]


class Shop:
    def __init__(self) -> None:
        self.release = threading.Event()

    def blocking(self) -> str:
        return "released" if self.release.wait(5) else "never released"

    async def unblock(self) -> str:
        self.release.set()
        return "unblocked"

    async def quick(self) -> str:
        return "quick"

    def broken(self) -> None:
        raise KeyError("sku-42")

    def refuse(self) -> None:
        raise RemoteError(4002, "out of stock", {"sku": 42})

    def weird(self) -> object:
        return object()

    def awaitable(self):  # a sync function handing back a coroutine
        return self.quick()


async def test_sync_methods_do_not_block_the_loop() -> None:
    shop = Shop()
    dispatcher = Dispatcher(Service.from_object(shop), executor=ThreadPoolExecutor(4))
    blocked = asyncio.create_task(dispatcher.handle(call("blocking")))
    await asyncio.sleep(0.05)
    assert orjson.loads(await dispatcher.handle(call("quick")))["result"] == "quick"
    assert not blocked.done()
    shop.release.set()
    assert orjson.loads(await blocked)["result"] == "released"


async def test_async_and_awaitable_results() -> None:
    dispatcher = Dispatcher(Service.from_object(Shop()))
    assert orjson.loads(await dispatcher.handle(call("awaitable")))["result"] == "quick"


async def test_exceptions_become_server_errors_without_traceback() -> None:
    reply = orjson.loads(await Dispatcher(Service.from_object(Shop())).handle(call("broken")))
    assert reply["error"] == {
        "code": ErrorCode.SERVER_ERROR,
        "message": "Server error",
        "data": {"type": "KeyError", "message": "'sku-42'"},
    }


async def test_debug_sends_the_traceback() -> None:
    dispatcher = Dispatcher(Service.from_object(Shop()), debug=True)
    reply = orjson.loads(await dispatcher.handle(call("broken")))
    assert "Traceback" in reply["error"]["data"]["traceback"]
    assert "raise KeyError" in reply["error"]["data"]["traceback"]


async def test_service_errors_keep_their_code() -> None:
    reply = orjson.loads(await Dispatcher(Service.from_object(Shop())).handle(call("refuse")))
    assert reply["error"] == {"code": 4002, "message": "out of stock", "data": {"sku": 42}}


async def test_unencodable_result_is_an_internal_error() -> None:
    reply = orjson.loads(await Dispatcher(Service.from_object(Shop())).handle(call("weird")))
    assert reply["error"]["code"] == ErrorCode.INTERNAL_ERROR
    assert reply["id"] == 1


async def test_expired_deadline_is_not_run() -> None:
    shop = Shop()
    reply = await Dispatcher(Service.from_object(shop)).handle(call("quick"), time.time() - 1)
    assert orjson.loads(reply)["error"]["code"] == ErrorCode.DEADLINE_EXCEEDED


async def test_rpc_discover_and_reserved_names() -> None:
    dispatcher = Dispatcher(Service.from_object(Shop()))
    document = orjson.loads(await dispatcher.handle(call("rpc.discover")))["result"]
    assert {m["name"] for m in document["methods"]} >= {"blocking", "quick", "broken"}
    reply = orjson.loads(await dispatcher.handle(call("rpc.other")))
    assert reply["error"]["code"] == ErrorCode.METHOD_NOT_FOUND


async def test_batch_items_run_concurrently() -> None:
    shop = Shop()
    dispatcher = Dispatcher(Service.from_object(shop), executor=ThreadPoolExecutor(4))
    # The first item is released by the second: only side by side do both succeed.
    batch = b"[" + call("blocking", id_=1) + b"," + call("unblock", id_=2) + b"]"
    replies = {r["id"]: r["result"] for r in orjson.loads(await dispatcher.handle(batch))}
    assert replies == {1: "released", 2: "unblocked"}


async def test_failing_notification_sends_nothing() -> None:
    body = b'{"jsonrpc": "2.0", "method": "broken"}'
    assert await Dispatcher(Service.from_object(Shop())).handle(body) is None


async def test_method_not_found_names_the_method_and_what_the_service_offers() -> None:
    service = Service("calc")
    service.add("subtract", lambda a, b: a - b)
    service.add("add", lambda a, b: a + b)
    reply = orjson.loads(await Dispatcher(service).handle(call("mul", 2, 3)))
    assert reply["error"] == {
        "code": ErrorCode.METHOD_NOT_FOUND,
        "message": "Method not found",
        "data": {
            "message": "no method 'mul'; this service offers: add, subtract",
            "method": "mul",
            "available": ["add", "subtract"],
        },
    }


async def test_method_not_found_echoes_a_long_name_cut_short() -> None:
    reply = orjson.loads(await Dispatcher(Service.from_object(Shop())).handle(call("x" * 5000)))
    data = reply["error"]["data"]
    assert len(data["method"]) < 200 and data["method"].startswith("xxx")
    assert len(data["message"]) < 400
