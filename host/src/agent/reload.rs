//! Hot reload: serf.toml and the plugin files read again, and the differences applied to the
//! running plugins without a restart.
//!
//! A reload comes from the file watcher ([`spawn_watcher`]: serf.toml, every plugin's file and
//! the plugin directory, debounced), from SIGHUP, or from the RPC `reload`. It resolves the
//! configuration exactly as at start-up, compares its plugins with those running ([`plan`],
//! pure) and applies each difference:
//!
//! - a new module, new limits (other than `queue_capacity`), `config`, `dirs` or grants: the
//!   new version is compiled on a blocking thread, then the plugin's task swaps it in between
//!   two events: the old instance's `serf_shutdown` returns before the new one's `serf_init`
//!   runs, so state the old version saves on the way out is there for the new one. The queue
//!   stays, so no event is lost or reordered. A version that fails to compile or initialise
//!   is not swapped in: the old one runs on (in a fresh instance, if its own had been shut
//!   down already), and the reason goes to the log and to `serf info` (`last_reload_error`);
//! - a new filter or queue capacity: applied at once to the same instance;
//! - a plugin added: it starts; a plugin removed: it gets no new events, handles the ones
//!   already queued, runs `serf_shutdown` and stops.
//!
//! What Serf's SIGHUP applies, the log level, the event handlers and the tags, is applied
//! too, by the agent through [`LiveSettings`], when it differs from the configuration read
//! last. Other settings are not applied live: a reload names the ones that changed, which
//! need a restart. Reloads run one at a time on the plugin runtime, never on the agent's task.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher as _};
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use serf_plugins::dispatch::{self, Applied, PluginHost};
use serf_plugins::{LoadError, PluginSpec};

/// How long the watched files must stay quiet before a reload starts.
pub const DEBOUNCE_QUIET: Duration = Duration::from_millis(300);
/// The longest a reload waits for the watched files to become quiet.
pub const DEBOUNCE_MAX: Duration = Duration::from_secs(3);

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A watched file changed.
    Watch,
    /// SIGHUP.
    Signal,
    /// The RPC `reload` (`serf reload`).
    Rpc,
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Trigger::Watch => "file change",
            Trigger::Signal => "SIGHUP",
            Trigger::Rpc => "rpc",
        })
    }
}

/// Why a reload changed nothing at all.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The configuration could not be read or resolved; every plugin runs on as it was.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The agent is shutting down.
    #[error("agent is shutting down")]
    Closed,
}

/// What differs between a running plugin and its configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changes {
    /// The module's bytes (SHA-256).
    pub module: bool,
    /// The module's path.
    pub path: bool,
    /// Fuel, memory or deadline.
    pub limits: bool,
    /// The `config` table.
    pub config: bool,
    /// The granted directories.
    pub dirs: bool,
    /// The capabilities and environment granted.
    pub grants: bool,
    /// The event filter.
    pub filter: bool,
    /// The queue's capacity.
    pub queue_capacity: bool,
}

impl Changes {
    /// Compares two settings of one plugin; `running_sha256` is `None` if it never loaded,
    /// `wanted_sha256` is `None` if its file cannot be read.
    pub fn between(
        running: &PluginSpec,
        running_sha256: Option<&str>,
        wanted: &PluginSpec,
        wanted_sha256: Option<&str>,
    ) -> Changes {
        let (old, new) = (running.limits, wanted.limits);
        Changes {
            module: running_sha256.is_none() || running_sha256 != wanted_sha256,
            path: running.path != wanted.path,
            limits: old.fuel_per_event != new.fuel_per_event
                || old.fuel_init != new.fuel_init
                || old.max_memory_bytes != new.max_memory_bytes
                || old.event_timeout != new.event_timeout,
            config: running.config != wanted.config,
            dirs: running.dirs != wanted.dirs,
            grants: running.grants != wanted.grants,
            filter: running.filter != wanted.filter,
            queue_capacity: old.queue_capacity != new.queue_capacity,
        }
    }

    /// Whether the plugin needs a new instance (a new version) rather than new routing.
    pub fn needs_new_version(&self) -> bool {
        self.module || self.path || self.limits || self.config || self.dirs || self.grants
    }

    /// Whether nothing differs.
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }

    /// The names of what differs, e.g. `module, filter`.
    pub fn describe(&self) -> String {
        let names = [
            (self.module, "module"),
            (self.path, "path"),
            (self.limits, "limits"),
            (self.config, "config"),
            (self.dirs, "dirs"),
            (self.grants, "grants"),
            (self.filter, "filter"),
            (self.queue_capacity, "queue_capacity"),
        ];
        let changed: Vec<&str> = names
            .iter()
            .filter(|(changed, _)| *changed)
            .map(|(_, name)| *name)
            .collect();
        changed.join(", ")
    }
}

/// What a reload does to one plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A plugin the configuration newly names: start it.
    Add,
    /// A configured plugin that has never loaded: try again.
    Load,
    /// A plugin no longer configured: stop it.
    Remove,
    /// Start a new version and swap it in.
    Replace(Changes),
    /// Apply a new filter or queue capacity.
    Retune(Changes),
    /// Nothing differs.
    Keep,
}

/// A running plugin as [`plan`] sees it: its settings and the SHA-256 of its module (`None`
/// if it never loaded).
pub type Running = (PluginSpec, Option<String>);

/// Compares the running plugins with the configured ones (`wanted`: each with the SHA-256 of
/// its file now, `None` if it cannot be read). Plugins are listed in name order.
pub fn plan(
    running: &BTreeMap<String, Running>,
    wanted: &[(PluginSpec, Option<String>)],
) -> Vec<(String, Action)> {
    let mut steps: BTreeMap<String, Action> = running
        .keys()
        .filter(|name| !wanted.iter().any(|(spec, _)| &spec.name == *name))
        .map(|name| (name.clone(), Action::Remove))
        .collect();
    for (spec, sha256) in wanted {
        let action = match running.get(&spec.name) {
            None => Action::Add,
            Some((_, None)) => Action::Load,
            Some((old, old_sha256)) => {
                let changes = Changes::between(old, old_sha256.as_deref(), spec, sha256.as_deref());
                if changes.needs_new_version() {
                    Action::Replace(changes)
                } else if changes.is_empty() {
                    Action::Keep
                } else {
                    Action::Retune(changes)
                }
            }
        };
        steps.insert(spec.name.clone(), action);
    }
    steps.into_iter().collect()
}

/// The settings that differ between the configuration the agent started with and a newly
/// read one, other than plugins and the [`LiveSettings`]: they apply only after a restart.
pub fn restart_keys(running: &Config, new: &Config) -> Vec<&'static str> {
    let (old_limits, new_limits) = (running.serf_limits, new.serf_limits);
    // A keyring file is rewritten by the agent itself when keys change; only a key written
    // in the configuration is compared.
    let key = |config: &Config| match (&config.keyring_file, &config.keyring) {
        (None, Some(keyring)) => Some(keyring.keys().to_vec()),
        _ => None,
    };
    let checks = [
        ("node_name", running.node_name != new.node_name),
        ("bind", running.bind != new.bind),
        ("advertise", running.advertise != new.advertise),
        ("rpc_addr", running.rpc_addr != new.rpc_addr),
        ("rpc_auth", running.rpc_auth != new.rpc_auth),
        ("tags_file", running.tags_file != new.tags_file),
        ("data_dir", running.data_dir != new.data_dir),
        (
            "plugin_cache_dir",
            running.plugin_cache_dir != new.plugin_cache_dir,
        ),
        (
            "user_event_size_limit",
            old_limits.user_event_size_limit != new_limits.user_event_size_limit,
        ),
        (
            "query_size_limit",
            old_limits.query_size_limit != new_limits.query_size_limit,
        ),
        (
            "query_response_size_limit",
            old_limits.query_response_size_limit != new_limits.query_response_size_limit,
        ),
        ("start_join", running.start_join != new.start_join),
        ("retry_join", running.retry_join != new.retry_join),
        (
            "retry_interval",
            running.retry_interval != new.retry_interval,
        ),
        (
            "retry_max_attempts",
            running.retry_max_attempts != new.retry_max_attempts,
        ),
        (
            "replay_on_join",
            running.replay_on_join != new.replay_on_join,
        ),
        ("encrypt_key", key(running) != key(new)),
        ("keyring_file", running.keyring_file != new.keyring_file),
        ("snapshot_path", running.snapshot_path != new.snapshot_path),
        (
            "rejoin_after_leave",
            running.rejoin_after_leave != new.rejoin_after_leave,
        ),
        ("profile", running.profile != new.profile),
        ("protocol", running.protocol != new.protocol),
        (
            "enable_compression",
            running.enable_compression != new.enable_compression,
        ),
        (
            "leave_on_terminate",
            running.leave_on_terminate != new.leave_on_terminate,
        ),
        (
            "skip_leave_on_interrupt",
            running.skip_leave_on_interrupt != new.skip_leave_on_interrupt,
        ),
        ("auto_reload", running.auto_reload != new.auto_reload),
    ];
    checks
        .into_iter()
        .filter(|(_, changed)| *changed)
        .map(|(key, _)| key)
        .collect()
}

/// What a reload did to one plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginOutcome {
    /// The plugin's name.
    pub plugin: String,
    /// `added`, `loaded` (it had failed to load before), `removed`, `replaced` (a new
    /// version) or `updated` (a new filter or queue capacity).
    pub change: &'static str,
    /// What differed, e.g. `module, config`; empty for added and removed plugins.
    pub detail: String,
    /// Why the change did not apply (a replaced plugin's old version runs on); `None` if it did.
    pub error: Option<String>,
}

impl fmt::Display for PluginOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let line = describe_outcome(
            &self.plugin,
            self.change,
            &self.detail,
            self.error.as_deref(),
        );
        f.write_str(&line)
    }
}

/// One plugin's line in a reload report, e.g. `plugin rec: replaced (module)`; also for the
/// CLI, which gets the parts over RPC.
pub fn describe_outcome(plugin: &str, change: &str, detail: &str, error: Option<&str>) -> String {
    let mut line = format!("plugin {plugin}: ");
    match (error, change) {
        (None, change) => line.push_str(change),
        (Some(_), "replaced") => line.push_str("not replaced"),
        (Some(_), change) => line.push_str(&format!("{change} but not running")),
    }
    if !detail.is_empty() {
        line.push_str(&format!(" ({detail})"));
    }
    match error {
        Some(error) if change == "replaced" => {
            line.push_str(&format!(": {error}; the running version stays"));
        }
        Some(error) => line.push_str(&format!(": {error}")),
        None => {}
    }
    line
}

/// What one reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// The plugins it changed, or tried to, in name order.
    pub plugins: Vec<PluginOutcome>,
    /// The other settings it applied (log level, event handlers, tags), a line each.
    pub settings: Vec<String>,
    /// Settings that changed but apply only after a restart.
    pub restart_needed: Vec<&'static str>,
}

/// The agent's settings that a reload applies while it runs, as Serf's SIGHUP does: the log
/// level, the event handlers and the tags.
pub trait LiveSettings: Send + Sync {
    /// Applies what differs between `old`, the configuration read last, and `new`; returns a
    /// line per setting applied (or that could not be).
    fn apply<'a>(
        &'a self,
        old: &'a Config,
        new: &'a Config,
    ) -> Pin<Box<dyn Future<Output = Vec<String>> + Send + 'a>>;
}

impl ReloadReport {
    /// Whether some plugin change failed.
    pub fn has_errors(&self) -> bool {
        self.plugins.iter().any(|outcome| outcome.error.is_some())
    }

    /// One line per change, for people.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = self.settings.clone();
        lines.extend(self.plugins.iter().map(ToString::to_string));
        if !self.restart_needed.is_empty() {
            lines.push(format!(
                "needs a restart to apply: {}",
                self.restart_needed.join(", ")
            ));
        }
        if lines.is_empty() {
            lines.push("no changes".to_owned());
        }
        lines
    }
}

/// Re-reads the configuration and applies it to the plugins, one reload at a time.
pub struct Reloader {
    plugins: Arc<PluginHost>,
    /// The configuration the agent started with: settings that need a restart are compared
    /// with it.
    running: Arc<Config>,
    /// The configuration read last: the live settings are compared with it.
    latest: Mutex<Arc<Config>>,
    live: Arc<dyn LiveSettings>,
    one_at_a_time: tokio::sync::Mutex<()>,
    /// What the file watcher should look at, updated by every reload.
    targets: watch::Sender<WatchTargets>,
}

impl Reloader {
    /// A reloader for the agent started with `running` (reads the file system once, to find
    /// what to watch).
    pub fn new(
        plugins: Arc<PluginHost>,
        running: Arc<Config>,
        live: Arc<dyn LiveSettings>,
    ) -> Reloader {
        let targets = WatchTargets::of(&running);
        Reloader {
            plugins,
            latest: Mutex::new(Arc::clone(&running)),
            running,
            live,
            one_at_a_time: tokio::sync::Mutex::new(()),
            targets: watch::Sender::new(targets),
        }
    }

    /// Reads the configuration again (the same flags, the file as it is now) and applies its
    /// live settings and plugins; returns what changed once every new version is swapped in,
    /// so that events sent afterwards reach the new versions. Runs on the plugin runtime, one
    /// reload at a time.
    pub async fn reload(self: &Arc<Self>, trigger: Trigger) -> Result<ReloadReport, ReloadError> {
        let reloader = Arc::clone(self);
        self.plugins
            .runtime()
            .spawn(async move { reloader.reload_here(trigger).await })
            .await
            .map_err(|_| ReloadError::Closed)?
    }

    async fn reload_here(&self, trigger: Trigger) -> Result<ReloadReport, ReloadError> {
        let _one_at_a_time = self.one_at_a_time.lock().await;
        tracing::info!(%trigger, "reloading configuration");
        // The plugins named at start-up first finish loading, then parked ones come back.
        self.plugins.loaded().await;
        let flags = self.running.flags.clone();
        let engine = self.plugins.engine();
        let read = tokio::task::spawn_blocking(move || {
            let config = Config::from_flags(&flags)?;
            config.warn_plugins_without_table();
            let files: Vec<PluginFile> = config
                .plugins
                .iter()
                .map(|spec| PluginFile {
                    spec: spec.clone(),
                    bytes: engine.read(&spec.path),
                })
                .collect();
            let targets = WatchTargets::of(&config);
            Ok::<_, ConfigError>((config, files, targets))
        })
        .await
        .map_err(|_| ReloadError::Closed)?;
        let (config, files, targets) = match read {
            Ok(read) => read,
            Err(error) => {
                tracing::error!(%error, "reload failed; nothing changed");
                return Err(ReloadError::Config(error));
            }
        };
        let restart_needed = restart_keys(&self.running, &config);
        if !restart_needed.is_empty() {
            tracing::warn!(
                keys = %restart_needed.join(", "),
                "changed settings need a restart to apply"
            );
        }
        let config = Arc::new(config);
        let latest = Arc::clone(&self.latest.lock().unwrap_or_else(|e| e.into_inner()));
        let settings = self.live.apply(&latest, &config).await;
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = config;
        self.plugins.revive_parked();
        let plugins = apply(&self.plugins, files).await;
        self.targets.send_if_modified(|current| {
            let modified = *current != targets;
            *current = targets;
            modified
        });
        let report = ReloadReport {
            plugins,
            settings,
            restart_needed,
        };
        tracing::info!(
            changes = report.plugins.len(),
            failed = report.plugins.iter().filter(|o| o.error.is_some()).count(),
            "reload complete"
        );
        Ok(report)
    }
}

/// A configured plugin and its file's bytes as a reload read them.
struct PluginFile {
    spec: PluginSpec,
    bytes: Result<Vec<u8>, LoadError>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Applies the configured plugins to the running ones; returns what it changed or failed to.
/// Runs on the plugin runtime.
async fn apply(host: &Arc<PluginHost>, files: Vec<PluginFile>) -> Vec<PluginOutcome> {
    let applied = host.applied();
    let running: BTreeMap<String, Running> = applied
        .iter()
        .map(|(name, applied)| {
            let sha256 = applied.loaded.as_ref().map(|l| l.sha256.clone());
            (name.clone(), (applied.spec.clone(), sha256))
        })
        .collect();
    let wanted: Vec<(PluginSpec, Option<String>)> = files
        .iter()
        .map(|file| {
            let sha256 = file.bytes.as_deref().ok().map(sha256_hex);
            (file.spec.clone(), sha256)
        })
        .collect();
    let mut files: BTreeMap<String, PluginFile> = files
        .into_iter()
        .map(|file| (file.spec.name.clone(), file))
        .collect();
    let mut outcomes = Vec::new();
    for (name, action) in plan(&running, &wanted) {
        let outcome = |change, detail: String, error: Option<String>| PluginOutcome {
            plugin: name.clone(),
            change,
            detail,
            error,
        };
        match action {
            Action::Keep => host.reload_unchanged(&name),
            Action::Remove => {
                host.remove(&name);
                outcomes.push(outcome("removed", String::new(), None));
            }
            Action::Add | Action::Load => {
                let Some(file) = files.remove(&name) else {
                    continue;
                };
                let engine = host.engine();
                let spec = file.spec.clone();
                let loaded = tokio::task::spawn_blocking(move || {
                    let bytes = file.bytes?;
                    PluginHost::compile(&engine, &file.spec, &bytes)
                })
                .await
                .unwrap_or_else(|_| {
                    Err(LoadError::NotWasm {
                        path: spec.path.clone(),
                    })
                });
                let error = loaded.as_ref().err().map(ToString::to_string);
                host.add(spec, loaded);
                let change = if action == Action::Add {
                    "added"
                } else {
                    "loaded"
                };
                outcomes.push(outcome(change, String::new(), error));
            }
            Action::Retune(changes) => {
                let Some(file) = files.remove(&name) else {
                    continue;
                };
                tracing::info!(plugin = %name, changed = %changes.describe(), "plugin settings updated");
                host.retune(file.spec);
                outcomes.push(outcome("updated", changes.describe(), None));
            }
            Action::Replace(changes) => {
                let Some(file) = files.remove(&name) else {
                    continue;
                };
                let current = applied.get(&name);
                let result = replace(host, file, &changes, current).await;
                if let Err(error) = &result {
                    tracing::warn!(plugin = %name, changed = %changes.describe(), %error, "plugin reload failed; the running version stays");
                    host.reload_failed(&name, error);
                } else {
                    tracing::info!(plugin = %name, changed = %changes.describe(), "plugin reloaded");
                }
                outcomes.push(outcome("replaced", changes.describe(), result.err()));
            }
        }
    }
    outcomes
}

/// Compiles (unless only settings changed) a new version, then swaps it in (the plugin's task
/// starts it after shutting the old one down); on any failure the old version runs on.
async fn replace(
    host: &PluginHost,
    file: PluginFile,
    changes: &Changes,
    current: Option<&Applied>,
) -> Result<(), String> {
    let engine = host.engine();
    let reuse = current
        .and_then(|applied| applied.loaded.clone())
        .filter(|_| !changes.module);
    let spec = file.spec.clone();
    let loaded = tokio::task::spawn_blocking(move || match reuse {
        Some(loaded) => dispatch::prepare_dirs(&file.spec).map(|()| loaded),
        None => {
            let bytes = file.bytes?;
            PluginHost::compile(&engine, &file.spec, &bytes)
        }
    })
    .await
    .map_err(|_| "the agent is shutting down".to_owned())?
    .map_err(|error| error.to_string())?;
    let prepared = host
        .prepare(spec.clone(), loaded)
        .await
        .map_err(|error| format!("the new version failed to start: {error}"))?;
    // The new version's `serf_init` runs in the plugin's task, after the old version's
    // `serf_shutdown`: what the old one saves on the way out, the new one finds.
    host.swap(&spec.name, prepared)
        .await
        .map_err(|error| error.to_string())
}

// --- The file watcher. -------------------------------------------------------------------

/// The files whose changes trigger a reload: serf.toml, every plugin's file, and any `.wasm`
/// file in the plugin directory. Paths are absolute, their directories canonical, as the
/// watcher reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchTargets {
    config_file: Option<PathBuf>,
    plugin_files: BTreeSet<PathBuf>,
    plugin_dir: Option<PathBuf>,
}

impl WatchTargets {
    /// The targets of a configuration. Reads the file system (to canonicalise directories).
    pub fn of(config: &Config) -> WatchTargets {
        WatchTargets {
            config_file: config.flags.config_file.as_deref().map(in_canonical_dir),
            plugin_files: config
                .plugins
                .iter()
                .map(|spec| in_canonical_dir(&spec.path))
                .collect(),
            plugin_dir: config
                .plugin_dir
                .as_deref()
                .map(|dir| dir.canonicalize().unwrap_or_else(|_| absolute(dir))),
        }
    }

    /// The directories to watch (not recursively): watching a directory rather than a file
    /// also sees a file replaced by a rename.
    pub fn dirs(&self) -> BTreeSet<PathBuf> {
        let parents = self
            .config_file
            .iter()
            .chain(&self.plugin_files)
            .filter_map(|file| file.parent().map(Path::to_path_buf));
        parents.chain(self.plugin_dir.clone()).collect()
    }

    /// Whether a change to `path` should trigger a reload.
    pub fn is_relevant(&self, path: &Path) -> bool {
        self.config_file.as_deref() == Some(path)
            || self.plugin_files.contains(path)
            || (self.plugin_dir.as_deref().is_some()
                && path.parent() == self.plugin_dir.as_deref()
                && path.extension().is_some_and(|ext| ext == "wasm"))
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// `path` with its directory canonicalised (the file itself may not exist yet).
fn in_canonical_dir(path: &Path) -> PathBuf {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    match (parent.canonicalize(), path.file_name()) {
        (Ok(dir), Some(name)) => dir.join(name),
        _ => absolute(path),
    }
}

/// Whether a file system event may have changed a file's contents. Opening, reading and
/// metadata changes do not count (a reload reads every file it watches).
fn is_content_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(_)) => false,
        _ => true,
    }
}

/// Waits for a quiet moment after changes: a reload starts `quiet` after the last change, or
/// `max_wait` after the first, whichever comes first.
#[derive(Debug, Clone)]
pub struct Debounce {
    quiet: Duration,
    max_wait: Duration,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Debounce {
    /// A debouncer with nothing pending.
    pub fn new(quiet: Duration, max_wait: Duration) -> Debounce {
        Debounce {
            quiet,
            max_wait,
            first: None,
            last: None,
        }
    }

    /// A change happened at `now`.
    pub fn touch(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    /// When the pending changes are due for a reload; `None` if nothing is pending.
    pub fn due(&self) -> Option<Instant> {
        let (first, last) = (self.first?, self.last?);
        Some((last + self.quiet).min(first + self.max_wait))
    }

    /// Whether a reload is due at `now`; if so, the pending changes are taken.
    pub fn take_due(&mut self, now: Instant) -> bool {
        if self.due().is_some_and(|due| due <= now) {
            self.first = None;
            self.last = None;
            true
        } else {
            false
        }
    }
}

/// The file watcher's task; it stops when dropped.
pub struct Watcher {
    stop: CancellationToken,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Watches serf.toml, the plugin files and the plugin directory, and reloads (debounced)
/// when one changes. The watch runs on a thread of its own and the debouncing on the plugin
/// runtime; neither ever waits for the agent's task.
pub fn spawn_watcher(reloader: Arc<Reloader>) -> Watcher {
    let stop = CancellationToken::new();
    let runtime = reloader.plugins.runtime().clone();
    runtime.spawn(watch_files(reloader, stop.clone()));
    Watcher { stop }
}

async fn watch_files(reloader: Arc<Reloader>, stop: CancellationToken) {
    let changed = Arc::new(Notify::new());
    let mut targets = reloader.targets.subscribe();
    // An agent without a config file or plugins has nothing to watch: no watcher thread until
    // it has (a reload can only add targets through a config file).
    while targets.borrow_and_update().dirs().is_empty() {
        tokio::select! {
            () = stop.cancelled() => return,
            changed = targets.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
    let handler = {
        let changed = Arc::clone(&changed);
        let targets = targets.clone();
        move |result: notify::Result<notify::Event>| match result {
            Ok(event) => {
                if is_content_change(&event.kind) {
                    let targets = targets.borrow();
                    if let Some(path) = event.paths.iter().find(|p| targets.is_relevant(p)) {
                        tracing::debug!(path = %path.display(), "watched file changed");
                        changed.notify_one();
                    }
                }
            }
            Err(error) => tracing::debug!(%error, "file watch error"),
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(watcher) => watcher,
        Err(error) => {
            tracing::warn!(%error, "cannot watch the configuration and plugin files; reload with SIGHUP or serf reload");
            return;
        }
    };
    let mut watched = BTreeSet::new();
    let dirs = targets.borrow_and_update().dirs();
    rewatch(&mut watcher, &mut watched, dirs);
    let mut debounce = Debounce::new(DEBOUNCE_QUIET, DEBOUNCE_MAX);
    loop {
        let due = debounce.due();
        let wait = async {
            match due {
                Some(due) => tokio::time::sleep_until(due.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop.cancelled() => break,
            () = changed.notified() => debounce.touch(Instant::now()),
            Ok(()) = targets.changed() => {
                let dirs = targets.borrow_and_update().dirs();
                rewatch(&mut watcher, &mut watched, dirs);
            }
            () = wait => {
                if debounce.take_due(Instant::now())
                    && let Err(error) = reloader.reload(Trigger::Watch).await
                {
                    tracing::debug!(%error, "reload after a file change failed");
                }
            }
        }
    }
}

/// Watches `dirs` and nothing else.
fn rewatch(
    watcher: &mut notify::RecommendedWatcher,
    watched: &mut BTreeSet<PathBuf>,
    dirs: BTreeSet<PathBuf>,
) {
    for dir in watched.difference(&dirs) {
        let _ = watcher.unwatch(dir);
    }
    for dir in dirs.difference(watched) {
        if let Err(error) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), %error, "cannot watch directory for changes");
        }
    }
    *watched = dirs;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serf_plugins::{EventFilter, Limits};

    use std::num::NonZeroUsize;

    use serf_plugin_sdk::abi;

    use serf_core::QueryKey;
    use serf_core::SerfLimits;
    use serf_plugins::{Engine, HostServices};

    /// A plugin that appends `tag` and then each envelope it gets (msgpack, self-delimiting)
    /// to `records.bin` in its first granted directory; `serf_init` returns `init_status`.
    pub(crate) fn recorder(tag: u8, init_status: i32) -> Vec<u8> {
        let text = include_str!("../../../tests/wat/recorder.wat")
            .replace("INIT_STATUS", &init_status.to_string())
            .replace("TAG", &tag.to_string());
        wat::parse_str(text).expect("the recorder is valid text")
    }

    /// What the recorder wrote: (tag, seq, user event payload) per envelope.
    fn records(dir: &Path) -> Vec<(u8, u64, String)> {
        let bytes = std::fs::read(dir.join("records.bin")).unwrap_or_default();
        let mut records = Vec::new();
        let mut cursor = std::io::Cursor::new(&bytes[..]);
        while (cursor.position() as usize) < bytes.len() {
            let tag = bytes[cursor.position() as usize];
            cursor.set_position(cursor.position() + 1);
            let envelope = rmpv::decode::read_value(&mut cursor).expect("an envelope");
            let field = |value: &rmpv::Value, key: &str| {
                value.as_map().and_then(|map| {
                    map.iter()
                        .find(|(k, _)| k.as_str() == Some(key))
                        .map(|(_, v)| v.clone())
                })
            };
            let seq = field(&envelope, "seq").and_then(|v| v.as_u64()).unwrap();
            let event = field(&envelope, "event").unwrap();
            let payload = field(&event, "payload")
                .and_then(|v| {
                    v.as_slice()
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                })
                .unwrap_or_default();
            records.push((tag, seq, payload));
        }
        records
    }

    struct NoServices;

    impl HostServices for NoServices {
        fn respond(&self, _: &str, _: QueryKey, _: Vec<u8>) -> Result<(), abi::Status> {
            Err(abi::Status::Unavailable)
        }
    }

    fn user_event(payload: String) -> serf_core::Event {
        serf_core::Event::User(serf_core::UserEvent {
            ltime: 1,
            name: "rec".into(),
            payload: payload.into_bytes(),
            coalesce: false,
        })
    }

    /// A plugin runtime, and the recorder `rec` in `dir` (as `rec.wasm`, recording to
    /// `dir/data`), started.
    fn start_recorder(dir: &Path) -> (tokio::runtime::Runtime, Arc<PluginHost>, PluginSpec) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let path = dir.join("rec.wasm");
        std::fs::write(&path, recorder(b'A', 0)).unwrap();
        let mut spec = spec("rec");
        spec.path = path;
        spec.filter = EventFilter::parse("user:rec").unwrap();
        spec.limits.queue_capacity = NonZeroUsize::new(8192).unwrap();
        spec.dirs.insert("/data".into(), dir.join("data"));
        let host = runtime.block_on(PluginHost::start(
            Engine::new(None),
            vec![spec.clone()],
            "node",
            SerfLimits::SERF,
            Arc::new(NoServices),
            runtime.handle(),
        ));
        (runtime, host, spec)
    }

    /// Applies `specs` as a reload that read them would.
    fn reload(
        runtime: &tokio::runtime::Runtime,
        host: &Arc<PluginHost>,
        specs: &[PluginSpec],
    ) -> Vec<PluginOutcome> {
        let files = specs
            .iter()
            .map(|spec| PluginFile {
                spec: spec.clone(),
                bytes: Ok(std::fs::read(&spec.path).unwrap()),
            })
            .collect();
        runtime.block_on(apply(host, files))
    }

    fn stats(host: &PluginHost, name: &str) -> serf_plugins::PluginStatsSnapshot {
        host.stats()
            .into_iter()
            .find(|stats| stats.name == name)
            .unwrap_or_else(|| panic!("no plugin {name}"))
    }

    /// A plugin that counts its events in memory, loads the count from its state in
    /// `serf_init` and saves it in `serf_shutdown` only: it loses counts unless every new
    /// version's `init` runs after the old version's `shutdown`. `tag` tells versions apart.
    fn state_counter(tag: u8) -> Vec<u8> {
        wat::parse_str(format!(
            r#"(module
            (import "serf" "state_get" (func $get (param i32 i32 i32 i32) (result i32)))
            (import "serf" "state_set" (func $set (param i32 i32 i32 i32) (result i32)))
            (memory (export "memory") 1)
            (global $count (mut i64) (i64.const 0))
            (data (i32.const 0) "count")
            (data (i32.const 32) "\{tag:02x}")
            (func (export "serf_plugin_abi_v1"))
            (func (export "serf_input_buffer") (param i32) (result i32) i32.const 1024)
            (func (export "serf_init") (param i32 i32) (result i32)
                (if (i32.eq (call $get (i32.const 0) (i32.const 5) (i32.const 16) (i32.const 8))
                            (i32.const 8))
                    (then (global.set $count (i64.load (i32.const 16)))))
                i32.const 0)
            (func (export "serf_handle") (param i32 i32) (result i32)
                (global.set $count (i64.add (global.get $count) (i64.const 1)))
                i32.const 0)
            (func (export "serf_shutdown")
                (i64.store (i32.const 16) (global.get $count))
                (drop (call $set (i32.const 0) (i32.const 5) (i32.const 16) (i32.const 8)))))"#
        ))
        .expect("the counter is valid text")
    }

    struct WithEffects(Arc<serf_plugins::effects::EffectHost>);

    impl HostServices for WithEffects {
        fn respond(&self, _: &str, _: QueryKey, _: Vec<u8>) -> Result<(), abi::Status> {
            Err(abi::Status::Unavailable)
        }

        fn effects(&self) -> Option<&Arc<serf_plugins::effects::EffectHost>> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_hot_reload_under_a_stream_of_events_keeps_the_stored_state() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let effects = serf_plugins::effects::EffectHost::new(Some(dir.path()));
        let mut spec = spec("counter");
        spec.path = dir.path().join("counter.wasm");
        spec.filter = EventFilter::parse("user:rec").unwrap();
        spec.limits.queue_capacity = NonZeroUsize::new(8192).unwrap();
        spec.grants.effects = serf_plugins::effects::resolve(
            None,
            Some(&serf_plugins::effects::FileState::default()),
            None,
            None,
        )
        .unwrap();
        std::fs::write(&spec.path, state_counter(0)).unwrap();
        let host = runtime.block_on(PluginHost::start(
            Engine::new(None),
            vec![spec.clone()],
            "node",
            SerfLimits::SERF,
            Arc::new(WithEffects(Arc::clone(&effects))),
            runtime.handle(),
        ));
        for version in 1..=3u8 {
            for n in 0..100 {
                host.dispatch(&user_event(n.to_string()));
            }
            // The new version swaps in while events still wait in the queue.
            std::fs::write(&spec.path, state_counter(version)).unwrap();
            let outcomes = reload(&runtime, &host, std::slice::from_ref(&spec));
            assert_eq!(outcomes[0].error, None);
        }
        for n in 0..100 {
            host.dispatch(&user_event(n.to_string()));
        }
        serf_testkit::wait_until("every event", || stats(&host, "counter").handled == 400);
        runtime.block_on(host.shutdown());
        let store = effects.plugin("counter").store().unwrap();
        let saved = store.get(b"count").unwrap();
        assert_eq!(u64::from_le_bytes(saved.try_into().unwrap()), 400);
        assert_eq!(stats(&host, "counter").reloads, 3);
    }

    #[test]
    fn a_version_swapped_in_mid_stream_loses_and_reorders_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (runtime, host, spec) = start_recorder(dir.path());
        let stream = {
            let host = Arc::clone(&host);
            std::thread::spawn(move || {
                for i in 0..5000 {
                    host.dispatch(&user_event(i.to_string()));
                    std::thread::sleep(Duration::from_micros(200));
                }
            })
        };
        serf_testkit::wait_until("a third of the stream", || {
            stats(&host, "rec").handled >= 1500
        });
        std::fs::write(&spec.path, recorder(b'B', 0)).unwrap();
        let outcomes = reload(&runtime, &host, std::slice::from_ref(&spec));
        let offered_before = stats(&host, "rec").offered;
        assert_eq!(outcomes.len(), 1, "{outcomes:?}");
        assert_eq!(outcomes[0].to_string(), "plugin rec: replaced (module)");
        stream.join().unwrap();
        serf_testkit::wait_until("the whole stream", || stats(&host, "rec").handled == 5000);

        let records = records(&dir.path().join("data"));
        let seqs: Vec<u64> = records.iter().map(|(_, seq, _)| *seq).collect();
        assert_eq!(seqs, (1..=5000).collect::<Vec<_>>(), "lost or reordered");
        let payloads: Vec<String> = records.iter().map(|(_, _, p)| p.clone()).collect();
        assert_eq!(
            payloads,
            (0..5000).map(|i| i.to_string()).collect::<Vec<_>>()
        );
        let first_b = records.iter().position(|(tag, _, _)| *tag == b'B').unwrap();
        assert!(first_b >= 1500, "the old version handled the start");
        assert!(
            records[first_b..].iter().all(|(tag, _, _)| *tag == b'B'),
            "the old version came back"
        );
        assert!(
            u64::try_from(first_b).unwrap() <= offered_before,
            "events offered after the reload reached the old version"
        );
        let stats = stats(&host, "rec");
        assert_eq!((stats.reloads, stats.dropped, stats.traps), (1, 0, 0));
        assert_eq!(stats.sha256, sha256_hex(&recorder(b'B', 0)));
        runtime.block_on(host.shutdown());
    }

    #[test]
    fn a_version_that_cannot_compile_or_start_leaves_the_old_one_running() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let (runtime, host, spec) = start_recorder(dir.path());
        let send = |n: usize| {
            host.dispatch(&user_event(n.to_string()));
            serf_testkit::wait_until("the event", || records(&data).len() == n);
        };
        send(1);
        std::fs::write(&spec.path, b"garbage").unwrap();
        let outcomes = reload(&runtime, &host, std::slice::from_ref(&spec));
        let error = outcomes[0].error.clone().unwrap();
        assert!(error.contains("is not a WebAssembly module"), "{error}");
        send(2);
        let stats_now = stats(&host, "rec");
        assert_eq!(stats_now.last_reload_error, error);
        assert_eq!(stats_now.reload_failures, 1);
        assert_eq!(stats_now.state, "running");

        std::fs::write(&spec.path, recorder(b'B', 7)).unwrap();
        let outcomes = reload(&runtime, &host, std::slice::from_ref(&spec));
        let error = outcomes[0].error.clone().unwrap();
        assert!(error.contains("failed to start"), "{error}");
        send(3);

        std::fs::write(&spec.path, recorder(b'B', 0)).unwrap();
        let outcomes = reload(&runtime, &host, std::slice::from_ref(&spec));
        assert_eq!(outcomes[0].error, None);
        send(4);
        let tags: Vec<u8> = records(&data).iter().map(|(tag, _, _)| *tag).collect();
        assert_eq!(tags, b"AAAB");
        let stats_now = stats(&host, "rec");
        assert_eq!(stats_now.last_reload_error, "");
        assert_eq!((stats_now.reloads, stats_now.reload_failures), (1, 2));
        runtime.block_on(host.shutdown());
    }

    #[test]
    fn plugins_come_and_go_and_filters_change_without_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let (runtime, host, spec) = start_recorder(dir.path());
        let mut second = spec.clone();
        second.name = "second".into();
        second
            .dirs
            .insert("/data".into(), dir.path().join("second"));
        let outcomes = reload(&runtime, &host, &[spec.clone(), second.clone()]);
        assert_eq!(outcomes[0].to_string(), "plugin second: added");
        host.dispatch(&user_event("one".into()));
        serf_testkit::wait_until("both plugins", || {
            records(&data).len() == 1 && records(&dir.path().join("second")).len() == 1
        });

        let mut retuned = spec.clone();
        retuned.filter = EventFilter::parse("user:other").unwrap();
        retuned.limits.queue_capacity = NonZeroUsize::new(16).unwrap();
        let outcomes = reload(&runtime, &host, &[retuned]);
        let lines: Vec<String> = outcomes.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "plugin rec: updated (filter, queue_capacity)",
                "plugin second: removed"
            ]
        );
        host.dispatch(&user_event("two".into()));
        let rec = stats(&host, "rec");
        assert_eq!((rec.offered, rec.queue_capacity), (1, 16));
        assert_eq!(host.num_plugins(), 1);

        // Past the filter, to this plugin alone.
        let event = abi::Event::User(abi::UserEvent {
            name: "rec".into(),
            payload: b"direct".to_vec(),
            ltime: 2,
            coalesce: false,
        });
        assert_eq!(host.deliver_to("rec", &event), Ok(2));
        assert_eq!(
            host.deliver_to("second", &event),
            Err(serf_plugins::DeliverError::UnknownPlugin("second".into()))
        );
        serf_testkit::wait_until("the direct event", || records(&data).len() == 2);
        assert_eq!(records(&data)[1], (b'A', 2, "direct".to_owned()));
        runtime.block_on(host.shutdown());
    }

    fn spec(name: &str) -> PluginSpec {
        PluginSpec {
            name: name.to_owned(),
            path: PathBuf::from(format!("/p/{name}.wasm")),
            filter: EventFilter::all(),
            limits: Limits::DEFAULT,
            dirs: BTreeMap::new(),
            config: toml::Table::new(),
            grants: Default::default(),
        }
    }

    fn running(plugins: &[(&PluginSpec, Option<&str>)]) -> BTreeMap<String, Running> {
        plugins
            .iter()
            .map(|(spec, sha)| {
                let running = ((*spec).clone(), sha.map(str::to_owned));
                (spec.name.clone(), running)
            })
            .collect()
    }

    #[test]
    fn plan_adds_removes_and_keeps_plugins_by_name() {
        let (a, b, c) = (spec("a"), spec("b"), spec("c"));
        let now = running(&[(&a, Some("1")), (&b, Some("2"))]);
        let wanted = vec![(b.clone(), Some("2".into())), (c.clone(), Some("3".into()))];
        assert_eq!(
            plan(&now, &wanted),
            vec![
                ("a".to_owned(), Action::Remove),
                ("b".to_owned(), Action::Keep),
                ("c".to_owned(), Action::Add),
            ]
        );
    }

    #[test]
    fn new_bytes_config_limits_or_dirs_need_a_new_version() {
        let old = spec("p");
        let now = running(&[(&old, Some("1"))]);
        let mut config = old.clone();
        config.config.insert("file".into(), "/data/b.txt".into());
        let mut limits = old.clone();
        limits.limits.fuel_per_event = 5;
        let mut dirs = old.clone();
        dirs.dirs.insert("/data".into(), PathBuf::from("/srv"));
        let cases = [
            (old.clone(), Some("2"), "module"),
            (old.clone(), None, "module"),
            (config, Some("1"), "config"),
            (limits, Some("1"), "limits"),
            (dirs, Some("1"), "dirs"),
        ];
        for (wanted, sha, expected) in cases {
            let steps = plan(&now, &[(wanted, sha.map(str::to_owned))]);
            let [(_, Action::Replace(changes))] = steps.as_slice() else {
                panic!("{expected}: {steps:?}");
            };
            assert_eq!(changes.describe(), expected);
        }
    }

    #[test]
    fn a_new_filter_or_queue_capacity_keeps_the_instance() {
        let old = spec("p");
        let now = running(&[(&old, Some("1"))]);
        let mut wanted = old.clone();
        wanted.filter = EventFilter::parse("user:deploy").unwrap();
        wanted.limits.queue_capacity = std::num::NonZeroUsize::new(8).unwrap();
        let steps = plan(&now, &[(wanted, Some("1".into()))]);
        let [(_, Action::Retune(changes))] = steps.as_slice() else {
            panic!("{steps:?}");
        };
        assert_eq!(changes.describe(), "filter, queue_capacity");
        assert!(!changes.needs_new_version());
    }

    #[test]
    fn a_plugin_that_never_loaded_is_tried_again() {
        let old = spec("p");
        let now = running(&[(&old, None)]);
        let steps = plan(&now, &[(old.clone(), Some("1".into()))]);
        assert_eq!(steps, vec![("p".to_owned(), Action::Load)]);
    }

    #[test]
    fn outcomes_read_as_sentences() {
        let outcome = PluginOutcome {
            plugin: "rec".into(),
            change: "replaced",
            detail: "module".into(),
            error: None,
        };
        assert_eq!(outcome.to_string(), "plugin rec: replaced (module)");
        let failed = PluginOutcome {
            error: Some("bad.wasm is not a WebAssembly module".into()),
            ..outcome
        };
        assert_eq!(
            failed.to_string(),
            "plugin rec: not replaced (module): bad.wasm is not a WebAssembly module; \
             the running version stays"
        );
        assert_eq!(ReloadReport::default().lines(), vec!["no changes"]);
    }

    #[test]
    fn debounce_waits_for_quiet_but_not_forever() {
        let start = Instant::now();
        let ms = Duration::from_millis;
        let mut debounce = Debounce::new(ms(300), ms(1000));
        assert_eq!(debounce.due(), None);
        debounce.touch(start);
        debounce.touch(start + ms(200));
        assert_eq!(debounce.due(), Some(start + ms(500)));
        assert!(!debounce.take_due(start + ms(499)));
        assert!(debounce.take_due(start + ms(500)));
        assert_eq!(debounce.due(), None);
        // A file written without pause is still reloaded after max_wait.
        for step in 0..20 {
            debounce.touch(start + ms(100 * step));
        }
        assert_eq!(debounce.due(), Some(start + ms(1000)));
    }

    #[test]
    fn watch_targets_are_the_config_plugin_files_and_wasm_in_the_plugin_dir() {
        let targets = WatchTargets {
            config_file: Some(PathBuf::from("/etc/serf/serf.toml")),
            plugin_files: [PathBuf::from("/opt/p/a.wasm")].into(),
            plugin_dir: Some(PathBuf::from("/var/plugins")),
        };
        for relevant in [
            "/etc/serf/serf.toml",
            "/opt/p/a.wasm",
            "/var/plugins/new.wasm",
        ] {
            assert!(targets.is_relevant(Path::new(relevant)), "{relevant}");
        }
        for irrelevant in [
            "/etc/serf/agent.log",
            "/opt/p/b.wasm",
            "/var/plugins/notes.txt",
            "/var/plugins/sub/x.wasm",
        ] {
            assert!(!targets.is_relevant(Path::new(irrelevant)), "{irrelevant}");
        }
        let dirs: Vec<PathBuf> = targets.dirs().into_iter().collect();
        assert_eq!(
            dirs,
            ["/etc/serf", "/opt/p", "/var/plugins"].map(PathBuf::from)
        );
    }

    #[test]
    fn only_content_changes_count() {
        use notify::event::{CreateKind, DataChange, MetadataKind, RemoveKind, RenameMode};
        assert!(is_content_change(&EventKind::Create(CreateKind::File)));
        assert!(is_content_change(&EventKind::Modify(ModifyKind::Data(
            DataChange::Any
        ))));
        assert!(is_content_change(&EventKind::Modify(ModifyKind::Name(
            RenameMode::To
        ))));
        assert!(is_content_change(&EventKind::Remove(RemoveKind::File)));
        assert!(is_content_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(!is_content_change(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!is_content_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(!is_content_change(&EventKind::Modify(
            ModifyKind::Metadata(MetadataKind::AccessTime)
        )));
    }
}
