//! Serf's vocabulary: members, statuses, Lamport times and the events the core emits.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Instant;

/// A node's name, unique in the cluster.
pub type NodeName = String;

/// Tags of a member.
pub type Tags = BTreeMap<String, String>;

/// A Lamport timestamp.
pub type LamportTime = u64;

/// A Lamport clock (reference 3.3): starts at 0, `increment` returns the value before.
#[derive(Debug, Clone, Default)]
pub struct LamportClock {
    counter: LamportTime,
}

impl LamportClock {
    /// A clock at 1, as Serf's clocks are once created.
    pub fn new() -> LamportClock {
        LamportClock { counter: 1 }
    }

    /// The current value.
    pub fn time(&self) -> LamportTime {
        self.counter
    }

    /// Moves the clock on by one, returning the new value (it stops at the largest time).
    pub fn increment(&mut self) -> LamportTime {
        self.counter = self.counter.saturating_add(1);
        self.counter
    }

    /// Takes account of a time seen elsewhere: afterwards the clock is past it.
    /// A peer's time comes from the network: the largest one stops the clock there rather
    /// than overflowing it.
    pub fn witness(&mut self, time: LamportTime) {
        if time >= self.counter {
            self.counter = time.saturating_add(1);
        }
    }
}

/// Serf's member status, as the RPC spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberStatus {
    /// Unknown.
    None,
    /// Alive and gossiping.
    Alive,
    /// Leaving gracefully.
    Leaving,
    /// Left gracefully.
    Left,
    /// Stopped answering.
    Failed,
}

impl MemberStatus {
    /// Serf's name: `alive`, `leaving`, `left`, `failed` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberStatus::None => "none",
            MemberStatus::Alive => "alive",
            MemberStatus::Leaving => "leaving",
            MemberStatus::Left => "left",
            MemberStatus::Failed => "failed",
        }
    }
}

/// Protocol version ranges a member speaks (reference 3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolVersions {
    /// memberlist protocol: min, max, current.
    pub protocol: [u8; 3],
    /// Serf (delegate) protocol: min, max, current.
    pub delegate: [u8; 3],
}

impl ProtocolVersions {
    /// What Serf 0.9.4 advertises with the agent's default `-protocol=5`.
    pub const SERF_0_9_4: ProtocolVersions = ProtocolVersions {
        protocol: [1, 5, 2],
        delegate: [2, 5, 5],
    };
}

/// A cluster member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Node name.
    pub name: NodeName,
    /// Gossip address.
    pub addr: SocketAddr,
    /// Tags.
    pub tags: Tags,
    /// Status.
    pub status: MemberStatus,
    /// Protocol versions.
    pub versions: ProtocolVersions,
}

/// The five kinds of member event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberEventKind {
    /// `member-join`
    Join,
    /// `member-leave`
    Leave,
    /// `member-failed`
    Failed,
    /// `member-update`
    Update,
    /// `member-reap`
    Reap,
}

impl MemberEventKind {
    /// Every kind, in Serf's numbering order.
    pub const ALL: [MemberEventKind; 5] = [
        MemberEventKind::Join,
        MemberEventKind::Leave,
        MemberEventKind::Failed,
        MemberEventKind::Update,
        MemberEventKind::Reap,
    ];

    /// Serf's name: `member-join`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            MemberEventKind::Join => "member-join",
            MemberEventKind::Leave => "member-leave",
            MemberEventKind::Failed => "member-failed",
            MemberEventKind::Update => "member-update",
            MemberEventKind::Reap => "member-reap",
        }
    }
}

/// Members changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberEvent {
    /// What happened.
    pub kind: MemberEventKind,
    /// To whom.
    pub members: Vec<Member>,
}

/// A custom user event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEvent {
    /// Lamport time on the event clock.
    pub ltime: LamportTime,
    /// Name.
    pub name: String,
    /// Opaque payload.
    pub payload: Vec<u8>,
    /// Whether the sender allows coalescing.
    pub coalesce: bool,
}

/// Identifies a query cluster-wide: Serf matches responses by both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueryKey {
    /// Lamport time on the query clock.
    pub ltime: LamportTime,
    /// Random 31-bit id.
    pub id: u32,
}

/// A query delivered to this node's handlers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryEvent {
    /// Which query.
    pub key: QueryKey,
    /// Name.
    pub name: String,
    /// Opaque payload.
    pub payload: Vec<u8>,
    /// The node that asked.
    pub source_node: NodeName,
    /// After this the querier no longer listens and responses are refused.
    pub deadline: Instant,
}

/// What the core hands to handlers and event streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Membership changed.
    Member(MemberEvent),
    /// A user event arrived.
    User(UserEvent),
    /// A query arrived.
    Query(QueryEvent),
}

/// A query this node sent, as the RPC `query` command reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryOutput {
    /// A node acknowledged the query.
    Ack {
        /// The node.
        from: NodeName,
    },
    /// A node answered.
    Response {
        /// The node.
        from: NodeName,
        /// Its answer.
        payload: Vec<u8>,
    },
    /// The deadline passed; nothing more comes.
    Done,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn witness_moves_past_the_seen_time() {
        let mut clock = LamportClock::new();
        clock.witness(0);
        assert_eq!(clock.time(), 1);
        clock.witness(1);
        assert_eq!(clock.time(), 2);
        clock.witness(9);
        assert_eq!(clock.time(), 10);
        assert_eq!(clock.increment(), 11);
    }

    #[test]
    fn the_largest_time_from_a_peer_does_not_overflow_the_clock() {
        let mut clock = LamportClock::new();
        clock.witness(u64::MAX);
        assert_eq!(clock.time(), u64::MAX);
        assert_eq!(clock.increment(), u64::MAX);
    }
}
