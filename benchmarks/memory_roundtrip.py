"""Per-call cost of a memory:// round trip against a bare asyncio ping-pong, in one run.

Baseline: two tasks passing a message back and forth over two asyncio.Queues, the least an
in-process request/reply can cost. Ours: AsyncClient -> memory:// -> Worker -> reply, with
JSON-RPC encoding, dispatch, deadlines and acknowledgement, serving the seed's `Calculator`
(plain sync ``def`` methods); the async bench service is the second row. Target: ours <= 4x
baseline.

    python benchmarks/memory_roundtrip.py [--calls 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from _harness import table, us

from micromessaging import AsyncClient, Worker
from micromessaging.bench import BenchService
from micromessaging.examples.calculator import Calculator


async def ping_pong(calls: int) -> float:
    requests: asyncio.Queue[int] = asyncio.Queue()
    replies: asyncio.Queue[int] = asyncio.Queue()

    async def echo() -> None:
        while True:
            replies.put_nowait(await requests.get())

    task = asyncio.create_task(echo())
    start = time.perf_counter()
    for i in range(calls):
        requests.put_nowait(i)
        await replies.get()
    elapsed = time.perf_counter() - start
    task.cancel()
    return elapsed / calls


async def memory_round_trip(client: AsyncClient, calls: int) -> float:
    start = time.perf_counter()
    for i in range(calls):
        await client.add(i, 1)
    return (time.perf_counter() - start) / calls


async def main(calls: int, rounds: int) -> None:
    baseline: list[float] = []
    ours: dict[str, list[float]] = {"calc": [], "async": []}
    async with (
        Worker(Calculator(), "memory://bench", "calc", concurrency=64),
        Worker(BenchService(), "memory://bench", "async", concurrency=64),
        AsyncClient("memory://bench", "calc") as calc,
        AsyncClient("memory://bench", "async") as bench,
    ):
        clients = {"calc": calc, "async": bench}
        for client in clients.values():
            await memory_round_trip(client, 1000)  # warm up
        for _ in range(rounds):  # interleaved, so all see the same machine
            baseline.append(await ping_pong(calls))
            for key, client in clients.items():
                ours[key].append(await memory_round_trip(client, calls))
    base = statistics.median(baseline)
    rows = []
    for key, name in (("calc", "Calculator"), ("async", "async service")):
        ratio = statistics.median(m / b for m, b in zip(ours[key], baseline, strict=True))
        rows.append((f"{name}, sequential", us(statistics.median(ours[key])), us(base), ratio,
                     "<= 4x", ratio <= 4))  # fmt: skip
    table(
        f"memory://: a round trip in one process, against an asyncio.Queue ping-pong "
        f"(medians of {rounds} rounds)",
        rows,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.rounds))
