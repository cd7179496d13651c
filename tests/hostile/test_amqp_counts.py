"""Forged delivery counts over RabbitMQ: a request that kills every worker it reaches, whose
publisher wrote count headers meant to keep it below the limit for ever.

The workers are subprocesses (``python -m micromessaging worker --processes 2``, whose
supervisor starts a new one each time one dies); the request comes from aio-pika with an
exclusive reply queue, like the seed's client. Whatever its headers say, it must run at most
``--max-deliveries`` times, then be dead-lettered, and its caller answered -32003.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aio_pika
import orjson
import pytest

from micromessaging import ErrorCode

BROKER = ""
"""The session's RabbitMQ (conftest's `amqp_url`: the shared one, or a node of the suite's own)."""


@pytest.fixture(autouse=True)
def _broker(amqp_url: str) -> None:
    global BROKER
    BROKER = amqp_url


REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.fault


class Crasher:
    """Served by the worker subprocesses: `crash` kills the process running it."""

    def crash(self) -> None:
        with open(os.environ["MM_CRASH_LOG"], "a") as log:
            log.write(f"{os.getpid()}\n")
        os.kill(os.getpid(), signal.SIGKILL)

    def add(self, a: int, b: int) -> int:
        return a + b


@contextlib.contextmanager
def workers(url: str, queue: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    command = [
        sys.executable, "-m", "micromessaging", "worker", "tests.hostile.test_amqp_counts:Crasher",
        "--broker", url, "--queue", queue, "--processes", "2", "--max-deliveries", "3",
        "--log-level", "error",
    ]  # fmt: skip
    env = {**os.environ, "MM_CRASH_LOG": str(log)}
    process = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True)
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture
async def connection() -> AsyncIterator[aio_pika.abc.AbstractConnection]:
    try:
        connection = await aio_pika.connect(BROKER, timeout=2)
    except Exception:
        pytest.skip(f"no RabbitMQ at {BROKER}")
    async with connection:
        yield connection


async def consumers(connection: aio_pika.abc.AbstractConnection, queue: str, count: int) -> None:
    for _ in range(600):
        probe = await connection.channel()
        with contextlib.suppress(aio_pika.exceptions.ChannelNotFoundEntity):
            declared = await probe.declare_queue(queue, passive=True)
            await probe.close()
            if (declared.declaration_result.consumer_count or 0) >= count:
                return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{count} consumers never came")


FORGERIES = {
    # A classic queue: x-delivery-count is any publisher's header; mm-deliveries starts low.
    "classic": ("", None, {"mm-deliveries": -100, "x-delivery-count": 0}),
    # A quorum queue counts for us; what the publisher wrote must not stand in for it.
    "quorum": ("?queue_type=quorum", None, {"x-delivery-count": 0, "mm-deliveries": 0}),
    # The URL says quorum, but the queue was made classic: its x-delivery-count is forged.
    "quorum-url-classic-queue": ("?queue_type=quorum", "classic", {"x-delivery-count": 0}),
}


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
async def test_forged_counts_still_reach_the_delivery_limit(
    connection: aio_pika.abc.AbstractConnection, forgery: str, tmp_path: Path
) -> None:
    options, made_as, headers = FORGERIES[forgery]
    channel = await connection.channel()
    queue = f"mm-counts-{uuid.uuid4().hex[:10]}"
    log = tmp_path / "crashes"
    try:
        if made_as == "classic":
            await channel.declare_queue(queue)  # by operations, before any worker
        with workers(BROKER.rstrip("/") + "/" + options, queue, log):
            await consumers(connection, queue, 2)
            replies = await channel.declare_queue("", exclusive=True)
            body = b'{"jsonrpc": "2.0", "method": "crash", "id": 1}'
            message = aio_pika.Message(
                body, reply_to=replies.name, correlation_id="forged", headers=headers
            )
            await channel.default_exchange.publish(message, queue)
            async with asyncio.timeout(90), replies.iterator(no_ack=True) as messages:
                reply = await anext(aiter(messages))
        assert orjson.loads(reply.body)["error"]["code"] == ErrorCode.DELIVERY_LIMIT
        assert len(log.read_text().splitlines()) == 3  # ran --max-deliveries times, no more
        dead = await (await channel.declare_queue(queue + ".dead", passive=True)).get(no_ack=True)
        assert dead.body == body
        assert "delivered 4 times" in dead.headers["mm-dead-reason"]
    finally:
        await channel.queue_delete(queue)
        await channel.queue_delete(queue + ".dead")
        await channel.queue_delete(queue + ".alive")
