"""What each connected peer says it holds: the coops it serves and their policy versions.

Every node tells its direct neighbours (one note on the shared direct
stream, not gossip) when it connects, within ``poll_s`` of a policy version
changing here (however it arrived: gossip, sync, a vote), and every
``refresh_s`` otherwise. This is what ``icnctl mesh watch`` shows: a
policy spreading across the mesh, peer by peer. It is informational only;
nothing is decided on what a peer claims here.
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

HEADS = "mesh.heads"
MAX_COOPS = 1024


@dataclass
class PeerView:
    coops: list[str] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)
    at_ms: int = 0


class PeerViews:
    def __init__(self, node: "Node", *, poll_s: float = 0.25, refresh_s: float = 10.0) -> None:
        self.node = node
        self.poll_s = poll_s
        self.refresh_s = refresh_s
        self.views: dict[str, PeerView] = {}
        node.direct.handle(HEADS, self._on_heads)
        node.host.on_connection(self._on_connect)

    def mine(self) -> dict[str, Any]:
        versions = {coop: head.version for coop, head in self.node.policy_heads().items()}
        return {"coops": list(self.node.config.coops), "versions": versions}

    async def run(self) -> None:
        last: dict[str, Any] | None = None
        last_at = trio.current_time()
        while True:
            await trio.sleep(self.poll_s)
            note = self.mine()
            if note != last or trio.current_time() - last_at >= self.refresh_s:
                await self._tell_all(note)
                last, last_at = note, trio.current_time()

    async def _tell_all(self, note: dict[str, Any]) -> None:
        async with trio.open_nursery() as nursery:
            for peer in self.node.host.connected_peers():
                nursery.start_soon(self._tell, peer, note)

    async def _tell(self, peer: Any, note: dict[str, Any] | None = None) -> None:
        try:
            await self.node.direct.notify(peer, HEADS, note or self.mine(), timeout=2.0)
        except ConversationError as exc:
            log.debug("event=heads_not_sent peer=%s reason=%s", peer, exc.reason)

    async def _on_connect(self, peer: Any) -> None:
        await self._tell(peer)

    async def _on_heads(self, env, conv) -> None:
        p = env.payload
        if not isinstance(p, dict):
            return
        coops = [c for c in p.get("coops", []) if isinstance(c, str)][:MAX_COOPS]
        versions = p.get("versions") if isinstance(p.get("versions"), dict) else {}
        clean = {c: v for c, v in list(versions.items())[:MAX_COOPS]
                 if isinstance(c, str) and isinstance(v, int) and v >= 0}
        self.views[conv.peer_did] = PeerView(coops=coops, versions=clean, at_ms=self.node.now_ms())
