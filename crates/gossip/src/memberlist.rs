//! The SWIM membership state machine (reference 2.14–2.18): probing with Lifeguard awareness
//! and suspicion, gossip of alive/suspect/dead, push/pull anti-entropy and joins.
//!
//! Pure: every input carries `now`, every output is queued for the shell (`poll_transmit`,
//! `poll_stream`, `poll_join_outcome`) or handed to the [`Delegate`] as it happens.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::awareness::Awareness;
use super::broadcast::{BroadcastId, BroadcastQueue};
use super::keyring::{ENCRYPTION_OVERHEAD, Keyring};
use super::log_limit::LogLimiter;
use super::message::{
    Ack, Alive, Dead, ErrResp, IndirectPing, Message, Nack, Ping, PushNodeState, PushPull,
    StateCode, Suspect,
};
use super::packet::{self, PackOptions};
use super::suspicion::{Suspicion, suspicion_timeout};
use super::{
    Config, DecodeError, Delegate, JoinId, JoinOutcome, Node, NodeState, Stats, StreamError,
    StreamId, StreamRequest, Transmit,
};

/// The most node metadata memberlist carries (`MetaMaxSize`).
pub const META_MAX_SIZE: usize = 512;

/// Compound header: type byte and part count.
const COMPOUND_HEADER_OVERHEAD: usize = 2;
/// Per part of a compound: its u16 length.
const COMPOUND_OVERHEAD: usize = 2;
/// The `[8]` in front of every delegate message.
const USER_MSG_OVERHEAD: usize = 1;
/// Most parts a compound can name.
const MAX_COMPOUND_PARTS: usize = 255;
/// Push/pull periods grow beyond this many nodes.
const PUSH_PULL_SCALE_THRESHOLD: usize = 32;
/// Indirect probes this node runs for others at once; more are refused.
const MAX_RELAYS: usize = 1024;
/// At most one warning per this interval about packets (and one about streams) that
/// encryption refused; each line counts the ones held back since the last.
const CRYPTO_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Whether a decode error means the sender's encryption does not match ours: a key we do not
/// have, plaintext where encryption is required, or ciphertext where it is not configured.
fn is_crypto_refusal(error: &DecodeError) -> bool {
    matches!(
        error,
        DecodeError::Decrypt | DecodeError::NotEncrypted | DecodeError::EncryptionNotConfigured
    )
}

#[derive(Debug, Clone)]
struct NodeEntry {
    node: Node,
    state_change: Instant,
}

impl NodeEntry {
    fn is_dead_or_left(&self) -> bool {
        matches!(self.node.state, NodeState::Dead | NodeState::Left)
    }

    fn pmax(&self) -> u8 {
        self.node.vsn[1]
    }
}

/// The probe in flight (at most one).
#[derive(Debug, Clone)]
struct Probe {
    seq: u32,
    target: String,
    target_addr: SocketAddr,
    incarnation: u32,
    sent: Instant,
    /// When indirect probes start.
    probe_timeout_at: Instant,
    /// When the probe fails without an ack.
    deadline: Instant,
    indirect_sent: bool,
    expected_nacks: usize,
    nacks: usize,
    tcp_contact: bool,
    /// The fallback TCP ping was refused: the target's agent is gone.
    refused: bool,
}

/// An indirect probe this node runs for a peer.
#[derive(Debug, Clone)]
struct Relay {
    original_seq: u32,
    reply_to: SocketAddr,
    nack: bool,
    expires_at: Instant,
}

#[derive(Debug, Clone)]
enum StreamKind {
    Join { join: JoinId, addr: SocketAddr },
    PushPull { addr: SocketAddr },
    TcpPing { seq: u32 },
}

#[derive(Debug, Clone)]
struct PendingStream {
    kind: StreamKind,
    /// Given up on if the shell never reports back.
    expires_at: Instant,
}

#[derive(Debug, Clone)]
struct JoinProgress {
    pending: usize,
    joined: usize,
    errors: Vec<(SocketAddr, String)>,
}

#[derive(Debug, Clone)]
struct Leave {
    at: Instant,
    broadcast: Option<BroadcastId>,
    anyone_to_tell: bool,
    /// `tcp_timeout` has passed since the leave.
    timed_out: bool,
}

/// One node's view of the cluster: SWIM failure detection and gossip over memberlist
/// 0.2.2's wire protocol, driven by the shell through `handle_*` and drained via `poll_*`.
pub struct Memberlist<D: Delegate> {
    config: Config,
    delegate: D,
    rng: StdRng,
    /// Probe order; every name is in `nodes`.
    order: Vec<String>,
    nodes: HashMap<String, NodeEntry>,
    incarnation: u32,
    seq_no: u32,
    awareness: Awareness,
    broadcasts: BroadcastQueue,
    suspicions: BTreeMap<String, Suspicion>,
    probe: Option<Probe>,
    probe_index: usize,
    probe_tick_pending: bool,
    next_probe_at: Option<Instant>,
    next_gossip_at: Option<Instant>,
    /// When gossip last went out (tick or eager round), and how many broadcasts had been
    /// queued by then (see [`Memberlist::broadcast_generation`]).
    last_gossip_at: Instant,
    gossiped_generation: u64,
    next_push_pull_at: Option<Instant>,
    push_pull_in_flight: bool,
    relays: BTreeMap<u32, Relay>,
    streams: BTreeMap<StreamId, PendingStream>,
    next_stream_id: u64,
    joins: BTreeMap<JoinId, JoinProgress>,
    next_join_id: u64,
    join_outcomes: VecDeque<JoinOutcome>,
    transmits: VecDeque<Transmit>,
    stream_requests: VecDeque<StreamRequest>,
    leave: Option<Leave>,
    stats: Stats,
    /// Warnings about packets and streams that encryption refused, one per interval each.
    packet_crypto_log: LogLimiter,
    stream_crypto_log: LogLimiter,
}

impl<D: Delegate> std::fmt::Debug for Memberlist<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memberlist")
            .field("name", &self.config.name)
            .field("nodes", &self.order.len())
            .field("incarnation", &self.incarnation)
            .finish_non_exhaustive()
    }
}

fn stagger(rng: &mut StdRng, interval: Duration) -> Duration {
    let nanos = u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        Duration::ZERO
    } else {
        Duration::from_nanos(rng.random_range(0..nanos))
    }
}

/// The first tick of a grid `interval` apart after `now`, starting from `previous`.
fn next_tick(previous: Instant, interval: Duration, now: Instant) -> Instant {
    if previous > now {
        return previous;
    }
    let behind = now.duration_since(previous).as_nanos();
    let step = interval.as_nanos().max(1);
    let ticks = u32::try_from(behind / step + 1).unwrap_or(u32::MAX);
    previous + interval.saturating_mul(ticks)
}

/// `interval * (ceil(log2(n) - log2(32)) + 1)` beyond 32 nodes.
fn push_pull_scale(interval: Duration, num_nodes: usize) -> Duration {
    if num_nodes <= PUSH_PULL_SCALE_THRESHOLD {
        return interval;
    }
    let multiplier =
        ((num_nodes as f64).log2() - (PUSH_PULL_SCALE_THRESHOLD as f64).log2()).ceil() + 1.0;
    interval.saturating_mul(multiplier as u32)
}

fn state_code(state: NodeState) -> StateCode {
    match state {
        NodeState::Alive => StateCode::Alive,
        NodeState::Suspect => StateCode::Suspect,
        NodeState::Dead => StateCode::Dead,
        NodeState::Left => StateCode::Left,
    }
}

impl<D: Delegate> Memberlist<D> {
    /// A cluster of one: the local node alive with incarnation 1 and the delegate's metadata.
    /// `seed` makes every random choice (timers, targets, nonces) reproducible.
    pub fn new(config: Config, mut delegate: D, seed: u64, now: Instant) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let meta = delegate.node_meta(META_MAX_SIZE);
        if meta.len() > META_MAX_SIZE {
            tracing::warn!(len = meta.len(), "node metadata exceeds 512 bytes");
        }
        let local = Node {
            name: config.name.clone(),
            addr: config.advertise,
            meta,
            vsn: config.vsn,
            incarnation: 1,
            state: NodeState::Alive,
        };
        let nodes = HashMap::from([(
            config.name.clone(),
            NodeEntry {
                node: local,
                state_change: now,
            },
        )]);
        let interval = |d: Duration| (!d.is_zero()).then_some(d);
        let next_probe_at = interval(config.probe_interval).map(|d| now + stagger(&mut rng, d));
        let next_gossip_at = interval(config.gossip_interval).map(|d| now + stagger(&mut rng, d));
        let next_push_pull_at =
            interval(config.push_pull_interval).map(|d| now + stagger(&mut rng, d) + d);
        let mut broadcasts = BroadcastQueue::new(config.retransmit_mult);
        broadcasts.set_num_nodes(1);
        // Announce ourselves as memberlist does on start: once a join gives us peers, our own
        // alive is gossiped beside the one the seed re-broadcasts, so a burst of joins does not
        // leave a node known only to its seed.
        let own_alive = Message::Alive(Alive {
            incarnation: 1,
            node: config.name.clone(),
            addr: config.advertise.ip(),
            port: config.advertise.port(),
            meta: nodes[&config.name].node.meta.clone(),
            vsn: Some(config.vsn),
        });
        broadcasts.queue(Some(config.name.clone()), own_alive.encode());
        Memberlist {
            order: vec![config.name.clone()],
            nodes,
            incarnation: 1,
            seq_no: 0,
            awareness: Awareness::new(config.awareness_max_multiplier),
            broadcasts,
            suspicions: BTreeMap::new(),
            probe: None,
            probe_index: 0,
            probe_tick_pending: false,
            next_probe_at,
            next_gossip_at,
            last_gossip_at: now,
            gossiped_generation: 0,
            next_push_pull_at,
            push_pull_in_flight: false,
            relays: BTreeMap::new(),
            streams: BTreeMap::new(),
            next_stream_id: 0,
            joins: BTreeMap::new(),
            next_join_id: 0,
            join_outcomes: VecDeque::new(),
            transmits: VecDeque::new(),
            stream_requests: VecDeque::new(),
            leave: None,
            stats: Stats::default(),
            packet_crypto_log: LogLimiter::new(CRYPTO_LOG_INTERVAL),
            stream_crypto_log: LogLimiter::new(CRYPTO_LOG_INTERVAL),
            config,
            delegate,
            rng,
        }
    }

    pub fn delegate(&self) -> &D {
        &self.delegate
    }

    pub fn delegate_mut(&mut self) -> &mut D {
        &mut self.delegate
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn local_node(&self) -> &Node {
        &self.nodes[&self.config.name].node
    }

    /// Every node in the list, including this one and suspect, dead and left nodes not yet
    /// forgotten (dead nodes go after `gossip_to_the_dead_time`, at a probe-round wrap).
    pub fn members(&self) -> impl Iterator<Item = &Node> {
        self.order
            .iter()
            .filter_map(|name| self.nodes.get(name))
            .map(|entry| &entry.node)
    }

    /// Nodes neither dead nor left, this one included.
    pub fn num_alive(&self) -> usize {
        self.nodes.values().filter(|e| !e.is_dead_or_left()).count()
    }

    /// Starts a push/pull (join) with each address; the outcome comes from
    /// [`Memberlist::poll_join_outcome`] once all have finished.
    pub fn join(&mut self, now: Instant, addrs: Vec<SocketAddr>) -> JoinId {
        self.next_join_id += 1;
        let id = JoinId(self.next_join_id);
        if addrs.is_empty() {
            self.join_outcomes.push_back(JoinOutcome {
                id,
                joined: 0,
                errors: Vec::new(),
            });
            return id;
        }
        self.joins.insert(
            id,
            JoinProgress {
                pending: addrs.len(),
                joined: 0,
                errors: Vec::new(),
            },
        );
        for addr in addrs {
            let message = self.local_state_message(true);
            let deadline = now + self.config.tcp_timeout;
            self.push_stream(addr, message, deadline, StreamKind::Join { join: id, addr });
        }
        id
    }

    pub fn poll_join_outcome(&mut self) -> Option<JoinOutcome> {
        self.join_outcomes.pop_front()
    }

    /// Leaves gracefully: broadcasts `dead` about this node from this node (peers see it as
    /// left) and from then on ignores alive/suspect/dead about itself.
    pub fn leave(&mut self, now: Instant) {
        if self.leave.is_some() {
            return;
        }
        let anyone_to_tell = self.any_alive();
        self.leave = Some(Leave {
            at: now,
            broadcast: None,
            anyone_to_tell,
            timed_out: false,
        });
        let incarnation = self.local_node().incarnation;
        let name = self.config.name.clone();
        self.dead_node(
            now,
            Dead {
                incarnation,
                node: name.clone(),
                from: name,
            },
        );
    }

    /// Whether the leave broadcast went out its full number of times, or there was nobody to
    /// tell, or `tcp_timeout` has passed since [`Memberlist::leave`]. False before leaving.
    pub fn is_leave_broadcast_done(&self, now: Instant) -> bool {
        let Some(leave) = &self.leave else {
            return false;
        };
        !leave.anyone_to_tell
            || leave
                .broadcast
                .is_none_or(|id| !self.broadcasts.is_queued(id))
            || now >= leave.at + self.config.tcp_timeout
    }

    /// Re-reads the delegate's metadata and announces it with a new incarnation.
    pub fn update_node(&mut self, now: Instant) {
        let meta = self.delegate.node_meta(META_MAX_SIZE);
        let incarnation = self.next_incarnation();
        let alive = Alive {
            incarnation,
            node: self.config.name.clone(),
            addr: self.config.advertise.ip(),
            port: self.config.advertise.port(),
            meta,
            vsn: Some(self.config.vsn),
        };
        self.alive_node(now, alive, true);
    }

    /// Sends a delegate message by UDP to `to` as `[8] ++ msg` (no CRC, nothing piggybacked).
    pub fn send_user(&mut self, now: Instant, to: SocketAddr, msg: &[u8]) {
        let _ = now;
        let mut bytes = Vec::with_capacity(msg.len() + 1);
        bytes.push(super::message::MessageType::User as u8);
        bytes.extend_from_slice(msg);
        self.send_raw(to, &bytes, false);
    }

    pub fn keyring(&self) -> Option<&Keyring> {
        self.config.keyring.as_ref()
    }

    pub fn keyring_mut(&mut self) -> Option<&mut Keyring> {
        self.config.keyring.as_mut()
    }

    /// A UDP packet arrived. An error means it (or some of its parts) was dropped; parts
    /// before a bad one have been applied.
    pub fn handle_packet(
        &mut self,
        now: Instant,
        from: SocketAddr,
        packet: &[u8],
    ) -> Result<(), DecodeError> {
        self.stats.packets_received += 1;
        let unpacked = match packet::unpack_packet(packet, self.config.keyring.as_ref()) {
            Ok(unpacked) => unpacked,
            Err(error) => {
                self.stats.packets_dropped += 1;
                if is_crypto_refusal(&error) {
                    self.stats.packets_decrypt_failed += 1;
                    if let Some(suppressed) = self.packet_crypto_log.check(now) {
                        tracing::warn!(%from, %error, suppressed, "decrypt packet failed");
                    }
                }
                return Err(error);
            }
        };
        let mut first_error = None;
        for error in unpacked.errors {
            self.stats.packets_dropped += 1;
            first_error.get_or_insert(error);
        }
        for raw in unpacked.messages {
            match Message::decode(&raw) {
                Ok(message) => {
                    if let Err(error) = self.handle_message(now, from, message) {
                        self.stats.packets_dropped += 1;
                        first_error.get_or_insert(error);
                    }
                }
                Err(error) => {
                    self.stats.packets_dropped += 1;
                    first_error.get_or_insert(error);
                }
            }
        }
        if unpacked.truncated > 0 {
            self.stats.packets_dropped += unpacked.truncated as u64;
            first_error.get_or_insert(DecodeError::Truncated(format!(
                "{} parts dropped",
                unpacked.truncated
            )));
        }
        first_error.map_or(Ok(()), Err)
    }

    /// A complete inbound stream message; returns what to write back before closing: a
    /// push/pull reply, an ack to a ping, or an errResp if it could not be opened.
    pub fn handle_stream(
        &mut self,
        now: Instant,
        from: SocketAddr,
        message: &[u8],
    ) -> Option<Vec<u8>> {
        self.stats.streams_in += 1;
        let plain = match packet::unpack_stream(message, self.config.keyring.as_ref()) {
            Ok(plain) => plain,
            Err(DecodeError::InvalidStreamType(kind)) => {
                tracing::debug!(%from, kind, "received invalid stream message type");
                self.stats.stream_errors += 1;
                return None;
            }
            Err(error) => {
                if is_crypto_refusal(&error) {
                    self.stats.streams_decrypt_failed += 1;
                    if let Some(suppressed) = self.stream_crypto_log.check(now) {
                        tracing::warn!(%from, %error, suppressed, "failed to receive stream");
                    }
                } else {
                    tracing::debug!(%from, %error, "failed to receive stream");
                }
                self.stats.stream_errors += 1;
                let reply = Message::Err(ErrResp {
                    error: error.to_string(),
                });
                return Some(self.pack_stream(&reply.encode()));
            }
        };
        let message = match Message::decode_stream(&plain) {
            Ok(message) => message,
            Err(error) => {
                tracing::debug!(%from, %error, "dropped stream");
                self.stats.stream_errors += 1;
                return None;
            }
        };
        match message {
            Message::PushPull(push_pull) => {
                let join = push_pull.join;
                let reply = self.local_state_message(join);
                if let Err(error) = self.merge_remote_state(now, push_pull, join) {
                    tracing::warn!(%from, %error, "failed push/pull merge");
                    self.stats.stream_errors += 1;
                }
                Some(reply)
            }
            Message::Ping(ping) => {
                if !ping.node.is_empty() && ping.node != self.config.name {
                    tracing::warn!(%from, node = %ping.node, "got ping for unexpected node");
                    return None;
                }
                let ack = Message::Ack(Ack {
                    seq_no: ping.seq_no,
                    payload: None,
                });
                Some(self.pack_stream(&ack.encode()))
            }
            Message::User(bytes) => {
                self.delegate.notify_user_msg(now, &bytes);
                None
            }
            other => {
                tracing::debug!(%from, message = ?other, "received invalid stream message");
                self.stats.stream_errors += 1;
                None
            }
        }
    }

    /// The reply to (or failure of) a stream from [`Memberlist::poll_stream`].
    pub fn handle_stream_reply(
        &mut self,
        now: Instant,
        id: StreamId,
        reply: Result<Vec<u8>, StreamError>,
    ) {
        let Some(pending) = self.streams.remove(&id) else {
            return;
        };
        let refused = matches!(reply, Err(StreamError::Refused(_)));
        let reply = reply.map_err(|error| error.to_string());
        match pending.kind {
            StreamKind::Join { join, addr } => {
                let result = reply.and_then(|bytes| self.handle_push_pull_reply(now, &bytes, true));
                if let Err(error) = &result {
                    tracing::debug!(%addr, %error, "failed to join");
                    self.stats.stream_errors += 1;
                }
                self.finish_join_attempt(join, addr, result);
            }
            StreamKind::PushPull { addr } => {
                self.push_pull_in_flight = false;
                let result =
                    reply.and_then(|bytes| self.handle_push_pull_reply(now, &bytes, false));
                if let Err(error) = result {
                    tracing::debug!(%addr, %error, "push/pull failed");
                    self.stats.stream_errors += 1;
                }
            }
            StreamKind::TcpPing { seq } => {
                let contact = reply.and_then(|bytes| {
                    let plain = packet::unpack_stream(&bytes, self.config.keyring.as_ref())
                        .map_err(|e| e.to_string())?;
                    match Message::decode_stream(&plain).map_err(|e| e.to_string())? {
                        Message::Ack(ack) if ack.seq_no == seq => Ok(()),
                        Message::Ack(ack) => Err(format!(
                            "sequence number from ack ({}) doesn't match ping ({seq})",
                            ack.seq_no
                        )),
                        other => Err(format!("unexpected reply to a tcp ping: {other:?}")),
                    }
                });
                match contact {
                    Ok(()) => {
                        if let Some(probe) = self.probe.as_mut()
                            && probe.seq == seq
                        {
                            probe.tcp_contact = true;
                        }
                    }
                    Err(error) => {
                        tracing::debug!(%error, "fallback ping failed");
                        self.stats.stream_errors += 1;
                        if refused {
                            self.target_refused(now, seq);
                        }
                    }
                }
            }
        }
    }

    /// The probe's target missed its direct ping and nothing listens on its gossip port any
    /// more: its agent is gone. Indirect acks still get a short grace (a fifth of the probe
    /// timeout) instead of the rest of the probe interval, then the target is suspected.
    fn target_refused(&mut self, now: Instant, seq: u32) {
        let grace = self.config.probe_timeout / 5;
        if let Some(probe) = self.probe.as_mut()
            && probe.seq == seq
            && probe.deadline > now + grace
        {
            tracing::debug!(member = %probe.target, "gossip port refuses connections");
            probe.deadline = now + grace;
            probe.refused = true;
        }
    }

    /// Fires every timer due at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        // Probing: indirect probes at the probe timeout, the next probe at its tick (or when
        // the one in flight ends), failure at the deadline.
        if let Some(probe) = &self.probe
            && !probe.indirect_sent
            && probe.probe_timeout_at <= now
        {
            self.probe_indirect(now);
        }
        if let Some(at) = self.next_probe_at
            && at <= now
        {
            self.next_probe_at = Some(next_tick(at, self.config.probe_interval, now));
            if self.probe.is_none() {
                self.probe(now);
            } else {
                self.probe_tick_pending = true;
            }
        }
        if let Some(probe) = &self.probe
            && probe.deadline <= now
        {
            if !probe.indirect_sent {
                self.probe_indirect(now);
            }
            self.probe_deadline(now);
        }
        if let Some(at) = self.next_gossip_at
            && at <= now
        {
            self.next_gossip_at = Some(next_tick(at, self.config.gossip_interval, now));
            self.gossip(now);
        }
        if let Some(at) = self.next_push_pull_at
            && at <= now
        {
            let interval = push_pull_scale(self.config.push_pull_interval, self.order.len());
            self.next_push_pull_at = Some(now + interval);
            self.push_pull(now);
        }
        let expired: Vec<u32> = self
            .relays
            .iter()
            .filter(|(_, relay)| relay.expires_at <= now)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in expired {
            if let Some(relay) = self.relays.remove(&seq)
                && relay.nack
            {
                let nack = Message::Nack(Nack {
                    seq_no: relay.original_seq,
                });
                self.send_msg(relay.reply_to, nack.encode());
            }
        }
        let suspected: Vec<String> = self
            .suspicions
            .iter()
            .filter(|(_, suspicion)| suspicion.deadline() <= now)
            .map(|(name, _)| name.clone())
            .collect();
        for name in suspected {
            self.suspicion_expired(now, &name);
        }
        if let Some(leave) = self.leave.as_mut()
            && now >= leave.at + self.config.tcp_timeout
        {
            leave.timed_out = true;
        }
        let stale: Vec<StreamId> = self
            .streams
            .iter()
            .filter(|(_, stream)| stream.expires_at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            self.handle_stream_reply(now, id, Err(StreamError::TimedOut(None)));
        }
        // Last, so that whatever the timers above queued is covered.
        if let Some(at) = self.eager_gossip_at()
            && at <= now
        {
            self.gossip(now);
        }
    }

    /// When [`Memberlist::handle_timeout`] is next needed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let probe = self.probe.as_ref().map(|probe| {
            if probe.indirect_sent {
                probe.deadline
            } else {
                probe.probe_timeout_at.min(probe.deadline)
            }
        });
        let relays = self.relays.values().map(|relay| relay.expires_at).min();
        let suspicions = self.suspicions.values().map(Suspicion::deadline).min();
        let streams = self.streams.values().map(|stream| stream.expires_at).min();
        // Wakes the shell when a leave stops waiting for its broadcast.
        let leave = self.leave.as_ref().and_then(|leave| {
            let at = leave.at + self.config.tcp_timeout;
            (!leave.timed_out && !self.is_leave_broadcast_done(leave.at)).then_some(at)
        });
        [
            self.next_probe_at,
            self.next_gossip_at,
            self.eager_gossip_at(),
            self.next_push_pull_at,
            probe,
            relays,
            suspicions,
            streams,
            leave,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_stream(&mut self) -> Option<StreamRequest> {
        self.stream_requests.pop_front()
    }

    pub fn stats(&self) -> Stats {
        Stats {
            awareness: self.awareness.score(),
            queued_broadcasts: self.broadcasts.num_queued(),
            ..self.stats
        }
    }

    // ---- messages ----

    fn handle_message(
        &mut self,
        now: Instant,
        from: SocketAddr,
        message: Message,
    ) -> Result<(), DecodeError> {
        match message {
            Message::Ping(ping) => self.handle_ping(from, ping),
            Message::IndirectPing(ind) => self.handle_indirect_ping(now, from, ind),
            Message::Ack(ack) => self.handle_ack(now, ack),
            Message::Nack(nack) => {
                if let Some(probe) = self.probe.as_mut()
                    && probe.seq == nack.seq_no
                {
                    probe.nacks += 1;
                }
            }
            Message::Suspect(suspect) => self.suspect_node(now, suspect),
            Message::Alive(mut alive) => {
                if alive.port == 0 {
                    alive.port = self.config.advertise.port();
                }
                self.alive_node(now, alive, false);
            }
            Message::Dead(dead) => self.dead_node(now, dead),
            Message::User(bytes) => self.delegate.notify_user_msg(now, &bytes),
            Message::PushPull(_) => return Err(DecodeError::UnknownType(6)),
            Message::Err(_) => return Err(DecodeError::UnknownType(13)),
        }
        Ok(())
    }

    fn handle_ping(&mut self, from: SocketAddr, ping: Ping) {
        if !ping.node.is_empty() && ping.node != self.config.name {
            tracing::warn!(%from, node = %ping.node, "got ping for unexpected node");
            return;
        }
        let payload = self.delegate.ack_payload();
        let ack = Message::Ack(Ack {
            seq_no: ping.seq_no,
            payload: (!payload.is_empty()).then_some(payload),
        });
        let to = reply_address(ping.source_addr, ping.source_port, from);
        self.send_msg(to, ack.encode());
    }

    fn handle_indirect_ping(&mut self, now: Instant, from: SocketAddr, ind: IndirectPing) {
        if self.relays.len() >= MAX_RELAYS {
            tracing::warn!(%from, "too many indirect probes in flight; request dropped");
            self.stats.handoff_dropped += 1;
            return;
        }
        let port = if ind.port == 0 {
            self.config.advertise.port()
        } else {
            ind.port
        };
        let seq = self.next_seq_no();
        let ping = Message::Ping(self.ping_for(seq, ind.node.clone()));
        let reply_to = reply_address(ind.source_addr, ind.source_port, from);
        self.relays.insert(
            seq,
            Relay {
                original_seq: ind.seq_no,
                reply_to,
                nack: ind.nack,
                expires_at: now + self.config.probe_timeout,
            },
        );
        let target = SocketAddr::new(ind.target.to_canonical(), port);
        self.send_msg(target, ping.encode());
    }

    fn handle_ack(&mut self, now: Instant, ack: Ack) {
        if let Some(probe) = &self.probe
            && probe.seq == ack.seq_no
        {
            let Some(probe) = self.probe.take() else {
                return;
            };
            if !probe.indirect_sent
                && let Some(entry) = self.nodes.get(&probe.target)
            {
                let rtt = now.saturating_duration_since(probe.sent);
                let payload = ack.payload.as_deref().unwrap_or_default();
                self.delegate
                    .notify_ping_complete(now, &entry.node, rtt, payload);
            }
            self.finish_probe(now, -1);
            return;
        }
        if let Some(relay) = self.relays.remove(&ack.seq_no) {
            let forward = Message::Ack(Ack {
                seq_no: relay.original_seq,
                payload: None,
            });
            self.send_msg(relay.reply_to, forward.encode());
        }
    }

    // ---- the node state machine (reference 2.17) ----

    fn alive_node(&mut self, now: Instant, alive: Alive, bootstrap: bool) {
        let is_local = alive.node == self.config.name;
        if is_local && self.leave.is_some() {
            return;
        }
        if let Some(vsn) = alive.vsn
            && (vsn[0] == 0 || vsn[1] == 0 || vsn[0] > vsn[1])
        {
            tracing::warn!(node = %alive.node, ?vsn, "ignoring an alive message with invalid protocol versions");
            return;
        }
        let addr = SocketAddr::new(alive.addr.to_canonical(), alive.port);
        let mut updates_node = false;
        match self.nodes.get(&alive.node) {
            None => {
                let entry = NodeEntry {
                    node: Node {
                        name: alive.node.clone(),
                        addr,
                        meta: alive.meta.clone(),
                        vsn: alive.vsn.unwrap_or_default(),
                        incarnation: 0,
                        state: NodeState::Dead,
                    },
                    state_change: now,
                };
                self.nodes.insert(alive.node.clone(), entry);
                // At a random place before the end: the node that was there moves to the end.
                let len = self.order.len();
                let offset = if len == 0 {
                    0
                } else {
                    self.rng.random_range(0..len)
                };
                self.order.push(alive.node.clone());
                self.order.swap(offset, len);
                self.broadcasts.set_num_nodes(self.order.len());
            }
            Some(entry) if entry.node.addr != addr => {
                if entry.node.state == NodeState::Left {
                    tracing::info!(node = %alive.node, old = %entry.node.addr, new = %addr, "updating address for left node");
                    updates_node = true;
                } else {
                    tracing::error!(node = %alive.node, mine = %entry.node.addr, theirs = %addr, "conflicting address");
                    let other = Node {
                        name: alive.node.clone(),
                        addr,
                        meta: alive.meta.clone(),
                        vsn: alive.vsn.unwrap_or_default(),
                        incarnation: alive.incarnation,
                        state: NodeState::Alive,
                    };
                    self.delegate.notify_conflict(now, &entry.node, &other);
                    return;
                }
            }
            Some(_) => {}
        }
        let Some(entry) = self.nodes.get(&alive.node) else {
            return;
        };
        let known = entry.node.incarnation;
        if !is_local && !updates_node && alive.incarnation <= known {
            return;
        }
        if is_local && alive.incarnation < known {
            return;
        }
        self.suspicions.remove(&alive.node);
        let old_state = entry.node.state;
        let old_meta = entry.node.meta.clone();
        if is_local && !bootstrap {
            if alive.incarnation == known
                && alive.meta == entry.node.meta
                && alive.vsn == Some(entry.node.vsn)
            {
                return;
            }
            tracing::warn!(
                incarnation = alive.incarnation,
                "refuting an alive message about this node"
            );
            self.refute(alive.incarnation);
        } else {
            let message = Message::Alive(alive.clone()).encode();
            self.broadcasts.queue(Some(alive.node.clone()), message);
            let Some(entry) = self.nodes.get_mut(&alive.node) else {
                return;
            };
            if let Some(vsn) = alive.vsn {
                entry.node.vsn = vsn;
            }
            entry.node.incarnation = alive.incarnation;
            entry.node.meta = alive.meta;
            entry.node.addr = addr;
            if entry.node.state != NodeState::Alive {
                entry.node.state = NodeState::Alive;
                entry.state_change = now;
            }
        }
        let Some(entry) = self.nodes.get(&alive.node) else {
            return;
        };
        if matches!(old_state, NodeState::Dead | NodeState::Left) {
            tracing::info!(member = %entry.node.name, addr = %entry.node.addr, "member joined");
            self.delegate.notify_join(now, &entry.node);
        } else if old_meta != entry.node.meta {
            tracing::debug!(member = %entry.node.name, "member updated");
            self.delegate.notify_update(now, &entry.node);
        }
    }

    fn suspect_node(&mut self, now: Instant, suspect: Suspect) {
        let Some(entry) = self.nodes.get(&suspect.node) else {
            return;
        };
        if suspect.incarnation < entry.node.incarnation {
            return;
        }
        if let Some(suspicion) = self.suspicions.get_mut(&suspect.node) {
            if suspicion.confirm(&suspect.from) {
                let message = Message::Suspect(suspect.clone()).encode();
                self.broadcasts.queue(Some(suspect.node), message);
            }
            return;
        }
        if entry.node.state != NodeState::Alive {
            return;
        }
        if suspect.node == self.config.name {
            tracing::warn!(from = %suspect.from, "refuting a suspect message");
            self.refute(suspect.incarnation);
            return;
        }
        let message = Message::Suspect(suspect.clone()).encode();
        self.broadcasts.queue(Some(suspect.node.clone()), message);
        if let Some(entry) = self.nodes.get_mut(&suspect.node) {
            entry.node.incarnation = suspect.incarnation;
            entry.node.state = NodeState::Suspect;
            entry.state_change = now;
        }
        tracing::info!(member = %suspect.node, from = %suspect.from, "member suspected");
        // Expect confirmations from all but ourselves and the suspect, up to mult - 2.
        let num_nodes = self.order.len();
        let mut expected = i64::from(self.config.suspicion_mult) - 2;
        if (num_nodes as i64) - 2 < expected {
            expected = 0;
        }
        let min = suspicion_timeout(
            self.config.suspicion_mult,
            num_nodes,
            self.config.probe_interval,
        );
        let max = min.saturating_mul(self.config.suspicion_max_timeout_mult);
        let expected = u32::try_from(expected.max(0)).unwrap_or(0);
        self.suspicions.insert(
            suspect.node,
            Suspicion::new(&suspect.from, expected, min, max, now),
        );
    }

    fn suspicion_expired(&mut self, now: Instant, name: &str) {
        let Some(entry) = self.nodes.get(name) else {
            self.suspicions.remove(name);
            return;
        };
        if entry.node.state != NodeState::Suspect {
            self.suspicions.remove(name);
            return;
        }
        tracing::info!(member = %name, "marking member as failed, suspect timeout reached");
        let dead = Dead {
            incarnation: entry.node.incarnation,
            node: name.to_owned(),
            from: self.config.name.clone(),
        };
        self.dead_node(now, dead);
    }

    fn dead_node(&mut self, now: Instant, dead: Dead) {
        let Some(entry) = self.nodes.get(&dead.node) else {
            return;
        };
        if dead.incarnation < entry.node.incarnation {
            return;
        }
        self.suspicions.remove(&dead.node);
        if entry.is_dead_or_left() {
            return;
        }
        let message = Message::Dead(dead.clone()).encode();
        if dead.node == self.config.name {
            let Some(leave) = self.leave.as_mut() else {
                tracing::warn!(from = %dead.from, "refuting a dead message");
                self.refute(dead.incarnation);
                return;
            };
            leave.broadcast = Some(self.broadcasts.queue(Some(dead.node.clone()), message));
        } else {
            self.broadcasts.queue(Some(dead.node.clone()), message);
        }
        let Some(entry) = self.nodes.get_mut(&dead.node) else {
            return;
        };
        entry.node.incarnation = dead.incarnation;
        entry.node.state = if dead.from == dead.node {
            NodeState::Left
        } else {
            NodeState::Dead
        };
        entry.state_change = now;
        tracing::info!(member = %dead.node, from = %dead.from, state = ?entry.node.state, "member left or failed");
        self.delegate.notify_leave(now, &entry.node);
    }

    /// Answers an accusation about this node with a higher incarnation.
    fn refute(&mut self, accused: u32) {
        let mut incarnation = self.next_incarnation();
        if accused >= incarnation {
            self.incarnation = accused.wrapping_add(1);
            incarnation = self.incarnation;
        }
        self.awareness.apply_delta(1);
        let name = self.config.name.clone();
        let Some(entry) = self.nodes.get_mut(&name) else {
            return;
        };
        entry.node.incarnation = incarnation;
        let alive = Alive {
            incarnation,
            node: name,
            addr: entry.node.addr.ip(),
            port: entry.node.addr.port(),
            meta: entry.node.meta.clone(),
            vsn: Some(entry.node.vsn),
        };
        // Keyed by the address, as memberlist does for refutations.
        let key = entry.node.addr.ip().to_string();
        self.broadcasts
            .queue(Some(key), Message::Alive(alive).encode());
    }

    fn next_incarnation(&mut self) -> u32 {
        self.incarnation = self.incarnation.wrapping_add(1);
        self.incarnation
    }

    fn next_seq_no(&mut self) -> u32 {
        self.seq_no = self.seq_no.wrapping_add(1);
        self.seq_no
    }

    fn any_alive(&self) -> bool {
        self.nodes
            .values()
            .any(|e| e.node.name != self.config.name && !e.is_dead_or_left())
    }

    // ---- probing (reference 2.14) ----

    fn ping_for(&self, seq_no: u32, node: String) -> Ping {
        Ping {
            seq_no,
            node,
            source_addr: Some(self.config.advertise.ip()),
            source_port: self.config.advertise.port(),
            source_node: self.config.name.clone(),
        }
    }

    /// Picks the next node round-robin and probes it.
    fn probe(&mut self, now: Instant) {
        let mut checked = 0;
        loop {
            if checked >= self.order.len() {
                return;
            }
            if self.probe_index >= self.order.len() {
                self.reset_nodes(now);
                self.probe_index = 0;
                checked += 1;
                continue;
            }
            let name = self.order[self.probe_index].clone();
            self.probe_index += 1;
            let skip = name == self.config.name
                || self.nodes.get(&name).is_none_or(NodeEntry::is_dead_or_left);
            if skip {
                checked += 1;
                continue;
            }
            self.probe_node(now, &name);
            return;
        }
    }

    /// Forgets nodes dead or left for longer than `gossip_to_the_dead_time`, then reshuffles.
    fn reset_nodes(&mut self, now: Instant) {
        let keep_for = self.config.gossip_to_the_dead_time;
        let local = self.config.name.clone();
        let nodes = &mut self.nodes;
        self.order.retain(|name| {
            let Some(entry) = nodes.get(name) else {
                return false;
            };
            let gone = *name != local
                && entry.is_dead_or_left()
                && now.saturating_duration_since(entry.state_change) > keep_for;
            if gone {
                nodes.remove(name);
            }
            !gone
        });
        self.order.shuffle(&mut self.rng);
        self.broadcasts.set_num_nodes(self.order.len());
    }

    fn probe_node(&mut self, now: Instant, name: &str) {
        let Some(entry) = self.nodes.get(name) else {
            return;
        };
        let target_addr = entry.node.addr;
        let incarnation = entry.node.incarnation;
        let state = entry.node.state;
        let crc = entry.pmax() >= 5;
        let interval = self.awareness.scale_timeout(self.config.probe_interval);
        let seq = self.next_seq_no();
        let ping = Message::Ping(self.ping_for(seq, name.to_owned())).encode();
        if state == NodeState::Alive {
            self.send_msg(target_addr, ping);
        } else {
            // Tell a suspect node it is suspected, so that it can refute at once.
            let suspect = Message::Suspect(Suspect {
                incarnation,
                node: name.to_owned(),
                from: self.config.name.clone(),
            });
            let compound = packet::encode_compound(&[ping, suspect.encode()]);
            self.send_raw(target_addr, &compound, crc);
        }
        self.probe = Some(Probe {
            seq,
            target: name.to_owned(),
            target_addr,
            incarnation,
            sent: now,
            probe_timeout_at: now + self.config.probe_timeout,
            deadline: now + interval,
            indirect_sent: false,
            expected_nacks: 0,
            nacks: 0,
            tcp_contact: false,
            refused: false,
        });
    }

    /// The direct ping timed out: ask others to probe, and try a TCP ping.
    fn probe_indirect(&mut self, now: Instant) {
        let Some(probe) = self.probe.as_mut() else {
            return;
        };
        probe.indirect_sent = true;
        let (seq, target, target_addr, deadline) = (
            probe.seq,
            probe.target.clone(),
            probe.target_addr,
            probe.deadline,
        );
        tracing::debug!(member = %target, "failed ping (timeout reached)");
        let candidates: Vec<(SocketAddr, u8)> = self
            .order
            .iter()
            .filter_map(|name| self.nodes.get(name))
            .filter(|e| {
                e.node.name != self.config.name
                    && e.node.name != target
                    && e.node.state == NodeState::Alive
            })
            .map(|e| (e.node.addr, e.pmax()))
            .collect();
        let peers = self.choose(candidates, self.config.indirect_checks);
        let mut expected_nacks = 0;
        for (peer, pmax) in peers {
            let nack = pmax >= 4;
            expected_nacks += usize::from(nack);
            let ind = Message::IndirectPing(IndirectPing {
                seq_no: seq,
                target: target_addr.ip(),
                port: target_addr.port(),
                node: target.clone(),
                nack,
                source_addr: Some(self.config.advertise.ip()),
                source_port: self.config.advertise.port(),
                source_node: self.config.name.clone(),
            });
            self.send_msg(peer, ind.encode());
        }
        if let Some(probe) = self.probe.as_mut() {
            probe.expected_nacks = expected_nacks;
        }
        let target_pmax = self.nodes.get(&target).map_or(0, NodeEntry::pmax);
        if !self.config.disable_tcp_pings && target_pmax >= 3 && deadline > now {
            let ping = Message::Ping(self.ping_for(seq, target)).encode();
            let payload = self.pack_stream(&ping);
            self.push_stream(target_addr, payload, deadline, StreamKind::TcpPing { seq });
        }
    }

    /// No ack by the deadline: suspect the target unless the TCP ping got through.
    fn probe_deadline(&mut self, now: Instant) {
        let Some(probe) = self.probe.take() else {
            return;
        };
        self.drop_tcp_ping(probe.seq);
        if probe.tcp_contact {
            tracing::warn!(member = %probe.target, "was able to connect but other probes failed, network may be misconfigured");
            self.finish_probe(now, -1);
            return;
        }
        // A refused connection shows that our own packets get through: no penalty then.
        let delta = if probe.refused {
            0
        } else if probe.expected_nacks > 0 {
            probe.expected_nacks.saturating_sub(probe.nacks) as i64
        } else {
            1
        };
        tracing::info!(member = %probe.target, "suspect has failed, no acks received");
        let suspect = Suspect {
            incarnation: probe.incarnation,
            node: probe.target,
            from: self.config.name.clone(),
        };
        self.awareness.apply_delta(delta);
        self.suspect_node(now, suspect);
        self.after_probe(now);
    }

    fn finish_probe(&mut self, now: Instant, awareness_delta: i64) {
        if let Some(probe) = self.probe.take() {
            self.drop_tcp_ping(probe.seq);
        }
        self.awareness.apply_delta(awareness_delta);
        self.after_probe(now);
    }

    fn after_probe(&mut self, now: Instant) {
        if self.probe_tick_pending {
            self.probe_tick_pending = false;
            self.probe(now);
        }
    }

    fn drop_tcp_ping(&mut self, seq: u32) {
        self.streams
            .retain(|_, stream| !matches!(stream.kind, StreamKind::TcpPing { seq: s } if s == seq));
    }

    /// Up to `k` distinct random items.
    fn choose<T>(&mut self, mut candidates: Vec<T>, k: usize) -> Vec<T> {
        candidates.shuffle(&mut self.rng);
        candidates.truncate(k);
        candidates
    }

    // ---- gossip (reference 2.16) ----

    /// Counts every broadcast ever queued, here and in the delegate.
    fn broadcast_generation(&self) -> u64 {
        self.broadcasts
            .generation()
            .wrapping_add(self.delegate.broadcast_generation())
    }

    /// With `eager_gossip`, when to gossip what was queued since the last round: a tenth of
    /// the gossip interval after that round, so a burst still shares packets.
    fn eager_gossip_at(&self) -> Option<Instant> {
        if !self.config.eager_gossip
            || self.next_gossip_at.is_none()
            || self.broadcast_generation() == self.gossiped_generation
        {
            return None;
        }
        Some(self.last_gossip_at + self.config.gossip_interval / 10)
    }

    fn gossip(&mut self, now: Instant) {
        self.last_gossip_at = now;
        self.gossiped_generation = self.broadcast_generation();
        let dead_time = self.config.gossip_to_the_dead_time;
        let candidates: Vec<(SocketAddr, bool)> = self
            .order
            .iter()
            .filter_map(|name| self.nodes.get(name))
            .filter(|e| e.node.name != self.config.name)
            .filter(|e| match e.node.state {
                NodeState::Alive | NodeState::Suspect => true,
                NodeState::Dead => now.saturating_duration_since(e.state_change) <= dead_time,
                NodeState::Left => false,
            })
            .map(|e| (e.node.addr, e.pmax() >= 5))
            .collect();
        let targets = self.choose(candidates, self.config.gossip_nodes);
        let available = self
            .config
            .udp_buffer_size
            .saturating_sub(COMPOUND_HEADER_OVERHEAD)
            .saturating_sub(self.encryption_overhead());
        for (addr, crc) in targets {
            let messages = self.get_broadcasts(COMPOUND_OVERHEAD, available);
            if messages.is_empty() {
                return;
            }
            self.send_messages(addr, messages, crc);
        }
    }

    /// memberlist's own broadcasts first, then the delegate's as `[8] ++ msg`.
    fn get_broadcasts(&mut self, overhead: usize, limit: usize) -> Vec<Vec<u8>> {
        self.broadcasts.set_num_nodes(self.order.len());
        let mut messages = self.broadcasts.get_broadcasts(overhead, limit);
        let used: usize = messages.iter().map(|m| m.len() + overhead).sum();
        let available = limit.saturating_sub(used);
        if available > overhead + USER_MSG_OVERHEAD {
            for user in self
                .delegate
                .get_broadcasts(overhead + USER_MSG_OVERHEAD, available)
            {
                let mut framed = Vec::with_capacity(user.len() + 1);
                framed.push(super::message::MessageType::User as u8);
                framed.extend_from_slice(&user);
                messages.push(framed);
            }
        }
        messages
    }

    fn encryption_overhead(&self) -> usize {
        if self.config.keyring.is_some() {
            ENCRYPTION_OVERHEAD
        } else {
            0
        }
    }

    /// Sends a ping, ack, indirect ping or nack, topped up with broadcasts (no CRC).
    fn send_msg(&mut self, to: SocketAddr, message: Vec<u8>) {
        let available = self
            .config
            .udp_buffer_size
            .saturating_sub(message.len())
            .saturating_sub(COMPOUND_HEADER_OVERHEAD)
            .saturating_sub(self.encryption_overhead());
        let extra = self.get_broadcasts(COMPOUND_OVERHEAD, available);
        if extra.is_empty() {
            self.send_raw(to, &message, false);
            return;
        }
        let mut messages = Vec::with_capacity(extra.len() + 1);
        messages.push(message);
        messages.extend(extra);
        self.send_messages(to, messages, false);
    }

    /// One message bare, several as compounds of at most 255 parts.
    fn send_messages(&mut self, to: SocketAddr, messages: Vec<Vec<u8>>, crc: bool) {
        if let [single] = messages.as_slice() {
            self.send_raw(to, single, crc);
            return;
        }
        for chunk in messages.chunks(MAX_COMPOUND_PARTS) {
            if let [single] = chunk {
                self.send_raw(to, single, crc);
            } else {
                let compound = packet::encode_compound(chunk);
                self.send_raw(to, &compound, crc);
            }
        }
    }

    fn send_raw(&mut self, to: SocketAddr, message: &[u8], crc: bool) {
        let options = PackOptions {
            compress: self.config.enable_compression,
            crc,
        };
        let payload = packet::pack_packet(
            message,
            options,
            self.config.keyring.as_ref(),
            &mut self.rng,
        );
        self.stats.packets_sent += 1;
        self.transmits.push_back(Transmit { to, payload });
    }

    // ---- streams and push/pull (reference 2.10, 2.17) ----

    fn pack_stream(&mut self, message: &[u8]) -> Vec<u8> {
        packet::pack_stream(
            message,
            self.config.enable_compression,
            self.config.keyring.as_ref(),
            &mut self.rng,
        )
    }

    /// Our push/pull, ready for the stream.
    fn local_state_message(&mut self, join: bool) -> Vec<u8> {
        let nodes = self
            .order
            .iter()
            .filter_map(|name| self.nodes.get(name))
            .map(|e| PushNodeState {
                name: e.node.name.clone(),
                addr: e.node.addr.ip(),
                port: e.node.addr.port(),
                meta: e.node.meta.clone(),
                incarnation: e.node.incarnation,
                state: state_code(e.node.state),
                vsn: Some(e.node.vsn),
            })
            .collect();
        let user_state = self.delegate.local_state(join);
        let message = Message::PushPull(PushPull {
            join,
            nodes,
            user_state,
        });
        self.pack_stream(&message.encode())
    }

    fn push_stream(
        &mut self,
        to: SocketAddr,
        payload: Vec<u8>,
        deadline: Instant,
        kind: StreamKind,
    ) {
        self.next_stream_id += 1;
        let id = StreamId(self.next_stream_id);
        self.stats.streams_out += 1;
        self.streams.insert(
            id,
            PendingStream {
                kind,
                expires_at: deadline + self.config.tcp_timeout,
            },
        );
        self.stream_requests.push_back(StreamRequest {
            id,
            to,
            payload,
            expects_reply: true,
            deadline,
        });
    }

    fn push_pull(&mut self, now: Instant) {
        if self.push_pull_in_flight {
            return;
        }
        let candidates: Vec<SocketAddr> = self
            .order
            .iter()
            .filter_map(|name| self.nodes.get(name))
            .filter(|e| e.node.name != self.config.name && e.node.state == NodeState::Alive)
            .map(|e| e.node.addr)
            .collect();
        let Some(addr) = self.choose(candidates, 1).pop() else {
            return;
        };
        self.push_pull_in_flight = true;
        let message = self.local_state_message(false);
        let deadline = now + self.config.tcp_timeout;
        self.push_stream(addr, message, deadline, StreamKind::PushPull { addr });
    }

    fn handle_push_pull_reply(
        &mut self,
        now: Instant,
        bytes: &[u8],
        join: bool,
    ) -> Result<(), String> {
        let plain = packet::unpack_stream(bytes, self.config.keyring.as_ref())
            .map_err(|e| e.to_string())?;
        match Message::decode_stream(&plain).map_err(|e| e.to_string())? {
            Message::PushPull(push_pull) => self.merge_remote_state(now, push_pull, join),
            Message::Err(err) => Err(format!("remote error: {}", err.error)),
            other => Err(format!(
                "received invalid msgType ({}), expected pushPullMsg (6)",
                other.encode().first().copied().unwrap_or_default()
            )),
        }
    }

    fn finish_join_attempt(&mut self, join: JoinId, addr: SocketAddr, result: Result<(), String>) {
        let Some(progress) = self.joins.get_mut(&join) else {
            return;
        };
        progress.pending = progress.pending.saturating_sub(1);
        match result {
            Ok(()) => progress.joined += 1,
            Err(error) => progress.errors.push((addr, error)),
        }
        if progress.pending == 0
            && let Some(progress) = self.joins.remove(&join)
        {
            self.join_outcomes.push_back(JoinOutcome {
                id: join,
                joined: progress.joined,
                errors: progress.errors,
            });
        }
    }

    fn merge_remote_state(
        &mut self,
        now: Instant,
        push_pull: PushPull,
        join: bool,
    ) -> Result<(), String> {
        self.verify_protocol(&push_pull.nodes)?;
        for remote in push_pull.nodes {
            match remote.state {
                StateCode::Alive => {
                    let alive = Alive {
                        incarnation: remote.incarnation,
                        node: remote.name,
                        addr: remote.addr,
                        port: remote.port,
                        meta: remote.meta,
                        vsn: remote.vsn,
                    };
                    self.alive_node(now, alive, false);
                }
                StateCode::Left => {
                    let dead = Dead {
                        incarnation: remote.incarnation,
                        node: remote.name.clone(),
                        from: remote.name,
                    };
                    self.dead_node(now, dead);
                }
                // A remote "dead" is only a suspicion here.
                StateCode::Dead | StateCode::Suspect => {
                    let suspect = Suspect {
                        incarnation: remote.incarnation,
                        node: remote.name,
                        from: self.config.name.clone(),
                    };
                    self.suspect_node(now, suspect);
                }
            }
        }
        if !push_pull.user_state.is_empty() {
            self.delegate
                .merge_remote_state(now, &push_pull.user_state, join);
        }
        Ok(())
    }

    /// Every node's current protocol and delegate versions must lie in the range all alive
    /// nodes (remote and local) understand (reference 2.11).
    fn verify_protocol(&self, remote: &[PushNodeState]) -> Result<(), String> {
        let (mut max_pmin, mut min_pmax, mut max_dmin, mut min_dmax) = (0u8, u8::MAX, 0u8, u8::MAX);
        let remote_alive = remote
            .iter()
            .filter(|n| n.state == StateCode::Alive)
            .filter_map(|n| n.vsn);
        let local_alive = self
            .nodes
            .values()
            .filter(|e| e.node.state == NodeState::Alive)
            .map(|e| e.node.vsn);
        for vsn in remote_alive.chain(local_alive) {
            max_pmin = max_pmin.max(vsn[0]);
            min_pmax = min_pmax.min(vsn[1]);
            max_dmin = max_dmin.max(vsn[3]);
            min_dmax = min_dmax.min(vsn[4]);
        }
        let remote_all = remote
            .iter()
            .map(|n| (n.name.as_str(), n.vsn.unwrap_or_default()));
        let local_all = self
            .order
            .iter()
            .filter_map(|name| self.nodes.get(name))
            .map(|e| (e.node.name.as_str(), e.node.vsn));
        for (name, vsn) in remote_all.chain(local_all) {
            let (pcur, dcur) = (vsn[2], vsn[5]);
            if pcur < max_pmin || pcur > min_pmax {
                return Err(format!(
                    "Node '{name}' protocol version ({pcur}) is incompatible: [{max_pmin}, {min_pmax}]"
                ));
            }
            if dcur < max_dmin || dcur > min_dmax {
                return Err(format!(
                    "Node '{name}' delegate protocol version ({dcur}) is incompatible: [{max_dmin}, {min_dmax}]"
                ));
            }
        }
        Ok(())
    }
}

/// `SourceAddr:SourcePort` when both are set, else the packet's source.
fn reply_address(
    source_addr: Option<std::net::IpAddr>,
    source_port: u16,
    from: SocketAddr,
) -> SocketAddr {
    match source_addr {
        Some(ip) if source_port > 0 => SocketAddr::new(ip.to_canonical(), source_port),
        _ => from,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::message::SERF_0_9_4_VSN;

    /// Records every delegate call.
    #[derive(Debug, Default)]
    struct TestDelegate {
        meta: Vec<u8>,
        joins: Vec<Node>,
        leaves: Vec<Node>,
        updates: Vec<Node>,
        conflicts: Vec<(Node, Node)>,
        user_msgs: Vec<Vec<u8>>,
        pings: Vec<(String, Vec<u8>)>,
    }

    impl Delegate for TestDelegate {
        fn node_meta(&mut self, _limit: usize) -> Vec<u8> {
            self.meta.clone()
        }
        fn notify_user_msg(&mut self, _now: Instant, msg: &[u8]) {
            self.user_msgs.push(msg.to_vec());
        }
        fn notify_join(&mut self, _now: Instant, node: &Node) {
            self.joins.push(node.clone());
        }
        fn notify_leave(&mut self, _now: Instant, node: &Node) {
            self.leaves.push(node.clone());
        }
        fn notify_update(&mut self, _now: Instant, node: &Node) {
            self.updates.push(node.clone());
        }
        fn notify_conflict(&mut self, _now: Instant, existing: &Node, other: &Node) {
            self.conflicts.push((existing.clone(), other.clone()));
        }
        fn ack_payload(&mut self) -> Vec<u8> {
            b"coordinate".to_vec()
        }
        fn notify_ping_complete(
            &mut self,
            _now: Instant,
            node: &Node,
            _rtt: Duration,
            payload: &[u8],
        ) {
            self.pings.push((node.name.clone(), payload.to_vec()));
        }
    }

    fn addr(i: usize) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8 + 1)), 7946)
    }

    fn config(i: usize) -> Config {
        Config::lan(format!("node{i}"), addr(i))
    }

    /// A few nodes passing packets and streams to each other instantly.
    struct Cluster {
        nodes: Vec<Memberlist<TestDelegate>>,
        now: Instant,
        down: HashSet<usize>,
        udp_blocked: HashSet<(usize, usize)>,
    }

    impl Cluster {
        fn new(configs: Vec<Config>) -> Cluster {
            let now = Instant::now();
            let nodes = configs
                .into_iter()
                .enumerate()
                .map(|(i, config)| {
                    let delegate = TestDelegate {
                        meta: format!("meta{i}").into_bytes(),
                        ..TestDelegate::default()
                    };
                    Memberlist::new(config, delegate, i as u64 + 1, now)
                })
                .collect();
            Cluster {
                nodes,
                now,
                down: HashSet::new(),
                udp_blocked: HashSet::new(),
            }
        }

        fn of(n: usize) -> Cluster {
            Cluster::new((0..n).map(config).collect())
        }

        fn index(&self, to: SocketAddr) -> Option<usize> {
            self.nodes.iter().position(|n| n.config().advertise == to)
        }

        /// Delivers queued packets and streams until nothing is left.
        fn deliver(&mut self) {
            for _ in 0..1000 {
                let mut progressed = false;
                for i in 0..self.nodes.len() {
                    let from = self.nodes[i].config().advertise;
                    while let Some(transmit) = self.nodes[i].poll_transmit() {
                        progressed = true;
                        let Some(j) = self.index(transmit.to) else {
                            continue;
                        };
                        if self.down.contains(&i)
                            || self.down.contains(&j)
                            || self.udp_blocked.contains(&(i, j))
                        {
                            continue;
                        }
                        let _ = self.nodes[j].handle_packet(self.now, from, &transmit.payload);
                    }
                    while let Some(stream) = self.nodes[i].poll_stream() {
                        progressed = true;
                        let reply = match self.index(stream.to) {
                            Some(j) if !self.down.contains(&j) && !self.down.contains(&i) => self
                                .nodes[j]
                                .handle_stream(self.now, from, &stream.payload)
                                .ok_or_else(|| StreamError::Other("connection closed".to_owned())),
                            _ => Err(StreamError::Refused(stream.to)),
                        };
                        self.nodes[i].handle_stream_reply(self.now, stream.id, reply);
                    }
                }
                if !progressed {
                    return;
                }
            }
            panic!("packets kept flowing");
        }

        /// Runs the next timer(s); false once past `until`.
        fn step(&mut self, until: Instant) -> bool {
            let next = (0..self.nodes.len())
                .filter(|i| !self.down.contains(i))
                .filter_map(|i| self.nodes[i].poll_timeout())
                .min();
            let Some(next) = next.filter(|t| *t <= until) else {
                self.now = until;
                return false;
            };
            self.now = self.now.max(next);
            for i in 0..self.nodes.len() {
                if !self.down.contains(&i)
                    && self.nodes[i].poll_timeout().is_some_and(|t| t <= self.now)
                {
                    self.nodes[i].handle_timeout(self.now);
                    let next = self.nodes[i].poll_timeout();
                    assert!(
                        next.is_some_and(|t| t > self.now),
                        "timer stuck at {next:?}"
                    );
                }
            }
            self.deliver();
            true
        }

        fn run_for(&mut self, duration: Duration) {
            let until = self.now + duration;
            while self.step(until) {}
        }

        fn join(&mut self, i: usize, j: usize) -> JoinOutcome {
            let id = self.nodes[i].join(self.now, vec![addr(j)]);
            self.deliver();
            let outcome = self.nodes[i].poll_join_outcome().expect("join finished");
            assert_eq!(outcome.id, id);
            outcome
        }

        fn view(&self, i: usize, name: &str) -> Option<Node> {
            self.nodes[i].members().find(|n| n.name == name).cloned()
        }

        fn inject(&mut self, i: usize, from: usize, message: Message) -> Result<(), DecodeError> {
            let packet = message.encode();
            self.nodes[i].handle_packet(self.now, addr(from), &packet)
        }
    }

    fn news_of_node9(cluster: &mut Cluster) {
        let alive = Message::Alive(Alive {
            incarnation: 1,
            node: "node9".into(),
            addr: addr(9).ip(),
            port: 7946,
            meta: Vec::new(),
            vsn: Some(SERF_0_9_4_VSN),
        });
        cluster.inject(0, 1, alive).expect("valid packet");
    }

    #[test]
    fn a_new_broadcast_is_gossiped_within_a_tenth_of_the_gossip_interval() {
        let mut cluster = Cluster::of(5);
        for i in 1..5 {
            cluster.join(i, 0);
        }
        cluster.run_for(Duration::from_secs(10));
        news_of_node9(&mut cluster);
        let soon = cluster.now + Duration::from_millis(20);
        let wake = cluster.nodes[0].poll_timeout().expect("a timer");
        assert!(wake <= soon, "next wake-up {:?} later", wake - cluster.now);
        cluster.now = soon;
        cluster.nodes[0].handle_timeout(soon);
        cluster.deliver();
        let told = (1..5)
            .filter(|&i| cluster.view(i, "node9").is_some())
            .count();
        assert!(told >= 3, "only {told} peers heard of node9");
        // The round is done: nothing pending before the regular timers.
        assert!(cluster.nodes[0].poll_timeout().expect("a timer") > soon);
    }

    #[test]
    fn without_eager_gossip_a_new_broadcast_waits_for_the_tick() {
        let configs = (0..5)
            .map(|i| Config {
                eager_gossip: false,
                ..config(i)
            })
            .collect();
        let mut cluster = Cluster::new(configs);
        for i in 1..5 {
            cluster.join(i, 0);
        }
        cluster.run_for(Duration::from_secs(10));
        let before = cluster.nodes[0].poll_timeout();
        news_of_node9(&mut cluster);
        assert_eq!(cluster.nodes[0].poll_timeout(), before);
    }

    #[test]
    fn a_lone_node_does_not_spin_on_broadcasts_it_cannot_send() {
        let mut cluster = Cluster::of(1);
        let start = cluster.now;
        // Its own alive is queued from the start and has nobody to go to.
        for _ in 0..20 {
            let wake = cluster.nodes[0].poll_timeout().expect("a timer");
            assert!(wake >= cluster.now);
            cluster.now = wake;
            cluster.nodes[0].handle_timeout(wake);
            let next = cluster.nodes[0].poll_timeout().expect("a timer");
            assert!(next > wake, "timer stuck at {wake:?}");
        }
        // Probe and gossip ticks (6 a second), not an eager round every 20 ms.
        assert!(cluster.now - start > Duration::from_secs(2));
    }

    #[test]
    fn join_via_push_pull_shows_both_alive_with_meta() {
        let mut cluster = Cluster::of(2);
        let outcome = cluster.join(1, 0);
        assert_eq!(outcome.joined, 1);
        assert!(outcome.errors.is_empty());
        for i in 0..2 {
            assert_eq!(cluster.nodes[i].num_alive(), 2);
            for j in 0..2 {
                let node = cluster.view(i, &format!("node{j}")).expect("listed");
                assert_eq!(node.state, NodeState::Alive);
                assert_eq!(node.meta, format!("meta{j}").into_bytes());
                assert_eq!(node.addr, addr(j));
                assert_eq!(node.vsn, SERF_0_9_4_VSN);
            }
        }
        assert_eq!(cluster.nodes[0].delegate().joins[0].name, "node1");
        assert_eq!(cluster.nodes[1].delegate().joins[0].name, "node0");
        // No join event about oneself.
        assert_eq!(cluster.nodes[0].delegate().joins.len(), 1);
    }

    #[test]
    fn a_third_node_learns_everyone_through_gossip_and_probes_with_coordinates() {
        let mut cluster = Cluster::of(3);
        cluster.join(1, 0);
        cluster.join(2, 0);
        cluster.run_for(Duration::from_secs(5));
        for i in 0..3 {
            assert_eq!(cluster.nodes[i].num_alive(), 3, "node{i}");
            let pings = &cluster.nodes[i].delegate().pings;
            assert!(!pings.is_empty(), "node{i} completed no probe");
            assert!(pings.iter().all(|(_, payload)| payload == b"coordinate"));
        }
        assert_eq!(cluster.nodes[1].delegate().joins.len(), 2);
    }

    #[test]
    fn a_probe_timeout_leads_to_suspect_then_dead_at_exactly_the_lifeguard_timeout() {
        let mut cluster = Cluster::of(2);
        cluster.join(1, 0);
        cluster.run_for(Duration::from_secs(2));
        cluster.down.insert(1);
        let limit = cluster.now + Duration::from_secs(30);
        let mut suspect_at = None;
        let mut dead_at = None;
        while cluster.step(limit) && dead_at.is_none() {
            match cluster.view(0, "node1").map(|n| n.state) {
                Some(NodeState::Suspect) if suspect_at.is_none() => suspect_at = Some(cluster.now),
                Some(NodeState::Dead) => dead_at = Some(cluster.now),
                _ => {}
            }
        }
        let (suspect_at, dead_at) = (suspect_at.expect("suspected"), dead_at.expect("dead"));
        // Two nodes: no confirmations expected, so min = 4 * max(1, log10(2)) * 1 s.
        assert_eq!(dead_at - suspect_at, Duration::from_secs(4));
        let leaves = &cluster.nodes[0].delegate().leaves;
        assert_eq!(leaves.len(), 1);
        assert_eq!(leaves[0].name, "node1");
        assert_eq!(leaves[0].state, NodeState::Dead);
        assert_eq!(cluster.nodes[0].num_alive(), 1);
        // A refused fallback ping shows our own network works: local health is spared.
        assert_eq!(cluster.nodes[0].stats().awareness, 0);
    }

    #[test]
    fn a_target_whose_gossip_port_refuses_is_suspected_without_waiting_out_the_interval() {
        let mut cluster = Cluster::of(2);
        cluster.join(1, 0);
        cluster.run_for(Duration::from_secs(2));
        cluster.down.insert(1);
        let limit = cluster.now + Duration::from_secs(10);
        let mut sent = None;
        while cluster.step(limit) {
            if let Some(probe) = &cluster.nodes[0].probe {
                sent = Some(probe.sent);
            }
            if cluster.view(0, "node1").map(|n| n.state) == Some(NodeState::Suspect) {
                break;
            }
        }
        let sent = sent.expect("node1 probed");
        let config = cluster.nodes[0].config();
        // The direct ping times out, the TCP ping is refused at once, indirect acks get a
        // fifth of the probe timeout: 600 ms instead of the 1 s probe interval.
        assert_eq!(
            cluster.now - sent,
            config.probe_timeout + config.probe_timeout / 5
        );
    }

    #[test]
    fn a_probe_that_times_out_without_nack_capable_peers_lowers_local_health() {
        let mut cluster = Cluster::of(2);
        cluster.join(1, 0);
        cluster.run_for(Duration::from_secs(2));
        // Both ways and for TCP too, but without a refusal: the fallback ping times out.
        cluster.udp_blocked.extend([(0, 1), (1, 0)]);
        cluster.nodes[0].config.disable_tcp_pings = true;
        let limit = cluster.now + Duration::from_secs(10);
        while cluster.step(limit) {
            if cluster.view(0, "node1").map(|n| n.state) == Some(NodeState::Suspect) {
                break;
            }
        }
        assert_eq!(
            cluster.view(0, "node1").map(|n| n.state),
            Some(NodeState::Suspect)
        );
        assert!(cluster.nodes[0].stats().awareness >= 1);
    }

    #[test]
    fn suspect_about_self_is_refuted_with_a_higher_incarnation() {
        let mut cluster = Cluster::of(2);
        cluster.join(1, 0);
        let suspect = Message::Suspect(Suspect {
            incarnation: 3,
            node: "node0".into(),
            from: "node1".into(),
        });
        cluster.inject(0, 1, suspect).expect("valid packet");
        assert_eq!(cluster.nodes[0].local_node().incarnation, 4);
        assert_eq!(cluster.nodes[0].local_node().state, NodeState::Alive);
        assert_eq!(cluster.nodes[0].stats().awareness, 1);
        cluster.run_for(Duration::from_secs(1));
        let seen = cluster.view(1, "node0").expect("listed");
        assert_eq!((seen.state, seen.incarnation), (NodeState::Alive, 4));
    }

    #[test]
    fn dead_about_self_is_refuted_and_a_stale_one_is_ignored() {
        let mut cluster = Cluster::of(2);
        cluster.join(1, 0);
        let dead = |incarnation| {
            Message::Dead(Dead {
                incarnation,
                node: "node0".into(),
                from: "node1".into(),
            })
        };
        cluster.inject(0, 1, dead(0)).expect("valid packet");
        assert_eq!(cluster.nodes[0].local_node().incarnation, 1);
        cluster.inject(0, 1, dead(1)).expect("valid packet");
        assert_eq!(cluster.nodes[0].local_node().incarnation, 2);
        assert_eq!(cluster.nodes[0].local_node().state, NodeState::Alive);
    }

    #[test]
    fn graceful_leave_shows_as_left_not_dead_on_the_peer() {
        let mut cluster = Cluster::of(2);
        cluster.join(1, 0);
        let now = cluster.now;
        cluster.nodes[1].leave(now);
        assert!(!cluster.nodes[1].is_leave_broadcast_done(now));
        cluster.run_for(Duration::from_secs(2));
        assert!(cluster.nodes[1].is_leave_broadcast_done(cluster.now));
        let seen = cluster.view(0, "node1").expect("listed");
        assert_eq!(seen.state, NodeState::Left);
        let leaves = &cluster.nodes[0].delegate().leaves;
        assert_eq!(leaves.len(), 1);
        assert_eq!(leaves[0].state, NodeState::Left);
        // The leaver ignores accusations about itself from then on.
        let suspect = Message::Suspect(Suspect {
            incarnation: 9,
            node: "node1".into(),
            from: "node0".into(),
        });
        cluster.inject(1, 0, suspect).expect("valid packet");
        assert_eq!(cluster.nodes[1].local_node().state, NodeState::Left);
        assert_eq!(cluster.nodes[1].local_node().incarnation, 1);
    }

    #[test]
    fn a_leave_stops_waiting_for_its_broadcast_after_the_tcp_timeout() {
        let mut slow = config(1);
        // So many retransmissions that the broadcast cannot finish in time.
        slow.retransmit_mult = 10_000;
        let mut cluster = Cluster::new(vec![config(0), slow]);
        cluster.join(1, 0);
        let left_at = cluster.now;
        cluster.nodes[1].leave(left_at);
        cluster.run_for(Duration::from_secs(9));
        assert!(!cluster.nodes[1].is_leave_broadcast_done(cluster.now));
        assert_eq!(
            cluster.view(0, "node1").map(|n| n.state),
            Some(NodeState::Left)
        );
        cluster.run_for(Duration::from_secs(2));
        assert!(cluster.nodes[1].is_leave_broadcast_done(cluster.now));
    }

    #[test]
    fn leaving_alone_is_done_at_once() {
        let mut cluster = Cluster::of(1);
        let now = cluster.now;
        assert!(!cluster.nodes[0].is_leave_broadcast_done(now));
        cluster.nodes[0].leave(now);
        assert!(cluster.nodes[0].is_leave_broadcast_done(now));
    }

    #[test]
    fn alive_with_a_different_address_is_a_conflict() {
        let mut cluster = Cluster::of(2);
        cluster.join(1, 0);
        let impostor = Message::Alive(Alive {
            incarnation: 7,
            node: "node1".into(),
            addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 99)),
            port: 7946,
            meta: b"other".to_vec(),
            vsn: Some(SERF_0_9_4_VSN),
        });
        cluster.inject(0, 1, impostor).expect("valid packet");
        let conflicts = &cluster.nodes[0].delegate().conflicts;
        assert_eq!(conflicts.len(), 1);
        assert_eq!(conflicts[0].0.addr, addr(1));
        assert_eq!(conflicts[0].1.addr.to_string(), "10.0.0.99:7946");
        let seen = cluster.view(0, "node1").expect("listed");
        assert_eq!((seen.addr, seen.incarnation), (addr(1), 1));
    }

    #[test]
    fn version_incompatible_push_pull_is_rejected() {
        let mut old = config(1);
        old.vsn = [1, 5, 2, 2, 3, 3];
        let mut cluster = Cluster::new(vec![config(0), old]);
        let outcome = cluster.join(1, 0);
        assert_eq!(outcome.joined, 0);
        assert_eq!(outcome.errors.len(), 1);
        assert_eq!(
            outcome.errors[0].1,
            "Node 'node0' delegate protocol version (5) is incompatible: [2, 3]"
        );
        assert_eq!(cluster.nodes[0].members().count(), 1);
        assert_eq!(cluster.nodes[1].members().count(), 1);
    }

    #[test]
    fn an_alive_with_invalid_versions_is_ignored() {
        let mut cluster = Cluster::of(1);
        let alive = Message::Alive(Alive {
            incarnation: 1,
            node: "weird".into(),
            addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 50)),
            port: 7946,
            meta: Vec::new(),
            vsn: Some([2, 1, 2, 2, 5, 5]),
        });
        cluster.inject(0, 1, alive).expect("valid packet");
        assert_eq!(cluster.nodes[0].members().count(), 1);
    }

    #[test]
    fn a_bad_packet_is_counted_and_changes_nothing() {
        let mut cluster = Cluster::of(2);
        cluster.join(1, 0);
        let before: Vec<Node> = cluster.nodes[0].members().cloned().collect();
        let stats = cluster.nodes[0].stats();
        for garbage in [&[][..], &[0xff, 1, 2], &[4, 0x93, 0xc1], &[7, 3, 0, 1]] {
            let result = cluster.nodes[0].handle_packet(cluster.now, addr(1), garbage);
            assert!(result.is_err(), "{garbage:?} accepted");
        }
        assert_eq!(
            cluster.nodes[0].stats().packets_dropped,
            stats.packets_dropped + 4
        );
        assert!(cluster.nodes[0].poll_transmit().is_none());
        let after: Vec<Node> = cluster.nodes[0].members().cloned().collect();
        assert_eq!(before, after);
    }

    #[test]
    fn a_garbage_stream_gets_an_error_reply_or_nothing() {
        let mut cluster = Cluster::of(1);
        let now = cluster.now;
        // A compress wrapper with an unknown algorithm: errResp.
        let reply = cluster.nodes[0].handle_stream(
            now,
            addr(1),
            &[9, 0x81, 0xa4, b'A', b'l', b'g', b'o', 5],
        );
        let reply = reply.expect("an error reply");
        let plain = packet::unpack_stream(&reply, None).expect("plain reply");
        assert!(matches!(
            Message::decode_stream(&plain),
            Ok(Message::Err(_))
        ));
        // An alive is not a stream message: closed without reply.
        let alive = Message::Alive(Alive {
            incarnation: 1,
            node: "x".into(),
            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 1,
            meta: Vec::new(),
            vsn: None,
        });
        assert!(
            cluster.nodes[0]
                .handle_stream(now, addr(1), &alive.encode())
                .is_none()
        );
    }

    #[test]
    fn a_tcp_ping_is_answered_with_an_ack() {
        let mut cluster = Cluster::of(1);
        let now = cluster.now;
        let ping = Message::Ping(Ping {
            seq_no: 42,
            node: "node0".into(),
            ..Ping::default()
        });
        let reply = cluster.nodes[0]
            .handle_stream(now, addr(1), &ping.encode())
            .expect("ack");
        let plain = packet::unpack_stream(&reply, None).expect("plain reply");
        let expected = Message::Ack(Ack {
            seq_no: 42,
            payload: None,
        });
        assert_eq!(Message::decode_stream(&plain), Ok(expected));
    }

    #[test]
    fn a_node_reachable_only_over_tcp_is_not_suspected() {
        let mut cluster = Cluster::of(3);
        cluster.join(1, 0);
        cluster.join(2, 0);
        cluster.run_for(Duration::from_secs(3));
        // node0 cannot reach node1 by UDP at all, and node2 cannot either.
        cluster.udp_blocked.extend([(0, 1), (1, 0), (2, 1), (1, 2)]);
        cluster.run_for(Duration::from_secs(20));
        let seen = cluster.view(0, "node1").expect("listed");
        assert_eq!(seen.state, NodeState::Alive);
        assert!(cluster.nodes[0].delegate().leaves.is_empty());
        assert!(cluster.nodes[0].stats().streams_out >= 5, "no tcp pings");
    }

    #[test]
    fn a_nack_from_a_peer_spares_local_health_when_the_target_is_down() {
        let mut relay = config(2);
        // The relay gives up (and nacks) well before the prober's deadline.
        relay.probe_timeout = Duration::from_millis(200);
        // And does not probe anyone itself, so node0's view comes from its own probes.
        relay.probe_interval = Duration::from_secs(3600);
        let mut cluster = Cluster::new(vec![config(0), config(1), relay]);
        cluster.join(1, 0);
        cluster.join(2, 0);
        cluster.run_for(Duration::from_secs(3));
        cluster.down.insert(1);
        let limit = cluster.now + Duration::from_secs(10);
        while cluster.step(limit) {
            if cluster
                .view(0, "node1")
                .is_some_and(|n| n.state != NodeState::Alive)
            {
                break;
            }
        }
        assert_eq!(
            cluster.view(0, "node1").map(|n| n.state),
            Some(NodeState::Suspect)
        );
        assert_eq!(cluster.nodes[0].stats().awareness, 0);
    }

    #[test]
    fn indirect_probes_keep_a_node_alive_when_only_the_direct_path_fails() {
        let mut config0 = config(0);
        config0.disable_tcp_pings = true;
        let mut cluster = Cluster::new(vec![config0, config(1), config(2)]);
        cluster.join(1, 0);
        cluster.join(2, 0);
        cluster.run_for(Duration::from_secs(3));
        cluster.udp_blocked.extend([(0, 1), (1, 0)]);
        cluster.run_for(Duration::from_secs(20));
        let seen = cluster.view(0, "node1").expect("listed");
        assert_eq!(seen.state, NodeState::Alive);
        assert!(cluster.nodes[0].delegate().leaves.is_empty());
    }

    #[test]
    fn update_node_gossips_new_meta_with_a_higher_incarnation() {
        let mut cluster = Cluster::of(2);
        cluster.join(1, 0);
        cluster.nodes[0].delegate_mut().meta = b"new tags".to_vec();
        let now = cluster.now;
        cluster.nodes[0].update_node(now);
        assert_eq!(cluster.nodes[0].local_node().incarnation, 2);
        cluster.run_for(Duration::from_secs(1));
        let seen = cluster.view(1, "node0").expect("listed");
        assert_eq!(
            (seen.meta.as_slice(), seen.incarnation),
            (&b"new tags"[..], 2)
        );
        assert_eq!(cluster.nodes[1].delegate().updates.len(), 1);
    }

    #[test]
    fn user_messages_arrive_by_udp_and_by_stream() {
        let mut cluster = Cluster::of(2);
        let now = cluster.now;
        cluster.nodes[0].send_user(now, addr(1), b"hello");
        cluster.deliver();
        let stream = Message::encode_user_stream(b"by stream");
        assert!(
            cluster.nodes[1]
                .handle_stream(now, addr(0), &stream)
                .is_none()
        );
        assert_eq!(
            cluster.nodes[1].delegate().user_msgs,
            vec![b"hello".to_vec(), b"by stream".to_vec()]
        );
    }

    #[test]
    fn joining_an_unreachable_address_reports_the_error() {
        let mut cluster = Cluster::of(1);
        let outcome = cluster.join(0, 5);
        assert_eq!(outcome.joined, 0);
        assert_eq!(
            outcome.errors,
            vec![(
                addr(5),
                format!("dial tcp {}: connect: connection refused", addr(5))
            )]
        );
        let now = cluster.now;
        let id = cluster.nodes[0].join(now, Vec::new());
        let empty = cluster.nodes[0]
            .poll_join_outcome()
            .expect("immediate outcome");
        assert_eq!((empty.id, empty.joined), (id, 0));
    }

    fn keyring(byte: u8) -> Keyring {
        Keyring::new(vec![vec![byte; 32]]).expect("valid key")
    }

    #[test]
    fn encrypted_nodes_with_the_same_key_join() {
        let mut configs = vec![config(0), config(1)];
        for config in &mut configs {
            config.keyring = Some(keyring(1));
        }
        let mut cluster = Cluster::new(configs);
        assert_eq!(cluster.join(1, 0).joined, 1);
        cluster.run_for(Duration::from_secs(3));
        assert_eq!(cluster.nodes[0].num_alive(), 2);
        assert_eq!(cluster.nodes[0].stats().packets_dropped, 0);
    }

    #[test]
    fn a_node_with_a_wrong_key_cannot_join_and_its_packets_are_dropped() {
        let mut configs = vec![config(0), config(1), config(2)];
        configs[0].keyring = Some(keyring(1));
        configs[1].keyring = Some(keyring(2));
        let mut cluster = Cluster::new(configs);
        let outcome = cluster.join(1, 0);
        assert_eq!(outcome.joined, 0);
        assert_eq!(outcome.errors.len(), 1);
        // A plaintext node is refused too, with the reason spelled out.
        let outcome = cluster.join(2, 0);
        assert_eq!(outcome.joined, 0);
        assert!(
            outcome.errors[0].1.contains("encrypt"),
            "{:?}",
            outcome.errors
        );
        let now = cluster.now;
        let dropped = cluster.nodes[0].stats().packets_dropped;
        cluster.nodes[1].send_user(now, addr(0), b"let me in");
        cluster.deliver();
        assert_eq!(cluster.nodes[0].stats().packets_dropped, dropped + 1);
        assert!(cluster.nodes[0].delegate().user_msgs.is_empty());
        assert_eq!(cluster.nodes[0].members().count(), 1);
    }
}
