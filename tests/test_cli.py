"""The command line, driven in-process (click's runner) and as real processes for signals."""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import click
import orjson
import pytest
from click.testing import CliRunner

from micromessaging import Worker, transports
from micromessaging.cli import main
from micromessaging.cli.call import params_from_args, parse_arg
from micromessaging.examples.calculator import Calculator

ROOT = Path(__file__).resolve().parent.parent


class Typed:
    def add(self, a: float, b: float) -> float:
        """Add two numbers."""
        return a + b

    def greet(self, name: str, punctuation: str = "!") -> str:
        return f"hello {name}{punctuation}"

    def slow(self, seconds: float) -> None:
        time.sleep(seconds)

    def fail(self) -> None:
        raise ValueError("boom")


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


def invoke(*args: str, **kwargs: object) -> click.testing.Result:
    return CliRunner().invoke(main, list(args), **kwargs)  # type: ignore[arg-type]


# --- call and describe -------------------------------------------------------------------------


def test_args_are_json_when_they_parse() -> None:
    assert [parse_arg(a) for a in ["1", "5.1", "-5", "true", "null", '"x"', "[1]", "word"]] == [
        1, 5.1, -5, True, None, "x", [1], "word"]  # fmt: skip
    assert params_from_args(("1", "hi")) == [1, "hi"]
    assert params_from_args(("a=1", "b=x")) == {"a": 1, "b": "x"}
    assert params_from_args(('"a=b"',)) == ["a=b"]
    assert params_from_args(()) is None


def test_call_prints_the_result(served: str) -> None:
    result = invoke("call", "add", "1", "5.1", "-b", served, "-q", "typed")
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.output) == 6.1


def test_call_takes_negative_numbers(served: str) -> None:
    result = invoke("call", "add", "-5", "3", "-b", served, "-q", "typed")
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.output) == -2


def test_call_refuses_an_unknown_option_rather_than_send_it(served: str) -> None:
    result = invoke("call", "greet", "x", "-n", "-b", served, "-q", "typed")
    assert result.exit_code == 2
    assert "no such option: -n" in result.stderr
    assert "'\"-n\"'" in result.stderr  # how to send it as a string


def test_call_with_named_params_and_env_broker(served: str) -> None:
    result = invoke(
        "call", "greet", "name=world", "punctuation=?", "-q", "typed",
        env={"MICROMESSAGING_BROKER": served},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.output) == "hello world?"


def test_call_remote_error_goes_to_stderr(served: str) -> None:
    result = invoke("call", "add", "1", "--broker", served, "-q", "typed")
    assert result.exit_code == 1
    assert "error -32602: Invalid params: missing required param 'b'" in result.stderr
    assert result.stdout == ""


def test_call_unknown_method_names_it_and_what_the_queue_offers(served: str) -> None:
    result = invoke("call", "mul", "2", "3", "--broker", served, "-q", "typed")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error -32601: Method not found: no method 'mul'; "
        "this service offers: add, fail, greet, slow"
    )


def test_call_server_error_names_the_exception_type(served: str) -> None:
    result = invoke("call", "fail", "--broker", served, "-q", "typed")
    assert result.exit_code == 1
    assert result.stderr.strip() == "error -32000: Server error: ValueError: boom"


def test_call_timeout_exit_code(served: str) -> None:
    result = invoke("call", "slow", "1", "--broker", served, "-q", "typed", "--timeout", "0.2")
    assert result.exit_code == 3
    assert result.stderr.startswith("timeout: no reply to slow from queue 'typed'")


def test_call_unreachable_broker_exit_code() -> None:
    result = invoke("call", "add", "1", "2", "--broker", "redis://127.0.0.1:1", "-q", "calc")
    assert result.exit_code == 4
    assert result.stderr.startswith("error: ") and "127.0.0.1:1" in result.stderr


def test_call_no_workers_exit_code_names_the_queue(monkeypatch) -> None:
    monkeypatch.setitem(transports.SCHEMES, "nobody", ("tests.fake_transports", None))
    result = invoke("call", "add", "1", "2", "--broker", "nobody://:secret@host", "-q", "calc")
    assert result.exit_code == 5
    assert result.stderr.strip() == (
        "error: no worker serves queue 'calc': no consumer on nobody://:****@host; "
        "start one: micromessaging worker MODULE:ATTR --queue calc"
    )


def test_call_mixing_params_is_a_usage_error(served: str) -> None:
    result = invoke("call", "add", "1", "b=2", "-b", served, "-q", "typed")
    assert result.exit_code == 2
    assert "positional and key=value" in result.output


def test_notify(served: str) -> None:
    result = invoke("call", "greet", "x", "--notify", "-b", served, "-q", "typed")
    assert result.exit_code == 0
    assert result.output == ""


def test_describe_lists_signatures(served: str) -> None:
    result = invoke("describe", "--broker", served, "-q", "typed")
    assert result.exit_code == 0, result.output
    assert "add(a: number, b: number) -> number" in result.output
    assert "Add two numbers." in result.output
    assert "greet(name: string, punctuation: string = '!') -> string" in result.output
    as_json = invoke("describe", "--broker", served, "-q", "typed", "--json")
    assert orjson.loads(as_json.output)["info"]["title"] == "Typed"


def test_demo_prints_the_seed_line() -> None:
    result = invoke("demo")
    assert result.exit_code == 0
    assert result.output == "1+5.1=6.1\n"


# --- conventions: options, variables, exit codes -------------------------------------------------


def commands(group: click.Group = main, path: tuple[str, ...] = ()) -> Iterator[tuple]:
    for name, command in group.commands.items():
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))


def options_of(command: click.Command) -> list[click.Option]:
    return [
        p for p in command.params
        if isinstance(p, click.Option) and p.name not in ("help", "version")
    ]  # fmt: skip


def test_every_option_reads_a_variable_that_help_names() -> None:
    for path, command in commands():
        help_text = " ".join(invoke(*path, "--help").output.split())
        for option in options_of(command):
            assert option.envvar, f"{' '.join(path)} {option.opts[0]} reads no variable"
            variables = [option.envvar] if isinstance(option.envvar, str) else option.envvar
            assert variables[0] in help_text, f"{' '.join(path)} --help: {variables[0]}"


def test_one_meaning_per_option_name() -> None:
    """A name (long or short) stands for one setting, of one type, in every command."""
    meanings: dict[str, set[tuple[str | None, str]]] = {}
    for _, command in commands():
        for option in options_of(command):
            for name in option.opts:
                meanings.setdefault(name, set()).add((option.name, type(option.type).__name__))
    assert {name: kinds for name, kinds in meanings.items() if len(kinds) > 1} == {}
    assert "--workers" not in {o for _, c in commands() if c.name == "gateway" for o in
                               (n for p in options_of(c) for n in p.opts)}  # fmt: skip


def test_main_help_lists_the_exit_codes() -> None:
    text = " ".join(invoke("--help").output.split())
    for code in ("1 the service answered an error", "3 timeout", "4 broker unreachable",
                 "5 no worker serves the queue", "130 interrupted"):  # fmt: skip
        assert code in text


# --- worker --------------------------------------------------------------------------------------


def test_worker_without_broker_says_how_to_give_one(monkeypatch) -> None:
    for name in ("MICROMESSAGING_BROKER", "REDIS_URL", "CLOUDAMQP_URL", "RABBITMQ_URL"):
        monkeypatch.delenv(name, raising=False)
    result = invoke("worker", "micromessaging.examples.calculator:Calculator")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: no broker given") and "MICROMESSAGING_BROKER" in (
        result.stderr
    )


def test_worker_target_errors() -> None:
    result = invoke("worker", "no_such_module:X", "-b", "memory://")
    assert result.exit_code == 2 and "cannot import 'no_such_module'" in result.stderr
    result = invoke("worker", "micromessaging.examples.calculator:Nope", "-b", "memory://")
    assert result.exit_code == 2
    assert "has no attribute 'Nope'" in result.stderr


def test_worker_suggests_what_a_typo_meant(tmp_path, monkeypatch) -> None:
    (tmp_path / "calculator.py").write_text(inspect.getsource(sys.modules[Calculator.__module__]))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    result = invoke("worker", "calculater:Calculator", "-b", "memory://")
    assert result.exit_code == 2
    assert "did you mean 'calculator'?" in result.stderr
    result = invoke("worker", "calculator:Calculater", "-b", "memory://")
    assert "did you mean 'Calculator'?" in result.stderr


def test_worker_shows_what_a_module_raised_on_import(tmp_path, monkeypatch) -> None:
    (tmp_path / "broken_service.py").write_text("1 / 0\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    result = invoke("worker", "broken_service:Anything", "-b", "memory://")
    assert result.exit_code == 2
    assert "cannot import 'broken_service': ZeroDivisionError: division by zero" in result.stderr


def test_worker_module_without_functions_suggests_its_classes() -> None:
    result = invoke("worker", "micromessaging.examples.calculator", "-b", "memory://")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: module 'micromessaging.examples.calculator' defines no functions to serve; "
        "to serve a class, name it: micromessaging.examples.calculator:Calculator"
    )


def test_worker_class_that_cannot_be_built() -> None:
    result = invoke("worker", "tests.cli_targets:Boom", "-b", "memory://")
    assert result.exit_code == 2
    assert "cannot serve 'tests.cli_targets:Boom': RuntimeError: no database configured" in (
        result.stderr
    )


def test_worker_unknown_scheme_is_found_before_serving() -> None:
    result = invoke("worker", "micromessaging.examples.calculator:Calculator", "-b", "mqtt://x")
    assert result.exit_code == 2
    assert "unknown broker URL scheme" in result.stderr


def run_cli(*args: str, **kwargs: object) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "micromessaging", *args],
        stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT, **kwargs,  # type: ignore[call-overload]
    )  # fmt: skip


def start_worker(*extra: str, target: str = "micromessaging.examples.calculator:Calculator"):
    return run_cli("worker", target, *extra)


def wait_for_line(process: subprocess.Popen[str], text: str) -> str:
    assert process.stderr is not None
    for line in process.stderr:
        if text in line:
            return line
    raise AssertionError(f"the process exited without printing {text!r}")


def finish(*processes: subprocess.Popen[str]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait()
        if process.stderr is not None:
            process.stderr.close()


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
        finish(process)


def test_worker_queue_defaults_to_the_class_name() -> None:
    process = start_worker("--broker", "memory://")
    try:
        assert "'calculator'" in wait_for_line(process, "serving queue")
        process.terminate()
        assert process.wait(10) == 0
    finally:
        finish(process)


def test_worker_second_signal_abandons_the_drain_and_exits_130(
    redis_url: str, redis_queue: str
) -> None:
    broker = ["--broker", redis_url, "--queue", redis_queue]
    worker = start_worker(*broker, "--grace", "60", target="tests.cli_targets:Sleepy")
    caller = None
    try:
        wait_for_line(worker, "serving queue")
        caller = run_cli("call", "nap", "60", *broker)
        wait_for_line(worker, "nap started")
        worker.send_signal(signal.SIGINT)
        wait_for_line(worker, "finishing 1 calls in flight")
        worker.send_signal(signal.SIGINT)
        assert worker.wait(15) == 130
    finally:
        finish(worker, *([caller] if caller else []))


def test_ctrl_c_on_call_exits_130(redis_url: str, redis_queue: str) -> None:
    broker = ["--broker", redis_url, "--queue", redis_queue]
    worker = start_worker(*broker, "--grace", "0", target="tests.cli_targets:Sleepy")
    caller = None
    try:
        wait_for_line(worker, "serving queue")
        caller = run_cli("call", "nap", "60", *broker)
        wait_for_line(worker, "nap started")
        caller.send_signal(signal.SIGINT)
        assert caller.wait(15) == 130
        assert caller.stderr is not None
        assert caller.stderr.read().strip().endswith("interrupted")
        worker.terminate()
        assert worker.wait(15) == 0
    finally:
        finish(worker, *([caller] if caller else []))


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_worker_serves_on_the_loop_asked_for_and_names_it(
    loop: str, redis_url: str, redis_queue: str
) -> None:
    pytest.importorskip("uvloop")
    broker = ["--broker", redis_url, "--queue", redis_queue]
    worker = start_worker(*broker, "--loop", loop)
    try:
        assert f"{loop} loop" in wait_for_line(worker, "serving queue")
        answered = subprocess.run(
            [sys.executable, "-m", "micromessaging", "call", "add", "1", "5.1", *broker],
            capture_output=True, text=True, timeout=30, cwd=ROOT,
        )  # fmt: skip
        assert answered.stdout.strip() == "6.1", answered.stderr
        worker.terminate()
        assert worker.wait(15) == 0
    finally:
        finish(worker)


def test_worker_loop_defaults_to_uvloop_when_installed() -> None:
    pytest.importorskip("uvloop")
    process = start_worker("--broker", "memory://")
    try:
        assert "uvloop loop" in wait_for_line(process, "serving queue")
        process.terminate()
        assert process.wait(10) == 0
    finally:
        finish(process)


@pytest.mark.parametrize("command", ["worker", "gateway"])
def test_loop_uvloop_without_uvloop_says_what_to_install(
    command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # importing it now raises ImportError
    target = ["micromessaging.examples.calculator:Calculator"] if command == "worker" else []
    result = invoke(command, *target, "--broker", "memory://", "--loop", "uvloop")
    assert result.exit_code == 2
    assert "pip install 'micromessaging[uvloop]'" in result.stderr


def test_seed_calculator_needs_no_import_from_us() -> None:
    source = inspect.getsource(sys.modules[Calculator.__module__])
    assert "import" not in source


# --- gateway without its extra --------------------------------------------------------------------

WITHOUT_HTTP = (
    "import sys\n"
    "for name in ('uvicorn', 'httptools'):\n"
    "    sys.modules[name] = None  # as if the http extra were not installed\n"
    "from micromessaging.cli import main\n"
    "main()\n"
)


def run_without_http(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_HTTP, *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip


def test_gateway_without_the_http_extra_names_it() -> None:
    result = run_without_http("gateway", "--broker", "redis://localhost")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: the gateway needs the 'uvicorn' package: pip install \"micromessaging[http]\""
    ]
    # Making tokens needs no HTTP server: it works without the extra.
    token = run_without_http("gateway", "hash-token", "--new")
    assert token.returncode == 0, token.stderr
    assert len(token.stdout.strip()) == 64  # the SHA-256 a tokens file stores


def test_the_other_commands_work_without_the_http_extra() -> None:
    result = run_without_http("demo")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "1+5.1=6.1\n"


def test_readme_lists_the_exit_codes_and_options_there_are() -> None:
    from micromessaging.cli import exits

    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Exit codes", 1)[1].split("###", 1)[0]
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", section, flags=re.MULTILINE)}
    defined = {value for name, value in vars(exits).items() if name.startswith("EXIT_")}
    assert documented == defined | {0}
    every_option = {name for _, c in commands() for o in options_of(c) for name in o.opts}
    cli_section = readme.split("## Command line", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`(--[a-z-]+)", cli_section))
    assert named <= every_option, named - every_option
