//! Agent configuration: `serf.toml` as written ([`FileConfig`]), the `serf agent` flags
//! ([`AgentFlags`]), and the validated [`Config`] the agent runs with.
//!
//! Flags beat the file, the file beats defaults. Relative paths in the file are relative to
//! the directory that holds it; relative paths in flags are relative to the working directory.
//! This module reads the config file and lists the plugin directory, nothing else.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::plugin::{EventFilter, FilterError, Limits, PluginSpec};

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
    /// Agent state directory.
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
    /// Plugins by name.
    #[serde(default)]
    pub plugins: BTreeMap<String, FilePlugin>,
}

/// Per-plugin limits as written in `serf.toml`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    /// Fuel for one event (about 10^10 per CPU-second).
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
        }
    }
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
}

/// Serf's size limits (reference 3.16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SerfLimits {
    /// Maximum `len(name) + len(payload)` of a user event, in bytes.
    pub user_event_size_limit: usize,
    /// Maximum encoded query, in bytes.
    pub query_size_limit: usize,
    /// Maximum encoded query response, in bytes.
    pub query_response_size_limit: usize,
}

impl SerfLimits {
    /// Serf 0.9.4's agent defaults.
    pub const SERF: SerfLimits = SerfLimits {
        user_event_size_limit: 512,
        query_size_limit: 1024,
        query_response_size_limit: 1024,
    };
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
}

impl FileConfig {
    /// Parses `serf.toml` text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|error| ConfigError::Parse {
            path: path.to_path_buf(),
            message: error.to_string().trim_end().to_owned(),
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

impl Config {
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
            None if bind.ip().is_unspecified() => {
                // Serf picks a private interface address here; without gossip peers yet,
                // loopback is the address every local client can reach.
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), bind.port())
            }
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
            .or_else(|| file.data_dir.map(|dir| base.join(dir)))
            .or_else(default_data_dir);
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
        if serf_limits.user_event_size_limit > crate::serf::USER_EVENT_SIZE_HARD_LIMIT {
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
            .map_err(|(key, value)| invalid(key, &value, "must be greater than zero"))?;
        let plugins = resolve_plugins(file.plugins, base, plugin_dir.as_deref(), defaults)?;
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
        })
    }
}

/// `$XDG_STATE_HOME/serf`, else `$HOME/.local/state/serf`; none without a home.
fn default_data_dir() -> Option<PathBuf> {
    if let Some(state) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(state).join("serf"));
    }
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(|home| PathBuf::from(home).join(".local/state/serf"))
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

/// Applies written limits over `base`; an error names the key and value that is zero.
fn apply_limits(base: Limits, file: Option<&FileLimits>) -> Result<Limits, (&'static str, String)> {
    let Some(file) = file else { return Ok(base) };
    let mut limits = base;
    if let Some(fuel) = file.fuel_per_event {
        limits.fuel_per_event = nonzero_u64("fuel_per_event", fuel)?;
    }
    if let Some(fuel) = file.fuel_init {
        limits.fuel_init = nonzero_u64("fuel_init", fuel)?;
    }
    if let Some(mib) = file.max_memory_mib {
        if mib == 0 {
            return Err(("max_memory_mib", "0".into()));
        }
        limits.max_memory_bytes = mib.saturating_mul(1 << 20);
    }
    if let Some(timeout) = file.event_timeout {
        if timeout.is_zero() {
            return Err(("event_timeout", "0s".into()));
        }
        limits.event_timeout = timeout;
    }
    if let Some(capacity) = file.queue_capacity {
        limits.queue_capacity =
            NonZeroUsize::new(capacity).ok_or(("queue_capacity", "0".to_owned()))?;
    }
    Ok(limits)
}

fn nonzero_u64(key: &'static str, value: u64) -> Result<u64, (&'static str, String)> {
    if value == 0 {
        Err((key, "0".into()))
    } else {
        Ok(value)
    }
}

/// Merges `[plugins.*]` tables with the `*.wasm` files of the plugin directory.
fn resolve_plugins(
    tables: BTreeMap<String, FilePlugin>,
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
    for (name, table) in &tables {
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
        let limits = apply_limits(defaults, Some(&table.limits())).map_err(|(key, value)| {
            invalid(
                key,
                &value,
                &format!("plugin {name}: must be greater than zero"),
            )
        })?;
        let dirs = table
            .dirs
            .iter()
            .map(|(guest, host)| (guest.clone(), base.join(host)))
            .collect();
        specs.push(PluginSpec {
            name: name.clone(),
            path,
            filter,
            limits,
            dirs,
            config: table.config.clone(),
        });
    }
    for (name, path) in found {
        if !tables.contains_key(&name) {
            specs.push(PluginSpec {
                name,
                path,
                filter: EventFilter::all(),
                limits: defaults,
                dirs: BTreeMap::new(),
                config: toml::Table::new(),
            });
        }
    }
    specs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(text: &str, flags: &AgentFlags) -> Result<Config, ConfigError> {
        let file = FileConfig::parse(text, Path::new("serf.toml"))?;
        Config::resolve(file, Path::new("/etc/serf"), flags)
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
        for name in ["upcase", "memresponse", "hello"] {
            std::fs::write(dir.path().join(format!("{name}.wasm")), b"").unwrap();
        }
        let flags = AgentFlags {
            plugins: Some(dir.path().to_path_buf()),
            ..AgentFlags::default()
        };
        let config = Config::resolve(file, base, &flags).unwrap();
        let names: Vec<_> = config.plugins.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["hello", "memresponse", "upcase"]);
        let memresponse = &config.plugins[1];
        assert_eq!(memresponse.filter.to_string(), "user:memresponse");
        assert_eq!(memresponse.dirs["/data"], base.join("data"));
        assert_eq!(config.rpc_addr, DEFAULT_RPC_ADDR);
    }
}
