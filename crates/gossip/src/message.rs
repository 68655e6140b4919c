//! memberlist 0.2.2's messages (reference 2.2, 2.3) and their gossip-dialect msgpack codec.
//!
//! Each message is a Rust struct whose fields mirror the Go struct; `encode` writes the type
//! byte followed by the msgpack body exactly as Go emits it (keys sorted, smallest integers,
//! byte strings with str-family headers, `omitempty` where Go has it), and `decode` accepts
//! everything Go accepts (any key order, unknown keys, missing keys, nil, str or bin bytes,
//! array-encoded structs).

use std::net::IpAddr;

use super::error::DecodeError;
use super::msgpack::{Encoder, Fields, Val, body_error, decode_struct};

/// The first byte of every memberlist message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    Ping = 0,
    IndirectPing = 1,
    Ack = 2,
    Suspect = 3,
    Alive = 4,
    Dead = 5,
    PushPull = 6,
    Compound = 7,
    User = 8,
    Compress = 9,
    Encrypt = 10,
    Nack = 11,
    HasCrc = 12,
    Err = 13,
}

impl MessageType {
    /// The type named by a message's first byte, if memberlist 0.2.2 knows it.
    pub fn from_byte(byte: u8) -> Option<MessageType> {
        use MessageType::*;
        Some(match byte {
            0 => Ping,
            1 => IndirectPing,
            2 => Ack,
            3 => Suspect,
            4 => Alive,
            5 => Dead,
            6 => PushPull,
            7 => Compound,
            8 => User,
            9 => Compress,
            10 => Encrypt,
            11 => Nack,
            12 => HasCrc,
            13 => Err,
            _ => return None,
        })
    }
}

/// The 6-byte version vector `[pmin, pmax, pcur, dmin, dmax, dcur]` (reference 2.11).
pub type Vsn = [u8; 6];

/// What a default Serf 0.9.4 agent advertises.
pub const SERF_0_9_4_VSN: Vsn = [1, 5, 2, 2, 5, 5];

/// `ping` (0). `Node` is the intended target's name; the `Source*` fields are `omitempty`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ping {
    pub seq_no: u32,
    pub node: String,
    /// `SourceAddr`, `SourcePort`, `SourceNode`: where to send the ack; all absent when empty.
    pub source_addr: Option<IpAddr>,
    pub source_port: u16,
    pub source_node: String,
}

/// `indirectPingReq` (1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndirectPing {
    pub seq_no: u32,
    pub target: IpAddr,
    pub port: u16,
    pub node: String,
    pub nack: bool,
    pub source_addr: Option<IpAddr>,
    pub source_port: u16,
    pub source_node: String,
}

/// `ackResp` (2). `payload: None` encodes as nil (`0xc0`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ack {
    pub seq_no: u32,
    pub payload: Option<Vec<u8>>,
}

/// `nackResp` (11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nack {
    pub seq_no: u32,
}

/// `suspect` (3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suspect {
    pub incarnation: u32,
    pub node: String,
    pub from: String,
}

/// `alive` (4). An empty `vsn` (from a peer that sent none) decodes as `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alive {
    pub incarnation: u32,
    pub node: String,
    pub addr: IpAddr,
    pub port: u16,
    pub meta: Vec<u8>,
    pub vsn: Option<Vsn>,
}

/// `dead` (5). `from == node` means the node left gracefully.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dead {
    pub incarnation: u32,
    pub node: String,
    pub from: String,
}

/// `errResp` (13), sent on a stream that could not be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrResp {
    pub error: String,
}

/// A node's state code in push/pull (reference 2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StateCode {
    Alive = 0,
    Suspect = 1,
    Dead = 2,
    Left = 3,
}

/// `pushNodeState`: one node in a push/pull. Note the key is `Name` here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushNodeState {
    pub name: String,
    pub addr: IpAddr,
    pub port: u16,
    pub meta: Vec<u8>,
    pub incarnation: u32,
    pub state: StateCode,
    pub vsn: Option<Vsn>,
}

/// A whole push/pull (type 6): header `{Join, Nodes, UserStateLen}`, the node states, then the
/// delegate's user state bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushPull {
    pub join: bool,
    pub nodes: Vec<PushNodeState>,
    pub user_state: Vec<u8>,
}

/// One decoded memberlist message (everything but the framing types compound, compress,
/// encrypt and hasCrc, which the packet layer unwraps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Ping(Ping),
    IndirectPing(IndirectPing),
    Ack(Ack),
    Nack(Nack),
    Suspect(Suspect),
    Alive(Alive),
    Dead(Dead),
    PushPull(PushPull),
    /// A delegate (Serf) message: the bytes after the `8`.
    User(Vec<u8>),
    Err(ErrResp),
}

impl Message {
    /// The type byte followed by the body, exactly as memberlist 0.2.2 writes it. A `User`
    /// message is the UDP form `[8] ++ bytes`.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Message::Ping(ping) => ping.encode(),
            Message::IndirectPing(ping) => ping.encode(),
            Message::Ack(ack) => ack.encode(),
            Message::Nack(nack) => nack.encode(),
            Message::Suspect(suspect) => suspect.encode(),
            Message::Alive(alive) => alive.encode(),
            Message::Dead(dead) => dead.encode(),
            Message::PushPull(push_pull) => push_pull.encode(),
            Message::User(bytes) => {
                let mut e = Encoder::with_type(MessageType::User as u8);
                e.bytes(bytes);
                e.into_inner()
            }
            Message::Err(err) => err.encode(),
        }
    }

    /// Decodes one message as it arrives in a UDP packet (after the packet layer unwrapped
    /// compound/compress/CRC/encryption): `msg[0]` is the type byte.
    ///
    /// Accepts what memberlist's packet handler dispatches: ping, indirect ping, ack, nack,
    /// suspect, alive, dead and user. Everything else, including push/pull and err (stream
    /// only) and the framing types, is `UnknownType`, as memberlist logs it. Bytes after the
    /// msgpack body are ignored.
    pub fn decode(msg: &[u8]) -> Result<Message, DecodeError> {
        let (&byte, body) = msg.split_first().ok_or(DecodeError::Empty)?;
        match MessageType::from_byte(byte) {
            Some(MessageType::Ping) => Ping::decode_body(body).map(Message::Ping),
            Some(MessageType::IndirectPing) => {
                IndirectPing::decode_body(body).map(Message::IndirectPing)
            }
            Some(MessageType::Ack) => Ack::decode_body(body).map(Message::Ack),
            Some(MessageType::Nack) => Nack::decode_body(body).map(Message::Nack),
            Some(MessageType::Suspect) => Suspect::decode_body(body).map(Message::Suspect),
            Some(MessageType::Alive) => Alive::decode_body(body).map(Message::Alive),
            Some(MessageType::Dead) => Dead::decode_body(body).map(Message::Dead),
            Some(MessageType::User) => Ok(Message::User(body.to_vec())),
            _ => Err(DecodeError::UnknownType(byte)),
        }
    }

    /// Decodes a plaintext stream message: as `decode`, except that a user message is
    /// `[8] {UserMsgLen} bytes` and only ping, ack, push/pull, user and err are allowed.
    pub fn decode_stream(msg: &[u8]) -> Result<Message, DecodeError> {
        let (&byte, body) = msg.split_first().ok_or(DecodeError::Empty)?;
        match MessageType::from_byte(byte) {
            Some(MessageType::Ping) => Ping::decode_body(body).map(Message::Ping),
            Some(MessageType::Ack) => Ack::decode_body(body).map(Message::Ack),
            Some(MessageType::PushPull) => PushPull::decode_body(body).map(Message::PushPull),
            Some(MessageType::User) => decode_user_stream(body).map(Message::User),
            Some(MessageType::Err) => ErrResp::decode_body(body).map(Message::Err),
            _ => Err(DecodeError::InvalidStreamType(byte)),
        }
    }

    /// The stream form of a user message: `[8] {UserMsgLen} bytes`.
    pub fn encode_user_stream(bytes: &[u8]) -> Vec<u8> {
        let mut e = Encoder::with_type(MessageType::User as u8);
        e.map(1)
            .str("UserMsgLen")
            .uint(bytes.len() as u64)
            .bytes(bytes);
        e.into_inner()
    }
}

// Go field names in declaration order: the positional layout of array-encoded structs.
const PING_FIELDS: &[&str] = &["SeqNo", "Node", "SourceAddr", "SourcePort", "SourceNode"];
const INDIRECT_PING_FIELDS: &[&str] = &[
    "SeqNo",
    "Target",
    "Port",
    "Node",
    "Nack",
    "SourceAddr",
    "SourcePort",
    "SourceNode",
];
const ACK_FIELDS: &[&str] = &["SeqNo", "Payload"];
const NACK_FIELDS: &[&str] = &["SeqNo"];
const SUSPECT_FIELDS: &[&str] = &["Incarnation", "Node", "From"];
const DEAD_FIELDS: &[&str] = &["Incarnation", "Node", "From"];
const ALIVE_FIELDS: &[&str] = &["Incarnation", "Node", "Addr", "Port", "Meta", "Vsn"];
const ERR_FIELDS: &[&str] = &["Error"];
const PUSH_PULL_HEADER_FIELDS: &[&str] = &["Nodes", "UserStateLen", "Join"];
const PUSH_NODE_STATE_FIELDS: &[&str] = &[
    "Name",
    "Addr",
    "Port",
    "Meta",
    "Incarnation",
    "State",
    "Vsn",
];
const USER_MSG_HEADER_FIELDS: &[&str] = &["UserMsgLen"];

/// `[8] {UserMsgLen} bytes` after the type byte: exactly `UserMsgLen` bytes must follow.
fn decode_user_stream(mut body: &[u8]) -> Result<Vec<u8>, DecodeError> {
    const WHAT: &str = "user message header";
    let mut slot = None;
    let header = Fields::read(&mut body, WHAT, USER_MSG_HEADER_FIELDS, &mut slot)?;
    let len: usize = header.int("UserMsgLen")?;
    let bytes = body.get(..len).ok_or_else(|| {
        body_error(
            WHAT,
            format!("UserMsgLen {len} but only {} bytes follow", body.len()),
        )
    })?;
    Ok(bytes.to_vec())
}

/// A `Vsn` field: nil or empty is `None`, otherwise at least 6 bytes (the first 6 are used).
fn read_vsn(val: Val<'_>, what: &'static str) -> Result<Option<Vsn>, DecodeError> {
    let bytes = val.bytes()?;
    if bytes.is_empty() {
        return Ok(None);
    }
    match bytes.first_chunk::<6>() {
        Some(vsn) => Ok(Some(*vsn)),
        None => Err(body_error(
            what,
            format!("Vsn: {} bytes, need 6", bytes.len()),
        )),
    }
}

fn write_vsn(e: &mut Encoder, vsn: &Option<Vsn>) {
    e.opt_raw(vsn.as_ref().map(|v| &v[..]));
}

/// The `omitempty` `Source*` fields of ping and indirect ping, in key order.
struct Source<'a> {
    addr: Option<IpAddr>,
    port: u16,
    node: &'a str,
}

impl Source<'_> {
    fn count(&self) -> usize {
        usize::from(self.addr.is_some())
            + usize::from(self.port != 0)
            + usize::from(!self.node.is_empty())
    }

    fn write(&self, e: &mut Encoder) {
        if let Some(addr) = &self.addr {
            e.str("SourceAddr").ip(addr);
        }
        if !self.node.is_empty() {
            e.str("SourceNode").str(self.node);
        }
        if self.port != 0 {
            e.str("SourcePort").uint(u64::from(self.port));
        }
    }
}

impl Ping {
    /// `[0]` + `{Node, SeqNo, SourceAddr?, SourceNode?, SourcePort?}`.
    pub fn encode(&self) -> Vec<u8> {
        let source = Source {
            addr: self.source_addr,
            port: self.source_port,
            node: &self.source_node,
        };
        let mut e = Encoder::with_type(MessageType::Ping as u8);
        e.map(2 + source.count())
            .str("Node")
            .str(&self.node)
            .str("SeqNo")
            .uint(u64::from(self.seq_no));
        source.write(&mut e);
        e.into_inner()
    }

    fn decode_body(body: &[u8]) -> Result<Ping, DecodeError> {
        decode_struct(body, "ping", PING_FIELDS, |f| {
            Ok(Ping {
                seq_no: f.uint("SeqNo")?,
                node: f.string("Node")?,
                source_addr: f.get("SourceAddr").opt_ip()?,
                source_port: f.uint("SourcePort")?,
                source_node: f.string("SourceNode")?,
            })
        })
    }
}

impl IndirectPing {
    /// `[1]` + `{Nack, Node, Port, SeqNo, SourceAddr?, SourceNode?, SourcePort?, Target}`.
    pub fn encode(&self) -> Vec<u8> {
        let source = Source {
            addr: self.source_addr,
            port: self.source_port,
            node: &self.source_node,
        };
        let mut e = Encoder::with_type(MessageType::IndirectPing as u8);
        e.map(5 + source.count())
            .str("Nack")
            .bool(self.nack)
            .str("Node")
            .str(&self.node)
            .str("Port")
            .uint(u64::from(self.port))
            .str("SeqNo")
            .uint(u64::from(self.seq_no));
        source.write(&mut e);
        e.str("Target").ip(&self.target);
        e.into_inner()
    }

    fn decode_body(body: &[u8]) -> Result<IndirectPing, DecodeError> {
        decode_struct(body, "indirect ping", INDIRECT_PING_FIELDS, |f| {
            Ok(IndirectPing {
                seq_no: f.uint("SeqNo")?,
                target: f.get("Target").ip()?,
                port: f.uint("Port")?,
                node: f.string("Node")?,
                nack: f.bool("Nack")?,
                source_addr: f.get("SourceAddr").opt_ip()?,
                source_port: f.uint("SourcePort")?,
                source_node: f.string("SourceNode")?,
            })
        })
    }
}

impl Ack {
    /// `[2]` + `{Payload, SeqNo}`.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::with_type(MessageType::Ack as u8);
        e.map(2)
            .str("Payload")
            .opt_raw(self.payload.as_deref())
            .str("SeqNo")
            .uint(u64::from(self.seq_no));
        e.into_inner()
    }

    fn decode_body(body: &[u8]) -> Result<Ack, DecodeError> {
        decode_struct(body, "ack", ACK_FIELDS, |f| {
            Ok(Ack {
                seq_no: f.uint("SeqNo")?,
                payload: f.opt_bytes("Payload")?,
            })
        })
    }
}

impl Nack {
    /// `[11]` + `{SeqNo}`.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::with_type(MessageType::Nack as u8);
        e.map(1).str("SeqNo").uint(u64::from(self.seq_no));
        e.into_inner()
    }

    fn decode_body(body: &[u8]) -> Result<Nack, DecodeError> {
        decode_struct(body, "nack", NACK_FIELDS, |f| {
            Ok(Nack {
                seq_no: f.uint("SeqNo")?,
            })
        })
    }
}

/// `{From, Incarnation, Node}`, shared by suspect and dead.
fn write_accusation(kind: MessageType, from: &str, incarnation: u32, node: &str) -> Vec<u8> {
    let mut e = Encoder::with_type(kind as u8);
    e.map(3)
        .str("From")
        .str(from)
        .str("Incarnation")
        .uint(u64::from(incarnation))
        .str("Node")
        .str(node);
    e.into_inner()
}

impl Suspect {
    /// `[3]` + `{From, Incarnation, Node}`.
    pub fn encode(&self) -> Vec<u8> {
        write_accusation(
            MessageType::Suspect,
            &self.from,
            self.incarnation,
            &self.node,
        )
    }

    fn decode_body(body: &[u8]) -> Result<Suspect, DecodeError> {
        decode_struct(body, "suspect", SUSPECT_FIELDS, |f| {
            Ok(Suspect {
                incarnation: f.uint("Incarnation")?,
                node: f.string("Node")?,
                from: f.string("From")?,
            })
        })
    }
}

impl Dead {
    /// `[5]` + `{From, Incarnation, Node}`.
    pub fn encode(&self) -> Vec<u8> {
        write_accusation(MessageType::Dead, &self.from, self.incarnation, &self.node)
    }

    fn decode_body(body: &[u8]) -> Result<Dead, DecodeError> {
        decode_struct(body, "dead", DEAD_FIELDS, |f| {
            Ok(Dead {
                incarnation: f.uint("Incarnation")?,
                node: f.string("Node")?,
                from: f.string("From")?,
            })
        })
    }
}

impl Alive {
    /// `[4]` + `{Addr, Incarnation, Meta, Node, Port, Vsn}`; a `None` Vsn is nil.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::with_type(MessageType::Alive as u8);
        e.map(6)
            .str("Addr")
            .ip(&self.addr)
            .str("Incarnation")
            .uint(u64::from(self.incarnation))
            .str("Meta")
            .raw(&self.meta)
            .str("Node")
            .str(&self.node)
            .str("Port")
            .uint(u64::from(self.port))
            .str("Vsn");
        write_vsn(&mut e, &self.vsn);
        e.into_inner()
    }

    fn decode_body(body: &[u8]) -> Result<Alive, DecodeError> {
        decode_struct(body, "alive", ALIVE_FIELDS, |f| {
            Ok(Alive {
                incarnation: f.uint("Incarnation")?,
                node: f.string("Node")?,
                addr: f.get("Addr").ip()?,
                port: f.uint("Port")?,
                meta: f.bytes("Meta")?,
                vsn: read_vsn(f.get("Vsn"), "alive")?,
            })
        })
    }
}

impl ErrResp {
    /// `[13]` + `{Error}`.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::with_type(MessageType::Err as u8);
        e.map(1).str("Error").str(&self.error);
        e.into_inner()
    }

    fn decode_body(body: &[u8]) -> Result<ErrResp, DecodeError> {
        decode_struct(body, "error response", ERR_FIELDS, |f| {
            Ok(ErrResp {
                error: f.string("Error")?,
            })
        })
    }
}

impl StateCode {
    /// The state for a push/pull `State` code.
    pub fn from_code(code: i64) -> Option<StateCode> {
        Some(match code {
            0 => StateCode::Alive,
            1 => StateCode::Suspect,
            2 => StateCode::Dead,
            3 => StateCode::Left,
            _ => return None,
        })
    }
}

impl PushNodeState {
    /// `{Addr, Incarnation, Meta, Name, Port, State, Vsn}`.
    fn write(&self, e: &mut Encoder) {
        e.map(7)
            .str("Addr")
            .ip(&self.addr)
            .str("Incarnation")
            .uint(u64::from(self.incarnation))
            .str("Meta")
            .raw(&self.meta)
            .str("Name")
            .str(&self.name)
            .str("Port")
            .uint(u64::from(self.port))
            .str("State")
            .uint(self.state as u64)
            .str("Vsn");
        write_vsn(e, &self.vsn);
    }

    fn read(f: &Fields<'_>) -> Result<PushNodeState, DecodeError> {
        const WHAT: &str = "push/pull node state";
        let code: i64 = f.int("State")?;
        let state = StateCode::from_code(code)
            .ok_or_else(|| body_error(WHAT, format!("State: unknown state {code}")))?;
        Ok(PushNodeState {
            name: f.string("Name")?,
            addr: f.get("Addr").ip()?,
            port: f.uint("Port")?,
            meta: f.bytes("Meta")?,
            incarnation: f.uint("Incarnation")?,
            state,
            vsn: read_vsn(f.get("Vsn"), WHAT)?,
        })
    }
}

impl PushPull {
    /// `[6]` + `{Join, Nodes, UserStateLen}` + one map per node + the user state bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::with_type(MessageType::PushPull as u8);
        e.map(3)
            .str("Join")
            .bool(self.join)
            .str("Nodes")
            .uint(self.nodes.len() as u64)
            .str("UserStateLen")
            .uint(self.user_state.len() as u64);
        for node in &self.nodes {
            node.write(&mut e);
        }
        e.bytes(&self.user_state);
        e.into_inner()
    }

    fn decode_body(mut body: &[u8]) -> Result<PushPull, DecodeError> {
        const WHAT: &str = "push/pull header";
        let mut slot = None;
        let header = Fields::read(&mut body, WHAT, PUSH_PULL_HEADER_FIELDS, &mut slot)?;
        let join = header.bool("Join")?;
        let num_nodes: usize = header.int("Nodes")?;
        let user_state_len: usize = header.int("UserStateLen")?;
        // Every node state takes at least one byte, which bounds the allocation below.
        if num_nodes > body.len() {
            return Err(body_error(
                WHAT,
                format!("{num_nodes} nodes but only {} bytes follow", body.len()),
            ));
        }
        let mut nodes = Vec::with_capacity(num_nodes.min(1024));
        for _ in 0..num_nodes {
            let mut slot = None;
            let fields = Fields::read(
                &mut body,
                "push/pull node state",
                PUSH_NODE_STATE_FIELDS,
                &mut slot,
            )?;
            nodes.push(PushNodeState::read(&fields)?);
        }
        let user_state = body.get(..user_state_len).ok_or_else(|| {
            body_error(
                WHAT,
                format!(
                    "UserStateLen {user_state_len} but only {} bytes follow",
                    body.len()
                ),
            )
        })?;
        Ok(PushPull {
            join,
            nodes,
            user_state: user_state.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;
    use crate::msgpack::hex;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    /// Splits a compound (`[7] [n] [len u16]… [msg]…`) by its length table.
    fn split_compound(bytes: &[u8]) -> Vec<&[u8]> {
        assert_eq!(bytes[0], 7, "not a compound");
        let n = usize::from(bytes[1]);
        let mut rest = &bytes[2 + 2 * n..];
        let mut parts = Vec::new();
        for i in 0..n {
            let len = usize::from(u16::from_be_bytes([bytes[2 + 2 * i], bytes[3 + 2 * i]]));
            let (part, tail) = rest.split_at(len);
            parts.push(part);
            rest = tail;
        }
        assert!(rest.is_empty(), "compound has trailing bytes");
        parts
    }

    /// Decodes a UDP message, checks it, and checks that encoding gives the same bytes back.
    fn decode_exact(bytes: &[u8]) -> Message {
        let message = Message::decode(bytes).expect("captured message decodes");
        assert_eq!(
            message.encode(),
            bytes,
            "re-encoding differs for {message:?}"
        );
        message
    }

    fn alive(node: &str, addr: IpAddr, incarnation: u32, meta: &[u8]) -> Message {
        Message::Alive(Alive {
            incarnation,
            node: node.into(),
            addr,
            port: 7946,
            meta: meta.to_vec(),
            vsn: Some(SERF_0_9_4_VSN),
        })
    }

    const PUSH_PULL_7_14: &str = "0683a44a6f696ec3a54e6f64657301ac5573657253746174654c656ecd024987a441646472a47f00000bab496e636172
        6e6174696f6e01a44d657461aaff81a4726f6c65a26462a44e616d65a162a4506f7274cd1f0aa5537461746500a35673
        6ea60105020205050286aa4576656e744c54696d6501a64576656e7473dc0200";
    const PUSH_PULL_7_14_TAIL: &str = "a54c54696d6501ab4c65667
        44d656d6265727390aa51756572794c54696d6501ac5374617475734c54696d657381a16200";

    #[test]
    fn captured_gossip_compound_of_two_alives_decodes_and_reencodes() {
        let packet = hex(
            "0c457c59870702004c00430486a441646472a47f00000aab496e6361726e6174696f6e01a44d657461b3ff82a4726f6c
            65a3776562a26463a465617374a44e6f6465a161a4506f7274cd1f0aa356736ea60105020205050486a441646472a47f
            00000bab496e6361726e6174696f6e01a44d657461aaff81a4726f6c65a26462a44e6f6465a162a4506f7274cd1f0aa3
            56736ea6010502020505",
        );
        assert_eq!(packet.len(), 154);
        let parts = split_compound(&packet[5..]);
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), [76, 67]);
        assert_eq!(
            decode_exact(parts[0]),
            alive(
                "a",
                v4(127, 0, 0, 10),
                1,
                &hex("ff82a4726f6c65a3776562a26463a465617374")
            )
        );
        assert_eq!(
            decode_exact(parts[1]),
            alive("b", v4(127, 0, 0, 11), 1, &hex("ff81a4726f6c65a26462"))
        );
    }

    #[test]
    fn captured_ping_decodes_and_reencodes() {
        let bytes = hex(
            "0085a44e6f6465a161a55365714e6f01aa536f7572636541646472a47f00000baa536f757263654e6f6465a162aa536f
            75726365506f7274cd1f0a",
        );
        assert_eq!(bytes.len(), 59);
        assert_eq!(
            decode_exact(&bytes),
            Message::Ping(Ping {
                seq_no: 1,
                node: "a".into(),
                source_addr: Some(v4(127, 0, 0, 11)),
                source_port: 7946,
                source_node: "b".into(),
            })
        );
    }

    #[test]
    fn captured_ack_with_a_coordinate_payload_decodes_and_reencodes() {
        let bytes = hex(
            "0282a75061796c6f6164da00820184aa41646a7573746d656e74cb0000000000000000a54572726f72cb3ff800000000
            0000a6486569676874cb3ee4f8b588e368f1a356656398cb0000000000000000cb0000000000000000cb000000000000
            0000cb0000000000000000cb0000000000000000cb0000000000000000cb0000000000000000cb0000000000000000a5
            5365714e6f01",
        );
        assert_eq!(bytes.len(), 150);
        let Message::Ack(ack) = decode_exact(&bytes) else {
            panic!("not an ack");
        };
        assert_eq!(ack.seq_no, 1);
        let payload = ack.payload.expect("payload");
        assert_eq!(payload.len(), 130);
        assert_eq!(payload[0], 1, "ping payload version");
        assert_eq!(&payload[1..3], &[0x84, 0xaa]);
    }

    #[test]
    fn captured_serf_messages_arrive_as_user_messages() {
        let user_event = hex(
            "0ca639cc5a080384a24343c3a54c54696d6501a44e616d65a66465706c6f79a75061796c6f6164a676312e322e33",
        );
        assert_eq!(user_event.len(), 46);
        let Message::User(bytes) = decode_exact(&user_event[5..]) else {
            panic!("not a user message");
        };
        assert_eq!(bytes, &user_event[6..]);
        assert_eq!(bytes[0], 3, "serf user event");

        let query_ack = hex(
            "080585a5466c61677301a446726f6da161a24944ce183fe5dfa54c54696d6501a75061796c6f6164c0",
        );
        assert_eq!(
            decode_exact(&query_ack),
            Message::User(query_ack[1..].to_vec())
        );
    }

    #[test]
    fn captured_alive_after_a_tag_change_decodes_and_reencodes() {
        let packet = hex(
            "0cee1616750486a441646472a47f00000bab496e6361726e6174696f6e02a44d657461b2ff82a4726f6c65a26462a47a
            6f6e65a27a31a44e6f6465a162a4506f7274cd1f0aa356736ea6010502020505",
        );
        assert_eq!(
            decode_exact(&packet[5..]),
            alive(
                "b",
                v4(127, 0, 0, 11),
                2,
                &hex("ff82a4726f6c65a26462a47a6f6e65a27a31")
            )
        );
    }

    #[test]
    fn captured_probe_suspect_and_dead_decode_and_reencode() {
        let packet = hex(
            "0cd80b2f160702003b001d0085a44e6f6465a162a55365714e6f2daa536f7572636541646472a47f00000aaa536f7572
            63654e6f6465a161aa536f75726365506f7274cd1f0a0383a446726f6da161ab496e6361726e6174696f6e03a44e6f64
            65a162",
        );
        let parts = split_compound(&packet[5..]);
        assert_eq!(
            decode_exact(parts[0]),
            Message::Ping(Ping {
                seq_no: 45,
                node: "b".into(),
                source_addr: Some(v4(127, 0, 0, 10)),
                source_port: 7946,
                source_node: "a".into(),
            })
        );
        assert_eq!(
            decode_exact(parts[1]),
            Message::Suspect(Suspect {
                incarnation: 3,
                node: "b".into(),
                from: "a".into(),
            })
        );
        let dead = hex("0cf1bcb0c00583a446726f6da161ab496e6361726e6174696f6e03a44e6f6465a162");
        assert_eq!(
            decode_exact(&dead[5..]),
            Message::Dead(Dead {
                incarnation: 3,
                node: "b".into(),
                from: "a".into(),
            })
        );
        let left = hex("0c460832bd0583a446726f6da162ab496e6361726e6174696f6e02a44e6f6465a162");
        assert_eq!(
            decode_exact(&left[5..]),
            Message::Dead(Dead {
                incarnation: 2,
                node: "b".into(),
                from: "b".into(),
            })
        );
    }

    #[test]
    fn captured_plaintext_of_an_encrypted_ping_decodes_and_reencodes() {
        let bytes = hex(
            "0085a44e6f6465a163a55365714e6f01aa536f7572636541646472a47f00000daa536f757263654e6f6465a164aa536f
            75726365506f7274cd1f0a",
        );
        assert_eq!(
            decode_exact(&bytes),
            Message::Ping(Ping {
                seq_no: 1,
                node: "c".into(),
                source_addr: Some(v4(127, 0, 0, 13)),
                source_port: 7946,
                source_node: "d".into(),
            })
        );
    }

    #[test]
    fn captured_decompressed_push_pull_decodes_and_reencodes() {
        // Reference 7.13, reassembled from the decoded parts shown there.
        let mut bytes = hex(
            "0683a44a6f696ec3a54e6f64657301ac5573657253746174654c656ecd0249
             87a441646472a47f00000dab496e6361726e6174696f6e01a44d657461a2ff80a44e616d65a164a4506f7274cd1f0a
             a5537461746500a356736ea6010502020505
             0286aa4576656e744c54696d6501a64576656e7473dc0200",
        );
        bytes.extend([0xc0; 512]);
        bytes.extend(hex(
            "a54c54696d6501ab4c6566744d656d6265727390aa51756572794c54696d6501ac5374617475734c54696d657381a16400",
        ));
        assert_eq!(bytes.len(), 681);
        let message = Message::decode_stream(&bytes).expect("push/pull decodes");
        let Message::PushPull(push_pull) = &message else {
            panic!("not a push/pull");
        };
        assert!(push_pull.join);
        assert_eq!(
            push_pull.nodes,
            [PushNodeState {
                name: "d".into(),
                addr: v4(127, 0, 0, 13),
                port: 7946,
                meta: vec![0xff, 0x80],
                incarnation: 1,
                state: StateCode::Alive,
                vsn: Some(SERF_0_9_4_VSN),
            }]
        );
        assert_eq!(push_pull.user_state.len(), 585);
        assert_eq!(&push_pull.user_state[..2], &[0x02, 0x86]);
        assert_eq!(message.encode(), bytes);
    }

    #[test]
    fn captured_plaintext_push_pull_decodes_and_reencodes() {
        let mut bytes = hex(PUSH_PULL_7_14);
        bytes.extend([0xc0; 512]);
        bytes.extend(hex(PUSH_PULL_7_14_TAIL));
        assert_eq!(bytes.len(), 689);
        let message = Message::decode_stream(&bytes).expect("push/pull decodes");
        let Message::PushPull(push_pull) = &message else {
            panic!("not a push/pull");
        };
        assert!(push_pull.join);
        assert_eq!(
            push_pull.nodes,
            [PushNodeState {
                name: "b".into(),
                addr: v4(127, 0, 0, 11),
                port: 7946,
                meta: hex("ff81a4726f6c65a26462"),
                incarnation: 1,
                state: StateCode::Alive,
                vsn: Some(SERF_0_9_4_VSN),
            }]
        );
        assert_eq!(push_pull.user_state.len(), 585);
        assert_eq!(push_pull.user_state[0], 2);
        assert_eq!(message.encode(), bytes);
        assert_eq!(
            Message::decode(&bytes),
            Err(DecodeError::UnknownType(6)),
            "push/pull is stream-only"
        );
    }

    #[test]
    fn captured_indirect_ping_and_nack_decode_and_reencode() {
        let indirect = hex(
            "0188a44e61636bc3a44e6f6465a167a4506f7274cd1f0aa55365714e6f0faa536f7572636541646472a47f00000eaa53
            6f757263654e6f6465a165aa536f75726365506f7274cd1f0aa6546172676574a47f000010",
        );
        assert_eq!(
            decode_exact(&indirect),
            Message::IndirectPing(IndirectPing {
                seq_no: 15,
                target: v4(127, 0, 0, 16),
                port: 7946,
                node: "g".into(),
                nack: true,
                source_addr: Some(v4(127, 0, 0, 14)),
                source_port: 7946,
                source_node: "e".into(),
            })
        );
        assert_eq!(
            decode_exact(&hex("0b81a55365714e6f0f")),
            Message::Nack(Nack { seq_no: 15 })
        );
    }

    #[test]
    fn captured_relayed_query_ack_is_a_user_message() {
        let bytes = hex(
            "080982a8446573744164647283a24950a47f00000ea4506f7274cd1f0aa45a6f6e65a0a8446573744e616d65a1650585
            a5466c61677301a446726f6da165a24944ce093929d6a54c54696d6501a75061796c6f6164c0",
        );
        assert_eq!(bytes.len(), 86);
        assert_eq!(decode_exact(&bytes), Message::User(bytes[1..].to_vec()));
    }

    #[test]
    fn captured_name_conflict_compound_decodes_and_reencodes() {
        let packet = hex(
            "0c8fa3c59e0705003b003b003b001100790486a441646472a47f00000eab496e6361726e6174696f6e01a44d657461a2
            ff80a44e6f6465a165a4506f7274cd1f0aa356736ea60105020205050486a441646472a47f000010ab496e6361726e61
            74696f6e01a44d657461a2ff80a44e6f6465a167a4506f7274cd1f0aa356736ea60105020205050486a441646472a47f
            000011ab496e6361726e6174696f6e01a44d657461a2ff80a44e6f6465a166a4506f7274cd1f0aa356736ea601050202
            0505080182a54c54696d6502a44e6f6465a16608048ba441646472a47f000011a746696c74657273c0a5466c61677300
            a24944ce614402b4a54c54696d6502a44e616d65ae5f736572665f636f6e666c696374a75061796c6f6164a166a4506f
            7274cd1f0aab52656c6179466163746f7200aa536f757263654e6f6465a166a754696d656f7574cebebc2000",
        );
        let parts = split_compound(&packet[5..]);
        assert_eq!(parts.len(), 5);
        let empty_tags = [0xff, 0x80];
        assert_eq!(
            decode_exact(parts[0]),
            alive("e", v4(127, 0, 0, 14), 1, &empty_tags)
        );
        assert_eq!(
            decode_exact(parts[1]),
            alive("g", v4(127, 0, 0, 16), 1, &empty_tags)
        );
        assert_eq!(
            decode_exact(parts[2]),
            alive("f", v4(127, 0, 0, 17), 1, &empty_tags)
        );
        assert_eq!(
            decode_exact(parts[3]),
            Message::User(parts[3][1..].to_vec())
        );
        assert_eq!(
            decode_exact(parts[4]),
            Message::User(parts[4][1..].to_vec())
        );
        assert_eq!(parts[4][1], 4, "serf query");
    }

    #[test]
    fn hand_built_packets_decode_whatever_their_key_order() {
        // Reference 7.20: keys in Python's order, not Go's.
        let ping = Message::decode(&hex("0082a55365714e6f07a44e6f6465a168")).unwrap();
        assert_eq!(
            ping,
            Message::Ping(Ping {
                seq_no: 7,
                node: "h".into(),
                ..Ping::default()
            })
        );
        assert_eq!(ping.encode(), hex("0082a44e6f6465a168a55365714e6f07"));

        let compound =
            hex("07020010000f0082a55365714e6f09a44e6f6465a1680082a55365714e6f0aa44e6f6465a0");
        let parts = split_compound(&compound);
        assert_eq!(
            Message::decode(parts[0]).unwrap(),
            Message::Ping(Ping {
                seq_no: 9,
                node: "h".into(),
                ..Ping::default()
            })
        );
        assert_eq!(
            Message::decode(parts[1]).unwrap(),
            Message::Ping(Ping {
                seq_no: 10,
                ..Ping::default()
            })
        );

        assert!(matches!(
            Message::decode(&hex("00c1c1")),
            Err(DecodeError::Body { what: "ping", .. })
        ));
        assert_eq!(
            Message::decode(&hex("f4036162630082")),
            Err(DecodeError::UnknownType(244))
        );

        let push_pull = hex(
            "0683a54e6f64657301ac5573657253746174654c656e00a44a6f696ec287a44e616d65a27079a441646472a47f000013
             a4506f7274cd1f0aa44d657461a2ff80ab496e6361726e6174696f6e01a5537461746500a356736ea6010502020505",
        );
        assert_eq!(
            Message::decode_stream(&push_pull).unwrap(),
            Message::PushPull(PushPull {
                join: false,
                nodes: vec![PushNodeState {
                    name: "py".into(),
                    addr: v4(127, 0, 0, 19),
                    port: 7946,
                    meta: vec![0xff, 0x80],
                    incarnation: 1,
                    state: StateCode::Alive,
                    vsn: Some(SERF_0_9_4_VSN),
                }],
                user_state: Vec::new(),
            })
        );

        assert_eq!(
            Message::decode_stream(&hex("0082a55365714e6f63a44e6f6465a168")).unwrap(),
            Message::Ping(Ping {
                seq_no: 99,
                node: "h".into(),
                ..Ping::default()
            })
        );
        let ack = hex("0282a75061796c6f6164c0a55365714e6f63");
        let decoded = Message::decode_stream(&ack).unwrap();
        assert_eq!(
            decoded,
            Message::Ack(Ack {
                seq_no: 99,
                payload: None,
            })
        );
        assert_eq!(decoded.encode(), ack);
        assert_eq!(
            Message::decode_stream(&hex("0381a17801")),
            Err(DecodeError::InvalidStreamType(3))
        );

        let mut err = hex("0d81a54572726f72da003a");
        err.extend_from_slice(b"Remote state is encrypted and encryption is not configured");
        let decoded = Message::decode_stream(&err).unwrap();
        assert_eq!(
            decoded,
            Message::Err(ErrResp {
                error: "Remote state is encrypted and encryption is not configured".into(),
            })
        );
        assert_eq!(decoded.encode(), err);
    }

    fn every_message() -> Vec<Message> {
        let v6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 7));
        vec![
            Message::Ping(Ping {
                seq_no: 300,
                node: "node-a".into(),
                ..Ping::default()
            }),
            Message::Ping(Ping {
                seq_no: u32::MAX,
                node: String::new(),
                source_addr: Some(v6),
                source_port: 0,
                source_node: "x".into(),
            }),
            Message::IndirectPing(IndirectPing {
                seq_no: 70_000,
                target: v6,
                port: 0,
                node: "t".into(),
                nack: false,
                source_addr: None,
                source_port: 9,
                source_node: String::new(),
            }),
            Message::Ack(Ack {
                seq_no: 1,
                payload: Some(vec![7; 300]),
            }),
            Message::Ack(Ack {
                seq_no: 2,
                payload: Some(Vec::new()),
            }),
            Message::Ack(Ack::default()),
            Message::Nack(Nack { seq_no: 128 }),
            Message::Suspect(Suspect {
                incarnation: 5,
                node: "n".into(),
                from: "m".into(),
            }),
            Message::Alive(Alive {
                incarnation: 0,
                node: "é".repeat(40),
                addr: v6,
                port: 65535,
                meta: Vec::new(),
                vsn: None,
            }),
            Message::Dead(Dead {
                incarnation: u32::MAX,
                node: "n".into(),
                from: "n".into(),
            }),
            Message::User(vec![3, 0x80]),
            Message::User(Vec::new()),
        ]
    }

    #[test]
    fn every_udp_message_round_trips() {
        for message in every_message() {
            let bytes = message.encode();
            assert_eq!(
                Message::decode(&bytes).as_ref(),
                Ok(&message),
                "{bytes:02x?}"
            );
        }
    }

    #[test]
    fn every_stream_message_round_trips() {
        let push_pull = Message::PushPull(PushPull {
            join: false,
            nodes: (0..20)
                .map(|i| PushNodeState {
                    name: format!("node-{i}"),
                    addr: v4(10, 0, 0, i),
                    port: 7946,
                    meta: vec![i; usize::from(i)],
                    incarnation: u32::from(i) * 1000,
                    state: [
                        StateCode::Alive,
                        StateCode::Suspect,
                        StateCode::Dead,
                        StateCode::Left,
                    ][usize::from(i % 4)],
                    vsn: if i == 3 {
                        None
                    } else {
                        Some([1, 5, 2, 2, 5, i])
                    },
                })
                .collect(),
            user_state: vec![2; 1000],
        });
        let err = Message::Err(ErrResp {
            error: "boom".into(),
        });
        let ping = Message::Ping(Ping::default());
        let ack = Message::Ack(Ack {
            seq_no: 3,
            payload: None,
        });
        for message in [push_pull, err, ping, ack] {
            let bytes = message.encode();
            assert_eq!(Message::decode_stream(&bytes).as_ref(), Ok(&message));
        }
        let user = Message::encode_user_stream(b"hello");
        assert_eq!(user, hex("0881aa557365724d73674c656e0568656c6c6f"));
        assert_eq!(
            Message::decode_stream(&user),
            Ok(Message::User(b"hello".to_vec()))
        );
        let empty = Message::encode_user_stream(b"");
        assert_eq!(
            Message::decode_stream(&empty),
            Ok(Message::User(Vec::new()))
        );
    }

    #[test]
    fn ping_source_fields_are_omitted_when_empty() {
        let bare = Message::Ping(Ping {
            seq_no: 1,
            node: "a".into(),
            ..Ping::default()
        });
        assert_eq!(bare.encode(), hex("0082a44e6f6465a161a55365714e6f01"));
        let port_only = Message::Ping(Ping {
            seq_no: 1,
            node: String::new(),
            source_port: 7946,
            ..Ping::default()
        });
        assert_eq!(
            port_only.encode(),
            hex("0083a44e6f6465a0a55365714e6f01aa536f75726365506f7274cd1f0a")
        );
    }

    /// An alive body written by hand: `[4]` + whatever `build` writes.
    fn alive_with(build: impl FnOnce(&mut Encoder)) -> Vec<u8> {
        let mut e = Encoder::with_type(4);
        build(&mut e);
        e.into_inner()
    }

    #[test]
    fn unknown_keys_missing_keys_and_nils_are_tolerated() {
        let bytes = alive_with(|e| {
            e.map(6)
                .str("Future")
                .array(2)
                .uint(1)
                .map(0)
                .str("Node")
                .str("a")
                .str("Addr")
                .raw(&[10, 0, 0, 1])
                .str("Meta")
                .nil()
                .str("Vsn")
                .nil()
                .str("Incarnation")
                .nil();
        });
        assert_eq!(
            Message::decode(&bytes),
            Ok(Message::Alive(Alive {
                incarnation: 0,
                node: "a".into(),
                addr: v4(10, 0, 0, 1),
                port: 0,
                meta: Vec::new(),
                vsn: None,
            }))
        );
        let nack = Message::decode(&[11, 0x80]);
        assert_eq!(nack, Ok(Message::Nack(Nack { seq_no: 0 })));
        let nil_body = Message::decode(&[11, 0xc0]);
        assert_eq!(nil_body, Ok(Message::Nack(Nack { seq_no: 0 })));
        assert!(
            Message::decode(&[4, 0x80]).is_err(),
            "an alive needs an address"
        );
    }

    #[test]
    fn byte_fields_accept_bin_and_arrays_but_string_fields_refuse_bin() {
        let bytes = alive_with(|e| {
            e.map(4)
                .str("Addr")
                .bytes(&[0xc4, 4, 10, 0, 0, 2])
                .str("Meta")
                .bytes(&[0xc4, 2, 0xff, 0x80])
                .str("Node")
                .str("b")
                .str("Vsn")
                .array(6);
            for b in SERF_0_9_4_VSN {
                e.uint(u64::from(b));
            }
        });
        let Ok(Message::Alive(alive)) = Message::decode(&bytes) else {
            panic!("bin bytes refused");
        };
        assert_eq!(alive.addr, v4(10, 0, 0, 2));
        assert_eq!(alive.meta, [0xff, 0x80]);
        assert_eq!(alive.vsn, Some(SERF_0_9_4_VSN));

        let bin_name = alive_with(|e| {
            e.map(2)
                .str("Addr")
                .raw(&[10, 0, 0, 2])
                .str("Node")
                .bytes(&[0xc4, 1, b'b']);
        });
        assert!(matches!(
            Message::decode(&bin_name),
            Err(DecodeError::Body { what: "alive", .. })
        ));
        let bin_key = alive_with(|e| {
            e.map(1).bytes(&[0xc4, 4]).bytes(b"Node").str("b");
        });
        assert!(Message::decode(&bin_key).is_err());
    }

    #[test]
    fn ipv4_mapped_addresses_decode_as_ipv4() {
        let mapped = Ipv4Addr::new(127, 0, 0, 10).to_ipv6_mapped().octets();
        let bytes = alive_with(|e| {
            e.map(3)
                .str("Addr")
                .raw(&mapped)
                .str("Node")
                .str("a")
                .str("Vsn")
                .raw(&SERF_0_9_4_VSN);
        });
        let Ok(Message::Alive(alive)) = Message::decode(&bytes) else {
            panic!("mapped address refused");
        };
        assert_eq!(alive.addr, v4(127, 0, 0, 10));

        let mut e = Encoder::with_type(0);
        e.map(2).str("SeqNo").uint(1).str("SourceAddr").raw(&mapped);
        let Ok(Message::Ping(ping)) = Message::decode(&e.into_inner()) else {
            panic!("mapped source refused");
        };
        assert_eq!(ping.source_addr, Some(v4(127, 0, 0, 10)));

        let bad = alive_with(|e| {
            e.map(1).str("Addr").raw(&[1, 2, 3, 4, 5]);
        });
        assert!(Message::decode(&bad).is_err());
    }

    #[test]
    fn bools_decode_from_zero_and_one() {
        let mut e = Encoder::with_type(1);
        e.map(3)
            .str("Nack")
            .uint(1)
            .str("Target")
            .raw(&[10, 0, 0, 3])
            .str("SeqNo")
            .uint(4);
        let Ok(Message::IndirectPing(ping)) = Message::decode(&e.into_inner()) else {
            panic!("indirect ping refused");
        };
        assert!(ping.nack);

        let mut e = Encoder::with_type(6);
        e.map(3)
            .str("Join")
            .uint(1)
            .str("Nodes")
            .uint(0)
            .str("UserStateLen")
            .uint(0);
        let Ok(Message::PushPull(push_pull)) = Message::decode_stream(&e.into_inner()) else {
            panic!("push/pull refused");
        };
        assert!(push_pull.join);
    }

    #[test]
    fn vsn_needs_six_bytes_and_extra_bytes_are_ignored() {
        let with_vsn = |vsn: &[u8]| {
            alive_with(|e| {
                e.map(2).str("Addr").raw(&[10, 0, 0, 4]).str("Vsn").raw(vsn);
            })
        };
        assert!(Message::decode(&with_vsn(&[1, 5, 2])).is_err());
        let Ok(Message::Alive(alive)) = Message::decode(&with_vsn(&[1, 5, 2, 2, 5, 4, 9])) else {
            panic!("long vsn refused");
        };
        assert_eq!(alive.vsn, Some([1, 5, 2, 2, 5, 4]));
        let Ok(Message::Alive(alive)) = Message::decode(&with_vsn(&[])) else {
            panic!("empty vsn refused");
        };
        assert_eq!(alive.vsn, None);
    }

    #[test]
    fn array_encoded_structs_decode_in_declaration_order() {
        let mut e = Encoder::with_type(0);
        e.array(5)
            .uint(8)
            .str("h")
            .raw(&[10, 0, 0, 5])
            .uint(7946)
            .str("me");
        assert_eq!(
            Message::decode(&e.into_inner()),
            Ok(Message::Ping(Ping {
                seq_no: 8,
                node: "h".into(),
                source_addr: Some(v4(10, 0, 0, 5)),
                source_port: 7946,
                source_node: "me".into(),
            }))
        );
        let mut e = Encoder::with_type(3);
        e.array(3).uint(2).str("n").str("f");
        assert_eq!(
            Message::decode(&e.into_inner()),
            Ok(Message::Suspect(Suspect {
                incarnation: 2,
                node: "n".into(),
                from: "f".into(),
            }))
        );
    }

    #[test]
    fn push_pull_lengths_are_checked() {
        let header = |nodes: i64, user_state_len: i64| {
            let mut e = Encoder::with_type(6);
            e.map(3)
                .str("Join")
                .bool(false)
                .str("Nodes")
                .int(nodes)
                .str("UserStateLen")
                .int(user_state_len);
            e.into_inner()
        };
        assert!(
            Message::decode_stream(&header(0, 1)).is_err(),
            "user state cut short"
        );
        assert!(Message::decode_stream(&header(-1, 0)).is_err());
        assert!(Message::decode_stream(&header(0, -1)).is_err());
        assert!(
            Message::decode_stream(&header(i64::MAX, 0)).is_err(),
            "more nodes than bytes"
        );
        assert!(Message::decode_stream(&header(1 << 40, 0)).is_err());
        let mut extra = header(0, 2);
        extra.extend([1, 2, 3]);
        let Ok(Message::PushPull(push_pull)) = Message::decode_stream(&extra) else {
            panic!("push/pull refused");
        };
        assert_eq!(push_pull.user_state, [1, 2]);

        let mut bad_state = header(1, 0);
        let mut e = Encoder::new();
        e.map(2)
            .str("Addr")
            .raw(&[10, 0, 0, 6])
            .str("State")
            .uint(4);
        bad_state.extend(e.into_inner());
        assert!(Message::decode_stream(&bad_state).is_err());

        let mut short_user = Message::encode_user_stream(b"hello");
        short_user.pop();
        assert!(Message::decode_stream(&short_user).is_err());
    }

    #[test]
    fn types_are_checked_per_transport() {
        assert_eq!(Message::decode(&[]), Err(DecodeError::Empty));
        assert_eq!(Message::decode_stream(&[]), Err(DecodeError::Empty));
        for byte in [6, 7, 9, 10, 12, 13, 14, 244] {
            assert_eq!(
                Message::decode(&[byte, 0x80]),
                Err(DecodeError::UnknownType(byte))
            );
        }
        for byte in [1, 3, 4, 5, 7, 9, 10, 11, 12, 200] {
            assert_eq!(
                Message::decode_stream(&[byte, 0x80]),
                Err(DecodeError::InvalidStreamType(byte))
            );
        }
    }

    fn arb_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(|b| IpAddr::V4(Ipv4Addr::from(b))),
            any::<[u8; 16]>().prop_map(|b| match Ipv6Addr::from(b).to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(Ipv6Addr::from(b)),
            }),
        ]
    }

    proptest! {
        #[test]
        fn decoders_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Message::decode(&bytes);
            let _ = Message::decode_stream(&bytes);
            for byte in 0..=14u8 {
                let mut prefixed = vec![byte];
                prefixed.extend_from_slice(&bytes);
                let _ = Message::decode(&prefixed);
                let _ = Message::decode_stream(&prefixed);
            }
        }

        #[test]
        fn alive_and_ping_round_trip(
            incarnation in any::<u32>(),
            node in ".{0,40}",
            addr in arb_ip(),
            port in any::<u16>(),
            meta in proptest::collection::vec(any::<u8>(), 0..600),
            vsn in proptest::option::of(any::<[u8; 6]>()),
            source in proptest::option::of(arb_ip()),
        ) {
            let alive = Message::Alive(Alive { incarnation, node: node.clone(), addr, port, meta, vsn });
            prop_assert_eq!(Message::decode(&alive.encode()), Ok(alive));
            let ping = Message::Ping(Ping {
                seq_no: incarnation,
                node: node.clone(),
                source_addr: source,
                source_port: port,
                source_node: node,
            });
            prop_assert_eq!(Message::decode_stream(&ping.encode()), Ok(ping));
        }
    }
}
