"""An ASGI app that answers ``add`` itself, on the gateway's own HTTP stack: the HTTP floor.

It runs on uvicorn with the gateway's protocol (`protocol_factory`, the same limits) and
event loop, and does nothing else: no token, no broker, no worker. What a call costs here is
what the HTTP hop alone costs; the gateway can't forward a call for less.

    python benchmarks/_http_floor.py PORT
"""

from __future__ import annotations

import sys
from typing import Any

import orjson


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    request = orjson.loads(body)
    a, b = request["params"]
    answer = orjson.dumps({"jsonrpc": "2.0", "result": a + b, "id": request["id"]})
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(answer))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


if __name__ == "__main__":
    import uvicorn

    from micromessaging._asgi import HttpLimits
    from micromessaging._http_server import protocol_factory

    uvicorn.run(
        app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False,
        lifespan="on", ws="none", http=protocol_factory(HttpLimits()),
    )  # fmt: skip
