//! The msgpack wire types of Serf's RPC ("IPC") protocol, shared by our client and our server.
//!
//! Owns: every request, response and streaming-record body with Serf's exact key names; the
//! command names and Serf's error strings; which commands carry a body in which direction; and
//! the framing ([`FrameReader`], [`encode_frame`]). Does not own sockets, sequencing or command
//! semantics: `rpc::client` and `rpc::server` drive these types over a `TcpStream`.
//!
//! # Encoding (what Go's RPC codec emits, `WriteExt: true`)
//!
//! Structs are msgpack maps keyed by Go field names, and each struct declares its fields in
//! byte-wise sorted key order because that is the order Go emits, so `rmp_serde::to_vec_named`
//! (which [`encode_into`] uses) reproduces Go's bytes. Strings are `str` (fixstr/str8/str16/
//! str32), byte slices are `bin`, integers take their smallest form (non-negative values use the
//! unsigned markers), floats are always float64. Where Go sends `nil` for an absent slice, the
//! field either is an `Option` (payloads: `nil` and empty differ on the wire) or is documented as
//! "empty encodes as nil". Go maps are encoded in random order by Go; ours are `BTreeMap`s, so
//! compare decoded values, never bytes, whenever a map holds two or more entries.
//!
//! # Decoding (what Go accepts)
//!
//! Any key order, unknown keys skipped, missing keys and `nil` values give the zero value, any
//! integer width (range-checked), byte fields take `str`, `bin` or an array of small integers,
//! booleans take `true`/`false` or the integers 0/1. String fields take `str` only: `bin` is an
//! error, as in Go (and so is a `str` that is not UTF-8, which Go would accept).
//!
//! # Framing
//!
//! There are no length prefixes: a connection is a concatenation of msgpack objects. A request
//! is a [`RequestHeader`] followed by one body if [`command_has_request_body`]; a response is a
//! [`ResponseHeader`] followed by one body if [`response_has_body`]. `stream`, `monitor` and
//! `query` later send more `ResponseHeader` + record pairs with the request's `Seq`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use serde::de::{self, DeserializeOwned};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serf_msgpack::{Progress, Scan, ScanError};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The only IPC protocol version Serf speaks; sent in [`HandshakeRequest::version`].
pub const IPC_VERSION: i32 = 1;

/// Default for [`FrameReader::max_frame_bytes`]: 1 MiB.
///
/// Generous: Serf caps user events at 512 bytes and queries at 1 KiB, so the largest real
/// objects are `members` replies (roughly 200 bytes per member plus tags, so several thousand
/// members fit) and `stats`.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1 << 20;

/// Deepest nesting of arrays and maps a frame may have. Serf's deepest object (a member event:
/// record, `Members`, member, `Tags`) has four levels; the cap keeps decoders off deep recursion.
pub const MAX_NESTING_DEPTH: usize = 64;

/// Log levels accepted by `monitor` (case-insensitively), least severe first.
pub const LOG_LEVELS: [&str; 5] = ["TRACE", "DEBUG", "INFO", "WARN", "ERR"];

/// The command names sent in [`RequestHeader::command`].
pub mod command {
    /// Must be the first command on a connection; body [`super::HandshakeRequest`].
    pub const HANDSHAKE: &str = "handshake";
    /// Body [`super::AuthRequest`]; needed before anything else if the agent has `rpc_auth`.
    pub const AUTH: &str = "auth";
    /// Fires a user event; body [`super::EventRequest`].
    pub const EVENT: &str = "event";
    /// Body [`super::ForceLeaveRequest`].
    pub const FORCE_LEAVE: &str = "force-leave";
    /// Body [`super::JoinRequest`], reply [`super::JoinResponse`].
    pub const JOIN: &str = "join";
    /// No body, reply [`super::MembersResponse`].
    pub const MEMBERS: &str = "members";
    /// Body [`super::MembersFilteredRequest`], reply [`super::MembersResponse`].
    pub const MEMBERS_FILTERED: &str = "members-filtered";
    /// Body [`super::StreamRequest`], then [`super::StreamRecord`]s.
    pub const STREAM: &str = "stream";
    /// Body [`super::StopRequest`]; ends a `stream` or `monitor`.
    pub const STOP: &str = "stop";
    /// Body [`super::MonitorRequest`], then [`super::LogRecord`]s.
    pub const MONITOR: &str = "monitor";
    /// No body; the agent replies, leaves the cluster and shuts down.
    pub const LEAVE: &str = "leave";
    /// Body [`super::KeyRequest`], reply [`super::KeyResponse`].
    pub const INSTALL_KEY: &str = "install-key";
    /// Body [`super::KeyRequest`], reply [`super::KeyResponse`].
    pub const USE_KEY: &str = "use-key";
    /// Body [`super::KeyRequest`], reply [`super::KeyResponse`].
    pub const REMOVE_KEY: &str = "remove-key";
    /// No body, reply [`super::KeyResponse`] with `Keys`.
    pub const LIST_KEYS: &str = "list-keys";
    /// Body [`super::TagsRequest`].
    pub const TAGS: &str = "tags";
    /// Body [`super::QueryRequest`], then [`super::QueryRecord`]s.
    pub const QUERY: &str = "query";
    /// Body [`super::RespondRequest`]; answers a query seen on a `stream`.
    pub const RESPOND: &str = "respond";
    /// No body, reply [`super::Stats`].
    pub const STATS: &str = "stats";
    /// Body [`super::CoordinateRequest`], reply [`super::CoordinateResponse`].
    pub const GET_COORDINATE: &str = "get-coordinate";
    /// No body, reply [`super::ReloadResponse`]. Our extension: Serf reloads on SIGHUP only.
    pub const RELOAD: &str = "reload";
    // Jobs (our extension): the plugins' long jobs on this agent.
    /// No body, reply [`super::JobsResponse`]: every job record of the agent.
    pub const JOBS_LIST: &str = "jobs-list";
    /// Body [`super::JobRequest`], reply [`super::JobResponse`].
    pub const JOB_SHOW: &str = "job-show";
    /// Body [`super::JobRequest`], reply [`super::JobResponse`]: the record once the job has
    /// ended (or after a few seconds, if it has not).
    pub const JOB_KILL: &str = "job-kill";
    /// Body [`super::JobRequest`] (`ID` 0: every ended job), reply [`super::JobReapResponse`].
    pub const JOB_REAP: &str = "job-reap";
    // Plugins (our extension): the live view of this agent's plugins.
    /// No body, reply [`super::PluginsResponse`]: every configured plugin, by name.
    pub const PLUGIN_LIST: &str = "plugin-list";
    /// Body [`super::PluginRequest`], reply [`super::PluginResponse`].
    pub const PLUGIN_STATUS: &str = "plugin-status";
    /// Body [`super::PluginStateRequest`], reply [`super::PluginStateResponse`]: a plugin's
    /// durable state (ABI v1.2), one key's value or the keys under a prefix.
    pub const PLUGIN_STATE: &str = "plugin-state";

    /// Every command the agent understands: Serf 0.9.4's, then our extensions.
    pub const ALL: [&str; 28] = [
        HANDSHAKE,
        AUTH,
        EVENT,
        FORCE_LEAVE,
        JOIN,
        MEMBERS,
        MEMBERS_FILTERED,
        STREAM,
        STOP,
        MONITOR,
        LEAVE,
        INSTALL_KEY,
        USE_KEY,
        REMOVE_KEY,
        LIST_KEYS,
        TAGS,
        QUERY,
        RESPOND,
        STATS,
        GET_COORDINATE,
        RELOAD,
        JOBS_LIST,
        JOB_SHOW,
        JOB_KILL,
        JOB_REAP,
        PLUGIN_LIST,
        PLUGIN_STATUS,
        PLUGIN_STATE,
    ];
}

/// Serf's error strings for [`ResponseHeader::error`], verbatim (clients compare them).
pub mod errors {
    /// Unknown command; the agent then closes the connection without reading a body.
    pub const UNSUPPORTED_COMMAND: &str = "Unsupported command";
    /// `handshake` with a version other than [`super::IPC_VERSION`]; the connection stays open.
    pub const UNSUPPORTED_IPC_VERSION: &str = "Unsupported IPC version";
    /// A second `handshake` on one connection.
    pub const DUPLICATE_HANDSHAKE: &str = "Handshake already performed";
    /// Any command before `handshake`; the agent then closes the connection.
    pub const HANDSHAKE_REQUIRED: &str = "Handshake required";
    /// A second `monitor` on one connection.
    pub const MONITOR_EXISTS: &str = "Monitor already exists";
    /// A `stream` filter that does not parse.
    pub const INVALID_FILTER: &str = "Invalid event filter";
    /// A `stream` whose `Seq` is already streaming on this connection.
    pub const STREAM_EXISTS: &str = "Stream with given sequence exists";
    /// A `respond` whose `ID` is unknown or past its deadline.
    pub const INVALID_QUERY_ID: &str = "No pending queries matching ID";
    /// A command before `auth` on an agent with `rpc_auth`; the request body is NOT consumed.
    pub const AUTH_REQUIRED: &str = "Authentication required";
    /// `auth` with the wrong key.
    pub const INVALID_AUTH_TOKEN: &str = "Invalid authentication token";

    /// `monitor` with a level not in [`super::LOG_LEVELS`]; `level` is already upper-cased by
    /// the agent (`Unknown log level: FOO`).
    pub fn unknown_log_level(level: &str) -> String {
        format!("Unknown log level: {level}")
    }
}

/// Whether a request with this command is followed by a body. Unknown commands: `false` (the
/// agent answers "Unsupported command" and closes without reading further).
pub fn command_has_request_body(command: &str) -> bool {
    !matches!(
        command,
        command::MEMBERS
            | command::LEAVE
            | command::LIST_KEYS
            | command::STATS
            | command::RELOAD
            | command::JOBS_LIST
            | command::PLUGIN_LIST
    ) && command::ALL.contains(&command)
}

/// Whether a successful (or failed, see [`response_has_body`]) reply to this command carries a
/// body after its header. The first reply to `stream`, `monitor` and `query` has none; their
/// later records always have one.
pub fn command_has_response_body(command: &str) -> bool {
    matches!(
        command,
        command::JOIN
            | command::MEMBERS
            | command::MEMBERS_FILTERED
            | command::INSTALL_KEY
            | command::USE_KEY
            | command::REMOVE_KEY
            | command::LIST_KEYS
            | command::STATS
            | command::GET_COORDINATE
            | command::RELOAD
            | command::JOBS_LIST
            | command::JOB_SHOW
            | command::JOB_KILL
            | command::JOB_REAP
            | command::PLUGIN_LIST
            | command::PLUGIN_STATUS
            | command::PLUGIN_STATE
    )
}

/// Whether a reply header with this `error` to this command is followed by a body: the body is
/// sent even on error (join, key commands), except for the errors the agent raises before it
/// looks at the command (handshake/auth required, unsupported command).
pub fn response_has_body(command: &str, error: &str) -> bool {
    command_has_response_body(command)
        && !matches!(
            error,
            errors::AUTH_REQUIRED | errors::HANDSHAKE_REQUIRED | errors::UNSUPPORTED_COMMAND
        )
}

// ---------------------------------------------------------------------------------------------
// Headers

/// Precedes every request. Go emits `Command` then `Seq`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RequestHeader {
    #[serde(rename = "Command", deserialize_with = "go::string")]
    pub command: String,
    /// Chosen by the client (Go's starts at 1), echoed in every reply and record.
    #[serde(rename = "Seq", deserialize_with = "go::nil_default")]
    pub seq: u64,
}

impl RequestHeader {
    pub fn new(command: &str, seq: u64) -> Self {
        Self {
            command: command.to_owned(),
            seq,
        }
    }
}

/// Precedes every reply and every streamed record. Go emits `Error` then `Seq`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ResponseHeader {
    /// Empty on success, otherwise Serf's message (see [`errors`]).
    #[serde(rename = "Error", deserialize_with = "go::string")]
    pub error: String,
    #[serde(rename = "Seq", deserialize_with = "go::nil_default")]
    pub seq: u64,
}

impl ResponseHeader {
    /// A success header.
    pub fn ok(seq: u64) -> Self {
        Self {
            error: String::new(),
            seq,
        }
    }

    /// A failure header carrying `error` verbatim.
    pub fn error(seq: u64, error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            seq,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Request bodies

/// Body of `handshake`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct HandshakeRequest {
    /// Must be [`IPC_VERSION`].
    #[serde(rename = "Version", deserialize_with = "go::nil_default")]
    pub version: i32,
}

/// Body of `auth`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthRequest {
    #[serde(rename = "AuthKey", deserialize_with = "go::string")]
    pub auth_key: String,
}

/// Body of `event`: fire a user event.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct EventRequest {
    #[serde(rename = "Coalesce", deserialize_with = "go::bool")]
    pub coalesce: bool,
    #[serde(rename = "Name", deserialize_with = "go::string")]
    pub name: String,
    /// `None` is `nil` (the CLI sends that when no payload is given).
    #[serde(
        rename = "Payload",
        serialize_with = "go::ser_opt_bytes",
        deserialize_with = "go::opt_bytes"
    )]
    pub payload: Option<Vec<u8>>,
}

/// Body of `force-leave`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ForceLeaveRequest {
    #[serde(rename = "Node", deserialize_with = "go::string")]
    pub node: String,
    /// Also erase the member from the member list at once.
    #[serde(rename = "Prune", deserialize_with = "go::bool")]
    pub prune: bool,
}

/// Body of `join`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct JoinRequest {
    /// Addresses (`host` or `host:port`) of existing members.
    #[serde(rename = "Existing", deserialize_with = "go::string_vec")]
    pub existing: Vec<String>,
    /// Replay old user events (false: ignore events older than the join).
    #[serde(rename = "Replay", deserialize_with = "go::bool")]
    pub replay: bool,
}

/// Body of `members-filtered`. Every value is a regular expression anchored as `^…$`; an empty
/// `status` or `name` means no filter. A bad regex makes the agent close the connection.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MembersFilteredRequest {
    #[serde(rename = "Name", deserialize_with = "go::string")]
    pub name: String,
    #[serde(rename = "Status", deserialize_with = "go::string")]
    pub status: String,
    /// Tag name to value regex; a member without the tag is matched against "".
    #[serde(rename = "Tags", deserialize_with = "go::string_map")]
    pub tags: BTreeMap<String, String>,
}

/// Body of `tags`: new tags = current tags − `delete_tags` + `tags`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TagsRequest {
    /// Empty encodes as `nil`, as the CLI sends it when no `-delete` is given.
    #[serde(
        rename = "DeleteTags",
        serialize_with = "go::ser_nil_if_empty",
        deserialize_with = "go::string_vec"
    )]
    pub delete_tags: Vec<String>,
    #[serde(rename = "Tags", deserialize_with = "go::string_map")]
    pub tags: BTreeMap<String, String>,
}

/// Body of `stream`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StreamRequest {
    /// An event filter in handler syntax (`*`, `user:deploy,member-join`, `query:name`).
    #[serde(rename = "Type", deserialize_with = "go::string")]
    pub filter: String,
}

/// Body of `monitor`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MonitorRequest {
    /// One of [`LOG_LEVELS`], any case.
    #[serde(rename = "LogLevel", deserialize_with = "go::string")]
    pub log_level: String,
}

/// Body of `stop`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StopRequest {
    /// The `Seq` of the `stream` or `monitor` request to end.
    #[serde(rename = "Stop", deserialize_with = "go::nil_default")]
    pub stop: u64,
}

/// Body of `query`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct QueryRequest {
    /// Only these nodes answer; empty = all. Empty encodes as `nil`, as the CLI sends it.
    #[serde(
        rename = "FilterNodes",
        serialize_with = "go::ser_nil_if_empty",
        deserialize_with = "go::string_vec"
    )]
    pub filter_nodes: Vec<String>,
    /// Tag name to regex, matched anywhere in the value (unanchored, as in Serf); empty = no
    /// filter (the CLI sends `{}`).
    #[serde(rename = "FilterTags", deserialize_with = "go::string_map")]
    pub filter_tags: BTreeMap<String, String>,
    #[serde(rename = "Name", deserialize_with = "go::string")]
    pub name: String,
    #[serde(
        rename = "Payload",
        serialize_with = "go::ser_opt_bytes",
        deserialize_with = "go::opt_bytes"
    )]
    pub payload: Option<Vec<u8>>,
    /// Extra members that relay each response (0..=255).
    #[serde(rename = "RelayFactor", deserialize_with = "go::nil_default")]
    pub relay_factor: u8,
    /// Ask members to acknowledge receipt.
    #[serde(rename = "RequestAck", deserialize_with = "go::bool")]
    pub request_ack: bool,
    /// Zero means Serf's default. Integer nanoseconds on the wire (Go `time.Duration`); a
    /// negative value decodes as zero.
    #[serde(rename = "Timeout", with = "go::duration_ns")]
    pub timeout: Duration,
}

/// Body of `respond`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RespondRequest {
    /// [`QueryEventRecord::id`] from this connection's stream.
    #[serde(rename = "ID", deserialize_with = "go::nil_default")]
    pub id: u64,
    #[serde(
        rename = "Payload",
        serialize_with = "go::ser_opt_bytes",
        deserialize_with = "go::opt_bytes"
    )]
    pub payload: Option<Vec<u8>>,
}

/// Body of `install-key`, `use-key` and `remove-key`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct KeyRequest {
    /// Base64 of a 16, 24 or 32 byte key.
    #[serde(rename = "Key", deserialize_with = "go::string")]
    pub key: String,
}

/// Body of `get-coordinate`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CoordinateRequest {
    #[serde(rename = "Node", deserialize_with = "go::string")]
    pub node: String,
}

// ---------------------------------------------------------------------------------------------
// Response bodies

/// Reply body of `join`, sent even when the header carries an error.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct JoinResponse {
    /// Number of nodes successfully contacted.
    #[serde(rename = "Num", deserialize_with = "go::nil_default")]
    pub num: i32,
}

/// Reply body of `members` and `members-filtered`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MembersResponse {
    /// Always an array on the wire, `[]` when empty (never `nil`).
    #[serde(rename = "Members", deserialize_with = "go::nil_default")]
    pub members: Vec<Member>,
}

/// A cluster member as RPC shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Member {
    /// 4 bytes for IPv4, 16 for IPv6 (see [`Member::ip`]).
    #[serde(
        rename = "Addr",
        serialize_with = "go::ser_bytes",
        deserialize_with = "go::bytes"
    )]
    pub addr: Vec<u8>,
    /// Serf protocol in use / supported range.
    #[serde(rename = "DelegateCur", deserialize_with = "go::nil_default")]
    pub delegate_cur: u8,
    #[serde(rename = "DelegateMax", deserialize_with = "go::nil_default")]
    pub delegate_max: u8,
    #[serde(rename = "DelegateMin", deserialize_with = "go::nil_default")]
    pub delegate_min: u8,
    #[serde(rename = "Name", deserialize_with = "go::string")]
    pub name: String,
    /// Gossip port.
    #[serde(rename = "Port", deserialize_with = "go::nil_default")]
    pub port: u16,
    /// Memberlist protocol in use / supported range.
    #[serde(rename = "ProtocolCur", deserialize_with = "go::nil_default")]
    pub protocol_cur: u8,
    #[serde(rename = "ProtocolMax", deserialize_with = "go::nil_default")]
    pub protocol_max: u8,
    #[serde(rename = "ProtocolMin", deserialize_with = "go::nil_default")]
    pub protocol_min: u8,
    /// `alive`, `leaving`, `left`, `failed` or `none`.
    #[serde(rename = "Status", deserialize_with = "go::string")]
    pub status: String,
    #[serde(rename = "Tags", deserialize_with = "go::string_map")]
    pub tags: BTreeMap<String, String>,
}

impl Member {
    /// The address as an IP, if [`Member::addr`] has 4 or 16 bytes.
    pub fn ip(&self) -> Option<IpAddr> {
        match self.addr.len() {
            4 => <[u8; 4]>::try_from(self.addr.as_slice())
                .ok()
                .map(|b| IpAddr::V4(Ipv4Addr::from(b))),
            16 => <[u8; 16]>::try_from(self.addr.as_slice())
                .ok()
                .map(|b| IpAddr::V6(Ipv6Addr::from(b))),
            _ => None,
        }
    }

    /// The wire form of an address: 4 bytes for IPv4, 16 for IPv6, as Serf sends it.
    pub fn addr_bytes(ip: IpAddr) -> Vec<u8> {
        match ip {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        }
    }
}

/// Reply body of the key commands. The header's `Error` carries the summary
/// (`"2/2 nodes reported failure"`); the body is sent regardless.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct KeyResponse {
    /// Base64 key to the number of nodes holding it; `Some` only for `list-keys` (Serf sends
    /// `nil` for the other key commands and `{}` for an empty list).
    #[serde(rename = "Keys", deserialize_with = "go::opt_count_map")]
    pub keys: Option<BTreeMap<String, i64>>,
    /// Node name to its error message.
    #[serde(rename = "Messages", deserialize_with = "go::string_map")]
    pub messages: BTreeMap<String, String>,
    #[serde(rename = "NumErr", deserialize_with = "go::nil_default")]
    pub num_err: i64,
    #[serde(rename = "NumNodes", deserialize_with = "go::nil_default")]
    pub num_nodes: i64,
    #[serde(rename = "NumResp", deserialize_with = "go::nil_default")]
    pub num_resp: i64,
}

/// Reply body of `stats`: section (`agent`, `runtime`, `serf`, `tags`, `event_handlers`) to
/// key to value, every value a string.
pub type Stats = BTreeMap<String, BTreeMap<String, String>>;

/// A Vivaldi network coordinate.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Coordinate {
    #[serde(rename = "Adjustment", deserialize_with = "go::nil_default")]
    pub adjustment: f64,
    #[serde(rename = "Error", deserialize_with = "go::nil_default")]
    pub error: f64,
    #[serde(rename = "Height", deserialize_with = "go::nil_default")]
    pub height: f64,
    /// Empty encodes as `nil` (what Serf sends for an unknown node).
    #[serde(
        rename = "Vec",
        serialize_with = "go::ser_nil_if_empty",
        deserialize_with = "go::nil_default"
    )]
    pub vec: Vec<f64>,
}

/// Reply body of `get-coordinate`. For an unknown node `ok` is false and `coord` is zero.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CoordinateResponse {
    #[serde(rename = "Coord", deserialize_with = "go::nil_default")]
    pub coord: Coordinate,
    #[serde(rename = "Ok", deserialize_with = "go::bool")]
    pub ok: bool,
}

/// Reply body of `reload` (our extension), sent on error too.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ReloadResponse {
    /// The plugins the reload changed or failed to change, in name order.
    #[serde(rename = "Plugins", deserialize_with = "go::nil_default")]
    pub plugins: Vec<ReloadedPlugin>,
    /// The other settings applied (log level, event handlers, tags), a line each.
    #[serde(rename = "Settings", deserialize_with = "go::string_vec")]
    pub settings: Vec<String>,
    /// Settings that changed but apply only after a restart.
    #[serde(rename = "Restart", deserialize_with = "go::string_vec")]
    pub restart: Vec<String>,
}

/// One plugin in a [`ReloadResponse`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ReloadedPlugin {
    /// `added`, `loaded`, `removed`, `replaced` or `updated`.
    #[serde(rename = "Change", deserialize_with = "go::string")]
    pub change: String,
    /// What differed, e.g. `module, config`.
    #[serde(rename = "Detail", deserialize_with = "go::string")]
    pub detail: String,
    /// Why the change did not apply; empty if it did.
    #[serde(rename = "Error", deserialize_with = "go::string")]
    pub error: String,
    #[serde(rename = "Name", deserialize_with = "go::string")]
    pub name: String,
}

// ---------------------------------------------------------------------------------------------
// Jobs (our extension): `jobs-list`, `job-show`, `job-kill`, `job-reap`

/// Request body of `job-show`, `job-kill` and `job-reap`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct JobRequest {
    /// The job's id; for `job-reap`, 0 means every job that has ended.
    #[serde(rename = "ID")]
    pub id: u64,
}

/// One job's record, as `serf jobs` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Job {
    /// The argument the plugin started it with.
    #[serde(
        rename = "Arg",
        deserialize_with = "go::bytes",
        serialize_with = "go::ser_bytes"
    )]
    pub arg: Vec<u8>,
    /// When it ended, in milliseconds since the Unix epoch; 0 until then.
    #[serde(rename = "EndedMs")]
    pub ended_ms: u64,
    /// Why it failed or was killed, or the text the job gave `set_error`.
    #[serde(rename = "Error", deserialize_with = "go::string")]
    pub error: String,
    /// What the job returned when `State` is `finished`; -1 otherwise.
    #[serde(rename = "ExitStatus")]
    pub exit_status: i32,
    #[serde(rename = "ID")]
    pub id: u64,
    /// The name the plugin gave it.
    #[serde(rename = "Name", deserialize_with = "go::string")]
    pub name: String,
    /// The last lines it logged, oldest first.
    #[serde(rename = "Output", deserialize_with = "go::string_vec")]
    pub output: Vec<String>,
    /// The plugin that started it.
    #[serde(rename = "Plugin", deserialize_with = "go::string")]
    pub plugin: String,
    /// When it started, in milliseconds since the Unix epoch.
    #[serde(rename = "StartedMs")]
    pub started_ms: u64,
    /// `starting`, `running`, `finished`, `failed` or `killed`.
    #[serde(rename = "State", deserialize_with = "go::string")]
    pub state: String,
    /// For a command job: the argv the agent ran; empty for a wasm job.
    #[serde(rename = "Command", deserialize_with = "go::string_vec")]
    pub command: Vec<String>,
}

/// Reply body of `jobs-list`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct JobsResponse {
    /// Every job record, by id.
    #[serde(rename = "Jobs", deserialize_with = "go::nil_default")]
    pub jobs: Vec<Job>,
}

/// Reply body of `job-show` and `job-kill`, sent on error too (then all zero).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct JobResponse {
    #[serde(rename = "Job", deserialize_with = "go::nil_default")]
    pub job: Job,
}

/// Reply body of `job-reap`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct JobReapResponse {
    /// The ids whose records were deleted.
    #[serde(rename = "Reaped", deserialize_with = "go::nil_default")]
    pub reaped: Vec<u64>,
}

// ---------------------------------------------------------------------------------------------
// Plugins (our extension): `plugin-list`, `plugin-status`

/// Request body of `plugin-status`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PluginRequest {
    #[serde(rename = "Name", deserialize_with = "go::string")]
    pub name: String,
}

/// One configured plugin as the agent runs it: what `serf plugin status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Plugin {
    /// Granted capabilities (`members`, `events`, `queries`); empty for none.
    #[serde(rename = "Capabilities", deserialize_with = "go::string_vec")]
    pub capabilities: Vec<String>,
    /// Every counter of its `plugin:NAME` section of `stats`, by key.
    #[serde(rename = "Counters", deserialize_with = "go::string_map")]
    pub counters: BTreeMap<String, String>,
    /// Granted directories: guest path → host directory.
    #[serde(rename = "Dirs", deserialize_with = "go::string_map")]
    pub dirs: BTreeMap<String, String>,
    /// The names of the environment variables it is given; never their values.
    #[serde(rename = "EnvKeys", deserialize_with = "go::string_vec")]
    pub env_keys: Vec<String>,
    /// Its event filter, as in `serf.toml`.
    #[serde(rename = "Events", deserialize_with = "go::string")]
    pub events: String,
    /// Its budgets, by their `serf.toml` key (`fuel_per_event`, `max_memory_mib`, ...).
    #[serde(rename = "Limits", deserialize_with = "go::string_map")]
    pub limits: BTreeMap<String, String>,
    #[serde(rename = "Name", deserialize_with = "go::string")]
    pub name: String,
    /// The configured `.wasm` file.
    #[serde(rename = "Path", deserialize_with = "go::string")]
    pub path: String,
    /// SHA-256 of the module running; empty while none is.
    #[serde(rename = "Sha256", deserialize_with = "go::string")]
    pub sha256: String,
    /// `loading`, `running` or `failed: <reason>`.
    #[serde(rename = "State", deserialize_with = "go::string")]
    pub state: String,
}

/// Reply body of `plugin-list`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PluginsResponse {
    /// Every configured plugin, by name.
    #[serde(rename = "Plugins", deserialize_with = "go::nil_default")]
    pub plugins: Vec<Plugin>,
}

/// Reply body of `plugin-status`, sent on error too (then all zero).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PluginResponse {
    #[serde(rename = "Plugin", deserialize_with = "go::nil_default")]
    pub plugin: Plugin,
}

/// Body of `plugin-state`: with a `Key`, that key's value; without, the keys under `Prefix`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PluginStateRequest {
    #[serde(rename = "Name", deserialize_with = "go::string")]
    pub name: String,
    #[serde(rename = "Key", deserialize_with = "go::string")]
    pub key: String,
    #[serde(rename = "Prefix", deserialize_with = "go::string")]
    pub prefix: String,
}

/// Reply to `plugin-state`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PluginStateResponse {
    /// The keys under the prefix (at most 1000), as text (bytes that are not UTF-8 replaced).
    #[serde(rename = "Keys", deserialize_with = "go::string_vec")]
    pub keys: Vec<String>,
    /// More keys follow the last one listed.
    #[serde(rename = "More", deserialize_with = "go::bool")]
    pub more: bool,
    /// The key's value; `None` when listing.
    #[serde(
        rename = "Value",
        serialize_with = "go::ser_opt_bytes",
        deserialize_with = "go::opt_bytes"
    )]
    pub value: Option<Vec<u8>>,
    /// Bytes of keys and values the plugin stores.
    #[serde(rename = "Bytes")]
    pub bytes: u64,
    /// Keys the plugin stores.
    #[serde(rename = "KeyCount")]
    pub key_count: u64,
}

// ---------------------------------------------------------------------------------------------
// Streaming records

/// What happened to the members of a [`MemberEventRecord`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
pub enum MemberEventType {
    #[default]
    #[serde(rename = "member-join")]
    Join,
    #[serde(rename = "member-leave")]
    Leave,
    #[serde(rename = "member-failed")]
    Failed,
    #[serde(rename = "member-update")]
    Update,
    #[serde(rename = "member-reap")]
    Reap,
}

impl MemberEventType {
    /// Serf's name for it, e.g. `member-join`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Join => "member-join",
            Self::Leave => "member-leave",
            Self::Failed => "member-failed",
            Self::Update => "member-update",
            Self::Reap => "member-reap",
        }
    }

    /// Parses Serf's name, e.g. `member-join`.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Self::Join,
            Self::Leave,
            Self::Failed,
            Self::Update,
            Self::Reap,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == name)
    }
}

impl<'de> Deserialize<'de> for MemberEventType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = go::string(deserializer)?;
        Self::from_name(&name)
            .ok_or_else(|| de::Error::custom(format!("unknown member event {name:?}")))
    }
}

/// `Event` value of a [`UserEventRecord`].
pub const USER_EVENT: &str = "user";
/// `Event` value of a [`QueryEventRecord`].
pub const QUERY_EVENT: &str = "query";

/// A `stream` record for a membership change.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MemberEventRecord {
    #[serde(rename = "Event")]
    pub event: MemberEventType,
    #[serde(rename = "Members", deserialize_with = "go::nil_default")]
    pub members: Vec<Member>,
}

/// A `stream` record for a user event. `event` is always [`USER_EVENT`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct UserEventRecord {
    #[serde(rename = "Coalesce", deserialize_with = "go::bool")]
    pub coalesce: bool,
    #[serde(rename = "Event", deserialize_with = "go::string")]
    pub event: String,
    /// Lamport time of the event.
    #[serde(rename = "LTime", deserialize_with = "go::nil_default")]
    pub ltime: u64,
    #[serde(rename = "Name", deserialize_with = "go::string")]
    pub name: String,
    #[serde(
        rename = "Payload",
        serialize_with = "go::ser_opt_bytes",
        deserialize_with = "go::opt_bytes"
    )]
    pub payload: Option<Vec<u8>>,
}

/// A `stream` record for a query to be answered with `respond`. `event` is always
/// [`QUERY_EVENT`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct QueryEventRecord {
    #[serde(rename = "Event", deserialize_with = "go::string")]
    pub event: String,
    /// Per-connection counter (1, 2, ...) for [`RespondRequest::id`]; valid until the deadline.
    #[serde(rename = "ID", deserialize_with = "go::nil_default")]
    pub id: u64,
    #[serde(rename = "LTime", deserialize_with = "go::nil_default")]
    pub ltime: u64,
    #[serde(rename = "Name", deserialize_with = "go::string")]
    pub name: String,
    #[serde(
        rename = "Payload",
        serialize_with = "go::ser_opt_bytes",
        deserialize_with = "go::opt_bytes"
    )]
    pub payload: Option<Vec<u8>>,
}

/// One record of a `stream`, told apart by its `Event` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamRecord {
    Member(MemberEventRecord),
    User(UserEventRecord),
    Query(QueryEventRecord),
}

impl StreamRecord {
    /// The record's `Event` value (`member-join`, `user`, `query`, ...).
    pub fn event_name(&self) -> &str {
        match self {
            Self::Member(record) => record.event.as_str(),
            Self::User(record) => &record.event,
            Self::Query(record) => &record.event,
        }
    }
}

impl Serialize for StreamRecord {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Member(record) => record.serialize(serializer),
            Self::User(record) => record.serialize(serializer),
            Self::Query(record) => record.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for StreamRecord {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = rmpv::Value::deserialize(deserializer)?;
        let event = value
            .as_map()
            .and_then(|entries| {
                entries
                    .iter()
                    .find(|(key, _)| key.as_str() == Some("Event"))
                    .map(|(_, event)| event.as_str())
            })
            .flatten()
            .ok_or_else(|| de::Error::custom("stream record without an `Event` string"))?
            .to_owned();
        fn decode<T: DeserializeOwned, E: de::Error>(value: rmpv::Value) -> Result<T, E> {
            rmpv::ext::from_value(value).map_err(E::custom)
        }
        match event.as_str() {
            USER_EVENT => decode(value).map(Self::User),
            QUERY_EVENT => decode(value).map(Self::Query),
            other if MemberEventType::from_name(other).is_some() => decode(value).map(Self::Member),
            other => Err(de::Error::custom(format!(
                "unknown stream record event {other:?}"
            ))),
        }
    }
}

/// A `monitor` record: one log line without its trailing newline.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LogRecord {
    #[serde(rename = "Log", deserialize_with = "go::string")]
    pub log: String,
}

/// The kind of a [`QueryRecord`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
pub enum QueryRecordType {
    /// A node received the query (only with `RequestAck`).
    #[default]
    #[serde(rename = "ack")]
    Ack,
    /// A node answered.
    #[serde(rename = "response")]
    Response,
    /// The deadline passed; the last record of the query (`From` empty, `Payload` nil).
    #[serde(rename = "done")]
    Done,
}

impl QueryRecordType {
    /// Serf's name for it: `ack`, `response` or `done`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ack => "ack",
            Self::Response => "response",
            Self::Done => "done",
        }
    }
}

impl<'de> Deserialize<'de> for QueryRecordType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = go::string(deserializer)?;
        [Self::Ack, Self::Response, Self::Done]
            .into_iter()
            .find(|kind| kind.as_str() == name)
            .ok_or_else(|| de::Error::custom(format!("unknown query record type {name:?}")))
    }
}

/// A record of a `query`'s stream: acks and responses, then exactly one `done`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct QueryRecord {
    /// Node name; empty for `done`. A `response` with an empty `From` can slip out right before
    /// `done` (Serf closes its channel at the deadline); clients ignore it.
    #[serde(rename = "From", deserialize_with = "go::string")]
    pub from: String,
    /// `None` (nil) for `ack` and `done`.
    #[serde(
        rename = "Payload",
        serialize_with = "go::ser_opt_bytes",
        deserialize_with = "go::opt_bytes"
    )]
    pub payload: Option<Vec<u8>>,
    #[serde(rename = "Type")]
    pub kind: QueryRecordType,
}

impl QueryRecord {
    pub fn ack(from: impl Into<String>) -> Self {
        Self {
            from: from.into(),
            payload: None,
            kind: QueryRecordType::Ack,
        }
    }

    pub fn response(from: impl Into<String>, payload: Vec<u8>) -> Self {
        Self {
            from: from.into(),
            payload: Some(payload),
            kind: QueryRecordType::Response,
        }
    }

    pub fn done() -> Self {
        Self {
            from: String::new(),
            payload: None,
            kind: QueryRecordType::Done,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding

/// Why a value could not be encoded. Nothing was written.
#[derive(Debug, thiserror::Error)]
#[error("msgpack encoding failed")]
pub struct EncodeError(#[from] rmp_serde::encode::Error);

/// Appends one msgpack object to `buf`, encoded as Go's RPC codec does (see the module docs).
pub fn encode_into<T: Serialize + ?Sized>(buf: &mut Vec<u8>, value: &T) -> Result<(), EncodeError> {
    let mut serializer = rmp_serde::Serializer::new(buf).with_struct_map();
    value.serialize(&mut serializer)?;
    Ok(())
}

/// Encodes a header and its optional body into one buffer, so one `write_all` sends both and
/// nothing can interleave between them on a shared connection.
pub fn encode_frame<H, B>(header: &H, body: Option<&B>) -> Result<Vec<u8>, EncodeError>
where
    H: Serialize + ?Sized,
    B: Serialize + ?Sized,
{
    let mut buf = Vec::with_capacity(64);
    encode_into(&mut buf, header)?;
    if let Some(body) = body {
        encode_into(&mut buf, body)?;
    }
    Ok(buf)
}

/// [`encode_frame`] for a header that is not followed by a body.
pub fn encode_header<H: Serialize + ?Sized>(header: &H) -> Result<Vec<u8>, EncodeError> {
    encode_frame::<H, ()>(header, None)
}

// ---------------------------------------------------------------------------------------------
// Framing

/// Why [`FrameReader`] could not produce an object. After any of these the connection is out of
/// sync and should be closed; no bytes of a later object have been consumed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("reading the rpc connection failed")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection part-way through an object.
    #[error("connection closed inside a msgpack object ({buffered} bytes buffered)")]
    Truncated { buffered: usize },
    #[error("msgpack object exceeds the {max} byte frame limit")]
    TooLarge { max: usize },
    #[error("msgpack object nested deeper than {max} levels")]
    TooDeep { max: usize },
    /// `0xc1`, the one byte msgpack never uses.
    #[error("invalid msgpack marker {marker:#04x} at byte {offset} of the object")]
    InvalidMarker { marker: u8, offset: usize },
    /// A well-formed object that does not fit the expected type (the object is consumed).
    #[error("msgpack object is not a valid {expected}")]
    Decode {
        expected: &'static str,
        #[source]
        source: rmp_serde::decode::Error,
    },
    #[error("msgpack object is not a valid value")]
    Value(#[source] rmpv::decode::Error),
}

/// Reads one msgpack object at a time from a byte stream with no length prefixes.
///
/// Bytes read beyond the current object stay buffered for the next call. Every method is
/// cancel-safe: dropping a pending call loses no data. No input makes it panic; objects larger
/// than `max_frame_bytes` or nested deeper than [`MAX_NESTING_DEPTH`] are refused before they
/// are buffered in full.
#[derive(Debug)]
pub struct FrameReader<R> {
    reader: R,
    /// Unconsumed bytes; the current object starts at index 0.
    buf: Vec<u8>,
    scan: Scan,
    max_frame_bytes: usize,
}

const READ_CHUNK_BYTES: usize = 8 * 1024;
/// The first read into an empty, unallocated buffer goes through the stack, this large.
const FIRST_READ_BYTES: usize = 512;

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader with [`DEFAULT_MAX_FRAME_BYTES`].
    pub fn new(reader: R) -> Self {
        Self::with_max_frame_bytes(reader, DEFAULT_MAX_FRAME_BYTES)
    }

    /// A reader refusing objects larger than `max_frame_bytes` (at least 1).
    pub fn with_max_frame_bytes(reader: R, max_frame_bytes: usize) -> Self {
        Self {
            reader,
            buf: Vec::new(),
            scan: Scan::new(),
            max_frame_bytes: max_frame_bytes.max(1),
        }
    }

    /// The size limit for one object, in bytes.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// Bytes read from the stream but not yet returned.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    pub fn get_ref(&self) -> &R {
        &self.reader
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.reader
    }

    pub fn into_inner(self) -> R {
        self.reader
    }

    /// Frees the read buffer when nothing is buffered, so that a connection waiting idle
    /// between requests holds no buffer.
    pub fn release_idle_buffer(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = Vec::new();
        }
    }

    /// Whether the next object is in the buffer already, so that reading it will not wait
    /// for the stream. A malformed object counts as not there: reading it reports the error.
    pub fn has_buffered_object(&mut self) -> bool {
        !self.buf.is_empty() && matches!(self.advance_scan(), Ok(Progress::Complete(_)))
    }

    /// The raw bytes of the next complete object; `None` at a clean end of stream (between
    /// objects).
    pub async fn read_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        loop {
            if !self.buf.is_empty()
                && let Progress::Complete(len) = self.advance_scan()?
            {
                let frame = self.buf[..len].to_vec();
                self.buf.drain(..len);
                self.scan = Scan::new();
                return Ok(Some(frame));
            }
            let read = if self.buf.capacity() == 0 {
                // Waiting for the start of an object with no buffer: an idle connection
                // holds none. Cancel-safe, as `read` is.
                let mut first = [0u8; FIRST_READ_BYTES];
                let read = self.reader.read(&mut first).await?;
                self.buf.extend_from_slice(&first[..read]);
                read
            } else {
                self.buf.reserve(READ_CHUNK_BYTES);
                self.reader.read_buf(&mut self.buf).await?
            };
            if read == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(FrameError::Truncated {
                    buffered: self.buf.len(),
                });
            }
        }
    }

    /// The next object decoded as `T`; `None` at a clean end of stream.
    pub async fn read<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        match self.read_frame().await? {
            None => Ok(None),
            Some(frame) => decode(&frame).map(Some),
        }
    }

    /// The next object as a dynamic value; `None` at a clean end of stream.
    pub async fn read_value(&mut self) -> Result<Option<rmpv::Value>, FrameError> {
        match self.read_frame().await? {
            None => Ok(None),
            Some(frame) => rmpv::decode::read_value(&mut frame.as_slice())
                .map(Some)
                .map_err(FrameError::Value),
        }
    }

    /// Continues checking the object at the start of the buffer.
    fn advance_scan(&mut self) -> Result<Progress, FrameError> {
        self.scan
            .advance(&self.buf, self.max_frame_bytes, MAX_NESTING_DEPTH)
            .map_err(|error| match error {
                ScanError::InvalidMarker { marker, offset } => {
                    FrameError::InvalidMarker { marker, offset }
                }
                ScanError::TooLarge { max } => FrameError::TooLarge { max },
                ScanError::TooDeep { max } => FrameError::TooDeep { max },
            })
    }
}

/// Decodes one complete msgpack object as `T`, with the Go-compatible rules of this module.
pub fn decode<T: DeserializeOwned>(frame: &[u8]) -> Result<T, FrameError> {
    rmp_serde::from_slice(frame).map_err(|source| FrameError::Decode {
        expected: short_type_name::<T>(),
        source,
    })
}

fn short_type_name<T>() -> &'static str {
    let name = std::any::type_name::<T>();
    name.rsplit("::").next().unwrap_or(name)
}

// ---------------------------------------------------------------------------------------------
// Go's decoding rules as serde helpers

/// `deserialize_with` / `serialize_with` functions implementing go-msgpack's leniency (nil is
/// the zero value, bytes from str or bin) and strictness (strings from str only).
mod go {
    use std::collections::BTreeMap;
    use std::fmt;
    use std::time::Duration;

    use serde::de::{self, Deserialize, Deserializer, Visitor};
    use serde::{Serialize, Serializer};
    use serde_bytes::ByteBuf;

    /// A Go `string`: msgpack str only (bin is rejected as by Go), nil is "".
    #[derive(PartialEq, Eq, PartialOrd, Ord, Default)]
    struct GoString(String);

    impl<'de> Deserialize<'de> for GoString {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct StrVisitor;
            impl Visitor<'_> for StrVisitor {
                type Value = GoString;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a msgpack str or nil")
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<GoString, E> {
                    Ok(GoString(v.to_owned()))
                }
                fn visit_string<E: de::Error>(self, v: String) -> Result<GoString, E> {
                    Ok(GoString(v))
                }
                fn visit_unit<E: de::Error>(self) -> Result<GoString, E> {
                    Ok(GoString::default())
                }
                fn visit_none<E: de::Error>(self) -> Result<GoString, E> {
                    Ok(GoString::default())
                }
            }
            deserializer.deserialize_any(StrVisitor)
        }
    }

    pub(super) fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        GoString::deserialize(d).map(|s| s.0)
    }

    pub(super) fn string_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        let items = Option::<Vec<GoString>>::deserialize(d)?;
        Ok(items.unwrap_or_default().into_iter().map(|s| s.0).collect())
    }

    pub(super) fn string_map<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, String>, D::Error> {
        let entries = Option::<BTreeMap<GoString, GoString>>::deserialize(d)?;
        Ok(entries
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k.0, v.0))
            .collect())
    }

    pub(super) fn opt_count_map<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<BTreeMap<String, i64>>, D::Error> {
        let entries = Option::<BTreeMap<GoString, Option<i64>>>::deserialize(d)?;
        Ok(entries.map(|entries| {
            entries
                .into_iter()
                .map(|(k, v)| (k.0, v.unwrap_or_default()))
                .collect()
        }))
    }

    /// Numbers, sequences, structs: nil is the zero value, otherwise `T`'s own rules (serde's
    /// integer visitors accept every width and check the range).
    pub(super) fn nil_default<'de, D, T>(d: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de> + Default,
    {
        Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
    }

    /// A Go `bool`: true/false, the integers 0 and 1, or nil (false).
    pub(super) fn bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        struct BoolVisitor;
        impl Visitor<'_> for BoolVisitor {
            type Value = bool;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a msgpack bool, 0, 1 or nil")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
                Ok(v)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
                match v {
                    0 => Ok(false),
                    1 => Ok(true),
                    _ => Err(E::invalid_value(de::Unexpected::Unsigned(v), &self)),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
                match v {
                    0 => Ok(false),
                    1 => Ok(true),
                    _ => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
                }
            }
            fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
                Ok(false)
            }
            fn visit_none<E: de::Error>(self) -> Result<bool, E> {
                Ok(false)
            }
        }
        d.deserialize_any(BoolVisitor)
    }

    /// A Go `[]byte`: bin, str or an array of small integers; nil is empty.
    pub(super) fn bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(opt_bytes(d)?.unwrap_or_default())
    }

    /// A Go `[]byte` whose nil-ness matters (payloads): nil is `None`.
    pub(super) fn opt_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Ok(Option::<ByteBuf>::deserialize(d)?.map(ByteBuf::into_vec))
    }

    pub(super) fn ser_bytes<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(super) fn ser_opt_bytes<S: Serializer>(
        v: &Option<Vec<u8>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            None => s.serialize_none(),
            Some(bytes) => s.serialize_bytes(bytes),
        }
    }

    /// A Go slice that is nil when empty.
    pub(super) fn ser_nil_if_empty<S: Serializer, T: Serialize>(
        v: &[T],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        if v.is_empty() {
            s.serialize_none()
        } else {
            v.serialize(s)
        }
    }

    /// A Go `time.Duration`: int64 nanoseconds.
    pub(super) mod duration_ns {
        use super::*;

        pub(in super::super) fn serialize<S: Serializer>(
            v: &Duration,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            s.serialize_i64(i64::try_from(v.as_nanos()).unwrap_or(i64::MAX))
        }

        pub(in super::super) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Duration, D::Error> {
            let nanos = Option::<i64>::deserialize(d)?.unwrap_or_default();
            Ok(Duration::from_nanos(u64::try_from(nanos).unwrap_or(0)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
        digits
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    fn enc<T: Serialize>(value: &T) -> Vec<u8> {
        let mut buf = Vec::new();
        encode_into(&mut buf, value).unwrap();
        buf
    }

    /// Splits a byte stream into its objects with a `FrameReader`.
    fn frames(bytes: &[u8]) -> Vec<Vec<u8>> {
        block_on(async {
            let mut reader = FrameReader::new(bytes);
            let mut out = Vec::new();
            while let Some(frame) = reader.read_frame().await.unwrap() {
                out.push(frame);
            }
            out
        })
    }

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    fn dec<T: DeserializeOwned>(bytes: &[u8]) -> T {
        decode(bytes).unwrap()
    }

    // Reference 7.15: a Python probe against agent a.

    #[test]
    fn handshake_request_and_reply_reencode_byte_for_byte() {
        let request = hex("82a7436f6d6d616e64a968616e647368616b65a35365710081a756657273696f6e01");
        let parts = frames(&request);
        assert_eq!(parts.len(), 2);
        let header: RequestHeader = dec(&parts[0]);
        assert_eq!(header, RequestHeader::new(command::HANDSHAKE, 0));
        let body: HandshakeRequest = dec(&parts[1]);
        assert_eq!(body.version, IPC_VERSION);
        assert_eq!(encode_frame(&header, Some(&body)).unwrap(), request);

        let reply = hex("82a54572726f72a0a353657100");
        assert_eq!(dec::<ResponseHeader>(&reply), ResponseHeader::ok(0));
        assert_eq!(encode_header(&ResponseHeader::ok(0)).unwrap(), reply);
    }

    #[test]
    fn error_replies_reencode_byte_for_byte() {
        for (text, seq, bytes) in [
            (
                errors::HANDSHAKE_REQUIRED,
                0,
                "82a54572726f72b248616e647368616b65207265717569726564a353657100",
            ),
            (
                errors::DUPLICATE_HANDSHAKE,
                1,
                "82a54572726f72bb48616e647368616b6520616c726561647920706572666f726d6564a353657101",
            ),
            (
                errors::UNSUPPORTED_COMMAND,
                10,
                "82a54572726f72b3556e737570706f7274656420636f6d6d616e64a35365710a",
            ),
        ] {
            let bytes = hex(bytes);
            assert_eq!(
                dec::<ResponseHeader>(&bytes),
                ResponseHeader::error(seq, text)
            );
            assert_eq!(enc(&ResponseHeader::error(seq, text)), bytes);
        }
    }

    #[test]
    fn members_reply_decodes_to_the_captured_members() {
        let reply = hex(
            "82a54572726f72a0a35365710281a74d656d62657273928ba441646472c4047f00000aab44656c656761746543757205
            ab44656c65676174654d617805ab44656c65676174654d696e02a44e616d65a161a4506f7274cd1f0aab50726f746f63
            6f6c43757202ab50726f746f636f6c4d617805ab50726f746f636f6c4d696e01a6537461747573a5616c697665a45461
            677382a4726f6c65a3776562a26463a4656173748ba441646472c4047f00000bab44656c656761746543757205ab4465
            6c65676174654d617805ab44656c65676174654d696e02a44e616d65a162a4506f7274cd1f0aab50726f746f636f6c43
            757202ab50726f746f636f6c4d617805ab50726f746f636f6c4d696e01a6537461747573a5616c697665a45461677382
            a4726f6c65a26462a47a6f6e65a27a31",
        );
        let parts = frames(&reply);
        assert_eq!(parts.len(), 2);
        assert_eq!(dec::<ResponseHeader>(&parts[0]), ResponseHeader::ok(2));
        let body: MembersResponse = dec(&parts[1]);
        let a = &body.members[0];
        assert_eq!(body.members.len(), 2);
        assert_eq!(a.name, "a");
        assert_eq!(a.ip(), Some("127.0.0.10".parse().unwrap()));
        assert_eq!(a.port, 7946);
        assert_eq!(a.status, "alive");
        assert_eq!((a.protocol_min, a.protocol_max, a.protocol_cur), (1, 5, 2));
        assert_eq!((a.delegate_min, a.delegate_max, a.delegate_cur), (2, 5, 5));
        assert_eq!(a.tags["role"], "web");
        assert_eq!(a.tags["dc"], "east");
        assert_eq!(body.members[1].tags["zone"], "z1");
        // Tags are Go maps of two entries: compare values, not bytes.
        let again: MembersResponse = dec(&enc(&body));
        assert_eq!(again, body);
    }

    #[test]
    fn members_filtered_request_round_trips_in_any_key_order() {
        // Python sent the keys in dict order (Tags, Status, Name); Go emits Name, Status, Tags.
        let request = hex(
            "82a7436f6d6d616e64b06d656d626572732d66696c7465726564a35365710383a45461677381a4726f6c65a477652e2a
            a6537461747573a5616c697665a44e616d65a0",
        );
        let parts = frames(&request);
        let header: RequestHeader = dec(&parts[0]);
        assert_eq!(header, RequestHeader::new(command::MEMBERS_FILTERED, 3));
        let body: MembersFilteredRequest = dec(&parts[1]);
        assert_eq!(body.status, "alive");
        assert_eq!(body.name, "");
        assert_eq!(body.tags["role"], "we.*");
        assert_eq!(
            enc(&body),
            hex("83a44e616d65a0a6537461747573a5616c697665a45461677381a4726f6c65a477652e2a")
        );
    }

    #[test]
    fn get_coordinate_exchange_reencodes_byte_for_byte() {
        let request =
            hex("82a7436f6d6d616e64ae6765742d636f6f7264696e617465a35365710481a44e6f6465a162");
        let parts = frames(&request);
        let header: RequestHeader = dec(&parts[0]);
        let body: CoordinateRequest = dec(&parts[1]);
        assert_eq!(body.node, "b");
        assert_eq!(encode_frame(&header, Some(&body)).unwrap(), request);

        let reply = hex(
            "82a54572726f72a0a35365710482a5436f6f726484aa41646a7573746d656e74cb3efae94a223f9f90a54572726f72cb
            3fd766f41fbd04c6a6486569676874cb3f12e14c8dbfd61fa356656398cbbef5500cfbdf3166cbbf081404ccb0b7c4cb
            bef7b188c0734b2ecbbf06d9cc2b3d971dcb3f0567ba0b398670cbbf08a70c8000b1c7cb3ea9fc2ecf537f39cb3f06a4
            5afaeaf865a24f6bc3",
        );
        let parts = frames(&reply);
        let header: ResponseHeader = dec(&parts[0]);
        let body: CoordinateResponse = dec(&parts[1]);
        assert!(body.ok);
        assert_eq!(body.coord.vec.len(), 8);
        assert!(body.coord.error > 0.0);
        assert_eq!(encode_frame(&header, Some(&body)).unwrap(), reply);
    }

    #[test]
    fn unknown_coordinate_encodes_vec_as_nil() {
        let body = CoordinateResponse::default();
        let bytes = enc(&body);
        // {Coord: {Adjustment: 0.0, Error: 0.0, Height: 0.0, Vec: nil}, Ok: false}
        let expected = hex(
            "82a5436f6f726484aa41646a7573746d656e74cb0000000000000000a54572726f72cb0000000000000000
            a6486569676874cb0000000000000000a3566563c0a24f6bc2",
        );
        assert_eq!(bytes, expected);
        assert_eq!(dec::<CoordinateResponse>(&bytes), body);
    }

    #[test]
    fn list_keys_reply_decodes_with_str8_messages() {
        let reply = hex(
            "82a54572726f72ba322f32206e6f646573207265706f72746564206661696c757265a35365710985a44b65797380a84d
            6573736167657382a161d9294b657972696e6720697320656d7074792028656e6372797074696f6e206e6f7420656e61
            626c656429a162d9294b657972696e6720697320656d7074792028656e6372797074696f6e206e6f7420656e61626c65
            6429a64e756d45727202a84e756d4e6f64657302a74e756d5265737002",
        );
        let parts = frames(&reply);
        let header: ResponseHeader = dec(&parts[0]);
        assert_eq!(header.error, "2/2 nodes reported failure");
        assert!(response_has_body(command::LIST_KEYS, &header.error));
        let body: KeyResponse = dec(&parts[1]);
        assert_eq!(body.keys, Some(BTreeMap::new()));
        assert_eq!(
            body.messages["a"],
            "Keyring is empty (encryption not enabled)"
        );
        assert_eq!((body.num_err, body.num_nodes, body.num_resp), (2, 2, 2));
        assert_eq!(dec::<KeyResponse>(&enc(&body)), body);
        // `Keys: nil` for the other key commands.
        let install = KeyResponse { keys: None, ..body };
        assert_eq!(dec::<KeyResponse>(&enc(&install)).keys, None);
    }

    #[test]
    fn bodyless_requests_reencode_byte_for_byte() {
        for (command, seq, bytes) in [
            (
                command::MEMBERS,
                0,
                "82a7436f6d6d616e64a76d656d62657273a353657100",
            ),
            (
                command::MEMBERS,
                2,
                "82a7436f6d6d616e64a76d656d62657273a353657102",
            ),
            (
                command::LIST_KEYS,
                9,
                "82a7436f6d6d616e64a96c6973742d6b657973a353657109",
            ),
            ("nosuch", 10, "82a7436f6d6d616e64a66e6f73756368a35365710a"),
        ] {
            let bytes = hex(bytes);
            let header: RequestHeader = dec(&bytes);
            assert_eq!(header, RequestHeader::new(command, seq));
            assert!(!command_has_request_body(command));
            assert_eq!(encode_header(&header).unwrap(), bytes);
        }
    }

    // Reference 7.16: the real Go CLI.

    #[test]
    fn go_cli_members_request_reencodes_byte_for_byte() {
        let wire = hex(
            "82a7436f6d6d616e64a968616e647368616b65a35365710181a756657273696f6e0182a7436f6d6d616e64b06d656d62
            6572732d66696c7465726564a35365710283a44e616d65a0a6537461747573a0a45461677380",
        );
        let mut expected = encode_frame(
            &RequestHeader::new(command::HANDSHAKE, 1),
            Some(&HandshakeRequest {
                version: IPC_VERSION,
            }),
        )
        .unwrap();
        expected.extend(
            encode_frame(
                &RequestHeader::new(command::MEMBERS_FILTERED, 2),
                Some(&MembersFilteredRequest::default()),
            )
            .unwrap(),
        );
        assert_eq!(expected, wire);
    }

    #[test]
    fn go_cli_event_request_reencodes_byte_for_byte() {
        let wire = hex(
            "82a7436f6d6d616e64a968616e647368616b65a35365710181a756657273696f6e0182a7436f6d6d616e64a56576656e
            74a35365710283a8436f616c65736365c3a44e616d65a66465706c6f79a75061796c6f6164c40676312e322e33",
        );
        let parts = frames(&wire);
        assert_eq!(parts.len(), 4);
        let body: EventRequest = dec(&parts[3]);
        assert_eq!(
            body,
            EventRequest {
                coalesce: true,
                name: "deploy".into(),
                payload: Some(b"v1.2.3".to_vec()),
            }
        );
        assert_eq!(enc(&body), parts[3]);
    }

    #[test]
    fn go_cli_query_exchange_reencodes_byte_for_byte() {
        let request = hex(
            "82a7436f6d6d616e64a968616e647368616b65a35365710181a756657273696f6e0182a7436f6d6d616e64a571756572
            79a35365710287ab46696c7465724e6f646573c0aa46696c7465725461677380a44e616d65a6757063617365a7506179
            6c6f6164c40568656c6c6fab52656c6179466163746f7200aa5265717565737441636bc3a754696d656f7574ce773594
            00",
        );
        let parts = frames(&request);
        assert_eq!(parts.len(), 4);
        let body: QueryRequest = dec(&parts[3]);
        assert_eq!(
            body,
            QueryRequest {
                name: "upcase".into(),
                payload: Some(b"hello".to_vec()),
                request_ack: true,
                timeout: Duration::from_secs(2),
                ..QueryRequest::default()
            }
        );
        assert_eq!(enc(&body), parts[3]);

        let replies = hex(
            "82a54572726f72a0a35365710182a54572726f72a0a35365710282a54572726f72a0a35365710283a446726f6da161a7
            5061796c6f6164c0a454797065a361636b82a54572726f72a0a35365710283a446726f6da161a75061796c6f6164c40c
            726573702d66726f6d2d610aa454797065a8726573706f6e736582a54572726f72a0a35365710283a446726f6da162a7
            5061796c6f6164c0a454797065a361636b82a54572726f72a0a35365710283a446726f6da0a75061796c6f6164c0a454
            797065a4646f6e65",
        );
        let parts = frames(&replies);
        assert_eq!(parts.len(), 10);
        let records: Vec<QueryRecord> = [3, 5, 7, 9].iter().map(|i| dec(&parts[*i])).collect();
        assert_eq!(
            records,
            vec![
                QueryRecord::ack("a"),
                QueryRecord::response("a", b"resp-from-a\n".to_vec()),
                QueryRecord::ack("b"),
                QueryRecord::done(),
            ]
        );
        let mut again = encode_header(&ResponseHeader::ok(1)).unwrap();
        again.extend(encode_header(&ResponseHeader::ok(2)).unwrap());
        for record in &records {
            again.extend(encode_frame(&ResponseHeader::ok(2), Some(record)).unwrap());
        }
        assert_eq!(again, replies);
    }

    #[test]
    fn stream_records_and_respond_reencode_byte_for_byte() {
        let query_record = hex(
            "82a54572726f72a0a35365710185a54576656e74a57175657279a2494401a54c54696d6507a44e616d65a770726f
            62657132a75061796c6f6164c4020001",
        );
        let parts = frames(&query_record);
        let record: StreamRecord = dec(&parts[1]);
        assert_eq!(
            record,
            StreamRecord::Query(QueryEventRecord {
                event: QUERY_EVENT.into(),
                id: 1,
                ltime: 7,
                name: "probeq2".into(),
                payload: Some(vec![0, 1]),
            })
        );
        assert_eq!(enc(&record), parts[1]);

        let respond = hex(
            "82a7436f6d6d616e64a7726573706f6e64a35365710282a2494401a75061796c6f6164c404706f6e67",
        );
        let parts = frames(&respond);
        let body: RespondRequest = dec(&parts[1]);
        assert_eq!(body.id, 1);
        assert_eq!(body.payload.as_deref(), Some(&b"pong"[..]));
        assert_eq!(enc(&body), parts[1]);

        let user_record = hex(
            "82a54572726f72a0a35365710185a8436f616c65736365c2a54576656e74a475736572a54c54696d6503a44e616d65a6
            70726f626532a75061796c6f6164c4027032",
        );
        let parts = frames(&user_record);
        let record: StreamRecord = dec(&parts[1]);
        assert_eq!(record.event_name(), "user");
        assert_eq!(enc(&record), parts[1]);
    }

    #[test]
    fn member_event_record_round_trips() {
        let record = StreamRecord::Member(MemberEventRecord {
            event: MemberEventType::Failed,
            members: vec![Member {
                addr: vec![127, 0, 0, 1],
                name: "a".into(),
                status: "failed".into(),
                ..Member::default()
            }],
        });
        let bytes = enc(&record);
        assert_eq!(dec::<StreamRecord>(&bytes), record);
        assert!(bytes.starts_with(&hex("82a54576656e74ad6d656d6265722d6661696c6564")));
    }

    #[test]
    fn decoding_is_as_lenient_as_go() {
        // Unknown keys skipped, missing keys default, nil is the zero value, payload as str,
        // integers in a wider form than needed, bool as 1.
        let value = rmpv::Value::Map(vec![
            ("Extra".into(), rmpv::Value::Array(vec![1.into(), 2.into()])),
            ("Name".into(), "deploy".into()),
            ("Payload".into(), "as-str".into()),
            ("Coalesce".into(), 1.into()),
        ]);
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, &value).unwrap();
        let body: EventRequest = dec(&bytes);
        assert_eq!(body.name, "deploy");
        assert_eq!(body.payload.as_deref(), Some(&b"as-str"[..]));
        assert!(body.coalesce);

        // {FilterNodes: nil, FilterTags: nil, Name: nil, Payload: nil, Timeout: u64 2s}
        let bytes = hex(
            "85ab46696c7465724e6f646573c0aa46696c74657254616773c0a44e616d65c0a75061796c6f6164c0
            a754696d656f7574cf0000000077359400",
        );
        let body: QueryRequest = dec(&bytes);
        assert_eq!(
            body,
            QueryRequest {
                timeout: Duration::from_secs(2),
                ..QueryRequest::default()
            }
        );

        // {Tags: nil, Addr: "str"} for a member.
        let bytes = hex("82a454616773c0a441646472a47f000001");
        let member: Member = dec(&bytes);
        assert_eq!(member.ip(), Some("127.0.0.1".parse().unwrap()));
        assert!(member.tags.is_empty());
    }

    #[test]
    fn string_fields_reject_bin_as_go_does() {
        // {Node: bin "x"}
        let bytes = hex("81a44e6f6465c40178");
        assert!(matches!(
            decode::<CoordinateRequest>(&bytes),
            Err(FrameError::Decode { .. })
        ));
        // {Command: "members", Seq: -1}: negative into unsigned.
        let bytes = hex("82a7436f6d6d616e64a76d656d62657273a3536571ff");
        assert!(decode::<RequestHeader>(&bytes).is_err());
        // {Version: 1} is not a header but still decodes: missing keys default.
        let header: RequestHeader = dec(&hex("81a756657273696f6e01"));
        assert_eq!(header, RequestHeader::default());
    }

    #[test]
    fn encoding_uses_str8_and_minimal_integers() {
        let long = "x".repeat(40);
        let bytes = enc(&AuthRequest {
            auth_key: long.clone(),
        });
        assert_eq!(&bytes[..11], &hex("81a7417574684b6579d928")[..]);
        let bytes = enc(&StopRequest { stop: 200 });
        assert_eq!(bytes, hex("81a453746f70ccc8"));
        let bytes = enc(&JoinResponse { num: 70000 });
        assert_eq!(bytes, hex("81a34e756dce00011170"));
        let bytes = enc(&EventRequest::default());
        assert_eq!(
            bytes,
            hex("83a8436f616c65736365c2a44e616d65a0a75061796c6f6164c0")
        );
        let bytes = enc(&EventRequest {
            payload: Some(Vec::new()),
            ..EventRequest::default()
        });
        assert!(bytes.ends_with(&hex("a75061796c6f6164c400")));
    }

    #[test]
    fn job_bodies_use_go_style_keys_and_round_trip() {
        assert_eq!(enc(&JobRequest { id: 3 }), hex("81a2494403"));
        let job = Job {
            arg: b"10".to_vec(),
            ended_ms: 0,
            error: String::new(),
            exit_status: -1,
            id: 3,
            name: "deploy".into(),
            output: vec!["1/10 s".into()],
            plugin: "longjob".into(),
            started_ms: 1_767_225_600_000,
            state: "running".into(),
            command: vec!["/bin/sleep".into(), "10".into()],
        };
        let list = JobsResponse {
            jobs: vec![job.clone()],
        };
        assert_eq!(dec::<JobsResponse>(&enc(&list)), list);
        let reply = JobResponse { job };
        assert_eq!(dec::<JobResponse>(&enc(&reply)), reply);
        let reaped = JobReapResponse { reaped: vec![1, 2] };
        assert_eq!(dec::<JobReapResponse>(&enc(&reaped)), reaped);
        // Go clients may send nil for the lists.
        assert_eq!(
            dec::<JobsResponse>(&hex("81a44a6f6273c0")),
            JobsResponse::default()
        );
        for command in [command::JOB_SHOW, command::JOB_KILL, command::JOB_REAP] {
            assert!(command_has_request_body(command) && command_has_response_body(command));
        }
        assert!(!command_has_request_body(command::JOBS_LIST));
        assert!(command_has_response_body(command::JOBS_LIST));
    }

    #[test]
    fn plugin_bodies_use_go_style_keys_and_round_trip() {
        assert_eq!(
            enc(&PluginRequest { name: "up".into() }),
            hex("81a44e616d65a27570")
        );
        let plugin = Plugin {
            capabilities: vec!["members".into()],
            counters: BTreeMap::from([("handled".into(), "2".into())]),
            dirs: BTreeMap::from([("/data".into(), "/var/data".into())]),
            env_keys: vec!["REGION".into()],
            events: "query:upcase".into(),
            limits: BTreeMap::from([("max_memory_mib".into(), "64".into())]),
            name: "upcase".into(),
            path: "plugins/upcase.wasm".into(),
            sha256: "ab".into(),
            state: "running".into(),
        };
        let list = PluginsResponse {
            plugins: vec![plugin.clone()],
        };
        assert_eq!(dec::<PluginsResponse>(&enc(&list)), list);
        let reply = PluginResponse { plugin };
        assert_eq!(dec::<PluginResponse>(&enc(&reply)), reply);
        // Go clients may send nil for the list.
        assert_eq!(
            dec::<PluginsResponse>(&hex("81a7506c7567696e73c0")),
            PluginsResponse::default()
        );
        assert!(command_has_request_body(command::PLUGIN_STATUS));
        assert!(!command_has_request_body(command::PLUGIN_LIST));
        assert!(command_has_response_body(command::PLUGIN_STATUS));
        assert!(command_has_response_body(command::PLUGIN_LIST));
    }

    #[test]
    fn body_presence_rules_match_serf() {
        for command in command::ALL {
            let request = command_has_request_body(command);
            let expected = !matches!(
                command,
                "members"
                    | "leave"
                    | "list-keys"
                    | "stats"
                    | "reload"
                    | "jobs-list"
                    | "plugin-list"
            );
            assert_eq!(request, expected, "{command}");
        }
        assert!(!command_has_request_body("nosuch"));
        assert!(command_has_response_body(command::JOIN));
        assert!(command_has_response_body(command::GET_COORDINATE));
        assert!(!command_has_response_body(command::STREAM));
        assert!(!command_has_response_body(command::QUERY));
        assert!(response_has_body(command::JOIN, "1 error occurred"));
        assert!(!response_has_body(command::MEMBERS, errors::AUTH_REQUIRED));
        assert!(!response_has_body(
            command::STATS,
            errors::HANDSHAKE_REQUIRED
        ));
        assert_eq!(errors::unknown_log_level("FOO"), "Unknown log level: FOO");
    }

    #[test]
    fn frame_reader_reports_truncation_oversize_and_garbage() {
        block_on(async {
            let bytes = hex("82a54572726f72a0a3536571");
            let mut reader = FrameReader::new(&bytes[..]);
            assert!(matches!(
                reader.read_frame().await,
                Err(FrameError::Truncated { buffered: 12 })
            ));

            let mut reader = FrameReader::with_max_frame_bytes(&b"\xdb\xff\xff\xff\xff"[..], 1024);
            assert!(matches!(
                reader.read_frame().await,
                Err(FrameError::TooLarge { max: 1024 })
            ));

            let mut reader = FrameReader::new(&b"\x91\xc1"[..]);
            assert!(matches!(
                reader.read_frame().await,
                Err(FrameError::InvalidMarker {
                    marker: 0xc1,
                    offset: 1
                })
            ));

            let deep = [0x91; MAX_NESTING_DEPTH + 2];
            let mut reader = FrameReader::new(&deep[..]);
            assert!(matches!(
                reader.read_frame().await,
                Err(FrameError::TooDeep { .. })
            ));

            // An array claiming 2^32-1 items is refused at once, not buffered.
            let mut reader = FrameReader::new(&b"\xdd\xff\xff\xff\xff\x01"[..]);
            assert!(matches!(
                reader.read_frame().await,
                Err(FrameError::TooLarge { .. })
            ));

            // A valid object of the wrong shape is a decode error, and is consumed.
            let bytes = hex("01 82a54572726f72a0a353657107");
            let mut reader = FrameReader::new(&bytes[..]);
            assert!(matches!(
                reader.read::<ResponseHeader>().await,
                Err(FrameError::Decode { .. })
            ));
            let header: Option<ResponseHeader> = reader.read().await.unwrap();
            assert_eq!(header, Some(ResponseHeader::ok(7)));
            assert_eq!(reader.read_value().await.unwrap(), None);
        });
    }

    #[test]
    fn frame_reader_yields_values() {
        block_on(async {
            let bytes = hex("93 01 a178 c0 c3");
            let mut reader = FrameReader::new(&bytes[..]);
            let value = reader.read_value().await.unwrap().unwrap();
            assert_eq!(
                value,
                rmpv::Value::Array(vec![1.into(), "x".into(), rmpv::Value::Nil])
            );
            assert_eq!(reader.buffered(), &[0xc3]);
            assert_eq!(
                reader.read_value().await.unwrap(),
                Some(rmpv::Value::Boolean(true))
            );
        });
    }

    /// Every captured stream from section 7.15/7.16, concatenated.
    fn captured_stream() -> Vec<u8> {
        hex(
            "82a54572726f72a0a35365710182a54572726f72a0a35365710282a54572726f72a0a35365710283a446726f6da161a7
            5061796c6f6164c0a454797065a361636b82a54572726f72a0a35365710283a446726f6da161a75061796c6f6164c40c
            726573702d66726f6d2d610aa454797065a8726573706f6e736582a54572726f72a0a35365710283a446726f6da162a7
            5061796c6f6164c0a454797065a361636b82a54572726f72a0a35365710283a446726f6da0a75061796c6f6164c0a454
            797065a4646f6e65
            82a54572726f72a0a35365710482a5436f6f726484aa41646a7573746d656e74cb3efae94a223f9f90a54572726f72cb
            3fd766f41fbd04c6a6486569676874cb3f12e14c8dbfd61fa356656398cbbef5500cfbdf3166cbbf081404ccb0b7c4cb
            bef7b188c0734b2ecbbf06d9cc2b3d971dcb3f0567ba0b398670cbbf08a70c8000b1c7cb3ea9fc2ecf537f39cb3f06a4
            5afaeaf865a24f6bc3",
        )
    }

    #[test]
    fn split_reads_at_every_position_give_the_same_frames() {
        let stream = captured_stream();
        let whole = frames(&stream);
        assert_eq!(whole.len(), 12);
        block_on(async {
            for split in 0..=stream.len() {
                let reader = (&stream[..split]).chain(&stream[split..]);
                let mut reader = FrameReader::new(reader);
                let mut got = Vec::new();
                while let Some(frame) = reader.read_frame().await.unwrap() {
                    got.push(frame);
                }
                assert_eq!(got, whole, "split at {split}");
            }
        });
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_frame_reader(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            block_on(async {
                let mut reader = FrameReader::with_max_frame_bytes(&bytes[..], 256);
                for _ in 0..bytes.len() + 1 {
                    match reader.read::<StreamRecord>().await {
                        Ok(None) => break,
                        Ok(Some(_)) | Err(FrameError::Decode { .. }) => {}
                        Err(_) => break,
                    }
                }
                let mut reader = FrameReader::new(&bytes[..]);
                while let Ok(Some(_)) = reader.read_value().await {}
            });
        }

        #[test]
        fn arbitrary_chunking_gives_the_same_frames(cuts in proptest::collection::vec(0_usize..700, 0..6)) {
            let stream = captured_stream();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(stream.len())).collect();
            cuts.sort_unstable();
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut start = 0;
            for cut in cuts {
                chunks.push(&stream[start..cut]);
                start = cut;
            }
            chunks.push(&stream[start..]);
            let got = block_on(async {
                let mut reader = FrameReader::new(Chunked(chunks));
                let mut got = Vec::new();
                while let Some(frame) = reader.read_frame().await.unwrap() {
                    got.push(frame);
                }
                got
            });
            proptest::prop_assert_eq!(got, frames(&stream));
        }
    }

    /// An `AsyncRead` that returns its chunks one read at a time.
    struct Chunked<'a>(Vec<&'a [u8]>);

    impl AsyncRead for Chunked<'_> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            while let Some(chunk) = self.0.first_mut() {
                if chunk.is_empty() {
                    self.0.remove(0);
                    continue;
                }
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                *chunk = &chunk[n..];
                break;
            }
            std::task::Poll::Ready(Ok(()))
        }
    }
}
