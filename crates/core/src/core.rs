//! Serf's state above memberlist: members with their intents, the three Lamport clocks, the
//! event and query buffers, and Serf's broadcast queues. It is memberlist's [`Delegate`], so
//! memberlist calls into it while it handles packets and timers; what it cannot do itself
//! (point-to-point sends, joins) it leaves in an outbox that [`super::Serf`] drains.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::Rng;
use rand::rngs::SmallRng;
use regex::Regex;

use super::coordinate::Coordinates;
use super::wire::{
    self, JoinIntent, LeaveIntent, PushPullState, QueryFilter, QueryMsg, QueryResponseMsg,
    RelayHeader, SerfMessage, UserEventEntry, UserEventMsg, UserEvents,
};
use super::{
    Config, Event, INTERNAL_QUERY_PREFIX, LamportClock, LamportTime, Member, MemberEvent,
    MemberEventKind, MemberStatus, NodeName, ProtocolVersions, QueryEvent, QueryKey, QueryOutput,
    Tags,
};
use serf_gossip::broadcast::{BroadcastId, BroadcastQueue};
use serf_gossip::{Delegate, Node, NodeState};

/// Slots in the query de-duplication ring, and the Lamport window of user events that push/pull
/// carries (Serf's 512).
pub(super) const BUFFER_SLOTS: u64 = 512;

/// Slots in the user-event de-duplication ring: the Lamport window in which an event is still
/// taken. Serf's 512 loses most of a burst: gossip hands out the newest events first, so a node
/// that has seen event 1000 refuses 1–488 as too old when they arrive later. 4096 matches the
/// depth of a broadcast queue, so an event that can still be in some node's queue is taken.
pub(super) const EVENT_BUFFER_SLOTS: u64 = 4096;

/// At most this many bytes of event names and payloads from beyond Serf's 512-slot window go
/// into one push/pull state (the newest kept), far below the 20 MiB a stream may carry.
const MAX_OLDER_EVENT_BYTES: usize = 4 << 20;

/// How long an intent about an unknown node is remembered.
const RECENT_INTENT_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// How often failed and left members are checked for reaping.
const REAP_INTERVAL: Duration = Duration::from_secs(15);

/// How often a failed member is tried again.
pub(super) const RECONNECT_INTERVAL: Duration = Duration::from_secs(30);

/// What Serf holds for a member besides what memberlist knows.
#[derive(Debug, Clone)]
pub(super) struct MemberState {
    pub(super) member: Member,
    /// Lamport time of the latest intent applied.
    pub(super) status_ltime: LamportTime,
    /// When it failed or left (for reaping).
    pub(super) leave_time: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IntentKind {
    Join,
    Leave,
}

#[derive(Debug, Clone, Copy)]
struct Intent {
    kind: IntentKind,
    ltime: LamportTime,
    at: Instant,
}

/// A query this node sent and collects answers for.
#[derive(Debug)]
pub(super) struct OutboundQuery {
    pub(super) deadline: Instant,
    pub(super) acked: Vec<NodeName>,
    pub(super) responded: Vec<NodeName>,
    /// The alive members that match the filters when the query was sent: once every one has
    /// responded (and acked, if acks were asked for), the query ends before its deadline.
    pub(super) expected: Vec<NodeName>,
    pub(super) request_ack: bool,
    /// Every expected node has answered; the next flush moves the deadline to a grace period
    /// from then.
    pub(super) complete: bool,
}

impl OutboundQuery {
    /// Whether every expected node has answered.
    fn all_answered(&self) -> bool {
        !self.expected.is_empty()
            && self.expected.iter().all(|node| {
                self.responded.contains(node) && (!self.request_ack || self.acked.contains(node))
            })
    }
}

/// A query this node received and may answer once.
#[derive(Debug)]
pub(super) struct InboundQuery {
    pub(super) deadline: Instant,
    pub(super) responded: bool,
    pub(super) addr: SocketAddr,
    pub(super) relay_factor: u8,
}

/// Counters Serf keeps beside memberlist's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Serf messages that failed to decode.
    pub messages_dropped: u64,
    /// User events dropped as duplicates (or older than the replay start).
    pub events_deduplicated: u64,
    /// User events dropped because their Lamport time fell out of the event window.
    pub events_too_old: u64,
    /// Broadcasts pruned from Serf's queues because they grew too long.
    pub broadcasts_pruned: u64,
    /// Times this node's network coordinate went bad and was reset.
    pub coordinate_resets: u64,
}

/// Serf's queues never hold more than this many messages each (Serf's `MaxQueueDepth`).
const MAX_QUEUE_DEPTH: usize = 4096;

/// The Serf state memberlist calls into.
#[derive(Debug)]
pub(super) struct Core {
    pub(super) config: Config,
    pub(super) rng: SmallRng,
    pub(super) members: BTreeMap<NodeName, MemberState>,
    recent_intents: HashMap<NodeName, Intent>,
    pub(super) member_clock: LamportClock,
    pub(super) event_clock: LamportClock,
    pub(super) query_clock: LamportClock,
    pub(super) event_min_time: LamportTime,
    pub(super) query_min_time: LamportTime,
    /// The highest Lamport times of a user event and a query processed here (for the
    /// snapshot file, which records them before any coalescing).
    pub(super) last_event_ltime: LamportTime,
    pub(super) last_query_ltime: LamportTime,
    event_buffer: Vec<Option<UserEvents>>,
    query_buffer: Vec<Option<(LamportTime, Vec<u32>)>>,
    pub(super) intents: BroadcastQueue,
    pub(super) queries: BroadcastQueue,
    pub(super) user_events: BroadcastQueue,
    pub(super) outbound: HashMap<QueryKey, OutboundQuery>,
    pub(super) inbound: HashMap<QueryKey, InboundQuery>,
    pub(super) events: VecDeque<Event>,
    pub(super) query_outputs: VecDeque<(QueryKey, QueryOutput)>,
    /// Serf messages to send point-to-point: (address, message).
    pub(super) outbox: VecDeque<(SocketAddr, Vec<u8>)>,
    /// Set while a join asked not to replay old events: push/pull raises the event floor.
    pub(super) ignore_old_events: bool,
    /// Whether this node is leaving or has left (intents about itself are not refuted).
    pub(super) leaving: bool,
    pub(super) next_reap: Instant,
    pub(super) counters: Counters,
    /// This node's network coordinate and the ones peers sent.
    pub(super) coordinates: Coordinates,
    /// Serf's own queries (key management, name conflicts) for `keys.rs`.
    pub(super) internal: super::keys::Internal,
}

impl Core {
    pub(super) fn new(config: Config, seed: u64, now: Instant) -> Core {
        let retransmit_mult = config.memberlist.retransmit_mult;
        let local = Member {
            name: config.node_name.clone(),
            addr: config.advertise,
            tags: config.tags.clone(),
            status: MemberStatus::Alive,
            versions: versions_of(config.memberlist.vsn),
        };
        let mut members = BTreeMap::new();
        members.insert(
            local.name.clone(),
            MemberState {
                member: local.clone(),
                status_ltime: 0,
                leave_time: None,
            },
        );
        let mut core = Core {
            config,
            rng: rand::SeedableRng::seed_from_u64(seed),
            members,
            recent_intents: HashMap::new(),
            member_clock: LamportClock::new(),
            event_clock: LamportClock::new(),
            query_clock: LamportClock::new(),
            event_min_time: 0,
            query_min_time: 0,
            last_event_ltime: 0,
            last_query_ltime: 0,
            event_buffer: vec![None; EVENT_BUFFER_SLOTS as usize],
            query_buffer: vec![None; BUFFER_SLOTS as usize],
            intents: BroadcastQueue::new(retransmit_mult),
            queries: BroadcastQueue::new(retransmit_mult),
            user_events: BroadcastQueue::new(retransmit_mult),
            outbound: HashMap::new(),
            inbound: HashMap::new(),
            events: VecDeque::new(),
            query_outputs: VecDeque::new(),
            outbox: VecDeque::new(),
            ignore_old_events: false,
            leaving: false,
            next_reap: now + REAP_INTERVAL,
            counters: Counters::default(),
            coordinates: Coordinates::new(local.name.clone()),
            internal: Default::default(),
        };
        if let Some(restored) = core.config.restored_clocks {
            core.restore(restored);
        }
        core.events.push_back(Event::Member(MemberEvent {
            kind: MemberEventKind::Join,
            members: vec![local],
        }));
        core
    }

    /// Starts past a snapshot's clocks; user events and queries at or before them are not
    /// handed out again (Serf's eventMinTime/queryMinTime, reference 3.14).
    fn restore(&mut self, restored: super::RestoredClocks) {
        // A damaged file may hold absurd times; the clocks must still be able to tick.
        let [member, event, query] =
            [restored.member, restored.event, restored.query].map(|t| t.min(LamportTime::MAX / 2));
        self.member_clock.witness(member);
        self.event_clock.witness(event);
        self.query_clock.witness(query);
        self.event_min_time = event + 1;
        self.query_min_time = query + 1;
        self.last_event_ltime = event;
        self.last_query_ltime = query;
    }

    pub(super) fn local_member(&self) -> &Member {
        &self
            .members
            .get(&self.config.node_name)
            .expect("the local member is never removed")
            .member
    }

    /// Members Serf counts for retransmits and timeouts.
    pub(super) fn num_members(&self) -> usize {
        self.members.len()
    }

    fn update_queue_sizes(&mut self) {
        let n = self.num_members();
        for queue in [&mut self.intents, &mut self.queries, &mut self.user_events] {
            queue.set_num_nodes(n);
        }
    }

    fn emit(&mut self, kind: MemberEventKind, member: Member) {
        self.events.push_back(Event::Member(MemberEvent {
            kind,
            members: vec![member],
        }));
    }

    // ---- intents -------------------------------------------------------------------------

    /// Broadcasts a leave intent about `node` (ourselves on a graceful leave, another node on
    /// force-leave) and applies it locally; returns the broadcast to wait for.
    pub(super) fn broadcast_leave(&mut self, now: Instant, node: &str, prune: bool) -> BroadcastId {
        let intent = LeaveIntent {
            ltime: self.member_clock.time(),
            node: node.to_owned(),
            prune,
        };
        self.member_clock.increment();
        self.handle_leave_intent(now, &intent);
        self.intents.queue(None, intent.encode())
    }

    /// Broadcasts a join intent about ourselves at the current member time.
    pub(super) fn broadcast_join(&mut self, now: Instant) {
        let intent = JoinIntent {
            ltime: self.member_clock.time(),
            node: self.config.node_name.clone(),
        };
        self.member_clock.witness(intent.ltime);
        self.handle_join_intent(now, &intent);
        self.intents.queue(None, intent.encode());
    }

    /// Applies a leave intent; returns whether to gossip it on.
    fn handle_leave_intent(&mut self, now: Instant, intent: &LeaveIntent) -> bool {
        self.member_clock.witness(intent.ltime);
        let local_name = self.config.node_name.clone();
        let Some(state) = self.members.get_mut(&intent.node) else {
            return self.remember_intent(now, &intent.node, IntentKind::Leave, intent.ltime);
        };
        if intent.ltime <= state.status_ltime {
            return false;
        }
        if intent.node == local_name && !self.leaving {
            tracing::debug!("refuting an older leave intent about this node");
            self.broadcast_join(now);
            return false;
        }
        state.status_ltime = intent.ltime;
        match state.member.status {
            MemberStatus::Alive => state.member.status = MemberStatus::Leaving,
            MemberStatus::Failed => {
                state.member.status = MemberStatus::Left;
                state.leave_time = Some(now);
                let member = state.member.clone();
                tracing::info!(node = %member.name, "EventMemberLeave (forced): {} {}", member.name, member.addr.ip());
                self.emit(MemberEventKind::Leave, member);
            }
            _ => {}
        }
        if intent.prune
            && let Some(state) = self.members.get(&intent.node)
            && matches!(state.member.status, MemberStatus::Left)
        {
            let member = self.members.remove(&intent.node).expect("checked").member;
            self.coordinates.forget(&intent.node);
            self.emit(MemberEventKind::Reap, member);
            self.update_queue_sizes();
        }
        true
    }

    /// Applies a join intent; returns whether to gossip it on.
    fn handle_join_intent(&mut self, now: Instant, intent: &JoinIntent) -> bool {
        self.member_clock.witness(intent.ltime);
        let Some(state) = self.members.get_mut(&intent.node) else {
            return self.remember_intent(now, &intent.node, IntentKind::Join, intent.ltime);
        };
        if intent.ltime <= state.status_ltime {
            return false;
        }
        state.status_ltime = intent.ltime;
        if state.member.status == MemberStatus::Leaving {
            state.member.status = MemberStatus::Alive;
        }
        true
    }

    fn remember_intent(
        &mut self,
        now: Instant,
        node: &str,
        kind: IntentKind,
        ltime: LamportTime,
    ) -> bool {
        match self.recent_intents.get(node) {
            Some(existing) if existing.ltime >= ltime => false,
            _ => {
                self.recent_intents.insert(
                    node.to_owned(),
                    Intent {
                        kind,
                        ltime,
                        at: now,
                    },
                );
                true
            }
        }
    }

    // ---- user events ---------------------------------------------------------------------

    /// Takes a user event (local, gossiped or replayed from push/pull); returns whether it was
    /// new (and so delivered and gossiped on).
    pub(super) fn handle_user_event(&mut self, message: &UserEventMsg) -> bool {
        self.event_clock.witness(message.ltime);
        if message.ltime < self.event_min_time {
            self.counters.events_deduplicated += 1;
            return false;
        }
        let current = self.event_clock.time();
        if current > EVENT_BUFFER_SLOTS && message.ltime < current - EVENT_BUFFER_SLOTS {
            tracing::warn!(
                "received old event {} from time {} (current: {})",
                message.name,
                message.ltime,
                current
            );
            self.counters.events_too_old += 1;
            return false;
        }
        let slot = (message.ltime % EVENT_BUFFER_SLOTS) as usize;
        let entry = UserEventEntry {
            name: message.name.clone(),
            payload: message.payload.clone(),
        };
        match &mut self.event_buffer[slot] {
            Some(seen) if seen.ltime == message.ltime => {
                if seen.events.contains(&entry) {
                    self.counters.events_deduplicated += 1;
                    return false;
                }
                seen.events.push(entry);
            }
            other => {
                *other = Some(UserEvents {
                    ltime: message.ltime,
                    events: vec![entry],
                });
            }
        }
        self.last_event_ltime = self.last_event_ltime.max(message.ltime);
        self.events.push_back(Event::User(super::UserEvent {
            ltime: message.ltime,
            name: message.name.clone(),
            payload: message.payload.clone(),
            coalesce: message.cc,
        }));
        true
    }

    // ---- queries -------------------------------------------------------------------------

    /// Takes a query (local or gossiped); returns whether to gossip it on.
    pub(super) fn handle_query(&mut self, now: Instant, query: &QueryMsg) -> bool {
        self.query_clock.witness(query.ltime);
        if query.ltime < self.query_min_time {
            return false;
        }
        let current = self.query_clock.time();
        if current > BUFFER_SLOTS && query.ltime < current - BUFFER_SLOTS {
            tracing::warn!(
                "received old query {} from time {} (current: {})",
                query.name,
                query.ltime,
                current
            );
            return false;
        }
        let slot = (query.ltime % BUFFER_SLOTS) as usize;
        match &mut self.query_buffer[slot] {
            Some((ltime, ids)) if *ltime == query.ltime => {
                if ids.contains(&query.id) {
                    return false;
                }
                ids.push(query.id);
            }
            other => *other = Some((query.ltime, vec![query.id])),
        }
        let rebroadcast = query.flags & wire::QUERY_FLAG_NO_BROADCAST == 0;
        if !self.matches_filters(&query.filters) {
            return rebroadcast;
        }
        self.last_query_ltime = self.last_query_ltime.max(query.ltime);
        let key = QueryKey {
            ltime: query.ltime,
            id: query.id,
        };
        let querier = SocketAddr::new(query.addr, query.port);
        if query.flags & wire::QUERY_FLAG_ACK != 0 {
            let ack = QueryResponseMsg {
                ltime: query.ltime,
                id: query.id,
                from: self.config.node_name.clone(),
                flags: wire::QUERY_RESPONSE_FLAG_ACK,
                payload: None,
            };
            self.send_response(querier, query.relay_factor, ack);
        }
        if query.name.starts_with(INTERNAL_QUERY_PREFIX) {
            // `_serf_ping` wants only the ack; the Serf layer answers the others (keys.rs).
            self.internal.take_query(now, query, querier);
            return rebroadcast;
        }
        let deadline = now + query.timeout;
        if deadline <= now {
            return rebroadcast;
        }
        self.inbound.insert(
            key,
            InboundQuery {
                deadline,
                responded: false,
                addr: querier,
                relay_factor: query.relay_factor,
            },
        );
        self.events.push_back(Event::Query(QueryEvent {
            key,
            name: query.name.clone(),
            payload: query.payload.clone(),
            source_node: query.source_node.clone(),
            deadline,
        }));
        rebroadcast
    }

    fn matches_filters(&self, filters: &[Vec<u8>]) -> bool {
        let local = self.local_member();
        filters.iter().all(|raw| match QueryFilter::decode(raw) {
            Ok(QueryFilter::Nodes(nodes)) => nodes.contains(&local.name),
            Ok(QueryFilter::Tag { tag, expr }) => match Regex::new(&expr) {
                Ok(regex) => regex.is_match(local.tags.get(&tag).map(String::as_str).unwrap_or("")),
                Err(error) => {
                    tracing::warn!(%error, "query tag filter is not a valid regexp");
                    false
                }
            },
            Err(error) => {
                tracing::warn!(%error, "failed to decode query filter");
                false
            }
        })
    }

    /// Sends an ack or response to the querier (directly when that is us) and to up to
    /// `relay_factor` other members that forward it.
    pub(super) fn send_response(
        &mut self,
        querier: SocketAddr,
        relay_factor: u8,
        response: QueryResponseMsg,
    ) {
        let encoded = response.encode();
        if querier == self.config.advertise {
            self.handle_query_response(&response);
        } else {
            self.outbox.push_back((querier, encoded.clone()));
        }
        if relay_factor == 0 {
            return;
        }
        let local = self.config.node_name.clone();
        let mut candidates: Vec<(NodeName, SocketAddr)> = self
            .members
            .values()
            .filter(|s| {
                s.member.name != local
                    && s.member.status == MemberStatus::Alive
                    && s.member.versions.protocol[1] >= 5
            })
            .map(|s| (s.member.name.clone(), s.member.addr))
            .collect();
        if self.members.len() < usize::from(relay_factor) + 1 {
            return;
        }
        let querier_name = self
            .members
            .values()
            .find(|s| s.member.addr == querier)
            .map(|s| s.member.name.clone())
            .unwrap_or_default();
        for _ in 0..relay_factor {
            if candidates.is_empty() {
                break;
            }
            let (_, relay) = candidates.swap_remove(self.rng.random_range(0..candidates.len()));
            let header = RelayHeader {
                dest_addr: querier,
                dest_name: querier_name.clone(),
            };
            self.outbox.push_back((relay, header.encode(&encoded)));
        }
    }

    /// An ack or response to a query this node sent.
    pub(super) fn handle_query_response(&mut self, response: &QueryResponseMsg) {
        let key = QueryKey {
            ltime: response.ltime,
            id: response.id,
        };
        let output = if response.is_ack() {
            QueryOutput::Ack {
                from: response.from.clone(),
            }
        } else {
            QueryOutput::Response {
                from: response.from.clone(),
                payload: response.payload.clone().unwrap_or_default(),
            }
        };
        self.deliver_answer(key, output);
    }

    /// Hands an ack or response to the querier's collector, once per node and kind.
    pub(super) fn deliver_answer(&mut self, key: QueryKey, output: QueryOutput) {
        let Some(query) = self.outbound.get_mut(&key) else {
            return;
        };
        let (seen, from) = match &output {
            QueryOutput::Ack { from } => (&mut query.acked, from),
            QueryOutput::Response { from, .. } => (&mut query.responded, from),
            QueryOutput::Done => return,
        };
        if seen.contains(from) {
            return;
        }
        seen.push(from.clone());
        query.complete = query.all_answered();
        self.query_outputs.push_back((key, output));
    }

    // ---- push/pull -----------------------------------------------------------------------

    fn push_pull_state(&self) -> PushPullState {
        PushPullState {
            ltime: self.member_clock.time(),
            status_ltimes: self
                .members
                .iter()
                .map(|(name, s)| (name.clone(), s.status_ltime))
                .collect(),
            left_members: self
                .members
                .iter()
                .filter(|(_, s)| s.member.status == MemberStatus::Left)
                .map(|(name, _)| name.clone())
                .collect(),
            event_ltime: self.event_clock.time(),
            events: self.recent_events(),
            query_ltime: self.query_clock.time(),
            older_events: self.older_events(),
        }
    }

    /// The events of the last [`BUFFER_SLOTS`] Lamport times, in Serf's 512-slot layout (the
    /// window push/pull has always carried).
    fn recent_events(&self) -> Vec<Option<UserEvents>> {
        let mut recent = vec![None; BUFFER_SLOTS as usize];
        let current = self.event_clock.time();
        for seen in self.event_buffer.iter().flatten() {
            if seen.ltime.saturating_add(BUFFER_SLOTS) > current {
                recent[(seen.ltime % BUFFER_SLOTS) as usize] = Some(seen.clone());
            }
        }
        recent
    }

    /// The rest of the event window, oldest first: gossip sends each event a bounded number
    /// of times, so now and then a node misses some of a long burst, and only push/pull can
    /// bring it those (Serf's 512 slots hold only the end of a burst of 1,000). At most
    /// [`MAX_OLDER_EVENT_BYTES`] of names and payloads, the newest kept.
    fn older_events(&self) -> Vec<UserEvents> {
        let current = self.event_clock.time();
        let mut older: Vec<&UserEvents> = self
            .event_buffer
            .iter()
            .flatten()
            .filter(|seen| {
                seen.ltime.saturating_add(BUFFER_SLOTS) <= current
                    && seen.ltime.saturating_add(EVENT_BUFFER_SLOTS) > current
            })
            .collect();
        older.sort_unstable_by_key(|seen| Reverse(seen.ltime));
        let mut bytes = 0usize;
        let mut kept: Vec<UserEvents> = older
            .into_iter()
            .take_while(|seen| {
                bytes += seen
                    .events
                    .iter()
                    .map(|e| e.name.len() + e.payload.len())
                    .sum::<usize>();
                bytes <= MAX_OLDER_EVENT_BYTES
            })
            .cloned()
            .collect();
        kept.reverse();
        kept
    }

    fn merge(&mut self, now: Instant, state: PushPullState, join: bool) {
        if state.ltime > 0 {
            self.member_clock.witness(state.ltime - 1);
        }
        if state.event_ltime > 0 {
            self.event_clock.witness(state.event_ltime - 1);
        }
        if state.query_ltime > 0 {
            self.query_clock.witness(state.query_ltime - 1);
        }
        for name in &state.left_members {
            let ltime = state.status_ltimes.get(name).copied().unwrap_or(0);
            let intent = LeaveIntent {
                ltime: ltime.saturating_add(1),
                node: name.clone(),
                prune: false,
            };
            self.handle_leave_intent(now, &intent);
        }
        for (name, &ltime) in &state.status_ltimes {
            if state.left_members.contains(name) {
                continue;
            }
            let intent = JoinIntent {
                ltime,
                node: name.clone(),
            };
            self.handle_join_intent(now, &intent);
        }
        if join && self.ignore_old_events {
            self.event_min_time = self.event_min_time.max(state.event_ltime);
        }
        // Older events first: Serf's recent ones are in ring order, not Lamport order.
        let current = self.event_clock.time();
        let older = state.older_events.into_iter().filter(|events| {
            // Out of our window: never taken, and not worth a warning (Serf never sends these).
            events.ltime.saturating_add(EVENT_BUFFER_SLOTS) >= current
        });
        let mut received: Vec<UserEvents> =
            older.chain(state.events.into_iter().flatten()).collect();
        received.sort_by_key(|events| events.ltime);
        for events in received {
            for entry in events.events {
                let message = UserEventMsg {
                    ltime: events.ltime,
                    name: entry.name,
                    payload: entry.payload,
                    cc: false,
                };
                if self.handle_user_event(&message) {
                    self.user_events.queue(None, message.encode());
                }
            }
        }
    }

    // ---- timers --------------------------------------------------------------------------

    /// Reaps failed and left members and stale intents.
    pub(super) fn reap(&mut self, now: Instant) {
        if now < self.next_reap {
            return;
        }
        self.next_reap = now + REAP_INTERVAL;
        self.recent_intents
            .retain(|_, intent| now.duration_since(intent.at) < RECENT_INTENT_TIMEOUT);
        let reconnect_timeout = self.config.reconnect_timeout;
        let tombstone_timeout = self.config.tombstone_timeout;
        let expired: Vec<NodeName> = self
            .members
            .iter()
            .filter(|(_, s)| {
                let timeout = match s.member.status {
                    MemberStatus::Failed => reconnect_timeout,
                    MemberStatus::Left => tombstone_timeout,
                    _ => return false,
                };
                s.leave_time
                    .is_some_and(|at| now.duration_since(at) >= timeout)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in expired {
            if let Some(state) = self.members.remove(&name) {
                self.coordinates.forget(&name);
                tracing::info!("EventMemberReap: {}", name);
                self.emit(MemberEventKind::Reap, state.member);
            }
        }
        self.update_queue_sizes();
        for (queue, name) in [
            (&mut self.intents, "intent"),
            (&mut self.queries, "query"),
            (&mut self.user_events, "event"),
        ] {
            let before = queue.num_queued();
            if before > MAX_QUEUE_DEPTH {
                queue.prune(MAX_QUEUE_DEPTH);
                let pruned = (before - queue.num_queued()) as u64;
                self.counters.broadcasts_pruned += pruned;
                tracing::warn!(
                    queue = name,
                    pruned,
                    "serf broadcast queue over its limit; oldest messages pruned"
                );
            }
        }
    }

    /// A random failed member to try to reach again, as Serf's reconnector does.
    pub(super) fn reconnect_target(&mut self) -> Option<SocketAddr> {
        let failed: Vec<SocketAddr> = self
            .members
            .values()
            .filter(|s| s.member.status == MemberStatus::Failed)
            .map(|s| s.member.addr)
            .collect();
        if failed.is_empty() {
            return None;
        }
        let alive = self
            .members
            .values()
            .filter(|s| s.member.status == MemberStatus::Alive)
            .count()
            .max(1);
        // Serf tries with probability failed/alive, so big healthy clusters are not flooded.
        if self.rng.random::<f64>() > failed.len() as f64 / alive as f64 {
            return None;
        }
        Some(failed[self.rng.random_range(0..failed.len())])
    }

    fn member_from_node(&self, node: &Node, status: MemberStatus) -> Member {
        Member {
            name: node.name.clone(),
            addr: node.addr,
            tags: wire::decode_tags(&node.meta),
            status,
            versions: versions_of(node.vsn),
        }
    }
}

/// The protocol ranges a version vector advertises.
pub(super) fn versions_of(vsn: [u8; 6]) -> ProtocolVersions {
    ProtocolVersions {
        protocol: [vsn[0], vsn[1], vsn[2]],
        delegate: [vsn[3], vsn[4], vsn[5]],
    }
}

/// `tags` as the node meta of a node with `config`: the `role` tag alone before Serf protocol
/// 3, all of them encoded from then on.
pub(super) fn encode_meta(config: &Config, tags: &Tags) -> Vec<u8> {
    if config.memberlist.vsn[5] < 3 {
        tags.get("role").cloned().unwrap_or_default().into_bytes()
    } else {
        wire::encode_tags(tags)
    }
}

impl Delegate for Core {
    fn node_meta(&mut self, limit: usize) -> Vec<u8> {
        let meta = encode_meta(&self.config, &self.config.tags);
        if meta.len() > limit {
            tracing::error!("Encoded length of tags exceeds limit of {limit} bytes");
            return wire::encode_tags(&Tags::new());
        }
        meta
    }

    fn notify_user_msg(&mut self, now: Instant, msg: &[u8]) {
        let message = match SerfMessage::decode(msg) {
            Ok(message) => message,
            Err(error) => {
                self.counters.messages_dropped += 1;
                tracing::debug!(%error, "dropped serf message");
                return;
            }
        };
        match message {
            SerfMessage::Leave(intent) => {
                if self.handle_leave_intent(now, &intent) {
                    self.intents.queue(None, msg.to_vec());
                }
            }
            SerfMessage::Join(intent) => {
                if self.handle_join_intent(now, &intent) {
                    self.intents.queue(None, msg.to_vec());
                }
            }
            SerfMessage::UserEvent(event) => {
                if self.handle_user_event(&event) {
                    self.user_events.queue(None, msg.to_vec());
                }
            }
            SerfMessage::Query(query) => {
                if self.handle_query(now, &query) {
                    self.queries.queue(None, msg.to_vec());
                }
            }
            SerfMessage::QueryResponse(response) => self.handle_query_response(&response),
            SerfMessage::Relay { header, message } => {
                tracing::debug!(to = %header.dest_name, "relaying a query response");
                self.outbox.push_back((header.dest_addr, message));
            }
            SerfMessage::PushPull(_) => {
                self.counters.messages_dropped += 1;
                tracing::debug!("push/pull state outside a push/pull; dropped");
            }
        }
    }

    fn get_broadcasts(&mut self, overhead: usize, limit: usize) -> Vec<Vec<u8>> {
        let mut out = self.intents.get_broadcasts(overhead, limit);
        let mut used: usize = out.iter().map(|m| m.len() + overhead).sum();
        for queue in [&mut self.queries, &mut self.user_events] {
            let more = queue.get_broadcasts(overhead, limit.saturating_sub(used));
            used += more.iter().map(|m| m.len() + overhead).sum::<usize>();
            out.extend(more);
        }
        out
    }

    fn broadcast_generation(&self) -> u64 {
        [&self.intents, &self.queries, &self.user_events]
            .iter()
            .fold(0, |sum, queue| sum.wrapping_add(queue.generation()))
    }

    fn local_state(&mut self, _join: bool) -> Vec<u8> {
        self.push_pull_state().encode()
    }

    fn merge_remote_state(&mut self, now: Instant, state: &[u8], join: bool) {
        match PushPullState::decode(state) {
            Ok(state) => self.merge(now, state, join),
            Err(error) => {
                self.counters.messages_dropped += 1;
                tracing::error!(%error, "failed to decode remote state");
            }
        }
    }

    fn notify_join(&mut self, now: Instant, node: &Node) {
        if node.name == self.config.node_name {
            return;
        }
        let mut member = self.member_from_node(node, MemberStatus::Alive);
        let mut status_ltime = 0;
        if let Some(intent) = self.recent_intents.remove(&node.name) {
            status_ltime = intent.ltime;
            if intent.kind == IntentKind::Leave {
                member.status = MemberStatus::Leaving;
            }
        }
        if let Some(existing) = self.members.get(&node.name) {
            status_ltime = status_ltime.max(existing.status_ltime);
        }
        tracing::info!("EventMemberJoin: {} {}", member.name, member.addr.ip());
        self.members.insert(
            node.name.clone(),
            MemberState {
                member: member.clone(),
                status_ltime,
                leave_time: None,
            },
        );
        self.update_queue_sizes();
        let _ = now;
        self.emit(MemberEventKind::Join, member);
    }

    fn notify_leave(&mut self, now: Instant, node: &Node) {
        let Some(state) = self.members.get_mut(&node.name) else {
            return;
        };
        let kind = match (state.member.status, node.state) {
            (MemberStatus::Leaving, _) | (MemberStatus::Alive, NodeState::Left) => {
                state.member.status = MemberStatus::Left;
                MemberEventKind::Leave
            }
            (MemberStatus::Alive, _) => {
                state.member.status = MemberStatus::Failed;
                MemberEventKind::Failed
            }
            (other, _) => {
                tracing::warn!(node = %node.name, status = other.as_str(), "leave notification for a member that is not alive");
                return;
            }
        };
        state.leave_time = Some(now);
        let member = state.member.clone();
        match kind {
            MemberEventKind::Leave => {
                tracing::info!("EventMemberLeave: {} {}", member.name, member.addr.ip())
            }
            _ => tracing::info!("EventMemberFailed: {} {}", member.name, member.addr.ip()),
        }
        self.emit(kind, member);
    }

    fn notify_update(&mut self, _now: Instant, node: &Node) {
        if node.name == self.config.node_name {
            return;
        }
        let tags = wire::decode_tags(&node.meta);
        let Some(state) = self.members.get_mut(&node.name) else {
            return;
        };
        state.member.addr = node.addr;
        state.member.tags = tags;
        state.member.versions = versions_of(node.vsn);
        let member = state.member.clone();
        tracing::info!("EventMemberUpdate: {}", member.name);
        self.emit(MemberEventKind::Update, member);
    }

    fn notify_conflict(&mut self, _now: Instant, existing: &Node, other: &Node) {
        if existing.name == self.config.node_name {
            self.internal.conflict_detected(other.addr);
            return;
        }
        tracing::warn!(
            "Name conflict for '{}' both {} and {} are claiming",
            existing.name,
            existing.addr,
            other.addr
        );
    }

    fn ack_payload(&mut self) -> Vec<u8> {
        self.coordinates.ack_payload()
    }

    fn notify_ping_complete(&mut self, _now: Instant, node: &Node, rtt: Duration, payload: &[u8]) {
        self.coordinates
            .handle_ping_complete(&node.name, rtt, payload, &mut self.rng);
        self.counters.coordinate_resets = self.coordinates.num_resets();
    }
}
