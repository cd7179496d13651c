"""The console over real HTTP (uvicorn) against real workers: endpoints, headers, refusals.

The browser tests (test_browser.py) drive the page; these check what a page of another site,
a forged cookie or a missing CSRF header gets, which a browser would never show.
"""

from __future__ import annotations

import httpx
import orjson
import pytest

from micromessaging import Service, Worker, method
from micromessaging.console import ConsoleSettings
from micromessaging.console.session import COOKIE
from tests.transports.admin_contract import wait_until
from tests.transports.contract import Probe, eventually

from .helpers import memory_url, notification, poison, served, unique_queue


class Described:
    """What describe shows."""

    @method
    def add(self, a: float, b: float = 1.0) -> float:
        """Add two numbers.

        The second defaults to one.
        """
        return a + b

    @method(name="math.neg")
    def negate(self, x: int) -> int:
        return -x


@pytest.fixture
async def console():
    url, queue = memory_url(), unique_queue()
    probe = Probe()
    settings = ConsoleSettings(broker=url, timeout=1.5)
    async with Worker(probe, url, queue), served(settings) as console:
        console.url, console.queue, console.probe = url, queue, probe
        yield console


async def test_the_page_sets_a_strict_session_cookie_and_security_headers(console) -> None:
    async with httpx.AsyncClient(base_url=console.base) as client:
        page = await client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        cookie = page.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}=")
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["x-frame-options"] == "DENY"
        assert b"<script" not in page.content.replace(b'<script src="console.js" defer>', b"")
        script = await client.get("/console.js")
        assert script.status_code == 200
        assert script.headers["content-type"].startswith("text/javascript")
        for sink in (b".innerHTML", b".outerHTML", b"insertAdjacentHTML", b"document.write",
                     b"eval(", b"new Function"):  # fmt: skip
            assert sink not in script.content, sink
        assert (await client.get("/console.css")).headers["content-type"].startswith("text/css")
        # The page again: the session it has is kept, not replaced.
        assert "set-cookie" not in (await client.get("/")).headers
        for path in ("/nothing", "/../pyproject.toml", "/static/console.js", "/index.html"):
            assert (await client.get(path)).status_code == 404, path


async def test_no_session_no_data(console) -> None:
    async with httpx.AsyncClient(base_url=console.base) as client:
        for path in ("/api/session", "/api/status", f"/api/dead-letters?queue={console.queue}"):
            response = await client.get(path)
            assert response.status_code == 401, path
            assert response.json()["error"]["kind"] == "no session"
        forged = {"cookie": f"{COOKIE}=eyJ3IjoiIn0.c2lnbmF0dXJl"}
        assert (await client.get("/api/status", headers=forged)).status_code == 401


async def test_status_lists_queues_with_their_workers(console) -> None:
    async with console.page() as (client, _):
        status = (await client.get("/api/status")).json()
        assert status["error"] is None
        [queue] = [q for q in status["queues"] if q["queue"] == console.queue]
        assert queue["depth"] == 0 and queue["dead_letters"] == 0
        assert len(queue["workers"]) == 1
        assert (await client.get("/api/session")).json()["broker"] == console.url


async def test_a_call_answers_its_reply_and_timing(console) -> None:
    async with console.page() as (client, post):
        answer = await client.post(
            "/api/call",
            headers=post,
            content=orjson.dumps({"queue": console.queue, "method": "add", "params": [1, 5.1]}),
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["reply"]["result"] == 6.1
        assert answer.json()["ms"] > 0
        failed = await client.post(
            "/api/call",
            headers=post,
            content=orjson.dumps({"queue": console.queue, "method": "fail", "params": ["no"]}),
        )
        assert failed.json()["reply"]["error"]["code"] == -32000
        nobody = await client.post(
            "/api/call",
            headers=post,
            content=orjson.dumps({"queue": unique_queue("none"), "method": "x", "params": None}),
        )
        # A queue no worker serves is told apart from a slow one at once.
        assert (nobody.status_code, nobody.json()["error"]["kind"]) == (503, "no workers")
        for bad in ({"queue": console.queue, "method": 1}, {"queue": "", "method": "add"},
                    {"queue": console.queue, "method": "add", "params": 3}, [1]):  # fmt: skip
            response = await client.post("/api/call", headers=post, content=orjson.dumps(bad))
            assert response.status_code == 400, bad


async def test_state_changing_requests_need_the_page_csrf_token_and_origin(console) -> None:
    body = orjson.dumps({"queue": console.queue, "method": "record", "params": ["csrf"]})
    async with console.page() as (client, post):
        refused = {
            "no token": {"content-type": "application/json"},
            "wrong token": {**post, "x-mm-csrf": "x" * 32},
            "another site": {**post, "origin": "http://evil.example"},
            "another port": {**post, "origin": "http://127.0.0.1:1"},
            "cross-site fetch": {**post, "sec-fetch-site": "cross-site"},
            "a form's body": {**post, "content-type": "text/plain"},
            "a form's other body": {**post, "content-type": "application/x-www-form-urlencoded"},
        }
        for why, headers in refused.items():
            response = await client.post("/api/call", headers=headers, content=body)
            assert response.status_code in (403, 415), why
        assert console.probe.ran == []
        # The same request from the page itself goes through.
        same = {**post, "origin": console.base, "sec-fetch-site": "same-origin"}
        assert (await client.post("/api/call", headers=same, content=body)).status_code == 200
        assert console.probe.ran == ["csrf"]
        assert (await client.get("/api/call")).status_code == 405
    # Another browser, with a session of its own, can't use this one's token.
    async with console.page() as (other, _):
        response = await other.post("/api/call", headers=post, content=body)
        assert response.status_code == 403


async def test_only_loopback_host_names_are_answered(console) -> None:
    async with httpx.AsyncClient(base_url=console.base) as client:
        rebound = await client.get("/", headers={"host": "evil.example:8088"})
        assert rebound.status_code == 403
        assert "set-cookie" not in rebound.headers
        assert (await client.get("/", headers={"host": "localhost"})).status_code == 200


async def test_methods_come_from_rpc_discover() -> None:
    url, queue = memory_url(), unique_queue()
    settings = ConsoleSettings(broker=url, timeout=0.5)
    async with (
        Worker(Described(), url, queue),
        served(settings) as console,
        console.page() as (client, _),
    ):
        described = (await client.get("/api/methods", params={"queue": queue})).json()
        assert described["title"] == "Described"
        add, neg = described["methods"]
        assert add["signature"] == "add(a: number, b: number = 1.0) -> number"
        assert add["summary"] == "Add two numbers."
        assert "defaults to one" in add["description"]
        assert add["params"] == ["a", "b"]
        assert neg["name"] == "math.neg"
        missing = await client.get("/api/methods", params={"queue": unique_queue()})
        assert missing.status_code == 503  # no worker serves it


async def test_methods_of_a_service_without_rpc_discover_are_unknown() -> None:
    url, queue = memory_url(), unique_queue()
    service = Service("bare")

    @service.method
    def ping() -> str:
        return "pong"

    async with (
        Worker(service, url, queue),
        served(ConsoleSettings(broker=url)) as console,
        console.page() as (client, _),
    ):
        described = (await client.get("/api/methods", params={"queue": queue})).json()
        assert [m["name"] for m in described["methods"]] == ["ping"]


async def test_dead_letters_listed_replayed_and_purged(console) -> None:
    bodies = [notification("record", f"dead-{i}") for i in range(3)]
    for body in bodies:
        poison(console.url, console.queue, body)
    async with console.page() as (client, post):

        async def listed(count: int):
            response = await client.get("/api/dead-letters", params={"queue": console.queue})
            records = response.json()["records"]
            return (records,) if len(records) == count else None

        [records] = await wait_until(lambda: listed(3))
        assert sorted(r["body"].encode() for r in records) == sorted(bodies)
        assert {r["method"] for r in records} == {"record"}
        replay = await client.post(
            "/api/replay",
            headers=post,
            content=orjson.dumps({"queue": console.queue, "ids": [records[0]["id"]]}),
        )
        assert replay.json()["replayed"] == [records[0]["id"]]
        wanted = orjson.loads(records[0]["body"])["params"][0]
        await eventually(lambda: wanted in console.probe.ran)
        await wait_until(lambda: listed(2))
        purge = await client.post(
            "/api/purge", headers=post, content=orjson.dumps({"queue": console.queue, "ids": None})
        )
        assert purge.json()["purged"] == 2
        await wait_until(lambda: listed(0))
        bad = await client.post(
            "/api/purge", headers=post, content=orjson.dumps({"queue": console.queue, "ids": "x"})
        )
        assert bad.status_code == 400


async def test_a_query_with_too_many_fields_is_a_bad_request(console) -> None:
    async with console.page() as (client, _):
        query = "&".join(f"f{i}=1" for i in range(20))
        response = await client.get(f"/api/dead-letters?queue={console.queue}&{query}")
        assert response.status_code == 400
