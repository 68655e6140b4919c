//! Effects (ABI v1.2) through a running plugin host: hostile guests against each limit (a
//! flood of HTTP requests, a huge value, endless keys, a tick every microsecond), ticks through
//! the queue, and what `serf info` shows. Another plugin beside them must not notice.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use serf_plugin_sdk::abi::Status;

use super::effects::{EffectGrants, EffectHost, FileHttp, FileMetrics, FileState};
use super::{Engine, EventFilter, Grants, HostServices, Limits, PluginHost, PluginSpec};
use serf_core::SerfLimits;
use serf_core::{self as serf, QueryKey};

struct Services(Arc<EffectHost>);

impl HostServices for Services {
    fn respond(&self, _: &str, _: QueryKey, _: Vec<u8>) -> Result<(), Status> {
        Ok(())
    }

    fn effects(&self) -> Option<&Arc<EffectHost>> {
        Some(&self.0)
    }
}

/// A plugin importing every effect, whose `serf_handle` runs `handle` (locals `$i`, `$r`).
/// Memory: the key `k` at 0, scratch from 64, the input buffer at 65536, 4 MiB in all.
fn plugin(handle: &str) -> Vec<u8> {
    let text = format!(
        r#"(module
        (import "serf" "http_request" (func $http (param i32 i32 i32 i32) (result i32)))
        (import "serf" "state_get" (func $get (param i32 i32 i32 i32) (result i32)))
        (import "serf" "state_set" (func $set (param i32 i32 i32 i32) (result i32)))
        (import "serf" "set_tick" (func $tick (param i64) (result i32)))
        (import "serf" "metric_define" (func $define (param i32 i32) (result i32)))
        (import "serf" "metric_record" (func $record (param i32 f64) (result i32)))
        (memory (export "memory") 64)
        (data (i32.const 0) "k")
        (data (i32.const 256) "{http}")
        (func (export "serf_plugin_abi_v1"))
        (func (export "serf_input_buffer") (param i32) (result i32) i32.const 65536)
        (func (export "serf_init") (param i32 i32) (result i32) i32.const 0)
        (func (export "serf_handle") (param i32 i32) (result i32)
            (local $i i32) (local $r i32)
            {handle}
            i32.const 0))"#,
        http = http_request_bytes()
            .iter()
            .map(|b| format!("\\{b:02x}"))
            .collect::<String>(),
    );
    wat::parse_str(text).expect("test WAT parses")
}

/// The encoded request the flood sends: a POST to a loopback port nobody listens on.
fn http_request_bytes() -> Vec<u8> {
    serf_plugin_sdk::abi::encode(&serf_plugin_sdk::abi::HttpRequest {
        method: "POST".into(),
        url: "http://127.0.0.1:9/".into(),
        body: b"{}".to_vec(),
        ..Default::default()
    })
}

fn grants(http: bool, state: Option<(u64, u64)>, tick: Option<Duration>) -> Grants {
    let file_http = FileHttp {
        allow: vec!["http://127.0.0.1:9".into()],
        timeout: Some(Duration::from_millis(500)),
        max_response_kib: None,
        max_concurrent: None,
        per_second: Some(5),
    };
    let file_state = state.map(|(max_bytes, max_keys)| FileState {
        max_bytes: Some(max_bytes),
        max_keys: Some(max_keys),
        max_value_bytes: None,
    });
    let effects: EffectGrants = super::effects::resolve(
        http.then_some(&file_http),
        file_state.as_ref(),
        tick,
        Some(&FileMetrics::default()),
    )
    .expect("valid grants");
    Grants {
        effects,
        ..Grants::default()
    }
}

fn spec(name: &str, dir: &std::path::Path, wasm: &[u8], grants: Grants) -> PluginSpec {
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, wasm).unwrap();
    PluginSpec {
        name: name.into(),
        path,
        filter: EventFilter::all(),
        limits: Limits {
            queue_capacity: NonZeroUsize::new(64).unwrap(),
            max_consecutive_traps: 1000,
            ..Limits::DEFAULT
        },
        dirs: BTreeMap::new(),
        config: toml::Table::new(),
        grants,
    }
}

struct Harness {
    runtime: tokio::runtime::Runtime,
    host: Arc<PluginHost>,
    effects: Arc<EffectHost>,
}

impl Harness {
    /// The plugins of `specs` and a bystander (`noop`, which handles every event) running.
    fn start(dir: &std::path::Path, mut specs: Vec<PluginSpec>) -> Harness {
        specs.push(spec("noop", dir, &plugin(""), Grants::default()));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let effects = EffectHost::new(None);
        let host = runtime.block_on(PluginHost::start(
            Engine::new(None),
            specs,
            "node",
            SerfLimits::SERF,
            Arc::new(Services(Arc::clone(&effects))),
            runtime.handle(),
        ));
        let _guard = runtime.enter();
        super::timers::spawn(&effects, &host);
        Harness {
            runtime,
            host,
            effects,
        }
    }

    fn send(&self, n: usize) {
        for i in 0..n {
            self.host.dispatch(&serf::Event::User(serf::UserEvent {
                ltime: i as u64,
                name: "go".into(),
                payload: Vec::new(),
                coalesce: false,
            }));
        }
    }

    /// Waits until the bystander and `plugin` have handled or failed `n` events.
    fn settle(&self, plugin: &str, n: u64) {
        serf_testkit::wait_until("the events", || {
            let stats = self.host.stats();
            let of = |name: &str| stats.iter().find(|s| s.name == name).unwrap().clone();
            let (p, noop) = (of(plugin), of("noop"));
            noop.handled >= n && p.handled + p.errors + p.traps >= n
        });
    }

    fn stat(&self, plugin: &str, key: &str) -> String {
        let stats = self.host.stats();
        let stats = stats.iter().find(|s| s.name == plugin).unwrap();
        stats
            .effects
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {key} in {:?}", stats.effects))
    }

    fn number(&self, plugin: &str, key: &str) -> u64 {
        self.stat(plugin, key).parse().unwrap()
    }

    fn stop(self) {
        self.runtime.block_on(self.host.shutdown());
        let noop = self
            .host
            .stats()
            .into_iter()
            .find(|s| s.name == "noop")
            .unwrap();
        assert_eq!((noop.errors, noop.traps, noop.dropped), (0, 0, 0));
    }
}

/// A loop of `count` calls of `call` (which leaves an i32 status on the stack).
fn repeat(count: u32, call: &str) -> String {
    format!(
        "(block $done (loop $again
            {call} local.set $r
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br_if $done (i32.ge_u (local.get $i) (i32.const {count})))
            br $again))"
    )
}

#[test]
fn a_flood_of_http_requests_is_rate_limited_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let len = http_request_bytes().len();
    let flood = plugin(&repeat(
        3000,
        &format!(
            "(call $http (i32.const 256) (i32.const {len}) (i32.const 4096) (i32.const 4096))"
        ),
    ));
    let denied = plugin(&repeat(
        10,
        &format!(
            "(call $http (i32.const 256) (i32.const {len}) (i32.const 4096) (i32.const 4096))"
        ),
    ));
    let harness = Harness::start(
        dir.path(),
        vec![
            spec("flood", dir.path(), &flood, grants(true, None, None)),
            spec("nohttp", dir.path(), &denied, grants(false, None, None)),
        ],
    );
    harness.send(2);
    harness.settle("flood", 2);
    harness.settle("nohttp", 2);
    assert_eq!(harness.number("flood", "http_calls"), 6000);
    // At most `per_second` requests a second got as far as a connection; none succeeded.
    assert!(harness.number("flood", "http_failed") == 6000);
    assert_eq!(harness.number("flood", "http_in_flight"), 0);
    assert_eq!(harness.number("nohttp", "http_denied"), 20);
    harness.stop();
}

#[test]
fn a_huge_value_and_endless_keys_hit_the_limits_and_the_quota() {
    let dir = tempfile::tempdir().unwrap();
    // A 2 MiB value: refused before it is read.
    let huge =
        plugin("(drop (call $set (i32.const 0) (i32.const 1) (i32.const 64) (i32.const 2097152)))");
    // Keys 0, 1, 2, ... (four bytes at 0) until the fuel runs out: the quota stops them at 100.
    let keys = plugin(&repeat(
        1_000_000,
        "(i32.store (i32.const 0) (local.get $i))
         (call $set (i32.const 0) (i32.const 4) (i32.const 64) (i32.const 8))",
    ));
    let harness = Harness::start(
        dir.path(),
        vec![
            spec(
                "huge",
                dir.path(),
                &huge,
                grants(false, Some((1 << 20, 10_000)), None),
            ),
            spec(
                "keys",
                dir.path(),
                &keys,
                grants(false, Some((1 << 20, 100)), None),
            ),
        ],
    );
    harness.send(1);
    harness.settle("huge", 1);
    harness.settle("keys", 1);
    assert_eq!(harness.number("huge", "state_failed"), 1);
    let store = harness.effects.plugin("keys").store().unwrap();
    assert_eq!(store.totals().1, 100, "the quota holds");
    assert!(harness.number("keys", "state_failed") > 1000);
    assert_eq!(harness.number("keys", "state_keys"), 100);
    harness.stop();
}

#[test]
fn a_tick_every_microsecond_is_refused_and_ticks_never_pile_up() {
    let dir = tempfile::tempdir().unwrap();
    // Asks for a 1 ms and a negative tick (both refused), then burns time on every event,
    // ticks included, so that ticks fall due while one waits.
    let greedy = plugin(&format!(
        "(drop (call $tick (i64.const 1)))
         (drop (call $tick (i64.const -1)))
         {}",
        repeat(100_000_000, "(i32.const 0)")
    ));
    let harness = Harness::start(
        dir.path(),
        vec![spec(
            "greedy",
            dir.path(),
            &greedy,
            grants(false, None, Some(Duration::from_millis(100))),
        )],
    );
    // The ticks come on their own; wait until several fell due during a slow one.
    serf_testkit::wait_until("coalesced ticks", || {
        harness.number("greedy", "ticks") >= 3 && harness.number("greedy", "ticks_coalesced") >= 1
    });
    assert!(
        harness.number("greedy", "tick_failed") >= 3,
        "each -1 is refused"
    );
    let depth = harness
        .host
        .stats()
        .into_iter()
        .find(|s| s.name == "greedy")
        .unwrap()
        .queue_depth;
    assert!(depth <= 1, "at most one tick queued, not {depth}");
    harness.stop();
}

#[test]
fn metrics_and_grants_show_in_the_plugins_stats() {
    let dir = tempfile::tempdir().unwrap();
    // Defines `sent` (a counter) at every event (the same id each time) and adds 2.5.
    let define = serf_plugin_sdk::abi::encode(&serf_plugin_sdk::abi::MetricDefine {
        name: "sent".into(),
        kind: "counter".into(),
        help: "h".into(),
    });
    let hex: String = define.iter().map(|b| format!("\\{b:02x}")).collect();
    let wasm = {
        let source = format!(
            r#"(module
            (import "serf" "metric_define" (func $define (param i32 i32) (result i32)))
            (import "serf" "metric_record" (func $record (param i32 f64) (result i32)))
            (memory (export "memory") 2)
            (data (i32.const 8192) "{hex}")
            (func (export "serf_plugin_abi_v1"))
            (func (export "serf_input_buffer") (param i32) (result i32) i32.const 16384)
            (func (export "serf_init") (param i32 i32) (result i32) i32.const 0)
            (func (export "serf_handle") (param i32 i32) (result i32)
                (drop (call $record (call $define (i32.const 8192) (i32.const {len})) (f64.const 2.5)))
                i32.const 0))"#,
            len = define.len()
        );
        wat::parse_str(source).unwrap()
    };
    let harness = Harness::start(
        dir.path(),
        vec![spec(
            "meter",
            dir.path(),
            &wasm,
            grants(true, Some((100, 10)), None),
        )],
    );
    harness.send(2);
    harness.settle("meter", 2);
    assert_eq!(harness.stat("meter", "metric.sent"), "counter 5");
    assert_eq!(harness.stat("meter", "http_allow"), "http://127.0.0.1:9");
    assert!(harness.stat("meter", "state_quota").contains("max_keys=10"));
    assert_eq!(harness.number("meter", "metric_calls"), 4);
    harness.stop();
}
