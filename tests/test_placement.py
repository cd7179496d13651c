"""Sync methods run inline once they have shown themselves fast; one that blocks never stalls."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from micromessaging import AsyncClient, Worker, _placement
from micromessaging._placement import MAX_DEMOTIONS, TRIAL_CALLS, Placement

SLOW = 0.06
"""Longer than both limits below: a slow call, however busy the machine."""


@pytest.fixture(autouse=True)
def lenient_limits(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """Limits a busy test machine does not reach by accident (exact trial counts hold).

    The worker-level guarantee (nothing stalls) is tested with the real limits.
    """
    if "never_stalls" in request.node.name:
        return
    monkeypatch.setattr(_placement, "INLINE_LIMIT", 0.05)
    monkeypatch.setattr(_placement, "DEMOTE_LIMIT", 0.05)


class Service:
    def __init__(self) -> None:
        self.calls = 0

    def add(self, a: float, b: float) -> float:
        return a + b

    def block(self, seconds: float) -> str:
        time.sleep(seconds)
        return "done"

    def usually_fast(self, slow: bool) -> bool:
        if slow:
            time.sleep(0.3)
        return slow


async def test_a_fast_method_moves_inline_after_its_trial() -> None:
    placement = Placement("add", inline=True)
    for _ in range(TRIAL_CALLS):
        assert not placement.inline
        assert await placement.call(None, lambda: 2) == 2
    assert placement.inline


async def test_a_slow_method_stays_in_the_pool() -> None:
    placement = Placement("block", inline=True)
    for _ in range(TRIAL_CALLS * 2):
        await placement.call(None, time.sleep, SLOW)
    assert not placement.inline


async def test_a_slow_trial_call_starts_the_trial_again() -> None:
    """A busy machine makes a fast call look slow now and then: that is not a verdict."""
    placement = Placement("add", inline=True)
    for _ in range(TRIAL_CALLS - 1):
        await placement.call(None, lambda: None)
    await placement.call(None, time.sleep, SLOW)
    for _ in range(TRIAL_CALLS - 1):
        await placement.call(None, lambda: None)
    assert not placement.inline  # 19 fast calls in a row since the slow one
    await placement.call(None, lambda: None)
    assert placement.inline


async def test_a_call_between_the_limits_neither_counts_nor_spoils_the_trial(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In the pool, a fast call may wait for the GIL a few ms: that delays, never resets."""
    monkeypatch.setattr(_placement, "INLINE_LIMIT", 0.03)
    monkeypatch.setattr(_placement, "DEMOTE_LIMIT", 1.0)
    placement = Placement("add", inline=True)
    for _ in range(TRIAL_CALLS - 1):
        await placement.call(None, lambda: None)
        await placement.call(None, time.sleep, 0.06)  # between INLINE_LIMIT and DEMOTE_LIMIT
    assert not placement.inline
    await placement.call(None, lambda: None)
    assert placement.inline


async def test_inline_off_keeps_every_call_in_the_pool() -> None:
    placement = Placement("add", inline=False)
    for _ in range(TRIAL_CALLS * 2):
        await placement.call(None, lambda: None)
    assert not placement.inline


async def inline(placement: Placement) -> int:
    """Fast calls until `placement` runs inline; how many it took (at most 10,000)."""
    for n in range(1, 10_001):
        await placement.call(None, lambda: None)
        if placement.inline:
            return n
    return 0


async def test_an_inline_method_that_blocks_goes_back_to_the_pool() -> None:
    placement = Placement("usually_fast", inline=True)
    assert await inline(placement) == TRIAL_CALLS
    await placement.call(None, time.sleep, SLOW)  # the one call that stalls the loop
    assert not placement.inline
    assert placement.demoted
    for _ in range(TRIAL_CALLS * 2):
        await placement.call(None, lambda: None)
    assert not placement.inline  # it must earn its place again, with a longer trial


async def test_a_demoted_method_earns_its_way_back_then_stays_in_the_pool_for_good() -> None:
    placement = Placement("usually_fast", inline=True)
    trials = [await inline(placement)]
    for _ in range(MAX_DEMOTIONS - 1):
        await placement.call(None, time.sleep, SLOW)  # a stall: demoted
        assert not placement.inline
        trials.append(await inline(placement))
    assert trials == [TRIAL_CALLS * 4**n for n in range(MAX_DEMOTIONS)]
    await placement.call(None, time.sleep, SLOW)  # the last stall it may cause
    assert await inline(placement) == 0  # 10,000 fast calls: still in the pool


async def test_a_long_run_without_stalls_forgives_a_demotion(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_placement, "FORGIVE_CALLS", 50)
    placement = Placement("usually_fast", inline=True)
    await inline(placement)
    for _ in range(MAX_DEMOTIONS - 1):
        await placement.call(None, time.sleep, SLOW)
        await inline(placement)
    for _ in range(50):
        await placement.call(None, lambda: None)
    assert placement.demotions == MAX_DEMOTIONS - 2
    await placement.call(None, time.sleep, SLOW)  # one more stall: not yet for good
    assert await inline(placement) > 0


async def loop_lag(stop: asyncio.Event) -> float:
    """The longest the event loop went without running this task, while `stop` is unset."""
    worst = 0.0
    while not stop.is_set():
        started = time.monotonic()
        await asyncio.sleep(0.005)
        worst = max(worst, time.monotonic() - started - 0.005)
    return worst


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "after-inline"])
async def test_a_method_blocking_for_seconds_never_stalls_other_calls(warm: bool) -> None:
    url, queue = f"memory://{uuid.uuid4().hex[:8]}", "calc"
    service = Service()
    async with (
        Worker(service, url, queue, concurrency=8) as worker,
        AsyncClient(url, queue, timeout=10) as client,
    ):
        if warm:  # the fast method runs inline by now, and so did the other, fast so far
            for _ in range(TRIAL_CALLS + 1):
                assert await client.add(1, 2) == 3
                assert await client.usually_fast(False) is False
            placements = worker._dispatcher._placements
            assert placements["add"].inline
            assert placements["usually_fast"].inline
            assert await client.usually_fast(True) is True  # blocks once: demoted
            assert not placements["usually_fast"].inline
        stop = asyncio.Event()
        lag = asyncio.create_task(loop_lag(stop))
        blocking = [
            asyncio.create_task(client.block(1.5)),
            asyncio.create_task(client.block(1.5)),
            asyncio.create_task(client.usually_fast(True)),
        ]
        await asyncio.sleep(0.05)
        # A stall caused by the blocking methods would last their 1.5 s; a busy machine
        # (the whole suite on two cores) delays the loop by a few hundred ms at worst.
        for i in range(50):
            started = time.monotonic()
            assert await client.add(i, 1) == i + 1
            assert time.monotonic() - started < 1.0
        assert await asyncio.gather(*blocking) == ["done", "done", True]
        stop.set()
        assert await lag < 1.0  # heartbeats and every other task kept running


async def test_a_plain_method_returning_a_coroutine_is_awaited_inline_too() -> None:
    async def later(value: int) -> int:
        return value

    class Deferring:
        def get(self, value: int) -> object:
            return later(value)

    url = f"memory://{uuid.uuid4().hex[:8]}"
    async with (
        Worker(Deferring(), url, "deferring") as worker,
        AsyncClient(url, "deferring", timeout=10) as client,
    ):
        for i in range(TRIAL_CALLS * 2):
            assert await client.get(i) == i
        assert worker._dispatcher._placements["get"].inline
