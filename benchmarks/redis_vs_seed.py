"""Our Redis transport against a hand-rolled loop of the seed's protocol, in one run.

Baseline (the seed's protocol in Python with redis-py): the client LPUSHes a JSON-RPC request
and BRPOPs the list named by its id; a server process BRPOPs the queue, computes, RPUSHes the
response and EXPIREs the list. Ours: `Client` and `AsyncClient` against one worker process
(`micromessaging worker`, concurrency 64) with every reliability feature on: processing
list, heartbeats, recovery, deadlines. Rounds are interleaved, so every figure sees the same
noisy machine; the ratios are medians of per-round ratios.

Targets: sequential latency <= 1.1x the baseline's; 64 calls in flight >= 6x the baseline's
sequential rate (aim 10x).

    python benchmarks/redis_vs_seed.py [--url redis://127.0.0.1:6379/0] [--calls 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import orjson
import redis

from micromessaging import AsyncClient, Client


def serve_seed(url: str, queue: str) -> None:
    """The baseline server: the seed's loop (BRPOP, call, RPUSH, EXPIRE), in Python."""
    r = redis.Redis.from_url(url)
    while True:
        got = r.brpop([queue], timeout=1)
        if got is None:
            continue
        if got[1] == b"stop":
            return
        request = orjson.loads(got[1])
        a, b = request["params"]
        reply = orjson.dumps({"id": request["id"], "result": a + b, "jsonrpc": "2.0"})
        r.rpush(request["id"], reply)
        r.expire(request["id"], 30)


def seed_client(r: redis.Redis, queue: str, calls: int) -> float:
    """Seconds per call of the baseline client: LPUSH, then BRPOP on the id's list."""
    prefix = secrets.token_hex(8)
    started = time.perf_counter()
    for i in range(calls):
        id_ = f"{prefix}{i}"
        r.lpush(queue, orjson.dumps({"id": id_, "jsonrpc": "2.0", "method": "add",
                                     "params": [1, 5.1]}))  # fmt: skip
        _, response = r.brpop([id_], timeout=30)
        assert orjson.loads(response)["result"] == 6.1
    return (time.perf_counter() - started) / calls


def sync_sequential(client: Client, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        assert client.add(1, 5.1) == 6.1
    return (time.perf_counter() - started) / calls


async def async_sequential(client: AsyncClient, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        assert await client.add(1, 5.1) == 6.1
    return (time.perf_counter() - started) / calls


def sync_in_flight(client: Client, calls: int, in_flight: int) -> float:
    """Calls per second of `in_flight` threads sharing one `Client`."""
    remaining = calls
    lock = threading.Lock()

    def caller() -> None:
        nonlocal remaining
        while True:
            with lock:
                if remaining <= 0:
                    return
                remaining -= 1
            assert client.add(1, 5.1) == 6.1

    threads = [threading.Thread(target=caller) for _ in range(in_flight)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return calls / (time.perf_counter() - started)


async def async_in_flight(client: AsyncClient, calls: int, in_flight: int) -> float:
    """Calls per second with `in_flight` calls outstanding at all times."""
    remaining = calls

    async def caller() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            assert await client.add(1, 5.1) == 6.1

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(in_flight)))
    return calls / (time.perf_counter() - started)


@contextlib.contextmanager
def processes(url: str, seed_queue: str, our_queue: str) -> Iterator[None]:
    seed = subprocess.Popen([sys.executable, __file__, "--serve-seed", seed_queue, "--url", url])
    ours = subprocess.Popen(
        [sys.executable, "-m", "micromessaging", "worker", "micromessaging.bench:BenchService",
         "--broker", url, "--queue", our_queue, "--concurrency", "64", "--log-level", "warning"]
    )  # fmt: skip
    try:
        yield
    finally:
        redis.Redis.from_url(url).lpush(seed_queue, b"stop")
        ours.terminate()
        for process in (seed, ours):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


def main(url: str, calls: int, rounds: int, in_flight: int) -> None:
    tag = secrets.token_hex(4)
    seed_queue, our_queue = f"bench-seed-{tag}", f"bench-ours-{tag}"
    figures: dict[str, list[float]] = {
        "seed": [],
        "sync": [],
        "async": [],
        "flight": [],
        "sync_flight": [],
    }
    with (
        processes(url, seed_queue, our_queue),
        asyncio.Runner() as runner,
        Client(url, our_queue, timeout=30) as sync_client,
    ):
        r = redis.Redis.from_url(url)
        async_client = AsyncClient(url, our_queue, timeout=30)
        runner.run(async_client.__aenter__())
        # Warm up: both servers answering, connections open, code paths hot.
        runner.run(async_client.call("add", 1, 1, timeout=30))
        seed_client(r, seed_queue, 200)
        sync_sequential(sync_client, 200)
        runner.run(async_sequential(async_client, 200))
        for number in range(rounds):
            figures["seed"].append(seed_client(r, seed_queue, calls))
            figures["sync"].append(sync_sequential(sync_client, calls))
            figures["async"].append(runner.run(async_sequential(async_client, calls)))
            figures["flight"].append(
                runner.run(async_in_flight(async_client, calls * 5, in_flight))
            )
            figures["sync_flight"].append(sync_in_flight(sync_client, calls * 2, in_flight))
            print(
                f"round {number + 1}: seed {figures['seed'][-1] * 1e6:6.0f} us/call, "
                f"Client {figures['sync'][-1] * 1e6:6.0f} us, "
                f"AsyncClient {figures['async'][-1] * 1e6:6.0f} us, "
                f"{in_flight} in flight: async {figures['flight'][-1]:6.0f} calls/s, "
                f"sync threads {figures['sync_flight'][-1]:6.0f} calls/s",
                flush=True,
            )
        runner.run(async_client.aclose())
    report(figures, in_flight)


def report(figures: dict[str, list[float]], in_flight: int) -> None:
    def ratio(key: str) -> float:
        return statistics.median(m / b for m, b in zip(figures[key], figures["seed"], strict=True))

    def speedup(key: str) -> float:
        return statistics.median(f * s for f, s in zip(figures[key], figures["seed"], strict=True))

    seed = statistics.median(figures["seed"])
    print()
    print(f"hand-rolled seed loop (LPUSH+BRPOP) : {seed * 1e6:7.0f} us/call  "
          f"({1 / seed:,.0f} calls/s sequential)")  # fmt: skip
    for key, name in (("sync", "Client (sync), sequential"), ("async", "AsyncClient, sequential")):
        value, r = statistics.median(figures[key]), ratio(key)
        verdict = "met" if r <= 1.1 else "MISSED"
        print(
            f"{name:<36}: {value * 1e6:7.0f} us/call  ratio {r:5.2f}x  (target <= 1.1x: {verdict})"
        )
    for key, name in (("flight", "AsyncClient"), ("sync_flight", "Client, threads")):
        rate, s = statistics.median(figures[key]), speedup(key)
        verdict = "met" if s >= 6 else "MISSED"
        label = f"{name}, {in_flight} in flight, 1 worker"
        print(f"{label:<36}: {rate:7,.0f} calls/s  {s:5.1f}x the seed's sequential rate "
              f"(target >= 6x, aim 10x: {verdict})")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--calls", type=int, default=2000, help="sequential calls per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--serve-seed", metavar="QUEUE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_seed:
        serve_seed(args.url, args.serve_seed)
    else:
        main(args.url, args.calls, args.rounds, args.in_flight)
