"""A blocking client transport made from an async one, run on a private event loop.

The fallback for transports without a native `SyncClientTransport`: one private event loop
serves every thread of the program, so one connection does too. Whoever finds the loop idle
runs it, like the reader of the Redis sync transport:

- A caller that finds nobody running the loop ("parked") runs it itself, on its own thread,
  until its call ends (``run_until_complete``), then parks it again: a lone caller, or calls
  one after another, cost what `AsyncClient` costs, with no thread wake-up at all.
- A caller that finds the loop running (another caller's call, or the loop's own thread)
  hands its call over with ``call_soon_threadsafe`` (one self-pipe write) and waits on its
  thread's `_Waiter`, a held lock used as a one-shot latch that the call releases when it
  ends: two thread wake-ups, the price of every call before.
- The loop's own daemon thread runs it whenever calls handed over wait and nobody else runs
  it, and whenever it has been parked for `IDLE` seconds, so that heartbeats, reconnections
  and the replies of abandoned calls are served between calls. It parks the loop as soon as
  the last call handed over ends, so that the next call runs it itself again.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from .._exceptions import TransportError
from .base import ClientTransport, SyncClientTransport, TraceContext

T = TypeVar("T")

IDLE = 0.05
"""Seconds the loop may stay parked (nobody running it) before its own thread runs it.

The loop's thread looks again at least this often while callers run the loop, and each look
takes the GIL from the caller's thread: at 5 ms a program calling back to back lost 0-15% of
its calls' speed to those looks (NATS, sequential, A/B in one process). 50 ms is still far
sooner than any heartbeat or ping is due."""
SHUTDOWN_GRACE = 5.0
"""Seconds `LoopThread.stop` lets cancelled calls finish before it closes the loop anyway."""
SETTLE_TURNS = 4
"""Loop iterations a parking caller runs at most for the work its call scheduled last."""

PARKED, CALLER, OWN = "parked", "caller", "own thread"
"""Who runs the loop: nobody, a calling thread, the loop's own thread."""


class _Waiter:
    """One calling thread's way to wait for the call it handed to the loop."""

    __slots__ = ("error", "latch", "task", "value")

    def __init__(self) -> None:
        self.latch = threading.Lock()
        self.latch.acquire()  # held: the caller's next acquire waits until the loop releases it
        self.value: Any = None
        self.error: BaseException | None = None
        self.task: asyncio.Task[None] | None = None


class LoopThread:
    """An event loop run by its callers or by its own daemon thread, until `stop`."""

    def __init__(self, name: str = "micromessaging-client") -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopped = False
        self._local = threading.local()
        self._mutex = threading.Lock()
        self._state = threading.Condition(self._mutex)
        """Guards the four below (``with self._mutex`` where nothing waits or is notified:
        the same lock, without the Condition's two Python-level calls)."""
        self._runner = PARKED
        self._parked_at = 0.0
        self._stopping = False
        self._handed: set[_Waiter] = set()
        """Calls handed over to whoever runs the loop, not yet ended."""
        self._here: set[asyncio.Task[Any]] = set()
        """Calls run by the caller running the loop; touched by whoever runs the loop only."""
        self._serving = False
        """The loop's own thread is in ``run_forever``; read and written on that thread only."""
        self._wake_when_parked: list[_Waiter] = []
        """Callers the loop's own thread wakes once it has parked the loop; that thread's only."""

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` on the loop and wait for its outcome (its result or exception)."""
        try:
            loop = self._loop or self._start()
            mine = False
            waiter: _Waiter | None = None
            if asyncio._get_running_loop() is None:  # else this thread can't run another loop
                with self._mutex:
                    mine = self._runner is PARKED and not self._stopping
                    if mine:
                        self._runner = CALLER
            if not mine:
                waiter = getattr(self._local, "waiter", None)
                if waiter is None:
                    waiter = self._local.waiter = _Waiter()
                self._hand_over(loop, coroutine, waiter)
        except BaseException:
            coroutine.close()  # never started: no "never awaited" warning
            raise
        if waiter is None:
            return self._run_here(loop, coroutine)
        result: T = self._wait(loop, waiter)
        return result

    def _wait(self, loop: asyncio.AbstractEventLoop, waiter: _Waiter) -> Any:
        """Wait for the end of the call handed over with `waiter`."""
        try:
            waiter.latch.acquire()
        except BaseException:
            # Interrupted (KeyboardInterrupt): cancel the call, and leave this latch to it.
            self._local.waiter = None
            with contextlib.suppress(RuntimeError):  # closed: the call ended with it
                loop.call_soon_threadsafe(self._cancel, waiter)
            raise
        error = waiter.error
        if error is not None:
            waiter.error = None
            try:
                raise error
            finally:
                del error  # no cycle through this frame
        value = waiter.value
        waiter.value = None
        return value

    def _run_here(self, loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run the parked loop on this thread until `coroutine` ends, then park it again."""
        try:
            task = loop.create_task(_stopping_after(loop, coroutine))
            self._here.add(task)
            try:
                # Not run_until_complete: its done callback would cost one more turn.
                while not task.done():
                    loop.run_forever()
            except BaseException:
                if not task.done():  # interrupted: whoever runs the loop next ends the call
                    task.cancel()
                    raise
            _settle(loop)
        finally:
            self._here.discard(task)
            with self._mutex:  # the Condition's lock: notify_all below may be called
                self._runner = PARKED
                self._parked_at = time.monotonic()
                if self._handed or self._stopping:
                    self._state.notify_all()  # the loop's thread runs what waits
        try:
            return task.result()
        except asyncio.CancelledError:
            raise TransportError("this client is closed") from None

    def _hand_over(
        self, loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, Any], waiter: _Waiter
    ) -> None:
        with self._state:
            if self._stopping:
                raise TransportError("this client is closed")
            try:
                loop.call_soon_threadsafe(self._begin, loop, coroutine, waiter)
            except RuntimeError:  # closed
                raise TransportError("this client is closed") from None
            self._handed.add(waiter)
            if self._runner is PARKED:
                self._state.notify_all()

    def _begin(
        self, loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, Any], waiter: _Waiter
    ) -> None:
        waiter.task = loop.create_task(self._drive(loop, coroutine, waiter))

    async def _drive(
        self, loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, Any], waiter: _Waiter
    ) -> None:
        try:
            waiter.value = await coroutine
        except asyncio.CancelledError:
            waiter.error = TransportError("this client is closed")
        except BaseException as exc:
            waiter.error = exc
        finally:
            waiter.task = None
            with self._state:
                self._handed.discard(waiter)
                last = not self._handed and self._serving
            if last:
                # Park, and wake the caller once parked: else it calls again before, and
                # hands that call over too, and so on.
                loop.stop()
                self._wake_when_parked.append(waiter)
            else:
                waiter.latch.release()

    def _stop_serving(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._serving:
            loop.stop()

    def _cancel_calls(self) -> None:
        for task in self._here:
            task.cancel()
        with self._state:
            waiters = list(self._handed)
        for waiter in waiters:
            self._cancel(waiter)

    @staticmethod
    def _cancel(waiter: _Waiter) -> None:
        if waiter.task is not None:
            waiter.task.cancel()

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._stopped:
                raise TransportError("this client is closed")
            if self._loop is None:
                loop = asyncio.new_event_loop()
                self._parked_at = time.monotonic()
                self._thread = threading.Thread(
                    target=self._serve, args=(loop,), name=self._name, daemon=True
                )
                self._thread.start()
                self._loop = loop
            return self._loop

    def _serve(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop's own thread: run the loop while nobody else does and it is needed."""
        state = self._state
        while True:
            with state:
                while True:
                    if self._runner is PARKED:
                        if self._stopping or self._handed:
                            break
                        idle = time.monotonic() - self._parked_at
                        if idle >= IDLE:
                            break
                        state.wait(IDLE - idle)
                    else:
                        state.wait(IDLE)  # a caller runs it: look again when it may be parked
                self._runner = OWN
                stopping = self._stopping
            if stopping:
                self._finish(loop)
                return
            try:
                self._serving = True
                try:
                    loop.run_forever()
                finally:
                    self._serving = False
                _settle(loop)
            finally:
                with state:
                    self._runner = PARKED
                    self._parked_at = time.monotonic()
                waiters, self._wake_when_parked = self._wake_when_parked, []
                for waiter in waiters:
                    waiter.latch.release()

    def _finish(self, loop: asyncio.AbstractEventLoop) -> None:
        """Cancel what still runs on the loop and let it end."""
        deadline = time.monotonic() + SHUTDOWN_GRACE
        while time.monotonic() < deadline:
            tasks = asyncio.all_tasks(loop)
            with self._state:
                handed = bool(self._handed)
            if not tasks and not handed:
                return
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.wait(tasks, timeout=deadline - time.monotonic()))
            else:
                _settle(loop)  # calls handed over that have not begun yet

    @property
    def stopped(self) -> bool:
        """Whether `stop` was called: the loop can't run anything any more."""
        return self._stopped

    def stop(self) -> None:
        """Fail the calls still running, stop the loop and wait for its thread."""
        with self._lock:
            self._stopped = True
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            return
        with self._state:
            self._stopping = True
            if self._runner is OWN:
                loop.call_soon_threadsafe(self._stop_serving, loop)
            elif self._runner is CALLER:  # its call may wait for long: end it now
                loop.call_soon_threadsafe(self._cancel_calls)
            self._state.notify_all()
        thread.join()
        loop.close()
        with self._state:
            left, self._handed = self._handed, set()
        for waiter in left:  # calls that ignored their cancellation
            waiter.error = TransportError("this client is closed")
            waiter.latch.release()


async def _stopping_after(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, T]) -> T:
    """`coroutine`'s outcome, stopping `loop` in the very turn that it ends."""
    try:
        return await coroutine
    finally:
        loop.stop()


def _settle(loop: asyncio.AbstractEventLoop) -> None:
    """Run the loop a few more turns while work is ready (a flush a send scheduled, say)."""
    ready = getattr(loop, "_ready", None)  # asyncio's queue of ready callbacks
    for _ in range(SETTLE_TURNS):
        if not ready:
            return
        loop.stop()  # before run_forever: exactly one iteration
        loop.run_forever()


class ThreadedClientTransport(SyncClientTransport):
    """Runs an async `ClientTransport` on a private event loop (see `LoopThread`)."""

    def __init__(self, transport: ClientTransport) -> None:
        self._transport = transport
        self._loop = LoopThread()

    def connect(self) -> None:
        self._loop.run(self._transport.connect())

    def request(
        self, queue: str, body: bytes, deadline: float, trace: TraceContext | None = None
    ) -> bytes:
        return self._loop.run(self._transport.request(queue, body, deadline, trace))

    def send(
        self, queue: str, body: bytes, deadline: float | None, trace: TraceContext | None = None
    ) -> None:
        self._loop.run(self._transport.send(queue, body, deadline, trace))

    def close(self) -> None:
        if self._loop.stopped:
            return
        try:
            self._loop.run(self._transport.aclose())
        finally:
            self._loop.stop()
