"""The status feed: one snapshot at a time for every page, calls/s from the workers' counters."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from micromessaging import AsyncClient, Worker
from micromessaging.console import ConsoleSettings
from micromessaging.console.feed import Sample, StatusFeed, sample
from micromessaging.transports.admin import AdminTransport, WorkerRecord
from tests.transports.admin_contract import wait_until
from tests.transports.contract import Probe, eventually

from .helpers import CountingAdmin, memory_url, served, unique_queue


def record(completed: int, last_seen: float) -> WorkerRecord:
    return WorkerRecord("w1", "q", "host", 1, 4, 0, completed, 0, 0.0, last_seen)


def test_a_rate_needs_two_samples_of_one_worker() -> None:
    first = sample(None, record(10, 100.0))
    assert first == Sample(10, 100.0, None)
    second = sample(first, record(40, 102.0))
    assert second == Sample(40, 102.0, 15.0)


def test_a_record_not_rewritten_since_keeps_its_rate() -> None:
    # A Redis heartbeat rewrites the record every few seconds, not at every snapshot.
    known = Sample(40, 102.0, 15.0)
    assert sample(known, record(40, 102.0)) is known
    assert sample(known, record(45, 102.1)) is known  # too short a window to say
    assert sample(known, record(45, 103.0)).rate == 5.0


def test_a_worker_whose_count_went_back_starts_over() -> None:
    assert sample(Sample(40, 102.0, 15.0), record(3, 104.0)) == Sample(3, 104.0, None)


async def poll(base: str, pages: int, until: int) -> int:
    """`pages` pollers on the status endpoint until each saw snapshot `until`; requests made."""
    import httpx

    requests = 0
    async with httpx.AsyncClient(base_url=base) as client:
        assert (await client.get("/")).status_code == 200

        async def page() -> None:
            nonlocal requests
            while True:
                generation = (await client.get("/api/status")).json()["generation"]
                requests += 1
                if generation >= until:
                    return
                await asyncio.sleep(0.01)  # a page's pace, much faster than the feed's

        await asyncio.gather(*(page() for _ in range(pages)))
    return requests


async def test_many_pages_polling_cost_the_broker_what_one_page_does() -> None:
    url = memory_url()
    queues = [unique_queue("a"), unique_queue("b")]
    admin = CountingAdmin(url)
    settings = ConsoleSettings(broker=url, interval=0.2)
    per_snapshot = 1 + len(queues)  # the queue list, then each queue's status
    async with (
        Worker(Probe(), url, queues[0]),
        Worker(Probe(), url, queues[1]),
        served(settings, admin=admin) as console,
    ):
        feed = console.console.feed
        await poll(console.base, 1, until=1)
        for pages in (1, 10):
            first, before, started = feed.generation, admin.queries, time.monotonic()
            requests = await poll(console.base, pages, until=first + 5)
            snapshots, queries = feed.generation - first, admin.queries - before
            elapsed = time.monotonic() - started
            # What snapshots cost, give or take one under way at either end; pages cost nothing.
            assert abs(queries - per_snapshot * snapshots) <= per_snapshot, (pages, queries)
            assert requests >= pages * snapshots
            # No snapshot sooner than the interval, however many pages ask.
            assert snapshots <= elapsed / settings.interval + 1


async def test_the_feed_stops_asking_when_no_page_watches() -> None:
    url = memory_url()
    admin = CountingAdmin(url)
    feed = StatusFeed(lambda: admin, url, interval=0.05, idle_after=0.3)
    try:
        snapshot = orjson.loads(await feed.latest())
        assert snapshot["queues"] == [] and snapshot["error"] is None
        assert feed.watched
        await eventually(lambda: not feed.watched, timeout=10)
        queries = admin.queries
        assert orjson.loads(await feed.latest())["generation"] > snapshot["generation"]
        assert admin.queries > queries  # a page came back: a fresh snapshot, not the old one
    finally:
        await feed.aclose()


async def test_calls_per_second_from_the_workers_counters() -> None:
    url, queue = memory_url(), unique_queue()
    feed = StatusFeed(lambda: CountingAdmin(url), url, interval=0.1)
    try:
        async with Worker(Probe(), url, queue) as worker, AsyncClient(url, queue) as client:
            generation = orjson.loads(await feed.latest())["generation"]
            calls = asyncio.create_task(_keep_calling(client))
            try:

                async def measured() -> dict | None:
                    snapshot = orjson.loads(await feed.latest())
                    if snapshot["generation"] < generation + 2:
                        return None
                    [status] = [q for q in snapshot["queues"] if q["queue"] == queue]
                    return status if status["calls_per_second"] else None

                status = await wait_until(measured, timeout=10)
            finally:
                calls.cancel()
            [shown] = status["workers"]
            assert shown["id"] == worker.id
            assert shown["calls_per_second"] > 0
            assert status["calls_per_second"] == pytest.approx(shown["calls_per_second"])
    finally:
        await feed.aclose()


async def _keep_calling(client: AsyncClient) -> None:
    while True:
        await client.add(1, 2)


class Unreachable(AdminTransport):
    """An admin side whose broker is down: every question fails as a real one would."""

    async def connect(self) -> None:
        from micromessaging import TransportError

        raise TransportError("connection refused")

    async def aclose(self) -> None:
        pass

    queues = status = dead_letters = replay = purge = delete_queue = None  # type: ignore


async def test_a_broker_that_is_down_shows_as_an_error_in_the_snapshot() -> None:
    feed = StatusFeed(Unreachable, "redis://127.0.0.1:1", interval=0.05)
    try:
        snapshot = orjson.loads(await feed.latest())
        assert snapshot["queues"] == []
        assert "connection refused" in snapshot["error"]
    finally:
        await feed.aclose()


async def test_a_broker_without_an_admin_side_says_so(monkeypatch) -> None:
    from micromessaging import transports

    monkeypatch.setitem(transports.SCHEMES, "nobody", ("tests.fake_transports", None))
    feed = StatusFeed(lambda: transports.admin_transport("nobody://host"), "nobody://host")
    try:
        snapshot = orjson.loads(await feed.latest())
        assert "offers no status" in snapshot["error"]
    finally:
        await feed.aclose()


class Broken(Unreachable):
    """An admin side with a bug: it raises what no transport should let out."""

    async def connect(self) -> None:
        raise RuntimeError("a bug")


async def test_an_admin_side_that_breaks_still_answers_the_pages(caplog) -> None:
    feed = StatusFeed(Broken, "memory://", interval=0.05)
    try:
        assert orjson.loads(await feed.latest())["error"] == "RuntimeError: a bug"
        assert "the admin side failed" in caplog.text
    finally:
        await feed.aclose()
