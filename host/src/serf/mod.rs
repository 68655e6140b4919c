//! The Serf core: members, Lamport clocks, user events and queries, as a state machine.
//!
//! It owns no socket, task, file or clock: the agent feeds it commands and the current time
//! and drains its outputs (`poll_event`, `poll_query_output`, `poll_timeout`), so every
//! behaviour replays in a test. It does not yet gossip: the membership layer (a SWIM
//! `gossip::Memberlist` owned by `Serf`) slots in behind the same verbs, and until then the
//! cluster is this node alone.

mod size;
mod types;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use regex::Regex;

use crate::gossip;

pub use types::*;

/// Serf's hard cap on a user event, whatever the configured limit (reference 3.7).
pub const USER_EVENT_SIZE_HARD_LIMIT: usize = 9216;

/// Queries whose names start with this are Serf's own and never reach handlers.
pub const INTERNAL_QUERY_PREFIX: &str = "_serf_";

/// The one internal query clients may send (`serf reachability`).
pub const PING_QUERY: &str = "_serf_ping";

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
    pub limits: crate::config::SerfLimits,
    /// Gossip interval, the unit of the default query timeout (200 ms on a LAN).
    pub gossip_interval: Duration,
    /// The default query timeout is `gossip_interval * query_timeout_mult * ceil(log10(n + 1))`.
    pub query_timeout_mult: u32,
    /// The membership layer's settings (profile, keyring, compression).
    pub memberlist: crate::gossip::Config,
}

impl Config {
    /// Serf's LAN settings for a node.
    pub fn lan(node_name: NodeName, advertise: SocketAddr, tags: Tags) -> Config {
        Config {
            node_name: node_name.clone(),
            advertise,
            tags,
            limits: crate::config::SerfLimits::SERF,
            gossip_interval: Duration::from_millis(200),
            query_timeout_mult: 16,
            memberlist: crate::gossip::Config::lan(node_name.clone(), advertise),
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
}

/// This node's own progress through a graceful leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LocalState {
    Alive,
    Leaving,
    Left,
}

impl LocalState {
    fn name(self) -> &'static str {
        match self {
            LocalState::Alive => "alive",
            LocalState::Leaving => "leaving",
            LocalState::Left => "left",
        }
    }
}

/// A query this node sent and collects answers for.
#[derive(Debug)]
struct OutboundQuery {
    deadline: Instant,
    acked: Vec<NodeName>,
    responded: Vec<NodeName>,
}

/// A query this node received and may answer once.
#[derive(Debug)]
struct InboundQuery {
    deadline: Instant,
    responded: bool,
}

/// The Serf state machine.
#[derive(Debug)]
pub struct Serf {
    config: Config,
    rng: SmallRng,
    state: LocalState,
    members: BTreeMap<NodeName, Member>,
    member_clock: LamportClock,
    event_clock: LamportClock,
    query_clock: LamportClock,
    outbound: HashMap<QueryKey, OutboundQuery>,
    inbound: HashMap<QueryKey, InboundQuery>,
    events: std::collections::VecDeque<Event>,
    query_outputs: std::collections::VecDeque<(QueryKey, QueryOutput)>,
}

impl Serf {
    /// Starts a node alone in its cluster; its own `member-join` is the first event.
    ///
    /// `seed` makes every random choice reproducible; the agent passes a random one.
    pub fn new(config: Config, seed: u64, _now: Instant) -> Serf {
        let local = Member {
            name: config.node_name.clone(),
            addr: config.advertise,
            tags: config.tags.clone(),
            status: MemberStatus::Alive,
            versions: ProtocolVersions::SERF_0_9_4,
        };
        let mut serf = Serf {
            config,
            rng: SmallRng::seed_from_u64(seed),
            state: LocalState::Alive,
            members: BTreeMap::new(),
            member_clock: LamportClock::new(),
            event_clock: LamportClock::new(),
            query_clock: LamportClock::new(),
            outbound: HashMap::new(),
            inbound: HashMap::new(),
            events: Default::default(),
            query_outputs: Default::default(),
        };
        serf.members.insert(local.name.clone(), local.clone());
        serf.events.push_back(Event::Member(MemberEvent {
            kind: MemberEventKind::Join,
            members: vec![local],
        }));
        serf
    }

    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.config.node_name
    }

    /// This node as the cluster sees it.
    pub fn local_member(&self) -> &Member {
        self.members
            .get(&self.config.node_name)
            .expect("the local member is never removed")
    }

    /// Every known member, in name order.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    /// The cluster size Serf uses for timeouts: members neither left nor failed.
    pub fn num_alive(&self) -> usize {
        self.members
            .values()
            .filter(|m| matches!(m.status, MemberStatus::Alive | MemberStatus::Leaving))
            .count()
    }

    /// Counters and clocks.
    pub fn stats(&self) -> Stats {
        let count = |status| self.members.values().filter(|m| m.status == status).count();
        Stats {
            members: self.members.len(),
            failed: count(MemberStatus::Failed),
            left: count(MemberStatus::Left),
            member_time: self.member_clock.time(),
            event_time: self.event_clock.time(),
            query_time: self.query_clock.time(),
            pending_queries: self.inbound.len(),
        }
    }

    /// Sends a user event; returns its Lamport time.
    pub fn user_event(
        &mut self,
        _now: Instant,
        name: &str,
        payload: &[u8],
        coalesce: bool,
    ) -> Result<LamportTime, UserEventError> {
        self.check_alive().map_err(UserEventError::NotAlive)?;
        let limit = self.config.limits.user_event_size_limit;
        let raw = name.len() + payload.len();
        if raw > limit {
            return Err(UserEventError::TooLarge(limit));
        }
        if raw > USER_EVENT_SIZE_HARD_LIMIT {
            return Err(UserEventError::OverHardLimit);
        }
        let ltime = self.event_clock.time();
        if size::user_event(ltime, name, payload) > limit {
            return Err(UserEventError::EncodedTooLarge(limit));
        }
        self.event_clock.increment();
        self.handle_user_event(UserEvent {
            ltime,
            name: name.to_owned(),
            payload: payload.to_vec(),
            coalesce,
        });
        Ok(ltime)
    }

    fn handle_user_event(&mut self, event: UserEvent) {
        self.event_clock.witness(event.ltime);
        self.events.push_back(Event::User(event));
    }

    /// Sends a query; answers come out of [`Serf::poll_query_output`] under the returned key
    /// until a final [`QueryOutput::Done`] at the deadline.
    pub fn query(&mut self, now: Instant, params: QueryParams) -> Result<QueryKey, QueryError> {
        self.check_alive().map_err(QueryError::NotAlive)?;
        if params.name.starts_with(INTERNAL_QUERY_PREFIX)
            && !(params.name == PING_QUERY && params.payload.is_empty())
        {
            return Err(QueryError::InternalName);
        }
        let tag_filters = compile_tag_filters(&params.filter_tags)?;
        let ltime = self.query_clock.time();
        let id = self.rng.random_range(0..1u32 << 31);
        let key = QueryKey { ltime, id };
        let encoded = size::query(key, &params, &self.config.node_name, self.config.advertise);
        let limit = self.config.limits.query_size_limit;
        if encoded > limit {
            return Err(QueryError::TooLarge(limit));
        }
        let timeout = params
            .timeout
            .unwrap_or_else(|| self.default_query_timeout());
        let deadline = now + timeout;
        self.outbound.insert(
            key,
            OutboundQuery {
                deadline,
                acked: Vec::new(),
                responded: Vec::new(),
            },
        );
        // Serf processes its own query as if it had been gossiped to it.
        let source = self.config.node_name.clone();
        self.handle_query(now, key, &params, &tag_filters, source, deadline);
        Ok(key)
    }

    /// Serf's default: `gossip_interval * mult * ceil(log10(n + 1))`.
    fn default_query_timeout(&self) -> Duration {
        let n = self.num_alive() as f64;
        let scale = (n + 1.0).log10().ceil().max(1.0) as u32;
        self.config.gossip_interval * self.config.query_timeout_mult * scale
    }

    fn handle_query(
        &mut self,
        now: Instant,
        key: QueryKey,
        params: &QueryParams,
        tag_filters: &[(String, Regex)],
        source_node: NodeName,
        deadline: Instant,
    ) {
        self.query_clock.witness(key.ltime);
        if self.inbound.contains_key(&key) || !self.matches_filters(params, tag_filters) {
            return;
        }
        if params.request_ack {
            self.deliver_answer(
                key,
                QueryOutput::Ack {
                    from: self.config.node_name.clone(),
                },
            );
        }
        if params.name.starts_with(INTERNAL_QUERY_PREFIX) {
            return; // `_serf_ping` wants only the ack.
        }
        if deadline <= now {
            return;
        }
        self.inbound.insert(
            key,
            InboundQuery {
                deadline,
                responded: false,
            },
        );
        self.events.push_back(Event::Query(QueryEvent {
            key,
            name: params.name.clone(),
            payload: params.payload.clone(),
            source_node,
            deadline,
        }));
    }

    fn matches_filters(&self, params: &QueryParams, tag_filters: &[(String, Regex)]) -> bool {
        let local = self.local_member();
        if !params.filter_nodes.is_empty() && !params.filter_nodes.contains(&local.name) {
            return false;
        }
        tag_filters.iter().all(|(tag, regex)| {
            regex.is_match(local.tags.get(tag).map(String::as_str).unwrap_or(""))
        })
    }

    /// Answers a query this node received. At most once, before its deadline.
    pub fn respond(
        &mut self,
        now: Instant,
        key: QueryKey,
        payload: &[u8],
    ) -> Result<(), RespondError> {
        let inbound = self
            .inbound
            .get_mut(&key)
            .ok_or(RespondError::Unknown(key))?;
        if inbound.responded {
            return Err(RespondError::AlreadySent);
        }
        if now > inbound.deadline {
            return Err(RespondError::PastDeadline);
        }
        let limit = self.config.limits.query_response_size_limit;
        if size::query_response(key, &self.config.node_name, payload) > limit {
            return Err(RespondError::TooLarge(limit));
        }
        inbound.responded = true;
        self.deliver_answer(
            key,
            QueryOutput::Response {
                from: self.config.node_name.clone(),
                payload: payload.to_vec(),
            },
        );
        Ok(())
    }

    /// Hands an ack or response to the querier: here, this node (gossip adds the others).
    fn deliver_answer(&mut self, key: QueryKey, output: QueryOutput) {
        let Some(query) = self.outbound.get_mut(&key) else {
            return;
        };
        // One ack and one response per node, as Serf's collector keeps them.
        let (seen, from) = match &output {
            QueryOutput::Ack { from } => (&mut query.acked, from),
            QueryOutput::Response { from, .. } => (&mut query.responded, from),
            QueryOutput::Done => return,
        };
        if seen.contains(from) {
            return;
        }
        seen.push(from.clone());
        self.query_outputs.push_back((key, output));
    }

    /// Replaces this node's tags and tells the handlers (`member-update`).
    pub fn set_tags(&mut self, _now: Instant, tags: Tags) {
        let name = self.config.node_name.clone();
        let local = self.members.get_mut(&name).expect("local member exists");
        local.tags = tags.clone();
        self.config.tags = tags;
        let member = local.clone();
        self.member_clock.increment();
        self.events.push_back(Event::Member(MemberEvent {
            kind: MemberEventKind::Update,
            members: vec![member],
        }));
    }

    /// Leaves the cluster gracefully: afterwards this node is `left` and sends nothing.
    pub fn leave(&mut self, _now: Instant) {
        if self.state != LocalState::Alive {
            return;
        }
        self.state = LocalState::Leaving;
        self.member_clock.increment();
        // With peers, the leave intent is broadcast here and waited for; alone, it is done.
        self.state = LocalState::Left;
        let name = self.config.node_name.clone();
        if let Some(local) = self.members.get_mut(&name) {
            local.status = MemberStatus::Left;
        }
    }

    /// Joins the cluster through the nodes at `addrs` (push/pull with each); the outcome comes
    /// out of [`Serf::poll_join_outcome`]. Without `replay`, user events older than the join
    /// are not handed to handlers.
    pub fn join(&mut self, now: Instant, addrs: Vec<SocketAddr>, replay: bool) -> gossip::JoinId {
        let _ = (now, addrs, replay);
        todo!("serf over gossip")
    }

    /// How a join ended.
    pub fn poll_join_outcome(&mut self) -> Option<gossip::JoinOutcome> {
        todo!("serf over gossip")
    }

    /// A UDP packet arrived on the gossip port. An error means it was dropped, nothing changed.
    pub fn handle_packet(
        &mut self,
        now: Instant,
        from: SocketAddr,
        packet: &[u8],
    ) -> Result<(), gossip::DecodeError> {
        let _ = (now, from, packet);
        todo!("serf over gossip")
    }

    /// A complete inbound stream message (see `gossip::packet::stream_frame_len`); returns the
    /// bytes to write back before closing, if any.
    pub fn handle_stream(
        &mut self,
        now: Instant,
        from: SocketAddr,
        message: &[u8],
    ) -> Option<Vec<u8>> {
        let _ = (now, from, message);
        todo!("serf over gossip")
    }

    /// The reply to (or failure of) an outbound stream from [`Serf::poll_stream`].
    pub fn handle_stream_reply(
        &mut self,
        now: Instant,
        id: gossip::StreamId,
        reply: Result<Vec<u8>, String>,
    ) {
        let _ = (now, id, reply);
        todo!("serf over gossip")
    }

    /// The next UDP packet to send.
    pub fn poll_transmit(&mut self) -> Option<gossip::Transmit> {
        todo!("serf over gossip")
    }

    /// The next outbound stream to run.
    pub fn poll_stream(&mut self) -> Option<gossip::StreamRequest> {
        todo!("serf over gossip")
    }

    /// The membership layer's counters.
    pub fn gossip_stats(&self) -> gossip::Stats {
        todo!("serf over gossip")
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

    /// Fires every timer due at or before `now`: query deadlines.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut done: Vec<QueryKey> = self
            .outbound
            .iter()
            .filter(|(_, q)| q.deadline <= now)
            .map(|(key, _)| *key)
            .collect();
        done.sort();
        for key in done {
            self.outbound.remove(&key);
            self.query_outputs.push_back((key, QueryOutput::Done));
        }
        self.inbound.retain(|_, q| q.deadline > now);
    }

    /// When [`Serf::handle_timeout`] is next needed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let outbound = self.outbound.values().map(|q| q.deadline);
        let inbound = self.inbound.values().map(|q| q.deadline);
        outbound.chain(inbound).min()
    }

    /// The next event for handlers and event streams.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next answer to a query this node sent.
    pub fn poll_query_output(&mut self) -> Option<(QueryKey, QueryOutput)> {
        self.query_outputs.pop_front()
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
        assert_eq!(serf.poll_timeout(), Some(query.deadline));
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
        assert_eq!(serf.poll_timeout(), None);
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
        serf.set_tags(now, [("role".to_string(), "db".to_string())].into());
        let Some(Event::Member(event)) = serf.poll_event() else {
            panic!()
        };
        assert_eq!(event.kind, MemberEventKind::Update);
        assert_eq!(event.members[0].tags["role"], "db");
    }
}
