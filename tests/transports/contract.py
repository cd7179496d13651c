"""The transport contract: the same behaviours, run over every transport.

A transport joins by subclassing `TransportContract` in its own test module and providing:

- the `broker_url` fixture (a URL of a real broker: integration tests never mock one);
- `inject(broker_url, queue, body, delivery_count)`: put raw bytes on the queue as a
  request whose reply comes back to the test, and return that reply's bytes (None when no
  reply arrives within `wait`);
- `dead_letters(broker_url, queue)`: the bodies dead-lettered from the queue;
- `leftovers(broker_url, queue)`: names of broker resources the queue's traffic left behind
  (reply lists, processing lists, temporary queues), which must be none after a clean stop;
- `unreachable_url(broker_url)`: a URL of this transport where nothing listens;
- `waiting_url(broker_url)`: the URL with the no-worker rule off (``worker_window=0``), for
  tests whose calls must wait for a worker that was never seen (the default adds the option);
- `wait_queued(broker_url, queue, client, count)`: wait until `count` requests of `client`
  wait for a worker (in the broker's queue, or re-sent by the client);
- `expired_reach_the_worker`: whether a request that expired while waiting still reaches
  the worker (which skips it, counted in `stats.expired`), or is dropped before;
- `cut_client(broker_url, client)` / `cut_worker(broker_url, queue)`: close the client's
  (the queue's workers') broker connections from the broker's side, with
  `cuts_connections = True`; else the tests that need them skip: not every broker lets a
  test do that on a shared server.

A transport that cannot show a behaviour (HTTP has no queue to redeliver from) overrides
that test with a skip that says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from asyncio import selector_events
from collections.abc import AsyncIterator

import orjson
import pytest

from micromessaging import (
    AsyncClient,
    CallTimeout,
    Client,
    ErrorCode,
    NoWorkers,
    RemoteError,
    TransportError,
    Worker,
)
from micromessaging._placement import TRIAL_CALLS
from micromessaging.transports import client_transport
from micromessaging.transports._shared import READ_SIZE

TRACE = {
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "tracestate": "mm=contract,rojo=00f067aa0ba902b7",
}


class Probe:
    """The service the contract calls: it records what ran, to show what did not."""

    def __init__(self) -> None:
        self.ran: list[object] = []
        self.running = 0
        self.peak = 0
        self.gate = asyncio.Event()

    def add(self, a: float, b: float) -> float:
        return a + b

    def subtract(self, minuend: float, subtrahend: float) -> float:
        return minuend - subtrahend

    def echo(self, value: object) -> object:
        return value

    async def slow(self, seconds: float, tag: object = None) -> object:
        self.ran.append(("slow", tag))
        await asyncio.sleep(seconds)
        return tag

    async def parked(self, tag: object = None) -> object:
        """Run until the test opens `gate` (however slow the machine, it outlives a fault)."""
        self.ran.append(("parked", tag))
        await self.gate.wait()
        return tag

    async def hold(self, seconds: float) -> int:
        """Run for `seconds`, counting the calls running at once (`peak`: the most seen)."""
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.running -= 1
        return self.peak

    def record(self, value: object) -> None:
        self.ran.append(value)

    def recorded(self) -> list[object]:
        return list(self.ran)

    def fail(self, message: str) -> None:
        raise ValueError(message)

    def refuse(self) -> None:
        raise RemoteError(4001, "insufficient funds", {"balance": 3})

    def _secret(self) -> str:
        return "never exposed"


async def eventually(predicate, timeout: float = 5.0) -> None:
    """Wait until `predicate()` is true, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def answers_again(client: AsyncClient, within: float = 15.0) -> None:
    """Call until a call is answered (a reconnecting client or worker fails some first)."""
    deadline = time.monotonic() + within
    while True:
        try:
            assert await client.call("add", 2, 2, timeout=2) == 4
            return
        except (TransportError, CallTimeout):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def serving(
    service: object, url: str | None, queue: str, **options: object
) -> AsyncIterator[Worker]:
    """`async with Worker(...)`, its start and stop bounded so that no test can hang."""
    worker = Worker(service, url, queue, **options)  # type: ignore[arg-type]
    try:
        await asyncio.wait_for(worker.__aenter__(), 15)
    except BaseException:
        if worker._runner is not None:
            worker._runner.cancel()
        raise
    try:
        yield worker
    finally:
        await asyncio.wait_for(worker.__aexit__(None, None, None), worker.grace + 15)


class Where:
    """A plain method that tells which task ran it (by its coroutine's name)."""

    def which(self, n: int) -> str:
        try:
            task = asyncio.current_task()
        except RuntimeError:  # in the thread pool, where it starts
            return "thread"
        return "none" if task is None else task.get_coro().__qualname__  # type: ignore[union-attr]


async def until_inline(client: AsyncClient) -> int:
    """Call `Where.which` until it has shown itself fast and runs inline; the calls it took."""
    for calls in range(1, 10 * TRIAL_CALLS):
        if await client.which(0) != "thread":
            return calls
    raise AssertionError("`which` never ran inline")


class TransportContract:
    """Behaviours every transport must show; subclasses provide the hooks above."""

    worker_concurrency = 16

    @pytest.fixture
    def broker_url(self) -> str:
        raise NotImplementedError

    @pytest.fixture
    def queue(self) -> str:
        return f"mm-test-{uuid.uuid4().hex[:12]}"

    @pytest.fixture
    def probe(self) -> Probe:
        return Probe()

    @pytest.fixture
    async def worker(self, broker_url: str, queue: str, probe: Probe) -> AsyncIterator[Worker]:
        async with Worker(probe, broker_url, queue, concurrency=self.worker_concurrency) as w:
            yield w

    @pytest.fixture
    async def client(self, broker_url: str, queue: str) -> AsyncIterator[AsyncClient]:
        async with AsyncClient(broker_url, queue, timeout=10) as c:
            yield c

    async def inject(
        self, broker_url: str, queue: str, body: bytes, delivery_count: int = 1, wait: float = 5
    ) -> bytes | None:
        raise NotImplementedError

    async def dead_letters(self, broker_url: str, queue: str) -> list[bytes]:
        raise NotImplementedError

    def waiting_url(self, broker_url: str) -> str:
        joiner = "&" if "?" in broker_url else "?"
        return f"{broker_url}{joiner}worker_window=0"

    async def leftovers(self, broker_url: str, queue: str) -> list[str]:
        raise NotImplementedError

    def unreachable_url(self, broker_url: str) -> str:
        raise NotImplementedError

    async def wait_queued(
        self, broker_url: str, queue: str, client: AsyncClient, count: int
    ) -> None:
        raise NotImplementedError

    expired_reach_the_worker = True
    workers_connect = True
    """Whether a worker connects to a broker (an HTTP worker listens instead)."""

    cuts_connections = False
    """Whether the test can close a client's or a worker's connections from the broker."""

    taking_task: str | None = None
    """The worker's task that takes a request by itself (`Delivery.arrived_alone`) and, with
    nothing else in flight, answers it too, by its coroutine's name; None where the
    transport hands every request to a task of its own."""

    async def cut_client(self, broker_url: str, client: AsyncClient) -> None:
        raise NotImplementedError

    async def cut_worker(self, broker_url: str, queue: str) -> None:
        raise NotImplementedError

    def _need_cuts(self) -> None:
        if not self.cuts_connections:
            pytest.skip("this transport's connections can't be cut from the broker's side here")

    # --- calls ---------------------------------------------------------------------------

    async def test_round_trip(self, worker: Worker, client: AsyncClient) -> None:
        assert await client.add(1, 5.1) == 6.1

    async def test_named_params(self, worker: Worker, client: AsyncClient) -> None:
        assert await client.call("subtract", subtrahend=23, minuend=42) == 19

    async def test_notification_runs_without_reply(
        self, worker: Worker, client: AsyncClient, probe: Probe
    ) -> None:
        await client.notify("record", "hello")
        await eventually(lambda: "hello" in probe.ran)

    async def test_batch(self, worker: Worker, client: AsyncClient, probe: Probe) -> None:
        async with client.batch() as batch:
            total = batch.add(1, 2)
            difference = batch.subtract(minuend=5, subtrahend=3)
            batch.notify("record", "in a batch")
            missing = batch.call("nope")
        assert total.result() == 3
        assert difference.result() == 2
        with pytest.raises(RemoteError) as caught:
            missing.result()
        assert caught.value.code == ErrorCode.METHOD_NOT_FOUND
        await eventually(lambda: "in a batch" in probe.ran)

    async def test_errors_carry_code_message_and_data(
        self, worker: Worker, client: AsyncClient
    ) -> None:
        with pytest.raises(RemoteError) as caught:
            await client.refuse()
        assert (caught.value.code, caught.value.message) == (4001, "insufficient funds")
        assert caught.value.data == {"balance": 3}
        with pytest.raises(RemoteError) as caught:
            await client.fail("boom")
        assert caught.value.code == ErrorCode.SERVER_ERROR
        assert caught.value.data["type"] == "ValueError"
        assert caught.value.data["message"] == "boom"
        assert "traceback" not in caught.value.data

    async def test_only_declared_methods(self, worker: Worker, client: AsyncClient) -> None:
        for name in ("nope", "_secret", "__class__", "__init__", "instance_eval", "ran"):
            with pytest.raises(RemoteError) as caught:
                await client.call(name)
            assert caught.value.code == ErrorCode.METHOD_NOT_FOUND, name

    async def test_invalid_params_named(self, worker: Worker, client: AsyncClient) -> None:
        with pytest.raises(RemoteError) as caught:
            await client.add(1)
        assert caught.value.code == ErrorCode.INVALID_PARAMS
        assert "'b'" in caught.value.data["message"]
        with pytest.raises(RemoteError) as caught:
            await client.add("one", 2)
        assert caught.value.code == ErrorCode.INVALID_PARAMS
        assert "'a'" in caught.value.data["message"]

    async def test_discover(self, worker: Worker, client: AsyncClient) -> None:
        document = await client.describe()
        names = {method["name"] for method in document["methods"]}
        assert {"add", "subtract", "echo", "slow"} <= names
        assert not any(name.startswith("_") for name in names)

    async def test_many_calls_in_flight_on_one_client(
        self, worker: Worker, client: AsyncClient
    ) -> None:
        results = await asyncio.gather(*(client.add(i, 1) for i in range(2000)))
        assert results == [i + 1 for i in range(2000)]

    async def test_concurrent_slow_calls_overlap(self, worker: Worker, client: AsyncClient) -> None:
        started = time.monotonic()
        tags = await asyncio.gather(*(client.slow(0.5, i) for i in range(8)))
        assert tags == list(range(8))
        assert time.monotonic() - started < 3.5  # 8 x 0.5 s one after another would be 4 s

    async def test_never_runs_more_than_its_concurrency(
        self, worker: Worker, client: AsyncClient, probe: Probe
    ) -> None:
        # Quick calls between the held ones: their settles take new messages in batches
        # while the worker's own take waits too, and neither may take beyond the limit.
        limit = self.worker_concurrency
        calls = [client.hold(0.02 * (i % 3)) if i % 4 else client.add(i, 1) for i in range(400)]
        await asyncio.gather(*calls)
        assert probe.peak <= limit
        assert probe.peak >= limit * 3 // 4  # and it used its slots, not only a few of them
        assert probe.running == 0

    async def test_sync_client_from_threads(
        self, worker: Worker, broker_url: str, queue: str
    ) -> None:
        results: dict[int, object] = {}

        def work(client: Client, n: int) -> None:
            results[n] = client.add(n, 0.5)

        def run_threads() -> None:
            with Client(broker_url, queue, timeout=10) as client:
                threads = [threading.Thread(target=work, args=(client, n)) for n in range(20)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()

        await asyncio.to_thread(run_threads)
        assert results == {n: n + 0.5 for n in range(20)}

    async def test_large_params_round_trip(self, worker: Worker, client: AsyncClient) -> None:
        value = "x" * 200_000
        assert await client.echo(value) == value

    async def test_a_lone_request_is_answered_in_the_task_that_took_it(
        self, broker_url: str, queue: str
    ) -> None:
        # One call after another, a task of its own would cost a turn of the event loop
        # before the reply goes out.
        if self.taking_task is None:
            pytest.skip("this transport hands every request to a task of its own")
        async with (
            Worker(Where(), broker_url, queue, concurrency=64) as worker,
            AsyncClient(broker_url, queue, timeout=10) as client,
        ):
            calls = await until_inline(client)
            for n in range(5):
                # Nothing else in flight: the last call's settle may still wait for its
                # answer (over Redis the next request can be taken first; then it has a task).
                await eventually(lambda: worker.record().in_flight == 0)
                assert await client.which(n) == self.taking_task
            # Requests taken together go on together, each in a task (the first of them may
            # still come alone).
            burst = await asyncio.gather(*(client.which(n) for n in range(64)))
            assert burst.count(self.taking_task) < 32, burst
            assert worker.stats.completed == calls + 5 + 64
            await eventually(lambda: worker.record().in_flight == 0)
            assert await client.which(0) == self.taking_task  # and alone again afterwards

    async def test_a_client_on_asyncios_loop_reads_at_most_read_size_at_once(
        self, worker: Worker, broker_url: str, queue: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # asyncio's socket transport reads up to 256 KiB at once into a fresh bytes object,
        # which glibc maps and unmaps at every read: our connections ask for READ_SIZE.
        reads: list[tuple[int, int, int]] = []
        read = selector_events._SelectorSocketTransport._read_ready__data_received  # type: ignore[attr-defined]

        def recorded(transport: asyncio.Transport) -> None:
            size: int = transport.max_size  # type: ignore[attr-defined]
            reads.append((threading.get_ident(), id(transport), size))
            read(transport)

        monkeypatch.setattr(
            selector_events._SelectorSocketTransport,  # type: ignore[attr-defined]
            "_read_ready__data_received",
            recorded,
        )

        async def calls() -> int:  # on a loop of asyncio's own, in a thread of its own
            async with AsyncClient(broker_url, queue, timeout=10) as client:
                assert await client.add(1, 2) == 3
                value = "x" * 300_000  # more than one read
                assert await client.echo(value) == value
            return threading.get_ident()

        caller = await asyncio.to_thread(asyncio.run, calls())
        connections: dict[int, list[int]] = {}
        for thread, connection, size in reads:
            if thread == caller:
                connections.setdefault(connection, []).append(size)
        assert connections
        for sizes in connections.values():
            # Its first read may come while the connection is being made, before it is ours
            # (a NATS server greets at once).
            assert set(sizes[1:]) <= {READ_SIZE}, sizes

    async def test_too_large_message_is_refused(self, worker: Worker, client: AsyncClient) -> None:
        with pytest.raises(RemoteError) as caught:
            await client.echo("x" * (2 * 1024 * 1024))
        assert caught.value.code == ErrorCode.MESSAGE_TOO_LARGE
        assert await client.add(1, 1) == 2  # and the worker goes on

    # --- time ----------------------------------------------------------------------------

    async def test_timeout_without_worker(self, broker_url: str, queue: str) -> None:
        async with AsyncClient(self.waiting_url(broker_url), queue, timeout=0.5) as client:
            started = time.monotonic()
            with pytest.raises(CallTimeout):
                await client.add(1, 2)
            assert 0.4 < time.monotonic() - started < 3

    async def test_per_call_timeout(
        self, worker: Worker, client: AsyncClient, probe: Probe
    ) -> None:
        try:
            with pytest.raises(CallTimeout):
                await client.call("parked", "given up", timeout=0.3)
            assert await client.add(2, 2) == 4
        finally:
            probe.gate.set()  # a wire without deadlines runs it still: let it end now

    async def test_expired_request_is_not_run(
        self, broker_url: str, queue: str, probe: Probe
    ) -> None:
        async with AsyncClient(self.waiting_url(broker_url), queue, timeout=0.3) as client:
            with pytest.raises(CallTimeout):
                await client.record("too late")
        async with (
            Worker(probe, broker_url, queue, concurrency=1) as worker,
            AsyncClient(broker_url, queue, timeout=10) as client,
        ):
            assert await client.add(1, 1) == 2  # one at a time: the late one came first
            assert "too late" not in probe.ran
            assert worker.stats.expired == (1 if self.expired_reach_the_worker else 0)

    async def test_requests_wait_for_a_worker(
        self, broker_url: str, queue: str, probe: Probe
    ) -> None:
        async with AsyncClient(self.waiting_url(broker_url), queue, timeout=10) as client:
            calls = [asyncio.create_task(client.add(i, 1)) for i in range(5)]
            await self.wait_queued(broker_url, queue, client, 5)
            assert not any(call.done() for call in calls)
            async with Worker(probe, broker_url, queue):
                assert await asyncio.gather(*calls) == [1, 2, 3, 4, 5]

    # --- no worker -----------------------------------------------------------------------

    async def test_call_with_no_worker_fails_fast_and_leaves_nothing(
        self, broker_url: str, queue: str
    ) -> None:
        async with AsyncClient(broker_url, queue, timeout=10) as client:
            started = time.monotonic()
            with pytest.raises(NoWorkers) as caught:
                await client.add(1, 2)
            assert time.monotonic() - started < 1.0
            assert caught.value.queue == queue and queue in str(caught.value)
            with pytest.raises(NoWorkers):
                await client.notify("record", 1)
        assert await self.leftovers(broker_url, queue) == []

    async def test_calls_wait_while_a_worker_restarts(
        self, broker_url: str, queue: str, probe: Probe
    ) -> None:
        async with Worker(probe, broker_url, queue), AsyncClient(broker_url, queue) as client:
            assert await client.add(1, 1) == 2
        # The worker was seen alive a moment ago: a call waits for the next one.
        async with AsyncClient(broker_url, queue, timeout=10) as client:
            call = asyncio.create_task(client.add(2, 3))
            await self.wait_queued(broker_url, queue, client, 1)
            assert not call.done()
            async with Worker(probe, broker_url, queue):
                assert await call == 5

    # --- what travels beside a request ---------------------------------------------------

    async def test_send_time_and_trace_context_reach_the_worker(
        self, broker_url: str, queue: str, worker: Worker
    ) -> None:
        seen: list[tuple[float | None, dict[str, str] | None]] = []
        taken = worker.observer.taken

        def spy(delivery):  # type: ignore[no-untyped-def]
            seen.append((delivery.sent, dict(delivery.trace) if delivery.trace else None))
            return taken(delivery)

        worker.observer.taken = spy  # type: ignore[method-assign]
        transport = client_transport(broker_url)
        await transport.connect()
        try:
            before = time.time()
            body = b'{"jsonrpc":"2.0","method":"add","params":[1,2],"id":1}'
            reply = await transport.request(queue, body, time.time() + 10, TRACE)
            assert orjson.loads(reply)["result"] == 3
            await transport.send(
                queue, b'{"jsonrpc":"2.0","method":"record","params":[1]}', None, TRACE
            )
            await eventually(lambda: len(seen) == 2)
            for sent, trace in seen:
                assert sent is not None and before - 1 <= sent <= time.time() + 1
                assert trace == TRACE
            # No trace context given, none arrives; a send time always does.
            await transport.request(queue, body, time.time() + 10)
            await eventually(lambda: len(seen) == 3)
            assert seen[2][0] is not None and seen[2][1] is None
        finally:
            await transport.aclose()

    # --- workers -------------------------------------------------------------------------

    async def test_two_workers_answer_each_request_once(self, broker_url: str, queue: str) -> None:
        first, second = Probe(), Probe()
        async with (
            Worker(first, broker_url, queue),
            Worker(second, broker_url, queue),
            AsyncClient(broker_url, queue, timeout=10) as client,
        ):
            await asyncio.gather(*(client.record(i) for i in range(200)))
            await asyncio.gather(*(client.notify("record", -1) for _ in range(10)))
            await eventually(lambda: len(first.ran) + len(second.ran) == 210)
        values = sorted(v for v in first.ran + second.ran if v != -1)
        assert values == list(range(200))

    async def test_stop_finishes_calls_in_flight(
        self, broker_url: str, queue: str, probe: Probe
    ) -> None:
        async with AsyncClient(broker_url, queue, timeout=10) as client:
            worker = Worker(probe, broker_url, queue)
            running = asyncio.create_task(worker.run())
            await worker.started()
            calls = [asyncio.create_task(client.slow(0.5, i)) for i in range(4)]
            await eventually(lambda: len(probe.ran) == 4)
            worker.stop()
            assert await asyncio.gather(*calls) == [0, 1, 2, 3]
            await asyncio.wait_for(running, 5)

    async def test_closed_client_fails_its_calls_and_the_worker_goes_on(
        self, worker: Worker, broker_url: str, queue: str, probe: Probe
    ) -> None:
        client = AsyncClient(broker_url, queue, timeout=10)
        pending = asyncio.create_task(client.slow(0.3, "orphan"))
        await eventually(lambda: ("slow", "orphan") in probe.ran)  # running in the worker
        await client.aclose()
        with pytest.raises(TransportError):
            await pending
        with pytest.raises(TransportError):
            await client.add(1, 1)  # closed is closed: no new connection
        # The orphan, this worker's only call so far, ends; its reply goes nowhere.
        await eventually(lambda: worker.stats.completed >= 1)
        async with AsyncClient(broker_url, queue, timeout=10) as other:
            assert await other.add(2, 3) == 5

    async def test_blocking_client_closed_from_another_thread_fails_its_waiting_call(
        self, worker: Worker, broker_url: str, queue: str, probe: Probe
    ) -> None:
        client = Client(broker_url, queue, timeout=30)
        assert await asyncio.to_thread(client.add, 1, 1) == 2  # connected
        outcome: list[BaseException | object] = []

        def wait() -> None:
            try:
                outcome.append(client.parked("abandoned"))
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=wait)
        thread.start()
        await eventually(lambda: ("parked", "abandoned") in probe.ran)
        try:
            await asyncio.to_thread(client.close)
            await asyncio.to_thread(thread.join, 10)
            # At once: the reply it waited for never comes while the gate is shut.
            assert outcome and isinstance(outcome[0], TransportError), outcome
        finally:
            probe.gate.set()  # the worker's call ends: nothing left for its stop to wait on

    async def test_client_closed_while_its_first_call_connects_fails_that_call(
        self, worker: Worker, broker_url: str, queue: str
    ) -> None:
        for pause in (0.0, 0.001, 0.005, 0.01, 0.02, 0.05):
            client = AsyncClient(broker_url, queue, timeout=10)
            first = asyncio.create_task(client.slow(0.5, "first"))
            await asyncio.sleep(pause)  # connecting, or connected and sending
            await client.aclose()
            with pytest.raises(TransportError):
                await first

    # --- brokers: where to find them, and losing them -------------------------------------

    async def test_unreachable_broker_is_a_transport_error_quickly(
        self, broker_url: str, queue: str
    ) -> None:
        url = self.unreachable_url(broker_url)
        started = time.monotonic()
        with pytest.raises(TransportError):
            async with AsyncClient(url, queue, timeout=5) as client:
                await client.add(1, 2)

        def sync_call() -> None:
            with Client(url, queue, timeout=5) as client:
                client.add(1, 2)

        with pytest.raises(TransportError):
            await asyncio.to_thread(sync_call)
        if self.workers_connect:
            with pytest.raises(TransportError):
                async with Worker(Probe(), url, queue, wait_for_broker=0):
                    pass
        assert time.monotonic() - started < 10

    @pytest.mark.parametrize("variable", ["REDIS_URL", "CLOUDAMQP_URL", "RABBITMQ_URL"])
    async def test_platform_variables_name_the_broker(
        self, variable: str, broker_url: str, queue: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        for name in ("MICROMESSAGING_BROKER", "REDIS_URL", "CLOUDAMQP_URL", "RABBITMQ_URL"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv(variable, broker_url)
        async with (
            Worker(Probe(), None, queue) as worker,
            AsyncClient(None, queue, timeout=10) as client,
        ):
            assert worker.broker == client.broker == broker_url
            assert await client.add(1, 5.1) == 6.1

    async def test_lost_connection_fails_calls_at_once_then_recovers(
        self, worker: Worker, broker_url: str, queue: str, probe: Probe
    ) -> None:
        self._need_cuts()
        async with AsyncClient(broker_url, queue, timeout=30) as client:
            assert await client.add(1, 1) == 2
            pending = asyncio.create_task(client.parked("lost"))
            try:
                await eventually(lambda: ("parked", "lost") in probe.ran)
                started = time.monotonic()
                await self.cut_client(broker_url, client)
                with pytest.raises(TransportError):
                    await pending
                assert time.monotonic() - started < 5  # told now, not at the 30 s timeout
                await answers_again(client)  # reconnected by itself
            finally:
                probe.gate.set()  # the worker's call ends (a slow machine can't end it first)

    async def test_worker_reconnects_after_losing_its_connections(
        self, worker: Worker, client: AsyncClient, broker_url: str, queue: str
    ) -> None:
        self._need_cuts()
        assert await client.add(1, 1) == 2
        await self.cut_worker(broker_url, queue)
        await answers_again(client)
        results = await asyncio.gather(*(client.add(i, 1) for i in range(50)))
        assert results == [i + 1 for i in range(50)]

    # --- bad input -----------------------------------------------------------------------

    async def test_malformed_json_is_answered(
        self, worker: Worker, client: AsyncClient, broker_url: str, queue: str
    ) -> None:
        reply = await self.inject(broker_url, queue, b'{"jsonrpc": "2.0", "method": "add", ')
        assert reply is not None
        assert orjson.loads(reply)["error"]["code"] == ErrorCode.PARSE_ERROR
        assert await client.add(1, 1) == 2

    async def test_bad_request_objects_are_answered(
        self, worker: Worker, client: AsyncClient, broker_url: str, queue: str
    ) -> None:
        cases = {
            b'{"jsonrpc": "2.0", "method": 1, "params": "bar", "id": 7}': -32600,
            b'{"jsonrpc": "1.0", "method": "add", "params": [1, 2], "id": 7}': -32600,
            b'{"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": true}': -32600,
            b"[1, 2]": -32600,
            b"[]": -32600,
            b'"just a string"': -32600,
            b'{"jsonrpc": "2.0", "method": "__class__", "id": 7}': -32601,
            b'{"jsonrpc": "2.0", "method": "add", "params": {"a": 1, "c": 2}, "id": 7}': -32602,
            b"[" * 5000 + b"]" * 5000: -32700,
            b"\xff\xfe not utf-8": -32700,
        }
        for body, code in cases.items():
            reply = await self.inject(broker_url, queue, body)
            assert reply is not None, body[:40]
            decoded = orjson.loads(reply)
            first = decoded[0] if isinstance(decoded, list) else decoded
            assert first["error"]["code"] == code, body[:40]
        assert await client.add(1, 1) == 2

    async def test_delivery_limit_dead_letters_and_answers(
        self, worker: Worker, client: AsyncClient, broker_url: str, queue: str, probe: Probe
    ) -> None:
        body = b'{"jsonrpc": "2.0", "method": "record", "params": ["poison"], "id": 9}'
        reply = await self.inject(broker_url, queue, body, delivery_count=worker.max_deliveries + 1)
        assert reply is not None
        assert orjson.loads(reply)["error"]["code"] == ErrorCode.DELIVERY_LIMIT
        assert "poison" not in probe.ran
        assert body in await self.dead_letters(broker_url, queue)
        assert await client.add(1, 1) == 2

    # --- hygiene -------------------------------------------------------------------------

    async def test_nothing_left_behind(self, broker_url: str, queue: str, probe: Probe) -> None:
        async with (
            Worker(probe, broker_url, queue) as _,
            AsyncClient(broker_url, queue, timeout=10) as client,
        ):
            await asyncio.gather(*(client.add(i, 1) for i in range(300)))
            await client.notify("record", 1)
            await eventually(lambda: probe.ran == [1])  # the notification, too, is done
        assert await self.leftovers(broker_url, queue) == []
