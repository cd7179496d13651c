"""Stress nats-server's JetStream MSG.GET / consumers the way micromessaging uses them.

Starts a private nats-server (free port, own -sd dir), stops it by pid. Not a test.

  PYTHONPATH=src python benchmarks/nats_msgget_stress.py MODE SECONDS
MODE (nats-server 2.9.10, Debian's; what happened there on 2026-12-02):
  presence           MM_WORKERS-like stream (file, 1 msg per subject), 100 subjects rewritten
                     every 10 ms, wildcard get_last_msg in a loop per queue, other streams
                     created and deleted alongside: survives.
  create-get-literal MSG.GET last_by_subj (literal), fired from 4 other connections at a
                     stream while it is being created: panic within 5 s (jetstream_api.go:3028).
  create-get-wild    the same with a wildcard: the same panic.
  create-get-seq     MSG.GET by seq: the same panic at jetstream_api.go:3024.
  create-info        STREAM.INFO instead: survives.  create-consumer: CONSUMER.CREATE: survives.
  workers-old        MM_WORKERS deleted and made again (presence.ensure_stream) while 20 looks
                     call the old get_last_msg("MM_WORKERS", "mm.workers.q0.*"): panic in 5 s.
  workers-new        the same with presence.last_seen (consumer): survives.
  consumer-presence  the presence load, looks by presence.last_seen: survives.
  all-new            workers-new + consumer-presence + create-consumer + stream churn together:
                     survived 300 s.
"""

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import nats
from nats.js import api

SERVER = "/usr/sbin/nats-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def writer(js, subjects, every):
    n = 0
    while True:
        for subj in subjects:
            await js.publish(subj, json.dumps({"last_seen": time.time(), "n": n}).encode())
        n += 1
        await asyncio.sleep(every)


async def wildcard_getter(nc, stream, filt, stats):
    while True:
        try:
            await nc.request(
                f"$JS.API.STREAM.MSG.GET.{stream}",
                json.dumps({"last_by_subj": filt}).encode(),
                timeout=2,
            )
            stats["get"] += 1
        except Exception:
            stats["err"] += 1
        await asyncio.sleep(0.001)


async def churn_streams(js, stats):
    while True:
        name = f"MM_churn-{uuid.uuid4().hex[:12]}"
        await js.add_stream(name=name, subjects=[name], storage=api.StorageType.FILE)
        await js.publish(name, b"x")
        await js.delete_stream(name)
        stats["churn"] += 1


def request_for(how, name):
    subj = f"q.{name}"
    if how == "get-literal":
        return f"$JS.API.STREAM.MSG.GET.{name}", json.dumps({"last_by_subj": subj}).encode()
    if how == "get-wild":
        return f"$JS.API.STREAM.MSG.GET.{name}", json.dumps({"last_by_subj": subj + ".*"}).encode()
    if how == "get-seq":
        return f"$JS.API.STREAM.MSG.GET.{name}", json.dumps({"seq": 1}).encode()
    if how == "info":
        return f"$JS.API.STREAM.INFO.{name}", b""
    if how == "consumer":
        return f"$JS.API.CONSUMER.CREATE.{name}", json.dumps(
            {
                "stream_name": name,
                "config": {
                    "deliver_policy": "last_per_subject",
                    "ack_policy": "none",
                    "filter_subject": subj + ".*",
                    "inactive_threshold": 5_000_000_000,
                    "mem_storage": True,
                    "num_replicas": 1,
                    "max_deliver": 1,
                    "deliver_subject": "_INBOX.sink." + uuid.uuid4().hex,
                    "flow_control": False,
                },
            }
        ).encode()
    raise ValueError(how)


async def fire_at_creation(url, nc, js, stats, how):
    """Create a stream (one connection) while others fire requests at it (no waiting)."""
    shooters = [await nats.connect(url) for _ in range(4)]
    for s in shooters:
        await s.subscribe("_INBOX.sink.>", cb=None)
    target = {"name": None}

    async def shoot(conn):
        while True:
            name = target["name"]
            if name is None:
                await asyncio.sleep(0.0005)
                continue
            subject, payload = request_for(how, name)
            for _ in range(20):
                await conn.publish(subject, payload, reply="_INBOX.sink.x")
            await conn.flush()
            stats["get"] += 20

    tasks = [asyncio.ensure_future(shoot(s)) for s in shooters]
    try:
        while True:
            name = f"MM_mm-test-{uuid.uuid4().hex[:12]}"
            subj = f"q.{name}"
            target["name"] = name
            await asyncio.sleep(0.003)
            await js.add_stream(
                name=name,
                subjects=[subj + ".>", subj],
                storage=api.StorageType.FILE,
                max_msgs_per_subject=1,
            )
            await asyncio.sleep(0.002)
            target["name"] = None
            stats["created"] += 1
            await js.delete_stream(name)
    finally:
        for t in tasks:
            t.cancel()


def main(mode: str, seconds: float) -> int:
    """A private server for the run, stopped by its pid; its log's end if it died."""
    port = free_port()
    sd = tempfile.mkdtemp(prefix="nats-stress-")
    log = os.path.join(sd, "log")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [SERVER, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", sd],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    print(f"server pid {proc.pid} port {port} dir {sd}", flush=True)
    try:
        rc = asyncio.run(stress(f"nats://127.0.0.1:{port}", proc, mode, seconds))
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)
    if rc:
        with open(log) as f:
            print(f.read()[-3000:])
    return rc


async def stress(url: str, proc: subprocess.Popen, mode: str, seconds: float) -> int:
    for _ in range(100):
        try:
            nc = await nats.connect(url, max_reconnect_attempts=0, allow_reconnect=False)
            break
        except Exception:
            await asyncio.sleep(0.05)
    js = nc.jetstream()
    stats = {"get": 0, "err": 0, "churn": 0, "created": 0}
    tasks = []
    if mode in ("presence", "consumer-presence"):
        await js.add_stream(
            name="MM_WORKERS",
            subjects=["mm.workers.>"],
            storage=api.StorageType.FILE,
            max_msgs_per_subject=1,
            max_age=24 * 3600,
        )
        queues = [f"q{i}" for i in range(20)]
        wnc = await nats.connect(url)
        wjs = wnc.jetstream()
        for q in queues:
            tasks.append(writer(wjs, [f"mm.workers.{q}.w{j}" for j in range(5)], 0.01))
        for q in queues:
            if mode == "presence":
                tasks.append(wildcard_getter(nc, "MM_WORKERS", f"mm.workers.{q}.*", stats))
            else:
                tasks.append(consumer_getter(nc, q, stats))
        tasks.append(churn_streams(js, stats))
    elif mode in ("workers-old", "workers-new", "all-new"):
        tasks.append(recreate_workers(url, js, stats, mode))
        if mode == "all-new":  # plus the presence load and consumers fired at creations
            await js.add_stream(
                name="MM_WORKERS",
                subjects=["mm.workers.>"],
                storage=api.StorageType.FILE,
                max_msgs_per_subject=1,
            )
            wnc = await nats.connect(url)
            wjs = wnc.jetstream()
            for q in [f"q{i}" for i in range(10)]:
                tasks.append(writer_tolerant(wjs, [f"mm.workers.{q}.w{j}" for j in range(5)]))
                tasks.append(consumer_getter_tolerant(nc, q, stats))
            tasks.append(fire_at_creation(url, nc, js, stats, "consumer"))
            tasks.append(churn_streams(js, stats))
    elif mode.startswith("create-"):
        for _ in range(1):
            tasks.append(fire_at_creation(url, nc, js, stats, mode[len("create-") :]))
    running = [asyncio.ensure_future(t) for t in tasks]
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        await asyncio.sleep(5)
        alive = proc.poll() is None
        print(f"{time.monotonic() - start:6.0f}s alive={alive} {stats}", flush=True)
        for t in running:
            if t.done() and t.exception() and alive:
                print("task failed:", repr(t.exception()))
        if not alive:
            return 1
    return 0


async def consumer_getter(nc, queue, stats):
    sys.path.insert(0, "src")
    from micromessaging.transports.nats import presence

    js = nc.jetstream()
    while True:
        try:
            seen = await presence.last_seen(js, queue)
            stats["get"] += 1
            if seen is None or time.time() - seen > 1:
                stats["stale"] = stats.get("stale", 0) + 1
        except Exception as exc:
            stats["err"] += 1
            stats["last_err"] = repr(exc)[:80]
        await asyncio.sleep(0.001)


async def writer_tolerant(js, subjects):
    sys.path.insert(0, "src")
    while True:
        for subj in subjects:
            with contextlib.suppress(Exception):
                await js.publish(subj, json.dumps({"last_seen": time.time()}).encode(), timeout=1)
        await asyncio.sleep(0.01)


async def consumer_getter_tolerant(nc, queue, stats):
    sys.path.insert(0, "src")
    from micromessaging.transports.nats import presence

    js = nc.jetstream()
    while True:
        try:
            await presence.last_seen(js, queue)
            stats["get"] += 1
        except Exception as exc:
            stats["err"] += 1
            stats["last_err"] = repr(exc)[:80]
        await asyncio.sleep(0.001)


async def recreate_workers(url, js, stats, mode):
    """MM_WORKERS deleted and made again by a 'worker' while other connections look."""
    sys.path.insert(0, "src")
    from micromessaging.transports.nats import presence

    lookers = [await nats.connect(url) for _ in range(4)]

    async def look(conn):
        ljs = conn.jetstream()
        while True:
            try:
                if mode == "workers-old":
                    await ljs.get_last_msg("MM_WORKERS", "mm.workers.q0.*")
                else:
                    await presence.last_seen(ljs, "q0")
                stats["look"] = stats.get("look", 0) + 1
            except Exception as exc:
                stats["look_err"] = stats.get("look_err", 0) + 1
                stats["last_look_err"] = repr(exc)[:60]

    tasks = [asyncio.ensure_future(look(c)) for c in lookers for _ in range(5)]
    try:
        while True:
            with contextlib.suppress(Exception):
                await js.delete_stream("MM_WORKERS")
            await asyncio.sleep(0.005)
            await presence.ensure_stream(js)
            await js.publish("mm.workers.q0.w", json.dumps({"last_seen": time.time()}).encode())
            stats["recreated"] = stats.get("recreated", 0) + 1
            await asyncio.sleep(0.05)
    finally:
        for t in tasks:
            t.cancel()


if __name__ == "__main__":
    os._exit(main(sys.argv[1], float(sys.argv[2])))  # nats-py tasks linger
