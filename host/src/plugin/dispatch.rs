//! One bounded, ordered queue and one task per plugin, and the fan-out that fills them.
//!
//! [`PluginHost::dispatch`] is called by the agent's task for every event: it filters, encodes
//! the event once and `try_send`s it to each plugin's queue. It never waits; a full queue is a
//! counted, logged drop that the plugin later learns of through a `dropped` envelope. Each
//! plugin's task, on the plugin runtime, takes its events in order and owns its [`Instance`],
//! replacing it after a trap.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serf_plugin_sdk::abi;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::engine::{Engine, LoadedModule};
use super::instance::{CallError, Instance, InstanceContext};
use super::{EventFilter, HostServices, PluginSpec};
use crate::serf::{self, QueryKey};

/// An event encoded once for every plugin that takes it.
struct Encoded {
    /// msgpack of the `abi::Event`.
    body: Vec<u8>,
    /// For a query: its key and deadline.
    query: Option<(QueryKey, Instant)>,
    /// When the agent handed it over, for the latency figures.
    received: Instant,
}

/// One queued event for one plugin.
struct Queued {
    seq: u64,
    event: Arc<Encoded>,
}

/// Counters of one plugin, written by its task and by the dispatcher.
#[derive(Default)]
struct Counters {
    offered: AtomicU64,
    handled: AtomicU64,
    errors: AtomicU64,
    traps: AtomicU64,
    timeouts: AtomicU64,
    fuel_exhausted: AtomicU64,
    memory_exceeded: AtomicU64,
    dropped: AtomicU64,
    dropped_unreported: AtomicU64,
    expired: AtomicU64,
    skipped: AtomicU64,
    starts: AtomicU64,
    start_failures: AtomicU64,
    fuel_used: AtomicU64,
    latency: Histogram,
}

/// A plugin as the dispatcher sees it.
struct Slot {
    name: Arc<str>,
    filter: EventFilter,
    capacity: usize,
    /// `None` when the plugin failed to load.
    queue: Option<mpsc::Sender<Queued>>,
    counters: Counters,
    /// Why the plugin is not running, if it is not.
    failure: Mutex<Option<String>>,
    sha256: String,
}

/// Every loaded plugin, and the tasks that run them.
pub struct PluginHost {
    slots: Vec<Arc<Slot>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    shutdown: CancellationToken,
    engine: Engine,
}

/// A plugin's counters at one moment, for `serf info` and the RPC `stats`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginStatsSnapshot {
    /// Plugin name.
    pub name: String,
    /// `running`, or `failed: <reason>`.
    pub state: String,
    /// Its event filter.
    pub filter: String,
    /// SHA-256 of its module (empty if it could not be read).
    pub sha256: String,
    /// Events offered to it (its last `seq`).
    pub offered: u64,
    /// Events it handled and returned 0 for.
    pub handled: u64,
    /// Events it returned a non-zero status for.
    pub errors: u64,
    /// Calls that trapped (panics, crashes and the three below), each followed by a restart.
    pub traps: u64,
    /// Calls stopped by the wall-clock deadline.
    pub timeouts: u64,
    /// Calls stopped by the fuel budget.
    pub fuel_exhausted: u64,
    /// Calls stopped by the memory cap.
    pub memory_exceeded: u64,
    /// Events dropped because its queue was full.
    pub dropped: u64,
    /// Queries skipped because their deadline passed while queued.
    pub expired: u64,
    /// Events skipped while the plugin could not start.
    pub skipped: u64,
    /// Instances started.
    pub starts: u64,
    /// Instances that failed to start.
    pub start_failures: u64,
    /// Events waiting in its queue.
    pub queue_depth: usize,
    /// Its queue's size.
    pub queue_capacity: usize,
    /// Fuel burnt by handled events.
    pub fuel_used: u64,
    /// Median time from the agent receiving an event to the plugin returning.
    pub latency_p50: Duration,
    /// 99th percentile of the same.
    pub latency_p99: Duration,
}

impl PluginHost {
    /// Loads every plugin (compiling on blocking threads, in parallel) and starts one task per
    /// plugin on `runtime`. A plugin that fails to load is logged and kept out; the rest run.
    pub async fn start(
        engine: Engine,
        specs: Vec<PluginSpec>,
        node: &str,
        limits: crate::config::SerfLimits,
        services: Arc<dyn HostServices>,
        runtime: &tokio::runtime::Handle,
    ) -> PluginHost {
        let loads: Vec<_> = specs
            .into_iter()
            .map(|spec| {
                let engine = engine.clone();
                runtime.spawn_blocking(move || {
                    let loaded = prepare_dirs(&spec).and_then(|()| engine.load_file(&spec.path));
                    (spec, loaded)
                })
            })
            .collect();
        let shutdown = CancellationToken::new();
        let mut slots = Vec::new();
        let mut tasks = Vec::new();
        for load in loads {
            let (spec, loaded) = load.await.expect("plugin loading never panics");
            let name: Arc<str> = Arc::from(spec.name.as_str());
            let loaded = match loaded {
                Ok(loaded) => loaded,
                Err(error) => {
                    tracing::error!(plugin = %name, %error, "plugin failed to load");
                    slots.push(Arc::new(Slot {
                        name,
                        filter: spec.filter.clone(),
                        capacity: 0,
                        queue: None,
                        counters: Counters::default(),
                        failure: Mutex::new(Some(error.to_string())),
                        sha256: String::new(),
                    }));
                    continue;
                }
            };
            tracing::info!(
                plugin = %name,
                path = %spec.path.display(),
                events = %spec.filter,
                cached = loaded.from_cache,
                "plugin loaded"
            );
            let capacity = spec.limits.queue_capacity.get();
            let (sender, receiver) = mpsc::channel(capacity);
            let slot = Arc::new(Slot {
                name: Arc::clone(&name),
                filter: spec.filter.clone(),
                capacity,
                queue: Some(sender),
                counters: Counters::default(),
                failure: Mutex::new(None),
                sha256: loaded.sha256.clone(),
            });
            let context = Arc::new(InstanceContext {
                plugin: name,
                node: Arc::from(node),
                services: Arc::clone(&services),
                response_limit: limits.query_response_size_limit,
            });
            let init = abi::encode(&abi::InitContext {
                abi: abi::ABI_VERSION,
                host: format!("serf/{}", env!("CARGO_PKG_VERSION")),
                node: node.to_owned(),
                plugin: spec.name.clone(),
                config: spec
                    .config
                    .iter()
                    .map(|(key, value)| (key.clone(), toml_to_msgpack(value)))
                    .collect(),
            });
            let runner = Runner {
                slot: Arc::clone(&slot),
                loaded,
                spec,
                context,
                init,
                instance: None,
                backoff: Backoff::default(),
            };
            tasks.push(runtime.spawn(runner.run(receiver, shutdown.clone())));
            slots.push(slot);
        }
        PluginHost {
            slots,
            tasks: Mutex::new(tasks),
            shutdown,
            engine,
        }
    }

    /// Hands an event to every plugin whose filter takes it. Never waits.
    pub fn dispatch(&self, event: &serf::Event) {
        let mut encoded: Option<Arc<Encoded>> = None;
        for slot in &self.slots {
            let Some(queue) = &slot.queue else { continue };
            if !slot.filter.matches(event) {
                continue;
            }
            let event = Arc::clone(encoded.get_or_insert_with(|| Arc::new(encode_event(event))));
            let seq = slot.counters.offered.fetch_add(1, Ordering::Relaxed) + 1;
            if queue.try_send(Queued { seq, event }).is_err() {
                let dropped = slot.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                slot.counters
                    .dropped_unreported
                    .fetch_add(1, Ordering::Relaxed);
                if dropped.is_power_of_two() {
                    tracing::warn!(plugin = %slot.name, dropped, "plugin queue full; event dropped");
                }
            }
        }
    }

    /// Every plugin's counters.
    pub fn stats(&self) -> Vec<PluginStatsSnapshot> {
        self.slots.iter().map(|slot| slot.snapshot()).collect()
    }

    /// (cache hits, cache misses) of compiled modules.
    pub fn cache_counts(&self) -> (u64, u64) {
        self.engine.cache_counts()
    }

    /// Stops every plugin task: each finishes the call it is in (bounded by its deadline),
    /// runs `serf_shutdown`, and drops the events still queued.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
    }

    /// The number of plugins configured, loaded or not.
    pub fn num_plugins(&self) -> usize {
        self.slots.len()
    }
}

impl Slot {
    fn snapshot(&self) -> PluginStatsSnapshot {
        let c = &self.counters;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let failure = self
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let queue_depth = self
            .queue
            .as_ref()
            .map_or(0, |queue| queue.max_capacity() - queue.capacity());
        PluginStatsSnapshot {
            name: self.name.to_string(),
            state: failure.map_or_else(
                || "running".to_owned(),
                |reason| format!("failed: {reason}"),
            ),
            filter: self.filter.to_string(),
            sha256: self.sha256.clone(),
            offered: load(&c.offered),
            handled: load(&c.handled),
            errors: load(&c.errors),
            traps: load(&c.traps),
            timeouts: load(&c.timeouts),
            fuel_exhausted: load(&c.fuel_exhausted),
            memory_exceeded: load(&c.memory_exceeded),
            dropped: load(&c.dropped),
            expired: load(&c.expired),
            skipped: load(&c.skipped),
            starts: load(&c.starts),
            start_failures: load(&c.start_failures),
            queue_depth,
            queue_capacity: self.capacity,
            fuel_used: load(&c.fuel_used),
            latency_p50: c.latency.quantile(0.50),
            latency_p99: c.latency.quantile(0.99),
        }
    }
}

/// Creates missing granted directories, so that a fresh checkout runs. Blocking.
fn prepare_dirs(spec: &PluginSpec) -> Result<(), super::LoadError> {
    for (guest, host) in &spec.dirs {
        std::fs::create_dir_all(host).map_err(|error| super::LoadError::Dir {
            guest: guest.clone(),
            host: host.clone(),
            message: error.to_string(),
        })?;
    }
    Ok(())
}

/// Waits between failed starts: 100 ms, doubling to 30 s; events meanwhile are skipped.
#[derive(Default)]
struct Backoff {
    failures: u32,
    until: Option<Instant>,
}

impl Backoff {
    fn is_waiting(&self, now: Instant) -> bool {
        self.until.is_some_and(|until| now < until)
    }

    fn fail(&mut self, now: Instant) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let delay = Duration::from_millis(100)
            .saturating_mul(1 << self.failures.min(9))
            .min(Duration::from_secs(30));
        self.until = Some(now + delay);
        delay
    }

    fn reset(&mut self) {
        *self = Backoff::default();
    }
}

/// One plugin's task state.
struct Runner {
    slot: Arc<Slot>,
    loaded: LoadedModule,
    spec: PluginSpec,
    context: Arc<InstanceContext>,
    init: Vec<u8>,
    instance: Option<Instance>,
    backoff: Backoff,
}

impl Runner {
    async fn run(mut self, mut queue: mpsc::Receiver<Queued>, shutdown: CancellationToken) {
        loop {
            let queued = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                queued = queue.recv() => match queued {
                    Some(queued) => queued,
                    None => break,
                },
            };
            let dropped = self
                .slot
                .counters
                .dropped_unreported
                .swap(0, Ordering::Relaxed);
            if dropped > 0 {
                let notice = Encoded {
                    body: abi::encode(&abi::Event::Dropped { count: dropped }),
                    query: None,
                    received: Instant::now(),
                };
                self.deliver(0, &notice).await;
            }
            self.deliver(queued.seq, &queued.event).await;
        }
        if let Some(instance) = self.instance.take() {
            instance.shutdown().await;
        }
    }

    async fn deliver(&mut self, seq: u64, event: &Encoded) {
        let counters = &self.slot.counters;
        let now = Instant::now();
        if let Some((_, deadline)) = event.query
            && now >= deadline
        {
            counters.expired.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.instance.is_none() {
            if self.backoff.is_waiting(now) {
                counters.skipped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            match Instance::start(
                &self.loaded,
                &self.spec,
                Arc::clone(&self.context),
                &self.init,
            )
            .await
            {
                Ok(instance) => {
                    counters.starts.fetch_add(1, Ordering::Relaxed);
                    self.backoff.reset();
                    *self.slot.failure.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    self.instance = Some(instance);
                }
                Err(error) => {
                    counters.start_failures.fetch_add(1, Ordering::Relaxed);
                    counters.skipped.fetch_add(1, Ordering::Relaxed);
                    let retry_in = self.backoff.fail(now);
                    tracing::warn!(plugin = %self.slot.name, %error, ?retry_in, "plugin failed to start");
                    *self.slot.failure.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(format!("cannot start: {error}"));
                    return;
                }
            }
        }
        let instance = self.instance.as_mut().expect("started above");
        let header = envelope_header(seq);
        let query = event.query.map(|(key, _)| key);
        match instance.handle(&header, &event.body, query).await {
            Ok(cost) => {
                counters.handled.fetch_add(1, Ordering::Relaxed);
                counters.fuel_used.fetch_add(cost.fuel, Ordering::Relaxed);
            }
            Err(error) => {
                let counter = match &error {
                    CallError::Refused { .. } => &counters.errors,
                    CallError::Timeout(_) => &counters.timeouts,
                    CallError::OutOfFuel(_) => &counters.fuel_exhausted,
                    CallError::MemoryLimit(_) => &counters.memory_exceeded,
                    _ => &counters.traps,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                if error.is_fatal() {
                    if !std::ptr::eq(counter, &counters.traps) {
                        counters.traps.fetch_add(1, Ordering::Relaxed);
                    }
                    self.instance = None;
                    tracing::warn!(plugin = %self.slot.name, seq, kind = error.kind(), %error, "plugin trapped; instance recycled");
                } else {
                    tracing::warn!(plugin = %self.slot.name, seq, %error, "plugin failed to handle event");
                }
            }
        }
        counters.latency.record(event.received.elapsed());
    }
}

/// The envelope's first two fields and the key of the third: `{v: 1, seq, event: ...}`.
/// The event's own encoding follows, so one encoding serves every plugin.
fn envelope_header(seq: u64) -> Vec<u8> {
    let mut header = Vec::with_capacity(24);
    header.extend_from_slice(&[0x83, 0xa1, b'v']);
    header.push(u8::try_from(abi::ABI_VERSION).expect("ABI version is a positive fixint"));
    header.extend_from_slice(&[0xa3, b's', b'e', b'q']);
    match seq {
        0..=0x7f => header.push(seq as u8),
        0x80..=0xff => header.extend_from_slice(&[0xcc, seq as u8]),
        0x100..=0xffff => {
            header.push(0xcd);
            header.extend_from_slice(&(seq as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            header.push(0xce);
            header.extend_from_slice(&(seq as u32).to_be_bytes());
        }
        _ => {
            header.push(0xcf);
            header.extend_from_slice(&seq.to_be_bytes());
        }
    }
    header.extend_from_slice(&[0xa5, b'e', b'v', b'e', b'n', b't']);
    header
}

fn encode_event(event: &serf::Event) -> Encoded {
    let received = Instant::now();
    let members = |members: &[serf::Member]| members.iter().map(abi_member).collect();
    let (abi_event, query) = match event {
        serf::Event::Member(member_event) => {
            let members = members(&member_event.members);
            let event = match member_event.kind {
                serf::MemberEventKind::Join => abi::Event::MemberJoin { members },
                serf::MemberEventKind::Leave => abi::Event::MemberLeave { members },
                serf::MemberEventKind::Failed => abi::Event::MemberFailed { members },
                serf::MemberEventKind::Update => abi::Event::MemberUpdate { members },
                serf::MemberEventKind::Reap => abi::Event::MemberReap { members },
            };
            (event, None)
        }
        serf::Event::User(user) => (
            abi::Event::User(abi::UserEvent {
                name: user.name.clone(),
                payload: user.payload.clone(),
                ltime: user.ltime,
                coalesce: user.coalesce,
            }),
            None,
        ),
        serf::Event::Query(query) => {
            let wall = SystemTime::now() + query.deadline.saturating_duration_since(received);
            let deadline_ms = wall
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            (
                abi::Event::Query(abi::Query {
                    id: query.key.id,
                    name: query.name.clone(),
                    payload: query.payload.clone(),
                    ltime: query.key.ltime,
                    source_node: query.source_node.clone(),
                    deadline_ms,
                }),
                Some((query.key, query.deadline)),
            )
        }
    };
    Encoded {
        body: abi::encode(&abi_event),
        query,
        received,
    }
}

fn abi_member(member: &serf::Member) -> abi::Member {
    abi::Member {
        name: member.name.clone(),
        addr: member.addr.ip().to_string(),
        port: member.addr.port(),
        tags: member.tags.clone(),
        status: member.status.as_str().to_owned(),
    }
}

/// A TOML value as the msgpack value a plugin's `serf_init` receives.
fn toml_to_msgpack(value: &toml::Value) -> rmpv::Value {
    match value {
        toml::Value::String(text) => rmpv::Value::from(text.as_str()),
        toml::Value::Integer(number) => rmpv::Value::from(*number),
        toml::Value::Float(number) => rmpv::Value::from(*number),
        toml::Value::Boolean(flag) => rmpv::Value::from(*flag),
        toml::Value::Datetime(datetime) => rmpv::Value::from(datetime.to_string()),
        toml::Value::Array(items) => {
            rmpv::Value::Array(items.iter().map(toml_to_msgpack).collect())
        }
        toml::Value::Table(table) => rmpv::Value::Map(
            table
                .iter()
                .map(|(key, value)| (rmpv::Value::from(key.as_str()), toml_to_msgpack(value)))
                .collect(),
        ),
    }
}

/// Latencies in buckets an eighth of an octave wide (about 9% apart), lock-free.
struct Histogram {
    buckets: Box<[AtomicU64]>,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram {
            buckets: (0..64 * 8).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Histogram {
    fn index(nanos: u64) -> usize {
        if nanos < 8 {
            return nanos as usize;
        }
        let octave = 63 - nanos.leading_zeros() as usize;
        let eighth = ((nanos >> (octave - 3)) & 7) as usize;
        octave * 8 + eighth
    }

    /// The middle of a bucket, in nanoseconds.
    fn value(index: usize) -> u64 {
        if index < 8 {
            return index as u64;
        }
        let (octave, eighth) = (index / 8, (index % 8) as u64);
        let low = (8 + eighth) << (octave - 3);
        low + (1u64 << (octave - 3)) / 2
    }

    fn record(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[Histogram::index(nanos)].fetch_add(1, Ordering::Relaxed);
    }

    fn quantile(&self, q: f64) -> Duration {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return Duration::ZERO;
        }
        let rank = ((total as f64 * q).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Duration::from_nanos(Histogram::value(index));
            }
        }
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_header_matches_the_sdk_encoding() {
        for seq in [
            0,
            1,
            127,
            128,
            255,
            256,
            65535,
            65536,
            u32::MAX as u64,
            u64::MAX,
        ] {
            let event = abi::Event::Dropped { count: 3 };
            let expected = abi::encode(&abi::Envelope {
                v: abi::ABI_VERSION,
                seq,
                event: event.clone(),
            });
            let mut spliced = envelope_header(seq);
            spliced.extend(abi::encode(&event));
            assert_eq!(spliced, expected, "seq {seq}");
        }
    }

    #[test]
    fn histogram_quantiles_are_within_a_bucket() {
        let histogram = Histogram::default();
        for micros in 1..=1000u64 {
            histogram.record(Duration::from_micros(micros));
        }
        let p50 = histogram.quantile(0.5).as_secs_f64() * 1e6;
        let p99 = histogram.quantile(0.99).as_secs_f64() * 1e6;
        assert!((p50 - 500.0).abs() < 50.0, "p50 {p50}");
        assert!((p99 - 990.0).abs() < 90.0, "p99 {p99}");
        assert_eq!(Histogram::default().quantile(0.5), Duration::ZERO);
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        let now = Instant::now();
        let mut backoff = Backoff::default();
        assert_eq!(backoff.fail(now), Duration::from_millis(200));
        assert_eq!(backoff.fail(now), Duration::from_millis(400));
        assert!(backoff.is_waiting(now + Duration::from_millis(399)));
        assert!(!backoff.is_waiting(now + Duration::from_millis(400)));
        for _ in 0..20 {
            backoff.fail(now);
        }
        assert_eq!(backoff.fail(now), Duration::from_secs(30));
    }
}
