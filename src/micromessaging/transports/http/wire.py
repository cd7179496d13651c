"""The HTTP wire: header names, URL options, and the few JSON-RPC bodies HTTP itself answers.

Pure: no sockets, no event loop. Shared by the HTTP client, the HTTP worker and the gateway,
so that both ends read one definition (docs/wire-http.md describes it field by field).
"""

from __future__ import annotations

import math
import os
import ssl
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from ..._exceptions import ConfigurationError
from ..._protocol import ErrorCode, dumps, error_response

DEADLINE_HEADER = b"x-mm-deadline"
"""When the caller stops waiting, in milliseconds since the epoch (an integer)."""

RETRY_AFTER_SECONDS = 1

DEFAULT_BACKLOG = 1024
"""Requests a worker lets wait for a free slot before it answers 503."""

DEFAULT_MAX_CONNECTIONS = 100
"""Connections one client keeps open to one server (all of them kept alive)."""

KEEP_ALIVE_SECONDS = 30
"""How long the worker keeps an idle connection; longer than the client's, so the client closes."""

CLIENT_KEEP_ALIVE_SECONDS = 15.0


def encode_deadline(deadline: float) -> bytes:
    """The deadline header's value for `deadline` (epoch seconds)."""
    return str(int(deadline * 1000)).encode()


def decode_deadline(value: bytes | None) -> float | None:
    """The deadline (epoch seconds) a header value names; None when absent or unreadable."""
    if not value:
        return None
    try:
        milliseconds = float(value)
    except ValueError:
        return None
    if not math.isfinite(milliseconds) or milliseconds <= 0:
        return None
    return milliseconds / 1000


def error_body(code: int, title: str | None = None, **data: object) -> bytes:
    """A JSON-RPC error response with a null id, for answers HTTP gives before any service.

    `title` is the error's message (default: the code's standard one); `data` its data.
    """
    return dumps(error_response(None, code, title, dict(data) if data else None))


def not_run_body(detail: str) -> bytes:
    """The 503 body: the request was not handed to the service, so retrying it is safe."""
    return error_body(ErrorCode.SERVER_ERROR, "Service unavailable", message=detail, retry=True)


def _options(query: str) -> dict[str, str]:
    return {name: values[-1] for name, values in parse_qs(query).items()}


def _int_option(options: dict[str, str], name: str, default: int) -> int:
    text = options.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ConfigurationError(f"URL option {name}={text!r} is not an integer") from None
    if value < 1:
        raise ConfigurationError(f"URL option {name} must be at least 1")
    return value


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

    @property
    def scheme(self) -> str:
        """http, or https when the worker has a certificate."""
        return "https" if self.certfile else "http"

    @classmethod
    def from_url(cls, url: str) -> ServerAddress:
        """Parse ``http://HOST[:PORT][/PREFIX][?backlog=N]`` or ``https://...?certfile=&keyfile=``.

        With no port in the URL the port is ``$PORT`` (the Heroku convention).
        """
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        _check_scheme(scheme, url)
        options = _options(parts.query)
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
        certfile, keyfile = options.get("certfile"), options.get("keyfile")
        if scheme == "https" and not certfile:
            raise ConfigurationError("an https:// worker needs ?certfile=PATH[&keyfile=PATH]")
        return cls(
            host=parts.hostname or "0.0.0.0",
            port=port,
            prefix=parts.path.rstrip("/"),
            backlog=_int_option(options, "backlog", DEFAULT_BACKLOG),
            certfile=certfile,
            keyfile=keyfile,
        )


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """How an HTTP client reaches its server, read from the broker URL."""

    base_url: str
    """``scheme://host:port/prefix``, without credentials, options or a trailing slash."""
    token: str | None
    max_connections: int
    cafile: str | None

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
        options = _options(parts.query)
        netloc = parts.netloc.rsplit("@", 1)[-1]
        return cls(
            base_url=f"{scheme}://{netloc}{parts.path.rstrip('/')}",
            token=unquote(parts.password) if parts.password else None,
            max_connections=_int_option(options, "max_connections", DEFAULT_MAX_CONNECTIONS),
            cafile=options.get("cafile") or os.environ.get("SSL_CERT_FILE") or None,
        )

    def ssl_context(self) -> ssl.SSLContext:
        """The context that checks the server's certificate (against `cafile` when given)."""
        try:
            return ssl.create_default_context(cafile=self.cafile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(f"cannot load CA file {self.cafile!r}: {exc}") from exc
