"""The options the commands share: one name, one meaning and one variable each.

Every option reads an environment variable, and ``--help`` names it. An option that means
the same thing in several commands reads the same variable (``--broker``:
``MICROMESSAGING_BROKER``); one that configures a single command reads a variable named
after it (``MICROMESSAGING_BENCH_CALLS``, ``MICROMESSAGING_GATEWAY_PROCESSES``), so that
setting it for one command never changes another.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from .._protocol import DEFAULT_MAX_MESSAGE_SIZE
from .._settings import BROKER_VARIABLES

F = TypeVar("F", bound=Callable[..., Any])
Decorator = Callable[[F], F]

LOG_LEVELS = ("debug", "info", "warning", "error")


def option(*names: str, envvar: str | list[str], **settings: Any) -> Decorator[Any]:
    """A click option that reads `envvar` and says so in --help."""
    if "default" in settings and "show_default" not in settings:
        settings["show_default"] = True
    if isinstance(settings.get("type"), click.IntRange):
        settings.setdefault("metavar", "N")
    return click.option(*names, envvar=envvar, show_envvar=True, **settings)


def broker(*, multiple: bool = False, help: str | None = None) -> Decorator[Any]:
    """--broker/-b URL: the broker (or HTTP address) the services listen on."""
    return option(
        "--broker",
        "-b",
        envvar=list(BROKER_VARIABLES),
        multiple=multiple,
        metavar="URL",
        help=help
        or "Broker URL: redis://, rediss://, redis+cluster://, amqp://, amqps://, nats://, "
        "tls://, http://, https://, memory:// (the first variable set is used).",
    )


def queue(*, required: bool, help: str, envvar: str = "MICROMESSAGING_QUEUE") -> Decorator[Any]:
    """--queue/-q NAME: the service's queue."""
    return option("--queue", "-q", envvar=envvar, required=required, metavar="NAME", help=help)


def timeout(*, envvar: str = "MICROMESSAGING_TIMEOUT", help: str | None = None) -> Decorator[Any]:
    """--timeout/-t SECONDS: how long a call may take before the caller gives up."""
    return option(
        "--timeout",
        "-t",
        envvar=envvar,
        type=click.FloatRange(min=0, min_open=True),
        default=30.0,
        metavar="SECONDS",
        help=help or "Seconds to wait for a reply; the deadline travels with the call.",
    )


def concurrency(*, envvar: str = "MICROMESSAGING_CONCURRENCY", default: int = 16) -> Decorator[Any]:
    """--concurrency/-c N: calls one worker process runs at once."""
    return option(
        "--concurrency",
        "-c",
        envvar=envvar,
        type=click.IntRange(min=1),
        default=default,
        help="Calls each worker runs at once (sync methods: threads).",
    )


def processes(*, envvar: str | list[str], help: str) -> Decorator[Any]:
    """--processes/-p N: operating system processes this command runs to serve."""
    return option(
        "--processes", "-p", envvar=envvar, type=click.IntRange(min=1), default=1, help=help
    )


def max_message_size(*, envvar: str, help: str) -> Decorator[Any]:
    """--max-message-size BYTES: the largest request accepted."""
    return option(
        "--max-message-size",
        envvar=envvar,
        type=click.IntRange(min=1),
        default=DEFAULT_MAX_MESSAGE_SIZE,
        metavar="BYTES",
        help=help,
    )


def loop(*, envvar: str = "MICROMESSAGING_LOOP") -> Decorator[Any]:
    """--loop NAME: the event loop to serve on (uvloop when installed, by default)."""
    from .._loop import LOOPS

    return option(
        "--loop",
        envvar=envvar,
        type=click.Choice(LOOPS),
        default="auto",
        help="Event loop: auto (uvloop when installed, else asyncio), asyncio or uvloop.",
    )


def log_level() -> Decorator[Any]:
    """--log-level LEVEL."""
    return option(
        "--log-level",
        envvar="MICROMESSAGING_LOG_LEVEL",
        default="info",
        type=click.Choice(LOG_LEVELS, case_sensitive=False),
        help="Least severe log records shown (on stderr).",
    )


def log_format() -> Decorator[Any]:
    """--log-format text|json."""
    return option(
        "--log-format",
        envvar="MICROMESSAGING_LOG_FORMAT",
        default="text",
        type=click.Choice(["text", "json"], case_sensitive=False),
        help="Log lines for people (text) or for log pipelines (one JSON object a line).",
    )


def metrics_port(*, envvar: str) -> Decorator[Any]:
    """--metrics-port N: serve Prometheus metrics at /metrics."""
    return option(
        "--metrics-port",
        envvar=envvar,
        type=click.IntRange(0, 65535),
        default=None,
        metavar="PORT",
        help="Serve Prometheus metrics at http://0.0.0.0:PORT/metrics (pip install "
        '"micromessaging[metrics]").',
    )


def as_json(*, help: str) -> Decorator[Any]:
    """--json: print machine-readable JSON on stdout instead of text."""
    return option("--json", "as_json", envvar="MICROMESSAGING_JSON", is_flag=True, help=help)
