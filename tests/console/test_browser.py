"""The console page in a real browser: the system's Chromium, headless, driven by Playwright.

Each test serves the console (uvicorn, in this process) over real workers, opens the page
and uses it as a person would: queues and methods appear, a call made through the form
shows its result, a dead letter is replayed and the counts move, a purge asks first, and
hostile names and bodies stay text. `ConsoleInBrowser` is written once and runs on the
in-process broker and on the session's Redis (`redis_url`, tests/conftest.py); the tests
that need no broker of their own (escaping, many pages) run in-process. The run writes
docs/console.png, the README's picture of the page.

Nothing is downloaded: Playwright launches /usr/bin/chromium (a fresh profile each time);
without it the module skips, in one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

CHROMIUM = os.environ.get("MM_CHROMIUM", "/usr/bin/chromium")
if not os.path.exists(CHROMIUM):
    pytest.skip(f"browser tests: no Chromium at {CHROMIUM}", allow_module_level=True)

import redis.asyncio as aioredis  # noqa: E402
from playwright.async_api import Browser, Page, async_playwright, expect  # noqa: E402

from micromessaging import AsyncClient, Worker, method  # noqa: E402
from micromessaging.console import ConsoleSettings  # noqa: E402
from micromessaging.transports import admin_transport  # noqa: E402
from tests.transports.contract import eventually  # noqa: E402

from .helpers import CountingAdmin, memory_url, notification, poison, served  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "console.png"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WAIT_MS = 20_000
"""How long the page may take to show what a test waits for (a busy, shared machine)."""

HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)>"


class Calculator:
    """Arithmetic, and a record of what ran."""

    def __init__(self) -> None:
        self.ran: list[object] = []

    def add(self, a: float, b: float) -> float:
        """Add two numbers.

        Works for any two JSON numbers.
        """
        return a + b

    def subtract(self, minuend: float, subtrahend: float) -> float:
        """Take the second number from the first."""
        return minuend - subtrahend

    def record(self, value: object) -> None:
        """Remember a value (what the dead letters carry)."""
        self.ran.append(value)

    def fail(self, message: str) -> None:
        """Raise ValueError(message)."""
        raise ValueError(message)


class Hostile:
    """A service whose method name is markup."""

    @method(name=HOSTILE)
    def hostile(self) -> str:
        """Returns <b>its own name</b>."""
        return HOSTILE


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
        )
        try:
            yield launched
        finally:
            await launched.close()


class Watched:
    """A page, and what it showed that a test must see none of: errors, dialogs, CSP reports."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("dialog", self._dialog)

    async def _dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        await dialog.dismiss()

    def clean(self) -> None:
        assert self.dialogs == [], self.dialogs
        assert self.errors == [], self.errors


async def open_page(browser: Browser, base: str) -> Watched:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    watched = Watched(await context.new_page())
    await watched.page.goto(base + "/")
    return watched


def queue_row(page: Page, queue: str):
    return page.locator(f'#queues tbody tr[data-queue="{queue}"]')


def field(page: Page, queue: str, name: str):
    return queue_row(page, queue).locator(f'[data-field="{name}"]')


async def choose_queue(page: Page, queue: str) -> None:
    await queue_row(page, queue).get_by_role("button").click()
    await expect(page.locator("#detail-queue")).to_have_text(queue)


async def call_in_form(page: Page, method_name: str, params: str) -> None:
    await expect(page.locator("#call-method option", has_text=method_name).first).to_be_attached(
        timeout=WAIT_MS
    )
    await page.locator("#call-method").select_option(value=method_name)
    await page.locator("#call-params").fill(params)
    # From the keyboard, as a person tabbing to the button would: the tables above the form
    # (queues, workers) gain and lose rows as the page refreshes, and a mouse click aimed at
    # the button while they do lands beside it (seen once in a full run: no call was made).
    await page.locator("#call-submit").press("Enter")


async def confirm(page: Page, action: str, *, text: str) -> None:
    dialog = page.locator("#confirm")
    await expect(dialog).to_be_visible()
    await expect(page.locator("#confirm-text")).to_contain_text(text)
    await expect(page.locator("#confirm-ok")).to_have_text(action)
    await page.locator("#confirm-ok").click()
    await expect(dialog).to_be_hidden()


class ConsoleInBrowser:
    """What a person sees and does in the console, on one broker."""

    @pytest.fixture
    def broker_url(self) -> str:
        raise NotImplementedError

    @pytest.fixture
    def queue(self) -> str:
        return f"mm-console-{uuid.uuid4().hex[:10]}"

    async def poison(self, broker_url: str, queue: str, body: bytes) -> None:
        """Put `body` on `queue` as a request a worker dead-letters at once."""
        raise NotImplementedError

    async def test_queues_workers_and_methods_appear(
        self, browser: Browser, broker_url: str, queue: str
    ) -> None:
        settings = ConsoleSettings(broker=broker_url, interval=0.3)
        async with Worker(Calculator(), broker_url, queue) as worker, served(settings) as console:
            watched = await open_page(browser, console.base)
            page = watched.page
            await expect(field(page, queue, "workers")).to_have_text("1", timeout=WAIT_MS)
            await expect(field(page, queue, "depth")).to_have_text("0")
            await expect(field(page, queue, "dead")).to_have_text("0")
            await choose_queue(page, queue)
            await expect(page.locator(f'#workers tr[data-worker="{worker.id}"]')).to_be_visible(
                timeout=WAIT_MS
            )
            methods = page.locator("#methods")
            await expect(methods).to_contain_text("add(a: number, b: number) -> number")
            await expect(methods).to_contain_text("subtract(minuend: number, subtrahend: number)")
            await expect(methods).to_contain_text("Works for any two JSON numbers.")
            await expect(page.locator("#methods-status")).to_contain_text("service Calculator")
            watched.clean()

    async def test_a_call_through_the_form_shows_its_result_or_error(
        self, browser: Browser, broker_url: str, queue: str
    ) -> None:
        settings = ConsoleSettings(broker=broker_url, interval=0.3)
        async with Worker(Calculator(), broker_url, queue), served(settings) as console:
            watched = await open_page(browser, console.base)
            page = watched.page
            await expect(queue_row(page, queue)).to_be_visible(timeout=WAIT_MS)
            await choose_queue(page, queue)
            await call_in_form(page, "add", "[1, 5.1]")
            await expect(page.locator("#call-output")).to_have_text("6.1", timeout=WAIT_MS)
            outcome = page.locator("#call-outcome")
            await expect(outcome).to_have_text(re.compile(r"^result \(\d+\.\d ms\)$"))
            await call_in_form(page, "fail", '["no such luck"]')
            await expect(outcome).to_have_text(
                re.compile(r"^error -32000 Server error \(\d+\.\d ms\)$"), timeout=WAIT_MS
            )
            await expect(page.locator("#call-output")).to_contain_text("no such luck")
            await call_in_form(page, "add", "[1,")
            await expect(outcome).to_contain_text("params are not JSON")
            watched.clean()

    async def test_replaying_a_dead_letter_moves_it_back_to_the_queue(
        self, browser: Browser, broker_url: str, queue: str
    ) -> None:
        calculator = Calculator()
        bodies = [notification("record", f"dead-{i}") for i in range(2)]
        settings = ConsoleSettings(broker=broker_url, interval=0.3)
        async with served(settings) as console:
            watched = await open_page(browser, console.base)
            page = watched.page
            async with Worker(calculator, broker_url, queue):
                for body in bodies:
                    await self.poison(broker_url, queue, body)
                await expect(field(page, queue, "dead")).to_have_text("2", timeout=WAIT_MS)
                await choose_queue(page, queue)
                methods = page.locator("#methods-status")
                await expect(methods).to_contain_text("4 methods", timeout=WAIT_MS)
            # No worker now: the replayed request waits on the queue, for all to see.
            await expect(field(page, queue, "workers")).to_have_text("0", timeout=WAIT_MS)
            rows = page.locator("#dead-letters tbody tr")
            await expect(rows).to_have_count(2, timeout=WAIT_MS)
            first = rows.first
            await expect(first).to_contain_text("record")
            await expect(first).to_contain_text("delivered")
            replayed_id = await first.get_attribute("data-id")
            await first.locator("button.replay").click()
            await confirm(page, "Replay", text="back on the queue")
            await expect(page.locator("#dead-status")).to_have_text("replayed 1")
            await expect(rows).to_have_count(1)
            await expect(page.locator(f'#dead-letters tr[data-id="{replayed_id}"]')).to_have_count(
                0
            )
            await expect(field(page, queue, "dead")).to_have_text("1", timeout=WAIT_MS)
            await expect(field(page, queue, "depth")).to_have_text("1", timeout=WAIT_MS)
            async with Worker(calculator, broker_url, queue):
                await expect(field(page, queue, "depth")).to_have_text("0", timeout=WAIT_MS)
                await eventually(lambda: len(calculator.ran) == 1, timeout=WAIT_MS / 1000)
            assert calculator.ran[0] in ("dead-0", "dead-1")
            watched.clean()

    async def test_purge_asks_first_and_deletes_on_yes(
        self, browser: Browser, broker_url: str, queue: str
    ) -> None:
        settings = ConsoleSettings(broker=broker_url, interval=0.3)
        async with Worker(Calculator(), broker_url, queue), served(settings) as console:
            for i in range(3):
                await self.poison(broker_url, queue, notification("record", f"purge-{i}"))
            watched = await open_page(browser, console.base)
            page = watched.page
            await expect(field(page, queue, "dead")).to_have_text("3", timeout=WAIT_MS)
            await choose_queue(page, queue)
            rows = page.locator("#dead-letters tbody tr")
            await expect(rows).to_have_count(3, timeout=WAIT_MS)
            # No: nothing goes.
            await page.locator("#purge-all").click()
            await expect(page.locator("#confirm-text")).to_contain_text("for good")
            await page.locator("#confirm-cancel").click()
            await expect(page.locator("#confirm")).to_be_hidden()
            await page.locator("#dead-reload").click()
            await expect(rows).to_have_count(3)
            # One, then the rest.
            await rows.first.locator("button.purge").click()
            await confirm(page, "Purge", text="for good")
            await expect(rows).to_have_count(2, timeout=WAIT_MS)
            await expect(field(page, queue, "dead")).to_have_text("2", timeout=WAIT_MS)
            await page.locator("#purge-all").click()
            await confirm(page, "Purge", text="all 2 dead letters")
            await expect(page.locator("#dead-status")).to_have_text("purged 2")
            await expect(rows).to_have_count(0)
            await expect(field(page, queue, "dead")).to_have_text("0", timeout=WAIT_MS)
            watched.clean()


class TestMemoryConsole(ConsoleInBrowser):
    """The in-process broker: console, workers and broker all in this process."""

    @pytest.fixture
    def broker_url(self) -> str:
        return memory_url()

    async def poison(self, broker_url: str, queue: str, body: bytes) -> None:
        poison(broker_url, queue, body)


class TestRedisConsole(ConsoleInBrowser):
    """The session's Redis: its admin side reads what the workers' heartbeats say."""

    @pytest.fixture
    async def broker_url(self, redis_url: str, queue: str) -> AsyncIterator[str]:
        # Fails here, in one line, while Redis has no admin side (ConfigurationError).
        admin_transport(redis_url)
        yield redis_url
        client = aioredis.Redis.from_url(redis_url)
        try:
            keys = [key async for key in client.scan_iter(match=f"*{queue}*", count=1000)]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()

    async def poison(self, broker_url: str, queue: str, body: bytes) -> None:
        # The envelope of docs/wire-redis.md, saying it was delivered 99 times already.
        client = aioredis.Redis.from_url(broker_url)
        try:
            await client.lpush(queue, orjson.dumps({"mm": 1, "n": 99}) + b"\n" + body)
        finally:
            await client.aclose()


# --- in-process only ---------------------------------------------------------------------


async def test_hostile_names_and_bodies_stay_text(browser: Browser) -> None:
    url, queue = memory_url(), f"mm-console-{uuid.uuid4().hex[:8]}"
    body = b'{"jsonrpc": "2.0", "method": "</pre><img src=x onerror=alert(3)>", "params": []}'
    async with Worker(Hostile(), url, queue), served(ConsoleSettings(broker=url)) as console:
        poison(url, queue, body)
        watched = await open_page(browser, console.base)
        page = watched.page
        await expect(field(page, queue, "dead")).to_have_text("1", timeout=WAIT_MS)
        await choose_queue(page, queue)
        shown = page.locator("#methods article").first
        await expect(shown.locator(".signature")).to_have_text(f"{HOSTILE}() -> string")
        await expect(shown.locator("pre")).to_have_text("Returns <b>its own name</b>.")
        await expect(page.locator("#dead-letters tbody pre")).to_have_text(body.decode())
        await call_in_form(page, HOSTILE, "[]")
        await expect(page.locator("#call-output")).to_have_text(orjson.dumps(HOSTILE).decode())
        # Markup in the data made no element: no image, no script but the page's own, no bold.
        assert await page.locator("img").count() == 0
        assert await page.locator("b").count() == 0
        scripts = await page.eval_on_selector_all("script", "nodes => nodes.map(n => n.src)")
        assert [src.rsplit("/", 1)[1] for src in scripts] == ["console.js"]
        watched.clean()


async def test_pages_share_one_snapshot(browser: Browser) -> None:
    """Five open pages cost the broker what one does: one snapshot per interval for all."""
    url = memory_url()
    admin = CountingAdmin(url)
    settings = ConsoleSettings(broker=url, interval=0.25)
    queue = f"mm-console-{uuid.uuid4().hex[:8]}"
    async with Worker(Calculator(), url, queue), served(settings, admin=admin) as console:
        feed = console.console.feed
        for count in (1, 5):
            pages = [await open_page(browser, console.base) for _ in range(count)]
            await _generation(pages[-1].page)
            first, before = feed.generation, admin.queries
            for watched in pages:
                await _generation(watched.page, at_least=first + 6)
            snapshots, queries = feed.generation - first, admin.queries - before
            # Each snapshot: the queue list and one status (give or take one under way at
            # either end), whether one page watches or five.
            assert snapshots >= 6
            assert abs(queries - 2 * snapshots) <= 2, (count, queries, snapshots)
            for watched in pages:
                watched.clean()
                await watched.page.context.close()


async def _generation(page: Page, at_least: int = 0) -> int:
    """The snapshot the page shows, once it is `at_least` that one.

    Read from Python: the page's CSP forbids the string evaluation wait_for_function uses.
    """
    deadline = time.monotonic() + WAIT_MS / 1000
    while True:
        shown = await page.locator("body").get_attribute("data-generation")
        if shown is not None and int(shown) >= at_least:
            return int(shown)
        assert time.monotonic() < deadline, f"the page never showed snapshot {at_least}"
        await asyncio.sleep(0.02)


async def test_a_chosen_queue_shows_its_workers_at_once(browser: Browser) -> None:
    """Its workers come from the snapshot the page already has, not the next one."""
    url, queue = memory_url(), f"mm-console-{uuid.uuid4().hex[:8]}"
    settings = ConsoleSettings(broker=url, interval=120)  # no second snapshot in this test
    async with Worker(Calculator(), url, queue) as worker, served(settings) as console:
        watched = await open_page(browser, console.base)
        page = watched.page
        await expect(field(page, queue, "workers")).to_have_text("1", timeout=WAIT_MS)
        shown = await _generation(page)
        await choose_queue(page, queue)
        await expect(page.locator(f'#workers tr[data-worker="{worker.id}"]')).to_be_visible()
        assert await _generation(page) == shown
        watched.clean()


async def test_the_call_form_stays_put_while_queues_and_workers_come_and_go(
    browser: Browser,
) -> None:
    """On a wide screen the queues sit beside the chosen queue, whose call form comes before
    its workers: rows gained or lost as the page refreshes move nothing a person aims at."""
    url, queue = memory_url(), f"mm-console-{uuid.uuid4().hex[:8]}"
    others = [f"{queue}-other-{i}" for i in range(3)]
    settings = ConsoleSettings(broker=url, interval=0.2)
    async with Worker(Calculator(), url, queue), served(settings) as console:
        watched = await open_page(browser, console.base)
        page = watched.page
        await expect(queue_row(page, queue)).to_be_visible(timeout=WAIT_MS)
        await choose_queue(page, queue)
        await expect(page.locator("#workers tbody tr")).to_have_count(1, timeout=WAIT_MS)
        await expect(page.locator("#methods-status")).to_contain_text("4 methods", timeout=WAIT_MS)
        button = page.locator("#call-submit")
        before = await button.bounding_box()
        async with contextlib.AsyncExitStack() as more:
            for name in [queue, queue, *others]:
                await more.enter_async_context(Worker(Calculator(), url, name))
            await expect(page.locator("#queues tbody tr")).to_have_count(4, timeout=WAIT_MS)
            await expect(page.locator("#workers tbody tr")).to_have_count(3, timeout=WAIT_MS)
            assert await button.bounding_box() == before
        await expect(page.locator("#queues tbody tr")).to_have_count(1, timeout=WAIT_MS)
        await expect(page.locator("#workers tbody tr")).to_have_count(1, timeout=WAIT_MS)
        assert await button.bounding_box() == before
        watched.clean()


async def test_screenshot_of_the_page(browser: Browser) -> None:
    """docs/console.png, as the README shows it: a busy queue, its methods, a call made."""
    url = memory_url()
    calc, reports = Calculator(), Calculator()
    settings = ConsoleSettings(broker=url, interval=0.3)
    async with (
        Worker(calc, url, "calc", concurrency=8),
        Worker(Calculator(), url, "calc", concurrency=8),
        Worker(reports, url, "reports"),
        AsyncClient(url, "calc") as client,
        served(settings) as console,
    ):
        for tag in ("timeout", "bad input"):
            poison(url, "calc", notification("record", tag))
        load = asyncio.create_task(_steady_load(client))
        watched = await open_page(browser, console.base)
        page = watched.page
        await expect(field(page, "calc", "dead")).to_have_text("2", timeout=WAIT_MS)
        await expect(field(page, "calc", "rate")).not_to_have_text("–", timeout=WAIT_MS)
        await choose_queue(page, "calc")
        await call_in_form(page, "add", "[1, 5.1]")
        await expect(page.locator("#call-output")).to_have_text("6.1", timeout=WAIT_MS)
        await expect(page.locator("#dead-letters tbody tr")).to_have_count(2, timeout=WAIT_MS)
        await expect(page.locator("#workers tbody tr")).to_have_count(2, timeout=WAIT_MS)
        await page.screenshot(path=str(SCREENSHOT), full_page=True)
        load.cancel()
        assert SCREENSHOT.stat().st_size > 10_000
        watched.clean()


async def _steady_load(client: AsyncClient) -> None:
    """Calls in a steady stream, so the picture shows calls/s (a pace, not a wait)."""
    while True:
        await asyncio.gather(*(client.add(i, 1) for i in range(8)))
        await asyncio.sleep(0.01)


async def test_the_gateway_console_asks_for_a_console_token(browser: Browser) -> None:
    from micromessaging.gateway import GatewaySettings
    from micromessaging.gateway.auth import hash_token, parse_tokens

    from .test_gateway_console import gateway

    url, queue = memory_url(), f"mm-console-{uuid.uuid4().hex[:8]}"
    entries = (
        f'[[tokens]]\nname = "ops"\nsha256 = "{hash_token("ops-token")}"\nconsole = true\n'
        f'[[tokens]]\nname = "app"\nsha256 = "{hash_token("app-token")}"\n'
        f'allow = {{ {queue} = "*" }}\n'
    )
    settings = GatewaySettings(url, tuple(parse_tokens(entries, "test")))
    async with Worker(Calculator(), url, queue), gateway(settings) as base:
        context = await browser.new_context()
        page = await context.new_page()
        await page.goto(base + "/console")
        assert page.url == base + "/console/"
        await expect(page.locator("#queues")).to_have_count(0)  # no page before the token
        for token in ("app-token", "wrong"):
            await page.locator("#login-token").fill(token)
            await page.locator("#login-submit").click()
            await expect(page.locator("#login-problem")).to_have_text("not a console token")
        await page.locator("#login-token").fill("ops-token")
        await page.locator("#login-submit").click()
        await expect(page.locator("#who")).to_have_text("logged in as ops", timeout=WAIT_MS)
        await expect(field(page, queue, "workers")).to_have_text("1", timeout=WAIT_MS)
        await choose_queue(page, queue)
        await call_in_form(page, "subtract", "[5, 3]")
        await expect(page.locator("#call-output")).to_have_text("2", timeout=WAIT_MS)
        await page.locator("#logout").click()
        await expect(page.locator("#login-token")).to_be_visible(timeout=WAIT_MS)
        await context.close()
