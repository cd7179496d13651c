"""HTTP limits, on the worker and on the gateway, shown with real sockets.

A request head larger than the limit is answered 431 without being kept; a head or a body
that does not arrive in time is answered 408; connections beyond the cap are answered 503
at once. The gateway is the real command in a subprocess, so that its memory can be
measured while it is attacked; after each attack a normal call is answered at once. The
gateway forwards to an HTTP worker in this process (no broker state to clean up).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from micromessaging import ErrorCode, Worker
from micromessaging.gateway import Gateway, GatewaySettings
from micromessaging.gateway.auth import hash_token, parse_tokens

TOKEN = "limits-token"
QUEUE = "calc"
CALL = orjson.dumps({"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": 1})


class Calc:
    def add(self, a: float, b: float) -> float:
        return a + b


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def post(path: str, body: bytes, *headers: str) -> bytes:
    head = [f"POST {path} HTTP/1.1", "host: test", f"content-length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def exchange(port: int, request: bytes, timeout: float = 10) -> tuple[int, bytes]:
    """Send `request` on a new connection; the status and body of the answer (0: none)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        return await read_response(reader, timeout)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def read_response(reader: asyncio.StreamReader, timeout: float = 10) -> tuple[int, bytes]:
    async with asyncio.timeout(timeout):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return 0, b""
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await reader.readexactly(length) if length else b""
        return int(head.split(b" ", 2)[1]), body


async def normal_call(port: int, *headers: str) -> float:
    """A normal call on a new connection: it must succeed; how long it took."""
    started = time.monotonic()
    status, body = await exchange(port, post(f"/{QUEUE}", CALL, *headers), timeout=5)
    assert (status, orjson.loads(body or b"null") and orjson.loads(body).get("result")) == (200, 3)
    return time.monotonic() - started


async def slow_sender(port: int, head: bytes, every: float) -> tuple[int, float]:
    """Send `head` one byte every `every` seconds until the server answers or hangs up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    answer = asyncio.ensure_future(read_response(reader, timeout=60))
    try:
        for byte in head:
            if answer.done():
                break
            writer.write(bytes([byte]))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            await asyncio.wait({answer}, timeout=every)
        status, _ = await answer
        return status, time.monotonic() - started
    finally:
        answer.cancel()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def huge_header(port: int, size: int, path: str = f"/{QUEUE}") -> int:
    """A request whose one header is `size` bytes; the status that came back (0: none)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"POST {path} HTTP/1.1\r\nhost: test\r\nx-big: ".encode())
        chunk = b"a" * 65536
        answer = asyncio.ensure_future(read_response(reader, timeout=30))
        with contextlib.suppress(ConnectionError):
            for _ in range(size // len(chunk)):
                if answer.done():
                    break
                writer.write(chunk)
                await writer.drain()
            writer.write(b"\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()
        status, _ = await answer
        return status
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


# --- the worker ------------------------------------------------------------------------------


@pytest.fixture
async def worker_port() -> AsyncIterator[int]:
    port = free_port()
    options = "header_timeout=1&body_timeout=1&connection_limit=20&max_header_size=8192"
    async with Worker(Calc(), f"http://127.0.0.1:{port}?{options}", QUEUE):
        yield port


async def test_worker_answers_431_to_a_head_over_the_limit(worker_port: int) -> None:
    assert await huge_header(worker_port, 10 * 1024 * 1024) == 431
    near = "x-fill: " + "a" * (8192 - 200)
    status, _ = await exchange(worker_port, post(f"/{QUEUE}", CALL, near))
    assert status == 200  # just under the limit: served
    status, body = await exchange(worker_port, post(f"/{QUEUE}", CALL, near + "a" * 300))
    assert status == 431
    assert orjson.loads(body)["error"]["code"] == ErrorCode.INVALID_REQUEST
    assert await normal_call(worker_port) < 1


async def test_worker_answers_408_to_a_head_or_a_body_too_slow(worker_port: int) -> None:
    status, took = await slow_sender(worker_port, post(f"/{QUEUE}", CALL), every=0.1)
    assert status == 408 and 0.9 < took < 3
    trickle = post(f"/{QUEUE}", b" " * 100)
    head, body = trickle[: -len(b" " * 100)], b" " * 100
    reader, writer = await asyncio.open_connection("127.0.0.1", worker_port)
    writer.write(head)
    started = time.monotonic()
    answer = asyncio.ensure_future(read_response(reader))
    for byte in body:
        if answer.done():
            break
        writer.write(bytes([byte]))
        await asyncio.wait({answer}, timeout=0.1)
    assert (await answer)[0] == 408
    assert 0.9 < time.monotonic() - started < 3
    writer.close()
    # A connection that says nothing is closed, without an answer.
    reader, writer = await asyncio.open_connection("127.0.0.1", worker_port)
    started = time.monotonic()
    assert await reader.read() == b""
    assert 0.9 < time.monotonic() - started < 3
    writer.close()
    assert await normal_call(worker_port) < 1


async def test_worker_holds_at_most_its_connection_limit(worker_port: int) -> None:
    held = [await asyncio.open_connection("127.0.0.1", worker_port) for _ in range(20)]
    try:
        status, body = await exchange(worker_port, post(f"/{QUEUE}", CALL), timeout=2)
        assert status == 503
        assert orjson.loads(body)["error"]["data"]["retry"] is True
    finally:
        for _, writer in held:
            writer.close()
    await asyncio.sleep(0)  # let the server see them go
    for _ in range(50):
        with contextlib.suppress(AssertionError):
            assert await normal_call(worker_port) < 1
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("a normal call was not answered after the connections closed")


def test_worker_url_limits_are_checked() -> None:
    from micromessaging import ConfigurationError
    from micromessaging.transports.http.wire import ServerAddress

    address = ServerAddress.from_url("http://h:1?header_timeout=2&connection_limit=7")
    assert (address.limits.header_timeout, address.limits.max_connections) == (2.0, 7)
    for bad in ("header_timeout=0", "body_timeout=soon", "connection_limit=0", "max_header_size=1"):
        with pytest.raises(ConfigurationError):
            ServerAddress.from_url(f"http://h:1?{bad}")


# --- the gateway, the real command -----------------------------------------------------------


def rss(pid: int) -> int:
    """Resident memory of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@contextlib.contextmanager
def gateway_process(broker: str, port: int, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    tokens = {"tokens": [{"name": "t", "sha256": hash_token(TOKEN), "allow": {QUEUE: "*"}}]}
    process = subprocess.Popen(
        [sys.executable, "-m", "micromessaging", "gateway", "--broker", broker,
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *args],
        env={**os.environ, "MICROMESSAGING_GATEWAY_TOKENS": orjson.dumps(tokens).decode()},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def wait_serving(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            if (await exchange(port, b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n", 2))[0] == 200:
                return
        assert time.monotonic() < deadline, "the gateway did not come up"
        await asyncio.sleep(0.1)


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[int, int]]:
    """(port, pid) of a gateway with 2 s head and body timeouts, behind an HTTP worker."""
    worker_port, port = free_port(), free_port()
    async with Worker(Calc(), f"http://127.0.0.1:{worker_port}", QUEUE, concurrency=64):
        limits = ["--header-timeout", "2", "--body-timeout", "2", "--connection-limit", "800"]
        with gateway_process(f"http://127.0.0.1:{worker_port}", port, *limits) as process:
            await wait_serving(port)
            yield port, process.pid


AUTH = f"authorization: Bearer {TOKEN}"


async def test_gateway_memory_stays_bounded_under_huge_headers(gateway: tuple[int, int]) -> None:
    port, pid = gateway
    assert await normal_call(port, AUTH) < 2
    before = rss(pid)
    # Twenty requests with 10 MB headers and no token, all at once.
    statuses = await asyncio.gather(*(huge_header(port, 10 * 1024 * 1024) for _ in range(20)))
    after = rss(pid)
    print(f"\ngateway RSS {before / 2**20:.1f} MB -> {after / 2**20:.1f} MB; statuses {statuses}")
    assert statuses == [431] * 20
    assert after - before < 20 * 2**20  # it grew by 217 MB before the limit
    assert await normal_call(port, AUTH) < 1


async def test_gateway_drops_500_slow_heads_and_serves_meanwhile(gateway: tuple[int, int]) -> None:
    port, pid = gateway
    before = rss(pid)
    head = post(f"/{QUEUE}", CALL, AUTH)
    attack = [asyncio.ensure_future(slow_sender(port, head, every=0.3)) for _ in range(500)]
    try:
        await asyncio.sleep(0.5)  # all of them connected and trickling
        assert await normal_call(port, AUTH) < 1  # served while they are held
        outcomes = await asyncio.wait_for(asyncio.gather(*attack), 30)
    finally:
        for task in attack:
            task.cancel()
    statuses = [status for status, _ in outcomes]
    longest = max(took for _, took in outcomes)
    print(f"\n500 slow heads: statuses {set(statuses)}, the last dropped after {longest:.1f} s")
    assert statuses == [408] * 500
    assert longest < 10
    assert rss(pid) - before < 40 * 2**20
    assert await normal_call(port, AUTH) < 1


async def test_gateway_answers_408_to_a_trickled_body(gateway: tuple[int, int]) -> None:
    port, _ = gateway
    body = b" " * 200
    request = post(f"/{QUEUE}", body, AUTH)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request[: -len(body)])
    started = time.monotonic()
    answer = asyncio.ensure_future(read_response(reader))
    for byte in body:
        if answer.done():
            break
        writer.write(bytes([byte]))
        await asyncio.wait({answer}, timeout=0.2)
    assert (await answer)[0] == 408
    assert 1.9 < time.monotonic() - started < 5
    writer.close()
    assert await normal_call(port, AUTH) < 1


async def test_gateway_connection_limit() -> None:
    worker_port, port = free_port(), free_port()
    async with Worker(Calc(), f"http://127.0.0.1:{worker_port}", QUEUE):
        limit = ["--connection-limit", "5"]
        with gateway_process(f"http://127.0.0.1:{worker_port}", port, *limit):
            await wait_serving(port)
            held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
            try:
                status, _ = await exchange(port, post(f"/{QUEUE}", CALL, AUTH), timeout=2)
                assert status == 503
            finally:
                for _, writer in held:
                    writer.close()
            for _ in range(50):
                with contextlib.suppress(AssertionError):
                    assert await normal_call(port, AUTH) < 1
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("not served after the connections closed")


async def test_gateway_refuses_a_passed_deadline_without_the_broker() -> None:
    entry = {"name": "t", "sha256": hash_token(TOKEN), "allow": {QUEUE: "*"}}
    grants = tuple(parse_tokens(orjson.dumps({"tokens": [entry]}).decode(), "test"))
    unreachable = f"redis://127.0.0.1:{free_port()}/0"  # forwarding would answer 502
    gateway = Gateway(GatewaySettings(broker=unreachable, grants=grants))
    transport = httpx.ASGITransport(app=gateway)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        past = str(int((time.time() - 1) * 1000))
        headers = {"authorization": f"Bearer {TOKEN}", "x-mm-deadline": past}
        response = await http.post(f"/{QUEUE}", content=CALL, headers=headers)
    assert response.status_code == 504
    assert response.json()["error"]["code"] == ErrorCode.DEADLINE_EXCEEDED
    assert gateway._transport is None  # the broker was never reached for
