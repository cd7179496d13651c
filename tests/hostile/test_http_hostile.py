"""Hostile and unlucky requests sent over raw sockets to an HTTP worker: each gets the answer
it deserves, and none wedges the worker.

Each kind is written byte for byte on a new connection to a worker of concurrency 4; the
answer's status (and JSON-RPC error code, when the body is JSON-RPC) is checked, and then
the worker must still run 4 slow calls at once: no slot was lost to what came before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson
import pytest

from micromessaging import AsyncClient, ErrorCode

from .helpers import Gauge, assert_full_concurrency, eventually, serving

CONCURRENCY = 4
QUEUE = "calc"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def request(
    body: bytes = b'{"jsonrpc":"2.0","method":"add","params":[1,2],"id":1}',
    *headers: str,
    method: str = "POST",
    path: str = f"/{QUEUE}",
    length: bool = True,
    version: str = "HTTP/1.1",
) -> bytes:
    lines = [f"{method} {path} {version}", "host: test", *headers]
    if length:
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def rpc(method: str, params: object, id_: object = 1) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": id_}).encode()


def chunked(*chunks: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"


@dataclass(frozen=True)
class Kind:
    name: str
    request: bytes
    status: int
    code: int | None = None
    """The JSON-RPC error code the answer carries, when it is one."""


NESTED = b"[" * 100_000 + b"]" * 100_000
DEEP_PARAMS = b'{"jsonrpc":"2.0","method":"echo","params":[%s],"id":1}' % (
    b"[" * 1000 + b"]" * 1000
)
PAST = str(int((time.time() - 10) * 1000))

KINDS = [
    Kind("not-json", request(b"this is not JSON"), 200, ErrorCode.PARSE_ERROR),
    Kind("invalid-utf8", request(b'{"method":"\xff\xfe"}'), 200, ErrorCode.PARSE_ERROR),
    Kind("empty-body", request(b""), 200, ErrorCode.PARSE_ERROR),
    Kind("nested-100000", request(NESTED), 200, ErrorCode.PARSE_ERROR),
    Kind("nested-params-1000", request(DEEP_PARAMS), 200, ErrorCode.INTERNAL_ERROR),
    Kind("lone-surrogate", request(rpc("echo", ["\ud800"])), 200, ErrorCode.PARSE_ERROR),
    Kind(
        "response-as-request",
        request(b'{"jsonrpc":"2.0","result":1,"id":1}'),
        200,
        ErrorCode.INVALID_REQUEST,
    ),
    Kind("empty-batch", request(b"[]"), 200, ErrorCode.INVALID_REQUEST),
    Kind("private-method", request(rpc("_secret", [])), 200, ErrorCode.METHOD_NOT_FOUND),
    Kind("wrong-params-type", request(rpc("add", "1, 2")), 200, ErrorCode.INVALID_REQUEST),
    Kind("huge-int-id", request(rpc("add", [1, 2], 2**64 + 1)), 200),
    Kind(
        "notification-batch-5000",
        request(
            json.dumps([{"jsonrpc": "2.0", "method": "add", "params": [1, 2]}] * 5000).encode()
        ),
        204,
    ),
    Kind(
        "content-length-100mb-unsent",
        request(b"", "content-length: 104857600", length=False),
        413,
        ErrorCode.MESSAGE_TOO_LARGE,
    ),
    Kind(
        "chunked-over-the-limit",
        request(chunked(*[b" " * 65536] * 20), "transfer-encoding: chunked", length=False),
        413,
        ErrorCode.MESSAGE_TOO_LARGE,
    ),
    Kind(
        "expect-continue-too-large",
        request(b"", "expect: 100-continue", "content-length: 50000000", length=False),
        413,
        ErrorCode.MESSAGE_TOO_LARGE,
    ),
    Kind("get", request(b"", method="GET"), 405, ErrorCode.INVALID_REQUEST),
    Kind("delete", request(b"", method="DELETE"), 405, ErrorCode.INVALID_REQUEST),
    Kind("unknown-path", request(path="/elsewhere"), 404, ErrorCode.INVALID_REQUEST),
    Kind("dot-dot-path", request(path=f"/x/../{QUEUE}"), 404, ErrorCode.INVALID_REQUEST),
    Kind("content-length-not-a-number", request(b"{}", "content-length: abc", length=False), 400),
    Kind(
        "two-content-lengths",
        request(b"{}", "content-length: 2", "content-length: 5", length=False),
        400,
    ),
    Kind(
        "length-and-chunked",
        request(chunked(b"{}"), "transfer-encoding: chunked", "content-length: 7", length=False),
        400,
    ),
    Kind("unknown-transfer-encoding", request(b"{}", "transfer-encoding: gzip", length=False), 400),
    Kind("nul-in-header", request(b"{}", "x-evil: a\x00b"), 400),
    Kind("garbage-request-line", b"GARBAGE\r\n\r\n", 400),
    Kind("binary-request-line", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" * 8, 400),
    Kind("deadline-not-a-number", request(rpc("add", [1, 2]), "x-mm-deadline: soon"), 200),
    Kind("deadline-nan", request(rpc("add", [1, 2]), "x-mm-deadline: nan"), 200),
    Kind("deadline-1e400", request(rpc("add", [1, 2]), "x-mm-deadline: 1e400"), 200),
    Kind(
        "deadline-passed",
        request(rpc("add", [1, 2]), f"x-mm-deadline: {PAST}"),
        504,
        ErrorCode.DEADLINE_EXCEEDED,
    ),
    Kind(
        "header-10mb",
        request(rpc("add", [1, 2]), "x-big: " + "a" * 10 * 1024 * 1024),
        431,
        ErrorCode.INVALID_REQUEST,
    ),
    Kind("headers-2000-small", request(rpc("add", [1, 2]), *["x-h: v"] * 2000), 200),
    Kind("headers-10000-small", request(rpc("add", [1, 2]), *["x-h: v"] * 10000), 431),
    Kind("http-1.0-without-host", request(version="HTTP/1.0").replace(b"host: test\r\n", b""), 200),
]


@pytest.fixture
async def worker() -> AsyncIterator[tuple[int, Gauge]]:
    port, gauge = free_port(), Gauge()
    async with serving(gauge, f"http://127.0.0.1:{port}", QUEUE, concurrency=CONCURRENCY):
        yield port, gauge


async def send(port: int, data: bytes, responses: int = 1) -> list[tuple[int, bytes]]:
    """Write `data` on a new connection; the (status, body) of each answer read."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers: list[tuple[int, bytes]] = []
    try:
        writer.write(data)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        async with asyncio.timeout(20):
            for _ in range(responses):
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    answers.append((0, b""))
                    break
                fields = dict(
                    line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line
                )
                length = int({k.strip().lower(): v for k, v in fields.items()}.get(
                    b"content-length", b"0"))  # fmt: skip
                answers.append((int(head.split(b" ", 2)[1]), await reader.readexactly(length)))
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return answers


async def still_whole(port: int, gauge: Gauge) -> None:
    async with AsyncClient(f"http://127.0.0.1:{port}", QUEUE, timeout=30) as client:
        await assert_full_concurrency(client, gauge, CONCURRENCY)
        assert await client.add(2, 3) == 5


def test_there_are_enough_kinds() -> None:
    assert len(KINDS) >= 30
    assert len({kind.name for kind in KINDS}) == len(KINDS)


@pytest.mark.parametrize("kind", KINDS, ids=[kind.name for kind in KINDS])
async def test_a_hostile_request_gets_its_answer_and_the_worker_stays_whole(
    kind: Kind, worker: tuple[int, Gauge]
) -> None:
    port, gauge = worker
    [(status, body)] = await send(port, kind.request)
    assert status == kind.status, body[:200]
    if kind.code is not None:
        answer = orjson.loads(body)
        assert answer["error"]["code"] == kind.code
    if kind.name == "huge-int-id":
        assert json.loads(body) == {"jsonrpc": "2.0", "result": 3, "id": 2**64 + 1}
    await still_whole(port, gauge)


async def test_pipelined_requests_are_answered_in_order(worker: tuple[int, Gauge]) -> None:
    port, gauge = worker
    answers = await send(port, request(rpc("add", [1, 1])) + request(rpc("add", [2, 2])), 2)
    assert [(status, orjson.loads(body)["result"]) for status, body in answers] == [
        (200, 2),
        (200, 4),
    ]
    await still_whole(port, gauge)


async def test_a_caller_hanging_up_mid_call_frees_its_slot(worker: tuple[int, Gauge]) -> None:
    port, gauge = worker
    for _ in range(2 * CONCURRENCY):  # more than there are slots
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request(rpc("hold", [0.3])))
        await writer.drain()
        writer.close()  # gone before the answer
    await eventually(lambda: gauge.running == 0 and gauge.most >= 1)
    await still_whole(port, gauge)


GOOD_PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
BAD_TRACE_HEADERS = {
    "not-hex": ["traceparent: 00-zzf7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"],
    "zero-trace-id": ["traceparent: 00-" + "0" * 32 + "-b7ad6b7169203331-01"],
    "version-ff": ["traceparent: ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"],
    "too-long-00": [f"traceparent: {GOOD_PARENT}-extra"],
    "huge": ["traceparent: " + "a" * 20000],
    "twice": [f"traceparent: {GOOD_PARENT}", f"traceparent: {GOOD_PARENT}"],
    "not-ascii": ["traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333\xff-01"],
    "state-without-parent": ["tracestate: congo=t61rcWkgMzE"],
}


@pytest.mark.parametrize("headers", BAD_TRACE_HEADERS.values(), ids=list(BAD_TRACE_HEADERS))
async def test_a_malformed_trace_context_is_dropped_and_the_call_runs(
    headers: list[str],
) -> None:
    port, seen = free_port(), []
    async with serving(Gauge(), f"http://127.0.0.1:{port}", QUEUE) as worker:
        taken = worker.observer.taken

        def spy(delivery):  # type: ignore[no-untyped-def]
            seen.append((delivery.sent, delivery.trace))
            return taken(delivery)

        worker.observer.taken = spy  # type: ignore[method-assign]
        data = request(rpc("add", [1, 2]), *headers, "x-mm-sent: yesterday")
        [(status, body)] = await send(port, data)
        assert (status, orjson.loads(body)["result"]) == (200, 3)
        assert seen == [(None, None)]  # neither an unreadable send time nor the trace
        # A good one, with a tracestate of CR/LF-free printable text, is kept as sent.
        good = request(rpc("add", [1, 2]), f"traceparent: {GOOD_PARENT}", "tracestate: a=1")
        [(status, _)] = await send(port, good)
        assert status == 200
        assert seen[1][1] == {"traceparent": GOOD_PARENT, "tracestate": "a=1"}
