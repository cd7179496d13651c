"""``micromessaging bench``: calls/s and p50/p99 latency per level of calls in flight.

Without ``--broker`` (and none in the environment) it measures the in-process memory://
transport, the library's own overhead, and says so in the title and on stderr: a bench
that runs anywhere, and never one mistaken for a broker's figures. Several ``--broker``
values are measured one after the other and printed side by side.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import click
import orjson

from .._settings import mask_password, resolve_broker
from ..bench import SERVICES, BrokerRun, LevelResult, run_bench
from . import bench_report, options
from .exits import errors_to_exits

DEFAULT_BROKER = "memory://"


def parse_levels(text: str) -> list[int]:
    """``1,16,64`` as a list; a usage error for anything else."""
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter("a comma-separated list of integers, like 1,16,64") from None
    if not levels or min(levels) < 1:
        raise click.BadParameter("levels of calls in flight must be at least 1")
    return levels


@click.command()
@options.broker(
    multiple=True,
    help="Broker URL to measure; give several to measure each and compare them "
    "[default: memory://, in-process].",
)
@options.queue(
    required=False,
    envvar="MICROMESSAGING_BENCH_QUEUE",
    help="Queue to use [default: a fresh one per broker].",
)
@options.option(
    "--calls",
    "-n",
    envvar="MICROMESSAGING_BENCH_CALLS",
    default=10000,
    type=click.IntRange(min=1),
    help="Calls per level.",
)
@options.option(
    "--in-flight",
    "-i",
    "in_flight",
    envvar="MICROMESSAGING_BENCH_IN_FLIGHT",
    default="1,16,64",
    metavar="N[,N...]",
    help="Levels of calls in flight at once, from one client.",
)
@options.option(
    "--workers",
    "-w",
    envvar="MICROMESSAGING_BENCH_WORKERS",
    default=1,
    type=click.IntRange(min=0),
    help="Workers to start per broker: processes (in-process for memory://); "
    "0: use those already serving --queue.",
)
@options.concurrency(envvar="MICROMESSAGING_BENCH_CONCURRENCY", default=64)
@options.option(
    "--service",
    envvar="MICROMESSAGING_BENCH_SERVICE",
    default="calculator",
    type=click.Choice(sorted(SERVICES)),
    help="calculator: the seed's Calculator (plain def add); async: async def add and echo.",
)
@options.option(
    "--payload",
    envvar="MICROMESSAGING_BENCH_PAYLOAD",
    default=0,
    type=click.IntRange(min=0),
    metavar="BYTES",
    help="Call echo() with a string this long instead of add(1, 5.1) (--service async).",
)
@options.option(
    "--csv",
    "csv_file",
    envvar="MICROMESSAGING_BENCH_CSV",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Also write the figures to FILE as CSV.",
)
@options.option(
    "--plot",
    "plot_file",
    envvar="MICROMESSAGING_BENCH_PLOT",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help='Also plot them to FILE (.png or .svg; needs pip install "micromessaging[plot]").',
)
@options.as_json(help="Print the figures as JSON instead of a table.")
def bench(
    broker: tuple[str, ...],
    queue: str | None,
    calls: int,
    in_flight: str,
    workers: int,
    concurrency: int,
    service: str,
    payload: int,
    csv_file: Path | None,
    plot_file: Path | None,
    as_json: bool,
) -> None:
    """Measure calls/s and p50/p99 latency at each level of calls in flight.

    Workers for a broker run as separate processes; an http:// worker listens on the URL's
    port. Each run uses a fresh queue unless --queue names one.
    """
    levels = parse_levels(in_flight)
    if payload and service != "async":
        raise click.UsageError("--payload calls echo(), which only --service async offers")
    if workers == 0 and queue is None:
        raise click.UsageError("--workers 0 measures workers already serving a queue: name it")
    if plot_file is not None:
        bench_report.plot_format(plot_file)
        bench_report.require_matplotlib()
    brokers = list(broker) or [resolve_broker(None, default=DEFAULT_BROKER)]
    default_broker = not broker and brokers == [DEFAULT_BROKER]
    if default_broker:
        click.echo(
            "note: no --broker given: measuring the in-process memory:// transport "
            "(pass --broker URL to measure a broker)",
            err=True,
        )
    target = SERVICES[service]
    call = bench_report.what_was_called(service, target, payload)
    runs: list[BrokerRun] = []
    for url in brokers:
        label = mask_password(url)

        def report(result: LevelResult, label: str = label) -> None:
            click.echo(
                f"{label}: {result.in_flight} in flight: {result.calls_per_second:,.0f} calls/s",
                err=True,
            )

        with errors_to_exits(url):
            runs.append(
                asyncio.run(
                    run_bench(
                        url,
                        queue or f"mm-bench-{secrets.token_hex(4)}",
                        calls=calls,
                        levels=levels,
                        workers=workers,
                        concurrency=concurrency,
                        target=target,
                        payload=b"x" * payload,
                        on_level=report,
                    )
                )
            )
    title = bench_report.title_lines(runs, call, calls, default_broker=default_broker)
    if csv_file is not None:
        bench_report.write_csv(csv_file, runs, service, call)
    if plot_file is not None:
        bench_report.write_plot(plot_file, runs, f"{title[0]}\n{title[-1]}")
    if as_json:
        click.echo(orjson.dumps(_as_json(runs, service, call, calls, levels)))
    else:
        click.echo(bench_report.table(runs, title))


def _as_json(
    runs: list[BrokerRun], service: str, call: str, calls: int, levels: list[int]
) -> dict[str, object]:
    return {
        "service": service,
        "call": call,
        "calls": calls,
        "in_flight": levels,
        "runs": [
            {
                "broker": mask_password(run.broker),
                "queue": run.queue,
                "workers": run.workers,
                "concurrency": run.concurrency,
                "results": [result.as_dict() for result in run.results],
            }
            for run in runs
        ],
    }
