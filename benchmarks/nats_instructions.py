"""Instructions a NATS call costs the server side, counted by valgrind's callgrind: a figure the
machine's noise can't move, for telling what our worker spends beside a bare nats-py responder,
and what the headers every request of ours carries (its deadline and send time) cost each.

The server - our `Worker` serving the seed's `Calculator`, or the hand-rolled nats-py responder
of benchmarks/nats_vs_request.py - runs under callgrind; the caller runs in a process of its
own, outside it: our `AsyncClient`, or a nats-py ``nc.request()`` loop, bare or with our two
headers. Each pairing runs twice, with N and 3N calls at `--width` in flight; the difference,
divided by the calls between them, is what a call costs the server, start-up excluded. Needs
valgrind and a NATS server.

    python benchmarks/nats_instructions.py [--url nats://127.0.0.1:4222] [--calls 1000] [--width 64]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator

import orjson
from nats.aio.msg import Msg

CALLER = """
import asyncio, sys, time, orjson
from micromessaging._loop import run

async def main(url, subject, kind, calls, width):
    if kind == "ours":
        from micromessaging import AsyncClient
        client = AsyncClient(url, subject, timeout=300)
        await client.__aenter__()
        add = client.add
    else:
        import nats
        nc = await nats.connect(url)
        async def add(a, b):
            headers = None
            if kind == "headers":  # what our clients send: a deadline and the send time
                now = int(time.time() * 1000)
                headers = {"Mm-Deadline": str(now + 300_000), "Mm-Sent": str(now)}
            body = orjson.dumps({"jsonrpc": "2.0", "id": a, "method": "add", "params": [a, b]})
            reply = await nc.request(subject, body, timeout=300, headers=headers)
            return orjson.loads(reply.data)["result"]
    for _ in range(200):
        await add(1, 2)
    async def lane(first):
        for i in range(first, calls, width):
            assert await add(i, 1) == i + 1
    await asyncio.gather(*(lane(n) for n in range(width)))

run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))
"""

PAIRS = (
    ("our worker", "our AsyncClient", "worker", "ours"),
    ("nats-py responder", "nc.request(), no headers", "responder", "bare"),
    ("nats-py responder", "nc.request() with our headers", "responder", "headers"),
    ("our worker", "nc.request(), no headers", "worker", "bare"),
)


@contextlib.asynccontextmanager
async def responder(url: str, subject: str) -> AsyncIterator[None]:
    """The hand-rolled responder of benchmarks/nats_vs_request.py, in this process."""
    import nats

    nc = await nats.connect(url)

    async def respond(msg: Msg) -> None:
        request = orjson.loads(msg.data)
        a, b = request["params"]
        await msg.respond(orjson.dumps({"jsonrpc": "2.0", "result": a + b, "id": request["id"]}))

    await nc.subscribe(subject, queue=subject, cb=respond)
    await nc.flush()
    try:
        yield
    finally:
        await nc.close()


async def serve(url: str, server: str, kind: str, calls: int, width: int) -> None:
    """Serve `calls` calls from a caller of `kind` in another process (under callgrind: this)."""
    from micromessaging import Worker
    from micromessaging.examples.calculator import Calculator

    subject = f"bench-instructions-{uuid.uuid4().hex[:8]}"
    serving: contextlib.AbstractAsyncContextManager[object] = (
        Worker(Calculator(), url, subject, concurrency=64, tracing=False)
        if server == "worker"
        else responder(url, subject)
    )
    async with serving:
        caller = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CALLER, url, subject, kind, str(calls), str(width)
        )
        if await caller.wait() != 0:
            raise RuntimeError("the caller failed")


def counted(url: str, server: str, kind: str, calls: int, width: int, folder: str) -> int:
    """Instructions this program ran as the server, for `calls` calls."""
    out = os.path.join(folder, f"callgrind.{server}.{kind}.{calls}")
    command = [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__,
        "--serve", server, kind, "--url", url, "--calls", str(calls), "--width", str(width),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError("callgrind printed no count:\n" + done.stderr[-2000:])
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="nats://127.0.0.1:4222")
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--serve", nargs=2, metavar=("SERVER", "CALLER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        from micromessaging._loop import run

        run(serve(args.url, *args.serve, args.calls, args.width))
        return
    if shutil.which("valgrind") is None:
        sys.exit("needs valgrind (apt-get install valgrind)")
    print(f"instructions a call on the server side, {args.width} in flight ({args.url})")
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as folder:
        for server_name, caller_name, server, kind in PAIRS:
            few, many = (
                counted(args.url, server, kind, calls, args.width, folder)
                for calls in (args.calls, 3 * args.calls)
            )
            per_call = (many - few) / (2 * args.calls)
            print(f"  {server_name:18} <- {caller_name:31} {per_call:>9,.0f}", flush=True)
    print(f"({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
