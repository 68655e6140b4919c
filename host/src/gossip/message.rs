//! memberlist 0.2.2's messages (reference 2.2, 2.3) and their gossip-dialect msgpack codec.
//!
//! Each message is a Rust struct whose fields mirror the Go struct; `encode` writes the type
//! byte followed by the msgpack body exactly as Go emits it (keys sorted, smallest integers,
//! byte strings with str-family headers, `omitempty` where Go has it), and `decode` accepts
//! everything Go accepts (any key order, unknown keys, missing keys, nil, str or bin bytes,
//! array-encoded structs).

use std::net::IpAddr;

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
        todo!("message codec")
    }

    /// Decodes one message as it arrives in a UDP packet (after the packet layer unwrapped
    /// compound/compress/CRC/encryption): `msg[0]` is the type byte.
    pub fn decode(msg: &[u8]) -> Result<Message, super::DecodeError> {
        let _ = msg;
        todo!("message codec")
    }

    /// Decodes a plaintext stream message: as `decode`, except that a user message is
    /// `[8] {UserMsgLen} bytes` and only ping, ack, push/pull, user and err are allowed.
    pub fn decode_stream(msg: &[u8]) -> Result<Message, super::DecodeError> {
        let _ = msg;
        todo!("message codec")
    }

    /// The stream form of a user message: `[8] {UserMsgLen} bytes`.
    pub fn encode_user_stream(bytes: &[u8]) -> Vec<u8> {
        let _ = bytes;
        todo!("message codec")
    }
}
