"""What the bench command shows and writes: a table in 80 columns, CSV, and a plot.

One column group per broker, side by side, as the seed's author compared HTTP, Redis and
RabbitMQ by hand in 2014; up to three brokers fit 80 columns.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from .._settings import mask_password
from ..bench import BrokerRun, LevelResult, is_in_process
from .exits import CommandError, missing_extra

WIDTH = 80
PLOT_FORMATS = ("png", "svg")
_LEVEL = 9  # "in flight"
_GROUP = ("calls/s", "p50 ms", "p99 ms")
_CELLS = (7, 6, 6)
_GROUP_WIDTH = sum(_CELLS) + len(_CELLS) - 1


def labels(brokers: Sequence[str]) -> list[str]:
    """A short name per broker for column groups: its scheme, numbered when repeated."""
    schemes = [urlsplit(url).scheme or url for url in brokers]
    seen: dict[str, int] = {}
    names = []
    for scheme in schemes:
        seen[scheme] = seen.get(scheme, 0) + 1
        names.append(scheme if schemes.count(scheme) == 1 else f"{scheme}#{seen[scheme]}")
    return names


def fit(text: str, width: int) -> str:
    """`text`, cut in the middle when longer than `width`."""
    if len(text) <= width:
        return text
    keep = width - 3
    return f"{text[: keep - keep // 2]}...{text[len(text) - keep // 2 :]}"


def milliseconds(value: float) -> str:
    """A latency in ms with four significant digits or so, in six characters."""
    if math.isnan(value):
        return "-"
    if value < 10:
        return f"{value:.3f}"
    if value < 100:
        return f"{value:.2f}"
    if value < 1000:
        return f"{value:.1f}"
    return f"{value:,.0f}"


def what_was_called(service: str, target: str, payload: int) -> str:
    """The call the figures are of: ``Calculator.add(1, 5.1)``."""
    name = target.rpartition(":")[2]
    return f"{name}.echo(<{payload:,} bytes>)" if payload else f"{name}.add(1, 5.1)"


def title_lines(
    runs: Sequence[BrokerRun], call: str, calls: int, *, default_broker: bool = False
) -> list[str]:
    """The table's title: which broker(s), what was called, how often, by how many workers."""
    head = "micromessaging bench: "
    urls = [mask_password(run.broker) for run in runs]
    if len(runs) == 1:
        note = " (in-process; no --broker given)" if default_broker else ""
        lines = [head + fit(urls[0], WIDTH - len(head) - len(note)) + note]
    else:
        names = labels([run.broker for run in runs])
        lines = [head + ", ".join(names)]
        pad = max(len(name) for name in names)
        lines += [
            f"  {n:<{pad}}  {fit(u, WIDTH - pad - 4)}" for n, u in zip(names, urls, strict=True)
        ]
    workers, concurrency = runs[0].workers, runs[0].concurrency
    if workers == 0:
        served = "workers already serving the queue"
    elif len(runs) > 1:
        served = f"{workers} worker{'s' if workers != 1 else ''} each"
    elif is_in_process(runs[0].broker):
        served = f"{workers} in-process worker{'s' if workers != 1 else ''}"
    else:
        served = f"{workers} worker process{'es' if workers != 1 else ''}"
    if workers:
        served += f", concurrency {concurrency}"
    lines.append(fit(f"{call} x {calls:,} per level; {served}", WIDTH))
    return lines


def table(runs: Sequence[BrokerRun], title: Sequence[str]) -> str:
    """The figures, one row per level of calls in flight, one column group per broker."""
    names = labels([run.broker for run in runs])
    lines = [*title, ""]
    if len(runs) > 1:
        groups = [f" {name} ".center(_GROUP_WIDTH, "-") for name in names]
        lines.append(" " * _LEVEL + "".join(f"  {group}" for group in groups))
    header = " ".join(f"{text:>{width}}" for text, width in zip(_GROUP, _CELLS, strict=True))
    lines.append(f"{'in flight':>{_LEVEL}}" + f"  {header}" * len(runs))
    for row, first in enumerate(runs[0].results):
        cells = [_cells(run.results[row]) for run in runs]
        lines.append(f"{first.in_flight:>{_LEVEL}}" + "".join(f"  {cell}" for cell in cells))
    for name, run in zip(names, runs, strict=True):
        for result in run.results:
            if result.errors:
                lines.append(
                    f"{name}: {result.errors:,} of {result.calls:,} calls failed "
                    f"at {result.in_flight} in flight"
                )
    return "\n".join(lines)


def _cells(result: LevelResult) -> str:
    values = (
        f"{result.calls_per_second:,.0f}",
        milliseconds(result.p50_ms),
        milliseconds(result.p99_ms),
    )
    return " ".join(f"{value:>{width}}" for value, width in zip(values, _CELLS, strict=True))


CSV_FIELDS = (
    "broker", "label", "service", "call", "workers", "concurrency",
    "in_flight", "calls", "errors", "seconds", "calls_per_second", "p50_ms", "p99_ms",
)  # fmt: skip


def write_csv(path: Path, runs: Sequence[BrokerRun], service: str, call: str) -> None:
    """One row per broker and level (passwords masked)."""
    names = labels([run.broker for run in runs])
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for name, run in zip(names, runs, strict=True):
            for result in run.results:
                writer.writerow(
                    {
                        "broker": mask_password(run.broker),
                        "label": name,
                        "service": service,
                        "call": call,
                        "workers": run.workers,
                        "concurrency": run.concurrency,
                        **result.as_dict(),
                    }
                )


def plot_format(path: Path) -> str:
    """The image format a plot file's extension asks for; a usage error for any other."""
    extension = path.suffix.lower().lstrip(".")
    if extension not in PLOT_FORMATS:
        raise CommandError(f"--plot writes .png or .svg files, not {path.name!r}")
    return extension


def require_matplotlib() -> None:
    """Fail now, before measuring, when the plot extra is missing."""
    try:
        import matplotlib.figure  # noqa: F401
    except ModuleNotFoundError as exc:
        raise missing_extra("--plot", exc, "plot") from exc


def write_plot(path: Path, runs: Sequence[BrokerRun], title: str) -> None:
    """Calls/s (left) and p50/p99 latency (right) against calls in flight, a line per broker."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.5), layout="constrained")
    rate, latency = figure.subplots(1, 2)
    levels = [result.in_flight for result in runs[0].results]
    for name, run in zip(labels([run.broker for run in runs]), runs, strict=True):
        (line,) = rate.plot(
            levels, [r.calls_per_second for r in run.results], marker="o", label=name
        )
        color = line.get_color()
        latency.plot(
            levels, [r.p50_ms for r in run.results], marker="o", color=color, label=f"{name} p50"
        )
        latency.plot(
            levels,
            [r.p99_ms for r in run.results],
            marker="s",
            linestyle="--",
            color=color,
            label=f"{name} p99",
        )
    for axes in (rate, latency):
        if len(levels) > 1:
            axes.set_xscale("log", base=2)
            axes.minorticks_off()
        axes.set_xticks(levels, labels=[str(level) for level in levels])
        axes.set_xlabel("calls in flight")
        axes.grid(True, alpha=0.3)
        axes.legend()
    rate.set_ylabel("calls/s")
    rate.set_ylim(bottom=0)
    latency.set_ylabel("latency, ms")
    latency.set_ylim(bottom=0)
    figure.suptitle(title)
    figure.savefig(path, format=plot_format(path))
