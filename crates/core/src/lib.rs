//! The Serf core: members, Lamport clocks, user events and queries, as a state machine.
//!
//! It owns no socket, task, file or clock: the agent feeds it commands and the current time
//! and drains its outputs (`poll_event`, `poll_query_output`, `poll_timeout`), so every
//! behaviour replays in a test. Membership and failure detection come from the
//! [`serf_gossip::Memberlist`] that `Serf` owns; Serf's own messages ride on its broadcasts and
//! push/pull exchanges.
#![forbid(unsafe_code)]

pub mod coalesce;
pub mod coordinate;
mod core;
pub mod filter;
pub mod keys;
mod size;
mod types;
pub mod wire;

#[cfg(any(test, feature = "sim"))]
pub mod sim;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::Rng;
use regex::Regex;

pub use self::core::Counters;
use self::core::{Core, OutboundQuery};
use self::wire::{QueryFilter, QueryMsg, QueryResponseMsg, UserEventMsg};
use serf_gossip::{
    self, DecodeError, JoinId, JoinOutcome, StreamError, StreamId, StreamRequest, Transmit,
    broadcast::BroadcastId, memberlist::Memberlist,
};

pub use types::*;

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

/// Serf's hard cap on a user event, whatever the configured limit (reference 3.7).
pub const USER_EVENT_SIZE_HARD_LIMIT: usize = 9216;

/// Queries whose names start with this are Serf's own and never reach handlers.
pub const INTERNAL_QUERY_PREFIX: &str = "_serf_";

/// The one internal query clients may send (`serf reachability`).
pub const PING_QUERY: &str = "_serf_ping";

/// How long a query stays open after every expected node has answered.
pub const EARLY_END_GRACE: Duration = Duration::from_millis(250);

/// The size Serf checks against its response limit for `payload` sent by `from`.
pub fn encoded_response_len(key: QueryKey, from: &str, payload: &[u8]) -> usize {
    size::query_response(key, from, payload)
}

/// What the core needs to know about this node and the protocol.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's name.
    pub node_name: NodeName,
    /// The address advertised to the cluster.
    pub advertise: SocketAddr,
    /// This node's tags.
    pub tags: Tags,
    /// Serf's size limits.
    pub limits: crate::SerfLimits,
    /// Gossip interval, the unit of the default query timeout (200 ms on a LAN).
    pub gossip_interval: Duration,
    /// The default query timeout is `gossip_interval * query_timeout_mult * ceil(log10(n + 1))`.
    pub query_timeout_mult: u32,
    /// The membership layer's settings (profile, keyring, compression).
    pub memberlist: serf_gossip::Config,
    /// Failed members are forgotten after this long (Serf's `reconnect_timeout`).
    pub reconnect_timeout: Duration,
    /// Left members are forgotten after this long (Serf's `tombstone_timeout`).
    pub tombstone_timeout: Duration,
    /// Clocks restored from a snapshot file; `None` without one (reference 3.14).
    pub restored_clocks: Option<RestoredClocks>,
    /// Also hand out member events as they happen, before coalescing, through
    /// [`Serf::poll_raw_member_event`] (the snapshot file records them so).
    pub raw_member_events: bool,
    /// Which events wait to be merged before `poll_event` hands them out (reference 3.11):
    /// off in the library, as in Serf; the agent turns it on.
    pub coalesce: coalesce::Config,
    /// A keyring file is configured: answers to key queries that change the keyring wait for
    /// the agent to write it ([`Serf::poll_keyring_write`]).
    pub persist_keyring: bool,
}

/// The last Lamport times a snapshot recorded. The core starts past them and drops user
/// events and queries at or before them, so handlers never see those twice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoredClocks {
    /// Member clock (intents).
    pub member: LamportTime,
    /// Event clock: the last user event handed out.
    pub event: LamportTime,
    /// Query clock: the last query handed out.
    pub query: LamportTime,
}

impl Config {
    /// Serf's LAN settings for a node.
    pub fn lan(node_name: NodeName, advertise: SocketAddr, tags: Tags) -> Config {
        Config {
            node_name: node_name.clone(),
            advertise,
            tags,
            limits: crate::SerfLimits::SERF,
            gossip_interval: Duration::from_millis(200),
            query_timeout_mult: 16,
            memberlist: serf_gossip::Config::lan(node_name.clone(), advertise),
            reconnect_timeout: Duration::from_secs(24 * 3600),
            tombstone_timeout: Duration::from_secs(24 * 3600),
            restored_clocks: None,
            raw_member_events: false,
            coalesce: coalesce::Config::OFF,
            persist_keyring: false,
        }
    }
}

/// A query to send, as the RPC `query` command describes it.
#[derive(Debug, Clone, Default)]
pub struct QueryParams {
    /// Name.
    pub name: String,
    /// Opaque payload.
    pub payload: Vec<u8>,
    /// Only these nodes process the query (none = all).
    pub filter_nodes: Vec<NodeName>,
    /// Only nodes whose tag matches each regex (unanchored) process it.
    pub filter_tags: BTreeMap<String, String>,
    /// Ask every processing node for an ack.
    pub request_ack: bool,
    /// How many extra nodes relay each response (0 = none).
    pub relay_factor: u8,
    /// How long to collect answers; `None` = Serf's default for the cluster size.
    pub timeout: Option<Duration>,
}

/// Why a user event was refused. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserEventError {
    /// Name and payload together exceed the configured limit.
    #[error("user event exceeds configured limit of {0} bytes before encoding")]
    TooLarge(usize),
    /// Name and payload together exceed Serf's hard limit.
    #[error("user event exceeds sane limit of {USER_EVENT_SIZE_HARD_LIMIT} bytes before encoding")]
    OverHardLimit,
    /// The encoded message exceeds the configured limit.
    #[error("encoded user event exceeds configured limit of {0} bytes after encoding")]
    EncodedTooLarge(usize),
    /// The agent is leaving or has left.
    #[error("user event refused: the agent is {0}")]
    NotAlive(&'static str),
}

/// Why a query was refused. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// Clients may not send Serf's internal queries.
    #[error("Queries cannot contain the '_serf_' prefix")]
    InternalName,
    /// The encoded query exceeds the limit.
    #[error("query exceeds limit of {0} bytes")]
    TooLarge(usize),
    /// A tag filter is not a valid regular expression.
    #[error("invalid tag filter {tag}={expr:?}: {reason}")]
    BadTagFilter {
        tag: String,
        expr: String,
        reason: String,
    },
    /// The agent is leaving or has left.
    #[error("query refused: the agent is {0}")]
    NotAlive(&'static str),
}

/// Why a query response was refused. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RespondError {
    /// No such query is waiting for an answer here (never seen, or long expired).
    #[error("no pending query {0:?}")]
    Unknown(QueryKey),
    /// This node already answered the query.
    #[error("response already sent")]
    AlreadySent,
    /// The querier stopped listening.
    #[error("response is past the deadline")]
    PastDeadline,
    /// The encoded response exceeds the limit.
    #[error("response exceeds limit of {0} bytes")]
    TooLarge(usize),
}

/// Why tags were refused. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagsError {
    /// The tags, as node meta, exceed memberlist's limit (Serf's wording).
    #[error("Encoded length of tags exceeds limit of {0} bytes")]
    TooLarge(usize),
}

/// Checks that `tags` fit in node meta as the node of `config` would encode them, as Serf
/// does when it starts and on every tag change: a node whose meta did not fit would be seen by
/// every peer without any tags.
pub fn check_tags(config: &Config, tags: &Tags) -> Result<(), TagsError> {
    let limit = serf_gossip::memberlist::META_MAX_SIZE;
    if core::encode_meta(config, tags).len() > limit {
        return Err(TagsError::TooLarge(limit));
    }
    Ok(())
}

/// Counters and clocks for `serf info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Known members.
    pub members: usize,
    /// Failed members.
    pub failed: usize,
    /// Left members.
    pub left: usize,
    /// Member clock.
    pub member_time: LamportTime,
    /// Event clock.
    pub event_time: LamportTime,
    /// Query clock.
    pub query_time: LamportTime,
    /// Queries waiting for answers here.
    pub pending_queries: usize,
    /// Serf broadcasts waiting to be gossiped: intents, user events, queries.
    pub intent_queue: usize,
    pub event_queue: usize,
    pub query_queue: usize,
    /// Serf's drop counters.
    pub counters: Counters,
}

/// This node's own progress through a graceful leave (reference 3.12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LocalState {
    Alive,
    /// The leave intent is being gossiped (until it is sent or `deadline`).
    LeavingIntent {
        intent: BroadcastId,
        deadline: Instant,
    },
    /// memberlist's own leave (dead about ourselves) is being gossiped.
    LeavingMemberlist {
        deadline: Instant,
    },
    /// Both are out; waiting `LEAVE_PROPAGATE_DELAY` for them to spread.
    LeavingPropagate {
        until: Instant,
    },
    Left,
}

impl LocalState {
    fn name(self) -> &'static str {
        match self {
            LocalState::Alive => "alive",
            LocalState::Left => "left",
            _ => "leaving",
        }
    }
}

/// How long a graceful leave waits for its broadcasts (Serf's `BroadcastTimeout`).
pub const BROADCAST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a leaving node keeps running after its broadcasts went out.
pub const LEAVE_PROPAGATE_DELAY: Duration = Duration::from_secs(1);

/// Why this node started a join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JoinKind {
    /// A client or the command line asked; the outcome is reported.
    Requested,
    /// Serf's reconnector trying a failed member; nobody waits for it.
    Reconnect,
    /// A node from the snapshot file: memberlist's join alone, the outcome is reported.
    Rejoin,
}

/// The Serf state machine: Serf's layer over a memberlist.
#[derive(Debug)]
pub struct Serf {
    ml: Memberlist<Core>,
    state: LocalState,
    joins: HashMap<JoinId, JoinKind>,
    join_outcomes: VecDeque<JoinOutcome>,
    next_reconnect: Instant,
    /// Between the core's events and `poll_event`.
    coalescer: coalesce::Coalescer,
    /// Member events before coalescing, with [`Config::raw_member_events`].
    raw_member_events: Option<VecDeque<MemberEvent>>,
}

impl Serf {
    /// Starts a node alone in its cluster; its own `member-join` is the first event.
    ///
    /// `seed` makes every random choice reproducible; the agent passes a random one.
    pub fn new(config: Config, seed: u64, now: Instant) -> Serf {
        let mut ml_config = config.memberlist.clone();
        ml_config.name = config.node_name.clone();
        ml_config.advertise = config.advertise;
        let coalescer = coalesce::Coalescer::new(config.coalesce, now);
        let raw_member_events = config.raw_member_events.then(VecDeque::new);
        let core = Core::new(config, seed, now);
        let ml = Memberlist::new(ml_config, core, seed.wrapping_add(1), now);
        let mut serf = Serf {
            ml,
            state: LocalState::Alive,
            joins: HashMap::new(),
            join_outcomes: VecDeque::new(),
            next_reconnect: now + core::RECONNECT_INTERVAL,
            coalescer,
            raw_member_events,
        };
        serf.coalesce_events(now);
        serf
    }

    fn core(&self) -> &Core {
        self.ml.delegate()
    }

    fn core_mut(&mut self) -> &mut Core {
        self.ml.delegate_mut()
    }

    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.core().config.node_name
    }

    /// This node as the cluster sees it.
    pub fn local_member(&self) -> &Member {
        self.core().local_member()
    }

    /// Every known member, in name order.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.core().members.values().map(|state| &state.member)
    }

    /// The cluster size Serf uses for query timeouts: memberlist's nodes not dead or left.
    pub fn num_alive(&self) -> usize {
        self.ml.num_alive()
    }

    /// The network coordinate of `node` as it last arrived in an ack (ours for our own name);
    /// `None` until a probe of it completed, and again once the member is erased.
    pub fn coordinate(&self, node: &str) -> Option<wire::Coordinate> {
        self.core().coordinates.get(node).cloned()
    }

    /// This node's network coordinate.
    pub fn local_coordinate(&self) -> wire::Coordinate {
        self.core().coordinates.local().clone()
    }

    /// Counters and clocks.
    pub fn stats(&self) -> Stats {
        let core = self.core();
        let count = |status| {
            core.members
                .values()
                .filter(|s| s.member.status == status)
                .count()
        };
        Stats {
            members: core.members.len(),
            failed: count(MemberStatus::Failed),
            left: count(MemberStatus::Left),
            member_time: core.member_clock.time(),
            event_time: core.event_clock.time(),
            query_time: core.query_clock.time(),
            pending_queries: core.inbound.len(),
            intent_queue: core.intents.num_queued(),
            event_queue: core.user_events.num_queued(),
            query_queue: core.queries.num_queued(),
            counters: core.counters,
        }
    }

    /// Sends a user event; returns its Lamport time.
    pub fn user_event(
        &mut self,
        now: Instant,
        name: &str,
        payload: &[u8],
        coalesce: bool,
    ) -> Result<LamportTime, UserEventError> {
        self.check_alive().map_err(UserEventError::NotAlive)?;
        let core = self.core_mut();
        let limit = core.config.limits.user_event_size_limit;
        let raw = name.len() + payload.len();
        if raw > limit {
            return Err(UserEventError::TooLarge(limit));
        }
        if raw > USER_EVENT_SIZE_HARD_LIMIT {
            return Err(UserEventError::OverHardLimit);
        }
        let message = UserEventMsg {
            ltime: core.event_clock.time(),
            name: name.to_owned(),
            payload: payload.to_vec(),
            cc: coalesce,
        };
        let encoded = message.encode();
        if encoded.len() > limit {
            return Err(UserEventError::EncodedTooLarge(limit));
        }
        core.event_clock.increment();
        if core.handle_user_event(&message) {
            core.user_events.queue(None, encoded);
        }
        self.flush(now);
        Ok(message.ltime)
    }

    /// Sends a query; answers come out of [`Serf::poll_query_output`] under the returned key
    /// until a final [`QueryOutput::Done`]: at the deadline, or [`EARLY_END_GRACE`] after every
    /// alive member that matched the filters when it was sent has responded (and acked, if
    /// asked to).
    pub fn query(&mut self, now: Instant, params: QueryParams) -> Result<QueryKey, QueryError> {
        self.check_alive().map_err(QueryError::NotAlive)?;
        if params.name.starts_with(INTERNAL_QUERY_PREFIX)
            && !(params.name == PING_QUERY && params.payload.is_empty())
        {
            return Err(QueryError::InternalName);
        }
        let key = self.send_query(now, params)?;
        self.flush(now);
        Ok(key)
    }

    /// Sends a query of any name (Serf's own included); the caller flushes.
    fn send_query(&mut self, now: Instant, params: QueryParams) -> Result<QueryKey, QueryError> {
        let tag_filters = compile_tag_filters(&params.filter_tags)?;
        let expected: Vec<NodeName> = self
            .members()
            .filter(|member| member.status == MemberStatus::Alive)
            .filter(|member| {
                params.filter_nodes.is_empty() || params.filter_nodes.contains(&member.name)
            })
            .filter(|member| {
                tag_filters.iter().all(|(tag, regex)| {
                    regex.is_match(member.tags.get(tag).map(String::as_str).unwrap_or(""))
                })
            })
            .map(|member| member.name.clone())
            .collect();
        let timeout = params
            .timeout
            .unwrap_or_else(|| self.default_query_timeout());
        let core = self.core_mut();
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
        let message = QueryMsg {
            ltime: core.query_clock.time(),
            id: core.rng.random_range(0..1u32 << 31),
            addr: core.config.advertise.ip(),
            port: core.config.advertise.port(),
            source_node: core.config.node_name.clone(),
            filters,
            flags: if params.request_ack {
                wire::QUERY_FLAG_ACK
            } else {
                0
            },
            relay_factor: params.relay_factor,
            timeout,
            name: params.name.clone(),
            payload: params.payload.clone(),
        };
        let encoded = message.encode();
        let limit = core.config.limits.query_size_limit;
        if encoded.len() > limit {
            return Err(QueryError::TooLarge(limit));
        }
        let key = QueryKey {
            ltime: message.ltime,
            id: message.id,
        };
        core.outbound.insert(
            key,
            OutboundQuery {
                deadline: now + timeout,
                acked: Vec::new(),
                responded: Vec::new(),
                expected,
                request_ack: params.request_ack,
                complete: false,
            },
        );
        // Serf processes its own query as if it had been gossiped to it.
        if core.handle_query(now, &message) {
            core.queries.queue(None, encoded);
        }
        Ok(key)
    }

    /// Serf's default: `gossip_interval * mult * ceil(log10(n + 1))`.
    fn default_query_timeout(&self) -> Duration {
        let n = self.num_alive() as f64;
        let scale = (n + 1.0).log10().ceil().max(1.0) as u32;
        let config = &self.core().config;
        config.gossip_interval * config.query_timeout_mult * scale
    }

    /// Answers a query this node received. At most once, before its deadline.
    pub fn respond(
        &mut self,
        now: Instant,
        key: QueryKey,
        payload: &[u8],
    ) -> Result<(), RespondError> {
        let core = self.core_mut();
        let from = core.config.node_name.clone();
        let limit = core.config.limits.query_response_size_limit;
        let inbound = core
            .inbound
            .get_mut(&key)
            .ok_or(RespondError::Unknown(key))?;
        if inbound.responded {
            return Err(RespondError::AlreadySent);
        }
        if now > inbound.deadline {
            return Err(RespondError::PastDeadline);
        }
        let response = QueryResponseMsg {
            ltime: key.ltime,
            id: key.id,
            from,
            flags: 0,
            payload: Some(payload.to_vec()),
        };
        if response.encode().len() > limit {
            return Err(RespondError::TooLarge(limit));
        }
        inbound.responded = true;
        let (addr, relay_factor) = (inbound.addr, inbound.relay_factor);
        core.send_response(addr, relay_factor, response);
        self.flush(now);
        Ok(())
    }

    /// Replaces this node's tags, tells the cluster and the handlers (`member-update`);
    /// refuses tags too large for node meta, changing nothing.
    pub fn set_tags(&mut self, now: Instant, tags: Tags) -> Result<(), TagsError> {
        check_tags(&self.core().config, &tags)?;
        let core = self.core_mut();
        let name = core.config.node_name.clone();
        core.config.tags = tags.clone();
        let state = core.members.get_mut(&name).expect("local member exists");
        state.member.tags = tags;
        let member = state.member.clone();
        core.events.push_back(Event::Member(MemberEvent {
            kind: MemberEventKind::Update,
            members: vec![member],
        }));
        self.ml.update_node(now);
        self.flush(now);
        Ok(())
    }

    /// Starts a graceful leave: the leave intent goes out, then memberlist's leave, then a
    /// short wait for both to spread. [`Serf::has_left`] says when it is over.
    pub fn leave(&mut self, now: Instant) {
        if self.state != LocalState::Alive {
            return;
        }
        let name = self.node_name().to_owned();
        let core = self.core_mut();
        core.leaving = true;
        let intent = core.broadcast_leave(now, &name, false);
        self.state = LocalState::LeavingIntent {
            intent,
            deadline: now + BROADCAST_TIMEOUT,
        };
        self.advance_leave(now);
        self.flush(now);
    }

    /// Removes a failed member (reference 3.12): a leave intent about it; with `prune` it is
    /// erased at once.
    pub fn force_leave(&mut self, now: Instant, node: &str, prune: bool) {
        self.core_mut().broadcast_leave(now, node, prune);
        self.flush(now);
    }

    fn has_alive_peers(&self) -> bool {
        let local = self.node_name();
        self.core()
            .members
            .values()
            .any(|s| s.member.name != local && s.member.status == MemberStatus::Alive)
    }

    fn advance_leave(&mut self, now: Instant) {
        loop {
            let next = match self.state {
                LocalState::LeavingIntent { intent, deadline } => {
                    let sent = !self.core().intents.is_queued(intent);
                    if sent || now >= deadline || !self.has_alive_peers() {
                        if !sent && self.has_alive_peers() {
                            tracing::warn!("timeout while waiting for graceful leave");
                        }
                        self.ml.leave(now);
                        LocalState::LeavingMemberlist {
                            deadline: now + BROADCAST_TIMEOUT,
                        }
                    } else {
                        return;
                    }
                }
                LocalState::LeavingMemberlist { deadline }
                    if self.ml.is_leave_broadcast_done(now) || now >= deadline =>
                {
                    if self.has_alive_peers() {
                        LocalState::LeavingPropagate {
                            until: now + LEAVE_PROPAGATE_DELAY,
                        }
                    } else {
                        LocalState::Left
                    }
                }
                LocalState::LeavingPropagate { until } if now >= until => LocalState::Left,
                _ => return,
            };
            self.state = next;
            if self.state == LocalState::Left {
                let name = self.node_name().to_owned();
                if let Some(state) = self.core_mut().members.get_mut(&name) {
                    state.member.status = MemberStatus::Left;
                }
            }
        }
    }

    /// Whether a graceful leave has completed.
    pub fn has_left(&self) -> bool {
        self.state == LocalState::Left
    }

    fn check_alive(&self) -> Result<(), &'static str> {
        match self.state {
            LocalState::Alive => Ok(()),
            other => Err(other.name()),
        }
    }

    /// Joins the cluster through the nodes at `addrs` (push/pull with each); the outcome comes
    /// out of [`Serf::poll_join_outcome`]. Without `replay`, user events older than the join
    /// are not handed to handlers.
    pub fn join(&mut self, now: Instant, addrs: Vec<SocketAddr>, replay: bool) -> JoinId {
        self.core_mut().ignore_old_events = !replay;
        let id = self.ml.join(now, addrs);
        self.joins.insert(id, JoinKind::Requested);
        self.flush(now);
        id
    }

    /// Joins a node remembered in the snapshot file, as Serf's rejoin does: memberlist's join
    /// alone, so no join intent goes out and the event floor is left to the restored clocks.
    /// The outcome comes out of [`Serf::poll_join_outcome`].
    pub fn rejoin(&mut self, now: Instant, addrs: Vec<SocketAddr>) -> JoinId {
        let id = self.ml.join(now, addrs);
        self.joins.insert(id, JoinKind::Rejoin);
        self.flush(now);
        id
    }

    /// The member clock now (the snapshot records it).
    pub fn member_time(&self) -> LamportTime {
        self.core().member_clock.time()
    }

    /// The next member event as it happened, before coalescing; only with
    /// [`Config::raw_member_events`].
    pub fn poll_raw_member_event(&mut self) -> Option<MemberEvent> {
        self.coalesce_events(self.coalescer.clock());
        self.raw_member_events.as_mut()?.pop_front()
    }

    fn tap_member_event(&mut self, event: &Event) {
        if let (Some(raw), Event::Member(member_event)) = (&mut self.raw_member_events, event) {
            raw.push_back(member_event.clone());
        }
    }

    /// The highest Lamport time of a user event this node handed out (before coalescing).
    pub fn last_event_time(&self) -> LamportTime {
        self.core().last_event_ltime
    }

    /// The highest Lamport time of a query this node processed, Serf's own included.
    pub fn last_query_time(&self) -> LamportTime {
        self.core().last_query_ltime
    }

    /// How a requested join ended.
    pub fn poll_join_outcome(&mut self) -> Option<JoinOutcome> {
        self.join_outcomes.pop_front()
    }

    /// A UDP packet arrived on the gossip port. An error means it (or some of its parts) was
    /// dropped; parts before a bad one have been applied.
    pub fn handle_packet(
        &mut self,
        now: Instant,
        from: SocketAddr,
        packet: &[u8],
    ) -> Result<(), DecodeError> {
        let result = self.ml.handle_packet(now, from, packet);
        self.flush(now);
        result
    }

    /// A complete inbound stream message (see `serf_gossip::packet::stream_frame_len`); returns the
    /// bytes to write back before closing, if any.
    pub fn handle_stream(
        &mut self,
        now: Instant,
        from: SocketAddr,
        message: &[u8],
    ) -> Option<Vec<u8>> {
        let reply = self.ml.handle_stream(now, from, message);
        self.flush(now);
        reply
    }

    /// The reply to (or failure of) an outbound stream from [`Serf::poll_stream`].
    pub fn handle_stream_reply(
        &mut self,
        now: Instant,
        id: StreamId,
        reply: Result<Vec<u8>, StreamError>,
    ) {
        self.ml.handle_stream_reply(now, id, reply);
        self.flush(now);
    }

    /// The next UDP packet to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.ml.poll_transmit()
    }

    /// The next outbound stream to run.
    pub fn poll_stream(&mut self) -> Option<StreamRequest> {
        self.ml.poll_stream()
    }

    /// The membership layer's counters.
    pub fn gossip_stats(&self) -> serf_gossip::Stats {
        self.ml.stats()
    }

    /// The gossip keyring, when encryption is on.
    pub fn keyring(&self) -> Option<&serf_gossip::Keyring> {
        self.ml.keyring()
    }

    /// Fires every timer due at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.ml.handle_timeout(now);
        let core = self.core_mut();
        let mut done: Vec<QueryKey> = core
            .outbound
            .iter()
            .filter(|(_, q)| q.deadline <= now)
            .map(|(key, _)| *key)
            .collect();
        done.sort();
        for key in done {
            core.outbound.remove(&key);
            core.query_outputs.push_back((key, QueryOutput::Done));
        }
        core.inbound.retain(|_, q| q.deadline > now);
        core.reap(now);
        if now >= self.next_reconnect {
            self.next_reconnect = now + core::RECONNECT_INTERVAL;
            if self.state == LocalState::Alive
                && let Some(addr) = self.core_mut().reconnect_target()
            {
                tracing::info!("attempting reconnect to {addr}");
                let id = self.ml.join(now, vec![addr]);
                self.joins.insert(id, JoinKind::Reconnect);
            }
        }
        self.flush(now);
    }

    /// When [`Serf::handle_timeout`] is next needed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let core = self.core();
        let outbound = core.outbound.values().map(|q| q.deadline);
        let inbound = core.inbound.values().map(|q| q.deadline);
        let leave = match self.state {
            LocalState::LeavingIntent { deadline, .. }
            | LocalState::LeavingMemberlist { deadline } => Some(deadline),
            LocalState::LeavingPropagate { until } => Some(until),
            _ => None,
        };
        outbound
            .chain(inbound)
            .chain(leave)
            .chain(self.ml.poll_timeout())
            .chain([core.next_reap, self.next_reconnect])
            .chain(self.coalescer.poll_timeout())
            .min()
    }

    /// Moves what the core left for others: point-to-point sends go to memberlist, join
    /// outcomes are sorted, a graceful leave advances.
    fn flush(&mut self, now: Instant) {
        while let Some(outcome) = self.ml.poll_join_outcome() {
            match self.joins.remove(&outcome.id) {
                Some(JoinKind::Requested) => {
                    if outcome.joined > 0 && self.state == LocalState::Alive {
                        self.core_mut().broadcast_join(now);
                    }
                    self.core_mut().ignore_old_events = false;
                    self.join_outcomes.push_back(outcome);
                }
                Some(JoinKind::Rejoin) => self.join_outcomes.push_back(outcome),
                Some(JoinKind::Reconnect) | None => {
                    for (addr, error) in &outcome.errors {
                        tracing::debug!(%addr, %error, "reconnect failed");
                    }
                }
            }
        }
        self.handle_internal(now);
        // A query every expected node has answered ends after a short grace period rather
        // than at once: Serf's RPC client closes its channels when `done` arrives, and its CLI
        // could then miss the last response still waiting in them.
        for query in self.core_mut().outbound.values_mut() {
            if query.complete {
                query.complete = false;
                query.expected.clear();
                query.deadline = query.deadline.min(now + EARLY_END_GRACE);
            }
        }
        // `send_user` never calls back into the core, so one pass empties the outbox.
        while let Some((to, message)) = self.core_mut().outbox.pop_front() {
            self.ml.send_user(now, to, &message);
        }
        if self.state != LocalState::Alive {
            self.advance_leave(now);
        }
        self.coalesce_events(now);
    }

    /// Moves the core's new events, which happened at `now`, into the coalescer and lets it
    /// hand out what is due.
    fn coalesce_events(&mut self, now: Instant) {
        while let Some(event) = self.core_mut().events.pop_front() {
            self.tap_member_event(&event);
            self.coalescer.handle_event(now, event);
        }
        self.coalescer.handle_timeout(now);
    }

    /// The next event for handlers and event streams, once coalesced (`Config::coalesce`).
    pub fn poll_event(&mut self) -> Option<Event> {
        // Events queued outside a `handle_*` call count as happening at the latest time seen.
        self.coalesce_events(self.coalescer.clock());
        self.coalescer.poll_event()
    }

    /// The next answer to a query this node sent.
    pub fn poll_query_output(&mut self) -> Option<(QueryKey, QueryOutput)> {
        self.core_mut().query_outputs.pop_front()
    }
}

fn compile_tag_filters(
    filters: &BTreeMap<String, String>,
) -> Result<Vec<(String, Regex)>, QueryError> {
    filters
        .iter()
        .map(|(tag, expr)| {
            Regex::new(expr)
                .map(|regex| (tag.clone(), regex))
                .map_err(|error| QueryError::BadTagFilter {
                    tag: tag.clone(),
                    expr: expr.clone(),
                    reason: error.to_string(),
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(tags: &[(&str, &str)]) -> (Serf, Instant) {
        let now = Instant::now();
        let tags = tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let config = Config::lan("a".into(), "127.0.0.10:7946".parse().unwrap(), tags);
        let mut serf = Serf::new(config, 7, now);
        let join = serf.poll_event();
        assert!(matches!(
            join,
            Some(Event::Member(MemberEvent {
                kind: MemberEventKind::Join,
                ..
            }))
        ));
        (serf, now)
    }

    fn drain(serf: &mut Serf) -> Vec<QueryOutput> {
        std::iter::from_fn(|| serf.poll_query_output())
            .map(|(_, o)| o)
            .collect()
    }

    #[test]
    fn tags_over_512_encoded_bytes_are_refused_and_change_nothing() {
        let (mut serf, now) = node(&[]);
        let big: Tags = [("big".to_owned(), "x".repeat(600))].into();
        assert_eq!(
            serf.set_tags(now, big).unwrap_err().to_string(),
            "Encoded length of tags exceeds limit of 512 bytes"
        );
        assert!(serf.local_member().tags.is_empty());
        let fits: Tags = [("k".to_owned(), "x".repeat(500))].into();
        serf.set_tags(now, fits.clone()).unwrap();
        assert_eq!(serf.local_member().tags, fits);
    }

    #[test]
    fn local_member_joins_first() {
        let now = Instant::now();
        let config = Config::lan("a".into(), "127.0.0.10:7946".parse().unwrap(), Tags::new());
        let mut serf = Serf::new(config, 1, now);
        let Some(Event::Member(event)) = serf.poll_event() else {
            panic!("no join")
        };
        assert_eq!(event.kind, MemberEventKind::Join);
        assert_eq!(event.members[0].name, "a");
        assert_eq!(event.members[0].status, MemberStatus::Alive);
        assert_eq!(serf.poll_event(), None);
    }

    #[test]
    fn user_events_take_consecutive_lamport_times() {
        let (mut serf, now) = node(&[]);
        assert_eq!(serf.user_event(now, "deploy", b"v1", true), Ok(1));
        assert_eq!(serf.user_event(now, "deploy", b"v2", false), Ok(2));
        let Some(Event::User(first)) = serf.poll_event() else {
            panic!()
        };
        assert_eq!(
            (first.ltime, first.payload.as_slice(), first.coalesce),
            (1, &b"v1"[..], true)
        );
        let Some(Event::User(second)) = serf.poll_event() else {
            panic!()
        };
        assert_eq!(second.ltime, 2);
    }

    #[test]
    fn oversized_user_events_are_refused_with_serfs_words() {
        let (mut serf, now) = node(&[]);
        let error = serf.user_event(now, "big", &[0; 510], true).unwrap_err();
        assert_eq!(
            error.to_string(),
            "user event exceeds configured limit of 512 bytes before encoding"
        );
        // Fits before encoding, not after: 500 + 3 bytes plus the message framing.
        let error = serf.user_event(now, "big", &[0; 500], true).unwrap_err();
        assert_eq!(
            error.to_string(),
            "encoded user event exceeds configured limit of 512 bytes after encoding"
        );
        assert_eq!(serf.poll_event(), None);
        assert_eq!(serf.stats().event_time, 1);
    }

    #[test]
    fn query_is_acked_answered_and_done_at_the_deadline() {
        let (mut serf, now) = node(&[]);
        let params = QueryParams {
            name: "upcase".into(),
            payload: b"foo".to_vec(),
            request_ack: true,
            ..QueryParams::default()
        };
        let key = serf.query(now, params).unwrap();
        assert_eq!(key.ltime, 1);
        assert_eq!(
            serf.stats().query_time,
            2,
            "the sender witnesses its own query"
        );
        let Some(Event::Query(query)) = serf.poll_event() else {
            panic!("no query event")
        };
        assert_eq!(
            query.deadline,
            now + Duration::from_millis(3200),
            "Serf's default for one node"
        );
        serf.respond(now, query.key, b"FOO").unwrap();
        assert_eq!(
            serf.respond(now, query.key, b"again"),
            Err(RespondError::AlreadySent)
        );
        assert!(serf.poll_timeout().is_some_and(|t| t <= query.deadline));
        serf.handle_timeout(query.deadline);
        assert_eq!(
            drain(&mut serf),
            vec![
                QueryOutput::Ack { from: "a".into() },
                QueryOutput::Response {
                    from: "a".into(),
                    payload: b"FOO".to_vec()
                },
                QueryOutput::Done,
            ]
        );
        assert_eq!(serf.stats().pending_queries, 0);
    }

    #[test]
    fn late_and_oversized_responses_are_refused() {
        let (mut serf, now) = node(&[]);
        let params = QueryParams {
            name: "q".into(),
            timeout: Some(Duration::from_secs(1)),
            ..QueryParams::default()
        };
        serf.query(now, params).unwrap();
        let Some(Event::Query(query)) = serf.poll_event() else {
            panic!()
        };
        let error = serf.respond(now, query.key, &[b'x'; 1024]).unwrap_err();
        assert_eq!(error.to_string(), "response exceeds limit of 1024 bytes");
        let late = now + Duration::from_millis(1001);
        assert_eq!(
            serf.respond(late, query.key, b"x"),
            Err(RespondError::PastDeadline)
        );
    }

    #[test]
    fn filters_decide_who_processes_a_query() {
        let (mut serf, now) = node(&[("role", "web")]);
        for (nodes, tags, processed) in [
            (vec![], vec![("role", "we")], true),
            (vec![], vec![("role", "^db$")], false),
            (vec![], vec![("missing", "^$")], true),
            (vec!["b"], vec![], false),
            (vec!["b", "a"], vec![], true),
        ] {
            let params = QueryParams {
                name: "q".into(),
                filter_nodes: nodes.into_iter().map(String::from).collect(),
                filter_tags: tags
                    .into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
                request_ack: true,
                ..QueryParams::default()
            };
            serf.query(now, params).unwrap();
            assert_eq!(serf.poll_event().is_some(), processed);
            let acks = drain(&mut serf).len();
            assert_eq!(acks, usize::from(processed));
        }
    }

    #[test]
    fn internal_queries_are_refused_except_ping() {
        let (mut serf, now) = node(&[]);
        let named = |name: &str, payload: &[u8]| QueryParams {
            name: name.into(),
            payload: payload.to_vec(),
            request_ack: true,
            ..QueryParams::default()
        };
        assert_eq!(
            serf.query(now, named("_serf_conflict", b"")),
            Err(QueryError::InternalName)
        );
        assert_eq!(
            serf.query(now, named("_serf_ping", b"x")),
            Err(QueryError::InternalName)
        );
        serf.query(now, named("_serf_ping", b"")).unwrap();
        assert_eq!(
            serf.poll_event(),
            None,
            "internal queries never reach handlers"
        );
        assert_eq!(
            drain(&mut serf),
            vec![QueryOutput::Ack { from: "a".into() }]
        );
    }

    #[test]
    fn leave_stops_events_and_queries() {
        let (mut serf, now) = node(&[]);
        serf.leave(now);
        assert!(serf.has_left());
        assert_eq!(serf.local_member().status, MemberStatus::Left);
        assert_eq!(
            serf.user_event(now, "x", b"", false),
            Err(UserEventError::NotAlive("left"))
        );
    }

    #[test]
    fn tag_changes_emit_member_update() {
        let (mut serf, now) = node(&[("role", "web")]);
        serf.set_tags(now, [("role".to_string(), "db".to_string())].into())
            .unwrap();
        let Some(Event::Member(event)) = serf.poll_event() else {
            panic!()
        };
        assert_eq!(event.kind, MemberEventKind::Update);
        assert_eq!(event.members[0].tags["role"], "db");
    }

    #[test]
    fn gossip_at_or_before_the_restored_clocks_is_not_handed_out_again() {
        let now = Instant::now();
        let mut config = Config::lan("a".into(), "127.0.0.10:7946".parse().unwrap(), Tags::new());
        config.restored_clocks = Some(RestoredClocks {
            member: 7,
            event: 2,
            query: 5,
        });
        let mut serf = Serf::new(config, 7, now);
        assert!(matches!(serf.poll_event(), Some(Event::Member(_))));
        let stats = serf.stats();
        assert_eq!(
            (stats.member_time, stats.event_time, stats.query_time),
            (8, 3, 6)
        );
        let from: SocketAddr = "127.0.0.11:7946".parse().unwrap();
        // memberlist's user message (8) carries the Serf message as it is.
        let deliver = |serf: &mut Serf, message: Vec<u8>| {
            serf.handle_packet(now, from, &[vec![8], message].concat())
                .unwrap();
            serf.poll_event()
        };
        for (ltime, delivered) in [(2, false), (3, true)] {
            let event = UserEventMsg {
                ltime,
                name: "deploy".into(),
                payload: vec![],
                cc: false,
            };
            let out = deliver(&mut serf, event.encode());
            assert_eq!(out.is_some(), delivered, "user event at {ltime}");
        }
        for (ltime, delivered) in [(5, false), (6, true)] {
            let query = QueryMsg {
                ltime,
                id: 1,
                addr: from.ip(),
                port: from.port(),
                source_node: "b".into(),
                filters: vec![],
                flags: 0,
                relay_factor: 0,
                timeout: Duration::from_secs(5),
                name: "q".into(),
                payload: vec![],
            };
            let out = deliver(&mut serf, query.encode());
            assert_eq!(out.is_some(), delivered, "query at {ltime}");
        }
        assert_eq!((serf.last_event_time(), serf.last_query_time()), (3, 6));
        assert_eq!(serf.user_event(now, "mine", b"", false), Ok(4));
    }
}

/// Several `Serf` cores wired together in memory: packets and streams are delivered at once,
/// time moves in fixed steps.
#[cfg(test)]
mod cluster_tests {
    use std::time::Duration;

    use super::*;
    use serf_gossip::sim::{Sim, run_seeded, sim_addr};

    /// `n` nodes named `n<i>` with the tag `role=r<i>`, their configs changed by `tweak`, on
    /// a lossless, zero-latency network.
    fn new_cluster(seed: u64, n: usize, tweak: impl Fn(&mut Config)) -> Sim<Serf> {
        Sim::with_peers(seed, n, |i, seed, start| {
            let mut tags = Tags::new();
            tags.insert("role".into(), format!("r{i}"));
            let mut config = Config::lan(format!("n{i}"), sim_addr(i), tags);
            tweak(&mut config);
            Serf::new(config, seed, start)
        })
        .lossless()
    }

    /// Every node joins n0 (each join succeeds), then two seconds pass.
    fn join_all(sim: &mut Sim<Serf>) {
        for i in 1..sim.nodes.len() {
            let outcome = sim.join_and_wait(i, sim_addr(0));
            assert_eq!(outcome.joined, 1, "{outcome:?}");
        }
        sim.run_for(Duration::from_secs(2));
    }

    fn statuses(sim: &Sim<Serf>, i: usize) -> Vec<(String, MemberStatus)> {
        sim.nodes[i]
            .peer
            .members()
            .map(|m| (m.name.clone(), m.status))
            .collect()
    }

    fn events(sim: &Sim<Serf>, i: usize) -> impl Iterator<Item = &Event> {
        sim.nodes[i].events.iter().map(|(_, event)| event)
    }

    fn user_events(sim: &Sim<Serf>, i: usize) -> Vec<(LamportTime, String)> {
        events(sim, i)
            .filter_map(|e| match e {
                Event::User(u) => Some((u.ltime, u.name.clone())),
                _ => None,
            })
            .collect()
    }

    fn all(n: usize, status: MemberStatus) -> Vec<(String, MemberStatus)> {
        (0..n).map(|i| (format!("n{i}"), status)).collect()
    }

    #[test]
    fn joined_nodes_see_each_other_alive_with_tags() {
        run_seeded(1, |seed| {
            let mut cluster = new_cluster(seed, 4, |_| {});
            join_all(&mut cluster);
            for i in 0..4 {
                assert_eq!(statuses(&cluster, i), all(4, MemberStatus::Alive));
                let n3 = cluster.nodes[i]
                    .peer
                    .members()
                    .find(|m| m.name == "n3")
                    .unwrap();
                assert_eq!(n3.tags["role"], "r3");
            }
            let joins = events(&cluster, 0)
                .filter(|e| matches!(e, Event::Member(m) if m.kind == MemberEventKind::Join))
                .count();
            assert_eq!(joins, 4, "n0 saw itself and three joins");
        });
    }

    #[test]
    fn user_events_reach_every_node_exactly_once() {
        run_seeded(2, |seed| {
            let mut cluster = new_cluster(seed, 5, |_| {});
            join_all(&mut cluster);
            for k in 0..20 {
                let from = k % 5;
                cluster
                    .act(from, |serf, now| {
                        serf.user_event(now, &format!("e{k}"), b"x", false)
                    })
                    .unwrap();
                cluster.run_for(Duration::from_millis(50));
            }
            cluster.run_for(Duration::from_secs(3));
            for i in 0..5 {
                let mut names: Vec<String> =
                    user_events(&cluster, i).into_iter().map(|e| e.1).collect();
                names.sort();
                let mut expected: Vec<String> = (0..20).map(|k| format!("e{k}")).collect();
                expected.sort();
                assert_eq!(names, expected, "node {i}");
            }
        });
    }

    #[test]
    fn a_burst_of_a_thousand_user_events_reaches_every_node_exactly_once() {
        run_seeded(3, |seed| {
            let mut cluster = new_cluster(seed, 10, |_| {});
            join_all(&mut cluster);
            for k in 0..1000 {
                cluster
                    .act(0, |serf, now| {
                        serf.user_event(now, &format!("e{k}"), b"payload", false)
                    })
                    .unwrap();
            }
            cluster.run_for(Duration::from_secs(60));
            let expected: Vec<String> = (0..1000).map(|k| format!("e{k}")).collect();
            for i in 0..10 {
                let mut names: Vec<String> =
                    user_events(&cluster, i).into_iter().map(|e| e.1).collect();
                names.sort_by_key(|name| name[1..].parse::<u32>().unwrap_or(u32::MAX));
                let missing = expected.iter().filter(|e| !names.contains(e)).count();
                assert_eq!(names.len(), 1000, "node {i}: {missing} missing");
                assert_eq!(names, expected, "node {i}");
            }
        });
    }

    #[test]
    fn a_query_is_answered_by_every_matching_node() {
        run_seeded(4, |seed| {
            let mut cluster = new_cluster(seed, 4, |_| {});
            join_all(&mut cluster);
            let mut tags = BTreeMap::new();
            tags.insert("role".to_string(), "r[123]".to_string());
            let key = cluster
                .act(0, |serf, now| {
                    serf.query(
                        now,
                        QueryParams {
                            name: "q".into(),
                            payload: b"p".to_vec(),
                            request_ack: true,
                            filter_tags: tags,
                            timeout: Some(Duration::from_secs(2)),
                            ..QueryParams::default()
                        },
                    )
                })
                .unwrap();
            cluster.run_for(Duration::from_millis(500));
            for i in 1..4 {
                let query = events(&cluster, i)
                    .find_map(|e| match e {
                        Event::Query(q) => Some(q.clone()),
                        _ => None,
                    })
                    .unwrap_or_else(|| panic!("node {i} got no query"));
                assert_eq!(query.key, key);
                cluster
                    .act(i, |serf, now| {
                        serf.respond(now, key, format!("from {i}").as_bytes())
                    })
                    .unwrap();
            }
            assert!(
                !events(&cluster, 0).any(|e| matches!(e, Event::Query(_))),
                "n0's role does not match the filter"
            );
            cluster.run_for(Duration::from_secs(2));
            let outputs: Vec<QueryOutput> =
                std::iter::from_fn(|| cluster.nodes[0].peer.poll_query_output())
                    .map(|(_, o)| o)
                    .collect();
            let acks = outputs
                .iter()
                .filter(|o| matches!(o, QueryOutput::Ack { .. }))
                .count();
            let mut responses: Vec<String> = outputs
                .iter()
                .filter_map(|o| match o {
                    QueryOutput::Response { payload, .. } => {
                        Some(String::from_utf8_lossy(payload).into_owned())
                    }
                    _ => None,
                })
                .collect();
            responses.sort();
            assert_eq!(acks, 3);
            assert_eq!(responses, ["from 1", "from 2", "from 3"]);
            assert_eq!(outputs.last(), Some(&QueryOutput::Done));
        });
    }

    /// Sends query `q` from n0 to n1..n3 (n0's tag does not match) with a 10 s timeout, has
    /// the nodes in `answering` respond, and returns when n0 saw `Done` (if within 10 s).
    fn query_done_after(seed: u64, answering: &[usize], request_ack: bool) -> Option<Duration> {
        let mut cluster = new_cluster(seed, 4, |_| {});
        join_all(&mut cluster);
        let sent = cluster.now;
        let mut tags = BTreeMap::new();
        tags.insert("role".to_string(), "r[123]".to_string());
        let key = cluster
            .act(0, |serf, now| {
                serf.query(
                    now,
                    QueryParams {
                        name: "q".into(),
                        request_ack,
                        filter_tags: tags,
                        timeout: Some(Duration::from_secs(10)),
                        ..QueryParams::default()
                    },
                )
            })
            .unwrap();
        cluster.run_for(Duration::from_millis(300));
        for &i in answering {
            cluster
                .act(i, |serf, now| serf.respond(now, key, b"ok"))
                .unwrap();
        }
        for _ in 0..1100 {
            while let Some((_, output)) = cluster.nodes[0].peer.poll_query_output() {
                if output == QueryOutput::Done {
                    return Some(cluster.now - sent);
                }
            }
            cluster.run_for(Duration::from_millis(10));
        }
        None
    }

    #[test]
    fn a_query_ends_as_soon_as_every_matching_node_has_answered() {
        run_seeded(5, |seed| {
            for request_ack in [false, true] {
                let done = query_done_after(seed, &[1, 2, 3], request_ack).expect("done");
                assert!(
                    done < Duration::from_secs(1),
                    "ack {request_ack}: done after {done:?}, not at the 10 s deadline"
                );
            }
        });
    }

    #[test]
    fn a_query_with_a_silent_matching_node_runs_to_its_deadline() {
        run_seeded(6, |seed| {
            let done = query_done_after(seed, &[1, 2], true).expect("done");
            assert!(done >= Duration::from_secs(10), "done after {done:?}");
        });
    }

    #[test]
    fn graceful_leave_is_left_and_a_crash_is_failed() {
        run_seeded(7, |seed| {
            let mut cluster = new_cluster(seed, 4, |_| {});
            join_all(&mut cluster);
            cluster.act(3, |serf, now| serf.leave(now));
            cluster.run_for(Duration::from_secs(3));
            assert!(cluster.nodes[3].peer.has_left());
            cluster.crash(3);
            cluster.crash(2);
            cluster.run_for(Duration::from_secs(30));
            for i in 0..2 {
                let statuses = statuses(&cluster, i);
                assert_eq!(statuses[2], ("n2".into(), MemberStatus::Failed), "node {i}");
                assert_eq!(statuses[3], ("n3".into(), MemberStatus::Left), "node {i}");
            }
        });
    }

    #[test]
    fn a_late_joiner_does_not_replay_old_events_unless_asked() {
        run_seeded(8, |seed| {
            let mut cluster = new_cluster(seed, 3, |_| {});
            assert_eq!(cluster.join_and_wait(1, sim_addr(0)).joined, 1);
            cluster
                .act(0, |serf, now| serf.user_event(now, "old", b"", false))
                .unwrap();
            cluster.run_for(Duration::from_secs(2));
            cluster.join(2, 0);
            cluster.run_for(Duration::from_secs(2));
            assert!(
                user_events(&cluster, 2).is_empty(),
                "{:?}",
                user_events(&cluster, 2)
            );
            let mut replaying = new_cluster(seed, 3, |_| {});
            assert_eq!(replaying.join_and_wait(1, sim_addr(0)).joined, 1);
            replaying
                .act(0, |serf, now| serf.user_event(now, "old", b"", false))
                .unwrap();
            replaying.run_for(Duration::from_secs(2));
            replaying.act(2, |serf, now| serf.join(now, vec![sim_addr(0)], true));
            replaying.run_for(Duration::from_secs(2));
            assert_eq!(user_events(&replaying, 2), [(1, "old".to_string())]);
        });
    }

    #[test]
    fn with_the_agents_coalescing_bursts_reach_handlers_merged() {
        run_seeded(9, |seed| {
            let mut cluster =
                new_cluster(seed, 4, |config| config.coalesce = coalesce::Config::AGENT);
            join_all(&mut cluster);
            let joins: Vec<Vec<String>> = events(&cluster, 0)
                .filter_map(|event| match event {
                    Event::Member(m) if m.kind == MemberEventKind::Join => {
                        Some(m.members.iter().map(|m| m.name.clone()).collect())
                    }
                    _ => None,
                })
                .collect();
            assert_eq!(
                joins,
                [["n0", "n1", "n2", "n3"]],
                "one member-join for the burst"
            );

            cluster
                .act(1, |serf, now| serf.user_event(now, "deploy", b"v1", true))
                .unwrap();
            cluster
                .act(1, |serf, now| serf.user_event(now, "deploy", b"v2", true))
                .unwrap();
            cluster
                .act(1, |serf, now| serf.user_event(now, "restart", b"", false))
                .unwrap();
            cluster.run_for(Duration::from_secs(3));
            for i in 0..4 {
                assert_eq!(
                    user_events(&cluster, i),
                    [(3, "restart".to_string()), (2, "deploy".to_string())],
                    "node {i}: uncoalesced first, then only the newest deploy"
                );
            }
        });
    }

    #[test]
    fn encrypted_nodes_talk_and_a_wrong_key_cannot_join() {
        run_seeded(10, |seed| {
            let key = vec![7u8; 32];
            let mut cluster = new_cluster(seed, 3, |config| {
                // n2 has another key.
                let key = if config.node_name == "n2" {
                    vec![8u8; 32]
                } else {
                    key.clone()
                };
                config.memberlist.keyring = Some(serf_gossip::Keyring::new(vec![key]).unwrap());
            });
            assert_eq!(cluster.join_and_wait(1, sim_addr(0)).joined, 1);
            assert_eq!(cluster.join_and_wait(2, sim_addr(0)).joined, 0);
            cluster.run_for(Duration::from_secs(3));
            assert_eq!(statuses(&cluster, 0), all(2, MemberStatus::Alive));
        });
    }

    #[test]
    fn a_rejoin_hands_out_only_the_events_newer_than_the_snapshot() {
        run_seeded(11, |seed| {
            let mut cluster = new_cluster(seed, 2, |config| {
                if config.node_name == "n1" {
                    config.restored_clocks = Some(RestoredClocks {
                        member: 0,
                        event: 2,
                        query: 0,
                    });
                }
            });
            for name in ["e1", "e2", "e3"] {
                cluster
                    .act(0, |serf, now| serf.user_event(now, name, b"", false))
                    .unwrap();
            }
            let intents_before = cluster.nodes[0].peer.stats().member_time;
            let seen = cluster.nodes[1].join_outcomes.len();
            cluster.act(1, |serf, now| serf.rejoin(now, vec![sim_addr(0)]));
            let outcome = cluster.next_join_outcome(1, seen);
            assert_eq!(outcome.joined, 1);
            cluster.run_for(Duration::from_secs(2));
            assert_eq!(statuses(&cluster, 0), all(2, MemberStatus::Alive));
            // Push/pull replayed n0's event buffer: only e3 is newer than the snapshot.
            assert_eq!(user_events(&cluster, 1), [(3, "e3".to_string())]);
            assert_eq!(
                cluster.nodes[0].peer.stats().member_time,
                intents_before,
                "a rejoin sends no join intent"
            );
        });
    }
}

#[cfg(test)]
mod bad_input_tests {
    use std::time::Instant;

    use proptest::prelude::*;

    use super::*;

    fn node(encrypted: bool) -> Serf {
        let mut config = Config::lan("a".into(), "127.0.0.10:7946".parse().unwrap(), Tags::new());
        if encrypted {
            config.memberlist.keyring =
                Some(serf_gossip::Keyring::new(vec![vec![1u8; 16]]).unwrap());
        }
        Serf::new(config, 1, Instant::now())
    }

    #[test]
    fn the_largest_lamport_times_from_a_peer_do_not_panic() {
        let mut serf = node(false);
        let now = Instant::now();
        let from: SocketAddr = "127.0.0.99:7946".parse().unwrap();
        for ltime in [u64::MAX, u64::MAX - 1, 0, u64::MAX] {
            let messages = [
                wire::UserEventMsg {
                    ltime,
                    name: "e".into(),
                    payload: Vec::new(),
                    cc: false,
                }
                .encode(),
                wire::JoinIntent {
                    ltime,
                    node: "a".into(),
                }
                .encode(),
                wire::LeaveIntent {
                    ltime,
                    node: "b".into(),
                    prune: false,
                }
                .encode(),
            ];
            for message in messages {
                // memberlist's user message (8) carries Serf's.
                let _ = serf.handle_packet(now, from, &[vec![8u8], message].concat());
            }
            serf.handle_timeout(now + Duration::from_secs(1));
        }
        assert!(serf.user_event(now, "mine", b"", false).is_ok());
    }

    proptest! {
        /// Nothing a peer sends, as a packet or a stream, panics the node or makes it believe
        /// in members that do not exist.
        #[test]
        fn arbitrary_packets_and_streams_never_panic(
            packets in proptest::collection::vec(
                prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..300),
                    // Plausible prefixes: every message type, compound and compress headers.
                    (0u8..16, proptest::collection::vec(any::<u8>(), 0..200))
                        .prop_map(|(t, rest)| [vec![t], rest].concat()),
                ],
                1..8,
            ),
            encrypted in any::<bool>(),
        ) {
            let mut serf = node(encrypted);
            let now = Instant::now();
            let from: SocketAddr = "127.0.0.99:7946".parse().unwrap();
            for packet in &packets {
                let _ = serf.handle_packet(now, from, packet);
                let _ = serf.handle_stream(now, from, packet);
                while serf.poll_transmit().is_some() {}
                while serf.poll_stream().is_some() {}
            }
            serf.handle_timeout(now + Duration::from_secs(5));
            prop_assert_eq!(serf.members().count(), 1);
        }
    }
}
