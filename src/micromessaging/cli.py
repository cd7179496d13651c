"""The command line: worker, call, describe, bench, demo, gateway.

Every option has an environment variable (shown in ``--help``); the broker also falls back
to the platforms' own variables (REDIS_URL, CLOUDAMQP_URL, RABBITMQ_URL).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from typing import Any

import click
import orjson

from . import __version__
from ._client import AsyncClient
from ._exceptions import (
    CallTimeout,
    ConfigurationError,
    MicromessagingError,
    RemoteError,
    TransportError,
)
from ._openrpc import signature_line
from ._protocol import DEFAULT_MAX_MESSAGE_SIZE, DecodeError, loads
from ._settings import resolve_broker
from ._sync_client import Client
from ._worker import Worker

EXIT_REMOTE_ERROR = 1
EXIT_TIMEOUT = 3
EXIT_TRANSPORT_ERROR = 4

_NAMED_ARG = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.DOTALL)

broker_option = click.option(
    "--broker",
    "-b",
    envvar="MICROMESSAGING_BROKER",
    help="Broker URL: redis://, rediss://, amqp://, amqps://, http://, memory:// "
    "[default: $MICROMESSAGING_BROKER, else $REDIS_URL, $CLOUDAMQP_URL, $RABBITMQ_URL]",
)
queue_option = click.option(
    "--queue", "-q", envvar="MICROMESSAGING_QUEUE", required=True, help="The service's queue."
)
timeout_option = click.option(
    "--timeout",
    "-t",
    envvar="MICROMESSAGING_TIMEOUT",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds to wait for a reply.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="micromessaging")
def main() -> None:
    """JSON-RPC 2.0 between services over Redis, RabbitMQ, HTTP or in-process."""


# --- worker ----------------------------------------------------------------------------------


def load_target(spec: str) -> object:
    """Import ``module:attr`` (attr may be dotted; without it, the module itself)."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like uvicorn: serve code from where you stand
    module_name, _, attr = spec.partition(":")
    try:
        target: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(f"cannot import {module_name!r}: {exc}") from exc
    for part in attr.split(".") if attr else ():
        try:
            target = getattr(target, part)
        except AttributeError:
            raise click.BadParameter(f"{module_name!r} has no attribute {attr!r}") from None
    return target


@main.command()
@click.argument("target", metavar="MODULE:ATTR")
@broker_option
@click.option(
    "--queue",
    "-q",
    envvar="MICROMESSAGING_QUEUE",
    help="Queue to serve [default: the class's name, lower-cased].",
)
@click.option(
    "--concurrency",
    "-c",
    envvar="MICROMESSAGING_CONCURRENCY",
    default=16,
    show_default=True,
    type=click.IntRange(min=1),
    help="Calls run at once.",
)
@click.option(
    "--processes",
    "-p",
    envvar="MICROMESSAGING_PROCESSES",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Worker processes to run on this machine (restarted if they die).",
)
@click.option(
    "--max-deliveries",
    envvar="MICROMESSAGING_MAX_DELIVERIES",
    default=3,
    show_default=True,
    type=click.IntRange(min=1),
    help="Deliveries of one request before it is dead-lettered.",
)
@click.option(
    "--grace",
    envvar="MICROMESSAGING_GRACE",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds to finish calls in flight on stop.",
)
@click.option(
    "--max-message-size",
    envvar="MICROMESSAGING_MAX_MESSAGE_SIZE",
    default=DEFAULT_MAX_MESSAGE_SIZE,
    show_default=True,
    type=click.IntRange(min=1),
    help="Largest request accepted, in bytes.",
)
@click.option(
    "--debug",
    envvar="MICROMESSAGING_DEBUG",
    is_flag=True,
    help="Send tracebacks to callers in error data.",
)
@click.option(
    "--log-level",
    envvar="MICROMESSAGING_LOG_LEVEL",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
)
def worker(
    target: str,
    broker: str | None,
    queue: str | None,
    concurrency: int,
    processes: int,
    max_deliveries: int,
    grace: float,
    max_message_size: int,
    debug: bool,
    log_level: str,
) -> None:
    """Serve MODULE:ATTR (a class, which is instantiated, or an object) on a queue.

    SIGTERM or SIGINT: stop taking requests, finish those in flight, exit 0.
    """
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )
    if processes > 1:
        sys.exit(_supervise(processes, grace))
    obj = load_target(target)
    try:
        broker_url = resolve_broker(broker)
        if queue is None and isinstance(obj, type):
            queue = obj.__name__.lower()
        instance = Worker(
            obj,
            broker_url,
            queue,
            concurrency=concurrency,
            max_deliveries=max_deliveries,
            grace=grace,
            max_message_size=max_message_size,
            debug=debug,
        )
        asyncio.run(_serve(instance))
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from exc
    except TransportError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_TRANSPORT_ERROR)


async def _serve(instance: Worker) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, instance.stop)
    await instance.run()


def _supervise(count: int, grace: float) -> int:
    """Run `count` copies of this worker command and restart any that dies."""
    command = [sys.executable, "-m", "micromessaging", *sys.argv[1:], "--processes", "1"]
    children = [subprocess.Popen(command) for _ in range(count)]
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping:
        for index, child in enumerate(children):
            if child.poll() is not None and not stopping:
                logging.warning(
                    "worker process %d exited (%s); restarting it", child.pid, child.returncode
                )
                children[index] = subprocess.Popen(command)
        time.sleep(0.5)
    deadline = time.monotonic() + grace + 5
    codes = []
    for child in children:
        try:
            codes.append(child.wait(timeout=max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            child.kill()
            codes.append(child.wait())
    return 0 if all(code == 0 for code in codes) else 1


# --- call and describe -----------------------------------------------------------------------


def parse_arg(text: str) -> Any:
    """A JSON literal when `text` parses as one, else the string itself."""
    try:
        return loads(text)
    except DecodeError:
        return text


def params_from_args(args: tuple[str, ...]) -> list[Any] | dict[str, Any] | None:
    """Positional params, or named ones when every ARG is ``key=value``."""
    named = [_NAMED_ARG.match(arg) for arg in args]
    if args and all(named):
        return {m.group(1): parse_arg(m.group(2)) for m in named if m}
    if any(named):
        raise click.UsageError(
            "mix of positional and key=value arguments: JSON-RPC takes one or the other "
            "(quote a string containing '=' as JSON: '\"a=b\"')"
        )
    return [parse_arg(arg) for arg in args] or None


def _print_json(value: Any) -> None:
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))


def _run_client(broker: str | None, queue: str, timeout: float, action: Any) -> Any:
    try:
        with Client(resolve_broker(broker), queue, timeout=timeout) as client:
            return action(client)
    except RemoteError as exc:
        click.echo(f"error {exc.code}: {exc.message}", err=True)
        if exc.data is not None:
            click.echo(orjson.dumps(exc.data, option=orjson.OPT_INDENT_2), err=True)
        sys.exit(EXIT_REMOTE_ERROR)
    except CallTimeout as exc:
        click.echo(f"timeout: {exc}", err=True)
        sys.exit(EXIT_TIMEOUT)
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from exc
    except MicromessagingError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_TRANSPORT_ERROR)


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("method")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@broker_option
@queue_option
@timeout_option
@click.option("--notify", "-n", is_flag=True, help="Send a notification: no reply awaited.")
def call(
    method: str, args: tuple[str, ...], broker: str | None, queue: str, timeout: float, notify: bool
) -> None:
    """Call METHOD with ARGs and print the result as JSON.

    Each ARG is a JSON literal when it parses as one (1, 5.1, true, '[1,2]', '"x"'), else a
    string; key=value ARGs are named params. Exit codes: 1 remote error, 3 timeout,
    4 broker unreachable.
    """
    params = params_from_args(args)
    if notify:
        args_, kwargs = (params, {}) if not isinstance(params, dict) else ([], params)
        _run_client(broker, queue, timeout, lambda c: c.notify(method, *(args_ or []), **kwargs))
        return
    _print_json(
        _run_client(broker, queue, timeout, lambda c: c.request(method, params, timeout=timeout))
    )


@main.command()
@broker_option
@queue_option
@timeout_option
@click.option("--json", "as_json", is_flag=True, help="Print the OpenRPC document.")
def describe(broker: str | None, queue: str, timeout: float, as_json: bool) -> None:
    """List the methods the service on a queue offers, with their signatures."""
    document = _run_client(broker, queue, timeout, lambda c: c.describe())
    if as_json:
        _print_json(document)
        return
    info = document.get("info", {})
    click.echo(f"{info.get('title', queue)} {info.get('version', '')} on queue {queue!r}")
    for method in document.get("methods", []):
        click.echo(f"  {signature_line(method)}")
        if method.get("summary"):
            click.echo(f"      {method['summary']}")


# --- bench and demo --------------------------------------------------------------------------


def _levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter("a comma-separated list of integers, like 1,16,64") from None
    if not levels or min(levels) < 1:
        raise click.BadParameter("concurrency levels must be at least 1")
    return levels


@main.command()
@broker_option
@click.option(
    "--queue", "-q", envvar="MICROMESSAGING_QUEUE", help="Queue to use [default: a fresh one]."
)
@click.option("--calls", "-n", default=10000, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--concurrency",
    "-c",
    default="1,16,64",
    show_default=True,
    help="Comma-separated calls in flight per level.",
)
@click.option(
    "--workers",
    "-w",
    default=1,
    show_default=True,
    type=click.IntRange(min=0),
    help="Bench workers to start (0: use ones already serving the queue).",
)
@click.option("--worker-concurrency", default=64, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--payload",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Bytes of string to echo per call (0: call add(1, 5.1)).",
)
@click.option("--json", "as_json", is_flag=True, help="Print figures as JSON.")
def bench(
    broker: str | None,
    queue: str | None,
    calls: int,
    concurrency: str,
    workers: int,
    worker_concurrency: int,
    payload: int,
    as_json: bool,
) -> None:
    """Measure calls/s and p50/p99 latency against the built-in bench service."""
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from .bench import bench_workers, measure, wait_until_served

    levels = _levels(concurrency)
    broker_url = resolve_broker(broker, default="memory://")
    queue = queue or f"mm-bench-{secrets.token_hex(4)}"
    console = Console(stderr=as_json)

    async def run() -> list[Any]:
        results = []
        async with (
            bench_workers(broker_url, queue, workers, worker_concurrency),
            AsyncClient(broker_url, queue) as client,
        ):
            await wait_until_served(client)
            with Progress(console=console, transient=True, disable=as_json) as progress:
                for level in levels:
                    task = progress.add_task(f"concurrency {level}", total=calls)
                    results.append(
                        await measure(
                            client,
                            calls,
                            level,
                            b"x" * payload,
                            lambda task=task: progress.advance(task),  # type: ignore[misc]
                        )
                    )
        return results

    try:
        results = asyncio.run(run())
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from exc
    except MicromessagingError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_TRANSPORT_ERROR)
    if as_json:
        _print_json(
            {
                "broker": broker_url,
                "queue": queue,
                "workers": workers,
                "results": [result.as_dict() for result in results],
            }
        )
        return
    table = Table(title=f"micromessaging bench: {calls} calls per level, {workers} worker(s)")
    for column in ("concurrency", "calls/s", "p50 ms", "p99 ms", "errors"):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(
            str(r.concurrency),
            f"{r.calls_per_second:,.0f}",
            f"{r.p50_ms:.3f}",
            f"{r.p99_ms:.3f}",
            str(r.errors),
        )
    console.print(table)


@main.command()
def demo() -> None:
    """Run the seed's calculator end to end in-process, with no broker: prints 1+5.1=6.1."""
    from .examples.calculator import Calculator

    async def serve_and_call() -> float:
        async with (
            Worker(Calculator(), "memory://demo", "calc"),
            AsyncClient("memory://demo", "calc") as calc,
        ):
            result: float = await calc.add(1, 5.1)
            return result

    click.echo("1+5.1=%.1f" % asyncio.run(serve_and_call()))  # noqa: UP031 (the seed's line)


# --- gateway ---------------------------------------------------------------------------------

from .gateway.command import gateway  # noqa: E402 (its own module: it runs its own HTTP server)

main.add_command(gateway)
