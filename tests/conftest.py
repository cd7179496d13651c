"""Session-wide guard: the whole run has a hard time limit.

pytest-timeout fails a single test that runs too long, but a test whose clean-up swallows
that failure and waits again could hold the run forever. This watchdog, on its own thread,
prints every thread's stack and ends the process once the run has taken longer than
MM_TEST_SESSION_LIMIT seconds (default 20 minutes, twice what the suite needs here).
"""

from __future__ import annotations

import faulthandler
import os
import sys
import threading

import pytest

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
