"""``micromessaging dead-letters list|show|replay|purge``: requests the workers gave up on.

The same commands on every broker. Each record says why the request died, how many times
it was delivered, when, and what the request was; replay puts requests back on their
queue with a fresh delivery count (their callers learn nothing new: their deadlines have
passed, unless they still wait); purge deletes, after asking unless ``--yes``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import click

from .._settings import resolve_broker
from ..transports import admin_transport
from ..transports.admin import AdminTransport, DeadLetter
from . import options
from .call import print_json
from .exits import CommandError, errors_to_exits


def summary(record: DeadLetter) -> str:
    """One line: id, when, deliveries, method, reason."""
    request = record.request()
    method = request.get("method") if isinstance(request, dict) else None
    if isinstance(request, list):
        method = f"batch of {len(request)}"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.at))
    return (
        f"{record.id:<24} {when}  x{record.deliveries:<3} {str(method or '?')[:24]:<24} "
        f"{record.reason[:80]}"
    )


def _common(command: Callable[..., Any]) -> Callable[..., Any]:
    for decorate in (
        options.as_json(help="Print records as JSON."),
        options.queue(required=True, help="The queue whose dead letters these are."),
        options.broker(),
    ):
        command = decorate(command)
    return command


def _selection(command: Callable[..., Any]) -> Callable[..., Any]:
    for decorate in (
        options.option(
            "--dry-run",
            envvar="MICROMESSAGING_DRY_RUN",
            is_flag=True,
            help="Say what would be done; do nothing.",
        ),
        options.option(
            "--all",
            "everything",
            envvar="MICROMESSAGING_DEAD_LETTERS_ALL",
            is_flag=True,
            help="Every dead letter of the queue.",
        ),
        _ids(required=False),
    ):
        command = decorate(command)
    return command


def _ids(*, required: bool) -> Callable[..., Any]:
    return options.option(
        "--id",
        "ids",
        envvar="MICROMESSAGING_DEAD_LETTER_IDS",
        multiple=True,
        required=required,
        metavar="ID",
        help="A record's id (repeatable; the variable holds ids separated by spaces).",
    )


def _chosen(ids: tuple[str, ...], everything: bool) -> list[str] | None:
    if bool(ids) == everything:
        raise CommandError("name the records with --id ID (repeatable), or pass --all")
    return None if everything else list(ids)


def _run(broker: str | None, work: Callable[[AdminTransport], Awaitable[Any]]) -> Any:
    with errors_to_exits(broker):
        url = resolve_broker(broker)

        async def run() -> Any:
            async with admin_transport(url) as admin:
                return await work(admin)

        return asyncio.run(run())


def _show(records: list[DeadLetter], as_json: bool, empty: str) -> None:
    if as_json:
        print_json([record.to_json() for record in records])
    elif not records:
        click.echo(empty)
    else:
        for record in records:
            click.echo(summary(record))


@click.group("dead-letters")
def dead_letters() -> None:
    """List, show, replay or purge the requests the workers gave up on."""


@dead_letters.command("list")
@_common
@options.option(
    "--limit",
    envvar="MICROMESSAGING_DEAD_LETTERS_LIMIT",
    default=100,
    type=click.IntRange(min=1),
    help="Show at most this many (the oldest first).",
)
def list_command(broker: str | None, queue: str, as_json: bool, limit: int) -> None:
    """One line per dead letter: id, when, deliveries, method, why."""
    records = _run(broker, lambda admin: admin.dead_letters(queue, limit))
    _show(records, as_json, f"no dead letters on {queue!r}")


@dead_letters.command("show")
@_common
@_ids(required=True)
def show_command(broker: str | None, queue: str, as_json: bool, ids: tuple[str, ...]) -> None:
    """The whole record of each dead letter named: why, when, deliveries, the request."""
    records = [r for r in _run(broker, lambda a: a.dead_letters(queue, 100_000)) if r.id in ids]
    missing = sorted(set(ids) - {record.id for record in records})
    if missing:
        raise CommandError(f"no dead letter {', '.join(missing)} on {queue!r}")
    print_json([record.to_json() for record in records])


@dead_letters.command("replay")
@_common
@_selection
def replay_command(
    broker: str | None,
    queue: str,
    as_json: bool,
    ids: tuple[str, ...],
    everything: bool,
    dry_run: bool,
) -> None:
    """Put dead letters back on their queue, with a fresh delivery count."""
    chosen = _chosen(ids, everything)

    async def work(admin: AdminTransport) -> list[DeadLetter]:
        if dry_run:
            return _pick(await admin.dead_letters(queue, 100_000), chosen)
        return await admin.replay(queue, chosen)

    records = _run(broker, work)
    verb = "would replay" if dry_run else "replayed"
    _show(records, as_json, f"nothing to replay on {queue!r}")
    if not as_json and records:
        click.echo(f"{verb} {len(records)} to {queue!r}", err=True)


@dead_letters.command("purge")
@_common
@_selection
@options.option("--yes", envvar="MICROMESSAGING_YES", is_flag=True, help="Don't ask first.")
def purge_command(
    broker: str | None,
    queue: str,
    as_json: bool,
    ids: tuple[str, ...],
    everything: bool,
    dry_run: bool,
    yes: bool,
) -> None:
    """Delete dead letters, after asking (unless --yes)."""
    chosen = _chosen(ids, everything)
    records = _pick(_run(broker, lambda admin: admin.dead_letters(queue, 100_000)), chosen)
    if dry_run or not records:
        _show(records, as_json, f"nothing to purge on {queue!r}")
        if records:
            click.echo(f"would purge {len(records)} from {queue!r}", err=True)
        return
    if not yes:
        click.confirm(f"delete {len(records)} dead letters of {queue!r} for good?", abort=True)
    gone = _run(broker, lambda admin: admin.purge(queue, [record.id for record in records]))
    click.echo(f"purged {gone} from {queue!r}", err=True)


def _pick(records: list[DeadLetter], chosen: list[str] | None) -> list[DeadLetter]:
    return records if chosen is None else [record for record in records if record.id in chosen]
