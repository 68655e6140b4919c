//! One bounded, ordered queue and one task per plugin, the fan-out that fills them, and the
//! hand-over of a new plugin version between two events.
//!
//! [`PluginHost::dispatch`] is called by the agent's task for every event: it filters, encodes
//! the event once and offers it to each plugin's queue. It never waits; a full queue is a
//! counted, logged drop that the plugin later learns of through a `dropped` envelope. Each
//! plugin's task, on the plugin runtime, takes its events in order and owns its [`Instance`],
//! replacing it after a trap, or with a new version that a reload compiled and initialised off
//! to the side. The queue, the `seq` numbers and the counters belong to the plugin, not to a
//! version, so a reload loses and reorders nothing. The agent's reload (`agent::reload` in
//! the `serf` binary) decides what changes; this module only applies it.
//!
//! Plugins load in the background: [`PluginHost::spawn`] returns at once and events queue
//! for a plugin while it compiles. A plugin that keeps failing is backed off and then parked
//! ([`super::rates`]); a panic in host code during one of its calls parks it too, with the
//! panic as the reason. A parked plugin shows `failed` in `serf info`, its queued and new
//! events are discarded (and counted), and a reload revives it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serf_plugin_sdk::abi;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::engine::{Engine, LoadedModule};
use super::instance::{CallError, Instance, InstanceContext};
use super::rates::{AfterFailure, PluginRates};
use super::{EventFilter, HostServices, LoadError, PluginSpec};
use serf_core::QueryKey;

/// An event encoded once for every plugin that takes it.
struct Encoded {
    /// msgpack of the `abi::Event`.
    body: Vec<u8>,
    /// For a query: its key and deadline.
    query: Option<(QueryKey, Instant)>,
    /// When the agent handed it over, for the latency figures.
    received: Instant,
    /// Cleared when the plugin's task takes the event from the queue (a tick's "one is
    /// queued" flag, ABI v1.2).
    taken: Option<Arc<AtomicBool>>,
}

/// One queued event for one plugin.
struct Queued {
    seq: u64,
    event: Arc<Encoded>,
}

/// A plugin's FIFO. It outlives the plugin's versions, and a reload may change its capacity
/// at any time: events already queued stay, new ones are refused while it is over capacity.
struct EventQueue {
    state: Mutex<QueueState>,
    ready: Notify,
}

struct QueueState {
    items: VecDeque<Queued>,
    capacity: usize,
    /// No more events: the plugin was removed. Those queued are still handed out.
    closed: bool,
}

impl EventQueue {
    fn new(capacity: usize) -> EventQueue {
        EventQueue {
            state: Mutex::new(QueueState {
                items: VecDeque::new(),
                capacity,
                closed: false,
            }),
            ready: Notify::new(),
        }
    }

    /// Numbers the event with the plugin's next `seq` (counting it in `offered`) and queues
    /// it; `None` if the queue is full or closed. The number is taken under the queue's lock,
    /// so events from several threads still queue in `seq` order. Never waits.
    fn push(&self, offered: &AtomicU64, event: Arc<Encoded>) -> Option<u64> {
        let mut state = lock(&self.state);
        let seq = offered.fetch_add(1, Ordering::Relaxed) + 1;
        if state.closed || state.items.len() >= state.capacity {
            return None;
        }
        state.items.push_back(Queued { seq, event });
        drop(state);
        self.ready.notify_one();
        Some(seq)
    }

    /// The next event, in order; `None` once the queue is closed and empty.
    async fn next(&self) -> Option<Queued> {
        loop {
            {
                let mut state = lock(&self.state);
                if let Some(queued) = state.items.pop_front() {
                    return Some(queued);
                }
                if state.closed {
                    return None;
                }
            }
            // `notify_one` keeps a permit when nobody waits, so a push between the check
            // above and this await is not missed.
            self.ready.notified().await;
        }
    }

    fn len(&self) -> usize {
        lock(&self.state).items.len()
    }

    fn capacity(&self) -> usize {
        lock(&self.state).capacity
    }

    fn set_capacity(&self, capacity: usize) {
        lock(&self.state).capacity = capacity;
    }

    fn close(&self) {
        lock(&self.state).closed = true;
        self.ready.notify_one();
    }

    /// Empties the queue; returns how many events it held.
    fn drain(&self) -> usize {
        let mut state = lock(&self.state);
        let drained = state.items.len();
        state.items.clear();
        drained
    }
}

/// Counters of one plugin, written by its task, by the dispatcher and by reloads. They
/// survive reloads.
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
    reloads: AtomicU64,
    reload_failures: AtomicU64,
    jobs: AtomicU64,
    discarded: AtomicU64,
    latency: Histogram,
}

/// A configured plugin, running or not, as long as the configuration names it.
struct Slot {
    name: Arc<str>,
    queue: EventQueue,
    counters: Counters,
    status: Mutex<Status>,
    /// Rate windows and trap history, shared by every instance of every version.
    rates: Arc<PluginRates>,
    /// Parked (see [`Status::parked`]), readable without the lock on the dispatch path.
    parked: AtomicBool,
}

/// What a reload compares with, and what `serf info` shows besides the counters.
struct Status {
    /// The settings of the version running (or of the last attempt, if none runs).
    spec: PluginSpec,
    /// The module running; `None` if the plugin never loaded.
    loaded: Option<LoadedModule>,
    /// Why the plugin is not running (it failed to load, or cannot start), if it is not.
    failure: Option<String>,
    /// Why the last reload could not apply a new version; cleared by one that could.
    last_reload_error: Option<String>,
    /// The plugin task's inbox for new versions; `None` when no task runs.
    swaps: Option<mpsc::Sender<Swap>>,
    /// Its module is still being read and compiled at start-up; events queue meanwhile.
    loading: bool,
    /// It failed too often in a row, or host code panicked in one of its calls: no task
    /// runs, its events are discarded, and a reload revives it.
    parked: bool,
}

/// A plugin that has a task, as the dispatcher sees it.
struct Route {
    slot: Arc<Slot>,
    filter: EventFilter,
}

/// Every configured plugin, and the tasks that run them.
pub struct PluginHost {
    /// The running plugins, in name order; replaced whole when the set or a filter changes,
    /// so that [`PluginHost::dispatch`] takes one read lock per event.
    routes: RwLock<Arc<[Route]>>,
    /// Every configured plugin by name, loaded or not.
    slots: Mutex<BTreeMap<String, Arc<Slot>>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    shutdown: CancellationToken,
    /// True once every plugin named at start-up has loaded or failed to.
    loaded: tokio::sync::watch::Sender<bool>,
    engine: Engine,
    runtime: tokio::runtime::Handle,
    node: Arc<str>,
    limits: serf_core::SerfLimits,
    services: Arc<dyn HostServices>,
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
    /// SHA-256 of the module running (empty if none loaded).
    pub sha256: String,
    /// The configured `.wasm` file.
    pub path: std::path::PathBuf,
    /// Its granted capabilities, e.g. `members,queries`, or `none`.
    pub capabilities: String,
    /// Granted directories: guest path → host directory.
    pub dirs: BTreeMap<String, std::path::PathBuf>,
    /// The names of the environment variables it is given (never their values, which may be
    /// secrets).
    pub env_keys: Vec<String>,
    /// Its budgets.
    pub limits: super::Limits,
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
    /// Instances started (reloads included).
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
    /// Reloads that changed this plugin (a new version, filter or queue size).
    pub reloads: u64,
    /// Reloads whose new version failed to compile or initialise (the old one kept running).
    pub reload_failures: u64,
    /// Why the last reload of this plugin failed; empty if it did not.
    pub last_reload_error: String,
    /// Long jobs the plugin started.
    pub jobs: u64,
    /// Events discarded because the plugin was parked or failed to load.
    pub discarded: u64,
    /// `fire_event` and `query` calls refused by the plugin-wide rate limit.
    pub rate_limited_messages: u64,
    /// `serf.log` lines refused by the plugin-wide rate limit.
    pub rate_limited_logs: u64,
    /// stdout and stderr lines dropped by the plugin's rate limit (100 a second).
    pub rate_limited_output: u64,
    /// `respond` calls refused with `NotAllowed`: outside a query, a second answer to one
    /// query, or a query another plugin (or an RPC client) on this node answered first.
    pub refused_responses: u64,
    /// Its granted commands, e.g. `reload`, or `none` (ABI v1.1, commands).
    pub commands: String,
    /// Its command counters: calls, denials, limited, failures, timeouts, time.
    pub command_counters: [(&'static str, u64); 6],
    /// Effects (ABI v1.2): grants, counters and metrics, by `serf info` key.
    pub effects: Vec<(String, String)>,
}

/// Why [`PluginHost::deliver_to`] did not queue an event. Nothing was queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliverError {
    /// No plugin of that name is configured.
    #[error("no plugin named {0}")]
    UnknownPlugin(String),
    /// The plugin is configured but not running (it failed to load).
    #[error("plugin {0} is not running")]
    NotRunning(String),
    /// Its queue is full; the event was counted as dropped.
    #[error("plugin {0} has a full queue")]
    QueueFull(String),
}

/// A plugin as a reload finds it.
pub struct Applied {
    /// The settings it runs with (or failed to load with).
    pub spec: PluginSpec,
    /// The module it runs; `None` if it never loaded.
    pub loaded: Option<LoadedModule>,
}

/// A version of a plugin: a module and the settings to run it with.
struct Version {
    loaded: LoadedModule,
    spec: PluginSpec,
    context: Arc<InstanceContext>,
    /// The encoded `InitContext`.
    init: Vec<u8>,
}

/// A new version, ready to be swapped in. Its first instance starts in the plugin's task,
/// after the old version's `serf_shutdown` has returned, so that what the old version saves
/// on the way out is there for the new one's `serf_init`.
pub struct Prepared {
    version: Version,
}

/// A new version on its way to a plugin's task.
struct Swap {
    prepared: Prepared,
    /// Answered once the new version handles the plugin's events, or with why it could not
    /// start (the old version then runs on, in a fresh instance).
    done: oneshot::Sender<Result<(), CallError>>,
}

/// Why a prepared version was not swapped in; the old one runs on, if there was one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwapError {
    /// The plugin was removed, never ran, or its task has stopped (the agent is stopping).
    #[error("plugin {0} is not running")]
    NotRunning(String),
    /// The new version's instance failed to start; the old version runs on.
    #[error("the new version failed to start: {0}")]
    StartFailed(CallError),
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl PluginHost {
    /// Starts loading every plugin in the background (reading and compiling on blocking
    /// threads, in parallel) and returns at once; each plugin gets its task once it has
    /// loaded, and events queue for it meanwhile. A plugin that fails to load is logged and
    /// kept out (its queued events are discarded); the rest run.
    pub fn spawn(
        engine: Engine,
        specs: Vec<PluginSpec>,
        node: &str,
        limits: serf_core::SerfLimits,
        services: Arc<dyn HostServices>,
        runtime: &tokio::runtime::Handle,
    ) -> Arc<PluginHost> {
        let host = Arc::new(PluginHost {
            routes: RwLock::new(Arc::from(Vec::new())),
            slots: Mutex::new(BTreeMap::new()),
            tasks: Mutex::new(Vec::new()),
            shutdown: CancellationToken::new(),
            loaded: tokio::sync::watch::Sender::new(false),
            engine,
            runtime: runtime.clone(),
            node: Arc::from(node),
            limits,
            services,
        });
        {
            let mut slots = lock(&host.slots);
            for spec in &specs {
                let slot = Slot::new(spec);
                lock(&slot.status).loading = true;
                slots.insert(spec.name.clone(), Arc::new(slot));
            }
        }
        host.publish();
        let loader = Arc::clone(&host);
        runtime.spawn(async move {
            let loads: Vec<_> = specs
                .into_iter()
                .map(|spec| {
                    let engine = loader.engine.clone();
                    loader.runtime.spawn_blocking(move || {
                        let loaded = engine
                            .read(&spec.path)
                            .and_then(|bytes| PluginHost::compile(&engine, &spec, &bytes));
                        (spec, loaded)
                    })
                })
                .collect();
            for load in loads {
                // A load that panicked leaves its plugin "loading"; a reload retries it.
                if let Ok((spec, loaded)) = load.await
                    && !loader.shutdown.is_cancelled()
                {
                    loader.add(spec, loaded);
                }
            }
            loader.loaded.send_replace(true);
        });
        host
    }

    /// [`PluginHost::spawn`], then waits until every plugin has loaded or failed to.
    pub async fn start(
        engine: Engine,
        specs: Vec<PluginSpec>,
        node: &str,
        limits: serf_core::SerfLimits,
        services: Arc<dyn HostServices>,
        runtime: &tokio::runtime::Handle,
    ) -> Arc<PluginHost> {
        let host = PluginHost::spawn(engine, specs, node, limits, services, runtime);
        host.loaded().await;
        host
    }

    /// Waits until every plugin named at start-up has loaded or failed to.
    pub async fn loaded(&self) {
        let mut loaded = self.loaded.subscribe();
        let _ = loaded.wait_for(|loaded| *loaded).await;
    }

    /// Hands an event to every running plugin whose filter takes it. Never waits.
    pub fn dispatch(&self, event: &serf_core::Event) {
        let routes = Arc::clone(&*self.routes.read().unwrap_or_else(PoisonError::into_inner));
        let mut encoded: Option<Arc<Encoded>> = None;
        for route in routes.iter() {
            if !route.filter.matches(event) {
                continue;
            }
            let event = Arc::clone(encoded.get_or_insert_with(|| Arc::new(encode_event(event))));
            route.slot.offer(event);
        }
    }

    /// Queues `event` for one plugin alone, whatever its filter, behind the events already
    /// queued for it: for events that concern that plugin only, such as the end of a job it
    /// started. Returns the event's `seq`. Never waits.
    pub fn deliver_to(&self, plugin: &str, event: &abi::Event) -> Result<u64, DeliverError> {
        self.deliver_with(plugin, event, None)
    }

    /// [`PluginHost::deliver_to`], clearing `taken` when the plugin's task takes the event
    /// from the queue (ABI v1.2: a tick is "queued" until then).
    pub(super) fn deliver_flagged(
        &self,
        plugin: &str,
        event: &abi::Event,
        taken: Arc<AtomicBool>,
    ) -> Result<u64, DeliverError> {
        self.deliver_with(plugin, event, Some(taken))
    }

    fn deliver_with(
        &self,
        plugin: &str,
        event: &abi::Event,
        taken: Option<Arc<AtomicBool>>,
    ) -> Result<u64, DeliverError> {
        let slot = self
            .slot(plugin)
            .ok_or_else(|| DeliverError::UnknownPlugin(plugin.to_owned()))?;
        if lock(&slot.status).swaps.is_none() {
            return Err(DeliverError::NotRunning(plugin.to_owned()));
        }
        let encoded = Arc::new(Encoded {
            body: abi::encode(event),
            query: None,
            received: Instant::now(),
            taken,
        });
        slot.offer(encoded)
            .ok_or_else(|| DeliverError::QueueFull(plugin.to_owned()))
    }

    /// The agent's effects (ABI v1.2), if its services have them.
    pub fn effects(&self) -> Option<Arc<super::effects::EffectHost>> {
        self.services.effects().cloned()
    }

    /// The token cancelled when the plugins stop (for the tick task, ABI v1.2).
    pub(super) fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Counts a long job started by `plugin` (shown as `jobs` in `serf info`).
    pub fn count_job(&self, plugin: &str) {
        if let Some(slot) = self.slot(plugin) {
            slot.counters.jobs.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// What a job of `plugin` needs to start an instance of the version running now; `None`
    /// if the plugin does not run. (For `super::jobs`.)
    pub fn job_source(&self, plugin: &str) -> Option<super::jobs::JobSource> {
        let slot = self.slot(plugin)?;
        let (spec, loaded) = {
            let status = lock(&slot.status);
            status.swaps.as_ref()?;
            (status.spec.clone(), status.loaded.clone()?)
        };
        let version = self.version(&slot, spec, loaded);
        Some(super::jobs::JobSource {
            loaded: version.loaded,
            spec: version.spec,
            context: version.context,
            init: version.init,
        })
    }

    /// Every configured plugin's counters, in name order.
    pub fn stats(&self) -> Vec<PluginStatsSnapshot> {
        let slots: Vec<Arc<Slot>> = lock(&self.slots).values().cloned().collect();
        let mut stats: Vec<PluginStatsSnapshot> =
            slots.iter().map(|slot| slot.snapshot()).collect();
        // Effects (ABI v1.2): what is granted, used and measured.
        if let Some(effects) = self.services.effects() {
            for (slot, stats) in slots.iter().zip(&mut stats) {
                let grants = lock(&slot.status).spec.grants.effects.clone();
                stats.effects = effects.describe(&slot.name, &grants);
            }
        }
        stats
    }

    /// (cache hits, cache misses) of compiled modules.
    pub fn cache_counts(&self) -> (u64, u64) {
        self.engine.cache_counts()
    }

    /// Stops every plugin task: each finishes the call it is in (bounded by its deadline),
    /// runs `serf_shutdown`, and drops the events still queued.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        for task in tasks {
            let _ = task.await;
        }
    }

    /// The number of plugins configured, loaded or not.
    pub fn num_plugins(&self) -> usize {
        lock(&self.slots).len()
    }

    fn slot(&self, name: &str) -> Option<Arc<Slot>> {
        lock(&self.slots).get(name).cloned()
    }

    /// Rebuilds the dispatcher's list after a plugin started, stopped or changed its filter.
    fn publish(&self) {
        let routes: Vec<Route> = lock(&self.slots)
            .values()
            .filter_map(|slot| {
                let status = lock(&slot.status);
                // A loading plugin queues its events; a parked one counts them discarded.
                (status.swaps.is_some() || status.loading || status.parked).then(|| Route {
                    slot: Arc::clone(slot),
                    filter: status.spec.filter.clone(),
                })
            })
            .collect();
        *self.routes.write().unwrap_or_else(PoisonError::into_inner) = Arc::from(routes);
    }

    fn version(&self, slot: &Slot, spec: PluginSpec, loaded: LoadedModule) -> Version {
        let context = Arc::new(InstanceContext {
            plugin: Arc::from(spec.name.as_str()),
            node: Arc::clone(&self.node),
            services: Arc::clone(&self.services),
            response_limit: self.limits.query_response_size_limit,
            rates: Arc::clone(&slot.rates),
        });
        let init = abi::encode(&abi::InitContext {
            abi: abi::ABI_VERSION,
            host: format!("serf/{}", env!("CARGO_PKG_VERSION")),
            node: self.node.to_string(),
            plugin: spec.name.clone(),
            config: spec
                .config
                .iter()
                .map(|(key, value)| (key.clone(), toml_to_msgpack(value)))
                .collect(),
        });
        Version {
            loaded,
            spec,
            context,
            init,
        }
    }

    // --- What a reload uses (`super::reload`). -------------------------------------------

    /// The runtime plugins run on; reloads run there too.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    /// The engine, for [`PluginHost::compile`] on a blocking thread.
    pub fn engine(&self) -> Engine {
        self.engine.clone()
    }

    /// Every configured plugin as it is now, by name.
    pub fn applied(&self) -> BTreeMap<String, Applied> {
        lock(&self.slots)
            .iter()
            .map(|(name, slot)| {
                let status = lock(&slot.status);
                let applied = Applied {
                    spec: status.spec.clone(),
                    loaded: status.loaded.clone(),
                };
                (name.clone(), applied)
            })
            .collect()
    }

    /// Creates the plugin's granted directories, then compiles (or takes from the cache) and
    /// validates its module. Blocking.
    pub fn compile(
        engine: &Engine,
        spec: &PluginSpec,
        bytes: &[u8],
    ) -> Result<LoadedModule, LoadError> {
        prepare_dirs(spec)?;
        engine.load(&spec.path, bytes)
    }

    /// Makes a new version ready to swap in. Its instance starts in the plugin's task, after
    /// the old version's `serf_shutdown` (see [`Prepared`]).
    pub async fn prepare(
        &self,
        spec: PluginSpec,
        loaded: LoadedModule,
    ) -> Result<Prepared, CallError> {
        let version = match self.slot(&spec.name) {
            Some(slot) => self.version(&slot, spec, loaded),
            None => self.version(&Slot::new(&spec), spec, loaded),
        };
        Ok(Prepared { version })
    }

    /// Hands a prepared version to the plugin's task, which swaps it in between two events
    /// (after the call in progress, before the next queued event), and waits until it has.
    pub async fn swap(&self, name: &str, prepared: Prepared) -> Result<(), SwapError> {
        let not_running = || SwapError::NotRunning(name.to_owned());
        let slot = self.slot(name).ok_or_else(not_running)?;
        let swaps = lock(&slot.status).swaps.clone().ok_or_else(not_running)?;
        let spec = prepared.version.spec.clone();
        let loaded = prepared.version.loaded.clone();
        let (done, swapped) = oneshot::channel();
        swaps
            .send(Swap { prepared, done })
            .await
            .map_err(|_| not_running())?;
        swapped
            .await
            .map_err(|_| not_running())?
            .map_err(SwapError::StartFailed)?;
        if let Some(effects) = self.services.effects() {
            effects.configure(&spec.name, &spec.grants.effects);
        }
        slot.counters.starts.fetch_add(1, Ordering::Relaxed);
        slot.counters.reloads.fetch_add(1, Ordering::Relaxed);
        slot.queue.set_capacity(spec.limits.queue_capacity.get());
        {
            let mut status = lock(&slot.status);
            status.spec = spec;
            status.loaded = Some(loaded);
            status.failure = None;
            status.last_reload_error = None;
        }
        self.publish();
        Ok(())
    }

    /// Applies settings that need no new instance (the filter, the queue's capacity).
    pub fn retune(&self, spec: PluginSpec) {
        let Some(slot) = self.slot(&spec.name) else {
            return;
        };
        slot.queue.set_capacity(spec.limits.queue_capacity.get());
        slot.counters.reloads.fetch_add(1, Ordering::Relaxed);
        {
            let mut status = lock(&slot.status);
            status.spec = spec;
            status.last_reload_error = None;
        }
        self.publish();
    }

    /// Starts a plugin (a new one, or one that had failed to load) with its own queue and
    /// task; a load error leaves it configured but not running, as at start-up.
    pub fn add(&self, spec: PluginSpec, loaded: Result<LoadedModule, LoadError>) {
        let slot = Arc::clone(
            lock(&self.slots)
                .entry(spec.name.clone())
                .or_insert_with(|| Arc::new(Slot::new(&spec))),
        );
        match loaded {
            Err(error) => {
                tracing::error!(plugin = %slot.name, %error, "plugin failed to load");
                {
                    let mut status = lock(&slot.status);
                    status.spec = spec;
                    status.failure = Some(error.to_string());
                    status.loading = false;
                }
                slot.discard_queued();
            }
            Ok(loaded) => {
                tracing::info!(
                    plugin = %slot.name,
                    path = %spec.path.display(),
                    events = %spec.filter,
                    cached = loaded.from_cache,
                    "plugin loaded"
                );
                slot.queue.set_capacity(spec.limits.queue_capacity.get());
                {
                    let mut status = lock(&slot.status);
                    status.spec = spec.clone();
                    status.loaded = Some(loaded.clone());
                    status.last_reload_error = None;
                }
                slot.rates.clear_failures();
                if let Some(effects) = self.services.effects() {
                    effects.configure(&spec.name, &spec.grants.effects);
                }
                let version = self.version(&slot, spec, loaded);
                self.spawn_runner(&slot, version);
            }
        }
        self.publish();
    }

    /// Starts the task of a plugin (no task runs for it) and a watcher of that task: when the
    /// task gives up (too many failures in a row) or panics (a bug in host code during one of
    /// the plugin's calls), the watcher parks the plugin, with the reason logged at error and
    /// shown as its state.
    fn spawn_runner(&self, slot: &Arc<Slot>, version: Version) {
        let (swaps, inbox) = mpsc::channel(1);
        {
            let mut status = lock(&slot.status);
            status.failure = None;
            status.swaps = Some(swaps);
            status.loading = false;
            status.parked = false;
        }
        slot.parked.store(false, Ordering::Relaxed);
        let runner = Runner {
            slot: Arc::clone(slot),
            version,
            instance: None,
            backoff: Backoff::default(),
        };
        let task = self.runtime.spawn(runner.run(inbox, self.shutdown.clone()));
        let slot = Arc::clone(slot);
        let watcher = self.runtime.spawn(async move {
            let reason = match task.await {
                Ok(RunEnd::Stopped) => return,
                Ok(RunEnd::GaveUp(reason)) => reason,
                Err(error) if error.is_panic() => {
                    let panic = error.into_panic();
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|text| (*text).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic without a message".to_owned());
                    format!("host error during a plugin call: {message}")
                }
                // Cancelled: the runtime is stopping.
                Err(_) => return,
            };
            slot.park(&reason);
        });
        let mut tasks = lock(&self.tasks);
        tasks.retain(|task| !task.is_finished());
        tasks.push(watcher);
    }

    /// Revives every parked plugin with the version it had, its failures forgotten (its rate
    /// windows are kept). A reload does this first.
    pub fn revive_parked(&self) {
        let slots: Vec<Arc<Slot>> = lock(&self.slots).values().cloned().collect();
        let mut revived = false;
        for slot in slots {
            let (spec, loaded) = {
                let status = lock(&slot.status);
                if !status.parked {
                    continue;
                }
                let Some(loaded) = status.loaded.clone() else {
                    continue;
                };
                (status.spec.clone(), loaded)
            };
            slot.rates.clear_failures();
            tracing::info!(plugin = %slot.name, "parked plugin revived by a reload");
            let version = self.version(&slot, spec, loaded);
            self.spawn_runner(&slot, version);
            revived = true;
        }
        if revived {
            self.publish();
        }
    }

    /// Stops routing events to a plugin and forgets it. Its task still handles the events
    /// already queued (each under its deadline), runs `serf_shutdown`, and ends.
    pub fn remove(&self, name: &str) {
        let Some(slot) = lock(&self.slots).remove(name) else {
            return;
        };
        self.publish();
        lock(&slot.status).swaps = None;
        slot.queue.close();
        tracing::info!(plugin = %name, queued = slot.queue.len(), "plugin removed; draining its queue");
    }

    /// Records that a reload could not apply a new version of `name`.
    pub fn reload_failed(&self, name: &str, error: &str) {
        if let Some(slot) = self.slot(name) {
            slot.counters
                .reload_failures
                .fetch_add(1, Ordering::Relaxed);
            lock(&slot.status).last_reload_error = Some(error.to_owned());
        }
    }

    /// Records that a reload found `name` as configured: an earlier failure no longer holds.
    pub fn reload_unchanged(&self, name: &str) {
        if let Some(slot) = self.slot(name) {
            lock(&slot.status).last_reload_error = None;
        }
    }
}

impl Slot {
    fn new(spec: &PluginSpec) -> Slot {
        Slot {
            name: Arc::from(spec.name.as_str()),
            queue: EventQueue::new(spec.limits.queue_capacity.get()),
            counters: Counters::default(),
            status: Mutex::new(Status {
                spec: spec.clone(),
                loaded: None,
                failure: None,
                last_reload_error: None,
                swaps: None,
                loading: false,
                parked: false,
            }),
            rates: Arc::new(PluginRates::default()),
            parked: AtomicBool::new(false),
        }
    }

    /// Parks the plugin: no task runs for it until a reload, and its events are discarded.
    fn park(&self, reason: &str) {
        tracing::error!(plugin = %self.name, %reason, "plugin parked; a reload revives it");
        self.parked.store(true, Ordering::Relaxed);
        {
            let mut status = lock(&self.status);
            status.failure = Some(format!("{reason} (parked until a reload)"));
            status.swaps = None;
            status.parked = true;
        }
        self.discard_queued();
    }

    /// Counts the events still queued as discarded and drops them.
    fn discard_queued(&self) {
        let drained = self.queue.drain() as u64;
        if drained > 0 {
            self.counters
                .discarded
                .fetch_add(drained, Ordering::Relaxed);
        }
    }

    /// Queues an event and returns its `seq`, or counts and (now and then) logs its drop.
    fn offer(&self, event: Arc<Encoded>) -> Option<u64> {
        if self.parked.load(Ordering::Relaxed) {
            self.counters.offered.fetch_add(1, Ordering::Relaxed);
            self.counters.discarded.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if let Some(seq) = self.queue.push(&self.counters.offered, event) {
            return Some(seq);
        }
        let dropped = self.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        self.counters
            .dropped_unreported
            .fetch_add(1, Ordering::Relaxed);
        if dropped.is_power_of_two() {
            tracing::warn!(plugin = %self.name, dropped, "plugin queue full; event dropped");
        }
        None
    }

    fn snapshot(&self) -> PluginStatsSnapshot {
        let c = &self.counters;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let (failure, filter, sha256, last_reload_error, spec) = {
            let status = lock(&self.status);
            let failure = match &status.failure {
                None if status.loading => Some(String::new()),
                failure => failure.clone(),
            };
            (
                failure,
                status.spec.filter.to_string(),
                status
                    .loaded
                    .as_ref()
                    .map(|loaded| loaded.sha256.clone())
                    .unwrap_or_default(),
                status.last_reload_error.clone().unwrap_or_default(),
                SpecView {
                    path: status.spec.path.clone(),
                    capabilities: status.spec.grants.capabilities.to_string(),
                    dirs: status.spec.dirs.clone(),
                    env_keys: status.spec.grants.env.keys().cloned().collect(),
                    limits: status.spec.limits,
                    commands: super::commands::names(&status.spec.grants.commands),
                },
            )
        };
        PluginStatsSnapshot {
            name: self.name.to_string(),
            state: match failure {
                None => "running".to_owned(),
                Some(reason) if reason.is_empty() => "loading".to_owned(),
                Some(reason) => format!("failed: {reason}"),
            },
            filter,
            sha256,
            path: spec.path,
            capabilities: spec.capabilities,
            dirs: spec.dirs,
            env_keys: spec.env_keys,
            limits: spec.limits,
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
            queue_depth: self.queue.len(),
            queue_capacity: self.queue.capacity(),
            fuel_used: load(&c.fuel_used),
            latency_p50: c.latency.quantile(0.50),
            latency_p99: c.latency.quantile(0.99),
            reloads: load(&c.reloads),
            reload_failures: load(&c.reload_failures),
            last_reload_error,
            jobs: load(&c.jobs),
            discarded: load(&c.discarded),
            rate_limited_messages: self.rates.refused().0,
            rate_limited_logs: self.rates.refused().1,
            rate_limited_output: self.rates.refused_output_lines(),
            refused_responses: self.rates.refused_responses.load(Ordering::Relaxed),
            commands: spec.commands,
            command_counters: self.rates.commands.view(),
            effects: Vec::new(),
        }
    }
}

/// What [`Slot::snapshot`] shows of a plugin's configuration.
struct SpecView {
    path: std::path::PathBuf,
    capabilities: String,
    dirs: BTreeMap<String, std::path::PathBuf>,
    env_keys: Vec<String>,
    limits: super::Limits,
    commands: String,
}

/// Creates missing granted directories, so that a fresh checkout runs. Blocking.
pub fn prepare_dirs(spec: &PluginSpec) -> Result<(), LoadError> {
    for (guest, host) in &spec.dirs {
        std::fs::create_dir_all(host).map_err(|error| LoadError::Dir {
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

/// How a plugin's task ended.
enum RunEnd {
    /// The agent is stopping, or the plugin was removed.
    Stopped,
    /// It failed too often in a row; the reason says how.
    GaveUp(String),
}

/// One plugin's task state.
struct Runner {
    slot: Arc<Slot>,
    version: Version,
    instance: Option<Instance>,
    backoff: Backoff,
}

impl Runner {
    async fn run(mut self, mut swaps: mpsc::Receiver<Swap>, shutdown: CancellationToken) -> RunEnd {
        let slot = Arc::clone(&self.slot);
        loop {
            // After a failure the next instance starts only after the plugin's backoff; the
            // events wait in the queue (dropped and counted if it fills).
            if self.instance.is_none()
                && let Some(at) = slot.rates.restart_at()
                && at > Instant::now()
            {
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break,
                    Some(swap) = swaps.recv() => {
                        self.swap(swap).await;
                        continue;
                    }
                    () = tokio::time::sleep_until(at.into()) => {}
                }
            }
            // A new version goes in before the next event, never during one.
            let queued = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(swap) = swaps.recv() => {
                    self.swap(swap).await;
                    continue;
                }
                queued = slot.queue.next() => match queued {
                    Some(queued) => queued,
                    None => {
                        tracing::info!(plugin = %slot.name, "plugin stopped");
                        break;
                    }
                },
            };
            if let Some(taken) = &queued.event.taken {
                taken.store(false, Ordering::Release);
            }
            let dropped = slot.counters.dropped_unreported.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                let notice = Encoded {
                    body: abi::encode(&abi::Event::Dropped { count: dropped }),
                    query: None,
                    received: Instant::now(),
                    taken: None,
                };
                if let Some(reason) = self.deliver(0, &notice).await {
                    return RunEnd::GaveUp(reason);
                }
            }
            if let Some(reason) = self.deliver(queued.seq, &queued.event).await {
                return RunEnd::GaveUp(reason);
            }
        }
        if let Some(instance) = self.instance.take() {
            instance.shutdown().await;
        }
        RunEnd::Stopped
    }

    /// Puts a new version in place of the old: the old instance's `serf_shutdown` runs
    /// first, then the new version's instance starts (`serf_init`). If it cannot, the old
    /// version runs on in a fresh instance, and the reload learns why.
    async fn swap(&mut self, swap: Swap) {
        let Prepared { version } = swap.prepared;
        if let Some(old) = self.instance.take() {
            old.shutdown().await;
        }
        let started = Instance::start(
            &version.loaded,
            &version.spec,
            Arc::clone(&version.context),
            &version.init,
        )
        .await;
        match started {
            Ok(instance) => {
                tracing::info!(
                    plugin = %self.slot.name,
                    sha256 = %version.loaded.sha256,
                    "plugin version swapped in"
                );
                self.version = version;
                self.instance = Some(instance);
                self.backoff.reset();
                self.slot.rates.clear_failures();
                let _ = swap.done.send(Ok(()));
            }
            Err(error) => {
                // The old version goes on; a failure to restart it is the usual backoff's.
                let old = &self.version;
                if let Ok(instance) =
                    Instance::start(&old.loaded, &old.spec, Arc::clone(&old.context), &old.init)
                        .await
                {
                    self.instance = Some(instance);
                }
                let _ = swap.done.send(Err(error));
            }
        }
    }

    /// Hands one event to the plugin, starting an instance if none runs. Returns why the
    /// plugin should be parked, if it failed once too often in a row.
    async fn deliver(&mut self, seq: u64, event: &Encoded) -> Option<String> {
        let counters = &self.slot.counters;
        let now = Instant::now();
        if let Some((_, deadline)) = event.query
            && now >= deadline
        {
            counters.expired.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if self.instance.is_none() {
            if self.backoff.is_waiting(now) {
                counters.skipped.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            let version = &self.version;
            match Instance::start(
                &version.loaded,
                &version.spec,
                Arc::clone(&version.context),
                &version.init,
            )
            .await
            {
                Ok(instance) => {
                    counters.starts.fetch_add(1, Ordering::Relaxed);
                    self.backoff.reset();
                    lock(&self.slot.status).failure = None;
                    self.instance = Some(instance);
                }
                Err(error) => {
                    counters.start_failures.fetch_add(1, Ordering::Relaxed);
                    counters.skipped.fetch_add(1, Ordering::Relaxed);
                    let retry_in = self.backoff.fail(now);
                    tracing::warn!(plugin = %self.slot.name, %error, ?retry_in, "plugin failed to start");
                    lock(&self.slot.status).failure = Some(format!("cannot start: {error}"));
                    return None;
                }
            }
        }
        let instance = self.instance.as_mut().expect("started above");
        let header = envelope_header(seq);
        let query = event.query.map(|(key, _)| key);
        let mut give_up = None;
        match instance.handle(&header, &event.body, query).await {
            Ok(cost) => {
                counters.handled.fetch_add(1, Ordering::Relaxed);
                counters.fuel_used.fetch_add(cost.fuel, Ordering::Relaxed);
                self.slot.rates.record_success();
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
                    let max = self.version.spec.limits.max_consecutive_traps;
                    let now = Instant::now();
                    match self.slot.rates.record_failure(now, max) {
                        AfterFailure::Restart { delay, consecutive } => {
                            // At most one such warning a second; the rest are counted.
                            if let Some(unlogged) = self.slot.rates.take_failure_log(now) {
                                tracing::warn!(plugin = %self.slot.name, seq, kind = error.kind(), %error, consecutive, restart_in = ?delay, unlogged_failures = unlogged, "plugin trapped; instance recycled");
                            }
                        }
                        AfterFailure::Park { consecutive } => {
                            give_up = Some(format!(
                                "trapped {consecutive} times in a row (max_consecutive_traps), \
                                 the last time: {error}"
                            ));
                        }
                    }
                } else {
                    self.slot.rates.record_success();
                    if let Some(unlogged) = self.slot.rates.take_failure_log(Instant::now()) {
                        tracing::warn!(plugin = %self.slot.name, seq, %error, unlogged_failures = unlogged, "plugin failed to handle event");
                    }
                }
            }
        }
        counters.latency.record(event.received.elapsed());
        give_up
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

fn encode_event(event: &serf_core::Event) -> Encoded {
    let received = Instant::now();
    let members = |members: &[serf_core::Member]| members.iter().map(abi_member).collect();
    let (abi_event, query) = match event {
        serf_core::Event::Member(member_event) => {
            let members = members(&member_event.members);
            let event = match member_event.kind {
                serf_core::MemberEventKind::Join => abi::Event::MemberJoin { members },
                serf_core::MemberEventKind::Leave => abi::Event::MemberLeave { members },
                serf_core::MemberEventKind::Failed => abi::Event::MemberFailed { members },
                serf_core::MemberEventKind::Update => abi::Event::MemberUpdate { members },
                serf_core::MemberEventKind::Reap => abi::Event::MemberReap { members },
            };
            (event, None)
        }
        serf_core::Event::User(user) => (
            abi::Event::User(abi::UserEvent {
                name: user.name.clone(),
                payload: user.payload.clone(),
                ltime: user.ltime,
                coalesce: user.coalesce,
            }),
            None,
        ),
        serf_core::Event::Query(query) => {
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
        taken: None,
    }
}

/// A member as plugins see it.
pub fn abi_member(member: &serf_core::Member) -> abi::Member {
    abi::Member {
        name: member.name.clone(),
        addr: member.addr.ip().to_string(),
        port: member.addr.port(),
        tags: member.tags.clone(),
        status: member.status.as_str().to_owned(),
    }
}

/// A TOML value as the msgpack value a plugin's `serf_init` receives.
pub fn toml_to_msgpack(value: &toml::Value) -> rmpv::Value {
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

    fn encoded() -> Arc<Encoded> {
        Arc::new(Encoded {
            body: Vec::new(),
            query: None,
            received: Instant::now(),
            taken: None,
        })
    }

    #[test]
    fn a_queue_numbers_drops_too_and_keeps_its_events_when_resized() {
        let offered = AtomicU64::new(0);
        let queue = EventQueue::new(2);
        assert_eq!(queue.push(&offered, encoded()), Some(1));
        assert_eq!(queue.push(&offered, encoded()), Some(2));
        assert_eq!(queue.push(&offered, encoded()), None, "full");
        queue.set_capacity(1);
        assert_eq!(queue.len(), 2, "a smaller capacity drops nothing queued");
        assert_eq!(queue.push(&offered, encoded()), None);
        queue.set_capacity(4);
        assert_eq!(
            queue.push(&offered, encoded()),
            Some(5),
            "drops use seq numbers"
        );
        queue.close();
        assert_eq!(queue.push(&offered, encoded()), None, "closed");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let seqs: Vec<u64> = runtime.block_on(async {
            let mut seqs = Vec::new();
            while let Some(queued) = queue.next().await {
                seqs.push(queued.seq);
            }
            seqs
        });
        assert_eq!(
            seqs,
            [1, 2, 5],
            "a closed queue still hands out what it holds"
        );
    }

    #[test]
    fn histogram_memory_is_fixed_whatever_it_records() {
        let histogram = Histogram::default();
        let buckets = histogram.buckets.len();
        for nanos in [0, 1, 7, 8, 1_000, 1 << 40, u64::MAX] {
            histogram.record(Duration::from_nanos(nanos));
        }
        histogram.record(Duration::MAX);
        assert_eq!(histogram.buckets.len(), buckets);
        assert_eq!(histogram.quantile(0.0), Duration::ZERO);
        assert!(histogram.quantile(1.0) > Duration::from_secs(1 << 30));
    }

    /// Services that count the events plugins fire, or panic when asked to fire one.
    struct Firing {
        fired: AtomicU64,
        panic: bool,
    }

    impl HostServices for Firing {
        fn respond(&self, _: &str, _: QueryKey, _: Vec<u8>) -> Result<(), abi::Status> {
            Ok(())
        }

        fn fire_event(&self, _: &str, _: abi::FireEvent) -> Result<(), abi::Status> {
            assert!(!self.panic, "a bug in host code");
            self.fired.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    /// A runtime and a host running `tests/wat/firetrap.wat` as `p`, granted `events`.
    fn start_firetrap(
        dir: &std::path::Path,
        fires: u32,
        trap: bool,
        services: Arc<Firing>,
    ) -> (tokio::runtime::Runtime, Arc<PluginHost>) {
        let text = include_str!("../../../tests/wat/firetrap.wat")
            .replace("FIRES", &fires.to_string())
            .replace("TRAP", if trap { "1" } else { "0" });
        let path = dir.join("p.wasm");
        std::fs::write(&path, wat::parse_str(text).unwrap()).unwrap();
        let spec = PluginSpec {
            name: "p".into(),
            path,
            filter: EventFilter::all(),
            limits: super::super::Limits {
                max_consecutive_traps: 1000,
                ..super::super::Limits::DEFAULT
            },
            dirs: BTreeMap::new(),
            config: toml::Table::new(),
            grants: super::super::Grants {
                capabilities: super::super::Capabilities::from_names(&["events"]).unwrap(),
                ..Default::default()
            },
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let host = runtime.block_on(PluginHost::start(
            Engine::new(None),
            vec![spec],
            "node",
            serf_core::SerfLimits::SERF,
            services,
            runtime.handle(),
        ));
        (runtime, host)
    }

    fn user_event(n: u64) -> abi::Event {
        abi::Event::User(abi::UserEvent {
            name: "go".into(),
            payload: Vec::new(),
            ltime: n,
            coalesce: false,
        })
    }

    #[test]
    fn the_event_rate_limit_survives_traps() {
        let dir = tempfile::tempdir().unwrap();
        let services = Arc::new(Firing {
            fired: AtomicU64::new(0),
            panic: false,
        });
        let (runtime, host) = start_firetrap(dir.path(), 10, true, Arc::clone(&services));
        let started = Instant::now();
        for n in 1..=4 {
            host.deliver_to("p", &user_event(n)).unwrap();
        }
        serf_testkit::wait_until("four traps", || host.stats()[0].traps == 4);
        let elapsed = started.elapsed();
        let fired = services.fired.load(Ordering::Relaxed);
        // Ten a second for the plugin, whatever its instances: before, each fresh instance
        // had ten of its own, and four traps made forty.
        let bound = 10 * (elapsed.as_secs() + 1);
        assert!(fired >= 10, "the first instance fires its ten: {fired}");
        assert!(fired <= bound, "{fired} events in {elapsed:?}");
        let stats = &host.stats()[0];
        assert_eq!(stats.rate_limited_messages, 40 - fired, "{stats:?}");
        assert_eq!(stats.starts, 4, "{stats:?}");
        runtime.block_on(host.shutdown());
    }

    #[test]
    fn a_panic_in_host_code_parks_the_plugin_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let services = Arc::new(Firing {
            fired: AtomicU64::new(0),
            panic: true,
        });
        let (runtime, host) = start_firetrap(dir.path(), 1, false, services);
        assert_eq!(host.stats()[0].state, "running");
        host.deliver_to("p", &user_event(1)).unwrap();
        serf_testkit::wait_until("the plugin to fail", || host.stats()[0].state != "running");
        let stats = host.stats().remove(0);
        assert!(
            stats
                .state
                .starts_with("failed: host error during a plugin call")
                && stats.state.contains("a bug in host code"),
            "{stats:?}"
        );
        // Nothing queues for it any more: events are discarded and counted.
        assert_eq!(
            host.deliver_to("p", &user_event(2)),
            Err(DeliverError::NotRunning("p".into()))
        );
        let event = serf_core::Event::User(serf_core::UserEvent {
            name: "go".into(),
            payload: Vec::new(),
            ltime: 3,
            coalesce: false,
        });
        host.dispatch(&event);
        let stats = host.stats().remove(0);
        assert_eq!((stats.discarded, stats.queue_depth), (1, 0), "{stats:?}");
        // A reload revives it.
        host.revive_parked();
        assert_eq!(host.stats()[0].state, "running");
        assert!(host.deliver_to("p", &user_event(4)).is_ok());
        runtime.block_on(host.shutdown());
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
