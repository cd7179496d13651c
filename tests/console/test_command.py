"""``micromessaging console`` as a real process: it serves, says where, and stops on a signal."""

from __future__ import annotations

import re
import signal

import httpx
from click.testing import CliRunner

from micromessaging.cli import main
from tests.test_cli import finish, run_cli, wait_for_line


def test_the_console_serves_on_loopback_and_stops_on_sigterm() -> None:
    process = run_cli("console", "--broker", "memory://user:hunter2@ops", "--port", "0")
    try:
        line = wait_for_line(process, "micromessaging console on")
        assert "hunter2" not in line and "****" in line
        base = re.search(r"http://127\.0\.0\.1:\d+", line).group(0)
        with httpx.Client(base_url=base) as client:
            assert client.get("/").status_code == 200
            status = client.get("/api/status").json()
            assert status["queues"] == [] and status["error"] is None
            # Another name for this machine is refused: a page of another site can't read it.
            assert client.get("/", headers={"host": "rebound.example"}).status_code == 403
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        finish(process)


def test_listening_beyond_loopback_warns_that_there_is_no_login() -> None:
    process = run_cli("console", "--broker", "memory://", "--host", "0.0.0.0", "--port", "0")
    try:
        wait_for_line(process, "micromessaging console on http://0.0.0.0:")
        assert "asks no login" in wait_for_line(process, "warning:")
        process.send_signal(signal.SIGINT)
        assert process.wait(10) == 0
    finally:
        finish(process)


def test_a_broker_without_an_admin_side_is_a_usage_error(monkeypatch) -> None:
    from micromessaging import transports

    monkeypatch.setitem(transports.SCHEMES, "nobody", ("tests.fake_transports", None))
    result = CliRunner().invoke(main, ["console", "--broker", "nobody://host"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: nobody:// offers no status or dead letters"


def test_a_busy_port_is_a_usage_error() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["console", "-b", "memory://", "--port", str(port)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}")


def test_without_the_http_extra_the_console_names_it() -> None:
    from tests.test_cli import run_without_http

    result = run_without_http("console", "--broker", "memory://")
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert re.fullmatch(
        r"error: the console needs the '(uvicorn|httptools)' package: "
        r'pip install "micromessaging\[http\]"',
        line,
    )
