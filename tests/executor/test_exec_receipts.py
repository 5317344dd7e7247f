"""Receipts: signing, verification, tampering, forged executors and the wire form."""

from __future__ import annotations

import cbor2
import pytest
from pydantic import ValidationError

from icn_p2p.core.receipt import RECEIPT_TYPE, Outcome, Receipt
from icn_p2p.executor.receipts import result_digest, sign_receipt, signing_bytes, verify_receipt
from icn_p2p.identity.keys import NodeKey

KEY = NodeKey(bytes(range(32)))
OTHER = NodeKey(bytes(range(1, 33)))


def fields(**over):
    base = dict(
        task_id="task-1",
        task_hash="ab" * 32,
        coop_id="healthcare-coop",
        member="did:icn:alice",
        outcome=Outcome.COMPLETED,
        fuel_used=1234,
        cpu_ms=3,
        wall_ms=4,
        completed_at_ms=1_700_000_000_000,
        result_digest=result_digest([42]),
    )
    base.update(over)
    return base


def test_sign_and_verify():
    r = sign_receipt(KEY, **fields())
    assert r.executor == KEY.did
    assert len(r.signature) == 64
    assert verify_receipt(r)


def test_signature_covers_canonical_body_with_type():
    r = sign_receipt(KEY, **fields())
    body = cbor2.loads(signing_bytes(r))
    assert body["type"] == RECEIPT_TYPE
    assert "signature" not in body
    assert body["outcome"] == "completed"
    assert signing_bytes(r) == cbor2.dumps(body, canonical=True)


@pytest.mark.parametrize(
    "change",
    [
        {"task_id": "task-2"},
        {"task_hash": "cd" * 32},
        {"coop_id": "other-coop"},
        {"member": "did:icn:mallory"},
        {"outcome": Outcome.TRAPPED},
        {"fuel_used": 1},
        {"cpu_ms": 0},
        {"wall_ms": 99},
        {"completed_at_ms": 1},
        {"result_digest": result_digest([43])},
    ],
)
def test_tampered_field_fails(change):
    r = sign_receipt(KEY, **fields())
    assert not verify_receipt(r.model_copy(update=change))


def test_forged_executor_fails():
    r = sign_receipt(KEY, **fields())
    assert not verify_receipt(r.model_copy(update={"executor": OTHER.did}))
    # re-signing by another key while claiming the first executor also fails
    forged = r.model_copy(update={"signature": OTHER.sign(signing_bytes(r))})
    assert not verify_receipt(forged)


def test_executor_that_is_not_a_key_did_fails():
    r = sign_receipt(KEY, **fields())
    assert not verify_receipt(r.model_copy(update={"executor": "did:icn:someone"}))


def test_cannot_sign_for_another_executor():
    with pytest.raises(ValueError):
        sign_receipt(KEY, executor=OTHER.did, **fields())
    assert sign_receipt(KEY, executor=KEY.did, signature=b"x", **fields()).executor == KEY.did


def test_unsigned_or_short_signature_fails():
    r = sign_receipt(KEY, **fields())
    assert not verify_receipt(r.model_copy(update={"signature": b""}))
    assert not verify_receipt(r.model_copy(update={"signature": r.signature[:32]}))


def test_wire_round_trip_through_cbor():
    r = sign_receipt(KEY, **fields(outcome=Outcome.OUT_OF_FUEL))
    wire = r.to_wire()
    assert wire["outcome"] == "out_of_fuel" and isinstance(wire["signature"], bytes)
    back = Receipt.from_wire(cbor2.loads(cbor2.dumps(wire, canonical=True)))
    assert back == r and verify_receipt(back)


@pytest.mark.parametrize(
    "change",
    [
        {"outcome": "exploded"},
        {"fuel_used": -1},
        {"fuel_used": "12"},
        {"task_hash": "xyz"},
        {"extra": 1},
        {"signature": "not-bytes"},
        {"task_id": ""},
    ],
)
def test_malformed_wire_is_rejected(change):
    wire = sign_receipt(KEY, **fields()).to_wire()
    wire.update(change)
    with pytest.raises(ValidationError):
        Receipt.from_wire(wire)


def test_result_digest_is_canonical_and_typed():
    assert result_digest([1, 2]) == result_digest((1, 2))
    assert result_digest([1]) != result_digest([1.0])
    assert result_digest([]) != result_digest([0])


def test_outcome_ran():
    assert Outcome.TIMEOUT.ran and Outcome.COMPLETED.ran
    assert not Outcome.INVALID_MODULE.ran and not Outcome.BAD_ARGS.ran
    assert str(Outcome.NO_ENTRY) == "no_entry"
