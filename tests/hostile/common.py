"""What the hostile-input suites share: the service they serve, and the checks after each case.

Every case sends something a caller of ours would never send, with the broker's own client
library (or raw bytes on a socket), bypassing our client. After each, the suite checks that
the worker still answers normal calls at its full concurrency (`full_concurrency`: as many
calls as the worker's concurrency run at the same moment) and that nothing outside the
worker's own queue changed (each suite compares a canary queue's state before and after).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable

import orjson

from micromessaging import AsyncClient, Worker

from ..transports.contract import serving

__all__ = ["serving"]  # the hostile suites take it from here with the rest

CONCURRENCY = 4
REQUEST = b'{"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": 1}'


def request(method: str = "add", params: object = (1, 2), id_: object = 1) -> bytes:
    """A JSON-RPC request's bytes."""
    return orjson.dumps({"jsonrpc": "2.0", "method": method, "params": list(params), "id": id_})


class Gauge:
    """The service under attack: a few plain methods, and one that shows the concurrency."""

    def __init__(self) -> None:
        self.running = 0
        self.most = 0
        self.ran: list[object] = []
        self._all_in = asyncio.Event()

    def add(self, a: float, b: float) -> float:
        return a + b

    def echo(self, value: object) -> object:
        return value

    def record(self, value: object) -> None:
        self.ran.append(value)

    async def hold(self, seconds: float) -> int:
        """Sleep `seconds`; how many calls of `hold` ran at once at most, so far."""
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.running -= 1
        return self.most

    async def overlap(self, calls: int) -> int:
        """Return once `calls` calls of this method run at once: how many ran at most."""
        self.running += 1
        self.most = max(self.most, self.running)
        if self.running >= calls:
            self._all_in.set()
        try:
            await asyncio.wait_for(self._all_in.wait(), 10)
        finally:
            self.running -= 1
            if self.running == 0:
                self._all_in.clear()
        return self.most


async def full_concurrency(client: AsyncClient, service: Gauge, calls: int = CONCURRENCY) -> None:
    """`calls` calls run at the same moment in the worker, and are all answered."""
    service.most = 0
    calling = (client.call("overlap", calls, timeout=15) for _ in range(calls))
    results = await asyncio.gather(*calling)
    assert results == [calls] * calls
    assert await client.add(20, 22) == 42


def settled(worker: Worker) -> int:
    """How many messages the worker has settled, whichever way."""
    stats = worker.stats
    return stats.completed + stats.expired + stats.dead_lettered


async def until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Wait for `predicate()` to hold, checking often; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not in time: {what or predicate}")
        await asyncio.sleep(0.01)


async def until_true(
    check: Callable[[], Awaitable[object]], timeout: float = 10.0, what: str = ""
) -> None:
    """Wait for `await check()` to hold, asking often; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not in time: {what or check}")
        await asyncio.sleep(0.02)


def error_code(reply: bytes | None) -> int | None:
    """The JSON-RPC error code of a reply (of its first response, for a batch)."""
    assert reply is not None, "no reply"
    decoded = json.loads(reply)  # exact: a reply may carry an id of any size
    first = decoded[0] if isinstance(decoded, list) else decoded
    return first.get("error", {}).get("code")


async def assert_full_concurrency(client: AsyncClient, gauge: Gauge, concurrency: int) -> None:
    """`concurrency` slow calls all run at once: no slot was lost to what came before."""
    gauge.most = 0
    results = await asyncio.gather(*(client.hold(0.3) for _ in range(concurrency)))
    assert gauge.most == concurrency, (gauge.most, results)


async def eventually(predicate, timeout: float = 10.0) -> None:
    """Wait until `predicate()` (sync or async) is true, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)
