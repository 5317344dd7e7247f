"""Peer ids, DIDs and multiaddrs.

A node's libp2p peer id embeds its Ed25519 public key (identity multihash), so
the DID a peer signs as is derived from the peer id alone: no identify round
trip, no peerstore lookup, and no way for a peer to claim another node's DID
(Noise authenticates the key behind the peer id).
"""

from __future__ import annotations

from functools import lru_cache

from libp2p.crypto.ed25519 import Ed25519PublicKey
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from multiaddr import Multiaddr

from icn_p2p.identity.keys import IdentityError, did_from_public_key, public_key_from_did


class PeerAddrError(ValueError):
    """A multiaddr that cannot be dialled, and why."""


@lru_cache(maxsize=65536)
def did_for_peer(peer_id: ID) -> str:
    """The ``did:key`` of the Ed25519 key embedded in ``peer_id``."""
    key = peer_id.extract_public_key()
    if key is None or not isinstance(key, Ed25519PublicKey):
        raise IdentityError(f"peer {peer_id} does not embed an Ed25519 key")
    return did_from_public_key(key.to_bytes())


@lru_cache(maxsize=65536)
def peer_for_did(did: str) -> ID:
    """The libp2p peer id of the node that signs as ``did``."""
    return ID.from_pubkey(Ed25519PublicKey.from_bytes(public_key_from_did(did)))


def parse_peer_addr(addr: str | Multiaddr) -> PeerInfo:
    """``/ip4/…/tcp/…/p2p/<id>`` -> PeerInfo, with a clear error when it is not one."""
    try:
        maddr = addr if isinstance(addr, Multiaddr) else Multiaddr(addr)
        return info_from_p2p_addr(maddr)
    except Exception as exc:  # the library raises several unrelated types
        raise PeerAddrError(f"{addr!s} is not a dialable /p2p/ multiaddr: {exc}") from None


def short(peer_id: ID) -> str:
    """A short, log-friendly form of a peer id."""
    text = peer_id.to_base58()
    return text[-8:]
