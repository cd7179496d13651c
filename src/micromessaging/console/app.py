"""The console as an ASGI app: one static page, and the JSON endpoints it reads and posts to.

Written by hand on the helpers of _asgi.py, like the HTTP worker and the gateway: a dozen
fixed routes, a bounded body read and a few headers don't need a framework, and a
framework's conveniences (templates, form parsing, permissive CORS) are what a page like
this must not have. Routes, relative to where the console is mounted:

    GET  /                     the page (with a login: the login page, 401, until logged in)
    GET  /console.js  /console.css  /login.js  /favicon.svg
    GET  api/session           the page's CSRF token, who is logged in, the broker
    GET  api/status            the shared status snapshot (feed.py)
    GET  api/methods?queue=Q   the service's methods, from rpc.discover
    GET  api/dead-letters?queue=Q
    POST api/call     {"queue", "method", "params"}  -> {"reply", "ms"}
    POST api/replay   {"queue", "ids": [...] | null} -> {"replayed": [ids]}
    POST api/purge    {"queue", "ids": [...] | null} -> {"purged": n}
    POST api/login    {"token"}   (only with a login)
    POST api/logout

Every POST must come from this site's own page (session.py: same origin, the session's
CSRF token in ``X-MM-CSRF``, a JSON body); every answer carries a Content-Security-Policy
that allows only this site's own script and styles, and forbids framing. docs/console.md
documents the endpoints and their answers.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

import orjson

from .._asgi import BodyTooLarge, Receive, Scope, Send, header, read_body
from .._exceptions import ConfigurationError, MicromessagingError
from ..transports import admin_transport
from ..transports.admin import AdminTransport, DeadLetter
from .feed import StatusFeed
from .services import Services, Unanswered
from .session import CSRF_HEADER, Session, Sessions, cross_origin, host_allowed

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
MAX_BODY = 1024 * 1024
MAX_NAME = 256
DEAD_LETTER_LIMIT = 200

SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        b"connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]
CONTENT_TYPES = {
    "html": b"text/html; charset=utf-8",
    "js": b"text/javascript; charset=utf-8",
    "css": b"text/css; charset=utf-8",
    "svg": b"image/svg+xml",
}
FILES = ("index.html", "login.html", "console.js", "console.css", "login.js", "favicon.svg")
PUBLIC_FILES = ("console.css", "login.js", "favicon.svg")
"""Served without a session: what the login page needs (no data, nothing of the console)."""

Login = Callable[[str], str | None]
"""Who a token logs in (a name for the page and the logs), or None for a refused token."""


@dataclass(frozen=True)
class ConsoleSettings:
    """What a console serves and how; plain data."""

    broker: str
    interval: float = 1.0
    """Seconds between status snapshots while pages watch."""
    timeout: float = 30.0
    """Seconds a call made from the page may take."""
    prefix: str = ""
    """Where the console is mounted (the gateway: ``/console``); empty at the root."""
    allowed_hosts: frozenset[str] | None = LOOPBACK
    """Host header names answered (any port); None: any (a console behind a login)."""
    secret: bytes | None = None
    """Signs the session cookies; None: a random secret of this process."""


class Refused(Exception):
    """A request answered with an HTTP error and a JSON ``{"error": {kind, message}}``."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message


def _static(name: str) -> bytes:
    return (resources.files(__package__) / "static" / name).read_bytes()


class Console:
    """The ASGI app of the web console, for one broker."""

    def __init__(
        self,
        settings: ConsoleSettings,
        *,
        admin: AdminTransport | None = None,
        login: Login | None = None,
    ) -> None:
        self.settings = settings
        self.login = login
        self.sessions = Sessions(
            settings.secret or secrets.token_bytes(32), path=settings.prefix + "/"
        )
        self.feed = StatusFeed(
            (lambda: admin) if admin is not None else (lambda: admin_transport(settings.broker)),
            settings.broker,
            interval=settings.interval,
        )
        self.services = Services(settings.broker, timeout=settings.timeout)
        self._files = {name: _static(name) for name in FILES}
        self._reads: dict[str, Callable[[Scope, Session], Awaitable[bytes]]] = {
            "api/session": self._session,
            "api/status": self._status,
            "api/methods": self._methods,
            "api/dead-letters": self._dead_letters,
        }
        self._actions: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
            "api/call": self._call,
            "api/replay": self._replay,
            "api/purge": self._purge,
        }

    async def aclose(self) -> None:
        """Stop the status feed and close the broker connections."""
        await self.feed.aclose()
        await self.services.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            await self._http(scope, receive, send)
        except ConnectionResetError:
            return  # the page went away while sending its body
        except Refused as exc:
            body = orjson.dumps({"error": {"kind": exc.kind, "message": exc.message}})
            await _respond(send, exc.status, body, "json")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not host_allowed(scope, self.settings.allowed_hosts):
            raise Refused(403, "host", "this console answers on 127.0.0.1 and localhost only")
        path: str = scope["path"]
        prefix = self.settings.prefix
        if prefix and path == prefix:
            await _respond(send, 308, b"", "html", [(b"location", f"{prefix}/".encode())])
            return
        if not path.startswith(prefix + "/"):
            raise Refused(404, "not found", f"nothing at {path}")
        route = path[len(prefix) + 1 :]
        method = scope["method"]
        reading = method in ("GET", "HEAD")
        if route in self._actions or route in ("api/login", "api/logout"):
            if method != "POST":
                raise Refused(405, "method", f"{route} takes POST")
            await self._post(scope, receive, send, route)
        elif not reading:
            raise Refused(405, "method", f"{route or 'the page'} takes GET")
        elif route in self._reads:
            session = self._session_of(scope)
            await _respond(send, 200, await self._reads[route](scope, session), "json")
        elif route == "":
            await self._page(scope, send)
        elif route in self._files and route.endswith((".js", ".css", ".svg")):
            if route not in PUBLIC_FILES:
                self._session_of(scope)
            await _respond(send, 200, self._files[route], route.rpartition(".")[2])
        else:
            raise Refused(404, "not found", f"nothing at {path}")

    # --- sessions ---------------------------------------------------------------------

    def _valid_session(self, scope: Scope) -> Session | None:
        session = self.sessions.read(header(scope, b"cookie"))
        if session is None or (self.login is not None and not session.who):
            return None
        return session

    def _session_of(self, scope: Scope) -> Session:
        session = self._valid_session(scope)
        if session is None:
            what = "log in first" if self.login is not None else "load the console page first"
            raise Refused(401, "no session", f"no console session: {what}")
        return session

    def _secure(self, scope: Scope) -> bool:
        return scope.get("scheme") == "https" or header(scope, b"x-forwarded-proto") == b"https"

    async def _page(self, scope: Scope, send: Send) -> None:
        if self._valid_session(scope) is not None:
            await _respond(send, 200, self._files["index.html"], "html")
        elif self.login is not None:
            await _respond(send, 401, self._files["login.html"], "html")
        else:
            _, value = self.sessions.issue("")
            cookie = self.sessions.set_cookie(value, secure=self._secure(scope))
            await _respond(send, 200, self._files["index.html"], "html", [(b"set-cookie", cookie)])

    async def _post(self, scope: Scope, receive: Receive, send: Send, route: str) -> None:
        problem = cross_origin(scope)
        if problem is not None:
            raise Refused(403, "cross-origin", f"refused: {problem}")
        media_type = (header(scope, b"content-type") or b"").partition(b";")[0].strip()
        if media_type.lower() != b"application/json":
            raise Refused(415, "content type", "send the body as application/json")
        if route == "api/login":
            await self._login(scope, await _json_body(scope, receive), send)
            return
        session = self._session_of(scope)
        if not session.matches(header(scope, CSRF_HEADER)):
            raise Refused(403, "csrf", "missing or wrong X-MM-CSRF header: reload the page")
        data = await _json_body(scope, receive)
        if route == "api/logout":
            cookie = self.sessions.clear_cookie(secure=self._secure(scope))
            await _respond(send, 204, b"", "json", [(b"set-cookie", cookie)])
            return
        await _respond(send, 200, orjson.dumps(await self._actions[route](data)), "json")

    async def _login(self, scope: Scope, data: dict[str, Any], send: Send) -> None:
        token = data.get("token")
        who = self.login(token) if self.login is not None and isinstance(token, str) else None
        if not who:
            raise Refused(401, "login", "not a console token")
        _, value = self.sessions.issue(who)
        cookie = self.sessions.set_cookie(value, secure=self._secure(scope))
        await _respond(send, 204, b"", "json", [(b"set-cookie", cookie)])

    # --- reads ------------------------------------------------------------------------

    async def _session(self, scope: Scope, session: Session) -> bytes:
        return orjson.dumps(
            {
                "csrf": session.csrf,
                "who": session.who,
                "broker": self.feed.broker,
                "login": self.login is not None,
            }
        )

    async def _status(self, scope: Scope, session: Session) -> bytes:
        return await self.feed.latest()

    async def _methods(self, scope: Scope, session: Session) -> bytes:
        queue = _queue(_query(scope).get("queue"))
        try:
            return orjson.dumps(await self.services.describe(queue))
        except Unanswered as exc:
            raise Refused(exc.status, exc.kind, exc.message) from exc

    async def _dead_letters(self, scope: Scope, session: Session) -> bytes:
        queue = _queue(_query(scope).get("queue"))
        records = await self._admin_call(lambda admin: admin.dead_letters(queue, DEAD_LETTER_LIMIT))
        return orjson.dumps({"queue": queue, "records": [_dead_letter(r) for r in records]})

    # --- actions ----------------------------------------------------------------------

    async def _call(self, data: dict[str, Any]) -> dict[str, Any]:
        queue = _queue(data.get("queue"))
        method = data.get("method")
        if not isinstance(method, str) or not method or len(method) > MAX_NAME:
            raise Refused(400, "bad request", "method must be a method name")
        params = data.get("params")
        if params is not None and not isinstance(params, list | dict):
            raise Refused(400, "bad request", "params must be a list, an object or null")
        try:
            return await self.services.call(queue, method, params)
        except Unanswered as exc:
            raise Refused(exc.status, exc.kind, exc.message) from exc

    async def _replay(self, data: dict[str, Any]) -> dict[str, Any]:
        queue, ids = _queue(data.get("queue")), _ids(data)
        replayed = await self._admin_call(lambda admin: admin.replay(queue, ids))
        self.feed.refresh_soon()
        return {"queue": queue, "replayed": [record.id for record in replayed]}

    async def _purge(self, data: dict[str, Any]) -> dict[str, Any]:
        queue, ids = _queue(data.get("queue")), _ids(data)
        purged = await self._admin_call(lambda admin: admin.purge(queue, ids))
        self.feed.refresh_soon()
        return {"queue": queue, "purged": purged}

    async def _admin_call(self, work: Callable[[AdminTransport], Awaitable[Any]]) -> Any:
        try:
            return await work(await self.feed.admin())
        except ConfigurationError as exc:
            raise Refused(501, "unsupported", str(exc)) from exc
        except MicromessagingError as exc:
            raise Refused(502, "broker", f"the broker does not answer: {exc}") from exc


def _query(scope: Scope) -> dict[str, str]:
    try:
        values = parse_qs(scope.get("query_string", b"").decode("latin-1"), max_num_fields=10)
    except ValueError:
        raise Refused(400, "bad request", "too many query parameters") from None
    return {key: found[0] for key, found in values.items()}


def _queue(value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME:
        raise Refused(400, "bad request", "queue must be a queue name")
    if any(ord(char) < 32 for char in value):
        raise Refused(400, "bad request", "a queue name has no control characters")
    return value


def _ids(data: dict[str, Any]) -> list[str] | None:
    ids = data.get("ids")
    if ids is None:
        return None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise Refused(400, "bad request", "ids must be a list of dead-letter ids, or null")
    return ids


def _dead_letter(record: DeadLetter) -> dict[str, Any]:
    shown = record.to_json()
    request = record.request()
    if isinstance(request, dict) and isinstance(request.get("method"), str):
        shown["method"] = request["method"]
    elif isinstance(request, list):
        shown["method"] = f"batch of {len(request)}"
    else:
        shown["method"] = None
    return shown


async def _json_body(scope: Scope, receive: Receive) -> dict[str, Any]:
    try:
        body = await read_body(scope, receive, MAX_BODY)
    except BodyTooLarge:
        raise Refused(413, "too large", f"the body is over {MAX_BODY} bytes") from None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise Refused(400, "bad request", "the body is not JSON") from None
    if not isinstance(data, dict):
        raise Refused(400, "bad request", "the body must be a JSON object")
    return data


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    kind: str,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    response_headers = [*SECURITY_HEADERS, *headers]
    if body:
        response_headers.append((b"content-type", CONTENT_TYPES.get(kind, b"application/json")))
    if status != 204:
        response_headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": response_headers})
    await send({"type": "http.response.body", "body": body})
