"""The JSON-RPC 2.0 layer: the specification's examples, and any bytes at all."""

from __future__ import annotations

import asyncio
import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from micromessaging import ErrorCode, ProtocolError, RemoteError, Service
from micromessaging._dispatch import Dispatcher
from micromessaging._protocol import (
    Request,
    decode_reply,
    dumps,
    encode_request,
    encode_responses,
    error_response,
    outcome,
    parse_incoming,
    result_response,
)


def spec_service() -> Service:
    """The methods the specification's examples call."""
    service = Service("spec")

    @service.method
    def subtract(minuend: int, subtrahend: int) -> int:
        return minuend - subtrahend

    @service.method
    def sum(*numbers: int) -> int:  # the specification's name
        total = 0
        for number in numbers:
            total += number
        return total

    @service.method
    def update(*values: int) -> None:
        pass

    @service.method
    def notify_hello(*values: int) -> None:
        pass

    @service.method
    def get_data() -> list[object]:
        return ["hello", 5]

    return service


# Every example of https://www.jsonrpc.org/specification#examples: (sent, expected reply).
# None means the specification shows no reply at all.
SPEC_EXAMPLES = [
    # rpc call with positional parameters
    ('{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}',
     '{"jsonrpc": "2.0", "result": 19, "id": 1}'),
    ('{"jsonrpc": "2.0", "method": "subtract", "params": [23, 42], "id": 2}',
     '{"jsonrpc": "2.0", "result": -19, "id": 2}'),
    # rpc call with named parameters
    ('{"jsonrpc": "2.0", "method": "subtract", "params": {"subtrahend": 23, "minuend": 42}, '
     '"id": 3}',
     '{"jsonrpc": "2.0", "result": 19, "id": 3}'),
    ('{"jsonrpc": "2.0", "method": "subtract", "params": {"minuend": 42, "subtrahend": 23}, '
     '"id": 4}',
     '{"jsonrpc": "2.0", "result": 19, "id": 4}'),
    # a Notification
    ('{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}', None),
    ('{"jsonrpc": "2.0", "method": "foobar"}', None),
    # rpc call of non-existent method
    ('{"jsonrpc": "2.0", "method": "foobar", "id": "1"}',
     '{"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "1"}'),
    # rpc call with invalid JSON
    ('{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]',
     '{"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": null}'),
    # rpc call with invalid Request object
    ('{"jsonrpc": "2.0", "method": 1, "params": "bar"}',
     '{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null}'),
    # rpc call Batch, invalid JSON
    ('[\n  {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},\n'
     '  {"jsonrpc": "2.0", "method"\n]',
     '{"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": null}'),
    # rpc call with an empty Array
    ("[]",
     '{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null}'),
    # rpc call with an invalid Batch (but not empty)
    ("[1]",
     '[{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null}]'),
    # rpc call with invalid Batch
    ("[1,2,3]",
     '[{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null},'
     ' {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null},'
     ' {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null}]'),
    # rpc call Batch
    ('[{"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},'
     ' {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},'
     ' {"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"},'
     ' {"foo": "boo"},'
     ' {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},'
     ' {"jsonrpc": "2.0", "method": "get_data", "id": "9"}]',
     '[{"jsonrpc": "2.0", "result": 7, "id": "1"},'
     ' {"jsonrpc": "2.0", "result": 19, "id": "2"},'
     ' {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": null},'
     ' {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "5"},'
     ' {"jsonrpc": "2.0", "result": ["hello", 5], "id": "9"}]'),
    # rpc call Batch (all notifications)
    ('[{"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]},'
     ' {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]}]', None),
]  # fmt: skip


def _canonical(value: object) -> object:
    """Batch replies may come in any order: compare them as sorted lists.

    The specification's examples carry no error data, and let a server add some ("may be
    omitted"): ours says which method was not found, so data is left out of the comparison.
    """
    if isinstance(value, list):
        return sorted(json.dumps(_canonical(item), sort_keys=True) for item in value)
    if isinstance(value, dict) and isinstance(value.get("error"), dict):
        return {**value, "error": {k: v for k, v in value["error"].items() if k != "data"}}
    return value


@pytest.mark.parametrize(("sent", "expected"), SPEC_EXAMPLES)
async def test_specification_examples(sent: str, expected: str | None) -> None:
    reply = await Dispatcher(spec_service()).handle(sent.encode())
    if expected is None:
        assert reply is None
    else:
        assert reply is not None
        assert _canonical(json.loads(reply)) == _canonical(json.loads(expected))


def _assert_valid_replies(reply: bytes) -> None:
    decoded = orjson.loads(reply)
    for response in decoded if isinstance(decoded, list) else [decoded]:
        assert response["jsonrpc"] == "2.0"
        assert "id" in response
        assert ("result" in response) != ("error" in response)
        if "error" in response:
            assert isinstance(response["error"]["code"], int)
            assert isinstance(response["error"]["message"], str)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_any_bytes_parse_without_raising(data: bytes) -> None:
    incoming = parse_incoming(data)
    assert incoming.items
    for item in incoming.items:
        if isinstance(item, dict):
            _assert_valid_replies(dumps(item))


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
request_like = st.dictionaries(
    st.sampled_from(["jsonrpc", "method", "params", "id", "extra"]),
    json_values | st.just("2.0") | st.sampled_from(["subtract", "sum", "get_data", "rpc.x"]),
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values, request_like, st.lists(request_like, max_size=5)))
def test_any_json_gets_a_valid_answer(value: object) -> None:
    # Sync tests driving their own loop: hypothesis and pytest-asyncio don't share one.
    reply = asyncio.run(Dispatcher(spec_service()).handle(dumps(value)))
    if reply is not None:
        _assert_valid_replies(reply)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=500))
def test_any_bytes_get_a_valid_answer(data: bytes) -> None:
    reply = asyncio.run(Dispatcher(spec_service()).handle(data))
    if reply is not None:
        _assert_valid_replies(reply)


def test_ids_of_every_kind_are_echoed() -> None:
    for id_ in ("abc", 7, 2.5, None):
        body = orjson.dumps({"jsonrpc": "2.0", "method": "m", "id": id_})
        (request,) = parse_incoming(body).items
        assert request == Request("m", None, id_, False)


def test_boolean_id_is_invalid() -> None:
    (item,) = parse_incoming(b'{"jsonrpc": "2.0", "method": "m", "id": true}').items
    assert isinstance(item, dict)
    assert item["error"]["code"] == ErrorCode.INVALID_REQUEST
    assert item["id"] is None


def test_invalid_request_keeps_a_valid_id() -> None:
    (item,) = parse_incoming(b'{"jsonrpc": "2.0", "method": 5, "id": 12}').items
    assert isinstance(item, dict)
    assert item["id"] == 12


def test_missing_id_makes_a_notification_and_null_id_does_not() -> None:
    (notification,) = parse_incoming(b'{"jsonrpc": "2.0", "method": "m"}').items
    (request,) = parse_incoming(b'{"jsonrpc": "2.0", "method": "m", "id": null}').items
    assert isinstance(notification, Request) and notification.is_notification
    assert isinstance(request, Request) and not request.is_notification


def test_oversized_message_gets_a_clear_error_without_parsing() -> None:
    (item,) = parse_incoming(b"{" * 200, max_size=100).items
    assert isinstance(item, dict)
    assert item["error"]["code"] == ErrorCode.MESSAGE_TOO_LARGE
    assert "200 bytes exceeds the limit of 100" in item["error"]["data"]["message"]


def test_deeply_nested_json_is_a_parse_error() -> None:
    (item,) = parse_incoming(b"[" * 100_000 + b"]" * 100_000, max_size=None).items
    assert isinstance(item, dict)
    assert item["error"]["code"] == ErrorCode.PARSE_ERROR


def test_unserializable_result_becomes_internal_error() -> None:
    reply = encode_responses([result_response(1, {1, 2})], is_batch=False)
    assert reply is not None
    assert orjson.loads(reply)["error"]["code"] == ErrorCode.INTERNAL_ERROR


def test_big_integers_survive_encoding() -> None:
    assert json.loads(dumps({"n": 2**70})) == {"n": 2**70}


def test_requests_encode_as_the_specification_writes_them() -> None:
    assert orjson.loads(encode_request("add", [1, 5.1], "x")) == {
        "jsonrpc": "2.0", "method": "add", "params": [1, 5.1], "id": "x"}  # fmt: skip
    assert orjson.loads(encode_request("ping", None, None, notification=True)) == {
        "jsonrpc": "2.0", "method": "ping"}  # fmt: skip


@pytest.mark.parametrize(
    "reply",
    [b"nope", b"{}", b'{"jsonrpc": "2.0", "id": 1}', b'{"jsonrpc": "1.0", "result": 1, "id": 1}',
     b'{"jsonrpc": "2.0", "result": 1, "error": {"code": 1, "message": "x"}, "id": 1}',
     b'{"jsonrpc": "2.0", "error": {"code": "x", "message": "y"}, "id": 1}',
     b'{"jsonrpc": "2.0", "error": "bad", "id": 1}'],
)  # fmt: skip
def test_malformed_replies_raise_protocol_error(reply: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_reply(reply)


def test_outcome_raises_remote_error() -> None:
    response = error_response(1, 4000, "custom", {"why": "because"})
    with pytest.raises(RemoteError) as caught:
        outcome(response)
    assert (caught.value.code, caught.value.message, caught.value.data) == (
        4000, "custom", {"why": "because"})  # fmt: skip
    assert "custom" in str(caught.value) and "4000" in str(caught.value)
