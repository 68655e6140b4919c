//! `serf keys` across mixed clusters of Serf 0.9.4 agents and ours, through both CLIs; keyring
//! files; and name-conflict resolution between the two kinds.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serf_tests::cluster::{Agent, GoNode, KEY, wait_statuses};
use serf_tests::{Node, eventually, go_serf, next_net, run, serf_bin};

const CONVERGE: Duration = Duration::from_secs(75);

/// Keys the rotations move through, after [`KEY`].
const KEY_B: &str = "ERESEhISEhISEhISEhISEhISEhISEhISEhISEhISEhI=";
const KEY_C: &str = "IiIiIiIiIiIiIiIiIiIiIg==";
const KEY_D: &str = "MzMzMzMzMzMzMzMzMzMzMzMzMzMzMzMz";

fn join_arg(agent: &dyn Agent) -> String {
    format!("-join={}", agent.bind())
}

/// `serf keys ARGS` from `cli` against the agent at `rpc`.
fn keys(cli: &Path, rpc: SocketAddr, args: &[&str]) -> Output {
    run(
        Command::new(cli)
            .arg("keys")
            .arg(format!("-rpc-addr={rpc}"))
            .args(args),
        Duration::from_secs(30),
    )
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs a key command and asserts Serf's success line and exit code.
fn key_step(cli: &Path, rpc: SocketAddr, flag: &str, key: &str, success: &str) {
    let output = keys(cli, rpc, &[&format!("-{flag}={key}")]);
    let stdout = text(&output);
    assert!(
        output.status.success() && stdout.contains(success),
        "{} keys -{flag} against {rpc}: {output:?}",
        cli.display()
    );
}

/// The `KEY  [n/m]` lines of `keys -list`, which both CLIs must print alike (Serf prints
/// them in map order, so they are compared as a set).
fn listed(cli: &Path, rpc: SocketAddr) -> BTreeSet<String> {
    let output = keys(cli, rpc, &["-list"]);
    let stdout = text(&output);
    assert!(output.status.success(), "{stdout}");
    let mut lines = stdout.lines();
    assert_eq!(
        lines.next(),
        Some("==> Asking all members for installed keys...")
    );
    assert_eq!(
        lines.next(),
        Some("==> Keys gathered, listing cluster keys...")
    );
    assert_eq!(lines.next(), Some(""));
    lines.map(String::from).collect()
}

/// Both CLIs, against every agent, list exactly `expected` keys, each held by all members.
fn assert_listed(agents: &[&dyn Agent], expected: &[&str]) {
    let total = agents.len();
    // Columns are as wide as the longest key listed.
    let width = expected.iter().map(|key| key.len()).max().unwrap_or(0);
    let want: BTreeSet<String> = expected
        .iter()
        .map(|key| format!("{key:<width$}  [{total}/{total}]"))
        .collect();
    for agent in agents {
        for cli in [serf_bin(), go_serf()] {
            assert_eq!(
                listed(&cli, agent.rpc()),
                want,
                "{} keys -list against {}",
                cli.display(),
                agent.name()
            );
        }
    }
}

fn assert_all_alive(agents: &[&dyn Agent]) {
    let expected: Vec<(&str, &str)> = agents.iter().map(|a| (a.name(), "alive")).collect();
    for agent in agents {
        wait_statuses(agent.rpc(), &expected, CONVERGE);
    }
}

/// The keys in a keyring file, primary first.
fn keyring_file(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    serde_json::from_str(&text)
        .unwrap_or_else(|error| panic!("{}: {error}: {text}", path.display()))
}

/// Install `new`, use it, remove `old`, issued by `cli` against `via`; after each step both CLIs
/// agree on the list, everyone stays alive, and the keyring files follow.
fn rotate(
    cli: &Path,
    via: &dyn Agent,
    agents: &[&dyn Agent],
    files: &[&PathBuf],
    old: &str,
    new: &str,
) {
    key_step(
        cli,
        via.rpc(),
        "install",
        new,
        "==> Successfully installed key!",
    );
    assert_listed(agents, &[old, new]);
    for file in files {
        assert_eq!(keyring_file(file), [old, new], "{}", file.display());
    }
    key_step(
        cli,
        via.rpc(),
        "use",
        new,
        "==> Successfully changed primary key!",
    );
    assert_listed(agents, &[old, new]);
    for file in files {
        assert_eq!(keyring_file(file), [new, old], "{}", file.display());
    }
    // The old key is still the primary nowhere: removing it works, removing the new one not.
    let refused = keys(cli, via.rpc(), &[&format!("-remove={new}")]);
    let stdout = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "Error removing key: {n}/{n} nodes reported failure",
            n = agents.len()
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("Removing the primary key is not allowed"),
        "{stdout}"
    );
    key_step(
        cli,
        via.rpc(),
        "remove",
        old,
        "==> Successfully removed key!",
    );
    assert_listed(agents, &[new]);
    for file in files {
        assert_eq!(keyring_file(file), [new], "{}", file.display());
    }
    assert_all_alive(agents);
}

#[test]
fn keys_rotate_across_a_mixed_encrypted_cluster_through_both_clis() {
    let net = next_net();
    let files = tempfile::tempdir().expect("temp dir");
    let go_file = files.path().join("go-keyring.json");
    let our_file = files.path().join("our-keyring.json");
    for file in [&go_file, &our_file] {
        std::fs::write(file, format!("[\"{KEY}\"]")).expect("keyring file");
    }
    let encrypt = format!("-encrypt={KEY}");
    let go1 = GoNode::start(net, 1, "go1", &[&encrypt]);
    let ours2 = Node::builder(net, 2)
        .arg(&format!("-keyring-file={}", our_file.display()))
        .arg(&join_arg(&go1))
        .start();
    let go3 = GoNode::start(
        net,
        3,
        "go3",
        &[
            &format!("-keyring-file={}", go_file.display()),
            &join_arg(&ours2),
        ],
    );
    let ours4 = Node::builder(net, 4)
        .arg(&encrypt)
        .arg(&join_arg(&go3))
        .start();
    let agents: [&dyn Agent; 4] = [&go1, &ours2, &go3, &ours4];
    assert_all_alive(&agents);
    assert_listed(&agents, &[KEY]);
    let files = [&our_file, &go_file];

    rotate(&serf_bin(), &ours2, &agents, &files, KEY, KEY_B);
    rotate(&go_serf(), &go3, &agents, &files, KEY_B, KEY_C);
    rotate(&go_serf(), &ours4, &agents, &files, KEY_C, KEY_D);

    // Newcomers with only the newest key join, through either kind.
    let newest = format!("-encrypt={KEY_D}");
    let ours5 = Node::builder(net, 5)
        .arg(&newest)
        .arg(&join_arg(&go1))
        .start();
    let go6 = GoNode::start(net, 6, "go6", &[&newest, &join_arg(&ours4)]);
    assert_all_alive(&[&go1, &ours2, &go3, &ours4, &ours5, &go6]);
}

#[test]
fn key_failures_print_alike_through_both_clis() {
    let net = next_net();
    let encrypt = format!("-encrypt={KEY}");
    let go1 = GoNode::start(net, 1, "go1", &[&encrypt]);
    let ours2 = Node::builder(net, 2)
        .arg(&encrypt)
        .arg(&join_arg(&go1))
        .start();
    assert_all_alive(&[&go1, &ours2]);
    for args in [
        vec!["-install=AAEC"],
        vec!["-install=!!!"],
        vec!["-use=QUJDREVGR0hJSktMTU5PUA=="],
        vec![&*format!("-remove={KEY}")],
        vec!["-list", "-use=x"],
    ] {
        for rpc in [go1.rpc, ours2.rpc] {
            let go = keys(&go_serf(), rpc, &args);
            let ours = keys(&serf_bin(), rpc, &args);
            assert_eq!(ours.status.code(), Some(1), "{args:?}: {ours:?}");
            assert_eq!(go.status.code(), ours.status.code(), "{args:?}");
            let sorted = |output: &Output| {
                let mut lines: Vec<String> = text(output).lines().map(String::from).collect();
                lines.sort();
                lines
            };
            assert_eq!(sorted(&ours), sorted(&go), "{args:?} against {rpc}");
        }
    }
    let output = keys(&serf_bin(), ours2.rpc, &["-install=AAEC"]);
    let stdout = text(&output);
    for needle in [
        "failed:  go1    key size must be 16, 24 or 32 bytes",
        "failed:  node2  key size must be 16, 24 or 32 bytes",
        "Error installing key: 2/2 nodes reported failure",
    ] {
        assert!(stdout.contains(needle), "{needle:?} missing from {stdout}");
    }
    assert_all_alive(&[&go1, &ours2]);
}

#[test]
fn agents_without_encryption_answer_keys_as_serf_does() {
    let net = next_net();
    let go1 = GoNode::start(net, 1, "go1", &[]);
    let ours2 = Node::builder(net, 2).arg(&join_arg(&go1)).start();
    assert_all_alive(&[&go1, &ours2]);
    let expected = [
        "==> Asking all members for installed keys...",
        "failed:  go1    Keyring is empty (encryption not enabled)",
        "failed:  node2  Keyring is empty (encryption not enabled)",
        "",
        "Failed to gather member keys: 2/2 nodes reported failure",
    ];
    for rpc in [go1.rpc, ours2.rpc] {
        for cli in [serf_bin(), go_serf()] {
            let output = keys(&cli, rpc, &["-list"]);
            assert_eq!(output.status.code(), Some(1), "{output:?}");
            let mut lines: Vec<String> = text(&output).lines().map(String::from).collect();
            // Serf prints the failures in map order.
            lines[1..3].sort();
            assert_eq!(lines, expected, "{} against {rpc}", cli.display());
        }
    }
    let output = keys(&serf_bin(), ours2.rpc, &[&format!("-install={KEY}")]);
    let stdout = text(&output);
    assert!(
        stdout.contains("failed:  node2  No keyring to modify (encryption not enabled)")
            && stdout.contains("Error installing key: 2/2 nodes reported failure"),
        "{stdout}"
    );
}

#[test]
fn our_agent_that_takes_a_used_name_loses_the_vote_and_exits() {
    let net = next_net();
    let go1 = GoNode::start(net, 1, "go1", &[]);
    let ours2 = Node::builder(net, 2).arg(&join_arg(&go1)).start();
    assert_all_alive(&[&go1, &ours2]);
    let mut impostor = Node::builder(net, 3)
        .arg("-node=go1")
        .arg(&join_arg(&ours2))
        .start();
    let status = impostor.wait_exit(Duration::from_secs(30));
    let log = Agent::log(&impostor);
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{log}");
    for needle in [
        "[ERR] serf: Node name conflicts with another node at",
        "[WARN] serf: minority in name conflict resolution, quitting [0 / 1]",
        "[WARN] agent: Serf shutdown detected, quitting",
    ] {
        assert!(log.contains(needle), "{needle:?} missing from\n{log}");
    }
    // The first go1 keeps its name and address.
    assert_all_alive(&[&go1, &ours2]);
    let seen = serf_tests::cluster::members(&serf_bin(), ours2.rpc).expect("members");
    assert_eq!(seen["go1"].addr, go1.bind.to_string(), "{seen:?}");
}

#[test]
fn a_serf_agent_that_takes_a_used_name_counts_our_answer_and_exits() {
    let net = next_net();
    let ours1 = Node::builder(net, 1).start();
    let go2 = GoNode::start(net, 2, "go2", &[&join_arg(&ours1)]);
    assert_all_alive(&[&ours1, &go2]);
    // A second go2 joins through our agent: ours answers the vote with the first go2.
    let impostor = GoNode::start(net, 3, "go2", &[&join_arg(&ours1)]);
    let lost = eventually(Duration::from_secs(30), || {
        impostor
            .log()
            .contains("minority in name conflict resolution, quitting [0 / 1]")
            .then_some(())
    });
    assert!(lost.is_some(), "{}", impostor.log());
    assert!(
        !impostor
            .log()
            .contains("Failed to decode conflict query response"),
        "{}",
        impostor.log()
    );
    assert!(
        ours1.log().contains("Name conflict for 'go2' both 127."),
        "{}",
        ours1.log()
    );
    assert_all_alive(&[&ours1, &go2]);
}
