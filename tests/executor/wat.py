"""WAT fixtures for the executor tests."""

ADD = '(module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))'

LOOP_FOREVER = '(module (func (export "spin") (loop br 0)))'

# Counts to its argument; fuel grows with the argument.
COUNT = """
(module
  (func (export "count") (param i32) (result i32) (local i32)
    (loop
      (local.set 1 (i32.add (local.get 1) (i32.const 1)))
      (br_if 0 (i32.lt_u (local.get 1) (local.get 0))))
    (local.get 1)))
"""

# Grows one page at a time until refused, then traps as an allocator would.
GROW_UNTIL_REFUSED = """
(module
  (memory (export "memory") 1)
  (func (export "grow")
    (loop (br_if 0 (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
    unreachable))
"""

# Asks for more than the limit once and copes with the refusal.
GROW_HANDLED = """
(module
  (memory (export "memory") 1)
  (func (export "grow") (result i32) (memory.grow (i32.const 1000))))
"""

BIG_INITIAL_MEMORY = '(module (memory 200) (func (export "main")))'

UNREACHABLE = '(module (func (export "main") unreachable))'

OUT_OF_BOUNDS = '(module (memory (export "memory") 1) (func (export "main") (result i32) (i32.load (i32.const 1000000))))'

START_TRAPS = '(module (func $s unreachable) (start $s) (func (export "main")))'

IMPORTS = """
(module
  (import "env" "log" (func $log (param i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
  (func (export "main") (call $log (i32.const 1))))
"""

MIXED = """
(module
  (func (export "mix") (param i32 i64 f32 f64) (result i64 f64)
    (i64.add (i64.extend_i32_s (local.get 0)) (local.get 1))
    (f64.add (f64.promote_f32 (local.get 2)) (local.get 3))))
"""

NOT_A_FUNCTION = '(module (global (export "g") i32 (i32.const 1)) (func (export "main")))'

EXTERNREF_PARAM = '(module (func (export "main") (param externref)))'

EXTERNREF_RESULT = '(module (func (export "main") (result externref) ref.null extern))'
