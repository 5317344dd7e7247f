"""What each connected peer says it holds: the coops it serves and their policy versions.

Asked on demand, not broadcast: ``refresh`` sends each neighbour one small
request on the shared direct stream and waits briefly for the answers. It
costs the mesh nothing while nobody looks, and ``icnctl mesh watch`` (which
asks about once a second) sees a policy spread peer by peer. Informational
only: nothing is decided on what a peer claims here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from icn_p2p.net.direct import ConversationError

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger(__name__)

HEADS_REQUEST = "mesh.heads.request"
HEADS = "mesh.heads"
MAX_COOPS = 1024


@dataclass
class PeerView:
    coops: list[str] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)
    at_ms: int = 0


class PeerViews:
    def __init__(self, node: "Node") -> None:
        self.node = node
        self.views: dict[str, PeerView] = {}
        self._answered = trio.Event()
        self._waiting: set[str] = set()
        node.direct.handle(HEADS_REQUEST, self._on_request)
        node.direct.handle(HEADS, self._on_heads)

    def mine(self) -> dict[str, Any]:
        versions = {coop: head.version for coop, head in self.node.policy_heads().items()}
        return {"coops": list(self.node.config.coops), "versions": versions}

    async def refresh(self, timeout: float = 0.5) -> dict[str, PeerView]:
        """Ask every connected peer; return the views once all answered or ``timeout`` passed."""
        peers = self.node.host.connected_peers()
        self._waiting = {self.node.host.did_for_peer(p) for p in peers}
        self._answered = trio.Event()
        with trio.move_on_after(timeout):
            async with trio.open_nursery() as nursery:
                for peer in peers:
                    nursery.start_soon(self._send, peer, HEADS_REQUEST, {})
            if self._waiting:
                await self._answered.wait()
        return self.views

    async def _send(self, peer: Any, type: str, payload: dict[str, Any]) -> None:
        try:
            await self.node.direct.notify(peer, type, payload, timeout=1.0)
        except ConversationError as exc:
            log.debug("event=heads_not_sent peer=%s reason=%s", peer, exc.reason)

    async def _on_request(self, env, conv) -> None:
        peer = self.node.host.peer_for_did(conv.peer_did)
        self.node._nursery.start_soon(self._send, peer, HEADS, self.mine())

    async def _on_heads(self, env, conv) -> None:
        p = env.payload
        if not isinstance(p, dict):
            return
        coops = [c for c in p.get("coops", []) if isinstance(c, str)][:MAX_COOPS]
        versions = p.get("versions") if isinstance(p.get("versions"), dict) else {}
        clean = {c: v for c, v in list(versions.items())[:MAX_COOPS]
                 if isinstance(c, str) and isinstance(v, int) and v >= 0}
        self.views[conv.peer_did] = PeerView(coops=coops, versions=clean, at_ms=self.node.now_ms())
        self._waiting.discard(conv.peer_did)
        if not self._waiting:
            self._answered.set()
