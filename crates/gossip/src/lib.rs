//! SWIM membership and failure detection, speaking memberlist 0.2.2's wire protocol.
//!
//! `Memberlist` is a pure state machine (a sans-io core): it takes packets, completed
//! streams, commands and the current time, and yields packets to send, streams to open,
//! timers and calls into its [`Delegate`] (Serf). It never touches a socket, task, file or
//! clock; randomness comes from a seed.
#![forbid(unsafe_code)]

pub mod awareness;
pub mod broadcast;
pub mod error;
pub mod keyring;
pub mod log_limit;
pub mod lzw;
pub mod memberlist;
pub mod message;
pub mod msgpack;
pub mod packet;
pub mod suspicion;

#[cfg(any(test, feature = "sim"))]
pub mod sim;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub use broadcast::{BroadcastId, BroadcastQueue};
pub use error::{DecodeError, StreamError, StreamStage};
pub use keyring::Keyring;
pub use log_limit::LogLimiter;
pub use memberlist::Memberlist;
pub use message::Vsn;

/// Timings and switches (reference 2.18); `lan`, `wan` and `local` are Serf's profiles.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's name.
    pub name: String,
    /// The address peers reach this node at (UDP and TCP).
    pub advertise: SocketAddr,
    /// `[pmin, pmax, pcur, dmin, dmax, dcur]` advertised in alive messages.
    pub vsn: Vsn,
    /// Encrypts everything sent and requires encryption of everything received.
    pub keyring: Option<Keyring>,
    /// LZW-compress outgoing packets and streams.
    pub enable_compression: bool,
    pub tcp_timeout: Duration,
    pub indirect_checks: usize,
    pub retransmit_mult: u32,
    pub suspicion_mult: u32,
    pub suspicion_max_timeout_mult: u32,
    pub push_pull_interval: Duration,
    pub probe_timeout: Duration,
    pub probe_interval: Duration,
    pub gossip_interval: Duration,
    pub gossip_nodes: usize,
    pub gossip_to_the_dead_time: Duration,
    pub awareness_max_multiplier: u32,
    pub disable_tcp_pings: bool,
    /// Gossips newly queued broadcasts within a tenth of `gossip_interval` instead of at the
    /// next tick (not in memberlist, whose timing `false` reproduces). Each message is still
    /// sent its bounded number of times; only the first round comes sooner.
    pub eager_gossip: bool,
    /// Budget for piggybacked gossip in one UDP packet.
    pub udp_buffer_size: usize,
    /// Messages waiting for the (alive / other) handoff queues before excess is dropped.
    pub handoff_queue_depth: usize,
}

/// A node's state as memberlist sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeState {
    Alive,
    Suspect,
    Dead,
    Left,
}

/// A node memberlist knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    /// Gossip address (UDP and TCP).
    pub addr: SocketAddr,
    /// Opaque delegate metadata (Serf's tags), at most 512 bytes.
    pub meta: Vec<u8>,
    /// Version vector (all zeros if the node sent none).
    pub vsn: Vsn,
    pub incarnation: u32,
    pub state: NodeState,
}

/// What Serf plugs into memberlist. Every method has a do-nothing default.
pub trait Delegate {
    /// This node's metadata for alive messages (at most `limit` bytes).
    fn node_meta(&mut self, limit: usize) -> Vec<u8> {
        let _ = limit;
        Vec::new()
    }
    /// A user message (the bytes after type `8`) arrived by UDP or stream.
    fn notify_user_msg(&mut self, now: Instant, msg: &[u8]) {
        let _ = (now, msg);
    }
    /// Messages to piggyback: each costs `overhead` bytes besides its length; together at
    /// most `limit` bytes. Returned bytes are sent as `[8] ++ msg`.
    fn get_broadcasts(&mut self, overhead: usize, limit: usize) -> Vec<Vec<u8>> {
        let _ = (overhead, limit);
        Vec::new()
    }
    /// Changes whenever the delegate queues a new broadcast (for example the sum of its
    /// queues' [`BroadcastQueue::generation`]), so that new messages are gossiped promptly.
    fn broadcast_generation(&self) -> u64 {
        0
    }
    /// The user state to send in a push/pull.
    fn local_state(&mut self, join: bool) -> Vec<u8> {
        let _ = join;
        Vec::new()
    }
    /// A peer's user state from a push/pull (only called when non-empty).
    fn merge_remote_state(&mut self, now: Instant, state: &[u8], join: bool) {
        let _ = (now, state, join);
    }
    /// A node became alive (first seen, or back from dead/left).
    fn notify_join(&mut self, now: Instant, node: &Node) {
        let _ = (now, node);
    }
    /// A node is dead or left (`node.state` says which).
    fn notify_leave(&mut self, now: Instant, node: &Node) {
        let _ = (now, node);
    }
    /// A live node's metadata or address changed.
    fn notify_update(&mut self, now: Instant, node: &Node) {
        let _ = (now, node);
    }
    /// Another node claims a name we know with a different address.
    fn notify_conflict(&mut self, now: Instant, existing: &Node, other: &Node) {
        let _ = (now, existing, other);
    }
    /// The payload of acks this node sends to direct UDP pings.
    fn ack_payload(&mut self) -> Vec<u8> {
        Vec::new()
    }
    /// A direct probe of `node` got an ack after `rtt` with `payload`.
    fn notify_ping_complete(&mut self, now: Instant, node: &Node, rtt: Duration, payload: &[u8]) {
        let _ = (now, node, rtt, payload);
    }
}

/// A UDP packet to send, fully encoded (compressed, CRC'd, encrypted as configured).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub to: SocketAddr,
    pub payload: Vec<u8>,
}

/// Names one outbound stream until its reply comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u64);

/// An outbound TCP stream for the shell to run: connect to `to`, write `payload`, and, if
/// `expects_reply`, read one message (`packet::stream_frame_len`) and hand it to
/// [`Memberlist::handle_stream_reply`]; give up at `deadline` and report the failure there too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRequest {
    pub id: StreamId,
    pub to: SocketAddr,
    pub payload: Vec<u8>,
    pub expects_reply: bool,
    pub deadline: Instant,
}

/// Names one `join` until its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JoinId(pub u64);

/// How a join ended: how many addresses were contacted successfully, and the last error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinOutcome {
    pub id: JoinId,
    pub joined: usize,
    pub errors: Vec<(SocketAddr, String)>,
}

/// Counters for `serf info` and the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    pub packets_received: u64,
    pub packets_sent: u64,
    /// Packets or parts that failed to decode, decrypt or verify and were dropped.
    pub packets_dropped: u64,
    /// Messages dropped because a handoff queue was full.
    pub handoff_dropped: u64,
    /// Streams served and opened.
    pub streams_in: u64,
    pub streams_out: u64,
    pub stream_errors: u64,
    /// Packets refused by encryption: no key opened them, or plaintext arrived where
    /// encryption is required (also counted in `packets_dropped`).
    pub packets_decrypt_failed: u64,
    /// Inbound streams refused by encryption, the same way (also in `stream_errors`).
    pub streams_decrypt_failed: u64,
    /// Local health (0 = healthy).
    pub awareness: u32,
    /// memberlist broadcasts waiting to be sent.
    pub queued_broadcasts: usize,
}

impl Config {
    /// Serf's default LAN profile (reference 2.18).
    pub fn lan(name: String, advertise: SocketAddr) -> Config {
        Config {
            name,
            advertise,
            vsn: message::SERF_0_9_4_VSN,
            keyring: None,
            enable_compression: true,
            tcp_timeout: Duration::from_secs(10),
            indirect_checks: 3,
            retransmit_mult: 4,
            suspicion_mult: 4,
            suspicion_max_timeout_mult: 6,
            push_pull_interval: Duration::from_secs(30),
            probe_timeout: Duration::from_millis(500),
            probe_interval: Duration::from_secs(1),
            gossip_interval: Duration::from_millis(200),
            gossip_nodes: 3,
            gossip_to_the_dead_time: Duration::from_secs(30),
            awareness_max_multiplier: 8,
            disable_tcp_pings: false,
            eager_gossip: true,
            udp_buffer_size: 1400,
            handoff_queue_depth: 1024,
        }
    }

    /// Serf's WAN profile.
    pub fn wan(name: String, advertise: SocketAddr) -> Config {
        Config {
            tcp_timeout: Duration::from_secs(30),
            suspicion_mult: 6,
            push_pull_interval: Duration::from_secs(60),
            probe_timeout: Duration::from_secs(3),
            probe_interval: Duration::from_secs(5),
            gossip_interval: Duration::from_millis(500),
            gossip_nodes: 4,
            gossip_to_the_dead_time: Duration::from_secs(60),
            ..Config::lan(name, advertise)
        }
    }

    /// Serf's local (loopback) profile.
    pub fn local(name: String, advertise: SocketAddr) -> Config {
        Config {
            tcp_timeout: Duration::from_secs(1),
            indirect_checks: 1,
            retransmit_mult: 2,
            suspicion_mult: 3,
            push_pull_interval: Duration::from_secs(15),
            probe_timeout: Duration::from_millis(200),
            gossip_interval: Duration::from_millis(100),
            gossip_to_the_dead_time: Duration::from_secs(15),
            ..Config::lan(name, advertise)
        }
    }

    /// The profile named by `-profile` (`lan`, `wan` or `local`).
    pub fn profile(profile: &str, name: String, advertise: SocketAddr) -> Option<Config> {
        match profile {
            "lan" => Some(Config::lan(name, advertise)),
            "wan" => Some(Config::wan(name, advertise)),
            "local" => Some(Config::local(name, advertise)),
            _ => None,
        }
    }
}
