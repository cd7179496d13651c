"""The seed's Ruby HTTP programs against ours, in both directions, run with `ruby`.

tests/interop/seed/http_*.rb are the blog post's programs, transcribed (each file lists its
deviations at the top). Ruby 3 with the sinatra and webrick gems is needed (.ci/run installs
the Debian packages).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from micromessaging import AsyncClient, Client, ErrorCode, RemoteError

from .seed_programs import needs_ruby

pytestmark = needs_ruby("sinatra/base")  # plain "sinatra" would start a server

SEED = Path(__file__).parent / "seed"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited early: {process.communicate()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port}")


@contextlib.contextmanager
def running(command: list[str], port: int) -> Iterator[subprocess.Popen]:
    env = {**os.environ, "PORT": str(port)}
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_listening(port, process)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout:
            process.stdout.close()


def our_worker(port: int) -> list[str]:
    return [
        sys.executable, "-m", "micromessaging", "worker",
        "micromessaging.examples.calculator:Calculator",
        "--broker", f"http://127.0.0.1:{port}", "--queue", "calc",
    ]  # fmt: skip


def test_seed_ruby_client_gets_answers_from_our_worker() -> None:
    port = free_port()
    with running(our_worker(port), port) as worker:
        result = subprocess.run(
            ["ruby", str(SEED / "http_client.rb")],
            env={**os.environ, "PORT": str(port)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "1+5.1=6.1"
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(15) == 0  # graceful stop
        output = worker.stdout.read()
    assert "serving queue 'calc'" in output
    assert f"http://127.0.0.1:{port} POST /calc" in output


async def test_our_client_gets_answers_from_the_seed_sinatra_server() -> None:
    port = free_port()
    with running(["ruby", str(SEED / "http_server.rb")], port):
        async with AsyncClient(f"http://127.0.0.1:{port}", "calc", timeout=10) as calc:
            assert await calc.add(1, 5.1) == 6.1
            assert await calc.subtract(42, 23) == 19
            assert await calc.call("add", "micro", "messaging") == "micromessaging"
        with Client(f"http://127.0.0.1:{port}", "calc", timeout=10) as calc:
            assert calc.add(1, 5.1) == 6.1
        async with AsyncClient(f"http://127.0.0.1:{port}", "nothing-here", timeout=10) as lost:
            # Sinatra answers an unknown path with an HTML 404: a transport error, not a hang
            with pytest.raises(Exception, match="404"):
                await lost.add(1, 2)


def test_our_cli_calls_the_seed_sinatra_server() -> None:
    port = free_port()
    command = [sys.executable, "-m", "micromessaging", "call", "add", "1", "5.1"]
    command += ["--broker", f"http://127.0.0.1:{port}", "--queue", "calc"]
    with running(["ruby", str(SEED / "http_server.rb")], port):
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "6.1"


async def test_our_worker_refuses_what_the_seed_server_would_run() -> None:
    """The seed's `calculator.send *args` runs any method; ours answers Method not found."""
    port = free_port()
    with running(our_worker(port), port):
        async with AsyncClient(f"http://127.0.0.1:{port}", "calc", timeout=10) as calc:
            with pytest.raises(RemoteError) as caught:
                await calc.call("instance_eval", "`id`")
            assert caught.value.code == ErrorCode.METHOD_NOT_FOUND
