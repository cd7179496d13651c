"""Session-wide: a hard time limit for the run, and the brokers the tests talk to.

pytest-timeout fails a single test that runs too long, but a test whose clean-up swallows
that failure and waits again could hold the run forever. This watchdog, on its own thread,
prints every thread's stack and ends the process once the run has taken longer than
MM_TEST_SESSION_LIMIT seconds (default 20 minutes, twice what the suite needs here).

`redis_url`, `amqp_url` and `nats_url` (JetStream on) are the brokers integration tests
talk to, chosen when a test first asks (tests/brokers.py `find_broker`): the one
MICROMESSAGING_TEST_REDIS / _AMQP / _NATS names ("own" asks for a node of our own), else the
shared one on its default port, else a node the session starts from the installed program
and stops at its end, else the test is skipped, with one summary line per broker.
`redis_node`, `rabbit_node` and `nats_node` are nodes of the test's own, for tests that
break them (`rabbit_node` is one per session: it takes seconds to boot).
"""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.brokers import (
    KINDS,
    NATS,
    RABBITMQ,
    REDIS,
    BrokerKind,
    NatsNode,
    RabbitNode,
    RedisNode,
    find_broker,
)

SESSION_LIMIT = float(os.environ.get("MM_TEST_SESSION_LIMIT", "1200"))


def _give_up() -> None:
    sys.stderr.write(f"\nthe test run took longer than {SESSION_LIMIT:.0f} s; stacks follow\n")
    faulthandler.dump_traceback(all_threads=True)
    sys.stderr.flush()
    os._exit(3)


def pytest_sessionstart(session: pytest.Session) -> None:
    watchdog = threading.Timer(SESSION_LIMIT, _give_up)
    watchdog.daemon = True
    watchdog.start()
    session.config.stash[_WATCHDOG] = watchdog


def pytest_sessionfinish(session: pytest.Session) -> None:
    watchdog = session.config.stash.get(_WATCHDOG, None)
    if watchdog is not None:
        watchdog.cancel()


_WATCHDOG = pytest.StashKey[threading.Timer]()


# --- brokers --------------------------------------------------------------------------------


def need(kind: BrokerKind) -> None:
    if not kind.installed():
        pytest.skip(kind.missing)


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("brokers")


@pytest.fixture(scope="session")
def rabbit_node(session_dir: Path) -> Iterator[RabbitNode]:
    """The session's own RabbitMQ node (amqps:// too); a test that breaks it mends it."""
    need(RABBITMQ)
    with RabbitNode(tls=True, base=session_dir) as node:
        yield node


@pytest.fixture
def redis_node(tmp_path: Path) -> Iterator[RedisNode]:
    """A redis-server of the test's own."""
    need(REDIS)
    with RedisNode(base=tmp_path) as node:
        yield node


@pytest.fixture
def make_redis_node(tmp_path: Path) -> Iterator[Callable[..., RedisNode]]:
    """`make_redis_node(*args, tls=False)`: a started redis-server of the test's own."""
    need(REDIS)
    nodes: list[RedisNode] = []

    def make(*args: str, tls: bool = False) -> RedisNode:
        node = RedisNode(*args, tls=tls, base=tmp_path)
        nodes.append(node)
        return node.start()

    yield make
    for node in nodes:
        node.close()


@pytest.fixture
def make_nats_node(tmp_path: Path) -> Iterator[Callable[..., NatsNode]]:
    """`make_nats_node(*args)`: a started nats-server (JetStream on) of the test's own."""
    need(NATS)
    nodes: list[NatsNode] = []

    def make(*args: str) -> NatsNode:
        node = NatsNode(*args, base=tmp_path)
        nodes.append(node)
        return node.start()

    yield make
    for node in nodes:
        node.close()


@pytest.fixture
def nats_node(tmp_path: Path) -> Iterator[NatsNode]:
    """A nats-server (JetStream on) of the test's own."""
    need(NATS)
    with NatsNode(base=tmp_path) as node:
        yield node


@pytest.fixture(scope="session")
def redis_url(session_dir: Path) -> Iterator[str]:
    """The Redis the session's tests share (unique queue names keep them apart)."""
    url = find_broker(REDIS)
    if url is not None:
        yield url
        return
    need(REDIS)
    with RedisNode(base=session_dir) as node:
        yield node.url


@pytest.fixture
def redis_queue(redis_url: str) -> Iterator[str]:
    """A queue name of its own on the session's Redis; its keys are deleted afterwards."""
    import redis  # the redis extra: only the tests that ask for Redis need it

    name = f"mm-test-{uuid.uuid4().hex[:10]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"*{name}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture(scope="session")
def amqp_url(request: pytest.FixtureRequest) -> str:
    """The RabbitMQ the session's tests share: the shared broker, or `rabbit_node`."""
    url = find_broker(RABBITMQ)
    if url is not None:
        return url
    node: RabbitNode = request.getfixturevalue("rabbit_node")
    return node.url


@pytest.fixture(scope="session")
def nats_url(session_dir: Path) -> Iterator[str]:
    """The NATS server (with JetStream) the session's tests share."""
    url = find_broker(NATS)
    if url is not None:
        yield url
        return
    need(NATS)
    with NatsNode(base=session_dir) as node:
        yield node.url


def pytest_report_header(config: pytest.Config) -> list[str]:
    found = []
    for kind in KINDS:
        url = find_broker(kind)
        if url is not None:
            found.append(f"{kind.name} {url}")
        elif kind.installed():
            found.append(f"{kind.name}: a node of our own when a test needs it")
        else:
            found.append(f"{kind.name}: none ({kind.missing})")
    return ["brokers: " + "; ".join(found)]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    # A test skipped for want of a broker is reported at one place, `need`, so that the
    # summary folds each broker's skips into one line instead of one per test.
    report = yield
    if report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2])
        if any(kind.missing in reason for kind in KINDS):
            where = os.path.relpath(__file__, item.config.rootpath)
            report.longrepr = (where, need.__code__.co_firstlineno, reason)
    return report


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:  # type: ignore[no-untyped-def]
    if {"s", "a", "A"} & set(config.option.reportchars):
        return  # the short test summary already says it, one line per broker
    missing: Counter[str] = Counter()
    for report in terminalreporter.stats.get("skipped", []):
        reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else ""
        for kind in KINDS:
            if kind.missing in reason:
                missing[kind.name] += 1
    for kind in KINDS:
        if missing[kind.name]:
            terminalreporter.write_line(
                f"{kind.missing}: {missing[kind.name]} {kind.name} tests skipped"
            )
