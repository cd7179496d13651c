"""The console's sessions: a signed cookie, the CSRF token it carries, same-origin checks.

A session is one cookie, ``mm_console``: who logged in (empty when the console asks no one),
a random CSRF token, and an expiry, signed with HMAC-SHA256 under a secret of the server.
The cookie is HttpOnly and SameSite=Strict, so a page of another site never sends it and no
script reads it; the page learns its CSRF token from ``GET api/session`` (a same-origin
read) and sends it back in the ``X-MM-CSRF`` header of every POST, where it is compared
with the signed one in constant time. A cookie planted by someone else fails the
signature; a request from another origin fails `cross_origin` before the token is looked
at. docs/console.md tells the whole scheme.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import orjson

from .._asgi import Scope, header

COOKIE = "mm_console"
CSRF_HEADER = b"x-mm-csrf"
LIFETIME = 12 * 3600.0
"""Seconds a session lasts; then the page asks for the token again (or issues a new one)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class Session:
    """One signed-in page (or browser): who, its CSRF token, and when it ends."""

    who: str
    csrf: str
    expires: float

    def matches(self, presented: bytes | None) -> bool:
        """Whether `presented` (the ``X-MM-CSRF`` header) is this session's token."""
        if not presented:
            return False
        return hmac.compare_digest(presented, self.csrf.encode())


class Sessions:
    """Issues session cookies and reads them back, refusing any not signed with `secret`."""

    def __init__(self, secret: bytes, *, lifetime: float = LIFETIME, path: str = "/") -> None:
        self._secret = secret
        self.lifetime = lifetime
        self.path = path

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode(), hashlib.sha256).digest())

    def issue(self, who: str, now: float | None = None) -> tuple[Session, str]:
        """A new session for `who`, and the cookie value that carries it."""
        expires = (time.time() if now is None else now) + self.lifetime
        session = Session(who, secrets.token_urlsafe(24), float(int(expires)))
        payload = _b64(orjson.dumps({"w": who, "c": session.csrf, "e": int(expires)}))
        return session, f"{payload}.{self._sign(payload)}"

    def read(self, cookie_header: bytes | None, now: float | None = None) -> Session | None:
        """The session a ``Cookie`` header carries; None when absent, forged or expired."""
        value = cookie_value(cookie_header, COOKIE)
        if not value:
            return None
        payload, _, signature = value.partition(".")
        if not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
            return None
        try:
            data = orjson.loads(_unb64(payload))
            session = Session(str(data["w"]), str(data["c"]), float(data["e"]))
        except (binascii.Error, ValueError, KeyError, TypeError):
            return None
        if session.expires <= (time.time() if now is None else now):
            return None
        return session

    def set_cookie(self, value: str, *, secure: bool) -> bytes:
        """The ``Set-Cookie`` value storing a session for this console's path."""
        attributes = f"Path={self.path}; Max-Age={int(self.lifetime)}; HttpOnly; SameSite=Strict"
        return f"{COOKIE}={value}; {attributes}{'; Secure' if secure else ''}".encode()

    def clear_cookie(self, *, secure: bool) -> bytes:
        """The ``Set-Cookie`` value that ends the session in the browser."""
        attributes = f"Path={self.path}; Max-Age=0; HttpOnly; SameSite=Strict"
        return f"{COOKIE}=; {attributes}{'; Secure' if secure else ''}".encode()


def cookie_value(cookie_header: bytes | None, name: str) -> str | None:
    """The value of cookie `name` in a ``Cookie`` header, or None."""
    if not cookie_header:
        return None
    for pair in cookie_header.decode("latin-1").split(";"):
        key, _, value = pair.strip().partition("=")
        if key == name:
            return value
    return None


def cross_origin(scope: Scope) -> str | None:
    """Why a state-changing request looks sent by another site's page; None when it doesn't.

    Browsers name the page's origin in ``Origin`` and say how it relates to the target in
    ``Sec-Fetch-Site``. Either, when present, must say "this very site"; the Origin's host
    and port are compared with the Host header (not its scheme: behind a proxy that ends
    TLS the server sees http while the page is https). A request with neither is not a
    browser's, and still needs the CSRF token.
    """
    site = header(scope, b"sec-fetch-site")
    if site is not None and site != b"same-origin":
        return f"Sec-Fetch-Site is {site.decode('latin-1')!r}"
    origin = header(scope, b"origin")
    if origin is None:
        return None
    host = header(scope, b"host")
    _, separator, authority = origin.partition(b"://")
    if not separator or host is None or authority.lower() != host.lower():
        return f"Origin {origin.decode('latin-1')!r} is not this site"
    return None


def host_allowed(scope: Scope, hosts: frozenset[str] | None) -> bool:
    """Whether the Host header names one of `hosts` (any port); None allows any.

    A console without a login listens on loopback; checking the Host header keeps pages of
    other sites out even when their name is made to resolve to 127.0.0.1 (DNS rebinding).
    """
    if hosts is None:
        return True
    value = (header(scope, b"host") or b"").decode("latin-1").lower()
    if value.startswith("["):
        name, bracket, _ = value[1:].partition("]")
        if not bracket:
            return False
    else:
        name = value.rpartition(":")[0] if ":" in value else value
    return bool(name) and name in hosts
