"""Instructions a call costs, counted by valgrind's callgrind: a figure the machine's noise
can't move, for telling whether a change to the worker, the client or the shared layer made a
call cheaper.

A memory:// round trip in one process: `AsyncClient` -> `Worker` serving the seed's
`Calculator` (plain ``def`` methods, inline once they have shown themselves fast; the async
bench service with ``--service async``), N calls one after another and N at once. The
program runs twice under callgrind, with N and with 6N calls; the difference, divided by the
calls between them, is what a call costs, start-up and warm-up excluded. Same binary, same
inputs: the count repeats to within a fraction of a percent. Needs valgrind.

    python benchmarks/instructions_per_call.py [--calls 500] [--service calculator|async]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from micromessaging import AsyncClient, Worker
from micromessaging.bench import BenchService
from micromessaging.examples.calculator import Calculator

WARM = 300
"""Calls before the counted ones (a sync method earns its place on the loop meanwhile)."""


async def drive(service: str, calls: int) -> None:
    target = Calculator() if service == "calculator" else BenchService()
    async with (
        Worker(target, "memory://instructions", "calc", concurrency=64, tracing=False),
        AsyncClient("memory://instructions", "calc", timeout=30) as client,
    ):
        for _ in range(WARM):
            await client.add(1, 2)
        for _ in range(calls):
            assert await client.add(1, 2) == 3
        assert await asyncio.gather(*(client.add(1, 2) for _ in range(calls))) == [3] * calls


def counted(service: str, calls: int, folder: Path) -> int:
    """Instructions the whole program ran, with `calls` calls of each kind."""
    out = folder / f"callgrind.{calls}"
    command = [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
        sys.executable, __file__, "--drive", str(calls), "--service", service,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError("callgrind printed no count:\n" + done.stderr[-2000:])
    return int(found.group(1))


def main(service: str, calls: int) -> None:
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    with tempfile.TemporaryDirectory() as folder:
        few, many = (counted(service, n, Path(folder)) for n in (calls, 6 * calls))
    per_call = (many - few) / (2 * 5 * calls)  # 5N more calls of each of the two kinds
    print(
        f"memory:// round trip, {service} service, client and worker in one process: "
        f"{per_call:,.0f} instructions a call (callgrind; {5 * calls} calls one after another "
        f"and {5 * calls} at once)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--service", choices=("calculator", "async"), default="calculator")
    parser.add_argument("--drive", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive is not None:
        asyncio.run(drive(args.service, args.drive))
    else:
        main(args.service, args.calls)
