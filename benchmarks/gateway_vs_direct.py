"""Calls through the HTTP gateway against the same calls made directly over the broker.

One worker process serves the seed's `Calculator` on Redis (every reliability feature on);
a gateway process (``micromessaging gateway``, one process) forwards authenticated HTTP
calls to it. The same `AsyncClient` load - 64 calls in flight - goes once straight to Redis
and once to the gateway (``http://:TOKEN@host:port``), round after round.

A third client calls the HTTP floor (`_http_floor.py`): the gateway's HTTP stack answering
by itself, no broker behind it; and the gateway's and the worker's CPU per call are read off
/proc. Target: through the gateway >= 0.8x the direct throughput.

    python benchmarks/gateway_vs_direct.py [--broker redis://127.0.0.1:6379/0] [--calls 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _harness import (
    HERE,
    cpu_seconds,
    family_pids,
    in_flight,
    median_ratio,
    rate,
    table,
    us,
    worker,
)

from micromessaging import AsyncClient
from micromessaging.gateway.auth import hash_token


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_gateway(broker: str, port: int, tokens: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "micromessaging", "gateway", "--broker", broker, "--host",
        "127.0.0.1", "--port", str(port), "--tokens", str(tokens), "--log-level", "warning",
    ]  # fmt: skip
    return wait_listening(subprocess.Popen(command, stderr=subprocess.DEVNULL), port)


def wait_listening(process: subprocess.Popen[bytes], port: int) -> subprocess.Popen[bytes]:
    """`process`, once something accepts connections on `port`."""
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return process
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError(f"{process.args!r} did not start") from None
            time.sleep(0.05)


def start_floor(port: int) -> subprocess.Popen[bytes]:
    """The HTTP floor (`_http_floor.py`): the gateway's HTTP stack answering add by itself."""
    command = [sys.executable, str(HERE / "_http_floor.py"), str(port)]
    return wait_listening(subprocess.Popen(command, stderr=subprocess.DEVNULL), port)


async def main(broker: str, calls: int, rounds: int, lanes: int) -> None:
    queue = f"bench-gateway-{secrets.token_hex(4)}"
    token = secrets.token_urlsafe(24)
    port, floor_port = free_port(), free_port()
    kinds = ("direct", "gateway", "floor")
    figures: dict[str, list[float]] = {kind: [] for kind in kinds}
    cpu: dict[str, list[float]] = {"gateway": [], "worker": []}
    with tempfile.TemporaryDirectory() as folder:
        tokens = Path(folder) / "tokens.toml"
        tokens.write_text(
            f'[[tokens]]\nname = "bench"\nsha256 = "{hash_token(token)}"\n'
            f'allow = {{ {queue} = "*" }}\n'
        )
        gateway = start_gateway(broker, port, tokens)
        floor = start_floor(floor_port)
        try:
            with worker(broker, queue) as serving:
                workers = family_pids(serving.pid)
                clients = {
                    "direct": AsyncClient(broker, queue, timeout=60),
                    "gateway": AsyncClient(f"http://:{token}@127.0.0.1:{port}", queue, timeout=60),
                    "floor": AsyncClient(f"http://127.0.0.1:{floor_port}", queue, timeout=60),
                }
                async with contextlib.AsyncExitStack() as stack:
                    for client in clients.values():
                        await stack.enter_async_context(client)
                    await clients["direct"].call("add", 0, 1, timeout=60)  # waits for the worker
                    for client in clients.values():
                        await in_flight(lambda i, c=client: c.add(i, 1), 1000, lanes)
                    for n in range(rounds):
                        for kind in kinds:
                            client = clients[kind]
                            before = [cpu_seconds(gateway.pid), *map(cpu_seconds, workers)]
                            figures[kind].append(
                                await in_flight(lambda i, c=client: c.add(i, 1), calls, lanes)
                            )
                            if kind == "gateway":
                                after = [cpu_seconds(gateway.pid), *map(cpu_seconds, workers)]
                                spent = [a - b for a, b in zip(after, before, strict=True)]
                                cpu["gateway"].append(spent[0] / calls)
                                cpu["worker"].append(sum(spent[1:]) / calls)
                        print(
                            f"round {n + 1}: direct {figures['direct'][-1]:7.0f} calls/s, "
                            f"through the gateway {figures['gateway'][-1]:7.0f} calls/s, "
                            f"HTTP floor {figures['floor'][-1]:7.0f} calls/s",
                            flush=True,
                        )
        finally:
            for process in (gateway, floor):
                process.terminate()
                process.wait(20)
    ratio = median_ratio(figures["gateway"], figures["direct"])
    direct, through, bare = (statistics.median(figures[k]) for k in kinds)
    table(
        f"Gateway: Calculator on Redis, {lanes} in flight, through the gateway against straight "
        f"to the broker (medians of {rounds} rounds, {os.cpu_count()} cores)",
        [
            ("through the gateway", rate(through), rate(direct), ratio, ">= 0.8x", ratio >= 0.8),
            ("HTTP floor: no broker, no worker", rate(bare), rate(direct),
             median_ratio(figures["floor"], figures["direct"]), "", None),
        ],
    )  # fmt: skip
    gateway_cpu, worker_cpu = (us(statistics.median(cpu[k])) for k in ("gateway", "worker"))
    print(
        f"CPU per call through the gateway: gateway process {gateway_cpu}, worker {worker_cpu}."
        " On a machine this size the client, the gateway, Redis and the worker share its"
        " cores: the HTTP floor row is the most any gateway could forward with this client."
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--in-flight", type=int, default=64)
    args = parser.parse_args()
    asyncio.run(main(args.broker, args.calls, args.rounds, args.in_flight))
