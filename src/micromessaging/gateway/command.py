"""The ``gateway`` command: serve the gateway on uvicorn; ``gateway hash-token`` for operators.

Kept apart from cli.py, which registers it, because it is the one command that starts an
HTTP server of its own.
"""

from __future__ import annotations

import os
import sys

import click

from .._asgi import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_CONNECTION_LIMIT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_MAX_HEADER_SIZE,
    HttpLimits,
)
from .._exceptions import ConfigurationError
from .._protocol import DEFAULT_MAX_MESSAGE_SIZE
from .._settings import resolve_broker
from . import SETTINGS_VARIABLE, GatewaySettings, describe
from .auth import ALL_METHODS, hash_token, load_tokens, new_token

TOKENS_VARIABLE = "MICROMESSAGING_GATEWAY_TOKENS"


@click.group(invoke_without_command=True)
@click.option(
    "--broker",
    "-b",
    envvar="MICROMESSAGING_BROKER",
    help="Broker the services listen on [default: $MICROMESSAGING_BROKER, else $REDIS_URL, "
    "$CLOUDAMQP_URL, $RABBITMQ_URL].",
)
@click.option("--host", envvar="MICROMESSAGING_GATEWAY_HOST", default="0.0.0.0", show_default=True)
@click.option(
    "--port",
    envvar="PORT",
    default=8000,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on [env: PORT].",
)
@click.option(
    "--tokens",
    "tokens_file",
    envvar="MICROMESSAGING_GATEWAY_TOKENS_FILE",
    type=click.Path(dir_okay=False),
    help=f"Tokens file (TOML or JSON); ${TOKENS_VARIABLE} may hold more, as JSON.",
)
@click.option(
    "--workers",
    "-w",
    envvar=["MICROMESSAGING_GATEWAY_WORKERS", "WEB_CONCURRENCY"],
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Server processes [env: WEB_CONCURRENCY].",
)
@click.option(
    "--timeout",
    "-t",
    envvar="MICROMESSAGING_GATEWAY_TIMEOUT",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds a call may take; then 504. Passed on to the workers as the deadline.",
)
@click.option(
    "--max-body",
    envvar="MICROMESSAGING_GATEWAY_MAX_BODY",
    default=DEFAULT_MAX_MESSAGE_SIZE,
    show_default=True,
    type=click.IntRange(min=1),
    help="Largest request body, in bytes; larger: 413.",
)
@click.option(
    "--max-batch",
    envvar="MICROMESSAGING_GATEWAY_MAX_BATCH",
    default=100,
    show_default=True,
    type=click.IntRange(min=1),
    help="Most calls in one batch; more: 413.",
)
@click.option(
    "--max-header-size",
    envvar="MICROMESSAGING_GATEWAY_MAX_HEADER_SIZE",
    default=DEFAULT_MAX_HEADER_SIZE,
    show_default=True,
    type=click.IntRange(min=1024),
    help="Largest request head (request line and headers), in bytes; larger: 431.",
)
@click.option(
    "--header-timeout",
    envvar="MICROMESSAGING_GATEWAY_HEADER_TIMEOUT",
    default=DEFAULT_HEADER_TIMEOUT,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds a request head may take to arrive; then 408.",
)
@click.option(
    "--body-timeout",
    envvar="MICROMESSAGING_GATEWAY_BODY_TIMEOUT",
    default=DEFAULT_BODY_TIMEOUT,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds a request body may take to arrive after its head; then 408.",
)
@click.option(
    "--connection-limit",
    envvar="MICROMESSAGING_GATEWAY_CONNECTION_LIMIT",
    default=DEFAULT_CONNECTION_LIMIT,
    show_default=True,
    type=click.IntRange(min=1),
    help="Connections one process holds open at once; the next is answered 503.",
)
@click.option(
    "--log-level",
    envvar="MICROMESSAGING_LOG_LEVEL",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
)
@click.pass_context
def gateway(
    ctx: click.Context,
    broker: str | None,
    host: str,
    port: int,
    tokens_file: str | None,
    workers: int,
    timeout: float,
    max_body: int,
    max_batch: int,
    max_header_size: int,
    header_timeout: float,
    body_timeout: float,
    connection_limit: int,
    log_level: str,
) -> None:
    """Serve POST /<queue> to authenticated callers, forwarding to the queue's workers.

    Callers send ``Authorization: Bearer <token>``; each token's SHA-256 and the queues and
    methods it may call come from --tokens and $MICROMESSAGING_GATEWAY_TOKENS. GET /healthz
    answers 200 while the broker is reachable.
    """
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn

    from .._http_server import protocol_factory

    try:
        settings = GatewaySettings(
            broker=resolve_broker(broker),
            grants=tuple(load_tokens(tokens_file, os.environ.get(TOKENS_VARIABLE))),
            timeout=timeout,
            max_body=max_body,
            max_batch=max_batch,
        )
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(describe(settings, host, port, workers), err=True)
    if not settings.grants:
        click.echo("warning: no tokens configured: every call will be refused (401)", err=True)
    # uvicorn's worker processes are fresh interpreters: the settings reach them this way.
    os.environ[SETTINGS_VARIABLE] = settings.to_json()
    uvicorn.run(
        "micromessaging.gateway:app_from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level.lower(),
        access_log=False,
        lifespan="on",
        ws="none",
        server_header=False,
        http=protocol_factory(
            HttpLimits(max_header_size, header_timeout, body_timeout, connection_limit)
        ),
    )


def _allow_entry(allow: tuple[str, ...]) -> str:
    parts = []
    for item in allow:
        queue, _, methods = item.partition(":")
        names = [m for m in methods.split(",") if m]
        value = '"*"' if not names or names == [ALL_METHODS] else str(names).replace("'", '"')
        parts.append(f"{queue} = {value}")
    return "{ " + ", ".join(parts) + " }"


@gateway.command("hash-token")
@click.option("--new", "make_new", is_flag=True, help="Make a new random token and show it once.")
@click.option("--name", default="client", show_default=True, help="The entry's name, for logs.")
@click.option(
    "--allow",
    multiple=True,
    metavar="QUEUE[:METHOD,...]",
    help="Print a whole tokens-file entry granting these queues (all methods, or those named).",
)
def hash_token_command(make_new: bool, name: str, allow: tuple[str, ...]) -> None:
    """Print the SHA-256 a tokens file stores for a token read from stdin (or --new).

    \b
    micromessaging gateway hash-token --new --name web --allow calc:add,subtract >> tokens.toml
    """
    if make_new:
        token = new_token()
        click.echo(f"token (give it to the caller; it is not stored anywhere): {token}", err=True)
    elif sys.stdin.isatty():
        token = click.prompt("token", hide_input=True)
    else:
        token = sys.stdin.read().strip()
    if not token:
        raise click.UsageError("no token given on stdin")
    digest = hash_token(token)
    if not allow:
        click.echo(digest)
        return
    click.echo(f'[[tokens]]\nname = "{name}"\nsha256 = "{digest}"\nallow = {_allow_entry(allow)}')
