;; A hostile plugin for the sandbox's process tests: the body of `serf_handle` is one of the
;; attacks in tests/agent/hostile.rs, with locals $i and $r; the tests set the memory's size.
;; The input buffer is at 1024; attacks use memory from 1 MiB on.
(module
  (import "serf" "log" (func $log (param i32 i32 i32) (result i32)))
  (import "serf" "set_error" (func $set_error (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get"
    (func $random_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (memory (export "memory") PAGES)
  (func (export "serf_plugin_abi_v1"))
  (func (export "serf_input_buffer") (param i32) (result i32) i32.const 1024)
  (func (export "serf_init") (param i32 i32) (result i32) i32.const 0)
  (func (export "serf_handle") (param i32 i32) (result i32)
    (local $i i32) (local $r i32)
    HANDLE
    i32.const 0))
