//! The WebAssembly plugin runtime: loading, sandboxing and feeding plugins their events.
//!
//! [`engine`] compiles (or loads from the on-disk cache) and validates modules against the ABI
//! in `plugin_sdk::abi`; [`instance`] runs one instance under its limits; [`dispatch`] gives
//! every plugin one bounded, ordered queue and one task on the plugin runtime. The agent only
//! ever calls [`dispatch::PluginHost::dispatch`], which never waits: no plugin runs on the
//! agent's own task, and a plugin that traps, spins or bloats costs a log line and a counter.
#![deny(unsafe_code)]

pub mod commands;
pub mod dispatch;
pub mod effects;
#[cfg(test)]
mod effects_tests;
pub mod engine;

pub mod grants;
pub mod http;
pub mod instance;
pub mod jobs;
pub mod metrics;
pub mod rates;
#[cfg(test)]
mod sandbox_tests;
pub mod state;
mod stdio;
pub mod timers;
pub mod tool;

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use dispatch::{DeliverError, PluginHost, PluginStatsSnapshot};
pub use engine::Engine;
pub use grants::{Capabilities, Grants};
pub use serf_core::filter::{EventFilter, FilterError};

use serf_core::QueryKey;
use serf_plugin_sdk::abi::{self, Status};

/// The budgets one plugin runs under, per event unless named otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Fuel for one event: 1 G is 0.1–0.5 s of CPU, by instruction mix (docs/plugin-abi.md §7).
    pub fuel_per_event: u64,
    /// Fuel for instantiating and initialising (Go's runtime start needs about 1 M).
    pub fuel_init: u64,
    /// Cap on the instance's linear memory, in bytes.
    pub max_memory_bytes: usize,
    /// Wall-clock deadline for one event, which also stops guests blocked in WASI calls.
    pub event_timeout: Duration,
    /// Events queued for the plugin before new ones are dropped (and counted).
    pub queue_capacity: NonZeroUsize,
    // Jobs (ABI v1.1): the budget of each long job, which runs in an instance of its own.
    /// Fuel for one job's `serf_job` call: 10^12 is 100-500 s of CPU.
    pub job_fuel: u64,
    /// Wall-clock deadline for one job, sleeps included.
    pub job_timeout: Duration,
    /// Cap on a job instance's linear memory, in bytes.
    pub job_max_memory_bytes: usize,
    /// Jobs of the plugin that may not have ended at once; 0 forbids jobs.
    pub max_jobs: usize,
    /// Failed calls in a row (each within a minute of the last) after which the plugin is
    /// parked: state `failed` until a reload (see [`rates`]).
    pub max_consecutive_traps: u32,
}

impl Limits {
    /// Defaults fit for event handlers: short, small, and never holding up the queue for long.
    pub const DEFAULT: Limits = Limits {
        fuel_per_event: 1_000_000_000,
        fuel_init: 100_000_000,
        max_memory_bytes: 64 << 20,
        event_timeout: Duration::from_secs(2),
        queue_capacity: NonZeroUsize::new(1024).expect("1024 is not zero"),
        // Jobs: minutes of work (a deploy, a backup), mostly waiting.
        job_fuel: 1_000_000_000_000,
        job_timeout: Duration::from_secs(15 * 60),
        job_max_memory_bytes: 128 << 20,
        max_jobs: 4,
        max_consecutive_traps: rates::DEFAULT_MAX_CONSECUTIVE_TRAPS,
    };
}

/// A plugin to load, as configured.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    /// Its name: the `[plugins.NAME]` table, or the file stem in the plugin directory.
    pub name: String,
    /// The `.wasm` file.
    pub path: PathBuf,
    /// Which events it receives.
    pub filter: EventFilter,
    /// Its budgets.
    pub limits: Limits,
    /// Guest path → host directory, granted read-write through WASI preopens.
    pub dirs: BTreeMap<String, PathBuf>,
    /// Its `config` table, handed to `serf_init`.
    pub config: toml::Table,
    /// Its capabilities and environment variables; nothing by default.
    pub grants: Grants,
}

/// What a plugin can ask of the agent while it runs. Every method returns at once.
pub trait HostServices: Send + Sync + 'static {
    /// Sends the plugin's answer to a query this node received.
    fn respond(&self, plugin: &str, query: QueryKey, payload: Vec<u8>) -> Result<(), Status>;

    /// The agent's job pool (ABI v1.1); without one, a plugin's `job_*` calls are refused.
    fn jobs(&self) -> Option<&jobs::Jobs> {
        None
    }

    // --- Capabilities (ABI v1.1). The host function checked the plugin's grant already. The
    // defaults refuse, for services that offer none.

    /// The member list as the `members` import writes it (an encoded `abi::MemberList`), from
    /// a snapshot the agent refreshes; `None` while there is none yet.
    fn members(&self) -> Option<Arc<[u8]>> {
        None
    }

    /// Fires a user event for `plugin`.
    fn fire_event(&self, plugin: &str, event: abi::FireEvent) -> Result<(), Status> {
        let _ = (plugin, event);
        Err(Status::Unavailable)
    }

    /// Sends a query for `plugin`; returns the handle its `query-response` and `query-done`
    /// events will carry.
    fn query(&self, plugin: &str, request: abi::QueryRequest) -> Result<u32, Status> {
        let _ = (plugin, request);
        Err(Status::Unavailable)
    }

    /// Effects (ABI v1.2): the agent's HTTP, state, timer and metric services; without them
    /// every effect call returns `Unavailable`.
    fn effects(&self) -> Option<&Arc<effects::EffectHost>> {
        None
    }
}

/// Why a plugin could not be loaded. The agent runs on without it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The path names a FIFO, device, socket or directory: it was not opened.
    #[error("cannot read {path}: it is {kind}, not a regular file")]
    NotRegular { path: PathBuf, kind: &'static str },
    /// The file is larger than the limit (`plugin_max_size_mib`): it was not read, or not
    /// to its end.
    #[error(
        "cannot read {path}: {size} bytes exceed the limit of {max} bytes (plugin_max_size_mib)"
    )]
    TooLarge { path: PathBuf, size: u64, max: u64 },
    /// The bytes are not a WebAssembly module.
    #[error("{path} is not a WebAssembly module")]
    NotWasm { path: PathBuf },
    /// wasmtime refused the module.
    #[error("cannot compile {path}: {message}")]
    Compile { path: PathBuf, message: String },
    /// The module does not follow the plugin ABI.
    #[error("{path} is not a serf plugin: {reason}")]
    Abi { path: PathBuf, reason: String },
    /// A granted directory cannot be opened.
    #[error("cannot grant directory {host} as {guest}: {message}")]
    Dir {
        guest: String,
        host: PathBuf,
        message: String,
    },
}
