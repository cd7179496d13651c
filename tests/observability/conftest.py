"""Until the suite-wide broker fixtures land: the shared Redis (removed at that merge)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def redis_url() -> str:
    return os.environ.get("MICROMESSAGING_TEST_REDIS", "redis://127.0.0.1:6379/0")
