"""RabbitMQ under faults: a broker restarted under load, connections cut, workers killed.

Broker faults run on a RabbitMQ node of this module's own (its own node name, ports, data
and log directories, no plugins), started once for the module and always stopped: the
shared broker on 5672 is never restarted or told to close connections. The node also
listens for amqps:// (a self-signed certificate), to show TLS end to end. Worker faults
(kill -9, SIGTERM, a request that crashes its worker) use the shared broker and worker
subprocesses (``python -m micromessaging worker``) serving `FaultService` below.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote

import orjson
import pytest

from micromessaging import (
    AsyncClient,
    CallTimeout,
    Client,
    ConfigurationError,
    ErrorCode,
    RemoteError,
    TransportError,
    Worker,
)
from tests.brokers import RabbitNode
from tests.transports.contract import Probe, eventually
from tests.transports.test_amqp import delete_queues, drain_queue, queue_state

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.fault


@pytest.fixture
def queue() -> str:
    return f"mm-fault-{uuid.uuid4().hex[:12]}"


# --- broker faults -------------------------------------------------------------------------------


class Outcomes:
    """What happened to each call of a steady load: result, error and how long it took."""

    def __init__(self) -> None:
        self.results: list[tuple[float, float, object]] = []  # (started, took, outcome)

    def since(self, moment: float) -> list[object]:
        return [outcome for started, _, outcome in self.results if started >= moment]


async def steady_load(client: AsyncClient, outcomes: Outcomes, stop: asyncio.Event) -> None:
    async def lane(n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            started = time.monotonic()
            try:
                outcome: object = await client.add(n, i)
                assert outcome == n + i
            except (TransportError, CallTimeout) as exc:
                outcome = exc
                await asyncio.sleep(0.05)
            outcomes.results.append((started, time.monotonic() - started, outcome))

    await asyncio.gather(*(lane(n) for n in range(8)))


async def test_broker_restart_under_load(rabbit_node: RabbitNode, queue: str) -> None:
    timeout = 5.0
    outcomes, stop = Outcomes(), asyncio.Event()
    async with (
        Worker(Probe(), rabbit_node.url, queue, concurrency=8) as worker,
        AsyncClient(rabbit_node.url, queue, timeout=timeout) as client,
    ):
        load = asyncio.create_task(steady_load(client, outcomes, stop))
        await eventually(lambda: len(outcomes.results) > 50)
        await asyncio.to_thread(rabbit_node.stop_app)  # closes every connection, drops the queue
        await asyncio.sleep(1.0)
        await asyncio.to_thread(rabbit_node.start_app)
        restarted = time.monotonic()
        # Both ends reconnect by themselves (the queue is declared anew) and go on.
        await eventually(
            lambda: sum(not isinstance(o, Exception) for o in outcomes.since(restarted)) > 50, 30
        )
        stop.set()
        await asyncio.wait_for(load, timeout + 5)
        assert await client.add(20, 22) == 42
    took = [took for _, took, _ in outcomes.results]
    errors = [o for _, _, o in outcomes.results if isinstance(o, Exception)]
    assert max(took) < timeout + 1  # nothing hung
    assert errors, "the outage went unnoticed?"
    assert all(isinstance(e, TransportError | CallTimeout) for e in errors)
    # Calls in flight when the connection dropped failed at once, not at their timeout.
    assert any(isinstance(e, TransportError) for e in errors)
    assert worker.stats.completed > 100


async def test_calls_in_flight_fail_fast_when_the_connection_is_cut(
    rabbit_node: RabbitNode, queue: str
) -> None:
    async with (
        Worker(Probe(), rabbit_node.url, queue) as worker,
        AsyncClient(rabbit_node.url, queue, timeout=20) as client,
    ):
        pending = [asyncio.create_task(client.slow(2, i)) for i in range(3)]
        await asyncio.sleep(0.5)
        started = time.monotonic()
        await asyncio.to_thread(rabbit_node.ctl, "close_all_connections", "test: cut")
        for call in pending:
            with pytest.raises(TransportError, match="lost"):
                await call
        assert time.monotonic() - started < 5  # not the 20 s timeout
        # The client and worker are back on new connections; the cut calls' requests were
        # delivered again (unacknowledged), and new calls are answered.
        started = time.monotonic()
        while True:
            try:
                assert await client.add(1, 2) == 3
                break
            except TransportError:
                assert time.monotonic() - started < 15
                await asyncio.sleep(0.1)
        await eventually(lambda: worker.stats.transport_errors >= 1, 10)


async def test_vhost_user_and_password_from_the_url(rabbit_node: RabbitNode, queue: str) -> None:
    vhost, user, password = "mm-vhost", "mm-user", "p@ss/w:rd"
    rabbit_node.ctl("add_vhost", vhost)
    rabbit_node.ctl("add_user", user, password)
    rabbit_node.ctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    url = f"amqp://{user}:p%40ss%2Fw%3Ard@127.0.0.1:{rabbit_node.port}/{vhost}"
    async with Worker(Probe(), url, queue), AsyncClient(url, queue) as client:
        assert await client.add(1, 5.1) == 6.1
    assert f"{queue}\t0" in rabbit_node.ctl("list_queues", "-p", vhost, "name", "messages")
    with pytest.raises(TransportError):
        async with AsyncClient(
            f"amqp://{user}:wrong@127.0.0.1:{rabbit_node.port}/{vhost}", queue
        ) as c:
            await c.add(1, 2)
    # A caller allowed to publish and read but not to declare (configure) still gets answers.
    rabbit_node.ctl("add_user", "mm-caller", "secret")
    rabbit_node.ctl("set_permissions", "-p", vhost, "mm-caller", "^$", ".*", ".*")
    caller = f"amqp://mm-caller:secret@127.0.0.1:{rabbit_node.port}/{vhost}"
    async with Worker(Probe(), url, queue), AsyncClient(caller, queue) as client:
        assert await client.add(2, 3) == 5


# --- amqps:// ----------------------------------------------------------------------------------


def sync_add(url: str, queue: str) -> object:
    with Client(url, queue, timeout=5) as client:
        return client.add(1, 5.1)


async def round_trips(rabbit_node: RabbitNode, url: str, queue: str) -> None:
    async with Worker(Probe(), url, queue), AsyncClient(url, queue, timeout=5) as client:
        assert await client.add(1, 5.1) == 6.1
        assert await asyncio.to_thread(sync_add, url, queue) == 6.1
        # Both ends really are on TLS connections (a closing one of an earlier test may not be).
        lines = (await asyncio.to_thread(rabbit_node.ctl, "list_connections", "ssl")).split()
        assert lines.count("true") >= 2


async def serve(url: str, queue: str) -> None:
    async with Worker(Probe(), url, queue):
        pass


async def test_amqps_with_a_self_signed_certificate(rabbit_node: RabbitNode, queue: str) -> None:
    tls = f"amqps://guest:guest@127.0.0.1:{rabbit_node.tls_port}/"
    cafile = quote(str(rabbit_node.cafile), safe="")
    await asyncio.wait_for(round_trips(rabbit_node, f"{tls}?cafile={cafile}", queue), 30)
    await asyncio.wait_for(round_trips(rabbit_node, f"{tls}?no_verify_ssl=true", queue), 30)
    # Without the CA file (or with no_verify_ssl=false) the certificate is refused, at once.
    started = time.monotonic()
    for url in (tls, f"{tls}?no_verify_ssl=false"):
        with pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED"):
            await asyncio.wait_for(round_trips(rabbit_node, url, queue), 15)
    with pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED"):
        await asyncio.wait_for(serve(tls, queue), 15)
    assert time.monotonic() - started < 5
    with pytest.raises(ConfigurationError, match="no_verify_ssl must be true or false"):
        await asyncio.wait_for(serve(f"{tls}?no_verify_ssl=", queue), 15)


# --- worker faults (shared broker, worker subprocesses) -------------------------------------


class FaultService:
    """Served by worker subprocesses; records each execution in $MM_FAULT_LOG."""

    def _record(self, what: object) -> None:
        with open(os.environ["MM_FAULT_LOG"], "a") as log:
            log.write(f"{os.getpid()} {orjson.dumps(what).decode()}\n")

    async def slow_add(self, a: int, b: int, seconds: float) -> int:
        self._record(a)
        await asyncio.sleep(seconds)
        return a + b

    def crash(self) -> None:
        self._record("crash")
        os.kill(os.getpid(), signal.SIGKILL)

    def add(self, a: int, b: int) -> int:
        return a + b


def executions(log: Path) -> list[tuple[int, object]]:
    if not log.exists():
        return []
    lines = log.read_text().splitlines()
    return [(int(pid), orjson.loads(what)) for pid, what in (line.split(" ", 1) for line in lines)]


@contextlib.contextmanager
def workers(
    amqp_url: str, queue: str, log: Path, *options: str, count: int = 1
) -> Iterator[list[subprocess.Popen[bytes]]]:
    command = [
        sys.executable, "-m", "micromessaging", "worker",
        "tests.fault.test_amqp_faults:FaultService",
        "--broker", amqp_url, "--queue", queue, "--log-level", "warning", *options,
    ]  # fmt: skip
    env = {**os.environ, "MM_FAULT_LOG": str(log)}
    processes = [
        subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True) for _ in range(count)
    ]
    try:
        yield processes
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


async def consumers(amqp_url: str, queue: str, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        state = await queue_state(amqp_url, queue)
        if state is not None and state[1] >= count:
            return
        assert time.monotonic() < deadline, f"{count} consumers never came"
        await asyncio.sleep(0.05)


@pytest.fixture
async def shared_queue(amqp_url: str) -> AsyncIterator[str]:
    name = f"mm-fault-{uuid.uuid4().hex[:12]}"
    yield name
    await delete_queues(amqp_url, name)


async def test_kill_9_with_1000_calls_in_flight_across_two_workers(
    shared_queue: str, tmp_path: Path, amqp_url: str
) -> None:
    log = tmp_path / "executions"
    with workers(amqp_url, shared_queue, log, "--concurrency", "32", count=2) as (victim, survivor):
        await consumers(amqp_url, shared_queue, 2)
        async with AsyncClient(amqp_url, shared_queue, timeout=60) as client:
            calls = [asyncio.create_task(client.slow_add(i, 1, 0.02)) for i in range(1000)]
            await eventually(lambda: sum(call.done() for call in calls) >= 200, 30)
            victim.kill()  # SIGKILL: no goodbye, ~32 calls unacknowledged in its hands
            results = await asyncio.gather(*calls)
            assert survivor.poll() is None
        assert results == [i + 1 for i in range(1000)]  # each call: one correct answer
    ran = executions(log)
    by_victim = {what for pid, what in ran if pid == victim.pid}
    by_survivor = {what for pid, what in ran if pid == survivor.pid}
    assert by_victim and by_victim | by_survivor == set(range(1000))
    # What the victim held when it died was delivered again, and answered by the survivor.
    assert by_victim & by_survivor


async def test_sigterm_finishes_calls_in_flight_and_leaves_the_rest(
    shared_queue: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, amqp_url: str
) -> None:
    log = tmp_path / "executions"
    monkeypatch.setenv("MM_FAULT_LOG", str(log))  # for the in-process worker at the end
    with workers(amqp_url, shared_queue, log, "--concurrency", "4") as (worker,):
        await consumers(amqp_url, shared_queue, 1)
        async with AsyncClient(amqp_url, shared_queue, timeout=30) as client:
            calls = [asyncio.create_task(client.slow_add(i, 1, 1.0)) for i in range(10)]
            await eventually(lambda: len(executions(log)) == 4, 10)
            worker.send_signal(signal.SIGTERM)
            started = [what for _, what in executions(log)]
            assert await asyncio.to_thread(worker.wait, 20) == 0
            for i in started:  # in flight: finished and answered before the exit
                assert calls[i].done() and calls[i].result() == i + 1
            assert await queue_state(amqp_url, shared_queue) == (6, 0)  # the rest stayed
            async with Worker(FaultService(), amqp_url, shared_queue):
                assert await asyncio.gather(*calls) == [i + 1 for i in range(10)]
    assert sorted(what for _, what in executions(log)) == list(range(10))  # each ran once


async def test_a_request_that_kills_its_workers_is_dead_lettered_and_answered(
    shared_queue: str, tmp_path: Path, amqp_url: str
) -> None:
    log = tmp_path / "executions"
    with workers(amqp_url, shared_queue, log, "--processes", "2", "--max-deliveries", "3"):
        await consumers(amqp_url, shared_queue, 2)
        async with AsyncClient(amqp_url, shared_queue, timeout=60) as client:
            with pytest.raises(RemoteError) as caught:
                await client.crash()
            assert caught.value.code == ErrorCode.DELIVERY_LIMIT
            await consumers(amqp_url, shared_queue, 2)  # the supervisor restarted the dead ones
            assert await client.add(2, 3) == 5
    assert [what for _, what in executions(log)] == ["crash"] * 3
    (dead,) = await drain_queue(amqp_url, f"{shared_queue}.dead")
    assert orjson.loads(dead.body)["method"] == "crash"
