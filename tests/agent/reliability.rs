//! A burst of user events in a cluster of our agents: none lost, none handed twice.

use std::collections::BTreeMap;
use std::time::Duration;

use serf_tests::cluster::members;
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

    // Fired as fast as one connection allows: every request is written before any reply is read.
    let mut rpc = RawRpc::handshake(nodes[0].rpc);
    for k in 0..EVENTS {
        let body = map(&[
            ("Name", "memresponse".into()),
            ("Payload", rmpv::Value::Binary(format!("e{k}").into_bytes())),
            ("Coalesce", false.into()),
        ]);
        rpc.request("event", 1 + k as u64, Some(body));
    }
    for _ in 0..EVENTS {
        let header = rpc.read().expect("event reply");
        assert_eq!(field(&header, "Error"), Some(&rmpv::Value::from("")));
    }

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
        assert!(
            all.is_some(),
            "{} handled {} of {EVENTS} events: {}",
            node.name,
            seen.len(),
            node.log()
        );
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
