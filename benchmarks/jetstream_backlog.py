"""JetStream with calls nobody waits for: how late timeouts fire, how soon a new worker
reaches live calls.

1. ``--in-flight`` calls (default 20,000) made at once on one client, timeout 1 s, no
   worker, twice (the first round is the queue's first use): how late each CallTimeout is.
2. ``--abandoned`` calls (default 120,000) time out with our client, in waves of 20,000;
   then a new worker (concurrency 16): how long its first live call takes.
3. The same number of expired requests published raw (as if by callers that died before
   taking them back); then a new worker: how long its first live call takes.

    python benchmarks/jetstream_backlog.py [--url nats://127.0.0.1:4222] [--in-flight 20000]
        [--abandoned 120000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
import uuid
from collections.abc import Callable

import nats
import nats.js.errors

from micromessaging import AsyncClient, CallTimeout, Worker
from micromessaging.transports.nats.wire import dead_letter_stream_name, stream_name

REQUEST = b'{"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": 1}'
WAVE = 20_000


class Adder:
    def add(self, a: float, b: float) -> float:
        return a + b


async def stored(js: nats.js.JetStreamContext, queue: str) -> int:
    return (await js.stream_info(stream_name(queue))).state.messages


async def wait_for_count(
    js: nats.js.JetStreamContext, queue: str, done: Callable[[int], bool], limit: float = 60.0
) -> None:
    """Poll the stream until `done(count)` holds (or `limit` seconds pass)."""
    give_up = time.monotonic() + limit
    while time.monotonic() < give_up:
        if done(await stored(js, queue)):
            return
        await asyncio.sleep(0.05)


async def lateness(client: AsyncClient, calls: int) -> list[float]:
    async def one(i: int) -> float:
        started = time.monotonic()
        with contextlib.suppress(CallTimeout):
            await client.call("add", i, 1, timeout=1.0)
        return time.monotonic() - started - 1.0

    return sorted(await asyncio.gather(*(one(i) for i in range(calls))))


async def first_live_call(url: str, queue: str, client: AsyncClient) -> float:
    async with Worker(Adder(), url, queue, concurrency=16):
        started = time.monotonic()
        assert await client.add(2, 3) == 5
        return time.monotonic() - started


async def main(server: str, in_flight: int, abandoned: int) -> None:
    url = server + "?jetstream=1"
    nc = await nats.connect(server)
    js = nc.jetstream()
    queues = [f"mm-bench-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    try:
        async with AsyncClient(url, queues[0]) as client:
            for label in ("first use", "again"):
                late = await lateness(client, in_flight)
                print(
                    f"{in_flight} calls in flight, timeout 1 s ({label}): CallTimeout late by "
                    f"median {statistics.median(late):.3f} s, max {late[-1]:.3f} s"
                )

        async with AsyncClient(url, queues[1], timeout=1.0) as client:
            started = time.monotonic()
            for _ in range(abandoned // WAVE):
                await asyncio.gather(
                    *(client.add(i, 1) for i in range(WAVE)), return_exceptions=True
                )
            gave_up = time.monotonic()
            await wait_for_count(js, queues[1], lambda count: count == 0)
            print(
                f"{abandoned} calls timed out ({gave_up - started:.1f} s); their requests left "
                f"the stream {time.monotonic() - gave_up:.2f} s after the last; "
                f"{await stored(js, queues[1])} left"
            )
            took = await first_live_call(url, queues[1], client)
            print(f"  then a new worker's first live call: {took:.3f} s")

        async with AsyncClient(url, queues[2], timeout=5.0) as client:
            with contextlib.suppress(CallTimeout):
                await client.call("add", 0, 0, timeout=0.1)  # the stream exists from here
            past = str(int((time.time() - 1) * 1000))
            for i in range(abandoned):
                headers = {"Mm-Deadline": past, "Mm-Reply-To": f"_INBOX.gone.{i}"}
                await nc.publish(queues[2], REQUEST, headers=headers)
            await nc.flush()
            await wait_for_count(js, queues[2], lambda count: count >= abandoned)
            took = await first_live_call(url, queues[2], client)
            print(f"{abandoned} expired requests left by callers that died; then a new")
            print(f"  worker's first live call: {took:.3f} s")
    finally:
        for queue in queues:
            for name in (stream_name(queue), dead_letter_stream_name(queue)):
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await js.delete_stream(name)
        await nc.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="nats://127.0.0.1:4222")
    parser.add_argument("--in-flight", type=int, default=20_000)
    parser.add_argument("--abandoned", type=int, default=120_000)
    args = parser.parse_args()
    asyncio.run(main(args.url, args.in_flight, args.abandoned))
