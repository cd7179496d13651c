"""http:// joins the transport contract, and shows what is HTTP's own.

Every test runs a real uvicorn server (the worker's) on a free port of 127.0.0.1, and talks
to it with our client or with httpx as a stranger would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest

from micromessaging import (
    AsyncClient,
    CallTimeout,
    ConfigurationError,
    ErrorCode,
    RemoteError,
    TransportError,
    Worker,
)
from micromessaging.transports import (
    Refused,
    WorkerOptions,
    admin_transport,
    client_transport,
    worker_transport,
)
from micromessaging.transports._shared import decode_deadline
from micromessaging.transports.http.wire import encode_deadline

from .admin_contract import AdminContract, wait_until
from .contract import Probe, TransportContract, eventually


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def rpc(method: str, *params: object, id_: object = 1) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "method": method, "params": list(params), "id": id_})


class TestHttpContract(TransportContract):
    @pytest.fixture
    def broker_url(self) -> str:
        return f"http://127.0.0.1:{free_port()}"

    async def inject(
        self, broker_url: str, queue: str, body: bytes, delivery_count: int = 1, wait: float = 5
    ) -> bytes | None:
        async with httpx.AsyncClient(timeout=wait) as http:
            try:
                response = await http.post(f"{broker_url}/{queue}", content=body)
            except httpx.TimeoutException:
                return None
        return response.content or None

    async def dead_letters(self, broker_url: str, queue: str) -> list[bytes]:
        return []  # HTTP keeps none: a dead letter is logged and answered

    workers_connect = False  # an HTTP worker listens

    def unreachable_url(self, broker_url: str) -> str:
        return f"http://127.0.0.1:{free_port()}"

    async def test_requests_wait_for_a_worker(self, broker_url: str, queue: str) -> None:
        pytest.skip(
            "HTTP has no queue: with no worker listening the call fails at once "
            "(test_unreachable_broker_is_a_transport_error_quickly)"
        )

    async def leftovers(self, broker_url: str, queue: str) -> list[str]:
        port = int(broker_url.rsplit(":", 1)[1])
        return [f"a server still listens on port {port}"] if listening(port) else []

    async def test_timeout_without_worker(self, broker_url: str, queue: str) -> None:
        pytest.skip(
            "HTTP has no queue to wait in: with no worker the connection is refused, and the "
            "call fails fast with TransportError "
            "(test_unreachable_broker_is_a_transport_error_quickly); a server that never "
            "answers gives CallTimeout (test_silent_server_times_out)"
        )

    async def test_expired_request_is_not_run(self, broker_url: str, queue: str, probe) -> None:
        pytest.skip(
            "needs a queue that holds the request while no worker runs; HTTP refuses it "
            "instead. Deadlines on HTTP: test_deadline_header_reaches_the_worker and "
            "test_request_waiting_past_its_deadline_is_not_run"
        )

    async def test_calls_wait_while_a_worker_restarts(self, *args, **kwargs) -> None:
        pytest.skip(
            "HTTP has no queue: between one worker's stop and the next one's start nothing "
            "listens, so a call has nowhere to wait and fails at once with NoWorkers "
            "(test_call_with_no_worker_fails_fast_and_leaves_nothing); it never ran, so the "
            "caller may retry it"
        )

    async def test_delivery_limit_dead_letters_and_answers(self, *args, **kwargs) -> None:
        pytest.skip(
            "HTTP has no redelivery: every request is delivered once (delivery_count is "
            "always 1), so the delivery limit can't be reached, and there is no dead-letter "
            "queue to inspect"
        )


# --- HTTP's own behaviours -------------------------------------------------------------------


@pytest.fixture
def url() -> str:
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
async def served(url: str) -> AsyncIterator[tuple[Worker, Probe]]:
    probe = Probe()
    async with Worker(probe, url, "calc", concurrency=4) as worker:
        yield worker, probe


async def test_seed_paths_and_root(served, url: str) -> None:
    async with httpx.AsyncClient() as http:
        for path in ("/calc", "/"):
            response = await http.post(url + path, content=rpc("add", 1, 5.1))
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/json"
            assert orjson.loads(response.content) == {"jsonrpc": "2.0", "result": 6.1, "id": 1}


async def test_wrong_path_and_method_get_jsonrpc_errors(served, url: str) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(url + "/other", content=rpc("add", 1, 2))
        assert response.status_code == 404
        assert orjson.loads(response.content)["error"]["code"] == ErrorCode.INVALID_REQUEST
        response = await http.get(url + "/calc")
        assert response.status_code == 405
        assert response.headers["allow"] == "POST"
        assert orjson.loads(response.content)["error"]["code"] == ErrorCode.INVALID_REQUEST


async def test_notifications_only_get_204(served, url: str) -> None:
    _, probe = served
    note = {"jsonrpc": "2.0", "method": "record", "params": ["n1"]}
    async with httpx.AsyncClient() as http:
        response = await http.post(url + "/calc", content=orjson.dumps(note))
        assert (response.status_code, response.content) == (204, b"")
        batch = orjson.dumps([note, {**note, "params": ["n2"]}])
        response = await http.post(url + "/calc", content=batch)
        assert (response.status_code, response.content) == (204, b"")
    assert {"n1", "n2"} <= set(probe.ran)


async def test_announced_oversized_body_is_refused_unread(served, url: str) -> None:
    """A Content-Length over the limit is answered 413 before one byte of body is sent."""
    port = int(url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /calc HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: 10000000000\r\n\r\n"
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 413")
    assert b"connection: close" in head.lower()  # too big to drain: the server hangs up
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    error = orjson.loads(await reader.readexactly(length))["error"]
    assert error["code"] == ErrorCode.MESSAGE_TOO_LARGE
    assert error["data"]["size"] == 10_000_000_000
    writer.close()


async def test_chunked_oversized_body_is_refused(served, url: str) -> None:
    async def chunks():
        for _ in range(40):
            yield b"x" * 65536  # 2.5 MiB against the 1 MiB limit

    async with httpx.AsyncClient() as http:
        response = await http.post(url + "/calc", content=chunks())
        assert response.status_code == 413
        assert orjson.loads(response.content)["error"]["code"] == ErrorCode.MESSAGE_TOO_LARGE
        # the rest was drained, so the connection serves the next request
        response = await http.post(url + "/calc", content=rpc("add", 1, 1))
        assert orjson.loads(response.content)["result"] == 2


class Gauge:
    """Counts calls running at once."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self.ran: list[object] = []

    async def hold(self, seconds: float, tag: object = None) -> object:
        self.ran.append(tag)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.running -= 1
        return tag


async def test_concurrency_bounds_handed_over_requests_and_backlog_waits(url: str) -> None:
    gauge = Gauge()
    async with (
        Worker(gauge, url + "?backlog=100", "calc", concurrency=3),
        AsyncClient(url, "calc", timeout=10) as client,
    ):
        tags = await asyncio.gather(*(client.hold(0.1, i) for i in range(12)))
    assert tags == list(range(12))
    assert gauge.peak == 3


async def test_full_backlog_is_refused_with_503_and_retry_after(url: str) -> None:
    gauge = Gauge()
    async with (
        Worker(gauge, url + "?backlog=1", "calc", concurrency=1),
        httpx.AsyncClient(timeout=10) as http,
    ):
        first = asyncio.create_task(http.post(url + "/calc", content=rpc("hold", 0.5, "a")))
        await eventually(lambda: gauge.running == 1)
        second = asyncio.create_task(http.post(url + "/calc", content=rpc("hold", 0, "b")))
        await asyncio.sleep(0.1)  # waits for the slot
        third = await http.post(url + "/calc", content=rpc("hold", 0, "c"))
        assert third.status_code == 503
        assert third.headers["retry-after"] == "1"
        error = orjson.loads(third.content)["error"]
        assert error["code"] == ErrorCode.SERVER_ERROR
        assert error["data"]["retry"] is True
        assert (await first).status_code == (await second).status_code == 200
    assert gauge.ran == ["a", "b"]  # the refused request never ran


async def test_refused_request_reaches_our_caller_as_remote_error(url: str) -> None:
    gauge = Gauge()
    async with (
        Worker(gauge, url + "?backlog=1", "calc", concurrency=1),
        AsyncClient(url, "calc", timeout=10) as client,
    ):
        busy = [asyncio.create_task(client.hold(0.4, i)) for i in range(2)]
        await asyncio.sleep(0.15)
        with pytest.raises(RemoteError) as caught:
            await client.hold(0, "refused")
        assert caught.value.code == ErrorCode.SERVER_ERROR
        await asyncio.gather(*busy)


async def test_request_waiting_past_its_deadline_is_not_run(url: str) -> None:
    gauge = Gauge()
    async with (
        Worker(gauge, url, "calc", concurrency=1),
        AsyncClient(url, "calc", timeout=10) as client,
        httpx.AsyncClient(timeout=10) as http,
    ):
        busy = asyncio.create_task(client.hold(0.6, "busy"))
        await eventually(lambda: gauge.running == 1)
        deadline = encode_deadline(time.time() + 0.2).decode()
        started = time.monotonic()
        response = await http.post(
            url + "/calc", content=rpc("hold", 0, "late"), headers={"x-mm-deadline": deadline}
        )
        assert response.status_code == 504
        assert time.monotonic() - started < 0.5  # answered at the deadline, not after "busy"
        assert orjson.loads(response.content)["error"]["code"] == ErrorCode.DEADLINE_EXCEEDED
        await busy
    assert gauge.ran == ["busy"]


async def test_deadline_header_reaches_the_worker(served, url: str) -> None:
    worker, probe = served
    past = encode_deadline(time.time() - 1).decode()
    async with httpx.AsyncClient() as http:
        response = await http.post(
            url + "/calc", content=rpc("record", "stale"), headers={"x-mm-deadline": past}
        )
    assert response.status_code == 504
    assert orjson.loads(response.content)["error"]["code"] == ErrorCode.DEADLINE_EXCEEDED
    assert "stale" not in probe.ran
    assert worker.stats.expired == 1


async def test_worker_cancels_a_call_at_the_deadline_it_was_sent(served, url: str) -> None:
    worker, _ = served
    async with AsyncClient(url, "calc", timeout=10) as client:
        with pytest.raises(CallTimeout):
            await client.call("slow", 3, "cut", timeout=0.3)
        await eventually(lambda: worker.stats.expired == 1, timeout=2)


def test_deadline_header_codec() -> None:
    assert decode_deadline(encode_deadline(1700000000.123)) == pytest.approx(1700000000.123)
    for junk in (None, b"", b"soon", b"-5", b"nan", b"inf"):
        assert decode_deadline(junk) is None


@contextlib.asynccontextmanager
async def raw_server(handle) -> AsyncIterator[str]:
    """A TCP server answering with `handle(reader, writer)`: an HTTP server that misbehaves."""
    tasks: set[asyncio.Task] = set()

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks.add(asyncio.current_task())
        try:
            await handle(reader, writer)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    server = await asyncio.start_server(run, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def test_silent_server_times_out() -> None:
    async def never_answer(reader, writer) -> None:
        await reader.read(65536)
        await asyncio.sleep(5)

    async with raw_server(never_answer) as base, AsyncClient(base, "calc", timeout=0.3) as client:
        started = time.monotonic()
        with pytest.raises(CallTimeout):
            await client.add(1, 2)
        assert 0.25 < time.monotonic() - started < 1.5


async def test_connection_reset_is_a_transport_error() -> None:
    async def hang_up(reader, writer) -> None:
        await reader.read(65536)
        writer.transport.abort()

    async with raw_server(hang_up) as base, AsyncClient(base, "calc", timeout=5) as client:
        with pytest.raises(TransportError):
            await client.add(1, 2)


async def test_plain_http_error_is_a_transport_error_and_jsonrpc_error_a_remote_error() -> None:
    bodies = iter(
        [
            b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 7\r\n\r\nupstream",
            b"HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: %d"
            b"\r\n\r\n%s",
        ]
    )
    error = orjson.dumps(
        {"jsonrpc": "2.0", "error": {"code": -32004, "message": "Unauthorized"}, "id": None}
    )

    async def answer(reader, writer) -> None:
        while await reader.read(65536):
            response = next(bodies)
            writer.write(response % (len(error), error) if b"%d" in response else response)

    async with raw_server(answer) as base, AsyncClient(base, "calc", timeout=5) as client:
        with pytest.raises(TransportError, match="502"):
            await client.add(1, 2)
        with pytest.raises(RemoteError) as caught:
            await client.add(1, 2)
        assert caught.value.code == -32004


async def test_connections_are_kept_alive_and_pooled(served, url: str) -> None:
    transport = client_transport(url)
    async with transport:
        for i in range(50):
            await transport.request("calc", rpc("add", i, 1), time.time() + 5)
        assert transport._pool.open_connections == 1
        bodies = [rpc("slow", 0.05, i, id_=i) for i in range(30)]
        await asyncio.gather(*(transport.request("calc", b, time.time() + 5) for b in bodies))
        assert 1 < transport._pool.open_connections <= 30
        open_before = transport._pool.open_connections
        await asyncio.gather(*(transport.request("calc", b, time.time() + 5) for b in bodies))
        assert transport._pool.open_connections == open_before  # reused, not reopened


async def test_pool_size_bounds_connections(served, url: str) -> None:
    async with AsyncClient(url + "?max_connections=3", "calc", timeout=10) as client:
        results = await asyncio.gather(*(client.slow(0.02, i) for i in range(20)))
        assert results == list(range(20))
        assert client._transport._pool.open_connections <= 3


async def test_stopping_worker_answers_abandoned_calls_with_503(url: str) -> None:
    probe = Probe()
    async with AsyncClient(url, "calc", timeout=10) as client:
        worker = Worker(probe, url, "calc", grace=0.2)
        running = asyncio.create_task(worker.run())
        await worker.started()
        call = asyncio.create_task(client.slow(5, "abandoned"))
        await eventually(lambda: len(probe.ran) == 1)
        worker.stop()
        with pytest.raises(RemoteError) as caught:
            await call
        assert caught.value.code == ErrorCode.SERVER_ERROR
        assert "may have run" in caught.value.data["message"]
        await asyncio.wait_for(running, 5)
        assert not listening(int(url.rsplit(":", 1)[1]))


async def test_port_comes_from_the_environment(monkeypatch) -> None:
    port = free_port()
    monkeypatch.setenv("PORT", str(port))
    async with (
        Worker(Probe(), "http://127.0.0.1", "calc"),
        AsyncClient(f"http://127.0.0.1:{port}", "calc", timeout=5) as client,
    ):
        assert await client.add(2, 3) == 5
    monkeypatch.delenv("PORT")
    with pytest.raises(ConfigurationError, match="PORT"):
        worker_transport("http://127.0.0.1", WorkerOptions(queue="calc"))


async def test_port_in_use_by_another_program_stops_the_worker_at_once() -> None:
    # Refused: the worker does not wait for the port as it would for a broker to start (it
    # took the whole --wait-for-broker, 60 s, saying "cannot reach the broker").
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(Refused, match=r"cannot listen on 127\.0\.0\.1:.*in use"):
            async with Worker(Probe(), f"http://127.0.0.1:{port}", "calc"):
                pass
    with pytest.raises(Refused, match=r"cannot listen on 192\.0\.2\.1"):  # not this host's
        async with Worker(Probe(), f"http://192.0.2.1:{free_port()}", "calc"):
            pass


# --- https -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and localhost, made with openssl."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)


async def test_https_round_trip_with_a_self_signed_certificate(certificate) -> None:
    cert, key = certificate
    port = free_port()
    worker_url = f"https://127.0.0.1:{port}?certfile={cert}&keyfile={key}"
    async with Worker(Probe(), worker_url, "calc") as worker:
        assert worker.broker == worker_url
        async with AsyncClient(f"https://127.0.0.1:{port}?cafile={cert}", "calc") as client:
            assert await client.add(1, 5.1) == 6.1
            assert await asyncio.gather(*(client.add(i, 1) for i in range(50))) == [
                i + 1 for i in range(50)
            ]
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=cert)) as http:
            response = await http.post(f"https://localhost:{port}/calc", content=rpc("add", 2, 2))
            assert orjson.loads(response.content)["result"] == 4
        # a client that does not trust the certificate refuses to talk
        async with AsyncClient(f"https://127.0.0.1:{port}", "calc", timeout=5) as untrusting:
            with pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED"):
                await untrusting.add(1, 1)


def test_https_worker_needs_a_certificate() -> None:
    with pytest.raises(ConfigurationError, match="certfile"):
        worker_transport("https://127.0.0.1:8443", WorkerOptions(queue="calc"))


async def test_dead_letter_is_logged_and_answered(url: str, caplog) -> None:
    transport = worker_transport(url, WorkerOptions(queue="calc"))
    tasks = set()

    def deliver(delivery) -> None:
        reply = b'{"jsonrpc":"2.0","error":{"code":-32003,"message":"x"},"id":1}'
        outcome = delivery.dead_letter("poison", reply if b"with-reply" in delivery.body else None)
        tasks.add(asyncio.ensure_future(outcome))

    await transport.start(deliver)
    try:
        async with httpx.AsyncClient() as http:
            response = await http.post(url + "/calc", content=b"no reply")
            assert response.status_code == 500
            error = orjson.loads(response.content)["error"]
            assert (error["code"], error["data"]["message"]) == (ErrorCode.INTERNAL_ERROR, "poison")
            response = await http.post(url + "/calc", content=b"with-reply")
            assert response.status_code == 200
            assert orjson.loads(response.content)["error"]["code"] == -32003
        assert "dead letter" in caplog.text and "poison" in caplog.text
    finally:
        await transport.aclose()


class WhoAmI:
    """Says which process answered."""

    def pid(self) -> int:
        return os.getpid()


async def test_worker_processes_share_one_port() -> None:
    """--processes 2: both bind the port (SO_REUSEPORT) and the kernel spreads connections."""
    port = free_port()
    command = [sys.executable, "-m", "micromessaging", "worker", f"{__name__}:WhoAmI"]
    command += ["--broker", f"http://127.0.0.1:{port}", "--queue", "who", "--processes", "2"]
    process = await asyncio.create_subprocess_exec(*command, stderr=subprocess.DEVNULL)
    try:
        pids: set[int] = set()
        deadline = time.monotonic() + 30
        while len(pids) < 2 and time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                async with httpx.AsyncClient() as fresh:  # a new connection each time
                    response = await fresh.post(f"http://127.0.0.1:{port}/who", content=rpc("pid"))
                    pids.add(orjson.loads(response.content)["result"])
            await asyncio.sleep(0.02)
        assert len(pids) == 2
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0


# --- the admin side: GET /_mm/status ---------------------------------------------------------


class TestHttpAdmin(AdminContract):
    keeps_dead_letters = False

    @pytest.fixture
    def broker_url(self) -> str:
        return f"http://127.0.0.1:{free_port()}"

    async def test_dead_letters_list_replay_and_purge(self, *args, **kwargs) -> None:
        pytest.skip(
            "HTTP keeps no dead letters: there is no broker to hold them, so a dead letter "
            "is logged and answered (test_http_admin_has_no_queue_and_no_dead_letters)"
        )


async def test_http_admin_has_no_queue_and_no_dead_letters(url: str) -> None:
    async with Worker(Probe(), url, "calc", concurrency=2) as worker, admin_transport(url) as admin:
        async with AsyncClient(url, "calc") as client:
            assert await client.add(1, 2) == 3
        assert await admin.queues() == ["calc"]
        status = await admin.status("calc")
        assert (status.depth, status.oldest_wait, status.dead_letters) == (None, None, None)
        assert [record.id for record in status.workers] == [worker.id]
        assert status.workers[0].completed == 1 and status.in_flight == 0
        assert any("no queue" in note for note in status.notes)
        assert any("no dead letters" in note for note in status.notes)
        assert await admin.dead_letters("calc") == []
        assert await admin.replay("calc", None) == []
        assert await admin.purge("calc", None) == 0
        other = await admin.status("other")
        assert other.workers == [] and any("serves queue 'calc'" in n for n in other.notes)
    # Nothing listens now: no queues, no workers, and a note that says so.
    async with admin_transport(url) as admin:
        assert await admin.queues() == []
        status = await admin.status("calc")
        assert status.workers == [] and any("nothing listens" in n for n in status.notes)


async def test_http_status_path_is_a_get_under_the_prefix(url: str) -> None:
    base = f"{url}/api"
    async with Worker(Probe(), base, "calc") as worker, httpx.AsyncClient() as http:
        response = await http.get(f"{base}/_mm/status")
        assert response.status_code == 200
        data = response.json()
        assert data["queue"] == "calc" and data["worker"]["id"] == worker.id
        assert data["worker"]["pid"] == os.getpid()
        assert (await http.get(f"{url}/_mm/status")).status_code == 404  # not without the prefix
        async with admin_transport(base) as admin:
            assert [r.id for r in (await admin.status("calc")).workers] == [worker.id]


async def test_status_command_over_http(url: str) -> None:
    async with Worker(Probe(), url, "calc") as worker:
        command = [sys.executable, "-m", "micromessaging", "status", "--broker", url]
        text = await asyncio.to_thread(
            subprocess.run, command, capture_output=True, text=True, timeout=60
        )
        assert text.returncode == 0, text.stderr
        assert "calc" in text.stdout and worker.id in text.stdout
        assert "no queue" in text.stdout
        as_json = await asyncio.to_thread(
            subprocess.run, [*command, "--json"], capture_output=True, text=True, timeout=60
        )
        [queue] = orjson.loads(as_json.stdout)["queues"]
        assert queue["depth"] is None and queue["dead_letters"] is None
        assert [w["id"] for w in queue["workers"]] == [worker.id]


async def test_http_status_finds_every_worker_sharing_the_port(url: str) -> None:
    async with (
        Worker(Probe(), url, "calc") as first,
        Worker(Probe(), url, "calc") as second,
        admin_transport(url) as admin,
    ):
        seen: set[str] = set()

        async def both() -> bool:
            seen.update(record.id for record in (await admin.status("calc")).workers)
            return seen == {first.id, second.id}

        await wait_until(both)  # each status asks on 8 connections: both answer, nearly always
        status = await admin.status("calc")
        assert len({record.id for record in status.workers}) == len(status.workers)


# --- one send per response ---------------------------------------------------------------------


class _Recorder:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


class _Cycle:
    response_started = False


def test_a_response_head_goes_out_with_its_body_and_100_continue_at_once() -> None:
    from micromessaging._http_server import OneWriteResponses

    transport, cycle = _Recorder(), _Cycle()
    view = OneWriteResponses(transport, cycle)  # type: ignore[arg-type]
    view.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # before the response: not held
    assert transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    cycle.response_started = True
    view.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    assert len(transport.writes) == 1  # held
    view.write(b"{}")
    assert transport.writes[1] == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"
    view.write(b"more")
    assert transport.writes[2] == b"more"
    # A head never followed by a body still goes out, before the connection closes.
    transport, cycle = _Recorder(), _Cycle()
    cycle.response_started = True
    view = OneWriteResponses(transport, cycle)  # type: ignore[arg-type]
    view.write(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert not view.is_closing() and transport.writes == [b"HTTP/1.1 204 No Content\r\n\r\n"]
    view.close()
    assert transport.closed


async def test_each_answer_is_one_send(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from asyncio import selector_events

    sent: list[bytes] = []
    write = selector_events._SelectorSocketTransport.write

    def spy(self, data):  # type: ignore[no-untyped-def]
        sent.append(bytes(data))
        return write(self, data)

    monkeypatch.setattr(selector_events._SelectorSocketTransport, "write", spy)
    async with Worker(Probe(), url, "calc"), AsyncClient(url, "calc") as client:
        assert [await client.add(i, 1) for i in range(3)] == [1, 2, 3]
    answers = [data for data in sent if data.startswith(b"HTTP/1.1 ")]
    assert len(answers) == 3
    assert all(data.endswith(b"}") for data in answers)  # the body came with its head
