//! The per-call cost of a plugin's durable state (ABI v1.2): `state_set` and `state_get`
//! through the host calls of a live instance, against the same operations on the store
//! directly (redb on disk, one committed transaction per set). For docs/benchmarks.md.
//!
//! ```sh
//! cargo run --release -p serf-host --example state_bench
//! ```
//!
//! A WAT plugin does `STATE_BENCH_CALLS` (default 2 000) calls of one kind per event, each on
//! its own key (`k` + a 4-byte counter) with an 8-byte value; the figure is the event's time
//! divided by the calls. The store lives in a temporary directory on the working disk.
#![allow(clippy::print_stdout)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serf_core::QueryKey;
use serf_plugin_sdk::abi::{self, InitContext, Status};
use serf_plugins::effects::{self, EffectHost, FileState};
use serf_plugins::instance::{Instance, InstanceContext};
use serf_plugins::{Engine, EventFilter, Grants, HostServices, Limits, PluginSpec};

struct Services(Arc<EffectHost>);

impl HostServices for Services {
    fn respond(&self, _: &str, _: QueryKey, _: Vec<u8>) -> Result<(), Status> {
        Ok(())
    }

    fn effects(&self) -> Option<&Arc<EffectHost>> {
        Some(&self.0)
    }
}

/// `serf_handle` makes `calls` calls of `$set` or `$get` (per `op`), key `k<i>` at 0.
fn module(op: &str, calls: u32) -> String {
    let call = match op {
        "set" => "(drop (call $set (i32.const 0) (i32.const 5) (i32.const 64) (i32.const 8)))",
        _ => "(drop (call $get (i32.const 0) (i32.const 5) (i32.const 64) (i32.const 64)))",
    };
    format!(
        r#"(module
        (import "serf" "state_get" (func $get (param i32 i32 i32 i32) (result i32)))
        (import "serf" "state_set" (func $set (param i32 i32 i32 i32) (result i32)))
        (memory (export "memory") 2)
        (data (i32.const 0) "k")
        (func (export "serf_plugin_abi_v1"))
        (func (export "serf_input_buffer") (param i32) (result i32) i32.const 4096)
        (func (export "serf_init") (param i32 i32) (result i32) i32.const 0)
        (func (export "serf_handle") (param i32 i32) (result i32)
            (local $i i32)
            (block $done (loop $again
                (i32.store (i32.const 1) (local.get $i))
                {call}
                (local.set $i (i32.add (local.get $i) (i32.const 1)))
                (br_if $done (i32.ge_u (local.get $i) (i32.const {calls})))
                br $again))
            i32.const 0))"#
    )
}

async fn through_the_guest(dir: &Path, op: &str, calls: u32) -> anyhow::Result<Duration> {
    let effects = EffectHost::new(Some(dir));
    let engine = Engine::new(None);
    let bytes = wat::parse_str(module(op, calls))?;
    let loaded = engine.load(Path::new("bench.wasm"), &bytes)?;
    let grants = Grants {
        effects: effects::resolve(
            None,
            Some(&FileState {
                max_keys: Some(u64::from(calls) + 1),
                ..FileState::default()
            }),
            None,
            None,
        )
        .map_err(|(key, value, reason)| anyhow::anyhow!("{key} = {value}: {reason}"))?,
        ..Grants::default()
    };
    let spec = PluginSpec {
        name: "bench".into(),
        path: "bench.wasm".into(),
        filter: EventFilter::all(),
        limits: Limits {
            event_timeout: Duration::from_secs(600),
            fuel_per_event: u64::MAX / 2,
            ..Limits::DEFAULT
        },
        dirs: Default::default(),
        config: toml::Table::new(),
        grants,
    };
    let context = Arc::new(InstanceContext {
        plugin: Arc::from("bench"),
        node: Arc::from("bench-node"),
        services: Arc::new(Services(Arc::clone(&effects))) as Arc<dyn HostServices>,
        response_limit: 1024,
        rates: Arc::default(),
    });
    let init = abi::encode(&InitContext {
        abi: abi::ABI_VERSION,
        host: "bench".into(),
        node: "bench-node".into(),
        plugin: "bench".into(),
        config: Default::default(),
    });
    let mut instance = Instance::start(&loaded, &spec, context, &init).await?;
    if op == "get" {
        // The keys to read: the same ones a set run writes.
        let store = effects.plugin("bench").store()?;
        let grant = spec.grants.effects.state.expect("granted");
        for i in 0..calls {
            let mut key = b"k".to_vec();
            key.extend_from_slice(&i.to_le_bytes());
            store.set(&grant, &key, &[7; 8])?;
        }
    }
    let started = Instant::now();
    instance.handle(&[], &[0x80], None).await?;
    Ok(started.elapsed() / calls)
}

fn direct(dir: &Path, calls: u32) -> anyhow::Result<(Duration, Duration)> {
    let store = effects::EffectHost::new(Some(dir))
        .plugin("direct")
        .store()?;
    let grant = serf_plugins::state::StateGrant {
        max_bytes: u64::MAX,
        max_keys: u64::MAX,
        max_value_bytes: 1 << 20,
    };
    let key = |i: u32| {
        let mut key = b"k".to_vec();
        key.extend_from_slice(&i.to_le_bytes());
        key
    };
    let started = Instant::now();
    for i in 0..calls {
        store.set(&grant, &key(i), &[7; 8])?;
    }
    let set = started.elapsed() / calls;
    let started = Instant::now();
    for i in 0..calls {
        store.get(&key(i))?;
    }
    Ok((set, started.elapsed() / calls))
}

fn main() -> anyhow::Result<()> {
    let calls: u32 = std::env::var("STATE_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir_in(".")?;
    let (set_direct, get_direct) = direct(&dir.path().join("direct"), calls)?;
    let set_guest = runtime.block_on(through_the_guest(&dir.path().join("set"), "set", calls))?;
    let get_guest = runtime.block_on(through_the_guest(&dir.path().join("get"), "get", calls))?;
    println!("calls per run: {calls}");
    println!("| operation | redb directly | through the host call | overhead |");
    println!("|---|---|---|---|");
    for (name, direct, guest) in [
        ("state_set (8-byte value, committed)", set_direct, set_guest),
        ("state_get (8-byte value)", get_direct, get_guest),
    ] {
        println!(
            "| {name} | {direct:?} | {guest:?} | {:?} |",
            guest.saturating_sub(direct)
        );
    }
    Ok(())
}
