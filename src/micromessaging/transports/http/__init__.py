"""http:// and https:// - JSON-RPC over plain HTTP POST, the seed's third transport.

A worker serves its queue as ``POST /<queue>`` (the seed's ``/calc``) and ``POST /`` on an
embedded uvicorn; a client POSTs to ``<base URL>/<queue>`` over a pool of kept-alive
connections (pool.py), so any number of calls are in flight at once, one per
connection. The body is the JSON-RPC request as is, so the seed's Net::HTTP client and
Sinatra server interoperate unchanged; the deadline travels in the ``X-MM-Deadline`` header.
``GET <prefix>/_mm/status`` answers the worker's record, for `admin_transport`. docs/wire-http.md
has the whole wire, status codes included.
"""

from __future__ import annotations

from ..base import WorkerOptions
from .admin import HttpAdmin, admin_transport
from .client import HttpClientTransport
from .worker import HttpDelivery, HttpWorkerTransport


def client_transport(url: str) -> HttpClientTransport:
    """A client POSTing to the server at `url` (``http[s]://[:TOKEN@]HOST[:PORT][/PREFIX]``)."""
    return HttpClientTransport(url)


def worker_transport(url: str, options: WorkerOptions) -> HttpWorkerTransport:
    """A worker serving `options.queue` over HTTP on `url`'s host and port (else ``$PORT``)."""
    return HttpWorkerTransport(url, options)


__all__ = [
    "HttpAdmin",
    "HttpClientTransport",
    "HttpDelivery",
    "HttpWorkerTransport",
    "admin_transport",
    "client_transport",
    "worker_transport",
]
