"""Per-call cost of a memory:// round trip against a bare asyncio ping-pong, in one run.

Baseline: two tasks passing a message back and forth over two asyncio.Queues, the least an
in-process request/reply can cost. Ours: AsyncClient -> memory:// -> Worker -> reply, with
JSON-RPC encoding, dispatch, deadlines and acknowledgement. Target: ours <= 4x baseline.

    python benchmarks/memory_roundtrip.py [--calls 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from micromessaging import AsyncClient, Worker


class Echo:
    async def add(self, a: float, b: float) -> float:
        return a + b


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
    baseline, ours = [], []
    async with (
        Worker(Echo(), "memory://bench", "echo", concurrency=64),
        AsyncClient("memory://bench", "echo") as client,
    ):
        await memory_round_trip(client, 1000)  # warm up
        for _ in range(rounds):  # interleaved, so both see the same machine
            baseline.append(await ping_pong(calls))
            ours.append(await memory_round_trip(client, calls))
    base, mine = statistics.median(baseline), statistics.median(ours)
    ratio = statistics.median(m / b for m, b in zip(ours, baseline, strict=True))
    print(f"asyncio.Queue ping-pong : {base * 1e6:7.1f} us/call (median of {rounds} rounds)")
    print(f"memory:// round trip    : {mine * 1e6:7.1f} us/call")
    print(f"ratio                   : {ratio:7.2f}x   (median of per-round ratios; target <= 4x)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.rounds))
