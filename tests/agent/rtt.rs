//! `serf rtt` and the RPC `get-coordinate` in a mixed cluster: coordinates travel in acks both
//! ways, and both CLIs read them from either kind of agent.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serf_tests::cluster::{Agent, GoNode, wait_statuses};
use serf_tests::{Node, eventually, go_serf, next_net, run, serf_bin};

const CONVERGE: Duration = Duration::from_secs(75);
/// Every node probes each of its two peers at least once in a few seconds.
const PROBED: Duration = Duration::from_secs(30);

fn rtt(cli: &Path, agent: &dyn Agent, nodes: &[&str]) -> Output {
    run(
        std::process::Command::new(cli)
            .arg("rtt")
            .arg(format!("-rpc-addr={}", agent.rpc()))
            .args(nodes),
        Duration::from_secs(20),
    )
}

/// The estimate `cli` prints for `a` and `b` (`b` defaults to the agent), once it has one.
fn wait_estimate(cli: &Path, agent: &dyn Agent, a: &str, b: Option<&str>) -> f64 {
    let nodes: Vec<&str> = [Some(a), b].into_iter().flatten().collect();
    let prefix = format!("Estimated {a} <-> {} rtt: ", b.unwrap_or(agent.name()));
    let mut last = String::new();
    let estimate = eventually(PROBED, || {
        let output = rtt(cli, agent, &nodes);
        last = format!("{output:?}");
        if !output.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let millis = text.trim_end().strip_prefix(&prefix)?.strip_suffix(" ms")?;
        millis.parse::<f64>().ok()
    });
    let estimate = estimate.unwrap_or_else(|| {
        panic!(
            "{} rtt {nodes:?} against {} never printed an estimate; last: {last}\n{}",
            cli.display(),
            agent.name(),
            agent.log()
        )
    });
    assert!(
        estimate.is_finite() && estimate > 0.0 && estimate < 1000.0,
        "{a} <-> {b:?}: {estimate} ms"
    );
    estimate
}

#[test]
fn rtt_estimates_come_from_coordinates_exchanged_with_serf() {
    let net = next_net();
    let go = GoNode::start(net, 1, "go1", &[]);
    let ours = Node::builder(net, 2)
        .arg(&format!("-join={}", go.bind))
        .start();
    let ours3 = Node::builder(net, 3)
        .arg(&format!("-join={}", go.bind))
        .start();
    let everyone = [("go1", "alive"), ("node2", "alive"), ("node3", "alive")];
    wait_statuses(ours.rpc, &everyone, CONVERGE);
    wait_statuses(go.rpc, &everyone, CONVERGE);

    // Our agent learned coordinates from Serf's acks and from ours; both CLIs read them.
    for cli in [serf_bin(), go_serf()] {
        wait_estimate(&cli, &ours, "go1", None);
        wait_estimate(&cli, &ours, "node3", None);
        wait_estimate(&cli, &ours, "go1", Some("node3"));
        wait_estimate(&cli, &ours, "node2", Some("node2"));
    }
    // Serf's agent decoded the coordinates in our acks, and our other agent has Serf's.
    for cli in [serf_bin(), go_serf()] {
        wait_estimate(&cli, &go, "node2", None);
        wait_estimate(&cli, &go, "node3", Some("node2"));
        wait_estimate(&cli, &ours3, "go1", None);
    }
}

#[test]
fn rtt_errors_read_like_serf() {
    let node = Node::builder(next_net(), 1).start();
    for cli in [serf_bin(), go_serf()] {
        // Before any probe the agent still knows its own coordinate.
        let output = rtt(&cli, &node, &["node1"]);
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(output.status.success(), "{output:?}");
        assert_eq!(text, "Estimated node1 <-> node1 rtt: 0.020 ms\n");

        let output = rtt(&cli, &node, &["nosuch"]);
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            "Could not find a coordinate for node \"nosuch\"\n"
        );
        let output = rtt(&cli, &node, &["node1", "nosuch"]);
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            "Could not find a coordinate for node \"nosuch\"\n"
        );
        for nodes in [&[][..], &["a", "b", "c"]] {
            let output = rtt(&cli, &node, nodes);
            assert_eq!(output.status.code(), Some(1), "{output:?}");
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            assert!(
                text.starts_with("One or two node names must be specified\n\nUsage: serf rtt"),
                "{text}"
            );
        }
    }
    // Serf connects first, so a missing agent wins over missing arguments.
    let gone = format!("-rpc-addr={}", "127.0.0.1:1");
    for cli in [serf_bin(), go_serf()] {
        let output = run(
            std::process::Command::new(&cli).arg("rtt").arg(&gone),
            Duration::from_secs(20),
        );
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            text.starts_with("Error connecting to Serf agent: "),
            "{text}"
        );
    }
}
