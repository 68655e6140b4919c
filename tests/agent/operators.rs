//! What operators meet beside Serf 0.9.4: each step runs against `/usr/bin/serf` and against
//! ours (or in a cluster of both), and the two must agree.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serf_tests::cluster::{GoNode, wait_statuses};
use serf_tests::{
    Node, RawRpc, eventually, field, go_serf, map, next_net, run, serf_bin, shared_plugin_cache,
    stdout_ok, wasm,
};

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

/// The lines of an agent's output up to the end of its banner; panics if the banner never
/// ended.
fn banner(log: &str) -> Vec<&str> {
    let end = log
        .find("==> Log data will now stream in as it occurs:")
        .unwrap_or_else(|| panic!("no end of banner in {log}"));
    log[..end].lines().collect()
}

/// A Serf log line: `2026/11/22 10:00:00 [INFO] agent: ...`.
fn is_log_line(line: &str) -> bool {
    ["[TRACE]", "[DEBUG]", "[INFO]", "[WARN]", "[ERR]"]
        .iter()
        .any(|level| line.contains(level))
}

#[test]
fn no_log_line_lands_inside_the_start_up_banner() {
    let net = next_net();
    let go = GoNode::start(net, 1, "go1", &[]);
    let mut agents = Vec::new();
    // Several starts, each joining (the join logs while the banner prints), stdout and stderr
    // into one file.
    for n in 2..=4 {
        let node = Node::builder(net, n)
            .arg("-log-level=debug")
            .arg(&format!("-join={}", go.bind))
            .start();
        agents.push(node);
    }
    let go2 = GoNode::start(net, 5, "go5", &[&format!("-join={}", go.bind)]);
    let mut logs = Vec::new();
    for node in &agents {
        node.wait_for_log("==> Log data will now stream in", CONVERGE);
        logs.push((node.name.clone(), node.log()));
    }
    // Serf's agent opens its RPC port before its banner has ended (it joins in between).
    let go_log = eventually(CONVERGE, || {
        let log = go2.log();
        log.contains("==> Log data will now stream in")
            .then_some(log)
    });
    logs.push((go2.name.clone(), go_log.unwrap_or_else(|| go2.log())));
    for (name, log) in &logs {
        let lines = banner(log);
        assert!(
            !lines.iter().any(|line| is_log_line(line)),
            "{name}: a log line inside the banner:\n{log}"
        );
        // Serf's banner, line after line.
        let starts: Vec<&str> = lines
            .iter()
            .map(|line| line.trim_start().split(':').next().unwrap_or_default())
            .collect();
        let expected = [
            "==> Starting Serf agent...",
            "==> Starting Serf agent RPC...",
            "==> Serf agent running!",
            "Node name",
            "Bind addr",
            "RPC addr",
            "Encrypted",
            "Snapshot",
            "Profile",
            "Message Compression Enabled",
        ];
        assert_eq!(&starts[..expected.len()], &expected, "{name}:\n{log}");
        assert!(
            starts.contains(&"==> Joining cluster...(replay")
                && starts.contains(&"Join completed. Synced with 1 initial agents"),
            "{name}:\n{log}"
        );
    }
    // And the log streams once the banner is out.
    for node in &agents {
        node.wait_for_log("[INFO] agent: agent started", CONVERGE);
    }
}

/// The `Payload` of the first user event and the first query that an RPC `stream` of `*` at
/// `rpc` delivers while `fire` runs.
fn streamed_payloads(rpc: SocketAddr, fire: impl FnOnce()) -> (rmpv::Value, rmpv::Value) {
    let mut stream = RawRpc::handshake(rpc);
    stream.request("stream", 1, Some(map(&[("Type", "*".into())])));
    let header = stream.read().expect("stream accepted");
    assert_eq!(field(&header, "Error"), Some(&"".into()), "{header}");
    fire();
    let (mut user, mut query) = (None, None);
    // Each record is a header and a body; member events may come first. Bounded by count and
    // by the connection's read timeout.
    for _ in 0..20 {
        if user.is_some() && query.is_some() {
            break;
        }
        let _header = stream.read().expect("record header");
        let record = stream.read().expect("record");
        let payload = field(&record, "Payload").cloned();
        match field(&record, "Event").and_then(rmpv::Value::as_str) {
            Some("user") => user = user.or(payload),
            Some("query") => query = query.or(payload),
            _ => {}
        }
    }
    (
        user.expect("a user event was streamed"),
        query.expect("a query was streamed"),
    )
}

#[test]
fn events_and_queries_without_payload_stream_a_nil_payload() {
    let net = next_net();
    let go = GoNode::start(net, 1, "go1", &[]);
    let ours = Node::builder(net, 2).start();
    for rpc in [go.rpc, ours.rpc] {
        let fire = || {
            for args in [&["event", "ev"][..], &["query", "-timeout=1s", "q"]] {
                let (command, rest) = args.split_first().expect("a subcommand");
                stdout_ok(&run(
                    Command::new(go_serf())
                        .arg(command)
                        .arg(format!("-rpc-addr={rpc}"))
                        .args(rest),
                    Duration::from_secs(30),
                ));
            }
        };
        let (user, query) = streamed_payloads(rpc, fire);
        assert_eq!(user, rmpv::Value::Nil, "user event payload from {rpc}");
        assert_eq!(query, rmpv::Value::Nil, "query payload from {rpc}");
    }
}

/// Our agent started by hand: no `data_dir`, `HOME` set to `home`; killed (by PID) when
/// dropped.
struct Bare {
    child: std::process::Child,
    rpc: SocketAddr,
    dir: tempfile::TempDir,
}

impl Bare {
    fn start(net: u8, n: u8, home: &Path) -> Bare {
        let dir = tempfile::tempdir().expect("temp dir");
        let plugins = dir.path().join("plugins");
        std::fs::create_dir_all(&plugins).expect("plugin dir");
        std::fs::copy(wasm("longjob"), plugins.join("longjob.wasm")).expect("copy plugin");
        let ip = format!("127.{net}.0.{n}");
        let rpc: SocketAddr = format!("{ip}:7373").parse().expect("rpc");
        let config = format!(
            "node_name = \"bare{n}\"\nbind = \"{ip}:7946\"\nrpc_addr = \"{rpc}\"\n\
             plugin_dir = \"plugins\"\nplugin_cache_dir = \"{}\"\n[plugins.longjob]\n\
             events = \"query:longjob\"\ncapabilities = [\"jobs\"]\n",
            shared_plugin_cache().display()
        );
        std::fs::write(dir.path().join("serf.toml"), config).expect("serf.toml");
        let log = std::fs::File::create(dir.path().join("agent.log")).expect("log");
        let child = Command::new(serf_bin())
            .arg("agent")
            .arg("-config-file=serf.toml")
            .current_dir(dir.path())
            .env("HOME", home)
            .env_remove("XDG_STATE_HOME")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start serf agent");
        let mut bare = Bare { child, rpc, dir };
        let up = eventually(Duration::from_secs(60), || {
            if let Ok(Some(status)) = bare.child.try_wait() {
                panic!("agent exited with {status}: {}", bare.log());
            }
            TcpStream::connect(rpc).ok()
        });
        assert!(up.is_some(), "agent never opened RPC: {}", bare.log());
        bare
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    fn cli(&self, args: &[&str]) -> Output {
        let (command, rest) = args.split_first().expect("a subcommand");
        run(
            Command::new(serf_bin())
                .arg(command)
                .arg(format!("-rpc-addr={}", self.rpc))
                .args(rest),
            Duration::from_secs(30),
        )
    }

    fn jobs(&self) -> Vec<serde_json::Value> {
        let text = stdout_ok(&self.cli(&["jobs", "-format=json"]));
        serde_json::from_str(&text).unwrap_or_else(|error| panic!("{error}: {text}"))
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn agents_without_a_data_dir_keep_no_state_and_share_none() {
    let net = next_net();
    let home = tempfile::tempdir().expect("home");
    let first = Bare::start(net, 1, home.path());
    let text = stdout_ok(&first.cli(&["query", "-timeout=2s", "longjob", "start deploy 1"]));
    assert!(text.contains("Response from 'bare1': started 1"), "{text}");
    assert_eq!(first.jobs().len(), 1, "{}", first.log());
    drop(first);

    // Another agent, the same user: it starts with no jobs, as a Serf agent would.
    let second = Bare::start(net, 2, home.path());
    assert_eq!(
        second.jobs(),
        Vec::<serde_json::Value>::new(),
        "{}",
        second.log()
    );
    let left: Vec<_> = std::fs::read_dir(home.path())
        .expect("home")
        .map(|entry| entry.expect("entry").path())
        .collect();
    assert!(left.is_empty(), "state written under HOME: {left:?}");
}

#[test]
fn query_tag_filters_are_unanchored_and_the_help_says_so() {
    let net = next_net();
    let go = GoNode::start(net, 1, "go1", &["-tag", "role=webserver"]);
    let ours = Node::builder(net, 2)
        .arg("-tag")
        .arg("role=webserver")
        .start();
    for (rpc, name) in [(go.rpc, "go1"), (ours.rpc, "node2")] {
        for bin in [go_serf(), serf_bin()] {
            let output = run(
                Command::new(&bin)
                    .arg("query")
                    .arg(format!("-rpc-addr={rpc}"))
                    .args(["-format=json", "-timeout=1s", "-tag", "role=eb", "q"]),
                Duration::from_secs(30),
            );
            let json: serde_json::Value = serde_json::from_str(&stdout_ok(&output)).expect("json");
            assert_eq!(json["Acks"], serde_json::json!([name]), "{}", bin.display());
        }
    }
    let help = run(
        Command::new(serf_bin()).args(["query", "-h"]),
        Duration::from_secs(30),
    );
    let text = all_output(&help);
    let tag_line = text
        .lines()
        .find(|line| line.contains("--tag"))
        .unwrap_or_else(|| panic!("no -tag in {text}"));
    assert!(!tag_line.contains("(anchored)"), "{tag_line}");
    assert!(tag_line.contains("unanchored"), "{tag_line}");
}

/// Standard base64 (with padding) decoded; `None` if it is not.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if !text.len().is_multiple_of(4) {
        return None;
    }
    let padding = text.bytes().rev().take_while(|&b| b == b'=').count();
    let mut bits = 0u32;
    let mut count = 0;
    let mut bytes = Vec::new();
    for byte in text.bytes().take(text.len() - padding) {
        let value = ALPHABET.iter().position(|&a| a == byte)? as u32;
        bits = (bits << 6) | value;
        count += 6;
        if count >= 8 {
            count -= 8;
            bytes.push((bits >> count) as u8);
        }
    }
    Some(bytes)
}

/// `keygen` of `bin`: its key, checked to be Serf's format (one line of base64 on stdout,
/// nothing on stderr, exit 0).
fn keygen(bin: &Path) -> String {
    let output = run(Command::new(bin).arg("keygen"), Duration::from_secs(30));
    let text = stdout_ok(&output);
    assert!(output.stderr.is_empty(), "{}", all_output(&output));
    let key = text
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("no newline after {text:?}"));
    assert!(!key.contains('\n'), "{text:?}");
    let bytes = decode_base64(key).unwrap_or_else(|| panic!("not base64: {key:?}"));
    assert_eq!(bytes.len(), 32, "{key}");
    key.to_owned()
}

#[test]
fn keygen_prints_a_new_32_byte_key_that_encrypts_a_mixed_cluster() {
    assert_eq!(decode_base64("AAECAw=="), Some(vec![0, 1, 2, 3]));
    // Serf's format, a new key at every run.
    let go_keys = [keygen(&go_serf()), keygen(&go_serf())];
    let our_keys = [keygen(&serf_bin()), keygen(&serf_bin())];
    assert_ne!(go_keys[0], go_keys[1]);
    assert_ne!(our_keys[0], our_keys[1]);
    // `keygen -h` is help (on stderr, exit 0), as Serf's.
    for bin in [go_serf(), serf_bin()] {
        let output = run(
            Command::new(&bin).args(["keygen", "-h"]),
            Duration::from_secs(30),
        );
        assert_eq!(output.status.code(), Some(0), "{}", all_output(&output));
        assert!(output.stdout.is_empty(), "{}", all_output(&output));
        let help = String::from_utf8_lossy(&output.stderr);
        assert!(help.starts_with("Usage: serf keygen\n"), "{help}");
    }

    // Our key encrypts a cluster of Serf's agent and ours.
    let key = &our_keys[0];
    let net = next_net();
    let go = GoNode::start(net, 1, "go1", &[&format!("-encrypt={key}")]);
    let ours = Node::builder(net, 2)
        .arg(&format!("-encrypt={key}"))
        .arg(&format!("-join={}", go.bind))
        .start();
    wait_statuses(go.rpc, &[("go1", "alive"), ("node2", "alive")], CONVERGE);
    wait_statuses(ours.rpc, &[("go1", "alive"), ("node2", "alive")], CONVERGE);
    assert_eq!(ours.info()["serf"]["encrypted"], "true");
}

#[test]
fn rejoin_without_a_snapshot_warns_before_the_banner() {
    let net = next_net();
    let go = GoNode::start(net, 1, "go1", &["-rejoin"]);
    let ours = Node::builder(net, 2).arg("-rejoin").start();
    ours.wait_for_log("==> Log data will now stream in", CONVERGE);
    for log in [go.log(), ours.log()] {
        assert!(
            log.starts_with(
                "==> Warning: 'RejoinAfterLeave' enabled without snapshot file\n\
                 ==> Starting Serf agent...\n"
            ),
            "{log}"
        );
    }
    // With a snapshot, no warning.
    let snapshot = Node::builder(net, 3)
        .arg("-rejoin")
        .arg("-snapshot=snap")
        .start();
    snapshot.wait_for_log("==> Log data will now stream in", CONVERGE);
    assert!(!snapshot.log().contains("Warning"), "{}", snapshot.log());
}

/// Starts `serf reachability` of `bin` at `rpc` with `extra` flags, without waiting.
fn spawn_reachability(bin: &Path, rpc: SocketAddr, extra: &[&str]) -> std::process::Child {
    Command::new(bin)
        .arg("reachability")
        .arg(format!("-rpc-addr={rpc}"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start reachability")
}

/// Waits (bounded) for a child started by [`spawn_reachability`]; its exit code and stdout.
fn finish(mut child: std::process::Child) -> (Option<i32>, String) {
    let done = eventually(Duration::from_secs(30), || child.try_wait().ok().flatten());
    if done.is_none() {
        let _ = child.kill();
    }
    let output = child.wait_with_output().expect("reachability output");
    assert!(done.is_some(), "reachability hung: {}", all_output(&output));
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn reachability_reports_as_serfs_does() {
    let net = next_net();
    let go = GoNode::start(net, 1, "go1", &[]);
    let node2 = Node::builder(net, 2)
        .arg(&format!("-join={}", go.bind))
        .start();
    let mut node3 = Node::builder(net, 3)
        .arg(&format!("-join={}", go.bind))
        .start();
    let all = [("go1", "alive"), ("node2", "alive"), ("node3", "alive")];
    wait_statuses(go.rpc, &all, CONVERGE);
    wait_statuses(node2.rpc, &all, CONVERGE);

    // Every live member acks: the same lines from both CLIs, against either agent.
    let expected = "Total members: 3, live members: 3\nStarting reachability test...\n\
                    Successfully contacted all live nodes\n";
    for rpc in [go.rpc, node2.rpc] {
        let runs: Vec<_> = [go_serf(), serf_bin()]
            .iter()
            .map(|bin| spawn_reachability(bin, rpc, &[]))
            .collect();
        for child in runs {
            assert_eq!(finish(child), (Some(0), expected.to_owned()), "at {rpc}");
        }
        // -verbose: each ack, then the timing.
        for bin in [go_serf(), serf_bin()] {
            let (code, text) = finish(spawn_reachability(&bin, rpc, &["-verbose"]));
            assert_eq!(code, Some(0), "{text}");
            let lines: Vec<&str> = text.lines().collect();
            let mut acks: Vec<&str> = lines[2..5].to_vec();
            acks.sort_unstable();
            assert_eq!(
                acks,
                [
                    "\tAck from 'go1'",
                    "\tAck from 'node2'",
                    "\tAck from 'node3'"
                ],
                "{}: {text}",
                bin.display()
            );
            assert!(
                lines[5].starts_with("Query time: ")
                    && lines[5].contains(" sec, time to last response: ")
                    && lines[5].ends_with(" sec"),
                "{}: {text}",
                bin.display()
            );
            assert_eq!(lines[6], "Successfully contacted all live nodes", "{text}");
        }
    }

    // A stopped agent is still listed alive for a while, but acks nothing. Both CLIs run at
    // once, so they see the same members.
    let pid = node3.child().id();
    serf_tests::send_signal(pid, "STOP");
    let runs: Vec<_> = [go_serf(), serf_bin()]
        .iter()
        .map(|bin| spawn_reachability(bin, go.rpc, &[]))
        .collect();
    let results: Vec<_> = runs.into_iter().map(finish).collect();
    serf_tests::send_signal(pid, "CONT");
    let expected = "Total members: 3, live members: 3\nStarting reachability test...\n\
                    Received less acks than live nodes! Missing acks from:\n\tnode3\n\
                    This could mean Serf gossip packets are being lost due to a misconfiguration or network issue.\n\
                    \n\
                    Troubleshooting tips:\n\
                    * Ensure that the bind addr:port is accessible by all other nodes\n\
                    * If an advertise address is set, ensure it routes to the bind address\n\
                    * Check that no nodes are behind a NAT\n\
                    * If nodes are behind firewalls or iptables, check that Serf traffic is permitted (UDP and TCP)\n\
                    * Verify networking equipment is functional\n";
    for result in results {
        assert_eq!(result, (Some(1), expected.to_owned()));
    }
}
