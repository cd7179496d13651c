"""JSON in and out, exactly: orjson on the common path, the standard library where orjson
would change a value. Pure: no I/O.

orjson reads an integer beyond 64 bits (above 2**64 - 1 or below -2**63) as a float, so an id
of 2**64 + 1 would be answered as 1.8446744073709552e19, which its caller can't match; and it
writes NaN and the infinities as null, which is not what the caller meant. So:

- `loads` looks for a run of 19 digits in the raw bytes (every integer orjson can't hold has
  one) and reads only those rare messages with the standard library, which keeps integers
  exact, under the same rules as orjson otherwise (strict UTF-8, no NaN or Infinity, no
  number too large for a double, bounded nesting).
- `dumps` writes integers of any size (the standard library's path, when orjson refuses) and
  refuses NaN and the infinities with `TypeError`, the one error it raises.

benchmarks/json_exact.py measures what the digit check costs the common path.
"""

from __future__ import annotations

import json
import math
import re

import orjson

from ._types import JSON

DUMPS_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY

# Digits to b"1", everything else to b"0": a run of 19 digits is then one `find` away, ten
# times faster than a regular expression scanning the bytes (benchmarks/json_exact.py).
_DIGITS = bytes(0x31 if 0x30 <= byte <= 0x39 else 0x30 for byte in range(256))
_LONG_RUN = b"1" * 19
_LONG_DIGITS_TEXT = re.compile(r"[0-9]{19}")
_SCALARS = frozenset({str, int, bool, type(None)})


class DecodeError(ValueError):
    """Bytes that are not one JSON document."""


def loads(data: bytes | str) -> JSON:
    """Parse one JSON document; `DecodeError` on anything else (including NaN and depth > 1024).

    Integers keep their exact value whatever their size (up to 4300 digits, Python's limit).
    """
    if isinstance(data, str):
        long_digits = _LONG_DIGITS_TEXT.search(data) is not None
    else:
        long_digits = bytes(data).translate(_DIGITS).find(_LONG_RUN) >= 0
    if long_digits:
        return _exact_loads(data)
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(str(exc)) from exc


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise ValueError("number is infinity when parsed as double")
    return number


def _exact_loads(data: bytes | str) -> JSON:
    try:
        text = data if type(data) is str else bytes(data).decode()  # type: ignore[arg-type]
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite)
    except RecursionError:
        raise DecodeError("nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, too many digits, ...
        raise DecodeError(str(exc)) from None


def dumps(value: JSON) -> bytes:
    """Encode `value` as compact UTF-8 JSON; `TypeError` when it holds something JSON can't.

    Never raises anything else, whatever `value` holds (nesting deeper than the interpreter
    can follow included), so that an answer can always be built around the failure.
    """
    try:
        encoded = orjson.dumps(value, option=DUMPS_OPTIONS)
    except TypeError:
        return _exact_dumps(value)
    # orjson writes NaN and the infinities as null: look closer only when a null came out.
    if b"null" in encoded and _holds_non_finite(value):
        raise TypeError("NaN and Infinity are not JSON numbers")
    return encoded


def _exact_dumps(value: JSON) -> bytes:
    # orjson refuses integers beyond 64 bits, lone surrogates and nesting deeper than 255;
    # the standard library writes the first two (surrogates escaped) and refuses what is
    # not JSON at all.
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
    except RecursionError:
        raise TypeError("the value is nested too deeply to encode") from None
    except ValueError as exc:  # NaN or an infinity
        raise TypeError(f"{exc}: NaN and Infinity are not JSON numbers") from None
    except TypeError as exc:
        raise TypeError(str(exc)) from None
    except Exception as exc:  # a hostile __str__, __iter__...: still only a TypeError
        raise TypeError(f"{type(exc).__name__} while encoding") from None


def _holds_non_finite(value: JSON) -> bool:
    """Whether NaN or an infinity is among the floats of `value`'s dicts, lists and tuples.

    Iterative: what orjson encoded is at most 255 deep, but no stack is spent on it anyway.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind in _SCALARS:
            continue
        if kind is float:
            if not math.isfinite(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, float) and not math.isfinite(item):
            return True
    return False
