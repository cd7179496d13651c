"""The event loop a worker process runs on (`micromessaging._loop`)."""

from __future__ import annotations

import asyncio
import sys

import pytest

from micromessaging import ConfigurationError
from micromessaging._loop import loop_factory, loop_name, run


def test_asyncio_is_asyncio_s_own_loop() -> None:
    assert loop_factory("asyncio") is None
    assert run(_name(), "asyncio") == "asyncio"


def test_auto_and_uvloop_take_uvloop_when_installed() -> None:
    uvloop = pytest.importorskip("uvloop")
    assert loop_factory("auto") is uvloop.new_event_loop
    assert run(_name(), "auto") == run(_name(), "uvloop") == "uvloop"


def test_auto_falls_back_to_asyncio_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)
    assert loop_factory("auto") is None
    assert run(_name(), "auto") == "asyncio"


def test_uvloop_asked_for_and_missing_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'micromessaging\[uvloop\]'"):
        loop_factory("uvloop")


def test_an_unknown_loop_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="auto, asyncio, uvloop"):
        loop_factory("trio")


def test_run_returns_what_the_coroutine_returns_and_closes_its_loop() -> None:
    loops: list[asyncio.AbstractEventLoop] = []

    async def main() -> int:
        loops.append(asyncio.get_running_loop())
        await asyncio.sleep(0)
        return 42

    assert run(main()) == 42
    assert loops[0].is_closed()


async def _name() -> str:
    return loop_name()
