"""Our Redis transport against a hand-rolled loop of the seed's protocol, in one run.

Baseline (the seed's protocol in Python with redis-py): the client LPUSHes a JSON-RPC request
and BRPOPs the list named by its id; a server process BRPOPs the queue, computes, and sends
RPUSH of the response and EXPIRE of the list in one pipeline. Ours: the seed's `Calculator`
(plain class, sync ``def`` methods) served by one ``micromessaging worker`` process
(concurrency 64) with every reliability feature on: processing list, heartbeats, recovery,
deadlines. A second worker serves the async bench service, for the second rows. Rounds are
interleaved, so every figure sees the same noisy machine; the ratios are medians of
per-round ratios.

Targets: sync ``Client`` sequential <= 1.0x the loop's latency (aim 0.8x); ``AsyncClient``
with 64 calls in flight >= 8x the loop's sequential rate (aim 12x).

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
import time
from collections.abc import Iterator

import orjson
import redis
from _harness import ASYNC_SERVICE, in_flight, rate, table, us, worker

from micromessaging import AsyncClient, Client


def serve_seed(url: str, queue: str) -> None:
    """The baseline server: the seed's loop (BRPOP, call, RPUSH+EXPIRE pipelined), in Python."""
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
        pipe = r.pipeline(transaction=False)
        pipe.rpush(request["id"], reply)
        pipe.expire(request["id"], 30)
        pipe.execute()


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


@contextlib.contextmanager
def seed_server(url: str, queue: str) -> Iterator[None]:
    seed = subprocess.Popen([sys.executable, __file__, "--serve-seed", queue, "--url", url])
    try:
        yield
    finally:
        redis.Redis.from_url(url).lpush(queue, b"stop")
        try:
            seed.wait(timeout=15)
        except subprocess.TimeoutExpired:
            seed.kill()
            seed.wait()


def main(url: str, calls: int, rounds: int, lanes: int) -> None:
    tag = secrets.token_hex(4)
    seed_queue, calc_queue, async_queue = (f"bench-{k}-{tag}" for k in ("seed", "calc", "async"))
    figures: dict[str, list[float]] = {
        k: [] for k in ("seed", "sync", "async", "flight", "a_sync", "a_flight")
    }
    with (
        seed_server(url, seed_queue),
        worker(url, calc_queue),
        worker(url, async_queue, target=ASYNC_SERVICE),
        asyncio.Runner() as runner,
        Client(url, calc_queue, timeout=30) as calc_sync,
        Client(url, async_queue, timeout=30) as async_sync,
    ):
        r = redis.Redis.from_url(url)
        calc = AsyncClient(url, calc_queue, timeout=30)
        bench = AsyncClient(url, async_queue, timeout=30)
        runner.run(calc.__aenter__())
        runner.run(bench.__aenter__())
        # Warm up: every server answering, connections open, code paths hot.
        runner.run(calc.call("add", 1, 1, timeout=60))
        runner.run(bench.call("add", 1, 1, timeout=60))
        seed_client(r, seed_queue, 300)
        sync_sequential(calc_sync, 300)
        sync_sequential(async_sync, 300)
        runner.run(in_flight(lambda i: calc.add(i, 1), 2000, lanes))
        runner.run(in_flight(lambda i: bench.add(i, 1), 2000, lanes))
        for number in range(rounds):
            figures["seed"].append(seed_client(r, seed_queue, calls))
            figures["sync"].append(sync_sequential(calc_sync, calls))
            figures["async"].append(runner.run(async_sequential(calc, calls)))
            figures["flight"].append(
                runner.run(in_flight(lambda i: calc.add(i, 1), calls * 5, lanes))
            )
            figures["a_sync"].append(sync_sequential(async_sync, calls))
            figures["a_flight"].append(
                runner.run(in_flight(lambda i: bench.add(i, 1), calls * 5, lanes))
            )
            print(
                f"round {number + 1}: seed loop {us(figures['seed'][-1])}, "
                f"Client {us(figures['sync'][-1])}, AsyncClient {us(figures['async'][-1])}, "
                f"{lanes} in flight {rate(figures['flight'][-1])} "
                f"(async service: {us(figures['a_sync'][-1])}, {rate(figures['a_flight'][-1])})",
                flush=True,
            )
        runner.run(calc.aclose())
        runner.run(bench.aclose())
    report(figures, rounds, lanes)


def report(figures: dict[str, list[float]], rounds: int, lanes: int) -> None:
    seed = figures["seed"]

    def latency(key: str) -> float:
        return statistics.median(o / s for o, s in zip(figures[key], seed, strict=True))

    def speedup(key: str) -> float:
        return statistics.median(f * s for f, s in zip(figures[key], seed, strict=True))

    def m(key: str) -> float:
        return statistics.median(figures[key])

    base_us, base_rate = us(m("seed")), rate(1 / m("seed"))
    rows = [
        ("Client, sequential", us(m("sync")), base_us, latency("sync"), "<= 1.0x",
         latency("sync") <= 1.0),
        ("AsyncClient, sequential", us(m("async")), base_us, latency("async"), "", None),
        (f"AsyncClient, {lanes} in flight", rate(m("flight")), base_rate, speedup("flight"),
         ">= 8x", speedup("flight") >= 8),
        ("async service, Client, sequential", us(m("a_sync")), base_us, latency("a_sync"),
         "<= 1.0x", latency("a_sync") <= 1.0),
        (f"async service, {lanes} in flight", rate(m("a_flight")), base_rate,
         speedup("a_flight"), ">= 8x", speedup("a_flight") >= 8),
    ]  # fmt: skip
    table(
        f"Redis: Calculator, one worker process, against the seed's loop (medians of {rounds} "
        "rounds; in-flight rates against the loop's sequential rate)",
        rows,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--calls", type=int, default=2000, help="sequential calls per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--serve-seed", metavar="QUEUE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_seed:
        serve_seed(args.url, args.serve_seed)
    else:
        main(args.url, args.calls, args.rounds, args.in_flight)
