"""Prometheus metrics of a worker, scraped over HTTP, against the calls it was sent."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from micromessaging import AsyncClient, CallTimeout, Client, RemoteError, Worker
from micromessaging.observability import metrics
from micromessaging.observability.metrics import WorkerMetrics
from tests.transports.contract import Probe, eventually


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample at http://127.0.0.1:PORT/metrics, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_a_scraped_worker_counts_the_calls_it_was_sent() -> None:
    registry = CollectorRegistry()
    port = free_port()
    server = metrics.serve(port, "127.0.0.1", registry)
    url, queue = f"memory://metrics-{uuid.uuid4().hex[:8]}", "calc"
    try:
        async with (
            Worker(Probe(), url, queue, metrics=WorkerMetrics.for_registry(registry)) as worker,
            AsyncClient(url, queue, timeout=5) as client,
        ):
            for i in range(5):
                assert await client.add(i, 1) == i + 1
            with pytest.raises(RemoteError):
                await client.fail("boom")
            for _ in range(2):
                with pytest.raises(RemoteError):
                    await client.call(f"no_such_method_{uuid.uuid4().hex}")
            with pytest.raises(CallTimeout):
                await client.call("slow", 2, timeout=0.2)
            await eventually(lambda: worker.stats.expired == 1)  # cancelled at its deadline
            samples = await asyncio.to_thread(scrape, port)
    finally:
        server.shutdown()
        server.server_close()
    calls = "micromessaging_worker_calls_total"
    assert value(samples, calls, queue=queue, method="add", outcome="ok") == 5
    assert value(samples, calls, queue=queue, method="fail", outcome="-32000") == 1
    # Unknown names share one label value: callers can't grow the label set.
    assert value(samples, calls, queue=queue, method="<unknown>", outcome="-32601") == 2
    assert value(samples, calls, queue=queue, method="*", outcome="expired") == 1
    execution = "micromessaging_worker_execution_seconds_count"
    assert value(samples, execution, queue=queue, method="add") == 5
    assert value(samples, "micromessaging_worker_queue_wait_seconds_count", queue=queue) == 9
    assert (
        value(samples, "micromessaging_worker_call_seconds_count", queue=queue, method="add") == 5
    )
    assert value(samples, "micromessaging_worker_in_flight", queue=queue) == 0


def test_the_worker_command_serves_metrics(tmp_path, redis_url: str) -> None:
    port = free_port()
    queue = f"mm-metrics-{uuid.uuid4().hex[:8]}"
    command = [
        sys.executable, "-m", "micromessaging", "worker",
        "micromessaging.examples.calculator:Calculator", "--broker", redis_url, "--queue",
        queue, "--metrics-port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    process = subprocess.Popen(command, start_new_session=True)
    try:
        # The worker process is starting: its calls wait for it (no-worker rule off).
        with Client(redis_url + "?worker_window=0", queue, timeout=20) as client:
            for i in range(7):
                assert client.add(i, 2) == i + 2
        deadline = time.monotonic() + 10
        while True:
            try:
                samples = scrape(port)
                break
            except OSError:
                assert time.monotonic() < deadline, "no /metrics"
                time.sleep(0.05)
        calls = "micromessaging_worker_calls_total"
        assert value(samples, calls, queue=queue, method="add", outcome="ok") == 7
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(20)


async def test_client_stats_count_calls_by_method_and_outcome() -> None:
    url, queue = f"memory://stats-{uuid.uuid4().hex[:8]}", "calc"
    async with Worker(Probe(), url, queue), AsyncClient(url, queue, timeout=5) as client:
        await asyncio.gather(*(client.add(i, 1) for i in range(4)))
        with pytest.raises(RemoteError):
            await client.fail("x")
        assert client.stats.calls[("add", "ok")] == 4
        assert client.stats.calls[("fail", "-32000")] == 1
        assert client.stats.by_outcome() == {"ok": 4, "-32000": 1}
        assert client.stats.in_flight == 0
        assert client.stats.total == 5
        assert client.stats.seconds > 0
