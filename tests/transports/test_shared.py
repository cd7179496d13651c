"""What every transport shares: the deadline codec, URL options, backoff and the ledger."""

from __future__ import annotations

import asyncio
import math

import pytest

from micromessaging import ConfigurationError, TransportError
from micromessaging.transports._shared import (
    Backoff,
    Ledger,
    LedgerDelivery,
    Slots,
    UrlOptions,
    decode_deadline,
    encode_deadline,
    wait_shared,
)

# --- deadlines ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (1_795_845_534_341, 1_795_845_534.341),
        (1_795_845_534_341.5, 1_795_845_534.3415),
        ("1795845534341", 1_795_845_534.341),
        (b"1795845534341.5", 1_795_845_534.3415),
        (12.5, 0.0125),
    ],
)
def test_deadlines_are_integer_or_float_milliseconds(value: object, seconds: float) -> None:
    assert decode_deadline(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value", [None, True, False, 0, -5, math.nan, math.inf, "soon", b"", "1e999", [1], {}]
)
def test_an_unreadable_deadline_counts_as_none(value: object) -> None:
    assert decode_deadline(value) is None


def test_encoded_deadlines_read_back() -> None:
    assert encode_deadline(1_795_845_534.3419) == 1_795_845_534_341
    assert decode_deadline(encode_deadline(100.25)) == 100.25


# --- URL options -------------------------------------------------------------------------------


def test_url_options_are_taken_out_and_parsed_alike() -> None:
    options, rest = UrlOptions.split(
        "redis://h:1/2?a=1&flag=on&off=no&socket_timeout=3&n=4&t=0.5",
        {"a", "flag", "off", "n", "t"},
        what="Redis",
    )
    assert rest == "redis://h:1/2?socket_timeout=3"
    assert options.flag("a", False) is True
    assert options.flag("flag", False) is True
    assert options.flag("off", True) is False
    assert options.flag("missing", True) is True
    assert options.count("n", 1) == 4
    assert options.seconds("t", 1.0) == 0.5
    assert options.choice("missing", "x", {"x", "y"}) == "x"


@pytest.mark.parametrize(
    ("query", "check"),
    [
        ("f=maybe", lambda o: o.flag("f", False)),
        ("f=", lambda o: o.flag("f", False)),  # no guess: no_verify_ssl= must not mean yes
        ("n=-1", lambda o: o.count("n", 0)),
        ("n=two", lambda o: o.count("n", 0)),
        ("t=0", lambda o: o.seconds("t", 1.0)),
        ("t=soon", lambda o: o.seconds("t", 1.0)),
        ("t=nan", lambda o: o.seconds("t", 1.0)),
        ("t=5000", lambda o: o.seconds("t", 1.0, maximum=3600)),
        ("c=z", lambda o: o.choice("c", "x", {"x", "y"})),
    ],
)
def test_bad_url_options_name_the_option(query: str, check) -> None:
    options, _ = UrlOptions.split(f"nats://h?{query}", {"f", "n", "t", "c"}, what="NATS")
    with pytest.raises(ConfigurationError, match=query.split("=")[0]):
        check(options)


def test_strict_options_refuse_unknown_names() -> None:
    with pytest.raises(ConfigurationError, match="unknown NATS URL options: bogus"):
        UrlOptions.split("nats://h?bogus=1", {"jetstream"}, what="NATS", strict=True)


def test_backoff_grows_and_resets() -> None:
    backoff = Backoff((0.1, 1.0))
    first, second, third = backoff.failed(), backoff.failed(), backoff.failed()
    assert 0.08 <= first <= 0.12
    assert 0.8 <= second <= 1.2
    assert 0.8 <= third <= 1.2
    assert backoff.succeeded() is True
    assert backoff.succeeded() is False


# --- the ledger --------------------------------------------------------------------------------


class Item(LedgerDelivery):
    def __init__(self, name: str) -> None:
        self.name = name
        self.body = b""

    @property
    def can_reply(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"Item({self.name})"


class Refusal(Exception):
    """Stands for a broker's "try again" (READONLY, a closed channel...)."""


async def test_a_delivery_is_settled_once_and_its_slot_freed() -> None:
    ledger: Ledger[Item] = Ledger(2, name="q")
    first, second = Item("a"), Item("b")
    ledger.admit(first)
    ledger.admit(second)
    assert ledger.slots is not None
    assert ledger.slots.free == 0
    runs: list[str] = []

    async def step() -> None:
        runs.append("settled")

    await ledger.settle(first, step, "settling")
    await ledger.settle(first, step, "settling")  # a second settle is dropped
    assert runs == ["settled"]
    assert ledger.slots.free == 1
    assert len(ledger) == 1


async def test_a_failed_settle_frees_the_slot_and_is_given_back_on_close() -> None:
    ledger: Ledger[Item] = Ledger(1, name="q")
    item = Item("a")
    ledger.admit(item)

    async def step() -> None:
        raise TransportError("refused for good")

    with pytest.raises(TransportError):
        await ledger.settle(item, step, "settling")
    assert ledger.slots is not None
    assert ledger.slots.free == 1  # capacity is never lost
    assert await ledger.close() == [item]  # it is still in the broker: given back
    assert await ledger.close() == []


async def test_transient_errors_are_retried_until_the_broker_is_back() -> None:
    ledger: Ledger[Item] = Ledger(1, transient=lambda exc: isinstance(exc, Refusal), name="q")
    item = Item("a")
    ledger.admit(item)
    attempts = 0

    async def step() -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise Refusal("READONLY")

    await ledger.settle(item, step, "settling")
    assert attempts == 3
    assert ledger.retried == 2
    assert ledger.slots is not None
    assert ledger.slots.free == 1


async def test_closing_stops_retries_and_waits_for_settles_under_way() -> None:
    ledger: Ledger[Item] = Ledger(2, transient=lambda exc: isinstance(exc, Refusal), name="q")
    stuck, untouched = Item("stuck"), Item("untouched")
    ledger.admit(stuck)
    ledger.admit(untouched)

    async def refused() -> None:
        raise Refusal("still READONLY")

    settling = asyncio.create_task(ledger.settle(stuck, refused, "settling"))
    await asyncio.sleep(0.01)
    left = await ledger.close(timeout=3)
    assert sorted(item.name for item in left) == ["stuck", "untouched"]
    with pytest.raises(Refusal):
        await settling
    assert ledger.slots is not None
    assert ledger.slots.free == 2


async def test_close_returns_as_soon_as_the_settles_under_way_are_over() -> None:
    ledger: Ledger[Item] = Ledger(1, name="q")
    item = Item("a")
    ledger.admit(item)
    gate = asyncio.Event()

    async def step() -> None:
        await gate.wait()

    settling = asyncio.create_task(ledger.settle(item, step, "settling"))
    await asyncio.sleep(0)
    closing = asyncio.create_task(ledger.close(timeout=60))
    await asyncio.sleep(0)
    assert not closing.done()  # waits for the settle under way
    gate.set()
    async with asyncio.timeout(5):  # woken by the settle's end, not by its timeout
        assert await closing == []
    await settling


async def test_a_freed_slot_wakes_a_taker_waiting_for_one() -> None:
    slots = Slots(1)
    slots.take()
    slots.release()  # nothing waits: nothing to wake
    slots.take()
    waiting = asyncio.create_task(slots.wait())
    await asyncio.sleep(0)
    assert not waiting.done()
    slots.release()
    async with asyncio.timeout(5):
        assert await waiting == 1


async def test_a_transport_may_give_a_stranded_delivery_back_at_once() -> None:
    given_back: list[Item] = []

    def give_back_now(item: Item) -> bool:
        given_back.append(item)
        return True

    ledger: Ledger[Item] = Ledger(None, on_stranded=give_back_now, name="q")
    item = Item("a")
    ledger.admit(item)

    async def step() -> None:
        raise TransportError("channel lost")

    with pytest.raises(TransportError):
        await ledger.settle(item, step, "settling")
    assert given_back == [item]
    assert await ledger.close() == []  # not given back twice


# --- send time and trace context (transports/_context.py) ------------------------------------

from micromessaging.transports._context import (  # noqa: E402
    decode_sent,
    encode_sent,
    read_trace,
    trace_headers,
    valid_traceparent,
)

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


# --- shared waits --------------------------------------------------------------------------


async def test_a_shared_wait_given_up_by_its_owner_fails_its_waiters_not_cancels_them() -> None:
    # A client closing cancels the connect its calls wait on; the calls must fail with
    # TransportError, not raise CancelledError in tasks nobody cancelled.
    shared: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiters = [asyncio.ensure_future(wait_shared(shared, 5)) for _ in range(3)]
    await asyncio.sleep(0)
    shared.cancel()
    for waiter in waiters:
        with pytest.raises(TransportError, match="closed"):
            await waiter
    already = asyncio.get_running_loop().create_future()
    already.cancel()
    with pytest.raises(TransportError):
        await wait_shared(already, 5)


async def test_a_waiter_cancelled_itself_is_cancelled_and_the_shared_wait_goes_on() -> None:
    shared: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    waiter = asyncio.ensure_future(wait_shared(shared, 5))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not shared.done()
    shared.set_result(7)
    assert await wait_shared(shared, 5) == 7


def test_send_time_is_read_like_a_deadline() -> None:
    assert decode_sent(encode_sent(1_700_000_000.123)) == 1_700_000_000.123
    for unreadable in ("soon", "", "-5", "nan", "inf", True, None, [1]):
        assert decode_sent(unreadable) is None


def test_a_well_formed_trace_context_is_kept() -> None:
    assert read_trace({"traceparent": PARENT, "tracestate": "a=1"}) == {
        "traceparent": PARENT,
        "tracestate": "a=1",
    }
    assert read_trace({"traceparent": PARENT.encode()}) == {"traceparent": PARENT}
    # A later version may carry more fields; version 00 has exactly four.
    assert valid_traceparent("01-" + PARENT[3:] + "-extra")


@pytest.mark.parametrize(
    "parent",
    [
        "",
        "garbage",
        PARENT.upper(),
        "ff" + PARENT[2:],  # version ff is invalid
        "00-" + "0" * 32 + PARENT[35:],  # all-zero trace id
        PARENT[:36] + "0" * 16 + "-01",  # all-zero span id
        PARENT + "-more",  # version 00 has no more fields
        PARENT[:-1],
        "00-" + "a" * 400,
    ],
)
def test_a_malformed_traceparent_drops_the_whole_context(parent: str) -> None:
    assert read_trace({"traceparent": parent, "tracestate": "a=1"}) is None


def test_a_bad_tracestate_is_dropped_and_the_parent_kept() -> None:
    for state in ("x" * 600, "a=1\n", b"\xff"):
        assert read_trace({"traceparent": PARENT, "tracestate": state}) == {"traceparent": PARENT}
    assert read_trace({}) is None
    assert read_trace({"traceparent": 5}) is None
    assert trace_headers(None) == {}
    assert trace_headers({"traceparent": "bad"}) == {}
