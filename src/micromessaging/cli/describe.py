"""``micromessaging describe``: the methods a queue's service offers, with their signatures."""

from __future__ import annotations

import click

from .._openrpc import signature_line
from . import options
from .call import print_json, with_client


@click.command()
@options.broker()
@options.queue(required=True, help="The service's queue.")
@options.timeout()
@options.as_json(help="Print the service's OpenRPC document.")
def describe(broker: str | None, queue: str, timeout: float, as_json: bool) -> None:
    """List the methods the service on a queue offers, with their signatures."""
    document = with_client(broker, queue, timeout, lambda c: c.describe())
    if as_json:
        print_json(document)
        return
    info = document.get("info", {})
    click.echo(f"{info.get('title', queue)} {info.get('version', '')} on queue {queue!r}")
    for method in document.get("methods", []):
        click.echo(f"  {signature_line(method)}")
        if method.get("summary"):
            click.echo(f"      {method['summary']}")
