//! `serf-node` embedded in a program of its own (the crate's `embed` example) joins a mixed
//! cluster of our agent and Serf 0.9.4, sees their member and user events, fires events of its
//! own, answers queries from either CLI, and leaves gracefully on SIGTERM.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serf_tests::cluster::{GoNode, wait_statuses};
use serf_tests::{Node, eventually, example_bin, go_serf, next_net, run, send_signal, stdout_ok};

const CONVERGE: Duration = Duration::from_secs(45);
const DELIVER: Duration = Duration::from_secs(20);

/// The example process, killed if the test ends early.
struct Embedded {
    child: Child,
    out: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Embedded {
    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn wait_line(&self, line: &str) {
        let seen = eventually(DELIVER, || {
            self.output().lines().any(|l| l == line).then_some(())
        });
        assert!(seen.is_some(), "no line {line:?} in:\n{}", self.output());
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn embedded_node_joins_a_mixed_cluster_and_reacts_to_events() {
    let net = next_net();
    let ours = Node::builder(net, 1).start();
    let greeted = "-event-handler=user:greeted=cat >> greeted.txt";
    let go = GoNode::start(net, 2, "go2", &[greeted, &format!("-join={}", ours.bind)]);
    wait_statuses(ours.rpc, &[("node1", "alive"), ("go2", "alive")], CONVERGE);

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("embed.out");
    let bind = format!("127.{net}.0.3:7946");
    let child = Command::new(example_bin("embed"))
        .args([
            "embedded",
            &bind,
            &ours.bind.to_string(),
            &go.bind.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(dir.path().join("embed.err")).unwrap())
        .spawn()
        .expect("start the embed example");
    let mut embedded = Embedded {
        child,
        out,
        _dir: dir,
    };
    embedded.wait_line("joined 2");

    // Both agents list it, with its tags; it saw both of them join.
    let all = [("node1", "alive"), ("go2", "alive"), ("embedded", "alive")];
    wait_statuses(ours.rpc, &all, CONVERGE);
    wait_statuses(go.rpc, &all, CONVERGE);
    let seen_joins = eventually(DELIVER, || {
        let text = embedded.output();
        let joined: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("member-join "))
            .flat_map(str::split_whitespace)
            .collect();
        (joined.contains(&"node1") && joined.contains(&"go2")).then_some(())
    });
    assert!(seen_joins.is_some(), "{}", embedded.output());

    // A user event from Serf's agent reaches it; its answer reaches Serf's handler.
    let rpc = format!("-rpc-addr={}", go.rpc);
    let sent = run(
        Command::new(go_serf()).args(["event", &rpc, "greet", "hello"]),
        Duration::from_secs(30),
    );
    stdout_ok(&sent);
    embedded.wait_line("user greet hello");
    embedded.wait_line("user greeted embedded");
    let handled = eventually(DELIVER, || {
        let text = std::fs::read_to_string(go.dir.path().join("greeted.txt")).ok()?;
        text.contains("embedded").then_some(())
    });
    assert!(
        handled.is_some(),
        "Serf's handler never saw `greeted`: {}",
        go.log()
    );

    // It answers a query sent through either CLI.
    for (cli_name, output) in [
        ("ours", ours.cli(&["query", "-format=json", "whoami"])),
        ("serf", ours.go_cli(&["query", "-format=json", "whoami"])),
    ] {
        let json: serde_json::Value = serde_json::from_str(&stdout_ok(&output)).unwrap();
        assert_eq!(
            json["Responses"]["embedded"], "embedded role=embedded",
            "{cli_name}: {json}"
        );
    }

    // SIGTERM: it leaves gracefully, so both agents see it `left`, not `failed`.
    send_signal(embedded.child.id(), "TERM");
    let exited = eventually(DELIVER, || embedded.child.try_wait().ok().flatten());
    assert!(exited.is_some_and(|s| s.success()), "{}", embedded.output());
    let left = [("node1", "alive"), ("go2", "alive"), ("embedded", "left")];
    wait_statuses(ours.rpc, &left, CONVERGE);
    wait_statuses(go.rpc, &left, CONVERGE);
}
