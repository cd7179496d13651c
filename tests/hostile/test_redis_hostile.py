"""Hostile and unlucky messages pushed raw onto a Redis queue: none wedges the worker, none
reaches a key that is not the queue's own or its caller's.

Each kind is LPUSHed with redis-py, as any producer could, onto a queue with one worker of
concurrency 4. Then: the message is settled (answered, dead-lettered or dropped, as
`expect` says), the worker still runs 4 slow calls at once (no slot was lost), and the
whole keyspace of this module's own redis-server is as it was, but for the queue's own keys
and the reply lists its callers named.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import orjson
import pytest
import redis.asyncio as aioredis
from hypothesis import example, given, settings
from hypothesis import strategies as st

from micromessaging import AsyncClient
from micromessaging.transports.redis import wire as wire

from ..brokers import RedisNode
from .common import Gauge, assert_full_concurrency, eventually, serving
from .helpers import keyspace

CONCURRENCY = 4
VICTIM = "victim-list-of-someone-else"
VICTIM_HASH = "victim-hash-of-someone-else"


@dataclass(frozen=True)
class Kind:
    """One hostile message: how to make it for a queue, and what must become of it."""

    name: str
    make: Callable[[str, str], bytes]
    """(queue, a reply list of the test's own) -> the message."""
    expect: str
    """"reply" (to the test's list), "dead" (a dead-letter record), or "nothing"."""


def body(method: str = "add", params: object = (1, 2), id_: object = "hostile-1") -> bytes:
    request: dict[str, object] = {"jsonrpc": "2.0", "method": method, "params": params}
    if id_ is not None:
        request["id"] = id_
    return json.dumps(request).encode()


def envelope(header: dict[str, object], payload: bytes | None = None) -> bytes:
    return json.dumps(header).encode() + b"\n" + (body() if payload is None else payload)


def header(to: str, **fields: object) -> dict[str, object]:
    return {"mm": 1, "reply_to": to, "cid": "hostile", **fields}


def nested(depth: int) -> bytes:
    return b"[" * depth + b"1" + b"]" * depth


def _deep_cid(to: str) -> bytes:
    # Parsed (1000 < 1024 levels), but too deep to write back into a reply: dead-lettered.
    return b'{"mm":1,"reply_to":"%s","cid":%s}\n%s' % (to.encode(), nested(1000), body())


KINDS = [
    # Not JSON, not UTF-8, not anything.
    Kind("not-json", lambda q, r: b"this is not JSON", "dead"),
    Kind("empty", lambda q, r: b"", "dead"),
    Kind("invalid-utf8", lambda q, r: b"\xff\xfe\xfa\x00garbage", "dead"),
    Kind("nul-bytes", lambda q, r: b"\x00" * 64, "dead"),
    Kind("lone-newline", lambda q, r: b"\n", "dead"),
    Kind("json-scalar", lambda q, r: b"42", "dead"),
    Kind("json-string", lambda q, r: b'"a string"', "dead"),
    Kind("empty-batch", lambda q, r: b"[]", "dead"),
    Kind("batch-of-scalars", lambda q, r: b"[1, 2, 3]", "dead"),
    Kind("truncated-envelope", lambda q, r: b'{"mm":1,"reply_to":"', "dead"),
    # Bodies that are JSON but no valid request, answered on the envelope's reply list.
    Kind("invalid-utf8-in-body", lambda q, r: envelope(header(r), b'{"method":"\xff"}'), "reply"),
    Kind("lone-surrogate", lambda q, r: envelope(header(r), body("echo", ["\\ud800"])), "reply"),
    Kind("nested-100000", lambda q, r: envelope(header(r), nested(100_000)), "reply"),
    Kind(
        "nested-params-1000",
        lambda q, r: envelope(
            header(r), b'{"jsonrpc":"2.0","method":"echo","params":[%s],"id":1}' % nested(1000)
        ),
        "reply",
    ),
    Kind("wrong-params-type", lambda q, r: envelope(header(r), body("add", "1, 2")), "reply"),
    Kind("private-method", lambda q, r: envelope(header(r), body("_secret", [])), "reply"),
    Kind("dunder-method", lambda q, r: envelope(header(r), body("__class__", [])), "reply"),
    Kind("huge-method-name", lambda q, r: envelope(header(r), body("m" * 200_000, [])), "reply"),
    Kind(
        "duplicate-keys",
        lambda q, r: envelope(
            header(r), b'{"jsonrpc":"2.0","method":"add","method":"nope","params":[1,2],"id":1}'
        ),
        "reply",
    ),
    Kind(
        "response-as-request",
        lambda q, r: envelope(header(r), b'{"jsonrpc":"2.0","result":1,"id":1}'),
        "reply",
    ),
    Kind(
        "huge-envelope-10mb",
        lambda q, r: envelope(header(r), body("echo", ["x" * (10 * 1024 * 1024)])),
        "reply",
    ),
    Kind("huge-int-id", lambda q, r: envelope(header(r), body(id_=2**64 + 1)), "reply"),
    Kind(
        "crlf-after-header", lambda q, r: json.dumps(header(r)).encode() + b"\r\n" + body(), "reply"
    ),
    # Every envelope field with the wrong type or value.
    Kind("mm-as-text", lambda q, r: envelope({**header(r), "mm": "1"}), "dead"),
    Kind("mm-true", lambda q, r: envelope({**header(r), "mm": True}), "dead"),
    Kind("mm-float", lambda q, r: envelope({**header(r), "mm": 1.0}), "dead"),
    Kind("mm-2", lambda q, r: envelope({**header(r), "mm": 2}), "dead"),
    Kind("mm-null", lambda q, r: envelope({**header(r), "mm": None}), "dead"),
    Kind("reply-to-int", lambda q, r: envelope(header(r, reply_to=7)), "dead"),
    Kind("reply-to-list", lambda q, r: envelope(header(r, reply_to=[r])), "dead"),
    Kind("reply-to-null", lambda q, r: envelope(header(r, reply_to=None)), "dead"),
    Kind("reply-to-empty", lambda q, r: envelope(header(r, reply_to="")), "dead"),
    Kind("reply-to-bare-prefix", lambda q, r: envelope(header(r, reply_to="mm:reply:")), "dead"),
    Kind("reply-to-the-queue", lambda q, r: envelope(header(r, reply_to=q)), "dead"),
    Kind("reply-to-another-list", lambda q, r: envelope(header(r, reply_to=VICTIM)), "dead"),
    Kind("reply-to-too-long", lambda q, r: envelope(header(r, reply_to=r + "x" * 600)), "dead"),
    Kind("cid-nested-300", lambda q, r: envelope(header(r, cid=json.loads(nested(300)))), "reply"),
    Kind("cid-nested-1000", lambda q, r: _deep_cid(r), "dead"),
    Kind("cid-object", lambda q, r: envelope(header(r, cid={"a": [1, None]})), "reply"),
    Kind("cid-huge-int", lambda q, r: envelope(header(r, cid=2**70)), "reply"),
    Kind("deadline-text", lambda q, r: envelope(header(r, deadline="soon")), "reply"),
    Kind("deadline-true", lambda q, r: envelope(header(r, deadline=True)), "reply"),
    Kind("deadline-negative", lambda q, r: envelope(header(r, deadline=-1)), "reply"),
    Kind("deadline-list", lambda q, r: envelope(header(r, deadline=[1])), "reply"),
    Kind("deadline-passed", lambda q, r: envelope(header(r, deadline=1)), "nothing"),
    Kind("n-zero", lambda q, r: envelope(header(r, n=0)), "dead"),
    Kind("n-negative", lambda q, r: envelope(header(r, n=-1)), "dead"),
    Kind("n-text", lambda q, r: envelope(header(r, n="2")), "dead"),
    Kind("n-float", lambda q, r: envelope(header(r, n=1.5)), "dead"),
    Kind("n-true", lambda q, r: envelope(header(r, n=True)), "dead"),
    Kind("n-forged-huge", lambda q, r: envelope(header(r, n=10**30)), "dead"),
    Kind("n-forged-over-limit", lambda q, r: envelope(header(r, n=4)), "dead"),
    Kind("header-without-body", lambda q, r: json.dumps(header(r)).encode() + b"\n", "dead"),
    Kind("header-past-4096", lambda q, r: envelope(header(r, pad="p" * 5000)), "dead"),
    # Seed form: the id names the reply list.
    Kind("seed-id-another-queue", lambda q, r: body(id_=VICTIM), "dead"),
    Kind("seed-id-a-hash", lambda q, r: body(id_=VICTIM_HASH), "dead"),
    Kind("seed-id-zero", lambda q, r: body(id_=0), "dead"),
    Kind("seed-id-our-key", lambda q, r: body(id_=r), "dead"),
    Kind("seed-id-dead-letters", lambda q, r: body(id_=wire.dead_letter_key(q)), "dead"),
    Kind("seed-id-the-queue", lambda q, r: body(id_=q), "dead"),
    Kind("seed-huge-10mb", lambda q, r: body("echo", ["x" * (10 * 1024 * 1024)], q + "-r"), "dead"),
    Kind("seed-notification", lambda q, r: body("record", ["seed"], None), "nothing"),
]


@pytest.fixture
async def redis(server: RedisNode) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(server.url)
    await client.rpush(VICTIM, b"a request someone waits for")
    await client.hset(VICTIM_HASH, "field", "value")
    yield client
    await client.flushdb()
    await client.aclose()


def test_there_are_enough_kinds() -> None:
    assert len(KINDS) >= 50
    assert len({kind.name for kind in KINDS}) == len(KINDS)


@pytest.mark.parametrize("kind", KINDS, ids=[kind.name for kind in KINDS])
async def test_a_hostile_message_neither_wedges_the_worker_nor_touches_other_keys(
    kind: Kind, server: RedisNode, redis: aioredis.Redis
) -> None:
    queue = f"q-{uuid.uuid4().hex[:10]}"
    reply_list = f"mm:reply:{queue}"
    ours = (queue.encode(), f"mm:{queue}:".encode(), reply_list.encode(), b"mm:reply:")
    ours += (wire.QUEUES_KEY.encode(),)  # the queues workers serve: this one joins it
    before = await keyspace(redis, skip=ours)
    gauge = Gauge()
    async with serving(gauge, server.url, queue, concurrency=CONCURRENCY) as worker:
        await redis.lpush(queue, kind.make(queue, reply_list))
        await eventually(lambda: _settled(redis, queue))
        dead = await redis.lrange(wire.dead_letter_key(queue), 0, -1)
        replies = await redis.lrange(reply_list, 0, -1)
        outcome = "dead" if dead else "reply" if replies else "nothing"
        assert outcome == kind.expect, (dead, replies)
        for reply in replies:
            _, answer = wire.decode_reply(reply)
            response = json.loads(answer)
            assert response["jsonrpc"] == "2.0" and ("error" in response) != ("result" in response)
        async with AsyncClient(server.url, queue, timeout=30) as client:
            await assert_full_concurrency(client, gauge, CONCURRENCY)
            assert await client.add(2, 3) == 5
        assert worker.stats.transport_errors == 0
    assert await keyspace(redis, skip=ours) == before
    assert await redis.lrange(VICTIM, 0, -1) == [b"a request someone waits for"]


async def _settled(redis: aioredis.Redis, queue: str) -> bool:
    if await redis.llen(queue):
        return False
    async for key in redis.scan_iter(match=f"mm:{queue}:processing:*"):
        if await redis.llen(key):
            return False
    return True


async def test_a_flood_of_mixed_hostile_messages_leaves_the_worker_whole(
    server: RedisNode, redis: aioredis.Redis
) -> None:
    queue = f"q-{uuid.uuid4().hex[:10]}"
    reply_list = f"mm:reply:{queue}"
    ours = (queue.encode(), f"mm:{queue}:".encode(), b"mm:reply:", wire.QUEUES_KEY.encode())
    before = await keyspace(redis, skip=ours)
    small = [kind for kind in KINDS if "10mb" not in kind.name]
    gauge = Gauge()
    async with serving(gauge, server.url, queue, concurrency=CONCURRENCY):
        for _ in range(5):
            await redis.lpush(queue, *(kind.make(queue, reply_list) for kind in small))
        await eventually(lambda: _settled(redis, queue), timeout=60)
        expected_dead = 5 * sum(kind.expect == "dead" for kind in small)
        assert await redis.llen(wire.dead_letter_key(queue)) == expected_dead
        async with AsyncClient(server.url, queue, timeout=30) as client:
            await assert_full_concurrency(client, gauge, CONCURRENCY)
    assert await keyspace(redis, skip=ours) == before
    records = await redis.lrange(wire.dead_letter_key(queue), 0, -1)
    assert all(orjson.loads(record)["reason"] for record in records)


GOOD_PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
BAD_CONTEXT: list[tuple[str, str]] = [
    # (traceparent, sent) as a hostile producer writes them into the header: raw JSON.
    ('"00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01"', '"soon"'),  # upper case
    ('"00-00000000000000000000000000000000-b7ad6b7169203331-01"', "-5"),  # zero trace id
    ('"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01"', "0"),  # zero span id
    ('"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"', "true"),  # version ff
    (f'"{GOOD_PARENT}-extra"', "null"),  # version 00 with more fields
    ('"00-' + "a" * 300 + '"', "[1]"),  # far too long
    (f'"{GOOD_PARENT}\\n"', '{"at": 1}'),  # a control character
    ('"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0\\u00e9"', '"1e999"'),
    ("12345", '"NaN"'),  # not a string
    ("null", '"12abc"'),
    ('["00", "x"]', '"-1"'),
    (f'{{"traceparent": "{GOOD_PARENT}"}}', '"Infinity"'),
]


async def test_malformed_trace_context_and_send_times_are_dropped_and_the_call_runs(
    server: RedisNode, redis: aioredis.Redis
) -> None:
    queue = f"q-{uuid.uuid4().hex[:10]}"
    reply_list = f"mm:reply:{queue}"
    seen: list[tuple[object, object]] = []
    async with serving(Gauge(), server.url, queue, concurrency=CONCURRENCY) as worker:
        taken = worker.observer.taken

        def spy(delivery):  # type: ignore[no-untyped-def]
            seen.append((delivery.sent, delivery.trace))
            return taken(delivery)

        worker.observer.taken = spy  # type: ignore[method-assign]
        start = f'{{"mm":1,"reply_to":"{reply_list}","cid":"hostile","tracestate":"a=b"'
        for parent, sent in BAD_CONTEXT:
            raw = f'{start},"traceparent":{parent},"sent":{sent}}}'
            assert isinstance(json.loads(raw), dict), raw  # a header, only its fields are bad
            await redis.lpush(queue, raw.encode() + b"\n" + body())
        # A good traceparent with a tracestate that can't be passed on: the parent alone.
        fields = {"traceparent": GOOD_PARENT, "tracestate": "x" * 600, "sent": "1733000000000"}
        await redis.lpush(queue, orjson.dumps(header(reply_list, **fields)) + b"\n" + body())
        replies = []
        for _ in range(len(BAD_CONTEXT) + 1):
            got = await redis.blpop([reply_list], timeout=10)
            assert got is not None
            replies.append(orjson.loads(wire.decode_reply(got[1])[1]))
        assert all(reply["result"] == 3 for reply in replies)  # every one ran
        assert seen[:-1] == [(None, None)] * len(BAD_CONTEXT)
        assert seen[-1] == (1733000000.0, {"traceparent": GOOD_PARENT})
        assert worker.stats.transport_errors == 0


def _reply_as_parsed(message: bytes) -> tuple[str | None, bytes]:
    """What `wire.decode_reply` must give: the reply envelope read by the JSON parser."""
    header, body = wire.split_envelope(message)
    if header is None:
        return None, message
    cid = header.get("cid")
    return (cid if isinstance(cid, str) else None), body


_CIDS = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x7F), max_size=40),
    st.from_regex(r"\A[0-9a-f]{12}\.[0-9]{1,9}\Z"),  # ours
    st.integers(min_value=1, max_value=30).map(lambda n: "c" * (wire.HEADER_LIMIT - 20 + n)),
)
_REPLY_BODIES = st.one_of(st.binary(max_size=30), st.just(b'{"jsonrpc":"2.0","result":3,"id":1}'))


@settings(max_examples=2000, deadline=None)
@given(cid=_CIDS, body=_REPLY_BODIES, cut=st.integers(min_value=0, max_value=80), raw=st.booleans())
@example(cid='a"b', body=b"{}", cut=0, raw=True)
@example(cid="a\\b", body=b"{}", cut=0, raw=True)
@example(cid="a\x01b", body=b"{}", cut=0, raw=True)
@example(cid="a\x7fb", body=b"{}", cut=0, raw=True)
@example(cid="caf\u00e9", body=b"{}", cut=0, raw=True)
@example(cid="", body=b"", cut=0, raw=False)
def test_a_reply_header_read_in_one_match_reads_as_the_parser_reads_it(
    cid: str, body: bytes, cut: int, raw: bool
) -> None:
    # The client reads the header the worker writes with one match; every message, ours or
    # not, whole or cut short, escaped or raw, gets what the JSON parser would give.
    if raw:  # written by hand: control characters and lone quotes left unescaped
        encoded = b'{"mm":1,"cid":"' + cid.encode("utf-8", "surrogatepass") + b'"}\n' + body
    else:
        encoded = wire.encode_reply(cid, body)
    for message in (encoded, encoded[: len(encoded) - cut], encoded[cut:]):
        assert wire.decode_reply(message) == _reply_as_parsed(message)
