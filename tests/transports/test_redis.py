"""redis:// joins the transport contract; then what is Redis's own: wire forms, bad input, URLs.

Integration tests against the session's Redis (the `redis_url` fixture: the shared one, or a
node of the session's own) with unique queue names; the TLS and ACL tests start redis-servers
of their own (`make_redis_node`).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable

import orjson
import pytest
import redis.asyncio as aioredis

from micromessaging import (
    AsyncClient,
    CallTimeout,
    Client,
    ConfigurationError,
    ErrorCode,
    NoWorkers,
    TransportError,
    Worker,
)
from micromessaging.transports import (
    WorkerOptions,
    admin_transport,
    client_transport,
    worker_transport,
)
from micromessaging.transports.redis import RedisSettings, scripts
from micromessaging.transports.redis import wire as wire
from micromessaging.transports.redis.connection import Batcher
from tests.brokers import RedisNode, free_port

from .admin_contract import AdminContract
from .contract import Probe, TransportContract, eventually, serving

# --- helpers shared with the fault and interop tests -------------------------------------------


async def queue_keys(url: str, queue: str) -> list[str]:
    """The keys a queue's traffic can create (the queue and dead-letter lists included)."""
    client = aioredis.Redis.from_url(url)
    try:
        pattern = "mm:" + _glob_escape(queue) + ":*"
        keys = [key.decode() async for key in client.scan_iter(match=pattern, count=1000)]
        for name in (queue, wire.dead_letter_key(queue)):
            if await client.exists(name):
                keys.append(name)
        return sorted(keys)
    finally:
        await client.aclose()


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


async def reply_lists(url: str) -> set[str]:
    """The names of every client reply list in the database."""
    client = aioredis.Redis.from_url(url)
    try:
        return {key.decode() async for key in client.scan_iter(match="mm:reply:*", count=1000)}
    finally:
        await client.aclose()


async def delete_queue(url: str, queue: str) -> None:
    """Remove everything a test's queue left in Redis."""
    client = aioredis.Redis.from_url(url)
    try:
        keys = await queue_keys(url, queue)
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def push_raw(url: str, queue: str, message: bytes) -> None:
    """LPUSH bytes onto a queue, as any producer could."""
    client = aioredis.Redis.from_url(url)
    try:
        await client.lpush(queue, message)
    finally:
        await client.aclose()


async def pop_reply(url: str, name: str, wait: float = 5) -> bytes | None:
    """BRPOP one reply from the list `name` (the seed client's way), then delete the list."""
    client = aioredis.Redis.from_url(url)
    try:
        got = await client.brpop([name], timeout=wait)
        await client.delete(name)
        return None if got is None else got[1]
    finally:
        await client.aclose()


async def redis_call(url: str, method: str, *args: object) -> object:
    """One redis-py command on a short-lived connection."""
    client = aioredis.Redis.from_url(url)
    try:
        return await getattr(client, method)(*args)
    finally:
        await client.aclose()


async def eventually_async(predicate, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
    """Wait until the coroutine function `predicate()` returns true."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def wait_for_key(url: str, key: str, timeout: float = 10) -> None:
    """Wait until `key` exists."""
    deadline = time.monotonic() + timeout
    while not await redis_call(url, "exists", key):
        assert time.monotonic() < deadline, f"{key} never appeared"
        await asyncio.sleep(0.01)


async def wait_for_dead(url: str, queue: str, count: int, timeout: float = 10) -> list[dict]:
    """The queue's dead-letter records, once there are `count` of them (or the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        records = await dead_records(url, queue)
        if len(records) >= count or time.monotonic() > deadline:
            return records
        await asyncio.sleep(0.02)


async def dead_records(url: str, queue: str) -> list[dict]:
    """The dead-letter records of a queue."""
    client = aioredis.Redis.from_url(url)
    try:
        return [orjson.loads(r) for r in await client.lrange(wire.dead_letter_key(queue), 0, -1)]
    finally:
        await client.aclose()


# --- the contract ------------------------------------------------------------------------------


class RedisContractHooks(TransportContract):
    """The contract's hooks for Redis; subclasses choose the client's wire form."""

    wire_query = ""

    @pytest.fixture
    def broker_url(self, redis_url: str) -> str:
        return redis_url + self.wire_query

    @pytest.fixture
    async def worker(self, broker_url: str, queue: str, probe: Probe) -> AsyncIterator[Worker]:
        async with serving(probe, broker_url, queue, concurrency=self.worker_concurrency) as w:
            yield w

    @pytest.fixture(autouse=True)
    async def _clean_queue(self, queue: str, redis_url: str) -> AsyncIterator[None]:
        self.redis_url = redis_url  # without the wire option, for redis-py
        self._replies_before = await asyncio.wait_for(reply_lists(redis_url), 10)
        yield
        await asyncio.wait_for(delete_queue(redis_url, queue), 10)

    async def inject(
        self, broker_url: str, queue: str, body: bytes, delivery_count: int = 1, wait: float = 5
    ) -> bytes | None:
        reply_to = wire.reply_key(f"inject-{uuid.uuid4().hex}")
        header = {"mm": 1, "reply_to": reply_to, "cid": "c1", "n": delivery_count}
        await push_raw(self.redis_url, queue, orjson.dumps(header) + b"\n" + body)
        message = await pop_reply(self.redis_url, reply_to, wait)
        if message is None:
            return None
        cid, reply = wire.decode_reply(message)
        assert cid == "c1"
        return reply

    async def dead_letters(self, broker_url: str, queue: str) -> list[bytes]:
        return [
            wire.dead_letter_body(orjson.dumps(r))
            for r in await dead_records(self.redis_url, queue)
        ]

    def unreachable_url(self, broker_url: str) -> str:
        return f"redis://127.0.0.1:{free_port()}/0{self.wire_query}"

    async def wait_queued(
        self, broker_url: str, queue: str, client: AsyncClient, count: int
    ) -> None:
        async def queued() -> bool:
            return await redis_call(self.redis_url, "llen", queue) >= count

        await eventually_async(queued)

    cuts_connections = True

    async def cut_client(self, broker_url: str, client: AsyncClient) -> None:
        transport = client._transport
        client_id = getattr(transport, "client_id", None)
        prefix = "mm:seed-client:" if client_id is None else f"mm:client:{client_id}"
        assert await kill_connections(self.redis_url, prefix) >= 1

    async def cut_worker(self, broker_url: str, queue: str) -> None:
        assert await kill_connections(self.redis_url, f"mm:worker:{queue}:") >= 1

    async def leftovers(self, broker_url: str, queue: str) -> list[str]:
        # Kept on purpose: the dead letters, and the last-seen time (it expires by itself).
        kept = (wire.dead_letter_key(queue), wire.seen_key(queue))
        keys = [k for k in await queue_keys(self.redis_url, queue) if k not in kept]
        new_replies = await reply_lists(self.redis_url) - self._replies_before
        return keys + sorted(new_replies)


class TestRedisContract(RedisContractHooks):
    """The default wire: envelopes, one reply list per client."""

    taking_task = "RedisWorkerTransport._consume"  # the blocking take's loop


class TestRedisSeedWireContract(RedisContractHooks):
    """``?wire=seed``: our client speaking the seed's protocol to our worker; with the
    no-worker rule asked for, as it is off by default on the seed's wire."""

    wire_query = "?wire=seed&worker_window=30"
    taking_task = "RedisWorkerTransport._check_then_deliver"  # its reply list checked first

    async def test_expired_request_is_not_run(self) -> None:
        pytest.skip("the seed's wire carries no deadline: a seed-form request is always run")

    async def test_too_large_message_is_refused(self) -> None:
        pytest.skip(
            "a seed-form request over the size limit is dead-lettered unparsed: its reply "
            "address is inside the body (see test_bad_input_is_answered_or_dead_lettered_...)"
        )

    async def test_send_time_and_trace_context_reach_the_worker(self) -> None:
        pytest.skip("the seed's wire is the bare request: it carries no send time, no trace")


class TestRedisAdmin(AdminContract):
    """Status from the workers' heartbeats and the queue's lists; dead letters by record."""

    @pytest.fixture
    def broker_url(self, redis_url: str) -> str:
        return redis_url

    async def poison(self, broker_url: str, queue: str, body: bytes) -> None:
        # An envelope saying it was delivered 99 times already: dead-lettered unrun.
        await push_raw(broker_url, queue, envelope({"mm": 1, "n": 99}, body))


# --- Redis's own behaviours --------------------------------------------------------------------


@pytest.fixture
async def queue(redis_url: str) -> AsyncIterator[str]:
    name = f"mm-test-{uuid.uuid4().hex[:12]}"
    yield name
    await asyncio.wait_for(delete_queue(redis_url, name), 10)


@pytest.fixture
def probe() -> Probe:
    return Probe()


@pytest.fixture
async def worker(queue: str, probe: Probe, redis_url: str) -> AsyncIterator[Worker]:
    async with serving(probe, redis_url, queue) as w:
        yield w


def seed_request(method: str, params: object, id_: object = None) -> bytes:
    obj: dict[str, object] = {"jsonrpc": "2.0", "method": method, "params": params}
    if id_ is not None:
        obj["id"] = id_
    return orjson.dumps(obj)


def envelope(header: dict[str, object], body: bytes) -> bytes:
    return orjson.dumps(header) + b"\n" + body


async def test_seed_form_reply_goes_to_the_list_named_by_the_id(
    worker: Worker, queue: str, redis_url: str
) -> None:
    id_ = f"{queue}-call"
    await push_raw(redis_url, queue, seed_request("add", [1, 5.1], id_))
    await wait_for_key(redis_url, id_)
    assert 0 < await redis_call(redis_url, "ttl", id_) <= wire.REPLY_TTL  # the seed's EXPIRE
    reply = orjson.loads(await pop_reply(redis_url, id_) or b"null")
    assert reply == {"jsonrpc": "2.0", "result": 6.1, "id": id_}


async def test_seed_form_integer_id_and_batch(worker: Worker, queue: str, redis_url: str) -> None:
    number = int(uuid.uuid4().int % 10**15)
    await push_raw(redis_url, queue, seed_request("add", [2, 3], number))
    assert orjson.loads(await pop_reply(redis_url, str(number)) or b"null")["result"] == 5
    first, second = f"{queue}-b1", f"{queue}-b2"
    batch = orjson.dumps(
        [
            {"jsonrpc": "2.0", "method": "record", "params": ["batched"]},
            {"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": first},
            {"jsonrpc": "2.0", "method": "subtract", "params": [5, 3], "id": second},
        ]
    )
    await push_raw(redis_url, queue, batch)
    replies = orjson.loads(await pop_reply(redis_url, first) or b"null")  # the first id's list
    assert {r["id"]: r["result"] for r in replies} == {first: 3, second: 2}


async def test_seed_form_without_id_runs_as_a_notification(
    worker: Worker, queue: str, probe: Probe, redis_url: str
) -> None:
    await push_raw(redis_url, queue, seed_request("record", ["no id"]))
    await eventually(lambda: "no id" in probe.ran)  # run, so not dead-lettered
    assert await dead_records(redis_url, queue) == []


async def test_bad_input_is_answered_or_dead_lettered_and_the_worker_goes_on(
    worker: Worker, queue: str, probe: Probe, redis_url: str
) -> None:
    body = seed_request("record", ["ran"], f"{queue}-x")
    dead = {
        # No reply address can be read: the seed form needs the id to answer.
        b"this is not JSON": "no reply address",
        b'{"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": null}': "no reply address",
        # Reply addresses that would loop or touch our keys.
        seed_request("add", [1, 2], queue): "is the request queue itself",
        seed_request("add", [1, 2], "mm:reply:someone"): "mm: key space",
        seed_request("add", [1, 2], f"{queue}:dead"): "dead-letter list",
        # A response arriving on the queue is an invalid request whose reply would go to
        # the queue again, for ever, without the refusal.
        orjson.dumps({"jsonrpc": "2.0", "result": 1, "id": queue}): "request queue itself",
        # Envelopes: no usable reply address, or a header we can't trust.
        envelope({"mm": 1, "reply_to": None, "cid": "c"}, body): "reply_to must be",
        envelope({"mm": 1, "reply_to": queue, "cid": "c"}, body): "not a reply list",
        envelope({"mm": 1, "reply_to": "mm:reply:"}, body): "not a reply list",
        envelope({"mm": 2, "reply_to": "mm:reply:x"}, body): "unsupported envelope version",
        envelope({"mm": 1, "n": "2"}, body): "n must be",
        # Too large to parse for its id.
        seed_request("echo", ["x" * (10 * 1024 * 1024)], f"{queue}-big"): "exceeds the limit",
    }
    for message in dead:
        await push_raw(redis_url, queue, message)
    records = await wait_for_dead(redis_url, queue, len(dead))
    assert len(records) == len(dead)
    reasons = [record["reason"] for record in records]
    for expected in dead.values():
        assert any(expected in reason for reason in reasons), (expected, reasons)
    assert "ran" not in probe.ran  # refused before running, every one of them

    # An envelope without reply_to is answered the seed way; a 10 MB envelope is answered.
    await push_raw(redis_url, queue, envelope({"mm": 1, "cid": "c"}, body))
    assert orjson.loads(await pop_reply(redis_url, f"{queue}-x") or b"null")["result"] is None
    # Taken after all of the refused ones: had a refusal looped, the queue would be refilled.
    assert not await redis_call(redis_url, "exists", queue)
    assert len(await dead_records(redis_url, queue)) == len(dead)
    big = seed_request("echo", ["x" * (10 * 1024 * 1024)], 1)
    reply_to = wire.reply_key(uuid.uuid4().hex)
    await push_raw(redis_url, queue, envelope({"mm": 1, "reply_to": reply_to, "cid": "b"}, big))
    cid, reply = wire.decode_reply(await pop_reply(redis_url, reply_to) or b"")
    assert cid == "b"
    assert orjson.loads(reply)["error"]["code"] == ErrorCode.MESSAGE_TOO_LARGE
    async with AsyncClient(redis_url, queue, timeout=10) as client:
        assert await client.add(1, 1) == 2


async def test_expired_request_is_acknowledged_and_not_run(
    worker: Worker, queue: str, probe: Probe, redis_url: str
) -> None:
    reply_to = wire.reply_key(uuid.uuid4().hex)
    late = {"mm": 1, "reply_to": reply_to, "cid": "c", "deadline": int(time.time() * 1000) - 1}
    await push_raw(redis_url, queue, envelope(late, seed_request("record", ["late"], 1)))
    async with AsyncClient(redis_url, queue, timeout=10) as client:
        assert await client.add(1, 1) == 2  # taken after the late one, so that one is done
    assert "late" not in probe.ran
    assert not await redis_call(redis_url, "exists", reply_to)
    assert [k for k in await queue_keys(redis_url, queue) if ":processing:" in k] == []


async def test_start_recovers_what_dead_workers_left(
    queue: str, probe: Probe, redis_url: str
) -> None:
    # A worker that died holding three messages: registered, no heartbeat.
    dead, orphan = "dead-worker", "orphan-worker"
    reply_to = wire.reply_key(uuid.uuid4().hex)
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.sadd(wire.workers_key(queue), dead)
        await client.lpush(
            wire.processing_key(queue, dead),
            seed_request("add", [1, 1], f"{queue}-seed"),  # seed form: gets wrapped, n=2
            envelope({"mm": 1, "reply_to": reply_to, "cid": "e"}, seed_request("add", [2, 2], 1)),
            envelope(
                {"mm": 1, "reply_to": reply_to, "cid": "p", "n": 3},  # its 4th delivery
                seed_request("record", ["poison"], 2),
            ),
        )
        # And one whose worker is not even registered any more.
        await client.lpush(
            wire.processing_key(queue, orphan), seed_request("add", [3, 3], f"{queue}-orphan")
        )
        async with serving(probe, redis_url, queue, max_deliveries=3):
            seed = orjson.loads(await pop_reply(redis_url, f"{queue}-seed") or b"null")
            assert seed["result"] == 2
            orphaned = orjson.loads(await pop_reply(redis_url, f"{queue}-orphan") or b"null")
            assert orphaned["result"] == 6
            replies = {}
            for _ in range(2):
                got = await client.blpop([reply_to], timeout=5)
                assert got is not None
                cid, body = wire.decode_reply(got[1])
                replies[cid] = orjson.loads(body)
            assert replies["e"]["result"] == 4
            assert replies["p"]["error"]["code"] == ErrorCode.DELIVERY_LIMIT
            assert "poison" not in probe.ran
            records = await dead_records(redis_url, queue)
            assert [r["header"]["n"] for r in records] == [4]
            assert not await client.exists(wire.processing_key(queue, dead))
            assert not await client.sismember(wire.workers_key(queue), dead)
    finally:
        await client.delete(reply_to)
        await client.aclose()


async def test_running_worker_keys_and_clean_stop(queue: str, probe: Probe, redis_url: str) -> None:
    async with serving(probe, redis_url + "?heartbeat=2", queue):
        keys = await queue_keys(redis_url, queue)
        assert wire.workers_key(queue) in keys
        [heartbeat] = [key for key in keys if ":heartbeat:" in key]
        assert 0 < await redis_call(redis_url, "pttl", heartbeat) <= 2000
        record = orjson.loads(await redis_call(redis_url, "get", heartbeat))
        assert record["queue"] == queue and record["heartbeat"] == 2.0
    # Only the last-seen time stays, and it expires by itself.
    assert await queue_keys(redis_url, queue) == [wire.seen_key(queue)]
    assert 0 < await redis_call(redis_url, "pttl", wire.seen_key(queue)) <= scripts.SEEN_KEEP_MS


def test_worker_describes_itself_without_password() -> None:
    options = WorkerOptions(queue="calc")
    transport = worker_transport("redis://user:secret@example.com:6380/2?heartbeat=4", options)
    text = transport.describe()
    assert "secret" not in text
    assert "queue 'calc'" in text
    assert "heartbeat 4s" in text


async def test_abandoned_calls_go_back_counted_and_unstarted_ones_uncounted(
    queue: str, probe: Probe, redis_url: str
) -> None:
    async with AsyncClient(redis_url, queue, timeout=30) as client:
        worker = Worker(probe, redis_url, queue, concurrency=2, grace=0.2)
        running = asyncio.create_task(worker.run())
        await worker.started()
        calls = [asyncio.create_task(client.slow(5, i)) for i in range(5)]
        await eventually(lambda: len(probe.ran) == 2)
        worker.stop()  # the two running ones outlive the grace period and are abandoned
        await asyncio.wait_for(running, 10)
        items = await redis_call(redis_url, "lrange", queue, 0, -1)
        counts = sorted(wire.split_envelope(item)[0].get("n", 1) for item in items)
        assert counts == [1, 1, 1, 2, 2]
        # The next worker answers them all (the abandoned ones run a second time).
        probe.ran.clear()
        async with serving(Probe(), redis_url, queue, concurrency=8):
            assert sorted(await asyncio.gather(*calls)) == [0, 1, 2, 3, 4]


async def test_64_calls_in_flight_use_few_connections(
    worker: Worker, queue: str, probe: Probe, redis_url: str
) -> None:
    async with AsyncClient(redis_url, queue, timeout=30) as client:
        calls = asyncio.gather(*(client.slow(0.3, i) for i in range(64)))
        await eventually(lambda: len(probe.ran) >= worker.concurrency)  # all pushed, running
        name = f"mm:client:{client._transport.client_id}"  # type: ignore[union-attr]
        listing = await redis_call(redis_url, "client_list")
        assert len([c for c in listing if c["name"] == name]) <= 2  # pushes + replies
        assert await calls == list(range(64))


# --- URLs, auth, TLS, lost connections ---------------------------------------------------------


def test_url_options() -> None:
    settings = RedisSettings.from_url("redis://h:1/2?heartbeat=4&wire=seed&socket_timeout=3")
    assert (settings.heartbeat, settings.wire) == (4.0, "seed")
    assert settings.url == "redis://h:1/2?socket_timeout=3"  # ours removed, redis-py's kept
    for bad in ("redis://h?wire=json", "redis://h?heartbeat=0", "redis://h?heartbeat=soon"):
        with pytest.raises(ConfigurationError):
            RedisSettings.from_url(bad)
    assert type(client_transport("redis://h?wire=seed")).__name__ == "RedisSeedClientTransport"
    assert type(client_transport("rediss://h")).__name__ == "RedisClientTransport"


async def test_password_acl_user_and_database_number(
    queue: str, probe: Probe, make_redis_node: Callable[..., RedisNode]
) -> None:
    acl = ("--user", "alice", "on", ">s3cret", "~*", "&*", "+@all", "--requirepass", "rootpw")
    server = make_redis_node(*acl)
    url = f"redis://alice:s3cret@127.0.0.1:{server.port}/3"
    async with serving(probe, url, queue), AsyncClient(url, queue) as client:
        assert await client.add(1, 2) == 3
        assert await client.add(1, 3) == 4
    default_user = f"redis://:rootpw@127.0.0.1:{server.port}/3"
    async with serving(probe, default_user, queue), AsyncClient(default_user, queue) as client:
        assert await client.add(1, 4) == 5
    with Client(url, queue) as sync_client:
        assert sync_client.notify("record", "synced") is None
    assert await redis_call(default_user, "llen", queue) == 1  # database 3, not 0
    with pytest.raises(TransportError):
        async with AsyncClient(f"redis://alice:wrong@127.0.0.1:{server.port}/3", queue):
            pass


async def test_tls_with_a_self_signed_certificate(
    queue: str, probe: Probe, make_redis_node: Callable[..., RedisNode]
) -> None:
    server = make_redis_node(tls=True)
    url = server.url + "?ssl_cert_reqs=none"
    async with serving(probe, url, queue), AsyncClient(url, queue) as client:
        assert await client.add(1, 5.1) == 6.1

        def sync_call() -> object:
            with Client(url, queue) as sync_client:
                return sync_client.add(2, 5)

        assert await asyncio.to_thread(sync_call) == 7
        async with AsyncClient(url + "&wire=seed", queue) as seed_client:
            assert await seed_client.add(3, 5) == 8
    with pytest.raises(TransportError):  # verified by default: a self-signed one fails
        async with AsyncClient(server.url, queue):
            pass


async def kill_connections(redis_url: str, name_prefix: str) -> int:
    """CLIENT KILL every connection whose name starts with `name_prefix`."""
    killed = 0
    for connection in await redis_call(redis_url, "client_list"):
        if connection["name"].startswith(name_prefix):
            killed += await redis_call(redis_url, "client_kill_filter", connection["id"])
    return killed


def wait_until(predicate, timeout: float = 5) -> None:  # type: ignore[no-untyped-def]
    """`eventually` for threads: wait until `predicate()` is true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


async def test_sync_client_lost_reply_connection_and_timeout(
    worker: Worker, queue: str, probe: Probe, redis_url: str
) -> None:
    # The blocking client runs on a thread, so that the worker keeps serving on this loop.
    def scenario() -> None:
        with Client(redis_url, queue, timeout=30) as client:
            assert client.add(1, 1) == 2
            with pytest.raises(CallTimeout):
                client.call("slow", 2, timeout=0.3)
            outcome: list[BaseException] = []

            def call() -> None:
                try:
                    client.slow(2, "lost")
                except BaseException as exc:
                    outcome.append(exc)

            thread = threading.Thread(target=call)
            thread.start()
            wait_until(lambda: ("slow", "lost") in probe.ran)  # its reply is awaited
            prefix = f"mm:client:{client._transport.client_id}"  # type: ignore[union-attr]
            assert asyncio.run(kill_connections(redis_url, prefix)) >= 1
            thread.join(2)
            assert not thread.is_alive()
            assert isinstance(outcome[0], TransportError)
            assert client.add(2, 2) == 4

    await asyncio.wait_for(asyncio.to_thread(scenario), 20)


async def test_sync_client_shares_pushes_and_reads_among_64_threads(
    worker: Worker, queue: str, redis_url: str
) -> None:
    def scenario() -> dict[tuple[int, int], object]:
        results: dict[tuple[int, int], object] = {}
        with Client(redis_url, queue, timeout=30) as client:

            def work(n: int) -> None:
                for i in range(20):
                    results[n, i] = client.add(n, i)

            threads = [threading.Thread(target=work, args=(n,)) for n in range(64)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
        return results

    results = await asyncio.wait_for(asyncio.to_thread(scenario), 45)
    assert results == {(n, i): n + i for n in range(64) for i in range(20)}


async def test_sync_call_is_not_held_up_by_a_slow_one_in_another_thread(
    worker: Worker, queue: str, probe: Probe, redis_url: str
) -> None:
    def scenario() -> float:
        with Client(redis_url, queue, timeout=10) as client:
            slow = threading.Thread(target=client.slow, args=(1.5, "slow"))
            slow.start()  # alone: it pushes and then reads replies for everyone
            wait_until(lambda: ("slow", "slow") in probe.ran)
            started = time.monotonic()
            assert client.add(1, 2) == 3
            took = time.monotonic() - started
            slow.join(5)
            return took

    assert await asyncio.wait_for(asyncio.to_thread(scenario), 20) < 0.5


# --- the admin side ----------------------------------------------------------------------------


async def test_admin_reads_records_of_any_writer_and_replays_each_once(
    queue: str, redis_url: str
) -> None:
    dead = wire.dead_letter_key(queue)
    client = aioredis.Redis.from_url(redis_url)
    old_record = orjson.dumps(  # written before records carried an id: one derived from it
        {"queue": queue, "reason": "why", "worker": "w", "at": 1000, "header": None,
         "body": '{"jsonrpc":"2.0","method":"record","params":["old"]}'}
    )  # fmt: skip
    try:
        await client.rpush(dead, old_record, b"not a record", b"[1]")
        await client.sadd(wire.QUEUES_KEY, queue)
        async with admin_transport(redis_url) as admin:
            assert queue in await admin.queues()
            records = await admin.dead_letters(queue)
            assert [r.reason for r in records] == ["why", *["unreadable dead-letter record"] * 2]
            assert records[0].at == 1.0 and records[0].deliveries == 1
            assert records[1].body == b"not a record"
            assert [r.id for r in await admin.dead_letters(queue)] == [r.id for r in records]
            # Two replays at once: the record goes back once. Unreadable ones stay.
            first, second = await asyncio.gather(
                admin.replay(queue, None), admin.replay(queue, [records[0].id])
            )
            assert len(first) + len(second) == 1
            assert await client.lrange(queue, 0, -1) == [wire.dead_letter_body(old_record)]
            assert await admin.purge(queue, [records[1].id]) == 1
            assert await admin.purge(queue, [records[1].id]) == 0
            assert await admin.purge(queue, None) == 1
            status = await admin.status(queue)
            assert (status.depth, status.dead_letters, status.workers) == (1, 0, [])
            assert status.oldest_wait is None and "seed form" in status.notes[0]
            await admin.delete_queue(queue)
            assert await queue_keys(redis_url, queue) == []
            assert queue not in await admin.queues()
            assert not await client.sismember(wire.QUEUES_KEY, queue)
    finally:
        await client.aclose()


async def test_admin_status_of_a_worker_that_died_and_of_waiting_requests(
    queue: str, redis_url: str
) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        # A registered worker with no heartbeat (dead), holding two requests; one written by
        # an older version (a timestamp for a heartbeat).
        await client.sadd(wire.workers_key(queue), "dead", "old")
        await client.lpush(wire.processing_key(queue, "dead"), b"a", b"b")
        await client.set(wire.heartbeat_key(queue, "old"), b"1700000000", px=10_000)
        async with AsyncClient(redis_url + "?worker_window=0", queue, timeout=0.5) as caller:
            with pytest.raises(CallTimeout):
                await caller.add(1, 2)
        async with admin_transport(redis_url) as admin:
            status = await admin.status(queue)
            assert status.in_flight == 2 and status.depth == 1
            assert status.oldest_wait is not None and 0 <= status.oldest_wait < 30
            [old] = status.workers
            assert (old.id, old.last_seen) == ("old", 1700000000.0)
            assert "1 registered worker(s) without a heartbeat" in status.notes[0]
    finally:
        await client.aclose()


async def test_admin_on_an_unreachable_redis_is_a_transport_error() -> None:
    with pytest.raises(TransportError):
        async with admin_transport(f"redis://127.0.0.1:{free_port()}/0"):
            pass


def test_envelopes_carry_send_time_and_trace_context() -> None:
    trace = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
             "tracestate": 'quoted="yes",back\\slash'}  # fmt: skip
    prefix = wire.request_prefix("mm:reply:abc")
    for message in (
        wire.encode_request_fast(prefix, "c.1", 1733000000.5, 1733000000.25, b"{}", trace),
        wire.encode_request(b"{}", None, None, None, 1733000000.25, trace),
    ):
        header, body = wire.split_envelope(message)
        assert header is not None and body == b"{}"
        envelope_ = wire.read_header(header, "calc")
        assert envelope_.sent == 1733000000.25
        assert envelope_.trace == trace
    # A trace context that would be dropped on reading is not written either.
    bad = {"traceparent": "not one", "tracestate": "a=b"}
    header, _ = wire.split_envelope(wire.encode_request_fast(prefix, "c", 1.0, 2.0, b"{}", bad))
    assert header is not None and "traceparent" not in header and "tracestate" not in header


# --- no workers --------------------------------------------------------------------------------


def test_the_no_worker_rule_is_off_on_the_seed_wire_unless_asked_for() -> None:
    assert RedisSettings.from_url("redis://h").worker_window == 30.0
    assert RedisSettings.from_url("redis://h?worker_window=2.5").worker_window == 2.5
    assert RedisSettings.from_url("redis://h?worker_window=0").worker_window == 0.0
    assert RedisSettings.from_url("redis://h?wire=seed").worker_window == 0.0
    assert RedisSettings.from_url("redis://h?wire=seed&worker_window=5").worker_window == 5.0
    with pytest.raises(ConfigurationError):
        RedisSettings.from_url("redis://h?worker_window=-1")


async def test_blocking_calls_to_a_queue_nobody_serves_fail_fast_and_leave_nothing(
    queue: str, redis_url: str
) -> None:
    before = await reply_lists(redis_url)

    def scenario() -> list[float]:
        took = []
        for url in (redis_url, redis_url + "?wire=seed&worker_window=30"):
            with Client(url, queue, timeout=10) as client:
                for call in (lambda: client.add(1, 2), lambda: client.notify("record", 1)):
                    started = time.monotonic()
                    with pytest.raises(NoWorkers, match=queue):
                        call()
                    took.append(time.monotonic() - started)
        return took

    assert max(await asyncio.wait_for(asyncio.to_thread(scenario), 30)) < 1.0
    assert await queue_keys(redis_url, queue) == []
    assert await reply_lists(redis_url) - before == set()


async def test_a_killed_worker_counts_as_alive_until_its_heartbeat_expires(
    queue: str, redis_url: str
) -> None:
    # As a killed worker leaves it: the last-seen key says when its heartbeat expires.
    redis_time = await redis_call(redis_url, "time")
    now_ms = redis_time[0] * 1000 + redis_time[1] // 1000
    seen = wire.seen_key(queue)
    await redis_call(redis_url, "psetex", seen, 60_000, now_ms + 2000)  # alive 2 s more
    async with AsyncClient(redis_url + "?worker_window=1", queue, timeout=0.3) as client:
        with pytest.raises(CallTimeout):  # within the heartbeat and the window: it waits
            await client.add(1, 2)
    await redis_call(redis_url, "psetex", seen, 60_000, now_ms - 1500)  # 1.5 s ago
    # A new client: the first one knows that pushes are accepted for the window after its
    # first push (no worker can take that back: a clean stop marks the queue seen then).
    async with AsyncClient(redis_url + "?worker_window=1", queue, timeout=0.3) as client:
        with pytest.raises(NoWorkers):
            await client.add(1, 2)
        with pytest.raises(NoWorkers):
            await client.notify("record", 1)
    assert await redis_call(redis_url, "llen", queue) == 1  # the first call's request only


async def test_after_the_last_worker_stops_calls_wait_for_the_window_then_fail(
    queue: str, probe: Probe, redis_url: str
) -> None:
    url = redis_url + "?worker_window=0.5"
    async with serving(probe, url, queue), AsyncClient(url, queue, timeout=10) as client:
        assert await client.add(1, 1) == 2
        with Client(url, queue, timeout=10) as blocking:  # its pushes were accepted lately
            assert await asyncio.to_thread(blocking.add, 2, 2) == 4
    stopped = time.monotonic()
    async with AsyncClient(url, queue, timeout=10) as client:
        with pytest.raises(CallTimeout):
            await client.call("add", 1, 2, timeout=0.1)  # just stopped: it waits
        while True:  # the window passes (a condition on time itself: no fixed sleep)
            try:
                await client.call("add", 1, 2, timeout=0.1)
            except NoWorkers:
                break
            except CallTimeout:
                assert time.monotonic() - stopped < 5
    assert time.monotonic() - stopped >= 0.5

    def blocking_call() -> float:
        with Client(url, queue, timeout=10) as blocking:
            started = time.monotonic()
            with pytest.raises(NoWorkers):
                blocking.add(3, 3)
            return time.monotonic() - started

    assert await asyncio.to_thread(blocking_call) < 1.0


async def test_a_redis_that_forgot_the_push_script_gets_it_again(
    queue: str, probe: Probe, make_redis_node: Callable[..., RedisNode]
) -> None:
    server = make_redis_node()
    async with serving(probe, server.url, queue), AsyncClient(server.url, queue) as client:
        assert await client.add(1, 1) == 2
        await redis_call(server.url, "script_flush")
        assert await client.add(1, 2) == 3
        await redis_call(server.url, "script_flush")

        def blocking() -> object:
            with Client(server.url, queue) as sync_client:
                return [sync_client.add(2, i) for i in range(3)]

        assert await asyncio.to_thread(blocking) == [2, 3, 4]


async def test_admin_lists_a_forged_worker_record_by_its_key_alone(
    queue: str, redis_url: str
) -> None:
    forged = {"id": "someone-else", "queue": "other", "host": ["<b>"], "pid": "1", "started": 1}
    await redis_call(redis_url, "sadd", wire.workers_key(queue), "w1", "w2")
    await redis_call(
        redis_url, "psetex", wire.heartbeat_key(queue, "w1"), 10_000, orjson.dumps(forged)
    )
    counts = {"pid": 7, "concurrency": 2, "in_flight": 1, "completed": 3, "failed": 0}
    good = {**counts, "host": "h", "started": 1.5, "last_seen": 2.5, "transport": "redis"}
    good["version"] = "x"
    await redis_call(
        redis_url, "psetex", wire.heartbeat_key(queue, "w2"), 10_000, orjson.dumps(good)
    )
    async with admin_transport(redis_url) as admin:
        first, second = (await admin.status(queue)).workers
    assert (first.id, first.queue, first.host, first.pid) == ("w1", queue, "", 0)
    assert (second.id, second.queue, second.pid, second.completed) == ("w2", queue, 7, 3)


async def test_an_event_loop_held_up_past_the_link_timeout_loses_no_call(
    queue: str, probe: Probe, redis_url: str
) -> None:
    # The reader's link times out after socket_timeout + its block (0.5 + 2 s here). A loop
    # held up longer (a blocking call; a paused asyncio.Runner) fires that timer late, while
    # the reply it waits for is already there: the call must get it, not "connection lost".
    url = redis_url + "?socket_timeout=0.5"
    async with serving(probe, url, queue), AsyncClient(url, queue, timeout=30) as client:
        assert await client.add(1, 1) == 2
        time.sleep(3)  # noqa: ASYNC251  # the loop held up, between calls
        assert await client.add(1, 2) == 3
        in_flight = asyncio.create_task(client.slow(0.2, "held"))
        await eventually(lambda: ("slow", "held") in probe.ran)
        time.sleep(3)  # noqa: ASYNC251  # and with a call in flight, its reply coming
        assert await in_flight == "held"
        assert await client.add(2, 2) == 4
        done = time.monotonic()
    # The worker (held up as well: it serves from this loop) stops at once: its heartbeat
    # chore, cancelled as redis-py's own timeout fired, used to go on for 45 s.
    assert time.monotonic() - done < 5


async def test_callers_woken_by_one_read_send_their_next_calls_in_one_push(
    redis_url: str,
) -> None:
    # The test is the worker: it answers eight calls with one RPUSH, so the client reads the
    # eight replies in one BLMPOP. The eight callers, woken together, call again at once:
    # those calls go to Redis in one push. (The push was held before the wake-ups were
    # scheduled, so the hold ended before they ran: the first went alone, the rest after.)
    queue = f"mm-test-{uuid.uuid4().hex[:12]}"
    transport = client_transport(f"{redis_url}?worker_window=0")
    pushes: list[int] = []
    await transport.connect()
    batcher = transport._pusher  # type: ignore[attr-defined]
    push = batcher._send

    async def counted(batch: list[object]) -> None:
        pushes.append(len(batch))
        await push(batch)

    batcher._send = counted
    redis = aioredis.Redis.from_url(redis_url)
    try:

        async def caller(n: int) -> list[bytes]:
            deadline = time.time() + 10
            return [
                await transport.request(queue, b'{"round":%d,"n":%d}' % (r, n), deadline)
                for r in range(2)
            ]

        callers = asyncio.gather(*(caller(n) for n in range(8)))

        async def take_all() -> list[bytes]:
            requests: list[bytes] = []
            while len(requests) < 8:
                requests += await redis.rpop(queue, 8 - len(requests)) or []
                await asyncio.sleep(0.005)
            return requests

        async def answer(requests: list[bytes]) -> None:
            replies, reply_to = [], ""
            for request in requests:
                header, body = wire.split_envelope(request)
                assert header is not None
                replies.append(wire.encode_reply(header["cid"], body))
                reply_to = str(header["reply_to"])
            await redis.rpush(reply_to, *replies)  # one list: read back in one BLMPOP

        first = await asyncio.wait_for(take_all(), 10)
        pushes.clear()
        await answer(first)
        second = await asyncio.wait_for(take_all(), 10)
        assert pushes == [8]
        await answer(second)
        results = await asyncio.wait_for(callers, 10)
        assert results == [[b'{"round":0,"n":%d}' % n, b'{"round":1,"n":%d}' % n] for n in range(8)]
    finally:
        await transport.aclose()
        await redis.delete(queue)
        await redis.aclose()


async def test_messages_one_settle_took_settle_together_in_the_next(redis_url: str) -> None:
    # A settle run takes the next messages in its round trip (up to twice as many as the
    # last run took). Those handed over together settle together: the next run carries
    # every one of them, where the first of them used to go alone and the rest after it.
    queue = f"mm-test-{uuid.uuid4().hex[:12]}"
    redis = aioredis.Redis.from_url(redis_url)
    reply_to = wire.reply_key(f"test-{uuid.uuid4().hex}")
    requests = [
        wire.encode_request(b'{"n":%d}' % n, reply_to, f"c{n}", time.time() + 30) for n in range(60)
    ]
    await redis.lpush(queue, *requests)
    transport = worker_transport(redis_url, WorkerOptions(queue=queue, concurrency=16))
    settler = transport._settler  # type: ignore[attr-defined]
    send = settler._send
    runs: list[tuple[int, int]] = []
    """(messages settled, messages taken) of each settle run"""
    tasks: set[asyncio.Task[None]] = set()

    async def counted(batch: list[object]) -> None:
        taken = transport.stats.taken  # type: ignore[attr-defined]
        await send(batch)
        runs.append((len(batch), transport.stats.taken - taken))  # type: ignore[attr-defined]

    settler._send = counted

    def deliver(delivery: object) -> None:
        task = asyncio.create_task(delivery.complete(b'{"ok":1}'))  # type: ignore[attr-defined]
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    await transport.start(deliver)
    try:

        async def answered() -> bool:
            return await redis.llen(reply_to) == len(requests)

        await eventually_async(answered)
        took_several = [i for i, (_, taken) in enumerate(runs[:-1]) if taken > 1]
        assert took_several, runs  # the runs did take batches
        for i in took_several:
            assert runs[i + 1][0] >= runs[i][1], runs
    finally:
        await transport.stop_receiving()
        await transport.aclose()
        await redis.delete(queue, reply_to)
        await redis.aclose()


async def test_what_waits_when_a_hold_begins_goes_out_with_what_the_round_sends() -> None:
    # A batch comes back with replies that wake two callers; it holds the batcher, and the
    # two call again at once. A call queued while the batch was out goes with theirs, not
    # alone ahead of them.
    sent: list[list[int]] = []
    out = {0: asyncio.Event(), 1: asyncio.Event()}
    one_out = asyncio.Event()
    woken: list[asyncio.Task[None]] = []

    async def send(batch: list[int]) -> None:
        sent.append(list(batch))
        if batch == [1]:
            one_out.set()
        if batch[0] in out:
            await out[batch[0]].wait()
        if batch == [1]:
            woken.extend(asyncio.create_task(batcher.send(n)) for n in (3, 4))
            batcher.hold_for_this_round()

    batcher: Batcher[int] = Batcher(send)
    zero = asyncio.create_task(batcher.send(0))  # out at once
    await asyncio.sleep(0)
    await batcher.send(1)  # queued: goes out from the drain task once 0 is back
    out[0].set()
    await zero
    await one_out.wait()
    await batcher.send(2)  # queued while 1 is out
    out[1].set()
    await asyncio.gather(*woken)
    await asyncio.wait_for(batcher.flush(), 5)
    assert sent == [[0], [1], [2, 3, 4]]
