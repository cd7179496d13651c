"""The command line: ``micromessaging worker | call | describe | status | dead-letters | bench |
demo | gateway | console``.

One command per module; the options they share, with their environment variables, are in
`options`, and the exit codes in `exits`. The commands use the public API and the
transports registry, nothing private of a transport.
"""

from __future__ import annotations

from typing import Any

import click

from .. import __version__
from .bench import bench
from .call import call
from .console import console
from .dead_letters import dead_letters
from .demo import demo
from .describe import describe
from .exits import EXIT_INTERRUPTED
from .gateway import gateway
from .status import status
from .worker import worker


class _Commands(click.Group):
    """The group of commands; Ctrl-C ends any of them with exit code 130."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="micromessaging")
def main() -> None:
    """JSON-RPC 2.0 between services over Redis, RabbitMQ, NATS, HTTP or in-process.

    \b
    Exit codes: 0 done, 1 the service answered an error, 2 bad usage or configuration,
    3 timeout, 4 broker unreachable, 5 no worker serves the queue, 6 worker processes
    kept crashing, 130 interrupted (Ctrl-C).
    """


for command in (worker, call, describe, status, dead_letters, bench, demo, gateway, console):
    main.add_command(command)

__all__ = ["main"]
