//! A deterministic many-node simulator for the gossip and Serf cores (STYLE.md section 8.2).
//!
//! Every node is a [`SimPeer`] (a [`Memberlist`] here, a full `Serf` in `sim_serf`) in this
//! one thread, on virtual time that starts at one `Instant` and only moves forward by
//! `Duration`s. The network delivers each packet after a
//! random latency, may lose it, and drops everything between nodes in different partition
//! groups or to crashed nodes; streams (TCP) are never lost but fail between partitions and
//! toward crashed nodes. All randomness comes from one seed: a failing test prints it and
//! `SIM_SEED=<seed>` replays the run.
//!
//! Unit tests that check behaviour rather than timing use [`Sim::lossless`]
//! (nothing lost, no latency) or a fixed delay per link ([`Sim::link_delay`]), add nodes as
//! they go ([`Sim::add_peer`]), and hand a node crafted or garbage packets
//! ([`Sim::inject_packet`]). A refused stream is a [`StreamError`], as the agent's transport
//! reports it.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{
    Config, DecodeError, Delegate, JoinOutcome, Memberlist, Node, NodeState, StreamError, StreamId,
    StreamRequest, StreamStage, Transmit,
};

/// What the simulator needs from a node: the sans-I/O verbs shared by [`Memberlist`] and
/// `Serf`, plus a way to see its members and drain what it hands to its user.
pub trait SimPeer {
    /// What [`SimPeer::poll_event`] hands out; the simulator keeps every one, with its time.
    type Event;

    fn join(&mut self, now: Instant, addrs: Vec<SocketAddr>);
    fn handle_packet(
        &mut self,
        now: Instant,
        from: SocketAddr,
        payload: &[u8],
    ) -> Result<(), DecodeError>;
    fn handle_stream(&mut self, now: Instant, from: SocketAddr, message: &[u8]) -> Option<Vec<u8>>;
    fn handle_stream_reply(
        &mut self,
        now: Instant,
        id: StreamId,
        reply: Result<Vec<u8>, StreamError>,
    );
    fn handle_timeout(&mut self, now: Instant);
    fn poll_timeout(&self) -> Option<Instant>;
    fn poll_transmit(&mut self) -> Option<Transmit>;
    fn poll_stream(&mut self) -> Option<StreamRequest>;
    fn poll_join_outcome(&mut self) -> Option<JoinOutcome>;
    fn poll_event(&mut self) -> Option<Self::Event>;
    /// Names of the members this node holds alive, itself included.
    fn alive_names(&self) -> impl Iterator<Item = &str>;
    /// Runs one tick of [`Sim::enable_reconnect`]'s emulated reconnect timer; returns whether
    /// it started a join. Peers with a reconnect timer of their own do nothing.
    fn emulate_reconnect(&mut self, _now: Instant, _rng: &mut StdRng) -> bool {
        false
    }
}

impl SimPeer for Memberlist<SimDelegate> {
    /// Memberlist's notifications stay in its [`SimDelegate`].
    type Event = std::convert::Infallible;

    fn join(&mut self, now: Instant, addrs: Vec<SocketAddr>) {
        Memberlist::join(self, now, addrs);
    }

    fn handle_packet(
        &mut self,
        now: Instant,
        from: SocketAddr,
        payload: &[u8],
    ) -> Result<(), DecodeError> {
        Memberlist::handle_packet(self, now, from, payload)
    }

    fn handle_stream(&mut self, now: Instant, from: SocketAddr, message: &[u8]) -> Option<Vec<u8>> {
        Memberlist::handle_stream(self, now, from, message)
    }

    fn handle_stream_reply(
        &mut self,
        now: Instant,
        id: StreamId,
        reply: Result<Vec<u8>, StreamError>,
    ) {
        Memberlist::handle_stream_reply(self, now, id, reply);
    }

    fn handle_timeout(&mut self, now: Instant) {
        Memberlist::handle_timeout(self, now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Memberlist::poll_timeout(self)
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        Memberlist::poll_transmit(self)
    }

    fn poll_stream(&mut self) -> Option<StreamRequest> {
        Memberlist::poll_stream(self)
    }

    fn poll_join_outcome(&mut self) -> Option<JoinOutcome> {
        Memberlist::poll_join_outcome(self)
    }

    fn poll_event(&mut self) -> Option<Self::Event> {
        None
    }

    fn alive_names(&self) -> impl Iterator<Item = &str> {
        self.members()
            .filter(|node| node.state == NodeState::Alive)
            .map(|node| node.name.as_str())
    }

    /// With probability failed / alive, joins one random member this node saw fail.
    fn emulate_reconnect(&mut self, now: Instant, rng: &mut StdRng) -> bool {
        let failed: Vec<SocketAddr> = self.delegate().failed.values().copied().collect();
        if failed.is_empty() {
            return false;
        }
        let alive = self.num_alive().max(1);
        let probability = (failed.len() as f64 / alive as f64).min(1.0);
        if !rng.random_bool(probability) {
            return false;
        }
        let addr = failed[rng.random_range(0..failed.len())];
        Memberlist::join(self, now, vec![addr]);
        true
    }
}

/// Records what a node's memberlist reported, and keeps Serf's list of failed members.
#[derive(Debug, Default)]
pub struct SimDelegate {
    pub meta: Vec<u8>,
    pub joins: Vec<(Instant, String)>,
    pub leaves: Vec<(Instant, Node)>,
    /// Members that failed (not left) and have not come back, as Serf tracks them for its
    /// reconnect timer.
    pub failed: BTreeMap<String, SocketAddr>,
}

impl Delegate for SimDelegate {
    fn node_meta(&mut self, _limit: usize) -> Vec<u8> {
        self.meta.clone()
    }

    fn notify_join(&mut self, now: Instant, node: &Node) {
        self.joins.push((now, node.name.clone()));
        self.failed.remove(&node.name);
    }

    fn notify_leave(&mut self, now: Instant, node: &Node) {
        self.leaves.push((now, node.clone()));
        if node.state == NodeState::Dead {
            self.failed.insert(node.name.clone(), node.addr);
        } else {
            self.failed.remove(&node.name);
        }
    }
}

#[derive(Debug)]
enum Event {
    Packet {
        to: usize,
        from: SocketAddr,
        payload: Vec<u8>,
    },
    StreamOpen {
        to: usize,
        from: usize,
        id: StreamId,
        payload: Vec<u8>,
        expects_reply: bool,
        deadline: Instant,
    },
    StreamReply {
        to: usize,
        id: StreamId,
        reply: Result<Vec<u8>, StreamError>,
    },
    Timer {
        node: usize,
        at: Instant,
    },
    Reconnect,
}

pub struct SimNode<P: SimPeer> {
    pub peer: P,
    pub crashed: bool,
    /// The timer currently scheduled for this node.
    wake: Option<Instant>,
    pub join_outcomes: Vec<JoinOutcome>,
    /// Everything the peer handed out, with the virtual time it was drained at.
    pub events: Vec<(Instant, P::Event)>,
}

/// The simulated cluster and network.
pub struct Sim<P: SimPeer> {
    rng: StdRng,
    pub start: Instant,
    pub now: Instant,
    pub nodes: Vec<SimNode<P>>,
    by_addr: HashMap<SocketAddr, usize>,
    events: BTreeMap<(Instant, u64), Event>,
    next_event: u64,
    /// Probability that a UDP packet is lost.
    pub loss: f64,
    pub latency: (Duration, Duration),
    /// A fixed one-way delay per link (from, to), instead of a random `latency`.
    pub link_delay: Option<fn(usize, usize) -> Duration>,
    /// Nodes reach each other only within the same group.
    groups: Vec<u32>,
    reconnect_interval: Option<Duration>,
    steps: u64,
    max_steps: u64,
}

/// The seed from `SIM_SEED`, else `default`.
pub fn sim_seed(default: u64) -> u64 {
    std::env::var("SIM_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
}

/// Runs `scenario` with the seed (`SIM_SEED` or `default`); a failure names the seed.
pub fn run_seeded(default: u64, scenario: impl FnOnce(u64)) {
    let seed = sim_seed(default);
    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| scenario(seed))) {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()));
        match message {
            Some(message) => {
                panic!("simulation failed with seed = {seed} (replay: SIM_SEED={seed}): {message}")
            }
            None => resume_unwind(panic),
        }
    }
}

pub fn sim_addr(i: usize) -> SocketAddr {
    let ip = Ipv4Addr::new(10, 1, (i / 250) as u8, (i % 250) as u8 + 1);
    SocketAddr::new(IpAddr::V4(ip), 7946)
}

impl Sim<Memberlist<SimDelegate>> {
    /// `n` memberlists named `node<i>` at [`sim_addr`]`(i)`, each with the config `config`
    /// makes.
    pub fn new(seed: u64, n: usize, config: impl Fn(String, SocketAddr) -> Config) -> Self {
        Sim::with_peers(seed, n, |i, seed, start| {
            let delegate = SimDelegate {
                meta: format!("role=node{i}").into_bytes(),
                ..SimDelegate::default()
            };
            let config = config(format!("node{i}"), sim_addr(i));
            Memberlist::new(config, delegate, seed, start)
        })
    }

    /// Names of nodes node `i` has reported dead (not left) at some point.
    pub fn declared_dead_by(&self, i: usize) -> Vec<String> {
        self.nodes[i]
            .peer
            .delegate()
            .leaves
            .iter()
            .filter(|(_, node)| node.state == NodeState::Dead)
            .map(|(_, node)| node.name.clone())
            .collect()
    }
}

impl<P: SimPeer> Sim<P> {
    /// `n` nodes, node `i` made by `make(i, seed, start)` (named `node<i>`, at
    /// [`sim_addr`]`(i)`), with a seed drawn from the simulation's.
    pub fn with_peers(seed: u64, n: usize, make: impl Fn(usize, u64, Instant) -> P) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let start = Instant::now();
        let nodes = (0..n)
            .map(|i| SimNode {
                peer: make(i, rng.random(), start),
                crashed: false,
                wake: None,
                join_outcomes: Vec::new(),
                events: Vec::new(),
            })
            .collect();
        let mut sim = Sim {
            rng,
            start,
            now: start,
            nodes,
            by_addr: (0..n).map(|i| (sim_addr(i), i)).collect(),
            events: BTreeMap::new(),
            next_event: 0,
            loss: 0.0,
            latency: (Duration::from_millis(1), Duration::from_millis(5)),
            link_delay: None,
            groups: vec![0; n],
            reconnect_interval: None,
            steps: 0,
            max_steps: 20_000_000,
        };
        for i in 0..n {
            sim.flush(i);
        }
        sim
    }

    /// The network of unit tests that check behaviour rather than timing: nothing is lost
    /// and everything arrives at once (still in the order it was sent), so a test's outcome
    /// depends only on the protocol and the seed.
    pub fn lossless(mut self) -> Self {
        self.loss = 0.0;
        self.latency = (Duration::ZERO, Duration::ZERO);
        self
    }

    /// A newcomer, made by `make(i, seed, now)` where `i` is its index (its address is
    /// [`sim_addr`]`(i)`); it does nothing until it is told to join or is contacted.
    pub fn add_peer(&mut self, make: impl FnOnce(usize, u64, Instant) -> P) -> usize {
        let i = self.nodes.len();
        let peer = make(i, self.rng.random(), self.now);
        self.nodes.push(SimNode {
            peer,
            crashed: false,
            wake: None,
            join_outcomes: Vec::new(),
            events: Vec::new(),
        });
        self.by_addr.insert(sim_addr(i), i);
        self.groups.push(0);
        self.flush(i);
        i
    }

    /// Hands node `to` a packet that no peer built (crafted or garbage), as if `from` had sent
    /// it now, and returns what the node made of it; whatever the node sends in answer goes on
    /// the network.
    pub fn inject_packet(
        &mut self,
        to: usize,
        from: SocketAddr,
        payload: &[u8],
    ) -> Result<(), DecodeError> {
        let now = self.now;
        let result = self.nodes[to].peer.handle_packet(now, from, payload);
        self.flush(to);
        result
    }

    /// Node `i` joins through `to` (an address no node has refuses the connection), and the
    /// network runs until the join's outcome is in (at most a minute of virtual time).
    pub fn join_and_wait(&mut self, i: usize, to: SocketAddr) -> JoinOutcome {
        let seen = self.nodes[i].join_outcomes.len();
        let now = self.now;
        self.nodes[i].peer.join(now, vec![to]);
        self.flush(i);
        self.next_join_outcome(i, seen)
    }

    /// Runs the network until node `i` has more than `seen` join outcomes (at most a minute of
    /// virtual time), and returns the first new one.
    pub fn next_join_outcome(&mut self, i: usize, seen: usize) -> JoinOutcome {
        let done = self.run_until_true(Duration::from_secs(60), Duration::from_millis(10), |sim| {
            sim.nodes[i].join_outcomes.len() > seen
        });
        assert!(done.is_some(), "node{i}'s join never finished");
        self.nodes[i].join_outcomes[seen].clone()
    }

    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Node `i` joins through node `j`.
    pub fn join(&mut self, i: usize, j: usize) {
        let now = self.now;
        self.nodes[i].peer.join(now, vec![sim_addr(j)]);
        self.flush(i);
    }

    /// Lets the caller act on node `i` (send an event, a query...) at the current time, then
    /// moves what that produced onto the network.
    pub fn act<R>(&mut self, i: usize, action: impl FnOnce(&mut P, Instant) -> R) -> R {
        let now = self.now;
        let result = action(&mut self.nodes[i].peer, now);
        self.flush(i);
        result
    }

    /// Node `i` stops processing and sending for good.
    pub fn crash(&mut self, i: usize) {
        self.nodes[i].crashed = true;
    }

    /// Splits the nodes: `group(i)` names each node's side.
    pub fn partition(&mut self, group: impl Fn(usize) -> u32) {
        self.groups = (0..self.nodes.len()).map(group).collect();
    }

    pub fn heal(&mut self) {
        self.groups = vec![0; self.nodes.len()];
    }

    /// Emulates Serf's reconnect timer (a Serf-layer feature, not memberlist's): every
    /// `interval`, each live node, with probability failed / alive, joins one random member
    /// it saw fail. `Serf` peers run their own, so this does nothing for them.
    pub fn enable_reconnect(&mut self, interval: Duration) {
        self.reconnect_interval = Some(interval);
        let at = self.now + interval;
        self.schedule(at, Event::Reconnect);
    }

    pub fn is_live(&self, i: usize) -> bool {
        !self.nodes[i].crashed
    }

    fn reachable(&self, from: usize, to: usize) -> bool {
        !self.nodes[to].crashed && self.groups[from] == self.groups[to]
    }

    /// How long a packet or stream from node `from` takes to reach node `to`.
    fn latency(&mut self, from: usize, to: usize) -> Duration {
        if let Some(delay) = self.link_delay {
            return delay(from, to);
        }
        let (low, high) = self.latency;
        if high <= low {
            return low;
        }
        low + Duration::from_nanos(
            self.rng
                .random_range(0..u64::try_from((high - low).as_nanos()).unwrap_or(u64::MAX)),
        )
    }

    fn schedule(&mut self, at: Instant, event: Event) {
        self.next_event += 1;
        self.events.insert((at, self.next_event), event);
    }

    /// Moves node `i`'s outputs onto the network and re-arms its timer.
    fn flush(&mut self, i: usize) {
        if self.nodes[i].crashed {
            return;
        }
        let from = sim_addr(i);
        while let Some(transmit) = self.nodes[i].peer.poll_transmit() {
            let Some(&to) = self.by_addr.get(&transmit.to) else {
                continue;
            };
            if !self.reachable(i, to) || self.rng.random_bool(self.loss.clamp(0.0, 1.0)) {
                continue;
            }
            let at = self.now + self.latency(i, to);
            let payload = transmit.payload;
            self.schedule(at, Event::Packet { to, from, payload });
        }
        while let Some(stream) = self.nodes[i].peer.poll_stream() {
            let target = self.by_addr.get(&stream.to).copied();
            match target {
                Some(to) if self.reachable(i, to) => {
                    let at = self.now + self.latency(i, to);
                    let event = Event::StreamOpen {
                        to,
                        from: i,
                        id: stream.id,
                        payload: stream.payload,
                        expects_reply: stream.expects_reply,
                        deadline: stream.deadline,
                    };
                    self.schedule(at, event);
                }
                // Across a partition the connection hangs until the deadline.
                Some(to) if !self.nodes[to].crashed => {
                    let reply = Err(StreamError::TimedOut(Some((StreamStage::Read, stream.to))));
                    let event = Event::StreamReply {
                        to: i,
                        id: stream.id,
                        reply,
                    };
                    self.schedule(stream.deadline, event);
                }
                _ => {
                    let at = self.now + self.latency(i, target.unwrap_or(i));
                    let reply = Err(StreamError::Refused(stream.to));
                    let event = Event::StreamReply {
                        to: i,
                        id: stream.id,
                        reply,
                    };
                    self.schedule(at, event);
                }
            }
        }
        let now = self.now;
        let node = &mut self.nodes[i];
        while let Some(outcome) = node.peer.poll_join_outcome() {
            node.join_outcomes.push(outcome);
        }
        while let Some(event) = node.peer.poll_event() {
            node.events.push((now, event));
        }
        let wake = self.nodes[i].peer.poll_timeout();
        if wake != self.nodes[i].wake {
            self.nodes[i].wake = wake;
            if let Some(at) = wake {
                let when = at.max(self.now);
                self.schedule(when, Event::Timer { node: i, at });
            }
        }
    }

    /// Processes every event up to `until`, then sets the clock there.
    pub fn run_until(&mut self, until: Instant) {
        while let Some(entry) = self.events.first_entry() {
            if entry.key().0 > until {
                break;
            }
            let ((at, _), event) = entry.remove_entry();
            self.steps += 1;
            assert!(
                self.steps < self.max_steps,
                "runaway simulation at {:?}",
                self.elapsed()
            );
            self.now = at;
            self.process(event);
        }
        self.now = until;
    }

    pub fn run_for(&mut self, duration: Duration) {
        let until = self.now + duration;
        self.run_until(until);
    }

    /// Runs until `done` holds (checked every `check_every`) or `limit` of virtual time has
    /// passed; returns how long it took.
    pub fn run_until_true(
        &mut self,
        limit: Duration,
        check_every: Duration,
        done: impl Fn(&Self) -> bool,
    ) -> Option<Duration> {
        let started = self.now;
        let until = self.now + limit;
        while self.now < until {
            if done(self) {
                return Some(self.now - started);
            }
            let next = (self.now + check_every).min(until);
            self.run_until(next);
        }
        done(self).then(|| self.now - started)
    }

    fn process(&mut self, event: Event) {
        let now = self.now;
        match event {
            Event::Packet { to, from, payload } => {
                if self.nodes[to].crashed {
                    return;
                }
                // Garbage is impossible here: every packet was built by a peer.
                if let Err(error) = self.nodes[to].peer.handle_packet(now, from, &payload) {
                    panic!("node{to} refused a packet from {from}: {error}");
                }
                self.flush(to);
            }
            Event::StreamOpen {
                to,
                from,
                id,
                payload,
                expects_reply,
                deadline,
            } => {
                if !self.reachable(from, to) {
                    let reply = Err(StreamError::Other(format!(
                        "read tcp {}: connection reset by peer",
                        sim_addr(to)
                    )));
                    self.schedule(
                        deadline.max(now),
                        Event::StreamReply {
                            to: from,
                            id,
                            reply,
                        },
                    );
                    return;
                }
                let reply = self.nodes[to]
                    .peer
                    .handle_stream(now, sim_addr(from), &payload);
                self.flush(to);
                if !expects_reply {
                    return;
                }
                let reply = reply
                    .ok_or_else(|| StreamError::Other(format!("read tcp {}: EOF", sim_addr(to))));
                let at = now + self.latency(to, from);
                let (at, reply) = if at > deadline {
                    (
                        deadline.max(now),
                        Err(StreamError::TimedOut(Some((
                            StreamStage::Read,
                            sim_addr(to),
                        )))),
                    )
                } else {
                    (at, reply)
                };
                self.schedule(
                    at,
                    Event::StreamReply {
                        to: from,
                        id,
                        reply,
                    },
                );
            }
            Event::StreamReply { to, id, reply } => {
                if self.nodes[to].crashed {
                    return;
                }
                self.nodes[to].peer.handle_stream_reply(now, id, reply);
                self.flush(to);
            }
            Event::Timer { node, at } => {
                if self.nodes[node].crashed || self.nodes[node].wake != Some(at) {
                    return;
                }
                self.nodes[node].wake = None;
                self.nodes[node].peer.handle_timeout(now);
                let next = self.nodes[node].peer.poll_timeout();
                assert!(
                    next.is_some_and(|t| t > now),
                    "node{node}'s timer stuck at {next:?}"
                );
                self.flush(node);
            }
            Event::Reconnect => {
                for i in 0..self.nodes.len() {
                    if self.nodes[i].crashed {
                        continue;
                    }
                    if self.nodes[i].peer.emulate_reconnect(now, &mut self.rng) {
                        self.flush(i);
                    }
                }
                if let Some(interval) = self.reconnect_interval {
                    self.schedule(now + interval, Event::Reconnect);
                }
            }
        }
    }

    /// Whether every live node lists exactly the live nodes as alive (and no others alive).
    pub fn converged(&self) -> bool {
        let live: Vec<usize> = (0..self.nodes.len()).filter(|&i| self.is_live(i)).collect();
        let names: std::collections::HashSet<String> =
            live.iter().map(|j| format!("node{j}")).collect();
        live.iter().all(|&i| {
            let mut alive = 0;
            for name in self.nodes[i].peer.alive_names() {
                if !names.contains(name) {
                    return false;
                }
                alive += 1;
            }
            alive == names.len()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lan(name: String, addr: SocketAddr) -> Config {
        Config::lan(name, addr)
    }

    /// Every node joins node 0 at once; returns how long convergence took.
    fn started(seed: u64, n: usize) -> Sim<Memberlist<SimDelegate>> {
        let mut sim = Sim::new(seed, n, lan);
        for i in 1..n {
            sim.join(i, 0);
        }
        sim
    }

    #[test]
    fn the_same_seed_gives_the_same_run() {
        let fingerprint = |seed| {
            let mut sim = started(seed, 5);
            sim.loss = 0.1;
            sim.run_for(Duration::from_secs(20));
            (0..5)
                .map(|i| {
                    let stats = sim.nodes[i].peer.stats();
                    (
                        stats.packets_sent,
                        stats.packets_received,
                        stats.streams_out,
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(fingerprint(7), fingerprint(7));
        assert_ne!(fingerprint(7), fingerprint(8));
    }

    #[test]
    fn injected_garbage_is_refused_and_the_cluster_carries_on() {
        run_seeded(3, |seed| {
            let mut sim = started(seed, 3).lossless();
            sim.run_for(Duration::from_secs(2));
            assert!(sim.converged());
            let stranger = sim_addr(50);
            assert_eq!(sim.inject_packet(1, stranger, &[]), Err(DecodeError::Empty));
            assert_eq!(
                sim.inject_packet(1, stranger, &[200, 1, 2]),
                Err(DecodeError::UnknownType(200))
            );
            sim.run_for(Duration::from_secs(10));
            assert!(sim.converged());
            assert_eq!(sim.nodes[1].peer.stats().packets_dropped, 2);

            // A join through an address nobody has is refused, worded as Go words it.
            let outcome = sim.join_and_wait(2, stranger);
            assert_eq!(outcome.joined, 0);
            assert_eq!(
                outcome.errors,
                [(
                    stranger,
                    format!("dial tcp {stranger}: connect: connection refused")
                )]
            );
        });
    }

    #[test]
    fn a_hundred_nodes_joined_to_one_converge() {
        run_seeded(1, |seed| {
            let mut sim = started(seed, 100);
            let took = sim.run_until_true(
                Duration::from_secs(60),
                Duration::from_millis(500),
                Sim::converged,
            );
            let took = took.expect("100 nodes did not converge within 60 s");
            assert!(
                took <= Duration::from_secs(30),
                "converged only after {took:?}"
            );
            for node in &sim.nodes[1..] {
                assert_eq!(node.join_outcomes.len(), 1);
                assert_eq!(node.join_outcomes[0].joined, 1);
            }
        });
    }

    #[test]
    fn a_crashed_node_is_declared_dead_by_every_live_node() {
        run_seeded(2, |seed| {
            let n = 15;
            let mut sim = started(seed, n);
            sim.run_until_true(
                Duration::from_secs(30),
                Duration::from_millis(500),
                Sim::converged,
            )
            .expect("converged");
            sim.crash(7);
            let took =
                sim.run_until_true(Duration::from_secs(60), Duration::from_millis(500), |sim| {
                    (0..n)
                        .filter(|&i| sim.is_live(i))
                        .all(|i| sim.declared_dead_by(i).contains(&"node7".to_owned()))
                });
            let took = took.expect("node7 not declared dead everywhere within 60 s");
            // Suspicion alone takes 4 s to 24 s here (15 nodes); gossip spreads it at once.
            assert!(took <= Duration::from_secs(40), "took {took:?}");
            for i in (0..n).filter(|&i| sim.is_live(i)) {
                let dead = sim.declared_dead_by(i);
                assert_eq!(dead, vec!["node7".to_owned()], "node{i}");
            }
        });
    }

    /// 10 nodes, 10% of UDP packets lost for 10 minutes: nobody is declared dead.
    fn survive_loss(seed: u64, config: fn(String, SocketAddr) -> Config) -> Vec<u32> {
        let n = 10;
        let mut sim = Sim::new(seed, n, config);
        for i in 1..n {
            sim.join(i, 0);
        }
        sim.run_until_true(
            Duration::from_secs(30),
            Duration::from_millis(500),
            Sim::converged,
        )
        .expect("converged");
        sim.loss = 0.1;
        sim.run_for(Duration::from_secs(600));
        for i in 0..n {
            let leaves = &sim.nodes[i].peer.delegate().leaves;
            assert!(leaves.is_empty(), "node{i} saw {leaves:?}");
        }
        sim.loss = 0.0;
        sim.run_for(Duration::from_secs(5));
        assert!(sim.converged());
        (0..n)
            .map(|i| sim.nodes[i].peer.local_node().incarnation)
            .collect()
    }

    #[test]
    fn ten_percent_packet_loss_never_kills_a_live_node() {
        run_seeded(3, |seed| {
            survive_loss(seed, lan);
        });
    }

    #[test]
    fn without_tcp_pings_suspicions_under_loss_are_refuted_in_time() {
        run_seeded(5, |seed| {
            let no_tcp = |name, addr| Config {
                disable_tcp_pings: true,
                ..Config::lan(name, addr)
            };
            let incarnations = survive_loss(seed, no_tcp);
            // Some node was suspected and refuted (raised its incarnation) along the way.
            assert!(incarnations.iter().any(|&inc| inc > 1), "{incarnations:?}");
        });
    }

    #[test]
    fn a_healed_partition_merges_again_through_reconnects() {
        run_seeded(4, |seed| {
            let n = 10;
            let mut sim = started(seed, n);
            sim.run_until_true(
                Duration::from_secs(30),
                Duration::from_millis(500),
                Sim::converged,
            )
            .expect("converged");
            let side = |i: usize| u32::from(i >= n / 2);
            sim.partition(side);
            let split =
                sim.run_until_true(Duration::from_secs(120), Duration::from_secs(1), |sim| {
                    (0..n).all(|i| {
                        let failed = &sim.nodes[i].peer.delegate().failed;
                        (0..n)
                            .filter(|&j| side(j) != side(i))
                            .all(|j| failed.contains_key(&format!("node{j}")))
                    })
                });
            split.expect("the two halves did not declare each other dead");
            // Long enough for memberlist to forget the dead (gossip_to_the_dead_time).
            sim.run_for(Duration::from_secs(60));
            sim.heal();
            sim.enable_reconnect(Duration::from_secs(30));
            let merged = sim.run_until_true(
                Duration::from_secs(300),
                Duration::from_secs(1),
                Sim::converged,
            );
            merged.expect("the halves did not merge within 5 minutes of healing");
        });
    }
}
