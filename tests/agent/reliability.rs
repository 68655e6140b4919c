//! A burst of user events in a cluster of our agents: none lost, none handed twice.

use std::collections::BTreeMap;
use std::time::Duration;

use serf_tests::cluster::{GoNode, members, wait_statuses};
use serf_tests::{MEMRESPONSE_CONFIG, Node, RawRpc, eventually, field, map, next_net, serf_bin};

const NODES: u8 = 10;
const EVENTS: usize = 1000;

#[test]
fn a_burst_of_a_thousand_events_reaches_every_plugin_exactly_once() {
    let net = next_net();
    let seed = Node::builder(net, 1)
        .config(MEMRESPONSE_CONFIG)
        .plugin("memresponse", "memresponse")
        .start();
    let join = format!("-join={}", seed.bind);
    let mut nodes = vec![seed];
    for n in 2..=NODES {
        nodes.push(
            Node::builder(net, n)
                .config(MEMRESPONSE_CONFIG)
                .plugin("memresponse", "memresponse")
                .arg(&join)
                .start(),
        );
    }
    for node in &nodes {
        let converged = eventually(Duration::from_secs(75), || {
            members(&serf_bin(), node.rpc).filter(|seen| {
                seen.len() == usize::from(NODES) && seen.values().all(|m| m.status == "alive")
            })
        });
        assert!(converged.is_some(), "{} never saw all alive", node.name);
    }

    fire_burst(&nodes[0], EVENTS);

    let expected: BTreeMap<String, usize> = (0..EVENTS).map(|k| (format!("e{k}"), 1)).collect();
    let count = |node: &Node| -> BTreeMap<String, usize> {
        let text =
            std::fs::read_to_string(node.dir.path().join("data/mem.txt")).unwrap_or_default();
        let mut seen = BTreeMap::new();
        for line in text.lines() {
            *seen.entry(line.to_owned()).or_insert(0) += 1;
        }
        seen
    };
    for node in &nodes {
        let all = eventually(Duration::from_secs(120), || {
            let seen = count(node);
            (seen.len() == EVENTS).then_some(())
        });
        let seen = count(node);
        if all.is_none() {
            let missing: Vec<String> = (0..EVENTS)
                .map(|k| format!("e{k}"))
                .filter(|name| !seen.contains_key(name))
                .collect();
            panic!(
                "{} handled {} of {EVENTS} events; missing {missing:?}\n{}\n{}",
                node.name,
                seen.len(),
                node.info(),
                node.log()
            );
        }
    }
    // Late duplicates would show up after the last new event: give them a moment.
    std::thread::sleep(Duration::from_secs(2));
    for node in &nodes {
        assert_eq!(
            count(node),
            expected,
            "{} handled each event once",
            node.name
        );
        let info = node.info();
        assert_eq!(
            info["serf"]["events_too_old"], "0",
            "{}: no event fell out of the window",
            node.name
        );
    }
}

/// Fires `count` user events `memresponse` with payloads `e0`, `e1`, … at `node`, as fast as
/// one connection allows: every request is written before any reply is read.
fn fire_burst(node: &Node, count: usize) {
    let mut rpc = RawRpc::handshake(node.rpc);
    for k in 0..count {
        let body = map(&[
            ("Name", "memresponse".into()),
            ("Payload", rmpv::Value::Binary(format!("e{k}").into_bytes())),
            ("Coalesce", false.into()),
        ]);
        rpc.request("event", 1 + k as u64, Some(body));
    }
    for _ in 0..count {
        let header = rpc.read().expect("event reply");
        assert_eq!(field(&header, "Error"), Some(&rmpv::Value::from("")));
    }
}

/// After more than 512 events, our push/pull states carry the older part of the event window
/// under a key of their own (`OlderEvents`). Serf 0.9.4 skips it: a Go agent joins ours, and
/// ours joins a Go agent (the two directions of the push/pull exchange), without an error.
#[test]
fn serf_agents_take_our_push_pull_state_after_a_long_burst() {
    let net = next_net();
    let ours = Node::builder(net, 1).start();
    fire_burst(&ours, 600);
    let go_a = GoNode::start(net, 2, "go-a", &[&format!("-join={}", ours.bind)]);
    let go_b = GoNode::start(net, 3, "go-b", &[]);
    let joined = ours.cli(&["join", &go_b.bind.to_string()]);
    assert!(
        joined.status.success(),
        "join: {}",
        String::from_utf8_lossy(&joined.stderr)
    );
    let all = [("node1", "alive"), ("go-a", "alive"), ("go-b", "alive")];
    for rpc in [ours.rpc, go_a.rpc, go_b.rpc] {
        wait_statuses(rpc, &all, Duration::from_secs(30));
    }
    for go in [&go_a, &go_b] {
        let log = go.log();
        assert!(!log.contains("[ERR]"), "{}: {log}", go.name);
    }
}
