"""Where simulated nodes live: all in this trio process, or one OS process each.

Both backends hand out :class:`Handle` objects with the same ``call(op, **args)``
(the operations of :class:`~simulations.agent.NodeAgent`), so the engine does
not know which one it drives. Killing differs and the report says so:
in-process "kill" is a node stop (the process cannot SIGKILL a part of
itself); with processes it is SIGKILL (or SIGTERM).

Both keep the nodes on one simulated clock (system time plus an offset that
only grows): in-process nodes share one :class:`OffsetClock`; each child
process has its own, started at the current offset and advanced by all the
children at one agreed wall-clock instant (:meth:`ProcessBackend.advance_clock`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

from icn_p2p.core.clock import OffsetClock
from icn_p2p.node.config import NodeConfig

from . import procstat
from .agent import NodeAgent

log = logging.getLogger(__name__)


class NodeGone(RuntimeError):
    """The node was stopped or its process died."""


class Handle:
    """One running node (one incarnation: a restart makes a new handle)."""

    index: int
    info: dict[str, Any]
    pid: int | None = None

    @property
    def alive(self) -> bool:
        raise NotImplementedError

    async def call(self, op: str, timeout: float = 30.0, **args: Any) -> Any:
        raise NotImplementedError

    def addr(self) -> str:
        return self.info["addrs"][0]


class InProcHandle(Handle):
    def __init__(self, index: int, agent: NodeAgent, finished: trio.Event) -> None:
        self.index = index
        self.agent = agent
        self.finished = finished
        self.info: dict[str, Any] = {}

    @property
    def alive(self) -> bool:
        return not self.agent.stopped

    async def call(self, op: str, timeout: float = 30.0, **args: Any) -> Any:
        if not self.alive:
            raise NodeGone(f"node {self.index} is stopped")
        with trio.fail_after(timeout):
            return await self.agent.call(op, args)


class InProcessBackend:
    """N nodes in this trio process (``--in-process``)."""

    kind = "in-process"
    kill_semantics = "stop (graceful: the node closes its connections and stores)"

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.handles: dict[int, Handle] = {}
        self.clock = OffsetClock()  # every node reads this one

    async def _serve(self, index: int, config: NodeConfig, finished: trio.Event, *,
                     task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            await NodeAgent.serve(config, clock=self.clock, task_status=task_status)
        finally:
            finished.set()

    async def advance_clock(self, ms: int) -> dict[str, Any]:
        """Every node at once (they share the clock)."""
        t = time.time_ns()
        self.clock.advance(ms)
        live = sum(1 for h in self.handles.values() if h.alive)
        return {"nodes": live, "spread_ms": 0.0, "t_ns": t, "offset_ms": self.clock.offset_ms}

    async def start(self, index: int, config: NodeConfig) -> Handle:
        finished = trio.Event()
        agent = await self.nursery.start(self._serve, index, config, finished)
        handle = InProcHandle(index, agent, finished)
        handle.info = await agent.op_info()
        self.handles[index] = handle
        return handle

    async def kill(self, index: int, sig: str = "kill") -> None:
        handle = self.handles[index]
        assert isinstance(handle, InProcHandle)
        handle.agent.stop()
        with trio.move_on_after(15):
            await handle.finished.wait()

    def sample(self, index: int) -> procstat.ProcSample | None:
        return None  # one process for all nodes: see process_sample()

    def process_sample(self) -> procstat.ProcSample | None:
        return procstat.sample()

    async def stop_all(self) -> None:
        for h in list(self.handles.values()):
            if h.alive:
                h.agent.stop()
        with trio.move_on_after(15):
            for h in list(self.handles.values()):
                await h.finished.wait()


class ProcHandle(Handle):
    def __init__(self, index: int, proc: trio.Process) -> None:
        self.index = index
        self.proc = proc
        self.pid = proc.pid
        self.info: dict[str, Any] = {}
        self._next = 0
        self._waiting: dict[int, trio.MemorySendChannel] = {}
        self._send_lock = trio.Lock()
        self.dead = False

    @property
    def alive(self) -> bool:
        return not self.dead and self.proc.returncode is None

    async def read_loop(self, buf: bytes, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                while b"\n" in buf:
                    line, _, buf = buf.partition(b"\n")
                    try:
                        msg = json.loads(line)
                    except ValueError:
                        continue
                    chan = self._waiting.pop(msg.get("id"), None)
                    if chan is not None:
                        chan.send_nowait(msg)
                chunk = await self.proc.stdout.receive_some(1 << 20)
                if not chunk:
                    break
                buf += chunk
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass
        finally:
            self.dead = True
            for chan in self._waiting.values():
                chan.close()
            self._waiting.clear()

    async def call(self, op: str, timeout: float = 30.0, **args: Any) -> Any:
        if not self.alive:
            raise NodeGone(f"node {self.index} (pid {self.pid}) is not running")
        self._next += 1
        rid = self._next
        send, recv = trio.open_memory_channel(1)
        self._waiting[rid] = send
        data = (json.dumps({"id": rid, "op": op, "args": args}) + "\n").encode()
        try:
            with trio.fail_after(timeout):
                async with self._send_lock:
                    await self.proc.stdin.send_all(data)
                try:
                    msg = await recv.receive()
                except trio.EndOfChannel:
                    raise NodeGone(f"node {self.index} (pid {self.pid}) died during {op}") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise NodeGone(f"node {self.index} (pid {self.pid}) is not running") from None
        finally:
            self._waiting.pop(rid, None)
        if "error" in msg:
            raise RuntimeError(f"node {self.index}: {op} failed: {msg['error']}")
        return msg.get("ok")


class ProcessBackend:
    """One OS process per node (``python -m simulations.child``), the default."""

    kind = "processes"
    kill_semantics = "SIGKILL (kill -9: no shutdown, stores closed by the kernel)"

    def __init__(self, nursery: trio.Nursery, base: Path) -> None:
        self.nursery = nursery
        self.base = Path(base)
        self.handles: dict[int, Handle] = {}
        self._cpu_before: dict[int, float] = {}
        self.offset_ms = 0  # the children's clock offset (a child started later starts here)

    #: how far ahead the agreed instant is set: every request must reach its child first
    ADVANCE_LEAD_S = 0.3

    async def advance_clock(self, ms: int) -> dict[str, Any]:
        """Move every live child's clock ``ms`` ahead at one wall-clock instant.

        Envelopes carry timestamps checked against a skew bound (30 s), so a
        node a month ahead of its neighbours would refuse their messages. Each
        child gets the same instant, ``ADVANCE_LEAD_S`` from now, and sleeps
        until it; the spread of the instants they actually moved at is returned.
        """
        at_ns = time.time_ns() + int(self.ADVANCE_LEAD_S * 1e9)
        answers: list[dict[str, Any]] = []

        async def one(h: Handle) -> None:
            try:
                answers.append(await h.call("advance_clock", ms=ms, at_ns=at_ns, timeout=10))
            except (NodeGone, RuntimeError, trio.TooSlowError) as exc:
                log.warning("event=advance_clock_failed node=%s error=%r", h.index, exc)

        self.offset_ms += ms
        async with trio.open_nursery() as n:
            for h in self.handles.values():
                if h.alive:
                    n.start_soon(one, h)
        ts = [a["t_ns"] for a in answers]
        return {"nodes": len(answers), "spread_ms": round((max(ts) - min(ts)) / 1e6, 3) if ts else None,
                "t_ns": min(ts) if ts else at_ns, "offset_ms": self.offset_ms}

    async def start(self, index: int, config: NodeConfig, timeout: float = 60.0) -> Handle:
        path = self.base / f"node{index}.toml"
        path.write_text(config.to_toml())
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        stderr = open(self.base / f"node{index}.stderr", "ab")
        try:
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "simulations.child", str(path), str(self.offset_ms)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=env)
        finally:
            stderr.close()
        handle = ProcHandle(index, proc)
        buf = b""
        try:
            with trio.fail_after(timeout):
                while b"\n" not in buf:
                    chunk = await proc.stdout.receive_some(65536)
                    if not chunk:
                        raise RuntimeError(f"node {index} exited before it was ready; see {self.base}/node{index}.stderr")
                    buf += chunk
        except BaseException:
            proc.kill()
            raise
        line, _, rest = buf.partition(b"\n")
        handle.info = json.loads(line)["ready"]
        await self.nursery.start(handle.read_loop, rest)
        self.handles[index] = handle
        return handle

    async def kill(self, index: int, sig: str = "kill") -> None:
        handle = self.handles[index]
        assert isinstance(handle, ProcHandle)
        if handle.proc.returncode is None:
            handle.proc.send_signal(signal.SIGKILL if sig == "kill" else signal.SIGTERM)
        with trio.move_on_after(15):
            await handle.proc.wait()
        handle.dead = True

    def sample(self, index: int) -> procstat.ProcSample | None:
        handle = self.handles.get(index)
        return procstat.sample(handle.pid) if handle is not None and handle.alive else None

    def process_sample(self) -> procstat.ProcSample | None:
        return procstat.sample()

    async def stop_all(self) -> None:
        async def stop(h: ProcHandle) -> None:
            if h.alive:
                with trio.move_on_after(3):
                    try:
                        await h.call("stop", timeout=3)
                    except Exception:
                        pass
                    await h.proc.wait()
            if h.proc.returncode is None:
                h.proc.kill()
                with trio.move_on_after(5):
                    await h.proc.wait()
            try:
                await h.proc.stdin.aclose()
            except Exception:
                pass

        async with trio.open_nursery() as n:
            for h in list(self.handles.values()):
                n.start_soon(stop, h)
