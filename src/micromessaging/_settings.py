"""Where settings come from: flags first, then the environment, then the platform's own names."""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

from ._exceptions import ConfigurationError

BROKER_VARIABLES = ("MICROMESSAGING_BROKER", "REDIS_URL", "CLOUDAMQP_URL", "RABBITMQ_URL")
"""Checked in this order when no broker is given: ours, then Heroku's add-ons' names."""


def resolve_broker(explicit: str | None = None, default: str | None = None) -> str:
    """The broker URL to use: `explicit`, else the first variable set, else `default`."""
    if explicit:
        return explicit
    for name in BROKER_VARIABLES:
        value = os.environ.get(name)
        if value:
            return value
    if default is not None:
        return default
    raise ConfigurationError(
        "no broker given: pass --broker URL or set MICROMESSAGING_BROKER "
        "(REDIS_URL, CLOUDAMQP_URL and RABBITMQ_URL are read too)"
    )


def mask_password(url: str) -> str:
    """`url` with its password replaced by ****, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:****@{netloc}"))
