//! Hostile modules against one instance's limits: each test is a guest that attacks a limit on
//! purpose (inside host calls, across memories and tables, through WASI) and the outcome the
//! sandbox must give it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::engine::{Engine, LoadedModule};
use super::instance::{CallError, Instance, InstanceContext};
use super::rates::PluginRates;
use super::{EventFilter, Grants, HostServices, Limits, PluginSpec};
use serf_core::QueryKey;
use serf_plugin_sdk::abi::Status;

struct NoServices;

impl HostServices for NoServices {
    fn respond(&self, _: &str, _: QueryKey, _: Vec<u8>) -> Result<(), Status> {
        Ok(())
    }
}

/// A plugin whose `serf_handle` runs `handle` (with locals `$i` and `$r`), with
/// `memory_pages` of memory and `extra` module fields. The input buffer is at 1024.
fn plugin(memory_pages: u32, extra: &str, handle: &str) -> String {
    format!(
        r#"(module
        (import "serf" "log" (func $log (param i32 i32 i32) (result i32)))
        (import "serf" "set_error" (func $set_error (param i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "fd_write"
            (func $fd_write (param i32 i32 i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "random_get"
            (func $random_get (param i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
        (import "wasi_snapshot_preview1" "path_open"
            (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
        (memory (export "memory") {memory_pages})
        {extra}
        (func (export "serf_plugin_abi_v1"))
        (func (export "serf_input_buffer") (param i32) (result i32) i32.const 1024)
        (func (export "serf_init") (param i32 i32) (result i32) i32.const 0)
        (func (export "serf_handle") (param i32 i32) (result i32)
            (local $i i32) (local $r i32)
            {handle}
            i32.const 0))"#
    )
}

fn load(engine: &Engine, wat: &str) -> LoadedModule {
    let bytes = wat::parse_str(wat).expect("test WAT parses");
    engine
        .load(Path::new("hostile.wasm"), &bytes)
        .expect("module loads")
}

fn spec(limits: Limits, dirs: BTreeMap<String, std::path::PathBuf>) -> PluginSpec {
    PluginSpec {
        name: "hostile".into(),
        path: "hostile.wasm".into(),
        filter: EventFilter::all(),
        limits,
        dirs,
        config: toml::Table::new(),
        grants: Grants::default(),
    }
}

/// Limits with a short deadline and fuel to spare, so only the deadline can stop a bomb.
fn deadline_limits() -> Limits {
    Limits {
        fuel_per_event: 1_000_000_000_000,
        event_timeout: Duration::from_millis(300),
        max_memory_bytes: 128 << 20,
        ..Limits::DEFAULT
    }
}

async fn start(loaded: &LoadedModule, spec: &PluginSpec) -> Result<Instance, CallError> {
    start_with(loaded, spec, Arc::default()).await
}

/// [`start`], with the plugin's rate windows shared with the caller.
async fn start_with(
    loaded: &LoadedModule,
    spec: &PluginSpec,
    rates: Arc<PluginRates>,
) -> Result<Instance, CallError> {
    let context = Arc::new(InstanceContext {
        plugin: Arc::from("hostile"),
        node: Arc::from("node"),
        services: Arc::new(NoServices),
        response_limit: 1024,
        rates,
    });
    Instance::start(loaded, spec, context, &[]).await
}

/// Runs one event through a fresh instance of `wat` under `limits`: its outcome and how long
/// the call took.
async fn run(wat: &str, limits: Limits) -> (Result<(), CallError>, Duration) {
    let engine = Engine::new(None);
    let loaded = load(&engine, wat);
    let spec = spec(limits, BTreeMap::new());
    let mut instance = start(&loaded, &spec).await.expect("instance starts");
    let started = Instant::now();
    let outcome = instance.handle(&[], b"event", None).await.map(drop);
    (outcome, started.elapsed())
}

/// A deadline of 300 ms must hold within this, whatever the guest does: a tick, the longest
/// host call and a busy test machine. Before the host calls were bounded, such calls ran for
/// 12 to 19 s.
const DEADLINE_SLACK: Duration = Duration::from_secs(3);

fn assert_timed_out(outcome: Result<(), CallError>, elapsed: Duration) {
    assert!(
        matches!(outcome, Err(CallError::Timeout(_))),
        "expected a timeout, got {outcome:?}"
    );
    assert!(elapsed < DEADLINE_SLACK, "the call ran {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_looping_on_huge_log_texts_is_stopped_by_its_deadline() {
    // 64 MiB of "text" at 1 MiB, logged and set as the error text again and again.
    let wat = plugin(
        1040,
        "",
        "(loop $again
            (drop (call $log (i32.const 2) (i32.const 1048576) (i32.const 67108864)))
            (drop (call $set_error (i32.const 1048576) (i32.const 67108864)))
            (br $again))",
    );
    let (outcome, elapsed) = run(&wat, deadline_limits()).await;
    assert_timed_out(outcome, elapsed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_get_is_capped_per_call_and_the_deadline_holds_around_it() {
    // A small request works (the guest checks its status); 60 MiB is refused with EINVAL.
    let small = plugin(
        1040,
        "",
        "(if (i32.ne (call $random_get (i32.const 4096) (i32.const 32)) (i32.const 0))
            (then unreachable))
         (if (i32.ne (call $random_get (i32.const 4096) (i32.const 62914560)) (i32.const 28))
            (then unreachable))
         (if (i32.ne (call $random_get (i32.const 68000000) (i32.const 1048576)) (i32.const 21))
            (then unreachable))",
    );
    let (outcome, _) = run(&small, deadline_limits()).await;
    outcome.expect("random_get answers small requests and refuses huge ones");
    // The largest allowed request, forever.
    let bomb = plugin(
        1040,
        "",
        "(loop $again
            (drop (call $random_get (i32.const 4096) (i32.const 1048576)))
            (br $again))",
    );
    let (outcome, elapsed) = run(&bomb, deadline_limits()).await;
    assert_timed_out(outcome, elapsed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_writes_to_stdout_fail_and_the_deadline_holds_around_them() {
    // One iovec at 0: 16 MiB at 1 MiB. Then the largest write WASI takes, forever.
    let iovec = |len: u32| {
        format!(
            "(i32.store (i32.const 0) (i32.const 1048576))
             (i32.store (i32.const 4) (i32.const {len}))"
        )
    };
    let refused = plugin(
        1040,
        "",
        &format!(
            "{}
            (if (i32.ne (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))
                        (i32.const 48))
                (then unreachable))",
            iovec(16 << 20)
        ),
    );
    let (outcome, _) = run(&refused, deadline_limits()).await;
    outcome.expect("a 16 MiB write fails with ENOMEM before anything is copied");
    let bomb = plugin(
        1040,
        "",
        &format!(
            "{}
            (loop $again
                (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
                (br $again))",
            iovec(1 << 20)
        ),
    );
    let (outcome, elapsed) = run(&bomb, deadline_limits()).await;
    assert_timed_out(outcome, elapsed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spin_that_burns_little_fuel_is_stopped_by_the_deadline() {
    let wat = plugin(1, "", "(loop $again (br $again))");
    let (outcome, elapsed) = run(&wat, deadline_limits()).await;
    assert_timed_out(outcome, elapsed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_calls_cost_fuel() {
    // Fuel for about a thousand host calls: a loop of them runs out of fuel, not time.
    let wat = plugin(
        1,
        "",
        "(loop $again
            (drop (call $set_error (i32.const 2048) (i32.const 16)))
            (br $again))",
    );
    let limits = Limits {
        fuel_per_event: 10_000_000,
        event_timeout: Duration::from_secs(30),
        ..Limits::DEFAULT
    };
    let (outcome, elapsed) = run(&wat, limits).await;
    assert!(
        matches!(outcome, Err(CallError::OutOfFuel(_))),
        "{outcome:?}"
    );
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proc_exit_is_reported_with_its_status() {
    let wat = plugin(1, "", "(call $proc_exit (i32.const 3))");
    let (outcome, _) = run(&wat, Limits::DEFAULT).await;
    let error = outcome.unwrap_err();
    assert_eq!(error, CallError::Exited(3));
    assert_eq!(error.kind(), "exit");
    assert_eq!(error.to_string(), "plugin exited with status 3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_grow_does_not_name_a_later_unrelated_trap() {
    // Event 1 asks for 1 GiB and carries on; event 2 divides by zero.
    let wat = plugin(
        1,
        "(global $calls (mut i32) (i32.const 0))",
        "(global.set $calls (i32.add (global.get $calls) (i32.const 1)))
         (if (i32.eq (global.get $calls) (i32.const 1))
            (then (if (i32.ne (memory.grow (i32.const 16384)) (i32.const -1))
                (then unreachable))))
         (if (i32.eq (global.get $calls) (i32.const 2))
            (then (drop (i32.div_u (i32.const 1) (local.get $i)))))",
    );
    let engine = Engine::new(None);
    let loaded = load(&engine, &wat);
    let spec = spec(Limits::DEFAULT, BTreeMap::new());
    let mut instance = start(&loaded, &spec).await.unwrap();
    instance
        .handle(&[], b"1", None)
        .await
        .expect("a refused grow is not a trap");
    let error = instance.handle(&[], b"2", None).await.unwrap_err();
    assert!(matches!(error, CallError::Crashed(_)), "{error:?}");
    assert!(error.to_string().contains("divide by zero"), "{error}");
}

#[test]
fn multi_memory_modules_are_refused_when_compiled() {
    let engine = Engine::new(None);
    let wat = plugin(1, "(memory 1000) (memory 1000) (memory 1000)", "");
    let bytes = wat::parse_str(&wat).unwrap();
    let error = engine
        .load(Path::new("many.wasm"), &bytes)
        .unwrap_err()
        .to_string();
    assert!(error.starts_with("cannot compile many.wasm"), "{error}");
    assert!(error.contains("multiple memories"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_count_against_the_memory_cap() {
    // 64 MiB of memory is allowed; so is a small table; not both a table of 4 M elements
    // (64 MiB at 16 bytes each) and the memory, nor a table grown past the cap later.
    let engine = Engine::new(None);
    let limits = Limits {
        max_memory_bytes: 64 << 20,
        ..Limits::DEFAULT
    };
    let spec = spec(limits, BTreeMap::new());
    let big_table = load(&engine, &plugin(512, "(table 4194304 funcref)", ""));
    let error = start(&big_table, &spec).await.err().expect("refused");
    assert!(
        matches!(error, CallError::MemoryLimit(_) | CallError::Crashed(_)),
        "{error:?}"
    );
    let growing = load(
        &engine,
        &plugin(
            1,
            "(table $t 1 funcref)",
            "(if (i32.ne (table.grow $t (ref.null func) (i32.const 8388608)) (i32.const -1))
                (then unreachable))",
        ),
    );
    let mut instance = start(&growing, &spec).await.unwrap();
    instance
        .handle(&[], b"grow", None)
        .await
        .expect("the grow is refused, which the guest sees as -1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_holds_a_bounded_number_of_open_files() {
    // Opens "f" (creating it) in the granted directory (fd 3) 1,000 times without closing.
    let dir = tempfile::tempdir().unwrap();
    let wat = plugin(
        1,
        "",
        "(i32.store8 (i32.const 2048) (i32.const 102))
         (block $done (loop $again
            (br_if $done (i32.ge_u (local.get $i) (i32.const 1000)))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (drop (call $path_open (i32.const 3) (i32.const 0) (i32.const 2048)
                    (i32.const 1) (i32.const 1) (i64.const 66) (i64.const 66) (i32.const 0)
                    (i32.const 4096)))
            (br $again)))
",
    );
    let engine = Engine::new(None);
    let loaded = load(&engine, &wat);
    let dirs = BTreeMap::from([("/data".to_owned(), dir.path().to_path_buf())]);
    let spec = spec(Limits::DEFAULT, dirs);
    let open_before = open_descriptors();
    let mut instance = start(&loaded, &spec).await.unwrap();
    // Past the cap the open traps: the instance is dropped, and its files closed with it.
    let error = instance.handle(&[], b"open", None).await.unwrap_err();
    assert!(error.to_string().contains("WASI resources"), "{error:?}");
    let open_during = open_descriptors();
    assert!(
        open_during < open_before + super::instance::MAX_WASI_RESOURCES + 16,
        "{open_before} descriptors before, {open_during} with the instance"
    );
    let opened = std::fs::metadata(dir.path().join("f")).is_ok();
    assert!(opened, "the grant works");
}

/// The agent's open file descriptors.
fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

#[test]
fn control_characters_in_plugin_text_are_escaped() {
    use super::stdio::escape_controls;
    assert_eq!(escape_controls("plain text\tok"), "plain text\tok");
    assert_eq!(
        escape_controls("ok\n2026/12/07 10:00:00 [ERR] agent: forged"),
        "ok\\n2026/12/07 10:00:00 [ERR] agent: forged"
    );
    assert_eq!(
        escape_controls("a\rb\u{1b}[2Kc\u{7f}\u{9b}\u{2028}"),
        "a\\rb\\u{1b}[2Kc\\u{7f}\\u{9b}\\u{2028}"
    );
}

/// A plugin whose `serf_handle` calls the host function its input names with arguments from
/// its input: byte 0 picks the function, then three little-endian i32s. Whatever the guest
/// passes, the host answers with a status and neither traps nor panics.
const CALLER: &str = r#"(module
    (import "serf" "log" (func $log (param i32 i32 i32) (result i32)))
    (import "serf" "set_error" (func $set_error (param i32 i32) (result i32)))
    (import "serf" "respond" (func $respond (param i32 i32) (result i32)))
    (import "serf" "members" (func $members (param i32 i32) (result i32)))
    (import "serf" "fire_event" (func $fire_event (param i32 i32) (result i32)))
    (import "serf" "query" (func $query (param i32 i32) (result i32)))
    (import "serf" "job_start" (func $job_start (param i32 i32) (result i32)))
    (import "serf" "job_status" (func $job_status (param i32 i32 i32) (result i32)))
    (import "serf" "job_kill" (func $job_kill (param i32) (result i32)))
    (import "serf" "job_reap" (func $job_reap (param i32) (result i32)))
    (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
    (memory (export "memory") 2)
    (func (export "serf_plugin_abi_v1"))
    (func (export "serf_input_buffer") (param i32) (result i32) i32.const 1024)
    (func (export "serf_init") (param i32 i32) (result i32) i32.const 0)
    (func (export "serf_job") (param i32 i32) (result i32) i32.const 0)
    (func (export "serf_handle") (param $p i32) (param $n i32) (result i32)
        (local $a i32) (local $b i32) (local $c i32)
        (if (i32.lt_u (local.get $n) (i32.const 13)) (then (return (i32.const 0))))
        (local.set $a (i32.load (i32.add (local.get $p) (i32.const 1))))
        (local.set $b (i32.load (i32.add (local.get $p) (i32.const 5))))
        (local.set $c (i32.load (i32.add (local.get $p) (i32.const 9))))
        (block $done (block $11 (block $10 (block $9 (block $8 (block $7 (block $6 (block $5
        (block $4 (block $3 (block $2 (block $1 (block $0
            (br_table $0 $1 $2 $3 $4 $5 $6 $7 $8 $9 $10 $11
                (i32.rem_u (i32.load8_u (local.get $p)) (i32.const 12))))
            (drop (call $log (local.get $a) (local.get $b) (local.get $c))) (br $done))
            (drop (call $set_error (local.get $a) (local.get $b))) (br $done))
            (drop (call $respond (local.get $a) (local.get $b))) (br $done))
            (drop (call $members (local.get $a) (local.get $b))) (br $done))
            (drop (call $fire_event (local.get $a) (local.get $b))) (br $done))
            (drop (call $query (local.get $a) (local.get $b))) (br $done))
            (drop (call $job_start (local.get $a) (local.get $b))) (br $done))
            (drop (call $job_status (local.get $a) (local.get $b) (local.get $c))) (br $done))
            (drop (call $job_kill (local.get $a))) (br $done))
            (drop (call $job_reap (local.get $a))) (br $done))
            (drop (call $random_get (local.get $a) (local.get $b))) (br $done))
            (drop (call $log (i32.const 2) (i32.add (local.get $p) (i32.const 13))
                (i32.sub (local.get $n) (i32.const 13)))))
        i32.const 0))"#;

/// Arguments that hit the edges: pointers into the input (whose rest is arbitrary bytes, so
/// requests decode garbage), at and past the end of memory, negative, huge.
fn argument() -> impl proptest::strategy::Strategy<Value = i32> {
    use proptest::prelude::*;
    prop_oneof![
        1037i32..1300,
        0i32..200,
        Just(131_072 - 16),
        Just(131_072),
        Just(i32::MAX),
        Just(-1),
        Just(i32::MIN),
        any::<i32>(),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
    #[test]
    fn host_functions_answer_any_guest_arguments_with_a_status(
        calls in proptest::collection::vec(
            (0u8..12, argument(), argument(), argument(), proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)),
            1..8,
        )
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let engine = Engine::new(None);
            let loaded = load(&engine, CALLER);
            let mut spec = spec(Limits::DEFAULT, BTreeMap::new());
            spec.grants.capabilities = super::Capabilities::all();
            let mut instance = start(&loaded, &spec).await.unwrap();
            for (op, a, b, c, rest) in calls {
                let mut input = vec![op];
                for value in [a, b, c] {
                    input.extend_from_slice(&value.to_le_bytes());
                }
                input.extend_from_slice(&rest);
                let query = (op == 2).then_some(QueryKey { ltime: 1, id: 7 });
                let outcome = instance.handle(&[], &input, query).await;
                proptest::prop_assert!(outcome.is_ok(), "op {op} ({a}, {b}, {c}): {outcome:?}");
            }
            Ok(())
        })?;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_lines_past_the_rate_limit_are_counted_across_traps_and_instances() {
    // Each event writes 300 lines to stdout and then traps.
    let wat = plugin(
        1,
        "(data (i32.const 64) \"line\\n\")",
        "(i32.store (i32.const 0) (i32.const 64))
         (i32.store (i32.const 4) (i32.const 5))
         (block $done (loop $again
            (br_if $done (i32.ge_u (local.get $i) (i32.const 300)))
            (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $again)))
         unreachable",
    );
    let engine = Engine::new(None);
    let loaded = load(&engine, &wat);
    let spec = spec(Limits::DEFAULT, BTreeMap::new());
    let rates = Arc::new(PluginRates::default());
    for _ in 0..2 {
        // A fresh instance after each trap, as the dispatcher starts one.
        let mut instance = start_with(&loaded, &spec, Arc::clone(&rates))
            .await
            .unwrap();
        let error = instance.handle(&[], b"burst", None).await.unwrap_err();
        assert!(matches!(error, CallError::Panicked(_)), "{error:?}");
    }
    // 100 lines a second for the plugin, not per instance: of 600 lines, 500 or more were
    // dropped (fewer only if the second rolled over between the bursts).
    let dropped = rates.refused_output_lines();
    assert!(dropped >= 400, "{dropped} dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_that_never_returns_is_cut_off_after_its_second() {
    // `serf_shutdown` logs 64 MiB texts forever.
    let wat = plugin(1040, "", "").replace(
        "(func (export \"serf_plugin_abi_v1\"))",
        "(func (export \"serf_plugin_abi_v1\"))
         (func (export \"serf_shutdown\")
            (loop $again
                (drop (call $log (i32.const 2) (i32.const 1048576) (i32.const 67108864)))
                (br $again)))",
    );
    let engine = Engine::new(None);
    let loaded = load(&engine, &wat);
    let limits = Limits {
        fuel_init: 1_000_000_000_000,
        event_timeout: Duration::from_secs(30),
        max_memory_bytes: 128 << 20,
        ..Limits::DEFAULT
    };
    let spec = spec(limits, BTreeMap::new());
    let instance = start(&loaded, &spec).await.unwrap();
    let started = Instant::now();
    instance.shutdown().await;
    let took = started.elapsed();
    assert!(
        took < super::instance::SHUTDOWN_TIMEOUT + DEADLINE_SLACK,
        "shutdown took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_a_job_needs_the_jobs_grant() {
    // Returns job_start's status as its own.
    let wat = r#"(module
        (import "serf" "job_start" (func $job_start (param i32 i32) (result i32)))
        (memory (export "memory") 1)
        (func (export "serf_plugin_abi_v1"))
        (func (export "serf_input_buffer") (param i32) (result i32) i32.const 1024)
        (func (export "serf_init") (param i32 i32) (result i32) i32.const 0)
        (func (export "serf_job") (param i32 i32) (result i32) i32.const 0)
        (func (export "serf_handle") (param i32 i32) (result i32)
            (call $job_start (i32.const 0) (i32.const 8))))"#;
    let engine = Engine::new(None);
    let loaded = load(&engine, wat);
    let mut instance = start(&loaded, &spec(Limits::DEFAULT, BTreeMap::new()))
        .await
        .unwrap();
    let error = instance.handle(&[], b"job", None).await.unwrap_err();
    assert_eq!(
        error,
        CallError::Refused {
            code: Status::Denied.code(),
            message: "no error text given".into()
        }
    );
}
