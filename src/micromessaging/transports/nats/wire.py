"""The NATS wire format, without I/O: URL options, subject and stream names, headers.

docs/wire-nats.md describes the same thing for implementers in other languages; keep them
in step.
"""

from __future__ import annotations

import re
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from ..._exceptions import ConfigurationError
from .._context import decode_sent, encode_sent, read_trace, trace_headers
from .._shared import WORKER_WINDOW, UrlOptions, decode_deadline, encode_deadline, worker_window
from ..base import TraceContext

DEADLINE = "Mm-Deadline"
"""Integer milliseconds since the Unix epoch after which the caller no longer waits."""
DELIVERY_COUNT = "Mm-Delivery-Count"
"""Core mode: how many times the request has been handed to a worker (absent: 1)."""
REPLY_TO = "Mm-Reply-To"
"""JetStream mode: the reply subject (the NATS reply field carries JetStream's own acks)."""
STATUS = "Mm-Status"
"""On an empty-bodied message to a reply subject: why it carries no reply (see `Bounce`)."""
SENT = "Mm-Sent"
"""Integer milliseconds since the Unix epoch at which the client sent the request."""
REASON = "Mm-Reason"
"""On a dead letter: why the worker gave up on the request."""
NATS_STATUS = "Status"
"""The header nats-py fills from the server's inline status line (503: no responders)."""
NATS_DESCRIPTION = "Description"
"""The header nats-py fills with the status line's text (409 "Consumer Deleted")."""
NO_RESPONDERS = "503"


class Bounce:
    """Values of `STATUS`: the worker did not answer, and says what the caller should do."""

    BUSY = "busy"
    """Not run: the worker was full or stopping. Send it again (to any worker), same count."""
    REQUEUE = "requeue"
    """Handed to a worker that stopped before settling it: send it again, count + 1."""
    TOO_LARGE = "too-large"
    """The reply was larger than the server's max_payload: it can't be delivered."""


DEAD_LETTER_PREFIX = "mm.dead."
DEFAULT_INBOX_PREFIX = "_INBOX"
REPLY_SUBJECT_LIMIT = 255
"""The longest reply subject a worker publishes to (inboxes are far shorter)."""
DEFAULT_ACK_WAIT = 10.0
CONSUMER_NAME = "mm-workers"
URL_OPTIONS = frozenset(
    {
        "jetstream",
        "ack_wait",
        "inbox_prefix",
        "tls_insecure",
        "reconnect_wait",
        "connect_timeout",
        "backlog",
        "max_age",
        "worker_window",
        "replicas",
    }
)
_STREAM_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_HEADER_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
"""A header name as RFC 9110 defines a token (what nats-py itself lets a publisher write)."""
_HEADER_START = b"NATS/1.0\r\n"
_HEADER_END = b"\r\n\r\n"
_SHORTEST_BLOCK = len(_HEADER_START) + len(b": ") + len(_HEADER_END) + 1
_COMMON_BLOCK = re.compile(
    rb"NATS/1\.0\r\n"
    rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+: [\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?\r\n)+"
    rb"\r\n"
)
"""The plain form with printable values only (what our clients write): checked at once."""
_REQUEST_BLOCK = re.compile(
    rb"NATS/1\.0\r\nMm-Deadline: ([1-9][0-9]{0,14})\r\nMm-Sent: ([1-9][0-9]{0,14})\r\n\r\n"
)
"""The block our clients write on nearly every request (a deadline and the send time, no
trace, first delivery): read with one match of literals, without taking it apart."""


@dataclass(frozen=True, slots=True)
class NatsSettings:
    """What a nats:// or tls:// URL asks for."""

    servers: tuple[str, ...]
    jetstream: bool = False
    ack_wait: float = DEFAULT_ACK_WAIT
    inbox_prefix: str = DEFAULT_INBOX_PREFIX
    tls: ssl.SSLContext | None = None
    reconnect_wait: float = 0.5
    connect_timeout: float = 2.0
    backlog: int | None = None
    """Core-mode workers: requests held beyond the concurrency before bouncing (None: 1024)."""
    max_age: float | None = None
    """JetStream: seconds a request may wait in a stream this end creates (None: for ever)."""
    worker_window: float = WORKER_WINDOW
    """Clients: seconds since a worker was last seen after which calls fail with NoWorkers."""
    replicas: int = 1
    """JetStream: copies of each stream this end creates, on as many servers of a cluster."""


def parse_url(url: str) -> NatsSettings:
    """Settings from ``nats://[user:pass@]host[:port][,host2:port2...][?option=value...]``.

    Options: ``jetstream`` (durable mode), ``ack_wait`` and ``max_age`` (seconds, JetStream),
    ``inbox_prefix``, ``tls_insecure`` (accept any certificate), ``reconnect_wait``,
    ``connect_timeout``, ``backlog`` (core-mode workers), ``worker_window`` (clients: the
    no-worker rule) and ``replicas`` (JetStream streams this end creates).
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("nats", "tls"):
        raise ConfigurationError(f"not a NATS URL: {url!r}")
    options, _ = UrlOptions.split(url, URL_OPTIONS, what="NATS", strict=True)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    prefix = f"{userinfo}@" if userinfo else ""
    # Several servers of one cluster: nats://a:4222,b:4222 (credentials apply to each).
    servers = tuple(
        urlunsplit((scheme, prefix + host, "", "", "")) for host in hosts.split(",") if host
    ) or (urlunsplit((scheme, prefix + "127.0.0.1:4222", "", "", "")),)
    tls: ssl.SSLContext | None = None
    if scheme == "tls":
        tls = ssl.create_default_context()
        if options.flag("tls_insecure", False):
            tls.check_hostname = False
            tls.verify_mode = ssl.CERT_NONE
    inbox_prefix = options.text("inbox_prefix", DEFAULT_INBOX_PREFIX) or ""
    if _subject_problem(inbox_prefix) or inbox_prefix.startswith("$"):
        raise ConfigurationError(f"bad NATS inbox_prefix {inbox_prefix!r}")
    return NatsSettings(
        servers=servers,
        jetstream=options.flag("jetstream", False),
        ack_wait=options.seconds("ack_wait", DEFAULT_ACK_WAIT),
        inbox_prefix=inbox_prefix,
        tls=tls,
        reconnect_wait=options.seconds("reconnect_wait", 0.5),
        connect_timeout=options.seconds("connect_timeout", 2.0),
        backlog=options.count("backlog", 0) if "backlog" in options else None,
        max_age=options.seconds("max_age", 0) if "max_age" in options else None,
        worker_window=worker_window(options),
        replicas=options.count("replicas", 1, minimum=1),
    )


def check_queue(queue: str) -> str:
    """`queue` when it is a valid NATS subject without wildcards, else `ConfigurationError`."""
    tokens = queue.split(".")
    if not queue or any(not t or t in ("*", ">") or any(c.isspace() for c in t) for t in tokens):
        raise ConfigurationError(f"{queue!r} can't be a NATS subject (no spaces or wildcards)")
    return queue


def _subject_problem(subject: str) -> str | None:
    """What makes `subject` unfit to publish to, or None: printable ASCII tokens, no wildcards."""
    if not subject.isascii() or not subject.isprintable() or " " in subject:
        return "is not printable ASCII without spaces"
    if "*" in subject or ">" in subject:
        return "holds a wildcard"
    if "" in subject.split("."):
        return "has an empty token"
    return None


_INBOX_TOKENS = r"(?:\.[!-)+-\-/-=?-~]+)+"
"""One or more subject tokens after a prefix: printable ASCII, no space, dot or wildcard."""


def inbox_pattern(inbox_prefix: str) -> re.Pattern[str]:
    """The reply subjects `reply_subject_refusal` accepts for `inbox_prefix`, short of their
    length: for checking the common case in one match."""
    prefixes = "|".join(re.escape(p) for p in dict.fromkeys((DEFAULT_INBOX_PREFIX, inbox_prefix)))
    return re.compile(f"(?:{prefixes}){_INBOX_TOKENS}")


def reply_subject_refusal(subject: str, inbox_prefix: str) -> str | None:
    """Why a worker must not publish a reply to `subject`, or None when it may.

    A reply goes only to an inbox: a valid subject under ``_INBOX.`` or the URL's
    ``inbox_prefix``. Anything else - ``$JS.API...`` (a reply there would purge or delete
    someone's stream), ``$SYS.``, another service's request subject, a wildcard - is
    refused, so that a caller can't make a worker publish where the caller itself may not.
    """
    if len(subject) > REPLY_SUBJECT_LIMIT:
        shown = ascii(subject[:80])
        return f"reply subject {shown}... is longer than {REPLY_SUBJECT_LIMIT} characters"
    problem = _subject_problem(subject)
    if problem is not None:
        return f"reply subject {subject[:80]!a} {problem}"
    if subject.startswith("$") or not subject.startswith(
        (DEFAULT_INBOX_PREFIX + ".", inbox_prefix + ".")
    ):
        prefixes = ", ".join(dict.fromkeys((DEFAULT_INBOX_PREFIX + ".", inbox_prefix + ".")))
        return f"reply subject {subject[:80]!a} is not under an inbox prefix ({prefixes})"
    return None


def dead_letter_subject(queue: str) -> str:
    """Where a queue's dead letters are published."""
    return DEAD_LETTER_PREFIX + queue


def token(name: str) -> str:
    """`name` as one subject token (dots and other unsafe characters become ``_``)."""
    return _STREAM_UNSAFE.sub("_", name)


def stream_name(queue: str) -> str:
    """The JetStream work-queue stream holding a queue's requests."""
    return "MM_" + _STREAM_UNSAFE.sub("_", queue)


def dead_letter_stream_name(queue: str) -> str:
    """The JetStream stream keeping a queue's dead letters."""
    return "MM_DEAD_" + _STREAM_UNSAFE.sub("_", queue)


def deadline_header(deadline: float | None) -> dict[str, str]:
    """The headers carrying `deadline` (epoch seconds)."""
    return {} if deadline is None else {DEADLINE: str(encode_deadline(deadline))}


def request_headers(
    deadline: float | None, trace: TraceContext | None = None, sent: float | None = None
) -> dict[str, str]:
    """The headers a request carries: its deadline, when it was sent, the trace context."""
    headers = deadline_header(deadline)
    headers[SENT] = encode_sent(time.time() if sent is None else sent)
    headers.update(trace_headers(trace))
    return headers


def request_block(
    deadline: float | None,
    trace: TraceContext | None = None,
    sent: float | None = None,
    delivery_count: int = 1,
) -> bytes:
    """The header block a request carries (`request_headers`, and its delivery count when it
    is sent again), written at once in the common case: a deadline, no trace, first sent."""
    if sent is None:
        sent = time.time()
    if deadline is not None and not trace and delivery_count == 1:
        return b"NATS/1.0\r\nMm-Deadline: %d\r\nMm-Sent: %d\r\n\r\n" % (
            encode_deadline(deadline),
            encode_deadline(sent),
        )
    headers = request_headers(deadline, trace, sent)
    if delivery_count > 1:
        headers[DELIVERY_COUNT] = str(delivery_count)
    return header_block(headers)


def read_sent(headers: Mapping[str, str] | None) -> float | None:
    """When the client sent the request (epoch seconds), or None when unreadable."""
    return decode_sent(headers.get(SENT)) if headers else None


def read_trace_context(headers: Mapping[str, str] | None) -> TraceContext | None:
    """The caller's trace context, or None when absent or malformed (dropped, never fatal)."""
    return read_trace(headers) if headers else None


def read_deadline(headers: Mapping[str, str] | None) -> float | None:
    """The deadline a message carries, in epoch seconds (the shared rule)."""
    return decode_deadline(headers.get(DEADLINE)) if headers else None


def read_count(headers: Mapping[str, str] | None) -> int:
    """The core-mode delivery count a message carries (1 when absent or unreadable)."""
    raw = headers.get(DELIVERY_COUNT) if headers else None
    try:
        return max(1, int(raw)) if raw is not None else 1
    except ValueError:
        return 1


def read_plain_headers(block: bytes) -> dict[str, str] | None:
    """The headers of a block in the plain form, or None when it is in any other.

    The plain form is what nats-py and the other clients write: ``NATS/1.0\r\n``, then one
    ``Name: value\r\n`` per header (a token for a name, an ASCII value without surrounding
    whitespace), then ``\r\n``. Read here, it gives what nats-py's parser gives; anything
    else (a status line, ``Name:value``, UTF-8, blank lines, no headers at all) is left to
    that parser. A name written twice keeps its last value, as there.
    """
    request = _REQUEST_BLOCK.fullmatch(block)
    if request is not None:  # what our clients send, in one match of literals
        deadline, sent = request.groups()
        return {DEADLINE: deadline.decode(), SENT: sent.decode()}
    if _COMMON_BLOCK.fullmatch(block) is not None:  # the rest of the common case, in one pass
        common: dict[str, str] = {}
        for entry in block[len(_HEADER_START) : -len(_HEADER_END)].decode().split("\r\n"):
            key, _, text = entry.partition(": ")
            common[key] = text
        return common
    if (
        len(block) < _SHORTEST_BLOCK
        or not block.startswith(_HEADER_START)
        or not block.endswith(_HEADER_END)
    ):
        return None
    headers: dict[str, str] = {}
    for line in block[len(_HEADER_START) : -len(_HEADER_END)].split(b"\r\n"):
        name, colon, value = line.partition(b": ")
        if (
            not colon
            or not value.isascii()
            or value.strip() != value
            or _HEADER_NAME.fullmatch(name) is None
        ):
            return None
        headers[name.decode()] = value.decode()
    return headers


def header_block(headers: Mapping[str, str]) -> bytes:
    """`headers` as the block a message carries, in the plain form nats-py writes.

    For headers we write: names of ours (tokens), values that are numbers, our constants, an
    inbox subject or a trace context `trace_headers` let through (printable ASCII), so that
    nothing in a value can end the block early; nats-py's general encoder checks each one
    again, at a cost our benchmarks see.
    """
    lines = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    return b"NATS/1.0\r\n" + lines.encode() + b"\r\n"


def encoded_size(body: bytes, headers: Mapping[str, str] | None) -> int:
    """How many bytes the server counts against max_payload: headers block plus body."""
    return len(body) + len(header_block(headers)) if headers else len(body)


def remaining(deadline: float) -> float:
    """Seconds until `deadline` (epoch seconds), never below a millisecond."""
    return max(deadline - time.time(), 0.001)
