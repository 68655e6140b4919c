//! Event coalescing (reference 3.11): bursts of member events and of coalescible user events
//! become fewer, merged events before handlers and event streams see them.
//!
//! A pure filter between the core's event queue and its consumers. It is fed events with the
//! time they happened and the current time, and reads no clock; [`Serf`](super::Serf) feeds it
//! from its `handle_*` calls and adds [`Coalescer::poll_timeout`] to its own timers. It keeps no
//! member table of its own beyond the kind last handed out per member.
//!
//! What waits, and for how long:
//! * member events (all five kinds): per member only the latest kind and member data are kept;
//! * user events sent with `coalesce = true`: per name only the events with the highest Lamport
//!   time are kept (all of them when several share it);
//! * user events with `coalesce = false` and queries pass straight through.
//!
//! A batch starts with its first event and is handed out once [`Periods::period`] has passed
//! since that event or [`Periods::quiescent`] since the latest one, whichever comes first.
//!
//! Output order is deterministic (Serf's own is random):
//! * pass-through events leave at once in arrival order, overtaking batched ones;
//! * a member batch leaves as one event per kind, in Serf's numbering order (join, leave,
//!   failed, update, reap), each with its members in name order; a member whose kind is the
//!   one last handed out for it is skipped, except `member-update`;
//! * a user batch leaves by ascending Lamport time, then name, then arrival;
//! * when both batches fall due by the same call, the one due first leaves first (members
//!   first on a tie).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::types::{Event, LamportTime, Member, MemberEvent, MemberEventKind, NodeName, UserEvent};

/// When a batch is handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Periods {
    /// At the latest this long after the batch's first event (Serf's `CoalescePeriod`).
    pub period: Duration,
    /// Or once this long has passed without a new event (Serf's `QuiescentPeriod`).
    pub quiescent: Duration,
}

impl Periods {
    /// What Serf's agent uses for member and user events alike: 3 s, 1 s.
    pub const AGENT: Periods = Periods {
        period: Duration::from_secs(3),
        quiescent: Duration::from_secs(1),
    };

    /// Serf coalesces only when both periods are positive.
    fn is_enabled(self) -> bool {
        !self.period.is_zero() && !self.quiescent.is_zero()
    }
}

/// Which events are coalesced. Serf's library leaves both off; its agent turns both on with
/// fixed periods (no flag or config key changes them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Member events; `None` = delivered one by one.
    pub member: Option<Periods>,
    /// User events sent with `coalesce = true`; `None` = delivered one by one.
    pub user: Option<Periods>,
}

impl Config {
    /// Nothing is coalesced: every event leaves as it arrives.
    pub const OFF: Config = Config {
        member: None,
        user: None,
    };

    /// Serf's agent: member and user events, 3 s / 1 s each.
    pub const AGENT: Config = Config {
        member: Some(Periods::AGENT),
        user: Some(Periods::AGENT),
    };
}

/// The open batch: when its first and latest events arrived.
#[derive(Debug, Clone, Copy)]
struct Batch {
    first: Instant,
    last: Instant,
}

impl Batch {
    fn deadline(self, periods: Periods) -> Instant {
        (self.first + periods.period).min(self.last + periods.quiescent)
    }

    /// Opens a batch at `now` or extends the open one.
    fn extend(batch: &mut Option<Batch>, now: Instant) {
        match batch {
            Some(open) => open.last = open.last.max(now),
            None => {
                *batch = Some(Batch {
                    first: now,
                    last: now,
                })
            }
        }
    }
}

/// Merges member events per member, keeping the latest kind and member data.
#[derive(Debug)]
pub struct MemberCoalescer {
    periods: Periods,
    batch: Option<Batch>,
    /// The latest kind and member data per member in the open batch.
    latest: BTreeMap<NodeName, (MemberEventKind, Member)>,
    /// The kind last handed out per member, across batches (as Serf, never forgotten).
    last_emitted: HashMap<NodeName, MemberEventKind>,
}

impl MemberCoalescer {
    /// An empty coalescer.
    pub fn new(periods: Periods) -> MemberCoalescer {
        MemberCoalescer {
            periods,
            batch: None,
            latest: BTreeMap::new(),
            last_emitted: HashMap::new(),
        }
    }

    /// Adds `event`, which happened at `now`, to the open batch (opening one if none is).
    /// Hand out a batch that is already due with [`MemberCoalescer::flush`] first.
    pub fn push(&mut self, now: Instant, event: MemberEvent) {
        Batch::extend(&mut self.batch, now);
        for member in event.members {
            self.latest
                .insert(member.name.clone(), (event.kind, member));
        }
    }

    /// When the open batch is due; `None` when nothing waits.
    pub fn deadline(&self) -> Option<Instant> {
        self.batch.map(|batch| batch.deadline(self.periods))
    }

    /// Closes the batch: one event per kind, kinds in Serf's order, members by name. Members
    /// whose kind is the one last handed out for them are left out, except updates.
    pub fn flush(&mut self) -> Vec<MemberEvent> {
        self.batch = None;
        let mut by_kind: Vec<MemberEvent> = MemberEventKind::ALL
            .iter()
            .map(|&kind| MemberEvent {
                kind,
                members: Vec::new(),
            })
            .collect();
        for (name, (kind, member)) in std::mem::take(&mut self.latest) {
            let previous = self.last_emitted.insert(name, kind);
            if previous == Some(kind) && kind != MemberEventKind::Update {
                continue;
            }
            if let Some(event) = by_kind.iter_mut().find(|event| event.kind == kind) {
                event.members.push(member);
            }
        }
        by_kind.retain(|event| !event.members.is_empty());
        by_kind
    }
}

/// Keeps, per event name, only the user events with the highest Lamport time.
#[derive(Debug)]
pub struct UserCoalescer {
    periods: Periods,
    batch: Option<Batch>,
    /// Per name: the highest Lamport time seen in the batch and its events, in arrival order.
    latest: BTreeMap<String, (LamportTime, Vec<UserEvent>)>,
}

impl UserCoalescer {
    /// An empty coalescer.
    pub fn new(periods: Periods) -> UserCoalescer {
        UserCoalescer {
            periods,
            batch: None,
            latest: BTreeMap::new(),
        }
    }

    /// Adds `event`, which happened at `now`, to the open batch (opening one if none is). An
    /// event older than one of the same name already waiting is dropped.
    pub fn push(&mut self, now: Instant, event: UserEvent) {
        Batch::extend(&mut self.batch, now);
        match self.latest.get_mut(&event.name) {
            Some((ltime, events)) if *ltime == event.ltime => events.push(event),
            Some((ltime, _)) if *ltime > event.ltime => {
                tracing::debug!(event = %event.name, ltime = event.ltime, "older user event coalesced away");
            }
            _ => {
                self.latest
                    .insert(event.name.clone(), (event.ltime, vec![event]));
            }
        }
    }

    /// When the open batch is due; `None` when nothing waits.
    pub fn deadline(&self) -> Option<Instant> {
        self.batch.map(|batch| batch.deadline(self.periods))
    }

    /// Closes the batch: the kept events by Lamport time, then name, then arrival.
    pub fn flush(&mut self) -> Vec<UserEvent> {
        self.batch = None;
        let mut groups: Vec<(LamportTime, Vec<UserEvent>)> =
            std::mem::take(&mut self.latest).into_values().collect();
        // Stable: names come out of the map sorted, so equal times stay in name order.
        groups.sort_by_key(|(ltime, _)| *ltime);
        groups.into_iter().flat_map(|(_, events)| events).collect()
    }
}

/// Both coalescers behind one queue: feed every event the core emits, drain what handlers and
/// streams may see now.
#[derive(Debug)]
pub struct Coalescer {
    member: Option<MemberCoalescer>,
    user: Option<UserCoalescer>,
    ready: VecDeque<Event>,
    /// The latest time handed in, for events that arrive without one.
    clock: Instant,
}

impl Coalescer {
    /// A coalescer with nothing waiting; `now` is the time it starts at.
    pub fn new(config: Config, now: Instant) -> Coalescer {
        Coalescer {
            member: config
                .member
                .filter(|p| p.is_enabled())
                .map(MemberCoalescer::new),
            user: config
                .user
                .filter(|p| p.is_enabled())
                .map(UserCoalescer::new),
            ready: VecDeque::new(),
            clock: now,
        }
    }

    /// Takes an event that happened at `now`: it either waits in a batch or is ready at once.
    /// A batch already due at `now` is handed out before it.
    pub fn handle_event(&mut self, now: Instant, event: Event) {
        self.handle_timeout(now);
        match event {
            Event::Member(event) => match &mut self.member {
                Some(member) => member.push(now, event),
                None => self.ready.push_back(Event::Member(event)),
            },
            Event::User(event) => match &mut self.user {
                Some(user) if event.coalesce => user.push(now, event),
                _ => self.ready.push_back(Event::User(event)),
            },
            query @ Event::Query(_) => self.ready.push_back(query),
        }
    }

    /// Hands out every batch due at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.clock = self.clock.max(now);
        let member_due = self.member.as_ref().and_then(|c| c.deadline());
        let user_due = self.user.as_ref().and_then(|c| c.deadline());
        let flush_member = member_due.is_some_and(|due| due <= now);
        let flush_user = user_due.is_some_and(|due| due <= now);
        let user_first = flush_user && (!flush_member || user_due < member_due);
        if user_first {
            self.flush_user();
        }
        if flush_member {
            self.flush_member();
        }
        if flush_user && !user_first {
            self.flush_user();
        }
    }

    /// When [`Coalescer::handle_timeout`] is next needed; `None` when nothing waits.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let member = self.member.as_ref().and_then(|c| c.deadline());
        let user = self.user.as_ref().and_then(|c| c.deadline());
        member.into_iter().chain(user).min()
    }

    /// The next event handlers and streams may see.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.ready.pop_front()
    }

    /// The latest time handed in (the start time at first).
    pub fn clock(&self) -> Instant {
        self.clock
    }

    /// Hands out everything waiting at once, whatever the periods (e.g. before shutting down).
    pub fn flush_all(&mut self) {
        self.flush_member();
        self.flush_user();
    }

    fn flush_member(&mut self) {
        if let Some(member) = &mut self.member {
            self.ready
                .extend(member.flush().into_iter().map(Event::Member));
        }
    }

    fn flush_user(&mut self) {
        if let Some(user) = &mut self.user {
            self.ready.extend(user.flush().into_iter().map(Event::User));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::types::{MemberStatus, ProtocolVersions, QueryEvent, QueryKey, Tags};
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);
    const MS: Duration = Duration::from_millis(1);

    fn member(name: &str, status: MemberStatus) -> Member {
        Member {
            name: name.into(),
            addr: "127.0.0.1:7946".parse().expect("address"),
            tags: Tags::new(),
            status,
            versions: ProtocolVersions::SERF_0_9_4,
        }
    }

    fn member_event(kind: MemberEventKind, names: &[&str]) -> Event {
        let status = match kind {
            MemberEventKind::Join | MemberEventKind::Update => MemberStatus::Alive,
            MemberEventKind::Leave | MemberEventKind::Reap => MemberStatus::Left,
            MemberEventKind::Failed => MemberStatus::Failed,
        };
        Event::Member(MemberEvent {
            kind,
            members: names.iter().map(|name| member(name, status)).collect(),
        })
    }

    fn user(name: &str, ltime: LamportTime, payload: &str, coalesce: bool) -> Event {
        Event::User(UserEvent {
            ltime,
            name: name.into(),
            payload: payload.into(),
            coalesce,
        })
    }

    fn drain(coalescer: &mut Coalescer) -> Vec<Event> {
        std::iter::from_fn(|| coalescer.poll_event()).collect()
    }

    /// Member events as (kind, names), for short assertions.
    fn summary(events: &[Event]) -> Vec<(MemberEventKind, Vec<String>)> {
        events
            .iter()
            .filter_map(|event| match event {
                Event::Member(m) => Some((
                    m.kind,
                    m.members.iter().map(|member| member.name.clone()).collect(),
                )),
                _ => None,
            })
            .collect()
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| name.to_string()).collect()
    }

    fn agent(start: Instant) -> Coalescer {
        Coalescer::new(Config::AGENT, start)
    }

    #[test]
    fn a_join_then_leave_of_one_node_within_the_period_is_one_leave() {
        let t0 = Instant::now();
        let mut coalescer = agent(t0);
        coalescer.handle_event(t0, member_event(MemberEventKind::Join, &["a"]));
        coalescer.handle_event(t0 + 100 * MS, member_event(MemberEventKind::Leave, &["a"]));
        assert!(
            drain(&mut coalescer).is_empty(),
            "nothing before the deadline"
        );
        assert_eq!(coalescer.poll_timeout(), Some(t0 + 1100 * MS));
        coalescer.handle_timeout(t0 + 1100 * MS);
        let events = drain(&mut coalescer);
        assert_eq!(summary(&events), [(MemberEventKind::Leave, names(&["a"]))]);
        let Event::Member(leave) = &events[0] else {
            unreachable!()
        };
        assert_eq!(
            leave.members[0].status,
            MemberStatus::Left,
            "latest data kept"
        );
        assert_eq!(coalescer.poll_timeout(), None);
    }

    #[test]
    fn many_joins_become_one_event_with_every_member_in_name_order() {
        let t0 = Instant::now();
        let mut coalescer = agent(t0);
        for (i, name) in ["d", "b", "a", "c"].into_iter().enumerate() {
            let at = t0 + 200 * MS * i as u32;
            coalescer.handle_event(at, member_event(MemberEventKind::Join, &[name]));
        }
        coalescer.handle_timeout(t0 + 1599 * MS);
        assert!(drain(&mut coalescer).is_empty());
        coalescer.handle_timeout(t0 + 1600 * MS);
        assert_eq!(
            summary(&drain(&mut coalescer)),
            [(MemberEventKind::Join, names(&["a", "b", "c", "d"]))]
        );
    }

    #[test]
    fn a_steady_trickle_is_flushed_at_the_coalesce_period() {
        let t0 = Instant::now();
        let mut coalescer = agent(t0);
        let mut seen = Vec::new();
        // A join every 500 ms never leaves a quiet second: the 3 s period cuts the batch.
        for i in 0..8u32 {
            let at = t0 + 500 * MS * i;
            coalescer.handle_event(at, member_event(MemberEventKind::Join, &[&format!("n{i}")]));
            seen.extend(summary(&drain(&mut coalescer)));
        }
        assert_eq!(
            seen,
            [(
                MemberEventKind::Join,
                names(&["n0", "n1", "n2", "n3", "n4", "n5"])
            )],
            "the batch of t0..t0+2.5s left when the event at t0+3s arrived"
        );
        assert_eq!(coalescer.poll_timeout(), Some(t0 + 4500 * MS));
        coalescer.handle_timeout(t0 + 4500 * MS);
        assert_eq!(
            summary(&drain(&mut coalescer)),
            [(MemberEventKind::Join, names(&["n6", "n7"]))]
        );
    }

    #[test]
    fn a_quiet_second_flushes_before_the_period() {
        let t0 = Instant::now();
        let mut coalescer = agent(t0);
        coalescer.handle_event(t0, member_event(MemberEventKind::Failed, &["a"]));
        assert_eq!(coalescer.poll_timeout(), Some(t0 + SECOND));
        coalescer.handle_timeout(t0 + SECOND);
        assert_eq!(
            summary(&drain(&mut coalescer)),
            [(MemberEventKind::Failed, names(&["a"]))]
        );
    }

    #[test]
    fn kinds_leave_in_serfs_order_and_repeats_are_skipped_except_updates() {
        let t0 = Instant::now();
        let mut coalescer = agent(t0);
        coalescer.handle_event(t0, member_event(MemberEventKind::Reap, &["r"]));
        coalescer.handle_event(t0, member_event(MemberEventKind::Update, &["u"]));
        coalescer.handle_event(t0, member_event(MemberEventKind::Failed, &["f"]));
        coalescer.handle_event(t0, member_event(MemberEventKind::Join, &["j", "k"]));
        coalescer.handle_timeout(t0 + SECOND);
        assert_eq!(
            summary(&drain(&mut coalescer)),
            [
                (MemberEventKind::Join, names(&["j", "k"])),
                (MemberEventKind::Failed, names(&["f"])),
                (MemberEventKind::Update, names(&["u"])),
                (MemberEventKind::Reap, names(&["r"])),
            ]
        );

        // j flaps (failed, then back) within one batch: handlers saw it join and it is
        // still joined, so nothing is said. Updates are always said again.
        let t1 = t0 + 10 * SECOND;
        coalescer.handle_event(t1, member_event(MemberEventKind::Failed, &["j"]));
        coalescer.handle_event(t1, member_event(MemberEventKind::Join, &["j"]));
        coalescer.handle_event(t1, member_event(MemberEventKind::Update, &["u"]));
        coalescer.handle_event(t1, member_event(MemberEventKind::Leave, &["k"]));
        coalescer.handle_timeout(t1 + SECOND);
        assert_eq!(
            summary(&drain(&mut coalescer)),
            [
                (MemberEventKind::Leave, names(&["k"])),
                (MemberEventKind::Update, names(&["u"])),
            ]
        );

        // Nothing new: nothing is re-sent (Serf would re-send u's update here).
        let t2 = t1 + 10 * SECOND;
        coalescer.handle_event(t2, member_event(MemberEventKind::Join, &["z"]));
        coalescer.handle_timeout(t2 + SECOND);
        assert_eq!(
            summary(&drain(&mut coalescer)),
            [(MemberEventKind::Join, names(&["z"]))]
        );
    }

    #[test]
    fn uncoalesced_user_events_and_queries_pass_straight_through() {
        let t0 = Instant::now();
        let mut coalescer = agent(t0);
        coalescer.handle_event(t0, member_event(MemberEventKind::Join, &["a"]));
        coalescer.handle_event(t0, user("deploy", 1, "x", true));
        coalescer.handle_event(t0, user("deploy", 2, "y", false));
        let query = Event::Query(QueryEvent {
            key: QueryKey { ltime: 1, id: 7 },
            name: "q".into(),
            payload: Vec::new(),
            source_node: "a".into(),
            deadline: t0 + SECOND,
        });
        coalescer.handle_event(t0, query.clone());
        assert_eq!(
            drain(&mut coalescer),
            [user("deploy", 2, "y", false), query]
        );
        coalescer.handle_timeout(t0 + SECOND);
        let later = drain(&mut coalescer);
        assert_eq!(later.len(), 2, "{later:?}");
        assert_eq!(later[1], user("deploy", 1, "x", true));
    }

    #[test]
    fn the_newest_user_event_per_name_wins_and_ties_are_all_kept() {
        let t0 = Instant::now();
        let mut coalescer = agent(t0);
        let sent = [
            user("deploy", 5, "a", true),
            user("restart", 3, "b", true),
            user("deploy", 7, "c", true),
            user("deploy", 6, "late", true),
            user("restart", 3, "d", true),
            user("audit", 3, "e", true),
        ];
        for event in sent {
            coalescer.handle_event(t0 + 100 * MS, event);
        }
        assert!(drain(&mut coalescer).is_empty());
        coalescer.handle_timeout(t0 + 1100 * MS);
        assert_eq!(
            drain(&mut coalescer),
            [
                user("audit", 3, "e", true),
                user("restart", 3, "b", true),
                user("restart", 3, "d", true),
                user("deploy", 7, "c", true),
            ]
        );
        assert_eq!(coalescer.poll_timeout(), None);
    }

    #[test]
    fn each_kind_keeps_its_own_batch() {
        let t0 = Instant::now();
        let mut coalescer = agent(t0);
        coalescer.handle_event(t0, member_event(MemberEventKind::Join, &["a"]));
        coalescer.handle_event(t0 + 500 * MS, user("deploy", 1, "x", true));
        assert_eq!(coalescer.poll_timeout(), Some(t0 + SECOND));
        coalescer.handle_timeout(t0 + SECOND);
        assert_eq!(summary(&drain(&mut coalescer)).len(), 1);
        assert_eq!(coalescer.poll_timeout(), Some(t0 + 1500 * MS));
        // Woken late, both kinds due: the one due first leaves first.
        coalescer.handle_event(t0 + 1200 * MS, member_event(MemberEventKind::Leave, &["a"]));
        coalescer.handle_timeout(t0 + 5 * SECOND);
        let events = drain(&mut coalescer);
        assert!(matches!(events[0], Event::User(_)), "{events:?}");
        assert!(matches!(events[1], Event::Member(_)), "{events:?}");
    }

    #[test]
    fn the_last_state_of_every_member_is_never_lost() {
        // Whatever the sequence, every member's final kind reaches the output, once per batch.
        let t0 = Instant::now();
        let mut coalescer = agent(t0);
        let kinds = MemberEventKind::ALL;
        let mut last = BTreeMap::new();
        let mut out = Vec::new();
        let mut now = t0;
        for step in 0..500u32 {
            now += MS * (step * 37 % 700);
            let name = format!("n{}", step * 7 % 11);
            let kind = kinds[(step * 13 % 5) as usize];
            last.insert(name.clone(), kind);
            coalescer.handle_event(now, member_event(kind, &[&name]));
            out.extend(summary(&drain(&mut coalescer)));
        }
        coalescer.flush_all();
        out.extend(summary(&drain(&mut coalescer)));
        assert_eq!(coalescer.poll_timeout(), None);
        let mut seen = BTreeMap::new();
        for (kind, members) in out {
            for name in members {
                seen.insert(name, kind);
            }
        }
        assert_eq!(seen, last);
    }

    #[test]
    fn off_passes_everything_at_once() {
        let t0 = Instant::now();
        let mut coalescer = Coalescer::new(Config::OFF, t0);
        let events = [
            member_event(MemberEventKind::Join, &["a"]),
            member_event(MemberEventKind::Join, &["a"]),
            user("deploy", 1, "x", true),
            user("deploy", 1, "x", true),
        ];
        for event in events.clone() {
            coalescer.handle_event(t0, event);
        }
        assert_eq!(drain(&mut coalescer), events);
        assert_eq!(coalescer.poll_timeout(), None);
        let zero = Periods {
            period: Duration::ZERO,
            quiescent: SECOND,
        };
        let config = Config {
            member: Some(zero),
            user: Some(zero),
        };
        let mut coalescer = Coalescer::new(config, t0);
        coalescer.handle_event(t0, user("deploy", 1, "x", true));
        assert_eq!(
            drain(&mut coalescer).len(),
            1,
            "a zero period is off, as in Serf"
        );
    }
}
