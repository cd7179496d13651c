"""The one place that touches nats-py beyond its documented API; checked against 2.6 - 2.16.

A connection must fail fast while first connecting (a wrong URL is reported in seconds) and
then reconnect forever; nats-py takes one reconnect limit for both, read from its options
dict on every attempt, which `reconnect_forever` changes once connected.

nats-py decodes what a publisher wrote as if it were well formed: a reply subject that is
not UTF-8 (the server passes any bytes on) or a header block whose status line is not
raises inside its reading loop, which then stops for good while the connection looks open.
One such message would leave a worker deaf until its pings time out, minutes later. So our
connections are a `Client` that reads those bytes leniently, and a message nats-py can't
make sense of reaches us with what could be read (its reply subject then fails our checks).
"""

from __future__ import annotations

import logging
from typing import Any

from nats.aio.client import Client as _Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

logger = logging.getLogger("micromessaging.transport.nats")


class Client(_Client):
    """nats-py's client, reading subjects and header blocks that are not UTF-8 leniently."""

    def _build_message(
        self,
        sid: int,
        subject: bytes,
        reply: bytes,
        data: bytes,
        headers: dict[str, str] | None,
    ) -> Msg:
        # Undecodable bytes become lone surrogates: still a str, never a valid subject.
        return self.msg_class(
            subject=subject.decode(errors="surrogateescape"),
            reply=reply.decode(errors="surrogateescape"),
            data=data,
            headers=headers,
            _client=self,
            _sid=sid,
        )

    async def _process_headers(self, headers: Any) -> dict[str, str] | None:
        try:
            return await super()._process_headers(headers)
        except Exception as exc:
            logger.debug("NATS: a message's headers can't be read (%r); taken without", exc)
            return None


def reconnect_forever(connection: _Client) -> None:
    """From now on, a lost server is retried for ever (calls fail or time out meanwhile)."""
    connection.options["max_reconnect_attempts"] = -1


async def drain_subscription(connection: _Client, subscription: Subscription) -> None:
    """Stop `subscription` at the server, then read every message the server sent it first.

    nats-py's own ``drain`` waits for one PING round trip after its UNSUB, but writes that
    PING at once, ahead of the UNSUB still in its buffer: its PONG can come before the
    server has even seen the UNSUB, and what the server sends meanwhile is dropped. A
    second round trip is written after the UNSUB (the first one waited for the buffer to
    go out), so once its PONG is back nothing more can come.
    """
    await connection._send_unsubscribe(subscription._id)
    await connection.flush()
    await connection.flush()
    await subscription._pending_queue.join()
    subscription._closed = True
    subscription._stop_processing()
    connection._remove_sub(subscription._id)
