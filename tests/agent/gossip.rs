//! Mixed clusters of Serf 0.9.4 agents and ours on loopback: joins both ways, failure
//! detection both ways, graceful leaves, encryption.

use std::time::Duration;

use serf_tests::cluster::{Agent, GoNode, KEY, OTHER_KEY, members, wait_statuses};
use serf_tests::{Node, go_serf, next_net, serf_bin, stdout_ok};

/// Joins made back to back can leave one agent without news of another until the next
/// push/pull (Serf's agents behave the same, docs/benchmarks.md): up to twice the 30 s interval.
const CONVERGE: Duration = Duration::from_secs(75);
const DETECT: Duration = Duration::from_secs(45);

fn join_arg(agent: &dyn Agent) -> String {
    format!("-join={}", agent.bind())
}

/// Every agent lists every name as alive, through both CLIs.
fn assert_all_alive(agents: &[&dyn Agent]) {
    let expected: Vec<(&str, &str)> = agents.iter().map(|a| (a.name(), "alive")).collect();
    for agent in agents {
        wait_statuses(agent.rpc(), &expected, CONVERGE);
    }
}

#[test]
fn our_agent_joins_serf_and_serf_joins_ours_with_tags_in_both_clis() {
    let net = next_net();
    let go = GoNode::start(net, 1, "go1", &["-tag", "role=web", "-tag", "dc=east"]);
    let ours = Node::builder(net, 2)
        .arg("-tag=role=db")
        .arg(&join_arg(&go))
        .start();
    let go3 = GoNode::start(net, 3, "go3", &[&join_arg(&ours)]);
    assert_all_alive(&[&go, &ours, &go3]);
    for agent in [&go as &dyn Agent, &ours, &go3] {
        for cli in [serf_bin(), go_serf()] {
            let seen = members(&cli, agent.rpc()).expect("members");
            assert_eq!(seen["go1"].tags["role"], "web", "{seen:?}");
            assert_eq!(seen["go1"].tags["dc"], "east", "{seen:?}");
            assert_eq!(seen["node2"].tags["role"], "db", "{seen:?}");
            assert_eq!(seen["node2"].addr, ours.bind.to_string(), "{seen:?}");
            assert_eq!(seen["go1"].addr, go.bind.to_string(), "{seen:?}");
        }
    }
}

#[test]
fn serf_join_command_joins_a_running_agent_both_ways() {
    let net = next_net();
    let go = GoNode::start(net, 1, "go1", &[]);
    let ours = Node::builder(net, 2).start();
    let text = stdout_ok(&ours.cli(&["join", &go.bind.to_string()]));
    assert!(
        text.contains("Successfully joined cluster by contacting 1 nodes."),
        "{text}"
    );
    assert_all_alive(&[&go, &ours]);
    let ours3 = Node::builder(net, 3).start();
    // Serf's CLI asks our agent to join over RPC.
    let text = stdout_ok(&ours3.go_cli(&["join", &ours.bind.to_string()]));
    assert!(
        text.contains("Successfully joined cluster by contacting 1 nodes."),
        "{text}"
    );
    assert_all_alive(&[&go, &ours, &ours3]);
}

#[test]
fn mixed_cluster_of_three_serf_and_three_of_ours_converges() {
    let net = next_net();
    let go1 = GoNode::start(net, 1, "go1", &[]);
    let ours2 = Node::builder(net, 2).arg(&join_arg(&go1)).start();
    let go3 = GoNode::start(net, 3, "go3", &[&join_arg(&ours2)]);
    let ours4 = Node::builder(net, 4).arg(&join_arg(&go3)).start();
    let go5 = GoNode::start(net, 5, "go5", &[&join_arg(&ours4)]);
    let ours6 = Node::builder(net, 6).arg(&join_arg(&go1)).start();
    assert_all_alive(&[&go1, &ours2, &go3, &ours4, &go5, &ours6]);
}

#[test]
fn kill_9_is_seen_as_failed_by_the_other_kind() {
    let net = next_net();
    let go1 = GoNode::start(net, 1, "go1", &[]);
    let ours2 = Node::builder(net, 2).arg(&join_arg(&go1)).start();
    let mut ours3 = Node::builder(net, 3).arg(&join_arg(&go1)).start();
    let mut go4 = GoNode::start(net, 4, "go4", &[&join_arg(&ours2)]);
    assert_all_alive(&[&go1, &ours2, &ours3, &go4]);

    go4.kill_9();
    for agent in [&go1 as &dyn Agent, &ours2, &ours3] {
        wait_statuses(
            agent.rpc(),
            &[("go4", "failed"), ("node2", "alive")],
            DETECT,
        );
    }
    ours3.kill_9();
    for agent in [&go1 as &dyn Agent, &ours2] {
        wait_statuses(
            agent.rpc(),
            &[("node3", "failed"), ("go1", "alive"), ("node2", "alive")],
            DETECT,
        );
    }
}

#[test]
fn graceful_leave_shows_as_left_on_the_other_kind() {
    let net = next_net();
    let mut go1 = GoNode::start(net, 1, "go1", &[]);
    let mut ours2 = Node::builder(net, 2).arg(&join_arg(&go1)).start();
    let ours3 = Node::builder(net, 3).arg(&join_arg(&go1)).start();
    let go4 = GoNode::start(net, 4, "go4", &[&join_arg(&ours3)]);
    assert_all_alive(&[&go1, &ours2, &ours3, &go4]);

    // Ours leaves through the RPC, as `serf leave` asks.
    stdout_ok(&ours2.cli(&["leave"]));
    assert!(
        ours2
            .wait_exit(Duration::from_secs(20))
            .is_some_and(|s| s.success())
    );
    for agent in [&go1 as &dyn Agent, &ours3, &go4] {
        wait_statuses(agent.rpc(), &[("node2", "left")], DETECT);
    }
    // Serf's agent leaves on SIGINT.
    go1.signal("INT");
    for agent in [&ours3 as &dyn Agent, &go4] {
        wait_statuses(agent.rpc(), &[("go1", "left"), ("node3", "alive")], DETECT);
    }
}

#[test]
fn encrypted_mixed_cluster_works_and_a_wrong_key_cannot_join() {
    let net = next_net();
    let encrypt = format!("-encrypt={KEY}");
    let go1 = GoNode::start(net, 1, "go1", &[&encrypt]);
    let ours2 = Node::builder(net, 2)
        .arg(&encrypt)
        .arg(&join_arg(&go1))
        .start();
    let mut go3 = GoNode::start(net, 3, "go3", &[&encrypt, &join_arg(&ours2)]);
    let ours4 = Node::builder(net, 4)
        .arg(&encrypt)
        .arg(&join_arg(&go3))
        .start();
    assert_all_alive(&[&go1, &ours2, &go3, &ours4]);
    let info = ours2.info();
    assert_eq!(info["serf"]["encrypted"], "true", "{info}");

    // Our agent with the wrong key cannot join either kind, and nobody lists it.
    let mut intruder = Node::builder(net, 5)
        .arg(&format!("-encrypt={OTHER_KEY}"))
        .arg(&join_arg(&go1))
        .spawn();
    let status = intruder.wait_exit(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| !s.success()),
        "a wrong key must fail the start-up join: {}",
        Agent::log(&intruder)
    );
    let intruder_go = GoNode::start(net, 6, "go6", &[&format!("-encrypt={OTHER_KEY}")]);
    let refused = intruder_go.rpc;
    let output = serf_tests::run(
        std::process::Command::new(go_serf())
            .arg("join")
            .arg(format!("-rpc-addr={refused}"))
            .arg(ours2.bind.to_string()),
        Duration::from_secs(30),
    );
    assert!(!output.status.success(), "{output:?}");
    // A plaintext agent cannot join either.
    let plain = Node::builder(net, 7).start();
    let output = plain.cli(&["join", &ours4.bind.to_string()]);
    assert!(!output.status.success(), "{output:?}");

    assert_all_alive(&[&go1, &ours2, &go3, &ours4]);
    for agent in [&go1 as &dyn Agent, &ours2, &go3, &ours4] {
        let seen = members(&serf_bin(), agent.rpc()).expect("members");
        assert_eq!(seen.len(), 4, "{seen:?}");
    }

    // Failure detection works encrypted too.
    go3.kill_9();
    for agent in [&go1 as &dyn Agent, &ours2, &ours4] {
        wait_statuses(agent.rpc(), &[("go3", "failed")], DETECT);
    }
}

#[test]
fn events_and_queries_cross_between_serf_and_our_plugins() {
    use serf_tests::{MEMRESPONSE_CONFIG, UPCASE_CONFIG, eventually};

    let net = next_net();
    let go = GoNode::start(net, 1, "go1", &["-tag", "role=web"]);
    let ours = Node::builder(net, 2)
        .config(MEMRESPONSE_CONFIG)
        .config(UPCASE_CONFIG)
        .plugin("memresponse", "memresponse")
        .plugin("upcase", "upcase")
        .arg(&join_arg(&go))
        .start();
    assert_all_alive(&[&go, &ours]);

    // A user event fired at Serf's agent reaches our plugin, once, and one fired at ours too.
    let go_rpc = format!("-rpc-addr={}", go.rpc);
    stdout_ok(&serf_tests::run(
        std::process::Command::new(go_serf()).args(["event", &go_rpc, "memresponse", "from-go"]),
        Duration::from_secs(20),
    ));
    let file = ours.dir.path().join("data/mem.txt");
    // Both agents coalesce user events of one name: the second waits for the first to land.
    let first = eventually(Duration::from_secs(20), || {
        std::fs::read_to_string(&file)
            .ok()
            .filter(|text| !text.is_empty())
    });
    assert!(first.is_some(), "from-go never arrived: {}", ours.log());
    stdout_ok(&ours.cli(&["event", "memresponse", "from-ours"]));
    let written = eventually(Duration::from_secs(20), || {
        std::fs::read_to_string(&file)
            .ok()
            .filter(|text| text.lines().count() >= 2)
    });
    let mut lines: Vec<String> = written
        .unwrap_or_else(|| panic!("mem.txt never had both events: {}", ours.log()))
        .lines()
        .map(String::from)
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    lines.sort();
    assert_eq!(
        lines,
        ["from-go", "from-ours"],
        "each event handled exactly once"
    );

    // A query sent through Serf's agent is acked by both nodes and answered by our plugin;
    // a node filter on Serf's node leaves our plugin out.
    let output = serf_tests::run(
        std::process::Command::new(go_serf()).args([
            "query",
            &go_rpc,
            "-timeout=2s",
            "upcase",
            "foo",
        ]),
        Duration::from_secs(20),
    );
    let text = stdout_ok(&output);
    for needle in [
        "Ack from 'go1'",
        "Ack from 'node2'",
        "Response from 'node2': FOO",
        "Total Acks: 2",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from {text}");
    }
    let text = stdout_ok(&ours.cli(&["query", "-timeout=2s", "-node=go1", "upcase", "foo"]));
    assert!(text.contains("Ack from 'go1'"), "{text}");
    assert!(text.contains("Total Acks: 1"), "{text}");
    assert!(text.contains("Total Responses: 0"), "{text}");
}
