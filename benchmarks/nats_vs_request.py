"""Our NATS transport against hand-rolled nats-py request/reply, in one run.

Baseline: a nats-py ``nc.request()`` loop against a hand-rolled nats-py responder (another
process: parse the JSON-RPC, add, respond), sequential and with 64 requests in flight.
Ours: the seed's `Calculator` (plain class, sync ``def`` methods) served by one
``micromessaging worker`` process (concurrency 64) with deadlines, flow control, heartbeats
and our headers; a second worker serves the async bench service, for the second rows. All
run interleaved, round by round, so all see the same (noisy) machine.

Targets: sequential <= 1.0x the hand-rolled loop's latency; 64 in flight >= 1.0x the
hand-rolled 64-in-flight loop's rate. ``--jetstream`` adds the durable mode.

    python benchmarks/nats_vs_request.py [--url nats://127.0.0.1:4222] [--calls 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import statistics
import subprocess
import sys
import time
import uuid

import nats
import orjson
from _harness import ASYNC_SERVICE, cpu_seconds, family_pids, rate, table, until_served, us, worker

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

# On the event loop our worker runs on (uvloop when installed): the same for both.
from micromessaging._loop import run
run(main(sys.argv[1], sys.argv[2]))
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


def sync_sequential(client: Client, calls: int) -> float:
    start = time.perf_counter()
    for i in range(calls):
        assert client.add(i, 1) == i + 1
    return (time.perf_counter() - start) / calls


KEYS = ("raw", "ours", "raw64", "ours64", "sync", "a_seq", "a64")
KEYS += ("cpu_raw", "cpu_ours", "cpu_nc", "cpu_client", "seq_raw", "seq_ours")
"""cpu_*: CPU seconds a call cost, 64 in flight: the responder, our worker (their processes),
nc.request(), our AsyncClient (this process); seq_*: the responder's and our worker's, one
call after another (each call wakes a process that was waiting)."""


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(url: str, calls: int, rounds: int, width: int) -> dict[str, list[float]]:
    raw_subject = f"bench-raw-{uuid.uuid4().hex[:8]}"
    queue, async_queue = f"bench-mm-{uuid.uuid4().hex[:8]}", f"bench-as-{uuid.uuid4().hex[:8]}"
    results: dict[str, list[float]] = {k: [] for k in KEYS}
    responder = spawn(RESPONDER, url.split("?")[0], raw_subject)
    try:
        with worker(url, queue) as ours, worker(url, async_queue, target=ASYNC_SERVICE):
            servers = {"raw": [responder.pid], "ours": family_pids(ours.pid)}

            def cpu(of: str) -> float:
                return sum(cpu_seconds(pid) for pid in servers[of])

            nc = await nats.connect(url.split("?")[0])
            async with (
                AsyncClient(url, queue, timeout=10) as client,
                AsyncClient(url, async_queue, timeout=10) as bench,
            ):
                await until_served(lambda: client.add(0, 1))
                await until_served(lambda: bench.add(0, 1))
                sync_client = Client(url, queue, timeout=10)
                await asyncio.to_thread(sync_client.connect)
                await raw_sequential(nc, raw_subject, 200)  # warm up
                await raw_in_flight(nc, raw_subject, 1000, width)
                for c in (client, bench):
                    await ours_sequential(c, 200)
                    await ours_in_flight(c, 1000, width)
                await asyncio.to_thread(sync_sequential, sync_client, 200)
                for n in range(rounds):
                    spent = cpu("raw")
                    results["raw"].append(await raw_sequential(nc, raw_subject, calls))
                    results["seq_raw"].append((cpu("raw") - spent) / calls)
                    spent = cpu("ours")
                    results["ours"].append(await ours_sequential(client, calls))
                    results["seq_ours"].append((cpu("ours") - spent) / calls)
                    results["sync"].append(
                        await asyncio.to_thread(sync_sequential, sync_client, calls)
                    )
                    spent, here = cpu("raw"), own_cpu()
                    results["raw64"].append(await raw_in_flight(nc, raw_subject, calls * 2, width))
                    results["cpu_raw"].append((cpu("raw") - spent) / (calls * 2))
                    results["cpu_nc"].append((own_cpu() - here) / (calls * 2))
                    spent, here = cpu("ours"), own_cpu()
                    results["ours64"].append(await ours_in_flight(client, calls * 2, width))
                    results["cpu_ours"].append((cpu("ours") - spent) / (calls * 2))
                    results["cpu_client"].append((own_cpu() - here) / (calls * 2))
                    results["a_seq"].append(await ours_sequential(bench, calls))
                    results["a64"].append(await ours_in_flight(bench, calls * 2, width))
                    print(
                        f"round {n + 1}: sequential {us(results['ours'][-1])} vs "
                        f"{us(results['raw'][-1])} (Client {us(results['sync'][-1])}), "
                        f"{width} in flight {rate(results['ours64'][-1])} vs "
                        f"{rate(results['raw64'][-1])} (async service "
                        f"{us(results['a_seq'][-1])}, {rate(results['a64'][-1])})",
                        flush=True,
                    )
                await asyncio.to_thread(sync_client.close)
            await nc.close()
    finally:
        responder.terminate()
        responder.wait()
    if "jetstream" in url:
        await delete_streams(url, queue)
        await delete_streams(url, async_queue)
    return results


async def delete_streams(url: str, queue: str) -> None:
    from micromessaging.transports.nats.wire import dead_letter_stream_name, stream_name

    nc = await nats.connect(url.split("?")[0])
    for name in (stream_name(queue), dead_letter_stream_name(queue)):
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await nc.jetstream().delete_stream(name)
    await nc.close()


def report(title: str, results: dict[str, list[float]], width: int) -> None:
    def m(key: str) -> float:
        return statistics.median(results[key])

    def ratio(key: str, base: str) -> float:
        return statistics.median(o / r for o, r in zip(results[key], results[base], strict=True))

    seq, par = us(m("raw")), rate(m("raw64"))
    rows = [
        ("AsyncClient, sequential", us(m("ours")), seq, ratio("ours", "raw"), "<= 1.0x",
         ratio("ours", "raw") <= 1.0),
        ("Client, sequential", us(m("sync")), seq, ratio("sync", "raw"), "<= 1.0x",
         ratio("sync", "raw") <= 1.0),
        (f"AsyncClient, {width} in flight", rate(m("ours64")), par, ratio("ours64", "raw64"),
         ">= 1.0x", ratio("ours64", "raw64") >= 1.0),
        ("async service, sequential", us(m("a_seq")), seq, ratio("a_seq", "raw"), "<= 1.0x",
         ratio("a_seq", "raw") <= 1.0),
        (f"async service, {width} in flight", rate(m("a64")), par, ratio("a64", "raw64"),
         ">= 1.0x", ratio("a64", "raw64") >= 1.0),
    ]  # fmt: skip
    table(title, rows)
    print(
        f"CPU a call, {width} in flight (10 ms ticks): our worker {us(m('cpu_ours'))}, the "
        f"responder {us(m('cpu_raw'))}; our AsyncClient {us(m('cpu_client'))}, "
        f"nc.request() {us(m('cpu_nc'))}\n"
        f"CPU a call, sequential: our worker {us(m('seq_ours'))}, the responder "
        f"{us(m('seq_raw'))}"
    )


async def main(url: str, calls: int, rounds: int, width: int, jetstream: bool) -> None:
    title = f"core NATS: Calculator, one worker process, against nats-py request() ({url})"
    report(title, await measure(url, calls, rounds, width), width)
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
