"""Canonical CBOR: one byte string per value, and a decoder safe on hostile input.

The data model is deliberately small: int (-2^64 .. 2^64-1), bytes, str, bool,
None, float, list, and dict with str keys. No tags, no undefined, no simple
values, no indefinite lengths. Within it ``dumps`` is a function (equal values,
equal bytes: map keys are sorted, integers and floats take their shortest
form), which is what signatures and message ids need.

``loads`` of canonical input takes a fast path first: cbor2 (pinned at 6.3,
whose decoder reads claimed lengths in bounded chunks and allocates nothing
for a length the bytes do not hold: see ``tests/wire/test_canonical.py``)
builds the value within a depth bound, one walk checks the value against the
data model, the depth and the entry count, and re-encoding it must give back
exactly the input (so it was canonical, with no trailing bytes). Anything
that fails there, and every non-canonical decode, goes through an iterative
header scan (no recursion, no allocation proportional to a claimed length)
that names the fault: claimed lengths beyond the bytes that are there, the
nesting depth, the total number of container entries, tags, indefinite
lengths, simple values, non-text map keys, trailing bytes. The fast path
exists because the scan, in Python, cost more than every other step of
opening an envelope together.
"""

from __future__ import annotations

import struct
from typing import Any

import cbor2

from icn_p2p.wire.errors import Reason, WireError

__all__ = ["dumps", "loads", "check_value"]

_INT_MIN = -(2**64)
_INT_MAX = 2**64 - 1
_DUMPS_MAX_DEPTH = 256

_MAJOR_UINT, _MAJOR_NINT, _MAJOR_BYTES, _MAJOR_TEXT = 0, 1, 2, 3
_MAJOR_ARRAY, _MAJOR_MAP, _MAJOR_TAG, _MAJOR_SIMPLE = 4, 5, 6, 7
# major 7: false, true, null, half, single, double float
_SIMPLE_OK = frozenset((20, 21, 22, 25, 26, 27))
_MIN_FOR_WIDTH = {24: 24, 25: 1 << 8, 26: 1 << 16, 27: 1 << 32}
_INF = float("inf")


_SCALARS = frozenset((str, bytes, float, bool, type(None)))


def _walk(obj: Any, max_depth: int, max_items: int | None) -> None:
    """Raise ``WireError`` unless ``obj`` is inside the data model, ``max_depth`` containers
    deep at most and (when given) with at most ``max_items`` container entries in all."""
    stack: list[tuple[Any, int]] = [(obj, 0)]
    pop, push = stack.pop, stack.append
    scalars = _SCALARS
    items = 0
    while stack:
        value, depth = pop()
        kind = type(value)
        if kind in scalars:
            continue
        if kind is int:
            if not _INT_MIN <= value <= _INT_MAX:
                raise WireError(Reason.BAD_SCHEMA, f"integer {value} is outside the CBOR 64-bit range")
            continue
        if kind is dict or kind is list or kind is tuple:
            if depth >= max_depth:
                raise WireError(Reason.TOO_DEEP, f"nesting deeper than {max_depth}")
            items += len(value)
            if max_items is not None and items > max_items:
                raise WireError(Reason.TOO_LARGE, f"more than {max_items} container entries")
            child = depth + 1
            if kind is dict:
                for key, item in value.items():
                    if type(key) is not str and not isinstance(key, str):
                        raise WireError(Reason.BAD_SCHEMA, f"map key {key!r} is not a string")
                    if type(item) not in scalars:
                        push((item, child))
            else:
                for item in value:
                    if type(item) not in scalars:
                        push((item, child))
            continue
        # subclasses (str enums, int enums, ...): judged by what they are
        if value is None or isinstance(value, (str, bytes, float)):
            continue
        if isinstance(value, int):
            if not _INT_MIN <= value <= _INT_MAX:
                raise WireError(Reason.BAD_SCHEMA, f"integer {value} is outside the CBOR 64-bit range")
            continue
        if isinstance(value, (list, tuple, dict)):
            push((dict(value) if isinstance(value, dict) else list(value), depth))
            continue
        raise WireError(Reason.BAD_SCHEMA, f"type {type(value).__name__} is not CBOR-safe")


def check_value(obj: Any, *, max_depth: int = _DUMPS_MAX_DEPTH) -> None:
    """Raise ``WireError(bad_schema)`` unless ``obj`` is inside the CBOR data model.

    Iterative, so a deeply nested or cyclic value gives ``too_deep`` rather than
    ``RecursionError``. Tuples are accepted as arrays (they decode as lists).
    """
    _walk(obj, max_depth, None)


def dumps(obj: Any) -> bytes:
    """Canonical CBOR of a CBOR-safe value (``WireError`` otherwise)."""
    check_value(obj)
    try:
        return cbor2.dumps(obj, canonical=True)
    except (cbor2.CBOREncodeError, ValueError, TypeError, RecursionError) as exc:  # pragma: no cover
        raise WireError(Reason.BAD_SCHEMA, f"cannot encode: {exc}") from None


def _float_is_shortest(ai: int, raw: bytes) -> bool:
    """cbor2's canonical floats: NaN is f97e00, otherwise the narrowest exact width."""
    if ai == 25:
        value = struct.unpack(">e", raw)[0]
        return raw == b"\x7e\x00" if value != value else True
    value = struct.unpack(">f" if ai == 26 else ">d", raw)[0]
    if value != value or value in (_INF, -_INF):
        return False  # NaN and infinities are half floats
    for fmt in (">e", ">f") if ai == 27 else (">e",):
        try:
            if struct.unpack(fmt, struct.pack(fmt, value))[0] == value:
                return False
        except OverflowError:
            pass
    return True


def _scan(data: bytes, max_depth: int, max_items: int, canonical: bool) -> None:
    """Walk the item headers of ``data`` without building anything.

    ``remaining`` holds, for each open container, how many items it still
    expects (a map of n pairs expects 2n; an even count left in a map means the
    next item is a key). With ``canonical``, heads must be in shortest form,
    floats in the narrowest exact width, and map keys in strictly increasing
    (length, bytes) order (which also excludes duplicates).
    """
    n = len(data)
    pos = 0
    items = 0
    remaining: list[int] = []  # items still expected, per open container
    last_key: list[bytes | None] = []  # per open container: previous map key (None for arrays)
    while True:
        if pos >= n:
            raise WireError(Reason.MALFORMED, "truncated CBOR")
        start = pos
        ib = data[pos]
        pos += 1
        major = ib >> 5
        ai = ib & 0x1F
        if ai < 24:
            arg = ai
        elif ai < 28:
            width = 1 << (ai - 24)
            if pos + width > n:
                raise WireError(Reason.MALFORMED, "truncated CBOR")
            if major == _MAJOR_SIMPLE:
                if canonical and ai > 24 and not _float_is_shortest(ai, data[pos:pos + width]):
                    raise WireError(Reason.MALFORMED, "float not in its canonical width")
                arg = ai
            else:
                arg = int.from_bytes(data[pos:pos + width], "big")
                if canonical and arg < _MIN_FOR_WIDTH[ai]:
                    raise WireError(Reason.MALFORMED, "integer or length not in shortest form")
            pos += width
        elif ai == 31:
            raise WireError(Reason.MALFORMED, "indefinite-length items are not allowed")
        else:
            raise WireError(Reason.MALFORMED, f"reserved additional information {ai}")

        if major <= _MAJOR_TEXT:
            if major >= _MAJOR_BYTES:
                if arg > n - pos:
                    raise WireError(Reason.MALFORMED, "string length exceeds the data")
                pos += arg
        elif major <= _MAJOR_MAP:
            expected = arg * 2 if major == _MAJOR_MAP else arg
            items += arg
            if items > max_items:
                raise WireError(Reason.TOO_LARGE, f"more than {max_items} container entries")
            if expected > n - pos:
                raise WireError(Reason.MALFORMED, "container length exceeds the data")
            if len(remaining) >= max_depth:
                raise WireError(Reason.TOO_DEEP, f"nesting deeper than {max_depth}")
        elif major == _MAJOR_TAG:
            raise WireError(Reason.BAD_SCHEMA, f"CBOR tag {arg} is not allowed")
        elif arg not in _SIMPLE_OK:
            raise WireError(Reason.BAD_SCHEMA, f"CBOR simple value {arg} is not allowed")

        if remaining:
            prev = last_key[-1]
            if prev is not None and not remaining[-1] & 1:  # this item is a map key
                if major != _MAJOR_TEXT:
                    raise WireError(Reason.BAD_SCHEMA, "map keys must be text strings")
                if canonical:
                    key = data[start:pos]
                    if prev and (len(key), key) <= (len(prev), prev):
                        raise WireError(Reason.MALFORMED, "map keys not in canonical order")
                    last_key[-1] = key
        if (major == _MAJOR_ARRAY or major == _MAJOR_MAP) and expected:
            remaining.append(expected)
            last_key.append(b"" if major == _MAJOR_MAP else None)
            continue  # the container's first child comes next
        # an item is complete: close every container it completes
        while remaining:
            remaining[-1] -= 1
            if remaining[-1]:
                break
            remaining.pop()
            last_key.pop()
        if not remaining:
            if pos != n:
                raise WireError(Reason.MALFORMED, f"{n - pos} trailing bytes")
            return


_NOT_FAST = object()


def _fast_canonical(data: bytes, max_depth: int, max_items: int) -> Any:
    """The value of canonical ``data`` inside the bounds, else ``_NOT_FAST`` (the scan decides)."""
    try:
        value = cbor2.loads(data, allow_indefinite=False, allow_duplicate_keys=False, max_depth=max_depth + 2)
        _walk(value, max_depth, max_items)
        if cbor2.dumps(value, canonical=True) != data:
            return _NOT_FAST
    except Exception:
        return _NOT_FAST
    return value


def loads(
    data: bytes,
    *,
    max_bytes: int,
    max_depth: int,
    max_items: int,
    canonical: bool = False,
) -> Any:
    """Decode one CBOR item from untrusted ``data`` within the given bounds.

    Raises ``WireError`` (and nothing else) with reason ``too_large`` (size or
    entry count), ``too_deep``, ``malformed`` (not well-formed, trailing bytes,
    bad UTF-8, duplicate keys, or not canonical when ``canonical`` is set) or
    ``bad_schema`` (well-formed but outside the data model: tags, simple values,
    non-text map keys).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError(Reason.MALFORMED, f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_bytes:
        raise WireError(Reason.TOO_LARGE, f"{len(data)} bytes > {max_bytes}")
    if canonical:
        value = _fast_canonical(data, max_depth, max_items)
        if value is not _NOT_FAST:
            return value
    _scan(data, max_depth, max_items, canonical)
    try:
        value = cbor2.loads(
            data,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            max_depth=max_depth + 2,
        )
    except Exception as exc:  # cbor2 reports bad UTF-8, duplicate keys, ... as CBORDecodeError
        raise WireError(Reason.MALFORMED, f"undecodable CBOR: {exc}") from None
    return value
