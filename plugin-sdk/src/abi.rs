//! The plugin ABI, version 1: the one definition of what crosses the host/guest boundary.
//!
//! The host (`serf agent`) and every SDK agree on these names, numbers and msgpack payloads;
//! `docs/plugin-abi.md` is the prose version and `testdata/` holds golden payloads that the
//! Rust and Go SDK tests both decode. Payloads are msgpack maps keyed by the field names below
//! (`rmp_serde::to_vec_named`); decoders ignore unknown keys, so fields may be added within v1.
//!
//! Nothing here touches wasm: the host depends on this module to encode what it sends.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The ABI version carried in [`Envelope::v`] and [`InitContext::abi`].
pub const ABI_VERSION: u32 = 1;

/// Export whose presence marks a module as a v1 plugin. It is never called.
pub const EXPORT_MARKER: &str = "serf_plugin_abi_v1";
/// `(size: i32) -> i32`: a pointer to at least `size` writable bytes, valid until the next
/// call into any `serf_*` export; 0 if the guest cannot allocate.
pub const EXPORT_INPUT_BUFFER: &str = "serf_input_buffer";
/// `(ptr: i32, len: i32) -> i32`: called once per instance with an [`InitContext`];
/// 0 accepts, anything else refuses (the reason goes through [`IMPORT_SET_ERROR`]).
pub const EXPORT_INIT: &str = "serf_init";
/// `(ptr: i32, len: i32) -> i32`: one [`Envelope`]; 0 handled, anything else is an error
/// (logged and counted, the instance is kept).
pub const EXPORT_HANDLE: &str = "serf_handle";
/// `() -> ()`, optional: best effort, before the instance is dropped at shutdown.
pub const EXPORT_SHUTDOWN: &str = "serf_shutdown";
/// `() -> ()`, optional: the WASI reactor initialiser (Go, TinyGo, C); called once first.
pub const EXPORT_INITIALIZE: &str = "_initialize";

/// The import module of every host call.
pub const IMPORT_MODULE: &str = "serf";
/// `(level: i32, ptr: i32, len: i32) -> i32`: log a UTF-8 line at a [`LogLevel`].
pub const IMPORT_LOG: &str = "log";
/// `(ptr: i32, len: i32) -> i32`: the error text for the export call in progress.
pub const IMPORT_SET_ERROR: &str = "set_error";
/// `(ptr: i32, len: i32) -> i32`: the response to the query being handled; at most once.
pub const IMPORT_RESPOND: &str = "respond";

// --- Capability imports (ABI v1.1). Each needs a grant in the plugin's `serf.toml` table
// (`capabilities = [...]`); without it the call returns [`Status::Denied`].

/// `(out_ptr: i32, out_cap: i32) -> i32`: writes the [`MemberList`] at `out_ptr` if it fits
/// in `out_cap` bytes, and returns its length either way: a length over `out_cap` means
/// nothing was written and the guest should call again with a buffer that large. Needs
/// [`Capability::Members`].
pub const IMPORT_MEMBERS: &str = "members";
/// `(ptr: i32, len: i32) -> i32`: fires the user event described by a [`FireEvent`].
/// Needs [`Capability::Events`].
pub const IMPORT_FIRE_EVENT: &str = "fire_event";
/// `(ptr: i32, len: i32) -> i32`: sends the query described by a [`QueryRequest`]; returns a
/// handle `>= 1` that the [`Event::QueryResponse`] and [`Event::QueryDone`] events of this
/// query carry. Needs [`Capability::Queries`].
pub const IMPORT_QUERY: &str = "query";

// --- Jobs (ABI v1.1): long work in a separate instance of the same module, off the plugin's
// event queue. A module that neither imports these nor exports `serf_job` is unaffected.

/// `(ptr: i32, len: i32) -> i32`, optional: runs one [`Job`] in a fresh instance of the module,
/// after `_initialize` and `serf_init`. The return value is the job's exit status; text given
/// to `set_error` during the call becomes the job's error. Required by [`IMPORT_JOB_START`].
pub const EXPORT_JOB: &str = "serf_job";
/// `(ptr: i32, len: i32) -> i32`: starts the job described by a [`JobStart`] and returns its
/// id (`>= 1`) at once; the job's end arrives later as an [`Event::JobDone`]. Not allowed
/// inside a job; [`Status::Unavailable`] when the plugin already has `max_jobs` jobs running.
pub const IMPORT_JOB_START: &str = "job_start";
/// `(id: i32, out_ptr: i32, out_cap: i32) -> i32`: writes the [`JobInfo`] of one of this
/// plugin's jobs at `out_ptr` if it fits in `out_cap` bytes, and returns its length either
/// way (a length over `out_cap` means nothing was written: call again with that much room).
pub const IMPORT_JOB_STATUS: &str = "job_status";
/// `(id: i32) -> i32`: kills one of this plugin's jobs that has not ended;
/// [`Status::NotAllowed`] if it has.
pub const IMPORT_JOB_KILL: &str = "job_kill";
/// `(id: i32) -> i32`: deletes the record of one of this plugin's jobs that has ended;
/// [`Status::NotAllowed`] while it runs.
pub const IMPORT_JOB_REAP: &str = "job_reap";
/// Longest job name, in bytes.
pub const MAX_JOB_NAME_BYTES: usize = 128;
/// Largest job argument, in bytes.
pub const MAX_JOB_ARG_BYTES: usize = 64 * 1024;
/// Log lines of a job that its record keeps (the last ones), each cut at 4096 bytes.
pub const MAX_JOB_OUTPUT_LINES: usize = 64;
/// Bytes of log lines a job's record keeps at most: older lines go first.
pub const MAX_JOB_OUTPUT_BYTES: usize = 16 * 1024;

// --- Commands (ABI v1.1): host commands named in the plugin's `serf.toml` table
// (`[plugins.NAME.commands.CMD]`), each a fixed argv run without a shell. A name that is not
// in the table is [`Status::Denied`]; nothing else grants them.

/// `(ptr: i32, len: i32, out_ptr: i32, out_cap: i32) -> i32`: runs the granted command of a
/// [`CommandRequest`] and waits for it, within the command's `timeout` and the current call's
/// deadline. Writes the [`CommandResult`] at `out_ptr` if it fits in `out_cap` bytes and
/// returns its length either way; a length over `out_cap` means nothing was written, and
/// [`IMPORT_COMMAND_RESULT`] hands over the kept result (the command does not run again).
pub const IMPORT_COMMAND_RUN: &str = "command_run";
/// `(out_ptr: i32, out_cap: i32) -> i32`: writes the [`CommandResult`] that the last
/// [`IMPORT_COMMAND_RUN`] of this instance could not fit, as `members` does;
/// [`Status::NotFound`] when there is none.
pub const IMPORT_COMMAND_RESULT: &str = "command_result";
/// `(ptr: i32, len: i32) -> i32`: starts the granted command of a [`CommandRequest`] as a job
/// and returns its id at once. `job_status`, `job_kill` and `job_reap` work on it, and its end
/// arrives as an [`Event::JobDone`]. It counts against the plugin's `max_jobs`.
pub const IMPORT_COMMAND_START: &str = "command_start";
/// Extra arguments a [`CommandRequest`] may carry (when the command allows any).
pub const MAX_COMMAND_ARGS: usize = 64;
/// Longest extra argument, in bytes.
pub const MAX_COMMAND_ARG_BYTES: usize = 4096;
/// Largest stdin a [`CommandRequest`] may carry, in bytes.
pub const MAX_COMMAND_STDIN_BYTES: usize = 64 * 1024;

/// What a host call returns: 0 or more is success, a negative value one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Status {
    /// The call did what it was asked.
    Ok = 0,
    /// An argument is out of range (a bad log level, text that is not UTF-8).
    BadArgument = -1,
    /// A pointer and length do not lie inside the guest's memory.
    InvalidMemory = -2,
    /// Not allowed here: `respond` outside a query, a second time for the same query, or to a
    /// query another plugin on this node answered already.
    NotAllowed = -3,
    /// The payload is over its limit (a query response over Serf's size limit).
    TooLarge = -4,
    /// Too many calls in too short a time; try later.
    RateLimited = -5,
    /// The thing named does not exist.
    NotFound = -6,
    /// The host cannot take it now (shutting down, a queue is full).
    Unavailable = -7,
    /// The plugin's `serf.toml` table does not grant the [`Capability`] this call needs.
    Denied = -8,
}

impl Status {
    /// The status for a raw return value, or `None` for an unknown negative code.
    pub fn from_code(code: i32) -> Option<Status> {
        Some(match code {
            c if c >= 0 => Status::Ok,
            -1 => Status::BadArgument,
            -2 => Status::InvalidMemory,
            -3 => Status::NotAllowed,
            -4 => Status::TooLarge,
            -5 => Status::RateLimited,
            -6 => Status::NotFound,
            -7 => Status::Unavailable,
            -8 => Status::Denied,
            _ => return None,
        })
    }

    /// The raw code passed across the boundary.
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// Levels accepted by the `log` import.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(i32)]
pub enum LogLevel {
    /// Very fine detail.
    Trace = 0,
    /// Detail for debugging.
    Debug = 1,
    /// Normal operation.
    Info = 2,
    /// Something is off but the plugin goes on.
    Warn = 3,
    /// The plugin could not do its job.
    Error = 4,
}

impl LogLevel {
    /// The level for a raw value, or `None` if it is out of range.
    pub fn from_code(code: i32) -> Option<LogLevel> {
        Some(match code {
            0 => LogLevel::Trace,
            1 => LogLevel::Debug,
            2 => LogLevel::Info,
            3 => LogLevel::Warn,
            4 => LogLevel::Error,
            _ => return None,
        })
    }
}

/// One event handed to `serf_handle`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Always [`ABI_VERSION`].
    pub v: u32,
    /// The position of this event among those offered to this plugin, from 1. Events the host
    /// had to drop leave gaps. The host's own envelopes ([`Event::Dropped`]) carry 0.
    pub seq: u64,
    /// The event.
    pub event: Event,
}

/// The events a plugin can receive, tagged by `kind` with Serf's event names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Event {
    /// Members joined the cluster (or the local agent started).
    #[serde(rename = "member-join")]
    MemberJoin {
        /// The members concerned.
        members: Vec<Member>,
    },
    /// Members left gracefully.
    #[serde(rename = "member-leave")]
    MemberLeave {
        /// The members concerned.
        members: Vec<Member>,
    },
    /// Members were declared failed.
    #[serde(rename = "member-failed")]
    MemberFailed {
        /// The members concerned.
        members: Vec<Member>,
    },
    /// Members changed their tags or address.
    #[serde(rename = "member-update")]
    MemberUpdate {
        /// The members concerned.
        members: Vec<Member>,
    },
    /// Failed or left members were removed for good.
    #[serde(rename = "member-reap")]
    MemberReap {
        /// The members concerned.
        members: Vec<Member>,
    },
    /// A custom user event (`serf event NAME PAYLOAD`).
    #[serde(rename = "user")]
    User(UserEvent),
    /// A query (`serf query NAME PAYLOAD`); answer with the `respond` import.
    #[serde(rename = "query")]
    Query(Query),
    /// The host dropped `count` events for this plugin because its queue was full.
    #[serde(rename = "dropped")]
    Dropped {
        /// How many events were lost since the last envelope.
        count: u64,
    },
    /// An answer to a query this plugin sent with the `query` import (ABI v1.1).
    #[serde(rename = "query-response")]
    QueryResponse(QueryResponse),
    /// A query this plugin sent is over: no more [`Event::QueryResponse`]s follow (ABI v1.1).
    #[serde(rename = "query-done")]
    QueryDone(QueryDone),
    /// A job this plugin started has ended (ABI v1.1, jobs).
    #[serde(rename = "job-done")]
    JobDone(JobDone),
    /// The plugin's periodic tick (ABI v1.2, timers): `tick = "5s"` in its table, or
    /// [`IMPORT_SET_TICK`]. At most one is ever queued: ticks due meanwhile are coalesced.
    #[serde(rename = "tick")]
    Tick(Tick),
}

impl Event {
    /// Serf's name for the event type: `member-join`, `user`, `query`, `dropped`, ...
    pub fn kind(&self) -> &'static str {
        match self {
            Event::MemberJoin { .. } => "member-join",
            Event::MemberLeave { .. } => "member-leave",
            Event::MemberFailed { .. } => "member-failed",
            Event::MemberUpdate { .. } => "member-update",
            Event::MemberReap { .. } => "member-reap",
            Event::User(_) => "user",
            Event::Query(_) => "query",
            Event::Dropped { .. } => "dropped",
            Event::QueryResponse(_) => "query-response",
            Event::QueryDone(_) => "query-done",
            Event::JobDone(_) => "job-done",
            Event::Tick(_) => "tick",
        }
    }
}

/// A cluster member as Serf's handlers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The node name.
    pub name: String,
    /// The gossip IP address, as text (`127.0.0.1`, `::1`).
    pub addr: String,
    /// The gossip port.
    pub port: u16,
    /// The member's tags.
    pub tags: BTreeMap<String, String>,
    /// `alive`, `leaving`, `left`, `failed` or `none`.
    pub status: String,
}

/// A user event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserEvent {
    /// The event name.
    pub name: String,
    /// The opaque payload.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// The event's Lamport time.
    pub ltime: u64,
    /// Whether the sender allowed coalescing.
    pub coalesce: bool,
}

/// A query waiting for an answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    /// Serf's query id (random per query; with `ltime` it identifies the query).
    pub id: u32,
    /// The query name.
    pub name: String,
    /// The opaque payload.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// The query's Lamport time.
    pub ltime: u64,
    /// The node that sent the query.
    pub source_node: String,
    /// When the querier stops listening, in milliseconds since the Unix epoch.
    pub deadline_ms: u64,
}

/// What `serf_init` receives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitContext {
    /// Always [`ABI_VERSION`].
    pub abi: u32,
    /// The host's name and version, `serf/0.1.0`.
    pub host: String,
    /// The local node name.
    pub node: String,
    /// The plugin's name in `serf.toml` (or its file stem).
    pub plugin: String,
    /// The plugin's `config` table from `serf.toml`, as msgpack values.
    pub config: BTreeMap<String, rmpv::Value>,
}

// --- Capabilities (ABI v1.1): what a plugin may ask beyond logging and answering queries.

/// A right a plugin's `serf.toml` table grants by name (`capabilities = ["members"]`). Every
/// capability is denied by default; a call that needs one returns [`Status::Denied`].
/// Directories (`dirs`) and environment variables (`env`) are granted by their own tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Capability {
    /// Read the member list ([`IMPORT_MEMBERS`]).
    Members,
    /// Fire user events ([`IMPORT_FIRE_EVENT`]).
    Events,
    /// Send queries and receive their answers as events ([`IMPORT_QUERY`]).
    Queries,
    /// Start long jobs ([`IMPORT_JOB_START`]); checking, killing and reaping the plugin's own
    /// jobs needs no grant.
    Jobs,
}

impl Capability {
    /// Every capability, in the order they are documented.
    pub const ALL: [Capability; 4] = [
        Capability::Members,
        Capability::Events,
        Capability::Queries,
        Capability::Jobs,
    ];

    /// The name used in `serf.toml`: `members`, `events`, `queries`.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Members => "members",
            Capability::Events => "events",
            Capability::Queries => "queries",
            Capability::Jobs => "jobs",
        }
    }

    /// The capability called `name` in `serf.toml`.
    pub fn from_name(name: &str) -> Option<Capability> {
        Capability::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The capability a `serf` import needs, `None` for imports every plugin may use.
    pub fn of_import(import: &str) -> Option<Capability> {
        match import {
            IMPORT_MEMBERS => Some(Capability::Members),
            IMPORT_FIRE_EVENT => Some(Capability::Events),
            IMPORT_QUERY => Some(Capability::Queries),
            IMPORT_JOB_START => Some(Capability::Jobs),
            _ => None,
        }
    }
}

/// What the `members` import writes: every member this node knows, in name order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberList {
    /// The members, the local node included.
    pub members: Vec<Member>,
}

/// What a plugin passes to the `fire_event` import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FireEvent {
    /// The event name.
    pub name: String,
    /// The opaque payload. Name and payload together must fit the agent's user event size
    /// limit (512 bytes by default).
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// Whether receivers may coalesce it with later events of the same name.
    pub coalesce: bool,
}

/// What a plugin passes to the `query` import.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct QueryRequest {
    /// The query name.
    pub name: String,
    /// The opaque payload.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// Only these nodes answer (empty: every node).
    pub filter_nodes: Vec<String>,
    /// Only nodes whose tag matches each regular expression answer.
    pub filter_tags: BTreeMap<String, String>,
    /// How long to collect answers, in milliseconds; 0 for Serf's default for the cluster size.
    pub timeout_ms: u64,
}

/// One answer to a query the plugin sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryResponse {
    /// The handle the `query` import returned.
    pub query: u32,
    /// The query name.
    pub name: String,
    /// The node that answered.
    pub from: String,
    /// Its answer.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// The end of a query the plugin sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryDone {
    /// The handle the `query` import returned.
    pub query: u32,
    /// The query name.
    pub name: String,
    /// Empty when the query ran to its end; otherwise why the agent could not send it.
    pub error: String,
}

// --- Jobs (ABI v1.1): the payloads of `job_start`, `serf_job`, `job_status` and `job-done`.

/// What a plugin passes to the `job_start` import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStart {
    /// What the job is, for the plugin and for `serf jobs`: 1 to [`MAX_JOB_NAME_BYTES`] bytes
    /// of text without control characters.
    pub name: String,
    /// Opaque input for the job, at most [`MAX_JOB_ARG_BYTES`].
    #[serde(with = "serde_bytes")]
    pub arg: Vec<u8>,
}

impl JobStart {
    /// Checks the request as the host does: [`Status::BadArgument`] for a name that is empty,
    /// longer than [`MAX_JOB_NAME_BYTES`] or has control characters, [`Status::TooLarge`] for
    /// an argument over [`MAX_JOB_ARG_BYTES`].
    pub fn check(&self) -> Result<(), Status> {
        if self.name.is_empty()
            || self.name.len() > MAX_JOB_NAME_BYTES
            || self.name.chars().any(char::is_control)
        {
            return Err(Status::BadArgument);
        }
        if self.arg.len() > MAX_JOB_ARG_BYTES {
            return Err(Status::TooLarge);
        }
        Ok(())
    }
}

/// What `serf_job` receives: the job to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// The id `job_start` returned.
    pub id: u32,
    /// The name given to `job_start`.
    pub name: String,
    /// The argument given to `job_start`.
    #[serde(with = "serde_bytes")]
    pub arg: Vec<u8>,
}

/// Where a job is in its life. A job only moves forward: `starting`, `running`, then one of
/// the three ends. Encoded as its name, a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for a worker, or its instance is starting.
    Starting,
    /// `serf_job` is running.
    Running,
    /// `serf_job` returned; its value is the exit status.
    Finished,
    /// The job could not start, trapped, ran out of fuel, time or memory, or the agent stopped
    /// while it ran; the error says which.
    Failed,
    /// Killed through `job_kill` or `serf jobs -kill`.
    Killed,
}

impl JobState {
    /// The state's name: `starting`, `running`, `finished`, `failed`, `killed`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Starting => "starting",
            JobState::Running => "running",
            JobState::Finished => "finished",
            JobState::Failed => "failed",
            JobState::Killed => "killed",
        }
    }

    /// The state called `name`.
    pub fn from_name(name: &str) -> Option<JobState> {
        [
            JobState::Starting,
            JobState::Running,
            JobState::Finished,
            JobState::Failed,
            JobState::Killed,
        ]
        .into_iter()
        .find(|state| state.as_str() == name)
    }

    /// Whether the job has ended (finished, failed or killed).
    pub fn is_over(self) -> bool {
        matches!(
            self,
            JobState::Finished | JobState::Failed | JobState::Killed
        )
    }
}

// By hand: a derived unit-variant decoder does not take a plain string from every msgpack
// decoder (the guest's rmpv-based one refuses it).
impl<'de> Deserialize<'de> for JobState {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        JobState::from_name(&name).ok_or_else(|| {
            serde::de::Error::unknown_variant(
                &name,
                &["starting", "running", "finished", "failed", "killed"],
            )
        })
    }
}

/// A job as `job_status` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInfo {
    /// The job's id.
    pub id: u32,
    /// Its name.
    pub name: String,
    /// Where it is in its life.
    pub state: JobState,
    /// What `serf_job` returned when the state is `finished`; -1 otherwise.
    pub exit_status: i32,
    /// Why it failed, or the text the job gave `set_error`; empty otherwise.
    pub error: String,
    /// When it was started, in milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// When it ended, in milliseconds since the Unix epoch; 0 while it has not.
    pub ended_ms: u64,
    /// The last lines the job logged (at most [`MAX_JOB_OUTPUT_LINES`] and
    /// [`MAX_JOB_OUTPUT_BYTES`]), oldest first.
    pub output: Vec<String>,
}

/// A job of this plugin has ended: the payload of [`Event::JobDone`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobDone {
    /// The job's id.
    pub id: u32,
    /// Its name.
    pub name: String,
    /// How it ended: `finished`, `failed` or `killed`.
    pub state: JobState,
    /// What `serf_job` returned when the state is `finished`; -1 otherwise.
    pub exit_status: i32,
    /// Why it failed, or the text the job gave `set_error`; empty otherwise.
    pub error: String,
}

// --- Commands (ABI v1.1): the payloads of `command_run`, `command_result` and `command_start`.

/// What a plugin passes to `command_run` and `command_start`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CommandRequest {
    /// The command's name in the plugin's table (`[plugins.NAME.commands.CMD]`).
    pub name: String,
    /// Arguments appended to the table's fixed argv; refused ([`Status::NotAllowed`]) unless
    /// the table sets `allow_args = true`. At most [`MAX_COMMAND_ARGS`], each at most
    /// [`MAX_COMMAND_ARG_BYTES`] without NUL.
    pub args: Vec<String>,
    /// Bytes written to the command's stdin, at most [`MAX_COMMAND_STDIN_BYTES`].
    #[serde(with = "serde_bytes")]
    pub stdin: Vec<u8>,
}

impl CommandRequest {
    /// Checks the request's shape as the host does: [`Status::BadArgument`] for an empty name
    /// or an argument with NUL, [`Status::TooLarge`] for too many or too long arguments or
    /// too much stdin. Whether the command is granted, and takes arguments, is the host's
    /// table's business.
    pub fn check(&self) -> Result<(), Status> {
        if self.name.is_empty()
            || self.name.len() > MAX_JOB_NAME_BYTES
            || self.name.chars().any(char::is_control)
            || self.args.iter().any(|arg| arg.contains('\0'))
        {
            return Err(Status::BadArgument);
        }
        if self.args.len() > MAX_COMMAND_ARGS
            || self
                .args
                .iter()
                .any(|arg| arg.len() > MAX_COMMAND_ARG_BYTES)
            || self.stdin.len() > MAX_COMMAND_STDIN_BYTES
        {
            return Err(Status::TooLarge);
        }
        Ok(())
    }
}

/// What `command_run` writes: how the command ended and what it printed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CommandResult {
    /// Its exit code; -1 when it did not exit by itself (killed, timed out, not started).
    pub exit_status: i32,
    /// Whether it ran past its timeout (or the call's deadline) and its process group was
    /// killed.
    pub timed_out: bool,
    /// The first bytes of its stdout, at most the table's `max_output_kib`.
    #[serde(with = "serde_bytes")]
    pub stdout: Vec<u8>,
    /// The first bytes of its stderr, at most the table's `max_output_kib`.
    #[serde(with = "serde_bytes")]
    pub stderr: Vec<u8>,
    /// Whether stdout or stderr was cut at the cap.
    pub truncated: bool,
    /// Why it did not exit by itself (could not start, killed by a signal, timed out); empty
    /// when it did.
    pub error: String,
    /// How long it ran, in milliseconds.
    pub duration_ms: u64,
}

// --- Effects (ABI v1.2): outbound HTTP, durable state, timers and plugin metrics. Each is
// denied unless the plugin's `serf.toml` table grants it (`http`, `state`, `tick`, `metrics`);
// a denied call returns [`Status::Denied`]. A call that returns more than a status writes its
// result at `out_ptr` if it fits in `out_cap` bytes and returns the result's length either
// way; a length over `out_cap` means nothing was written, and the host keeps the result for
// one [`IMPORT_TAKE_RESULT`] call (the request is not made again).

/// `(ptr: i32, len: i32, out_ptr: i32, out_cap: i32) -> i32`: makes the [`HttpRequest`] and
/// returns the length of the encoded [`HttpResponse`]. The guest waits; the agent does not.
/// Needs `[plugins.NAME.http]` with the URL's origin in `allow`.
pub const IMPORT_HTTP_REQUEST: &str = "http_request";
/// `(key_ptr: i32, key_len: i32, out_ptr: i32, out_cap: i32) -> i32`: the value stored under
/// the key (its length); [`Status::NotFound`] if none. Needs `[plugins.NAME.state]`.
pub const IMPORT_STATE_GET: &str = "state_get";
/// `(key_ptr: i32, key_len: i32, value_ptr: i32, value_len: i32) -> i32`: stores the value
/// under the key, durably, before it returns. [`Status::TooLarge`] for a key or value over
/// its limit or a store over its quota. Needs `[plugins.NAME.state]`.
pub const IMPORT_STATE_SET: &str = "state_set";
/// `(key_ptr: i32, key_len: i32) -> i32`: deletes the key; [`Status::NotFound`] if none.
pub const IMPORT_STATE_DELETE: &str = "state_delete";
/// `(ptr: i32, len: i32, out_ptr: i32, out_cap: i32) -> i32`: the keys a [`StateList`]
/// asks for, as a [`StateKeys`] (its length).
pub const IMPORT_STATE_LIST: &str = "state_list";
/// `(out_ptr: i32, out_cap: i32) -> i32`: writes the result the last call kept because it
/// did not fit (and forgets it); [`Status::NotFound`] if none is kept, its length (nothing
/// written) if it does not fit either.
pub const IMPORT_TAKE_RESULT: &str = "take_result";
/// `(period_ms: i64) -> i32`: ticks every `period_ms` from now on; 0 stops them.
/// [`Status::BadArgument`] under [`MIN_TICK_MS`]. Needs `tick` in the plugin's table.
pub const IMPORT_SET_TICK: &str = "set_tick";
/// `(ptr: i32, len: i32) -> i32`: defines the [`MetricDefine`] and returns its id (`>= 1`);
/// defining a name again with the same kind returns the same id, so an instance that starts
/// again finds its metrics. Needs `[plugins.NAME.metrics]`.
pub const IMPORT_METRIC_DEFINE: &str = "metric_define";
/// `(id: i32, value: f64) -> i32`: a counter adds `value` (not negative), a gauge is set to
/// it, a histogram observes it. [`Status::BadArgument`] for NaN, infinities or a negative
/// counter step.
pub const IMPORT_METRIC_RECORD: &str = "metric_record";

/// Longest state key, in bytes.
pub const MAX_STATE_KEY_BYTES: usize = 1024;
/// Largest state value, in bytes (a plugin's table may set a lower limit).
pub const MAX_STATE_VALUE_BYTES: usize = 1 << 20;
/// Most keys one `state_list` call returns.
pub const MAX_STATE_LIST_KEYS: u32 = 1000;
/// Shortest tick period, in milliseconds.
pub const MIN_TICK_MS: u64 = 100;
/// Longest metric name, in bytes.
pub const MAX_METRIC_NAME_BYTES: usize = 64;
/// Largest HTTP request the host reads from a guest (body, URL and headers together).
pub const MAX_HTTP_REQUEST_BYTES: usize = 1 << 20;

/// What a plugin passes to `http_request`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HttpRequest {
    /// `GET`, `POST`, `PUT`, `PATCH`, `DELETE` or `HEAD`.
    pub method: String,
    /// An absolute `http://` or `https://` URL whose origin the plugin's table allows.
    pub url: String,
    /// Request headers, in order; `Host`, `Content-Length`, `Connection` and
    /// `Transfer-Encoding` are the host's and refused here.
    pub headers: Vec<(String, String)>,
    /// The request body.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// The plugin's own timeout in milliseconds; 0 for its table's. The host never waits
    /// longer than its table's timeout nor past the event's deadline.
    pub timeout_ms: u64,
}

/// What `http_request` returns. Any status is a response: the plugin decides what a 500 means.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HttpResponse {
    /// The HTTP status. A redirect (3xx) is followed only to an allowed origin; otherwise it is
    /// the call's error.
    pub status: u16,
    /// Response headers, in order.
    pub headers: Vec<(String, String)>,
    /// The response body, at most the table's `max_response_kib`.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// What a plugin passes to `state_list`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StateList {
    /// Only keys that start with these bytes.
    #[serde(with = "serde_bytes")]
    pub prefix: Vec<u8>,
    /// Only keys after this one (empty: from the first), to page through a long list.
    #[serde(with = "serde_bytes")]
    pub after: Vec<u8>,
    /// At most this many keys, capped at [`MAX_STATE_LIST_KEYS`]; 0 for that cap.
    pub limit: u32,
}

/// What `state_list` returns: keys in byte order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StateKeys {
    /// The keys.
    pub keys: Vec<serde_bytes::ByteBuf>,
    /// Whether more keys match after the last one.
    pub more: bool,
}

/// What a plugin passes to `metric_define`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MetricDefine {
    /// 1 to [`MAX_METRIC_NAME_BYTES`] of `a-z`, `0-9` and `_`, starting with a letter.
    pub name: String,
    /// `counter`, `gauge` or `histogram`.
    pub kind: String,
    /// One line saying what it measures (at most 256 bytes).
    pub help: String,
}

impl MetricDefine {
    /// Whether `name` is a valid metric name: 1 to [`MAX_METRIC_NAME_BYTES`] of `a-z`, `0-9`
    /// and `_`, starting with a letter.
    pub fn is_valid_name(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= MAX_METRIC_NAME_BYTES
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    }
}

/// The kinds of [`MetricDefine::kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricKind {
    /// Only goes up: `metric_record` adds.
    Counter,
    /// Any value: `metric_record` sets it.
    Gauge,
    /// Observations counted into buckets: `metric_record` observes.
    Histogram,
}

impl MetricKind {
    /// `counter`, `gauge` or `histogram`, as [`MetricDefine::kind`] carries it.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        }
    }
}

/// The payload of [`Event::Tick`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Tick {
    /// Ticks that fell due while this one waited in the queue, folded into it.
    pub coalesced: u64,
}

/// Encodes an ABI payload as a msgpack map with named keys.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Every ABI type is plain data with string keys: encoding into a Vec cannot fail.
    rmp_serde::to_vec_named(value).expect("ABI payloads always encode")
}

/// Decodes an ABI payload.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, rmp_serde::decode::Error> {
    rmp_serde::from_slice(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(payload: &[u8]) -> Envelope {
        Envelope {
            v: ABI_VERSION,
            seq: 7,
            event: Event::User(UserEvent {
                name: "deploy".into(),
                payload: payload.to_vec(),
                ltime: 3,
                coalesce: true,
            }),
        }
    }

    #[test]
    fn envelope_round_trips_with_binary_payload() {
        let envelope = user(&[0, 159, 146, 150, 255]);
        let bytes = encode(&envelope);
        assert_eq!(decode::<Envelope>(&bytes).unwrap(), envelope);
    }

    #[test]
    fn payload_is_msgpack_bin() {
        let bytes = encode(&user(b"v1"));
        let needle = [0xc4, 2, b'v', b'1'];
        assert!(bytes.windows(4).any(|w| w == needle), "{bytes:02x?}");
    }

    #[test]
    fn unknown_keys_are_ignored() {
        let value = rmpv::Value::Map(vec![
            ("v".into(), 1.into()),
            ("seq".into(), 2.into()),
            ("future".into(), "ignored".into()),
            (
                "event".into(),
                rmpv::Value::Map(vec![
                    ("kind".into(), "dropped".into()),
                    ("count".into(), 5.into()),
                    ("extra".into(), true.into()),
                ]),
            ),
        ]);
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, &value).unwrap();
        let envelope: Envelope = decode(&bytes).unwrap();
        assert_eq!(envelope.event, Event::Dropped { count: 5 });
    }

    #[test]
    fn status_codes_round_trip() {
        for status in [
            Status::Ok,
            Status::BadArgument,
            Status::InvalidMemory,
            Status::NotAllowed,
            Status::TooLarge,
            Status::RateLimited,
            Status::NotFound,
            Status::Unavailable,
            Status::Denied,
        ] {
            assert_eq!(Status::from_code(status.code()), Some(status));
        }
        assert_eq!(Status::from_code(-99), None);
    }

    #[test]
    fn capabilities_round_trip_by_name_and_name_their_imports() {
        for capability in Capability::ALL {
            assert_eq!(Capability::from_name(capability.name()), Some(capability));
        }
        assert_eq!(Capability::from_name("Members"), None);
        assert_eq!(
            Capability::of_import(IMPORT_MEMBERS),
            Some(Capability::Members)
        );
        assert_eq!(
            Capability::of_import(IMPORT_FIRE_EVENT),
            Some(Capability::Events)
        );
        assert_eq!(
            Capability::of_import(IMPORT_QUERY),
            Some(Capability::Queries)
        );
        assert_eq!(Capability::of_import(IMPORT_LOG), None);
    }
}
