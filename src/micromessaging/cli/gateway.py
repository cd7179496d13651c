"""``micromessaging gateway``: serve the gateway on uvicorn; ``gateway hash-token`` for operators.

The gateway and uvicorn are imported when the command runs, not when the command line
starts: without the ``http`` extra every other command still works, and this one says which
extra to install.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

import click

from .._asgi import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_CONNECTION_LIMIT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_MAX_HEADER_SIZE,
    HttpLimits,
)
from .._settings import resolve_broker
from ..observability import logs
from . import options
from .exits import CommandError, errors_to_exits, missing_extra

TOKENS_VARIABLE = "MICROMESSAGING_GATEWAY_TOKENS"


@click.group(invoke_without_command=True)
@options.broker(help="Broker the services listen on (the first variable set is used).")
@options.option(
    "--host",
    envvar="MICROMESSAGING_GATEWAY_HOST",
    default="0.0.0.0",
    help="Address to listen on.",
)
@options.option(
    "--port",
    envvar=["MICROMESSAGING_GATEWAY_PORT", "PORT"],
    default=8000,
    type=click.IntRange(0, 65535),
    help="Port to listen on.",
)
@options.option(
    "--tokens",
    "tokens_file",
    envvar="MICROMESSAGING_GATEWAY_TOKENS_FILE",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help=f"Tokens file (TOML or JSON); ${TOKENS_VARIABLE} may hold more, as JSON.",
)
@options.processes(
    envvar=["MICROMESSAGING_GATEWAY_PROCESSES", "WEB_CONCURRENCY"],
    help="Server processes, sharing the port.",
)
@options.timeout(
    envvar="MICROMESSAGING_GATEWAY_TIMEOUT",
    help="Seconds a call may take; then 504. Passed on to the workers as the deadline.",
)
@options.max_message_size(
    envvar="MICROMESSAGING_GATEWAY_MAX_MESSAGE_SIZE",
    help="Largest request body, in bytes; larger: 413.",
)
@options.option(
    "--max-batch",
    envvar="MICROMESSAGING_GATEWAY_MAX_BATCH",
    default=100,
    type=click.IntRange(min=1),
    help="Most calls in one batch; more: 413.",
)
@options.option(
    "--max-header-size",
    envvar="MICROMESSAGING_GATEWAY_MAX_HEADER_SIZE",
    default=DEFAULT_MAX_HEADER_SIZE,
    type=click.IntRange(min=1024),
    metavar="BYTES",
    help="Largest request head (request line and headers), in bytes; larger: 431.",
)
@options.option(
    "--header-timeout",
    envvar="MICROMESSAGING_GATEWAY_HEADER_TIMEOUT",
    default=DEFAULT_HEADER_TIMEOUT,
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Seconds a request head may take to arrive; then 408.",
)
@options.option(
    "--body-timeout",
    envvar="MICROMESSAGING_GATEWAY_BODY_TIMEOUT",
    default=DEFAULT_BODY_TIMEOUT,
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Seconds a request body may take to arrive after its head; then 408.",
)
@options.option(
    "--connection-limit",
    envvar="MICROMESSAGING_GATEWAY_CONNECTION_LIMIT",
    default=DEFAULT_CONNECTION_LIMIT,
    type=click.IntRange(min=1),
    help="Connections one process holds open at once; the next is answered 503.",
)
@options.metrics_port(envvar="MICROMESSAGING_GATEWAY_METRICS_PORT")
@options.loop(envvar="MICROMESSAGING_GATEWAY_LOOP")
@options.log_level()
@options.log_format()
@click.pass_context
def gateway(
    ctx: click.Context,
    broker: str | None,
    host: str,
    port: int,
    tokens_file: str | None,
    processes: int,
    timeout: float,
    max_message_size: int,
    max_batch: int,
    max_header_size: int,
    header_timeout: float,
    body_timeout: float,
    connection_limit: int,
    metrics_port: int | None,
    loop: str,
    log_level: str,
    log_format: str,
) -> None:
    """Serve POST /<queue> to authenticated callers, forwarding to the queue's workers.

    Callers send ``Authorization: Bearer <token>``; each token's SHA-256 and the queues and
    methods it may call come from --tokens and $MICROMESSAGING_GATEWAY_TOKENS. GET /healthz
    answers 200 while the broker is reachable. One access line per request is logged (at
    info); --metrics-port serves the requests' Prometheus metrics. SIGTERM or SIGINT: finish
    and exit 0.
    """
    if ctx.invoked_subcommand is not None:
        return
    try:
        import uvicorn

        from .._http_server import protocol_factory
        from .._loop import loop_factory
        from ..gateway import SETTINGS_VARIABLE, GatewaySettings, describe
        from ..gateway.auth import load_tokens
    except ModuleNotFoundError as exc:
        raise missing_extra("the gateway", exc, "http") from exc
    logs.configure(log_level, log_format)
    with errors_to_exits(broker):
        settings = GatewaySettings(
            broker=resolve_broker(broker),
            grants=tuple(load_tokens(tokens_file, os.environ.get(TOKENS_VARIABLE))),
            timeout=timeout,
            max_body=max_message_size,
            max_batch=max_batch,
            metrics=metrics_port is not None,
            log_level=log_level,
            log_format=log_format,
        )
        loop_factory(loop)  # --loop uvloop without uvloop: said here, in our words
        if metrics_port is not None:
            serve_metrics(metrics_port, processes)
    click.echo(describe(settings, host, port, processes), err=True)
    if not settings.grants:
        click.echo("warning: no tokens configured: every call will be refused (401)", err=True)
    # uvicorn's worker processes are fresh interpreters: the settings reach them this way.
    os.environ[SETTINGS_VARIABLE] = settings.to_json()
    uvicorn.run(
        "micromessaging.gateway:app_from_environment",
        factory=True,
        host=host,
        port=port,
        workers=processes,
        log_level=log_level.lower(),
        log_config=None,  # uvicorn's lines go to the root handler, in our format
        access_log=False,  # ours is the gateway's: token, queue, methods (gateway/access.py)
        lifespan="on",
        loop=loop,  # uvicorn's names: auto takes uvloop when it is installed
        ws="none",
        server_header=False,
        http=protocol_factory(
            HttpLimits(max_header_size, header_timeout, body_timeout, connection_limit)
        ),
    )


def serve_metrics(port: int, processes: int) -> None:
    """Serve the gateway's metrics at ``/metrics`` on `port`, for all its processes.

    With one process the app counts in this process's registry. With several, each writes
    its counts to files in a directory of its own (prometheus-client's multiprocess mode,
    set up before uvicorn starts them) and this process serves their sum.
    """
    if processes > 1:
        directory = tempfile.mkdtemp(prefix="micromessaging-gateway-metrics-")
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    try:
        from ..observability import metrics
    except ModuleNotFoundError as exc:
        raise missing_extra("--metrics-port", exc, "metrics") from exc
    registry = None
    if processes > 1:
        from prometheus_client import CollectorRegistry, multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    metrics.serve(port, registry=registry)


def _allow_entry(allow: tuple[str, ...], all_methods: str) -> str:
    parts = []
    for item in allow:
        queue, _, methods = item.partition(":")
        names = [m for m in methods.split(",") if m]
        value = '"*"' if not names or names == [all_methods] else str(names).replace("'", '"')
        parts.append(f"{queue} = {value}")
    return "{ " + ", ".join(parts) + " }"


@gateway.command("hash-token")
@options.option(
    "--new",
    "make_new",
    envvar="MICROMESSAGING_HASH_TOKEN_NEW",
    is_flag=True,
    help="Make a new random token and show it once.",
)
@options.option(
    "--name",
    envvar="MICROMESSAGING_HASH_TOKEN_NAME",
    default="client",
    help="The entry's name, for logs.",
)
@options.option(
    "--allow",
    envvar="MICROMESSAGING_HASH_TOKEN_ALLOW",
    multiple=True,
    metavar="QUEUE[:METHOD,...]",
    help="Print a whole tokens-file entry granting these queues (all methods, or those named).",
)
@options.option(
    "--console",
    "console",
    envvar="MICROMESSAGING_HASH_TOKEN_CONSOLE",
    is_flag=True,
    help="Print a whole tokens-file entry that logs in to the web console at /console.",
)
def hash_token_command(make_new: bool, name: str, allow: tuple[str, ...], console: bool) -> None:
    """Print the SHA-256 a tokens file stores for a token read from stdin (or --new).

    \b
    micromessaging gateway hash-token --new --name web --allow calc:add,subtract >> tokens.toml
    micromessaging gateway hash-token --new --name ops --console >> tokens.toml
    """
    try:
        from ..gateway.auth import ALL_METHODS, hash_token, new_token
    except ModuleNotFoundError as exc:
        raise missing_extra("the gateway", exc, "http") from exc
    if make_new:
        token = new_token()
        click.echo(f"token (give it to the caller; it is not stored anywhere): {token}", err=True)
    elif sys.stdin.isatty():
        token = click.prompt("token", hide_input=True)
    else:
        token = sys.stdin.read().strip()
    if not token:
        raise CommandError("no token given on stdin")
    digest = hash_token(token)
    if not allow and not console:
        click.echo(digest)
        return
    lines = ["[[tokens]]", f'name = "{name}"', f'sha256 = "{digest}"']
    if allow:
        lines.append(f"allow = {_allow_entry(allow, ALL_METHODS)}")
    if console:
        lines.append("console = true")
    click.echo("\n".join(lines))
