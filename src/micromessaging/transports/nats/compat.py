"""The one place that touches nats-py beyond its documented API; checked against 2.6 - 2.16.

A connection must fail fast while first connecting (a wrong URL is reported in seconds) and
then reconnect forever; nats-py takes one reconnect limit for both, read from its options
dict on every attempt, which is where we change it once connected. pyproject.toml bounds
the version to what was checked.
"""

from __future__ import annotations

from nats.aio.client import Client as NATS


def reconnect_forever(connection: NATS) -> None:
    """From now on, a lost server is retried for ever (calls fail or time out meanwhile)."""
    connection.options["max_reconnect_attempts"] = -1
