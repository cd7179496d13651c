"""JSON Schemas from type hints, and a checker for the schemas it writes.

One source serves two ends: `rpc.discover` publishes the schemas, and the dispatcher checks
incoming params against them, so a caller sending a string where the service declared
``a: float`` gets -32602 naming ``a`` instead of a TypeError from deep inside the method.
Hints with no JSON meaning (a class of the service's own, say) give the empty schema, which
accepts anything: the method's own code then decides.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Union

from ._types import JSON

Schema = dict[str, JSON]

_SCALARS: dict[object, Schema] = {
    bool: {"type": "boolean"},
    int: {"type": "integer"},
    float: {"type": "number"},
    str: {"type": "string"},
    type(None): {"type": "null"},
    None: {"type": "null"},
}
_ARRAYS = (list, tuple, set, frozenset, Sequence, typing.List, typing.Tuple)  # noqa: UP006
_OBJECTS = (dict, Mapping, typing.Dict)  # noqa: UP006


def schema_for(hint: object) -> Schema:
    """The JSON Schema for one type hint; the empty schema when JSON can't express it."""
    if hint in _SCALARS:
        return dict(_SCALARS[hint])
    if hint is Any or hint is object:
        return {}
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Annotated:
        return schema_for(args[0])
    if origin in (Union, types.UnionType):
        return {"anyOf": [schema_for(arg) for arg in args]}
    if origin is Literal:
        return {"enum": list(args)}
    if hint in _ARRAYS or origin in _ARRAYS:
        schema: Schema = {"type": "array"}
        if origin is tuple and args and args[-1] is not Ellipsis:
            schema["prefixItems"] = [schema_for(arg) for arg in args]
            schema["minItems"] = schema["maxItems"] = len(args)
        elif args:
            schema["items"] = schema_for(args[0])
        return schema
    if hint in _OBJECTS or origin in _OBJECTS:
        schema = {"type": "object"}
        if len(args) == 2:
            schema["additionalProperties"] = schema_for(args[1])
        return schema
    return {}


_TYPE_CHECKS: dict[str, typing.Callable[[object], bool]] = {
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "null": lambda v: v is None,
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}
_NAMES = {
    "boolean": "a boolean",
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "null": "null",
    "array": "an array",
    "object": "an object",
}


def json_type_name(value: object) -> str:
    """How JSON would name the type of `value` ('a string', 'an array', ...)."""
    for name, check in _TYPE_CHECKS.items():
        if name != "integer" and check(value):
            return _NAMES[name]
    return type(value).__name__


def describe(schema: Schema) -> str:
    """A short English name for what a schema accepts."""
    if "type" in schema:
        return _NAMES[schema["type"]]
    if "enum" in schema:
        return "one of " + ", ".join(repr(v) for v in schema["enum"])
    if "anyOf" in schema:
        return " or ".join(describe(s) for s in schema["anyOf"])
    return "anything"


_EXACT_TYPES: dict[str, frozenset[type]] = {
    "boolean": frozenset({bool}),
    "integer": frozenset({int}),
    "number": frozenset({int, float}),
    "string": frozenset({str}),
    "null": frozenset({type(None)}),
    "array": frozenset({list}),
    "object": frozenset({dict}),
}


def exact_types(schema: Schema) -> frozenset[type] | None:
    """The exact Python types decoded JSON must have to match `schema`, when that says it all.

    None when checking takes more than a type (items, unions, enums). Decoded JSON holds
    only exact dict, list, str, int, float, bool and None, so ``type(v) in types`` is the
    whole test, with no call on the hot path.
    """
    if schema.keys() == {"type"}:
        return _EXACT_TYPES[schema["type"]]
    return None


def problem(value: JSON, schema: Schema, where: str) -> str | None:
    """Why `value` does not match `schema` (naming `where`), or None when it does."""
    if not schema:
        return None
    if "anyOf" in schema:
        if any(problem(value, option, where) is None for option in schema["anyOf"]):
            return None
        return f"{where} must be {describe(schema)}, got {json_type_name(value)}"
    if "enum" in schema:
        # True == 1 in Python, but not in JSON.
        if any(
            value == option and isinstance(value, bool) == isinstance(option, bool)
            for option in schema["enum"]
        ):
            return None
        return f"{where} must be {describe(schema)}, got {value!r}"
    kind = schema.get("type")
    if kind is not None and not _TYPE_CHECKS[kind](value):
        return f"{where} must be {describe(schema)}, got {json_type_name(value)}"
    if kind == "array":
        return _array_problem(value, schema, where)
    if kind == "object" and "additionalProperties" in schema:
        for key, item in value.items():
            found = problem(item, schema["additionalProperties"], f"{where}[{key!r}]")
            if found:
                return found
    return None


def _array_problem(value: list[JSON], schema: Schema, where: str) -> str | None:
    if "prefixItems" in schema:
        if len(value) != len(schema["prefixItems"]):
            return f"{where} must have {len(schema['prefixItems'])} items, got {len(value)}"
        for index, (item, item_schema) in enumerate(zip(value, schema["prefixItems"], strict=True)):
            found = problem(item, item_schema, f"{where}[{index}]")
            if found:
                return found
    elif "items" in schema:
        for index, item in enumerate(value):
            found = problem(item, schema["items"], f"{where}[{index}]")
            if found:
                return found
    return None
