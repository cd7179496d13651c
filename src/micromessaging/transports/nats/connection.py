"""Opening a NATS connection that reconnects by itself, with errors in our exception tree."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS

from ..._exceptions import TransportError
from ..._settings import mask_password
from .._shared import Refused, looks_refused
from . import compat
from .compat import Client
from .wire import NatsSettings

logger = logging.getLogger("micromessaging.transport.nats")

NATS_ERRORS = (nats.errors.Error, OSError, asyncio.TimeoutError)
"""What nats-py raises when the server is gone or refuses: converted at our boundary."""

Callback = Callable[[], Awaitable[None]]


def where(settings: NatsSettings) -> str:
    """The servers of `settings`, passwords masked, for messages and logs."""
    return ", ".join(mask_password(server) for server in settings.servers)


async def open_connection(
    settings: NatsSettings,
    name: str,
    *,
    on_disconnect: Callback | None = None,
    on_reconnect: Callback | None = None,
) -> NATS:
    """A connected client that reconnects forever; `TransportError` when connecting fails."""
    connection = Client()
    seen: list[Exception] = []

    async def log_error(exc: Exception) -> None:
        # nats-py reports every failed (re)connection attempt here, and goes on trying.
        logger.debug("NATS: %r", exc)
        seen[:] = [exc]

    options: dict[str, Any] = {
        "servers": list(settings.servers),
        "name": name,
        "tls": settings.tls,
        "inbox_prefix": settings.inbox_prefix,
        "allow_reconnect": True,
        # Try each server twice at first, so a wrong URL fails fast; then forever (below).
        "max_reconnect_attempts": 1,
        "reconnect_time_wait": settings.reconnect_wait,
        "connect_timeout": settings.connect_timeout,
        "error_cb": log_error,
    }
    if on_disconnect is not None:
        options["disconnected_cb"] = on_disconnect
    if on_reconnect is not None:
        options["reconnected_cb"] = on_reconnect
    try:
        await asyncio.wait_for(connection.connect(**options), settings.connect_timeout * 3)
    except (*NATS_ERRORS, asyncio.CancelledError) as exc:
        with contextlib.suppress(*NATS_ERRORS):
            await connection.close()
        if isinstance(exc, asyncio.CancelledError):
            raise
        cause = seen[0] if seen else exc  # the reason, rather than nats-py's NoServersError
        kind = Refused if looks_refused(cause) else TransportError
        raise kind(f"can't connect to NATS at {where(settings)}: {cause!r}") from exc
    compat.reconnect_forever(connection)
    return connection


async def close_connection(connection: NATS) -> None:
    """Close `connection`, flushing what it buffered; never raises a nats-py error."""
    with contextlib.suppress(*NATS_ERRORS):
        await connection.close()
