"""What the console tests share: an admin side that counts its queries, a served console."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import orjson

from micromessaging.console import Console, ConsoleSettings
from micromessaging.transports import memory
from micromessaging.transports.http.server import EmbeddedServer, bind
from micromessaging.transports.memory import MemoryAdmin


def memory_url() -> str:
    return f"memory://console-{uuid.uuid4().hex[:10]}"


def unique_queue(tag: str = "q") -> str:
    return f"mm-console-{tag}-{uuid.uuid4().hex[:8]}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class CountingAdmin(MemoryAdmin):
    """The in-process broker's real admin side, counting what the console asks of it."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.queries = 0

    async def queues(self) -> list[str]:
        self.queries += 1
        return await super().queues()

    async def status(self, queue: str):
        self.queries += 1
        return await super().status(queue)


def poison(url: str, queue: str, body: bytes) -> None:
    """Put `body` on a memory:// queue as a request delivered past any limit (dead at once)."""
    memory.broker(url).publish(queue, memory.Message(body, delivery_count=99, sent=time.time()))


def notification(method: str, *params: object) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "method": method, "params": list(params)})


class Served:
    """A console served by uvicorn on 127.0.0.1, and an HTTP client with a session."""

    def __init__(self, console: Console, base: str) -> None:
        self.console = console
        self.base = base

    @asynccontextmanager
    async def page(self) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
        """A client that loaded the page (so holds the cookie) and the headers a POST needs."""
        async with httpx.AsyncClient(base_url=self.base, timeout=30) as client:
            assert (await client.get("/")).status_code == 200
            csrf = (await client.get("/api/session")).json()["csrf"]
            yield client, {"x-mm-csrf": csrf, "content-type": "application/json"}


@asynccontextmanager
async def served(settings: ConsoleSettings, **kwargs: object) -> AsyncIterator[Served]:
    """`Console(settings)` on a real uvicorn server, closed afterwards."""
    port = free_port()
    console = Console(settings, **kwargs)  # type: ignore[arg-type]
    server = EmbeddedServer(console, bind("127.0.0.1", port))
    await server.start()
    try:
        yield Served(console, f"http://127.0.0.1:{port}")
    finally:
        await server.stop(timeout=5)
        await console.aclose()
