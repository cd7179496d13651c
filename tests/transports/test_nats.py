"""nats:// joins the transport contract, in core mode and in JetStream mode; NATS specifics.

These talk to the session's NATS server with JetStream (the `nats_url` fixture: the shared
one, or a node of the session's own).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import urlsplit

import nats
import nats.errors
import nats.js.errors
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from micromessaging import (
    AsyncClient,
    CallTimeout,
    ConfigurationError,
    ErrorCode,
    NoWorkers,
    RemoteError,
    TransportError,
    Worker,
)
from micromessaging._loop import run
from micromessaging.transports import nats as nats_transport
from micromessaging.transports import worker_transport
from micromessaging.transports.admin import AdminTransport
from micromessaging.transports.base import WorkerOptions
from micromessaging.transports.nats import compat, presence
from micromessaging.transports.nats.wire import (
    DEAD_LETTER_PREFIX,
    DEADLINE,
    DELIVERY_COUNT,
    REASON,
    REPLY_TO,
    SENT,
    check_queue,
    dead_letter_stream_name,
    encoded_size,
    header_block,
    parse_url,
    read_plain_headers,
    request_headers,
    stream_name,
)
from tests.brokers import NatsNode, free_port, self_signed_certificate

from .admin_contract import AdminContract, wait_until
from .contract import Probe, TransportContract, eventually


def with_options(url: str, **options: object) -> str:
    """`url` with query options added."""
    query = "&".join(f"{key}={value}" for key, value in options.items())
    return f"{url}{'&' if '?' in url else '?'}{query}"


async def raw_connection(url: str) -> nats.NATS:
    """A plain nats-py connection: no micromessaging code on this side."""
    parts = urlsplit(url)
    return await nats.connect(f"nats://{parts.netloc}")


async def delete_streams(url: str, queue: str) -> None:
    """Remove the JetStream streams a queue's traffic created."""
    nc = await raw_connection(url)
    try:
        js = nc.jetstream()
        for name in (stream_name(queue), dead_letter_stream_name(queue)):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(name)
    finally:
        await nc.close()


class Overlap:
    """A service that records how many of its calls ran at once."""

    def __init__(self) -> None:
        self.running = 0
        self.most = 0
        self.calls = 0

    async def hold(self, seconds: float, tag: object = None) -> object:
        self.calls += 1
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.running -= 1
        return tag

    def big(self, size: int) -> str:
        return "x" * size

    def add(self, a: float, b: float) -> float:
        return a + b


class TestNatsContract(TransportContract):
    """Core NATS: request/reply with a queue group."""

    taking_task = "Client._read_loop"  # nats-py's reading task: our parser hands it over

    @pytest.fixture
    def broker_url(self, nats_url: str) -> str:
        return nats_url

    @pytest.fixture(autouse=True)
    async def dead_letter_spy(self, queue: str, nats_url: str) -> AsyncIterator[list[bytes]]:
        # Core NATS keeps nothing: dead letters are seen only by who listens when they pass.
        nc = self._spy = await raw_connection(nats_url)
        self._dead: list[bytes] = []
        sub = await nc.subscribe(DEAD_LETTER_PREFIX + queue, cb=self._keep_dead)
        await compat.flush_in_order(nc)
        yield self._dead
        await sub.unsubscribe()
        await nc.close()
        await delete_streams(nats_url, queue)  # core workers keep dead letters there too

    async def _keep_dead(self, msg: nats.aio.msg.Msg) -> None:
        self._dead.append(msg.data)

    async def inject(
        self, broker_url: str, queue: str, body: bytes, delivery_count: int = 1, wait: float = 5
    ) -> bytes | None:
        nc = await raw_connection(broker_url)
        try:
            headers = {DELIVERY_COUNT: str(delivery_count)} if delivery_count > 1 else None
            msg = await nc.request(queue, body, timeout=wait, headers=headers)
            return msg.data
        except nats.errors.TimeoutError:
            return None
        finally:
            await nc.close()

    async def dead_letters(self, broker_url: str, queue: str) -> list[bytes]:
        # Published before the reply that the test saw: here once the spy's connection
        # has caught up with everything up to now.
        await self._spy.flush()
        return list(self._dead)

    expired_reach_the_worker = False  # nothing holds it: the caller stops sending it

    def unreachable_url(self, broker_url: str) -> str:
        return f"nats://127.0.0.1:{free_port()}"

    async def wait_queued(
        self, broker_url: str, queue: str, client: AsyncClient, count: int
    ) -> None:
        # Core NATS holds nothing: with no responder, the client sends its requests again
        # and again until a worker subscribes.
        connection = client._transport._nc  # type: ignore[union-attr]
        sent = connection.stats["out_msgs"]
        await eventually(lambda: connection.stats["out_msgs"] >= sent + 2 * count)

    async def leftovers(self, broker_url: str, queue: str) -> list[str]:
        # The server holds no messages for core subjects; what could be left is interest: a
        # worker still subscribed would answer this, where nobody must.
        nc = await raw_connection(broker_url)
        try:
            await nc.request(queue, b"{}", timeout=1)
            return [f"a subscriber still answers on {queue}"]
        except nats.errors.NoRespondersError:
            return []
        finally:
            await nc.close()

    async def test_too_large_message_is_refused(self, worker: Worker, client: AsyncClient) -> None:
        # The worker would answer -32002, but NATS can't carry 2 MB to it (max_payload 1 MB):
        # the client refuses at once, rather than letting the server drop its connection.
        started = time.monotonic()
        with pytest.raises(TransportError, match="max_payload"):
            await client.echo("x" * (2 * 1024 * 1024))
        assert time.monotonic() - started < 1
        assert await client.add(1, 1) == 2


class TestNatsJetStreamContract(TestNatsContract):
    """JetStream: a work-queue stream per queue, acknowledged after the reply."""

    taking_task = None

    @pytest.fixture
    def broker_url(self, nats_url: str) -> str:
        return with_options(nats_url, jetstream=1, ack_wait=5)

    @pytest.fixture(autouse=True)
    async def dead_letter_spy(self, queue: str, nats_url: str) -> AsyncIterator[list[bytes]]:
        yield []
        await delete_streams(nats_url, queue)

    async def inject(
        self, broker_url: str, queue: str, body: bytes, delivery_count: int = 1, wait: float = 5
    ) -> bytes | None:
        if delivery_count > 1:
            pytest.skip("JetStream counts deliveries itself (num_delivered): see test_nats.py")
        nc = await raw_connection(broker_url)
        try:
            inbox = nc.new_inbox()
            sub = await nc.subscribe(inbox)
            await nc.jetstream().publish(queue, body, headers={REPLY_TO: inbox})
            msg = await sub.next_msg(timeout=wait)
            return msg.data
        except nats.errors.TimeoutError:
            return None
        finally:
            await nc.close()

    async def dead_letters(self, broker_url: str, queue: str) -> list[bytes]:
        nc = await raw_connection(broker_url)
        try:
            js = nc.jetstream()
            state = (await js.stream_info(dead_letter_stream_name(queue))).state
            return [
                (await js.get_msg(dead_letter_stream_name(queue), seq)).data or b""
                for seq in range(state.first_seq, state.last_seq + 1)
            ]
        finally:
            await nc.close()

    expired_reach_the_worker = False  # the caller deletes what it gave up on; workers skip the rest

    async def wait_queued(
        self, broker_url: str, queue: str, client: AsyncClient, count: int
    ) -> None:
        nc = await raw_connection(broker_url)
        try:
            js = nc.jetstream()
            deadline = time.monotonic() + 10
            while True:
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    if (await js.stream_info(stream_name(queue))).state.messages >= count:
                        return
                assert time.monotonic() < deadline, "the requests never reached the stream"
                await asyncio.sleep(0.02)
        finally:
            await nc.close()

    async def leftovers(self, broker_url: str, queue: str) -> list[str]:
        # The stream and its consumer are the queue itself; requests left in it are not.
        nc = await raw_connection(broker_url)
        try:
            js = nc.jetstream()
            left = []
            try:
                state = (await js.stream_info(stream_name(queue))).state
            except nats.js.errors.NotFoundError:
                return []  # never made: nothing at all was left
            if state.messages:
                left.append(f"{state.messages} requests in {stream_name(queue)}")
            consumer = await js.consumer_info(stream_name(queue), "mm-workers")
            if consumer.num_ack_pending:
                left.append(f"{consumer.num_ack_pending} unacknowledged requests")
            return left
        finally:
            await nc.close()

    async def test_delivery_limit_dead_letters_and_answers(self) -> None:
        pytest.skip(
            "JetStream's delivery count can't be forged by a test; "
            "test_requeued_too_often_is_dead_lettered drives the real redelivery path"
        )


class TestNatsAdmin(AdminContract):
    """Core NATS: live workers answer mm.status.<queue>; dead letters kept in JetStream."""

    @pytest.fixture
    def broker_url(self, nats_url: str) -> str:
        return nats_url

    async def poison(self, broker_url: str, queue: str, body: bytes) -> None:
        # The real path: a worker dead-letters what was delivered past its limit.
        nc = await raw_connection(broker_url)
        try:
            await nc.publish(queue, body, headers={DELIVERY_COUNT: "5"})
            await compat.flush_in_order(nc)
        finally:
            await nc.close()


class TestNatsJetStreamAdmin(TestNatsAdmin):
    """JetStream: depth and in flight from the stream's consumer, dead letters by seq."""

    @pytest.fixture
    def broker_url(self, nats_url: str) -> str:
        return with_options(nats_url, jetstream=1, ack_wait=5)

    async def poison(self, broker_url: str, queue: str, body: bytes) -> None:
        # JetStream counts deliveries itself and a test can't forge that count (see
        # test_requeued_too_often_is_dead_lettered for the real path): stored as a worker
        # stores a dead letter.
        nc = await raw_connection(broker_url)
        try:
            await nc.jetstream().publish(
                DEAD_LETTER_PREFIX + queue,
                body,
                headers={REASON: "delivered 3 times (limit 2)", DELIVERY_COUNT: "3"},
            )
        finally:
            await nc.close()

    async def test_depth_and_oldest_wait_of_a_stream(
        self, broker_url: str, queue: str, admin: AdminTransport
    ) -> None:
        async with Worker(Probe(), broker_url, queue):
            pass  # seen: calls wait within the window
        async with AsyncClient(broker_url, queue, timeout=5) as client:
            calls = [asyncio.create_task(client.add(i, 1)) for i in range(3)]
            status = await wait_until(lambda: self._depth(admin, queue, 3))
            assert status.oldest_wait is not None and 0 <= status.oldest_wait < 5
            assert status.in_flight == 0 and status.workers == []
            async with Worker(Probe(), broker_url, queue):
                assert await asyncio.gather(*calls) == [1, 2, 3]

    async def _depth(self, admin: AdminTransport, queue: str, depth: int):  # type: ignore[no-untyped-def]
        status = await admin.status(queue)
        return status if status.depth == depth else None


@pytest.fixture(params=["core", "jetstream"])
def url(request: pytest.FixtureRequest, nats_url: str) -> str:
    if request.param == "core":
        return nats_url
    return with_options(nats_url, jetstream=1, ack_wait=5)


@pytest.fixture
async def queue(url: str, nats_url: str) -> AsyncIterator[str]:
    name = f"mm-test-{uuid.uuid4().hex[:12]}"
    yield name
    await delete_streams(nats_url, name)  # core workers keep dead letters in JetStream too


# --- interoperability -------------------------------------------------------------------


async def test_a_plain_nats_request_calls_our_worker(nats_url: str) -> None:
    queue = f"mm-test-{uuid.uuid4().hex[:12]}"
    async with Worker(Probe(), nats_url, queue):
        nc = await raw_connection(nats_url)
        try:
            body = b'{"jsonrpc": "2.0", "id": "Ke43jnGeQsk2z9GYvFmrax", "method": "add", '
            body += b'"params": [1, 5.1]}'
            msg = await nc.request(queue, body, timeout=5)
            assert orjson.loads(msg.data) == {
                "jsonrpc": "2.0",
                "result": 6.1,
                "id": "Ke43jnGeQsk2z9GYvFmrax",
            }
            notification = b'{"jsonrpc": "2.0", "method": "record", "params": ["raw"]}'
            await nc.publish(queue, notification)
            calls = [nc.request(queue, orjson.dumps(_add(i)), timeout=5) for i in range(50)]
            replies = [orjson.loads(m.data) for m in await asyncio.gather(*calls)]
            assert [r["result"] for r in replies] == [i + 1 for i in range(50)]
        finally:
            await nc.close()


def _add(i: int) -> dict[str, object]:
    return {"jsonrpc": "2.0", "id": i, "method": "add", "params": [i, 1]}


async def test_our_client_calls_a_plain_nats_responder(nats_url: str) -> None:
    queue = f"mm-test-{uuid.uuid4().hex[:12]}"
    nc = await raw_connection(nats_url)

    async def respond(msg: nats.aio.msg.Msg) -> None:
        request = orjson.loads(msg.data)
        result = sum(request["params"])
        await msg.respond(orjson.dumps({"jsonrpc": "2.0", "result": result, "id": request["id"]}))

    await nc.subscribe(queue, queue="responders", cb=respond)
    await compat.flush_in_order(nc)
    try:
        async with AsyncClient(nats_url, queue, timeout=5) as client:
            assert await client.add(1, 5.1) == 6.1
    finally:
        await nc.close()


async def test_one_reply_subscription_for_many_calls(url: str, queue: str) -> None:
    async with (
        Worker(Probe(), url, queue, concurrency=64),
        AsyncClient(url, queue, timeout=10) as client,
    ):
        await client.add(0, 0)
        connection = client._transport._nc  # type: ignore[union-attr]
        before = set(connection._subs)
        assert await asyncio.gather(*(client.add(i, 1) for i in range(500))) == [
            i + 1 for i in range(500)
        ]
        assert set(connection._subs) == before  # no subscription per call
        # One wildcard inbox (plus, in JetStream mode, nats-py's own for the stream's acks).
        assert len(before) == (2 if "jetstream" in url else 1)


async def test_our_headers_travel_with_the_request(url: str, queue: str, nats_url: str) -> None:
    # No worker: in JetStream mode the request waits in the stream (no-worker rule off).
    async with AsyncClient(with_options(url, worker_window=0), queue, timeout=2) as client:
        if "jetstream" in url:
            pending = asyncio.create_task(client.add(1, 2))
            nc = await raw_connection(nats_url)
            try:  # no worker: the request waits in the stream
                # Stream info until it holds the request, only then MSG.GET: nats-server
                # 2.9.10 dies on a MSG.GET that meets the stream while the client creates it
                # (docs/wire-nats.md, "No worker"); info checks for that.
                deadline = time.monotonic() + 5
                while True:
                    with contextlib.suppress(nats.js.errors.NotFoundError):
                        info = await nc.jetstream().stream_info(stream_name(queue))
                        if info.state.messages:
                            break
                    assert time.monotonic() < deadline, "the request never reached the stream"
                    await asyncio.sleep(0.02)
                msg = await nc.jetstream().get_last_msg(stream_name(queue), queue)
            finally:
                await nc.close()
            headers = msg.headers or {}
            assert headers[REPLY_TO].startswith("_INBOX.")
        else:
            nc = await raw_connection(nats_url)
            seen: asyncio.Future[nats.aio.msg.Msg] = asyncio.get_running_loop().create_future()
            await nc.subscribe(queue, cb=functools.partial(_set, seen))
            await compat.flush_in_order(nc)
            pending = asyncio.create_task(client.add(1, 2))
            msg = await asyncio.wait_for(seen, 2)
            await nc.close()
            headers = msg.headers or {}
            assert msg.reply.startswith("_INBOX.")
        assert abs(int(headers[DEADLINE]) / 1000 - (time.time() + 2)) < 1
        assert abs(int(headers[SENT]) / 1000 - time.time()) < 1
        assert orjson.loads(msg.data)["method"] == "add"  # the body is the JSON-RPC, unchanged
        with pytest.raises(CallTimeout):
            await pending


async def _set(future: asyncio.Future[nats.aio.msg.Msg], msg: nats.aio.msg.Msg) -> None:
    if not future.done():
        future.set_result(msg)


# --- flow control and redelivery --------------------------------------------------------


async def test_worker_holds_no_more_than_its_concurrency(url: str, queue: str) -> None:
    service = Overlap()
    tight = with_options(url, backlog=0) if "jetstream" not in url else url
    async with (
        Worker(service, tight, queue, concurrency=2),
        AsyncClient(url, queue, timeout=15) as client,
    ):
        tags = await asyncio.gather(*(client.hold(0.1, i) for i in range(12)))
    assert tags == list(range(12))
    assert service.most == 2
    assert service.calls == 12  # bounced requests were sent again, and ran once each


async def test_stopping_worker_hands_its_backlog_to_another(queue: str, url: str) -> None:
    first, second = Overlap(), Overlap()
    async with AsyncClient(url, queue, timeout=15) as client:
        worker = Worker(first, url, queue, concurrency=1)
        running = asyncio.create_task(worker.run())
        await worker.started()
        calls = [asyncio.create_task(client.hold(0.3, i)) for i in range(6)]
        await eventually(lambda: first.calls == 1)
        async with Worker(second, url, queue, concurrency=6):
            worker.stop()
            assert await asyncio.gather(*calls) == list(range(6))
            await asyncio.wait_for(running, 5)
    assert first.calls + second.calls == 6
    assert second.calls >= 4


async def test_requeued_too_often_is_dead_lettered(url: str, queue: str, nats_url: str) -> None:
    # A worker stops while a call runs past its grace: the request goes back (core: the
    # caller sends it again, count + 1; JetStream: NAK, redelivered). The next worker allows
    # one delivery only, so it dead-letters the request and answers the caller with an error.
    spy = await raw_connection(nats_url)
    dead: list[bytes] = []
    await spy.subscribe(DEAD_LETTER_PREFIX + queue, cb=functools.partial(_keep, dead))
    await compat.flush_in_order(spy)
    try:
        first, second = Overlap(), Overlap()
        async with AsyncClient(url, queue, timeout=15) as client:
            worker = Worker(first, url, queue, grace=0.2)
            running = asyncio.create_task(worker.run())
            await worker.started()
            call = asyncio.create_task(client.hold(5, "poison"))
            await eventually(lambda: first.calls == 1)
            worker.stop()
            await asyncio.wait_for(running, 5)
            async with Worker(second, url, queue, max_deliveries=1) as other:
                with pytest.raises(RemoteError) as caught:
                    await asyncio.wait_for(call, 10)
                assert caught.value.code == ErrorCode.DELIVERY_LIMIT
                assert other.stats.dead_lettered == 1
                assert await client.add(1, 1) == 2
        assert second.calls == 0
        await eventually(lambda: len(dead) == 1)
        assert orjson.loads(dead[0])["params"] == [5, "poison"]
    finally:
        await spy.close()


async def _keep(into: list[bytes], msg: nats.aio.msg.Msg) -> None:
    into.append(msg.data)


async def test_long_call_is_not_redelivered_while_its_worker_lives(nats_url: str) -> None:
    url = with_options(nats_url, jetstream=1, ack_wait=1)
    queue = f"mm-test-{uuid.uuid4().hex[:12]}"
    service = Overlap()
    try:
        async with (
            Worker(service, url, queue),
            Worker(service, url, queue),
            AsyncClient(url, queue, timeout=10) as client,
        ):
            assert await client.hold(2.5, "once") == "once"
            await asyncio.sleep(1.5)
        assert service.calls == 1  # in-progress signals kept the request from going elsewhere
    finally:
        await delete_streams(nats_url, queue)


async def test_stored_request_past_its_deadline_is_skipped(nats_url: str) -> None:
    url = with_options(nats_url, jetstream=1)
    queue = f"mm-test-{uuid.uuid4().hex[:12]}"
    service = Overlap()
    try:
        async with AsyncClient(with_options(url, worker_window=0), queue, timeout=0.3) as client:
            with pytest.raises(CallTimeout):
                await client.hold(0, "too late")  # stored: no worker yet
        # Taken back by its caller as it gave up (or skipped by a worker): never run.
        async with Worker(service, url, queue), AsyncClient(url, queue) as client:
            assert await client.add(1, 1) == 2
        assert service.calls == 0
        nc = await raw_connection(nats_url)
        state = (await nc.jetstream().stream_info(stream_name(queue))).state
        await nc.close()
        assert state.messages == 0  # acknowledged, not left for the next worker
    finally:
        await delete_streams(nats_url, queue)


# --- size -------------------------------------------------------------------------------


async def test_reply_too_large_for_nats_fails_fast(url: str, queue: str) -> None:
    async with (
        Worker(Overlap(), url, queue, max_message_size=4 * 1024 * 1024),
        AsyncClient(url, queue, timeout=10) as client,
    ):
        started = time.monotonic()
        with pytest.raises(TransportError, match="max_payload"):
            await client.big(1_100_000)
        assert time.monotonic() - started < 2
        assert len(await client.big(900_000)) == 900_000
        assert await client.add(1, 1) == 2


# --- connections and URLs ---------------------------------------------------------------


async def test_tls_with_a_self_signed_certificate(
    tmp_path: Path, make_nats_node: Callable[..., NatsNode]
) -> None:
    cert, key = await asyncio.to_thread(self_signed_certificate, tmp_path)
    server = make_nats_node("--tls", "--tlscert", str(cert), "--tlskey", str(key))
    url = f"tls://127.0.0.1:{server.port}?tls_insecure=1"
    queue = f"mm-test-{uuid.uuid4().hex[:12]}"
    async with Worker(Probe(), url, queue), AsyncClient(url, queue, timeout=5) as client:
        assert await client.add(1, 5.1) == 6.1
    started = time.monotonic()
    with pytest.raises(TransportError, match="can't connect") as caught:
        async with AsyncClient(f"tls://127.0.0.1:{server.port}?connect_timeout=0.5", queue):
            pass  # the certificate is self-signed: refused unless tls_insecure=1
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)
    assert time.monotonic() - started < 3  # bounded by 3 x connect_timeout


def test_url_options() -> None:
    settings = parse_url("nats://u:p@a:4222,b:4223?jetstream=yes&ack_wait=2.5&backlog=7")
    assert settings.servers == ("nats://u:p@a:4222", "nats://u:p@b:4223")
    assert settings.jetstream and settings.ack_wait == 2.5 and settings.backlog == 7
    assert parse_url("nats://").servers == ("nats://127.0.0.1:4222",)
    assert parse_url("nats://h").jetstream is False
    tls = parse_url("tls://h:4222?tls_insecure=1").tls
    assert tls is not None and tls.check_hostname is False
    assert parse_url("tls://h:4222").tls is not None
    for bad in (
        "nats://h?nope=1",
        "nats://h?jetstream=maybe",
        "nats://h?ack_wait=0",
        "nats://h?backlog=-1",
        "nats://h?inbox_prefix=a*b",
    ):
        with pytest.raises(ValueError):  # noqa: PT011 - ConfigurationError is a ValueError
            parse_url(bad)


async def test_our_publish_writes_the_command_nats_py_writes() -> None:
    # compat.publish_checked writes requests and replies itself: byte for byte what
    # nats-py's publish would buffer (its empty reply field aside), headers included.
    ours, theirs = compat.Client(), compat.Client()  # not connected: publishes are buffered
    ours._max_pending_size = theirs._max_pending_size = 8 << 20
    parent = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    headers = request_headers(1796000000.0, {"traceparent": parent, "tracestate": "k=v"}, 1.5)
    evil = request_headers(None, {"traceparent": parent + "\r\nPUB evil 0", "tracestate": "x"})
    assert set(evil) == {SENT}  # what can't be a trace context is never written
    for reply, sent in (("_INBOX.x.1", headers), ("_INBOX.x.2", None), ("", headers)):
        block = header_block(sent) if sent else None
        await compat.publish_checked(ours, "calc", b'{"id":1}', reply, block)
        await theirs.publish("calc", b'{"id":1}', reply=reply, headers=sent)
    written = [command.replace(b"calc  ", b"calc ") for command in theirs._pending]
    assert ours._pending == written
    assert read_plain_headers(header_block(headers)) == headers
    assert encoded_size(b"12345", headers) == 5 + len(header_block(headers))
    assert ours.stats["out_msgs"] == 3 and ours.stats["out_bytes"] == 3 * len(b'{"id":1}')
    with pytest.raises(nats.errors.MaxPayloadError):
        await compat.publish_checked(ours, "calc", b"x" * (ours._max_payload + 1))
    ours._status = ours.CLOSED  # as close() leaves it (it would flush to no server here)
    with pytest.raises(nats.errors.ConnectionClosedError):
        await compat.publish_checked(ours, "calc", b"{}")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_lone_publish_is_written_at_once_on_either_loop(nats_url: str, loop: str) -> None:
    # A worker's only reply (a client's only request) goes to the socket in the turn it is
    # published, where nats-py's flusher would write it a turn later; uvloop hides whether
    # anything else is ready to run, so there only the caller's word (`alone`) allows it.
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    subject = f"lone-{uuid.uuid4().hex[:8]}"

    async def main() -> list[bytes]:
        listener, ours = await raw_connection(nats_url), compat.Client()
        await ours.connect(nats_url)
        got: list[bytes] = []
        heard = asyncio.Event()

        async def keep(msg: nats.aio.msg.Msg) -> None:
            got.append(msg.data)
            heard.set()

        try:
            await listener.subscribe(subject, cb=keep)
            await compat.flush_in_order(listener)
            await compat.publish_checked(ours, subject, b"alone", alone=True)
            assert ours._pending == []  # written: nothing left for the flusher
            await compat.publish_checked(ours, subject, b"with others")
            # asyncio's loop shows that nothing else is ready (written too); uvloop does not.
            assert bool(ours._pending) is (loop == "uvloop")
            async with asyncio.timeout(10):
                while len(got) < 2:
                    heard.clear()
                    await heard.wait()
            return got
        finally:
            await ours.close()
            await listener.close()

    assert run(main(), loop) == [b"alone", b"with others"]


def test_queue_names_must_be_plain_subjects() -> None:
    assert check_queue("billing.invoices") == "billing.invoices"
    for bad in ("", "a.*", "a.>", "a b", "a..b"):
        with pytest.raises(ValueError):  # noqa: PT011
            check_queue(bad)
    assert stream_name("billing.invoices") == "MM_billing_invoices"


def test_worker_mode_follows_the_url() -> None:
    options = WorkerOptions(queue="calc")
    core = worker_transport("nats://h", options)
    durable = worker_transport("nats://h?jetstream=1", options)
    assert isinstance(core, nats_transport.NatsWorkerTransport)
    assert isinstance(durable, nats_transport.NatsJetStreamWorkerTransport)
    assert "at most once" in core.describe()
    assert "redelivery" in durable.describe()


# --- no worker ----------------------------------------------------------------------------


class CoreOnlyNode(NatsNode):
    """A nats-server without JetStream: nobody keeps worker records there."""

    def command(self) -> list[str]:
        return [part for part in super().command() if part != "-js"][:5]


async def test_core_nats_without_jetstream_tells_no_worker_by_what_it_saw(
    tmp_path: Path,
) -> None:
    # No records to ask: "no responders" and no answer seen by this client is NoWorkers;
    # after an answer, a worker restarting within the window makes calls wait.
    queue = f"mm-test-{uuid.uuid4().hex[:12]}"
    with CoreOnlyNode(base=tmp_path) as node:
        async with AsyncClient(node.url, queue, timeout=10) as client:
            started = time.monotonic()
            with pytest.raises(NoWorkers, match="without JetStream"):
                await client.add(1, 2)
            assert time.monotonic() - started < 1
            async with Worker(Probe(), node.url, queue):
                assert await client.add(1, 2) == 3
            call = asyncio.create_task(client.add(2, 3))
            await asyncio.sleep(0.3)
            assert not call.done()  # waits for the next worker
            async with Worker(Probe(), node.url, queue):
                assert await call == 5


async def test_no_worker_names_the_queue_and_creates_no_stream(nats_url: str) -> None:
    queue = f"mm-test-{uuid.uuid4().hex[:12]}"
    url = with_options(nats_url, jetstream=1, worker_window=5)
    async with AsyncClient(url, queue) as client:
        with pytest.raises(NoWorkers, match=f"{queue}.*last 5 s"):
            await client.add(1, 2)
    nc = await raw_connection(nats_url)
    try:
        with pytest.raises(nats.js.errors.NotFoundError):
            await nc.jetstream().stream_info(stream_name(queue))
    finally:
        await nc.close()


async def test_a_flush_in_order_reaches_the_server_after_what_waited(nats_url: str) -> None:
    # nats-py's flush writes its PING at once, ahead of a SUB still in its buffer, so its
    # PONG did not say the server had the subscription: a message published right after
    # by another connection was sometimes dropped. A proxy records what the client writes.
    server = urlsplit(nats_url)
    written = bytearray()

    async def pipe(source: asyncio.StreamReader, to: asyncio.StreamWriter, keep: bool) -> None:
        while data := await source.read(65536):
            if keep:
                written.extend(data)
            to.write(data)
            await to.drain()
        to.close()

    relayed = asyncio.Event()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream = await asyncio.open_connection(server.hostname, server.port)
        try:
            await asyncio.gather(
                pipe(reader, upstream, True), pipe(upstream_reader, writer, False),
                return_exceptions=True,
            )  # fmt: skip
        finally:
            for each in (upstream, writer):
                each.close()
                with contextlib.suppress(OSError):
                    await each.wait_closed()
            relayed.set()

    proxy = await asyncio.start_server(relay, "127.0.0.1", 0)
    port = proxy.sockets[0].getsockname()[1]
    nc = await raw_connection(f"nats://127.0.0.1:{port}")
    try:
        written.clear()  # the handshake
        await nc.subscribe(f"order-{uuid.uuid4().hex[:8]}")
        await compat.flush_in_order(nc)
        assert written.startswith(b"SUB "), bytes(written)
        assert written.endswith(b"PING\r\n"), bytes(written)
    finally:
        await nc.close()
        await asyncio.wait_for(relayed.wait(), 10)  # both ends closed
        proxy.close()
        await proxy.wait_closed()


async def test_a_flush_in_order_gives_up_when_the_flusher_never_answers() -> None:
    # nats-py's flusher stops on a lost connection without answering what it was given:
    # waiting for it is bounded like the round trip after it.
    class StuckFlusher:
        async def _flush_pending(self, force_flush: bool = False) -> None:
            await asyncio.Event().wait()

        async def flush(self, timeout: int = 10) -> None:
            raise AssertionError("no round trip before the buffer is out")

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await compat.flush_in_order(StuckFlusher(), timeout=1)  # type: ignore[arg-type]
    assert time.monotonic() - started < 5


async def test_a_consumer_answer_without_the_consumer_is_a_passing_doubt(tmp_path: Path) -> None:
    # nats-server 2.9.10, asked for a look's consumer while MM_WORKERS was being deleted and
    # made again, once answered a create with no error and no consumer ("config": null, no
    # name); nats-py then raised TypeError. Such an answer is the server in flux: the look
    # fails as a NATS error, and a caller's check doesn't refuse on it.
    with CoreOnlyNode(base=tmp_path) as node:
        api = await raw_connection(node.url)
        garbled = orjson.dumps(
            {
                "type": "io.nats.jetstream.api.v1.consumer_create_response",
                "delivered": None,
                "ack_floor": None,
                "config": None,
                "num_pending": 0,
            }
        )

        async def answer(msg: nats.aio.msg.Msg) -> None:
            await api.publish(msg.reply, garbled)

        await api.subscribe("$JS.API.CONSUMER.>", cb=answer)
        await compat.flush_in_order(api)
        nc = await raw_connection(node.url)
        try:
            with pytest.raises(nats.js.errors.Error, match="no consumer"):
                await presence.last_seen(nc.jetstream(), "q")
            look = presence.Presence(nc.jetstream(), window=5, timeout=2)
            assert await look.served("q") is True  # in doubt: the call waits, not NoWorkers
        finally:
            await nc.close()
            await api.close()


async def test_records_are_read_safely_while_their_stream_is_made(nats_node: NatsNode) -> None:
    # nats-server 2.9.10 died (nil store) on a MSG.GET meeting MM_WORKERS while it was being
    # created; looks now go through a consumer. Clients look while a "worker" makes the stream
    # again and again; the server lives, the newest record is found, no consumer stays.
    lookers = [await raw_connection(nats_node.url) for _ in range(3)]
    maker = await raw_connection(nats_node.url)
    stop = asyncio.Event()

    async def look(nc: nats.NATS) -> None:
        while not stop.is_set():
            with contextlib.suppress(nats.errors.Error, TimeoutError):  # the stream may vanish
                await presence.last_seen(nc.jetstream(), "q")

    looking = [asyncio.create_task(look(nc)) for nc in lookers for _ in range(3)]
    js = maker.jetstream()
    try:
        for _ in range(15):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(presence.STREAM)
            await presence.ensure_stream(js)
            await js.publish("mm.workers.q.old", orjson.dumps({"last_seen": time.time() - 60}))
            await js.publish("mm.workers.q.new", orjson.dumps({"last_seen": time.time()}))
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*looking)
        assert nats_node.running
        seen = await presence.last_seen(js, "q")
        assert seen is not None and time.time() - seen < 5  # the newest of both records
        assert await presence.last_seen(js, "nobody") is None
        deadline = time.monotonic() + 5
        while (await js.stream_info(presence.STREAM)).state.consumer_count:
            assert time.monotonic() < deadline, "the looks' consumers were not deleted"
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        for nc in (*lookers, maker):
            await nc.close()


def test_worker_window_option() -> None:
    assert parse_url("nats://h").worker_window == 30
    assert parse_url("nats://h?worker_window=0").worker_window == 0
    with pytest.raises(ConfigurationError, match="worker_window"):
        parse_url("nats://h?worker_window=-1")


def test_several_servers_and_replicas() -> None:
    # nats-py takes a list of server URLs; credentials given once apply to each.
    settings = parse_url("nats://u:p@h1:4222,h2:4223?jetstream=1&replicas=3")
    assert settings.servers == ("nats://u:p@h1:4222", "nats://u:p@h2:4223")
    assert settings.replicas == 3
    assert parse_url("nats://h").replicas == 1
    with pytest.raises(ConfigurationError, match="replicas"):
        parse_url("nats://h?replicas=0")


# --- reading the protocol: our parser against nats-py's ------------------------------------


class Recorder:
    """Stands for a connection: what a parser hands it, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[object, ...]] = []

    async def _process_msg(self, sid, subject, reply, data, headers) -> None:  # type: ignore[no-untyped-def]
        self.seen.append(("msg", sid, bytes(subject), bytes(reply), bytes(data), headers))

    async def _process_ping(self) -> None:
        self.seen.append(("ping",))

    async def _process_pong(self) -> None:
        self.seen.append(("pong",))

    async def _process_info(self, info: object) -> None:
        self.seen.append(("info", info))

    async def _process_err(self, err: str) -> None:
        self.seen.append(("err", err))


def _server_line(kind: str, n: int) -> bytes:
    body = b'{"jsonrpc":"2.0","result":%d,"id":%d}' % (n, n) * (n % 3)  # empty now and then
    head = b"NATS/1.0\r\nMm-Sent: %d\r\n\r\n" % n
    reply = b"_INBOX.r%d " % n if n % 2 else b""
    return {
        "msg": b"MSG q.%d %d %s%d\r\n%s\r\n" % (n, n % 7, reply, len(body), body),
        "hmsg": b"HMSG q %d %s%d %d\r\n%s%s\r\n"
        % (n, reply, len(head), len(head) + len(body), head, body),
        "status": b"HMSG _INBOX.x 3 16 16\r\nNATS/1.0 503\r\n\r\n\r\n",
        "ping": b"PING\r\n",
        "pong": b"PONG\r\n",
        "ok": b"+OK\r\n",
        "info": b'INFO {"server_id":"s%d","max_payload":1048576}\r\n' % n,
        "crlf in body": b"MSG q 1 4\r\n\r\n\r\n\r\n",
        "err": b"-ERR 'Permissions Violation for Publish to q'\r\n",
    }[kind]  # fmt: skip


@given(
    st.lists(
        st.sampled_from(
            ["msg", "hmsg", "status", "ping", "pong", "ok", "info", "crlf in body", "err"]
        ),
        max_size=12,
    ),
    st.lists(st.integers(min_value=1, max_value=200), max_size=12),
)
@settings(max_examples=300, deadline=None)
def test_our_parser_hands_over_what_nats_py_parser_does_however_the_reads_are_cut(
    kinds: list[str], cuts: list[int]
) -> None:
    from nats.protocol.parser import Parser

    stream = b"".join(_server_line(kind, n) for n, kind in enumerate(kinds))
    reads, at = [], 0
    for size in cuts:
        reads.append(stream[at : at + size])
        at += size
    reads.append(stream[at:])

    async def read_with(parser_class: type[Parser]) -> list[tuple[object, ...]]:
        recorder = Recorder()
        parser = parser_class(recorder)
        for data in reads:
            await parser.parse(data)
        assert not parser.buf  # everything read was whole
        return recorder.seen

    theirs = asyncio.run(read_with(Parser))
    assert asyncio.run(read_with(compat._Parser)) == theirs
    assert len(theirs) == len([k for k in kinds if k != "ok"])


def test_a_large_message_read_in_pieces_is_gathered_once() -> None:
    # Our parser leaves a payload still on its way to nats-py's, which gathers it in its
    # buffer: reading it again from its control line at each piece would copy it over and
    # over (a megabyte in 64 KiB reads: 16 MB copied).
    from nats.protocol.parser import AWAITING_MSG_PAYLOAD

    body = b"x" * 1_000_000
    stream = b"MSG q 1 _INBOX.a %d\r\n%s\r\nPING\r\n" % (len(body), body)
    recorder = Recorder()
    parser = compat._Parser(recorder)

    async def read() -> None:
        for at in range(0, len(stream), 65536):
            await parser.parse(stream[at : at + 65536])
            if at + 65536 < len(body):
                assert parser.state == AWAITING_MSG_PAYLOAD

    asyncio.run(read())
    assert recorder.seen == [("msg", 1, b"q", b"_INBOX.a", body, None), ("ping",)]


class ReadEndRecorder(Recorder):
    """A connection that notes, with each message, whether the parser said its read ends."""

    last_of_read = False

    async def _process_msg(self, sid, subject, reply, data, headers) -> None:  # type: ignore[no-untyped-def]
        self.seen.append((bytes(data), self.last_of_read))


def test_the_parser_tells_which_message_ends_its_read() -> None:
    # What lets a worker answer a lone request in the reading task: nothing after it in the
    # read (a request with others behind it goes with them, in a task of their own).
    one, two = (b"MSG q 1 _INBOX.a 1\r\n%s\r\n" % n for n in (b"1", b"2"))
    gathered = b"MSG q 1 _INBOX.a 3\r\n333\r\n"
    recorder = ReadEndRecorder()
    parser = compat._Parser(recorder)

    async def read() -> None:
        await parser.parse(one + two)  # two whole messages: the second ends the read
        await parser.parse(one + two[:5])  # the next one is on its way
        await parser.parse(two[5:] + b"PING\r\n")  # the read goes on after it
        await parser.parse(gathered[:-4])  # gathered by nats-py's parser: never "alone"
        await parser.parse(gathered[-4:])

    asyncio.run(read())
    assert recorder.seen == [
        (b"1", False), (b"2", True), (b"1", False), (b"2", False), ("ping",), (b"333", False),
    ]  # fmt: skip
    assert recorder.last_of_read is False
