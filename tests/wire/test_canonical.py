import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from icn_p2p.wire import Reason, WireError, check_value, dumps, loads

BOUNDS = dict(max_bytes=1 << 20, max_depth=32, max_items=10_000)


def load(data, **kw):
    return loads(data, **{**BOUNDS, **kw})


def reason_of(fn, *args, **kw):
    with pytest.raises(WireError) as info:
        fn(*args, **kw)
    return info.value.reason


cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.binary(max_size=40)
    | st.text(max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30,
)


@given(cbor_values)
@settings(max_examples=300)
def test_round_trip_and_canonical(value):
    data = dumps(value)
    assert load(data, canonical=True) == value
    assert dumps(load(data)) == data


def test_reordered_maps_give_identical_bytes():
    a = {"z": 1, "a": {"y": [1, 2], "b": None}, "mm": b"x"}
    b = {"mm": b"x", "a": {"b": None, "y": [1, 2]}, "z": 1}
    assert list(a) != list(b)
    assert dumps(a) == dumps(b)
    # length-first key order (RFC 7049 canonical)
    assert dumps({"aa": 1, "b": 2}) == bytes.fromhex("a2") + dumps("b") + b"\x02" + dumps("aa") + b"\x01"


def test_shortest_forms():
    assert dumps(1.5) == b"\xf9\x3e\x00"
    assert dumps(23) == b"\x17"
    assert dumps(24) == b"\x18\x18"
    assert dumps(2**64 - 1) == b"\x1b" + b"\xff" * 8


@pytest.mark.parametrize(
    "value",
    [
        {1: "int key"},
        {("t",): 1},
        {1.5},
        object(),
        2**64,
        -(2**64) - 1,
        [1, [2, {"k": complex(1, 2)}]],
        bytearray(b"x"),
    ],
)
def test_dumps_refuses_values_outside_the_data_model(value):
    assert reason_of(dumps, value) == Reason.BAD_SCHEMA


def test_dumps_refuses_deep_and_cyclic_values_without_recursion_error():
    deep = []
    for _ in range(10_000):
        deep = [deep]
    assert reason_of(dumps, deep) == Reason.TOO_DEEP
    cyc: list = []
    cyc.append(cyc)
    assert reason_of(check_value, cyc) == Reason.TOO_DEEP


def test_enum_members_encode_as_their_value():
    from icn_p2p.core.enums import TaskPriority

    assert dumps({"p": TaskPriority.LOW}) == dumps({"p": TaskPriority.LOW.value})


def test_tuple_encodes_as_array():
    assert dumps((1, 2)) == dumps([1, 2])


HOSTILE = [
    (b"", Reason.MALFORMED),
    (b"\x82\x01", Reason.MALFORMED),  # truncated array
    (b"\x19\x01", Reason.MALFORMED),  # truncated argument
    (b"\x01\x02", Reason.MALFORMED),  # trailing bytes
    (b"\x9f\x01\xff", Reason.MALFORMED),  # indefinite array
    (b"\x5f\x41\x01\xff", Reason.MALFORMED),  # indefinite bytes
    (b"\xff", Reason.MALFORMED),  # lone break
    (b"\x1c", Reason.MALFORMED),  # reserved additional info
    (b"\x62\xff\xfe", Reason.MALFORMED),  # bad UTF-8
    (b"\xa2\x61a\x01\x61a\x02", Reason.MALFORMED),  # duplicate keys
    (b"\xc1\x01", Reason.BAD_SCHEMA),  # tag 1 (datetime)
    (b"\xc2\x41\x01", Reason.BAD_SCHEMA),  # bignum
    (b"\xd8\x1c\x81\xd8\x1d\x00", Reason.BAD_SCHEMA),  # shared reference (cycle)
    (b"\xd9\x01\x02\x82\x01\x02", Reason.BAD_SCHEMA),  # set
    (b"\xf7", Reason.BAD_SCHEMA),  # undefined
    (b"\xf0", Reason.BAD_SCHEMA),  # simple(16)
    (b"\xf8\x20", Reason.BAD_SCHEMA),  # simple(32)
    (b"\xa1\x01\x01", Reason.BAD_SCHEMA),  # int key
    (b"\xa1\x81\x01\x01", Reason.BAD_SCHEMA),  # array key
    (b"\x9b" + (2**60).to_bytes(8, "big"), Reason.TOO_LARGE),  # claimed 2^60 entries
    (b"\xbb" + (2**60).to_bytes(8, "big"), Reason.TOO_LARGE),
    (b"\x9a" + (5000).to_bytes(4, "big") + b"\x01", Reason.MALFORMED),  # claims more than present
    (b"\x5b" + (2**60).to_bytes(8, "big") + b"ab", Reason.MALFORMED),  # claimed 2^60-byte string
    (b"\x7a" + (2**30).to_bytes(4, "big") + b"ab", Reason.MALFORMED),
]


@pytest.mark.parametrize("data, reason", HOSTILE)
def test_hostile_inputs(data, reason):
    assert reason_of(load, data) == reason


def test_deep_nesting_is_refused_without_recursion():
    data = b"\x81" * 10_000 + b"\x01"
    assert reason_of(load, data) == Reason.TOO_DEEP
    assert load(b"\x81" * 32 + b"\x01") is not None
    assert reason_of(load, b"\x81" * 33 + b"\x01") == Reason.TOO_DEEP
    assert reason_of(load, b"\xa1\x61k" * 40 + b"\x01", max_depth=39) == Reason.TOO_DEEP


def test_size_and_item_limits():
    data = dumps(list(range(100)))
    assert load(data, max_items=100) == list(range(100))
    assert reason_of(load, data, max_items=99) == Reason.TOO_LARGE
    assert reason_of(load, data, max_bytes=len(data) - 1) == Reason.TOO_LARGE
    nested = dumps([[1, 2], {"a": [3]}])  # 2 + 2 + 1 + 1 entries
    assert load(nested, max_items=6)
    assert reason_of(load, nested, max_items=5) == Reason.TOO_LARGE


def test_not_bytes_and_non_canonical():
    assert reason_of(load, "text") == Reason.MALFORMED
    assert load(memoryview(b"\x01")) == 1
    assert load(b"\x18\x01") == 1  # accepted when canonical form is not demanded
    assert reason_of(load, b"\x18\x01", canonical=True) == Reason.MALFORMED
    unsorted = b"\xa2\x61b\x01\x61a\x02"
    assert load(unsorted) == {"a": 2, "b": 1}
    assert reason_of(load, unsorted, canonical=True) == Reason.MALFORMED
    assert reason_of(load, b"\xa2\x61a\x01\x61a\x02", canonical=True) == Reason.MALFORMED  # duplicate
    wide = b"\xfb" + struct.pack(">d", 1.5)  # 1.5 fits a half float
    assert load(wide) == 1.5
    assert reason_of(load, wide, canonical=True) == Reason.MALFORMED


def test_floats_decode():
    assert load(b"\xf9\x3c\x00") == 1.0
    assert math.isnan(load(dumps(float("nan"))))


def test_wire_error_carries_reason_and_detail():
    err = WireError(Reason.TOO_DEEP, "x")
    assert err.reason is Reason.TOO_DEEP and err.detail == "x"
    assert str(err) == "too_deep: x" and str(WireError("replay")) == "replay"
    assert str(Reason.STALE) == "stale"
    import pickle

    again = pickle.loads(pickle.dumps(err))
    assert again.reason is Reason.TOO_DEEP and again.detail == "x"


@given(st.binary(max_size=300))
@settings(max_examples=2000)
def test_random_bytes_only_raise_wire_error(data):
    try:
        load(data, max_items=50, max_depth=8)
    except WireError:
        pass


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), -float("inf"), -0.0, 65504.0, 65520.0, 2.0**-24, 2.0**-25, 1e39, 0.1, 3.4028234663852886e38]
)
def test_canonical_floats_round_trip(value):
    data = dumps(value)
    got = load(data, canonical=True)
    assert got == value or (math.isnan(got) and math.isnan(value))


@pytest.mark.parametrize(
    "data",
    [
        b"\xfa" + struct.pack(">f", 1.5),  # fits a half
        b"\xfb" + struct.pack(">d", 65520.0),  # fits a single
        b"\xfb" + struct.pack(">d", float("inf")),
        b"\xfa" + struct.pack(">f", float("nan")),
        b"\xf9\x7e\x01",  # NaN with a payload
        b"\x19\x00\x10",  # 16 in two bytes
        b"\x1a\x00\x00\x01\x00",  # 256 in four bytes
        b"\x1b\x00\x00\x00\x00\x00\x01\x00\x00",
        b"\x58\x01\x00",  # 1-byte string with a 1-byte length head
        b"\xa2\x62aa\x01\x61b\x02",  # longer key first
    ],
)
def test_non_canonical_forms_refused_when_canonical_is_demanded(data):
    load(data)  # well-formed: accepted without the canonical flag (bar duplicates)
    assert reason_of(load, data, canonical=True) == Reason.MALFORMED


# --- the fast path for canonical input -------------------------------------------------


@pytest.mark.parametrize("data, reason", HOSTILE)
def test_hostile_inputs_get_the_same_reason_when_canonical_is_demanded(data, reason):
    assert reason_of(load, data, canonical=True) == reason


@given(cbor_values)
@settings(max_examples=200)
def test_canonical_input_is_decoded_without_the_header_scan(value):
    import icn_p2p.wire.canonical as canonical

    data = dumps(value)
    original = canonical._scan
    canonical._scan = _scan_forbidden
    try:
        assert load(data, canonical=True) == value
    finally:
        canonical._scan = original


def _scan_forbidden(*args, **kwargs):
    raise AssertionError("canonical input went through the header scan")


def test_claimed_lengths_beyond_the_data_cost_nothing_on_the_fast_path():
    """cbor2 (pinned) reads claimed lengths in bounded chunks: no allocation for bytes
    that are not there, whichever path refuses the input."""
    import time
    import tracemalloc

    import icn_p2p.wire.canonical as canonical

    tracemalloc.start()
    started = time.perf_counter()
    for head in (b"\x9b", b"\xbb", b"\x5b", b"\x7b"):
        data = head + (2**60).to_bytes(8, "big") + b"ab"
        assert canonical._fast_canonical(data, 32, 10_000) is canonical._NOT_FAST
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1 << 20
    assert time.perf_counter() - started < 1.0
