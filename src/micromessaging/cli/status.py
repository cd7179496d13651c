"""``micromessaging status``: queues and their live workers, on any broker; ``--watch`` like top.

Reads what the broker knows (depth, oldest wait, dead letters) and what the workers publish
about themselves, through the transport's admin side: no management plugin needed. The
``--json`` form is documented in docs/operations.md.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import click

from .._settings import mask_password, resolve_broker
from ..transports import admin_transport
from ..transports.admin import AdminTransport, QueueStatus
from . import options
from .call import print_json
from .exits import errors_to_exits

CLEAR = "\x1b[H\x1b[2J"
"""Home the cursor and clear the screen: each --watch frame replaces the last."""


async def snapshot(admin: AdminTransport, queue: str | None) -> list[QueueStatus]:
    """The status of `queue`, or of every queue the broker knows."""
    names = [queue] if queue else await admin.queues()
    return [await admin.status(name) for name in names]


def age(seconds: float | None) -> str:
    """A duration for people: 850ms, 12s, 4m, 3h, 2d."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * 2:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def render(broker: str, statuses: list[QueueStatus], now: float) -> str:
    """The text form: one line per queue, then its workers, indented."""
    lines = [f"micromessaging status: {mask_password(broker)}, {time.strftime('%H:%M:%S')}"]
    if not statuses:
        lines.append("no queues (no workers, no waiting requests, no dead letters)")
        return "\n".join(lines)
    header = f"{'QUEUE':<24} {'DEPTH':>8} {'OLDEST':>7} {'IN FLIGHT':>9} {'DEAD':>6} {'WORKERS':>7}"
    lines += ["", header]
    for status in statuses:
        lines.append(
            f"{status.queue[:24]:<24} {_count(status.depth):>8} {age(status.oldest_wait):>7} "
            f"{_count(status.in_flight):>9} {_count(status.dead_letters):>6} "
            f"{len(status.workers):>7}"
        )
        for worker in sorted(status.workers, key=lambda w: w.id):
            lines.append(
                f"  {worker.id[:34]:<34} pid {worker.pid:<7} {worker.in_flight:>3}/"
                f"{worker.concurrency:<3} in flight, {worker.completed:,} done, "
                f"{worker.failed:,} failed, up {age(now - worker.started)}, "
                f"seen {age(now - worker.last_seen)} ago"
            )
        lines += [f"  ({note})" for note in status.notes]
    return "\n".join(lines)


def as_document(broker: str, statuses: list[QueueStatus], now: float) -> dict[str, Any]:
    """The --json form."""
    return {
        "broker": mask_password(broker),
        "at": now,
        "queues": [status.to_json() for status in statuses],
    }


@click.command()
@options.broker()
@options.queue(required=False, help="Only this queue [default: every queue the broker knows].")
@options.as_json(help="Print the status as JSON (docs/operations.md describes it).")
@options.option(
    "--watch",
    envvar="MICROMESSAGING_STATUS_WATCH",
    is_flag=True,
    help="Redraw in place every --interval seconds, until Ctrl-C.",
)
@options.option(
    "--interval",
    envvar="MICROMESSAGING_STATUS_INTERVAL",
    default=2.0,
    type=click.FloatRange(min=0.2),
    metavar="SECONDS",
    help="Seconds between --watch frames.",
)
def status(
    broker: str | None, queue: str | None, as_json: bool, watch: bool, interval: float
) -> None:
    """Show queues (depth, oldest wait, in flight, dead letters) and their live workers."""
    with errors_to_exits(broker):
        url = resolve_broker(broker)
        asyncio.run(_run(url, queue, as_json, watch, interval))


async def _run(url: str, queue: str | None, as_json: bool, watch: bool, interval: float) -> None:
    async with admin_transport(url) as admin:
        while True:
            statuses = await snapshot(admin, queue)
            now = time.time()
            if as_json:
                print_json(as_document(url, statuses, now))
            else:
                frame = render(url, statuses, now)
                click.echo(CLEAR + frame if watch and sys.stdout.isatty() else frame)
            if not watch:
                return
            await asyncio.sleep(interval)
