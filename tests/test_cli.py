"""The command line, driven in-process (click's runner) and as a real process for signals."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import orjson
import pytest
from click.testing import CliRunner

from micromessaging import Worker
from micromessaging.cli import main, params_from_args, parse_arg
from micromessaging.examples.calculator import Calculator


class Typed:
    def add(self, a: float, b: float) -> float:
        """Add two numbers."""
        return a + b

    def greet(self, name: str, punctuation: str = "!") -> str:
        return f"hello {name}{punctuation}"

    def slow(self, seconds: float) -> None:
        time.sleep(seconds)


@pytest.fixture
def served() -> Iterator[str]:
    """A memory:// worker on a background loop; the CLI runs in this process."""
    url = f"memory://cli-{uuid.uuid4().hex[:8]}"
    loop = asyncio.new_event_loop()
    worker = Worker(Typed(), url, "typed")
    thread = threading.Thread(target=loop.run_until_complete, args=(worker.run(),), daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(worker.started(), loop).result(5)
    yield url
    loop.call_soon_threadsafe(worker.stop)
    thread.join(5)
    loop.close()


def test_args_are_json_when_they_parse() -> None:
    assert [parse_arg(a) for a in ["1", "5.1", "true", "null", '"x"', "[1]", "word"]] == [
        1, 5.1, True, None, "x", [1], "word"]  # fmt: skip
    assert params_from_args(("1", "hi")) == [1, "hi"]
    assert params_from_args(("a=1", "b=x")) == {"a": 1, "b": "x"}
    assert params_from_args(('"a=b"',)) == ["a=b"]
    assert params_from_args(()) is None


def test_call_prints_the_result(served: str) -> None:
    result = CliRunner().invoke(main, ["call", "add", "1", "5.1", "-b", served, "-q", "typed"])
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.output) == 6.1


def test_call_with_named_params_and_env_broker(served: str) -> None:
    result = CliRunner().invoke(
        main, ["call", "greet", "name=world", "punctuation=?", "-q", "typed"],
        env={"MICROMESSAGING_BROKER": served},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.output) == "hello world?"


def test_call_remote_error_goes_to_stderr(served: str) -> None:
    result = CliRunner().invoke(main, ["call", "add", "1", "--broker", served, "-q", "typed"])
    assert result.exit_code == 1
    assert "error -32602: Invalid params" in result.stderr
    assert "missing required param 'b'" in result.stderr
    assert result.stdout == ""


def test_call_timeout_exit_code(served: str) -> None:
    result = CliRunner().invoke(
        main, ["call", "slow", "1", "--broker", served, "-q", "typed", "--timeout", "0.2"]
    )
    assert result.exit_code == 3
    assert "timeout" in result.stderr


def test_call_mixing_params_is_a_usage_error(served: str) -> None:
    result = CliRunner().invoke(main, ["call", "add", "1", "b=2", "-b", served, "-q", "typed"])
    assert result.exit_code == 2
    assert "positional and key=value" in result.output


def test_notify(served: str) -> None:
    result = CliRunner().invoke(
        main, ["call", "greet", "x", "--notify", "-b", served, "-q", "typed"]
    )
    assert result.exit_code == 0
    assert result.output == ""


def test_describe_lists_signatures(served: str) -> None:
    result = CliRunner().invoke(main, ["describe", "--broker", served, "-q", "typed"])
    assert result.exit_code == 0, result.output
    assert "add(a: number, b: number) -> number" in result.output
    assert "Add two numbers." in result.output
    assert "greet(name: string, punctuation: string = '!') -> string" in result.output
    as_json = CliRunner().invoke(main, ["describe", "--broker", served, "-q", "typed", "--json"])
    assert orjson.loads(as_json.output)["info"]["title"] == "Typed"


def test_demo_prints_the_seed_line() -> None:
    result = CliRunner().invoke(main, ["demo"])
    assert result.exit_code == 0
    assert result.output == "1+5.1=6.1\n"


def test_bench_json() -> None:
    result = CliRunner().invoke(
        main, ["bench", "--broker", "memory://", "--calls", "300", "--concurrency", "1,8",
               "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    figures = orjson.loads(result.stdout)
    assert [r["concurrency"] for r in figures["results"]] == [1, 8]
    for level in figures["results"]:
        assert level["calls"] == 300 and level["errors"] == 0
        assert level["calls_per_second"] > 0 and 0 < level["p50_ms"] <= level["p99_ms"]


def test_bench_rejects_bad_levels() -> None:
    result = CliRunner().invoke(main, ["bench", "--broker", "memory://", "-c", "1,x"])
    assert result.exit_code == 2


def test_worker_without_broker_says_how_to_give_one(monkeypatch) -> None:
    for name in ("MICROMESSAGING_BROKER", "REDIS_URL", "CLOUDAMQP_URL", "RABBITMQ_URL"):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(main, ["worker", "micromessaging.examples.calculator:Calculator"])
    assert result.exit_code == 2
    assert "MICROMESSAGING_BROKER" in result.output


def test_worker_target_errors() -> None:
    result = CliRunner().invoke(main, ["worker", "no_such_module:X", "-b", "memory://"])
    assert result.exit_code == 2 and "cannot import" in result.output
    result = CliRunner().invoke(
        main, ["worker", "micromessaging.examples.calculator:Nope", "-b", "memory://"]
    )
    assert result.exit_code == 2 and "no attribute" in result.output


def start_worker(*extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "micromessaging", "worker",
         "micromessaging.examples.calculator:Calculator", *extra],
        stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def wait_for_line(process: subprocess.Popen[str], text: str) -> str:
    assert process.stderr is not None
    for line in process.stderr:
        if text in line:
            return line
    raise AssertionError(f"the worker exited without printing {text!r}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_worker_process_stops_cleanly_on_signal(signum: int) -> None:
    process = start_worker("--broker", "memory://user:hunter2@demo", "--queue", "calc")
    try:
        line = wait_for_line(process, "serving queue")
        assert "'calc'" in line and "add, subtract" in line
        assert "hunter2" not in line and "****" in line
        process.send_signal(signum)
        assert process.wait(10) == 0
    finally:
        process.kill()
        process.wait()
        assert process.stderr is not None
        process.stderr.close()


def test_worker_queue_defaults_to_the_class_name() -> None:
    process = start_worker("--broker", "memory://")
    try:
        assert "'calculator'" in wait_for_line(process, "serving queue")
        process.terminate()
        assert process.wait(10) == 0
    finally:
        process.kill()
        process.wait()
        assert process.stderr is not None
        process.stderr.close()


def test_seed_calculator_needs_no_import_from_us() -> None:
    source = inspect.getsource(sys.modules[Calculator.__module__])
    assert "import" not in source
