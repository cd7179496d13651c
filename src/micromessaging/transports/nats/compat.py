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
