"""Hostile input over RabbitMQ: raw messages from aio-pika and hand-made frames on aiormq.

Each case publishes what our client never would, straight to a worker's queue, and says
what must come of it. After every case the worker must answer normal calls at its full
concurrency, and nothing outside its own queue may have changed: a canary queue (another
service's work queue, holding three requests) and its dead-letter queue keep their depths.
Talks to the shared broker; every queue is unique to the test and deleted after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aio_pika
import aiormq
import orjson
import pytest
from aio_pika.abc import AbstractIncomingMessage

from micromessaging import AsyncClient, ErrorCode, Worker
from micromessaging.transports import WorkerOptions
from micromessaging.transports.amqp import AmqpWorkerTransport, compat
from micromessaging.transports.amqp.frames import (
    BASIC,
    BODY,
    CORRELATION_ID,
    HEADER,
    HEADERS,
    METHOD,
    PUBLISH,
    REPLY_TO,
    frame,
)
from micromessaging.transports.amqp.wire import DEAD_REASON, DEADLINE, DELIVERIES

from .common import (
    CONCURRENCY,
    REQUEST,
    Gauge,
    error_code,
    full_concurrency,
    request,
    settled,
    until,
)

BROKER = ""
"""The session's RabbitMQ (conftest's `amqp_url`: the shared one, or a node of the suite's own)."""


@pytest.fixture(autouse=True)
def _broker(amqp_url: str) -> None:
    global BROKER
    BROKER = amqp_url


async def _reachable() -> bool:
    try:
        connection = await aio_pika.connect(BROKER, timeout=2)
    except Exception:
        return False
    await connection.close()
    return True


class Harness:
    """A worker of a unique queue, a raw aio-pika connection beside it, and a canary queue."""

    def __init__(self) -> None:
        self.queue = f"mm-hostile-{uuid.uuid4().hex[:10]}"
        self.canary = f"mm-canary-{uuid.uuid4().hex[:10]}"
        self.service = Gauge()
        self.replies: dict[str, asyncio.Future[AbstractIncomingMessage]] = {}

    async def start(self, stack: contextlib.AsyncExitStack) -> None:
        self.connection = await aio_pika.connect(BROKER)
        stack.push_async_callback(self.connection.close)
        self.channel = await self.connection.channel()
        stack.push_async_callback(self._delete_queues)
        await self.channel.declare_queue(self.canary)
        await self.channel.declare_queue(self.canary + ".dead")
        for i in range(3):
            await self.channel.default_exchange.publish(
                aio_pika.Message(request(id_=i)), self.canary
            )
        # Where the replies to our raw requests come: an exclusive queue, like the seed's.
        self.reply_queue = await self.channel.declare_queue("", exclusive=True)
        await self.reply_queue.consume(self._reply, no_ack=True)
        self.worker = await stack.enter_async_context(
            Worker(self.service, BROKER, self.queue, concurrency=CONCURRENCY)
        )
        self.client = await stack.enter_async_context(AsyncClient(BROKER, self.queue, timeout=10))
        self.raw_connection = await aiormq.connect(BROKER)
        stack.push_async_callback(self.raw_connection.close)
        self.raw_channel = await self.raw_connection.channel()

    async def _reply(self, message: AbstractIncomingMessage) -> None:
        waiter = self.replies.pop(message.correlation_id or "", None)
        if waiter is not None and not waiter.done():
            waiter.set_result(message)

    async def _delete_queues(self) -> None:
        channel = await self.connection.channel()
        for name in (self.queue, self.canary):
            for queue in (name, name + ".dead", name + ".alive"):
                await channel.queue_delete(queue)

    # --- sending ---------------------------------------------------------------------------

    async def publish(self, body: bytes, **properties: Any) -> None:
        """Publish to the worker's queue as a foreign client would."""
        await self.channel.default_exchange.publish(
            aio_pika.Message(body, **properties), self.queue
        )

    async def send(self, body: bytes, wait: float = 5.0, **properties: Any) -> bytes | None:
        """Publish a request whose reply comes to our exclusive queue; that reply, if any."""
        message = await self.exchange(body, wait, **properties)
        return None if message is None else message.body

    async def exchange(
        self, body: bytes, wait: float = 5.0, **properties: Any
    ) -> AbstractIncomingMessage | None:
        cid = properties.setdefault("correlation_id", uuid.uuid4().hex)
        properties.setdefault("reply_to", self.reply_queue.name)
        waiter = self.replies[cid] = asyncio.get_running_loop().create_future()
        await self.publish(body, **properties)
        try:
            return await asyncio.wait_for(waiter, wait)
        except TimeoutError:
            return None
        finally:
            self.replies.pop(cid, None)

    async def raw(self, body: bytes, flags: int, properties: bytes, queue: str = "") -> None:
        """Publish with a content header of our own making: bytes no library would write."""
        channel = self.raw_channel.number
        routing_key = shortstr((queue or self.queue).encode())
        method = struct.pack(">HHH", BASIC, PUBLISH, 0) + b"\x00" + routing_key
        header = struct.pack(">HHQH", BASIC, 0, len(body), flags) + properties
        data = frame(METHOD, channel, method + b"\x00") + frame(HEADER, channel, header)
        assert compat.write_now(self.raw_channel, compat.frames(data + frame(BODY, channel, body)))
        await self.raw_channel.basic_qos(prefetch_count=0)  # a round trip: the broker has it

    # --- checking --------------------------------------------------------------------------

    async def depth(self, name: str) -> int:
        channel = await self.connection.channel()
        try:
            declared = await channel.declare_queue(name, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return 0
        await channel.close()
        return declared.declaration_result.message_count or 0

    async def canary_state(self) -> tuple[int, int]:
        return await self.depth(self.canary), await self.depth(self.canary + ".dead")

    async def dead_lettered(self, count: int) -> list[AbstractIncomingMessage]:
        """Wait until the worker has dead-lettered `count` messages; take them."""
        await until(lambda: self.worker.stats.dead_lettered >= count, what="dead-lettered")
        deadline = time.monotonic() + 10  # counted before it is published: wait for it
        while await self.depth(self.queue + ".dead") < count:
            assert time.monotonic() < deadline, "the dead letter never came"
            await asyncio.sleep(0.02)
        channel = await self.connection.channel()
        taken = []
        try:
            queue = await channel.declare_queue(self.queue + ".dead", passive=True)
            while (message := await queue.get(no_ack=True, fail=False)) is not None:
                taken.append(message)
        finally:
            await channel.close()
        assert len(taken) == count, [m.headers.get(DEAD_REASON) for m in taken]
        return taken

    async def quiet(self) -> None:
        """Every request published to the worker's queue has been taken and settled."""
        deadline = time.monotonic() + 10
        while await self.depth(self.queue):
            assert time.monotonic() < deadline, "the queue still holds requests"
            await asyncio.sleep(0.02)


def shortstr(data: bytes) -> bytes:
    return bytes((len(data),)) + data


def table(*entries: bytes) -> bytes:
    """A field table from encoded entries (name, type, value)."""
    data = b"".join(entries)
    return struct.pack(">I", len(data)) + data


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    if not await _reachable():
        pytest.skip(f"no RabbitMQ at {BROKER}")
    h = Harness()
    async with contextlib.AsyncExitStack() as stack:
        await h.start(stack)
        before = await h.canary_state()
        yield h
        await h.quiet()
        await full_concurrency(h.client, h.service)
        assert await h.canary_state() == before, "another queue changed"
        assert h.worker.stats.transport_errors == 0


Case = Callable[[Harness], Awaitable[None]]
CASES: dict[str, Case] = {}


def case(fn: Case) -> Case:
    CASES[fn.__name__] = fn
    return fn


# --- bodies ----------------------------------------------------------------------------------


@case
async def not_json(h: Harness) -> None:
    assert error_code(await h.send(b"add 1 2 please")) == ErrorCode.PARSE_ERROR


@case
async def invalid_utf8_body(h: Harness) -> None:
    body = b'{"jsonrpc": "2.0", "method": "\xff\xfe", "id": 1}'
    assert error_code(await h.send(body)) == ErrorCode.PARSE_ERROR


@case
async def empty_body(h: Harness) -> None:
    assert error_code(await h.send(b"")) == ErrorCode.PARSE_ERROR


@case
async def json_of_the_wrong_shape(h: Harness) -> None:
    for body in (b"42", b'"add"', b"null", b"[1, 2]", b"[]", b"{}", b'{"method": ["add"]}'):
        assert error_code(await h.send(body)) == ErrorCode.INVALID_REQUEST, body


@case
async def deeply_nested_body(h: Harness) -> None:
    assert error_code(await h.send(b"[" * 200_000 + b"]" * 200_000)) is not None
    nested = b'{"jsonrpc": "2.0", "method": "echo", "params": ' + b"[" * 5000 + b"]" * 5000
    assert error_code(await h.send(nested + b', "id": 1}')) is not None


@case
async def body_past_the_size_limit(h: Harness) -> None:
    reply = await h.send(request("echo", ["x" * (3 * 1024 * 1024)]), wait=15)
    assert error_code(reply) == ErrorCode.MESSAGE_TOO_LARGE


@case
async def huge_batch(h: Harness) -> None:
    batch = b"[" + b",".join(request(id_=i) for i in range(5000)) + b"]"
    reply = await h.send(batch, wait=20)
    assert reply is not None
    assert [r["result"] for r in orjson.loads(reply)] == [3] * 5000


@case
async def ids_of_odd_types(h: Harness) -> None:
    long_text, huge_number = b'"' + b"i" * 50_000 + b'"', b"1" + b"0" * 400
    for id_ in (b'{"a": 1}', b"[1]", b"true", b"1.5", huge_number, long_text):
        body = b'{"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": ' + id_ + b"}"
        reply = await h.send(body)
        assert reply is not None, id_[:20]
        # A 401-digit id comes back exactly (docs/wire-format.md, Numbers): read it so.
        assert "result" in json.loads(reply) or error_code(reply) in (
            ErrorCode.INVALID_REQUEST,
            ErrorCode.PARSE_ERROR,
        )


@case
async def pickle_content_type(h: Harness) -> None:
    # The body is read as JSON whatever content_type and content_encoding claim.
    reply = await h.send(
        b"\x80\x04\x95\x0b\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94.",
        content_type="application/x-python-pickle",
        content_encoding="gzip",
    )
    assert error_code(reply) == ErrorCode.PARSE_ERROR


# --- properties and headers of the wrong types -----------------------------------------------


@case
async def deadlines_of_wrong_types(h: Harness) -> None:
    # (An infinite or NaN float can't be sent: the broker closes the publisher's connection.)
    for value in ("soon", -5, 0, True, [1], {"at": 1}, None, "NaN", "1e400", bytearray(b"9")):
        assert error_code(await h.send(REQUEST, headers={DEADLINE: value})) is None, value


@case
async def deadline_passed(h: Harness) -> None:
    past = int((time.time() - 5) * 1000)
    assert await h.send(request("record", ["late"]), wait=0.5, headers={DEADLINE: past}) is None
    await until(lambda: h.worker.stats.expired == 1)
    assert "late" not in h.service.ran


@case
async def counts_of_wrong_types(h: Harness) -> None:
    for value in ("9", 9.5, True, -1, 0, {"n": 9}, [9], None, bytearray(b"9")):
        assert error_code(await h.send(REQUEST, headers={DELIVERIES: value})) is None, value


@case
async def forged_quorum_count_on_a_classic_queue(h: Harness) -> None:
    for value in (0, -1, 99, 2**62):
        reply = await h.send(REQUEST, headers={"x-delivery-count": value})
        assert error_code(reply) is None, value


@case
async def forged_count_past_the_limit(h: Harness) -> None:
    reply = await h.send(request("record", ["poison"]), headers={DELIVERIES: 2**62})
    assert error_code(reply) == ErrorCode.DELIVERY_LIMIT  # only against itself
    assert "poison" not in h.service.ran
    (dead,) = await h.dead_lettered(1)
    assert "delivered" in dead.headers[DEAD_REASON]


@case
async def correlation_ids_of_odd_kinds(h: Harness) -> None:
    for cid in ("é€😀", "c" * 255, " ", "\x00\x01", "{}"):
        message = await h.exchange(REQUEST, correlation_id=cid)
        assert message is not None, cid
        assert message.correlation_id == cid


@case
async def odd_properties(h: Harness) -> None:
    reply = await h.send(
        REQUEST,
        priority=255,
        message_id="m" * 255,
        type="\u202e",
        app_id="",
        timestamp=253402300799,
        delivery_mode=2,
        headers={"x" * 128: "y", "nested": {"a": {"b": [1, {"c": None}]}}, "empty": {}},
    )
    assert error_code(reply) is None


@case
async def huge_header_table(h: Harness) -> None:
    headers = {f"h{i}": "v" * 50 for i in range(1500)}
    assert error_code(await h.send(REQUEST, headers=headers)) is None


# --- reply addresses -------------------------------------------------------------------------


async def refused(h: Harness, reply_to: str, why: str) -> None:
    """A request naming `reply_to` is dead-lettered with the reason, not run, not answered."""
    body = request("record", [reply_to])
    await h.publish(body, reply_to=reply_to, correlation_id="forged")
    (dead,) = await h.dead_lettered(1)
    assert dead.body == body
    assert why in dead.headers[DEAD_REASON], dead.headers[DEAD_REASON]
    assert reply_to not in h.service.ran


@case
async def reply_to_its_own_queue(h: Harness) -> None:
    await refused(h, h.queue, "the request queue itself")


@case
async def reply_to_its_own_dead_letters(h: Harness) -> None:
    await refused(h, h.queue + ".dead", "a dead-letter queue")


@case
async def reply_to_its_own_heartbeats(h: Harness) -> None:
    # A reply planted there would stand in for a worker's sign of life.
    await refused(h, h.queue + ".alive", "a heartbeat queue")


@case
async def reply_to_another_services_queue(h: Harness) -> None:
    await refused(h, h.canary, "a shared queue")


@case
async def reply_to_another_queues_dead_letters(h: Harness) -> None:
    await refused(h, h.canary + ".dead", "a dead-letter queue")


@case
async def reply_to_a_shared_server_named_queue(h: Harness) -> None:
    shared = await h.channel.declare_queue("", exclusive=False, auto_delete=True)
    await refused(h, shared.name, "a shared queue")
    assert shared.name.startswith("amq.gen-")
    await shared.delete()


@case
async def reply_to_a_reserved_name(h: Harness) -> None:
    await refused(h, "amq.direct", "neither direct reply-to nor a reply queue")


@case
async def reply_to_unprintable(h: Harness) -> None:
    await refused(h, "reply\x00queue", "unprintable")


@case
async def reply_missing(h: Harness) -> None:
    await h.publish(REQUEST, correlation_id="nowhere")
    (dead,) = await h.dead_lettered(1)
    assert dead.headers[DEAD_REASON] == "no reply address"


@case
async def reply_queue_gone(h: Harness) -> None:
    # The caller's reply queue no longer exists: the caller has gone, and nothing runs.
    for reply_to in (f"amq.gen-{uuid.uuid4().hex}", f"no-such-queue-{uuid.uuid4().hex}"):
        await h.publish(request("record", [reply_to]), reply_to=reply_to, correlation_id="x")
    await until(lambda: h.worker.stats.expired == 2, what="both skipped")
    assert h.service.ran == []
    assert h.worker.stats.dead_lettered == 0


@case
async def notification_with_a_hostile_reply(h: Harness) -> None:
    # Owes no reply: it runs, and nothing is published to the queue it names.
    body = b'{"jsonrpc": "2.0", "method": "record", "params": ["note"]}'
    await h.publish(body, reply_to=h.canary, correlation_id="forged")
    await until(lambda: "note" in h.service.ran, what="the notification ran")
    assert h.worker.stats.dead_lettered == 0


@case
async def batch_with_a_hostile_reply(h: Harness) -> None:
    batch = b"[" + request("record", ["a"], 1) + b"," + request("record", ["b"], 2) + b"]"
    await h.publish(batch, reply_to=h.canary + ".dead", correlation_id="forged")
    (dead,) = await h.dead_lettered(1)
    assert dead.body == batch
    assert h.service.ran == []


@case
async def dead_letter_queue_deleted(h: Harness) -> None:
    # Unlucky rather than hostile: an operator deleted the dead-letter queue while the
    # worker ran. The next dead letter must not vanish (the default exchange drops what it
    # can't route, and confirms it all the same).
    await h.publish(REQUEST, correlation_id="first")
    await h.dead_lettered(1)
    channel = await h.connection.channel()
    await channel.queue_delete(h.queue + ".dead")
    await h.publish(REQUEST, correlation_id="second")
    await until(lambda: h.worker.stats.dead_lettered == 2, what="dead-lettered again")
    deadline = time.monotonic() + 10
    while await h.depth(h.queue + ".dead") < 1:
        assert time.monotonic() < deadline, "the second dead letter was lost"
        await asyncio.sleep(0.02)


# --- bytes no library would write ------------------------------------------------------------


async def unreadable(h: Harness, flags: int, properties: bytes) -> None:
    """Properties pamqp can't decode: the message is dead-lettered, the connection lives."""
    body = request("record", ["unreadable"])
    await h.raw(body, flags, properties)
    (dead,) = await h.dead_lettered(1)
    assert dead.body == body
    assert "unreadable message properties" in dead.headers[DEAD_REASON]
    assert h.service.ran == []


@case
async def reply_to_not_utf8(h: Harness) -> None:
    await unreadable(h, CORRELATION_ID | REPLY_TO, shortstr(b"c1") + shortstr(b"amq.gen-\xff"))


@case
async def correlation_id_not_utf8(h: Harness) -> None:
    reply_to = h.reply_queue.name.encode()
    await unreadable(h, CORRELATION_ID | REPLY_TO, shortstr(b"\xfe\xff") + shortstr(reply_to))


@case
async def header_name_not_utf8(h: Harness) -> None:
    await unreadable(h, HEADERS, table(shortstr(b"mm-\xffdeadline") + b"S" + struct.pack(">I", 0)))


@case
async def header_timestamp_out_of_range(h: Harness) -> None:
    # (A field of an unknown type can't be sent: the broker closes the publisher's connection.)
    await unreadable(h, HEADERS, table(shortstr(b"when") + b"T" + struct.pack(">Q", 2**63)))


@case
async def headers_nested_past_the_recursion_limit(h: Harness) -> None:
    nested = b"V"
    for _ in range(3000):
        nested = b"F" + table(shortstr(b"n") + nested)
    await unreadable(h, HEADERS, table(shortstr(b"deep") + nested))


@case
async def header_value_not_utf8(h: Harness) -> None:
    # pamqp reads such a long string as bytes, and can't write bytes back: the dead letter
    # (no reply_to here) must still be published, with the same bytes.
    value = b"\xff\xfe not text"
    entry = shortstr(b"blob") + b"S" + struct.pack(">I", len(value)) + value
    await h.raw(REQUEST, HEADERS, table(entry))
    (dead,) = await h.dead_lettered(1)
    assert dead.headers[DEAD_REASON] == "no reply address"
    assert bytes(dead.headers["blob"]) == value


@case
async def redelivered_with_headers_that_are_not_text(h: Harness) -> None:
    # A redelivered request is republished with its count raised: its headers must encode.
    # On a queue of its own, where bare transports take it, give it back, take it again.
    queue = h.queue + "-again"
    value = b"\xff\xfe not text"
    entry = shortstr(b"blob") + b"S" + struct.pack(">I", len(value)) + value
    properties = table(entry) + shortstr(b"c2") + shortstr(h.reply_queue.name.encode())
    waiter = h.replies["c2"] = asyncio.get_running_loop().create_future()
    transports = []
    try:
        for attempt in (1, 2):
            taken: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            transport = AmqpWorkerTransport(BROKER, WorkerOptions(queue, concurrency=1))
            transports.append(transport)
            await transport.start(lambda d, f=taken: f.done() or f.set_result(d))
            if attempt == 1:
                await h.raw(REQUEST, CORRELATION_ID | REPLY_TO | HEADERS, properties, queue)
            delivery = await asyncio.wait_for(taken, 10)
            if attempt == 1:
                await transport.aclose()  # unsettled: back to the queue, flagged redelivered
        assert transport.recounted == 1  # republished with its count raised
        assert delivery.delivery_count == 2
        assert bytes(delivery.properties.headers["blob"]) == value
        await delivery.complete(b'{"jsonrpc": "2.0", "result": 3, "id": 1}')
        assert error_code((await asyncio.wait_for(waiter, 10)).body) is None
    finally:
        for transport in transports:
            await transport.aclose()
        channel = await h.connection.channel()
        await channel.queue_delete(queue)
        await channel.queue_delete(queue + ".dead")
        await channel.queue_delete(queue + ".alive")


# --- send time and trace context --------------------------------------------------------------


def spy_taken(h: Harness) -> list[Any]:
    """The deliveries the worker takes from now on (their `sent` and `trace`)."""
    seen: list[Any] = []
    taken = h.worker.observer.taken

    def spy(delivery: Any) -> Any:
        seen.append(delivery)
        return taken(delivery)

    h.worker.observer.taken = spy  # type: ignore[method-assign]
    return seen


@case
async def malformed_trace_context(h: Harness) -> None:
    seen = spy_taken(h)
    bad = [
        "not a traceparent",
        "00-" + "0" * 32 + "-b7ad6b7169203331-01",  # all-zero trace id
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # version ff
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",  # upper case
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",  # 00 with a tail
        "x" * 5000,
    ]
    for value in bad:
        reply = await h.send(REQUEST, headers={"traceparent": value, "tracestate": "a=b"})
        assert error_code(reply) is None, value
    await h.publish(REQUEST, headers={"traceparent": bytearray(b"\xff\xfe")})  # not text at all
    await h.quiet()
    await until(lambda: len(seen) == len(bad) + 1, what="all taken")
    assert all(delivery.trace is None for delivery in seen)
    # A good traceparent with a tracestate that is not printable: the state alone goes.
    good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    reply = await h.send(REQUEST, headers={"traceparent": good, "tracestate": "a=\x01"})
    assert error_code(reply) is None
    assert seen[-1].trace == {"traceparent": good}


@case
async def forged_send_times(h: Harness) -> None:
    seen = spy_taken(h)
    values: list[Any] = [-5, 0, -1.0, True, "soon", "nan", "inf", bytearray(b"\xff")]
    for value in values:
        assert error_code(await h.send(REQUEST, headers={"mm-sent": value})) is None, value
    assert [delivery.sent for delivery in seen] == [None] * len(values)
    # A foreign client's timestamp property (whole seconds) is a send time.
    now = int(time.time())
    assert error_code(await h.send(REQUEST, timestamp=now)) is None
    assert seen[-1].sent == now


# --- volume ----------------------------------------------------------------------------------


@case
async def garbage_flood(h: Harness) -> None:
    before = settled(h.worker)
    for i in range(2000):
        await h.channel.default_exchange.publish(
            aio_pika.Message(b"\x00garbage %d" % i, reply_to=h.reply_queue.name), h.queue
        )
    await until(lambda: settled(h.worker) >= before + 2000, 30, "the flood settled")


# --- the test: every case above --------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
async def test_hostile_input(harness: Harness, name: str) -> None:
    await CASES[name](harness)
