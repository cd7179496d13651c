"""``micromessaging demo``: the seed's calculator end to end, in-process."""

from __future__ import annotations

import asyncio

import click

from .. import AsyncClient, Worker


@click.command()
def demo() -> None:
    """Run the seed's calculator end to end in-process, with no broker: prints 1+5.1=6.1."""
    from ..examples.calculator import Calculator

    async def serve_and_call() -> float:
        async with (
            Worker(Calculator(), "memory://demo", "calc"),
            AsyncClient("memory://demo", "calc") as calc,
        ):
            result: float = await calc.add(1, 5.1)
            return result

    click.echo("1+5.1=%.1f" % asyncio.run(serve_and_call()))  # noqa: UP031 (the seed's line)
