"""A node in its own process, for the multi-process harness and benchmarks.

``python -m icn_p2p.node.harness_child <config.toml>`` starts the node, prints
one JSON line ``{"did", "peer_id", "addrs"}`` on stdout, then reads commands,
one JSON object per line, on stdin:

    {"op": "connect", "addr": "/ip4/.../p2p/..."}   persistent link
    {"op": "publish_policy", "coop": "c", "tag": 7}  set a local policy; its ``reason`` carries the tag
    {"op": "heads"}                                 print {"heads": {coop: version}}
    {"op": "stop"}

and prints, for every policy act it receives by gossip, one line
``{"event": "act", "coop": ..., "reason": ..., "t_ns": <time.time_ns()>}``
so a parent process can time propagation.
"""

from __future__ import annotations

import json
import logging
import sys
import time

import trio

from icn_p2p.net.gossip import Delivery
from icn_p2p.node.config import ConfigError, NodeConfig
from icn_p2p.node.node import Node
from icn_p2p.node.sources import POLICY_ACT


def _emit(obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _policy(coop: str, tag: int) -> dict:
    return {"coop_id": coop, "default_quota": {"cpu_hours_per_month": float(tag % 1000 + 1),
                                               "max_concurrent_tasks": 1, "max_priority": "High"}}


async def _main(config: NodeConfig) -> None:
    node = Node(config)

    async def on_act(d: Delivery) -> None:
        p = d.envelope.payload.get("proposal", {}) if isinstance(d.envelope.payload, dict) else {}
        _emit({"event": "act", "coop": p.get("coop_id"), "reason": p.get("reason"),
               "t_ns": time.time_ns(), "bytes": len(d.data)})

    node.handle(POLICY_ACT, on_act)
    async with node:
        _emit({"did": node.did, "peer_id": node.peer_id.to_base58(), "addrs": node.listen_addrs()})
        stdin = trio.lowlevel.FdStream(0)
        buf = b""
        while True:
            chunk = await stdin.receive_some(65536)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, _, buf = buf.partition(b"\n")
                cmd = json.loads(line)
                op = cmd.get("op")
                if op == "connect":
                    node.host.add_persistent_peer(cmd["addr"])
                elif op == "publish_policy":
                    await node.set_local_policy(_policy(cmd["coop"], int(cmd["tag"])),
                                                reason=str(cmd["tag"]))
                elif op == "heads":
                    _emit({"heads": {c: h.version for c, h in node.policy_heads().items()},
                           "peers": len(node.host.connected_peers()),
                           "mesh": len(node.gossip.mesh_peers("icn/policy/1"))})
                elif op == "stop":
                    return


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        config = NodeConfig.from_toml(argv[0])
    except (ConfigError, IndexError) as exc:
        print(f"harness_child: {exc}", file=sys.stderr)
        return 2
    trio.run(_main, config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
