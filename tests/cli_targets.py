"""Services the command-line tests serve from real worker processes."""

from __future__ import annotations

import sys
import time


class Sleepy:
    """Adds, and sleeps on request, saying on stderr when it has started to."""

    def add(self, a: float, b: float) -> float:
        return a + b

    def nap(self, seconds: float) -> str:
        sys.stderr.write(f"nap started: {seconds}\n")
        sys.stderr.flush()
        time.sleep(seconds)
        return "rested"


class Boom:
    """A constructor that fails."""

    def __init__(self) -> None:
        raise RuntimeError("no database configured")

    def add(self, a: float, b: float) -> float:
        return a + b
