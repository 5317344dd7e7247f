"""Signing and checking execution receipts.

A receipt is signed by the executor that ran the task, over the canonical CBOR
of its body (every field but the signature, plus the receipt type, so a
receipt signature cannot be replayed as another kind of message). The signer
is the receipt's own ``executor`` field: a receipt naming an executor whose key
did not sign it does not verify.
"""

from __future__ import annotations

import hashlib
from typing import Any

import cbor2

from icn_p2p.core.receipt import Receipt
from icn_p2p.identity.keys import NodeKey, verify


def canonical_cbor(value: Any) -> bytes:
    return cbor2.dumps(value, canonical=True)


def result_digest(values: list[int | float]) -> str:
    """SHA-256 hex of the canonical CBOR of a run's result values (``[]`` when none)."""
    return hashlib.sha256(canonical_cbor(list(values))).hexdigest()


def signing_bytes(receipt: Receipt) -> bytes:
    return canonical_cbor(receipt.body())


def sign_receipt(key: NodeKey, **fields: Any) -> Receipt:
    """Build and sign a receipt as ``key``; ``executor`` is ``key.did``.

    Raises ``ValueError`` when ``fields`` name another executor, and
    ``pydantic.ValidationError`` when a field is malformed.
    """
    executor = fields.pop("executor", key.did)
    if executor != key.did:
        raise ValueError(f"a receipt for executor {executor} cannot be signed by {key.did}")
    fields.pop("signature", None)
    unsigned = Receipt(executor=key.did, **fields)
    return unsigned.model_copy(update={"signature": key.sign(signing_bytes(unsigned))})


def verify_receipt(receipt: Receipt) -> bool:
    """True when the receipt's executor signed exactly this body."""
    if len(receipt.signature) != 64:
        return False
    return verify(receipt.executor, signing_bytes(receipt), receipt.signature)
