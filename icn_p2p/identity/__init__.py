"""Node identities: Ed25519 keys, did:key DIDs, key files."""

from .keys import (
    IdentityError,
    NodeKey,
    did_from_public_key,
    is_key_did,
    load_key_file,
    load_or_create_key_file,
    public_key_from_did,
    verify,
    write_key_file,
)

__all__ = [
    "IdentityError", "NodeKey", "did_from_public_key", "is_key_did", "load_key_file",
    "load_or_create_key_file", "public_key_from_did", "verify", "write_key_file",
]
