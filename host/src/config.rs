//! Agent configuration: `serf.toml` as written ([`FileConfig`]), the `serf agent` flags
//! ([`AgentFlags`]), and the validated [`Config`] the agent runs with.
//!
//! Flags beat the file, the file beats defaults. Relative paths in the file are relative to
//! the directory that holds it; relative paths in flags are relative to the working directory.
//! This module reads the config file and the keyring file and lists the plugin directory,
//! nothing else.

use serf_core::SerfLimits;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use serf_gossip::Keyring;
use serf_gossip::keyring::{self, KeyringError};
use serf_plugins::{EventFilter, FilterError, Limits, PluginSpec};

/// Serf's default gossip port.
pub const DEFAULT_BIND_PORT: u16 = 7946;
/// Serf's default RPC address.
pub const DEFAULT_RPC_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7373);

/// `serf agent` flags, in Serf's spelling (`-node=a` works as well as `--node=a`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AgentFlags {
    /// Name of this node; must be unique in the cluster (default: the hostname).
    #[arg(long)]
    pub node: Option<String>,
    /// Address to bind the gossip listeners to, `ip[:port]` (default 0.0.0.0:7946).
    #[arg(long)]
    pub bind: Option<String>,
    /// Address to advertise to other members, `ip[:port]`.
    #[arg(long)]
    pub advertise: Option<String>,
    /// Address of the RPC server, `ip:port` (default 127.0.0.1:7373).
    #[arg(long = "rpc-addr")]
    pub rpc_addr: Option<String>,
    /// Tag for this node, `key=value`; repeatable.
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    /// Log level: trace, debug, info, warn or err (default info).
    #[arg(long = "log-level")]
    pub log_level: Option<String>,
    /// Configuration file (serf.toml).
    #[arg(long = "config-file")]
    pub config_file: Option<PathBuf>,
    /// Directory of plugins: every `*.wasm` file in it is loaded.
    #[arg(long)]
    pub plugins: Option<PathBuf>,
    /// Directory for the agent's own state (the compiled-plugin cache).
    #[arg(long = "data-dir")]
    pub data_dir: Option<PathBuf>,
    /// Agent to join at startup, `[name/]host[:port]`; repeatable. The agent exits if none of
    /// them can be joined.
    #[arg(long = "join", value_name = "ADDR")]
    pub join: Vec<String>,
    /// Agent to join in the background until one answers; repeatable.
    #[arg(long = "retry-join", value_name = "ADDR")]
    pub retry_join: Vec<String>,
    /// Pause between -retry-join attempts, e.g. 30s (at least 1s; default 30s).
    #[arg(long = "retry-interval", value_name = "DURATION", value_parser = parse_go_duration)]
    pub retry_interval: Option<Duration>,
    /// Failed -retry-join attempts after which the agent exits (0, the default: never).
    #[arg(long = "retry-max", value_name = "N")]
    pub retry_max: Option<u32>,
    /// Replay past user events when joining at startup.
    #[arg(long, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_name = "BOOL",
          value_parser = parse_go_bool)]
    pub replay: bool,
    /// Gossip encryption key: base64 of 16, 24 or 32 bytes (`serf keygen` makes one).
    #[arg(long, value_name = "KEY")]
    pub encrypt: Option<String>,
    /// JSON file holding the keyring (an array of base64 keys, the first one primary).
    #[arg(long = "keyring-file", value_name = "PATH")]
    pub keyring_file: Option<PathBuf>,
    /// Snapshot file (Serf's format): members and clocks survive a restart, and the agent
    /// rejoins the members it knew.
    #[arg(long, value_name = "PATH")]
    pub snapshot: Option<PathBuf>,
    /// Rejoin from the snapshot even after a graceful leave.
    #[arg(long, action = clap::ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", value_name = "BOOL",
          value_parser = parse_go_bool)]
    pub rejoin: bool,
    /// JSON file with this node's tags, loaded at start and rewritten when they change; not
    /// allowed together with -tag or `tags`.
    #[arg(long = "tags-file", value_name = "PATH")]
    pub tags_file: Option<PathBuf>,
    /// Gossip timing profile: lan (default), wan or local.
    #[arg(long, value_name = "PROFILE")]
    pub profile: Option<String>,
    /// Serf protocol version to speak, 2 to 5 (default 5).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub protocol: Option<i64>,
    /// Do not compress gossip messages (compression is on by default).
    #[arg(long = "disable-compression", action = clap::ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", default_value = "false",
          value_name = "BOOL", value_parser = parse_go_bool)]
    pub disable_compression: bool,
    /// Shell event handler, Serf's `[FILTERS=]script` (e.g. `member-join,user:deploy=./h.sh`);
    /// repeatable.
    #[arg(long = "event-handler", value_name = "SPEC")]
    pub event_handlers: Vec<String>,
}

/// `serf.toml` exactly as written: every key optional, unknown keys rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Node name.
    pub node_name: Option<String>,
    /// Gossip bind address, `ip[:port]`.
    pub bind: Option<String>,
    /// Advertised address, `ip[:port]`.
    pub advertise: Option<String>,
    /// RPC address, `ip:port`.
    pub rpc_addr: Option<String>,
    /// Key that RPC clients must present with `auth`.
    pub rpc_auth: Option<String>,
    /// Log level.
    pub log_level: Option<String>,
    /// Tags of this node.
    pub tags: Option<BTreeMap<String, String>>,
    /// Agent state directory; none keeps no state on disk.
    pub data_dir: Option<PathBuf>,
    /// Directory of `*.wasm` plugins.
    pub plugin_dir: Option<PathBuf>,
    /// Where compiled plugins are cached (default: `data_dir/plugin-cache`).
    pub plugin_cache_dir: Option<PathBuf>,
    /// Serf's limit on `len(name) + len(payload)` of a user event, in bytes.
    pub user_event_size_limit: Option<usize>,
    /// Serf's limit on an encoded query, in bytes.
    pub query_size_limit: Option<usize>,
    /// Serf's limit on an encoded query response, in bytes.
    pub query_response_size_limit: Option<usize>,
    /// Limits applied to every plugin unless its own table overrides them.
    pub plugin_defaults: Option<FileLimits>,
    /// Agents joined at startup, `[name/]host[:port]`.
    pub start_join: Option<Vec<String>>,
    /// Agents joined in the background until one answers.
    pub retry_join: Option<Vec<String>>,
    /// Pause between `retry_join` attempts.
    #[serde(default, with = "humantime_serde")]
    pub retry_interval: Option<Duration>,
    /// Failed `retry_join` attempts after which the agent exits (0: never).
    pub retry_max_attempts: Option<u32>,
    /// Replay past user events when joining at startup.
    pub replay_on_join: Option<bool>,
    /// Gossip encryption key, base64.
    pub encrypt_key: Option<String>,
    /// JSON keyring file (array of base64 keys, first = primary).
    pub keyring_file: Option<PathBuf>,
    /// Snapshot file (Serf's format).
    pub snapshot_path: Option<PathBuf>,
    /// Rejoin from the snapshot even after a graceful leave.
    pub rejoin_after_leave: Option<bool>,
    /// JSON tags file, rewritten when the tags change.
    pub tags_file: Option<PathBuf>,
    /// Timing profile: `lan`, `wan` or `local`.
    pub profile: Option<String>,
    /// Serf protocol version, 2 to 5.
    pub protocol: Option<i64>,
    /// LZW-compress gossip messages (default true).
    pub enable_compression: Option<bool>,
    /// Leave the cluster gracefully on SIGTERM (default false: just stop).
    pub leave_on_terminate: Option<bool>,
    /// Stop without leaving on SIGINT (default false: leave gracefully).
    pub skip_leave_on_interrupt: Option<bool>,
    /// Plugins by name.
    #[serde(default)]
    pub plugins: BTreeMap<String, FilePlugin>,
    /// Shell event handlers as Serf's `event_handlers`: `[FILTERS=]script` strings.
    pub event_handlers: Option<Vec<String>>,
    /// Shell event handlers as `[[handlers]]` tables.
    #[serde(default)]
    pub handlers: Vec<FileHandler>,
    /// Reload when serf.toml or a plugin file changes (default true).
    pub auto_reload: Option<bool>,
    /// Threads that run plugins' long jobs (default 2, at most 64).
    pub job_workers: Option<usize>,
    /// Largest plugin file read, in MiB (default 64).
    pub plugin_max_size_mib: Option<u64>,
    /// Wall-clock budget to compile one plugin, e.g. `"30s"` (default 30 s).
    #[serde(default, with = "humantime_serde")]
    pub plugin_compile_timeout: Option<Duration>,
    /// Memory budget (resident) to compile one plugin, in MiB (default 1024).
    pub plugin_compile_memory_mib: Option<u64>,
}

/// Per-plugin limits as written in `serf.toml`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    /// Fuel for one event (1 G is 0.1-0.5 s of CPU, by instruction mix).
    pub fuel_per_event: Option<u64>,
    /// Fuel for instantiating and initialising the plugin.
    pub fuel_init: Option<u64>,
    /// Linear memory cap, in MiB.
    pub max_memory_mib: Option<usize>,
    /// Wall-clock deadline for one event, e.g. `"2s"`.
    #[serde(default, with = "humantime_serde")]
    pub event_timeout: Option<Duration>,
    /// Events waiting for the plugin before new ones are dropped.
    pub queue_capacity: Option<usize>,
    // Jobs (ABI v1.1).
    /// Fuel for one job (1 G is 0.1-0.5 s of CPU, by instruction mix).
    pub job_fuel: Option<u64>,
    /// Wall-clock deadline for one job, e.g. `"15m"`.
    #[serde(default, with = "humantime_serde")]
    pub job_timeout: Option<Duration>,
    /// Linear memory cap of a job's instance, in MiB.
    pub job_max_memory_mib: Option<usize>,
    /// Jobs that may not have ended at once; 0 forbids jobs.
    pub max_jobs: Option<usize>,
    /// Failed calls in a row after which the plugin is parked until a reload.
    pub max_consecutive_traps: Option<u32>,
}

/// One `[plugins.NAME]` table.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePlugin {
    /// The `.wasm` file; may be left out for a file named `NAME.wasm` in the plugin directory.
    pub path: Option<PathBuf>,
    /// Serf handler filter: `member-join,user:deploy`, `query:upcase`, `*` (the default).
    pub events: Option<String>,
    /// Set to false to keep a plugin from the plugin directory from loading.
    pub enabled: Option<bool>,
    /// Guest directory → host directory, granted through WASI preopens.
    #[serde(default)]
    pub dirs: BTreeMap<String, PathBuf>,
    /// Free-form table handed to the plugin's `serf_init`.
    #[serde(default)]
    pub config: toml::Table,
    /// Fuel for one event.
    pub fuel_per_event: Option<u64>,
    /// Fuel for instantiating and initialising.
    pub fuel_init: Option<u64>,
    /// Linear memory cap, in MiB.
    pub max_memory_mib: Option<usize>,
    /// Wall-clock deadline for one event.
    #[serde(default, with = "humantime_serde")]
    pub event_timeout: Option<Duration>,
    /// Events waiting for the plugin before new ones are dropped.
    pub queue_capacity: Option<usize>,
    // Jobs (ABI v1.1).
    /// Fuel for one job.
    pub job_fuel: Option<u64>,
    /// Wall-clock deadline for one job.
    #[serde(default, with = "humantime_serde")]
    pub job_timeout: Option<Duration>,
    /// Linear memory cap of a job's instance, in MiB.
    pub job_max_memory_mib: Option<usize>,
    /// Jobs that may not have ended at once; 0 forbids jobs.
    pub max_jobs: Option<usize>,
    /// Failed calls in a row after which the plugin is parked until a reload.
    pub max_consecutive_traps: Option<u32>,
    /// Capabilities granted: `members`, `events`, `queries` (default: none).
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// The environment variables the plugin sees (default: none).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The host commands it may run, by name (ABI v1.1; default: none).
    #[serde(default)]
    pub commands: BTreeMap<String, serf_plugins::commands::FileCommand>,
    // Effects (ABI v1.2), each denied unless its key is here.
    /// `[plugins.NAME.http]`: outbound HTTP to the origins it allows.
    pub http: Option<serf_plugins::effects::FileHttp>,
    /// `[plugins.NAME.state]`: a durable key-value store, with its quota.
    pub state: Option<serf_plugins::effects::FileState>,
    /// A periodic tick, e.g. `"5s"` (`"0s"`: granted, started by the plugin).
    #[serde(default, with = "humantime_serde")]
    pub tick: Option<Duration>,
    /// `[plugins.NAME.metrics]`: metrics the plugin defines.
    pub metrics: Option<serf_plugins::effects::FileMetrics>,
}

impl FilePlugin {
    /// The limits written in this table (the rest come from `[plugin_defaults]`).
    fn limits(&self) -> FileLimits {
        FileLimits {
            fuel_per_event: self.fuel_per_event,
            fuel_init: self.fuel_init,
            max_memory_mib: self.max_memory_mib,
            event_timeout: self.event_timeout,
            queue_capacity: self.queue_capacity,
            job_fuel: self.job_fuel,
            job_timeout: self.job_timeout,
            job_max_memory_mib: self.job_max_memory_mib,
            max_jobs: self.max_jobs,
            max_consecutive_traps: self.max_consecutive_traps,
        }
    }
}

/// One `[[handlers]]` table: a shell event handler.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHandler {
    /// Shell command, run as `/bin/sh -c COMMAND` in the agent's working directory.
    pub command: String,
    /// Serf handler filter: `member-join,user:deploy`, `query:upcase`, `*` (the default).
    pub events: Option<String>,
    /// Kill the script's process group after this long (default: wait forever, as Serf).
    #[serde(default, with = "humantime_serde")]
    pub event_timeout: Option<Duration>,
    /// Events waiting for the handler before new ones are dropped (default 1024).
    pub queue_capacity: Option<usize>,
}

/// What the agent runs with: typed, defaulted, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's name.
    pub node_name: String,
    /// Where gossip listens.
    pub bind: SocketAddr,
    /// The address other members are told to use.
    pub advertise: SocketAddr,
    /// Where the RPC server listens.
    pub rpc_addr: SocketAddr,
    /// The RPC auth key; `None` lets every client in.
    pub rpc_auth: Option<String>,
    /// The log level for stderr.
    pub log_level: LogLevel,
    /// This node's tags.
    pub tags: BTreeMap<String, String>,
    /// The agent's state directory, if it has one.
    pub data_dir: Option<PathBuf>,
    /// Where compiled plugins are cached; `None` compiles at every start.
    pub plugin_cache_dir: Option<PathBuf>,
    /// Serf's protocol limits.
    pub serf_limits: SerfLimits,
    /// The plugins to load, in name order.
    pub plugins: Vec<PluginSpec>,
    /// Addresses joined at startup (file's `start_join`, then `-join`); none answering is fatal.
    pub start_join: Vec<String>,
    /// Addresses joined in the background until one answers (`retry_join`, `-retry-join`).
    pub retry_join: Vec<String>,
    /// Pause between background join attempts; at least [`MIN_RETRY_INTERVAL`].
    pub retry_interval: Duration,
    /// Failed background attempts after which the agent exits; 0 retries forever.
    pub retry_max_attempts: u32,
    /// Replay past user events on the startup and background joins.
    pub replay_on_join: bool,
    /// The gossip keyring; `None` gossips in plaintext.
    pub keyring: Option<Keyring>,
    /// Where the keyring came from, if from a file.
    pub keyring_file: Option<PathBuf>,
    /// The snapshot file, if any.
    pub snapshot_path: Option<PathBuf>,
    /// A graceful leave in the snapshot does not stop the rejoin.
    pub rejoin_after_leave: bool,
    /// The tags file the tags came from and are written back to.
    pub tags_file: Option<PathBuf>,
    /// The gossip timing profile.
    pub profile: Profile,
    /// The Serf protocol version advertised (the last byte of the version vector), 2 to 5.
    pub protocol: u8,
    /// LZW-compress gossip messages.
    pub enable_compression: bool,
    /// SIGTERM leaves gracefully before stopping.
    pub leave_on_terminate: bool,
    /// SIGINT stops without leaving.
    pub skip_leave_on_interrupt: bool,
    /// Shell event handlers: `event_handlers`, then `[[handlers]]`, then `-event-handler`.
    pub handlers: Vec<crate::agent::shell::HandlerSpec>,
    /// The flags this was resolved from: a reload resolves them again with the file re-read.
    pub flags: AgentFlags,
    /// The plugin directory (`-plugins` or `plugin_dir`), whose new `.wasm` files a reload
    /// picks up.
    pub plugin_dir: Option<PathBuf>,
    /// Plugins of the plugin directory without a `[plugins.NAME]` table: they get
    /// [`EventFilter::UNCONFIGURED`], and the agent warns about each when it loads them.
    pub plugins_without_table: Vec<String>,
    /// Watch serf.toml and the plugin files, and reload when they change.
    pub auto_reload: bool,
    /// Threads that run plugins' long jobs, started with the first job.
    pub job_workers: NonZeroUsize,
    /// How large a plugin file may be, and how long and how much memory compiling it may take.
    pub plugin_budget: serf_plugins::engine::CompileBudget,
}

/// Threads that run plugins' long jobs unless `job_workers` says otherwise.
pub const DEFAULT_JOB_WORKERS: usize = 2;
/// The most threads `job_workers` may ask for.
pub const MAX_JOB_WORKERS: usize = 64;
/// The largest `queue_capacity` of a plugin or shell handler.
pub const MAX_QUEUE_CAPACITY: usize = 1 << 20;
/// The most jobs `max_jobs` may allow at once (the job table keeps 256 records per plugin).
pub const MAX_MAX_JOBS: usize = 256;
/// The largest `max_memory_mib` and `job_max_memory_mib`: a wasm32 memory holds 4 GiB.
pub const MAX_MEMORY_MIB: usize = 4096;
/// The longest `event_timeout`.
pub const MAX_EVENT_TIMEOUT: Duration = Duration::from_secs(3600);
/// The longest `job_timeout`.
pub const MAX_JOB_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// The largest `max_consecutive_traps`.
pub const MAX_CONSECUTIVE_TRAPS: u32 = 10_000;
/// The largest `plugin_max_size_mib`.
pub const MAX_PLUGIN_SIZE_MIB: u64 = 1024;
/// The longest `plugin_compile_timeout`.
pub const MAX_COMPILE_TIMEOUT: Duration = Duration::from_secs(600);
/// The largest `plugin_compile_memory_mib`.
pub const MAX_COMPILE_MEMORY_MIB: u64 = 64 << 10;

/// The shortest pause between background join attempts (Serf raises shorter ones to this).
pub const MIN_RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// Serf's default pause between background join attempts.
pub const DEFAULT_RETRY_INTERVAL: Duration = Duration::from_secs(30);
/// The Serf protocol versions this agent can speak (reference 3.16).
pub const PROTOCOL_RANGE: std::ops::RangeInclusive<u8> = 2..=5;

/// Serf's gossip timing profiles (reference 2.18).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// A local network: the default.
    Lan,
    /// Wide-area links: slower probes and gossip.
    Wan,
    /// One machine (loopback): fast timeouts.
    Local,
}

impl Profile {
    /// `lan`, `wan` or `local`, as `-profile` spells them.
    pub fn parse(text: &str) -> Option<Profile> {
        match text {
            "lan" => Some(Profile::Lan),
            "wan" => Some(Profile::Wan),
            "local" => Some(Profile::Local),
            _ => None,
        }
    }

    /// The name `-profile` takes and the banner prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Lan => "lan",
            Profile::Wan => "wan",
            Profile::Local => "local",
        }
    }
}

/// Serf's log levels, most verbose first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Everything.
    Trace,
    /// Per-message detail.
    Debug,
    /// Lifecycle and membership.
    Info,
    /// Misbehaving peers and plugins.
    Warn,
    /// The agent cannot do its job.
    Err,
}

impl LogLevel {
    /// Parses Serf's level names, case-insensitively (`ERROR` is accepted for `ERR`).
    pub fn parse(text: &str) -> Option<LogLevel> {
        Some(match text.to_ascii_uppercase().as_str() {
            "TRACE" => LogLevel::Trace,
            "DEBUG" => LogLevel::Debug,
            "INFO" => LogLevel::Info,
            "WARN" => LogLevel::Warn,
            "ERR" | "ERROR" => LogLevel::Err,
            _ => return None,
        })
    }

    /// Serf's name of the level: `TRACE`, `DEBUG`, `INFO`, `WARN` or `ERR`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "TRACE",
            LogLevel::Debug => "DEBUG",
            LogLevel::Info => "INFO",
            LogLevel::Warn => "WARN",
            LogLevel::Err => "ERR",
        }
    }

    /// The tracing level with the same meaning.
    pub fn to_tracing(self) -> tracing::Level {
        match self {
            LogLevel::Trace => tracing::Level::TRACE,
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Warn => tracing::Level::WARN,
            LogLevel::Err => tracing::Level::ERROR,
        }
    }
}

/// Why a configuration was refused. Nothing has started when one of these is returned.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The config file is not valid TOML for our schema; the message names the key and line.
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A value is out of range or malformed.
    #[error("invalid {key} {value:?}: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: String,
    },
    /// A plugin's event filter is malformed.
    #[error("plugin {plugin}: {source}")]
    Filter { plugin: String, source: FilterError },
    /// A plugin table names no file, and the plugin directory has none of that name.
    #[error("plugin {plugin}: no path given and no {plugin}.wasm in the plugin directory")]
    PluginWithoutFile { plugin: String },
    /// The plugin directory could not be listed.
    #[error("cannot list plugin directory {path}: {source}")]
    PluginDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The encryption key is not base64 of 16, 24 or 32 bytes (the key is not repeated here).
    #[error("invalid encryption key: {0}")]
    EncryptKey(String),
    /// An encryption key and a keyring file were both given, which Serf refuses too.
    #[error("encryption key not allowed while using a keyring ({})", .0.display())]
    EncryptWithKeyring(PathBuf),
    /// The keyring file is missing, unreadable or malformed.
    #[error("cannot load keyring file {}: {reason}", path.display())]
    Keyring { path: PathBuf, reason: String },
    /// Tags were configured beside a tags file, which Serf refuses too.
    #[error("tags config not allowed while using tag files ({})", .0.display())]
    TagsWithTagsFile(PathBuf),
    /// The tags file exists but cannot be read or is not a JSON object of strings.
    #[error("cannot load tags file {}: {reason}", path.display())]
    TagsFile { path: PathBuf, reason: String },
}

impl FileConfig {
    /// Parses `serf.toml` text; `path` is only used in messages. An error in a value names
    /// the value's key path and line: `plugins.upcase.events: invalid type: integer `42`,
    /// expected a string (line 3, column 10)`.
    pub fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|error| ConfigError::Parse {
            path: path.to_path_buf(),
            message: describe_toml_error(text, &error),
        })
    }

    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        FileConfig::parse(&text, path)
    }
}

/// `key.path: message (line L, column C)` for an error whose place is a value of a
/// well-formed document (a wrong type, an unknown field); toml's own text for a syntax error.
fn describe_toml_error(text: &str, error: &toml::de::Error) -> String {
    let place = error.span().and_then(|span| {
        let document = toml::de::DeTable::parse(text).ok()?;
        let mut keys = Vec::new();
        if !key_path(document.get_ref(), span.start, &mut keys) {
            keys.clear();
        }
        let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
        let line_start = text[..span.start.min(text.len())]
            .rfind('\n')
            .map_or(0, |i| i + 1);
        let column = text[line_start..span.start.min(text.len())].chars().count() + 1;
        Some((keys.join("."), line, column))
    });
    match place {
        Some((keys, line, column)) if !keys.is_empty() => {
            let message = error.message().trim_end();
            format!("{keys}: {message} (line {line}, column {column})")
        }
        _ => error.to_string().trim_end().to_owned(),
    }
}

/// Pushes onto `keys` the path of the innermost key or value of `table` whose span holds
/// `at`, array elements as `[i]` on the key before them; true if one does. Every table is
/// searched, since one defined by a `[header]` spans only its header.
fn key_path(table: &toml::de::DeTable<'_>, at: usize, keys: &mut Vec<String>) -> bool {
    for (key, value) in table {
        keys.push(key.get_ref().to_string());
        if key.span().contains(&at) || value_path(value, at, keys) {
            return true;
        }
        keys.pop();
    }
    false
}

fn value_path(
    value: &toml::Spanned<toml::de::DeValue<'_>>,
    at: usize,
    keys: &mut Vec<String>,
) -> bool {
    let found = match value.get_ref() {
        toml::de::DeValue::Table(table) => key_path(table, at, keys),
        toml::de::DeValue::Array(array) => array.iter().enumerate().any(|(i, element)| {
            let key = keys.len() - 1;
            let plain = keys[key].clone();
            keys[key].push_str(&format!("[{i}]"));
            let depth = keys.len();
            if value_path(element, at, keys) {
                return true;
            }
            keys.truncate(depth);
            keys[key] = plain;
            false
        }),
        _ => false,
    };
    found || value.span().contains(&at)
}

impl Config {
    /// Warns about each plugin that runs without a `[plugins.NAME]` table.
    pub fn warn_plugins_without_table(&self) {
        for name in &self.plugins_without_table {
            tracing::warn!(
                plugin = %name,
                "plugin {name} has no [plugins.{name}] table: it gets member and user events but no queries (events = \"{}\"); add the table with events = \"...\" to choose",
                EventFilter::UNCONFIGURED
            );
        }
    }

    /// Loads the config file named by the flags (if any) and resolves it with them.
    pub fn from_flags(flags: &AgentFlags) -> Result<Config, ConfigError> {
        let (file, base) = match &flags.config_file {
            Some(path) => {
                let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
                (FileConfig::load(path)?, base)
            }
            None => (FileConfig::default(), PathBuf::new()),
        };
        Config::resolve(file, &base, flags)
    }

    /// Combines the file (whose relative paths are taken from `base`), the flags and the
    /// defaults into a checked configuration.
    pub fn resolve(
        file: FileConfig,
        base: &Path,
        flags: &AgentFlags,
    ) -> Result<Config, ConfigError> {
        let node_name = flags
            .node
            .clone()
            .or(file.node_name)
            .unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned());
        if node_name.is_empty() {
            return Err(invalid("node name", "", "must not be empty"));
        }
        let bind_text = flags.bind.clone().or(file.bind);
        let bind = match bind_text {
            Some(text) => parse_host_port("bind", &text, DEFAULT_BIND_PORT)?,
            None => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_BIND_PORT),
        };
        let advertise = match flags.advertise.clone().or(file.advertise) {
            Some(text) => parse_host_port("advertise", &text, bind.port())?,
            None if bind.ip().is_unspecified() => SocketAddr::new(
                outbound_ip().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                bind.port(),
            ),
            None => bind,
        };
        let rpc_addr = match flags.rpc_addr.clone().or(file.rpc_addr) {
            Some(text) => text
                .parse::<SocketAddr>()
                .map_err(|error| invalid("rpc_addr", &text, &error.to_string()))?,
            None => DEFAULT_RPC_ADDR,
        };
        let log_level = match flags.log_level.clone().or(file.log_level) {
            Some(text) => LogLevel::parse(&text).ok_or_else(|| {
                invalid(
                    "log level",
                    &text,
                    "expected trace, debug, info, warn or err",
                )
            })?,
            None => LogLevel::Info,
        };
        let mut tags = file.tags.unwrap_or_default();
        for tag in &flags.tags {
            let (key, value) = tag
                .split_once('=')
                .ok_or_else(|| invalid("tag", tag, "expected key=value"))?;
            tags.insert(key.to_owned(), value.to_owned());
        }
        let data_dir = flags
            .data_dir
            .clone()
            // No default: as a Serf agent, one without a data directory keeps no state on disk
            // (job records in memory, plugins compiled at every start), and never another's.
            .or_else(|| file.data_dir.map(|dir| base.join(dir)));
        let plugin_cache_dir = file
            .plugin_cache_dir
            .map(|dir| base.join(dir))
            .or_else(|| data_dir.as_ref().map(|dir| dir.join("plugin-cache")));
        let serf_limits = SerfLimits {
            user_event_size_limit: file
                .user_event_size_limit
                .unwrap_or(SerfLimits::SERF.user_event_size_limit),
            query_size_limit: file
                .query_size_limit
                .unwrap_or(SerfLimits::SERF.query_size_limit),
            query_response_size_limit: file
                .query_response_size_limit
                .unwrap_or(SerfLimits::SERF.query_response_size_limit),
        };
        if serf_limits.user_event_size_limit > serf_core::USER_EVENT_SIZE_HARD_LIMIT {
            return Err(invalid(
                "user_event_size_limit",
                &serf_limits.user_event_size_limit.to_string(),
                "user event size limit exceeds 9216 bytes",
            ));
        }
        let plugin_dir = flags
            .plugins
            .clone()
            .or_else(|| file.plugin_dir.map(|dir| base.join(dir)));
        let defaults = apply_limits(Limits::DEFAULT, file.plugin_defaults.as_ref())
            .map_err(|(key, value, reason)| invalid(key, &value, &reason))?;
        let plugins = resolve_plugins(&file.plugins, base, plugin_dir.as_deref(), defaults)?;
        let plugins_without_table = plugins
            .iter()
            .filter(|spec| !file.plugins.contains_key(&spec.name))
            .map(|spec| spec.name.clone())
            .collect();
        // Serf concatenates the file's lists and the flags' (file first).
        let mut start_join = file.start_join.unwrap_or_default();
        start_join.extend(flags.join.iter().cloned());
        let mut retry_join = file.retry_join.unwrap_or_default();
        retry_join.extend(flags.retry_join.iter().cloned());
        let retry_interval = flags
            .retry_interval
            .or(file.retry_interval)
            .unwrap_or(DEFAULT_RETRY_INTERVAL)
            .max(MIN_RETRY_INTERVAL);
        let retry_max_attempts = flags.retry_max.or(file.retry_max_attempts).unwrap_or(0);
        let profile = match flags.profile.clone().or(file.profile) {
            Some(text) => Profile::parse(&text)
                .ok_or_else(|| invalid("profile", &text, "expected lan, wan or local"))?,
            None => Profile::Lan,
        };
        // As in Serf, zero or a negative number means the default.
        let protocol = match flags.protocol.or(file.protocol) {
            Some(version) if version > 0 => u8::try_from(version)
                .ok()
                .filter(|v| PROTOCOL_RANGE.contains(v))
                .ok_or_else(|| {
                    invalid(
                        "protocol",
                        &version.to_string(),
                        "expected a Serf protocol version from 2 to 5",
                    )
                })?,
            _ => *PROTOCOL_RANGE.end(),
        };
        let encrypt_key = flags.encrypt.clone().or(file.encrypt_key);
        let keyring_file = flags
            .keyring_file
            .clone()
            .or_else(|| file.keyring_file.map(|path| base.join(path)));
        let keyring = match (&encrypt_key, &keyring_file) {
            (Some(_), Some(path)) => return Err(ConfigError::EncryptWithKeyring(path.clone())),
            (Some(key), None) => Some(keyring_from_key(key)?),
            (None, Some(path)) => Some(load_keyring(path)?),
            (None, None) => None,
        };
        let tags_file = flags
            .tags_file
            .clone()
            .or_else(|| file.tags_file.map(|path| base.join(path)));
        if let Some(path) = &tags_file {
            if !tags.is_empty() {
                return Err(ConfigError::TagsWithTagsFile(path.clone()));
            }
            tags = load_tags_file(path)?;
        }
        Ok(Config {
            node_name,
            bind,
            advertise,
            rpc_addr,
            rpc_auth: file.rpc_auth.filter(|key| !key.is_empty()),
            log_level,
            tags,
            data_dir,
            plugin_cache_dir,
            serf_limits,
            plugins,
            start_join,
            retry_join,
            retry_interval,
            retry_max_attempts,
            replay_on_join: flags.replay || file.replay_on_join.unwrap_or(false),
            keyring,
            keyring_file,
            snapshot_path: flags
                .snapshot
                .clone()
                .or_else(|| file.snapshot_path.map(|path| base.join(path))),
            rejoin_after_leave: flags.rejoin || file.rejoin_after_leave.unwrap_or(false),
            tags_file,
            profile,
            protocol,
            // `-disable-compression` can only turn compression off, as a Go boolean flag can.
            enable_compression: !flags.disable_compression
                && file.enable_compression.unwrap_or(true),
            leave_on_terminate: file.leave_on_terminate.unwrap_or(false),
            skip_leave_on_interrupt: file.skip_leave_on_interrupt.unwrap_or(false),
            handlers: resolve_handlers(file.event_handlers, file.handlers, &flags.event_handlers)?,
            flags: flags.clone(),
            plugin_dir,
            plugins_without_table,
            auto_reload: file.auto_reload.unwrap_or(true),
            job_workers: resolve_job_workers(file.job_workers)?,
            plugin_budget: resolve_budget(
                file.plugin_max_size_mib,
                file.plugin_compile_timeout,
                file.plugin_compile_memory_mib,
            )?,
        })
    }
}

/// Decodes a base64 encryption key (standard alphabet, padded) and checks its length; the
/// error says what is wrong without repeating the key.
pub fn decode_key(text: &str) -> Result<Vec<u8>, String> {
    keyring::parse_key(text.trim()).map_err(|error| match error {
        KeyringError::KeySize(len) => {
            format!("key must be 16, 24 or 32 bytes, got {len} bytes")
        }
        KeyringError::Base64(_) => format!("not base64: {error}"),
        other => other.to_string(),
    })
}

/// A keyring holding only the `-encrypt` key.
fn keyring_from_key(text: &str) -> Result<Keyring, ConfigError> {
    let key = decode_key(text).map_err(ConfigError::EncryptKey)?;
    Keyring::new(vec![key]).map_err(|error| ConfigError::EncryptKey(error.to_string()))
}

/// Reads a keyring file; as in Serf, it must exist and hold at least one key.
fn load_keyring(path: &Path) -> Result<Keyring, ConfigError> {
    let error = |reason: String| ConfigError::Keyring {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    Keyring::load_file_contents(&text).map_err(|e| error(e.to_string()))
}

/// Reads the tags file (a JSON object of strings, as Serf writes it); a missing file means no
/// tags yet, as in Serf.
fn load_tags_file(path: &Path) -> Result<BTreeMap<String, String>, ConfigError> {
    let error = |reason: String| ConfigError::TagsFile {
        path: path.to_path_buf(),
        reason,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(error(e.to_string())),
    };
    let tags: Option<BTreeMap<String, String>> =
        serde_json::from_str(&text).map_err(|e| error(e.to_string()))?;
    Ok(tags.unwrap_or_default())
}

/// A Go boolean flag value: 1, t, T, TRUE, true, True, 0, f, F, FALSE, false, False.
pub fn parse_go_bool(text: &str) -> Result<bool, String> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("invalid boolean value {text:?}")),
    }
}

/// A Go duration (`time.ParseDuration`): `0`, or numbers with units ns, us, µs, ms, s, m, h,
/// e.g. `1.5s`, `1m30s`. Negative durations are refused.
///
/// Parsed exactly as Go parses it: integer parts in integer nanoseconds (`1.001s` is
/// 1,001,000,000 ns), and a fraction as Go computes it, `uint64(float64(f) * (float64(unit) /
/// scale))` with at most 19 significant fraction digits, so that the value is Go's to the
/// nanosecond (`0.3333333333333333333h` is 20 minutes in both).
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("invalid duration {text:?}");
    let unsigned = text.strip_prefix('+').unwrap_or(text);
    if unsigned == "0" {
        return Ok(Duration::ZERO);
    }
    if unsigned.is_empty() || unsigned.starts_with('-') {
        return Err(invalid());
    }
    const LIMIT: u64 = 1 << 63;
    let mut rest = unsigned.as_bytes();
    let mut total: u64 = 0;
    while !rest.is_empty() {
        if !(rest[0] == b'.' || rest[0].is_ascii_digit()) {
            return Err(invalid());
        }
        let (whole, after) = leading_int(rest).ok_or_else(invalid)?;
        let mut digits = rest.len() != after.len();
        rest = after;
        let (mut fraction, mut scale) = (0, 1.0);
        if let [b'.', after @ ..] = rest {
            let (f, s, after_fraction) = leading_fraction(after);
            digits |= after.len() != after_fraction.len();
            (fraction, scale, rest) = (f, s, after_fraction);
        }
        if !digits {
            return Err(invalid());
        }
        let unit_len = rest
            .iter()
            .position(|c| *c == b'.' || c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit: u64 = match &rest[..unit_len] {
            b"ns" => 1,
            // µ (U+00B5) and μ (U+03BC), as Go accepts both.
            b"us" | b"\xc2\xb5s" | b"\xce\xbcs" => 1_000,
            b"ms" => 1_000_000,
            b"s" => 1_000_000_000,
            b"m" => 60_000_000_000,
            b"h" => 3_600_000_000_000,
            _ => return Err(invalid()),
        };
        rest = &rest[unit_len..];
        if whole > LIMIT / unit {
            return Err(invalid());
        }
        let mut value = whole * unit;
        if fraction > 0 {
            // Go's own arithmetic: f * unit / scale is at most 3.6e12 (an hour), so
            // float64 is nanosecond-accurate here, and rounding matches Go's.
            value += (fraction as f64 * (unit as f64 / scale)) as u64;
            if value > LIMIT {
                return Err(invalid());
            }
        }
        total = total
            .checked_add(value)
            .filter(|t| *t <= LIMIT)
            .ok_or_else(invalid)?;
    }
    if total > LIMIT - 1 {
        return Err(invalid());
    }
    Ok(Duration::from_nanos(total))
}

/// Go's `leadingInt`: the leading decimal digits as an integer, and the rest; `None` when the
/// integer exceeds 2^63.
fn leading_int(text: &[u8]) -> Option<(u64, &[u8])> {
    let digits = text.iter().take_while(|c| c.is_ascii_digit()).count();
    let mut value: u64 = 0;
    for &c in &text[..digits] {
        if value > (1 << 63) / 10 {
            return None;
        }
        value = value * 10 + u64::from(c - b'0');
        if value > 1 << 63 {
            return None;
        }
    }
    Some((value, &text[digits..]))
}

/// Go's `leadingFraction`: the leading decimal digits as an integer `f` and `scale` (the
/// fraction is `f / scale`), and the rest. Digits past what fits in 63 bits are skipped.
fn leading_fraction(text: &[u8]) -> (u64, f64, &[u8]) {
    let digits = text.iter().take_while(|c| c.is_ascii_digit()).count();
    let (mut value, mut scale, mut overflow) = (0u64, 1.0f64, false);
    for &c in &text[..digits] {
        if overflow {
            continue;
        }
        if value > ((1 << 63) - 1) / 10 {
            overflow = true;
            continue;
        }
        let next = value * 10 + u64::from(c - b'0');
        if next > 1 << 63 {
            overflow = true;
            continue;
        }
        value = next;
        scale *= 10.0;
    }
    (value, scale, &text[digits..])
}

fn resolve_job_workers(workers: Option<usize>) -> Result<NonZeroUsize, ConfigError> {
    let workers = workers.unwrap_or(DEFAULT_JOB_WORKERS);
    if workers > MAX_JOB_WORKERS {
        return Err(invalid(
            "job_workers",
            &workers.to_string(),
            &format!("must be at most {MAX_JOB_WORKERS}"),
        ));
    }
    NonZeroUsize::new(workers)
        .ok_or_else(|| invalid("job_workers", "0", "must be greater than zero"))
}

fn resolve_budget(
    size_mib: Option<u64>,
    timeout: Option<Duration>,
    memory_mib: Option<u64>,
) -> Result<serf_plugins::engine::CompileBudget, ConfigError> {
    let mut budget = serf_plugins::engine::CompileBudget::DEFAULT;
    if let Some(mib) = size_mib {
        if mib == 0 || mib > MAX_PLUGIN_SIZE_MIB {
            return Err(invalid(
                "plugin_max_size_mib",
                &mib.to_string(),
                &format!("must be 1 to {MAX_PLUGIN_SIZE_MIB}"),
            ));
        }
        budget.max_module_bytes = mib << 20;
    }
    if let Some(timeout) = timeout {
        if timeout.is_zero() || timeout > MAX_COMPILE_TIMEOUT {
            return Err(invalid(
                "plugin_compile_timeout",
                &format!("{timeout:?}"),
                &format!("must be greater than zero and at most {MAX_COMPILE_TIMEOUT:?}"),
            ));
        }
        budget.timeout = timeout;
    }
    if let Some(mib) = memory_mib {
        if !(64..=MAX_COMPILE_MEMORY_MIB).contains(&mib) {
            return Err(invalid(
                "plugin_compile_memory_mib",
                &mib.to_string(),
                &format!("must be 64 to {MAX_COMPILE_MEMORY_MIB}"),
            ));
        }
        budget.max_memory_bytes = mib << 20;
    }
    Ok(budget)
}

fn invalid(key: &'static str, value: &str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Parses `ip`, `ip:port`, `[v6]:port` or `[v6]`, filling in `default_port`.
pub fn parse_host_port(
    key: &'static str,
    text: &str,
    default_port: u16,
) -> Result<SocketAddr, ConfigError> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bare = text.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, default_port))
        .map_err(|_| invalid(key, text, "expected ip or ip:port"))
}

/// Why a written limit was refused: its key, its value as written, and the rule it breaks.
type LimitError = (&'static str, String, String);

/// Applies written limits over `base`; an error names the key, the value and the rule.
fn apply_limits(base: Limits, file: Option<&FileLimits>) -> Result<Limits, LimitError> {
    let Some(file) = file else { return Ok(base) };
    let mut limits = base;
    let zero = |key: &'static str, value: String| (key, value, "must be greater than zero".into());
    let above = |key: &'static str, value: String, max: String| {
        (key, value, format!("must be at most {max}"))
    };
    let mib = |key: &'static str, mib: usize| -> Result<usize, LimitError> {
        if mib == 0 {
            return Err(zero(key, "0".into()));
        }
        if mib > MAX_MEMORY_MIB {
            return Err(above(key, mib.to_string(), MAX_MEMORY_MIB.to_string()));
        }
        Ok(mib << 20)
    };
    let timeout = |key: &'static str, timeout: Duration, max: Duration| {
        if timeout.is_zero() {
            return Err(zero(key, "0s".into()));
        }
        if timeout > max {
            return Err(above(key, format!("{timeout:?}"), format!("{max:?}")));
        }
        Ok(timeout)
    };
    if let Some(fuel) = file.fuel_per_event {
        limits.fuel_per_event = nonzero_u64("fuel_per_event", fuel)?;
    }
    if let Some(fuel) = file.fuel_init {
        limits.fuel_init = nonzero_u64("fuel_init", fuel)?;
    }
    if let Some(value) = file.max_memory_mib {
        limits.max_memory_bytes = mib("max_memory_mib", value)?;
    }
    if let Some(value) = file.event_timeout {
        limits.event_timeout = timeout("event_timeout", value, MAX_EVENT_TIMEOUT)?;
    }
    if let Some(capacity) = file.queue_capacity {
        if capacity > MAX_QUEUE_CAPACITY {
            let max = MAX_QUEUE_CAPACITY.to_string();
            return Err(above("queue_capacity", capacity.to_string(), max));
        }
        limits.queue_capacity =
            NonZeroUsize::new(capacity).ok_or_else(|| zero("queue_capacity", "0".into()))?;
    }
    // Jobs (ABI v1.1); `max_jobs = 0` is allowed: it forbids jobs.
    if let Some(fuel) = file.job_fuel {
        limits.job_fuel = nonzero_u64("job_fuel", fuel)?;
    }
    if let Some(value) = file.job_timeout {
        limits.job_timeout = timeout("job_timeout", value, MAX_JOB_TIMEOUT)?;
    }
    if let Some(value) = file.job_max_memory_mib {
        limits.job_max_memory_bytes = mib("job_max_memory_mib", value)?;
    }
    if let Some(max) = file.max_jobs {
        if max > MAX_MAX_JOBS {
            return Err(above("max_jobs", max.to_string(), MAX_MAX_JOBS.to_string()));
        }
        limits.max_jobs = max;
    }
    if let Some(max) = file.max_consecutive_traps {
        if max == 0 {
            return Err(zero("max_consecutive_traps", "0".into()));
        }
        if max > MAX_CONSECUTIVE_TRAPS {
            let limit = MAX_CONSECUTIVE_TRAPS.to_string();
            return Err(above("max_consecutive_traps", max.to_string(), limit));
        }
        limits.max_consecutive_traps = max;
    }
    Ok(limits)
}

fn nonzero_u64(key: &'static str, value: u64) -> Result<u64, LimitError> {
    if value == 0 {
        Err((key, "0".into(), "must be greater than zero".into()))
    } else {
        Ok(value)
    }
}

/// Merges `[plugins.*]` tables with the `*.wasm` files of the plugin directory.
fn resolve_plugins(
    tables: &BTreeMap<String, FilePlugin>,
    base: &Path,
    plugin_dir: Option<&Path>,
    defaults: Limits,
) -> Result<Vec<PluginSpec>, ConfigError> {
    let mut found: BTreeMap<String, PathBuf> = BTreeMap::new();
    if let Some(dir) = plugin_dir {
        let entries = std::fs::read_dir(dir).map_err(|source| ConfigError::PluginDir {
            path: dir.to_path_buf(),
            source,
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|ext| ext == "wasm")
                && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
            {
                found.insert(stem.to_owned(), path);
            }
        }
    }
    let mut specs = Vec::new();
    for (name, table) in tables {
        if table.enabled == Some(false) {
            continue;
        }
        let path = match (&table.path, found.get(name)) {
            (Some(path), _) => base.join(path),
            (None, Some(path)) => path.clone(),
            (None, None) => {
                return Err(ConfigError::PluginWithoutFile {
                    plugin: name.clone(),
                });
            }
        };
        let filter = match &table.events {
            Some(text) => EventFilter::parse(text).map_err(|source| ConfigError::Filter {
                plugin: name.clone(),
                source,
            })?,
            None => EventFilter::all(),
        };
        let limits =
            apply_limits(defaults, Some(&table.limits())).map_err(|(key, value, reason)| {
                invalid(key, &value, &format!("plugin {name}: {reason}"))
            })?;
        let dirs = table
            .dirs
            .iter()
            .map(|(guest, host)| (guest.clone(), base.join(host)))
            .collect();
        let grants = resolve_grants(name, table)?;
        specs.push(PluginSpec {
            name: name.clone(),
            path,
            filter,
            limits,
            dirs,
            config: table.config.clone(),
            grants,
        });
    }
    for (name, path) in found {
        if !tables.contains_key(&name) {
            specs.push(PluginSpec {
                name,
                path,
                filter: EventFilter::unconfigured(),
                limits: defaults,
                dirs: BTreeMap::new(),
                config: toml::Table::new(),
                grants: serf_plugins::Grants::default(),
            });
        }
    }
    specs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(specs)
}

/// A plugin table's `capabilities` and `env`; an unknown capability is an error.
fn resolve_grants(name: &str, table: &FilePlugin) -> Result<serf_plugins::Grants, ConfigError> {
    use serf_plugins::{Capabilities, grants};
    let capabilities = Capabilities::from_names(&table.capabilities).map_err(|unknown| {
        invalid(
            "capabilities",
            &unknown,
            &format!("plugin {name}: unknown capability (known: members, events, queries)"),
        )
    })?;
    for key in table.env.keys() {
        grants::check_env_name(key)
            .map_err(|reason| invalid("env", key, &format!("plugin {name}: {reason}")))?;
    }
    let effects = serf_plugins::effects::resolve(
        table.http.as_ref(),
        table.state.as_ref(),
        table.tick,
        table.metrics.as_ref(),
    )
    .map_err(|(key, value, reason)| invalid(key, &value, &format!("plugin {name}: {reason}")))?;
    let commands =
        serf_plugins::commands::resolve(&table.commands).map_err(|(key, value, reason)| {
            invalid(key, &value, &format!("plugin {name}: {reason}"))
        })?;
    Ok(serf_plugins::Grants {
        capabilities,
        env: table.env.clone(),
        commands,
        effects,
        ..Default::default()
    })
}

/// Shell handlers in Serf's order: the file's specs, its tables, then the flags' specs.
fn resolve_handlers(
    file_specs: Option<Vec<String>>,
    tables: Vec<FileHandler>,
    flag_specs: &[String],
) -> Result<Vec<crate::agent::shell::HandlerSpec>, ConfigError> {
    use crate::agent::shell::HandlerSpec;
    let refuse = |value: &str, reason: &str| invalid("event handler", value, reason);
    let parse = |spec: &String| HandlerSpec::parse(spec).map_err(|e| refuse(spec, &e.to_string()));
    let mut handlers: Vec<HandlerSpec> = file_specs
        .iter()
        .flatten()
        .map(parse)
        .collect::<Result<_, _>>()?;
    for table in tables {
        let command = table.command.as_str();
        if command.trim().is_empty() {
            return Err(refuse(command, "command must not be empty"));
        }
        let events = table.events.as_deref().unwrap_or("*");
        let mut handler =
            HandlerSpec::new(events, command).map_err(|e| refuse(events, &e.to_string()))?;
        if let Some(timeout) = table.event_timeout {
            if timeout.is_zero() {
                return Err(refuse(command, "event_timeout must be greater than zero"));
            }
            handler.timeout = Some(timeout);
        }
        if let Some(capacity) = table.queue_capacity {
            if capacity > MAX_QUEUE_CAPACITY {
                let reason = format!("queue_capacity must be at most {MAX_QUEUE_CAPACITY}");
                return Err(refuse(command, &reason));
            }
            handler.queue_capacity = NonZeroUsize::new(capacity)
                .ok_or_else(|| refuse(command, "queue_capacity must be greater than zero"))?;
        }
        handlers.push(handler);
    }
    for spec in flag_specs {
        handlers.push(parse(spec)?);
    }
    Ok(handlers)
}

/// The address this machine sends from toward other hosts: what peers should use when the
/// agent binds every interface and no `-advertise` is given (Serf picks a private interface
/// address there). Asks the routing table through an unconnected-until-now UDP socket, which
/// sends nothing; `None` on a machine without a route.
fn outbound_ip() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    // TEST-NET-1: never answered, only used to pick the interface of the default route.
    socket.connect((Ipv4Addr::new(192, 0, 2, 1), 9)).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors from Go's own `time` package tests (parseDurationTests): what Go returns.
    #[test]
    fn durations_parse_as_go_parses_them() {
        const S: u64 = 1_000_000_000;
        const MS: u64 = 1_000_000;
        let cases: &[(&str, u64)] = &[
            ("0", 0),
            ("+0", 0),
            ("5s", 5 * S),
            ("+5s", 5 * S),
            ("1478s", 1478 * S),
            ("5.0s", 5 * S),
            ("5.6s", 5 * S + 600 * MS),
            ("5.s", 5 * S),
            (".5s", 500 * MS),
            ("1.004s", S + 4 * MS),
            ("1.0040s", S + 4 * MS),
            ("100.00100s", 100 * S + MS),
            ("1.001s", 1_001_000_000),
            ("10ns", 10),
            ("11us", 11_000),
            ("12µs", 12_000),
            ("12μs", 12_000),
            ("13ms", 13 * MS),
            ("15m", 15 * 60 * S),
            ("16h", 16 * 3600 * S),
            ("10.5s4m", 4 * 60 * S + 10 * S + 500 * MS),
            ("1h2m3s4ms5us6ns", 3723 * S + 4 * MS + 5_000 + 6),
            ("39h9m14.425s", (39 * 3600 + 9 * 60 + 14) * S + 425 * MS),
            ("52763797000ns", 52_763_797_000),
            ("0.3333333333333333333h", 20 * 60 * S),
            ("9007199254740993ns", (1 << 53) + 1),
            ("9223372036854775807ns", (1 << 63) - 1),
            ("9223372036854775.807us", (1 << 63) - 1),
            ("9223372036854ms775us807ns", (1 << 63) - 1),
            ("0.100000000000000000000h", 6 * 60 * S),
            ("0.830103483285477580700h", (49 * 60 + 48) * S + 372_539_827),
        ];
        for (text, nanos) in cases {
            assert_eq!(
                parse_go_duration(text),
                Ok(Duration::from_nanos(*nanos)),
                "{text}"
            );
        }
        let refused = [
            "",
            "3",
            "-",
            "s",
            ".",
            "-.",
            ".s",
            "+.s",
            "1d",
            "\u{85}\u{85}",
            "1s\u{ff}",
            "9223372036854775808ns",
            "9223372036854775.808us",
            "9223372036854ms775us808ns",
            // Go accepts negative durations; no setting here means one.
            "-5s",
            "-0",
        ];
        for text in refused {
            assert_eq!(
                parse_go_duration(text),
                Err(format!("invalid duration {text:?}")),
                "{text}"
            );
        }
    }

    proptest::proptest! {
        /// Whole numbers of any unit, and decimal seconds with up to nine fraction digits,
        /// are exact: no float rounding creeps in.
        #[test]
        fn decimal_durations_are_exact(
            whole in 0u64..1_000_000,
            fraction in 0u64..1_000_000_000,
            digits in 1u32..=9,
            unit in 0usize..6,
        ) {
            let (name, scale) = [
                ("ns", 1),
                ("us", 1_000),
                ("ms", 1_000_000),
                ("s", 1_000_000_000),
                ("m", 60_000_000_000),
                ("h", 3_600_000_000_000u64),
            ][unit];
            proptest::prop_assert_eq!(
                parse_go_duration(&format!("{whole}{name}")),
                Ok(Duration::from_nanos(whole * scale))
            );
            let fraction = fraction % 10u64.pow(digits);
            let text = format!("{whole}.{fraction:0width$}s", width = digits as usize);
            let nanos = whole * 1_000_000_000 + fraction * 10u64.pow(9 - digits);
            proptest::prop_assert_eq!(parse_go_duration(&text), Ok(Duration::from_nanos(nanos)));
        }

        /// Any text at all gets a value or an error, never a panic.
        #[test]
        fn any_duration_text_is_handled(text in "\\PC{0,24}") {
            let _ = parse_go_duration(&text);
        }
    }

    fn resolve(text: &str, flags: &AgentFlags) -> Result<Config, ConfigError> {
        let file = FileConfig::parse(text, Path::new("serf.toml"))?;
        Config::resolve(file, Path::new("/etc/serf"), flags)
    }

    #[test]
    fn every_config_error_names_its_key() {
        let cases = [
            (
                "log_level = 42\n",
                "log_level: invalid type: integer `42`, expected",
            ),
            (
                "[plugins.upcase]\nevents = 42\n",
                "plugins.upcase.events: invalid type: integer `42`, expected a string (line 2, column 10)",
            ),
            (
                "plugins.upcase.events = true\n",
                "plugins.upcase.events: invalid type: boolean `true`, expected a string",
            ),
            (
                "[plugins.upcase]\ndirs = { \"/data\" = 7 }\n",
                "plugins.upcase.dirs./data: invalid type: integer `7`",
            ),
            (
                "[plugins.upcase]\ncapabilities = [\"members\", 3]\n",
                "plugins.upcase.capabilities[1]: invalid type: integer `3`, expected a string",
            ),
            (
                "[plugin_defaults]\nfuel_per_event = \"lots\"\n",
                "plugin_defaults.fuel_per_event: invalid type: string \"lots\"",
            ),
            (
                "[[handlers]]\ncommand = \"true\"\n[[handlers]]\ncommand = 5\n",
                "handlers[1].command: invalid type: integer `5`, expected a string (line 4",
            ),
            ("[plugins.upcase]\nevnts = \"*\"\n", "plugins.upcase"),
        ];
        for (text, expected) in cases {
            let error = FileConfig::parse(text, Path::new("serf.toml")).unwrap_err();
            let message = error.to_string();
            assert!(
                message.starts_with(&format!("invalid config file serf.toml: {expected}")),
                "{text:?}: {message}"
            );
        }
    }

    #[test]
    fn flags_beat_file_beat_defaults() {
        let flags = AgentFlags {
            node: Some("flag-node".into()),
            tags: vec!["role=db".into()],
            ..AgentFlags::default()
        };
        let config = resolve(
            "node_name = \"file-node\"\nbind = \"127.0.0.5\"\n[tags]\nrole = \"web\"\ndc = \"east\"\n",
            &flags,
        )
        .unwrap();
        assert_eq!(config.node_name, "flag-node");
        assert_eq!(config.bind, "127.0.0.5:7946".parse().unwrap());
        assert_eq!(config.advertise, config.bind);
        assert_eq!(config.rpc_addr, DEFAULT_RPC_ADDR);
        assert_eq!(config.tags["role"], "db");
        assert_eq!(config.tags["dc"], "east");
        assert_eq!(config.log_level, LogLevel::Info);
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let error = resolve(
            "node_name = \"a\"\n\nbogus_key = 1\n",
            &AgentFlags::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("bogus_key"), "{error}");
        assert!(error.contains("line 3"), "{error}");
    }

    #[test]
    fn wrong_type_is_named_with_its_line() {
        let error = resolve(
            "[plugins.up]\npath = \"up.wasm\"\nfuel_per_event = \"lots\"\n",
            &AgentFlags::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("fuel_per_event"), "{error}");
        assert!(error.contains("line 3"), "{error}");
    }

    #[test]
    fn bad_values_are_refused() {
        let flags = AgentFlags::default();
        for (text, needle) in [
            ("bind = \"nowhere\"", "bind"),
            ("rpc_addr = \"127.0.0.1\"", "rpc_addr"),
            ("log_level = \"loud\"", "log level"),
            ("user_event_size_limit = 10000", "9216"),
            ("[plugin_defaults]\nqueue_capacity = 0", "queue_capacity"),
            (
                "job_workers = 100000",
                "job_workers \"100000\": must be at most 64",
            ),
            (
                "[plugin_defaults]\nqueue_capacity = 100000000",
                "queue_capacity \"100000000\": must be at most 1048576",
            ),
            (
                "[plugin_defaults]\nmax_jobs = 1000",
                "max_jobs \"1000\": must be at most 256",
            ),
            ("[plugin_defaults]\nmax_memory_mib = 5000", "max_memory_mib"),
            ("[plugin_defaults]\nevent_timeout = \"2h\"", "event_timeout"),
            (
                "[plugin_defaults]\nmax_consecutive_traps = 0",
                "max_consecutive_traps",
            ),
            ("plugin_max_size_mib = 0", "plugin_max_size_mib"),
            ("plugin_compile_timeout = \"1h\"", "plugin_compile_timeout"),
            ("plugin_compile_memory_mib = 1", "plugin_compile_memory_mib"),
            (
                "[plugin_defaults]\nevent_timeout = \"soon\"",
                "event_timeout",
            ),
            (
                "[plugins.x]\npath = \"x.wasm\"\nevents = \"user:a,bogus\"",
                "bogus",
            ),
            ("[plugins.x]\nevents = \"*\"", "no path given"),
        ] {
            let error = resolve(text, &flags).unwrap_err().to_string();
            assert!(error.contains(needle), "{text:?} gave {error}");
        }
        let flags = AgentFlags {
            tags: vec!["novalue".into()],
            ..AgentFlags::default()
        };
        assert!(
            resolve("", &flags)
                .unwrap_err()
                .to_string()
                .contains("key=value")
        );
    }

    #[test]
    fn plugin_tables_merge_with_the_plugin_directory() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a.wasm", "b.wasm", "notes.txt", "off.wasm"] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let flags = AgentFlags {
            plugins: Some(dir.path().to_path_buf()),
            ..AgentFlags::default()
        };
        let config = resolve(
            "[plugin_defaults]\nfuel_per_event = 5\n\
             [plugins.a]\nevents = \"query:upcase\"\nevent_timeout = \"250ms\"\n\
             dirs = { \"/data\" = \"data\" }\nconfig = { file = \"/data/x\" }\n\
             [plugins.extra]\npath = \"more/extra.wasm\"\n\
             [plugins.off]\nenabled = false\n",
            &flags,
        )
        .unwrap();
        let names: Vec<_> = config.plugins.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "extra"]);
        let a = &config.plugins[0];
        assert_eq!(a.path, dir.path().join("a.wasm"));
        assert_eq!(a.limits.fuel_per_event, 5);
        assert_eq!(a.limits.event_timeout, Duration::from_millis(250));
        assert_eq!(a.dirs["/data"], Path::new("/etc/serf/data"));
        assert_eq!(a.config["file"].as_str(), Some("/data/x"));
        assert_eq!(config.plugins[1].limits.fuel_per_event, 5);
        // `b` has no table: member and user events, no queries, and a warning at load.
        assert_eq!(config.plugins[1].filter, EventFilter::unconfigured());
        assert_eq!(
            config.plugins[1].filter.to_string(),
            "member-join,member-leave,member-failed,member-update,member-reap,user"
        );
        assert_eq!(config.plugins_without_table, ["b"]);
        assert_eq!(
            config.plugins[2].path,
            Path::new("/etc/serf/more/extra.wasm")
        );
    }

    #[test]
    fn example_serf_toml_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../serf.toml");
        let file = FileConfig::load(&path).unwrap();
        let base = path.parent().unwrap();
        // The built plugins are copied into plugins/ by examples/quickstart.sh; stand in for them.
        let dir = tempfile::tempdir().unwrap();
        for name in ["upcase", "memresponse", "hello", "longjob", "lbsync"] {
            std::fs::write(dir.path().join(format!("{name}.wasm")), b"").unwrap();
        }
        let flags = AgentFlags {
            plugins: Some(dir.path().to_path_buf()),
            ..AgentFlags::default()
        };
        let config = Config::resolve(file, base, &flags).unwrap();
        let names: Vec<_> = config.plugins.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            ["hello", "lbsync", "longjob", "memresponse", "upcase"]
        );
        let memresponse = &config.plugins[3];
        assert_eq!(memresponse.filter.to_string(), "user:memresponse");
        assert_eq!(memresponse.dirs["/data"], base.join("data"));
        assert_eq!(config.rpc_addr, DEFAULT_RPC_ADDR);
    }

    #[test]
    fn shell_handlers_come_from_specs_tables_and_flags_in_order() {
        let flags = AgentFlags {
            event_handlers: vec!["query:upcase=tr a-z A-Z".into()],
            ..AgentFlags::default()
        };
        let config = resolve(
            "event_handlers = [\"./all.sh\", \"member-join,member-leave=./members.sh\"]\n\
             [[handlers]]\ncommand = \"./deploy.sh\"\nevents = \"user:deploy\"\n\
             event_timeout = \"30s\"\nqueue_capacity = 8\n",
            &flags,
        )
        .unwrap();
        let handlers: Vec<_> = config
            .handlers
            .iter()
            .map(|h| {
                (
                    h.events(),
                    h.script.as_str(),
                    h.timeout,
                    h.queue_capacity.get(),
                )
            })
            .collect();
        assert_eq!(
            handlers,
            [
                ("*".into(), "./all.sh", None, 1024),
                (
                    "member-join,member-leave".into(),
                    "./members.sh",
                    None,
                    1024
                ),
                (
                    "user:deploy".into(),
                    "./deploy.sh",
                    Some(Duration::from_secs(30)),
                    8
                ),
                ("query:upcase".into(), "tr a-z A-Z", None, 1024),
            ]
        );
        for (text, needle) in [
            (
                "event_handlers = [\"bogus=x.sh\"]",
                "invalid event filter \"bogus\"",
            ),
            (
                "[[handlers]]\ncommand = \"x\"\nevents = \"user, query\"",
                "\" query\"",
            ),
            ("[[handlers]]\ncommand = \" \"", "must not be empty"),
            (
                "[[handlers]]\ncommand = \"x\"\nevent_timeout = \"0s\"",
                "greater than zero",
            ),
            (
                "[[handlers]]\ncommand = \"x\"\nqueue_capacity = 0",
                "greater than zero",
            ),
            ("[[handlers]]\nevents = \"*\"", "missing field `command`"),
        ] {
            let error = resolve(text, &AgentFlags::default())
                .unwrap_err()
                .to_string();
            assert!(error.contains(needle), "{text}: {error}");
        }
    }

    /// 32 bytes, 0x00..0x1f, as in the reference's encryption vectors.
    const KEY_32: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn gossip_settings_default_to_serfs() {
        let config = resolve("", &AgentFlags::default()).unwrap();
        assert!(config.start_join.is_empty());
        assert!(config.retry_join.is_empty());
        assert_eq!(config.retry_interval, Duration::from_secs(30));
        assert_eq!(config.retry_max_attempts, 0);
        assert!(!config.replay_on_join);
        assert!(config.keyring.is_none());
        assert_eq!(config.profile, Profile::Lan);
        assert_eq!(config.protocol, 5);
        assert!(config.enable_compression);
        assert!(!config.leave_on_terminate);
        assert!(!config.skip_leave_on_interrupt);
    }

    #[test]
    fn join_lists_concatenate_file_then_flags() {
        let flags = AgentFlags {
            join: vec!["10.0.0.3".into()],
            retry_join: vec!["10.0.0.4:7000".into(), "seed.example".into()],
            ..AgentFlags::default()
        };
        let config = resolve(
            "start_join = [\"10.0.0.1\", \"10.0.0.2\"]\nretry_join = [\"10.0.0.9\"]\n",
            &flags,
        )
        .unwrap();
        assert_eq!(config.start_join, ["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
        assert_eq!(
            config.retry_join,
            ["10.0.0.9", "10.0.0.4:7000", "seed.example"]
        );
    }

    #[test]
    fn retry_settings_come_from_flags_then_file() {
        let file = "retry_interval = \"1m30s\"\nretry_max_attempts = 4\n";
        let config = resolve(file, &AgentFlags::default()).unwrap();
        assert_eq!(config.retry_interval, Duration::from_secs(90));
        assert_eq!(config.retry_max_attempts, 4);
        let flags = AgentFlags {
            retry_interval: Some(Duration::from_secs(5)),
            retry_max: Some(0),
            ..AgentFlags::default()
        };
        let config = resolve(file, &flags).unwrap();
        assert_eq!(config.retry_interval, Duration::from_secs(5));
        assert_eq!(config.retry_max_attempts, 0);
    }

    #[test]
    fn a_retry_interval_below_one_second_is_raised_to_it() {
        let config = resolve("retry_interval = \"10ms\"", &AgentFlags::default()).unwrap();
        assert_eq!(config.retry_interval, MIN_RETRY_INTERVAL);
    }

    #[test]
    fn booleans_can_only_be_turned_on_by_either_side() {
        let on = AgentFlags {
            replay: true,
            ..AgentFlags::default()
        };
        assert!(resolve("", &on).unwrap().replay_on_join);
        assert!(
            resolve("replay_on_join = true", &AgentFlags::default())
                .unwrap()
                .replay_on_join
        );
        assert!(
            resolve("replay_on_join = true", &on)
                .unwrap()
                .replay_on_join
        );
        let config = resolve(
            "leave_on_terminate = true\nskip_leave_on_interrupt = true",
            &AgentFlags::default(),
        )
        .unwrap();
        assert!(config.leave_on_terminate);
        assert!(config.skip_leave_on_interrupt);
    }

    #[test]
    fn compression_is_turned_off_by_the_flag_or_the_file() {
        let off = AgentFlags {
            disable_compression: true,
            ..AgentFlags::default()
        };
        assert!(!resolve("", &off).unwrap().enable_compression);
        assert!(
            !resolve("enable_compression = true", &off)
                .unwrap()
                .enable_compression
        );
        assert!(
            !resolve("enable_compression = false", &AgentFlags::default())
                .unwrap()
                .enable_compression
        );
    }

    #[test]
    fn profiles_are_named_like_serfs() {
        for (name, profile) in [
            ("lan", Profile::Lan),
            ("wan", Profile::Wan),
            ("local", Profile::Local),
        ] {
            let config = resolve(&format!("profile = \"{name}\""), &AgentFlags::default());
            assert_eq!(config.unwrap().profile, profile);
            assert_eq!(profile.as_str(), name);
        }
        let flags = AgentFlags {
            profile: Some("wan".into()),
            ..AgentFlags::default()
        };
        assert_eq!(
            resolve("profile = \"local\"", &flags).unwrap().profile,
            Profile::Wan
        );
        let flags = AgentFlags {
            profile: Some("LAN".into()),
            ..AgentFlags::default()
        };
        let error = resolve("", &flags).unwrap_err().to_string();
        assert_eq!(error, "invalid profile \"LAN\": expected lan, wan or local");
    }

    #[test]
    fn protocol_must_be_one_serf_speaks() {
        let with = |version: i64| AgentFlags {
            protocol: Some(version),
            ..AgentFlags::default()
        };
        for version in 2..=5 {
            assert_eq!(
                resolve("", &with(version)).unwrap().protocol,
                u8::try_from(version).unwrap()
            );
        }
        // Serf ignores zero and negative values (its flag default is -1).
        assert_eq!(resolve("", &with(0)).unwrap().protocol, 5);
        assert_eq!(resolve("", &with(-1)).unwrap().protocol, 5);
        assert_eq!(
            resolve("protocol = 3", &AgentFlags::default())
                .unwrap()
                .protocol,
            3
        );
        for bad in [1, 6, 300] {
            let error = resolve("", &with(bad)).unwrap_err().to_string();
            assert!(error.contains("from 2 to 5"), "{bad}: {error}");
        }
    }

    #[test]
    fn bad_encryption_keys_are_refused_without_echoing_them() {
        for (key, needle) in [
            ("not base64!", "not base64"),
            ("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8", "not base64"),
            ("AAECAwQFBgcICQoLDA0O", "got 15 bytes"),
            (
                "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gIQ==",
                "got 34 bytes",
            ),
        ] {
            let flags = AgentFlags {
                encrypt: Some(key.into()),
                ..AgentFlags::default()
            };
            let error = resolve("", &flags).unwrap_err().to_string();
            assert!(error.starts_with("invalid encryption key: "), "{error}");
            assert!(error.contains(needle), "{key}: {error}");
            assert!(!error.contains(key), "the key leaked: {error}");
        }
        let error = resolve("encrypt_key = \"AAAA\"", &AgentFlags::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("got 3 bytes"), "{error}");
    }

    #[test]
    fn key_lengths_of_16_24_and_32_bytes_decode() {
        use base64::Engine as _;
        for len in [16usize, 24, 32] {
            let key: Vec<u8> = (0..len as u8).collect();
            let text = base64::engine::general_purpose::STANDARD.encode(&key);
            assert_eq!(decode_key(&text), Ok(key));
        }
        assert_eq!(decode_key(KEY_32).unwrap().len(), 32);
    }

    #[test]
    fn an_encryption_key_and_a_keyring_file_together_are_refused() {
        let flags = AgentFlags {
            encrypt: Some(KEY_32.into()),
            ..AgentFlags::default()
        };
        let error = resolve("keyring_file = \"keys.json\"", &flags)
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "encryption key not allowed while using a keyring (/etc/serf/keys.json)"
        );
    }

    #[test]
    fn a_missing_keyring_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        let flags = AgentFlags {
            keyring_file: Some(path.clone()),
            ..AgentFlags::default()
        };
        let error = resolve("", &flags).unwrap_err().to_string();
        assert!(
            error.starts_with(&format!("cannot load keyring file {}: ", path.display())),
            "{error}"
        );
    }

    #[test]
    fn a_keyring_file_is_read_relative_to_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let second = "AAAAAAAAAAAAAAAAAAAAAA==";
        std::fs::write(
            dir.path().join("keyring.json"),
            format!("[\n  \"{KEY_32}\",\n  \"{second}\"\n]\n"),
        )
        .unwrap();
        let file = FileConfig::parse("keyring_file = \"keyring.json\"", Path::new("x")).unwrap();
        let config = Config::resolve(file, dir.path(), &AgentFlags::default()).unwrap();
        let keyring = config.keyring.expect("a keyring");
        assert_eq!(keyring.primary(), decode_key(KEY_32).unwrap());
        assert_eq!(keyring.keys().len(), 2);
        assert_eq!(config.keyring_file, Some(dir.path().join("keyring.json")));
    }

    #[test]
    fn a_malformed_keyring_file_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        for (text, needle) in [
            ("[]", "no keys"),
            ("{\"a\": 1}", "invalid keyring file"),
            ("[\"AAAA\"]", "key size"),
            ("[\"!!\"]", "base64"),
        ] {
            let path = dir.path().join("keyring.json");
            std::fs::write(&path, text).unwrap();
            let flags = AgentFlags {
                keyring_file: Some(path),
                ..AgentFlags::default()
            };
            let error = resolve("", &flags).unwrap_err().to_string();
            assert!(error.starts_with("cannot load keyring file "), "{error}");
            assert!(error.contains(needle), "{text}: {error}");
        }
    }

    #[test]
    fn an_encryption_key_makes_a_one_key_keyring() {
        let flags = AgentFlags {
            encrypt: Some(KEY_32.into()),
            ..AgentFlags::default()
        };
        let config = resolve("", &flags).unwrap();
        let keyring = config.keyring.expect("a keyring");
        assert_eq!(keyring.keys(), [decode_key(KEY_32).unwrap()]);
        assert_eq!(config.keyring_file, None);
    }

    #[test]
    fn snapshot_and_rejoin_come_from_flags_or_the_file_relative_to_it() {
        let config = resolve("", &AgentFlags::default()).unwrap();
        assert_eq!(config.snapshot_path, None);
        assert!(!config.rejoin_after_leave);
        let file = FileConfig::parse(
            "snapshot_path = \"serf.snapshot\"\nrejoin_after_leave = true",
            Path::new("x"),
        )
        .unwrap();
        let config = Config::resolve(file, Path::new("/etc/serf"), &AgentFlags::default()).unwrap();
        assert_eq!(
            config.snapshot_path,
            Some(PathBuf::from("/etc/serf/serf.snapshot"))
        );
        assert!(config.rejoin_after_leave);
        let flags = AgentFlags {
            snapshot: Some("here.snap".into()),
            rejoin: true,
            ..AgentFlags::default()
        };
        let config = resolve("snapshot_path = \"there.snap\"", &flags).unwrap();
        assert_eq!(config.snapshot_path, Some(PathBuf::from("here.snap")));
        assert!(config.rejoin_after_leave);
    }

    #[test]
    fn tags_come_from_the_tags_file_and_may_not_be_configured_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tags.json");
        let flags = AgentFlags {
            tags_file: Some(path.clone()),
            ..AgentFlags::default()
        };
        let missing = resolve("", &flags).unwrap();
        assert!(missing.tags.is_empty(), "a missing file means no tags yet");
        assert_eq!(missing.tags_file, Some(path.clone()));
        std::fs::write(&path, "{\n  \"dc\": \"east\",\n  \"role\": \"web\"\n}").unwrap();
        let config = resolve("", &flags).unwrap();
        assert_eq!(config.tags["role"], "web");
        assert_eq!(config.tags["dc"], "east");
        let error = resolve("[tags]\nrole = \"db\"", &flags).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "tags config not allowed while using tag files ({})",
                path.display()
            )
        );
        let tagged = AgentFlags {
            tags: vec!["role=db".into()],
            ..flags.clone()
        };
        assert!(matches!(
            resolve("", &tagged),
            Err(ConfigError::TagsWithTagsFile(_))
        ));
        for bad in ["[\"a\"]", "{\"a\": 1}", "{"] {
            std::fs::write(&path, bad).unwrap();
            let error = resolve("", &flags).unwrap_err().to_string();
            assert!(
                error.starts_with("cannot load tags file "),
                "{bad}: {error}"
            );
        }
        let file = FileConfig::parse("tags_file = \"tags.json\"", Path::new("x")).unwrap();
        std::fs::write(&path, "null").unwrap();
        let config = Config::resolve(file, dir.path(), &AgentFlags::default()).unwrap();
        assert_eq!(config.tags_file, Some(path));
        assert!(config.tags.is_empty());
    }

    // --- Capabilities (ABI v1.1).

    #[test]
    fn plugins_are_granted_nothing_unless_their_table_says_so() {
        use serf_plugin_sdk::abi::Capability;
        let config = resolve(
            "[plugins.a]\npath = \"a.wasm\"\n\
             [plugins.b]\npath = \"b.wasm\"\ncapabilities = [\"members\", \"queries\"]\n\
             env = { REGION = \"eu\" }\n",
            &AgentFlags::default(),
        )
        .unwrap();
        let (a, b) = (&config.plugins[0].grants, &config.plugins[1].grants);
        assert!(a.capabilities.is_empty() && a.env.is_empty());
        assert!(b.capabilities.contains(Capability::Members));
        assert!(b.capabilities.contains(Capability::Queries));
        assert!(!b.capabilities.contains(Capability::Events));
        assert_eq!(b.env["REGION"], "eu");
    }

    #[test]
    fn unknown_capabilities_and_bad_env_names_are_config_errors() {
        let error = resolve(
            "[plugins.a]\npath = \"a.wasm\"\ncapabilities = [\"teleport\"]\n",
            &AgentFlags::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("teleport") && error.contains("unknown capability"),
            "{error}"
        );
        let error = resolve(
            "[plugins.a]\npath = \"a.wasm\"\nenv = { \"A=B\" = \"x\" }\n",
            &AgentFlags::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("invalid env"), "{error}");
    }
}
