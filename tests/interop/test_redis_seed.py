"""The seed's Ruby Redis programs against ours, in both directions, run with `ruby`.

tests/interop/seed/redis_*.rb are the blog post's programs, transcribed (each file lists its
deviations at the top). They connect to $REDIS_URL (the session's Redis, `redis_url`) and
take the queue name from $QUEUE, so that every test has its own queue. Ruby with the redis gem is
needed (.ci/run installs Debian's ruby-redis).
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator

import pytest

from micromessaging import AsyncClient, Client
from micromessaging.examples.calculator import Calculator

from ..transports.contract import serving
from ..transports.test_redis import delete_queue
from . import seed_programs
from .seed_programs import finished, needs_ruby

pytestmark = needs_ruby("redis")


@pytest.fixture
async def queue(redis_url: str) -> AsyncIterator[str]:
    name = f"mm-seed-{uuid.uuid4().hex[:12]}"
    yield name
    await asyncio.wait_for(delete_queue(redis_url, name), 10)


async def ruby(program: str, queue: str, redis_url: str) -> asyncio.subprocess.Process:
    return await seed_programs.ruby(program, QUEUE=queue, REDIS_URL=redis_url)


async def stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.kill()
    await asyncio.wait_for(process.wait(), 10)


@pytest.mark.parametrize("program", ["redis_client.rb", "redis_method_missing_client.rb"])
async def test_seed_clients_get_answers_from_our_worker_process(
    program: str, queue: str, redis_url: str
) -> None:
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "micromessaging", "worker",
        "micromessaging.examples.calculator:Calculator",
        "--broker", redis_url, "--queue", queue,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        # The seed's clients need no worker up first: the request waits in the list.
        assert await finished(await ruby(program, queue, redis_url)) == "1+5.1=6.1\n"
        assert await finished(await ruby(program, queue, redis_url)) == "1+5.1=6.1\n"
    finally:
        if worker.returncode is None:
            worker.terminate()
        try:
            _, err = await asyncio.wait_for(worker.communicate(), 30)
        finally:
            await stop(worker)
    assert worker.returncode == 0, err.decode()


async def test_seed_client_first_then_our_in_process_worker(queue: str, redis_url: str) -> None:
    client = await ruby("redis_client.rb", queue, redis_url)
    try:
        async with serving(Calculator(), redis_url, queue):
            assert await finished(client) == "1+5.1=6.1\n"
    finally:
        await stop(client)


async def test_our_clients_get_answers_from_the_seed_server(queue: str, redis_url: str) -> None:
    server = await ruby("redis_server.rb", queue, redis_url)
    try:
        assert server.stdout is not None
        assert await asyncio.wait_for(server.stdout.readline(), 30) == b"ready\n"
        async with AsyncClient(redis_url + "?wire=seed", queue, timeout=10) as calc:
            assert await calc.add(1, 5.1) == 6.1
            assert await calc.subtract(42, 23) == 19
            # Many calls in flight: each BRPOPs the list its own id names.
            results = await asyncio.gather(*(calc.add(i, 0.5) for i in range(100)))
            assert results == [i + 0.5 for i in range(100)]

        def blocking() -> list[float]:
            with Client(redis_url + "?wire=seed", queue, timeout=10) as calc:
                return [calc.add(2, 3), calc.subtract(10, 4)]

        assert await asyncio.to_thread(blocking) == [5, 6]
        assert server.returncode is None  # still serving
    finally:
        await stop(server)
