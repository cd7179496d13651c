"""Our NATS transport against hand-rolled nats-py request/reply, in one run.

Baseline: a nats-py ``nc.request()`` loop against a hand-rolled nats-py responder (another
process: parse the JSON-RPC, add, respond). Ours: AsyncClient -> nats:// -> one Worker
process (concurrency 64), with deadlines, flow control and our headers. Both serve the same
async ``add`` and run interleaved, round by round, so both see the same (noisy) machine.

Figures: sequential latency per call, and throughput with 64 calls in flight on one client.
Aims (no target was set): sequential <= 1.2x the baseline's latency, and 64-in-flight
throughput >= 5x the baseline's sequential rate. ``--jetstream`` adds the durable mode.

    python benchmarks/nats_vs_request.py [--url nats://127.0.0.1:4222] [--calls 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import time
import uuid

import nats
import orjson

from micromessaging import AsyncClient, Client

RESPONDER = """
import asyncio, sys, orjson, nats

async def main(url, subject):
    nc = await nats.connect(url)
    async def respond(msg):
        request = orjson.loads(msg.data)
        a, b = request["params"]
        await msg.respond(orjson.dumps({"jsonrpc": "2.0", "result": a + b, "id": request["id"]}))
    await nc.subscribe(subject, queue=subject, cb=respond)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""

WORKER = """
import asyncio, sys
from micromessaging import Worker

class Adder:
    async def add(self, a, b):
        return a + b

async def main(url, queue):
    async with Worker(Adder(), url, queue, concurrency=64) as worker:
        print("ready", flush=True)
        await asyncio.Event().wait()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def spawn(script: str, url: str, subject: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", script, url, subject], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    if process.stdout.readline().strip() != "ready":
        raise RuntimeError("a benchmark server did not start")
    return process


def body(i: int) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": i, "method": "add", "params": [i, 1]})


async def raw_sequential(nc: nats.NATS, subject: str, calls: int) -> float:
    start = time.perf_counter()
    for i in range(calls):
        reply = await nc.request(subject, body(i), timeout=10)
        assert orjson.loads(reply.data)["result"] == i + 1
    return (time.perf_counter() - start) / calls


async def raw_in_flight(nc: nats.NATS, subject: str, calls: int, width: int) -> float:
    async def lane(lane_id: int) -> None:
        for i in range(lane_id, calls, width):
            reply = await nc.request(subject, body(i), timeout=10)
            assert orjson.loads(reply.data)["result"] == i + 1

    start = time.perf_counter()
    await asyncio.gather(*(lane(n) for n in range(width)))
    return calls / (time.perf_counter() - start)


async def ours_sequential(client: AsyncClient, calls: int) -> float:
    start = time.perf_counter()
    for i in range(calls):
        assert await client.add(i, 1) == i + 1
    return (time.perf_counter() - start) / calls


async def ours_in_flight(client: AsyncClient, calls: int, width: int) -> float:
    async def lane(lane_id: int) -> None:
        for i in range(lane_id, calls, width):
            assert await client.add(i, 1) == i + 1

    start = time.perf_counter()
    await asyncio.gather(*(lane(n) for n in range(width)))
    return calls / (time.perf_counter() - start)


def sync_sequential(url: str, queue: str, calls: int) -> float:
    with Client(url, queue, timeout=10) as client:
        client.add(0, 1)
        start = time.perf_counter()
        for i in range(calls):
            assert client.add(i, 1) == i + 1
        return (time.perf_counter() - start) / calls


async def measure(url: str, calls: int, rounds: int, width: int) -> dict[str, list[float]]:
    raw_subject = f"bench-raw-{uuid.uuid4().hex[:8]}"
    queue = f"bench-mm-{uuid.uuid4().hex[:8]}"
    results: dict[str, list[float]] = {k: [] for k in ("raw", "ours", "raw64", "ours64", "sync")}
    responder = spawn(RESPONDER, url.split("?")[0], raw_subject)
    worker = spawn(WORKER, url, queue)
    try:
        nc = await nats.connect(url.split("?")[0])
        async with AsyncClient(url, queue, timeout=10) as client:
            await raw_sequential(nc, raw_subject, 200)  # warm up
            await ours_sequential(client, 200)
            for _ in range(rounds):
                results["raw"].append(await raw_sequential(nc, raw_subject, calls))
                results["ours"].append(await ours_sequential(client, calls))
                results["raw64"].append(await raw_in_flight(nc, raw_subject, calls * 2, width))
                results["ours64"].append(await ours_in_flight(client, calls * 2, width))
            results["sync"].append(await asyncio.to_thread(sync_sequential, url, queue, calls))
        await nc.close()
    finally:
        for process in (responder, worker):
            process.terminate()
            process.wait()
    if "jetstream" in url:
        await delete_streams(url, queue)
    return results


async def delete_streams(url: str, queue: str) -> None:
    from micromessaging.transports.nats.wire import dead_letter_stream_name, stream_name

    nc = await nats.connect(url.split("?")[0])
    for name in (stream_name(queue), dead_letter_stream_name(queue)):
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await nc.jetstream().delete_stream(name)
    await nc.close()


def report(title: str, results: dict[str, list[float]], width: int) -> None:
    raw, ours = statistics.median(results["raw"]), statistics.median(results["ours"])
    latency_ratio = statistics.median(
        o / r for o, r in zip(results["ours"], results["raw"], strict=True)
    )
    raw64, ours64 = statistics.median(results["raw64"]), statistics.median(results["ours64"])
    sequential_rate = 1 / raw
    print(f"== {title}")
    print(f"hand-rolled nc.request, sequential : {raw * 1e6:8.1f} us/call ({1 / raw:8.0f}/s)")
    print(f"ours (AsyncClient), sequential     : {ours * 1e6:8.1f} us/call ({1 / ours:8.0f}/s)")
    print(f"ours (sync Client), sequential     : {results['sync'][0] * 1e6:8.1f} us/call")
    print(f"hand-rolled, {width} in flight        : {raw64:8.0f} calls/s")
    print(f"ours, {width} in flight               : {ours64:8.0f} calls/s")
    verdict = "met" if latency_ratio <= 1.2 else "NOT met"
    print(f"sequential latency ratio           : {latency_ratio:8.2f}x  (aim <= 1.2x: {verdict})")
    throughput_ratio = ours64 / sequential_rate
    verdict = "met" if throughput_ratio >= 5 else "NOT met"
    print(
        f"ours {width} in flight / hand-rolled sequential rate: {throughput_ratio:6.2f}x"
        f"  (aim >= 5x: {verdict})"
    )
    print(f"ours {width} in flight / hand-rolled {width} in flight: {ours64 / raw64:6.2f}x")


async def main(url: str, calls: int, rounds: int, width: int, jetstream: bool) -> None:
    report(f"core NATS ({url})", await measure(url, calls, rounds, width), width)
    if jetstream:
        durable = url + ("&" if "?" in url else "?") + "jetstream=1"
        report(f"JetStream ({durable})", await measure(durable, calls, rounds, width), width)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="nats://127.0.0.1:4222")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--jetstream", action="store_true")
    args = parser.parse_args()
    asyncio.run(main(args.url, args.calls, args.rounds, args.width, args.jetstream))
