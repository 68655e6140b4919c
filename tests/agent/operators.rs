//! What operators meet beside Serf 0.9.4: each step runs against `/usr/bin/serf` and against
//! ours (or in a cluster of both), and the two must agree.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serf_tests::cluster::{GoNode, wait_statuses};
use serf_tests::{Node, go_serf, next_net, run, serf_bin, stdout_ok};

/// Start-up joins converge in a few seconds; a missed alive message waits for a push/pull.
const CONVERGE: Duration = Duration::from_secs(45);

/// Stdout and stderr together: Serf prints everything on stdout, we print agent errors on
/// stderr.
fn all_output(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Tags whose encoding takes more than 512 bytes.
fn oversized_tag() -> String {
    format!("big={}", "x".repeat(600))
}

#[test]
fn tags_over_the_meta_limit_stop_the_agent_from_starting() {
    let net = next_net();
    let dir = tempfile::tempdir().expect("temp dir");
    // Ours gets a data directory of its own (Serf's agent has no such flag).
    let data_dir = format!("-data-dir={}", dir.path().display());
    for (n, bin, extra) in [(1u8, go_serf(), None), (2, serf_bin(), Some(data_dir))] {
        let ip = format!("127.{net}.0.{n}");
        let output = run(
            Command::new(&bin)
                .arg("agent")
                .arg(format!("-node=n{n}"))
                .arg(format!("-bind={ip}:7946"))
                .arg(format!("-rpc-addr={ip}:7373"))
                .args(extra)
                .arg("-tag")
                .arg(oversized_tag())
                .current_dir(dir.path()),
            Duration::from_secs(30),
        );
        let text = all_output(&output);
        assert_eq!(output.status.code(), Some(1), "{}: {text}", bin.display());
        assert!(
            text.contains(
                "==> Failed to start the Serf agent: Error creating Serf: \
                 Encoded length of tags exceeds limit of 512 bytes\n"
            ),
            "{}: {text}",
            bin.display()
        );
    }
}

#[test]
fn tags_over_the_meta_limit_are_refused_and_the_old_ones_stay() {
    let net = next_net();
    let go = GoNode::start(net, 1, "go1", &["-tag", "role=web"]);
    let ours = Node::builder(net, 2).arg("-tag").arg("role=web").start();
    let big = oversized_tag();
    for rpc in [go.rpc, ours.rpc] {
        for bin in [go_serf(), serf_bin()] {
            let output = run(
                Command::new(&bin)
                    .arg("tags")
                    .arg(format!("-rpc-addr={rpc}"))
                    .arg("-set")
                    .arg(&big),
                Duration::from_secs(30),
            );
            assert_eq!(output.status.code(), Some(1), "{}", all_output(&output));
            assert_eq!(
                String::from_utf8_lossy(&output.stdout),
                "Error setting tags: Encoded length of tags exceeds limit of 512 bytes\n",
                "{} against {rpc}",
                bin.display()
            );
            let members = stdout_ok(&run(
                Command::new(&bin)
                    .arg("members")
                    .arg(format!("-rpc-addr={rpc}")),
                Duration::from_secs(30),
            ));
            assert!(members.contains("alive  role=web"), "{members}");
        }
    }
}

/// The names `members -format=json` with `filters` lists, through `bin` at `rpc`.
fn member_names(bin: &Path, rpc: SocketAddr, filters: &[&str]) -> BTreeSet<String> {
    let output = run(
        Command::new(bin)
            .arg("members")
            .arg(format!("-rpc-addr={rpc}"))
            .arg("-format=json")
            .args(filters),
        Duration::from_secs(30),
    );
    let json: serde_json::Value = serde_json::from_str(&stdout_ok(&output)).expect("json");
    json["members"]
        .as_array()
        .map(|members| {
            members
                .iter()
                .filter_map(|m| m["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn members_filters_match_as_serfs_agent_does() {
    let net = next_net();
    let go = GoNode::start(net, 1, "go1", &["-tag", "role=web"]);
    let ours = Node::builder(net, 2)
        .arg(&format!("-join={}", go.bind))
        .start();
    wait_statuses(go.rpc, &[("go1", "alive"), ("node2", "alive")], CONVERGE);
    wait_statuses(ours.rpc, &[("go1", "alive"), ("node2", "alive")], CONVERGE);
    let both: BTreeSet<String> = ["go1".to_owned(), "node2".to_owned()].into();
    let cases: [(&[&str], BTreeSet<String>); 5] = [
        // A member without the tag is matched against "".
        (&["-tag", "missing=.*"], both.clone()),
        (&["-tag", "missing=x"], BTreeSet::new()),
        (&["-tag", "role=.*"], both.clone()),
        (&["-tag", "role=web"], ["go1".to_owned()].into()),
        // `^al|zzz$`: an alternative is anchored at one end only.
        (&["-status", "al|zzz"], both),
    ];
    for (filters, expected) in cases {
        for rpc in [go.rpc, ours.rpc] {
            for bin in [go_serf(), serf_bin()] {
                assert_eq!(
                    member_names(&bin, rpc, filters),
                    expected,
                    "members {filters:?} through {} at {rpc}",
                    bin.display()
                );
            }
        }
    }
}
