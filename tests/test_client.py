"""Clients: the proxy, batches, timeouts, errors and lifecycle (over memory://)."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator

import pytest

from micromessaging import (
    AsyncClient,
    CallTimeout,
    Client,
    ConfigurationError,
    NoWorkers,
    RemoteError,
    Service,
    TransportError,
    Worker,
)
from micromessaging.transports import client_transport


def math_service() -> Service:
    service = Service("math")

    @service.method(name="math.double")
    def double(x: int) -> int:
        return 2 * x

    @service.method
    async def pause(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "done"

    @service.method
    def echo(*args: object, **kwargs: object) -> object:
        return kwargs or list(args)

    return service


@pytest.fixture
def url() -> str:
    return f"memory://client-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def served(url: str) -> AsyncIterator[Worker]:
    async with Worker(math_service(), url, "math") as worker:
        yield worker


async def test_dotted_method_names_through_the_proxy(served: Worker, url: str) -> None:
    async with AsyncClient(url, "math") as client:
        assert await client.math.double(21) == 42
        assert repr(client.math.double) == "<remote method math.double>"


async def test_private_attributes_never_become_calls(url: str) -> None:
    client = AsyncClient(url, "math")
    with pytest.raises(AttributeError):
        client._secret  # noqa: B018
    with pytest.raises(AttributeError):
        client.math._hidden  # noqa: B018


async def test_positional_and_named_params_cannot_mix(url: str) -> None:
    async with AsyncClient(url, "math") as client:
        with pytest.raises(TypeError, match="positional or named"):
            await client.echo(1, b=2)


async def test_explicit_params_and_timeout(served: Worker, url: str) -> None:
    async with AsyncClient(url, "math") as client:
        assert await client.request("echo", {"a": 1}) == {"a": 1}
        assert await client.request("echo", [1, 2], timeout=5) == [1, 2]
        assert await client.request("echo") == []


def test_timeout_is_finite_by_default_and_validated(url: str) -> None:
    assert AsyncClient(url, "math").timeout == 30
    with pytest.raises(ConfigurationError):
        AsyncClient(url, "math", timeout=0)
    with pytest.raises(ConfigurationError, match="queue"):
        AsyncClient(url)


async def test_timeout_names_the_call(url: str) -> None:
    async with AsyncClient(f"{url}?worker_window=0", "nobody-home", timeout=0.2) as client:
        with pytest.raises(CallTimeout, match=r"add from queue 'nobody-home' within 0.2s"):
            await client.add(1, 2)
    assert issubclass(CallTimeout, TimeoutError)


async def test_no_worker_is_told_apart_from_a_slow_one(url: str) -> None:
    async with AsyncClient(url, "nobody-home", timeout=5) as client:
        with pytest.raises(NoWorkers, match="nobody-home") as caught:
            await client.add(1, 2)
    assert isinstance(caught.value, TransportError)
    with pytest.raises(ConfigurationError, match="worker_window"):
        client_transport(f"{url}?worker_window=soon")


async def test_closing_fails_calls_in_flight_and_later_calls(served: Worker, url: str) -> None:
    client = AsyncClient(url, "math")
    pending = asyncio.create_task(client.pause(1))
    await asyncio.sleep(0.05)
    await client.aclose()
    with pytest.raises(TransportError):
        await pending
    with pytest.raises(TransportError, match="closed"):
        await client.pause(0)


async def test_batches(served: Worker, url: str) -> None:
    async with AsyncClient(url, "math") as client:
        batch = client.batch()
        first = batch.math.double(2)
        second = batch.call("echo", x=1)
        with pytest.raises(RuntimeError, match="not been sent"):
            first.result()
        calls = await batch.send()
        assert [c.result() for c in calls] == [4, {"x": 1}]
        assert first.done and second.done

        only_notifications = client.batch()
        only_notifications.notify("echo", 1)
        assert await only_notifications.send() == []

        with pytest.raises(ValueError, match="empty"):
            await client.batch().send()


async def test_whole_batch_failure_raises(served: Worker, url: str) -> None:
    async with AsyncClient(url, "math") as client:
        batch = client.batch()
        batch.echo("x" * (2 * 1024 * 1024))
        with pytest.raises(RemoteError, match="too large"):
            await batch.send()


def test_unknown_scheme_names_the_known_ones() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown broker URL scheme.*redis://"):
        client_transport("carrier-pigeon://coop")


def test_missing_extra_names_the_pip_command(monkeypatch, tmp_path) -> None:
    (tmp_path / "mm_fake_transport.py").write_text("import definitely_missing_library\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from micromessaging import transports

    monkeypatch.setitem(transports.SCHEMES, "fake", ("mm_fake_transport", "fake"))
    with pytest.raises(ConfigurationError, match=r'pip install "micromessaging\[fake\]"'):
        client_transport("fake://somewhere")
    sys.modules.pop("mm_fake_transport", None)


def test_broker_from_environment(monkeypatch) -> None:
    for name in ("MICROMESSAGING_BROKER", "REDIS_URL", "CLOUDAMQP_URL", "RABBITMQ_URL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigurationError, match="MICROMESSAGING_BROKER"):
        AsyncClient(queue="q")
    monkeypatch.setenv("RABBITMQ_URL", "amqp://rabbit")
    assert AsyncClient(queue="q").broker == "amqp://rabbit"
    monkeypatch.setenv("CLOUDAMQP_URL", "amqp://cloud")
    assert AsyncClient(queue="q").broker == "amqp://cloud"
    monkeypatch.setenv("REDIS_URL", "redis://heroku")
    assert AsyncClient(queue="q").broker == "redis://heroku"
    monkeypatch.setenv("MICROMESSAGING_BROKER", "memory://ours")
    assert AsyncClient(queue="q").broker == "memory://ours"
    assert AsyncClient("memory://explicit", "q").broker == "memory://explicit"


async def test_sync_client_does_everything_the_async_one_does(served: Worker, url: str) -> None:
    def use() -> None:
        with Client(url, "math", timeout=5) as client:
            assert client.math.double(4) == 8
            assert client.call("echo", 1, 2) == [1, 2]
            assert client.request("echo", {"k": "v"}) == {"k": "v"}
            client.notify("echo", 1)
            with client.batch() as batch:
                doubled = batch.math.double(5)
            assert doubled.result() == 10
            assert {m["name"] for m in client.describe()["methods"]} >= {"math.double"}
            with pytest.raises(RemoteError):
                client.call("missing")
            with pytest.raises(CallTimeout):
                client.call("pause", 1, timeout=0.1)
            assert (client.broker, client.queue, client.timeout) == (url, "math", 5)

    await asyncio.to_thread(use)


def test_sync_client_in_a_thread_of_an_async_program(url: str) -> None:
    async def main() -> int:
        async with Worker(math_service(), url, "math"):
            with Client(url, "math") as client:
                return await asyncio.to_thread(client.math.double, 3)

    assert asyncio.run(main()) == 6
