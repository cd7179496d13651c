"""``micromessaging console``: the web console, on 127.0.0.1, over any broker's admin side.

The page shows what ``status`` and ``dead-letters`` show, live, plus each service's methods
and a form to call them. Served without a login, so it listens on loopback unless told
otherwise (and then says what that means); the gateway serves the same page behind a
console token (docs/console.md). uvicorn comes with the ``http`` extra, imported when the
command runs.
"""

from __future__ import annotations

import asyncio

import click

from .._settings import mask_password, resolve_broker
from ..observability import logs
from ..transports import admin_transport
from . import options
from .exits import errors_to_exits, missing_extra


@click.command()
@options.broker()
@options.option(
    "--host",
    envvar="MICROMESSAGING_CONSOLE_HOST",
    default="127.0.0.1",
    help="Address to listen on. The console asks no login: keep it on loopback.",
)
@options.option(
    "--port",
    envvar="MICROMESSAGING_CONSOLE_PORT",
    default=8088,
    type=click.IntRange(0, 65535),
    help="Port to listen on (0: any free one, printed at start).",
)
@options.option(
    "--interval",
    envvar="MICROMESSAGING_CONSOLE_INTERVAL",
    default=1.0,
    type=click.FloatRange(min=0.2),
    metavar="SECONDS",
    help="Seconds between status snapshots, taken only while a page is open.",
)
@options.timeout(
    envvar="MICROMESSAGING_CONSOLE_TIMEOUT",
    help="Seconds a call made from the page may take.",
)
@options.log_level()
def console(
    broker: str | None, host: str, port: int, interval: float, timeout: float, log_level: str
) -> None:
    """Serve the web console: queues, workers, methods, calls and dead letters, live.

    One status snapshot every --interval seconds serves every open page. Calls, replays
    and purges are POSTs from the page itself (same origin, a CSRF token). SIGTERM or
    SIGINT: stop, exit 0.
    """
    try:
        from ..console import ConsoleSettings
        from ..console.app import LOOPBACK
        from ..console.server import is_loopback, listen, serve
    except ModuleNotFoundError as exc:
        raise missing_extra("the console", exc, "http") from exc
    logs.configure(log_level)
    with errors_to_exits(broker):
        url = resolve_broker(broker)
        admin = admin_transport(url)  # no admin side, or a missing extra: said here, exit 2
        local = is_loopback(host)
        settings = ConsoleSettings(
            broker=url,
            interval=interval,
            timeout=timeout,
            allowed_hosts=LOOPBACK | {host.lower()} if local else None,
        )
        sock = listen(host, port)

        def started(bound: int) -> None:
            shown = f"[{host}]" if ":" in host else host
            click.echo(
                f"micromessaging console on http://{shown}:{bound}/ -> {mask_password(url)} "
                f"(a status snapshot every {interval:g}s while a page is open)",
                err=True,
            )
            if not local:
                click.echo(
                    f"warning: the console asks no login: anyone who reaches {host}:{bound} "
                    "can call methods and delete dead letters; serve it from the gateway, "
                    "behind a console token, instead (docs/console.md)",
                    err=True,
                )

        asyncio.run(serve(settings, admin, sock, started))
