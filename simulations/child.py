"""One simulated node in its own OS process.

``python -m simulations.child <node.toml> [offset_ms]`` starts the node with a
:class:`~simulations.agent.NodeAgent`, prints one JSON line ``{"ready": info}``
and then answers requests, one JSON object per line on stdin
(``{"id": 1, "op": "submit", "args": {...}}``), with ``{"id": 1, "ok": result}``
or ``{"id": 1, "error": "..."}`` on stdout. End of stdin stops the node.

The node reads an :class:`~icn_p2p.core.clock.OffsetClock` starting at
``offset_ms`` (a node restarted after the simulated clock moved ahead starts
where the others are); the ``advance_clock`` operation moves it.
"""

from __future__ import annotations

import json
import logging
import sys
from functools import partial

import trio

from icn_p2p.core.clock import OffsetClock
from icn_p2p.node.config import ConfigError, NodeConfig

from .agent import NodeAgent


def _emit(obj) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


async def _answer(agent: NodeAgent, req: dict) -> None:
    try:
        result = await agent.call(str(req.get("op")), dict(req.get("args") or {}))
        _emit({"id": req.get("id"), "ok": result})
    except Exception as exc:
        _emit({"id": req.get("id"), "error": f"{type(exc).__name__}: {exc}"})


async def _read(agent: NodeAgent, io: trio.Nursery) -> None:
    stdin = trio.lowlevel.FdStream(0)
    buf = b""
    try:
        while True:
            chunk = await stdin.receive_some(65536)
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, _, buf = buf.partition(b"\n")
                try:
                    req = json.loads(line)
                except ValueError:
                    _emit({"id": None, "error": "request is not JSON"})
                    continue
                io.start_soon(_answer, agent, req)
    finally:
        agent.stop()


async def _main(config: NodeConfig, offset_ms: int = 0) -> None:
    async with trio.open_nursery() as nursery:
        agent: NodeAgent = await nursery.start(partial(NodeAgent.serve, config, clock=OffsetClock(offset_ms)))
        _emit({"ready": await agent.op_info()})
        async with trio.open_nursery() as io:
            io.start_soon(_read, agent, io)
            await agent._stop.wait()
            await trio.sleep(0.05)  # let the answer to "stop" go out
            io.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    try:
        config = NodeConfig.from_toml(argv[0])
        offset_ms = int(argv[1]) if len(argv) > 1 else 0
        if offset_ms < 0:
            raise ValueError("the clock offset cannot be negative")
    except (ConfigError, IndexError, ValueError) as exc:
        print(f"simulations.child: {exc}", file=sys.stderr)
        return 2
    trio.run(_main, config, offset_ms)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
