"""Numbers JSON-RPC peers can read: integers of any size round-trip exactly; NaN and the
infinities, and anything else JSON can't carry, are a clear error, never a silent change.

orjson reads an integer beyond 64 bits as a float and writes NaN as null; the protocol layer
takes the standard library's exact path for the rare message that needs it.
"""

from __future__ import annotations

import asyncio
import json
import math

import httpx
import orjson
import pytest

from micromessaging import (
    AsyncClient,
    Client,
    EncodeError,
    ErrorCode,
    MicromessagingError,
    Worker,
)
from micromessaging._client import single_result
from micromessaging._dispatch import Dispatcher
from micromessaging._protocol import (
    DecodeError,
    Request,
    dumps,
    encode_request,
    encode_response,
    loads,
    parse_incoming,
    result_response,
)
from micromessaging._service import Service
from micromessaging.gateway import Gateway, GatewaySettings
from micromessaging.gateway.auth import hash_token, parse_tokens

BIG = 2**64 + 1
"""Beyond what orjson reads as an integer (it reads 18446744073709551617.0)."""
VERY_NEGATIVE = -(2**63) - 1


class Numbers:
    """A service that hands back what it was given, and the numbers JSON can't carry."""

    def echo(self, value: object) -> object:
        return value

    def successor(self, n: int) -> int:
        return n + 1

    def nan(self) -> float:
        return math.nan

    def infinities(self) -> list[float]:
        return [math.inf, -math.inf]


def deep(levels: int) -> list[object]:
    value: list[object] = []
    for _ in range(levels):
        value = [value]
    return value


# --- reading ---------------------------------------------------------------------------------


@pytest.mark.parametrize("number", [BIG, VERY_NEGATIVE, 10**40, -(10**40), 10**300 + 7])
def test_integers_beyond_64_bits_are_read_exactly(number: int) -> None:
    text = b'{"jsonrpc":"2.0","method":"echo","params":[%d],"id":%d}' % (number, number)
    (request,) = parse_incoming(text).items
    assert request == Request("echo", [number], number, False)
    assert type(request.id) is int


def test_the_64_bit_edges_stay_on_the_fast_path_and_exact() -> None:
    for number in (2**64 - 1, -(2**63), 2**63, 10**18):
        assert loads(b"[%d]" % number) == [number]


def test_long_digit_runs_in_strings_change_nothing() -> None:
    value = {"s": "12345678901234567890123", "f": 0.1, "u": "\u00e9", "n": None, "b": True}
    assert loads(orjson.dumps(value)) == value
    assert loads(orjson.dumps(value).decode()) == value


@pytest.mark.parametrize(
    "text",
    [
        b"[12345678901234567890, NaN]",  # not JSON, on either path
        b"[12345678901234567890, Infinity]",
        b"[12345678901234567890, 1e400]",  # a float JSON can write but no double can hold
        b'[12345678901234567890, "\xff"]',  # invalid UTF-8
        b"\xef\xbb\xbf[12345678901234567890]",  # a byte-order mark
        b"[" + b"1" * 5000 + b"]",  # more digits than Python reads (4300)
        b"[" * 5000 + b"12345678901234567890" + b"]" * 5000,
        b"[12345678901234567890",
    ],
)
def test_the_exact_path_refuses_what_the_fast_path_refuses(text: bytes) -> None:
    with pytest.raises(DecodeError):
        loads(text)
    (item,) = parse_incoming(text, max_size=None).items
    assert isinstance(item, dict)
    assert item["error"]["code"] == ErrorCode.PARSE_ERROR


async def test_a_worker_answers_big_integers_exactly() -> None:
    dispatcher = Dispatcher(Service.from_object(Numbers()))
    body = b'{"jsonrpc":"2.0","method":"successor","params":[%d],"id":%d}' % (BIG, BIG)
    reply = await dispatcher.handle(body)
    assert reply == b'{"jsonrpc":"2.0","result":%d,"id":%d}' % (BIG + 1, BIG)
    assert json.loads(reply or b"") == {"jsonrpc": "2.0", "result": BIG + 1, "id": BIG}


async def test_clients_send_and_receive_big_integers_exactly() -> None:
    async with (
        Worker(Numbers(), "memory://", "numbers"),
        AsyncClient("memory://", "numbers", timeout=5) as client,
    ):
        assert await client.successor(BIG) == BIG + 1
        assert await client.echo([VERY_NEGATIVE, 10**40]) == [VERY_NEGATIVE, 10**40]
        assert await client.request("echo", {"value": -(10**30)}) == -(10**30)


def test_a_reply_with_a_big_integer_is_read_exactly() -> None:
    reply = b'{"jsonrpc":"2.0","result":%d,"id":"a1"}' % BIG
    assert single_result(reply, "a1") == BIG
    assert type(single_result(reply, "a1")) is int


# --- writing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, [1, {"x": (math.nan,)}]])
def test_nan_and_infinities_are_refused_not_written_as_null(value: object) -> None:
    with pytest.raises(TypeError, match=r"NaN|nfinit"):
        dumps(value)
    assert dumps([None, 1.5, {"n": None}]) == b'[null,1.5,{"n":null}]'


def test_dumps_raises_only_type_error() -> None:
    class Hostile:
        def __str__(self) -> str:
            raise RuntimeError("no")

    cycle: list[object] = []
    cycle.append(cycle)
    for value in ({1, 2}, object(), Hostile(), deep(5000), cycle, {"k": b"\xff"}, math.nan):
        with pytest.raises(TypeError):
            dumps(value)


async def test_results_json_cant_carry_are_a_clear_error() -> None:
    dispatcher = Dispatcher(Service.from_object(Numbers()))
    for method in ("nan", "infinities"):
        body = b'{"jsonrpc":"2.0","method":"%s","id":1}' % method.encode()
        error = orjson.loads(await dispatcher.handle(body) or b"")["error"]
        assert error["code"] == ErrorCode.INTERNAL_ERROR
        assert "not JSON" in error["data"]["message"]
    response = encode_response(result_response(2, [1, math.nan]))
    assert orjson.loads(response)["error"]["code"] == ErrorCode.INTERNAL_ERROR


UNENCODABLE = [
    pytest.param({1, 2}, id="set"),
    pytest.param(object(), id="object"),
    pytest.param(deep(1000), id="nesting-1000"),
    pytest.param(deep(100_000), id="nesting-100000"),
    pytest.param(math.nan, id="nan"),
    pytest.param({"x": -math.inf}, id="infinity"),
]


def test_encode_error_is_ours_and_a_type_error() -> None:
    assert issubclass(EncodeError, MicromessagingError)
    assert issubclass(EncodeError, TypeError)
    with pytest.raises(TypeError):
        encode_request("echo", [{1, 2}], "id")


@pytest.mark.parametrize("param", UNENCODABLE)
async def test_async_client_raises_encode_error_for_params_json_cant_carry(param: object) -> None:
    async with (
        Worker(Numbers(), "memory://", "numbers-async"),
        AsyncClient("memory://", "numbers-async", timeout=5) as client,
    ):
        with pytest.raises(EncodeError):
            await client.echo(param)
        with pytest.raises(EncodeError):
            await client.request("echo", [param])
        with pytest.raises(EncodeError):
            await client.notify("echo", param)
        with pytest.raises(EncodeError):
            await client.echo(value=param)
        batch = client.batch()
        batch.echo(param)
        with pytest.raises(EncodeError):
            await batch.send()
        with pytest.raises(EncodeError):
            await client.echo(1, value=2)  # positional and named at once: not JSON-RPC
        assert await client.echo(BIG) == BIG  # the client still works


@pytest.mark.parametrize("param", UNENCODABLE)
async def test_sync_client_raises_encode_error_for_params_json_cant_carry(param: object) -> None:
    def calls() -> object:
        with Client("memory://", "numbers-sync", timeout=5) as client:
            for attempt in (
                lambda: client.echo(param),
                lambda: client.request("echo", [param]),
                lambda: client.notify("echo", param),
            ):
                with pytest.raises(EncodeError):
                    attempt()
            with pytest.raises(EncodeError), client.batch() as batch:
                batch.echo(param)
            return client.echo(BIG)

    async with Worker(Numbers(), "memory://", "numbers-sync"):
        assert await asyncio.to_thread(calls) == BIG


async def test_the_gateway_forwards_integers_of_any_size() -> None:
    tokens = {"tokens": [{"name": "t", "sha256": hash_token("tok"), "allow": {"numbers-gw": "*"}}]}
    grants = tuple(parse_tokens(orjson.dumps(tokens).decode(), "test"))
    gateway = Gateway(GatewaySettings(broker="memory://numbers-gw", grants=grants, timeout=5))
    body = b'{"jsonrpc":"2.0","method":"successor","params":[%d],"id":%d}' % (10**400, BIG)
    try:
        async with (
            Worker(Numbers(), "memory://numbers-gw", "numbers-gw"),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=gateway), base_url="http://gateway"
            ) as http,
        ):
            response = await http.post(
                "/numbers-gw", content=body, headers={"authorization": "Bearer tok"}
            )
    finally:
        await gateway.aclose()
    assert response.status_code == 200
    assert json.loads(response.content) == {"jsonrpc": "2.0", "result": 10**400 + 1, "id": BIG}
