"""redis+cluster://: the Redis transport on a Redis Cluster of the test's own.

One cluster for the module (3 masters, 3 replicas, redis-servers on free ports in their own
dirs, stopped by pid at the end, `tests.brokers.RedisCluster`): the transport contract; key
slots; the round trip, a notification, the blocking client, a dead letter, recovery, seed-form
replies and their refusals, shards; the queue's slot migrated mid-run (ASK, MOVED); and last,
since each leaves a master without a replica, 2,000 calls across two workers (and a blocking
client shared by 16 threads) while the master holding the queue's slot is killed (kill -9).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import orjson
import pytest
import redis.asyncio.cluster as aiocluster

from micromessaging import (
    AsyncClient,
    Client,
    ConfigurationError,
    ErrorCode,
    MicromessagingError,
    NoWorkers,
    Worker,
)
from micromessaging.transports import admin_transport, client_transport
from micromessaging.transports.redis import RedisSettings, scripts
from micromessaging.transports.redis import wire as wire
from tests.brokers import RedisCluster, RedisNode, free_port

from .admin_contract import AdminContract
from .contract import Probe, TransportContract, answers_again, eventually
from .test_redis import serving

CALLS = 2000
IN_FLIGHT = 64
TIMEOUT = 8.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    with RedisCluster(masters=3, replicas=1) as nodes:
        yield nodes


@pytest.fixture
def queue() -> str:
    return f"cl-{uuid.uuid4().hex[:10]}"


async def raw_cluster(cluster: RedisCluster) -> aiocluster.RedisCluster:
    client = aiocluster.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
    await client.initialize()
    return client


# --- the transport contract, on the cluster ----------------------------------------------------


class TestRedisClusterContract(TransportContract):
    """Everything every transport does, over redis+cluster://."""

    @pytest.fixture
    def broker_url(self, cluster: RedisCluster) -> str:
        return cluster.url

    @pytest.fixture
    async def worker(self, broker_url: str, queue: str, probe: Probe) -> AsyncIterator[Worker]:
        async with serving(probe, broker_url, queue, concurrency=self.worker_concurrency) as w:
            yield w

    @pytest.fixture(autouse=True)
    async def _redis(self, cluster: RedisCluster) -> AsyncIterator[None]:
        self.cluster = cluster
        self.redis = await raw_cluster(cluster)
        self._replies_before = await self._reply_lists()
        yield
        await self.redis.aclose()

    async def _reply_lists(self) -> set[str]:
        return {k.decode() async for k in self.redis.scan_iter(match="mm:reply:*", count=1000)}

    async def inject(
        self, broker_url: str, queue: str, body: bytes, delivery_count: int = 1, wait: float = 5
    ) -> bytes | None:
        reply_to = wire.reply_key(f"inject-{uuid.uuid4().hex}", cluster=True)
        header = {"mm": 1, "reply_to": reply_to, "cid": "c1", "n": delivery_count}
        await self.redis.lpush(queue, orjson.dumps(header) + b"\n" + body)
        got = await self.redis.brpop([reply_to], timeout=wait)
        await self.redis.delete(reply_to)
        if got is None:
            return None
        cid, reply = wire.decode_reply(got[1])
        assert cid == "c1"
        return reply

    async def dead_letters(self, broker_url: str, queue: str) -> list[bytes]:
        records = await self.redis.lrange(wire.dead_letter_key(queue, cluster=True), 0, -1)
        return [wire.dead_letter_body(record) for record in records]

    def unreachable_url(self, broker_url: str) -> str:
        return f"redis+cluster://127.0.0.1:{free_port()}"

    async def wait_queued(
        self, broker_url: str, queue: str, client: AsyncClient, count: int
    ) -> None:
        deadline = time.monotonic() + 10
        while await self.redis.llen(queue) < count:
            assert time.monotonic() < deadline, "the requests never queued"
            await asyncio.sleep(0.01)

    cuts_connections = True

    async def test_a_lone_request_is_answered_in_the_task_that_took_it(self) -> None:
        pytest.skip(
            "on a cluster a reply goes to its list's node ahead of the settle's transaction on "
            "the queue's node, so a caller's next request is often taken by that transaction "
            "(a task each), not by the blocking take that answers a lone request itself"
        )

    async def test_a_client_on_asyncios_loop_reads_at_most_read_size_at_once(self) -> None:
        pytest.skip(
            "redis-py's cluster client makes its nodes' connections with a class of its own "
            "choosing (no pool of ours to give ours to): they read as asyncio's transport does"
        )

    def _kill(self, prefix: str) -> int:
        killed = 0
        for node in self.cluster.nodes:
            if node.running:
                for line in node.call("CLIENT", "LIST").decode().splitlines():
                    fields = dict(field.split("=", 1) for field in line.split(" ") if "=" in field)
                    if fields.get("name", "").startswith(prefix):
                        killed += node.call("CLIENT", "KILL", "ID", fields["id"])
        return killed

    async def cut_client(self, broker_url: str, client: AsyncClient) -> None:
        prefix = f"mm:client:{client._transport.client_id}"  # type: ignore[union-attr]
        assert self._kill(prefix) >= 1

    async def cut_worker(self, broker_url: str, queue: str) -> None:
        assert self._kill(f"mm:worker:{queue}:") >= 1

    async def leftovers(self, broker_url: str, queue: str) -> list[str]:
        pattern = f"mm:{{{queue}}}:*"
        kept = wire.seen_key(queue, cluster=True)  # kept on purpose: it expires by itself
        scan = self.redis.scan_iter(match=pattern, count=1000)
        keys = [k.decode() async for k in scan if k.decode() != kept]
        if await self.redis.exists(queue):
            keys.append(queue)
        return sorted(keys) + sorted(await self._reply_lists() - self._replies_before)

    async def test_lost_connection_fails_calls_at_once_then_recovers(
        self, worker: Worker, broker_url: str, queue: str, probe: Probe
    ) -> None:
        """Not on a cluster: a lost link there is most likely a failover, after which the
        replica has the reply list, so the calls wait for their replies (and get them)."""
        async with AsyncClient(broker_url, queue, timeout=30) as client:
            assert await client.add(1, 1) == 2
            pending = asyncio.create_task(client.slow(1, "lost"))
            await eventually(lambda: ("slow", "lost") in probe.ran)
            await self.cut_client(broker_url, client)
            assert await asyncio.wait_for(pending, 10) == "lost"
            await answers_again(client)


class TestRedisClusterAdmin(AdminContract):
    """Status, worker records and dead letters over redis+cluster:// (each queue's keys in
    its slot, ``mm:queues`` in another, the scans over every master)."""

    @pytest.fixture
    def broker_url(self, cluster: RedisCluster) -> str:
        return cluster.url

    async def poison(self, broker_url: str, queue: str, body: bytes) -> None:
        # An envelope saying it was delivered 99 times already: dead-lettered unrun.
        client = aiocluster.RedisCluster.from_url(RedisSettings.from_url(broker_url).url)
        try:
            await client.lpush(queue, orjson.dumps({"mm": 1, "n": 99}) + b"\n" + body)
        finally:
            await client.aclose()


async def test_admin_purges_and_deletes_a_queue_on_the_cluster(
    cluster: RedisCluster, queue: str
) -> None:
    """The registry (``mm:queues``) in one slot, the queue's keys in another: a purge of
    every dead letter, then delete_queue, which finds the queue's keys by a scan of every
    master, leave nothing of the queue, and the registry forgets it."""
    redis = await raw_cluster(cluster)
    try:
        async with serving(Probe(), cluster.url, queue):
            await redis.rpush(wire.dead_letter_key(queue, cluster=True), b"x", b"y")
            async with admin_transport(cluster.url) as admin:
                assert queue in await admin.queues()
                assert (await admin.status(queue)).dead_letters == 2
                assert await admin.purge(queue, None) == 2
        async with admin_transport(cluster.url) as admin:
            assert await redis.exists(wire.seen_key(queue, cluster=True))
            assert queue in await admin.queues()  # its last-seen time is still there
            await admin.delete_queue(queue)
            assert [k async for k in redis.scan_iter(match=f"*{queue}*", count=1000)] == []
            assert queue not in await admin.queues()
            assert not await redis.sismember(wire.QUEUES_KEY, queue)
    finally:
        await redis.aclose()


# --- URLs and key names (no I/O) ----------------------------------------------------------------


def test_cluster_urls_name_several_nodes() -> None:
    settings = RedisSettings.from_url(
        "redis+cluster://u:secret@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002/?heartbeat=2"
    )
    assert settings.cluster
    assert settings.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001), ("::1", 7002))
    assert settings.url.startswith("redis://u:secret@10.0.0.1:7000/")
    assert "secret" not in settings.display
    assert settings.heartbeat == 2
    assert RedisSettings.from_url("rediss+cluster://h:1").url.startswith("rediss://h:1")
    assert not RedisSettings.from_url("redis://h:1/0").cluster
    with pytest.raises(ConfigurationError, match="host:port"):
        RedisSettings.from_url("redis+cluster://h:1,h:notaport")
    with pytest.raises(ConfigurationError, match="database 0"):
        RedisSettings.from_url("redis+cluster://h:1/2")
    with pytest.raises(ConfigurationError, match="wire=seed"):
        client_transport("redis+cluster://h:1?wire=seed")


def test_every_key_of_a_queue_shares_its_slot(cluster: RedisCluster) -> None:
    node = cluster.nodes[0]

    def slot(key: str) -> int:
        return int(node.call("CLUSTER", "KEYSLOT", key))

    assert slot("calc") == slot("x{calc}y")  # the tag is the whole name: the same slot
    keys = [
        wire.workers_key("calc", cluster=True),
        wire.processing_key("calc", "host.1.ab", cluster=True),
        wire.heartbeat_key("calc", "host.1.ab", cluster=True),
        wire.dead_letter_key("calc", cluster=True),
        wire.seen_key("calc", cluster=True),
    ]
    assert {slot(key) for key in keys} == {slot("calc")}
    assert slot(wire.reply_key("c0ffee", cluster=True)) == slot("c0ffee")
    # On one Redis the names stay what they were.
    assert wire.workers_key("calc") == "mm:calc:workers"
    assert wire.dead_letter_key("calc") == "calc:dead"
    assert wire.seen_key("calc") == "mm:calc:seen"


async def test_a_queue_name_with_braces_is_refused(cluster: RedisCluster) -> None:
    with pytest.raises(ConfigurationError, match="brace"):
        async with serving(Probe(), cluster.url, "a{b}c"):
            pass


# --- the ordinary traffic -----------------------------------------------------------------------


async def test_the_no_worker_rule_on_the_cluster(cluster: RedisCluster, queue: str) -> None:
    """Both clients, calls and notifications: refused with `NoWorkers` before any worker of
    the queue beats (nothing pushed), served once one does (the push script and the
    heartbeat's last-seen key share the queue's slot)."""
    redis = await raw_cluster(cluster)

    def blocking(notify: object) -> float:
        with Client(cluster.url, queue, timeout=10) as sync_client:
            sync_client.notify("record", notify)
            return sync_client.add(1, 2)  # type: ignore[no-any-return]

    try:
        async with AsyncClient(cluster.url, queue, timeout=10) as client:
            with pytest.raises(NoWorkers):
                await client.add(1, 2)
            with pytest.raises(NoWorkers):
                await client.notify("record", "early")
            with pytest.raises(NoWorkers):
                await asyncio.to_thread(blocking, "early")
            assert not await redis.exists(queue)
            probe = Probe()
            async with serving(probe, cluster.url, queue):
                assert await redis.exists(wire.seen_key(queue, cluster=True))
                assert await client.add(1, 2) == 3
                assert await asyncio.to_thread(blocking, "sync") == 3
                await client.notify("record", "async")
                await eventually(lambda: sorted(probe.ran) == ["async", "sync"])
    finally:
        await redis.aclose()


async def test_round_trip_notification_and_blocking_client(
    cluster: RedisCluster, queue: str
) -> None:
    probe = Probe()
    async with (
        serving(probe, cluster.url, queue),
        AsyncClient(cluster.url, queue, timeout=10) as client,
    ):
        assert await client.add(1, 5.1) == 6.1
        assert await asyncio.gather(*(client.add(i, 1) for i in range(200))) == [
            i + 1 for i in range(200)
        ]
        await client.notify("record", "hello")
        await eventually(lambda: probe.ran == ["hello"])

        def blocking() -> list[float]:
            with Client(cluster.url, queue, timeout=10) as sync_client:
                return [sync_client.add(i, 2) for i in range(20)]

        assert await asyncio.to_thread(blocking) == [i + 2 for i in range(20)]
    redis = await raw_cluster(cluster)
    try:  # the workers deregistered, gave back nothing, and the reply lists are gone
        assert not await redis.exists(wire.workers_key(queue, cluster=True))
        assert not await redis.exists(queue)
    finally:
        await redis.aclose()


async def test_delivery_limit_dead_letters_and_answers(cluster: RedisCluster, queue: str) -> None:
    probe = Probe()
    redis = await raw_cluster(cluster)
    reply_to = wire.reply_key(f"inject-{uuid.uuid4().hex}", cluster=True)
    body = b'{"jsonrpc": "2.0", "method": "record", "params": ["poison"], "id": 9}'
    try:
        async with serving(probe, cluster.url, queue) as worker:
            header = {"mm": 1, "reply_to": reply_to, "cid": "c1", "n": worker.max_deliveries + 1}
            await redis.lpush(queue, orjson.dumps(header) + b"\n" + body)
            got = await redis.blpop([reply_to], timeout=10)
            assert got is not None
            _, reply = wire.decode_reply(got[1])
            assert orjson.loads(reply)["error"]["code"] == ErrorCode.DELIVERY_LIMIT
            assert "poison" not in probe.ran
            records = await redis.lrange(wire.dead_letter_key(queue, cluster=True), 0, -1)
            assert [wire.dead_letter_body(record) for record in records] == [body]
    finally:
        await redis.delete(wire.dead_letter_key(queue, cluster=True))
        await redis.aclose()


async def test_a_seed_form_request_is_answered_on_the_cluster(
    cluster: RedisCluster, queue: str
) -> None:
    """A foreign client's bare request: the reply goes to the list its id names, in
    whatever slot that is (pushed apart from the settle script, which stays in one slot)."""
    redis = await raw_cluster(cluster)
    request_id = uuid.uuid4().hex
    try:
        async with serving(Probe(), cluster.url, queue):
            request = {"jsonrpc": "2.0", "method": "add", "params": [2, 3], "id": request_id}
            await redis.lpush(queue, orjson.dumps(request))
            got = await redis.brpop([request_id], timeout=10)
            assert got is not None
            assert orjson.loads(got[1])["result"] == 5
    finally:
        await redis.aclose()


async def test_a_worker_recovers_what_dead_workers_left(cluster: RedisCluster, queue: str) -> None:
    """A registered worker without a heartbeat, and a processing list whose worker is not
    even registered (found by SCAN on every master): their requests run again."""
    redis = await raw_cluster(cluster)
    reply_to = wire.reply_key(uuid.uuid4().hex, cluster=True)

    def request(cid: str, a: int) -> bytes:
        header = {"mm": 1, "reply_to": reply_to, "cid": cid}
        body = {"jsonrpc": "2.0", "method": "add", "params": [a, 1], "id": 1}
        return orjson.dumps(header) + b"\n" + orjson.dumps(body)

    try:
        await redis.sadd(wire.workers_key(queue, cluster=True), "dead-worker")
        await redis.lpush(wire.processing_key(queue, "dead-worker", cluster=True), request("d", 1))
        await redis.lpush(wire.processing_key(queue, "orphan", cluster=True), request("o", 2))
        async with serving(Probe(), cluster.url, queue):
            replies = {}
            for _ in range(2):
                got = await redis.blpop([reply_to], timeout=10)
                assert got is not None
                cid, body = wire.decode_reply(got[1])
                replies[cid] = orjson.loads(body)["result"]
            assert replies == {"d": 2, "o": 3}
            assert not await redis.sismember(wire.workers_key(queue, cluster=True), "dead-worker")
    finally:
        await redis.delete(reply_to)
        await redis.aclose()


async def test_unsafe_seed_reply_lists_are_refused_on_the_cluster(
    cluster: RedisCluster, queue: str
) -> None:
    """The checks of a seed-form reply list hold on a cluster too, where the list and the
    workers set of its name (the "registered queue" check) share their own slot."""
    probe = Probe()
    other = f"{queue}-other"
    redis = await raw_cluster(cluster)

    def seed(reply_list: str) -> bytes:
        request = {"jsonrpc": "2.0", "method": "record", "params": ["ran"], "id": reply_list}
        return orjson.dumps(request)

    refused = {
        seed(other): "is a registered queue",
        seed(f"{queue}-{{tag}}"): "brace",
        seed(f"{queue}-data"): "is a list without a TTL",
        seed(f"{queue}-string"): "holds a string",
    }
    dead = wire.dead_letter_key(queue, cluster=True)
    try:
        await redis.rpush(f"{queue}-data", b"someone's")
        await redis.set(f"{queue}-string", b"someone's")
        async with serving(Probe(), cluster.url, other), serving(probe, cluster.url, queue):
            for message in refused:
                await redis.lpush(queue, message)
            deadline = time.monotonic() + 10
            while await redis.llen(dead) < len(refused):
                assert time.monotonic() < deadline, await redis.lrange(dead, 0, -1)
                await asyncio.sleep(0.05)
            reasons = [orjson.loads(r)["reason"] for r in await redis.lrange(dead, 0, -1)]
            for expected in refused.values():
                assert any(expected in reason for reason in reasons), (expected, reasons)
            assert "ran" not in probe.ran
            assert await redis.lrange(f"{queue}-data", 0, -1) == [b"someone's"]
    finally:
        await redis.delete(dead, f"{queue}-data", f"{queue}-string")
        await redis.aclose()


def queue_on_a_replicated_master(cluster: RedisCluster) -> tuple[str, RedisNode]:
    """A new queue name whose slot's master has a replica in sync, and that master."""
    while True:
        queue = f"cl-{uuid.uuid4().hex[:10]}"
        master = cluster.master_of(queue)
        if master.call("INFO", "replication")["connected_slaves"] >= 1:
            return queue, master


async def run_calls(
    client: AsyncClient, calls: int, lanes: int, outcomes: dict[int, object]
) -> dict[int, object]:
    """`calls` calls of add(n, 1), `lanes` in flight: n -> its result, or its error."""
    numbers = iter(range(calls))

    async def lane() -> None:
        for n in numbers:
            try:
                outcomes[n] = await client.add(n, 1)
            except MicromessagingError as exc:
                outcomes[n] = exc

    await asyncio.gather(*(lane() for _ in range(lanes)))
    return outcomes


def node_id(node: RedisNode) -> str:
    return str(node.call("CLUSTER", "MYID").decode())


async def migrate_slot(cluster: RedisCluster, key: str) -> RedisNode:
    """Move `key`'s slot to another master the way redis-cli --cluster reshard does, keys
    and all, while traffic goes on: IMPORTING / MIGRATING (clients meet ASK), MIGRATE the
    keys, then the new owner for every master (clients meet MOVED)."""
    source = cluster.master_of(key)
    slot = int(source.call("CLUSTER", "KEYSLOT", key))
    target = next(n for n in cluster.running_masters() if n is not source)
    target.call("CLUSTER", "SETSLOT", slot, "IMPORTING", node_id(source))
    source.call("CLUSTER", "SETSLOT", slot, "MIGRATING", node_id(target))
    while keys := source.call("CLUSTER", "GETKEYSINSLOT", slot, 100):
        source.call("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
        await asyncio.sleep(0.01)
    for master in cluster.running_masters():
        master.call("CLUSTER", "SETSLOT", slot, "NODE", node_id(target))
    return target


def test_the_settle_script_hands_over_what_it_took_when_its_slot_starts_migrating(
    cluster: RedisCluster, queue: str
) -> None:
    """Redis undoes nothing when a script fails: once the queue's last request is taken,
    the next LMOVE of a slot being migrated fails ("non local key"), and the requests
    already moved must still come back to the worker, not sit in its processing list."""
    source = cluster.master_of(queue)
    target = next(n for n in cluster.running_masters() if n is not source)
    slot = int(source.call("CLUSTER", "KEYSLOT", queue))
    processing = wire.processing_key(queue, "w1", cluster=True)
    source.call("RPUSH", processing, b"still running", b"settled")
    source.call("RPUSH", queue, b"second", b"first")
    target.call("CLUSTER", "SETSLOT", slot, "IMPORTING", node_id(source))
    source.call("CLUSTER", "SETSLOT", slot, "MIGRATING", node_id(target))
    try:
        errors, taken, swept = source.call(
            "EVAL", scripts.SETTLE, 3, processing, queue, processing,
            wire.REPLY_TTL, 5, int(time.time() * 1000), 10, b"settled", b"",
        )  # fmt: skip
        assert (errors, taken, swept) == ([0], [b"first", b"second"], 0)
        assert source.call("LRANGE", processing, 0, -1) == [b"second", b"first", b"still running"]
    finally:
        for node in (source, target):
            node.call("CLUSTER", "SETSLOT", slot, "STABLE")
        source.call("DEL", processing, queue)


async def test_calls_follow_their_queue_when_its_slot_moves(
    cluster: RedisCluster, queue: str
) -> None:
    """The queue's slot migrates to another master mid-run (ASK, then MOVED): every call
    is answered, by the same workers and client."""
    async with (
        serving(Probe(), cluster.url, queue),
        serving(Probe(), cluster.url, queue),
        AsyncClient(cluster.url, queue, timeout=TIMEOUT) as client,
    ):
        outcomes: dict[int, object] = {}
        running = asyncio.create_task(run_calls(client, CALLS, IN_FLIGHT, outcomes))
        await eventually(lambda: len(outcomes) >= 200, timeout=30)
        target = await migrate_slot(cluster, queue)
        assert len(outcomes) < CALLS  # it moved mid-run
        await asyncio.wait_for(running, 60)
        assert cluster.master_of(queue) is target
        assert outcomes == {n: n + 1 for n in range(CALLS)}
        assert await client.add(1, 1) == 2


async def test_a_queue_spread_over_shards(cluster: RedisCluster, queue: str) -> None:
    """``?shards=4``: clients push to the four lists in turn, which live in four slots; a
    sharded worker takes from all of them, and a client that does not shard is served too."""
    probe = Probe()
    shards = [wire.shard_queue(queue, shard) for shard in range(4)]
    redis = await raw_cluster(cluster)
    try:
        slots = {redis.keyslot(name) for name in shards}
        assert len(slots) == 4
        # No worker yet: the no-worker rule off, so that the notifications wait for one.
        url = cluster.url + "?shards=4&worker_window=0"
        async with AsyncClient(url, queue, timeout=10) as client:
            for n in range(8):
                await client.notify("record", n)
            assert [await redis.llen(name) for name in shards] == [2, 2, 2, 2]
            async with serving(probe, cluster.url + "?shards=4", queue, concurrency=8):
                await eventually(lambda: sorted(probe.ran) == list(range(8)), timeout=10)
                for name in shards:
                    assert await redis.scard(wire.workers_key(name, cluster=True)) == 1
                results = await asyncio.gather(*(client.add(i, 1) for i in range(400)))
                assert results == [i + 1 for i in range(400)]
                async with AsyncClient(cluster.url, queue, timeout=10) as plain:
                    assert await plain.add(2, 2) == 4

                def blocking() -> list[float]:
                    with Client(cluster.url + "?shards=4", queue, timeout=10) as sync_client:
                        return [sync_client.add(i, 5) for i in range(8)]

                assert await asyncio.to_thread(blocking) == [i + 5 for i in range(8)]
        assert [await redis.exists(name) for name in shards] == [0, 0, 0, 0]
    finally:
        await redis.aclose()


def test_shards_option_is_checked() -> None:
    assert RedisSettings.from_url("redis://h:1/0?shards=3").shards == 3
    for bad in ("0", "x", "1000"):
        with pytest.raises(ConfigurationError, match="shards"):
            RedisSettings.from_url(f"redis://h:1/0?shards={bad}")


# --- a master killed mid-run (last: each leaves a master without a replica) --------------------


async def test_the_blocking_client_rides_through_a_failover(cluster: RedisCluster) -> None:
    """`Client`, shared by 16 threads, while the master of the queue's slot is killed: each
    call gets its answer or a clear error by its deadline, and calls go on afterwards."""
    queue, victim = queue_on_a_replicated_master(cluster)
    outcomes: list[object] = []
    late: list[float] = []

    def thread(client: Client, first: int) -> None:
        for n in range(first, first + 60):
            started = time.monotonic()
            try:
                outcomes.append(client.add(n, 1) == n + 1 or f"wrong answer for {n}")
            except MicromessagingError as exc:
                outcomes.append(exc)
            if time.monotonic() - started > TIMEOUT + 1.0:
                late.append(time.monotonic() - started)

    async with serving(Probe(), cluster.url, queue, concurrency=32):
        with Client(cluster.url, queue, timeout=TIMEOUT) as client:
            threads = [asyncio.to_thread(thread, client, 1000 * i) for i in range(16)]
            running = asyncio.gather(*threads)
            await eventually(lambda: len(outcomes) >= 200, timeout=30)
            victim.kill()
            await asyncio.wait_for(running, 120)
            assert late == []
            assert [o for o in outcomes if o is not True and not isinstance(o, Exception)] == []
            errors = [o for o in outcomes if isinstance(o, Exception)]
            assert len(errors) <= 16, sorted({str(e)[:100] for e in errors})
            assert cluster.master_of(queue) is not victim
            assert await asyncio.to_thread(lambda: [client.add(i, 3) for i in range(20)]) == [
                i + 3 for i in range(20)
            ]


async def test_a_master_killed_mid_run_loses_no_call(cluster: RedisCluster) -> None:
    """2,000 calls across two workers while the master of the queue's slot is killed: each
    gets its correct answer or a clear error by its deadline; then calls succeed again, on
    the same workers and client, once the replica has taken over."""
    url = cluster.url + "?heartbeat=2"
    outcomes: dict[int, object] = {}
    late: list[float] = []
    finished: list[float] = []
    numbers = iter(range(CALLS))
    queue, victim = queue_on_a_replicated_master(cluster)

    async with (
        serving(Probe(), url, queue, concurrency=32),
        serving(Probe(), url, queue, concurrency=32),
        AsyncClient(url, queue, timeout=TIMEOUT) as client,
    ):

        async def lane() -> None:
            for n in numbers:
                started = time.monotonic()
                try:
                    outcomes[n] = await client.add(n, 1)
                except MicromessagingError as exc:
                    outcomes[n] = exc
                finished.append(time.monotonic())
                elapsed = finished[-1] - started
                if elapsed > TIMEOUT + 1.0:
                    late.append(elapsed)

        lanes = [asyncio.create_task(lane()) for _ in range(IN_FLIGHT)]
        await eventually(lambda: len(outcomes) >= 300, timeout=30)
        victim.kill()  # kill -9, by its pid
        killed_at, done_at_kill = time.monotonic(), len(outcomes)
        await asyncio.wait_for(asyncio.gather(*lanes), timeout=120)
        assert late == [], f"calls that outlived their timeout: {late[:5]}"
        assert sorted(outcomes) == list(range(CALLS))
        wrong = {n: v for n, v in outcomes.items() if not isinstance(v, Exception) and v != n + 1}
        assert wrong == {}
        errors = [v for v in outcomes.values() if isinstance(v, Exception)]
        assert all(isinstance(e, MicromessagingError) and str(e) for e in errors)
        assert done_at_kill < CALLS * 0.6  # the kill came mid-run
        # Pushes and reads wait through the failover; only requests or replies the replica
        # had not yet received when its master died can be lost (their calls time out): at
        # most the calls in flight then. In practice none.
        assert len(errors) <= IN_FLIGHT, sorted({str(e)[:100] for e in errors})
        assert cluster.master_of(queue) is not victim  # a replica was promoted
        after = [t for t in finished if t > killed_at]
        gap = max(b - a for a, b in zip([killed_at, *after], after, strict=False))
        assert gap < TIMEOUT  # the longest pause in answers: the failover itself

        # Nothing restarted: the same workers and client go on.
        again = await asyncio.gather(*(client.add(i, 2) for i in range(200)))
        assert again == [i + 2 for i in range(200)]
