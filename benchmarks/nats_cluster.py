"""JetStream on a 3-server cluster (streams R3) against one server, in the same run.

Starts its own nats-servers on free ports (a single node, and three routed into a cluster,
each with its own store dir), stops them by pid at the end. Each round: calls/s at
``--lanes`` (64) in flight, the seed's Calculator served by ``micromessaging worker``
processes (``--workers``, 2), on the single node (R1) and on the cluster (R3), interleaved.

    python benchmarks/nats_cluster.py [--calls 4000] [--rounds 3] [--lanes 64] [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import nats
import nats.errors

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _harness import in_flight, median_ratio, worker
from tests.brokers import NatsClusterNode, NatsNode

from micromessaging import AsyncClient


@contextlib.contextmanager
def servers(base: Path) -> Iterator[tuple[str, str]]:
    """The URLs of a single node and of a 3-server cluster, both started."""
    single = NatsNode(base=base)
    nodes = [NatsClusterNode(f"mm-b{i}", base, cluster="mm-bench") for i in range(3)]
    for node in nodes:
        node.routes = [f"nats://127.0.0.1:{o.cluster_port}" for o in nodes if o is not node]
    try:
        for node in (single, *nodes):
            node.start()
        yield single.url, "nats://" + ",".join(f"127.0.0.1:{n.port}" for n in nodes)
    finally:
        for node in (single, *nodes):
            node.close()


async def ready(url: str, replicas: int) -> None:
    """Until JetStream can make a stream of `replicas` copies (a cluster elects first)."""
    deadline = time.monotonic() + 60
    nc = await nats.connect([f"nats://{host}" for host in url.removeprefix("nats://").split(",")])
    try:
        js = nc.jetstream(timeout=2)
        while True:
            try:
                await js.add_stream(name="MM_READY", subjects=["mm.ready"], num_replicas=replicas)
                await js.delete_stream("MM_READY")
                return
            except (nats.errors.Error, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
    finally:
        await nc.close()


async def rate(url: str, calls: int, lanes: int, workers: int) -> float:
    """Calls/s on `url` with `workers` worker processes of a fresh queue."""
    queue = f"mm-bench-{uuid.uuid4().hex[:8]}"
    with contextlib.ExitStack() as stack:
        for _ in range(workers):
            stack.enter_context(worker(url, queue, concurrency=lanes))
        async with AsyncClient(url, queue, timeout=30) as client:
            deadline = time.monotonic() + 60
            while True:  # until a worker answers
                with contextlib.suppress(Exception):
                    await client.call("add", 1, 1, timeout=2)
                    break
                assert time.monotonic() < deadline, "no worker answered"
                await asyncio.sleep(0.2)
            await in_flight(lambda i: client.add(i, 1), lanes * 4, lanes)  # warm up
            return await in_flight(lambda i: client.add(i, 1), calls, lanes)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lanes", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    ones: list[float] = []
    threes: list[float] = []
    with (
        tempfile.TemporaryDirectory(prefix="mm-bench-nats-") as base,
        servers(Path(base)) as (single, cluster),
    ):
        await ready(single, 1)
        await ready(cluster, 3)
        for round_ in range(1, args.rounds + 1):
            one = await rate(f"{single}?jetstream=1", args.calls, args.lanes, args.workers)
            three = await rate(
                f"{cluster}?jetstream=1&replicas=3", args.calls, args.lanes, args.workers
            )
            ones.append(one)
            threes.append(three)
            print(f"round {round_}: single node {one:,.0f} calls/s, cluster R3 {three:,.0f}")
    print(
        f"\nJetStream, {args.lanes} calls in flight, {args.workers} workers, "
        f"{args.calls} calls a round: single node {statistics.median(ones):,.0f} calls/s, "
        f"3-server cluster with R3 streams {statistics.median(threes):,.0f} calls/s "
        f"({median_ratio(threes, ones):.2f}x the single node)"
    )


if __name__ == "__main__":
    asyncio.run(main())
