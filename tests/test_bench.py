"""micromessaging bench: what it calls, what it prints, writes and plots, and for which broker."""

from __future__ import annotations

import csv
import socket
import sys
import uuid

import orjson
import pytest
import redis
from click.testing import CliRunner

from micromessaging._settings import BROKER_VARIABLES
from micromessaging.bench import BrokerRun, LevelResult
from micromessaging.cli import main
from micromessaging.cli.bench_report import labels, milliseconds, table, title_lines

QUICK = ["--calls", "40", "--in-flight", "1,4"]


@pytest.fixture(autouse=True)
def no_broker_in_the_environment(monkeypatch) -> None:
    for name in BROKER_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def bench(*args: str):
    return CliRunner().invoke(main, ["bench", *args])


def test_without_a_broker_it_measures_memory_and_says_so() -> None:
    result = bench(*QUICK)
    assert result.exit_code == 0, result.output
    assert "no --broker given: measuring the in-process memory:// transport" in result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "micromessaging bench: memory:// (in-process; no --broker given)"
    assert lines[1].startswith("Calculator.add(1, 5.1) x 40 per level; 1 in-process worker")
    assert all(len(line) <= 80 for line in lines)
    assert [line.split()[0] for line in lines[-2:]] == ["1", "4"]


def test_json_figures() -> None:
    result = bench("--broker", "memory://user:secret@x", *QUICK, "--json")
    assert result.exit_code == 0, result.output
    figures = orjson.loads(result.stdout)
    assert figures["service"] == "calculator" and figures["call"] == "Calculator.add(1, 5.1)"
    (run,) = figures["runs"]
    assert run["broker"] == "memory://user:****@x"
    assert [level["in_flight"] for level in run["results"]] == [1, 4]
    for level in run["results"]:
        assert level["calls"] == 40 and level["errors"] == 0
        assert level["calls_per_second"] > 0 and 0 < level["p50_ms"] <= level["p99_ms"]
    assert "secret" not in result.output


def test_async_service_and_payload() -> None:
    result = bench("-b", "memory://", *QUICK, "--service", "async", "--payload", "100")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1].startswith("BenchService.echo(<100 bytes>) x 40")
    plain = bench("-b", "memory://", *QUICK, "--service", "async")
    assert plain.stdout.splitlines()[1].startswith("BenchService.add(1, 5.1)")


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["--payload", "10"], "--payload calls echo(), which only --service async offers"),
        (["--in-flight", "1,x"], "a comma-separated list of integers"),
        (["--in-flight", "0"], "at least 1"),
        (["-c", "1,16"], "'1,16' is not a valid integer"),
        (["--workers", "0"], "name it"),
        (["--plot", "figures.pdf"], "--plot writes .png or .svg files, not 'figures.pdf'"),
    ],
)
def test_bad_usage_stops_before_measuring(args: list[str], text: str) -> None:
    result = bench("-b", "memory://", *args)
    assert result.exit_code == 2
    assert text in result.stderr


def test_brokers_side_by_side_in_80_columns(tmp_path) -> None:
    figures = tmp_path / "figures.csv"
    brokers = ["-b", "memory://one", "-b", "memory://two", "-b", "memory://three"]
    result = bench(*brokers, *QUICK, "--csv", str(figures))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "micromessaging bench: memory#1, memory#2, memory#3"
    assert lines[1:4] == ["  memory#1  memory://one", "  memory#2  memory://two",
                          "  memory#3  memory://three"]  # fmt: skip
    assert "1 worker each" in lines[4]
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    assert [name in lines[6] for name in ("memory#1", "memory#2", "memory#3")] == [True] * 3
    assert lines[7].split() == ["in", "flight"] + ["calls/s", "p50", "ms", "p99", "ms"] * 3
    with figures.open() as file:
        rows = list(csv.DictReader(file))
    assert [(r["label"], r["in_flight"]) for r in rows] == [
        (name, level) for name in ("memory#1", "memory#2", "memory#3") for level in ("1", "4")
    ]
    assert rows[0]["broker"] == "memory://one" and rows[0]["call"] == "Calculator.add(1, 5.1)"
    assert float(rows[0]["calls_per_second"]) > 0 and rows[0]["errors"] == "0"


def test_the_table_stays_in_80_columns_with_big_figures() -> None:
    result = LevelResult(64, 10**6, 0, 20.0, 123456.0, 1234.5, 98765.4)
    runs = [
        BrokerRun(f"amqp://guest:guest@{'a' * 90}.example.com:5672/", "q", 16, 64, [result]),
        BrokerRun("redis://:pass@127.0.0.1:6379/0", "q", 16, 64, [result]),
        BrokerRun("http://127.0.0.1:8001", "q", 16, 64, [result]),
    ]
    text = table(runs, title_lines(runs, "Calculator.add(1, 5.1)", 10**6))
    assert all(len(line) <= 80 for line in text.splitlines()), text
    assert "guest:****@" in text and "pass" not in text


def test_failed_calls_are_counted_below_the_table() -> None:
    runs = [BrokerRun("redis://h", "q", 1, 64, [LevelResult(16, 100, 3, 1.0, 100.0, 1.0, 2.0)])]
    text = table(runs, title_lines(runs, "Calculator.add(1, 5.1)", 100))
    assert text.splitlines()[-1] == "redis: 3 of 100 calls failed at 16 in flight"


def test_labels_and_milliseconds() -> None:
    assert labels(["redis://a", "amqp://b", "redis://c"]) == ["redis#1", "amqp", "redis#2"]
    assert [milliseconds(v) for v in (0.4123, 12.345, 123.45, 12345.6)] == [
        "0.412", "12.35", "123.5", "12,346"]  # fmt: skip


@pytest.mark.parametrize("extension", ["png", "svg"])
def test_plot(tmp_path, extension: str) -> None:
    plot = tmp_path / f"latency.{extension}"
    result = bench("-b", "memory://a", "-b", "memory://b", *QUICK, "--plot", str(plot))
    assert result.exit_code == 0, result.output
    head = plot.read_bytes()[:200]
    assert head.startswith(b"\x89PNG") if extension == "png" else b"<svg" in head


def test_plot_without_matplotlib_names_the_extra(tmp_path, monkeypatch) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = bench("-b", "memory://", *QUICK, "--plot", str(tmp_path / "latency.png"))
    assert result.exit_code == 2
    assert result.stderr == (
        "error: --plot needs the 'matplotlib' package: pip install \"micromessaging[plot]\"\n"
    )
    assert result.stdout == ""  # nothing measured


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_real_brokers_side_by_side_with_worker_processes(redis_url: str) -> None:
    queue = f"mm-bench-test-{uuid.uuid4().hex[:8]}"
    http = f"http://127.0.0.1:{free_port()}"
    result = bench("-b", redis_url, "-b", http, *QUICK, "--queue", queue, "--json")
    assert result.exit_code == 0, result.output
    runs = orjson.loads(result.stdout)["runs"]
    assert [run["broker"] for run in runs] == [redis_url, http]
    assert all(level["errors"] == 0 for run in runs for level in run["results"])
    # Nothing of the run is left on Redis but what expires by itself (the queue's last-seen
    # time, docs/wire-redis.md).
    client = redis.Redis.from_url(redis_url)
    try:
        left = [key for key in client.scan_iter(match=f"*{queue}*") if client.pttl(key) < 0]
        assert left == []
    finally:
        client.close()


def test_the_benchmarks_tables_fit_80_columns_and_say_pass_or_miss(capsys) -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "_harness.py"
    spec = importlib.util.spec_from_file_location("_bench_harness", path)
    assert spec is not None and spec.loader is not None
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    harness.table(
        "Redis",
        [
            ("async service, Client, sequential", harness.us(0.000363), harness.us(0.000227),
             1.51, "<= 1.0x", False),
            ("AsyncClient, 64 in flight", harness.rate(123_456.0), harness.rate(4_404.0), 28.03,
             ">= 8x", True),
            ("AsyncClient, sequential", harness.us(0.00035), harness.us(0.000227), 1.44, "", None),
        ],
    )  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert lines[-3].endswith("MISS") and lines[-2].endswith("PASS")
    assert lines[-1].endswith("1.44x")
    assert "363 us" in lines[-3] and "123,456/s" in lines[-2]
