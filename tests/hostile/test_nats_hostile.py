"""Hostile input over NATS, core and JetStream: raw messages from nats-py or a bare socket.

Each case sends what our client never would, straight to a worker's subject (or its stream),
and says what must come of it. After every case the worker must answer normal calls at its
full concurrency, and nothing outside its own queue may have changed: a canary queue's
stream (another service's requests) keeps its messages, and no message reaches the canary's
subjects. Talks to the shared NATS server; every name is unique to the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import nats
import nats.errors
import nats.js.errors
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.msg import Msg
from nats.js import api

from micromessaging import AsyncClient, ErrorCode, Worker
from micromessaging.transports.nats import compat
from micromessaging.transports.nats.wire import (
    DEADLINE,
    DELIVERY_COUNT,
    REASON,
    REPLY_TO,
    SENT,
    dead_letter_stream_name,
    dead_letter_subject,
    stream_name,
)

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

NATS_URL = ""
"""The session's NATS server (conftest's `nats_url`: the shared one, or one of the suite's own)."""
HOST = "127.0.0.1"
PORT = 0


@pytest.fixture(autouse=True)
def _server(nats_url: str) -> None:
    global NATS_URL, HOST, PORT
    NATS_URL = nats_url
    HOST = urlsplit(nats_url).hostname or "127.0.0.1"
    PORT = urlsplit(nats_url).port or 4222


AUTO = "auto"
"""`Harness.send`'s default reply address: a fresh inbox of the test's own, awaited."""


@dataclass
class StreamState:
    messages: int
    first_seq: int
    last_seq: int


class Harness:
    """A worker of a unique queue, a raw nats-py connection beside it, and a canary queue."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.jetstream = mode == "jetstream"
        self.url = NATS_URL + ("?jetstream=1&ack_wait=2" if self.jetstream else "")
        self.queue = f"mm-hostile-{uuid.uuid4().hex[:10]}"
        self.canary = f"mm-canary-{uuid.uuid4().hex[:10]}"
        self.service = Gauge()
        self.dead: list[Msg] = []
        self.spied: list[Msg] = []

    async def start(self, stack: contextlib.AsyncExitStack) -> None:
        self.nc = await nats.connect(NATS_URL)
        stack.push_async_callback(self.nc.close)
        self.js = self.nc.jetstream()
        stack.push_async_callback(self._delete_streams)
        # The canary: another service's stream holding three requests nobody has taken.
        await self.js.add_stream(
            api.StreamConfig(
                name=stream_name(self.canary),
                subjects=[self.canary],
                retention=api.RetentionPolicy.WORK_QUEUE,
            )
        )
        for i in range(3):
            await self.js.publish(self.canary, request(id_=i))
        for subject in (self.canary, dead_letter_subject(self.canary), self.queue + ".>"):
            await self.nc.subscribe(subject, cb=self._spy)
        if not self.jetstream:
            await self.nc.subscribe(dead_letter_subject(self.queue), cb=self._keep_dead)
        await compat.flush_in_order(self.nc)  # the SUBs first, then the PING
        self.worker = await stack.enter_async_context(
            Worker(self.service, self.url, self.queue, concurrency=CONCURRENCY)
        )
        self.client = await stack.enter_async_context(AsyncClient(self.url, self.queue, timeout=10))

    async def _spy(self, msg: Msg) -> None:
        self.spied.append(msg)

    async def _keep_dead(self, msg: Msg) -> None:
        self.dead.append(msg)

    async def _delete_streams(self) -> None:
        for queue in (self.queue, self.canary):
            for name in (stream_name(queue), dead_letter_stream_name(queue)):
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await self.js.delete_stream(name)

    # --- sending ---------------------------------------------------------------------------

    async def send(
        self,
        body: bytes,
        headers: dict[str, str] | None = None,
        reply: str | None = AUTO,
        wait: float = 5.0,
    ) -> bytes | None:
        """Send a request as a foreign client would; its reply when `reply` is AUTO."""
        inbox = self.nc.new_inbox() if reply == AUTO else reply
        sub = await self.nc.subscribe(inbox) if reply == AUTO else None
        try:
            if self.jetstream:
                headers = dict(headers or {})
                if inbox is not None:
                    headers[REPLY_TO] = inbox
                await self.js.publish(self.queue, body, headers=headers)
            else:
                await self.nc.publish(self.queue, body, reply=inbox or "", headers=headers)
            if sub is None:
                return None
            try:
                return (await sub.next_msg(timeout=wait)).data
            except nats.errors.TimeoutError:
                return None
        finally:
            if sub is not None:
                await sub.unsubscribe()

    async def raw(self, protocol: bytes) -> None:
        """Write NATS protocol bytes on a socket of our own (what nats-py would refuse)."""
        reader, writer = await asyncio.open_connection(HOST, PORT)
        try:
            await reader.readline()  # INFO
            writer.write(b'CONNECT {"verbose":false,"headers":true}\r\n' + protocol + b"PING\r\n")
            await writer.drain()
            while not (line := await asyncio.wait_for(reader.readline(), 5)).startswith(b"PONG"):
                assert not line.startswith(b"-ERR"), line
        finally:
            writer.close()
            await writer.wait_closed()

    async def dead_letters(self) -> list[tuple[bytes, dict[str, str]]]:
        """Bodies and headers of the queue's dead letters so far."""
        if not self.jetstream:
            return [(msg.data, dict(msg.headers or {})) for msg in self.dead]
        name = dead_letter_stream_name(self.queue)
        state = (await self.js.stream_info(name)).state
        if not state.messages:
            return []
        letters = []
        for seq in range(state.first_seq, state.last_seq + 1):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                stored = await self.js.get_msg(name, seq)
                letters.append((stored.data or b"", dict(stored.headers or {})))
        return letters

    # --- checking --------------------------------------------------------------------------

    async def canary_state(self) -> StreamState:
        state = (await self.js.stream_info(stream_name(self.canary))).state
        return StreamState(state.messages, state.first_seq, state.last_seq)

    async def quiet(self) -> None:
        """JetStream: every request in the queue's stream acknowledged (none to redeliver)."""
        if not self.jetstream:
            return
        name = stream_name(self.queue)

        async def empty() -> bool:
            state = (await self.js.stream_info(name)).state
            consumer = await self.js.consumer_info(name, "mm-workers")
            return state.messages == 0 and consumer.num_ack_pending == 0

        deadline = time.monotonic() + 10
        while not await empty():
            assert time.monotonic() < deadline, "the stream still holds requests"
            await asyncio.sleep(0.02)

    async def dead_lettered(self, count: int) -> list[tuple[bytes, dict[str, str]]]:
        """Wait until `count` dead letters are there; them."""
        deadline = time.monotonic() + 10
        while len(letters := await self.dead_letters()) < count:
            assert time.monotonic() < deadline, f"{len(letters)} dead letters, not {count}"
            await asyncio.sleep(0.02)
        return letters


@pytest.fixture
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    h = Harness(request.param)
    async with contextlib.AsyncExitStack() as stack:
        await h.start(stack)
        before = await h.canary_state()
        yield h
        await h.quiet()
        await full_concurrency(h.client, h.service)
        assert await h.canary_state() == before, "another queue's stream changed"
        assert not h.spied, [(m.subject, m.data[:60]) for m in h.spied]


Case = Callable[[Harness], Awaitable[None]]
CASES: dict[str, tuple[Case, tuple[str, ...]]] = {}


def case(*modes: str) -> Callable[[Case], Case]:
    def register(fn: Case) -> Case:
        CASES[fn.__name__] = (fn, modes or ("core", "jetstream"))
        return fn

    return register


# --- bodies ----------------------------------------------------------------------------------


@case()
async def not_json(h: Harness) -> None:
    assert error_code(await h.send(b"add 1 2 please")) == ErrorCode.PARSE_ERROR


@case()
async def invalid_utf8_body(h: Harness) -> None:
    assert error_code(await h.send(b'{"jsonrpc": "2.0", "method": "\xff\xfe", "id": 1}')) == (
        ErrorCode.PARSE_ERROR
    )


@case()
async def empty_body(h: Harness) -> None:
    assert error_code(await h.send(b"")) == ErrorCode.PARSE_ERROR


@case()
async def json_of_the_wrong_shape(h: Harness) -> None:
    for body in (b"42", b'"add"', b"null", b"[1, 2]", b"[]", b"{}", b'{"method": ["add"]}'):
        assert error_code(await h.send(body)) == ErrorCode.INVALID_REQUEST, body


@case()
async def deeply_nested_body(h: Harness) -> None:
    assert error_code(await h.send(b"[" * 200_000 + b"]" * 200_000)) is not None
    nested = b'{"jsonrpc": "2.0", "method": "echo", "params": ' + b"[" * 5000 + b"]" * 5000
    assert error_code(await h.send(nested + b', "id": 1}')) is not None


@case()
async def huge_body(h: Harness) -> None:
    big = "x" * 900_000
    reply = await h.send(request("echo", [big]))
    assert reply is not None
    assert orjson.loads(reply)["result"] == big


@case()
async def huge_batch(h: Harness) -> None:
    batch = b"[" + b",".join(request(id_=i) for i in range(5000)) + b"]"
    reply = await h.send(batch, wait=20)
    assert reply is not None
    assert [r["result"] for r in orjson.loads(reply)] == [3] * 5000


@case()
async def ids_of_odd_types(h: Harness) -> None:
    long_text, huge_number = b'"' + b"i" * 50_000 + b'"', b"1" + b"0" * 400
    for id_ in (b'{"a": 1}', b"[1]", b"true", b"1.5", huge_number, long_text):
        body = b'{"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": ' + id_ + b"}"
        reply = await h.send(body)
        assert reply is not None, id_[:20]
        # Answered: a result, or the error it deserves (orjson reads no integer past 64 bits).
        assert "result" in json.loads(reply) or error_code(reply) in (
            ErrorCode.INVALID_REQUEST,
            ErrorCode.PARSE_ERROR,
        )


# --- headers ---------------------------------------------------------------------------------


@case()
async def unreadable_deadlines(h: Harness) -> None:
    # An unreadable deadline counts as none: the request runs.
    for value in ("soon", "-5", "0", "NaN", "inf", "1e400", "", "0x10", "9" * 400, "é"):
        assert orjson.loads(await h.send(REQUEST, {DEADLINE: value}) or b"{}") == {
            "jsonrpc": "2.0",
            "result": 3,
            "id": 1,
        }, value


@case()
async def deadline_passed(h: Harness) -> None:
    before = h.worker.stats.expired
    past = str(int((time.time() - 5) * 1000))
    assert await h.send(request("record", ["late"]), {DEADLINE: past}, wait=0.5) is None
    if h.jetstream:
        await h.quiet()  # acknowledged by the transport as it came, unrun
    else:
        await until(lambda: h.worker.stats.expired == before + 1)
    assert "late" not in h.service.ran


@case()
async def forged_counts_that_would_lower_it(h: Harness) -> None:
    # A core caller may raise its own request's count, never lower it below the truth (1);
    # JetStream counts deliveries itself and ignores the header.
    for value in ("0", "-3", "abc", "1.5", "", "-99999999999999999999"):
        assert error_code(await h.send(REQUEST, {DELIVERY_COUNT: value})) is None, value
    assert h.worker.stats.dead_lettered == 0


@case("core")
async def forged_count_past_the_limit(h: Harness) -> None:
    reply = await h.send(request("record", ["poison"]), {DELIVERY_COUNT: "9" * 30})
    assert error_code(reply) == ErrorCode.DELIVERY_LIMIT  # only against itself
    assert "poison" not in h.service.ran
    ((_, headers),) = await h.dead_lettered(1)
    assert "delivered" in headers[REASON]


@case("jetstream")
async def forged_count_is_ignored_by_jetstream(h: Harness) -> None:
    assert error_code(await h.send(REQUEST, {DELIVERY_COUNT: "9" * 30})) is None


@case()
async def our_own_status_headers_on_a_request(h: Harness) -> None:
    headers = {"Mm-Status": "busy", "Status": "503", "Description": "Consumer Deleted"}
    assert error_code(await h.send(REQUEST, headers)) is None


@case("core")
async def undecodable_header_block(h: Harness) -> None:
    # A header block whose status line is not UTF-8, then one with a name that is not.
    inbox = h.nc.new_inbox()
    sub = await h.nc.subscribe(inbox)
    for block in (b"NATS/1.0 \xff\xfe\r\n\r\n", b"NATS/1.0\r\nMm-\xffDeadline: \xfe\r\n\r\n"):
        line = f"HPUB {h.queue} {inbox} {len(block)} {len(block) + len(REQUEST)}\r\n"
        await h.raw(line.encode() + block + REQUEST + b"\r\n")
        assert error_code((await sub.next_msg(timeout=5)).data) is None
    await sub.unsubscribe()


@case("core")
async def header_blocks_in_other_forms(h: Harness) -> None:
    # Forms another client may write, which our plain-form reader leaves to nats-py: each is
    # read as nats-py reads it, so a passed deadline in any of them is honoured.
    inbox = h.nc.new_inbox()
    sub = await h.nc.subscribe(inbox)
    past = str(int((time.time() - 5) * 1000)).encode()
    late = (
        b"NATS/1.0\r\nMm-Deadline:" + past + b"\r\n\r\n",
        b"NATS/1.0\r\nMm-Deadline:\t" + past + b"\r\n\r\n",
        b"NATS/1.0\r\nMm-Deadline:   " + past + b"  \r\n\r\n",
        b"NATS/1.0\r\nX-Name: \xc3\xa9\r\nMm-Deadline: " + past + b"\r\n\r\n",
        b"NATS/1.0\r\nX-Name: 1\r\n\r\nMm-Deadline: " + past + b"\r\n\r\n",
        b"NATS/1.0\r\nMm-Deadline: 99999999999999\r\nMm-Deadline: " + past + b"\r\n\r\n",
    )
    before = h.worker.stats.expired
    for block in late:
        line = f"HPUB {h.queue} {inbox} {len(block)} {len(block) + len(REQUEST)}\r\n"
        await h.raw(line.encode() + block + REQUEST + b"\r\n")
    await until(lambda: h.worker.stats.expired == before + len(late), what="all expired")
    with pytest.raises(nats.errors.TimeoutError):
        await sub.next_msg(timeout=0.2)
    # And these are answered: a future deadline in an odd form, names it does not know.
    future = str(int((time.time() + 60) * 1000)).encode()
    for block in (
        b"NATS/1.0\r\nMm-Deadline:" + future + b"\r\n\r\n",
        b"NATS/1.0\r\nmm-deadline: " + past + b"\r\n\r\n",  # not our name: no deadline
        b"NATS/1.0\r\nMm-Deadline: " + past + b"\r\nMm-Deadline: " + future + b"\r\n\r\n",
        b"NATS/1.0\r\nX: \xff\xfe\r\nY:\r\n\r\n",
    ):
        line = f"HPUB {h.queue} {inbox} {len(block)} {len(block) + len(REQUEST)}\r\n"
        await h.raw(line.encode() + block + REQUEST + b"\r\n")
        assert error_code((await sub.next_msg(timeout=5)).data) is None, block
    await sub.unsubscribe()


# --- reply addresses -------------------------------------------------------------------------


async def refused(h: Harness, reply: str) -> None:
    """A request naming `reply` is dead-lettered with the reason, and nothing is published."""
    body = request("record", [reply])
    if h.jetstream:
        await h.js.publish(h.queue, body, headers={REPLY_TO: reply})
    else:
        await h.nc.publish(h.queue, body, reply=reply)
    ((letter, headers),) = await h.dead_lettered(1)
    assert letter == body
    assert "reply subject" in headers[REASON], headers
    assert reply not in h.service.ran  # not run: nobody may have its answer


@case()
async def reply_purges_another_stream(h: Harness) -> None:
    await refused(h, f"$JS.API.STREAM.PURGE.{stream_name(h.canary)}")


@case()
async def reply_deletes_another_stream(h: Harness) -> None:
    await refused(h, f"$JS.API.STREAM.DELETE.{stream_name(h.canary)}")


@case()
async def reply_to_the_system_account(h: Harness) -> None:
    await refused(h, "$SYS.REQ.SERVER.PING")


@case()
async def reply_to_another_services_queue(h: Harness) -> None:
    await refused(h, h.canary)


@case()
async def reply_to_another_queues_dead_letters(h: Harness) -> None:
    await refused(h, dead_letter_subject(h.canary))


@case()
async def reply_to_its_own_queue(h: Harness) -> None:
    await refused(h, h.queue + ".again")


@case()
async def reply_with_wildcards(h: Harness) -> None:
    await refused(h, "_INBOX.*")


@case()
async def reply_too_long(h: Harness) -> None:
    await refused(h, "_INBOX." + "x" * 300)


@case()
async def reply_not_ascii(h: Harness) -> None:
    await refused(h, "_INBOX.réponse")


@case("jetstream")
async def reply_with_spaces(h: Harness) -> None:
    await refused(h, "reply with space")  # used to fail before the ack: redelivered for ever


@case("jetstream")
async def reply_empty(h: Harness) -> None:
    await h.js.publish(h.queue, REQUEST, headers={REPLY_TO: ""})
    ((_, headers),) = await h.dead_lettered(1)
    assert headers[REASON] == "no reply address"


@case()
async def reply_missing(h: Harness) -> None:
    await h.send(REQUEST, reply=None)
    ((_, headers),) = await h.dead_lettered(1)
    assert headers[REASON] == "no reply address"


@case("core")
async def reply_not_utf8(h: Harness) -> None:
    # nats-py can't even decode this reply subject: it used to stop reading for good.
    line = f"PUB {h.queue} _INBOX.\xff\xfe {len(REQUEST)}\r\n".encode("latin-1")
    await h.raw(line + REQUEST + b"\r\n")
    ((_, headers),) = await h.dead_lettered(1)
    assert "reply subject" in headers[REASON]


@case("jetstream")
async def reply_header_not_utf8(h: Harness) -> None:
    # Stored as sent (raw bytes on a socket): the header reads as U+FFFD, not an inbox.
    block = b"NATS/1.0\r\n" + REPLY_TO.encode() + b": _INBOX.\xff\xfe\r\n\r\n"
    line = f"HPUB {h.queue} {len(block)} {len(block) + len(REQUEST)}\r\n"
    await h.raw(line.encode() + block + REQUEST + b"\r\n")
    ((_, headers),) = await h.dead_lettered(1)
    assert "reply subject" in headers[REASON]


@case("jetstream")
async def two_reply_headers(h: Harness) -> None:
    # Whichever of the two nats-py keeps, it is checked: the hostile one is refused.
    hostile = f"$JS.API.STREAM.PURGE.{stream_name(h.canary)}"
    for first, second in ((hostile, "_INBOX.fine"), ("_INBOX.fine", hostile)):
        block = f"NATS/1.0\r\n{REPLY_TO}: {first}\r\n{REPLY_TO}: {second}\r\n\r\n".encode()
        line = f"HPUB {h.queue} {len(block)} {len(block) + len(REQUEST)}\r\n"
        await h.raw(line.encode() + block + REQUEST + b"\r\n")
    await until(lambda: settled(h.worker) >= 2, what="both settled")


@case()
async def notification_with_a_hostile_reply(h: Harness) -> None:
    # Owes no reply: it runs, and nothing is published anywhere.
    body = b'{"jsonrpc": "2.0", "method": "record", "params": ["note"]}'
    hostile = f"$JS.API.STREAM.PURGE.{stream_name(h.canary)}"
    if h.jetstream:
        await h.js.publish(h.queue, body, headers={REPLY_TO: hostile})
    else:
        await h.nc.publish(h.queue, body, reply=hostile)
    await until(lambda: "note" in h.service.ran, what="the notification ran")
    assert await h.dead_letters() == []


@case()
async def hundreds_of_headers(h: Harness) -> None:
    headers = {f"X-Junk-{i}": "v" * 100 for i in range(500)}
    assert error_code(await h.send(REQUEST, headers)) is None


@case("jetstream")
async def dead_letter_stream_deleted(h: Harness) -> None:
    # Unlucky rather than hostile: an operator deleted the dead-letter stream. Dead letters
    # must not retry for ever, each holding a slot: the stream is made again.
    await h.js.delete_stream(dead_letter_stream_name(h.queue))
    for _ in range(CONCURRENCY + 1):
        await h.js.publish(h.queue, REQUEST, headers={REPLY_TO: "not an inbox"})
    letters = await h.dead_lettered(CONCURRENCY + 1)
    assert all("reply subject" in headers[REASON] for _, headers in letters)


@case()
async def malformed_trace_context_and_send_time(h: Harness) -> None:
    # Dropped, never passed on and never fatal: the call is answered as if they were absent.
    seen: list[tuple[object, object]] = []
    taken = h.worker.observer.taken

    def spy(delivery):  # type: ignore[no-untyped-def]
        seen.append((delivery.sent, delivery.trace))
        return taken(delivery)

    h.worker.observer.taken = spy  # type: ignore[method-assign]
    try:
        for bad in (
            {"traceparent": "00-" + "0" * 32 + "-b7ad6b7169203331-01"},  # all-zero trace id
            {"traceparent": "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
            {"traceparent": "not a traceparent", "tracestate": "x=1"},
            {"traceparent": "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01"},
            {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra"},
            {SENT: "yesterday"},
            {SENT: "-5"},
            {SENT: "1e400"},
        ):
            assert error_code(await h.send(REQUEST, bad)) is None, bad
    finally:
        h.worker.observer.taken = taken  # type: ignore[method-assign]
    assert len(seen) == 8
    assert all(trace is None for _, trace in seen)
    assert all(sent is None for sent, _ in seen[5:])


# --- volume ----------------------------------------------------------------------------------


@case()
async def garbage_flood(h: Harness) -> None:
    before = settled(h.worker)
    inbox = h.nc.new_inbox()
    sub = await h.nc.subscribe(inbox, max_msgs=0)
    for i in range(2000):
        if h.jetstream:
            await h.nc.publish(h.queue, b"\x00garbage %d" % i, headers={REPLY_TO: inbox})
        else:
            await h.nc.publish(h.queue, b"\x00garbage %d" % i, reply=inbox)
    await h.nc.flush()
    # Core workers bounce what exceeds their backlog (the raw caller is told "busy").
    if h.jetstream:
        await until(lambda: settled(h.worker) >= before + 2000, 30, "the flood settled")
    await sub.unsubscribe()


# --- the test: every case above, in each mode it applies to -----------------------------


@pytest.mark.parametrize(
    ("harness", "name"),
    [(mode, name) for name, (_, modes) in sorted(CASES.items()) for mode in modes],
    indirect=["harness"],
)
async def test_hostile_input(harness: Harness, name: str) -> None:
    await CASES[name][0](harness)


def test_reply_subject_rule() -> None:
    from micromessaging.transports.nats.wire import reply_subject_refusal

    for fine in ("_INBOX.abc", "_INBOX.a1b2.c3-d_4.5", "_MY.x.y"):
        assert reply_subject_refusal(fine, "_MY") is None, fine
    for bad, why in {
        "$JS.API.STREAM.PURGE.MM_calc": "inbox prefix",
        "$SYS.REQ.SERVER.PING": "inbox prefix",
        "calc": "inbox prefix",
        "_INBOX": "inbox prefix",
        "_INBOX.": "empty token",
        "_INBOX..x": "empty token",
        "_INBOX.*": "wildcard",
        "_INBOX.a.>": "wildcard",
        "_INBOX.a b": "printable ASCII",
        "_INBOX.a\tb": "printable ASCII",
        "_INBOX.\udcff": "printable ASCII",
        "_INBOX.é": "printable ASCII",
        "_INBOX." + "x" * 300: "longer than",
        "_OTHER.x": "inbox prefix",
    }.items():
        reason = reply_subject_refusal(bad, "_MY")
        assert reason is not None and why in reason, (bad, reason)


_SUBJECT_PARTS = st.sampled_from(
    ["_INBOX", "_MY", "my.box", ".", "..", "a", "Z9", "-_", "*", ">", " ", "\t", "$", "é", "\udcff",
     "x" * 120, "~!", "\x7f", "\r\n"]
)  # fmt: skip


@given(st.lists(_SUBJECT_PARTS, max_size=8).map("".join), st.sampled_from(["_MY", "my.box"]))
@settings(max_examples=1000, deadline=None)
def test_the_one_match_for_inboxes_accepts_what_the_reply_subject_rule_accepts(
    subject: str, prefix: str
) -> None:
    from micromessaging.transports.nats.wire import (
        REPLY_SUBJECT_LIMIT,
        inbox_pattern,
        reply_subject_refusal,
    )

    matched = len(subject) <= REPLY_SUBJECT_LIMIT and inbox_pattern(prefix).fullmatch(subject)
    assert bool(matched) == (reply_subject_refusal(subject, prefix) is None), subject


# --- header blocks: the plain form read without nats-py's parser -----------------------------


def nats_py_reads(block: bytes) -> dict[str, str] | None:
    """What nats-py's own parser makes of `block` (the reference for our plain-form reader)."""
    from nats.aio.client import Client as NatsPy

    return asyncio.run(NatsPy()._process_headers(block))


def test_plain_header_blocks_are_read_as_nats_py_reads_them() -> None:
    from micromessaging.transports.nats.wire import read_plain_headers, request_headers

    written = [
        b"NATS/1.0\r\nMm-Deadline: 1796218864787\r\nMm-Sent: 1796218854787\r\n\r\n",
        b"NATS/1.0\r\nA: \r\n\r\n",
        b"NATS/1.0\r\nA: 1\r\nA: 2\r\n\r\n",  # the last one wins, as in nats-py
        b"NATS/1.0\r\nX: a: b\r\nY: a\nb\r\n\r\n",  # a colon, a lone LF inside a value
        b"NATS/1.0\r\n!#$%&'*+-.^_`|~09az: v\r\n\r\n",
        b"NATS/1.0\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n",
    ]
    for block in written:
        assert read_plain_headers(block) is not None, block
        assert read_plain_headers(block) == nats_py_reads(block), block
    headers = request_headers(time.time() + 10)
    block = b"NATS/1.0\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items())
    assert read_plain_headers(block + b"\r\n") == headers


@given(
    st.sampled_from([b"Mm-Deadline", b"Mm-Sent", b"mm-deadline", b"Mm-Deadline "]),
    st.sampled_from([b"Mm-Sent", b"Mm-Deadline", b"Mm-Sent:"]),
    st.from_regex(rb"\A[0-9 ]{0,18}\Z"),
    st.from_regex(rb"\A[0-9]{0,17}\Z"),
)
@settings(max_examples=300, deadline=None)
def test_request_blocks_are_read_as_nats_py_reads_them(
    first: bytes, second: bytes, deadline: bytes, sent: bytes
) -> None:
    """The one-match reading of the block our clients send, around its edges: other names,
    leading zeros, numbers too long for it, spaces."""
    from micromessaging.transports.nats.wire import read_plain_headers

    block = b"NATS/1.0\r\n%s: %s\r\n%s: %s\r\n\r\n" % (first, deadline, second, sent)
    plain = read_plain_headers(block)
    if plain is not None:
        assert plain == nats_py_reads(block), block


@given(
    st.none() | st.floats(-1e3, 4e12),
    st.none() | st.just({"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}),
    st.floats(0, 4e12),
    st.integers(1, 5),
)
def test_a_request_block_is_the_block_of_its_headers(
    deadline: float | None, trace: dict[str, str] | None, sent: float, count: int
) -> None:
    from micromessaging.transports.nats.wire import (
        DELIVERY_COUNT,
        header_block,
        read_plain_headers,
        request_block,
        request_headers,
    )

    headers = request_headers(deadline, trace, sent)  # type: ignore[arg-type]
    if count > 1:
        headers[DELIVERY_COUNT] = str(count)
    block = request_block(deadline, trace, sent, count)  # type: ignore[arg-type]
    assert block == header_block(headers)
    assert read_plain_headers(block) == headers


def test_other_header_blocks_are_left_to_nats_py() -> None:
    from micromessaging.transports.nats.wire import read_plain_headers

    for block in (
        b"",
        b"NATS/1.0\r\n\r\n",
        b"NATS/1.0 503\r\n\r\n",
        b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Stream: 1\r\n\r\n",
        b"NATS/1.0\r\nA:1\r\n\r\n",  # no space after the colon
        b"NATS/1.0\r\nA:\t1\r\n\r\n",
        b"NATS/1.0\r\nA:  1\r\n\r\n",
        b"NATS/1.0\r\nA: 1 \r\n\r\n",
        b"NATS/1.0\r\nA : 1\r\n\r\n",
        b"NATS/1.0\r\n A: 1\r\n\r\n",
        b"NATS/1.0\r\nA B: 1\r\n\r\n",
        b"NATS/1.0\r\nA: \xc3\xa9\r\n\r\n",  # UTF-8 (nats-py decodes it, replacing errors)
        b"NATS/1.0\r\nA: \xff\r\n\r\n",
        b"NATS/1.0\r\nMm-\xffDeadline: 1\r\n\r\n",
        b"NATS/1.0\r\nA: 1\r\n\r\nB: 2\r\n\r\n",  # a blank line inside
        b"NATS/1.0\r\nA: 1\r\n",  # unterminated
        b"NATS/1.0\r\nA: 1\r\r\n\r\n",
        b"NATS/1.0\r\nno colon\r\n\r\n",
        b"NATS/1.1\r\nA: 1\r\n\r\n",
        b"nats/1.0\r\nA: 1\r\n\r\n",
    ):
        assert read_plain_headers(block) is None, block


_NAMES = st.sampled_from([b"A", b"Mm-Deadline", b"mm-deadline", b"X y", b"\xff", b"", b"a:b"])
_VALUES = st.binary(max_size=8) | st.lists(
    st.sampled_from([b"1", b" ", b"\t", b":", b"\r", b"\n", b"\xc3\xa9", b"\xff"])
).map(b"".join)
_LINES = st.tuples(_NAMES, st.sampled_from([b": ", b":", b" : ", b""]), _VALUES).map(b"".join)


@given(
    st.sampled_from([b"NATS/1.0\r\n", b"NATS/1.0 ", b"NATS/1.0 503\r\n", b""]),
    st.lists(_LINES, max_size=4),
    st.sampled_from([b"\r\n\r\n", b"\r\n", b""]),
)
@settings(max_examples=400, deadline=None)
def test_plain_reading_never_differs_from_nats_py(
    start: bytes, lines: list[bytes], end: bytes
) -> None:
    from micromessaging.transports.nats.wire import read_plain_headers

    block = start + b"\r\n".join(lines) + end
    plain = read_plain_headers(block)
    if plain is not None:  # else nats-py's parser reads it (and our compat survives it)
        assert plain == nats_py_reads(block), block
