"""Calls/s at 64 in flight on a Redis Cluster (3 masters + 3 replicas) against one Redis node.

Both brokers are started by this run, on free ports in their own dirs (tests/brokers.py), and
stopped by pid at the end: a redis-server alone, and six in cluster mode joined by
``redis-cli --cluster create ... --cluster-replicas 1``. Each round serves the seed's
`Calculator` with one ``micromessaging worker`` process (concurrency 64) on a fresh queue,
and drives it from a client process of its own (one `AsyncClient`, 64 calls in flight);
rounds alternate the single node and the cluster, so both see the same noisy machine.

What it shows: the cost of the cluster client (routing by slot, redis-py's cluster client
instead of our raw connections) for one queue, whose keys all live on one master. A cluster
pays off in capacity and failover (tests/transports/test_redis_cluster.py kills a master),
not in the speed of one queue.

    python benchmarks/redis_cluster.py [--calls 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import subprocess
import sys
from pathlib import Path

from _harness import in_flight, median_ratio, worker

from micromessaging import AsyncClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.brokers

from tests.brokers import RedisCluster, RedisNode


async def load(broker: str, queue: str, calls: int, lanes: int) -> float:
    joiner = "&" if "?" in broker else "?"
    async with AsyncClient(f"{broker}{joiner}worker_window=0", queue, timeout=60) as first:
        await first.add(0, 1)  # waits in the queue until the worker is up (no NoWorkers)
    async with AsyncClient(broker, queue, timeout=60) as client:
        await in_flight(lambda i: client.add(i, 1), 2000, lanes)  # warm
        return await in_flight(lambda i: client.add(i, 1), calls, lanes)


def measure(broker: str, calls: int, lanes: int) -> float:
    queue = f"bench-cluster-{secrets.token_hex(4)}"
    with worker(broker, queue, concurrency=64):
        out = subprocess.run(
            [sys.executable, __file__, "--load", queue, "--broker", broker,
             "--calls", str(calls), "--in-flight", str(lanes)],
            capture_output=True, text=True,
        )  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"the client process failed:\n{out.stderr}")
    return float(out.stdout.strip())


def main(calls: int, rounds: int, lanes: int) -> None:
    with RedisNode() as single, RedisCluster(masters=3, replicas=1) as cluster:
        urls = {"one node": single.url, "cluster": cluster.url}
        figures: dict[str, list[float]] = {name: [] for name in urls}
        for n in range(rounds):
            for name, url in urls.items():
                figures[name].append(measure(url, calls, lanes))
            print(
                f"round {n + 1}: one node {figures['one node'][-1]:7.0f} calls/s, "
                f"cluster {figures['cluster'][-1]:7.0f} calls/s",
                flush=True,
            )
    ratio = median_ratio(figures["cluster"], figures["one node"])
    print(f"\n{lanes} in flight, one worker process, client in its own, {os.cpu_count()} cores")
    print(f"one redis-server        : {statistics.median(figures['one node']):8,.0f} calls/s")
    print(f"cluster, 3 + 3 replicas : {statistics.median(figures['cluster']):8,.0f} calls/s")
    print(f"ratio cluster / one     : {ratio:5.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--broker", help=argparse.SUPPRESS)
    parser.add_argument("--load", metavar="QUEUE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        print(asyncio.run(load(args.broker, args.load, args.calls, args.in_flight)))
    else:
        main(args.calls, args.rounds, args.in_flight)
