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

from _harness import in_flight, median_ratio, rate, table, worker

from micromessaging import AsyncClient


async def load(broker: str, queue: str, calls: int, lanes: int) -> float:
    async with AsyncClient(broker, queue, timeout=60) as client:
        await client.call("add", 0, 1, timeout=60)  # the workers are up
        await in_flight(lambda i: client.add(i, 1), 2000, lanes)  # warm
        return await in_flight(lambda i: client.add(i, 1), calls, lanes)


def measure(broker: str, processes: int, calls: int, lanes: int) -> float:
    queue = f"bench-processes-{secrets.token_hex(4)}"
    with worker(broker, queue, processes=processes):
        out = subprocess.run(
            [sys.executable, __file__, "--load", queue, "--broker", broker,
             "--calls", str(calls), "--in-flight", str(lanes)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
    return float(out.stdout.strip())


def main(broker: str, calls: int, rounds: int, lanes: int) -> None:
    figures: dict[int, list[float]] = {1: [], 2: []}
    for n in range(rounds):
        for processes in (1, 2):
            figures[processes].append(measure(broker, processes, calls, lanes))
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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--load", metavar="QUEUE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        print(asyncio.run(load(args.broker, args.load, args.calls, args.in_flight)))
    else:
        main(args.broker, args.calls, args.rounds, args.in_flight)
