"""Built-in WebAssembly task modules (WAT text; wasmtime compiles the text form).

``add`` returns 2 + 3, ``spin`` loops until its fuel runs out, ``work N``
counts to N (about 5 fuel per iteration), so a scenario can ask for CPU time
without shipping a module file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ADD = '(module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))'
SPIN = '(module (func (export "spin") (loop br 0)))'
WORK = ('(module (func (export "work") (param i32) (result i32) (local i32) '
        '(loop (local.set 1 (i32.add (local.get 1) (i32.const 1))) '
        '(br_if 0 (i32.lt_u (local.get 1) (local.get 0)))) (local.get 1)))')

_WORK_RE = re.compile(r"^work\s+(\d[\d_]*)$")


@dataclass(frozen=True)
class Module:
    """What to run: the module text, its entry point and arguments."""

    name: str
    wat: str
    entry: str
    args: tuple[int, ...]
    expected: tuple[int, ...] | None  # result when the run completes

    @property
    def default_fuel(self) -> int:
        if self.entry == "work":
            return self.args[0] * 8 + 10_000
        if self.entry == "spin":
            return 1_000_000
        return 100_000


def parse_module(spec: str) -> Module:
    """``add`` | ``spin`` | ``work N``; raises ValueError naming the accepted forms."""
    text = " ".join(spec.strip().split())
    if text == "add":
        return Module("add", ADD, "add", (2, 3), (5,))
    if text == "spin":
        return Module("spin", SPIN, "spin", (), None)
    m = _WORK_RE.match(text)
    if m:
        n = int(m.group(1).replace("_", ""))
        if not 1 <= n <= 2**31 - 1:
            raise ValueError(f"work N needs 1 <= N < 2^31, got {n}")
        return Module(text, WORK, "work", (n,), (n,))
    raise ValueError(f"unknown module {spec!r}: use 'add', 'spin' or 'work N'")
