"""worker --processes N: check before forking, restart with backoff, give up, drain on signal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from micromessaging.cli.exits import EXIT_WORKERS_FAILED
from micromessaging.cli.supervisor import RestartPolicy, Supervisor

ROOT = Path(__file__).resolve().parent.parent
CALCULATOR = "micromessaging.examples.calculator:Calculator"


def test_policy_backs_off_then_gives_up() -> None:
    policy = RestartPolicy(fast=10, limit=5, first_delay=0.5, max_delay=3)
    assert [policy.delay(n) for n in range(6)] == [0.0, 0.5, 1.0, 2.0, 3.0, None]


def child(script: str) -> list[str]:
    return [sys.executable, "-c", script]


async def test_a_process_that_ran_a_while_is_restarted_at_once(tmp_path, caplog) -> None:
    runs = tmp_path / "runs"
    script = (
        "import pathlib, sys, time\n"
        f"pathlib.Path({str(runs)!r}).open('a').write('run\\n')\n"
        "time.sleep(0.3)\n"
        "sys.exit(1)\n"
    )
    # "fast" is 0.1 s here: a child that lived 0.3 s ran for a while.
    supervisor = Supervisor(
        child(script), os.environ, 1, grace=1, policy=RestartPolicy(fast=0.1, first_delay=60)
    )
    caplog.set_level(logging.INFO, "micromessaging.supervisor")
    running = asyncio.create_task(supervisor.run())
    while not runs.exists() or runs.read_text().count("run") < 3:
        assert not running.done()
        await asyncio.sleep(0.02)
    supervisor.stop()
    assert await running == 0
    restarts = [r.getMessage() for r in caplog.records if "restarting" in r.getMessage()]
    assert restarts and all(message.endswith("restarting it") for message in restarts)


async def test_fast_crashes_back_off_then_give_up(caplog) -> None:
    policy = RestartPolicy(fast=30, limit=3, first_delay=0.05)
    supervisor = Supervisor(child("import sys; sys.exit(4)"), os.environ, 2, grace=1, policy=policy)
    caplog.set_level(logging.INFO, "micromessaging.supervisor")
    started = time.monotonic()
    assert await asyncio.wait_for(supervisor.run(), 60) == EXIT_WORKERS_FAILED
    assert time.monotonic() - started >= 0.05 + 0.1
    assert supervisor.failure is not None
    assert "exited 3 times in a row within 30s of starting (last exit code 4)" in (
        supervisor.failure
    )
    delays = [r.getMessage().rsplit(" ", 1)[1] for r in caplog.records if " in " in r.getMessage()]
    assert delays[:2] == ["0.05s", "0.05s"] and "0.1s" in delays


# --- the worker command, as real processes ------------------------------------------------------


def worker_command(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "micromessaging", "worker", *args],
        stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


def lines_until(process: subprocess.Popen[str], text: str, count: int = 1) -> list[str]:
    assert process.stderr is not None
    seen: list[str] = []
    for line in process.stderr:
        seen.append(line)
        if sum(text in s for s in seen) >= count:
            return seen
    raise AssertionError(f"exited without printing {text!r} {count} times:\n{''.join(seen)}")


def worker_pids(lines: list[str]) -> set[int]:
    return {int(line.split("[", 1)[1].split("]", 1)[0]) for line in lines if ": serving" in line}


def finish(process: subprocess.Popen[str], children: set[int] = frozenset()) -> str:
    """Kill what is left (the workers too: else they hold stderr open), and read the rest."""
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if process.poll() is None:
        process.kill()
    process.wait()
    assert process.stderr is not None
    rest = process.stderr.read()
    process.stderr.close()
    return rest


def test_a_target_that_does_not_import_stops_before_any_fork() -> None:
    # Nothing is forked, nor any broker reached: the URL is never used.
    process = worker_command(
        "calculater:Calculator", "--processes", "2", "-b", "redis://127.0.0.1:1"
    )
    try:
        assert process.wait(30) == 2
    finally:
        output = finish(process)
    assert output.startswith("error: cannot import 'calculater'")
    assert "restarting" not in output and "serving" not in output


def test_a_class_that_cannot_be_built_stops_before_any_fork() -> None:
    process = worker_command(
        "tests.cli_targets:Boom", "--processes", "2", "-b", "redis://127.0.0.1:1"
    )
    try:
        assert process.wait(30) == 2
    finally:
        output = finish(process)
    assert "RuntimeError: no database configured" in output and "restarting" not in output


def test_workers_that_keep_dying_are_given_up_on() -> None:
    # The broker refuses connections and the workers wait for it no time: each exits with 4.
    unreachable = "redis://127.0.0.1:1"
    process = worker_command(
        CALCULATOR, "--processes", "2", "-b", unreachable, "-q", "calc", "--wait-for-broker", "0"
    )
    try:
        assert process.wait(90) == EXIT_WORKERS_FAILED
    finally:
        output = finish(process)
    assert output.count("restarting it in") >= 4
    assert output.rstrip().splitlines()[-1] == (
        "error: giving up: worker processes exited 5 times in a row within 10s of starting "
        "(last exit code 4); see their errors above"
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_drains_every_worker_and_exits_0(
    redis_url: str, redis_queue: str, signum: int
) -> None:
    process = worker_command(CALCULATOR, "--processes", "2", "-b", redis_url, "-q", redis_queue)
    pids: set[int] = set()
    try:
        pids = worker_pids(lines_until(process, ": serving queue", count=2))
        assert len(pids) == 2 and process.pid not in pids
        process.send_signal(signum)
        assert process.wait(30) == 0
    finally:
        output = finish(process, pids)
    assert output.count("stopped serving queue") == 2
    assert "restarting" not in output


def test_workers_stop_when_their_supervisor_is_killed(redis_url: str, redis_queue: str) -> None:
    process = worker_command(CALCULATOR, "--processes", "2", "-b", redis_url, "-q", redis_queue)
    pids: set[int] = set()
    try:
        pids = worker_pids(lines_until(process, ": serving queue", count=2))
        process.kill()
        process.wait()
        # The workers notice, drain and exit: then nothing holds the pipe and it ends.
        seen = lines_until(process, "stopped serving queue", count=2)
    finally:
        finish(process, pids)
    assert sum("supervisor" in line and "gone; stopping" in line for line in seen) == 2
