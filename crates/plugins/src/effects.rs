//! Effects (ABI v1.2): outbound HTTP, durable state, timers and plugin-defined metrics.
//!
//! Each effect is denied unless the plugin's `[plugins.NAME]` table grants it
//! ([`EffectGrants`], part of [`super::Grants`]): `[plugins.NAME.http]` with the origins it
//! may reach, `[plugins.NAME.state]` with its quota, `tick = "5s"`, `[plugins.NAME.metrics]`.
//! The agent keeps one [`PluginEffects`] per plugin name in its [`EffectHost`], so the state
//! store, the metrics, the rate windows and the counters outlive traps and reloads. Every call
//! is counted (calls, denials, failures, time) and shown in `serf info`.
//!
//! None of the host calls holds up the plugin runtime: an HTTP request and every database
//! operation run on a blocking thread while the guest's call waits (an async host function),
//! within the event's deadline. Ticks go through the plugin's own queue ([`super::timers`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serf_plugin_sdk::abi::{self, Status};
use wasmtime::{Caller, Linker};

use super::http::{self, HttpGrant, Origin};
use super::instance::{StoreState, charge, read_guest, write_guest};
use super::metrics::{MetricsGrant, PluginMetrics};
use super::rates::Window;
use super::state::{StateError, StateGrant, StateStore};

// --- Configuration: the tables of `serf.toml`. ---------------------------------------------

/// `[plugins.NAME.http]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHttp {
    /// Origins the plugin may reach: `https://host[:port]`, `https://*.domain`.
    pub allow: Vec<String>,
    /// Longest wait for one request (default 5 s, never past the event's deadline).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Largest response body, in KiB (default 1024).
    pub max_response_kib: Option<usize>,
    /// Requests in flight at once (default 4).
    pub max_concurrent: Option<usize>,
    /// Requests started per second (default 10).
    pub per_second: Option<u32>,
}

/// `[plugins.NAME.state]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileState {
    /// Quota: bytes of keys and values together (default 16 MiB).
    pub max_bytes: Option<u64>,
    /// Quota: keys (default 10000).
    pub max_keys: Option<u64>,
    /// Largest value, in bytes (default and cap 1 MiB).
    pub max_value_bytes: Option<usize>,
}

/// `[plugins.NAME.metrics]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMetrics {
    /// Metrics the plugin may define (default 32, at most 1000).
    pub max_metrics: Option<usize>,
}

/// What a plugin's table grants of the effects; nothing by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EffectGrants {
    /// Outbound HTTP.
    pub http: Option<HttpGrant>,
    /// A durable key-value store.
    pub state: Option<StateGrant>,
    /// Ticks, starting at this period (`Duration::ZERO`: granted, started by `set_tick`).
    pub tick: Option<Duration>,
    /// Metrics.
    pub metrics: Option<MetricsGrant>,
}

/// The shortest tick period.
pub const MIN_TICK: Duration = Duration::from_millis(abi::MIN_TICK_MS);
/// The most metrics a table may allow.
const MAX_METRICS_CAP: usize = 1000;

/// Builds a plugin's [`EffectGrants`] from its tables; the error names the key, the value and
/// what is wrong with it.
pub fn resolve(
    http: Option<&FileHttp>,
    state: Option<&FileState>,
    tick: Option<Duration>,
    metrics: Option<&FileMetrics>,
) -> Result<EffectGrants, (&'static str, String, String)> {
    let http = match http {
        None => None,
        Some(table) => {
            let allow = table
                .allow
                .iter()
                .map(|text| {
                    Origin::parse(text).map_err(|reason| ("http.allow", text.clone(), reason))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let positive = |key: &'static str, value: usize| {
                if value == 0 {
                    Err((key, "0".to_owned(), "must be at least 1".to_owned()))
                } else {
                    Ok(value)
                }
            };
            Some(HttpGrant {
                allow,
                timeout: table.timeout.unwrap_or(HttpGrant::DEFAULT_TIMEOUT),
                max_response_bytes: positive(
                    "http.max_response_kib",
                    table.max_response_kib.unwrap_or(1024),
                )?
                .saturating_mul(1024),
                max_concurrent: positive(
                    "http.max_concurrent",
                    table
                        .max_concurrent
                        .unwrap_or(HttpGrant::DEFAULT_MAX_CONCURRENT),
                )?,
                per_second: positive(
                    "http.per_second",
                    table.per_second.unwrap_or(HttpGrant::DEFAULT_PER_SECOND) as usize,
                )? as u32,
            })
        }
    };
    let state = state.map(|table| StateGrant {
        max_bytes: table.max_bytes.unwrap_or(StateGrant::DEFAULT_MAX_BYTES),
        max_keys: table.max_keys.unwrap_or(StateGrant::DEFAULT_MAX_KEYS),
        max_value_bytes: table
            .max_value_bytes
            .unwrap_or(abi::MAX_STATE_VALUE_BYTES)
            .min(abi::MAX_STATE_VALUE_BYTES),
    });
    if let Some(period) = tick
        && !period.is_zero()
        && period < MIN_TICK
    {
        return Err((
            "tick",
            format!("{period:?}"),
            format!("the shortest tick is {MIN_TICK:?}"),
        ));
    }
    let metrics = match metrics {
        None => None,
        Some(table) => {
            let max = table
                .max_metrics
                .unwrap_or(MetricsGrant::DEFAULT_MAX_METRICS);
            if max > MAX_METRICS_CAP {
                return Err((
                    "metrics.max_metrics",
                    max.to_string(),
                    format!("at most {MAX_METRICS_CAP}"),
                ));
            }
            Some(MetricsGrant { max_metrics: max })
        }
    };
    Ok(EffectGrants {
        http,
        state,
        tick,
        metrics,
    })
}

impl EffectGrants {
    /// What `serf info` shows of the grants, by key; nothing for an effect not granted.
    pub fn describe(&self) -> Vec<(String, String)> {
        let mut pairs = Vec::new();
        if let Some(http) = &self.http {
            let origins: Vec<String> = http.allow.iter().map(Origin::to_string).collect();
            pairs.push(("http_allow".into(), origins.join(",")));
            pairs.push((
                "http_limits".into(),
                format!(
                    "timeout={:?} max_response_kib={} max_concurrent={} per_second={}",
                    http.timeout,
                    http.max_response_bytes / 1024,
                    http.max_concurrent,
                    http.per_second
                ),
            ));
        }
        if let Some(state) = &self.state {
            pairs.push((
                "state_quota".into(),
                format!(
                    "max_bytes={} max_keys={} max_value_bytes={}",
                    state.max_bytes, state.max_keys, state.max_value_bytes
                ),
            ));
        }
        if let Some(tick) = self.tick {
            pairs.push(("tick".into(), humantime::format_duration(tick).to_string()));
        }
        if let Some(metrics) = &self.metrics {
            pairs.push(("max_metrics".into(), metrics.max_metrics.to_string()));
        }
        pairs
    }
}

// --- The runtime side: one EffectHost per agent, one PluginEffects per plugin. --------------

/// Calls, denials, failures and time spent, for one effect of one plugin.
#[derive(Debug, Default)]
pub struct EffectCounter {
    calls: AtomicU64,
    denied: AtomicU64,
    failed: AtomicU64,
    micros: AtomicU64,
}

impl EffectCounter {
    fn denied(&self) -> Status {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.denied.fetch_add(1, Ordering::Relaxed);
        Status::Denied
    }

    /// Counts a call that took `since.elapsed()` and ended with `result`.
    fn finish<T>(&self, since: Instant, result: &Result<T, Status>) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.micros
            .fetch_add(since.elapsed().as_micros() as u64, Ordering::Relaxed);
        match result {
            Err(Status::Denied) => self.denied.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
            Ok(_) => 0,
        };
    }

    fn describe(&self, effect: &str, pairs: &mut Vec<(String, String)>) {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed).to_string();
        pairs.push((format!("{effect}_calls"), load(&self.calls)));
        pairs.push((format!("{effect}_denied"), load(&self.denied)));
        pairs.push((format!("{effect}_failed"), load(&self.failed)));
        pairs.push((
            format!("{effect}_time"),
            format!(
                "{:?}",
                Duration::from_micros(self.micros.load(Ordering::Relaxed))
            ),
        ));
    }
}

/// When the next tick is due, and how often.
#[derive(Debug, Default)]
struct TickState {
    period: Option<Duration>,
    next: Option<Instant>,
}

/// One plugin's effects: its store, metrics, windows and counters. Lives as long as the agent.
#[derive(Debug)]
pub struct PluginEffects {
    name: String,
    state_dir: Option<PathBuf>,
    /// Counters by effect.
    pub http: EffectCounter,
    /// State calls.
    pub state: EffectCounter,
    /// `set_tick` calls.
    pub timer: EffectCounter,
    /// Metric calls.
    pub metric_calls: EffectCounter,
    http_in_flight: AtomicUsize,
    http_window: Mutex<Option<Window>>,
    store: Mutex<Option<Arc<StateStore>>>,
    /// The plugin's metrics.
    pub metrics: PluginMetrics,
    tick: Mutex<TickState>,
    /// A tick is in the plugin's queue; cleared when the plugin's task takes it.
    pub(super) tick_pending: Arc<AtomicBool>,
    ticks: AtomicU64,
    ticks_coalesced: AtomicU64,
    coalesced_unreported: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl PluginEffects {
    fn new(name: &str, state_dir: Option<PathBuf>) -> PluginEffects {
        PluginEffects {
            name: name.to_owned(),
            state_dir,
            http: EffectCounter::default(),
            state: EffectCounter::default(),
            timer: EffectCounter::default(),
            metric_calls: EffectCounter::default(),
            http_in_flight: AtomicUsize::new(0),
            http_window: Mutex::new(None),
            store: Mutex::new(None),
            metrics: PluginMetrics::default(),
            tick: Mutex::new(TickState::default()),
            tick_pending: Arc::new(AtomicBool::new(false)),
            ticks: AtomicU64::new(0),
            ticks_coalesced: AtomicU64::new(0),
            coalesced_unreported: AtomicU64::new(0),
        }
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The plugin's store, opened on first use. Blocking.
    pub fn store(&self) -> Result<Arc<StateStore>, StateError> {
        let mut store = lock(&self.store);
        if let Some(store) = &*store {
            return Ok(Arc::clone(store));
        }
        let opened = Arc::new(StateStore::open(self.state_dir.as_deref(), &self.name)?);
        *store = Some(Arc::clone(&opened));
        Ok(opened)
    }

    /// Takes a place for one request: within `max_concurrent` and `per_second`.
    fn start_request(&self, grant: &HttpGrant) -> Result<InFlight<'_>, Status> {
        {
            let now = Instant::now();
            let mut window = lock(&self.http_window);
            let window = window.get_or_insert_with(|| Window::new(now));
            if !window.take(now, grant.per_second).0 {
                return Err(Status::RateLimited);
            }
        }
        let before = self.http_in_flight.fetch_add(1, Ordering::AcqRel);
        let guard = InFlight(&self.http_in_flight);
        if before >= grant.max_concurrent {
            return Err(Status::RateLimited);
        }
        Ok(guard)
    }

    /// Applies the tick period a (new) version's table sets.
    fn configure_tick(&self, period: Option<Duration>) {
        let mut tick = lock(&self.tick);
        tick.period = period.filter(|p| !p.is_zero());
        tick.next = tick.period.map(|p| Instant::now() + p);
    }

    /// `set_tick`: a new period from now, or none.
    fn set_tick(&self, period: Option<Duration>) {
        self.configure_tick(period);
    }

    /// If a tick is due at `now`, queues it through `deliver` (unless one is queued still,
    /// which it then counts as coalesced); returns when the next one is due. `deliver` says
    /// `Err(true)` when the plugin is gone: its ticks stop.
    pub(super) fn poll_tick(
        &self,
        now: Instant,
        deliver: impl FnOnce(abi::Event) -> Result<(), bool>,
    ) -> Option<Instant> {
        let mut tick = lock(&self.tick);
        let period = tick.period?;
        let next = tick.next.unwrap_or(now);
        if now < next {
            return Some(next);
        }
        tick.next = Some(now + period);
        if self.tick_pending.swap(true, Ordering::AcqRel) {
            self.ticks_coalesced.fetch_add(1, Ordering::Relaxed);
            self.coalesced_unreported.fetch_add(1, Ordering::Relaxed);
        } else {
            let coalesced = self.coalesced_unreported.swap(0, Ordering::Relaxed);
            match deliver(abi::Event::Tick(abi::Tick { coalesced })) {
                Ok(()) => {
                    self.ticks.fetch_add(1, Ordering::Relaxed);
                }
                Err(gone) => {
                    self.tick_pending.store(false, Ordering::Release);
                    self.timer.failed.fetch_add(1, Ordering::Relaxed);
                    if gone {
                        *tick = TickState::default();
                        return None;
                    }
                }
            }
        }
        tick.next
    }

    /// Counters and metrics for `serf info`, by key.
    pub fn describe(&self, pairs: &mut Vec<(String, String)>, grants: &EffectGrants) {
        if grants.http.is_some() || self.http.calls.load(Ordering::Relaxed) > 0 {
            self.http.describe("http", pairs);
            pairs.push((
                "http_in_flight".into(),
                self.http_in_flight.load(Ordering::Relaxed).to_string(),
            ));
        }
        if grants.state.is_some() || self.state.calls.load(Ordering::Relaxed) > 0 {
            self.state.describe("state", pairs);
            if let Some(store) = &*lock(&self.store) {
                let (bytes, keys) = store.totals();
                pairs.push(("state_bytes".into(), bytes.to_string()));
                pairs.push(("state_keys".into(), keys.to_string()));
            }
        }
        if grants.tick.is_some() || self.timer.calls.load(Ordering::Relaxed) > 0 {
            self.timer.describe("tick", pairs);
            let load = |c: &AtomicU64| c.load(Ordering::Relaxed).to_string();
            pairs.push(("ticks".into(), load(&self.ticks)));
            pairs.push(("ticks_coalesced".into(), load(&self.ticks_coalesced)));
            let period = lock(&self.tick).period;
            pairs.push((
                "tick_period".into(),
                period.map_or_else(
                    || "off".to_owned(),
                    |p| humantime::format_duration(p).to_string(),
                ),
            ));
        }
        if grants.metrics.is_some() || self.metric_calls.calls.load(Ordering::Relaxed) > 0 {
            self.metric_calls.describe("metric", pairs);
            for metric in self.metrics.snapshot() {
                pairs.push((
                    format!("metric.{}", metric.name),
                    format!("{} {}", metric.kind.as_str(), metric.describe()),
                ));
            }
        }
    }
}

/// One request in flight; dropping it frees the place.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Every plugin's effects, by name; one per agent (or per `serf plugin run`).
#[derive(Debug)]
pub struct EffectHost {
    state_dir: Option<PathBuf>,
    plugins: Mutex<BTreeMap<String, Arc<PluginEffects>>>,
    /// Wakes the ticker when a period changes.
    pub(super) wake: Arc<tokio::sync::Notify>,
}

impl EffectHost {
    /// State stores go to `<data_dir>/plugin-state`, or stay in memory without a data dir.
    pub fn new(data_dir: Option<&Path>) -> Arc<EffectHost> {
        Arc::new(EffectHost {
            state_dir: data_dir.map(|dir| dir.join("plugin-state")),
            plugins: Mutex::new(BTreeMap::new()),
            wake: Arc::new(tokio::sync::Notify::new()),
        })
    }

    /// The effects of `plugin`, created on first use.
    pub fn plugin(&self, plugin: &str) -> Arc<PluginEffects> {
        let mut plugins = lock(&self.plugins);
        Arc::clone(
            plugins
                .entry(plugin.to_owned())
                .or_insert_with(|| Arc::new(PluginEffects::new(plugin, self.state_dir.clone()))),
        )
    }

    /// Every plugin that has effects, in name order.
    pub(super) fn all(&self) -> Vec<Arc<PluginEffects>> {
        lock(&self.plugins).values().cloned().collect()
    }

    /// Applies a (new) version's grants: its tick period.
    pub fn configure(&self, plugin: &str, grants: &EffectGrants) {
        let effects = self.plugin(plugin);
        effects.configure_tick(grants.tick);
        self.wake.notify_one();
    }

    /// A plugin's store, for `serf plugin state`; `None` if it never stored anything (no
    /// file is created for a look).
    pub fn state_of(&self, plugin: &str) -> Result<Option<Arc<StateStore>>, StateError> {
        let has_file = self
            .state_dir
            .as_ref()
            .is_some_and(|dir| dir.join(format!("{plugin}.redb")).is_file());
        let open = lock(&self.plugins)
            .get(plugin)
            .is_some_and(|effects| lock(&effects.store).is_some());
        if !has_file && !open {
            return Ok(None);
        }
        self.plugin(plugin).store().map(Some)
    }

    /// What `serf info` shows of a plugin's effects: grants, counters and metrics.
    pub fn describe(&self, plugin: &str, grants: &EffectGrants) -> Vec<(String, String)> {
        let mut pairs = grants.describe();
        if let Some(effects) = lock(&self.plugins).get(plugin) {
            effects.describe(&mut pairs, grants);
        }
        pairs
    }
}

// --- The host functions. -------------------------------------------------------------------

/// The effect host functions and their signatures, checked like the other `serf` imports.
pub(crate) const EFFECT_FUNCTIONS: [(&str, &str); 9] = [
    (abi::IMPORT_HTTP_REQUEST, "(i32, i32, i32, i32) -> (i32)"),
    (abi::IMPORT_STATE_GET, "(i32, i32, i32, i32) -> (i32)"),
    (abi::IMPORT_STATE_SET, "(i32, i32, i32, i32) -> (i32)"),
    (abi::IMPORT_STATE_DELETE, "(i32, i32) -> (i32)"),
    (abi::IMPORT_STATE_LIST, "(i32, i32, i32, i32) -> (i32)"),
    (abi::IMPORT_TAKE_RESULT, "(i32, i32) -> (i32)"),
    (abi::IMPORT_SET_TICK, "(i64) -> (i32)"),
    (abi::IMPORT_METRIC_DEFINE, "(i32, i32) -> (i32)"),
    (abi::IMPORT_METRIC_RECORD, "(i32, f64) -> (i32)"),
];

/// Largest `state_list` or `metric_define` request read from a guest.
const MAX_SMALL_REQUEST_BYTES: usize = 4 * 1024;

/// The plugin's effects and its grants, or `Unavailable` where the host offers no effects.
fn effects(caller: &Caller<'_, StoreState>) -> Result<(Arc<PluginEffects>, EffectGrants), Status> {
    let state = caller.data();
    let context = state.plugin_context();
    let host = context.services.effects().ok_or(Status::Unavailable)?;
    Ok((host.plugin(&context.plugin), state.grants().effects.clone()))
}

/// Reads a guest buffer of at most `max` bytes.
fn read_bounded(
    caller: &mut Caller<'_, StoreState>,
    ptr: i32,
    len: i32,
    max: usize,
) -> Result<Vec<u8>, Status> {
    if len as u32 as usize > max {
        return Err(Status::TooLarge);
    }
    read_guest(caller, ptr, len)
}

/// Writes `result` at `out_ptr` if it fits in `out_cap`, else keeps it for `take_result`;
/// returns its length either way.
fn give_result(
    caller: &mut Caller<'_, StoreState>,
    result: Vec<u8>,
    out_ptr: i32,
    out_cap: i32,
) -> Result<i32, Status> {
    let len = i32::try_from(result.len()).map_err(|_| Status::TooLarge)?;
    if result.len() <= out_cap as u32 as usize {
        write_guest(caller, out_ptr, &result)?;
    } else {
        *caller.data_mut().kept_result() = Some(result);
    }
    Ok(len)
}

/// Runs `work` on a blocking thread and waits for it without holding the runtime's thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or(Err(Status::Unavailable))
}

fn code(result: Result<i32, Status>) -> i32 {
    result.unwrap_or_else(Status::code)
}

/// Logs a failed effect call at debug (the counters show it at any level).
fn log_failure(plugin: &str, effect: &str, error: &dyn std::fmt::Display) {
    tracing::debug!(target: "plugin", plugin, effect, %error, "plugin effect call failed");
}

async fn http_request(
    caller: &mut Caller<'_, StoreState>,
    ptr: i32,
    len: i32,
    out_ptr: i32,
    out_cap: i32,
) -> Result<i32, Status> {
    let (effects, grants) = effects(caller)?;
    let Some(grant) = grants.http else {
        return Err(effects.http.denied());
    };
    let since = Instant::now();
    let outcome = async {
        let bytes = read_bounded(caller, ptr, len, abi::MAX_HTTP_REQUEST_BYTES + 4096)?;
        let request: abi::HttpRequest = abi::decode(&bytes).map_err(|_| Status::BadArgument)?;
        http::check_request(&grant, &request).map_err(|refusal| {
            log_failure(&effects.name, "http", &refusal);
            refusal.status()
        })?;
        let place = effects.start_request(&grant)?;
        let timeout = match request.timeout_ms {
            0 => grant.timeout,
            ms => Duration::from_millis(ms).min(grant.timeout),
        };
        let deadline = (Instant::now() + timeout).min(caller.data().deadline());
        let (grant, plugin) = (grant.clone(), effects.name.clone());
        let response = blocking(move || {
            http::execute(&grant, request, deadline).map_err(|refusal| {
                log_failure(&plugin, "http", &refusal);
                refusal.status()
            })
        })
        .await;
        drop(place);
        let response = abi::encode(&response?);
        give_result(caller, response, out_ptr, out_cap)
    }
    .await;
    effects.http.finish(since, &outcome);
    outcome
}

/// The store and grant of a state call, or why not.
fn state_call(caller: &Caller<'_, StoreState>) -> Result<(Arc<PluginEffects>, StateGrant), Status> {
    let (effects, grants) = effects(caller)?;
    match grants.state {
        Some(grant) => Ok((effects, grant)),
        None => Err(effects.state.denied()),
    }
}

/// Runs one state operation on the plugin's store, on a blocking thread.
async fn state_op<T: Send + 'static>(
    effects: &Arc<PluginEffects>,
    op: impl FnOnce(&StateStore) -> Result<T, StateError> + Send + 'static,
) -> Result<T, Status> {
    let owner = Arc::clone(effects);
    blocking(move || {
        let store = owner.store().map_err(|error| {
            log_failure(&owner.name, "state", &error);
            error.status()
        })?;
        op(&store).map_err(|error| {
            if !matches!(error, StateError::NotFound) {
                log_failure(&owner.name, "state", &error);
            }
            error.status()
        })
    })
    .await
}

/// Counts a state call; a missing key is an answer, not a failure.
fn finish_state<T>(effects: &PluginEffects, since: Instant, result: &Result<T, Status>) {
    let counted: Result<(), Status> = match result {
        Err(Status::NotFound) | Ok(_) => Ok(()),
        Err(status) => Err(*status),
    };
    effects.state.finish(since, &counted);
}

/// Defines the effect imports on the linker.
pub(crate) fn add_effect_functions(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    linker.func_wrap_async(
        abi::IMPORT_MODULE,
        abi::IMPORT_HTTP_REQUEST,
        |mut caller: Caller<'_, StoreState>, (ptr, len, out_ptr, out_cap): (i32, i32, i32, i32)| {
            Box::new(async move {
                Ok(code(
                    http_request(&mut caller, ptr, len, out_ptr, out_cap).await,
                ))
            })
        },
    )?;
    linker.func_wrap_async(
        abi::IMPORT_MODULE,
        abi::IMPORT_STATE_GET,
        |mut caller: Caller<'_, StoreState>, (kp, kl, out_ptr, out_cap): (i32, i32, i32, i32)| {
            Box::new(async move {
                let result = async {
                    let (effects, _) = state_call(&caller)?;
                    let since = Instant::now();
                    let key = read_bounded(&mut caller, kp, kl, abi::MAX_STATE_KEY_BYTES);
                    let value = match key {
                        Ok(key) => state_op(&effects, move |s| s.get(&key)).await,
                        Err(status) => Err(status),
                    };
                    let result = match value {
                        Ok(value) => {
                            charge(&mut caller, value.len());
                            give_result(&mut caller, value, out_ptr, out_cap)
                        }
                        Err(status) => Err(status),
                    };
                    finish_state(&effects, since, &result);
                    result
                }
                .await;
                Ok(code(result))
            })
        },
    )?;
    linker.func_wrap_async(
        abi::IMPORT_MODULE,
        abi::IMPORT_STATE_SET,
        |mut caller: Caller<'_, StoreState>, (kp, kl, vp, vl): (i32, i32, i32, i32)| {
            Box::new(async move {
                let result = async {
                    let (effects, grant) = state_call(&caller)?;
                    let since = Instant::now();
                    let result = async {
                        let key = read_bounded(&mut caller, kp, kl, abi::MAX_STATE_KEY_BYTES)?;
                        let value = read_bounded(&mut caller, vp, vl, grant.max_value_bytes)?;
                        state_op(&effects, move |s| s.set(&grant, &key, &value)).await?;
                        Ok(Status::Ok.code())
                    }
                    .await;
                    finish_state(&effects, since, &result);
                    result
                }
                .await;
                Ok(code(result))
            })
        },
    )?;
    linker.func_wrap_async(
        abi::IMPORT_MODULE,
        abi::IMPORT_STATE_DELETE,
        |mut caller: Caller<'_, StoreState>, (kp, kl): (i32, i32)| {
            Box::new(async move {
                let result = async {
                    let (effects, _) = state_call(&caller)?;
                    let since = Instant::now();
                    let result = async {
                        let key = read_bounded(&mut caller, kp, kl, abi::MAX_STATE_KEY_BYTES)?;
                        state_op(&effects, move |s| s.delete(&key)).await?;
                        Ok(Status::Ok.code())
                    }
                    .await;
                    finish_state(&effects, since, &result);
                    result
                }
                .await;
                Ok(code(result))
            })
        },
    )?;
    linker.func_wrap_async(
        abi::IMPORT_MODULE,
        abi::IMPORT_STATE_LIST,
        |mut caller: Caller<'_, StoreState>, (ptr, len, out_ptr, out_cap): (i32, i32, i32, i32)| {
            Box::new(async move {
                let result = async {
                    let (effects, _) = state_call(&caller)?;
                    let since = Instant::now();
                    let result = async {
                        let bytes = read_bounded(&mut caller, ptr, len, MAX_SMALL_REQUEST_BYTES)?;
                        let request: abi::StateList =
                            abi::decode(&bytes).map_err(|_| Status::BadArgument)?;
                        let keys = state_op(&effects, move |s| s.list(&request)).await?;
                        let encoded = abi::encode(&keys);
                        charge(&mut caller, encoded.len());
                        give_result(&mut caller, encoded, out_ptr, out_cap)
                    }
                    .await;
                    finish_state(&effects, since, &result);
                    result
                }
                .await;
                Ok(code(result))
            })
        },
    )?;
    linker.func_wrap(
        abi::IMPORT_MODULE,
        abi::IMPORT_TAKE_RESULT,
        |mut caller: Caller<'_, StoreState>, out_ptr: i32, out_cap: i32| -> i32 {
            let Some(kept) = caller.data_mut().kept_result().take() else {
                return Status::NotFound.code();
            };
            let len = kept.len() as i32;
            if kept.len() > out_cap as u32 as usize {
                *caller.data_mut().kept_result() = Some(kept);
                return len;
            }
            match write_guest(&mut caller, out_ptr, &kept) {
                Ok(()) => len,
                Err(status) => status.code(),
            }
        },
    )?;
    linker.func_wrap(
        abi::IMPORT_MODULE,
        abi::IMPORT_SET_TICK,
        |mut caller: Caller<'_, StoreState>, period_ms: i64| -> i32 {
            charge(&mut caller, 0);
            let (effects, grants) = match effects(&caller) {
                Ok(found) => found,
                Err(status) => return status.code(),
            };
            if grants.tick.is_none() {
                return effects.timer.denied().code();
            }
            let since = Instant::now();
            let result = match u64::try_from(period_ms) {
                Ok(0) => Ok(None),
                Ok(ms) if ms >= abi::MIN_TICK_MS => Ok(Some(Duration::from_millis(ms))),
                _ => Err(Status::BadArgument),
            };
            if let Ok(period) = result {
                effects.set_tick(period);
                if let Some(host) = caller.data().plugin_context().services.effects() {
                    host.wake.notify_one();
                }
            } else {
                log_failure(
                    &effects.name,
                    "tick",
                    &format!("period {period_ms} ms is under {} ms", abi::MIN_TICK_MS),
                );
            }
            effects.timer.finish(since, &result);
            result.map_or_else(Status::code, |_| Status::Ok.code())
        },
    )?;
    linker.func_wrap(
        abi::IMPORT_MODULE,
        abi::IMPORT_METRIC_DEFINE,
        |mut caller: Caller<'_, StoreState>, ptr: i32, len: i32| -> i32 {
            let (effects, grants) = match effects(&caller) {
                Ok(found) => found,
                Err(status) => return status.code(),
            };
            let Some(grant) = grants.metrics else {
                return effects.metric_calls.denied().code();
            };
            let since = Instant::now();
            let result = read_bounded(&mut caller, ptr, len, MAX_SMALL_REQUEST_BYTES)
                .and_then(|bytes| {
                    abi::decode::<abi::MetricDefine>(&bytes).map_err(|_| Status::BadArgument)
                })
                .and_then(|define| effects.metrics.define(&grant, &define))
                .map(|id| id as i32);
            effects.metric_calls.finish(since, &result);
            code(result)
        },
    )?;
    linker.func_wrap(
        abi::IMPORT_MODULE,
        abi::IMPORT_METRIC_RECORD,
        |mut caller: Caller<'_, StoreState>, id: i32, value: f64| -> i32 {
            charge(&mut caller, 0);
            let (effects, grants) = match effects(&caller) {
                Ok(found) => found,
                Err(status) => return status.code(),
            };
            if grants.metrics.is_none() {
                return effects.metric_calls.denied().code();
            }
            let since = Instant::now();
            let result = effects.metrics.record(id, value).map(|()| 0);
            effects.metric_calls.finish(since, &result);
            code(result)
        },
    )?;
    Ok(())
}
