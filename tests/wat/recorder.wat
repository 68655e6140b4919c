;; A test plugin: appends the byte TAG and then each envelope it gets (msgpack, self-delimiting)
;; to `records.bin` in its first granted directory; `serf_init` returns INIT_STATUS. Tests
;; replace both words with numbers: two tags are two versions of one plugin whose every event
;; shows which version handled it. Used by the hot-reload tests of `host/src/plugin/reload.rs`
;; and `tests/agent/reload.rs`.
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $close (param i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "records.bin")
  (func (export "serf_plugin_abi_v1"))
  (func (export "serf_input_buffer") (param $size i32) (result i32)
    (select (i32.const 4096) (i32.const 0) (i32.le_u (local.get $size) (i32.const 61439))))
  (func (export "serf_init") (param i32 i32) (result i32) (i32.const INIT_STATUS))
  (func (export "serf_handle") (param $ptr i32) (param $len i32) (result i32)
    (local $fd i32)
    (i32.store8 (i32.const 4095) (i32.const TAG))
    ;; fd 3 is the first preopened directory; O_CREAT, FD_WRITE, FDFLAGS_APPEND.
    (if (call $open (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 11)
          (i32.const 1) (i64.const 64) (i64.const 0) (i32.const 1) (i32.const 16))
      (then (return (i32.const 1))))
    (local.set $fd (i32.load (i32.const 16)))
    (i32.store (i32.const 32) (i32.const 4095))
    (i32.store (i32.const 36) (i32.add (local.get $len) (i32.const 1)))
    (drop (call $write (local.get $fd) (i32.const 32) (i32.const 1) (i32.const 48)))
    (drop (call $close (local.get $fd)))
    (i32.const 0)))
