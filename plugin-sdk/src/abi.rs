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
    /// Not allowed here: `respond` outside a query, or a second time for the same query.
    NotAllowed = -3,
    /// The payload is over its limit (a query response over Serf's size limit).
    TooLarge = -4,
    /// Too many calls in too short a time; try later.
    RateLimited = -5,
    /// The thing named does not exist.
    NotFound = -6,
    /// The host cannot take it now (shutting down, a queue is full).
    Unavailable = -7,
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
        ] {
            assert_eq!(Status::from_code(status.code()), Some(status));
        }
        assert_eq!(Status::from_code(-99), None);
    }
}
