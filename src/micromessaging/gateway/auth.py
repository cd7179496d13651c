"""The gateway's bearer tokens: stored as SHA-256 hashes, each granting queues and methods.

A tokens document, in JSON or TOML, lists one entry per token:

    [[tokens]]
    name = "web"                                   # for logs, never the token
    sha256 = "9f86d081884c7d659a2feaa0c55ad015..."   # micromessaging gateway hash-token
    allow = { calc = ["add", "subtract"], reports = "*" }

``allow`` maps a queue to the methods the token may call there, or to ``"*"`` for all of
them. ``console = true`` lets the token log in to the web console at ``/console``, which
shows every queue and may call, replay and purge on any: a grant of its own, apart from
``allow`` (a console-only token leaves ``allow`` out). The plaintext token is never
stored: a presented token is hashed and compared with every stored hash with
`hmac.compare_digest`, each time all of them, so that neither the comparison nor which
entry matched shows in the time taken.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .._exceptions import ConfigurationError

_HEX_DIGEST = re.compile(r"^[0-9a-f]{64}$")
ALL_METHODS = "*"


def hash_token(token: str) -> str:
    """The SHA-256 of `token`, as the hex digits a tokens file stores."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class Grant:
    """One token's hash and what it may call: queue -> method names, or None for all."""

    name: str
    digest: bytes
    allow: Mapping[str, frozenset[str] | None]
    console: bool = False
    """Whether the token logs in to the web console (apart from what it may call)."""

    def may_use(self, queue: str) -> bool:
        """Whether the token may call anything on `queue`."""
        return queue in self.allow

    def permits(self, queue: str, method: str) -> bool:
        """Whether the token may call `method` on `queue`."""
        if queue not in self.allow:
            return False
        methods = self.allow[queue]
        return methods is None or method in methods

    def as_entry(self) -> dict[str, Any]:
        """The grant as a tokens-document entry (hash included, no plaintext to include)."""
        entry: dict[str, Any] = {
            "name": self.name,
            "sha256": self.digest.hex(),
            "allow": {q: ALL_METHODS if m is None else sorted(m) for q, m in self.allow.items()},
        }
        if self.console:
            entry["console"] = True
        return entry


def _grant(entry: object, where: str) -> Grant:
    if not isinstance(entry, dict):
        raise ConfigurationError(f"{where}: each token entry must be a table/object")
    name = str(entry.get("name") or "unnamed")
    digest = entry.get("sha256")
    if not isinstance(digest, str) or not _HEX_DIGEST.match(digest.lower()):
        raise ConfigurationError(
            f"{where}: token {name!r} needs sha256 = the token's SHA-256 in 64 hex digits "
            "(store the hash, never the token: micromessaging gateway hash-token)"
        )
    console = entry.get("console", False)
    if not isinstance(console, bool):
        raise ConfigurationError(f"{where}: token {name!r}: console must be true or false")
    allow_in = entry.get("allow")
    if allow_in is None and console:
        allow_in = {}  # a console-only token
    elif not isinstance(allow_in, dict) or not (allow_in or console):
        raise ConfigurationError(
            f"{where}: token {name!r} needs allow = {{queue = [methods]}}, or console = true"
        )
    allow: dict[str, frozenset[str] | None] = {}
    for queue, methods in allow_in.items():
        if methods == ALL_METHODS:
            allow[str(queue)] = None
        elif isinstance(methods, list) and all(isinstance(m, str) for m in methods):
            allow[str(queue)] = frozenset(methods)
        else:
            raise ConfigurationError(
                f"{where}: token {name!r}: allow.{queue} must be a list of method names or '*'"
            )
    return Grant(name, bytes.fromhex(digest.lower()), allow, console)


def parse_tokens(text: str, where: str) -> list[Grant]:
    """The grants of a tokens document (TOML, or JSON when it starts with { or [)."""
    stripped = text.lstrip()
    try:
        if stripped.startswith(("{", "[")) and not stripped.startswith("[["):
            document: object = orjson.loads(text)
        else:
            document = tomllib.loads(text)
    except (orjson.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"{where}: not valid JSON or TOML: {exc}") from exc
    entries = document.get("tokens", []) if isinstance(document, dict) else document
    if not isinstance(entries, list):
        raise ConfigurationError(f"{where}: expected a list of tokens under 'tokens'")
    return [_grant(entry, where) for entry in entries]


def load_tokens(path: str | None, env_text: str | None) -> list[Grant]:
    """The grants of the tokens file at `path` and of an environment variable's value."""
    grants: list[Grant] = []
    if path:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigurationError(f"cannot read tokens file {path!r}: {exc}") from exc
        grants += parse_tokens(text, path)
    if env_text:
        grants += parse_tokens(env_text, "MICROMESSAGING_GATEWAY_TOKENS")
    return grants


class Authenticator:
    """Finds the grant of a presented bearer token."""

    def __init__(self, grants: Iterable[Grant]) -> None:
        self.grants = tuple(grants)

    def identify(self, authorization: bytes | None) -> Grant | None:
        """The grant for an ``Authorization: Bearer <token>`` header; None for no or bad token."""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(b" ")
        token = token.strip()
        if scheme.lower() != b"bearer" or not token:
            return None
        digest = hashlib.sha256(token).digest()
        found: Grant | None = None
        for grant in self.grants:  # all of them, always: the time says nothing of a match
            if hmac.compare_digest(digest, grant.digest):
                found = grant
        return found
