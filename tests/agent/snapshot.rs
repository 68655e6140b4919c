//! The snapshot file (`-snapshot`, `-rejoin`) and the tags file (`-tags-file`): restarts in a
//! mixed cluster, files handed between Serf 0.9.4 and our agent, tags surviving a restart.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serf_tests::cluster::{Agent, GoNode, members, wait_statuses};
use serf_tests::{
    MEMRESPONSE_CONFIG, Node, eventually, go_serf, next_net, run, serf_bin, stdout_ok,
};

/// Joins made back to back can leave an agent without news of another until the next
/// push/pull (see gossip.rs): up to twice the 30 s interval.
const CONVERGE: Duration = Duration::from_secs(75);
/// Plugin output and snapshot lines appear within a few seconds.
const SOON: Duration = Duration::from_secs(20);
/// The snapshot file inside each node's directory.
const SNAPSHOT: &str = "serf.snapshot";

fn join_arg(agent: &dyn Agent) -> String {
    format!("-join={}", agent.bind())
}

/// Every agent lists every name as alive, through both CLIs.
fn assert_all_alive(rpcs: &[SocketAddr], names: &[&str]) {
    let expected: Vec<(&str, &str)> = names.iter().map(|name| (*name, "alive")).collect();
    for rpc in rpcs {
        wait_statuses(*rpc, &expected, CONVERGE);
    }
}

/// Our agent started again in the directory of a stopped [`Node`], with the same serf.toml;
/// killed when dropped.
struct Restarted {
    name: String,
    rpc: SocketAddr,
    log: PathBuf,
    child: Child,
}

impl Restarted {
    fn start(node: &Node, args: &[&str]) -> Restarted {
        let log = node.dir.path().join("restarted.log");
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(serf_bin())
            .arg("agent")
            .arg(format!(
                "-config-file={}",
                node.dir.path().join("serf.toml").display()
            ))
            .args(args)
            .current_dir(node.dir.path())
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("start serf agent");
        let mut restarted = Restarted {
            name: node.name.clone(),
            rpc: node.rpc,
            log,
            child,
        };
        let up = eventually(Duration::from_secs(60), || {
            if let Ok(Some(status)) = restarted.child.try_wait() {
                panic!(
                    "restarted {} exited with {status}: {}",
                    restarted.name,
                    restarted.log()
                );
            }
            TcpStream::connect(restarted.rpc).ok()
        });
        assert!(
            up.is_some(),
            "restarted {} never opened RPC",
            restarted.name
        );
        restarted
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Restarted {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fires a user event through `cli` at the agent at `rpc`, without coalescing (several events
/// of one name within a few seconds must all arrive).
fn fire(cli: &Path, rpc: SocketAddr, payload: &str) {
    let output = run(
        Command::new(cli)
            .arg("event")
            .arg(format!("-rpc-addr={rpc}"))
            .arg("-coalesce=false")
            .arg("memresponse")
            .arg(payload),
        SOON,
    );
    assert!(
        stdout_ok(&output).contains("Event 'memresponse' dispatched!"),
        "{output:?}"
    );
}

/// The payloads memresponse wrote on `node`, sorted.
fn handled(node: &Node) -> Vec<String> {
    let text = std::fs::read_to_string(node.dir.path().join("data/mem.txt")).unwrap_or_default();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines.sort();
    lines
}

/// Waits until memresponse on `node` has written every one of `payloads`.
fn wait_handled(node: &Node, payloads: &[&str], log: impl Fn() -> String) {
    let done = eventually(SOON, || {
        let lines = handled(node);
        payloads
            .iter()
            .all(|p| lines.iter().any(|l| l == p))
            .then_some(())
    });
    assert!(
        done.is_some(),
        "{} handled {:?}, not all of {payloads:?}:\n{}",
        node.name,
        handled(node),
        log()
    );
}

/// `serf info -format=json` of the agent at `rpc` through `cli`, field `serf.event_time`.
fn event_time(cli: &Path, rpc: SocketAddr) -> u64 {
    let output = run(
        Command::new(cli)
            .arg("info")
            .arg(format!("-rpc-addr={rpc}"))
            .arg("-format=json"),
        SOON,
    );
    let info: serde_json::Value = serde_json::from_str(&stdout_ok(&output)).expect("info json");
    info["serf"]["event_time"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no serf.event_time in {info}"))
}

/// Waits until the snapshot at `path` records a user event at `ltime` or later.
fn wait_event_clock(path: &Path, ltime: u64) {
    let recorded = eventually(SOON, || {
        let text = std::fs::read_to_string(path).ok()?;
        text.lines()
            .filter_map(|line| line.strip_prefix("event-clock: ")?.parse::<u64>().ok())
            .any(|t| t >= ltime)
            .then_some(())
    });
    assert!(
        recorded.is_some(),
        "{} never recorded event-clock {ltime}: {:?}",
        path.display(),
        std::fs::read_to_string(path)
    );
}

#[test]
fn a_restarted_agent_rejoins_from_its_snapshot_without_replaying_old_events() {
    let net = next_net();
    let go1 = GoNode::start(net, 1, "go1", &[]);
    let with_plugin = |n: u8| {
        Node::builder(net, n)
            .config(MEMRESPONSE_CONFIG)
            .plugin("memresponse", "memresponse")
            .arg(&format!("-snapshot={SNAPSHOT}"))
    };
    let mut node2 = with_plugin(2).arg(&join_arg(&go1)).start();
    let node3 = with_plugin(3).arg(&join_arg(&node2)).start();
    let names = ["go1", "node2", "node3"];
    assert_all_alive(&[go1.rpc, node2.rpc, node3.rpc], &names);

    fire(&go_serf(), go1.rpc, "one");
    fire(&serf_bin(), node3.rpc, "two");
    for node in [&node2, &node3] {
        wait_handled(node, &["one", "two"], || node.log());
    }
    // The snapshot has the newest event before the crash (it flushes within 500 ms).
    let last = event_time(&serf_bin(), node2.rpc) - 1;
    let snapshot = node2.dir.path().join(SNAPSHOT);
    wait_event_clock(&snapshot, last);
    node2.kill_9();

    // Missed while it was down: delivered once it is back.
    fire(&go_serf(), go1.rpc, "three");
    wait_handled(&node3, &["three"], || node3.log());

    // No -join: the snapshot names the members to rejoin.
    let node2_again = Restarted::start(&node2, &[&format!("-snapshot={SNAPSHOT}"), "-rejoin"]);
    assert_all_alive(&[go1.rpc, node2_again.rpc, node3.rpc], &names);
    let log = node2_again.log();
    assert!(log.contains("re-joined to previously known node"), "{log}");
    wait_handled(&node2, &["three"], || node2_again.log());
    fire(&go_serf(), go1.rpc, "four");
    wait_handled(&node2, &["four"], || node2_again.log());
    // Give a duplicate time to show up.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        handled(&node2),
        ["four", "one", "three", "two"],
        "each event handled exactly once:\n{}",
        node2_again.log()
    );
    assert_eq!(handled(&node3), ["four", "one", "three", "two"]);
}

#[test]
fn snapshots_pass_between_serf_and_our_agent_both_ways() {
    let net = next_net();
    let go1 = GoNode::start(net, 1, "go1", &[]);
    let mut ours = Node::builder(net, 2)
        .arg(&format!("-snapshot={SNAPSHOT}"))
        .arg(&join_arg(&go1))
        .start();
    assert_all_alive(&[go1.rpc, ours.rpc], &["go1", "node2"]);
    fire(&go_serf(), go1.rpc, "ours-saw-this");
    let ours_last = eventually(SOON, || {
        let time = event_time(&serf_bin(), ours.rpc);
        (time > 1).then_some(time - 1)
    })
    .expect("our agent never saw the event");
    let snapshot = ours.dir.path().join(SNAPSHOT);
    wait_event_clock(&snapshot, ours_last);
    // SIGTERM stops without a leave: the file still names go1.
    ours.signal_and_expect_exit("TERM", 1);
    let text = std::fs::read_to_string(&snapshot).unwrap();
    assert!(
        text.contains(&format!("alive: go1 {}\n", go1.bind)),
        "{text}"
    );

    // Serf reads our file: it rejoins go1 by itself and starts past our event clock.
    let snapshot_arg = format!("-snapshot={}", snapshot.display());
    let mut go2 = GoNode::start(net, 2, "node2", &[&snapshot_arg]);
    assert_all_alive(&[go1.rpc, go2.rpc], &["go1", "node2"]);
    assert!(
        go2.log().contains(&format!(
            "Re-joined to previously known node: go1: {}",
            go1.bind
        )),
        "{}",
        go2.log()
    );
    assert!(event_time(&go_serf(), go2.rpc) > ours_last);
    fire(&go_serf(), go2.rpc, "serf-saw-this");
    let go_last = event_time(&go_serf(), go2.rpc) - 1;
    // Serf flushes its snapshot lazily; stopping it (without a leave) writes everything.
    go2.signal("TERM");
    wait_event_clock(&snapshot, go_last);

    // And we read Serf's: our agent rejoins go1 the same way and starts past its clock.
    let ours_again = Restarted::start(&ours, &[&snapshot_arg]);
    assert_all_alive(&[go1.rpc, ours_again.rpc], &["go1", "node2"]);
    let log = ours_again.log();
    assert!(log.contains("re-joined to previously known node"), "{log}");
    assert!(event_time(&serf_bin(), ours_again.rpc) > go_last);
    let seen = members(&go_serf(), go1.rpc).expect("members");
    assert_eq!(seen["node2"].addr, ours.bind.to_string(), "{seen:?}");
}

#[test]
fn the_tags_file_follows_serf_tags_and_survives_a_restart() {
    let net = next_net();
    let mut node = Node::builder(net, 1).arg("-tags-file=tags.json").start();
    let tags_file = node.dir.path().join("tags.json");
    // Serf's CLI changes the tags; the file follows in Serf's format.
    stdout_ok(&node.go_cli(&["tags", "-set", "role=web", "-set", "dc=east"]));
    assert_eq!(
        std::fs::read_to_string(&tags_file).unwrap(),
        "{\n  \"dc\": \"east\",\n  \"role\": \"web\"\n}"
    );
    stdout_ok(&node.cli(&["tags", "-delete", "dc"]));
    assert_eq!(
        std::fs::read_to_string(&tags_file).unwrap(),
        "{\n  \"role\": \"web\"\n}"
    );
    node.kill_9();

    let again = Restarted::start(&node, &["-tags-file=tags.json"]);
    for cli in [serf_bin(), go_serf()] {
        let seen = members(&cli, again.rpc).expect("members");
        let expected = [("role".to_string(), "web".to_string())].into();
        assert_eq!(seen["node1"].tags, expected, "{seen:?}");
    }

    // Serf loads the file we wrote.
    let go2 = GoNode::start(
        net,
        2,
        "go2",
        &[&format!("-tags-file={}", tags_file.display())],
    );
    let seen = members(&go_serf(), go2.rpc).expect("members");
    assert_eq!(seen["go2"].tags["role"], "web", "{seen:?}");

    // Tags beside a tags file are refused, as Serf refuses them.
    let mut refused = Node::builder(net, 3)
        .arg("-tag=role=db")
        .arg("-tags-file=tags.json")
        .spawn();
    let status = refused.wait_exit(SOON);
    assert!(status.is_some_and(|s| !s.success()), "{status:?}");
    assert!(
        refused
            .log()
            .contains("tags config not allowed while using tag files"),
        "{}",
        refused.log()
    );
}
