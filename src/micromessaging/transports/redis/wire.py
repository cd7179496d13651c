"""The Redis wire format as pure functions: key names, envelopes, reply addresses.

Two forms share one request list. The seed form is a bare JSON-RPC message whose reply goes
to the list named by its id. The envelope form, written when both ends are ours, is one line
of compact JSON (the header), one LF byte, then the body. docs/wire-redis.md is the contract;
this module is its only implementation, so the worker, the client and the tests agree.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
from dataclasses import dataclass

import orjson

from ..._json import DecodeError, dumps, loads
from .._context import TRACEPARENT, decode_sent, read_trace, trace_headers
from .._shared import decode_deadline, encode_deadline
from ..base import TraceContext

VERSION = 1
HEADER_LIMIT = 4096
"""How far into a message the LF ending an envelope header is looked for."""
REPLY_PREFIX = "mm:reply:"
REPLY_TTL = 30
"""Seconds a reply list lives after its last reply: the seed's EXPIRE, so nothing leaks."""
REPLY_LIST_LIMIT = 512
"""The longest reply list name accepted from a message."""
SEED_REPLY_MINIMUM = 8
"""The shortest seed-form reply list name: an id must look like a unique name (the seed's
client sends 32 hex digits), so that `0` or `a` can't name a top-level key."""


# --- keys ------------------------------------------------------------------------------------
# On a Redis Cluster (`cluster=True`) every key of a queue carries the queue's name as its hash
# tag, `{calc}`, so that it lives in the slot of the queue's own list `calc` (whose slot is
# that of its whole name): every script and pipeline of a worker then stays in one slot. A
# client's reply list is tagged with the client's id. On one Redis the names stay untagged.

QUEUES_KEY = "mm:queues"
"""The set of the queues our workers serve or served: what ``status`` lists (one key for
the whole database, so that listing queues needs no SCAN)."""


def _tagged(name: str, cluster: bool) -> str:
    return f"{{{name}}}" if cluster else name


def cluster_refusal(name: str) -> str | None:
    """Why `name` can't be a queue (or seed-form reply list) on a Redis Cluster, or None.

    A brace in it would make Redis hash another part of the name than the tag we give its
    keys, so they would land in other slots.
    """
    if "{" in name or "}" in name:
        return f"{name[:80]!r} holds a brace, which Redis Cluster reads as a hash tag"
    return None


def dead_letter_key(queue: str, *, cluster: bool = False) -> str:
    """The list holding the records of `queue`'s dead letters."""
    return f"{_tagged(queue, cluster)}:dead"


def workers_key(queue: str, *, cluster: bool = False) -> str:
    """The set of ids of the workers registered on `queue`."""
    return f"mm:{_tagged(queue, cluster)}:workers"


def processing_key(queue: str, worker_id: str, *, cluster: bool = False) -> str:
    """The list of messages one worker has taken from `queue` and not settled."""
    return f"mm:{_tagged(queue, cluster)}:processing:{worker_id}"


def heartbeat_key(queue: str, worker_id: str, *, cluster: bool = False) -> str:
    """The key whose presence says a worker on `queue` is alive."""
    return f"mm:{_tagged(queue, cluster)}:heartbeat:{worker_id}"


def seen_key(queue: str, *, cluster: bool = False) -> str:
    """The string holding until when (ms, Redis's clock) a worker of `queue` was seen alive."""
    return f"mm:{_tagged(queue, cluster)}:seen"


def queue_keys_pattern(queue: str, *, cluster: bool = False) -> str:
    """The SCAN pattern matching every key of ours for `queue` (the queue list and the
    dead-letter list aside)."""
    name = _tagged(queue, cluster)
    return "mm:" + "".join("\\" + c if c in "*?[]\\" else c for c in name) + ":*"


def queue_of_workers_key(key: str) -> str | None:
    """The queue a `workers_key` names, or None when `key` is not one."""
    if key.startswith("mm:") and key.endswith(":workers") and len(key) > 11:
        return key[3:-8]
    return None


def queue_of_dead_letter_key(key: str) -> str | None:
    """The queue a `dead_letter_key` names, or None when `key` is not one."""
    return key[:-5] if key.endswith(":dead") and len(key) > 5 else None


def reply_key(client_id: str, *, cluster: bool = False) -> str:
    """The one list all of a client's replies go to."""
    return f"{REPLY_PREFIX}{_tagged(client_id, cluster)}"


def shard_queue(queue: str, shard: int) -> str:
    """The list of shard `shard` of a queue spread over several (``?shards=N``): shard 0 is
    the queue itself, so that clients that don't shard (the seed's) are served too."""
    return queue if shard == 0 else f"{queue}:shard:{shard}"


# --- envelopes -------------------------------------------------------------------------------


def split_envelope(message: bytes) -> tuple[dict[str, object] | None, bytes]:
    """The header (None for the seed form) and the body of a message taken from a queue.

    A message is an envelope when its first line, within `HEADER_LIMIT` bytes, is a JSON
    object with an "mm" key and more bytes follow the LF. A bare JSON-RPC message can't be
    mistaken for one: JSON text never holds a raw LF inside a string, so a first line that is
    a whole object can only be followed by whitespace in a single JSON document.
    """
    if message[:1] != b"{":
        return None, message
    end = message.find(b"\n", 0, HEADER_LIMIT)
    if end < 0 or end == len(message) - 1:
        return None, message
    try:
        header = loads(message[:end])  # exact: a cid of any size comes back as it went
    except DecodeError:
        return None, message
    if type(header) is not dict or "mm" not in header:
        return None, message
    return header, message[end + 1 :]


def encode_request(
    body: bytes,
    reply_to: str | None,
    cid: str | None,
    deadline: float | None,
    sent: float | None = None,
    trace: TraceContext | None = None,
) -> bytes:
    """An envelope around `body`; `deadline` and `sent` are in seconds since the epoch."""
    header: dict[str, object] = {"mm": VERSION}
    if reply_to is not None:
        header["reply_to"] = reply_to
    if cid is not None:
        header["cid"] = cid
    if deadline is not None:
        header["deadline"] = encode_deadline(deadline)
    if sent is not None:
        header["sent"] = encode_deadline(sent)
    header.update(trace_headers(trace))
    return orjson.dumps(header) + b"\n" + body


def request_prefix(reply_to: str) -> bytes:
    """The constant start of every request header one client sends (a hot path)."""
    return orjson.dumps({"mm": VERSION, "reply_to": reply_to})[:-1] + b',"cid":"'


def encode_request_fast(
    prefix: bytes,
    cid: str,
    deadline: float,
    sent: float,
    body: bytes,
    trace: TraceContext | None = None,
) -> bytes:
    """`encode_request` for ids we made ourselves (no character needs escaping)."""
    extra = b""
    if trace:
        headers = trace_headers(trace)
        if headers:
            extra = b"," + orjson.dumps(headers)[1:-1]
    return b'%s%s","deadline":%d,"sent":%d%s}\n%s' % (
        prefix, cid.encode(), encode_deadline(deadline), encode_deadline(sent), extra, body,
    )  # fmt: skip


def encode_reply(cid: object, body: bytes) -> bytes:
    """The reply envelope carrying `body` back to the caller that sent `cid`.

    `TypeError` for a cid that can't be written back: `read_header` refuses those.
    """
    return dumps({"mm": VERSION, "cid": cid}) + b"\n" + body


_REPLY_HEADER = re.compile(rb'\{"mm":%d,"cid":"([ !#-\[\]-~]*)"\}\n' % VERSION)
"""The header `encode_reply` writes for a cid of printable ASCII without a quote or a
backslash (every cid our clients make): such a string reads the same raw as parsed."""


def decode_reply(message: bytes) -> tuple[str | None, bytes]:
    """The correlation id and body of a reply envelope; (None, message) when it is none."""
    # The usual header in one match, where parsing it cost a reply a JSON read of its own.
    usual = _REPLY_HEADER.match(message)
    if usual is not None and len(message) > usual.end() <= HEADER_LIMIT:
        return usual[1].decode("ascii"), message[usual.end() :]
    header, body = split_envelope(message)
    if header is None:
        return None, message
    cid = header.get("cid")
    return (cid if isinstance(cid, str) else None), body


@dataclass(slots=True)
class Envelope:
    """What a worker reads from a request header."""

    has_reply_to: bool
    """Whether the header has a reply_to field at all (absent: reply the seed way)."""
    reply_to: str | None
    """The list the reply goes to; None when the header names no usable one."""
    refusal: str | None
    """Why the header's reply_to can't be used, when it can't."""
    cid: object
    deadline: float | None
    count: int
    sent: float | None = None
    """When the client sent the request (seconds since the epoch), when it says."""
    trace: TraceContext | None = None
    """The caller's W3C trace context, when well formed (`_context.read_trace`)."""


def read_header(header: dict[str, object], queue: str) -> Envelope:
    """Check a request header; `ValueError` naming the problem when it is malformed."""
    version = header.get("mm")
    if version != VERSION or type(version) is not int:
        raise ValueError(f"unsupported envelope version {version!r}")
    deadline = decode_deadline(header.get("deadline"))
    count = header.get("n", 1)
    if type(count) is not int or count < 1:
        raise ValueError(f"n must be a positive integer, not {count!r}")
    cid = header.get("cid")
    if type(cid) is not str:
        try:
            dumps(cid)
        except TypeError:  # nested deeper than a writer follows: it could not go back
            raise ValueError("the cid can't be written back into a reply") from None
    reply_to = header.get("reply_to")
    sent = decode_sent(header.get("sent"))
    trace = read_trace(header) if TRACEPARENT in header else None
    if (
        type(reply_to) is str
        and reply_to.startswith(REPLY_PREFIX)
        and len(REPLY_PREFIX) < len(reply_to) <= REPLY_LIST_LIMIT
        and reply_to != queue
    ):  # the usual case, checked quickly
        return Envelope(True, reply_to, None, cid, deadline, count, sent, trace)
    if "reply_to" not in header:
        return Envelope(False, None, None, cid, deadline, count, sent, trace)
    refusal = envelope_reply_refusal(reply_to, queue)
    usable = reply_to if refusal is None else None
    return Envelope(True, usable, refusal, cid, deadline, count, sent, trace)  # type: ignore[arg-type]


def read_sent(header: dict[str, object] | None) -> float | None:
    """The send time a request header carries (seconds since the epoch), or None."""
    return decode_sent(header.get("sent")) if header is not None else None


# --- reply addresses -------------------------------------------------------------------------


def seed_reply_list(body: bytes) -> str | None:
    """The list a seed-form message's reply goes to: the name its id spells.

    This is the one place the transport reads a JSON-RPC body, because the seed's wire
    format puts the reply address there. A batch replies to the list of its first id.
    None when the body is not JSON or carries no string or integer id. Integers of any size
    are read exactly, as the seed's Ruby server reads them.
    """
    try:
        obj = loads(body)
    except DecodeError:
        return None
    if type(obj) is list:
        obj = next((item for item in obj if type(item) is dict and "id" in item), None)
    if type(obj) is not dict:
        return None
    id_ = obj.get("id")
    if type(id_) is str:
        return id_
    if type(id_) is int:
        return str(id_)  # what the seed's Ruby server names the list, too
    return None


def seed_reply_refusal(name: str, queue: str) -> str | None:
    """Why a seed-form reply must not go to list `name`, judged by the name alone, or None.

    Replies must never land on a request queue: a response there is an invalid request,
    whose error reply would go to the same id again, for ever. Our own keys (mm:) and
    dead-letter lists are refused too, and names too short to be unique. What the name
    holds in Redis is checked there (`scripts.CHECK_REPLY_LIST`, `seed_reply_unsafe`).
    """
    if not name:
        return "the reply list name (the request id) is empty"
    if len(name) < SEED_REPLY_MINIMUM:
        return (
            f"the reply list name {name!r} is shorter than {SEED_REPLY_MINIMUM} characters: "
            "a request id must be a unique name"
        )
    if len(name) > REPLY_LIST_LIMIT:
        return f"the reply list name is longer than {REPLY_LIST_LIMIT} characters"
    if name == queue:
        return f"the reply list {name!r} is the request queue itself"
    if name.startswith("mm:"):
        return f"the reply list {name[:80]!r} is in micromessaging's own mm: key space"
    if name.endswith(":dead"):
        return f"the reply list {name[:80]!r} is a dead-letter list"
    return None


def seed_reply_unsafe(name: str, refusal: bytes | str) -> str:
    """The reason for a refusal the reply list check script returned (`scripts`)."""
    text = refusal.decode(errors="replace") if isinstance(refusal, bytes) else refusal
    return f"the reply list {name[:80]!r} {text}: not a reply list of the seed form"


def envelope_reply_refusal(reply_to: object, queue: str) -> str | None:
    """Why an envelope's reply_to can't be used, or None when it can."""
    if not isinstance(reply_to, str) or not reply_to:
        return f"reply_to must be a non-empty string, not {reply_to!r}"
    if not reply_to.startswith(REPLY_PREFIX) or len(reply_to) == len(REPLY_PREFIX):
        return f"reply_to {reply_to[:80]!r} is not a reply list ({REPLY_PREFIX}...)"
    if len(reply_to) > REPLY_LIST_LIMIT:
        return f"reply_to is longer than {REPLY_LIST_LIMIT} characters"
    if reply_to == queue:
        return "reply_to is the request queue itself"
    return None


# --- dead letters ----------------------------------------------------------------------------


def dead_letter_record(
    queue: str, worker_id: str, reason: str, header: dict[str, object] | None, body: bytes
) -> bytes:
    """The JSON record pushed onto the dead-letter list for one message."""
    record: dict[str, object] = {
        "id": secrets.token_hex(8),
        "queue": queue,
        "reason": reason,
        "worker": worker_id,
        "at": int(time.time() * 1000),
        "header": header,
    }
    try:
        record["body"] = body.decode()
    except UnicodeDecodeError:
        record["body_base64"] = base64.b64encode(body).decode()
    try:
        return dumps(record)
    except TypeError:  # a header nested too deeply to write back: the body is what matters
        record["header"] = None
        return dumps(record)


def dead_letter_body(record: bytes) -> bytes:
    """The original body kept in a dead-letter record."""
    obj = orjson.loads(record)
    if "body" in obj:
        return str(obj["body"]).encode()
    return base64.b64decode(obj["body_base64"])


@dataclass(slots=True)
class DeadRecord:
    """A dead-letter record read back (`read_dead_letter`)."""

    id: str
    record: bytes
    """The record exactly as it sits in the list (to remove it by value)."""
    reason: str
    deliveries: int
    at: float
    """Seconds since the epoch."""
    header: dict[str, object] | None
    body: bytes | None
    """None when the record can't be read: it can be purged, not replayed."""
    worker: str | None


def read_dead_letter(record: bytes) -> DeadRecord:
    """A record of the dead-letter list, whatever wrote it; its id is the one it carries,
    else (records of older versions, or of other writers) one derived from its bytes."""
    derived = hashlib.sha1(record).hexdigest()[:16]
    try:
        obj = loads(record)
        if type(obj) is not dict:
            raise DecodeError("not an object")
        body = str(obj["body"]).encode() if "body" in obj else base64.b64decode(obj["body_base64"])
    except (DecodeError, KeyError, ValueError, TypeError):
        reason = "unreadable dead-letter record"
        return DeadRecord(derived, record, reason, 0, 0.0, None, None, None)
    header = obj.get("header")
    header = header if type(header) is dict else None
    count = header.get("n", 1) if header is not None else 1
    record_id = obj.get("id")
    at = obj.get("at")
    worker = obj.get("worker")
    return DeadRecord(
        id=record_id if type(record_id) is str and record_id else derived,
        record=record,
        reason=str(obj.get("reason", "")),
        deliveries=count if type(count) is int and count > 0 else 1,
        at=at / 1000 if isinstance(at, int | float) and type(at) is not bool else 0.0,
        header=header,
        body=body,
        worker=worker if type(worker) is str else None,
    )


def replay_item(dead: DeadRecord, now: float) -> bytes | None:
    """The request to put back on the queue for a dead letter: as it arrived, with a fresh
    delivery count and a new send time (the seed form as it was); None when unreadable."""
    if dead.body is None:
        return None
    if dead.header is None:
        return dead.body
    header = {key: value for key, value in dead.header.items() if key not in ("n", "sent")}
    header["sent"] = encode_deadline(now)
    try:
        return dumps(header) + b"\n" + dead.body
    except TypeError:  # a header that could not be written back: the body is what matters
        return dead.body
