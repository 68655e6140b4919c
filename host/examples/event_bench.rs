//! User-event throughput and handler latency: our agent with a no-op WebAssembly plugin beside
//! Serf 0.9.4 (`/usr/bin/serf`) with a no-op shell handler, in one run.
//!
//! ```sh
//! cargo build --release -p serf-host
//! cargo build --profile plugin --target wasm32-wasip1 -p noop
//! taskset -c 1 cargo run --release -p serf-host --example event_bench -- [EVENTS] [SERF_EVENTS]
//! ```
//!
//! Both agents run as processes on loopback (127.0.0.201 and 127.0.0.202), each pinned to CPU 0
//! with `taskset` when it exists, so "per core" means one core; run the client itself on CPU 1. Events are fired over RPC with
//! coalescing off, pipelined on four connections. Throughput is events fired divided by the
//! time until the last handler invocation finished; our latency figures are the agent's own
//! (from receiving the event to the plugin returning), measured at a paced rate below
//! saturation so that they show handling time, not queueing.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serf_rpc::client::Client;

const CONNECTIONS: usize = 4;
const IN_FLIGHT_PER_CONNECTION: usize = 64;
const PACED_EVENTS: u64 = 20_000;
const PACED_RATE_PER_SECOND: u64 = 10_000;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let events: u64 = args.next().map_or(Ok(200_000), |a| a.parse())?;
    let serf_events: u64 = args.next().map_or(Ok(1_000), |a| a.parse())?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let ours = root.join("target/release/serf");
    let noop = root.join("target/wasm32-wasip1/plugin/noop.wasm");
    for (path, build) in [
        (&ours, "cargo build --release -p serf-host"),
        (
            &noop,
            "cargo build --profile plugin --target wasm32-wasip1 -p noop",
        ),
    ] {
        anyhow::ensure!(
            path.exists(),
            "{} is missing: run `{build}`",
            path.display()
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "machine: {} cpus; agents pinned to cpu 0: {}",
        num_cpus(),
        has_taskset()
    );
    println!();
    runtime.block_on(async {
        let ours_result = bench_ours(&ours, &noop, events).await?;
        let serf_result = bench_serf(serf_events).await?;
        println!("| agent | handler | events | seconds | events/s | p50 | p99 |");
        println!("|---|---|---:|---:|---:|---:|---:|");
        println!(
            "| this agent | noop.wasm plugin | {} | {:.3} | {:.0} | {} | {} |",
            ours_result.events,
            ours_result.elapsed.as_secs_f64(),
            ours_result.rate(),
            ours_result.p50,
            ours_result.p99
        );
        println!(
            "| serf 0.9.4 | `true` shell handler | {} | {:.3} | {:.0} | {:.3}ms per event | |",
            serf_result.events,
            serf_result.elapsed.as_secs_f64(),
            serf_result.rate(),
            serf_result.elapsed.as_secs_f64() * 1000.0 / serf_result.events as f64
        );
        println!();
        println!("speed-up: {:.0}x", ours_result.rate() / serf_result.rate());
        anyhow::Ok(())
    })
}

struct Outcome {
    events: u64,
    elapsed: Duration,
    p50: String,
    p99: String,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
}

/// A child process killed when dropped.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn has_taskset() -> bool {
    Command::new("taskset").arg("-V").output().is_ok()
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn spawn_pinned(program: &Path, args: &[String], dir: &Path) -> anyhow::Result<Agent> {
    let mut command = if has_taskset() {
        let mut command = Command::new("taskset");
        command.arg("-c").arg("0").arg(program);
        command
    } else {
        Command::new(program)
    };
    let log = std::fs::File::create(dir.join("agent.log"))?;
    let child = command
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    Ok(Agent(child))
}

async fn connect(addr: &str) -> anyhow::Result<Client> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match Client::connect(addr).await {
            Ok(client) => return Ok(client),
            Err(error) if Instant::now() > deadline => return Err(error.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Fires `events` user events named `name` over `CONNECTIONS` pipelined connections.
async fn flood(addr: &str, name: &'static str, events: u64) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for connection in 0..CONNECTIONS as u64 {
        let client = Arc::new(connect(addr).await?);
        let share =
            events / CONNECTIONS as u64 + u64::from(connection < events % CONNECTIONS as u64);
        tasks.spawn(async move {
            let mut in_flight = tokio::task::JoinSet::new();
            for _ in 0..share {
                if in_flight.len() >= IN_FLIGHT_PER_CONNECTION {
                    in_flight.join_next().await.expect("non-empty")??;
                }
                let client = Arc::clone(&client);
                in_flight.spawn(async move { client.user_event(name, None, false).await });
            }
            while let Some(result) = in_flight.join_next().await {
                result??;
            }
            anyhow::Ok(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    Ok(())
}

async fn plugin_stat(client: &Client, plugin: &str, key: &str) -> anyhow::Result<String> {
    let stats = client.stats().await?;
    stats
        .get(&format!("plugin:{plugin}"))
        .and_then(|section| section.get(key))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no {key} for plugin {plugin}"))
}

async fn wait_running(client: &Client, plugin: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let state = plugin_stat(client, plugin, "state").await?;
        if state == "running" {
            return Ok(());
        }
        anyhow::ensure!(
            !state.starts_with("failed") && Instant::now() < deadline,
            "plugin {plugin} is {state}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_handled(client: &Client, plugin: &str, events: u64) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let handled: u64 = plugin_stat(client, plugin, "handled").await?.parse()?;
        if handled >= events {
            return Ok(Instant::now());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {handled} of {events} handled"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn bench_ours(serf: &Path, noop: &Path, events: u64) -> anyhow::Result<Outcome> {
    let dir = tempfile::tempdir()?;
    let capacity = events.max(PACED_EVENTS) + 1;
    let config = format!(
        "node_name = \"bench\"\nbind = \"127.0.0.201\"\nrpc_addr = \"127.0.0.201:7373\"\n\
         data_dir = \"data\"\nlog_level = \"warn\"\nuser_event_size_limit = 512\n\
         [plugins.flood]\npath = \"{noop}\"\nevents = \"user:flood\"\nqueue_capacity = {capacity}\n\
         [plugins.paced]\npath = \"{noop}\"\nevents = \"user:paced\"\nqueue_capacity = {capacity}\n",
        noop = noop.display()
    );
    std::fs::write(dir.path().join("serf.toml"), config)?;
    let args = vec!["agent".to_owned(), "-config-file=serf.toml".to_owned()];
    let _agent = spawn_pinned(serf, &args, dir.path())?;
    let addr = "127.0.0.201:7373";
    let client = connect(addr).await?;
    // Plugins load in the background: measure once both run.
    for plugin in ["flood", "paced"] {
        wait_running(&client, plugin).await?;
    }

    // Latency at a rate the agent sustains easily.
    let paced = connect(addr).await?;
    let interval = Duration::from_secs(1) / PACED_RATE_PER_SECOND as u32;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for _ in 0..PACED_EVENTS {
        ticker.tick().await;
        paced.user_event("paced", None, false).await?;
    }
    wait_handled(&client, "paced", PACED_EVENTS).await?;
    let p50 = plugin_stat(&client, "paced", "latency_p50").await?;
    let p99 = plugin_stat(&client, "paced", "latency_p99").await?;
    println!(
        "this agent, {PACED_EVENTS} events at {PACED_RATE_PER_SECOND}/s: p50 {p50}, p99 {p99}"
    );

    // Throughput: as fast as the RPC clients can fire.
    let started = Instant::now();
    flood(addr, "flood", events).await?;
    let finished = wait_handled(&client, "flood", events).await?;
    let dropped = plugin_stat(&client, "flood", "dropped").await?;
    println!(
        "this agent, {events} events flooded: {:.3}s, {dropped} dropped",
        (finished - started).as_secs_f64()
    );
    Ok(Outcome {
        events,
        elapsed: finished - started,
        p50,
        p99,
    })
}

async fn bench_serf(events: u64) -> anyhow::Result<Outcome> {
    let serf = PathBuf::from("/usr/bin/serf");
    anyhow::ensure!(
        serf.exists(),
        "/usr/bin/serf is missing: apt-get install -y serf"
    );
    let dir = tempfile::tempdir()?;
    let count = dir.path().join("count");
    let args = vec![
        "agent".to_owned(),
        "-node=serf-bench".to_owned(),
        "-bind=127.0.0.202:7946".to_owned(),
        "-rpc-addr=127.0.0.202:7373".to_owned(),
        "-log-level=warn".to_owned(),
        format!("-event-handler=user:flood=echo >> {}", count.display()),
    ];
    let _agent = spawn_pinned(&serf, &args, dir.path())?;
    let addr = "127.0.0.202:7373";
    connect(addr).await?;
    let started = Instant::now();
    flood(addr, "flood", events).await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let finished = loop {
        let lines =
            std::fs::read(&count).map_or(0, |bytes| bytes.iter().filter(|&&b| b == b'\n').count());
        if lines as u64 >= events {
            break Instant::now();
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "serf ran {lines} of {events} handlers"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    println!(
        "serf 0.9.4, {events} events flooded: {:.3}s",
        (finished - started).as_secs_f64()
    );
    Ok(Outcome {
        events,
        elapsed: finished - started,
        p50: String::new(),
        p99: String::new(),
    })
}
