"""amqp:// joins the transport contract, plus what only RabbitMQ shows.

Integration tests use the session's RabbitMQ (the `amqp_url` fixture: the shared broker, or
the session's own node), never restarted here: the fault tests do that to a node of their
own. Every test uses its own queue names and deletes its queues afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

import aio_pika
import orjson
import pamqp.frame
import pytest
from pamqp.commands import Basic

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
from micromessaging.transports import WorkerOptions
from micromessaging.transports.amqp import AmqpWorkerTransport, client_transport
from micromessaging.transports.amqp.connection import Link
from micromessaging.transports.amqp.frames import encode_ack, encode_nack, encode_publish
from micromessaging.transports.amqp.wire import (
    BROKER_DELIVERY_LIMIT,
    DEAD_REASON,
    DELIVERIES,
    deadline_header,
    deadline_of,
    delivery_count_of,
    expiration_for,
    parse_url,
)
from tests.brokers import free_port, rabbitmqctl_for

from .admin_contract import AdminContract
from .contract import Probe, TransportContract, eventually

# --- helpers shared with the fault and interop tests ----------------------------------------


async def delete_queues(broker: str, *names: str) -> None:
    """Delete queues (and their dead-letter and heartbeat queues), ignoring those that don't
    exist."""
    connection = await aio_pika.connect(broker)
    async with connection:
        channel = await connection.channel()
        for name in names:
            for queue in (name, f"{name}.dead", f"{name}.alive"):
                await channel.queue_delete(queue)


async def queue_state(broker: str, name: str) -> tuple[int, int] | None:
    """(messages ready, consumers) of a queue, or None when it does not exist."""
    connection = await aio_pika.connect(broker)
    async with connection:
        channel = await connection.channel()
        try:
            declared = await channel.declare_queue(name, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return None
        result = declared.declaration_result
        return result.message_count or 0, result.consumer_count or 0


async def drain_queue(broker: str, name: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Take every message from a queue (empty when it does not exist)."""
    connection = await aio_pika.connect(broker)
    taken = []
    async with connection:
        channel = await connection.channel()
        try:
            queue = await channel.declare_queue(name, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return []
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            taken.append(message)
    return taken


async def publish_raw(
    broker: str, queue: str, body: bytes, wait: float | None = 5, **properties
) -> bytes | None:
    """Publish like a foreign client (an exclusive reply queue, like the seed's) and wait
    `wait` seconds for the reply; None when none came."""
    connection = await aio_pika.connect(broker)
    async with connection:
        channel = await connection.channel()
        replies = await channel.declare_queue("", exclusive=True)
        if wait is not None:
            properties.setdefault("reply_to", replies.name)
            properties.setdefault("correlation_id", "c1")
        await channel.default_exchange.publish(aio_pika.Message(body, **properties), queue)
        if wait is None:
            return None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                async with replies.iterator(no_ack=True) as messages:
                    async for message in messages:
                        return message.body
    return None


def waiting(url: str) -> str:
    """`url` with the no-worker rule off: calls wait for a worker never seen (worker_window=0)."""
    return url + ("&" if "?" in url else "?") + "worker_window=0"


@pytest.fixture
async def queue_name(amqp_url: str) -> AsyncIterator[str]:
    name = f"mm-test-{uuid.uuid4().hex[:12]}"
    yield name
    await delete_queues(amqp_url, name)


# --- the contract ----------------------------------------------------------------------------


class TestAmqpContract(TransportContract):
    @pytest.fixture
    def broker_url(self, amqp_url: str) -> str:
        return amqp_url

    @pytest.fixture
    async def queue(self, amqp_url: str) -> AsyncIterator[str]:
        name = f"mm-test-{uuid.uuid4().hex[:12]}"
        yield name
        await delete_queues(amqp_url, name)

    async def inject(
        self, broker_url: str, queue: str, body: bytes, delivery_count: int = 1, wait: float = 5
    ) -> bytes | None:
        headers = {DELIVERIES: delivery_count} if delivery_count > 1 else None
        return await publish_raw(broker_url, queue, body, wait, headers=headers)

    async def dead_letters(self, broker_url: str, queue: str) -> list[bytes]:
        return [message.body for message in await drain_queue(broker_url, f"{queue}.dead")]

    expired_reach_the_worker = False  # the broker drops it at its expiration

    def unreachable_url(self, broker_url: str) -> str:
        return f"amqp://guest:guest@127.0.0.1:{free_port()}/"

    async def wait_queued(
        self, broker_url: str, queue: str, client: AsyncClient, count: int
    ) -> None:
        await wait_for_queue_state(broker_url, queue, lambda state: state[0] >= count)

    cuts_connections = True

    async def cut_client(self, broker_url: str, client: AsyncClient) -> None:
        await close_connections(broker_url, f"micromessaging client {socket.gethostname()} ")

    async def cut_worker(self, broker_url: str, queue: str) -> None:
        await close_connections(broker_url, f"micromessaging worker {queue} ")

    async def leftovers(self, broker_url: str, queue: str) -> list[str]:
        left = []
        state = await queue_state(broker_url, queue)
        if state and state[0]:
            left.append(f"{state[0]} messages in {queue}")
        if state and state[1]:
            left.append(f"{state[1]} consumers on {queue}")
        if await queue_state(broker_url, f"{queue}.dead") is not None:
            left.append(f"queue {queue}.dead")
        left += await our_connections(broker_url)
        return left


class TestAmqpAdmin(AdminContract):
    @pytest.fixture
    def broker_url(self, amqp_url: str) -> str:
        return amqp_url

    async def poison(self, broker_url: str, queue: str, body: bytes) -> None:
        # Counted past any limit already: the worker dead-letters it at once.
        await publish_raw(broker_url, queue, body, None, headers={DELIVERIES: 9})


async def wait_for_queue_state(
    broker: str, name: str, predicate: Callable[[tuple[int, int]], bool], timeout: float = 10
) -> None:
    """Wait until the queue's (messages ready, consumers) satisfy `predicate`."""
    deadline = time.monotonic() + timeout
    while (state := await queue_state(broker, name)) is None or not predicate(state):
        assert time.monotonic() < deadline, f"queue {name}: {state}"
        await asyncio.sleep(0.02)


async def close_connections(broker: str, name_prefix: str) -> None:
    """Close, from the broker's side, this process's connections whose name starts with
    `name_prefix` (a client or a worker of ours; nobody else's)."""
    command, env = rabbitmqctl_for(broker)
    marker = f"pid {os.getpid()}"

    def run(*args: str) -> str:
        result = subprocess.run(
            [*command, "-q", *args], env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    listing = await asyncio.to_thread(run, "list_connections", "pid", "client_properties")
    pids = [
        line.split("\t", 1)[0]
        for line in listing.splitlines()
        if name_prefix in line and f'{marker}"' in line
    ]
    assert pids, f"no connection named {name_prefix}... ({marker})"
    for pid in pids:
        await asyncio.to_thread(run, "close_connection", pid, "cut by the test")


async def our_connections(broker: str, timeout: float = 3.0) -> list[str]:
    """Connections this process still holds open on the broker (a read-only query)."""
    marker = f"pid {os.getpid()}"
    deadline = time.monotonic() + timeout
    command, env = rabbitmqctl_for(broker)
    while True:
        try:
            result = await asyncio.to_thread(
                subprocess.run,
                [*command, "-q", "list_connections", "client_properties"],
                env=env,
                capture_output=True,
                text=True,
                check=False,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired):
            return []  # no rabbitmqctl here (or not allowed): the queues are checked anyway
        if result.returncode:
            return []
        names = [line for line in result.stdout.splitlines() if marker in line]
        if not names or time.monotonic() > deadline:
            return [f"connection {line[:120]}" for line in names]
        await asyncio.sleep(0.2)


# --- pure parts: URL options, frames, counting -----------------------------------------------


def test_url_options_are_ours_and_removed() -> None:
    settings = parse_url("amqps://u:p@host:5671/vh?queue_type=quorum&heartbeat=30")
    assert (settings.queue_type, settings.durable) == ("quorum", True)
    assert settings.arguments == {"x-queue-type": "quorum"}
    assert settings.delivery_mode == 2
    assert "queue_type" not in settings.connect_url
    assert "heartbeat=30" in settings.connect_url
    assert "reconnect_interval=1" in settings.connect_url
    assert settings.connect_url.startswith("amqps://u:p@host:5671/vh?")
    classic = parse_url("amqp://h/?durable=true&reconnect_interval=3")
    assert (classic.queue_type, classic.durable, classic.arguments) == ("classic", True, {})
    assert "reconnect_interval=3" in classic.connect_url
    default = parse_url("amqp://guest:guest@localhost/")
    assert (default.queue_type, default.durable, default.delivery_mode) == ("classic", False, None)


@pytest.mark.parametrize(
    "url",
    [
        "amqp://h/?queue_type=stream",
        "amqp://h/?durable=maybe",
        "amqp://h/?queue_type=quorum&durable=false",
        "amqp:///vhost",
        "redis://h/",
    ],
)
def test_bad_url_options_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError):
        parse_url(url)


def decode_frames(data: bytes) -> list[tuple[int, object]]:
    frames = []
    while data:
        used, channel, frame = pamqp.frame.unmarshal(data)
        frames.append((channel, frame))
        data = data[used:]
    return frames


def test_publish_frames_decode_with_pamqp() -> None:
    body = bytes(range(256)) * 5
    data = encode_publish(
        7,
        "calc",
        body,
        body_frame_size=300,
        mandatory=True,
        content_type="application/json",
        headers={"mm-deadline": 1.5, "n": -3, "s": "é", "yes": True, "none": None},
        delivery_mode=2,
        correlation_id="abc.1",
        reply_to="amq.rabbitmq.reply-to",
        expiration="1500",
    )
    frames = decode_frames(data)
    assert {channel for channel, _ in frames} == {7}
    method, header, *bodies = (frame for _, frame in frames)
    assert isinstance(method, Basic.Publish)
    assert (method.exchange, method.routing_key, method.mandatory) == ("", "calc", True)
    properties = header.properties
    assert header.body_size == len(body)
    assert properties.content_type == "application/json"
    assert properties.headers == {"mm-deadline": 1.5, "n": -3, "s": "é", "yes": True, "none": None}
    assert properties.delivery_mode == 2
    assert properties.correlation_id == "abc.1"
    assert properties.reply_to == "amq.rabbitmq.reply-to"
    assert properties.expiration == "1500"
    assert properties.message_id is None
    assert [len(b.value) for b in bodies] == [300, 300, 300, 300, 80]
    assert b"".join(b.value for b in bodies) == body


def test_minimal_publish_and_settle_frames() -> None:
    (_, method), (_, header) = decode_frames(encode_publish(1, "q", b"", body_frame_size=10))
    assert method.routing_key == "q" and not method.mandatory
    assert header.body_size == 0 and header.properties.headers is None
    ((_, ack),) = decode_frames(encode_ack(3, 2**40))
    assert isinstance(ack, Basic.Ack) and ack.delivery_tag == 2**40 and not ack.multiple
    ((_, nack),) = decode_frames(encode_nack(3, 9))
    assert isinstance(nack, Basic.Nack) and (nack.delivery_tag, nack.requeue) == (9, True)
    ((_, drop),) = decode_frames(encode_nack(3, 9, requeue=False))
    assert not drop.requeue
    with pytest.raises(ValueError, match="255"):
        encode_publish(1, "q" * 256, b"", body_frame_size=10)


def test_delivery_counting_rules() -> None:
    classic = {"quorum": False}
    assert delivery_count_of(None, False, **classic) == (1, False)
    assert delivery_count_of(None, True, **classic) == (2, True)  # classic: recount first
    assert delivery_count_of({DELIVERIES: 3}, False, **classic) == (3, False)
    assert delivery_count_of({DELIVERIES: 3}, True, **classic) == (4, True)
    assert delivery_count_of({"x-delivery-count": 2}, True, quorum=True) == (3, False)
    # On a classic queue x-delivery-count is whatever its publisher wrote: not trusted.
    assert delivery_count_of({"x-delivery-count": 0}, True, **classic) == (2, True)
    assert delivery_count_of({DELIVERIES: "lots"}, False, **classic) == (1, False)
    assert deadline_of({"mm-deadline": 12500}) == 12.5
    assert deadline_of({"mm-deadline": deadline_header(1795845534.3413908)}) == 1795845534.341
    assert deadline_of({"mm-deadline": "soon"}) is None
    assert deadline_of({"mm-deadline": 12.5}) == 0.0125  # float milliseconds, as every wire
    assert deadline_of({"mm-deadline": True}) is None
    assert deadline_of(None) is None
    assert expiration_for(10.0, 9.0) == "1000"
    assert expiration_for(10.0, 11.0) == "1"


class FakeChannel:
    """Just what `Link.write` touches of an aiormq channel: a small writer queue."""

    def __init__(self, number: int, room: int) -> None:
        self.number = number
        self.write_queue: asyncio.Queue[object] = asyncio.Queue(maxsize=room)
        self.closing: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def is_closed(self) -> bool:
        return self.closing.done()


async def test_link_batches_writes_and_never_waits_on_a_dead_channel() -> None:
    link = Link(parse_url("amqp://guest:guest@127.0.0.1/"), "test", on_open=None, on_lost=None)  # type: ignore[arg-type]
    old = link.channel = FakeChannel(1, room=1)
    for frame in (b"a", b"b"):
        assert link.write(old, frame)
    await asyncio.sleep(0)
    assert old.write_queue.get_nowait().payload == b"ab"  # one loop turn, one piece
    link.write(old, b"c")
    link.flush()
    link.write(old, b"d")
    link.flush()  # the writer is behind (no room): kept in order, waiting
    assert [item.payload for _, item in link._blocked] == [b"d"]
    await asyncio.sleep(0.01)  # waiting for room
    old.closing.set_result(None)  # its connection died with frames still waiting
    new = link.channel = FakeChannel(1, room=5)
    assert not link.write(old, b"late")  # not for the new channel
    link.write(new, b"e")
    await asyncio.sleep(0.01)
    assert new.write_queue.get_nowait().payload == b"e"  # not stuck behind the dead one
    assert not link._blocked


# --- the broker --------------------------------------------------------------------------------


class Calculator:
    def add(self, a: float, b: float) -> float:
        return a + b


async def test_bad_credentials_and_vhost_are_transport_errors(
    queue_name: str, amqp_url: str
) -> None:
    server = urlsplit(amqp_url)
    at = f"{server.hostname}:{server.port or 5672}"
    for url in (
        f"amqp://{server.username}:wrong-secret@{at}/",
        f"amqp://{server.username}:{server.password}@{at}/no-such-vhost",
    ):
        started = time.monotonic()
        with pytest.raises(TransportError) as caught:
            async with AsyncClient(url, queue_name) as client:
                await client.add(1, 2)
        assert "wrong-secret" not in str(caught.value), url
        assert time.monotonic() - started < 15, url
        with pytest.raises(TransportError):
            async with Worker(Calculator(), url, queue_name, wait_for_broker=0):
                pass


class Replier:
    """A hand-written service on a queue, to send replies our worker never would."""

    def __init__(self, broker: str, queue: str) -> None:
        self.broker, self.queue = broker, queue
        self.requests: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()

    async def __aenter__(self) -> Replier:
        self.connection = await aio_pika.connect(self.broker)
        self.channel = await self.connection.channel()
        queue = await self.channel.declare_queue(self.queue)
        await queue.consume(self.requests.put, no_ack=True)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.connection.close()

    async def reply(
        self, request: aio_pika.abc.AbstractIncomingMessage, result: object, cid: str | None
    ) -> None:
        call = orjson.loads(request.body)
        body = orjson.dumps({"jsonrpc": "2.0", "result": result, "id": call["id"]})
        await self.channel.default_exchange.publish(
            aio_pika.Message(body, correlation_id=cid), request.reply_to
        )


async def test_unknown_and_late_replies_are_dropped_and_counted(
    queue_name: str, amqp_url: str
) -> None:
    async with (
        Replier(amqp_url, queue_name) as replier,
        AsyncClient(amqp_url, queue_name, timeout=10) as client,
    ):
        first = asyncio.create_task(client.call("add", 1, 1))
        second = asyncio.create_task(client.call("add", 2, 2))
        a, b = await replier.requests.get(), await replier.requests.get()
        assert a.reply_to.startswith("amq.rabbitmq.reply-to.")  # direct reply-to
        assert a.reply_to == b.reply_to  # one reply consumer for every call
        assert a.headers["mm-deadline"] / 1000 > time.time()
        assert a.expiration is not None  # the broker drops it once the caller gave up
        assert a.content_type == "application/json"
        router = client._transport.router
        await replier.reply(a, "for nobody", "no-such-id")
        await replier.reply(b, "second", b.correlation_id)  # answered out of order
        await replier.reply(a, "first", a.correlation_id)
        await replier.reply(a, "first again", a.correlation_id)  # a duplicate
        assert await first == "first"
        assert await second == "second"
        await eventually(lambda: router.unknown_replies == 2)

        late = asyncio.create_task(client.call("add", 3, 3, timeout=0.3))
        request = await replier.requests.get()
        with pytest.raises(CallTimeout):
            await late
        await replier.reply(request, "too late", request.correlation_id)
        await eventually(lambda: router.unknown_replies == 3)
        third = asyncio.create_task(client.call("add", 4, 4))
        request = await replier.requests.get()
        await replier.reply(request, 8, request.correlation_id)
        assert await third == 8


async def test_expired_requests_are_dropped_by_the_broker(queue_name: str, amqp_url: str) -> None:
    # Called before any worker: the no-worker rule is off, as for a queue nobody reports on.
    async with AsyncClient(waiting(amqp_url), queue_name, timeout=0.3) as client:
        with pytest.raises(CallTimeout):
            await client.add(1, 2)
        await client.notify("add", 1, 2)  # no deadline: it stays
    await wait_for_queue_state(amqp_url, queue_name, lambda state: state == (1, 0))


async def test_a_request_past_its_deadline_header_is_not_run(
    queue_name: str, amqp_url: str
) -> None:
    """The broker's expiration aside (clients may not set one), the worker reads the header."""
    probe = Probe()
    async with Worker(probe, amqp_url, queue_name) as worker:
        late = b'{"jsonrpc": "2.0", "method": "record", "params": ["late"], "id": 1}'
        past = deadline_header(time.time() - 1)
        reply = await publish_raw(
            amqp_url, queue_name, late, wait=0.5, headers={"mm-deadline": past}
        )
        assert reply is None  # its caller has gone: nothing is owed
        await eventually(lambda: worker.stats.expired == 1)
    assert "late" not in probe.ran
    assert await queue_state(amqp_url, queue_name) == (0, 0)  # acknowledged, not left behind


async def test_missing_reply_to_is_dead_lettered_and_the_worker_goes_on(
    queue_name: str, amqp_url: str
) -> None:
    probe = Probe()
    async with (
        Worker(probe, amqp_url, queue_name) as worker,
        AsyncClient(amqp_url, queue_name) as client,
    ):
        owes = b'{"jsonrpc": "2.0", "method": "record", "params": ["lost"], "id": 1}'
        await publish_raw(amqp_url, queue_name, owes, wait=None)
        notification = b'{"jsonrpc": "2.0", "method": "record", "params": ["note"]}'
        await publish_raw(amqp_url, queue_name, notification, wait=None)
        await eventually(lambda: "note" in probe.ran)
        await eventually(lambda: worker.stats.dead_lettered == 1)
        assert await client.add(1, 1) == 2
    (dead,) = await drain_queue(amqp_url, f"{queue_name}.dead")
    assert dead.body == owes
    assert dead.headers[DEAD_REASON] == "no reply address"
    assert "lost" not in probe.ran


async def test_reply_to_a_queue_that_is_gone_is_dropped(queue_name: str, amqp_url: str) -> None:
    async with (
        Worker(Calculator(), amqp_url, queue_name) as worker,
        AsyncClient(amqp_url, queue_name) as client,
    ):
        request = b'{"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": 1}'
        for reply_to in ("no-such-queue-" + uuid.uuid4().hex, "amq.rabbitmq.reply-to.bogus"):
            await publish_raw(
                amqp_url, queue_name, request, wait=None, reply_to=reply_to, correlation_id="x"
            )
        # The queue is gone, and with it its caller: skipped (expired), not run.
        await eventually(lambda: worker.stats.completed == 1 and worker.stats.expired == 1)
        assert await client.add(2, 2) == 4
        assert worker.stats.transport_errors == 0


async def test_a_worker_whose_queue_is_deleted_declares_it_again(
    queue_name: str, amqp_url: str
) -> None:
    async with Worker(Calculator(), amqp_url, queue_name), AsyncClient(amqp_url, queue_name) as c:
        assert await c.add(1, 1) == 2
        await delete_queues(amqp_url, queue_name)  # the broker cancels the worker's consumer
        for _ in range(100):
            if await queue_state(amqp_url, queue_name) == (0, 1):
                break
            await asyncio.sleep(0.05)
        assert await c.add(2, 2) == 4


async def test_prefetch_is_the_concurrency(queue_name: str, amqp_url: str) -> None:
    probe = Probe()
    async with (
        Worker(probe, amqp_url, queue_name, concurrency=2) as worker,
        AsyncClient(amqp_url, queue_name, timeout=10) as client,
    ):
        calls = [asyncio.create_task(client.slow(0.6, i)) for i in range(5)]
        await eventually(lambda: len(probe.ran) == 2)
        # The rest wait in the broker, not in the worker: 3 ready, none sent to it.
        await wait_for_queue_state(amqp_url, queue_name, lambda state: state == (3, 1))
        assert len(probe.ran) == 2
        assert await asyncio.gather(*calls) == list(range(5))
        assert worker.stats.completed == 5


async def test_redelivered_requests_are_counted_then_dead_lettered_with_an_answer(
    queue_name: str, amqp_url: str
) -> None:
    """A worker that dies holding a request (here: gives it back unsettled) makes the broker
    redeliver it; after max_deliveries deliveries the caller gets DELIVERY_LIMIT."""
    probe = Probe()
    counts, deadlines = [], set()
    async with AsyncClient(waiting(amqp_url), queue_name, timeout=20) as client:
        call = asyncio.create_task(client.call("record", "poison"))
        for _ in range(3):
            taken: asyncio.Future[object] = asyncio.get_running_loop().create_future()
            transport = AmqpWorkerTransport(amqp_url, WorkerOptions(queue_name, concurrency=1))
            await transport.start(lambda d, f=taken: f.done() or f.set_result(d))
            delivery = await asyncio.wait_for(taken, 10)
            counts.append(delivery.delivery_count)
            deadlines.add(delivery.deadline)
            await transport.aclose()  # like a crash: unsettled, back to the queue
        async with Worker(probe, amqp_url, queue_name, max_deliveries=3) as worker:
            with pytest.raises(RemoteError) as caught:
                await call
            assert caught.value.code == ErrorCode.DELIVERY_LIMIT
            assert worker.stats.dead_lettered == 1
    assert counts == [1, 2, 3]
    assert len(deadlines) == 1  # the copies carry the caller's deadline unchanged
    assert "poison" not in probe.ran
    (dead,) = await drain_queue(amqp_url, f"{queue_name}.dead")
    assert orjson.loads(dead.body)["params"] == ["poison"]
    assert dead.headers[DELIVERIES] == 4
    assert "delivered 4 times" in dead.headers[DEAD_REASON]


async def test_quorum_queues_count_deliveries_themselves(queue_name: str, amqp_url: str) -> None:
    url = amqp_url.rstrip("/") + "/?queue_type=quorum"
    counts = []
    async with AsyncClient(waiting(url), queue_name, timeout=20) as client:
        call = asyncio.create_task(client.call("record", "poison"))
        for _ in range(2):
            taken: asyncio.Future[object] = asyncio.get_running_loop().create_future()
            transport = AmqpWorkerTransport(url, WorkerOptions(queue_name, concurrency=1))
            await transport.start(lambda d, f=taken: f.done() or f.set_result(d))
            delivery = await asyncio.wait_for(taken, 10)
            counts.append(delivery.delivery_count)
            await transport.aclose()
            assert transport.recounted == 0  # no republishing: the queue counts
        async with Worker(Probe(), url, queue_name, max_deliveries=2):
            with pytest.raises(RemoteError) as caught:
                await call
            assert caught.value.code == ErrorCode.DELIVERY_LIMIT
    assert counts == [1, 2]


async def test_quorum_queues_dead_letter_what_passes_the_brokers_limit(
    queue_name: str, amqp_url: str
) -> None:
    """A request no worker of ours ever settles (a foreign consumer that gives it back, a
    worker killed before it reads it) reaches <queue>.dead when the broker gives up on it."""
    url = amqp_url.rstrip("/") + "/?queue_type=quorum"
    async with Worker(Probe(), url, queue_name):
        pass  # declares the queue and its dead-letter queue as quorum queues
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=1)
        queue = await channel.declare_queue(queue_name, passive=True)
        await channel.default_exchange.publish(aio_pika.Message(b'{"a": 1}'), queue_name)
        returned = 0

        async def give_back(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal returned
            returned += 1
            await message.reject(requeue=True)

        await queue.consume(give_back)
        await wait_for_queue_state(amqp_url, f"{queue_name}.dead", lambda state: state[0] == 1)
    assert returned == BROKER_DELIVERY_LIMIT + 1
    from micromessaging.transports.amqp import admin_transport

    async with admin_transport(url) as admin:
        [record] = await admin.dead_letters(queue_name)
        assert record.reason.startswith("dead-lettered by the broker: delivery_limit")
        assert record.deliveries == 0  # unknown: the broker keeps no count on it
        assert abs(time.time() - record.at) < 60
    (dead,) = await drain_queue(amqp_url, f"{queue_name}.dead")
    assert dead.body == b'{"a": 1}'


async def test_a_queue_declared_otherwise_is_used_as_it_is(
    queue_name: str, caplog: pytest.LogCaptureFixture, amqp_url: str
) -> None:
    quorum = amqp_url.rstrip("/") + "/?queue_type=quorum"
    async with (
        Worker(Calculator(), quorum, queue_name),
        Worker(Calculator(), amqp_url, queue_name),  # classic by default: declared otherwise
        AsyncClient(amqp_url, queue_name) as client,
    ):
        assert await client.add(1, 2) == 3
    assert "exists with other arguments" in caplog.text


async def test_a_seed_style_declaration_agrees_with_our_worker(
    queue_name: str, amqp_url: str
) -> None:
    async with Worker(Calculator(), amqp_url, queue_name):
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            channel = await connection.channel()
            # Bunny's ch.queue('calc', auto_delete: false): classic, non-durable, no arguments.
            await channel.declare_queue(queue_name, durable=False, auto_delete=False)


async def test_notifications_and_requests_without_a_channel_fail_clearly(
    queue_name: str, amqp_url: str
) -> None:
    transport = client_transport(amqp_url)
    with pytest.raises(TransportError, match="not connected"):
        await transport.request(queue_name, b"{}", time.time() + 1)
    await transport.connect()
    await transport.aclose()
    with pytest.raises(TransportError, match="closed"):
        await transport.send(queue_name, b"{}", None)
    with pytest.raises(TransportError):
        await transport.connect()


# --- the no-worker rule: consumers and heartbeats --------------------------------------------


async def test_a_foreign_consumer_counts_as_serving(queue_name: str, amqp_url: str) -> None:
    """The seed's Ruby worker sends no heartbeat: a consumer on the queue is enough."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name)

        async def answer(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            request = orjson.loads(message.body)
            reply = orjson.dumps({"jsonrpc": "2.0", "result": "foreign", "id": request["id"]})
            await channel.default_exchange.publish(
                aio_pika.Message(reply, correlation_id=message.correlation_id), message.reply_to
            )
            await message.ack()

        await queue.consume(answer)
        async with AsyncClient(amqp_url, queue_name, timeout=5) as client:
            assert await client.call("anything") == "foreign"
    assert await queue_state(amqp_url, f"{queue_name}.alive") is None


async def test_a_queue_unserved_past_the_window_fails_fast_again(
    queue_name: str, amqp_url: str
) -> None:
    """A client that saw a worker learns, within a recheck, that none is left; its heartbeat
    queue holds the worker's last sign of life meanwhile."""
    url = amqp_url + ("&" if "?" in amqp_url else "?") + "worker_window=0.5"
    async with AsyncClient(url, queue_name, timeout=5) as client:
        async with Worker(Probe(), amqp_url, queue_name):
            assert await client.add(1, 2) == 3
        assert (await queue_state(amqp_url, f"{queue_name}.alive") or (0, 0))[0] == 1
        deadline = time.monotonic() + 10
        refused: NoWorkers | None = None
        while refused is None:
            try:
                await client.notify("record", "after")
            except NoWorkers as exc:
                refused = exc
            assert time.monotonic() < deadline, "never told NoWorkers"
            await asyncio.sleep(0.2)
        assert refused.queue == queue_name and "last worker was seen" in str(refused)
        started = time.monotonic()
        with pytest.raises(NoWorkers):
            await client.add(1, 2)
        assert time.monotonic() - started < 1.0


async def test_a_timed_out_call_makes_the_client_look_again(queue_name: str, amqp_url: str) -> None:
    url = amqp_url + ("&" if "?" in amqp_url else "?") + "worker_window=0.3"
    async with Worker(Probe(), amqp_url, queue_name), AsyncClient(url, queue_name) as client:
        assert await client.add(1, 1) == 2
    async with AsyncClient(url, queue_name, timeout=0.5) as client:
        # Seen a moment ago: the call waits, and times out; by then the window has passed.
        with pytest.raises((CallTimeout, NoWorkers)):
            await client.add(1, 2)
        with pytest.raises(NoWorkers):
            await client.add(1, 2)


# --- the admin side: what only RabbitMQ shows ------------------------------------------------


async def test_status_and_dead_letters_from_the_command_line(
    queue_name: str, amqp_url: str
) -> None:
    """``micromessaging status`` and ``dead-letters`` on RabbitMQ, as an operator types them;
    listing twice loses nothing and keeps the ids."""
    from click.testing import CliRunner

    from micromessaging.cli import main

    async def invoke(*args: str) -> tuple[int, str]:
        result = await asyncio.to_thread(CliRunner().invoke, main, list(args))
        return result.exit_code, result.output

    probe = Probe()
    async with (
        Worker(probe, amqp_url, queue_name, concurrency=2, max_deliveries=2) as worker,
        AsyncClient(amqp_url, queue_name) as client,
    ):
        assert await client.add(1, 2) == 3
        body = orjson.dumps({"jsonrpc": "2.0", "method": "record", "params": ["dead"]})
        await publish_raw(amqp_url, queue_name, body, None, headers={DELIVERIES: 9})
        await wait_for_queue_state(amqp_url, f"{queue_name}.dead", lambda state: state[0] == 1)

        code, text = await invoke("status", "-b", amqp_url, "-q", queue_name, "--json")
        assert code == 0, text
        [status] = orjson.loads(text)["queues"]
        assert status["depth"] == 0 and status["dead_letters"] == 1
        assert status["oldest_wait"] is None and any("oldest wait" in n for n in status["notes"])
        [record] = status["workers"]
        assert record["id"] == worker.id and record["concurrency"] == 2
        code, text = await invoke("status", "-b", amqp_url)
        assert code == 0 and queue_name in text, text

        listed = [await invoke("dead-letters", "list", "-b", amqp_url, "-q", queue_name)]
        listed.append(await invoke("dead-letters", "list", "-b", amqp_url, "-q", queue_name))
        assert listed[0] == listed[1] and listed[0][0] == 0, listed
        [line] = listed[0][1].splitlines()
        assert "record" in line and "x9" in line
        assert (await queue_state(amqp_url, f"{queue_name}.dead") or (0, 0))[0] == 1

        code, text = await invoke(
            "dead-letters", "replay", "-b", amqp_url, "-q", queue_name, "--id", line.split()[0]
        )
        assert code == 0, text
        await eventually(lambda: "dead" in probe.ran)
        assert (await queue_state(amqp_url, f"{queue_name}.dead") or (0, 0))[0] == 0


async def test_a_foreign_consumer_is_counted_but_noted(queue_name: str, amqp_url: str) -> None:
    from micromessaging.transports.amqp import admin_transport

    connection = await aio_pika.connect(amqp_url)
    async with connection, admin_transport(amqp_url) as admin:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name)

        async def take(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await message.ack()

        await queue.consume(take)
        status = await admin.status(queue_name)
        assert status.workers == [] and status.depth == 0
        assert any("1 of 1 consumers did not answer" in note for note in status.notes)
        missing = await admin.status(queue_name + "-nothing")
        assert missing.depth == 0 and missing.dead_letters == 0
        assert await admin.dead_letters(queue_name + "-nothing") == []
        assert await admin.purge(queue_name + "-nothing", None) == 0


# --- publisher confirms (durable and quorum queues) ------------------------------------------


async def test_refused_requests_fail_at_once_when_confirmed(queue_name: str, amqp_url: str) -> None:
    """A queue full with reject-publish nacks: the notification and the call fail at once
    with TransportError; on a queue that takes them, confirms cost the caller nothing."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(
            queue_name,
            durable=True,
            arguments={"x-max-length": 1, "x-overflow": "reject-publish"},
        )
    url = waiting(amqp_url + ("&" if "?" in amqp_url else "?") + "durable=true")
    async with AsyncClient(url, queue_name, timeout=20) as client:
        await client.notify("record", "first")  # confirmed: the queue holds it
        with pytest.raises(TransportError, match="refused"):
            await client.notify("record", "second")
        started = time.monotonic()
        with pytest.raises(TransportError, match="refused"):
            await client.add(1, 2)
        assert time.monotonic() - started < 2  # told at once, not at the 20 s timeout
        transport = client._transport
        assert transport is not None
        pending = transport._pending_confirms  # type: ignore[attr-defined]
        assert pending is not None and len(pending[1]) == 0 and pending[1].refused == 2
    assert await queue_state(amqp_url, queue_name) == (1, 0)


async def test_confirmed_calls_in_flight_all_answered(queue_name: str, amqp_url: str) -> None:
    url = amqp_url.rstrip("/") + "/?queue_type=quorum"
    async with (
        Worker(Probe(), url, queue_name, concurrency=16),
        AsyncClient(url, queue_name) as client,
    ):
        results = await asyncio.gather(*(client.add(i, 1) for i in range(500)))
        assert results == [i + 1 for i in range(500)]
        for i in range(20):
            await client.notify("record", i)
        transport = client._transport
        assert transport is not None
        pending = transport._pending_confirms  # type: ignore[attr-defined]
        assert pending is not None and pending[1].refused == 0
        await eventually(lambda: len(pending[1]) == 0)


def test_a_replayed_dead_letter_loses_its_count_and_keeps_a_clamped_expiration() -> None:
    from micromessaging.transports.amqp.admin import _fresh

    past = deadline_header(time.time() - 60)
    properties = Basic.Properties(
        headers={
            DELIVERIES: 9,
            DEAD_REASON: "delivered 9 times",
            "mm-dead-id": "ab12",
            "x-delivery-count": 8,
            "mm-deadline": past,
            "keep": "me",
        },
        reply_to="amq.rabbitmq.reply-to.abc",
        correlation_id="c1",
    )
    fresh = _fresh(properties)
    assert fresh.headers is not None
    assert set(fresh.headers) == {"mm-deadline", "keep", "mm-sent"}
    assert fresh.expiration == "1"  # a deadline long past: clamped, never negative
    assert (fresh.reply_to, fresh.correlation_id) == ("amq.rabbitmq.reply-to.abc", "c1")
    assert _fresh(Basic.Properties(headers={})).expiration is None
