;; A hostile test plugin: on every event it calls `serf.fire_event` FIRES times (user event
;; `boom`, empty payload, not coalesced) and then traps if TRAP is 1. Granted `events` and fed
;; its own `boom` events, it answers every event with FIRES more, on every node: the host's
;; plugin-wide rate limit and trap backoff must bound it. Tests replace FIRES and TRAP with
;; numbers. Used by `host/src/plugin/dispatch.rs` and `tests/agent/hostile.rs`.
(module
  (import "serf" "fire_event" (func $fire (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; FireEvent {name: "boom", payload: b"", coalesce: false}: 31 bytes of msgpack.
  (data (i32.const 0) "\83\a4name\a4boom\a7payload\c4\00\a8coalesce\c2")
  (func (export "serf_plugin_abi_v1"))
  (func (export "serf_input_buffer") (param $size i32) (result i32)
    (select (i32.const 4096) (i32.const 0) (i32.le_u (local.get $size) (i32.const 61439))))
  (func (export "serf_init") (param i32 i32) (result i32) (i32.const 0))
  (func (export "serf_handle") (param $ptr i32) (param $len i32) (result i32)
    (local $i i32)
    (block $done
      (loop $again
        (br_if $done (i32.ge_u (local.get $i) (i32.const FIRES)))
        (drop (call $fire (i32.const 0) (i32.const 31)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $again)))
    (if (i32.eq (i32.const TRAP) (i32.const 1)) (then unreachable))
    (i32.const 0)))
