//! Serf's gossip messages (reference 3.1, 3.2, 3.4, 2.13) and their msgpack codec.
//!
//! These are the bodies Serf sends inside memberlist user messages (`[serf type] ++ msgpack`),
//! the push/pull user state, query filters, the payloads of internal queries (conflict and key
//! management), tags in node meta and the coordinate in ack payloads. Encoding is byte-exact
//! with Serf's (keys sorted, go-msgpack gossip dialect); decoding accepts anything Serf would.
//! Nothing here decides what a message means: the Serf core does.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use rmpv::Value;

use super::{LamportTime, Member, MemberStatus, NodeName, ProtocolVersions, Tags};
use serf_gossip::DecodeError;
use serf_gossip::msgpack::{
    Encoder, Fields, Val, body_error, decode_struct, read_map_len, read_value,
};

/// The first byte of a Serf message (reference 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    Leave = 0,
    Join = 1,
    PushPull = 2,
    UserEvent = 3,
    Query = 4,
    QueryResponse = 5,
    ConflictResponse = 6,
    KeyRequest = 7,
    KeyResponse = 8,
    Relay = 9,
}

impl MessageType {
    /// The type named by a message's first byte, if Serf 0.9.4 knows it.
    pub fn from_byte(byte: u8) -> Option<MessageType> {
        use MessageType::*;
        Some(match byte {
            0 => Leave,
            1 => Join,
            2 => PushPull,
            3 => UserEvent,
            4 => Query,
            5 => QueryResponse,
            6 => ConflictResponse,
            7 => KeyRequest,
            8 => KeyResponse,
            9 => Relay,
            _ => return None,
        })
    }
}

/// Slots in the push/pull `Events` ring (Serf's `EventBuffer`).
pub const EVENT_BUFFER_SLOTS: usize = 512;

/// Query flag: every node that processes the query acks it.
pub const QUERY_FLAG_ACK: u32 = 1;
/// Query flag: receivers process the query but do not gossip it on.
pub const QUERY_FLAG_NO_BROADCAST: u32 = 2;
/// Query-response flag: this is an ack (no payload).
pub const QUERY_RESPONSE_FLAG_ACK: u32 = 1;

/// Leave intent (0): `node` is leaving (or, with `prune`, is to be erased).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaveIntent {
    pub ltime: LamportTime,
    pub node: NodeName,
    pub prune: bool,
}

/// Join intent (1).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JoinIntent {
    pub ltime: LamportTime,
    pub node: NodeName,
}

/// One user event remembered in the push/pull event ring.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserEventEntry {
    pub name: String,
    pub payload: Vec<u8>,
}

/// The user events seen at one Lamport time.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserEvents {
    pub ltime: LamportTime,
    pub events: Vec<UserEventEntry>,
}

/// The push/pull user state (2): Serf's clocks, member intents and recent events.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PushPullState {
    /// Member clock.
    pub ltime: LamportTime,
    /// Latest intent time per member.
    pub status_ltimes: BTreeMap<NodeName, LamportTime>,
    /// Members that left.
    pub left_members: Vec<NodeName>,
    /// Event clock.
    pub event_ltime: LamportTime,
    /// The event ring; encoded as exactly [`EVENT_BUFFER_SLOTS`] slots (padded with nil or
    /// cut), decoded at whatever length arrived.
    pub events: Vec<Option<UserEvents>>,
    /// Query clock.
    pub query_ltime: LamportTime,
    /// Our extension (`OlderEvents`, encoded only when not empty; Serf skips unknown keys):
    /// the events of the event window older than the 512 Lamport times `events` carries, so
    /// that a node that missed some of a long burst gets them at its next push/pull.
    pub older_events: Vec<UserEvents>,
}

/// A user event (3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserEventMsg {
    pub ltime: LamportTime,
    pub name: String,
    pub payload: Vec<u8>,
    /// The sender allows coalescing.
    pub cc: bool,
}

/// A query (4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryMsg {
    pub ltime: LamportTime,
    pub id: u32,
    /// Where responses go.
    pub addr: IpAddr,
    pub port: u16,
    pub source_node: NodeName,
    /// Each `[filter type] ++ msgpack` (see [`QueryFilter`]); empty is encoded as nil.
    pub filters: Vec<Vec<u8>>,
    /// [`QUERY_FLAG_ACK`], [`QUERY_FLAG_NO_BROADCAST`].
    pub flags: u32,
    pub relay_factor: u8,
    /// Encoded as int64 nanoseconds; a negative value on the wire decodes as zero.
    pub timeout: Duration,
    pub name: String,
    pub payload: Vec<u8>,
}

/// A query response or ack (5).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueryResponseMsg {
    pub ltime: LamportTime,
    pub id: u32,
    pub from: NodeName,
    /// [`QUERY_RESPONSE_FLAG_ACK`] for an ack.
    pub flags: u32,
    /// `None` (nil) for acks.
    pub payload: Option<Vec<u8>>,
}

/// The payload of a response to `_serf_conflict` (6): the responder's view of the node, or nil.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflictResponse {
    pub member: Option<Member>,
}

/// The payload of a key-management query (7).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyRequest {
    pub key: Vec<u8>,
}

/// The payload of a response to a key-management query (8).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyResponse {
    pub result: bool,
    pub message: String,
    /// Installed keys (base64) for list queries; `None` is nil.
    pub keys: Option<Vec<String>>,
    pub primary_key: String,
}

/// The header of a relayed message (9); the inner Serf message follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayHeader {
    /// Encoded as `{IP, Port, Zone: ""}`; a zone on the wire is ignored.
    pub dest_addr: SocketAddr,
    pub dest_name: NodeName,
}

/// A query filter (reference 3.2), carried in [`QueryMsg::filters`] as its encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryFilter {
    /// Type 0: only these nodes process the query.
    Nodes(Vec<NodeName>),
    /// Type 1: only nodes whose tag `tag` matches the (unanchored) regex `expr`.
    Tag { tag: String, expr: String },
}

/// A Serf message as gossiped or sent point-to-point inside a memberlist user message, or
/// the push/pull user state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerfMessage {
    Leave(LeaveIntent),
    Join(JoinIntent),
    PushPull(PushPullState),
    UserEvent(UserEventMsg),
    Query(QueryMsg),
    QueryResponse(QueryResponseMsg),
    /// A message to forward: `message` starts with the inner Serf type byte.
    Relay {
        header: RelayHeader,
        message: Vec<u8>,
    },
}

// Go field names in declaration order: the positional layout of array-encoded structs.
const LEAVE_FIELDS: &[&str] = &["LTime", "Node", "Prune"];
const JOIN_FIELDS: &[&str] = &["LTime", "Node"];
const PUSH_PULL_FIELDS: &[&str] = &[
    "LTime",
    "StatusLTimes",
    "LeftMembers",
    "EventLTime",
    "Events",
    "QueryLTime",
    "OlderEvents",
];
const USER_EVENTS_FIELDS: &[&str] = &["LTime", "Events"];
const USER_EVENT_ENTRY_FIELDS: &[&str] = &["Name", "Payload"];
const USER_EVENT_FIELDS: &[&str] = &["LTime", "Name", "Payload", "CC"];
const QUERY_FIELDS: &[&str] = &[
    "LTime",
    "ID",
    "Addr",
    "Port",
    "SourceNode",
    "Filters",
    "Flags",
    "RelayFactor",
    "Timeout",
    "Name",
    "Payload",
];
const QUERY_RESPONSE_FIELDS: &[&str] = &["LTime", "ID", "From", "Flags", "Payload"];
const MEMBER_FIELDS: &[&str] = &[
    "Name",
    "Addr",
    "Port",
    "Tags",
    "Status",
    "ProtocolMin",
    "ProtocolMax",
    "ProtocolCur",
    "DelegateMin",
    "DelegateMax",
    "DelegateCur",
];
const KEY_REQUEST_FIELDS: &[&str] = &["Key"];
const KEY_RESPONSE_FIELDS: &[&str] = &["Result", "Message", "Keys", "PrimaryKey"];
const RELAY_FIELDS: &[&str] = &["DestAddr", "DestName"];
const UDP_ADDR_FIELDS: &[&str] = &["IP", "Port", "Zone"];
const TAG_FILTER_FIELDS: &[&str] = &["Tag", "Expr"];
const COORDINATE_FIELDS: &[&str] = &["Vec", "Error", "Adjustment", "Height"];

/// Splits off the type byte, which must be `kind`.
fn expect_type(bytes: &[u8], kind: MessageType) -> Result<&[u8], DecodeError> {
    let (&byte, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if byte != kind as u8 {
        return Err(DecodeError::UnknownType(byte));
    }
    Ok(body)
}

/// A `map[string]string` with keys sorted (Go's order is random; any order decodes).
fn write_string_map(e: &mut Encoder, map: &BTreeMap<String, String>) {
    e.map(map.len());
    for (key, value) in map {
        e.str(key).str(value);
    }
}

fn read_string_map(val: Val<'_>) -> Result<BTreeMap<String, String>, DecodeError> {
    val.map()?
        .into_iter()
        .map(|(key, value)| Ok((key.string()?, value.string()?)))
        .collect()
}

fn duration_nanos(duration: Duration) -> i64 {
    i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX)
}

impl LeaveIntent {
    /// `[0]` + `{LTime, Node, Prune}`.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::with_type(MessageType::Leave as u8);
        e.map(3)
            .str("LTime")
            .uint(self.ltime)
            .str("Node")
            .str(&self.node)
            .str("Prune")
            .bool(self.prune);
        e.into_inner()
    }

    /// Decodes `[0] ++ msgpack`.
    pub fn decode(bytes: &[u8]) -> Result<LeaveIntent, DecodeError> {
        Self::decode_body(expect_type(bytes, MessageType::Leave)?)
    }

    fn decode_body(body: &[u8]) -> Result<LeaveIntent, DecodeError> {
        decode_struct(body, "leave intent", LEAVE_FIELDS, |f| {
            Ok(LeaveIntent {
                ltime: f.uint("LTime")?,
                node: f.string("Node")?,
                prune: f.bool("Prune")?,
            })
        })
    }
}

impl JoinIntent {
    /// `[1]` + `{LTime, Node}`.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::with_type(MessageType::Join as u8);
        e.map(2)
            .str("LTime")
            .uint(self.ltime)
            .str("Node")
            .str(&self.node);
        e.into_inner()
    }

    /// Decodes `[1] ++ msgpack`.
    pub fn decode(bytes: &[u8]) -> Result<JoinIntent, DecodeError> {
        Self::decode_body(expect_type(bytes, MessageType::Join)?)
    }

    fn decode_body(body: &[u8]) -> Result<JoinIntent, DecodeError> {
        decode_struct(body, "join intent", JOIN_FIELDS, |f| {
            Ok(JoinIntent {
                ltime: f.uint("LTime")?,
                node: f.string("Node")?,
            })
        })
    }
}

impl UserEvents {
    /// `{Events: [{Name, Payload}…], LTime}`.
    fn write(&self, e: &mut Encoder) {
        e.map(2).str("Events").array(self.events.len());
        for event in &self.events {
            e.map(2)
                .str("Name")
                .str(&event.name)
                .str("Payload")
                .raw(&event.payload);
        }
        e.str("LTime").uint(self.ltime);
    }

    fn read(f: &Fields<'_>) -> Result<UserEvents, DecodeError> {
        let events = f
            .get("Events")
            .array()?
            .into_iter()
            .map(|entry| {
                let entry = entry.fields(USER_EVENT_ENTRY_FIELDS)?;
                Ok(UserEventEntry {
                    name: entry.string("Name")?,
                    payload: entry.bytes("Payload")?,
                })
            })
            .collect::<Result<_, DecodeError>>()?;
        Ok(UserEvents {
            ltime: f.uint("LTime")?,
            events,
        })
    }
}

impl PushPullState {
    /// `[2]` + `{EventLTime, Events, LTime, LeftMembers, [OlderEvents,] QueryLTime,
    /// StatusLTimes}`.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::with_type(MessageType::PushPull as u8);
        e.map(if self.older_events.is_empty() { 6 } else { 7 })
            .str("EventLTime")
            .uint(self.event_ltime)
            .str("Events")
            .array(EVENT_BUFFER_SLOTS);
        for slot in 0..EVENT_BUFFER_SLOTS {
            match self.events.get(slot) {
                Some(Some(events)) => events.write(&mut e),
                _ => {
                    e.nil();
                }
            }
        }
        e.str("LTime")
            .uint(self.ltime)
            .str("LeftMembers")
            .array(self.left_members.len());
        for member in &self.left_members {
            e.str(member);
        }
        if !self.older_events.is_empty() {
            e.str("OlderEvents").array(self.older_events.len());
            for events in &self.older_events {
                events.write(&mut e);
            }
        }
        e.str("QueryLTime")
            .uint(self.query_ltime)
            .str("StatusLTimes")
            .map(self.status_ltimes.len());
        for (node, ltime) in &self.status_ltimes {
            e.str(node).uint(*ltime);
        }
        e.into_inner()
    }

    /// Decodes `[2] ++ msgpack`.
    pub fn decode(bytes: &[u8]) -> Result<PushPullState, DecodeError> {
        Self::decode_body(expect_type(bytes, MessageType::PushPull)?)
    }

    fn decode_body(body: &[u8]) -> Result<PushPullState, DecodeError> {
        decode_struct(body, "push/pull state", PUSH_PULL_FIELDS, |f| {
            let events = f
                .get("Events")
                .array()?
                .into_iter()
                .map(|slot| match slot.opt_fields(USER_EVENTS_FIELDS)? {
                    Some(fields) => UserEvents::read(&fields).map(Some),
                    None => Ok(None),
                })
                .collect::<Result<_, DecodeError>>()?;
            let older_events = f
                .get("OlderEvents")
                .array()?
                .into_iter()
                .map(|entry| UserEvents::read(&entry.fields(USER_EVENTS_FIELDS)?))
                .collect::<Result<_, DecodeError>>()?;
            let status_ltimes = f
                .get("StatusLTimes")
                .map()?
                .into_iter()
                .map(|(node, ltime)| Ok((node.string()?, ltime.uint()?)))
                .collect::<Result<_, DecodeError>>()?;
            Ok(PushPullState {
                ltime: f.uint("LTime")?,
                status_ltimes,
                left_members: f.get("LeftMembers").strings()?,
                event_ltime: f.uint("EventLTime")?,
                events,
                query_ltime: f.uint("QueryLTime")?,
                older_events,
            })
        })
    }
}

impl UserEventMsg {
    /// `[3]` + `{CC, LTime, Name, Payload}`.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::with_type(MessageType::UserEvent as u8);
        e.map(4)
            .str("CC")
            .bool(self.cc)
            .str("LTime")
            .uint(self.ltime)
            .str("Name")
            .str(&self.name)
            .str("Payload")
            .raw(&self.payload);
        e.into_inner()
    }

    /// Decodes `[3] ++ msgpack`.
    pub fn decode(bytes: &[u8]) -> Result<UserEventMsg, DecodeError> {
        Self::decode_body(expect_type(bytes, MessageType::UserEvent)?)
    }

    fn decode_body(body: &[u8]) -> Result<UserEventMsg, DecodeError> {
        decode_struct(body, "user event", USER_EVENT_FIELDS, |f| {
            Ok(UserEventMsg {
                ltime: f.uint("LTime")?,
                name: f.string("Name")?,
                payload: f.bytes("Payload")?,
                cc: f.bool("CC")?,
            })
        })
    }
}

impl QueryMsg {
    /// `[4]` + `{Addr, Filters, Flags, ID, LTime, Name, Payload, Port, RelayFactor,
    /// SourceNode, Timeout}`.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::with_type(MessageType::Query as u8);
        e.map(11).str("Addr").ip(&self.addr).str("Filters");
        if self.filters.is_empty() {
            e.nil();
        } else {
            e.array(self.filters.len());
            for filter in &self.filters {
                e.raw(filter);
            }
        }
        e.str("Flags")
            .uint(u64::from(self.flags))
            .str("ID")
            .uint(u64::from(self.id))
            .str("LTime")
            .uint(self.ltime)
            .str("Name")
            .str(&self.name)
            .str("Payload")
            .raw(&self.payload)
            .str("Port")
            .uint(u64::from(self.port))
            .str("RelayFactor")
            .uint(u64::from(self.relay_factor))
            .str("SourceNode")
            .str(&self.source_node)
            .str("Timeout")
            .int(duration_nanos(self.timeout));
        e.into_inner()
    }

    /// Decodes `[4] ++ msgpack`.
    pub fn decode(bytes: &[u8]) -> Result<QueryMsg, DecodeError> {
        Self::decode_body(expect_type(bytes, MessageType::Query)?)
    }

    fn decode_body(body: &[u8]) -> Result<QueryMsg, DecodeError> {
        decode_struct(body, "query", QUERY_FIELDS, |f| {
            let filters = f
                .get("Filters")
                .array()?
                .iter()
                .map(Val::bytes)
                .collect::<Result<_, _>>()?;
            let timeout_ns: i64 = f.int("Timeout")?;
            Ok(QueryMsg {
                ltime: f.uint("LTime")?,
                id: f.uint("ID")?,
                addr: f.get("Addr").ip()?,
                port: f.uint("Port")?,
                source_node: f.string("SourceNode")?,
                filters,
                flags: f.uint("Flags")?,
                relay_factor: f.uint("RelayFactor")?,
                timeout: Duration::from_nanos(u64::try_from(timeout_ns).unwrap_or(0)),
                name: f.string("Name")?,
                payload: f.bytes("Payload")?,
            })
        })
    }

    /// Whether the querier asked for acks.
    pub fn wants_ack(&self) -> bool {
        self.flags & QUERY_FLAG_ACK != 0
    }

    /// Whether receivers must not gossip the query on.
    pub fn no_broadcast(&self) -> bool {
        self.flags & QUERY_FLAG_NO_BROADCAST != 0
    }
}

impl QueryResponseMsg {
    /// `[5]` + `{Flags, From, ID, LTime, Payload}`.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::with_type(MessageType::QueryResponse as u8);
        e.map(5)
            .str("Flags")
            .uint(u64::from(self.flags))
            .str("From")
            .str(&self.from)
            .str("ID")
            .uint(u64::from(self.id))
            .str("LTime")
            .uint(self.ltime)
            .str("Payload")
            .opt_raw(self.payload.as_deref());
        e.into_inner()
    }

    /// Decodes `[5] ++ msgpack`.
    pub fn decode(bytes: &[u8]) -> Result<QueryResponseMsg, DecodeError> {
        Self::decode_body(expect_type(bytes, MessageType::QueryResponse)?)
    }

    fn decode_body(body: &[u8]) -> Result<QueryResponseMsg, DecodeError> {
        decode_struct(body, "query response", QUERY_RESPONSE_FIELDS, |f| {
            Ok(QueryResponseMsg {
                ltime: f.uint("LTime")?,
                id: f.uint("ID")?,
                from: f.string("From")?,
                flags: f.uint("Flags")?,
                payload: f.opt_bytes("Payload")?,
            })
        })
    }

    /// Whether this is an ack rather than a response.
    pub fn is_ack(&self) -> bool {
        self.flags & QUERY_RESPONSE_FLAG_ACK != 0
    }
}

/// Serf's numbering of member statuses on the wire.
fn status_code(status: MemberStatus) -> u64 {
    match status {
        MemberStatus::None => 0,
        MemberStatus::Alive => 1,
        MemberStatus::Leaving => 2,
        MemberStatus::Left => 3,
        MemberStatus::Failed => 4,
    }
}

/// The status for a wire code; codes Serf does not define are `None`.
fn status_from_code(code: i64) -> MemberStatus {
    match code {
        1 => MemberStatus::Alive,
        2 => MemberStatus::Leaving,
        3 => MemberStatus::Left,
        4 => MemberStatus::Failed,
        _ => MemberStatus::None,
    }
}

/// `{Addr, DelegateCur, DelegateMax, DelegateMin, Name, Port, ProtocolCur, ProtocolMax,
/// ProtocolMin, Status, Tags}`.
fn write_member(e: &mut Encoder, member: &Member) {
    let [pmin, pmax, pcur] = member.versions.protocol;
    let [dmin, dmax, dcur] = member.versions.delegate;
    e.map(11)
        .str("Addr")
        .ip(&member.addr.ip())
        .str("DelegateCur")
        .uint(u64::from(dcur))
        .str("DelegateMax")
        .uint(u64::from(dmax))
        .str("DelegateMin")
        .uint(u64::from(dmin))
        .str("Name")
        .str(&member.name)
        .str("Port")
        .uint(u64::from(member.addr.port()))
        .str("ProtocolCur")
        .uint(u64::from(pcur))
        .str("ProtocolMax")
        .uint(u64::from(pmax))
        .str("ProtocolMin")
        .uint(u64::from(pmin))
        .str("Status")
        .uint(status_code(member.status))
        .str("Tags");
    write_string_map(e, &member.tags);
}

/// A member; a missing address reads as 0.0.0.0 (it then matches no real node).
fn read_member(f: &Fields<'_>) -> Result<Member, DecodeError> {
    let ip = f
        .get("Addr")
        .opt_ip()?
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    Ok(Member {
        name: f.string("Name")?,
        addr: SocketAddr::new(ip, f.uint("Port")?),
        tags: read_string_map(f.get("Tags"))?,
        status: status_from_code(f.int("Status")?),
        versions: ProtocolVersions {
            protocol: [
                f.uint("ProtocolMin")?,
                f.uint("ProtocolMax")?,
                f.uint("ProtocolCur")?,
            ],
            delegate: [
                f.uint("DelegateMin")?,
                f.uint("DelegateMax")?,
                f.uint("DelegateCur")?,
            ],
        },
    })
}

impl ConflictResponse {
    /// `[6]` + member map, or `[6 c0]` without a member.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::with_type(MessageType::ConflictResponse as u8);
        match &self.member {
            Some(member) => write_member(&mut e, member),
            None => {
                e.nil();
            }
        }
        e.into_inner()
    }

    /// Decodes `[6] ++ msgpack`.
    pub fn decode(bytes: &[u8]) -> Result<ConflictResponse, DecodeError> {
        const WHAT: &str = "conflict response";
        let mut body = expect_type(bytes, MessageType::ConflictResponse)?;
        let value = read_value(&mut body, WHAT)?;
        let member = match Val::new(&value, WHAT, "member").opt_fields(MEMBER_FIELDS)? {
            Some(fields) => Some(read_member(&fields)?),
            None => None,
        };
        Ok(ConflictResponse { member })
    }
}

impl KeyRequest {
    /// `[7]` + `{Key}`.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::with_type(MessageType::KeyRequest as u8);
        e.map(1).str("Key").raw(&self.key);
        e.into_inner()
    }

    /// Decodes `[7] ++ msgpack`.
    pub fn decode(bytes: &[u8]) -> Result<KeyRequest, DecodeError> {
        let body = expect_type(bytes, MessageType::KeyRequest)?;
        decode_struct(body, "key request", KEY_REQUEST_FIELDS, |f| {
            Ok(KeyRequest {
                key: f.bytes("Key")?,
            })
        })
    }
}

impl KeyResponse {
    /// `[8]` + `{Keys, Message, PrimaryKey, Result}`.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::with_type(MessageType::KeyResponse as u8);
        e.map(4).str("Keys");
        match &self.keys {
            Some(keys) => {
                e.array(keys.len());
                for key in keys {
                    e.str(key);
                }
            }
            None => {
                e.nil();
            }
        }
        e.str("Message")
            .str(&self.message)
            .str("PrimaryKey")
            .str(&self.primary_key)
            .str("Result")
            .bool(self.result);
        e.into_inner()
    }

    /// Decodes `[8] ++ msgpack`.
    pub fn decode(bytes: &[u8]) -> Result<KeyResponse, DecodeError> {
        let body = expect_type(bytes, MessageType::KeyResponse)?;
        decode_struct(body, "key response", KEY_RESPONSE_FIELDS, |f| {
            let keys = match f.get("Keys").opt_array()? {
                Some(keys) => Some(keys.iter().map(Val::string).collect::<Result<_, _>>()?),
                None => None,
            };
            Ok(KeyResponse {
                result: f.bool("Result")?,
                message: f.string("Message")?,
                keys,
                primary_key: f.string("PrimaryKey")?,
            })
        })
    }
}

impl RelayHeader {
    /// `[9]` + `{DestAddr: {IP, Port, Zone}, DestName}` + `message` (which starts with the
    /// inner Serf type byte).
    pub fn encode(&self, message: &[u8]) -> Vec<u8> {
        let mut e = Encoder::with_type(MessageType::Relay as u8);
        e.map(2)
            .str("DestAddr")
            .map(3)
            .str("IP")
            .ip(&self.dest_addr.ip())
            .str("Port")
            .uint(u64::from(self.dest_addr.port()))
            .str("Zone")
            .str("")
            .str("DestName")
            .str(&self.dest_name)
            .bytes(message);
        e.into_inner()
    }

    /// Decodes `[9] ++ header ++ message`, returning the header and the message.
    pub fn decode(bytes: &[u8]) -> Result<(RelayHeader, &[u8]), DecodeError> {
        Self::decode_body(expect_type(bytes, MessageType::Relay)?)
    }

    fn decode_body(mut body: &[u8]) -> Result<(RelayHeader, &[u8]), DecodeError> {
        let mut slot = None;
        let f = Fields::read(&mut body, "relay header", RELAY_FIELDS, &mut slot)?;
        let dest = f.get("DestAddr").fields(UDP_ADDR_FIELDS)?;
        let header = RelayHeader {
            dest_addr: SocketAddr::new(dest.get("IP").ip()?, dest.int("Port")?),
            dest_name: f.string("DestName")?,
        };
        Ok((header, body))
    }
}

impl QueryFilter {
    /// The filter's type byte (0 nodes, 1 tag).
    pub fn type_byte(&self) -> u8 {
        match self {
            QueryFilter::Nodes(_) => 0,
            QueryFilter::Tag { .. } => 1,
        }
    }

    /// `[0]` + array of names, or `[1]` + `{Expr, Tag}`.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::with_type(self.type_byte());
        match self {
            QueryFilter::Nodes(nodes) => {
                e.array(nodes.len());
                for node in nodes {
                    e.str(node);
                }
            }
            QueryFilter::Tag { tag, expr } => {
                e.map(2).str("Expr").str(expr).str("Tag").str(tag);
            }
        }
        e.into_inner()
    }

    /// Decodes one filter; an unknown filter type is an error (Serf then skips the query).
    pub fn decode(bytes: &[u8]) -> Result<QueryFilter, DecodeError> {
        const WHAT: &str = "query filter";
        let (&kind, mut body) = bytes.split_first().ok_or(DecodeError::Empty)?;
        let value = read_value(&mut body, WHAT)?;
        let val = Val::new(&value, WHAT, "filter");
        match kind {
            0 => Ok(QueryFilter::Nodes(val.strings()?)),
            1 => {
                let f = val.fields(TAG_FILTER_FIELDS)?;
                Ok(QueryFilter::Tag {
                    tag: f.string("Tag")?,
                    expr: f.string("Expr")?,
                })
            }
            other => Err(body_error(WHAT, format!("unknown filter type {other}"))),
        }
    }
}

impl SerfMessage {
    /// The type byte followed by the msgpack body (for a relay, header then inner message).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            SerfMessage::Leave(m) => m.encode(),
            SerfMessage::Join(m) => m.encode(),
            SerfMessage::PushPull(m) => m.encode(),
            SerfMessage::UserEvent(m) => m.encode(),
            SerfMessage::Query(m) => m.encode(),
            SerfMessage::QueryResponse(m) => m.encode(),
            SerfMessage::Relay { header, message } => header.encode(message),
        }
    }

    /// Decodes a message whose first byte is its Serf type. Types 6–8 only occur inside query
    /// payloads and are `UnknownType` here, like any other byte. Bytes after the msgpack body
    /// are ignored (except for a relay, where they are the inner message).
    pub fn decode(bytes: &[u8]) -> Result<SerfMessage, DecodeError> {
        let (&byte, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
        match MessageType::from_byte(byte) {
            Some(MessageType::Leave) => LeaveIntent::decode_body(body).map(SerfMessage::Leave),
            Some(MessageType::Join) => JoinIntent::decode_body(body).map(SerfMessage::Join),
            Some(MessageType::PushPull) => {
                PushPullState::decode_body(body).map(SerfMessage::PushPull)
            }
            Some(MessageType::UserEvent) => {
                UserEventMsg::decode_body(body).map(SerfMessage::UserEvent)
            }
            Some(MessageType::Query) => QueryMsg::decode_body(body).map(SerfMessage::Query),
            Some(MessageType::QueryResponse) => {
                QueryResponseMsg::decode_body(body).map(SerfMessage::QueryResponse)
            }
            Some(MessageType::Relay) => {
                let (header, message) = RelayHeader::decode_body(body)?;
                Ok(SerfMessage::Relay {
                    header,
                    message: message.to_vec(),
                })
            }
            _ => Err(DecodeError::UnknownType(byte)),
        }
    }
}

/// The first byte of node meta that holds encoded tags (Serf protocol ≥ 3).
pub const TAGS_MAGIC_BYTE: u8 = 0xff;

/// Tags as node meta: `0xff` + a msgpack map with keys sorted. Checking the 512-byte meta
/// limit is the caller's job.
pub fn encode_tags(tags: &Tags) -> Vec<u8> {
    let mut e = Encoder::with_type(TAGS_MAGIC_BYTE);
    write_string_map(&mut e, tags);
    e.into_inner()
}

/// Tags from node meta. Meta that is empty or does not start with `0xff` is the `role` tag
/// (Serf protocol 2); a map that fails to decode part-way keeps the entries before the fault.
pub fn decode_tags(meta: &[u8]) -> Tags {
    let mut tags = Tags::new();
    let Some((&TAGS_MAGIC_BYTE, mut input)) = meta.split_first() else {
        tags.insert(
            "role".to_owned(),
            String::from_utf8_lossy(meta).into_owned(),
        );
        return tags;
    };
    const WHAT: &str = "tags";
    let Ok(Some(len)) = read_map_len(&mut input, WHAT) else {
        return tags;
    };
    for _ in 0..len {
        let entry = read_value(&mut input, WHAT).and_then(|key| {
            let value = read_value(&mut input, WHAT)?;
            Ok((
                Val::new(&key, WHAT, "key").string()?,
                Val::new(&value, WHAT, "value").string()?,
            ))
        });
        match entry {
            Ok((key, value)) => {
                tags.insert(key, value);
            }
            Err(error) => {
                tracing::debug!(%error, "node meta tags cut short");
                break;
            }
        }
    }
    tags
}

/// A Vivaldi network coordinate (reference 3.15).
#[derive(Debug, Clone, PartialEq)]
pub struct Coordinate {
    /// Euclidean part, seconds; [`COORDINATE_DIMENSIONS`] entries from Serf, but a decoded
    /// coordinate keeps whatever length arrived.
    pub vec: Vec<f64>,
    pub error: f64,
    pub adjustment: f64,
    pub height: f64,
}

/// Dimensions of Serf's coordinates.
pub const COORDINATE_DIMENSIONS: usize = 8;

/// The version byte that starts a ping (ack) payload.
pub const PING_VERSION: u8 = 1;

impl Coordinate {
    /// A new node's coordinate: the origin, error 1.5, no adjustment, height 1e-5.
    pub fn new() -> Coordinate {
        Coordinate {
            vec: vec![0.0; COORDINATE_DIMENSIONS],
            error: 1.5,
            adjustment: 0.0,
            height: 1.0e-5,
        }
    }

    /// `{Adjustment, Error, Height, Vec}`.
    fn write(&self, e: &mut Encoder) {
        e.map(4)
            .str("Adjustment")
            .f64(self.adjustment)
            .str("Error")
            .f64(self.error)
            .str("Height")
            .f64(self.height)
            .str("Vec")
            .array(self.vec.len());
        for component in &self.vec {
            e.f64(*component);
        }
    }

    fn read(value: &Value, what: &'static str) -> Result<Coordinate, DecodeError> {
        let f = Fields::new(value, what, COORDINATE_FIELDS)?;
        Ok(Coordinate {
            vec: f
                .get("Vec")
                .array()?
                .iter()
                .map(Val::f64)
                .collect::<Result<_, _>>()?,
            error: f.f64("Error")?,
            adjustment: f.f64("Adjustment")?,
            height: f.f64("Height")?,
        })
    }
}

impl Default for Coordinate {
    fn default() -> Coordinate {
        Coordinate::new()
    }
}

/// The ack payload Serf sends: `[1]` + the coordinate.
pub fn encode_ping_payload(coordinate: &Coordinate) -> Vec<u8> {
    let mut e = Encoder::with_type(PING_VERSION);
    coordinate.write(&mut e);
    e.into_inner()
}

/// The coordinate in an ack payload; a version byte other than 1 is an error.
pub fn decode_ping_payload(payload: &[u8]) -> Result<Coordinate, DecodeError> {
    const WHAT: &str = "ping payload";
    let (&version, mut body) = payload.split_first().ok_or(DecodeError::Empty)?;
    if version != PING_VERSION {
        return Err(body_error(WHAT, format!("unsupported version {version}")));
    }
    let value = read_value(&mut body, WHAT)?;
    Coordinate::read(&value, WHAT)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use proptest::prelude::*;

    use super::*;
    use crate::{QueryKey, QueryParams};
    use serf_gossip::message::Message;
    use serf_gossip::msgpack::hex;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    /// The Serf message inside a memberlist user message (`[8] ++ serf`).
    fn serf_in_user_message(bytes: &[u8]) -> Vec<u8> {
        match Message::decode(bytes) {
            Ok(Message::User(serf)) => serf,
            other => panic!("not a user message: {other:?}"),
        }
    }

    /// Decodes a captured Serf message and checks that encoding gives the same bytes back.
    fn decode_exact(bytes: &[u8]) -> SerfMessage {
        let message = SerfMessage::decode(bytes).expect("captured message decodes");
        assert_eq!(
            message.encode(),
            bytes,
            "re-encoding differs for {message:?}"
        );
        message
    }

    fn captured_serf_state() -> Vec<u8> {
        let mut bytes = hex("0286aa4576656e744c54696d6501a64576656e7473dc0200");
        bytes.extend([0xc0; 512]);
        bytes.extend(hex(
            "a54c54696d6501ab4c6566744d656d6265727390aa51756572794c54696d6501ac5374617475734c54696d657381a16200",
        ));
        bytes
    }

    #[test]
    fn captured_user_event_decodes_and_reencodes() {
        let packet = hex(
            "0ca639cc5a080384a24343c3a54c54696d6501a44e616d65a66465706c6f79a75061796c6f6164a676312e322e33",
        );
        let serf = serf_in_user_message(&packet[5..]);
        assert_eq!(
            decode_exact(&serf),
            SerfMessage::UserEvent(UserEventMsg {
                ltime: 1,
                name: "deploy".into(),
                payload: b"v1.2.3".to_vec(),
                cc: true,
            })
        );
    }

    #[test]
    fn captured_query_decodes_and_reencodes() {
        let packet = hex(
            "0c953885ce08048ba441646472a47f00000aa746696c74657273c0a5466c61677301a24944ce183fe5dfa54c54696d65
            01a44e616d65a6757063617365a75061796c6f6164a568656c6c6fa4506f7274cd1f0aab52656c6179466163746f7200
            aa536f757263654e6f6465a161a754696d656f7574ce77359400",
        );
        assert_eq!(packet.len(), 122);
        let serf = serf_in_user_message(&packet[5..]);
        let query = QueryMsg {
            ltime: 1,
            id: 406_840_799,
            addr: v4(127, 0, 0, 10),
            port: 7946,
            source_node: "a".into(),
            filters: Vec::new(),
            flags: QUERY_FLAG_ACK,
            relay_factor: 0,
            timeout: Duration::from_secs(2),
            name: "upcase".into(),
            payload: b"hello".to_vec(),
        };
        assert!(query.wants_ack() && !query.no_broadcast());
        assert_eq!(decode_exact(&serf), SerfMessage::Query(query));
    }

    #[test]
    fn captured_query_ack_and_response_decode_and_reencode() {
        let ack = hex(
            "080585a5466c61677301a446726f6da161a24944ce183fe5dfa54c54696d6501a75061796c6f6164c0",
        );
        let ack = decode_exact(&serf_in_user_message(&ack));
        assert_eq!(
            ack,
            SerfMessage::QueryResponse(QueryResponseMsg {
                ltime: 1,
                id: 406_840_799,
                from: "a".into(),
                flags: QUERY_RESPONSE_FLAG_ACK,
                payload: None,
            })
        );
        let response = hex(
            "080585a5466c61677300a446726f6da161a24944ce183fe5dfa54c54696d6501a75061796c6f6164ac726573702d6672
            6f6d2d610a",
        );
        let SerfMessage::QueryResponse(response) = decode_exact(&serf_in_user_message(&response))
        else {
            panic!("not a query response");
        };
        assert!(!response.is_ack());
        assert_eq!(response.flags, 0);
        assert_eq!(response.payload.as_deref(), Some(&b"resp-from-a\n"[..]));
    }

    #[test]
    fn captured_leave_intent_decodes_and_reencodes() {
        let packet = hex("0cf351fe62080083a54c54696d6502a44e6f6465a66e6f73756368a55072756e65c2");
        assert_eq!(
            decode_exact(&serf_in_user_message(&packet[5..])),
            SerfMessage::Leave(LeaveIntent {
                ltime: 2,
                node: "nosuch".into(),
                prune: false,
            })
        );
    }

    #[test]
    fn captured_push_pull_states_decode_and_reencode() {
        let bytes = captured_serf_state();
        assert_eq!(bytes.len(), 585);
        let SerfMessage::PushPull(state) = decode_exact(&bytes) else {
            panic!("not a push/pull state");
        };
        assert_eq!(
            state,
            PushPullState {
                ltime: 1,
                status_ltimes: BTreeMap::from([("b".to_owned(), 0)]),
                left_members: Vec::new(),
                event_ltime: 1,
                events: vec![None; EVENT_BUFFER_SLOTS],
                query_ltime: 1,
                older_events: Vec::new(),
            }
        );
        assert_eq!(PushPullState::decode(&bytes), Ok(state));

        // Reference 7.13 (node d): the same shape with StatusLTimes {"d": 0}.
        let mut d = captured_serf_state();
        let at = d.len() - 3;
        d[at + 1] = b'd';
        let state = PushPullState::decode(&d).unwrap();
        assert_eq!(state.status_ltimes, BTreeMap::from([("d".to_owned(), 0)]));
        assert_eq!(state.encode(), d);
    }

    #[test]
    fn captured_relayed_query_ack_decodes_and_reencodes() {
        let bytes = hex(
            "080982a8446573744164647283a24950a47f00000ea4506f7274cd1f0aa45a6f6e65a0a8446573744e616d65a1650585
            a5466c61677301a446726f6da165a24944ce093929d6a54c54696d6501a75061796c6f6164c0",
        );
        let serf = serf_in_user_message(&bytes);
        let SerfMessage::Relay { header, message } = decode_exact(&serf) else {
            panic!("not a relay");
        };
        assert_eq!(
            header,
            RelayHeader {
                dest_addr: "127.0.0.14:7946".parse().unwrap(),
                dest_name: "e".into(),
            }
        );
        assert_eq!(
            SerfMessage::decode(&message),
            Ok(SerfMessage::QueryResponse(QueryResponseMsg {
                ltime: 1,
                id: 154_741_206,
                from: "e".into(),
                flags: QUERY_RESPONSE_FLAG_ACK,
                payload: None,
            }))
        );
        assert_eq!(RelayHeader::decode(&serf), Ok((header, &message[..])));
    }

    #[test]
    fn captured_name_conflict_query_and_response_decode_and_reencode() {
        let join = hex("080182a54c54696d6502a44e6f6465a166");
        assert_eq!(
            decode_exact(&serf_in_user_message(&join)),
            SerfMessage::Join(JoinIntent {
                ltime: 2,
                node: "f".into(),
            })
        );
        let query = hex(
            "08048ba441646472a47f000011a746696c74657273c0a5466c61677300
            a24944ce614402b4a54c54696d6502a44e616d65ae5f736572665f636f6e666c696374a75061796c6f6164a166a4506f
            7274cd1f0aab52656c6179466163746f7200aa536f757263654e6f6465a166a754696d656f7574cebebc2000",
        );
        assert_eq!(query.len(), 0x79);
        assert_eq!(
            decode_exact(&serf_in_user_message(&query)),
            SerfMessage::Query(QueryMsg {
                ltime: 2,
                id: 0x6144_02b4,
                addr: v4(127, 0, 0, 17),
                port: 7946,
                source_node: "f".into(),
                filters: Vec::new(),
                flags: 0,
                relay_factor: 0,
                timeout: Duration::from_millis(3200),
                name: "_serf_conflict".into(),
                payload: b"f".to_vec(),
            })
        );

        let response = hex(
            "080585a5466c61677300a446726f6da167a24944ce614402b4a54c54696d6502a75061796c6f6164da0077068ba44164
            6472a47f00000fab44656c656761746543757205ab44656c65676174654d617805ab44656c65676174654d696e02a44e
            616d65a166a4506f7274cd1f0aab50726f746f636f6c43757202ab50726f746f636f6c4d617805ab50726f746f636f6c
            4d696e01a653746174757301a45461677380",
        );
        let SerfMessage::QueryResponse(response) = decode_exact(&serf_in_user_message(&response))
        else {
            panic!("not a query response");
        };
        assert_eq!((response.from.as_str(), response.ltime), ("g", 2));
        let payload = response.payload.expect("payload");
        assert_eq!(payload.len(), 0x77);
        let conflict = ConflictResponse::decode(&payload).unwrap();
        assert_eq!(
            conflict.member,
            Some(Member {
                name: "f".into(),
                addr: "127.0.0.15:7946".parse().unwrap(),
                tags: Tags::new(),
                status: MemberStatus::Alive,
                versions: ProtocolVersions::SERF_0_9_4,
            })
        );
        assert_eq!(conflict.encode(), payload);
    }

    #[test]
    fn captured_ack_coordinate_is_a_fresh_one() {
        let payload = hex(
            "0184aa41646a7573746d656e74cb0000000000000000a54572726f72cb3ff800000000
            0000a6486569676874cb3ee4f8b588e368f1a356656398cb0000000000000000cb0000000000000000cb000000000000
            0000cb0000000000000000cb0000000000000000cb0000000000000000cb0000000000000000cb0000000000000000",
        );
        assert_eq!(payload.len(), 130);
        assert_eq!(decode_ping_payload(&payload), Ok(Coordinate::new()));
        assert_eq!(encode_ping_payload(&Coordinate::new()), payload);
    }

    #[test]
    fn coordinates_round_trip_and_accept_other_forms() {
        let coordinate = Coordinate {
            vec: vec![0.5, -1.25, 3.0e-3, 0.0, 1.0, 2.0, 3.0, -4.0],
            error: 0.75,
            adjustment: -0.001,
            height: 2.0e-4,
        };
        assert_eq!(
            decode_ping_payload(&encode_ping_payload(&coordinate)),
            Ok(coordinate)
        );
        // Integers and float32 are floats too; missing keys are zero.
        let mut e = Encoder::with_type(PING_VERSION);
        e.map(2).str("Error").uint(1).str("Vec").array(2).uint(2);
        e.bytes(&[0xca, 0x3f, 0xc0, 0, 0]);
        assert_eq!(
            decode_ping_payload(&e.into_inner()),
            Ok(Coordinate {
                vec: vec![2.0, 1.5],
                error: 1.0,
                adjustment: 0.0,
                height: 0.0,
            })
        );
        let mut wrong = encode_ping_payload(&Coordinate::new());
        wrong[0] = 2;
        assert!(decode_ping_payload(&wrong).is_err());
        assert_eq!(decode_ping_payload(&[]), Err(DecodeError::Empty));
    }

    #[test]
    fn tags_in_meta_follow_serf() {
        // Reference 7.2: a two-key map in Go's (random) order decodes whatever the order.
        let web = decode_tags(&hex("ff82a4726f6c65a3776562a26463a465617374"));
        let expected = Tags::from([
            ("role".to_owned(), "web".to_owned()),
            ("dc".to_owned(), "east".to_owned()),
        ]);
        assert_eq!(web, expected);
        assert_eq!(decode_tags(&encode_tags(&expected)), expected);
        assert_eq!(
            encode_tags(&expected),
            hex("ff82a26463a465617374a4726f6c65a3776562"),
            "keys sorted"
        );
        let db = Tags::from([("role".to_owned(), "db".to_owned())]);
        assert_eq!(encode_tags(&db), hex("ff81a4726f6c65a26462"));
        assert_eq!(decode_tags(&hex("ff81a4726f6c65a26462")), db);
        assert_eq!(encode_tags(&Tags::new()), [0xff, 0x80]);
        assert_eq!(decode_tags(&[0xff, 0x80]), Tags::new());
        assert_eq!(decode_tags(&[0xff, 0xc0]), Tags::new());

        let role = |value: &str| Tags::from([("role".to_owned(), value.to_owned())]);
        assert_eq!(decode_tags(b"web"), role("web"));
        assert_eq!(decode_tags(b""), role(""));
        assert_eq!(decode_tags(&[0x80, b'x']), role("\u{fffd}x"));

        // Decode errors keep what decoded before them.
        assert_eq!(
            decode_tags(&hex("ff83a161a162a163c4016401")),
            Tags::from([("a".to_owned(), "b".to_owned())])
        );
        assert_eq!(
            decode_tags(&hex("ff82a161a162a163")),
            Tags::from([("a".to_owned(), "b".to_owned())])
        );
        assert_eq!(decode_tags(&hex("ff92a161a162")), Tags::new());
        assert_eq!(decode_tags(&[0xff]), Tags::new());
    }

    #[test]
    fn query_filters_encode_and_decode() {
        let nodes = QueryFilter::Nodes(vec!["a".into(), "b".into()]);
        assert_eq!(nodes.encode(), hex("0092a161a162"));
        assert_eq!(QueryFilter::decode(&nodes.encode()), Ok(nodes));
        let tag = QueryFilter::Tag {
            tag: "role".into(),
            expr: "^web$".into(),
        };
        assert_eq!(
            tag.encode(),
            hex("0182a445787072a55e77656224a3546167a4726f6c65")
        );
        assert_eq!(QueryFilter::decode(&tag.encode()), Ok(tag.clone()));
        // Go declares Tag before Expr: that is the array order.
        let mut e = Encoder::with_type(1);
        e.array(2).str("role").str("^web$");
        assert_eq!(QueryFilter::decode(&e.into_inner()), Ok(tag));
        assert!(QueryFilter::decode(&hex("0292a161")).is_err());
        assert!(QueryFilter::decode(&hex("00a161")).is_err());
        assert!(QueryFilter::decode(&hex("0091c40161")).is_err(), "bin name");
        assert_eq!(QueryFilter::decode(&[]), Err(DecodeError::Empty));
    }

    #[test]
    fn key_messages_round_trip() {
        let request = KeyRequest {
            key: (0..32).collect(),
        };
        let bytes = request.encode();
        assert_eq!(&bytes[..9], &hex("0781a34b6579da0020"));
        assert_eq!(KeyRequest::decode(&bytes), Ok(request));

        let none = KeyResponse {
            result: true,
            message: String::new(),
            keys: None,
            primary_key: String::new(),
        };
        let bytes = none.encode();
        assert_eq!(
            bytes,
            hex("0884a44b657973c0a74d657373616765a0aa5072696d6172794b6579a0a6526573756c74c3")
        );
        assert_eq!(KeyResponse::decode(&bytes), Ok(none));
        let listed = KeyResponse {
            result: false,
            message: "nope".into(),
            keys: Some(vec!["AAEC".into(), "ERES".into()]),
            primary_key: "AAEC".into(),
        };
        assert_eq!(KeyResponse::decode(&listed.encode()), Ok(listed));
        let empty = KeyResponse {
            keys: Some(Vec::new()),
            ..KeyResponse::default()
        };
        assert_eq!(KeyResponse::decode(&empty.encode()), Ok(empty));
        assert_eq!(
            KeyResponse::decode(&KeyRequest::default().encode()),
            Err(DecodeError::UnknownType(7))
        );
    }

    #[test]
    fn conflict_responses_round_trip_with_and_without_a_member() {
        assert_eq!(ConflictResponse { member: None }.encode(), [6, 0xc0]);
        assert_eq!(
            ConflictResponse::decode(&[6, 0xc0]),
            Ok(ConflictResponse { member: None })
        );
        let member = Member {
            name: "x".into(),
            addr: "[fd00::1]:8000".parse().unwrap(),
            tags: Tags::from([
                ("role".to_owned(), "web".to_owned()),
                ("dc".to_owned(), "east".to_owned()),
            ]),
            status: MemberStatus::Failed,
            versions: ProtocolVersions {
                protocol: [1, 5, 2],
                delegate: [2, 5, 4],
            },
        };
        let response = ConflictResponse {
            member: Some(member),
        };
        assert_eq!(ConflictResponse::decode(&response.encode()), Ok(response));
    }

    fn every_message() -> Vec<SerfMessage> {
        let mut events = vec![None; EVENT_BUFFER_SLOTS];
        events[3] = Some(UserEvents {
            ltime: 3,
            events: vec![
                UserEventEntry {
                    name: "deploy".into(),
                    payload: b"v1".to_vec(),
                },
                UserEventEntry {
                    name: "x".into(),
                    payload: Vec::new(),
                },
            ],
        });
        vec![
            SerfMessage::Leave(LeaveIntent {
                ltime: u64::MAX,
                node: "n".into(),
                prune: true,
            }),
            SerfMessage::Join(JoinIntent {
                ltime: 0,
                node: String::new(),
            }),
            SerfMessage::PushPull(PushPullState {
                ltime: 9,
                status_ltimes: BTreeMap::from([("a".to_owned(), 3), ("b".to_owned(), 300)]),
                left_members: vec!["c".into()],
                event_ltime: 4,
                events,
                query_ltime: 70_000,
                older_events: vec![UserEvents {
                    ltime: 1,
                    events: vec![UserEventEntry {
                        name: "old".into(),
                        payload: b"p".to_vec(),
                    }],
                }],
            }),
            SerfMessage::UserEvent(UserEventMsg {
                ltime: 12,
                name: "e".repeat(40),
                payload: vec![0xff; 100],
                cc: false,
            }),
            SerfMessage::Query(QueryMsg {
                ltime: 5,
                id: 0x7fff_ffff,
                addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
                port: 7946,
                source_node: "q".into(),
                filters: vec![
                    QueryFilter::Nodes(vec!["a".into()]).encode(),
                    QueryFilter::Tag {
                        tag: "role".into(),
                        expr: "w".into(),
                    }
                    .encode(),
                ],
                flags: QUERY_FLAG_ACK | QUERY_FLAG_NO_BROADCAST,
                relay_factor: 3,
                timeout: Duration::from_millis(12_345),
                name: "upcase".into(),
                payload: Vec::new(),
            }),
            SerfMessage::QueryResponse(QueryResponseMsg {
                ltime: 5,
                id: 1,
                from: "r".into(),
                flags: 0,
                payload: Some(Vec::new()),
            }),
            SerfMessage::Relay {
                header: RelayHeader {
                    dest_addr: "[::1]:7946".parse().unwrap(),
                    dest_name: "d".into(),
                },
                message: QueryResponseMsg::default().encode(),
            },
        ]
    }

    #[test]
    fn every_serf_message_round_trips() {
        for message in every_message() {
            let bytes = message.encode();
            assert_eq!(SerfMessage::decode(&bytes).as_ref(), Ok(&message));
        }
    }

    #[test]
    fn push_pull_state_always_sends_the_whole_event_ring() {
        let short = PushPullState::default().encode();
        let decoded = PushPullState::decode(&short).unwrap();
        assert_eq!(decoded.events, vec![None; EVENT_BUFFER_SLOTS]);
        assert!(short.windows(3).any(|w| w == [0xdc, 0x02, 0x00]));
        let long = PushPullState {
            events: vec![
                Some(UserEvents {
                    ltime: 1,
                    events: Vec::new(),
                });
                EVENT_BUFFER_SLOTS + 5
            ],
            ..PushPullState::default()
        };
        let decoded = PushPullState::decode(&long.encode()).unwrap();
        assert_eq!(decoded.events.len(), EVENT_BUFFER_SLOTS);
        // Whatever length arrives is kept.
        let mut e = Encoder::with_type(2);
        e.map(1).str("Events").array(2).nil().map(0);
        let decoded = PushPullState::decode(&e.into_inner()).unwrap();
        assert_eq!(decoded.events, [None, Some(UserEvents::default())]);
    }

    #[test]
    fn older_events_travel_under_a_key_of_their_own_only_when_there_are_some() {
        let without = PushPullState::default().encode();
        assert!(!without.windows(11).any(|w| w == b"OlderEvents"));
        assert_eq!(without[1], 0x86, "six keys, as Serf sends");
        let older = vec![UserEvents {
            ltime: 7,
            events: vec![UserEventEntry {
                name: "deploy".into(),
                payload: b"v1".to_vec(),
            }],
        }];
        let with = PushPullState {
            older_events: older.clone(),
            ..PushPullState::default()
        }
        .encode();
        assert_eq!(with[1], 0x87);
        assert!(with.windows(11).any(|w| w == b"OlderEvents"));
        assert_eq!(PushPullState::decode(&with).unwrap().older_events, older);
        // Serf's states (no such key) decode with none.
        assert_eq!(PushPullState::decode(&without).unwrap().older_events, []);
    }

    #[test]
    fn serf_decoding_tolerates_what_go_tolerates() {
        // Unknown and missing keys, nil values, bin payloads, 0/1 bools, mapped addresses.
        let mapped = Ipv4Addr::new(127, 0, 0, 10).to_ipv6_mapped().octets();
        let mut e = Encoder::with_type(4);
        e.map(6)
            .str("Addr")
            .raw(&mapped)
            .str("Payload")
            .bytes(&[0xc4, 2, b'h', b'i'])
            .str("Name")
            .nil()
            .str("Extra")
            .map(1)
            .str("x")
            .array(0)
            .str("Timeout")
            .int(-5)
            .str("Filters")
            .array(1)
            .bytes(&[0xc4, 1, 0]);
        assert_eq!(
            SerfMessage::decode(&e.into_inner()),
            Ok(SerfMessage::Query(QueryMsg {
                ltime: 0,
                id: 0,
                addr: v4(127, 0, 0, 10),
                port: 0,
                source_node: String::new(),
                filters: vec![vec![0]],
                flags: 0,
                relay_factor: 0,
                timeout: Duration::ZERO,
                name: String::new(),
                payload: b"hi".to_vec(),
            }))
        );
        let mut e = Encoder::with_type(3);
        e.map(2).str("CC").uint(1).str("Name").str("n");
        let Ok(SerfMessage::UserEvent(event)) = SerfMessage::decode(&e.into_inner()) else {
            panic!("user event refused");
        };
        assert!(event.cc);
        // A string field refuses bin.
        let mut e = Encoder::with_type(1);
        e.map(1).str("Node").bytes(&[0xc4, 1, b'n']);
        assert!(matches!(
            SerfMessage::decode(&e.into_inner()),
            Err(DecodeError::Body {
                what: "join intent",
                ..
            })
        ));
        // Array-encoded: Go declaration order.
        let mut e = Encoder::with_type(0);
        e.array(3).uint(7).str("gone").bool(true);
        assert_eq!(
            SerfMessage::decode(&e.into_inner()),
            Ok(SerfMessage::Leave(LeaveIntent {
                ltime: 7,
                node: "gone".into(),
                prune: true,
            }))
        );
        let mut e = Encoder::with_type(0);
        e.map(1).str("LTime").int(-1);
        assert!(SerfMessage::decode(&e.into_inner()).is_err());
    }

    #[test]
    fn serf_types_outside_gossip_are_refused() {
        assert_eq!(SerfMessage::decode(&[]), Err(DecodeError::Empty));
        for byte in [6, 7, 8, 10, 255] {
            assert_eq!(
                SerfMessage::decode(&[byte, 0x80]),
                Err(DecodeError::UnknownType(byte))
            );
        }
        assert_eq!(
            LeaveIntent::decode(&JoinIntent::default().encode()),
            Err(DecodeError::UnknownType(1))
        );
        let mut e = Encoder::with_type(9);
        e.map(1).str("DestName").str("x");
        assert!(SerfMessage::decode(&e.into_inner()).is_err(), "no address");
    }

    #[test]
    fn serf_size_accounting_matches_the_encoding() {
        for (ltime, name, payload) in [
            (1, "deploy", &b"v1.2.3"[..]),
            (300, "", &b""[..]),
            (1 << 40, &*"n".repeat(31), &[7; 32][..]),
            (70_000, &*"n".repeat(32), &[7; 70_000][..]),
        ] {
            let event = UserEventMsg {
                ltime,
                name: name.to_owned(),
                payload: payload.to_vec(),
                cc: true,
            };
            assert_eq!(
                super::super::size::user_event(ltime, name, payload),
                event.encode().len()
            );
            let key = QueryKey {
                ltime,
                id: (ltime % (1 << 31)) as u32,
            };
            let response = QueryResponseMsg {
                ltime,
                id: key.id,
                from: name.to_owned(),
                flags: 0,
                payload: Some(payload.to_vec()),
            };
            assert_eq!(
                super::super::size::query_response(key, name, payload),
                response.encode().len()
            );
        }

        let cases = [
            (
                QueryParams {
                    name: "upcase".into(),
                    payload: b"hello".to_vec(),
                    request_ack: true,
                    timeout: Some(Duration::from_secs(2)),
                    ..QueryParams::default()
                },
                "127.0.0.10:7946",
            ),
            (
                QueryParams {
                    name: "q".repeat(40),
                    payload: vec![1; 300],
                    filter_nodes: vec!["a".into(), "bb".into()],
                    filter_tags: BTreeMap::from([
                        ("role".to_owned(), "^web$".to_owned()),
                        ("dc".to_owned(), "e.*".repeat(20)),
                    ]),
                    relay_factor: 200,
                    timeout: None,
                    ..QueryParams::default()
                },
                "[fd00::5]:80",
            ),
            (
                QueryParams {
                    filter_nodes: (0..20).map(|i| format!("node-{i}")).collect(),
                    timeout: Some(Duration::from_secs(1 << 40)),
                    ..QueryParams::default()
                },
                "10.1.2.3:7946",
            ),
        ];
        for (params, source) in cases {
            let source: SocketAddr = source.parse().unwrap();
            let key = QueryKey {
                ltime: 1234,
                id: 406_840_799,
            };
            let mut filters = Vec::new();
            if !params.filter_nodes.is_empty() {
                filters.push(QueryFilter::Nodes(params.filter_nodes.clone()).encode());
            }
            for (tag, expr) in &params.filter_tags {
                filters.push(
                    QueryFilter::Tag {
                        tag: tag.clone(),
                        expr: expr.clone(),
                    }
                    .encode(),
                );
            }
            let query = QueryMsg {
                ltime: key.ltime,
                id: key.id,
                addr: source.ip(),
                port: source.port(),
                source_node: "source".into(),
                filters,
                flags: u32::from(params.request_ack),
                relay_factor: params.relay_factor,
                timeout: params.timeout.unwrap_or_default(),
                name: params.name.clone(),
                payload: params.payload.clone(),
            };
            assert_eq!(
                super::super::size::query(key, &params, "source", source),
                query.encode().len(),
                "{params:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn serf_decoders_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            for byte in 0..=10u8 {
                let mut prefixed = vec![byte];
                prefixed.extend_from_slice(&bytes);
                let _ = SerfMessage::decode(&prefixed);
                let _ = ConflictResponse::decode(&prefixed);
                let _ = KeyRequest::decode(&prefixed);
                let _ = KeyResponse::decode(&prefixed);
                let _ = QueryFilter::decode(&prefixed);
                let _ = decode_ping_payload(&prefixed);
            }
            let _ = SerfMessage::decode(&bytes);
            let mut meta = vec![TAGS_MAGIC_BYTE];
            meta.extend_from_slice(&bytes);
            let _ = decode_tags(&meta);
            let _ = decode_tags(&bytes);
        }

        #[test]
        fn user_events_and_tags_round_trip(
            ltime in any::<u64>(),
            name in ".{0,40}",
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            cc in any::<bool>(),
            tags in proptest::collection::btree_map(".{0,10}", ".{0,40}", 0..8),
        ) {
            let event = SerfMessage::UserEvent(UserEventMsg { ltime, name, payload, cc });
            prop_assert_eq!(SerfMessage::decode(&event.encode()), Ok(event));
            prop_assert_eq!(decode_tags(&encode_tags(&tags)), tags);
        }
    }
}
