//! The simulator (`sim`) driving full [`Serf`] nodes: Serf's own layer (intents, user events,
//! push/pull state, its reconnect timer) over memberlist, on the same virtual network.

use std::net::SocketAddr;
use std::time::Instant;

use crate::{self as serf, Event, MemberEventKind, MemberStatus, Serf, UserEvent};
use serf_gossip::sim::{Sim, SimPeer, sim_addr};
use serf_gossip::{DecodeError, JoinOutcome, StreamError, StreamId, StreamRequest, Transmit};

impl SimPeer for Serf {
    type Event = Event;

    /// Joins as the agent does by default: without replaying older user events.
    fn join(&mut self, now: Instant, addrs: Vec<SocketAddr>) {
        Serf::join(self, now, addrs, false);
    }

    fn handle_packet(
        &mut self,
        now: Instant,
        from: SocketAddr,
        payload: &[u8],
    ) -> Result<(), DecodeError> {
        Serf::handle_packet(self, now, from, payload)
    }

    fn handle_stream(&mut self, now: Instant, from: SocketAddr, message: &[u8]) -> Option<Vec<u8>> {
        Serf::handle_stream(self, now, from, message)
    }

    fn handle_stream_reply(
        &mut self,
        now: Instant,
        id: StreamId,
        reply: Result<Vec<u8>, StreamError>,
    ) {
        Serf::handle_stream_reply(self, now, id, reply);
    }

    fn handle_timeout(&mut self, now: Instant) {
        Serf::handle_timeout(self, now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Serf::poll_timeout(self)
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        Serf::poll_transmit(self)
    }

    fn poll_stream(&mut self) -> Option<StreamRequest> {
        Serf::poll_stream(self)
    }

    fn poll_join_outcome(&mut self) -> Option<JoinOutcome> {
        Serf::poll_join_outcome(self)
    }

    fn poll_event(&mut self) -> Option<Event> {
        Serf::poll_event(self)
    }

    fn alive_names(&self) -> impl Iterator<Item = &str> {
        self.members()
            .filter(|member| member.status == MemberStatus::Alive)
            .map(|member| member.name.as_str())
    }
}

/// What the simulator offers on top of [`Sim`] when its nodes are full Serf nodes.
pub trait SerfSim {
    /// `n` Serf nodes named `node<i>` at [`sim_addr`]`(i)` with the tag `role=node<i>`, each
    /// with the config `config` makes from its name, address and tags.
    fn serf(
        seed: u64,
        n: usize,
        config: impl Fn(String, SocketAddr, serf::Tags) -> serf::Config,
    ) -> Self;

    /// The user events named `name` node `i` handed out, with when.
    fn user_events(&self, i: usize, name: &str) -> Vec<(Instant, &UserEvent)>;

    /// Whether node `i` handed out a `member-failed` event about `name`.
    fn saw_fail(&self, i: usize, name: &str) -> bool;
}

impl SerfSim for Sim<Serf> {
    /// `n` Serf nodes named `node<i>` at [`sim_addr`]`(i)` with the tag `role=node<i>`, each
    /// with the config `config` makes from its name, address and tags.
    fn serf(
        seed: u64,
        n: usize,
        config: impl Fn(String, SocketAddr, serf::Tags) -> serf::Config,
    ) -> Self {
        Sim::with_peers(seed, n, |i, seed, start| {
            let tags = serf::Tags::from([("role".to_owned(), format!("node{i}"))]);
            Serf::new(config(format!("node{i}"), sim_addr(i), tags), seed, start)
        })
    }

    /// The user events named `name` node `i` handed out, with when.
    fn user_events(&self, i: usize, name: &str) -> Vec<(Instant, &UserEvent)> {
        self.nodes[i]
            .events
            .iter()
            .filter_map(|(at, event)| match event {
                Event::User(user) if user.name == name => Some((*at, user)),
                _ => None,
            })
            .collect()
    }

    /// Whether node `i` handed out a `member-failed` event about `name`.
    fn saw_fail(&self, i: usize, name: &str) -> bool {
        self.nodes[i].events.iter().any(|(_, event)| {
            matches!(event, Event::Member(member)
                if member.kind == MemberEventKind::Failed
                    && member.members.iter().any(|m| m.name == name))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::LamportTime;
    use serf_gossip::sim::run_seeded;

    /// Serf's LAN settings, coalescing off (the library default).
    fn lan(name: String, addr: SocketAddr, tags: serf::Tags) -> serf::Config {
        serf::Config::lan(name, addr, tags)
    }

    /// `n` Serf nodes, all joined to node 0 and converged.
    fn joined(seed: u64, n: usize) -> Sim<Serf> {
        let mut sim = Sim::serf(seed, n, lan);
        for i in 1..n {
            sim.join(i, 0);
        }
        sim.run_until_true(
            Duration::from_secs(60),
            Duration::from_millis(500),
            Sim::converged,
        )
        .unwrap_or_else(|| panic!("{n} Serf nodes did not converge within 60 s"));
        for (i, node) in sim.nodes.iter().enumerate().skip(1) {
            assert_eq!(node.join_outcomes.len(), 1, "node{i}");
            assert_eq!(node.join_outcomes[0].joined, 1, "node{i}");
        }
        sim
    }

    /// Node `i` has handed out exactly one event `name` sent at `ltime` with `payload`.
    fn assert_once(sim: &Sim<Serf>, i: usize, name: &str, ltime: LamportTime, payload: &[u8]) {
        let events = sim.user_events(i, name);
        assert_eq!(events.len(), 1, "node{i} got {events:?}");
        let (_, event) = events[0];
        assert_eq!(
            (event.ltime, &event.payload[..]),
            (ltime, payload),
            "node{i}"
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_serf_run() {
        let fingerprint = |seed| {
            let mut sim = joined(seed, 5);
            sim.loss = 0.1;
            sim.act(2, |serf, now| serf.user_event(now, "deploy", b"", false))
                .expect("the event is sent");
            sim.run_for(Duration::from_secs(20));
            (0..5)
                .map(|i| {
                    let stats = sim.nodes[i].peer.gossip_stats();
                    let times: Vec<Duration> = sim.nodes[i]
                        .events
                        .iter()
                        .map(|(at, _)| *at - sim.start)
                        .collect();
                    (
                        stats.packets_sent,
                        stats.packets_received,
                        stats.streams_out,
                        times,
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(fingerprint(7), fingerprint(7));
        assert_ne!(fingerprint(7), fingerprint(8));
    }

    #[test]
    fn a_user_event_reaches_all_of_a_hundred_nodes_exactly_once() {
        run_seeded(11, |seed| {
            let n = 100;
            let mut sim = joined(seed, n);
            let sender = 37;
            let ltime = sim
                .act(sender, |serf, now| {
                    serf.user_event(now, "deploy", b"v42", false)
                })
                .expect("the event is sent");
            let took =
                sim.run_until_true(Duration::from_secs(30), Duration::from_millis(100), |sim| {
                    (0..n).all(|i| !sim.user_events(i, "deploy").is_empty())
                });
            let took = took.expect("the event did not reach every node within 30 s");
            assert!(took <= Duration::from_secs(5), "gossip took {took:?}");
            let quiet =
                sim.run_until_true(Duration::from_secs(30), Duration::from_millis(100), |sim| {
                    (0..n).all(|i| sim.nodes[i].peer.stats().event_queue == 0)
                });
            quiet.expect("the event was still being gossiped 30 s later");
            // Push/pull replays the recent events (every 90 s per node at 100 nodes, staggered):
            // whoever takes part in one sees the event again and must not hand it out twice.
            let push_pulls = |sim: &Sim<Serf>| -> u64 {
                (0..n)
                    .map(|i| sim.nodes[i].peer.gossip_stats().streams_out)
                    .sum()
            };
            let before = push_pulls(&sim);
            let replayed = sim.run_until_true(
                Duration::from_secs(120),
                Duration::from_millis(500),
                |sim| push_pulls(sim) - before >= 10,
            );
            assert!(
                replayed.is_some(),
                "only {} push/pulls in 120 s",
                push_pulls(&sim) - before
            );
            for i in 0..n {
                assert_once(&sim, i, "deploy", ltime, b"v42");
                let counters = sim.nodes[i].peer.stats().counters;
                assert_eq!(counters.events_too_old, 0, "node{i}");
            }
        });
    }

    /// Node `cut` is alone on its side while node 0 sends `burst` events, until every other
    /// node has them and nothing is left to gossip; then the partition heals. `until_failed`
    /// keeps the partition until each side has declared the other failed (the heal then goes
    /// through Serf's reconnect, a join); without it, the partition is too short for that
    /// (the heal goes through the periodic push/pull).
    fn cut_off_during_events(seed: u64, until_failed: bool, burst: usize) {
        let n = 10;
        let cut = 6;
        let mut sim = joined(seed, n);
        let side = |i: usize| u32::from(i == cut);
        sim.partition(side);
        let sent: Vec<(LamportTime, Vec<u8>)> = (0..burst)
            .map(|k| {
                let payload = format!("v{k}").into_bytes();
                let ltime = sim
                    .act(0, |serf, now| {
                        serf.user_event(now, "deploy", &payload, false)
                    })
                    .expect("the event is sent");
                (ltime, payload)
            })
            .collect();
        let others = || (0..n).filter(|&i| i != cut);
        let gossiped =
            sim.run_until_true(Duration::from_secs(60), Duration::from_millis(100), |sim| {
                others().all(|i| {
                    sim.user_events(i, "deploy").len() == burst
                        && sim.nodes[i].peer.stats().event_queue == 0
                })
            });
        gossiped.expect("the events were not gossiped to the connected nodes within 60 s");
        if until_failed {
            let split =
                sim.run_until_true(Duration::from_secs(120), Duration::from_secs(1), |sim| {
                    let cut_name = format!("node{cut}");
                    others().all(|i| {
                        sim.saw_fail(i, &cut_name) && sim.saw_fail(cut, &format!("node{i}"))
                    })
                });
            split.expect("the two sides did not declare each other failed within 120 s");
        }
        assert!(sim.user_events(cut, "deploy").is_empty());
        // Nothing queues the events for gossip any more: only push/pull can bring them now.
        for i in 0..n {
            assert_eq!(sim.nodes[i].peer.stats().event_queue, 0, "node{i}");
        }
        let healed_at = sim.now;
        sim.heal();
        // Push/pull runs every 30 s (Serf's reconnect too); allow a few rounds.
        let caught_up =
            sim.run_until_true(Duration::from_secs(150), Duration::from_secs(1), |sim| {
                sim.user_events(cut, "deploy").len() >= burst
            });
        caught_up.unwrap_or_else(|| {
            panic!(
                "the cut-off node got {} of {burst} events within 150 s of the heal",
                sim.user_events(cut, "deploy").len()
            )
        });
        sim.run_until_true(
            Duration::from_secs(120),
            Duration::from_secs(1),
            Sim::converged,
        )
        .expect("the cluster did not converge again within 120 s");
        sim.run_for(Duration::from_secs(60));
        for i in 0..n {
            let mut got: Vec<(LamportTime, &[u8])> = sim
                .user_events(i, "deploy")
                .into_iter()
                .map(|(_, event)| (event.ltime, &event.payload[..]))
                .collect();
            if i == cut {
                assert!(got.is_sorted(), "node{cut} caught up in Lamport order");
            }
            // Gossip hands out the newest events first.
            got.sort();
            let want: Vec<(LamportTime, &[u8])> =
                sent.iter().map(|(ltime, p)| (*ltime, &p[..])).collect();
            assert_eq!(got, want, "node{i}: each event once");
            assert_eq!(
                sim.nodes[i].peer.stats().counters.events_too_old,
                0,
                "node{i}"
            );
        }
        assert!(sim.user_events(cut, "deploy")[0].0 > healed_at);
        if !until_failed {
            for i in others() {
                assert!(!sim.saw_fail(i, &format!("node{cut}")), "node{i}");
            }
        }
    }

    #[test]
    fn a_node_cut_off_during_an_event_receives_it_after_the_partition_heals() {
        run_seeded(12, |seed| cut_off_during_events(seed, true, 1));
    }

    #[test]
    fn a_node_cut_off_briefly_during_an_event_receives_it_through_push_pull() {
        run_seeded(13, |seed| cut_off_during_events(seed, false, 1));
    }

    /// Serf's push/pull carries only the last 512 Lamport times of events; ours also carries
    /// the older rest of the window, so a node that missed a whole burst of 1,000 gets all of
    /// it, and in Lamport order.
    #[test]
    fn a_node_cut_off_during_a_burst_of_a_thousand_events_receives_them_all_after_the_heal() {
        run_seeded(14, |seed| cut_off_during_events(seed, true, 1000));
    }
}
