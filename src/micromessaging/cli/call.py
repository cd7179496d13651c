"""``micromessaging call METHOD [ARG...]``: call a method and print its result as JSON."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import click
import orjson

from .. import Client
from .._protocol import DecodeError, loads
from .._settings import resolve_broker
from . import options
from .exits import errors_to_exits

_NAMED_ARG = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.DOTALL)


def parse_arg(text: str) -> Any:
    """A JSON literal when `text` parses as one, else the string itself."""
    try:
        return loads(text)
    except DecodeError:
        return text


def params_from_args(args: tuple[str, ...]) -> list[Any] | dict[str, Any] | None:
    """Positional params, or named ones when every ARG is ``key=value``."""
    for arg in args:
        # Unknown options land among the ARGs (so that -5 is a number): refuse them, rather
        # than send "-n" to the service as a string.
        if arg.startswith("-") and isinstance(parse_arg(arg), str):
            raise click.UsageError(
                f"no such option: {arg} (to send it as a string, quote it as JSON: '\"{arg}\"')"
            )
    named = [_NAMED_ARG.match(arg) for arg in args]
    if args and all(named):
        return {m.group(1): parse_arg(m.group(2)) for m in named if m}
    if any(named):
        raise click.UsageError(
            "mix of positional and key=value arguments: JSON-RPC takes one or the other "
            "(quote a string containing '=' as JSON: '\"a=b\"')"
        )
    return [parse_arg(arg) for arg in args] or None


def print_json(value: Any) -> None:
    """`value` on stdout as indented JSON."""
    click.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))


def with_client(
    broker: str | None, queue: str, timeout: float, action: Callable[[Client], Any]
) -> Any:
    """Run `action` with a connected `Client`; errors become their exit codes."""
    with errors_to_exits(broker):
        url = resolve_broker(broker)
        with Client(url, queue, timeout=timeout) as client:
            return action(client)


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("method")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@options.broker()
@options.queue(required=True, help="The service's queue.")
@options.timeout()
@options.option(
    "--notify",
    envvar="MICROMESSAGING_NOTIFY",
    is_flag=True,
    help="Send a notification: no reply is awaited, nothing is printed.",
)
def call(
    method: str, args: tuple[str, ...], broker: str | None, queue: str, timeout: float, notify: bool
) -> None:
    """Call METHOD with ARGs and print the result as JSON.

    Each ARG is a JSON literal when it parses as one (1, 5.1, -5, true, '[1,2]', '"x"'),
    else a string; key=value ARGs are named params. Errors go to stderr. Exit codes:
    1 the service answered an error, 3 timeout, 4 broker unreachable, 5 no worker serves
    the queue.
    """
    params = params_from_args(args)
    if notify:
        positional, named = ([], params) if isinstance(params, dict) else (params or [], {})
        with_client(broker, queue, timeout, lambda c: c.notify(method, *positional, **named))
        return
    print_json(with_client(broker, queue, timeout, lambda c: c.request(method, params)))
