"""The console the gateway mounts at /console: only for console tokens, separate from calls."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import httpx
import orjson
import pytest

from micromessaging import Worker
from micromessaging.console.session import COOKIE
from micromessaging.gateway import Gateway, GatewaySettings
from micromessaging.gateway.auth import hash_token, parse_tokens
from micromessaging.transports.http.server import EmbeddedServer, bind
from tests.transports.contract import Probe

from .helpers import free_port, memory_url

OPERATOR, CALLER, BOTH = "operator-token", "caller-token", "both-token"


def tokens(queue: str) -> str:
    return f"""
[[tokens]]
name = "operator"
sha256 = "{hash_token(OPERATOR)}"
console = true

[[tokens]]
name = "caller"
sha256 = "{hash_token(CALLER)}"
allow = {{ {queue} = "*", console = "*" }}

[[tokens]]
name = "both"
sha256 = "{hash_token(BOTH)}"
allow = {{ {queue} = ["add"] }}
console = true
"""


@contextlib.asynccontextmanager
async def gateway(settings: GatewaySettings) -> AsyncIterator[str]:
    port = free_port()
    app = Gateway(settings)
    server = EmbeddedServer(app, bind("127.0.0.1", port))
    await server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await server.stop()
        await app.aclose()


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, str, Probe, GatewaySettings]]:
    url, queue = memory_url(), f"mm-gwc-{uuid.uuid4().hex[:8]}"
    settings = GatewaySettings(url, tuple(parse_tokens(tokens(queue), "test")), timeout=5)
    probe = Probe()
    async with Worker(probe, url, queue), gateway(settings) as base:
        yield base, queue, probe, settings


async def log_in(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post(
        "/console/api/login",
        content=orjson.dumps({"token": token}),
        headers={"content-type": "application/json"},
    )


async def test_no_console_token_no_page_and_no_data(served) -> None:
    base, queue, _, _ = served
    async with httpx.AsyncClient(base_url=base) as client:
        assert (await client.get("/console")).headers["location"] == "/console/"
        login = await client.get("/console/")
        assert login.status_code == 401
        assert b"console token" in login.content
        assert b"console.js" not in login.content and "set-cookie" not in login.headers
        for path in ("/console/console.js", "/console/api/status", "/console/api/session",
                     f"/console/api/dead-letters?queue={queue}"):  # fmt: skip
            assert (await client.get(path)).status_code == 401, path
            # A bearer token is for calls: the console wants its session.
            response = await client.get(path, headers={"authorization": f"Bearer {OPERATOR}"})
            assert response.status_code == 401, path
        for token in (CALLER, "not-a-token", hash_token(OPERATOR)):
            response = await log_in(client, token)
            assert response.status_code == 401, token
            assert "set-cookie" not in response.headers


async def test_a_console_token_logs_in_and_the_console_works(served) -> None:
    base, queue, probe, _ = served
    async with httpx.AsyncClient(base_url=base) as client:
        response = await log_in(client, OPERATOR)
        assert response.status_code == 204
        cookie = response.headers["set-cookie"]
        assert "Path=/console/" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert OPERATOR not in cookie
        page = await client.get("/console/")
        assert page.status_code == 200 and b"console.js" in page.content
        session = (await client.get("/console/api/session")).json()
        assert session["who"] == "operator" and session["login"] is True
        status = (await client.get("/console/api/status")).json()
        assert queue in [q["queue"] for q in status["queues"]]
        post = {"content-type": "application/json", "x-mm-csrf": session["csrf"]}
        body = orjson.dumps({"queue": queue, "method": "record", "params": ["via console"]})
        assert (
            await client.post("/console/api/call", headers=post, content=body)
        ).status_code == 200
        assert probe.ran == ["via console"]
        # The console's session is no bearer token: calls through the gateway still need one.
        forwarded = await client.post(f"/{queue}", json={"jsonrpc": "2.0", "method": "add",
                                                         "params": [1, 2], "id": 1})  # fmt: skip
        assert forwarded.status_code == 401
        # Logged out, the session is gone.
        assert (
            await client.post("/console/api/logout", headers=post, content=b"{}")
        ).status_code == 204
        assert (await client.get("/console/api/status")).status_code == 401


async def test_a_console_token_may_call_only_as_its_grant_says_through_the_gateway(served) -> None:
    base, queue, _, _ = served
    call = {"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": 1}
    record = {"jsonrpc": "2.0", "method": "record", "params": ["x"], "id": 2}
    async with httpx.AsyncClient(base_url=base) as client:
        bearer = {"authorization": f"Bearer {BOTH}"}
        assert (await client.post(f"/{queue}", json=call, headers=bearer)).status_code == 200
        assert (await client.post(f"/{queue}", json=record, headers=bearer)).status_code == 403
        operator = {"authorization": f"Bearer {OPERATOR}"}
        assert (await client.post(f"/{queue}", json=call, headers=operator)).status_code == 403


async def test_the_queue_named_console_is_still_callable(served) -> None:
    base, _, _, settings = served
    async with (
        Worker(Probe(), settings.broker, "console"),
        httpx.AsyncClient(base_url=base) as client,
    ):
        call = {"jsonrpc": "2.0", "method": "add", "params": [2, 2], "id": 1}
        response = await client.post(
            "/console", json=call, headers={"authorization": f"Bearer {CALLER}"}
        )
        assert response.json()["result"] == 4


async def test_sessions_hold_across_the_gateways_processes(served) -> None:
    base, _, _, settings = served
    # Each process of `gateway --processes N` builds its app from the same settings.
    twin = GatewaySettings.from_json(settings.to_json())
    assert twin == settings
    assert all(token not in settings.to_json() for token in (OPERATOR, CALLER, BOTH))
    async with gateway(twin) as other, httpx.AsyncClient(base_url=base) as client:
        assert (await log_in(client, OPERATOR)).status_code == 204
        cookie = client.cookies[COOKIE]
        async with httpx.AsyncClient(base_url=other, cookies={COOKIE: cookie}) as second:
            assert (await second.get("/console/api/session")).status_code == 200


async def test_without_console_tokens_there_is_no_console() -> None:
    url = memory_url()
    entry = f'[[tokens]]\nname = "c"\nsha256 = "{hash_token(CALLER)}"\nallow = {{ q = "*" }}\n'
    settings = GatewaySettings(url, tuple(parse_tokens(entry, "t")))
    async with gateway(settings) as base, httpx.AsyncClient(base_url=base) as client:
        assert (await client.get("/console/")).status_code == 404
        assert (await client.get("/console")).status_code == 405  # a queue's path, as before


def test_console_entries_in_the_tokens_file() -> None:
    [operator, caller, both] = parse_tokens(tokens("calc"), "tokens.toml")
    assert (operator.console, caller.console, both.console) == (True, False, True)
    assert operator.allow == {} and not operator.may_use("calc")
    assert operator.as_entry()["console"] is True and "console" not in caller.as_entry()
    assert parse_tokens(orjson.dumps({"tokens": [operator.as_entry()]}).decode(), "j") == [operator]
    for entry in (f'sha256 = "{hash_token("t")}"\nconsole = "yes"',
                  f'sha256 = "{hash_token("t")}"\nconsole = false'):  # fmt: skip
        with pytest.raises(ValueError, match="token"):
            parse_tokens(f"[[tokens]]\n{entry}\n", "tokens.toml")


def test_hash_token_makes_a_console_entry() -> None:
    from click.testing import CliRunner

    from micromessaging.cli import main

    result = CliRunner().invoke(
        main, ["gateway", "hash-token", "--new", "--name", "ops", "--console"]
    )
    assert result.exit_code == 0, result.output
    [grant] = parse_tokens(result.stdout, "generated")
    assert (grant.name, grant.console, dict(grant.allow)) == ("ops", True, {})
    both = CliRunner().invoke(main, ["gateway", "hash-token", "--console", "--allow", "calc"],
                              input="t0ken\n")  # fmt: skip
    [grant] = parse_tokens(both.stdout, "generated")
    assert grant.console and grant.permits("calc", "add")
