"""JSON-RPC 2.0 objects: parse, validate and encode. Pure: no I/O, no asyncio.

The worker side turns any byte string into a list of valid requests and ready-made error
responses (`parse_incoming`), never raising. The client side builds requests and checks
replies (`encode_request`, `decode_reply`), raising `ProtocolError` on a malformed reply.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

from ._exceptions import ProtocolError, RemoteError
from ._json import DecodeError as DecodeError  # this module's JSON, re-exported: exact
from ._json import dumps as dumps
from ._json import loads as loads
from ._types import JSON, Id, Params

VERSION = "2.0"
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024


class ErrorCode(IntEnum):
    """The error codes micromessaging sends: the specification's and its own server errors."""

    PARSE_ERROR = -32700
    INVALID_REQUEST = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL_ERROR = -32603
    SERVER_ERROR = -32000
    DEADLINE_EXCEEDED = -32001
    MESSAGE_TOO_LARGE = -32002
    DELIVERY_LIMIT = -32003


MESSAGES = {
    ErrorCode.PARSE_ERROR: "Parse error",
    ErrorCode.INVALID_REQUEST: "Invalid Request",
    ErrorCode.METHOD_NOT_FOUND: "Method not found",
    ErrorCode.INVALID_PARAMS: "Invalid params",
    ErrorCode.INTERNAL_ERROR: "Internal error",
    ErrorCode.SERVER_ERROR: "Server error",
    ErrorCode.DEADLINE_EXCEEDED: "Deadline exceeded",
    ErrorCode.MESSAGE_TOO_LARGE: "Message too large",
    ErrorCode.DELIVERY_LIMIT: "Delivery limit reached",
}


# --- objects ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Request:
    """One valid JSON-RPC request or notification."""

    method: str
    params: Params = None
    id: Id = None
    is_notification: bool = False


def error_object(code: int, message: str | None = None, data: JSON = None) -> dict[str, JSON]:
    """A JSON-RPC error object; the message defaults to the code's standard one."""
    if message is None:
        message = MESSAGES.get(code, "Server error")  # type: ignore[call-overload]
    error: dict[str, JSON] = {"code": int(code), "message": message}
    if data is not None:
        error["data"] = data
    return error


def error_response(
    id: Id, code: int, message: str | None = None, data: JSON = None
) -> dict[str, JSON]:
    """A JSON-RPC response carrying an error."""
    return {"jsonrpc": VERSION, "error": error_object(code, message, data), "id": id}


def result_response(id: Id, result: JSON) -> dict[str, JSON]:
    """A JSON-RPC response carrying a result."""
    return {"jsonrpc": VERSION, "result": result, "id": id}


# --- the worker's side -----------------------------------------------------------------------


@dataclass(slots=True)
class Incoming:
    """What one message asked for: valid requests, and error responses for the invalid items."""

    items: list[Request | dict[str, JSON]]
    is_batch: bool = False

    @property
    def requests(self) -> list[Request]:
        """The valid requests, in order."""
        return [item for item in self.items if isinstance(item, Request)]


_ABSENT = object()
# Exact types: bool is an int subclass in Python but not a JSON number.
_ID_TYPES = frozenset({str, int, float, type(None)})
_PARAMS_TYPES = frozenset({list, dict, type(None)})


def validate_request(obj: JSON) -> Request | dict[str, JSON]:
    """Check one decoded item: a `Request`, or the error response it deserves."""
    if type(obj) is not dict:
        return error_response(None, ErrorCode.INVALID_REQUEST)
    id_ = obj.get("id", _ABSENT)
    notification = id_ is _ABSENT
    if notification:
        id_ = None
    elif type(id_) not in _ID_TYPES:
        return error_response(None, ErrorCode.INVALID_REQUEST)
    method = obj.get("method")
    if (
        type(method) is not str
        or obj.get("jsonrpc") != VERSION
        or type(obj.get("params")) not in _PARAMS_TYPES
    ):
        return error_response(id_, ErrorCode.INVALID_REQUEST)
    return Request(method, obj.get("params"), id_, notification)


def parse_incoming(data: bytes, max_size: int | None = DEFAULT_MAX_MESSAGE_SIZE) -> Incoming:
    """Turn any byte string into requests and error responses; never raises."""
    if max_size is not None and len(data) > max_size:
        return Incoming([too_large_response(len(data), max_size)])
    try:
        obj = loads(data)
    except DecodeError:
        return Incoming([error_response(None, ErrorCode.PARSE_ERROR)])
    if type(obj) is dict:  # the common case, without a detour
        return Incoming([validate_request(obj)])
    return incoming_from_object(obj)


def incoming_from_object(obj: JSON) -> Incoming:
    """Validate an already decoded message: one request, or a batch of them."""
    if isinstance(obj, list):
        if not obj:
            return Incoming([error_response(None, ErrorCode.INVALID_REQUEST)])
        return Incoming([validate_request(item) for item in obj], is_batch=True)
    return Incoming([validate_request(obj)])


def too_large_response(size: int, limit: int) -> dict[str, JSON]:
    """The error answering a message over the size limit."""
    return error_response(
        None,
        ErrorCode.MESSAGE_TOO_LARGE,
        data={
            "message": f"message of {size} bytes exceeds the limit of {limit} bytes",
            "size": size,
            "limit": limit,
        },
    )


def encode_responses(responses: list[dict[str, JSON]], is_batch: bool) -> bytes | None:
    """The reply for one message: a single object, an array, or None when nothing is owed."""
    if not responses:
        return None
    if not is_batch:
        return encode_response(responses[0])
    try:
        return dumps(responses)
    except TypeError:
        return dumps([_encodable(response) for response in responses])


def encode_response(response: dict[str, JSON]) -> bytes:
    """Encode one response; a result JSON can't carry becomes an internal error."""
    try:
        return dumps(response)
    except TypeError:
        return dumps(_encodable(response))


def _encodable(response: dict[str, JSON]) -> dict[str, JSON]:
    try:
        dumps(response)
    except TypeError as exc:
        return error_response(
            response.get("id"),
            ErrorCode.INTERNAL_ERROR,
            data={"message": f"result is not JSON-serializable: {exc}"},
        )
    return response


def internal_error_reply(incoming: Incoming, message: str) -> bytes | None:
    """The reply when answering `incoming` failed unexpectedly: -32603 for each owed answer."""
    data = {"message": message[:500]}
    responses = [
        error_response(item.id, ErrorCode.INTERNAL_ERROR, data=data)
        if isinstance(item, Request)
        else item
        for item in incoming.items
        if not (isinstance(item, Request) and item.is_notification)
    ]
    return encode_responses(responses, incoming.is_batch)


# --- the client's side -----------------------------------------------------------------------


def request_object(method: str, params: Params, id: Id, notification: bool = False) -> JSON:
    """The JSON-RPC request (or notification, which has no id) for one call."""
    obj: dict[str, JSON] = {"jsonrpc": VERSION, "method": method}
    if params is not None:
        obj["params"] = params
    if not notification:
        obj["id"] = id
    return obj


def encode_request(method: str, params: Params, id: Id, notification: bool = False) -> bytes:
    """Encode one request; `TypeError` when the params hold something JSON can't carry."""
    return dumps(request_object(method, params, id, notification))


def decode_reply(data: bytes) -> JSON:
    """Decode a reply: one response object or a list of them; `ProtocolError` otherwise."""
    try:
        obj = loads(data)
    except DecodeError as exc:
        raise ProtocolError(f"reply is not JSON: {exc}") from exc
    for response in obj if isinstance(obj, list) else (obj,):
        check_response(response)
    return obj


def check_response(obj: JSON) -> None:
    """Raise `ProtocolError` unless `obj` is a well-formed JSON-RPC response."""
    if not isinstance(obj, dict) or obj.get("jsonrpc") != VERSION or "id" not in obj:
        raise ProtocolError(f"not a JSON-RPC 2.0 response: {str(obj)[:200]}")
    if ("result" in obj) == ("error" in obj):
        raise ProtocolError("a response must carry exactly one of result and error")
    if "error" in obj:
        error = obj["error"]
        if (
            not isinstance(error, dict)
            or not isinstance(error.get("code"), int)
            or not isinstance(error.get("message"), str)
        ):
            raise ProtocolError(f"malformed error object: {str(error)[:200]}")


def outcome(response: dict[str, JSON]) -> JSON:
    """The result of a checked response, or raise the `RemoteError` it carries."""
    if "error" in response:
        error = response["error"]
        raise RemoteError(error["code"], error["message"], error.get("data"))
    return response["result"]


def responses_by_id(responses: Iterable[dict[str, JSON]]) -> dict[Id, dict[str, JSON]]:
    """Index a batch reply by id (responses with a null id are left out)."""
    return {r["id"]: r for r in responses if r.get("id") is not None}
