"""The sandboxed runner against real wasmtime: every outcome, limits and the cache."""

from __future__ import annotations

import threading
import time

import pytest
import wasmtime

from icn_p2p.core.receipt import Outcome
from icn_p2p.executor import wasm
from icn_p2p.executor.wasm import ModuleCache, RunControl, run_module

from . import wat

MiB = 1024 * 1024
LIMITS = dict(fuel=1_000_000, memory_limit_bytes=4 * MiB, wall_ms=5_000)


def run(module, entry, args=(), **over):
    return run_module(module, entry, list(args), **{**LIMITS, **over})


def test_add_completes_with_result_and_costs():
    r = run(wat.ADD, "add", [2, 40])
    assert r.outcome is Outcome.COMPLETED and r.ok
    assert r.values == [42]
    assert 0 < r.fuel_used <= LIMITS["fuel"]
    assert r.cpu_ms >= 0 and r.wall_ms > 0
    assert r.error is None and r.trap_code is None


def test_binary_module_is_accepted():
    r = run(wasmtime.wat2wasm(wat.ADD), "add", [-5, 3])
    assert r.values == [-2]


def test_fuel_grows_with_work_and_stays_within_limit():
    small = run(wat.COUNT, "count", [10])
    large = run(wat.COUNT, "count", [10_000])
    assert small.values == [10] and large.values == [10_000]
    assert 0 < small.fuel_used < large.fuel_used <= LIMITS["fuel"]


def test_loop_forever_runs_out_of_fuel():
    r = run(wat.LOOP_FOREVER, "spin", fuel=50_000)
    assert r.outcome is Outcome.OUT_OF_FUEL
    assert r.trap_code == "OUT_OF_FUEL"
    assert r.fuel_used == 50_000
    assert r.values == []


def test_loop_forever_with_huge_fuel_times_out():
    r = run(wat.LOOP_FOREVER, "spin", fuel=10**18, wall_ms=100)
    assert r.outcome is Outcome.TIMEOUT
    assert "100 ms" in r.error
    assert r.wall_ms >= 100
    assert r.wall_ms < 2_000  # stopped by the clock, not by fuel


def test_growth_past_limit_then_trap_is_memory_limit():
    r = run(wat.GROW_UNTIL_REFUSED, "grow", memory_limit_bytes=1 * MiB)
    assert r.outcome is Outcome.MEMORY_LIMIT
    assert r.memory_bytes == 1 * MiB
    assert r.trap_code == "UNREACHABLE"
    assert "memory limit" in r.error


def test_refused_growth_the_guest_handles_completes():
    r = run(wat.GROW_HANDLED, "grow", memory_limit_bytes=1 * MiB)
    assert r.outcome is Outcome.COMPLETED
    assert r.values == [-1]
    assert r.memory_bytes == wasm.WASM_PAGE


def test_initial_memory_above_limit_is_memory_limit():
    r = run(wat.BIG_INITIAL_MEMORY, "main", memory_limit_bytes=1 * MiB)
    assert r.outcome is Outcome.MEMORY_LIMIT
    assert "initial memory" in r.error
    ok = run(wat.BIG_INITIAL_MEMORY, "main", memory_limit_bytes=200 * wasm.WASM_PAGE)
    assert ok.outcome is Outcome.COMPLETED


def test_unreachable_traps_with_code():
    r = run(wat.UNREACHABLE, "main")
    assert r.outcome is Outcome.TRAPPED
    assert r.trap_code == "UNREACHABLE"
    assert "unreachable" in r.error


def test_out_of_bounds_far_below_limit_is_a_trap_not_memory_limit():
    r = run(wat.OUT_OF_BOUNDS, "main")
    assert r.outcome is Outcome.TRAPPED
    assert r.trap_code == "MEMORY_OUT_OF_BOUNDS"


def test_start_function_trap_is_reported():
    r = run(wat.START_TRAPS, "main")
    assert r.outcome is Outcome.TRAPPED
    assert r.trap_code == "UNREACHABLE"


@pytest.mark.parametrize("module", [b"\x00asm\x01\x00\x00\x00garbage", b"not wasm at all", "(module (func", b""])
def test_malformed_module_is_invalid(module):
    r = run(module, "main")
    assert r.outcome is Outcome.INVALID_MODULE
    assert r.error


def test_oversized_module_is_invalid(monkeypatch):
    monkeypatch.setattr(wasm, "MAX_MODULE_BYTES", 16)
    r = run(wat.ADD, "add", [1, 2])
    assert r.outcome is Outcome.INVALID_MODULE
    assert "limit" in r.error


def test_imports_are_refused_and_listed():
    r = run(wat.IMPORTS, "main")
    assert r.outcome is Outcome.IMPORTS_NOT_ALLOWED
    assert "env.log" in r.error and "wasi_snapshot_preview1.fd_write" in r.error


@pytest.mark.parametrize("entry,module", [("missing", wat.ADD), ("g", wat.NOT_A_FUNCTION)])
def test_missing_or_non_function_entry(entry, module):
    r = run(module, entry)
    assert r.outcome is Outcome.NO_ENTRY
    assert repr(entry) in r.error


@pytest.mark.parametrize(
    "args,fragment",
    [
        ([1], "takes 2 arguments"),
        ([1, 2, 3], "takes 2 arguments"),
        ([1, "x"], "not a number"),
        ([True, 1], "not a number"),
        ([1.5, 1], "needs an integer"),
        ([2**32, 1], "does not fit i32"),
        ([-(2**31) - 1, 1], "does not fit i32"),
    ],
)
def test_bad_args(args, fragment):
    r = run(wat.ADD, "add", args)
    assert r.outcome is Outcome.BAD_ARGS
    assert fragment in r.error


def test_args_convert_to_every_numeric_type():
    r = run(wat.MIXED, "mix", [-3, 2**40, 1, 0.25])
    assert r.outcome is Outcome.COMPLETED
    assert r.values == [2**40 - 3, 1.25]
    # unsigned view of an i32 is accepted and wraps
    assert run(wat.ADD, "add", [2**32 - 1, 1]).values == [0]


def test_i64_and_float_range_checks():
    assert run(wat.MIXED, "mix", [0, 2**64, 0.0, 0.0]).outcome is Outcome.BAD_ARGS
    assert run(wat.MIXED, "mix", [0, 0, 10**400, 0.0]).outcome is Outcome.BAD_ARGS


def test_reference_types_are_not_supported():
    assert run(wat.EXTERNREF_PARAM, "main", [1]).outcome is Outcome.BAD_ARGS
    r = run(wat.EXTERNREF_RESULT, "main")
    assert r.outcome is Outcome.BAD_ARGS and "unsupported" in r.error


def test_negative_limits_are_a_caller_error():
    with pytest.raises(ValueError):
        run(wat.ADD, "add", [1, 2], fuel=-1)


def test_cancel_before_start():
    ctl = RunControl()
    ctl.cancel()
    r = run(wat.ADD, "add", [1, 2], control=ctl)
    assert r.outcome is Outcome.CANCELLED


def test_cancel_from_another_thread_stops_a_running_loop():
    ctl = RunControl()
    threading.Timer(0.05, ctl.cancel).start()
    start = time.monotonic()
    r = run(wat.LOOP_FOREVER, "spin", fuel=10**18, wall_ms=10_000, control=ctl)
    assert r.outcome is Outcome.CANCELLED
    assert ctl.stop_reason is Outcome.CANCELLED
    assert time.monotonic() - start < 2.0


def test_runs_in_parallel_threads_are_independent():
    results = {}

    def go(name, fn):
        results[name] = fn()

    threads = [
        threading.Thread(target=go, args=("spin", lambda: run(wat.LOOP_FOREVER, "spin", fuel=10**18, wall_ms=150))),
        threading.Thread(target=go, args=("add", lambda: run(wat.ADD, "add", [1, 1]))),
        threading.Thread(target=go, args=("fuel", lambda: run(wat.LOOP_FOREVER, "spin", fuel=10_000))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["spin"].outcome is Outcome.TIMEOUT
    assert results["add"].values == [2]
    assert results["fuel"].outcome is Outcome.OUT_OF_FUEL


def test_cache_compiles_once_and_evicts_least_recent():
    cache = ModuleCache(wasm.ENGINE, capacity=2)
    first, hit = cache.get(wat.ADD)
    assert not hit and first.compile_ms > 0
    again, hit = cache.get(wat.ADD)
    assert hit and again is first
    cache.get(wat.UNREACHABLE)
    cache.get(wat.ADD)  # ADD is now most recent
    cache.get(wat.LOOP_FOREVER)  # evicts UNREACHABLE
    assert len(cache) == 2
    _, hit = cache.get(wat.ADD)
    assert hit
    _, hit = cache.get(wat.UNREACHABLE)
    assert not hit
    assert cache.hits == 3 and cache.misses == 4
    cache.clear()
    assert len(cache) == 0


def test_run_uses_given_cache():
    cache = ModuleCache(wasm.ENGINE, capacity=4)
    run_module(wat.ADD, "add", [1, 2], cache=cache, **LIMITS)
    run_module(wat.ADD, "add", [1, 2], cache=cache, **LIMITS)
    assert (cache.hits, cache.misses) == (1, 1)


def test_memory_section_parser_sees_unexported_memories():
    binary = wasmtime.wat2wasm('(module (memory 3 10) (func (export "f")))')
    assert wasm._memory_minimums(binary) == (3 * wasm.WASM_PAGE,)
    assert wasm._memory_minimums(wasmtime.wat2wasm(wat.ADD)) == ()
