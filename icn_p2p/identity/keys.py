"""Ed25519 node identities and their DIDs.

A node's key is a 32-byte Ed25519 seed. The same seed gives the node's
``did:key`` (what it signs as) and its libp2p peer id (how the mesh knows it),
so a peer id and a DID can be checked against each other.

Members in policies may be named by opaque ``did:icn:`` identifiers; only
``did:key`` DIDs carry a public key and can verify a signature.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58)}
_ED25519_MULTICODEC = b"\xed\x01"
DID_KEY_PREFIX = "did:key:z"
SEED_BYTES = 32


class IdentityError(ValueError):
    """A key, key file or DID that cannot be used, and why."""


def b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_B58[r])
    pad = len(data) - len(data.lstrip(b"\0"))
    return "1" * pad + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    n = 0
    for c in text:
        try:
            n = n * 58 + _B58_INDEX[c]
        except KeyError:
            raise IdentityError(f"{c!r} is not a base58 character") from None
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    pad = len(text) - len(text.lstrip("1"))
    return b"\0" * pad + body


@lru_cache(maxsize=65536)
def did_from_public_key(public_key: bytes) -> str:
    """``did:key:z6Mk…``: multibase base58btc of the Ed25519 multicodec and the key."""
    if len(public_key) != 32:
        raise IdentityError("an Ed25519 public key is 32 bytes")
    return DID_KEY_PREFIX + b58encode(_ED25519_MULTICODEC + public_key)


@lru_cache(maxsize=65536)
def public_key_from_did(did: str) -> bytes:
    """The Ed25519 public key inside a ``did:key`` DID."""
    if not isinstance(did, str) or not did.startswith(DID_KEY_PREFIX):
        raise IdentityError(f"{did!r} is not a did:key DID with a public key")
    raw = b58decode(did[len(DID_KEY_PREFIX):])
    if len(raw) != 34 or raw[:2] != _ED25519_MULTICODEC:
        raise IdentityError(f"{did!r} does not hold an Ed25519 public key")
    return raw[2:]


def is_key_did(did: str) -> bool:
    try:
        public_key_from_did(did)
    except IdentityError:
        return False
    return True


@lru_cache(maxsize=65536)
def _verify_key(did: str) -> VerifyKey:
    return VerifyKey(public_key_from_did(did))


def verify(did: str, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` over ``message`` was made by the key in ``did``."""
    try:
        _verify_key(did).verify(message, signature)
    except (IdentityError, BadSignatureError, ValueError, TypeError):
        return False
    return True


@dataclass(frozen=True)
class NodeKey:
    """An Ed25519 signing key with its DID."""

    seed: bytes

    def __post_init__(self) -> None:
        if len(self.seed) != SEED_BYTES:
            raise IdentityError("an Ed25519 seed is 32 bytes")

    @classmethod
    def generate(cls) -> "NodeKey":
        return cls(os.urandom(SEED_BYTES))

    @property
    def _signing(self) -> SigningKey:
        return _signing_key(self.seed)

    @property
    def public_key(self) -> bytes:
        return bytes(self._signing.verify_key)

    @property
    def did(self) -> str:
        return did_from_public_key(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return self._signing.sign(message).signature

    def libp2p_key_pair(self):  # pragma: no cover - exercised by the network layer
        """The same key as a libp2p ``KeyPair`` (peer id derives from it)."""
        from libp2p.crypto.ed25519 import Ed25519PrivateKey
        from libp2p.crypto.keys import KeyPair

        private = Ed25519PrivateKey.new(self.seed)
        return KeyPair(private, private.get_public_key())

    def __repr__(self) -> str:  # never print the seed
        return f"NodeKey({self.did})"


@lru_cache(maxsize=1024)
def _signing_key(seed: bytes) -> SigningKey:
    return SigningKey(seed)


# --- key files -------------------------------------------------------------


def write_key_file(path: Path, key: NodeKey | None = None) -> NodeKey:
    """Create ``path`` holding a (new) key, mode 0600. Refuses to overwrite."""
    key = key or NodeKey.generate()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, key.seed.hex().encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


def load_key_file(path: Path) -> NodeKey:
    """Read a key file, refusing one that group or others can read or write."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise IdentityError(f"key file {path} does not exist") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise IdentityError(
            f"key file {path} is accessible by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}"
        )
    text = path.read_text().strip()
    try:
        seed = bytes.fromhex(text)
    except ValueError:
        raise IdentityError(f"key file {path} does not hold a hex Ed25519 seed") from None
    return NodeKey(seed)


def load_or_create_key_file(path: Path) -> NodeKey:
    path = Path(path)
    if path.exists():
        return load_key_file(path)
    return write_key_file(path)
