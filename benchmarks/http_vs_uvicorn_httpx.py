"""Our HTTP client + worker against a hand-rolled uvicorn app + httpx loop, in one run.

Both servers run in a separate process (``python -m micromessaging worker ... --broker
http://...`` serving the seed's `Calculator`, plain sync ``def`` methods, and ``python -m
uvicorn``), both clients in this process, on the same machine; a second worker serves the
async bench service, for the second rows.
The baseline is what one writes by hand: an ASGI function that parses the JSON-RPC body with
the standard json module, adds, and answers; a default ``httpx.AsyncClient`` POSTing to it.
Rounds alternate, so both see the same machine. For reference it also measures "tuned httpx":
the same loop with httpx's keep-alive pool sized to the calls in flight (httpx keeps only 20
idle connections by default, and opens a new one for every other call beyond that).
Targets (keep our lead): sequential latency at most 1.0x the baseline's, throughput with 64
calls in flight at least 2x the baseline's.

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
from _harness import ASYNC_SERVICE, CALCULATOR, rate, table, us

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


def our_server(target: str, port: int) -> list[str]:
    return [
        sys.executable, "-m", "micromessaging", "worker", target,
        "--broker", f"http://127.0.0.1:{port}", "--queue", "calc", "--concurrency", "64",
        "--log-level", "warning",
    ]  # fmt: skip


async def measure(calls: int, rounds: int, inflight: int) -> None:
    base_port, our_port, async_port = free_port(), free_port(), free_port()
    baseline_server = [
        sys.executable, "-m", "uvicorn", "http_vs_uvicorn_httpx:app",
        "--app-dir", sys.path[0], "--port", str(base_port), "--log-level", "warning",
        "--no-access-log", "--lifespan", "off",
    ]  # fmt: skip
    names = ("baseline", "tuned httpx", "ours", "async service")
    seq: dict[str, list[float]] = {name: [] for name in names}
    par: dict[str, list[float]] = {name: [] for name in names}
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    with (
        serving(baseline_server, base_port),
        serving(our_server(CALCULATOR, our_port), our_port),
        serving(our_server(ASYNC_SERVICE, async_port), async_port),
    ):
        async with (
            httpx.AsyncClient() as http,
            httpx.AsyncClient(limits=limits) as tuned,
            AsyncClient(f"http://127.0.0.1:{our_port}", "calc") as client,
            AsyncClient(f"http://127.0.0.1:{async_port}", "calc") as bench,
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

            async def ours_async(i: int) -> object:
                return await bench.add(1, 5.1)

            runs = dict(zip(names, (baseline, tuned_httpx, ours, ours_async), strict=True))
            for fn in runs.values():  # warm up: connections, imports, caches
                await run_calls(fn, 500, inflight)
            for n in range(rounds):
                for name, fn in runs.items():
                    seq[name].append(await run_calls(fn, calls, 1))
                    par[name].append(await run_calls(fn, calls, inflight))
                print(
                    f"round {n + 1}: sequential {us(seq['ours'][-1])} vs "
                    f"{us(seq['baseline'][-1])}, {inflight} in flight "
                    f"{rate(1 / par['ours'][-1])} vs {rate(1 / par['baseline'][-1])}",
                    flush=True,
                )

    def ratio(mine: list[float], base: list[float]) -> float:
        return statistics.median(m / b for m, b in zip(mine, base, strict=True))

    def m(values: list[float]) -> float:
        return statistics.median(values)

    base_seq, base_par = us(m(seq["baseline"])), rate(1 / m(par["baseline"]))
    rows = []
    for name, label in (("ours", "AsyncClient, "), ("async service", "async service, ")):
        s_ratio = ratio(seq[name], seq["baseline"])
        p_ratio = ratio(par["baseline"], par[name])  # throughput: baseline time / ours
        rows += [
            (f"{label}sequential", us(m(seq[name])), base_seq, s_ratio, "<= 1.0x",
             s_ratio <= 1.0),
            (f"{label}{inflight} in flight", rate(1 / m(par[name])), base_par,
             p_ratio, ">= 2x", p_ratio >= 2),
        ]  # fmt: skip
    table(
        f"HTTP: Calculator, one worker process, against uvicorn + httpx "
        f"({calls} calls a figure, medians of {rounds} rounds)",
        rows,
    )
    print(
        f"against httpx with its pool sized to the calls in flight: sequential "
        f"{ratio(seq['ours'], seq['tuned httpx']):.2f}x, "
        f"throughput {ratio(par['tuned httpx'], par['ours']):.2f}x"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--inflight", type=int, default=64)
    args = parser.parse_args()
    asyncio.run(measure(args.calls, args.rounds, args.inflight))
