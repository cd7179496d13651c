"""Type aliases shared by every layer."""

from __future__ import annotations

from typing import Any, TypeAlias

JSON: TypeAlias = Any
"""A value that JSON can carry: dict, list, str, int, float, bool or None."""

Id: TypeAlias = str | int | float | None
"""A JSON-RPC request id."""

Params: TypeAlias = list[Any] | dict[str, Any] | None
"""JSON-RPC params: positional (a list), named (a dict), or none."""
