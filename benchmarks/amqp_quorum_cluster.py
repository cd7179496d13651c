"""RabbitMQ quorum queues on a 3-node cluster of our own: calls/s, and the leader killed.

Starts three RabbitMQ nodes on free ports (one epmd, one Erlang cookie, data in temporary
directories), all stopped by pid at the end, and then:

1. calls/s at ``--in-flight`` (64) calls outstanding on a quorum queue of node 1 alone,
   then on a quorum queue replicated to all three nodes (same run, same machine): the
   price of replication;
2. ``--calls`` (2,000) calls across 2 workers while the queue's leader node is killed
   (SIGKILL) mid-run; clients and workers are connected to the other nodes (a URL names one
   node: put a load balancer in front of a cluster, or give each process a node's URL).
   Every call must end in its right answer or a clear error (`TransportError`,
   `CallTimeout`) before its timeout; afterwards calls succeed with nothing restarted.

    python benchmarks/amqp_quorum_cluster.py [--in-flight 64] [--calls 2000] [--rounds 3]

Needs RabbitMQ's server installed (the tests' tests/brokers.py finds it); takes a few
minutes, mostly booting nodes. Not part of the test suite (three nodes don't fit its budget).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import statistics
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.brokers import RabbitNode

from micromessaging import AsyncClient, Worker


class Adder:
    async def add(self, a: float, b: float) -> float:
        return a + b

    async def slow_add(self, a: float, b: float, seconds: float) -> float:
        await asyncio.sleep(seconds)
        return a + b


class ClusterNode(RabbitNode):
    """A RabbitMQ node sharing epmd and the Erlang cookie with the others of its cluster."""

    def __init__(self, cookie: str, epmd_port: int | None) -> None:
        super().__init__()
        if epmd_port is not None:
            self.epmd_port = epmd_port
        path = self.dir / ".erlang.cookie"  # HOME is the node's directory
        path.write_text(cookie)
        path.chmod(0o400)


def quorum(node: RabbitNode) -> str:
    return node.url + "?queue_type=quorum"


async def rate(url: str, queue: str, calls: int, in_flight: int) -> float:
    async with Worker(Adder(), url, queue, concurrency=in_flight), AsyncClient(url, queue) as c:
        await c.add(0, 0)
        numbers = iter(range(calls))

        async def lane() -> None:
            for i in numbers:
                await c.add(i, 1)

        started = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(in_flight)))
        return calls / (time.perf_counter() - started)


def leader_of(node: RabbitNode, queue: str) -> str:
    for line in node.ctl("list_queues", "-q", "name", "leader").splitlines():
        name, _, leader = line.partition("\t")
        if name == queue:
            return leader.strip()
    raise RuntimeError(f"no leader for {queue}")


async def leader_killed(nodes: list[ClusterNode], calls: int, timeout: float) -> None:
    queue = f"mm-cluster-{uuid.uuid4().hex[:8]}"
    async with Worker(Adder(), quorum(nodes[0]), queue):
        pass  # declared, replicated to the three nodes
    leader = next(n for n in nodes if n.name == leader_of(nodes[0], queue))
    others = [n for n in nodes if n is not leader]
    outcomes: list[tuple[object, float]] = []
    fifth = asyncio.Event()
    numbers = iter(range(calls))
    async with (
        Worker(Adder(), quorum(others[0]), queue, concurrency=16),
        Worker(Adder(), quorum(others[1]), queue, concurrency=16),
        AsyncClient(quorum(others[0]), queue, timeout=timeout) as client,
    ):

        async def lane() -> None:
            for i in numbers:
                started = time.monotonic()
                try:
                    value: object = await client.call("slow_add", i, 1, 0.05) == i + 1
                except Exception as exc:
                    value = type(exc).__name__
                outcomes.append((value, time.monotonic() - started))
                if len(outcomes) >= calls // 5:
                    fifth.set()
                if value is not True:
                    await asyncio.sleep(0.05)

        running = asyncio.gather(*(lane() for _ in range(32)))
        await fifth.wait()
        killed = time.monotonic()
        await asyncio.to_thread(leader.kill)
        await running
        kinds = Counter(value for value, _ in outcomes)
        slowest = max(took for _, took in outcomes)
        print(f"leader {leader.name} killed after {calls // 5} of {calls} calls")
        print(f"  outcomes: {dict(kinds)}; slowest {slowest:.2f} s against {timeout:g} s")
        assert kinds[False] == 0, "a wrong answer"
        assert slowest < timeout + 2, "a call outlived its timeout"
        print(f"  the run ended {time.monotonic() - killed:.1f} s after the kill")
        answers = await asyncio.gather(*(client.add(i, 1) for i in range(200)))
        assert answers == [i + 1 for i in range(200)]
        print("  then 200 more calls, all answered right, nothing restarted")


async def main(args: argparse.Namespace) -> None:
    cookie = secrets.token_hex(16)
    nodes: list[ClusterNode] = []
    try:
        first = ClusterNode(cookie, None)
        nodes.append(first)
        await asyncio.to_thread(first.start)
        single = []
        for _ in range(args.rounds):
            queue = f"mm-single-{uuid.uuid4().hex[:8]}"
            single.append(await rate(quorum(first), queue, args.calls, args.in_flight))
        for _ in range(2):
            node = ClusterNode(cookie, first.epmd_port)
            nodes.append(node)
            await asyncio.to_thread(node.start)
            await asyncio.to_thread(node.ctl, "stop_app")
            await asyncio.to_thread(node.ctl, "join_cluster", first.name)
            await asyncio.to_thread(node.start_app)
        replicated = []
        for _ in range(args.rounds):
            queue = f"mm-three-{uuid.uuid4().hex[:8]}"
            replicated.append(await rate(quorum(first), queue, args.calls, args.in_flight))
        one, three = statistics.median(single), statistics.median(replicated)
        print(f"quorum queue, {args.in_flight} in flight: one node {one:.0f} calls/s, ", end="")
        print(f"three nodes {three:.0f} calls/s ({three / one:.2f} x)")
        await leader_killed(nodes, args.calls, args.timeout)
    finally:
        for node in reversed(nodes):
            with contextlib.suppress(Exception):
                await asyncio.to_thread(node.close)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=10.0)
    asyncio.run(main(parser.parse_args()))
