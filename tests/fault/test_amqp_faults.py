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
import random
import shutil
import signal
import socket
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
from tests.transports.contract import Probe, eventually
from tests.transports.test_amqp import BROKER, delete_queues, drain_queue, queue_state

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.fault,
    pytest.mark.skipif(
        not (RABBITMQ_BIN / "rabbitmq-server").exists(), reason="rabbitmq-server is not installed"
    ),
]


# --- a RabbitMQ node of our own ---------------------------------------------------------------


def free_port() -> int:
    """A free port below Linux's ephemeral range, so that no outgoing connection takes it
    between a stop and a start (RabbitMQ then fails with eaddrinuse)."""
    while True:
        port = random.randrange(20000, 32000)
        if port in (25672, 25673):  # the shared node's distribution port
            continue
        with contextlib.suppress(OSError), socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
            return port


def listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


class RabbitNode:
    """A RabbitMQ node on 127.0.0.1 with its own name, ports and directories."""

    def __init__(self, base: Path, certificate: tuple[Path, Path] | None = None) -> None:
        self.port, self.dist_port = free_port(), free_port()
        self.name = f"rabbit-test-{os.getpid()}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        self.base = base
        config = "log.console = false\n"
        self.tls_port: int | None = None
        if certificate is not None:  # also listen for amqps://, without asking for client certs
            cert, key = certificate
            self.tls_port = free_port()
            config += (
                f"listeners.ssl.default = 127.0.0.1:{self.tls_port}\n"
                f"ssl_options.cacertfile = {cert}\n"
                f"ssl_options.certfile = {cert}\n"
                f"ssl_options.keyfile = {key}\n"
                "ssl_options.verify = verify_none\n"
                "ssl_options.fail_if_no_peer_cert = false\n"
            )
        (base / "rabbitmq.conf").write_text(config)
        (base / "rabbitmq-env.conf").write_text("")
        (base / "enabled_plugins").write_text("[].\n")
        self.env = {
            **os.environ,
            "HOME": str(base),  # its own Erlang cookie
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_PID_FILE": str(base / "node.pid"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.base / "server.out", "ab") as log:  # the process has its own copy
            self.process = subprocess.Popen(
                [str(RABBITMQ_BIN / "rabbitmq-server")],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_listening()

    def wait_listening(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        ports = [port for port in (self.port, self.tls_port) if port is not None]
        while not all(listening(port) for port in ports):
            if self.process is not None and self.process.poll() is not None:
                output = (self.base / "server.out").read_text()[-2000:]
                raise RuntimeError(f"the test's RabbitMQ node exited: {output}")
            if time.monotonic() > deadline:
                raise RuntimeError("the test's RabbitMQ node did not start")
            time.sleep(0.2)

    def ctl(self, *args: str) -> str:
        result = subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.name, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode:
            raise RuntimeError(f"rabbitmqctl {args}: {result.stdout}{result.stderr}")
        return result.stdout

    def stop_app(self) -> None:
        self.ctl("stop_app")

    def start_app(self) -> None:
        self.ctl("start_app")
        self.wait_listening()

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(Exception):
            self.ctl("stop")
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key, made with openssl."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitNode]:
    base = tmp_path_factory.mktemp("rabbitmq")
    rabbit = RabbitNode(base, self_signed_certificate(base))
    try:
        rabbit.start()
        yield rabbit
    finally:
        rabbit.stop()
        shutil.rmtree(rabbit.base, ignore_errors=True)


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


async def test_broker_restart_under_load(node: RabbitNode, queue: str) -> None:
    timeout = 5.0
    outcomes, stop = Outcomes(), asyncio.Event()
    async with (
        Worker(Probe(), node.url, queue, concurrency=8) as worker,
        AsyncClient(node.url, queue, timeout=timeout) as client,
    ):
        load = asyncio.create_task(steady_load(client, outcomes, stop))
        await eventually(lambda: len(outcomes.results) > 50)
        await asyncio.to_thread(node.stop_app)  # closes every connection, drops the queue
        await asyncio.sleep(1.0)
        await asyncio.to_thread(node.start_app)
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
    node: RabbitNode, queue: str
) -> None:
    async with (
        Worker(Probe(), node.url, queue) as worker,
        AsyncClient(node.url, queue, timeout=20) as client,
    ):
        pending = [asyncio.create_task(client.slow(2, i)) for i in range(3)]
        await asyncio.sleep(0.5)
        started = time.monotonic()
        await asyncio.to_thread(node.ctl, "close_all_connections", "test: cut")
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


async def test_vhost_user_and_password_from_the_url(node: RabbitNode, queue: str) -> None:
    vhost, user, password = "mm-vhost", "mm-user", "p@ss/w:rd"
    node.ctl("add_vhost", vhost)
    node.ctl("add_user", user, password)
    node.ctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    url = f"amqp://{user}:p%40ss%2Fw%3Ard@127.0.0.1:{node.port}/{vhost}"
    async with Worker(Probe(), url, queue), AsyncClient(url, queue) as client:
        assert await client.add(1, 5.1) == 6.1
    assert f"{queue}\t0" in node.ctl("list_queues", "-p", vhost, "name", "messages")
    with pytest.raises(TransportError):
        async with AsyncClient(f"amqp://{user}:wrong@127.0.0.1:{node.port}/{vhost}", queue) as c:
            await c.add(1, 2)
    # A caller allowed to publish and read but not to declare (configure) still gets answers.
    node.ctl("add_user", "mm-caller", "secret")
    node.ctl("set_permissions", "-p", vhost, "mm-caller", "^$", ".*", ".*")
    caller = f"amqp://mm-caller:secret@127.0.0.1:{node.port}/{vhost}"
    async with Worker(Probe(), url, queue), AsyncClient(caller, queue) as client:
        assert await client.add(2, 3) == 5


# --- amqps:// ----------------------------------------------------------------------------------


def sync_add(url: str, queue: str) -> object:
    with Client(url, queue, timeout=5) as client:
        return client.add(1, 5.1)


async def round_trips(node: RabbitNode, url: str, queue: str) -> None:
    async with Worker(Probe(), url, queue), AsyncClient(url, queue, timeout=5) as client:
        assert await client.add(1, 5.1) == 6.1
        assert await asyncio.to_thread(sync_add, url, queue) == 6.1
        # Both ends really are on TLS connections (a closing one of an earlier test may not be).
        lines = (await asyncio.to_thread(node.ctl, "list_connections", "ssl")).split()
        assert lines.count("true") >= 2


async def serve(url: str, queue: str) -> None:
    async with Worker(Probe(), url, queue):
        pass


async def test_amqps_with_a_self_signed_certificate(node: RabbitNode, queue: str) -> None:
    tls = f"amqps://guest:guest@127.0.0.1:{node.tls_port}/"
    cafile = quote(str(node.base / "cert.pem"), safe="")
    await asyncio.wait_for(round_trips(node, f"{tls}?cafile={cafile}", queue), 30)
    await asyncio.wait_for(round_trips(node, f"{tls}?no_verify_ssl=true", queue), 30)
    # Without the CA file (or with no_verify_ssl=false) the certificate is refused, at once.
    started = time.monotonic()
    for url in (tls, f"{tls}?no_verify_ssl=false"):
        with pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED"):
            await asyncio.wait_for(round_trips(node, url, queue), 15)
    with pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED"):
        await asyncio.wait_for(serve(tls, queue), 15)
    assert time.monotonic() - started < 5
    with pytest.raises(ConfigurationError, match="no_verify_ssl='' is not a yes or no"):
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
    queue: str, log: Path, *options: str, count: int = 1
) -> Iterator[list[subprocess.Popen[bytes]]]:
    command = [
        sys.executable, "-m", "micromessaging", "worker",
        "tests.fault.test_amqp_faults:FaultService",
        "--broker", BROKER, "--queue", queue, "--log-level", "warning", *options,
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


async def consumers(queue: str, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        state = await queue_state(BROKER, queue)
        if state is not None and state[1] >= count:
            return
        assert time.monotonic() < deadline, f"{count} consumers never came"
        await asyncio.sleep(0.05)


@pytest.fixture
async def shared_queue() -> AsyncIterator[str]:
    name = f"mm-fault-{uuid.uuid4().hex[:12]}"
    yield name
    await delete_queues(BROKER, name)


async def test_kill_9_with_1000_calls_in_flight_across_two_workers(
    shared_queue: str, tmp_path: Path
) -> None:
    log = tmp_path / "executions"
    with workers(shared_queue, log, "--concurrency", "32", count=2) as (victim, survivor):
        await consumers(shared_queue, 2)
        async with AsyncClient(BROKER, shared_queue, timeout=60) as client:
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
    shared_queue: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "executions"
    monkeypatch.setenv("MM_FAULT_LOG", str(log))  # for the in-process worker at the end
    with workers(shared_queue, log, "--concurrency", "4") as (worker,):
        await consumers(shared_queue, 1)
        async with AsyncClient(BROKER, shared_queue, timeout=30) as client:
            calls = [asyncio.create_task(client.slow_add(i, 1, 1.0)) for i in range(10)]
            await eventually(lambda: len(executions(log)) == 4, 10)
            worker.send_signal(signal.SIGTERM)
            started = [what for _, what in executions(log)]
            assert await asyncio.to_thread(worker.wait, 20) == 0
            for i in started:  # in flight: finished and answered before the exit
                assert calls[i].done() and calls[i].result() == i + 1
            assert await queue_state(BROKER, shared_queue) == (6, 0)  # the rest stayed
            async with Worker(FaultService(), BROKER, shared_queue):
                assert await asyncio.gather(*calls) == [i + 1 for i in range(10)]
    assert sorted(what for _, what in executions(log)) == list(range(10))  # each ran once


async def test_a_request_that_kills_its_workers_is_dead_lettered_and_answered(
    shared_queue: str, tmp_path: Path
) -> None:
    log = tmp_path / "executions"
    with workers(shared_queue, log, "--processes", "2", "--max-deliveries", "3"):
        await consumers(shared_queue, 2)
        async with AsyncClient(BROKER, shared_queue, timeout=60) as client:
            with pytest.raises(RemoteError) as caught:
                await client.crash()
            assert caught.value.code == ErrorCode.DELIVERY_LIMIT
            await consumers(shared_queue, 2)  # the supervisor restarted the dead ones
            assert await client.add(2, 3) == 5
    assert [what for _, what in executions(log)] == ["crash"] * 3
    (dead,) = await drain_queue(BROKER, f"{shared_queue}.dead")
    assert orjson.loads(dead.body)["method"] == "crash"
