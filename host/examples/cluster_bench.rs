//! Gossip benchmarks: cluster convergence, failure detection and idle footprint of our agent
//! beside Serf 0.9.4 (`/usr/bin/serf`), in one run.
//!
//! ```sh
//! cargo build --release -p serf-host --bins --examples
//! target/release/examples/cluster_bench [--reps 3] [--sizes 10,50] [--fail-size 10] \
//!     [--settle-secs 10] [--idle-secs 20] [--converge-only | --detect-only] [--seed N]
//! cargo build --profile plugin --target wasm32-wasip1 -p upcase
//! target/release/examples/cluster_bench --serf-layer [--reps 3] [--sizes 10,50]
//! ```
//!
//! Every agent is a real process on loopback with an address of its own (`127.<net>.0.<n>`,
//! gossip on port 7946, RPC on 7373; each cluster takes a fresh `<net>` from 150 upwards) and
//! the lan profile. Both kinds get the same flags (`-node`, `-bind`, `-rpc-addr`, `-join`,
//! `-log-level=warn`, `info` in the failure-detection cluster); our agent runs without plugins.
//!
//! - *Convergence*: the seed starts and answers RPC, then the other agents start back to back
//!   with `-join=<seed>`; the time runs from spawning the first joiner until every agent lists
//!   all N members as alive (RPC `members`, polled every 20 ms; agents already converged are
//!   polled again once at the end to confirm).
//! - *Failure detection*: in the cluster of `--fail-size` agents, after convergence and a short
//!   settling time and a random part of a probe interval (so that the kill lands at any
//!   phase of the agents' probe ticks; `--seed` replays the choice), one agent is killed with
//!   SIGKILL; the time runs until every other agent lists it as `failed`. Any other member
//!   seen as anything but alive counts as a false failure, and any failed probe of a live
//!   member after convergence (the "no acks received" line both kinds log at info) as a false
//!   suspicion.
//! - *Idle footprint*: VmRSS and CPU time (utime + stime) over an idle window, for one agent
//!   alone and per agent in the largest cluster, after `--settle-secs` of idling.
//!
//! - *Serf layer* (`--serf-layer`, a run of its own): clusters whose agents answer the query
//!   `upcase` (ours with the `upcase` plugin, Serf's with the handler `tr a-z A-Z`); after
//!   convergence, the bench subscribes to every agent's user events over RPC `stream`, fires
//!   [`EVENT_TRIALS`] user events (`-coalesce=false`) at the seed one second apart, and times
//!   each one's arrival at every agent (p50, p99 and max over agents). Then [`QUERY_TRIALS`]
//!   queries `upcase` with the default timeout, timing the last of the N responses and the end
//!   of the query (`done`).
//!
//! Children are killed by PID when their cluster is dropped (also on errors and panics).
#![allow(clippy::print_stdout)]

use std::collections::BTreeSet;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serf_rpc::client::Client;

const GOSSIP_PORT: u16 = 7946;
const RPC_PORT: u16 = 7373;
const FIRST_NET: u8 = 150;
const POLL_INTERVAL: Duration = Duration::from_millis(20);
const CONVERGE_LIMIT: Duration = Duration::from_secs(60);
const DETECT_LIMIT: Duration = Duration::from_secs(60);
const RPC_UP_LIMIT: Duration = Duration::from_secs(30);
const RPC_CALL_LIMIT: Duration = Duration::from_secs(2);
const SETTLE_BEFORE_KILL: Duration = Duration::from_secs(2);
/// Agents still not converged this long after the first joiner started are reported.
const SLOW_CONVERGENCE: Duration = Duration::from_secs(3);
const SERF: &str = "/usr/bin/serf";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Ours,
    Serf,
}

impl Kind {
    const BOTH: [Kind; 2] = [Kind::Ours, Kind::Serf];

    fn label(self) -> &'static str {
        match self {
            Kind::Ours => "this agent",
            Kind::Serf => "Serf 0.9.4",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Kind::Ours => "ours",
            Kind::Serf => "serf",
        }
    }
}

struct Options {
    reps: usize,
    sizes: Vec<usize>,
    fail_size: usize,
    settle: Duration,
    idle: Duration,
    /// Only the convergence measurement (no failure detection, no footprint).
    converge_only: bool,
    /// Only failure detection (in clusters of `fail_size`; no footprint).
    detect_only: bool,
    /// Seeds the kill phases.
    seed: u64,
    /// Only the Serf-layer measurements: user-event fan-out and query collection.
    serf_layer: bool,
}

fn parse_options() -> anyhow::Result<Options> {
    let mut options = Options {
        reps: 3,
        sizes: vec![10, 50],
        fail_size: 10,
        settle: Duration::from_secs(10),
        idle: Duration::from_secs(20),
        converge_only: false,
        detect_only: false,
        serf_layer: false,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg.trim_start_matches('-') == "converge-only" {
            options.converge_only = true;
            continue;
        }
        if arg.trim_start_matches('-') == "detect-only" {
            options.detect_only = true;
            continue;
        }
        if arg.trim_start_matches('-') == "serf-layer" {
            options.serf_layer = true;
            continue;
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
            None => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))
        };
        match flag.trim_start_matches('-') {
            "reps" => options.reps = value()?.parse()?,
            "sizes" => {
                options.sizes = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
            }
            "fail-size" => options.fail_size = value()?.parse()?,
            "settle-secs" => options.settle = Duration::from_secs(value()?.parse()?),
            "idle-secs" => options.idle = Duration::from_secs(value()?.parse()?),
            "seed" => options.seed = value()?.parse()?,
            _ => anyhow::bail!(
                "usage: cluster_bench [--reps N] [--sizes 10,50] [--fail-size 10] \
                 [--settle-secs 10] [--idle-secs 20] [--converge-only | --detect-only | --serf-layer] [--seed N]"
            ),
        }
    }
    anyhow::ensure!(options.reps >= 1, "--reps must be at least 1");
    anyhow::ensure!(
        [
            options.converge_only,
            options.detect_only,
            options.serf_layer
        ]
        .iter()
        .filter(|&&on| on)
        .count()
            <= 1,
        "--converge-only, --detect-only and --serf-layer exclude each other"
    );
    anyhow::ensure!(
        options.sizes.iter().all(|&n| (2..=250).contains(&n)),
        "cluster sizes must be between 2 and 250"
    );
    anyhow::ensure!(
        options.sizes.contains(&options.fail_size),
        "--fail-size must be one of --sizes"
    );
    Ok(options)
}

fn main() -> anyhow::Result<()> {
    let options = parse_options()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow::anyhow!("no workspace root"))?
        .to_path_buf();
    let ours = root.join("target/release/serf");
    anyhow::ensure!(
        ours.exists(),
        "{} is missing: run `cargo build --release -p serf-host --bins`",
        ours.display()
    );
    anyhow::ensure!(
        Path::new(SERF).exists(),
        "{SERF} is missing: apt-get install -y serf"
    );
    let logs = std::env::temp_dir().join(format!("cluster_bench-{}", std::process::id()));
    std::fs::create_dir_all(&logs)?;
    let bench = Bench {
        ours,
        logs,
        nets: Nets {
            next: FIRST_NET,
            held: Vec::new(),
        },
        clock_ticks: clock_ticks(),
    };
    println!("machine: {}", machine_line());
    println!(
        "this agent: {}",
        command_line(&bench.ours, &["version"])
            .lines()
            .next()
            .unwrap_or("?")
    );
    println!(
        "serf: `{SERF} version` prints {}, package {}",
        command_line(Path::new(SERF), &["version"])
            .lines()
            .next()
            .unwrap_or("?"),
        command_line(Path::new("dpkg-query"), &["-W", "-f=${Version}", "serf"])
    );
    println!(
        "logs of failed runs are kept under {}",
        bench.logs.display()
    );
    println!();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let logs = bench.logs.clone();
    if options.serf_layer {
        let upcase = root.join("target/wasm32-wasip1/plugin/upcase.wasm");
        anyhow::ensure!(
            upcase.exists(),
            "{} is missing: run `cargo build --profile plugin --target wasm32-wasip1 -p upcase`",
            upcase.display()
        );
        let results = runtime.block_on(run_serf_layer(bench, &options, &upcase))?;
        let _ = std::fs::remove_dir(&logs);
        println!();
        print_serf_layer(&options, &results);
        println!();
        println!("load average at the end: {}", load_average());
        return Ok(());
    }
    let results = runtime.block_on(run(bench, &options))?;
    // Only removed when no failed run kept its logs there.
    let _ = std::fs::remove_dir(&logs);
    println!();
    print_tables(&options, &results);
    println!();
    println!("load average at the end: {}", load_average());
    Ok(())
}

struct Bench {
    ours: PathBuf,
    logs: PathBuf,
    nets: Nets,
    clock_ticks: f64,
}

impl Bench {
    fn binary(&self, kind: Kind) -> &Path {
        match kind {
            Kind::Ours => &self.ours,
            Kind::Serf => Path::new(SERF),
        }
    }
}

#[derive(Default)]
struct Results {
    /// (size, kind) → one entry per repetition.
    convergence: Vec<(usize, Kind, Vec<Convergence>)>,
    detection: Vec<(Kind, Vec<Option<Detection>>)>,
    lone: Vec<(Kind, Vec<Footprint>)>,
    cluster: Vec<(Kind, Vec<Option<Footprint>>)>,
}

async fn run(mut bench: Bench, options: &Options) -> anyhow::Result<Results> {
    let mut results = Results::default();
    for &size in &options.sizes {
        for kind in Kind::BOTH {
            results.convergence.push((size, kind, Vec::new()));
        }
    }
    for kind in Kind::BOTH {
        results.detection.push((kind, Vec::new()));
        results.lone.push((kind, Vec::new()));
        results.cluster.push((kind, Vec::new()));
    }
    let largest = options.sizes.iter().copied().max().unwrap_or(0);
    println!("kill phases seeded with --seed {}", options.seed);
    let mut phases = StdRng::seed_from_u64(options.seed);
    for rep in 1..=options.reps {
        println!("== repetition {rep} of {}", options.reps);
        // Where in a probe interval the kill lands: the same for both kinds in one repetition.
        let kill_phase = Duration::from_millis(phases.random_range(0..1000));
        for kind in Kind::BOTH {
            if options.converge_only || options.detect_only {
                break;
            }
            let mut lone = Cluster::new(&mut bench, kind, 1)?;
            lone.start_seed(&bench).await?;
            let footprint = lone.footprint(&bench, options).await?;
            println!(
                "{} alone: RSS {:.1} MiB, CPU {:.3} s in {} s",
                kind.label(),
                footprint.rss_mean_kib / 1024.0,
                footprint.cpu_mean_secs,
                options.idle.as_secs()
            );
            push(&mut results.lone, kind, footprint);
        }
        for &size in &options.sizes {
            if options.detect_only && size != options.fail_size {
                continue;
            }
            for kind in Kind::BOTH {
                let mut cluster = Cluster::new(&mut bench, kind, size)?;
                if size == options.fail_size && !options.converge_only {
                    // Info logs show every failed probe: false suspicions are counted.
                    cluster.log_level = "info";
                }
                let convergence = cluster.converge(&bench).await?;
                println!(
                    "{} agents, {}: {}",
                    size,
                    kind.label(),
                    convergence.describe()
                );
                let converged = convergence.elapsed.is_some();
                if let Some((_, _, runs)) = results
                    .convergence
                    .iter_mut()
                    .find(|(s, k, _)| *s == size && *k == kind)
                {
                    runs.push(convergence);
                }
                if !converged {
                    cluster.keep_logs = true;
                }
                if options.converge_only {
                    continue;
                }
                if size == options.fail_size {
                    let detection = if converged {
                        let detection = cluster.detect_failure(kill_phase).await?;
                        println!(
                            "{} agents, {}, one killed: {}",
                            size,
                            kind.label(),
                            detection.describe()
                        );
                        if detection.all.is_none()
                            || detection.false_failures() > 0
                            || !detection.false_suspicions.is_empty()
                        {
                            cluster.keep_logs = true;
                        }
                        Some(detection)
                    } else {
                        None
                    };
                    push(&mut results.detection, kind, detection);
                }
                if size == largest && size != options.fail_size && !options.detect_only {
                    let footprint = if converged {
                        let footprint = cluster.footprint(&bench, options).await?;
                        println!(
                            "{} agents, {}, idle: RSS {:.1} MiB per agent, CPU {:.3} s per \
                             agent in {} s, still converged: {}, false statuses: {}",
                            size,
                            kind.label(),
                            footprint.rss_mean_kib / 1024.0,
                            footprint.cpu_mean_secs,
                            options.idle.as_secs(),
                            footprint.still_converged,
                            footprint.false_statuses
                        );
                        Some(footprint)
                    } else {
                        None
                    };
                    push(&mut results.cluster, kind, footprint);
                }
            }
        }
    }
    Ok(results)
}

fn push<T>(table: &mut [(Kind, Vec<T>)], kind: Kind, value: T) {
    if let Some((_, runs)) = table.iter_mut().find(|(k, _)| *k == kind) {
        runs.push(value);
    }
}

/// Hands out loopback /24s (`127.<net>.0.0`) whose first address is free.
///
/// Each net is also locked, as the test suite locks its nets (an exclusive lock on
/// `$TMPDIR/serf-test-nets/<net>.lock`, held until the benchmark exits), so that a test
/// run beside the benchmark never takes a net the benchmark uses, and the other way round.
struct Nets {
    next: u8,
    held: Vec<std::fs::File>,
}

impl Nets {
    fn take(&mut self) -> anyhow::Result<u8> {
        let dir = std::env::temp_dir().join("serf-test-nets");
        std::fs::create_dir_all(&dir)?;
        while self.next < 255 {
            let net = self.next;
            self.next += 1;
            let lock = std::fs::File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join(format!("{net}.lock")))?;
            match lock.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => continue,
                Err(std::fs::TryLockError::Error(error)) => return Err(error.into()),
            }
            let ip = Ipv4Addr::new(127, net, 0, 1);
            let free = TcpListener::bind((ip, GOSSIP_PORT)).is_ok()
                && UdpSocket::bind((ip, GOSSIP_PORT)).is_ok()
                && TcpListener::bind((ip, RPC_PORT)).is_ok();
            if free {
                self.held.push(lock);
                return Ok(net);
            }
        }
        anyhow::bail!("no free loopback net left from 127.{FIRST_NET}.0.0 upwards")
    }
}

struct Node {
    name: String,
    ip: Ipv4Addr,
    child: Child,
    log: PathBuf,
    client: Option<Arc<Client>>,
    killed: bool,
}

impl Node {
    fn rpc_addr(&self) -> String {
        SocketAddr::from((self.ip, RPC_PORT)).to_string()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the process is gone although we did not kill it.
    fn exited(&mut self) -> Option<String> {
        if self.killed {
            return None;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!(
                "{} (pid {}) exited with {status}; log tail:\n{}",
                self.name,
                self.pid(),
                log_tail(&self.log)
            )),
            _ => None,
        }
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(15);
    lines[start..]
        .iter()
        .map(|line| format!("    {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A name and a status, as one agent lists one member.
type Listing = Vec<(String, String)>;

/// The agents of one cluster; killed by PID when dropped.
struct Cluster {
    kind: Kind,
    net: u8,
    size: usize,
    dir: PathBuf,
    nodes: Vec<Node>,
    keep_logs: bool,
    /// Extra `serf agent` arguments for every agent.
    extra_args: Vec<String>,
    /// `-log-level` of every agent.
    log_level: &'static str,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.client = None;
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
        if self.keep_logs {
            println!("   logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Cluster {
    fn new(bench: &mut Bench, kind: Kind, size: usize) -> anyhow::Result<Cluster> {
        let net = bench.nets.take()?;
        let dir = bench.logs.join(format!("{}-{size}-net{net}", kind.tag()));
        std::fs::create_dir_all(&dir)?;
        Ok(Cluster {
            kind,
            net,
            size,
            dir,
            nodes: Vec::with_capacity(size),
            keep_logs: false,
            extra_args: Vec::new(),
            log_level: "warn",
        })
    }

    fn ip(&self, n: usize) -> Ipv4Addr {
        Ipv4Addr::new(127, self.net, 0, n as u8)
    }

    /// Spawns agent number `self.nodes.len() + 1`, joining the seed unless it is the seed.
    fn spawn_next(&mut self, bench: &Bench) -> anyhow::Result<()> {
        let n = self.nodes.len() + 1;
        let ip = self.ip(n);
        let name = format!("node{n}");
        let node_dir = self.dir.join(&name);
        std::fs::create_dir_all(&node_dir)?;
        let log = node_dir.join("agent.log");
        let mut args = vec![
            "agent".to_owned(),
            format!("-node={name}"),
            format!("-bind={ip}:{GOSSIP_PORT}"),
            format!("-rpc-addr={ip}:{RPC_PORT}"),
            format!("-log-level={}", self.log_level),
        ];
        if n > 1 {
            args.push(format!("-join={}:{GOSSIP_PORT}", self.ip(1)));
        }
        args.extend(self.extra_args.iter().cloned());
        let out = File::create(&log)?;
        let child = Command::new(bench.binary(self.kind))
            .args(&args)
            .current_dir(&node_dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        self.nodes.push(Node {
            name,
            ip,
            child,
            log,
            client: None,
            killed: false,
        });
        Ok(())
    }

    /// Starts the seed and waits until it answers RPC.
    async fn start_seed(&mut self, bench: &Bench) -> anyhow::Result<()> {
        self.spawn_next(bench)?;
        let deadline = Instant::now() + RPC_UP_LIMIT;
        loop {
            let replies = poll(&mut self.nodes, &[0]).await;
            if replies.iter().any(|(_, members)| members.is_some()) {
                return Ok(());
            }
            if let Some(exit) = self.nodes[0].exited() {
                self.keep_logs = true;
                anyhow::bail!("{} seed did not start: {exit}", self.kind.label());
            }
            if Instant::now() > deadline {
                self.keep_logs = true;
                anyhow::bail!(
                    "{} seed did not answer RPC within {RPC_UP_LIMIT:?}",
                    self.kind.label()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    fn exits(&mut self) -> Vec<String> {
        self.nodes.iter_mut().filter_map(Node::exited).collect()
    }

    async fn converge(&mut self, bench: &Bench) -> anyhow::Result<Convergence> {
        self.start_seed(bench).await?;
        let udp_errors = udp_receive_errors();
        let started = Instant::now();
        for _ in 1..self.size {
            self.spawn_next(bench)?;
        }
        let spawned = started.elapsed();
        let n = self.size;
        let names: Vec<String> = self.nodes.iter().map(|node| node.name.clone()).collect();
        let mut pending: Vec<usize> = (0..n).collect();
        let mut last: Vec<Option<Listing>> = vec![None; n];
        let mut done_at: Vec<Option<Duration>> = vec![None; n];
        let mut false_statuses = BTreeSet::new();
        let mut late: Option<Vec<(usize, String)>> = None;
        let deadline = started + CONVERGE_LIMIT;
        let mut rounds = 0_u32;
        loop {
            let round = Instant::now();
            rounds += 1;
            let replies = poll(&mut self.nodes, &pending).await;
            let now = Instant::now();
            for (i, members) in replies {
                let Some(members) = members else { continue };
                note_false(&mut false_statuses, i, &members, None);
                if alive(&members) == n {
                    pending.retain(|&j| j != i);
                    done_at[i] = Some(now - started);
                }
                last[i] = Some(members);
            }
            if late.is_none() && now - started >= SLOW_CONVERGENCE {
                late = Some(
                    pending
                        .iter()
                        .map(|&i| (i, lacking(&names, last[i].as_ref())))
                        .collect(),
                );
            }
            if pending.is_empty() {
                let all: Vec<usize> = (0..n).collect();
                for (i, members) in poll(&mut self.nodes, &all).await {
                    if let Some(members) = &members {
                        note_false(&mut false_statuses, i, members, None);
                    }
                    if members.as_ref().map(alive) != Some(n) {
                        pending.push(i);
                        done_at[i] = None;
                    }
                    last[i] = members;
                }
                if pending.is_empty() {
                    let mut slow = String::new();
                    for (i, lacked) in late.iter().flatten() {
                        slow.push_str(&format!(
                            "\n   {} listed all {n} alive only after {:.3} s; at {:.0} s it \
                             lacked {lacked}",
                            names[*i],
                            done_at[*i].unwrap_or_default().as_secs_f64(),
                            SLOW_CONVERGENCE.as_secs_f64()
                        ));
                    }
                    if !slow.is_empty() {
                        self.keep_logs = true;
                    }
                    return Ok(Convergence {
                        elapsed: done_at.iter().flatten().max().copied(),
                        spawned,
                        rounds,
                        false_statuses: false_statuses.len(),
                        udp_errors: udp_receive_errors().saturating_sub(udp_errors),
                        details: slow,
                    });
                }
            }
            let exits = self.exits();
            if !exits.is_empty() || now > deadline {
                let mut failure = if exits.is_empty() {
                    format!(
                        "not converged after {CONVERGE_LIMIT:?}: {} of {n} agents list {n} alive",
                        n - pending.len()
                    )
                } else {
                    format!("agents exited: {}", exits.join("; "))
                };
                for &i in &pending {
                    failure.push_str(&format!(
                        "\n   {} (pid {}) lacks {}",
                        names[i],
                        self.nodes[i].pid(),
                        lacking(&names, last[i].as_ref())
                    ));
                }
                for (i, lacked) in late.iter().flatten() {
                    failure.push_str(&format!(
                        "\n   at {:.0} s {} lacked {lacked}",
                        SLOW_CONVERGENCE.as_secs_f64(),
                        names[*i]
                    ));
                }
                if let Some(&i) = pending.first() {
                    failure.push_str(&format!(
                        "\n   log tail of {}:\n{}",
                        names[i],
                        log_tail(&self.nodes[i].log)
                    ));
                }
                self.keep_logs = true;
                return Ok(Convergence {
                    elapsed: None,
                    spawned,
                    rounds,
                    false_statuses: false_statuses.len(),
                    udp_errors: udp_receive_errors().saturating_sub(udp_errors),
                    details: failure,
                });
            }
            tokio::time::sleep_until((round + POLL_INTERVAL).into()).await;
        }
    }

    /// Kills the last agent, `kill_phase` after the settling time, and waits until every
    /// other one lists it as failed.
    async fn detect_failure(&mut self, kill_phase: Duration) -> anyhow::Result<Detection> {
        let n = self.nodes.len();
        let victim = n - 1;
        let victim_name = self.nodes[victim].name.clone();
        let observers: Vec<usize> = (0..victim).collect();
        let mut false_statuses = BTreeSet::new();
        let log_offsets: Vec<u64> = self
            .nodes
            .iter()
            .map(|node| std::fs::metadata(&node.log).map_or(0, |m| m.len()))
            .collect();
        let settle_until = Instant::now() + SETTLE_BEFORE_KILL;
        while Instant::now() < settle_until {
            let round = Instant::now();
            for (i, members) in poll(&mut self.nodes, &observers).await {
                if let Some(members) = members {
                    note_false(&mut false_statuses, i, &members, None);
                }
            }
            tokio::time::sleep_until((round + POLL_INTERVAL).into()).await;
        }
        tokio::time::sleep(kill_phase).await;
        let node = &mut self.nodes[victim];
        node.client = None;
        node.killed = true;
        node.child.kill()?;
        let killed = Instant::now();
        node.child.wait()?;
        let mut seen_failed: Vec<Option<Duration>> = vec![None; victim];
        let mut victim_statuses = BTreeSet::new();
        let deadline = killed + DETECT_LIMIT;
        loop {
            let round = Instant::now();
            let replies = poll(&mut self.nodes, &observers).await;
            let now = Instant::now();
            for (i, members) in replies {
                let Some(members) = members else { continue };
                note_false(&mut false_statuses, i, &members, Some(&victim_name));
                if let Some((_, status)) = members.iter().find(|(name, _)| *name == victim_name) {
                    victim_statuses.insert(status.clone());
                    if status == "failed" && seen_failed[i].is_none() {
                        seen_failed[i] = Some(now - killed);
                    }
                }
            }
            let exits = self.exits();
            let done = seen_failed.iter().all(Option::is_some);
            if done || !exits.is_empty() || now > deadline {
                let times: Vec<Duration> = seen_failed.iter().flatten().copied().collect();
                let false_suspicions = self.false_suspicions(&log_offsets, &victim_name);
                return Ok(Detection {
                    false_suspicions,
                    first: times.iter().min().copied(),
                    all: done.then(|| times.iter().max().copied()).flatten(),
                    detected_by: times.len(),
                    observers: victim,
                    false_statuses,
                    victim_statuses: victim_statuses.into_iter().collect(),
                    exits,
                });
            }
            tokio::time::sleep_until((round + POLL_INTERVAL).into()).await;
        }
    }

    /// Suspicions raised since `offsets` (each agent's log length at convergence) against
    /// members other than `victim`: the lines where a probe failed ("no acks received", in
    /// both kinds' info logs) that name another member.
    fn false_suspicions(&self, offsets: &[u64], victim: &str) -> Vec<String> {
        let names: BTreeSet<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
        let mut found = Vec::new();
        for (node, &offset) in self.nodes.iter().zip(offsets) {
            let Ok(text) = std::fs::read(&node.log) else {
                continue;
            };
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(text.len());
            for line in String::from_utf8_lossy(&text[start..]).lines() {
                if !line.contains("no acks received") {
                    continue;
                }
                let other = line
                    .split(|c: char| !c.is_ascii_alphanumeric())
                    .any(|token| token != victim && names.contains(token));
                if other {
                    found.push(format!("{}: {}", node.name, line.trim()));
                }
            }
        }
        found
    }

    /// RSS and CPU time per agent after `options.settle` of idling, over `options.idle`.
    async fn footprint(&mut self, bench: &Bench, options: &Options) -> anyhow::Result<Footprint> {
        for node in &mut self.nodes {
            node.client = None;
        }
        tokio::time::sleep(options.settle).await;
        let pids: Vec<u32> = self.nodes.iter().map(Node::pid).collect();
        let rss: Vec<f64> = pids
            .iter()
            .map(|&pid| rss_kib(pid))
            .collect::<anyhow::Result<_>>()?;
        let before: Vec<u64> = pids
            .iter()
            .map(|&pid| cpu_ticks(pid))
            .collect::<anyhow::Result<_>>()?;
        tokio::time::sleep(options.idle).await;
        let after: Vec<u64> = pids
            .iter()
            .map(|&pid| cpu_ticks(pid))
            .collect::<anyhow::Result<_>>()?;
        let cpu: Vec<f64> = before
            .iter()
            .zip(&after)
            .map(|(b, a)| a.saturating_sub(*b) as f64 / bench.clock_ticks)
            .collect();
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        let mut false_statuses = BTreeSet::new();
        let mut still_converged = true;
        for (i, members) in poll(&mut self.nodes, &all).await {
            match members {
                Some(members) => {
                    note_false(&mut false_statuses, i, &members, None);
                    still_converged &= alive(&members) == all.len();
                }
                None => still_converged = false,
            }
        }
        let exits = self.exits();
        anyhow::ensure!(
            exits.is_empty(),
            "{} agents exited while idle: {}",
            self.kind.label(),
            exits.join("; ")
        );
        Ok(Footprint {
            rss_mean_kib: mean(&rss),
            rss_max_kib: rss.iter().copied().fold(0.0, f64::max),
            cpu_mean_secs: mean(&cpu),
            cpu_max_secs: cpu.iter().copied().fold(0.0, f64::max),
            still_converged,
            false_statuses: false_statuses.len(),
        })
    }
}

/// The expected members that `listing` does not show as alive, with the status it shows.
fn lacking(names: &[String], listing: Option<&Listing>) -> String {
    let Some(listing) = listing else {
        return "everything (no RPC answer)".to_owned();
    };
    let lacked: Vec<String> = names
        .iter()
        .filter_map(|name| match listing.iter().find(|(n, _)| n == name) {
            Some((_, status)) if status == "alive" => None,
            Some((_, status)) => Some(format!("{name} ({status})")),
            None => Some(format!("{name} (absent)")),
        })
        .collect();
    lacked.join(", ")
}

fn alive(members: &Listing) -> usize {
    members
        .iter()
        .filter(|(_, status)| status == "alive")
        .count()
}

/// Records every (observer, member, status) where a member other than `victim` is not alive.
fn note_false(
    seen: &mut BTreeSet<(usize, String, String)>,
    observer: usize,
    members: &Listing,
    victim: Option<&str>,
) {
    for (name, status) in members {
        if status != "alive" && Some(name.as_str()) != victim {
            seen.insert((observer, name.clone(), status.clone()));
        }
    }
}

/// Asks each of `which` for its members, at once; `None` for an agent that did not answer
/// (not listening yet, or slow). Connections are kept for the next round.
async fn poll(nodes: &mut [Node], which: &[usize]) -> Vec<(usize, Option<Listing>)> {
    let mut tasks = tokio::task::JoinSet::new();
    for &i in which {
        let addr = nodes[i].rpc_addr();
        let client = nodes[i].client.take();
        tasks.spawn(async move {
            let client = match client {
                Some(client) if !client.is_closed() => Some(client),
                _ => tokio::time::timeout(RPC_CALL_LIMIT, Client::connect(&addr))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map(Arc::new),
            };
            let members = match &client {
                Some(client) => tokio::time::timeout(RPC_CALL_LIMIT, client.members())
                    .await
                    .ok()
                    .and_then(Result::ok),
                None => None,
            };
            let listing: Option<Listing> = members.map(|members| {
                members
                    .into_iter()
                    .map(|member| (member.name, member.status))
                    .collect()
            });
            (i, listing.is_some().then_some(client).flatten(), listing)
        });
    }
    let mut replies = Vec::with_capacity(which.len());
    while let Some(joined) = tasks.join_next().await {
        if let Ok((i, client, listing)) = joined {
            nodes[i].client = client;
            replies.push((i, listing));
        }
    }
    replies
}

// ---- the Serf layer: user-event fan-out and query collection ----

/// User events timed per cluster.
const EVENT_TRIALS: usize = 5;
/// Queries timed per cluster.
const QUERY_TRIALS: usize = 3;
/// How long one event or query may take before it counts as lost.
const TRIAL_LIMIT: Duration = Duration::from_secs(30);

/// One user event: its arrival time at each agent that got it, sorted, and how many never did.
struct EventTrial {
    arrivals: Vec<Duration>,
    missing: usize,
}

/// One query: when the last of the N responses came in, and when the query ended.
struct QueryTrial {
    all_responses: Option<Duration>,
    done: Option<Duration>,
    responses: usize,
}

#[derive(Default)]
struct LayerRun {
    events: Vec<EventTrial>,
    queries: Vec<QueryTrial>,
}

/// (size, kind) → the trials of every repetition.
type LayerResults = Vec<(usize, Kind, LayerRun)>;

async fn run_serf_layer(
    mut bench: Bench,
    options: &Options,
    upcase: &Path,
) -> anyhow::Result<LayerResults> {
    let mut results: LayerResults = Vec::new();
    for &size in &options.sizes {
        for kind in Kind::BOTH {
            results.push((size, kind, LayerRun::default()));
        }
    }
    for rep in 1..=options.reps {
        println!("== repetition {rep} of {}", options.reps);
        for &size in &options.sizes {
            for kind in Kind::BOTH {
                let mut cluster = Cluster::new(&mut bench, kind, size)?;
                cluster.extra_args = match kind {
                    Kind::Serf => vec!["-event-handler=query:upcase=tr a-z A-Z".to_owned()],
                    Kind::Ours => {
                        let config = cluster.dir.join("serf.toml");
                        std::fs::write(
                            &config,
                            format!(
                                "plugin_cache_dir = \"{}\"\n\n[plugins.upcase]\npath = \"{}\"\n\
                                 events = \"query:upcase\"\n",
                                cluster.dir.join("plugin-cache").display(),
                                upcase.display()
                            ),
                        )?;
                        vec![format!("-config-file={}", config.display())]
                    }
                };
                let convergence = cluster.converge(&bench).await?;
                if convergence.elapsed.is_none() {
                    cluster.keep_logs = true;
                    println!(
                        "{size} agents, {}: {}",
                        kind.label(),
                        convergence.describe()
                    );
                    continue;
                }
                let run = cluster.serf_layer().await?;
                for trial in &run.events {
                    println!(
                        "{size} agents, {}, user event: p50 {} p99 {} max {}, missing {}",
                        kind.label(),
                        seconds(quantile(&trial.arrivals, 0.5)),
                        seconds(quantile(&trial.arrivals, 0.99)),
                        seconds(trial.arrivals.last().map(Duration::as_secs_f64)),
                        trial.missing
                    );
                }
                for trial in &run.queries {
                    println!(
                        "{size} agents, {}, query: {} responses, all after {}, done after {}",
                        kind.label(),
                        trial.responses,
                        seconds(trial.all_responses.map(|d| d.as_secs_f64())),
                        seconds(trial.done.map(|d| d.as_secs_f64()))
                    );
                }
                if run.events.iter().any(|t| t.missing > 0)
                    || run.queries.iter().any(|t| t.all_responses.is_none())
                {
                    cluster.keep_logs = true;
                }
                if let Some((_, _, all)) = results
                    .iter_mut()
                    .find(|(s, k, _)| *s == size && *k == kind)
                {
                    all.events.extend(run.events);
                    all.queries.extend(run.queries);
                }
            }
        }
    }
    Ok(results)
}

impl Cluster {
    /// Times [`EVENT_TRIALS`] user events and [`QUERY_TRIALS`] queries in the converged cluster.
    async fn serf_layer(&mut self) -> anyhow::Result<LayerRun> {
        let n = self.nodes.len();
        let mut clients = Vec::with_capacity(n);
        for node in &self.nodes {
            let client = match &node.client {
                Some(client) if !client.is_closed() => client.clone(),
                _ => Arc::new(Client::connect(&node.rpc_addr()).await?),
            };
            clients.push(client);
        }
        // Every agent's user events, stamped on arrival, into one channel.
        let (arrived, mut arrivals) = tokio::sync::mpsc::unbounded_channel();
        let mut listeners = tokio::task::JoinSet::new();
        for (i, client) in clients.iter().enumerate() {
            let mut stream = client.stream("user:bench").await?;
            let arrived = arrived.clone();
            listeners.spawn(async move {
                while let Some(record) = stream.recv().await {
                    if let serf_rpc::protocol::StreamRecord::User(user) = record {
                        let _ = arrived.send((i, user.payload.unwrap_or_default(), Instant::now()));
                    }
                }
            });
        }
        let mut run = LayerRun::default();
        for trial in 0..EVENT_TRIALS {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let payload = format!("t{trial}").into_bytes();
            let fired = Instant::now();
            clients[0]
                .user_event("bench", Some(&payload), false)
                .await?;
            let mut seen = vec![None; n];
            let deadline = fired + TRIAL_LIMIT;
            while seen.iter().any(Option::is_none) {
                let Ok(Some((i, got, at))) =
                    tokio::time::timeout_at(deadline.into(), arrivals.recv()).await
                else {
                    break;
                };
                if got == payload && seen[i].is_none() {
                    seen[i] = Some(at - fired);
                }
            }
            let mut times: Vec<Duration> = seen.iter().flatten().copied().collect();
            times.sort();
            run.events.push(EventTrial {
                missing: n - times.len(),
                arrivals: times,
            });
        }
        listeners.abort_all();
        for _ in 0..QUERY_TRIALS {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let request = serf_rpc::protocol::QueryRequest {
                name: "upcase".to_owned(),
                payload: Some(b"foo".to_vec()),
                ..Default::default()
            };
            let sent = Instant::now();
            let mut records = clients[0].query(request).await?;
            let mut from = BTreeSet::new();
            let mut trial = QueryTrial {
                all_responses: None,
                done: None,
                responses: 0,
            };
            let deadline = sent + TRIAL_LIMIT;
            while let Ok(Some(record)) =
                tokio::time::timeout_at(deadline.into(), records.recv()).await
            {
                use serf_rpc::protocol::QueryRecordType;
                match record.kind {
                    QueryRecordType::Response if !record.from.is_empty() => {
                        // Serf hands a handler its payload plus a newline, which `tr` keeps.
                        let payload = record.payload.unwrap_or_default();
                        if payload.trim_ascii_end() == b"FOO" {
                            from.insert(record.from);
                        }
                        if from.len() == n && trial.all_responses.is_none() {
                            trial.all_responses = Some(sent.elapsed());
                        }
                    }
                    QueryRecordType::Done => {
                        trial.done = Some(sent.elapsed());
                        break;
                    }
                    _ => {}
                }
            }
            trial.responses = from.len();
            run.queries.push(trial);
        }
        Ok(run)
    }
}

/// The `q` quantile (nearest rank) of sorted durations, in seconds.
fn quantile(sorted: &[Duration], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1].as_secs_f64())
}

fn print_serf_layer(options: &Options, results: &LayerResults) {
    println!(
        "User events: from the `event` call on the seed until each agent's RPC stream has it \
         (per event: p50, p99 and max over agents; medians over {} events per cluster size)",
        EVENT_TRIALS * options.reps
    );
    println!();
    println!("| agents | agent | p50 | p99 | max | worst max | events missing |");
    println!("|---:|---|---:|---:|---:|---:|---:|");
    for (size, kind, run) in results {
        let per = |q: f64| -> Vec<f64> {
            run.events
                .iter()
                .filter_map(|t| quantile(&t.arrivals, q))
                .collect()
        };
        let maxes = per(1.0);
        let missing: usize = run.events.iter().map(|t| t.missing).sum();
        println!(
            "| {size} | {} | {} | {} | {} | {} | {missing} |",
            kind.label(),
            seconds(median(&per(0.5))),
            seconds(median(&per(0.99))),
            seconds(median(&maxes)),
            seconds(maxes.iter().copied().reduce(f64::max)),
        );
    }
    println!();
    println!(
        "Queries (`upcase`, default timeout): until all N responses are in, and until the query \
         ends (medians over {} queries per cluster size)",
        QUERY_TRIALS * options.reps
    );
    println!();
    println!("| agents | agent | all responses | done | incomplete |");
    println!("|---:|---|---:|---:|---:|");
    for (size, kind, run) in results {
        let all: Vec<f64> = run
            .queries
            .iter()
            .filter_map(|t| t.all_responses.map(|d| d.as_secs_f64()))
            .collect();
        let done: Vec<f64> = run
            .queries
            .iter()
            .filter_map(|t| t.done.map(|d| d.as_secs_f64()))
            .collect();
        println!(
            "| {size} | {} | {} | {} | {} of {} |",
            kind.label(),
            seconds(median(&all)),
            seconds(median(&done)),
            run.queries.len() - all.len(),
            run.queries.len()
        );
    }
}

struct Convergence {
    elapsed: Option<Duration>,
    spawned: Duration,
    rounds: u32,
    false_statuses: usize,
    /// Datagrams the kernel dropped on receipt during the run (whole machine).
    udp_errors: u64,
    /// Why it failed, or which agents were slow.
    details: String,
}

impl Convergence {
    fn describe(&self) -> String {
        match self.elapsed {
            Some(elapsed) => format!(
                "converged in {:.3} s (joiners spawned in {:.3} s, {} poll rounds, \
                 false statuses: {}, UDP receive errors: {}){}",
                elapsed.as_secs_f64(),
                self.spawned.as_secs_f64(),
                self.rounds,
                self.false_statuses,
                self.udp_errors,
                self.details
            ),
            None => format!(
                "FAILED (UDP receive errors: {}): {}",
                self.udp_errors, self.details
            ),
        }
    }
}

struct Detection {
    /// Log lines of probes failing against live members (agents at `-log-level=info`).
    false_suspicions: Vec<String>,
    first: Option<Duration>,
    all: Option<Duration>,
    detected_by: usize,
    observers: usize,
    /// (observer, member, status) for live members seen as anything but alive.
    false_statuses: BTreeSet<(usize, String, String)>,
    victim_statuses: Vec<String>,
    exits: Vec<String>,
}

impl Detection {
    fn false_failures(&self) -> usize {
        self.false_statuses.len()
    }

    fn describe(&self) -> String {
        let mut text = match self.all {
            Some(all) => format!(
                "all {} others list it failed after {:.3} s (first after {:.3} s)",
                self.observers,
                all.as_secs_f64(),
                self.first.unwrap_or_default().as_secs_f64()
            ),
            None => format!(
                "FAILED: only {} of {} others list it failed (statuses seen for it: {})",
                self.detected_by,
                self.observers,
                self.victim_statuses.join(", ")
            ),
        };
        text.push_str(&format!(
            ", false failures: {}, false suspicions: {}",
            self.false_failures(),
            self.false_suspicions.len()
        ));
        for line in self.false_suspicions.iter().take(10) {
            text.push_str(&format!("\n   {line}"));
        }
        for (observer, member, status) in self.false_statuses.iter().take(10) {
            text.push_str(&format!(
                "\n   node{} listed {member} as {status}",
                observer + 1
            ));
        }
        for exit in &self.exits {
            text.push_str(&format!("\n   {exit}"));
        }
        text
    }
}

struct Footprint {
    rss_mean_kib: f64,
    rss_max_kib: f64,
    cpu_mean_secs: f64,
    cpu_max_secs: f64,
    still_converged: bool,
    false_statuses: usize,
}

fn rss_kib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for pid {pid}"))
}

/// utime + stime of the whole process, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which ends at the last ')': state is field 3, utime 14.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow::anyhow!("malformed /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> anyhow::Result<u64> {
        Ok(fields
            .get(n - 3)
            .ok_or_else(|| anyhow::anyhow!("short /proc/{pid}/stat"))?
            .parse()?)
    };
    Ok(field(14)? + field(15)?)
}

/// `InErrors` + `RcvbufErrors` of the machine's UDP counters.
fn udp_receive_errors() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = snmp.lines().filter(|line| line.starts_with("Udp:"));
    let (Some(header), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    header
        .split_whitespace()
        .zip(values.split_whitespace())
        .filter(|(name, _)| matches!(*name, "InErrors" | "RcvbufErrors"))
        .filter_map(|(_, value)| value.parse::<u64>().ok())
        .sum()
}

fn clock_ticks() -> f64 {
    command_line(Path::new("getconf"), &["CLK_TCK"])
        .trim()
        .parse()
        .unwrap_or(100.0)
}

fn command_line(program: &Path, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default()
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn machine_line() -> String {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or_else(String::new, |kib| {
            format!("{:.0} GiB", kib / 1024.0 / 1024.0)
        });
    let kernel = command_line(Path::new("uname"), &["-r"]);
    format!(
        "{cpus} cpus ({model}), {memory}, Linux {}, load average {}",
        kernel.trim(),
        load_average()
    )
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let len = sorted.len();
    match len {
        0 => None,
        _ if len % 2 == 1 => Some(sorted[len / 2]),
        _ => Some((sorted[len / 2 - 1] + sorted[len / 2]) / 2.0),
    }
}

fn seconds(value: Option<f64>) -> String {
    value.map_or_else(|| "—".to_owned(), |s| format!("{s:.3} s"))
}

fn converge_cell(secs: f64) -> String {
    if secs.is_finite() {
        format!("{secs:.3} s")
    } else {
        format!("> {} s", CONVERGE_LIMIT.as_secs())
    }
}

fn run_header(reps: usize) -> (String, String) {
    let runs: String = (1..=reps).map(|r| format!(" run {r} |")).collect();
    let align: String = (1..=reps).map(|_| "---:|").collect();
    (runs, align)
}

fn print_tables(options: &Options, results: &Results) {
    let (runs, align) = run_header(options.reps);
    println!("Convergence: from spawning the first joiner until every agent lists N alive members");
    println!();
    println!("| agents | agent |{runs} median | stragglers (> 3 s) | false statuses |");
    println!("|---:|---|{align}---:|---:|---:|");
    // A run that did not converge counts as infinitely long.
    let secs = |c: &Convergence| c.elapsed.map_or(f64::INFINITY, |e| e.as_secs_f64());
    for (size, kind, reps) in &results.convergence {
        let cells: String = reps
            .iter()
            .map(|c| format!(" {} |", converge_cell(secs(c))))
            .collect();
        let times: Vec<f64> = reps.iter().map(secs).collect();
        let slow = times
            .iter()
            .filter(|&&t| t > SLOW_CONVERGENCE.as_secs_f64())
            .count();
        let false_statuses: usize = reps.iter().map(|c| c.false_statuses).sum();
        println!(
            "| {size} | {} |{cells} {} | {slow} of {} | {false_statuses} |",
            kind.label(),
            median(&times).map_or_else(|| "—".to_owned(), converge_cell),
            reps.len()
        );
    }
    println!();
    println!(
        "Failure detection, {} agents: from SIGKILL until every other agent lists the victim \
         as failed (first agent in brackets)",
        options.fail_size
    );
    println!();
    println!("| agent |{runs} median | mean | median first | false failures | false suspicions |");
    println!("|---|{align}---:|---:|---:|---:|---:|");
    for (kind, reps) in &results.detection {
        let cells: String = reps
            .iter()
            .map(|d| match d {
                Some(d) => format!(
                    " {} ({}) |",
                    seconds(d.all.map(|all| all.as_secs_f64())),
                    seconds(d.first.map(|first| first.as_secs_f64()))
                ),
                None => " not converged |".to_owned(),
            })
            .collect();
        let all: Vec<f64> = reps
            .iter()
            .flatten()
            .filter_map(|d| d.all.map(|all| all.as_secs_f64()))
            .collect();
        let first: Vec<f64> = reps
            .iter()
            .flatten()
            .filter_map(|d| d.first.map(|first| first.as_secs_f64()))
            .collect();
        let false_failures: usize = reps.iter().flatten().map(Detection::false_failures).sum();
        let false_suspicions: usize = reps
            .iter()
            .flatten()
            .map(|d| d.false_suspicions.len())
            .sum();
        let complete = all.len() == reps.len();
        println!(
            "| {} |{cells} {} | {} | {} | {false_failures} | {false_suspicions} |",
            kind.label(),
            seconds(if complete { median(&all) } else { None }),
            seconds(
                (complete && !all.is_empty()).then(|| all.iter().sum::<f64>() / all.len() as f64)
            ),
            seconds(median(&first))
        );
    }
    println!();
    let largest = options.sizes.iter().copied().max().unwrap_or(0);
    println!(
        "Idle footprint (median over runs): RSS after {} s idle; CPU time used in {} s idle",
        options.settle.as_secs(),
        options.idle.as_secs()
    );
    println!();
    println!(
        "| agent | RSS alone | RSS per agent, {largest} agents (max) | CPU alone | CPU per agent, \
         {largest} agents (max) | per agent, % of a core |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for kind in Kind::BOTH {
        let lone: Vec<&Footprint> = results
            .lone
            .iter()
            .filter(|(k, _)| *k == kind)
            .flat_map(|(_, reps)| reps)
            .collect();
        let cluster: Vec<&Footprint> = results
            .cluster
            .iter()
            .filter(|(k, _)| *k == kind)
            .flat_map(|(_, reps)| reps.iter().flatten())
            .collect();
        let pick = |set: &[&Footprint], f: fn(&Footprint) -> f64| {
            median(&set.iter().map(|footprint| f(footprint)).collect::<Vec<_>>())
        };
        let mib = |kib: Option<f64>| {
            kib.map_or_else(|| "—".to_owned(), |k| format!("{:.1} MiB", k / 1024.0))
        };
        let cpu = |s: Option<f64>| s.map_or_else(|| "—".to_owned(), |s| format!("{s:.3} s"));
        let share = pick(&cluster, |f| f.cpu_mean_secs).map_or_else(
            || "—".to_owned(),
            |s| format!("{:.2} %", s / options.idle.as_secs_f64() * 100.0),
        );
        println!(
            "| {} | {} | {} ({}) | {} | {} ({}) | {share} |",
            kind.label(),
            mib(pick(&lone, |f| f.rss_mean_kib)),
            mib(pick(&cluster, |f| f.rss_mean_kib)),
            mib(pick(&cluster, |f| f.rss_max_kib)),
            cpu(pick(&lone, |f| f.cpu_mean_secs)),
            cpu(pick(&cluster, |f| f.cpu_mean_secs)),
            cpu(pick(&cluster, |f| f.cpu_max_secs)),
        );
    }
}
