"""The gateway, driven by a real HTTP client against real workers behind a broker.

The broker is parametrized: memory:// always (gateway and workers in this process), and
redis:// and amqp:// (RabbitMQ) when their transports are in the tree, against the
session's brokers (`redis_url`, `amqp_url`). The --workers test runs the real command,
forwarding over http:// (or Redis).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from click.testing import CliRunner

from micromessaging import AsyncClient, ErrorCode, NoWorkers, RemoteError, Worker
from micromessaging.cli import main
from micromessaging.gateway import (
    FORBIDDEN,
    UNAUTHORIZED,
    Gateway,
    GatewaySettings,
    app_from_environment,
)
from micromessaging.gateway.auth import Authenticator, hash_token, parse_tokens
from micromessaging.transports.http.server import EmbeddedServer, bind

from .transports.contract import Probe, eventually


def _available(module: str) -> bool:
    return importlib.util.find_spec(f"micromessaging.transports.{module}") is not None


BROKERS = ["memory"]
BROKERS += ["redis"] if _available("redis") else []
BROKERS += ["amqp"] if _available("amqp") else []

FULL, ADD_ONLY, ELSEWHERE = "full-token", "add-only-token", "elsewhere-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tokens_toml(queue: str) -> str:
    return f"""
[[tokens]]
name = "full"
sha256 = "{hash_token(FULL)}"
allow = {{ {queue} = "*" }}

[[tokens]]
name = "add-only"
sha256 = "{hash_token(ADD_ONLY)}"
allow = {{ {queue} = ["add"] }}

[[tokens]]
name = "elsewhere"
sha256 = "{hash_token(ELSEWHERE)}"
allow = {{ elsewhere = "*" }}
"""


def rpc(method: str, *params: object, id_: object = 1) -> dict:
    return {"jsonrpc": "2.0", "method": method, "params": list(params), "id": id_}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@contextlib.asynccontextmanager
async def serving(settings: GatewaySettings) -> AsyncIterator[str]:
    """The gateway app on uvicorn in this process; its base URL."""
    port = free_port()
    app = Gateway(settings)
    server = EmbeddedServer(app, bind("127.0.0.1", port))
    await server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await server.stop()
        await app.aclose()


@pytest.fixture(params=BROKERS)
def broker(request) -> str:
    if request.param == "memory":
        return f"memory://gateway-{uuid.uuid4().hex[:8]}"
    return request.getfixturevalue(f"{request.param}_url")  # the session's broker


@pytest.fixture
async def queue(broker: str) -> AsyncIterator[str]:
    name = f"mm-gw-{uuid.uuid4().hex[:10]}"
    yield name
    await asyncio.wait_for(forget_queue(broker, name), 10)


async def forget_queue(broker: str, name: str) -> None:
    """Delete what the test's workers declared on a shared broker (RabbitMQ keeps queues)."""
    if broker.startswith("amqp"):
        from .transports.test_amqp import delete_queues

        await delete_queues(broker, name)
    elif broker.startswith("redis"):
        import redis.asyncio as aioredis

        connection = aioredis.Redis.from_url(broker)
        try:
            keys = [key async for key in connection.scan_iter(match=f"*{name}*")]
            if keys:
                await connection.delete(*keys)
        finally:
            await connection.aclose()


@pytest.fixture
async def probe(broker: str, queue: str) -> AsyncIterator[Probe]:
    probe = Probe()
    async with Worker(probe, broker, queue, concurrency=1):
        yield probe


@pytest.fixture
async def gateway(broker: str, queue: str, probe: Probe) -> AsyncIterator[str]:
    grants = tuple(parse_tokens(tokens_toml(queue), "test"))
    settings = GatewaySettings(broker, grants, timeout=0.5, max_body=4096, max_batch=3)
    async with serving(settings) as url:
        yield url


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


async def test_call_and_batch_are_forwarded(gateway: str, queue: str, http) -> None:
    response = await http.post(f"{gateway}/{queue}", json=rpc("add", 1, 5.1), headers=bearer(FULL))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"jsonrpc": "2.0", "result": 6.1, "id": 1}
    batch = [rpc("add", 1, 2, id_="a"), rpc("subtract", 5, 3, id_="b")]
    response = await http.post(f"{gateway}/{queue}", json=batch, headers=bearer(FULL))
    assert sorted((r["id"], r["result"]) for r in response.json()) == [("a", 3), ("b", 2)]


async def test_notification_gets_204_and_runs(gateway: str, queue: str, http, probe) -> None:
    note = {"jsonrpc": "2.0", "method": "record", "params": ["noted"]}
    response = await http.post(f"{gateway}/{queue}", json=note, headers=bearer(FULL))
    assert (response.status_code, response.content) == (204, b"")
    await eventually(lambda: "noted" in probe.ran)


@pytest.mark.parametrize(
    "headers",
    [{}, bearer("wrong"), {"authorization": f"Basic {FULL}"}, {"authorization": "Bearer"}],
    ids=["none", "unknown", "not-bearer", "empty"],
)
async def test_no_or_bad_token_is_401(gateway, queue, http, probe, headers) -> None:
    body = rpc("record", "intruder")
    response = await http.post(f"{gateway}/{queue}", json=body, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["error"]["code"] == UNAUTHORIZED
    await asyncio.sleep(0.1)
    assert probe.ran == []  # nothing reached the broker


async def test_calls_outside_the_grant_are_403(gateway, queue, http, probe) -> None:
    cases = [
        (ELSEWHERE, rpc("record", "other queue")),
        (ADD_ONLY, rpc("record", "other method")),
        (ADD_ONLY, [rpc("add", 1, 2), rpc("record", "hidden in a batch", id_=2)]),
        (ADD_ONLY, [rpc("add", 1, 2), {"jsonrpc": "2.0", "method": "record", "params": ["n"]}]),
    ]
    for token, body in cases:
        response = await http.post(f"{gateway}/{queue}", json=body, headers=bearer(token))
        assert response.status_code == 403, body
        assert response.json()["error"]["code"] == FORBIDDEN
    await asyncio.sleep(0.1)
    assert probe.ran == []
    response = await http.post(
        f"{gateway}/{queue}", json=rpc("add", 2, 2), headers=bearer(ADD_ONLY)
    )
    assert response.json()["result"] == 4


async def test_body_and_batch_limits_are_413(gateway, queue, http, probe) -> None:
    big = rpc("record", "x" * 5000)
    response = await http.post(f"{gateway}/{queue}", json=big, headers=bearer(FULL))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == ErrorCode.MESSAGE_TOO_LARGE
    batch = [rpc("record", i, id_=i) for i in range(4)]
    response = await http.post(f"{gateway}/{queue}", json=batch, headers=bearer(FULL))
    assert response.status_code == 413
    assert "limit of 3" in response.json()["error"]["data"]["message"]
    await asyncio.sleep(0.1)
    assert probe.ran == []


async def test_unauthenticated_oversized_body_is_401_not_read(gateway, queue, http) -> None:
    big = rpc("record", "x" * 5000)
    response = await http.post(f"{gateway}/{queue}", json=big)
    assert response.status_code == 401


async def test_malformed_body_is_400(gateway, queue, http) -> None:
    for body, code in (
        (b'{"jsonrpc": ', ErrorCode.PARSE_ERROR),
        (b"[]", ErrorCode.INVALID_REQUEST),
    ):
        response = await http.post(f"{gateway}/{queue}", content=body, headers=bearer(FULL))
        assert response.status_code == 400
        assert response.json()["error"]["code"] == code


async def test_slow_call_is_504_and_its_deadline_reaches_the_worker(
    gateway, queue, http, probe, broker
) -> None:
    started = time.monotonic()
    busy = asyncio.create_task(
        http.post(f"{gateway}/{queue}", json=rpc("slow", 1.0, "busy"), headers=bearer(FULL))
    )
    await eventually(lambda: probe.ran)  # the only worker slot is taken
    # A caller's earlier deadline wins over the gateway's 0.5 s: "late" expires while
    # "busy" still holds the worker's only slot.
    headers = {**bearer(FULL), "x-mm-deadline": str(int((time.time() + 0.2) * 1000))}
    late = await http.post(f"{gateway}/{queue}", json=rpc("record", "late"), headers=headers)
    assert late.status_code == 504
    assert late.json()["error"]["code"] == ErrorCode.DEADLINE_EXCEEDED
    assert (await busy).status_code == 504
    assert time.monotonic() - started < 1.0  # both answered at the 0.5 s timeout
    # The worker got the gateway's deadline: it gives up "busy" and skips "late".
    async with AsyncClient(broker, queue, timeout=5) as direct:
        assert await direct.add(1, 1) == 2
    assert "late" not in probe.ran


async def test_the_callers_trace_context_reaches_the_worker_with_a_send_time(http) -> None:
    broker, queue, seen = f"memory://gateway-{uuid.uuid4().hex[:8]}", "traced", []
    grants = tuple(parse_tokens(tokens_toml(queue), "test"))
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with (
        Worker(Probe(), broker, queue) as worker,
        serving(GatewaySettings(broker, grants)) as url,
    ):
        taken = worker.observer.taken

        def spy(delivery):  # type: ignore[no-untyped-def]
            seen.append((delivery.sent, delivery.trace and dict(delivery.trace)))
            return taken(delivery)

        worker.observer.taken = spy  # type: ignore[method-assign]
        before = time.time()
        headers = {**bearer(FULL), "traceparent": parent, "tracestate": "gw=1"}
        response = await http.post(f"{url}/{queue}", json=rpc("add", 1, 2), headers=headers)
        assert response.json()["result"] == 3
        # A malformed traceparent is not passed on; the call goes through all the same.
        headers = {**bearer(FULL), "traceparent": "00-nope", "tracestate": "gw=1"}
        response = await http.post(f"{url}/{queue}", json=rpc("add", 1, 2), headers=headers)
        assert response.json()["result"] == 3
    (sent, trace), (_, dropped) = seen
    assert sent is not None and before - 1 <= sent <= time.time() + 1
    assert trace == {"traceparent": parent, "tracestate": "gw=1"}
    assert dropped is None


async def test_our_client_through_the_gateway_with_a_token_in_the_url(gateway, queue) -> None:
    base = gateway.replace("http://", f"http://:{FULL}@")
    async with AsyncClient(base, queue, timeout=5) as calc:
        assert await calc.add(1, 5.1) == 6.1
    async with AsyncClient(gateway.replace("http://", "http://:nope@"), queue) as calc:
        with pytest.raises(RemoteError) as caught:
            await calc.add(1, 5.1)
        assert caught.value.code == UNAUTHORIZED


async def test_healthz(gateway: str, http) -> None:
    response = await http.get(f"{gateway}/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


async def test_unreachable_broker_is_503_health_and_502_calls(http) -> None:
    if not _available("redis"):
        pytest.skip("needs the redis transport: a broker that can be down")
    dead = f"redis://127.0.0.1:{free_port()}"
    grants = tuple(parse_tokens(tokens_toml("calc"), "test"))
    async with serving(GatewaySettings(dead, grants)) as url:
        response = await http.get(f"{url}/healthz")
        assert response.status_code == 503
        assert response.json()["status"] == "unavailable"
        response = await http.post(f"{url}/calc", json=rpc("add", 1, 2), headers=bearer(FULL))
        assert response.status_code == 502
        assert response.json()["error"]["code"] == ErrorCode.SERVER_ERROR


@pytest.mark.parametrize("kind", ["memory", "http"])
async def test_a_queue_nobody_serves_is_503_naming_it(kind: str, http) -> None:
    # memory:// knows no worker attached; over http:// nothing listens (connection refused).
    broker = {
        "memory": f"memory://gateway-{uuid.uuid4().hex[:8]}",
        "http": f"http://127.0.0.1:{free_port()}",
    }[kind]
    grants = tuple(parse_tokens(tokens_toml("calc"), "test"))
    async with serving(GatewaySettings(broker, grants)) as url:
        started = time.monotonic()
        response = await http.post(f"{url}/calc", json=rpc("add", 1, 2), headers=bearer(FULL))
        assert time.monotonic() - started < 1.0
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        error = response.json()["error"]
        assert (error["code"], error["message"]) == (ErrorCode.SERVER_ERROR, "No workers")
        assert error["data"]["queue"] == "calc" and error["data"]["retry"] is True
        assert "'calc'" in error["data"]["message"]
        # Our client through the gateway raises NoWorkers, as it would on the broker.
        async with AsyncClient(url.replace("http://", f"http://:{FULL}@"), "calc") as client:
            with pytest.raises(NoWorkers) as caught:
                await client.add(1, 2)
            assert caught.value.queue == "calc"
            with pytest.raises(NoWorkers):
                await client.notify("record", 1)


# --- tokens ----------------------------------------------------------------------------------


def test_tokens_from_json_and_toml_match_only_their_own_token() -> None:
    from_toml = parse_tokens(tokens_toml("calc"), "toml")
    as_json = orjson.dumps({"tokens": [g.as_entry() for g in from_toml]}).decode()
    from_json = parse_tokens(as_json, "json")
    assert from_json == from_toml
    auth = Authenticator(from_json)
    assert auth.identify(f"Bearer {FULL}".encode()).name == "full"
    assert auth.identify(f"bearer {ADD_ONLY}".encode()).name == "add-only"
    assert auth.identify(b"Bearer " + hash_token(FULL).encode()) is None  # the hash is no token
    grant = auth.identify(f"Bearer {ADD_ONLY}".encode())
    assert grant.permits("calc", "add")
    assert not grant.permits("calc", "subtract")
    assert not grant.permits("other", "add")


@pytest.mark.parametrize(
    "entry",
    [
        'sha256 = "plaintext-token"\nallow = { calc = "*" }',
        f'sha256 = "{hash_token("t")}"',
        f'sha256 = "{hash_token("t")}"\nallow = {{ calc = 3 }}',
    ],
)
def test_bad_token_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="token"):
        parse_tokens(f"[[tokens]]\n{entry}\n", "tokens.toml")


def test_settings_travel_to_worker_processes(monkeypatch) -> None:
    settings = GatewaySettings(
        "redis://:pw@host:6379", tuple(parse_tokens(tokens_toml("calc"), "t")), 2.5, 100, 7
    )
    assert plaintext_free(settings.to_json())
    monkeypatch.setenv("MICROMESSAGING_GATEWAY_SETTINGS", settings.to_json())
    assert app_from_environment().settings == settings


def plaintext_free(text: str) -> bool:
    return all(token not in text for token in (FULL, ADD_ONLY, ELSEWHERE))


def test_hash_token_command() -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["gateway", "hash-token"], input="s3cret\n")
    assert result.output.strip() == hash_token("s3cret")
    result = runner.invoke(
        main, ["gateway", "hash-token", "--new", "--name", "web", "--allow", "calc:add"]
    )
    assert result.exit_code == 0
    token = result.stderr.rsplit(" ", 1)[1].strip()
    grant = parse_tokens(result.stdout, "generated")[0]
    assert Authenticator([grant]).identify(f"Bearer {token}".encode()) is grant
    assert grant.permits("calc", "add")
    assert token not in result.stdout


# --- the command, with several worker processes ----------------------------------------------


def gateway_children(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"spawn_main" in cmdline:
                    children.append(int(entry.name))
    return children


@contextlib.contextmanager
def gateway_command(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen]:
    process = subprocess.Popen(
        [sys.executable, "-m", "micromessaging", "gateway", *args],
        env={**os.environ, **env},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        process.stderr.close()


async def wait_healthy(http: httpx.AsyncClient, url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.TransportError):
            if (await http.get(f"{url}/healthz")).status_code == 200:
                return
        assert time.monotonic() < deadline, "the gateway did not come up"
        await asyncio.sleep(0.1)


async def test_gateway_command_serves_with_two_worker_processes(tmp_path, http) -> None:
    worker_port, port = free_port(), free_port()
    broker = f"http://:broker-pass@127.0.0.1:{worker_port}"  # a password to be masked
    tokens = tmp_path / "tokens.json"
    tokens.write_text(
        orjson.dumps(
            {"tokens": [{"name": "ci", "sha256": hash_token(FULL), "allow": {"calc": "*"}}]}
        ).decode()
    )
    args = ["--broker", broker, "--host", "127.0.0.1", "--tokens", str(tokens), "--processes", "2"]
    async with Worker(Probe(), f"http://127.0.0.1:{worker_port}", "calc"):
        with gateway_command(args, {"PORT": str(port)}) as process:
            url = f"http://127.0.0.1:{port}"
            await wait_healthy(http, url)
            assert len(gateway_children(process.pid)) == 2
            for i in range(20):  # fresh connections, spread over both processes
                async with httpx.AsyncClient() as fresh:
                    response = await fresh.post(
                        f"{url}/calc", json=rpc("add", i, 1), headers=bearer(FULL)
                    )
                    assert response.json()["result"] == i + 1
            response = await http.post(f"{url}/calc", json=rpc("add", 1, 1))
            assert response.status_code == 401
            process.send_signal(signal.SIGTERM)
            assert process.wait(20) == 0
            output = process.stderr.read()
    assert f"micromessaging gateway on http://127.0.0.1:{port} -> http://:****@" in output
    assert "(1 token, 2 processes" in output
    assert "broker-pass" not in output


# --- operations: access lines and metrics, from the real command -----------------------------


async def test_the_command_logs_each_request_and_serves_its_metrics(tmp_path, http) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    worker_port, port, metrics_port = free_port(), free_port(), free_port()
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(tokens_toml("calc"))
    args = [
        "--broker", f"http://127.0.0.1:{worker_port}", "--host", "127.0.0.1",
        "--port", str(port), "--tokens", str(tokens), "--processes", "2",
        "--metrics-port", str(metrics_port), "--log-format", "json", "--timeout", "0.5",
        "--max-message-size", "2048",
    ]  # fmt: skip
    async with Worker(Probe(), f"http://127.0.0.1:{worker_port}", "calc"):
        with gateway_command(args, {}) as process:
            url = f"http://127.0.0.1:{port}"
            await wait_healthy(http, url)
            children = set(gateway_children(process.pid))
            assert len(children) == 2
            calls = [
                (200, bearer(FULL), rpc("add", 1, 2)),
                (200, bearer(FULL), rpc("add", 2, 2)),
                (200, bearer(ADD_ONLY), rpc("add", 3, 2)),
                (401, {}, rpc("add", 1, 2)),
                (403, bearer(ELSEWHERE), rpc("add", 1, 2)),
                (403, bearer(ADD_ONLY), rpc("subtract", 1, 2)),
                (413, bearer(FULL), rpc("echo", "x" * 4000)),
                (504, bearer(FULL), rpc("slow", 2.0)),
            ]
            for status, headers, body in calls:
                async with httpx.AsyncClient(timeout=10) as fresh:  # spread over both processes
                    response = await fresh.post(f"{url}/calc", json=body, headers=headers)
                    assert response.status_code == status, response.text
            scraped = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
            process.send_signal(signal.SIGTERM)
            assert process.wait(20) == 0
            output = process.stderr.read()
    counts: dict[tuple[str, str], float] = {}
    latency: dict[str, float] = {}
    for family in text_string_to_metric_families(scraped):
        for sample in family.samples:
            if sample.name == "micromessaging_gateway_requests_total":
                counts[sample.labels["queue"], sample.labels["status"]] = sample.value
            elif sample.name == "micromessaging_gateway_request_seconds_count":
                latency[sample.labels["queue"]] = sample.value
    assert {k: v for k, v in counts.items() if k[0] == "calc"} == {
        ("calc", "200"): 3, ("calc", "401"): 1, ("calc", "403"): 2, ("calc", "413"): 1,
        ("calc", "504"): 1,
    }  # fmt: skip
    assert latency["calc"] == len(calls)
    assert counts[("<other>", "200")] >= 1  # the health checks
    lines = [orjson.loads(line) for line in output.splitlines() if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "micromessaging.gateway.access"]
    mine = [line for line in access if line["path"] == "/calc"]
    assert sorted(line["status"] for line in mine) == sorted(status for status, _, _ in calls)
    forbidden = [line for line in mine if line["status"] == 403]
    assert {line["token"] for line in forbidden} == {"elsewhere", "add-only"}
    assert all(line["queue"] == "calc" and line["duration_ms"] >= 0 for line in mine)
    assert ["subtract"] in [line["rpc"] for line in forbidden]
    # Both processes log in this format (which of them the kernel gives a connection to is
    # its choice: under load one may take them all, so their access lines can't tell).
    assert children <= {line["pid"] for line in lines}
    # The gateway's own info lines, and uvicorn's, appear too, in the same format.
    assert any("may not call" in line["message"] for line in lines)
    assert any(line["logger"].startswith("uvicorn") for line in lines)


async def test_access_lines_name_the_token_and_escape_the_path(gateway, queue, http, caplog):
    caplog.set_level("INFO", logger="micromessaging.gateway.access")
    await http.post(f"{gateway}/{queue}", json=rpc("add", 1, 2), headers=bearer(ADD_ONLY))
    await http.post(f"{gateway}/a%0Afake%20line", json=rpc("add", 1, 2))
    first, second = (r for r in caplog.records if r.name == "micromessaging.gateway.access")
    assert first.getMessage().startswith(f"POST /{queue} 200 ")
    assert f"queue={queue} token=add-only rpc=add" in first.getMessage()
    assert (first.status, first.token, first.rpc) == (200, "add-only", ["add"])  # type: ignore[attr-defined]
    assert "\n" not in second.getMessage() and "\\n" in second.getMessage()
    assert second.status == 404 and second.queue is None  # type: ignore[attr-defined]
