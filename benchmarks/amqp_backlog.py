"""RabbitMQ with calls nobody waits for: how late timeouts fire, how soon a new worker
reaches live calls.

1. ``--in-flight`` calls (default 20,000) made at once on one client, timeout 1 s, no
   worker, twice (the first round is the queue's first use): how late each CallTimeout is.
2. ``--abandoned`` requests (default 2,000) left in a queue as the seed's client leaves them
   when stopped (no deadline; a reply queue that is gone); then a new worker
   (concurrency 16): how long its first live call takes, and how many of them ran.

    python benchmarks/amqp_backlog.py [--url amqp://guest:guest@127.0.0.1:5672/]
        [--in-flight 20000] [--abandoned 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
import uuid

import aio_pika

from micromessaging import AsyncClient, Worker


class Adder:
    def __init__(self) -> None:
        self.calls = 0

    def add(self, a: float, b: float) -> float:
        self.calls += 1
        return a + b


async def lateness(client: AsyncClient, calls: int) -> tuple[list[float], dict[str, int]]:
    kinds: dict[str, int] = {}

    async def one(i: int) -> float:
        started = time.monotonic()
        try:
            await client.add(i, 1)
        except Exception as exc:
            kinds[type(exc).__name__] = kinds.get(type(exc).__name__, 0) + 1
        return time.monotonic() - started - 1.0

    return sorted(await asyncio.gather(*(one(i) for i in range(calls)))), kinds


async def main(url: str, in_flight: int, abandoned: int) -> None:
    connection = await aio_pika.connect(url)
    channel = await connection.channel()
    queues = [f"mm-bench-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    try:
        async with AsyncClient(url, queues[0], timeout=1.0) as client:
            for label in ("first use", "again"):
                late, kinds = await lateness(client, in_flight)
                print(
                    f"{in_flight} calls in flight, timeout 1 s ({label}): {kinds}, late by "
                    f"median {statistics.median(late):.3f} s, max {late[-1]:.3f} s"
                )

        await channel.declare_queue(queues[1])
        body = b'{"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": "x"}'
        for i in range(abandoned):
            message = aio_pika.Message(
                body, reply_to=f"amq.gen-{uuid.uuid4().hex}", correlation_id=str(i)
            )
            await channel.default_exchange.publish(message, queues[1])
        service = Adder()
        async with (
            AsyncClient(url, queues[1], timeout=120) as client,
            Worker(service, url, queues[1], concurrency=16),
        ):
            started = time.monotonic()
            assert await client.add(2, 3) == 5
            took = time.monotonic() - started
        print(
            f"{abandoned} requests whose reply queues are gone, then a new worker: first live "
            f"call after {took:.3f} s; {service.calls - 1} of them ran"
        )
    finally:
        for queue in queues:
            with contextlib.suppress(Exception):
                await channel.queue_delete(queue)
                await channel.queue_delete(queue + ".dead")
        await connection.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--in-flight", type=int, default=20_000)
    parser.add_argument("--abandoned", type=int, default=2_000)
    args = parser.parse_args()
    asyncio.run(main(args.url, args.in_flight, args.abandoned))
