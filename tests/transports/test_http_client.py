"""The HTTP client against servers that answer unusually: interim responses, huge replies."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from micromessaging import AsyncClient, CallTimeout, Client, RemoteError, TransportError

REPLY = b'{"jsonrpc":"2.0","result":6.1,"id":"%s"}'


@contextlib.asynccontextmanager
async def raw_server(answer) -> AsyncIterator[int]:
    """A TCP server that reads one request per connection and writes `answer(request_id)`."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            body = await reader.readexactly(length)
            id_ = body.split(b'"id":"')[1].split(b'"')[0]
            writer.write(answer(id_))
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def response(status: bytes, body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %s\r\n%scontent-length: %d\r\n\r\n%s" % (status, extra, len(body), body)


async def test_interim_responses_are_not_the_answer() -> None:
    def answer(id_: bytes) -> bytes:
        early = b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n"
        proceed = b"HTTP/1.1 100 Continue\r\n\r\n"
        return early + proceed + response(b"200 OK", REPLY % id_)

    async with raw_server(answer) as port, AsyncClient(f"http://127.0.0.1:{port}", "calc") as c:
        assert await c.add(1, 5.1) == 6.1


async def test_a_reply_over_the_size_limit_fails_the_call_clearly() -> None:
    def answer(id_: bytes) -> bytes:
        return response(b"200 OK", b'{"pad":"' + b"x" * 5000 + b'"}')

    async with raw_server(answer) as port:
        url = f"http://127.0.0.1:{port}?max_reply_size=1000"
        async with AsyncClient(url, "calc", timeout=5) as client:
            with pytest.raises(TransportError, match="max_reply_size"):
                await client.add(1, 5.1)


async def test_endless_response_headers_fail_the_call_clearly() -> None:
    def answer(id_: bytes) -> bytes:
        return response(b"200 OK", REPLY % id_, b"x-pad: " + b"y" * 100_000 + b"\r\n")

    async with raw_server(answer) as port, AsyncClient(f"http://127.0.0.1:{port}", "calc") as c:
        with pytest.raises(TransportError, match="headers"):
            await c.add(1, 5.1)


async def test_a_worker_out_of_time_is_a_call_timeout_like_our_own_timer() -> None:
    # An HTTP worker (or a gateway) answers 504 with a deadline error when the call's deadline
    # passes on its side: the caller sees the CallTimeout its own timer would have raised, and
    # never which of the two noticed first.
    def answer(id_: bytes) -> bytes:
        body = b'{"jsonrpc":"2.0","error":{"code":-32001,"message":"Deadline exceeded"},"id":null}'
        return response(b"504 Gateway Timeout", body)

    def blocking_call(url: str) -> None:
        with Client(url, "calc", timeout=5) as blocking, pytest.raises(CallTimeout):
            blocking.add(1, 5.1)

    async with raw_server(answer) as port:
        url = f"http://127.0.0.1:{port}"
        async with AsyncClient(url, "calc", timeout=5) as client:
            with pytest.raises(CallTimeout):
                await client.add(1, 5.1)
        await asyncio.to_thread(blocking_call, url)


async def test_a_deadline_error_in_a_200_reply_stays_the_services_answer() -> None:
    # Only the transport's 504 means the call ran out of time; a service may answer -32001.
    def answer(id_: bytes) -> bytes:
        error = b'{"jsonrpc":"2.0","error":{"code":-32001,"message":"mine"},"id":"%s"}' % id_
        return response(b"200 OK", error)

    async with raw_server(answer) as port, AsyncClient(f"http://127.0.0.1:{port}", "calc") as c:
        with pytest.raises(RemoteError, match="mine"):
            await c.add(1, 5.1)
