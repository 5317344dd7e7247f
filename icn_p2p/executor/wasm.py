"""Run one WebAssembly function in a sandbox with fuel, memory and wall-clock limits.

The guest gets nothing from the host: no WASI, no imports (a module that
imports anything is refused before it is instantiated). Limits:

- fuel: ``Store.set_fuel``; exhaustion traps with ``TrapCode.OUT_OF_FUEL``;
- memory: ``Store.set_limits(memory_size=...)``; a refused ``memory.grow``
  returns -1 to the guest (wasmtime gives the host no signal of it, see
  ``_near_cap``);
- wall clock and cancellation: epoch interruption. One ticker thread bumps the
  shared engine's epoch every ``TICK_S`` while any run is active; each store
  has an epoch-deadline callback that, on every tick, stops the run when its
  wall-clock deadline passed or its ``RunControl`` was cancelled, and
  otherwise lets it continue for one more tick. A cancelled or timed-out run
  therefore stops within about one tick and never pins a worker thread.

Fuel on a stopped run: wasmtime keeps the fuel counter in a register and
writes it back at calls and returns, not at an epoch interrupt, so for a
``timeout`` or ``cancelled`` run ``fuel_used`` is a lower bound (0 for a loop
without calls); ``cpu_ms`` is exact and is what usage should charge then.

Compiled modules are kept in a bounded LRU keyed by the SHA-256 of the module
as given (binary or WAT text), so a repeated task pays compilation once.

``run_module`` is synchronous and blocking: async callers run it through
``trio.to_thread.run_sync`` with a ``CapacityLimiter``.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import logging
import re
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import wasmtime
from pydantic import BaseModel, ConfigDict, Field
from wasmtime import _ffi as ffi  # epoch-deadline callback (not wrapped by wasmtime-py 50)

from icn_p2p.core.receipt import Outcome

log = logging.getLogger(__name__)

TICK_S = 0.005
WASM_PAGE = 65536
MAX_MODULE_BYTES = 32 * 1024 * 1024
CACHE_SIZE = 128
# Tables and instance counts are bounded too, so a module cannot use them to
# get around the memory limit.
MAX_TABLE_ELEMENTS = 1_000_000
MAX_INSTANCES = 1
MAX_TABLES = 16
MAX_MEMORIES = 4

_I32 = (-(2**31), 2**32)
_I64 = (-(2**63), 2**64)


class ExecutionResult(BaseModel):
    """How one run ended and what it cost (the inputs of a receipt)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    outcome: Outcome
    values: list[int | float] = Field(default_factory=list)
    fuel_used: int = 0
    cpu_ms: float = 0.0
    wall_ms: float = 0.0
    compile_ms: float = 0.0
    memory_bytes: int = 0
    trap_code: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.COMPLETED


# --- engine, ticker and cancellation -----------------------------------------------


def _make_engine() -> wasmtime.Engine:
    cfg = wasmtime.Config()
    cfg.consume_fuel = True
    cfg.epoch_interruption = True
    return wasmtime.Engine(cfg)


ENGINE = _make_engine()


class _Ticker:
    """Bumps the engine epoch every ``TICK_S`` while at least one run is active."""

    def __init__(self, engine: wasmtime.Engine, tick_s: float) -> None:
        self._engine = engine
        self._tick_s = tick_s
        self._active = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        with self._cond:
            self._active += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="wasm-epoch", daemon=True)
                self._thread.start()
            self._cond.notify()

    def release(self) -> None:
        with self._cond:
            self._active -= 1

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._active == 0:
                    self._cond.wait()
            time.sleep(self._tick_s)
            self._engine.increment_epoch()


_TICKER = _Ticker(ENGINE, TICK_S)


@dataclass
class RunControl:
    """Lets another thread stop a run: ``cancel()`` takes effect within about one tick."""

    _cancelled: threading.Event = field(default_factory=threading.Event)
    deadline: float = math.inf  # time.monotonic() after which the run times out
    stop_reason: Outcome | None = None

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


_CONTROLS: dict[int, RunControl] = {}
_control_ids = itertools.count(1)
_CallbackType = ctypes.CFUNCTYPE(
    ctypes.c_size_t,
    ctypes.POINTER(ffi.wasmtime_context_t),
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_uint64),
    ctypes.POINTER(ctypes.c_uint8),
)
_NO_FINALIZER = ctypes.cast(None, ctypes.CFUNCTYPE(None, ctypes.c_void_p))
_UPDATE_DEADLINE_CONTINUE = 0


@_CallbackType
def _on_epoch(_ctx, data, delta, kind):
    """Called on the running thread at each tick: stop the run, or grant one more tick."""
    try:
        ctl = _CONTROLS.get(data or 0)
        if ctl is not None and ctl.stop_reason is None:
            if ctl.cancelled:
                ctl.stop_reason = Outcome.CANCELLED
            elif time.monotonic() >= ctl.deadline:
                ctl.stop_reason = Outcome.TIMEOUT
        if ctl is None or ctl.stop_reason is not None:
            err = ffi.wasmtime_error_new(b"run stopped by the executor")
            return ctypes.cast(err, ctypes.c_void_p).value
        delta[0] = 1
        kind[0] = _UPDATE_DEADLINE_CONTINUE
        return 0
    except BaseException:  # pragma: no cover - never let an exception cross into wasm
        err = ffi.wasmtime_error_new(b"epoch callback failed")
        return ctypes.cast(err, ctypes.c_void_p).value


# --- compilation cache -----------------------------------------------------------------


@dataclass(frozen=True)
class CompiledModule:
    """A compiled module with what we check before running it."""

    sha256: str
    module: wasmtime.Module
    imports: tuple[str, ...]
    memory_min_bytes: tuple[int, ...]
    compile_ms: float
    # export name -> (param types, result types) for functions, None for other exports
    exports: dict[str, tuple[tuple[str, ...], tuple[str, ...]] | None]


class ModuleError(Exception):
    def __init__(self, outcome: Outcome, detail: str) -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.detail = detail


class ModuleCache:
    """A bounded LRU of compiled modules keyed by the SHA-256 of the source."""

    def __init__(self, engine: wasmtime.Engine, capacity: int = CACHE_SIZE) -> None:
        self._engine = engine
        self._capacity = capacity
        self._items: OrderedDict[str, CompiledModule] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def get(self, module: bytes | str) -> tuple[CompiledModule, bool]:
        """The compiled module and whether it came from the cache. Raises ModuleError."""
        raw = module.encode() if isinstance(module, str) else bytes(module)
        if len(raw) > MAX_MODULE_BYTES:
            raise ModuleError(Outcome.INVALID_MODULE, f"module is {len(raw)} bytes, limit {MAX_MODULE_BYTES}")
        key = hashlib.sha256(raw).hexdigest()
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return hit, True
        compiled = self._compile(key, module)
        with self._lock:
            self.misses += 1
            self._items[key] = compiled
            self._items.move_to_end(key)
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)
        return compiled, False

    def _compile(self, key: str, module: bytes | str) -> CompiledModule:
        start = time.perf_counter()
        try:
            binary = wasmtime.wat2wasm(module) if isinstance(module, str) else bytes(module)
            compiled = wasmtime.Module(self._engine, binary)
        except (wasmtime.WasmtimeError, ValueError, TypeError) as e:
            raise ModuleError(Outcome.INVALID_MODULE, _first_line(str(e))) from None
        compile_ms = (time.perf_counter() - start) * 1000
        imports = tuple(f"{imp.module}.{imp.name}" for imp in compiled.imports)
        exports = {
            exp.name: (
                (tuple(str(t) for t in exp.type.params), tuple(str(t) for t in exp.type.results))
                if isinstance(exp.type, wasmtime.FuncType) else None
            )
            for exp in compiled.exports
        }
        return CompiledModule(key, compiled, imports, _memory_minimums(binary), compile_ms, exports)


CACHE = ModuleCache(ENGINE)


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:  # pragma: no cover - wasmtime always explains
        return "unknown error"
    # wasmtime puts the cause last ("Caused by: ..."); keep head and cause.
    return lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"


def _cause(text: str) -> str:
    """The root cause of a wasmtime error (its last line), without the backtrace."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    cause = lines[-1] if lines else "unknown error"
    return re.sub(r"^\d+:\s*", "", cause)


def _leb_u(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return result, pos


def _memory_minimums(binary: bytes) -> tuple[int, ...]:
    """Initial sizes in bytes of the memories a (validated) module defines.

    Read from the memory section so that a memory the module does not export
    is still seen: instantiating a module whose initial memory exceeds the
    limit is a ``memory_limit`` outcome, not a generic failure.
    """
    try:
        pos = 8
        while pos < len(binary):
            section = binary[pos]
            size, pos = _leb_u(binary, pos + 1)
            if section != 5:
                pos += size
                continue
            count, p = _leb_u(binary, pos)
            out = []
            for _ in range(count):
                flags = binary[p]
                minimum, p = _leb_u(binary, p + 1)
                if flags & 0x01:
                    _, p = _leb_u(binary, p)
                page = WASM_PAGE
                if flags & 0x08:  # pragma: no cover - custom page sizes are not enabled
                    log2, p = _leb_u(binary, p)
                    page = 1 << log2
                out.append(minimum * page)
            return tuple(out)
    except IndexError:  # pragma: no cover - wasmtime validated the binary
        pass
    return ()


# --- running ---------------------------------------------------------------------------


def _convert_args(params: tuple[str, ...], args: list[int | float]) -> list[int | float]:
    if len(args) != len(params):
        raise ModuleError(Outcome.BAD_ARGS, f"entry takes {len(params)} arguments, got {len(args)}")
    out: list[int | float] = []
    for i, (kind, value) in enumerate(zip(params, args)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ModuleError(Outcome.BAD_ARGS, f"argument {i}: {value!r} is not a number")
        if kind in ("i32", "i64"):
            lo, hi = _I32 if kind == "i32" else _I64
            if not isinstance(value, int):
                raise ModuleError(Outcome.BAD_ARGS, f"argument {i}: {kind} needs an integer, got {value!r}")
            if not lo <= value < hi:
                raise ModuleError(Outcome.BAD_ARGS, f"argument {i}: {value} does not fit {kind}")
            out.append(value)
        elif kind in ("f32", "f64"):
            try:
                out.append(float(value))
            except OverflowError:
                raise ModuleError(Outcome.BAD_ARGS, f"argument {i}: {value} does not fit {kind}") from None
        else:
            raise ModuleError(Outcome.BAD_ARGS, f"argument {i}: parameter type {kind} is not supported")
    return out


def _entry_type(compiled: CompiledModule, entry: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if entry not in compiled.exports:
        raise ModuleError(Outcome.NO_ENTRY, f"module exports no function {entry!r}")
    ftype = compiled.exports[entry]
    if ftype is None:
        raise ModuleError(Outcome.NO_ENTRY, f"export {entry!r} is not a function")
    return ftype


def _exported_memory_bytes(store: wasmtime.Store, instance: wasmtime.Instance | None) -> int:
    if instance is None:
        return 0
    exports = instance.exports(store).by_index
    sizes = [ext.data_len(store) for ext in exports if isinstance(ext, wasmtime.Memory)]
    return max(sizes, default=0)


def _near_cap(memory_bytes: int, limit: int) -> bool:
    """A memory within one page of the limit: the next ``memory.grow`` was refused.

    wasmtime's store limiter refuses growth by returning -1 to the guest and
    tells the host nothing, so a trap from a memory at the cap is read as the
    guest failing on refused growth. A refused large growth far below the cap
    followed by a trap is reported as ``trapped``.
    """
    return memory_bytes > 0 and memory_bytes + WASM_PAGE > limit


def run_module(
    module: bytes | str,
    entry: str,
    args: list[int | float],
    *,
    fuel: int,
    memory_limit_bytes: int,
    wall_ms: int,
    control: RunControl | None = None,
    cache: ModuleCache | None = None,
) -> ExecutionResult:
    """Compile (or fetch from cache) ``module`` and call ``entry(*args)`` within the limits.

    Never raises for anything the module or the arguments do: every failure is
    an ``ExecutionResult`` with an ``Outcome`` and a detail.
    """
    cache = CACHE if cache is None else cache
    control = RunControl() if control is None else control
    if fuel < 0 or memory_limit_bytes < 0 or wall_ms < 0:
        raise ValueError("limits must be non-negative")
    if control.cancelled:
        return ExecutionResult(outcome=Outcome.CANCELLED, error="cancelled before start")
    compile_ms = 0.0
    try:
        compiled, _ = cache.get(module)
        compile_ms = compiled.compile_ms
        if compiled.imports:
            raise ModuleError(
                Outcome.IMPORTS_NOT_ALLOWED, "module imports " + ", ".join(compiled.imports)
            )
        param_types, result_types = _entry_type(compiled, entry)
        params = _convert_args(param_types, list(args))
        bad_results = [t for t in result_types if t not in ("i32", "i64", "f32", "f64")]
        if bad_results:
            raise ModuleError(Outcome.BAD_ARGS, f"entry returns unsupported types {bad_results}")
        too_big = [m for m in compiled.memory_min_bytes if m > memory_limit_bytes]
        if too_big:
            raise ModuleError(
                Outcome.MEMORY_LIMIT,
                f"initial memory {too_big[0]} bytes exceeds the limit {memory_limit_bytes}",
            )
    except ModuleError as e:
        return ExecutionResult(outcome=e.outcome, error=e.detail, compile_ms=compile_ms)
    return _execute(compiled, entry, params, fuel, memory_limit_bytes, wall_ms, control, compile_ms)


def _execute(
    compiled: CompiledModule,
    entry: str,
    params: list[int | float],
    fuel: int,
    memory_limit_bytes: int,
    wall_ms: int,
    control: RunControl,
    compile_ms: float,
) -> ExecutionResult:
    store = wasmtime.Store(ENGINE)
    store.set_fuel(fuel)
    store.set_limits(
        memory_size=memory_limit_bytes,
        table_elements=MAX_TABLE_ELEMENTS,
        instances=MAX_INSTANCES,
        tables=MAX_TABLES,
        memories=MAX_MEMORIES,
    )
    cid = next(_control_ids)
    _CONTROLS[cid] = control
    ffi.wasmtime_store_epoch_deadline_callback(store.ptr(), _on_epoch, cid, _NO_FINALIZER)
    store.set_epoch_deadline(1)

    instance: wasmtime.Instance | None = None
    values: list[int | float] = []
    outcome = Outcome.COMPLETED
    trap_code: str | None = None
    error: str | None = None
    _TICKER.acquire()
    wall0 = time.perf_counter()
    cpu0 = time.thread_time()
    control.deadline = time.monotonic() + wall_ms / 1000
    try:
        instance = wasmtime.Instance(store, compiled.module, [])
        func = instance.exports(store)[entry]
        ret = func(store, *params)
        values = [] if ret is None else list(ret) if isinstance(ret, list) else [ret]
    except wasmtime.Trap as t:
        code = t.trap_code
        trap_code = code.name if code is not None else None
        error = _cause(t.message)
        if code is wasmtime.TrapCode.OUT_OF_FUEL:
            outcome = Outcome.OUT_OF_FUEL
        elif code is wasmtime.TrapCode.INTERRUPT:  # pragma: no cover - the callback stops runs first
            outcome = control.stop_reason or Outcome.TIMEOUT
        elif _near_cap(_exported_memory_bytes(store, instance), memory_limit_bytes):
            outcome = Outcome.MEMORY_LIMIT
            error = f"memory limit of {memory_limit_bytes} bytes reached, then {error}"
        else:
            outcome = Outcome.TRAPPED
    except wasmtime.WasmtimeError as e:
        outcome = control.stop_reason or Outcome.TRAPPED
        error = _cause(str(e))
    finally:
        cpu_ms = (time.thread_time() - cpu0) * 1000
        wall = (time.perf_counter() - wall0) * 1000
        _TICKER.release()
        _CONTROLS.pop(cid, None)
    try:
        fuel_used = fuel - store.get_fuel()
    except wasmtime.WasmtimeError:  # pragma: no cover - fuel is always enabled
        fuel_used = 0
    memory_bytes = _exported_memory_bytes(store, instance)
    if outcome is not Outcome.COMPLETED:
        values = []
    if outcome is Outcome.TIMEOUT:
        error = f"wall-clock limit of {wall_ms} ms reached"
    elif outcome is Outcome.CANCELLED:
        error = "cancelled while running"
    log.debug("wasm run outcome=%s fuel_used=%d wall_ms=%.3f", outcome.value, fuel_used, wall)
    return ExecutionResult(
        outcome=outcome,
        values=values,
        fuel_used=fuel_used,
        cpu_ms=cpu_ms,
        wall_ms=wall,
        compile_ms=compile_ms,
        memory_bytes=memory_bytes,
        trap_code=trap_code,
        error=error,
    )
