//! What one plugin module costs the agent, measured on the plugin runtime itself (no gossip,
//! no RPC): module size, compile time, cached load time, instance start-up, and the per-event
//! cost of a no-op user event and of an `upcase` query. Used to put Rust and Go plugins side by
//! side (docs/benchmarks.md).
//!
//! ```sh
//! cargo build --profile plugin --target wasm32-wasip1 -p noop -p upcase
//! bash plugin-sdk/go/build.sh          # Go plugins -> target/wasm32-wasip1/go/
//! cargo run --release -p serf-host --example plugin_bench -- \
//!     target/wasm32-wasip1/plugin/noop.wasm target/wasm32-wasip1/plugin/upcase.wasm \
//!     target/wasm32-wasip1/go/noop.wasm target/wasm32-wasip1/go/upcase.wasm
//! ```
//!
//! - *compile*: `Engine::new(None)` + `Engine::load` (cranelift, no cache), median of
//!   `PLUGIN_BENCH_COMPILE_REPS` (default 3).
//! - *cached load*: `Engine::load` on a fresh engine whose cache directory already holds the
//!   module, median of 10.
//! - *start*: `Instance::start` (store, WASI context, instantiation, `_initialize` if exported,
//!   `serf_init`), median and 99th percentile of `PLUGIN_BENCH_STARTS` (default 200); *start
//!   fuel* is the smallest `fuel_init` that still starts an instance (to 1 000 units).
//! - *events*: `Instance::handle` on one live instance, back to back, under the default limits
//!   (fuel metering on): `PLUGIN_BENCH_EVENTS` (default 20 000) after 1 000 warm-up calls.
//!   The user event (`deploy`, payload `v1`) is ignored by every example plugin; the query is
//!   `upcase foo`, which the upcase plugins answer with `FOO` (a response the harness accepts)
//!   and the no-op plugins ignore.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serf_core::QueryKey;
use serf_plugin_sdk::abi::{self, Envelope, Event, InitContext, Query, Status, UserEvent};
use serf_plugins::instance::{Instance, InstanceContext};
use serf_plugins::{Engine, EventFilter, HostServices, Limits, PluginSpec};

/// Takes every response, counting them.
#[derive(Default)]
struct AcceptResponses {
    responses: AtomicU64,
}

impl HostServices for AcceptResponses {
    fn respond(&self, _plugin: &str, _query: QueryKey, _payload: Vec<u8>) -> Result<(), Status> {
        self.responses.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// One module's figures.
struct Row {
    name: String,
    size_bytes: u64,
    compile: Duration,
    cached_load: Duration,
    start_p50: Duration,
    start_p99: Duration,
    start_fuel: u64,
    events: Vec<EventFigures>,
}

struct EventFigures {
    /// Share of the calls that sent a response (1 for an answered query, 0 otherwise).
    answered: f64,
    per_second: f64,
    p50: Duration,
    p99: Duration,
    fuel: u64,
}

fn env_count(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .with_context(|| format!("{name}={text} is not a count")),
        Err(_) => Ok(default),
    }
}

fn main() -> anyhow::Result<()> {
    let files: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    anyhow::ensure!(
        !files.is_empty(),
        "usage: plugin_bench PLUGIN.wasm... (see the header of host/examples/plugin_bench.rs)"
    );
    let compile_reps = env_count("PLUGIN_BENCH_COMPILE_REPS", 3)?;
    let starts = env_count("PLUGIN_BENCH_STARTS", 200)?;
    let events = env_count("PLUGIN_BENCH_EVENTS", 20_000)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot build the tokio runtime")?;
    let mut rows = Vec::new();
    for file in &files {
        anyhow::ensure!(
            file.exists(),
            "{} is missing (see the build commands in plugin_bench.rs)",
            file.display()
        );
        let row = runtime
            .block_on(measure(file, compile_reps, starts, events))
            .with_context(|| format!("measuring {}", file.display()))?;
        rows.push(row);
    }
    print_tables(&rows, compile_reps, starts, events);
    Ok(())
}

async fn measure(
    file: &Path,
    compile_reps: usize,
    starts: usize,
    events: usize,
) -> anyhow::Result<Row> {
    let bytes = std::fs::read(file)?;
    let name = file
        .parent()
        .and_then(Path::file_name)
        .map(|dir| {
            format!(
                "{}/{}",
                dir.to_string_lossy(),
                file.file_name().unwrap_or_default().to_string_lossy()
            )
        })
        .unwrap_or_else(|| file.display().to_string());

    let mut compiles = Vec::new();
    for _ in 0..compile_reps.max(1) {
        let begin = Instant::now();
        let engine = new_engine(None);
        engine.load(file, &bytes)?;
        compiles.push(begin.elapsed());
    }

    let cache = tempfile::tempdir()?;
    let cache_dir = cache.path().join("plugin-cache");
    let loaded = new_engine(Some(cache_dir.clone())).load(file, &bytes)?;
    let mut cached_loads = Vec::new();
    for _ in 0..10 {
        let engine = new_engine(Some(cache_dir.clone()));
        let begin = Instant::now();
        let again = engine.load(file, &bytes)?;
        cached_loads.push(begin.elapsed());
        anyhow::ensure!(
            again.from_cache,
            "the second load did not come from the cache"
        );
    }

    let spec = PluginSpec {
        name: "bench".into(),
        path: file.to_path_buf(),
        filter: EventFilter::all(),
        limits: Limits::DEFAULT,
        dirs: Default::default(),
        config: toml::Table::new(),
        grants: Default::default(),
    };
    let services = Arc::new(AcceptResponses::default());
    let context = Arc::new(InstanceContext {
        plugin: Arc::from("bench"),
        node: Arc::from("bench-node"),
        services: Arc::clone(&services) as Arc<dyn HostServices>,
        response_limit: 1024,
        rates: Arc::default(),
    });
    let init = abi::encode(&InitContext {
        abi: abi::ABI_VERSION,
        host: "serf/bench".into(),
        node: "bench-node".into(),
        plugin: "bench".into(),
        config: Default::default(),
    });
    let mut start_times = Vec::new();
    for _ in 0..starts.max(1) {
        let begin = Instant::now();
        let instance = Instance::start(&loaded, &spec, Arc::clone(&context), &init).await?;
        start_times.push(begin.elapsed());
        drop(instance);
    }

    // The smallest fuel_init that still starts an instance: what start-up burns, to 1 000.
    let (mut starved, mut enough) = (0, spec.limits.fuel_init);
    while enough - starved > 1_000 {
        let mut trial = spec.clone();
        trial.limits.fuel_init = starved + (enough - starved) / 2;
        match Instance::start(&loaded, &trial, Arc::clone(&context), &init).await {
            Ok(_) => enough = trial.limits.fuel_init,
            Err(_) => starved = trial.limits.fuel_init,
        }
    }

    let mut instance = Instance::start(&loaded, &spec, Arc::clone(&context), &init).await?;
    let user = abi::encode(&Envelope {
        v: abi::ABI_VERSION,
        seq: 1,
        event: Event::User(UserEvent {
            name: "deploy".into(),
            payload: b"v1".to_vec(),
            ltime: 1,
            coalesce: false,
        }),
    });
    let key = QueryKey { ltime: 1, id: 7 };
    let query = abi::encode(&Envelope {
        v: abi::ABI_VERSION,
        seq: 2,
        event: Event::Query(Query {
            id: key.id,
            name: "upcase".into(),
            payload: b"foo".to_vec(),
            ltime: key.ltime,
            source_node: "bench-node".into(),
            deadline_ms: u64::MAX,
        }),
    });
    let mut figures = Vec::new();
    for (envelope, query_key) in [(&user, None), (&query, Some(key))] {
        for _ in 0..1_000 {
            instance.handle(&[], envelope, query_key).await?;
        }
        let mut latencies = Vec::with_capacity(events);
        let mut fuel = 0;
        let responses_before = services.responses.load(Ordering::Relaxed);
        let begin = Instant::now();
        for _ in 0..events.max(1) {
            let call = Instant::now();
            fuel = instance.handle(&[], envelope, query_key).await?.fuel;
            latencies.push(call.elapsed());
        }
        let total = begin.elapsed();
        let responses = services.responses.load(Ordering::Relaxed) - responses_before;
        latencies.sort();
        figures.push(EventFigures {
            answered: responses as f64 / latencies.len() as f64,
            per_second: latencies.len() as f64 / total.as_secs_f64(),
            p50: quantile(&latencies, 0.5),
            p99: quantile(&latencies, 0.99),
            fuel,
        });
    }
    instance.shutdown().await;

    compiles.sort();
    cached_loads.sort();
    start_times.sort();
    Ok(Row {
        name,
        size_bytes: bytes.len() as u64,
        compile: quantile(&compiles, 0.5),
        cached_load: quantile(&cached_loads, 0.5),
        start_p50: quantile(&start_times, 0.5),
        start_p99: quantile(&start_times, 0.99),
        start_fuel: enough,
        events: figures,
    })
}

/// The agent's engine (fuel metering on, as in production).
fn new_engine(cache_dir: Option<PathBuf>) -> Engine {
    Engine::new(cache_dir)
}

/// The `q` quantile of sorted values (nearest rank).
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(duration: Duration) -> String {
    format!("{:.3} ms", duration.as_secs_f64() * 1e3)
}

fn us(duration: Duration) -> String {
    format!("{:.2} µs", duration.as_secs_f64() * 1e6)
}

fn print_tables(rows: &[Row], compile_reps: usize, starts: usize, events: usize) {
    println!(
        "## Load and start (compile: median of {compile_reps}; cached load: median of 10; start: {starts} starts)\n"
    );
    println!(
        "| module | size | compile (uncached) | cached load | start p50 | start p99 | start fuel |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        println!(
            "| {} | {} B | {} | {} | {} | {} | {} |",
            row.name,
            row.size_bytes,
            ms(row.compile),
            ms(row.cached_load),
            ms(row.start_p50),
            ms(row.start_p99),
            row.start_fuel
        );
    }
    println!(
        "\n## Per event ({events} calls of Instance::handle each, after 1000 warm-up calls)\n"
    );
    println!("| module | event | answered | events/s | p50 | p99 | fuel/event |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for row in rows {
        for (label, figures) in ["user event (ignored)", "query upcase foo"]
            .iter()
            .zip(&row.events)
        {
            println!(
                "| {} | {label} | {:.0} % | {:.0} | {} | {} | {} |",
                row.name,
                figures.answered * 100.0,
                figures.per_second,
                us(figures.p50),
                us(figures.p99),
                figures.fuel
            );
        }
    }
}
