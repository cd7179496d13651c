"""The seed's Ruby RabbitMQ programs against ours, in both directions, run with `ruby`.

tests/interop/seed/rabbitmq_*.rb are the blog post's programs, transcribed (each file lists
its deviations at the top). They connect as Bunny does by default: to $RABBITMQ_URL, which
Bunny.new reads itself (the session's broker, `amqp_url`), else guest@localhost:5672; and they
take the queue name from $QUEUE, so that every test has its own queue.
Ruby 3 with the bunny gem is needed (.ci/run installs the Debian packages).
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from micromessaging import AsyncClient, Client, Worker
from micromessaging.examples.calculator import Calculator

from ..transports.test_amqp import delete_queues, queue_state
from . import seed_programs
from .seed_programs import finished, needs_ruby

pytestmark = needs_ruby("bunny")


@pytest.fixture
async def queue(amqp_url: str) -> AsyncIterator[str]:
    name = f"mm-seed-{uuid.uuid4().hex[:12]}"
    yield name
    await delete_queues(amqp_url, name)


async def ruby(program: str, queue: str, amqp_url: str) -> asyncio.subprocess.Process:
    # Bunny reads "amqp://host/" as the vhost "" (as the AMQP URI spec says), where
    # aio-pika reads the default vhost "/": without the path both mean "/".
    bunny_url = amqp_url[:-1] if urlsplit(amqp_url).path == "/" else amqp_url
    return await seed_programs.ruby(program, QUEUE=queue, RABBITMQ_URL=bunny_url)


async def test_seed_client_gets_answers_from_our_worker_process(queue: str, amqp_url: str) -> None:
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "micromessaging", "worker",
        "micromessaging.examples.calculator:Calculator",
        "--broker", amqp_url, "--queue", queue,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        # The natural order: the worker is up (its consumer is there) before the client runs.
        async def consuming() -> bool:
            state = await queue_state(amqp_url, queue)
            return state is not None and state[1] == 1

        for _ in range(300):
            if await consuming():
                break
            assert worker.returncode is None, "the worker exited"
            await asyncio.sleep(0.05)
        assert await finished(await ruby("rabbitmq_client.rb", queue, amqp_url)) == "1+5.1=6.1\n"
        assert await finished(await ruby("rabbitmq_client.rb", queue, amqp_url)) == "1+5.1=6.1\n"
    finally:
        worker.terminate()
        _, err = await asyncio.wait_for(worker.communicate(), 30)
    assert worker.returncode == 0, err.decode()


async def test_seed_client_first_then_our_worker(queue: str, amqp_url: str) -> None:
    client = await ruby("rabbitmq_client.rb", queue, amqp_url)
    # The client declares the queue as our worker does, and its request waits in it.
    for _ in range(200):
        if await queue_state(amqp_url, queue) == (1, 0):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the seed's client never sent its request")
    async with Worker(Calculator(), amqp_url, queue):
        assert await finished(client) == "1+5.1=6.1\n"


async def test_our_clients_get_answers_from_the_seed_server(queue: str, amqp_url: str) -> None:
    server = await ruby("rabbitmq_server.rb", queue, amqp_url)
    try:
        assert server.stdout is not None
        assert await asyncio.wait_for(server.stdout.readline(), 30) == b"ready\n"
        async with AsyncClient(amqp_url, queue, timeout=10) as calc:
            assert await calc.add(1, 5.1) == 6.1
            assert await calc.subtract(42, 23) == 19
            # Many calls in flight over one client: each reply finds its caller by correlation_id.
            results = await asyncio.gather(*(calc.add(i, 0.5) for i in range(100)))
            assert results == [i + 0.5 for i in range(100)]

        def blocking() -> float:
            with Client(amqp_url, queue, timeout=10) as calc:
                return calc.add(2, 3)

        assert await asyncio.to_thread(blocking) == 5
    finally:
        server.terminate()
        await server.wait()
