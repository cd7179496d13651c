"""Transports, chosen by the broker URL's scheme.

Each transport module offers two factories, ``client_transport(url)`` and
``worker_transport(url, options)``, and may offer ``sync_client_transport(url)`` for I/O on
the calling thread. Adding a broker means one module and one entry in `SCHEMES`; its library
is imported only when its scheme is used, so a missing extra fails with a message that names
it.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from urllib.parse import urlsplit

from .._exceptions import ConfigurationError
from ._shared import Backoff, Refused
from .admin import AdminTransport
from .base import ClientTransport, SyncClientTransport, WorkerOptions, WorkerTransport

# scheme -> (module, extra that installs its library, or None when it needs none)
SCHEMES: dict[str, tuple[str, str | None]] = {
    "memory": ("micromessaging.transports.memory", None),
    "redis": ("micromessaging.transports.redis", "redis"),
    "rediss": ("micromessaging.transports.redis", "redis"),
    "redis+cluster": ("micromessaging.transports.redis", "redis"),
    "rediss+cluster": ("micromessaging.transports.redis", "redis"),
    "amqp": ("micromessaging.transports.amqp", "amqp"),
    "amqps": ("micromessaging.transports.amqp", "amqp"),
    "nats": ("micromessaging.transports.nats", "nats"),
    "tls": ("micromessaging.transports.nats", "nats"),
    "http": ("micromessaging.transports.http", "http"),
    "https": ("micromessaging.transports.http", "http"),
}


def _module(url: str) -> ModuleType:
    scheme = urlsplit(url).scheme.lower()
    if scheme not in SCHEMES:
        known = ", ".join(f"{name}://" for name in SCHEMES)
        raise ConfigurationError(f"unknown broker URL scheme in {url!r}; known: {known}")
    module_name, extra = SCHEMES[scheme]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if extra is None or exc.name is None or exc.name.startswith("micromessaging"):
            raise
        raise ConfigurationError(
            f'{scheme}:// needs the {exc.name!r} package: pip install "micromessaging[{extra}]"'
        ) from exc


def client_transport(url: str) -> ClientTransport:
    """The client transport for a broker URL."""
    transport: ClientTransport = _module(url).client_transport(url)
    return transport


def sync_client_transport(url: str) -> SyncClientTransport:
    """The blocking client transport for a broker URL (native, or the async one on a thread)."""
    module = _module(url)
    factory = getattr(module, "sync_client_transport", None)
    if factory is not None:
        transport: SyncClientTransport = factory(url)
        return transport
    from ._threaded import ThreadedClientTransport

    return ThreadedClientTransport(module.client_transport(url))


def admin_transport(url: str) -> AdminTransport:
    """What operations see of the broker at `url`: queues, workers, dead letters."""
    module = _module(url)
    factory = getattr(module, "admin_transport", None)
    if factory is None:
        scheme = urlsplit(url).scheme
        raise ConfigurationError(f"{scheme}:// offers no status or dead letters")
    admin: AdminTransport = factory(url)
    return admin


def worker_transport(url: str, options: WorkerOptions) -> WorkerTransport:
    """The worker transport for a broker URL, serving `options.queue`."""
    transport: WorkerTransport = _module(url).worker_transport(url, options)
    return transport


__all__ = [
    "SCHEMES",
    "AdminTransport",
    "Backoff",
    "ClientTransport",
    "Refused",
    "SyncClientTransport",
    "WorkerOptions",
    "WorkerTransport",
    "admin_transport",
    "client_transport",
    "sync_client_transport",
    "worker_transport",
]
