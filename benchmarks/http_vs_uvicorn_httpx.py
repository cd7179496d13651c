"""Our HTTP client + worker against a hand-rolled uvicorn app + httpx loop, in one run.

Both servers run in a separate process (``python -m micromessaging worker ... --broker
http://...`` and ``python -m uvicorn``), both clients in this process, on the same machine.
The baseline is what one writes by hand: an ASGI function that parses the JSON-RPC body with
the standard json module, adds, and answers; a default ``httpx.AsyncClient`` POSTing to it.
Rounds alternate, so both see the same machine. For reference it also measures "tuned httpx":
the same loop with httpx's keep-alive pool sized to the calls in flight (httpx keeps only 20
idle connections by default, and opens a new one for every other call beyond that).
Targets: sequential latency at most 1.1x the baseline's, throughput with 64 calls in flight
at least 2x the baseline's.

    python benchmarks/http_vs_uvicorn_httpx.py [--calls 2000] [--rounds 5] [--inflight 64]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator

import httpx

from micromessaging import AsyncClient

BODY = b'{"jsonrpc": "2.0", "method": "add", "params": [1, 5.1], "id": "%d"}'


async def app(scope, receive, send):
    """The baseline server: the seed's Sinatra handler, by hand on uvicorn."""
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    request = json.loads(body)
    a, b = request["params"]
    reply = json.dumps({"jsonrpc": "2.0", "result": a + b, "id": request["id"]}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(reply))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": reply})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


@contextlib.contextmanager
def serving(command: list[str], port: int) -> Iterator[None]:
    process = subprocess.Popen(command)
    try:
        wait_listening(port)
        yield
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def run_calls(call: Callable[[int], Awaitable[object]], calls: int, inflight: int) -> float:
    """Seconds per call, with `inflight` callers sharing `calls` calls."""
    remaining = iter(range(calls))

    async def caller() -> None:
        for i in remaining:
            await call(i)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(inflight)))
    return (time.perf_counter() - started) / calls


async def measure(calls: int, rounds: int, inflight: int) -> None:
    base_port, our_port = free_port(), free_port()
    baseline_server = [
        sys.executable, "-m", "uvicorn", "http_vs_uvicorn_httpx:app",
        "--app-dir", sys.path[0], "--port", str(base_port), "--log-level", "warning",
        "--no-access-log", "--lifespan", "off",
    ]  # fmt: skip
    our_server = [
        sys.executable, "-m", "micromessaging", "worker", "micromessaging.bench:BenchService",
        "--broker", f"http://127.0.0.1:{our_port}", "--queue", "calc", "--concurrency", "64",
        "--log-level", "warning",
    ]  # fmt: skip
    names = ("baseline", "tuned httpx", "ours")
    seq: dict[str, list[float]] = {name: [] for name in names}
    par: dict[str, list[float]] = {name: [] for name in names}
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    with serving(baseline_server, base_port), serving(our_server, our_port):
        async with (
            httpx.AsyncClient() as http,
            httpx.AsyncClient(limits=limits) as tuned,
            AsyncClient(f"http://127.0.0.1:{our_port}", "calc") as client,
        ):
            url = f"http://127.0.0.1:{base_port}/calc"

            async def baseline(i: int) -> object:
                response = await http.post(url, content=BODY % i)
                return response.json()["result"]

            async def tuned_httpx(i: int) -> object:
                response = await tuned.post(url, content=BODY % i)
                return response.json()["result"]

            async def ours(i: int) -> object:
                return await client.add(1, 5.1)

            runs = dict(zip(names, (baseline, tuned_httpx, ours), strict=True))
            for fn in runs.values():  # warm up: connections, imports, caches
                await run_calls(fn, 500, inflight)
            for _ in range(rounds):
                for name, fn in runs.items():
                    seq[name].append(await run_calls(fn, calls, 1))
                    par[name].append(await run_calls(fn, calls, inflight))

    def ratio(mine: list[float], base: list[float]) -> float:
        return statistics.median(m / b for m, b in zip(mine, base, strict=True))

    print(f"{calls} calls per measurement, median of {rounds} rounds (per-round ratios)")
    print(f"{'':22}{'baseline':>12}{'tuned httpx':>14}{'ours':>10}{'ratio':>9}   target")
    seq_us = [statistics.median(seq[name]) * 1e6 for name in names]
    seq_ratio = ratio(seq["ours"], seq["baseline"])
    verdict = "met" if seq_ratio <= 1.1 else "NOT met"
    print(
        f"{'sequential, us/call':22}{seq_us[0]:12.1f}{seq_us[1]:14.1f}{seq_us[2]:10.1f}"
        f"{seq_ratio:8.2f}x   <= 1.1x: {verdict}"
    )
    rates = [1 / statistics.median(par[name]) for name in names]
    par_ratio = ratio(par["baseline"], par["ours"])  # throughput: baseline time / ours
    verdict = "met" if par_ratio >= 2 else "NOT met"
    label = f"{inflight} in flight, calls/s"
    print(
        f"{label:22}{rates[0]:12.0f}{rates[1]:14.0f}{rates[2]:10.0f}"
        f"{par_ratio:8.2f}x   >= 2x: {verdict}"
    )
    print(
        f"against tuned httpx: sequential {ratio(seq['ours'], seq['tuned httpx']):.2f}x, "
        f"throughput {ratio(par['tuned httpx'], par['ours']):.2f}x"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--inflight", type=int, default=64)
    args = parser.parse_args()
    asyncio.run(measure(args.calls, args.rounds, args.inflight))
