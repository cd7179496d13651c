"""The HTTP wire: header names, URL options, and the few JSON-RPC bodies HTTP itself answers.

Pure: no sockets, no event loop. Shared by the HTTP client, the HTTP worker and the gateway,
so that both ends read one definition (docs/wire-http.md describes it field by field).
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from ..._asgi import HttpLimits
from ..._exceptions import ConfigurationError
from .._shared import UrlOptions
from .._shared import encode_deadline as shared_encode_deadline

DEFAULT_BACKLOG = 1024
"""Requests a worker lets wait for a free slot before it answers 503."""

DEFAULT_MAX_CONNECTIONS = 100
"""Connections one client keeps open to one server (all of them kept alive)."""

KEEP_ALIVE_SECONDS = 30
"""How long the worker keeps an idle connection; longer than the client's, so the client closes."""

CLIENT_KEEP_ALIVE_SECONDS = 15.0

DEFAULT_MAX_REPLY_SIZE = 64 * 1024 * 1024
"""The largest reply body a client reads (URL: max_reply_size); a larger one fails the call."""


def encode_deadline(deadline: float) -> bytes:
    """The deadline header's value for `deadline` (epoch seconds)."""
    return b"%d" % shared_encode_deadline(deadline)


URL_OPTIONS = frozenset(
    {
        "backlog",
        "certfile",
        "keyfile",
        "cafile",
        "max_connections",
        "max_reply_size",
        "max_header_size",
        "header_timeout",
        "body_timeout",
        "connection_limit",
    }
)
"""Every option an http(s):// URL may carry (one set, so a URL serves client and worker)."""


def _options(url: str) -> UrlOptions:
    return UrlOptions.split(url, URL_OPTIONS, what="HTTP", strict=True)[0]


def _check_scheme(scheme: str, url: str) -> None:
    if scheme not in ("http", "https"):
        raise ConfigurationError(f"not an http:// or https:// URL: {url!r}")


@dataclass(frozen=True, slots=True)
class ServerAddress:
    """Where an HTTP worker listens, read from its broker URL."""

    host: str
    port: int
    prefix: str
    """Path the queue's path hangs under, without a trailing slash ('' for none)."""
    backlog: int = DEFAULT_BACKLOG
    certfile: str | None = None
    keyfile: str | None = None
    limits: HttpLimits = field(default_factory=HttpLimits)
    """What the server allows each caller: head size, head and body time, connections."""

    @property
    def scheme(self) -> str:
        """http, or https when the worker has a certificate."""
        return "https" if self.certfile else "http"

    @classmethod
    def from_url(cls, url: str) -> ServerAddress:
        """Parse ``http://HOST[:PORT][/PREFIX][?backlog=N]`` or ``https://...?certfile=&keyfile=``.

        With no port in the URL the port is ``$PORT`` (the Heroku convention). The server's
        limits: ``max_header_size`` (bytes), ``header_timeout`` and ``body_timeout``
        (seconds), ``connection_limit`` (connections held at once).
        """
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        _check_scheme(scheme, url)
        options = _options(url)
        try:
            port = parts.port
        except ValueError as exc:
            raise ConfigurationError(f"bad port in {url!r}: {exc}") from None
        if port is None:
            env_port = os.environ.get("PORT")
            if not env_port or not env_port.isdigit():
                raise ConfigurationError(
                    f"{url!r} names no port and $PORT is not set: add :PORT to the URL"
                )
            port = int(env_port)
        certfile, keyfile = options.text("certfile"), options.text("keyfile")
        if scheme == "https" and not certfile:
            raise ConfigurationError("an https:// worker needs ?certfile=PATH[&keyfile=PATH]")
        return cls(
            host=parts.hostname or "0.0.0.0",
            port=port,
            prefix=parts.path.rstrip("/"),
            backlog=options.count("backlog", DEFAULT_BACKLOG, minimum=1),
            certfile=certfile,
            keyfile=keyfile,
            limits=limits_from(options),
        )


def limits_from(options: UrlOptions) -> HttpLimits:
    """The server limits a worker URL sets (the defaults for those it doesn't)."""
    default = HttpLimits()
    return HttpLimits(
        max_header_size=options.count("max_header_size", default.max_header_size, minimum=1024),
        header_timeout=options.seconds("header_timeout", default.header_timeout, maximum=3600),
        body_timeout=options.seconds("body_timeout", default.body_timeout, maximum=3600),
        max_connections=options.count("connection_limit", default.max_connections, minimum=1),
    )


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """How an HTTP client reaches its server, read from the broker URL."""

    base_url: str
    """``scheme://host:port/prefix``, without credentials, options or a trailing slash."""
    token: str | None
    max_connections: int
    cafile: str | None
    max_reply_size: int = 64 * 1024 * 1024

    @classmethod
    def from_url(cls, url: str) -> ClientSettings:
        """Parse ``http[s]://[:TOKEN@]HOST[:PORT][/PREFIX][?cafile=PATH&max_connections=N]``.

        A password in the URL is sent as a bearer token (for the gateway).
        """
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        _check_scheme(scheme, url)
        if not parts.hostname:
            raise ConfigurationError(f"no host in {url!r}")
        options = _options(url)
        netloc = parts.netloc.rsplit("@", 1)[-1]
        return cls(
            base_url=f"{scheme}://{netloc}{parts.path.rstrip('/')}",
            token=unquote(parts.password) if parts.password else None,
            max_connections=options.count("max_connections", DEFAULT_MAX_CONNECTIONS, minimum=1),
            cafile=options.text("cafile") or os.environ.get("SSL_CERT_FILE") or None,
            max_reply_size=options.count("max_reply_size", DEFAULT_MAX_REPLY_SIZE, minimum=1),
        )

    @property
    def endpoint(self) -> tuple[bool, str, int, str]:
        """Whether it is HTTPS, the host and port to connect to, and the path prefix."""
        parts = urlsplit(self.base_url)
        https = parts.scheme == "https"
        port = parts.port or (443 if https else 80)
        return https, parts.hostname or "localhost", port, parts.path

    def ssl_context(self) -> ssl.SSLContext:
        """The context that checks the server's certificate (against `cafile` when given)."""
        try:
            return ssl.create_default_context(cafile=self.cafile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(f"cannot load CA file {self.cafile!r}: {exc}") from exc
