"""What OpenTelemetry costs a call when no program has set it up: nothing.

    python benchmarks/tracing_overhead.py [--calls 5000] [--rounds 3]

Runs the seed's `Calculator` (sync) and an async twin on memory://, one call after another,
in child processes that alternate: opentelemetry-api importable but no SDK configured (what
a user with the ``otel`` extra and no tracer provider runs), and opentelemetry hidden (as
without the extra: nothing of it is imported). Prints microseconds per call for each.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

CHILD = """
import asyncio, sys, time
if sys.argv[1] == "hidden":
    sys.modules["opentelemetry"] = None  # imports fail as if it were not installed
from micromessaging import AsyncClient, Worker
from micromessaging.examples.calculator import Calculator
from micromessaging.observability import tracing

class AsyncCalculator:
    async def add(self, a, b):
        return a + b

async def main(calls):
    figures = []
    for service in (Calculator(), AsyncCalculator()):
        url = f"memory://tracing-{id(service)}"
        async with Worker(service, url, "calc"), AsyncClient(url, "calc") as calc:
            for _ in range(500):
                await calc.add(1, 2)
            started = time.perf_counter()
            for _ in range(calls):
                await calc.add(1, 5.1)
            figures.append((time.perf_counter() - started) / calls * 1e6)
    print(int(tracing.available()), *(f"{f:.1f}" for f in figures))

asyncio.run(main(int(sys.argv[2])))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"{'':40}{'sync us':>10}{'async us':>10}")
    for _ in range(args.rounds):
        for mode in ("importable", "hidden"):
            out = subprocess.run(
                [sys.executable, "-c", CHILD, mode, str(args.calls)],
                capture_output=True, text=True, check=True,
            ).stdout.split()  # fmt: skip
            available, sync_us, async_us = out
            label = f"opentelemetry {mode} (loaded: {'yes' if available == '1' else 'no'})"
            print(f"{label:40}{sync_us:>10}{async_us:>10}")


if __name__ == "__main__":
    main()
