import hashlib

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from icn_p2p.identity.keys import NodeKey
from icn_p2p.wire import (
    DEFAULT_LIMITS,
    Envelope,
    Limits,
    Reason,
    WireError,
    dumps,
    message_id,
    open_envelope,
    seal,
)

KEY = NodeKey(bytes(range(32)))
OTHER = NodeKey(bytes(range(1, 33)))
PAYLOAD = {"policy": "coop-a", "version": 3, "rules": [{"k": b"\x00\x01"}, None, True, 2.5, -7]}


def fields(**over):
    body = {"type": "policy.act", "payload": PAYLOAD, "signer": KEY.did, "seq": 5, "ts": 1_700_000_000_000}
    body.update(over)
    return body


def forge(body, *, key=KEY, sig=None, raw_body=None):
    """Wire bytes for an arbitrary body, validly signed by ``key`` unless ``sig`` is given."""
    body_bytes = raw_body if raw_body is not None else cbor2.dumps(body, canonical=True)
    return cbor2.dumps({"body": body_bytes, "sig": sig if sig is not None else key.sign(body_bytes)}, canonical=True)


def reason_of(data, **kw):
    with pytest.raises(WireError) as info:
        open_envelope(data, **kw)
    return info.value.reason


def test_round_trip():
    data = seal(KEY, "policy.act", PAYLOAD, seq=5, ts=1_700_000_000_000)
    env = open_envelope(data)
    assert (env.type, env.payload, env.signer, env.seq, env.ts) == (
        "policy.act", PAYLOAD, KEY.did, 5, 1_700_000_000_000)
    assert len(env.sig) == 64 and env.verify()
    assert env.to_wire() == data
    assert data == forge(fields())  # seal is exactly the documented layout


def test_message_id_is_sha256_of_signed_bytes_and_stable():
    data = seal(KEY, "usage.delta", {"n": 1}, seq=1, ts=2)
    env = open_envelope(data)
    body = cbor2.loads(data)["body"]
    assert message_id(data) == hashlib.sha256(body).digest() == env.message_id
    assert env.signed_bytes == body
    # an Envelope built by hand (not decoded) gives the same id
    again = Envelope(type=env.type, payload=env.payload, signer=env.signer, seq=env.seq, ts=env.ts, sig=env.sig)
    assert again.message_id == env.message_id and again.to_wire() == data
    assert message_id(seal(KEY, "usage.delta", {"n": 1}, seq=2, ts=2)) != message_id(data)


def test_envelope_model_is_frozen_and_strict():
    env = open_envelope(seal(KEY, "a", None, seq=0, ts=0))
    with pytest.raises(ValidationError):
        env.seq = 9
    with pytest.raises(ValidationError):
        Envelope(type="a", payload=None, signer=KEY.did, seq="1", ts=0, sig=b"\0" * 64)
    with pytest.raises(ValidationError):
        Envelope(type="a", payload={1: 2}, signer=KEY.did, seq=1, ts=0, sig=b"\0" * 64)


@pytest.mark.parametrize(
    "field, value",
    [
        ("type", "policy.revoke"),
        ("payload", {**PAYLOAD, "version": 4}),
        ("signer", OTHER.did),
        ("seq", 6),
        ("ts", 1_700_000_000_001),
    ],
)
def test_tampering_with_any_field_breaks_the_signature(field, value):
    good = cbor2.loads(seal(KEY, "policy.act", PAYLOAD, seq=5, ts=1_700_000_000_000))
    tampered = forge(fields(**{field: value}), sig=good["sig"])
    assert reason_of(tampered) == Reason.BAD_SIGNATURE


def test_flipped_signature_bit():
    sig = bytearray(KEY.sign(cbor2.dumps(fields(), canonical=True)))
    sig[10] ^= 1
    assert reason_of(forge(fields(), sig=bytes(sig))) == Reason.BAD_SIGNATURE


@pytest.mark.parametrize(
    "over",
    [
        {"seq": "5"},
        {"seq": -1},
        {"seq": 2**63},
        {"seq": True},
        {"seq": 1.0},
        {"ts": "now"},
        {"ts": None},
        {"type": ""},
        {"type": "has space"},
        {"type": "x" * 65},
        {"type": 7},
        {"signer": 12},
        {"signer": "did:key:z" + "1" * 200},
    ],
)
def test_wrong_field_types_are_bad_schema(over):
    assert reason_of(forge(fields(**over))) == Reason.BAD_SCHEMA


@pytest.mark.parametrize(
    "body",
    [
        {k: v for k, v in fields().items() if k != "ts"},  # missing field
        {**fields(), "extra": 1},  # unknown field
        [1, 2, 3],  # not a map
    ],
)
def test_body_layout_is_bad_schema(body):
    assert reason_of(forge(body)) == Reason.BAD_SCHEMA


@pytest.mark.parametrize(
    "outer",
    [
        {"body": b"x"},
        {"body": b"x", "sig": b"\0" * 64, "more": 1},
        {"body": "text", "sig": b"\0" * 64},
        {"body": b"x", "sig": "text"},
        [b"x", b"\0" * 64],
        {"body": b"\x01", "sig": b"\0" * 63},  # sig wrong length
        {"body": b"\x01", "sig": b"\0" * 65},
    ],
)
def test_outer_layout_is_bad_schema(outer):
    assert reason_of(cbor2.dumps(outer, canonical=True)) == Reason.BAD_SCHEMA


def test_payload_with_tags_or_unsupported_types():
    tagged = cbor2.dumps(fields(payload=cbor2.CBORTag(1, 0)), canonical=True)
    assert reason_of(forge(None, raw_body=tagged)) == Reason.BAD_SCHEMA
    undefined = cbor2.dumps(fields(payload=cbor2.undefined), canonical=True)
    assert reason_of(forge(None, raw_body=undefined)) == Reason.BAD_SCHEMA
    int_keys = cbor2.dumps(fields(payload={1: 2}), canonical=True)
    assert reason_of(forge(None, raw_body=int_keys)) == Reason.BAD_SCHEMA
    with pytest.raises(WireError) as info:
        seal(KEY, "a", {"when": object()}, seq=1, ts=1)
    assert info.value.reason == Reason.BAD_SCHEMA


def test_non_did_key_signer():
    assert reason_of(forge(fields(signer="did:icn:alice"))) == Reason.BAD_SIGNER
    assert reason_of(forge(fields(signer="did:key:z6MkNOTBASE58!!"))) == Reason.BAD_SIGNER


def test_truncated_and_garbage():
    data = seal(KEY, "a", PAYLOAD, seq=1, ts=1)
    for cut in (0, 1, 5, len(data) // 2, len(data) - 1):
        assert reason_of(data[:cut]) == Reason.MALFORMED
    assert reason_of(b"\xde\xad\xbe\xef" * 10) in (Reason.MALFORMED, Reason.BAD_SCHEMA)
    assert reason_of("not bytes") == Reason.MALFORMED


def test_trailing_bytes():
    data = seal(KEY, "a", PAYLOAD, seq=1, ts=1)
    assert reason_of(data + b"\x00") == Reason.MALFORMED
    body = cbor2.dumps(fields(), canonical=True) + b"\x00"
    assert reason_of(forge(None, raw_body=body)) == Reason.MALFORMED


def test_non_canonical_encodings_are_refused():
    body = cbor2.dumps(fields(), canonical=False)  # insertion order, not canonical order
    assert body != cbor2.dumps(fields(), canonical=True)
    assert reason_of(forge(None, raw_body=body)) == Reason.MALFORMED
    good = cbor2.loads(seal(KEY, "a", 1, seq=1, ts=1))
    outer = cbor2.dumps({"body": good["body"], "sig": good["sig"]}, canonical=False)  # canonical puts "sig" first
    assert reason_of(outer) == Reason.MALFORMED


def test_oversized_envelope():
    data = seal(KEY, "blob", b"\0" * (300 * 1024), seq=1, ts=1)
    assert reason_of(data) == Reason.TOO_LARGE
    assert open_envelope(data, limits=Limits(max_bytes=400 * 1024)).payload == b"\0" * (300 * 1024)
    assert DEFAULT_LIMITS.max_bytes == 256 * 1024
    many = seal(KEY, "many", list(range(20_000)), seq=1, ts=1)
    assert reason_of(many) == Reason.TOO_LARGE


def test_deep_nesting_in_payload():
    deep_body = b"\xa5" + b"".join(
        dumps(k) + (b"\x81" * 10_000 + b"\x01" if k == "payload" else dumps(v))
        for k, v in sorted(fields().items(), key=lambda kv: (len(kv[0]), kv[0]))
    )
    assert reason_of(forge(None, raw_body=deep_body)) == Reason.TOO_DEEP
    ok = [[[[1]]]]
    data = seal(KEY, "a", ok, seq=1, ts=1)
    assert open_envelope(data, limits=Limits(max_depth=5)).payload == ok
    assert reason_of(data, limits=Limits(max_depth=4)) == Reason.TOO_DEEP


def test_huge_claimed_lengths():
    for head in (b"\x9b", b"\xbb", b"\x5b", b"\x7b"):
        claimed = head + (2**60).to_bytes(8, "big")
        assert reason_of(claimed) in (Reason.TOO_LARGE, Reason.MALFORMED)
        body = cbor2.dumps(fields(payload=None), canonical=True)
        assert reason_of(forge(None, raw_body=body[:-1] + claimed)) in (Reason.TOO_LARGE, Reason.MALFORMED)


@pytest.mark.parametrize("bad", ["", "Policy act", "a" * 65, 3])
def test_seal_refuses_bad_type(bad):
    with pytest.raises(WireError) as info:
        seal(KEY, bad, None, seq=1, ts=1)
    assert info.value.reason == Reason.BAD_SCHEMA


@pytest.mark.parametrize("seq, ts", [(-1, 0), (2**63, 0), (True, 0), (0, -5), (0, 1.5)])
def test_seal_refuses_bad_seq_or_ts(seq, ts):
    with pytest.raises(WireError) as info:
        seal(KEY, "a", None, seq=seq, ts=ts)
    assert info.value.reason == Reason.BAD_SCHEMA


def test_message_id_refuses_non_envelopes():
    with pytest.raises(WireError):
        message_id(b"\x01")


VALID = seal(KEY, "policy.act", PAYLOAD, seq=5, ts=1_700_000_000_000)


@given(st.binary(max_size=512))
@settings(max_examples=2000)
def test_random_bytes_only_raise_wire_error(data):
    try:
        open_envelope(data)
    except WireError:
        pass


@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=4))
@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_envelopes_only_raise_wire_error(edits):
    data = bytearray(VALID)
    for pos, byte in edits:
        data[pos] = byte
    try:
        env = open_envelope(bytes(data))
    except WireError:
        return
    assert bytes(data) == VALID and env.seq == 5  # a mutation that verifies is no mutation
