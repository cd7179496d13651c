"""``micromessaging status`` and ``dead-letters``: what an operator types, end to end.

The commands run in a thread (as they would in another terminal) against an in-process
broker whose worker runs on the test's loop; each broker's own admin side is tested by
tests/transports/admin_contract.py.
"""

from __future__ import annotations

import asyncio
import uuid

import click.testing
import orjson
from click.testing import CliRunner

from micromessaging import AsyncClient, Worker
from micromessaging.cli import main
from micromessaging.transports import memory
from tests.transports.contract import Probe, eventually


async def invoke(*args: str, stdin: str | None = None) -> click.testing.Result:
    return await asyncio.to_thread(CliRunner().invoke, main, list(args), input=stdin)


def poison(url: str, queue: str, tag: str) -> bytes:
    body = orjson.dumps({"jsonrpc": "2.0", "method": "record", "params": [tag]})
    memory.broker(url).publish(queue, memory.Message(body, delivery_count=9))
    return body


async def test_status_shows_queues_and_workers_as_text_and_json() -> None:
    url, queue = f"memory://ops-{uuid.uuid4().hex[:8]}", "calc"
    async with (
        Worker(Probe(), url, queue, concurrency=4) as worker,
        AsyncClient(url, queue) as client,
    ):
        assert await client.add(1, 2) == 3
        text = await invoke("status", "-b", url)
        assert text.exit_code == 0, text.output
        assert "calc" in text.output and worker.id[:34] in text.output
        assert "0/4" in text.output and "1 done" in text.output
        document = orjson.loads((await invoke("status", "-b", url, "-q", queue, "--json")).output)
        [status] = document["queues"]
        assert status["queue"] == queue
        assert status["depth"] == 0
        [record] = status["workers"]
        assert record["id"] == worker.id
        assert record["concurrency"] == 4
        assert record["completed"] == 1
        assert {"host", "pid", "in_flight", "failed", "started", "last_seen"} <= set(record)


async def test_status_of_an_empty_broker() -> None:
    result = await invoke("status", "-b", f"memory://ops-{uuid.uuid4().hex[:8]}")
    assert result.exit_code == 0
    assert "no queues" in result.output


async def test_dead_letters_list_show_replay_and_purge() -> None:
    url, queue = f"memory://ops-{uuid.uuid4().hex[:8]}", "calc"
    probe = Probe()
    async with Worker(probe, url, queue):
        bodies = [poison(url, queue, f"dead-{i}") for i in range(3)]
        await eventually(lambda: len(memory.broker(url).dead_letters.get(queue, [])) == 3)
        listed = await invoke("dead-letters", "list", "-b", url, "-q", queue)
        assert listed.exit_code == 0, listed.output
        lines = listed.output.splitlines()
        assert len(lines) == 3 and all("record" in line and "x9" in line for line in lines)
        ids = [line.split()[0] for line in lines]

        shown = orjson.loads((await invoke("dead-letters", "show", "-b", url, "-q", queue,
                                           "--id", ids[0])).output)  # fmt: skip
        assert shown[0]["body"].encode() == bodies[0]
        assert shown[0]["deliveries"] == 9 and "delivered 9 times" in shown[0]["reason"]

        dry = await invoke("dead-letters", "replay", "-b", url, "-q", queue, "--all", "--dry-run")
        assert dry.exit_code == 0 and "would replay 3" in dry.output
        assert probe.ran == []
        replayed = await invoke("dead-letters", "replay", "-b", url, "-q", queue, "--id", ids[0])
        assert replayed.exit_code == 0, replayed.output
        await eventually(lambda: "dead-0" in probe.ran)

        refused = await invoke(
            "dead-letters", "purge", "-b", url, "-q", queue, "--all", stdin="n\n"
        )
        assert refused.exit_code == 1  # asked, and told no
        assert len(memory.broker(url).dead_letters[queue]) == 2
        purged = await invoke("dead-letters", "purge", "-b", url, "-q", queue, "--all", "--yes")
        assert purged.exit_code == 0 and "purged 2" in purged.output
        assert memory.broker(url).dead_letters[queue] == []


async def test_dead_letters_need_a_selection() -> None:
    url = f"memory://ops-{uuid.uuid4().hex[:8]}"
    result = await invoke("dead-letters", "replay", "-b", url, "-q", "calc")
    assert result.exit_code == 2
    assert "--id ID" in result.output and "--all" in result.output
    missing = await invoke("dead-letters", "show", "-b", url, "-q", "calc", "--id", "nope")
    assert missing.exit_code == 2 and "no dead letter nope" in missing.output
