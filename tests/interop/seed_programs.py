"""Running the seed's Ruby programs (tests/interop/seed/) from the interop tests."""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import subprocess

import pytest

SEED = os.path.join(os.path.dirname(__file__), "seed")


@functools.cache
def ruby_with(*libraries: str) -> bool:
    """Whether `ruby` is installed and can load `libraries` (the seed programs' gems)."""
    if shutil.which("ruby") is None:
        return False
    loads = "; ".join(f"require '{library}'" for library in libraries) or "nil"
    try:
        check = subprocess.run(["ruby", "-e", loads], capture_output=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return False
    return check.returncode == 0


def needs_ruby(*libraries: str) -> pytest.MarkDecorator:
    """Skip a module's tests (``pytestmark = needs_ruby(...)``) where the seed can't run."""
    missing = f"ruby with {', '.join(libraries)}" if libraries else "ruby"
    return pytest.mark.skipif(not ruby_with(*libraries), reason=f"{missing} is not installed")


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
