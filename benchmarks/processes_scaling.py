"""``micromessaging worker --processes 2`` against one process, on Redis, 64 calls in flight.

The load comes from a process of its own (one `AsyncClient`, 64 calls in flight), so the
client does not share the worker's interpreter. Rounds alternate one worker process and two
(``--processes 2``, supervised), each serving the seed's `Calculator` on a fresh queue.

Target: two processes >= 1.3x the calls/s of one. This machine has 2 cores, shared by the
client, Redis and the workers: the report says what the ceiling is.

    python benchmarks/processes_scaling.py [--broker redis://127.0.0.1:6379/0] [--calls 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import time

import redis
from _harness import cpu_seconds, family_pids, in_flight, median_ratio, rate, table, us, worker

from micromessaging import AsyncClient

WARM = 2000
"""Calls the load process makes before it measures (the first one waits for the workers)."""


async def load(broker: str, queue: str, calls: int, lanes: int) -> tuple[float, float]:
    """Calls/s, and this process's CPU seconds per call, over `calls` after a warm-up."""
    async with AsyncClient(broker, queue, timeout=60) as client:
        await client.call("add", 0, 1, timeout=60)  # the workers are up
        await in_flight(lambda i: client.add(i, 1), WARM - 1, lanes)
        spent = time.process_time()
        calls_per_second = await in_flight(lambda i: client.add(i, 1), calls, lanes)
        return calls_per_second, (time.process_time() - spent) / calls


def redis_pid(broker: str) -> int | None:
    """The pid of the Redis at `broker`, when it runs on this machine (its CPU is read too)."""
    pid = int(redis.Redis.from_url(broker).info("server")["process_id"])
    return pid if os.path.exists(f"/proc/{pid}/stat") else None


def measure(broker: str, processes: int, calls: int, lanes: int) -> tuple[float, float]:
    """Calls/s with `processes` worker processes, and the CPU seconds a call costs in all:
    the client's, the workers' and Redis's (Redis and the workers read over the whole load,
    warm-up included)."""
    queue = f"bench-processes-{secrets.token_hex(4)}"
    server = redis_pid(broker)
    with worker(broker, queue, processes=processes) as serving:
        others = [*family_pids(serving.pid), *([server] if server else [])]
        before = sum(map(cpu_seconds, others))
        out = subprocess.run(
            [sys.executable, __file__, "--load", queue, "--broker", broker,
             "--calls", str(calls), "--in-flight", str(lanes)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        spent = sum(map(cpu_seconds, others)) - before
    calls_per_second, client_cpu = (float(x) for x in out.stdout.split())
    return calls_per_second, client_cpu + spent / (calls + WARM)


def main(broker: str, calls: int, rounds: int, lanes: int) -> None:
    figures: dict[int, list[float]] = {1: [], 2: []}
    costs: dict[int, list[float]] = {1: [], 2: []}
    for n in range(rounds):
        for processes in (1, 2):
            calls_per_second, cost = measure(broker, processes, calls, lanes)
            figures[processes].append(calls_per_second)
            costs[processes].append(cost)
        print(
            f"round {n + 1}: one process {figures[1][-1]:7.0f} calls/s, "
            f"two {figures[2][-1]:7.0f} calls/s",
            flush=True,
        )
    ratio = median_ratio(figures[2], figures[1])
    one, two = statistics.median(figures[1]), statistics.median(figures[2])
    table(
        f"Scaling: Calculator on Redis, {lanes} in flight from a client process of its own, "
        f"--processes 2 against 1 (medians of {rounds} rounds, {os.cpu_count()} cores)",
        [("--processes 2", rate(two), rate(one), ratio, ">= 1.3x", ratio >= 1.3)],
    )
    # What limits it: the cores. A call costs the client, Redis and a worker this much CPU
    # in all; no number of worker processes can serve more calls a second than the machine's
    # cores can pay for.
    cores = os.cpu_count() or 1
    cost = statistics.median(costs[1])
    ceiling = cores / cost
    print(
        f"A call costs {us(cost)} of CPU in all (client, Redis, worker; "
        f"{us(statistics.median(costs[2]))} with two worker processes): {cores} cores can pay "
        f"for {rate(ceiling)} at most, {ceiling / one:.2f}x what one worker process reached. "
        "More worker processes raise the rate only where cores are left for them."
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--load", metavar="QUEUE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        print(*asyncio.run(load(args.broker, args.load, args.calls, args.in_flight)))
    else:
        main(args.broker, args.calls, args.rounds, args.in_flight)
