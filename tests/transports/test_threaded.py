"""The blocking client's private event loop: run by its callers, or by its own thread."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from micromessaging import TransportError
from micromessaging.transports import _threaded
from micromessaging.transports._shared import ReplyRouter
from micromessaging.transports._threaded import LoopThread


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    runner = LoopThread()
    yield runner
    runner.stop()


async def where() -> int:
    await asyncio.sleep(0)
    return threading.get_ident()


def on_another_thread(function, *args):  # type: ignore[no-untyped-def]
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(function(*args))
        except BaseException as exc:  # handed back to the test
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_a_lone_caller_runs_the_loop_on_its_own_thread(loop_thread: LoopThread) -> None:
    assert loop_thread.run(where()) == threading.get_ident()
    assert loop_thread.run(where()) == threading.get_ident()


def test_a_call_from_inside_another_event_loop_is_handed_to_the_loop(
    loop_thread: LoopThread,
) -> None:
    async def main() -> int:
        return loop_thread.run(where())

    assert asyncio.run(main()) != threading.get_ident()


def test_errors_keep_their_type_on_both_paths(loop_thread: LoopThread) -> None:
    class Odd(Exception):
        pass

    async def fails() -> None:
        await asyncio.sleep(0)
        raise Odd("no")

    with pytest.raises(Odd, match="no"):
        loop_thread.run(fails())

    async def main() -> None:
        loop_thread.run(fails())

    with pytest.raises(Odd, match="no"):
        asyncio.run(main())


def test_calls_from_many_threads_overlap(loop_thread: LoopThread) -> None:
    async def slow(n: int) -> int:
        await asyncio.sleep(0.2)
        return n

    results: dict[int, int] = {}

    def call(n: int) -> None:
        results[n] = loop_thread.run(slow(n))

    threads = [threading.Thread(target=call, args=(n,)) for n in range(20)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {n: n for n in range(20)}
    assert time.monotonic() - started < 2  # one after another would take 4 s


def test_replies_reach_calls_whichever_thread_runs_the_loop(loop_thread: LoopThread) -> None:
    router = ReplyRouter()
    ids: list[str] = []

    async def call() -> bytes:
        correlation_id, future = router.expect(time.time() + 5)
        ids.append(correlation_id)
        return await future

    async def resolve_later() -> None:
        await asyncio.sleep(0.1)
        for correlation_id in ids:
            router.resolve(correlation_id, b"ok")

    # The router learns its loop on this thread; the loop then runs on others.
    first, outcome = on_another_thread(loop_thread.run, call())
    while not ids:
        time.sleep(0.01)
    loop_thread.run(resolve_later())
    first.join(5)
    assert outcome == [b"ok"]
    threads = [on_another_thread(loop_thread.run, call()) for _ in range(5)]
    while len(ids) < 6:
        time.sleep(0.01)
    loop_thread.run(resolve_later())
    for thread, result in threads:
        thread.join(5)
        assert result == [b"ok"]


def test_the_loop_runs_between_calls(loop_thread: LoopThread) -> None:
    fired = threading.Event()

    async def schedule() -> None:
        asyncio.get_running_loop().call_later(0.05, fired.set)

    loop_thread.run(schedule())
    assert fired.wait(2)  # nobody calls: the loop's own thread ran the timer


def test_work_a_call_left_ready_runs_before_it_returns(loop_thread: LoopThread) -> None:
    done = threading.Event()

    async def leave_work() -> None:
        asyncio.get_running_loop().call_soon(done.set)  # as a flush after a publish

    loop_thread.run(leave_work())
    assert done.is_set()


def test_the_next_call_takes_the_loop_back_from_its_thread(loop_thread: LoopThread) -> None:
    loop_thread.run(where())
    time.sleep(_threaded.IDLE * 10)  # the loop's own thread runs it meanwhile
    me = threading.get_ident()
    assert loop_thread.run(where()) != me  # handed over, once: then the loop is parked
    assert any(loop_thread.run(where()) == me for _ in range(100))


def test_stop_fails_the_calls_still_waiting_and_refuses_more() -> None:
    runner = LoopThread()
    cleaned_up = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned_up.set()

    threads = [on_another_thread(runner.run, forever()) for _ in range(3)]
    time.sleep(0.1)
    started = time.monotonic()
    runner.stop()
    assert time.monotonic() - started < 2
    for thread, outcome in threads:
        thread.join(5)
        assert len(outcome) == 1
        assert isinstance(outcome[0], TransportError)
    assert cleaned_up.is_set()
    coroutine = where()
    with pytest.raises(TransportError, match="closed"):
        runner.run(coroutine)
    runner.stop()  # again: nothing to do


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="needs the main thread"
)
def test_an_interrupted_caller_cancels_its_call_and_the_loop_goes_on(
    loop_thread: LoopThread,
) -> None:
    cancelled = threading.Event()
    running = threading.Event()

    async def endless() -> None:
        running.set()
        try:
            while True:  # noqa: ASYNC110 - the loop must wake often for the signal
                await asyncio.sleep(0.01)
        finally:  # cancelled, or (rarely) interrupted itself while it ran
            cancelled.set()

    main = threading.get_ident()
    for hand_over in (False, True):
        cancelled.clear()
        running.clear()
        busy = None
        if hand_over:  # another thread runs the loop: this one waits on its latch
            busy, _ = on_another_thread(loop_thread.run, asyncio.sleep(1.0))
            time.sleep(0.1)
        timer = threading.Timer(0.3, signal.pthread_kill, (main, signal.SIGINT))
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            loop_thread.run(endless())
        assert running.is_set()
        if busy is not None:
            busy.join(5)
        assert loop_thread.run(where())  # the loop still serves
        deadline = time.monotonic() + 2
        while not cancelled.is_set() and time.monotonic() < deadline:
            loop_thread.run(asyncio.sleep(0.01))
        assert cancelled.is_set()
