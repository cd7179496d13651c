"""Calls through the HTTP gateway against the same calls made directly over the broker.

One worker process serves the seed's `Calculator` on Redis (every reliability feature on);
a gateway process (``micromessaging gateway``, one process) forwards authenticated HTTP
calls to it. The same `AsyncClient` load - 64 calls in flight - goes once straight to Redis
and once to the gateway (``http://:TOKEN@host:port``), round after round.

Target: through the gateway >= 0.8x the direct throughput.

    python benchmarks/gateway_vs_direct.py [--broker redis://127.0.0.1:6379/0] [--calls 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _harness import in_flight, median_ratio, rate, table, worker

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
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return process
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("the gateway did not start") from None
            time.sleep(0.05)


async def main(broker: str, calls: int, rounds: int, lanes: int) -> None:
    queue = f"bench-gateway-{secrets.token_hex(4)}"
    token = secrets.token_urlsafe(24)
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        tokens = Path(folder) / "tokens.toml"
        tokens.write_text(
            f'[[tokens]]\nname = "bench"\nsha256 = "{hash_token(token)}"\n'
            f'allow = {{ {queue} = "*" }}\n'
        )
        gateway = start_gateway(broker, port, tokens)
        try:
            with worker(broker, queue):
                direct = AsyncClient(broker, queue, timeout=60)
                through = AsyncClient(f"http://:{token}@127.0.0.1:{port}", queue, timeout=60)
                async with direct, through:
                    await direct.call("add", 0, 1, timeout=60)  # waits for the worker
                    for client in (direct, through):
                        await in_flight(lambda i, c=client: c.add(i, 1), 1000, lanes)
                    figures: dict[str, list[float]] = {"direct": [], "gateway": []}
                    for n in range(rounds):
                        figures["direct"].append(
                            await in_flight(lambda i: direct.add(i, 1), calls, lanes)
                        )
                        figures["gateway"].append(
                            await in_flight(lambda i: through.add(i, 1), calls, lanes)
                        )
                        print(
                            f"round {n + 1}: direct {figures['direct'][-1]:7.0f} calls/s, "
                            f"through the gateway {figures['gateway'][-1]:7.0f} calls/s",
                            flush=True,
                        )
        finally:
            gateway.terminate()
            gateway.wait(20)
    ratio = median_ratio(figures["gateway"], figures["direct"])
    direct, gateway = (statistics.median(figures[k]) for k in ("direct", "gateway"))
    table(
        f"Gateway: Calculator on Redis, {lanes} in flight, through the gateway against straight "
        f"to the broker (medians of {rounds} rounds, {os.cpu_count()} cores)",
        [("through the gateway", rate(gateway), rate(direct), ratio, ">= 0.8x", ratio >= 0.8)],
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--in-flight", type=int, default=64)
    args = parser.parse_args()
    asyncio.run(main(args.broker, args.calls, args.rounds, args.in_flight))
