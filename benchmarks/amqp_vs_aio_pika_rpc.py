"""Our RabbitMQ client and worker against aio-pika's own RPC pattern, on the same broker.

Baseline: ``aio_pika.patterns.RPC`` as its documentation uses it (a channel with publisher
confirms, the callee in its own process). Ours: the seed's `Calculator` (plain class, sync
``def`` methods) served by one ``micromessaging worker`` process (concurrency 64, every
reliability feature on); a second worker serves the async bench service, for the second
rows. Rounds interleave them all, so all see the same (noisy) machine; figures are medians,
ratios the medians of the per-round ratios.

Targets: sequential latency <= 0.8x aio-pika RPC's; throughput with 64 calls in flight
>= 4x (aim 5x).

``--confirm-cost`` measures instead what publisher confirms on requests would cost: a bare
aiormq client (direct reply-to, our worker answering) publishing with and without confirms,
interleaved (docs/wire-amqp.md explains why our requests are not confirmed). ``--cpu``
measures the CPU time per call of the client and of the worker process (64 in flight).

    python benchmarks/amqp_vs_aio_pika_rpc.py [--broker amqp://guest:guest@127.0.0.1/]
        [--rounds 5] [--sequential 500] [--calls 3000] [--confirm-cost | --cpu]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aio_pika
import orjson
from _harness import (
    ASYNC_SERVICE,
    CALCULATOR,
    cpu_seconds,
    rate,
    run_like_our_worker,
    table,
    us,
)
from aio_pika.patterns import RPC
from pamqp.commands import Basic

from micromessaging import AsyncClient, Client, NoWorkers

IN_FLIGHT = 64


class Adder:
    """The service both sides serve."""

    async def add(self, a: float, b: float) -> float:
        return a + b


async def serve_aio_pika(broker: str, name: str) -> None:
    """The baseline's callee (run in its own process)."""
    connection = await aio_pika.connect_robust(broker)
    channel = await connection.channel()
    rpc = await RPC.create(channel)
    adder = Adder()

    async def add(*, a: float, b: float) -> float:
        return await adder.add(a, b)

    await rpc.register(name, add, auto_delete=True)
    print("ready", flush=True)
    await asyncio.Future()


def start(command: list[str], ready: str | None = None) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        command,
        cwd=Path(__file__).parent,
        stdout=subprocess.DEVNULL if ready is None else subprocess.PIPE,
        text=True,
    )
    if ready is not None:
        assert process.stdout is not None
        for line in process.stdout:
            if ready in line:
                break
        else:
            raise RuntimeError(f"{command[:4]} did not start")
    return process


async def sequential(call, count: int) -> float:
    """Seconds per call, one call after another."""
    started = time.perf_counter()
    for i in range(count):
        await call(i)
    return (time.perf_counter() - started) / count


async def throughput(call, count: int) -> float:
    """Calls per second with IN_FLIGHT calls in flight at all times."""
    numbers = iter(range(count))

    async def lane() -> None:
        for i in numbers:
            assert await call(i) == i + 1

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(IN_FLIGHT)))
    return count / (time.perf_counter() - started)


async def first_call(call) -> None:
    """Call once the worker is up (NoWorkers until it has declared its queue)."""
    give_up = time.monotonic() + 60
    while True:
        try:
            await call(0)
            return
        except NoWorkers:
            if time.monotonic() > give_up:
                raise
            await asyncio.sleep(0.1)


def sync_sequential(client: Client, count: int) -> float:
    started = time.perf_counter()
    for i in range(count):
        client.add(i, 1)
    return (time.perf_counter() - started) / count


def worker_command(broker: str, target: str, queue: str) -> list[str]:
    return [
        sys.executable, "-m", "micromessaging", "worker", target, "--broker", broker,
        "--queue", queue, "--concurrency", str(IN_FLIGHT), "--log-level", "warning",
    ]  # fmt: skip


async def main(broker: str, rounds: int, seq_calls: int, calls: int) -> None:
    tag = uuid.uuid4().hex[:8]
    baseline_queue, our_queue, async_queue = (f"bench-{k}-{tag}" for k in ("rpc", "mm", "as"))
    callee = start(
        [sys.executable, __file__, "--serve-aio-pika", baseline_queue, "--broker", broker],
        "ready",
    )
    workers = [
        start(worker_command(broker, CALCULATOR, our_queue)),
        start(worker_command(broker, ASYNC_SERVICE, async_queue)),
    ]
    connection = await aio_pika.connect_robust(broker)
    try:
        rpc = await RPC.create(await connection.channel())

        async def theirs(i: int) -> float:
            return await rpc.call(baseline_queue, kwargs={"a": i, "b": 1})

        async with (
            AsyncClient(broker, our_queue, timeout=30) as client,
            AsyncClient(broker, async_queue, timeout=30) as bench,
        ):

            async def ours(i: int) -> float:
                return await client.add(i, 1)

            async def ours_async(i: int) -> float:
                return await bench.add(i, 1)

            await first_call(ours)  # the workers are up
            await first_call(ours_async)
            sync_client = Client(broker, our_queue, timeout=30)
            sync_client.connect()
            for call in (theirs, ours, ours_async):  # warm up
                await sequential(call, 200)
                await throughput(call, 1000)
            figures: dict[str, list[float]] = {
                k: []
                for k in ("seq_theirs", "seq_ours", "thr_theirs", "thr_ours", "seq_sync",
                          "seq_async", "thr_async")
            }  # fmt: skip
            for n in range(rounds):
                figures["seq_theirs"].append(await sequential(theirs, seq_calls))
                figures["seq_ours"].append(await sequential(ours, seq_calls))
                figures["thr_theirs"].append(await throughput(theirs, calls))
                figures["thr_ours"].append(await throughput(ours, calls))
                figures["seq_sync"].append(
                    await asyncio.to_thread(sync_sequential, sync_client, seq_calls)
                )
                figures["seq_async"].append(await sequential(ours_async, seq_calls))
                figures["thr_async"].append(await throughput(ours_async, calls))
                print(
                    f"round {n + 1}: sequential {us(figures['seq_ours'][-1])} vs "
                    f"{us(figures['seq_theirs'][-1])}, {IN_FLIGHT} in flight "
                    f"{rate(figures['thr_ours'][-1])} vs {rate(figures['thr_theirs'][-1])} "
                    f"(async service {us(figures['seq_async'][-1])}, "
                    f"{rate(figures['thr_async'][-1])})",
                    flush=True,
                )
            sync_client.close()
    finally:
        await connection.close()
        for process in (callee, *workers):
            process.terminate()
            process.wait(30)
        await delete_queues(broker, [our_queue, async_queue])
    report(figures, rounds)


def report(figures: dict[str, list[float]], rounds: int) -> None:
    def m(key: str) -> float:
        return statistics.median(figures[key])

    def ratio(key: str, base: str) -> float:
        return statistics.median(o / t for o, t in zip(figures[key], figures[base], strict=True))

    seq, thr = us(m("seq_theirs")), rate(m("thr_theirs"))
    rows = [
        ("AsyncClient, sequential", us(m("seq_ours")), seq, ratio("seq_ours", "seq_theirs"),
         "<= 0.8x", ratio("seq_ours", "seq_theirs") <= 0.8),
        ("Client, sequential", us(m("seq_sync")), seq, ratio("seq_sync", "seq_theirs"),
         "<= 0.8x", ratio("seq_sync", "seq_theirs") <= 0.8),
        (f"AsyncClient, {IN_FLIGHT} in flight", rate(m("thr_ours")), thr,
         ratio("thr_ours", "thr_theirs"), ">= 4x", ratio("thr_ours", "thr_theirs") >= 4),
        ("async service, sequential", us(m("seq_async")), seq, ratio("seq_async", "seq_theirs"),
         "<= 0.8x", ratio("seq_async", "seq_theirs") <= 0.8),
        (f"async service, {IN_FLIGHT} in flight", rate(m("thr_async")), thr,
         ratio("thr_async", "thr_theirs"), ">= 4x", ratio("thr_async", "thr_theirs") >= 4),
    ]  # fmt: skip
    table(
        f"RabbitMQ: Calculator, one worker process, against aio_pika.patterns.RPC "
        f"(medians of {rounds} rounds, {os.cpu_count()} cores)",
        rows,
    )


async def confirm_cost(broker: str, rounds: int, seq_calls: int, calls: int) -> None:
    """Sequential latency and throughput of requests published with and without confirms."""
    queue = f"bench-confirms-{uuid.uuid4().hex[:8]}"
    worker = start(
        [
            sys.executable, "-m", "micromessaging", "worker", CALCULATOR,
            "--broker", broker, "--queue", queue, "--concurrency", str(IN_FLIGHT),
            "--log-level", "warning",
        ]
    )  # fmt: skip
    figures: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    try:
        async with AsyncClient(broker, queue, timeout=30) as client:
            await first_call(lambda i: client.add(i, 1))  # the worker is up
        for _ in range(rounds):
            for confirms in (False, True):
                figures[confirms].append(
                    await bare_client(broker, queue, confirms, seq_calls, calls)
                )
    finally:
        worker.terminate()
        worker.wait(30)
        await delete_queues(broker, [queue])
    for confirms, values in figures.items():
        latency = statistics.median(v[0] for v in values)
        rate = statistics.median(v[1] for v in values)
        print(
            f"requests {'with' if confirms else 'without'} confirms: sequential "
            f"{latency * 1e6:6.0f} us/call, {IN_FLIGHT} in flight {rate:6.0f} calls/s"
        )


async def bare_client(
    broker: str, queue: str, confirms: bool, seq_calls: int, calls: int
) -> tuple[float, float]:
    """aiormq publishing JSON-RPC requests, replies through direct reply-to."""
    connection = await aio_pika.connect(broker)
    async with connection:
        channel = aio_pika.Channel(connection, publisher_confirms=confirms)
        await channel.initialize()
        raw = await channel.get_underlay_channel()
        pending: dict[str, asyncio.Future[bytes]] = {}

        async def on_reply(message) -> None:
            future = pending.pop(message.header.properties.correlation_id, None)
            if future is not None:
                future.set_result(message.body)

        await raw.basic_consume("amq.rabbitmq.reply-to", on_reply, no_ack=True)
        loop = asyncio.get_running_loop()

        async def call(i: int) -> float:
            cid = str(i) + uuid.uuid4().hex[:6]
            future = pending[cid] = loop.create_future()
            body = orjson.dumps({"jsonrpc": "2.0", "method": "add", "params": [i, 1], "id": cid})
            properties = Basic.Properties(
                correlation_id=cid, message_id=cid, reply_to="amq.rabbitmq.reply-to"
            )
            await raw.basic_publish(body, routing_key=queue, properties=properties, wait=confirms)
            return orjson.loads(await future)["result"]

        return await sequential(call, seq_calls), await throughput(call, calls)


async def cpu_per_call(broker: str, rounds: int, calls: int) -> None:
    """CPU time per call of the client (this process) and of the worker process, with
    IN_FLIGHT calls in flight to the seed's Calculator: where a call's cost goes."""
    queue = f"bench-cpu-{uuid.uuid4().hex[:8]}"
    worker = start(worker_command(broker, CALCULATOR, queue))
    try:
        async with AsyncClient(broker, queue, timeout=30) as client:

            async def call(i: int) -> float:
                return await client.add(i, 1)

            await first_call(call)
            await throughput(call, 2000)  # warm up
            for _ in range(rounds):
                mine, theirs = cpu_seconds("self"), cpu_seconds(worker.pid)
                per_second = await throughput(call, calls)
                mine, theirs = cpu_seconds("self") - mine, cpu_seconds(worker.pid) - theirs
                print(
                    f"{per_second:7,.0f} calls/s; CPU per call: client {mine / calls * 1e6:4.0f} "
                    f"us, worker {theirs / calls * 1e6:4.0f} us",
                    flush=True,
                )
    finally:
        worker.terminate()
        worker.wait(30)
        await delete_queues(broker, [queue])


async def delete_queues(broker: str, names: list[str]) -> None:
    connection = await aio_pika.connect(broker)
    async with connection:
        channel = await connection.channel()
        for name in names:
            await channel.queue_delete(name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sequential", type=int, default=500)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--serve-aio-pika", metavar="QUEUE")
    parser.add_argument("--confirm-cost", action="store_true")
    parser.add_argument("--cpu", action="store_true", help="CPU per call, client and worker")
    args = parser.parse_args()
    if args.serve_aio_pika:
        # On the event loop our worker runs on (uvloop when installed): the same for both.
        run_like_our_worker(serve_aio_pika(args.broker, args.serve_aio_pika))
    elif args.cpu:
        asyncio.run(cpu_per_call(args.broker, args.rounds, args.calls))
    elif args.confirm_cost:
        asyncio.run(confirm_cost(args.broker, args.rounds, args.sequential, args.calls))
    else:
        asyncio.run(main(args.broker, args.rounds, args.sequential, args.calls))
