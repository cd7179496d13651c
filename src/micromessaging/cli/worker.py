"""``micromessaging worker MODULE[:ATTR]``: serve a class, an object or a module's functions."""

from __future__ import annotations

import asyncio
import difflib
import importlib
import inspect
import logging
import os
import pkgutil
import signal
import sys
import threading
import time
import types
from typing import Any

import click

from .. import ConfigurationError, Service, Worker
from .._loop import loop_factory
from .._loop import run as run_on_loop
from .._settings import mask_password, resolve_broker
from ..observability import logs
from ..transports import WorkerOptions, worker_transport
from . import options
from .exits import EXIT_INTERRUPTED, CommandError, WorkersFailed, errors_to_exits
from .supervisor import SUPERVISOR_VARIABLE, Supervisor

logger = logging.getLogger("micromessaging.worker")


def configure_logging(level: str, fmt: str = "text") -> None:
    """Log records at `level` and above to stderr, as text naming its process, or JSON."""
    logs.configure(level, fmt)


def load_target(spec: str) -> object:
    """Import ``module:attr`` (attr may be dotted; without it, the module itself)."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like uvicorn: serve code from where you stand
    module_name, _, attr = spec.partition(":")
    try:
        target: object = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        hint = ""
        if exc.name == module_name.partition(".")[0]:  # a typo, most likely: look around
            hint = _did_you_mean(exc.name, [m.name for m in pkgutil.iter_modules([os.getcwd()])])
        raise CommandError(f"cannot import {module_name!r}: {exc}{hint}") from exc
    except Exception as exc:  # the module itself raised while importing: show what
        raise CommandError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from exc
    for part in attr.split(".") if attr else ():
        try:
            target = getattr(target, part)
        except AttributeError:
            names = [name for name in dir(target) if not name.startswith("_")]
            raise CommandError(
                f"{module_name!r} has no attribute {attr!r}{_did_you_mean(part, names)}"
            ) from None
    return target


def build_service(target: object, spec: str) -> Service:
    """The service `target` exposes (a class is instantiated), or an error saying what to fix."""
    try:
        return Service.from_object(target)
    except ConfigurationError as exc:
        if isinstance(target, types.ModuleType):
            raise CommandError(_module_hint(target, spec)) from exc
        raise CommandError(f"cannot serve {spec!r}: {exc}") from exc
    except Exception as exc:  # the class's constructor raised
        raise CommandError(f"cannot serve {spec!r}: {type(exc).__name__}: {exc}") from exc


def _module_hint(module: types.ModuleType, spec: str) -> str:
    classes = [
        name
        for name, value in vars(module).items()
        if inspect.isclass(value) and value.__module__ == module.__name__
        and not name.startswith("_")
    ]  # fmt: skip
    text = f"module {spec!r} defines no functions to serve"
    if not classes:
        return f"{text}, and no classes; name an object in it: {spec}:ATTR"
    choices = " or ".join(f"{spec}:{name}" for name in classes)
    return f"{text}; to serve a class, name it: {choices}"


def _did_you_mean(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=3)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


SUPERVISOR_CHECK_INTERVAL = 1.0
"""Seconds between a supervised worker's checks that its supervisor is still there."""


async def serve(worker: Worker, supervisor: int | None = None) -> int:
    """Run `worker` until a signal: the first drains (exit 0), a second abandons (exit 130).

    With the pid of a `supervisor`, it also drains once that process has gone.
    """
    loop = asyncio.get_running_loop()
    runner = asyncio.create_task(worker.run())
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            worker.stop()
        else:
            logger.warning("second signal: abandoning the calls in flight (back to the queue)")
            runner.cancel()

    async def watch(pid: int) -> None:
        while True:  # nothing signals a parent's death without platform-specific calls
            await asyncio.sleep(SUPERVISOR_CHECK_INTERVAL)
            if os.getppid() != pid:
                break
        logger.warning("supervisor (pid %d) gone; stopping", pid)
        worker.stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)
    watcher = asyncio.create_task(watch(supervisor)) if supervisor is not None else None
    try:
        await runner
    except asyncio.CancelledError:
        if signals < 2:
            raise
        return EXIT_INTERRUPTED
    finally:
        if watcher is not None:
            watcher.cancel()
    return 0


def _child_environment(ctx: click.Context, settings: dict[str, Any]) -> dict[str, str]:
    """This process's environment, plus every option's value in the variable it reads."""
    env = dict(os.environ)
    for param in ctx.command.params:
        if isinstance(param, click.Option) and param.name in settings and param.envvar:
            name = param.envvar if isinstance(param.envvar, str) else param.envvar[0]
            value = settings[param.name]
            if value is None:
                env.pop(name, None)  # unset: the child takes the default too
                continue
            env[name] = ("1" if value else "0") if isinstance(value, bool) else str(value)
    return env


@click.command()
@click.argument("target", metavar="MODULE[:ATTR]")
@options.broker()
@options.queue(required=False, help="Queue to serve [default: the service's name, lower-cased].")
@options.concurrency()
@options.processes(
    envvar="MICROMESSAGING_PROCESSES",
    help="Worker processes to run on this machine, supervised: restarted when they die, "
    "given up on when they keep dying at start.",
)
@options.option(
    "--max-deliveries",
    envvar="MICROMESSAGING_MAX_DELIVERIES",
    default=3,
    type=click.IntRange(min=1),
    help="Deliveries of one request before it is dead-lettered (it kept killing workers).",
)
@options.option(
    "--grace",
    envvar="MICROMESSAGING_GRACE",
    default=30.0,
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Seconds to finish the calls in flight on stop.",
)
@options.max_message_size(
    envvar="MICROMESSAGING_MAX_MESSAGE_SIZE", help="Largest request accepted, in bytes."
)
@options.option(
    "--debug",
    envvar="MICROMESSAGING_DEBUG",
    is_flag=True,
    help="Send tracebacks to callers in error data.",
)
@options.option(
    "--wait-for-broker",
    envvar="MICROMESSAGING_WAIT_FOR_BROKER",
    default=60.0,
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="How long to keep trying a broker that isn't up yet (start order), then fail.",
)
@options.option(
    "--inline/--no-inline",
    envvar="MICROMESSAGING_INLINE",
    default=True,
    help="Run plain (def) methods on the event loop once they have shown themselves fast "
    "(--no-inline: always in the thread pool).",
)
@options.metrics_port(envvar="MICROMESSAGING_METRICS_PORT")
@options.loop()
@options.log_level()
@options.log_format()
@click.pass_context
def worker(
    ctx: click.Context,
    target: str,
    broker: str | None,
    queue: str | None,
    concurrency: int,
    processes: int,
    max_deliveries: int,
    grace: float,
    max_message_size: int,
    debug: bool,
    wait_for_broker: float,
    inline: bool,
    metrics_port: int | None,
    loop: str,
    log_level: str,
    log_format: str,
) -> None:
    """Serve MODULE:ATTR on a queue: a class (instantiated), an object, or a module's functions.

    SIGTERM or SIGINT: stop taking requests, finish those in flight (up to --grace seconds)
    and exit 0; a second signal abandons them (they go back to the queue) and exits 130.
    """
    configure_logging(log_level, log_format)
    with errors_to_exits(broker):
        url = resolve_broker(broker)
        # Everything that can be wrong before serving is found here, before any fork.
        service = build_service(load_target(target), target)
        queue = queue or service.name.lower()
        worker_options = WorkerOptions(
            queue=queue,
            concurrency=concurrency,
            max_deliveries=max_deliveries,
            max_message_size=max_message_size,
        )
        worker_transport(url, worker_options)  # a known scheme, its extra installed, valid options
        loop_factory(loop)  # --loop uvloop with uvloop missing: said now, not once per process
        if processes > 1:
            settings = {**ctx.params, "broker": url, "queue": queue, "processes": 1}
            command = [sys.executable, "-m", "micromessaging", "worker", target]
            supervisor = Supervisor(
                command, _child_environment(ctx, settings), processes, grace=grace
            )
            logger.info(
                "supervising %d worker processes for queue %r on %s",
                processes,
                queue,
                mask_password(url),
            )
            code = asyncio.run(supervisor.run())
            if supervisor.failure is not None:
                raise WorkersFailed(supervisor.failure)
            sys.exit(code)
        instance = Worker(
            service,
            url,
            queue,
            concurrency=concurrency,
            max_deliveries=max_deliveries,
            grace=grace,
            max_message_size=max_message_size,
            debug=debug,
            wait_for_broker=wait_for_broker,
            inline=inline,
            metrics=metrics_port is not None,
        )
        if metrics_port is not None:
            from ..observability import metrics

            metrics.serve(metrics_port)
        supervisor_pid = os.environ.get(SUPERVISOR_VARIABLE)
        supervised = int(supervisor_pid) if supervisor_pid else None
        exit_now(run_on_loop(serve(instance, supervised), loop))


def exit_now(code: int) -> None:
    """Exit with `code`, without waiting for calls abandoned in the thread pool to return.

    A sync method still running after --grace (or a second signal) holds a thread that the
    interpreter would join at exit, for as long as the method takes; its message has
    already gone back to the queue.
    """
    others = [t for t in threading.enumerate() if not t.daemon and t is not threading.main_thread()]
    deadline = time.monotonic() + 1.0  # idle pool threads are on their way out: let them go
    for thread in others:
        thread.join(max(0.0, deadline - time.monotonic()))
    busy = [thread for thread in others if thread.is_alive()]
    if busy:
        logger.warning("%d abandoned calls still running in threads; exiting anyway", len(busy))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
