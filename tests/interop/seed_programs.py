"""Running the seed's Ruby programs (tests/interop/seed/) from the interop tests."""

from __future__ import annotations

import asyncio
import os

SEED = os.path.join(os.path.dirname(__file__), "seed")


async def ruby(program: str, **env: str) -> asyncio.subprocess.Process:
    """Start the seed's `program` with `env` added to this process's environment."""
    return await asyncio.create_subprocess_exec(
        "ruby",
        os.path.join(SEED, program),
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finished(process: asyncio.subprocess.Process, timeout: float = 30) -> str:
    """What the program printed, once it has exited 0 (failing if it doesn't in `timeout`)."""
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError("the Ruby program did not finish") from None
    assert process.returncode == 0, err.decode()
    return out.decode()
