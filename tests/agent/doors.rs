//! The agent's network doors under idle, slow and half-open connections: thousands of idle
//! sockets on the RPC or the gossip port lock out neither the CLIs (ours and Serf 0.9.4's) nor
//! joins (of ours and of Serf's agents); half-sent requests are closed; running out of file
//! descriptors neither floods the log nor stops the agent for good.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use serf_tests::cluster::{GoNode, KEY, OTHER_KEY, wait_statuses};
use serf_tests::{Node, RawRpc, eventually, go_serf, map, next_net, run, stdout_ok};

/// Idle connections each test holds: what Serf 0.9.4 is known to hold while it still serves.
const IDLE: usize = 2000;
const CONVERGE: Duration = Duration::from_secs(60);

/// Makes sure this process may open `needed` more sockets (raising its soft limit if not).
fn ensure_open_files(needed: u64) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    let wanted = needed + 512;
    if limit.current.is_some_and(|current| current < wanted) {
        limit.current = limit.maximum;
        setrlimit(Resource::Nofile, limit).expect("raise the open file limit");
    }
    let current = getrlimit(Resource::Nofile).current;
    assert!(
        current.is_none_or(|current| current >= wanted),
        "this test needs {wanted} open files; the limit is {current:?} (ulimit -n)"
    );
}

/// Opens `count` connections to `addr` and keeps them, sending nothing.
fn hold(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    ensure_open_files(count as u64);
    (0..count)
        .map(|n| {
            TcpStream::connect_timeout(&addr, Duration::from_secs(10))
                .unwrap_or_else(|error| panic!("connection {n} to {addr}: {error}"))
        })
        .collect()
}

/// A counter of `serf info` (section, key) as a number.
fn counter(node: &Node, section: &str, key: &str) -> u64 {
    let info = node.info();
    info[section][key]
        .as_str()
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {section}.{key} in {info:#}"))
}

/// Waits until the agent has closed `stream` (EOF or reset); false if it is still open at
/// `timeout`.
fn closed_within(stream: &mut TcpStream, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .expect("read timeout");
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

fn go_join(go: &GoNode, to: SocketAddr) -> String {
    stdout_ok(&run(
        Command::new(go_serf())
            .arg("join")
            .arg(format!("-rpc-addr={}", go.rpc))
            .arg(to.to_string()),
        Duration::from_secs(30),
    ))
}

#[test]
fn two_thousand_idle_rpc_connections_lock_out_neither_cli_nor_joins() {
    let net = next_net();
    let node = Node::builder(net, 1).start();
    let ours = Node::builder(net, 2).start();
    let go = GoNode::start(net, 3, "go3", &[]);
    let held = hold(node.rpc, IDLE);

    for output in [node.cli(&["members"]), node.go_cli(&["members"])] {
        assert!(stdout_ok(&output).contains("node1"), "{output:?}");
    }
    let text = stdout_ok(&node.cli(&["join", &ours.bind.to_string()]));
    assert!(text.contains("Successfully joined cluster"), "{text}");
    let text = stdout_ok(&node.go_cli(&["join", &go.bind.to_string()]));
    assert!(text.contains("Successfully joined cluster"), "{text}");
    wait_statuses(
        node.rpc,
        &[("node1", "alive"), ("node2", "alive"), ("go3", "alive")],
        CONVERGE,
    );
    // Every idle connection was accepted: still pending, or closed at the handshake deadline.
    let accepted = counter(&node, "rpc", "pending")
        + counter(&node, "rpc", "handshake_timeouts")
        + counter(&node, "rpc", "pending_evicted");
    assert!(accepted >= IDLE as u64, "{accepted}: {:#}", node.info());
    // None of them is held for long: each is closed after the handshake deadline.
    let all_closed = eventually(Duration::from_secs(30), || {
        (counter(&node, "rpc", "pending") == 0).then_some(())
    });
    assert!(all_closed.is_some(), "{:#}", node.info());
    assert!(
        counter(&node, "rpc", "handshake_timeouts") + counter(&node, "rpc", "pending_evicted")
            >= IDLE as u64
    );
    drop(held);
}

#[test]
fn two_thousand_idle_gossip_connections_lock_out_no_join() {
    let net = next_net();
    let node = Node::builder(net, 1).start();
    let ours = Node::builder(net, 2).start();
    let go = GoNode::start(net, 3, "go3", &[]);
    let held = hold(node.bind, IDLE);

    // Both join through the flooded gossip port (push/pull over TCP).
    let text = stdout_ok(&ours.cli(&["join", &node.bind.to_string()]));
    assert!(text.contains("Successfully joined cluster"), "{text}");
    let text = go_join(&go, node.bind);
    assert!(text.contains("Successfully joined cluster"), "{text}");
    wait_statuses(
        node.rpc,
        &[("node1", "alive"), ("node2", "alive"), ("go3", "alive")],
        CONVERGE,
    );
    let accepted = counter(&node, "gossip", "inbound_pending")
        + counter(&node, "gossip", "inbound_first_byte_timeouts");
    assert!(accepted >= IDLE as u64, "{accepted}: {:#}", node.info());
    assert_eq!(counter(&node, "gossip", "inbound_streams_refused"), 0);
    drop(held);
}

#[test]
fn half_sent_requests_and_silent_sockets_are_closed_but_idle_clients_stay() {
    let net = next_net();
    let node = Node::builder(net, 1).start();

    // Before the handshake: half a header, then nothing.
    let mut before = TcpStream::connect(node.rpc).expect("connect");
    before.write_all(&[0x82, 0xa7]).expect("write");
    // After the handshake: half a `members` header, then nothing.
    let mut after = RawRpc::handshake(node.rpc);
    let mut header = Vec::new();
    rmpv::encode::write_value(
        &mut header,
        &map(&[("Command", "members".into()), ("Seq", 1.into())]),
    )
    .expect("encode");
    after.send_bytes(&header[..header.len() / 2]);
    // A handshaken client that sends nothing may stay.
    let mut idle = RawRpc::handshake(node.rpc);
    // Silent gossip connections, and one with a first byte and nothing more.
    let mut silent = TcpStream::connect(node.bind).expect("connect gossip");
    let mut half = TcpStream::connect(node.bind).expect("connect gossip");
    half.write_all(&[6]).expect("write");

    assert!(closed_within(&mut before, Duration::from_secs(30)));
    assert!(closed_within(&mut silent, Duration::from_secs(30)));
    assert!(closed_within(&mut half, Duration::from_secs(30)));
    // The half-sent request after the handshake is closed too (RawRpc::read sees the end).
    assert_eq!(after.read(), None, "the half-sent request was not closed");

    idle.request("members", 7, None);
    let reply = idle.read().expect("the idle client is still served");
    assert_eq!(serf_tests::field(&reply, "Seq"), Some(&7u64.into()));

    assert!(counter(&node, "rpc", "handshake_timeouts") >= 1);
    assert!(counter(&node, "rpc", "request_timeouts") >= 1);
    assert!(counter(&node, "gossip", "inbound_first_byte_timeouts") >= 1);
    assert!(counter(&node, "gossip", "inbound_stream_failures") >= 1);
}

#[test]
fn running_out_of_file_descriptors_backs_off_logs_little_and_recovers() {
    let net = next_net();
    let mut node = Node::builder(net, 1).start();
    let pid = node.child().id();
    let open_now = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the agent's fds")
        .count();
    let limit = open_now + 32;
    let lowered = Instant::now();
    let output = run(
        Command::new("prlimit")
            .arg(format!("--pid={pid}"))
            .arg(format!("--nofile={limit}:{limit}")),
        Duration::from_secs(10),
    );
    assert!(output.status.success(), "prlimit: {output:?}");

    // Far more connections than descriptors left, on both doors.
    let rpc_held = hold(node.rpc, 300);
    let gossip_held = hold(node.bind, 300);
    node.wait_for_log("out of file descriptors", Duration::from_secs(20));
    // Give the accept loops time to spin, if they would.
    std::thread::sleep(Duration::from_secs(3));
    let lines = node
        .log()
        .lines()
        .filter(|line| line.contains("out of file descriptors"))
        .count();
    // One line per listener per 10 s at most.
    let allowed = 2 * (lowered.elapsed().as_secs() / 10 + 1);
    assert!(
        lines as u64 <= allowed,
        "{lines} lines about it (at most {allowed}):\n{}",
        node.log()
    );

    drop(rpc_held);
    drop(gossip_held);
    let members = eventually(Duration::from_secs(30), || {
        let output = node.cli(&["members"]);
        output.status.success().then_some(output)
    });
    let output = members.expect("the agent answers again once the connections are gone");
    assert!(stdout_ok(&output).contains("node1"));
    let info = node.info();
    let shed: u64 = ["rpc", "gossip"]
        .iter()
        .map(|section| {
            info[section]["closed_out_of_fds"]
                .as_str()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum();
    assert!(shed >= 1, "{info:#}");
}

#[test]
fn refused_encrypted_traffic_is_warned_about_rate_limited_and_counted() {
    let net = next_net();
    let node = Node::builder(net, 1)
        .arg(&format!("-encrypt={KEY}"))
        .start();
    // Plaintext packets to an encrypted agent: a burst, so most lines are held back.
    let socket = std::net::UdpSocket::bind(format!("127.{net}.0.9:0")).expect("udp socket");
    for seq in 0..200u8 {
        socket
            .send_to(
                &[0, 0x81, 0xa5, b'S', b'e', b'q', b'N', b'o', seq & 0x7f],
                node.bind,
            )
            .expect("send");
    }
    // A node with another key tries to join: its push/pull stream cannot be opened.
    let other = Node::builder(net, 2)
        .arg(&format!("-encrypt={OTHER_KEY}"))
        .start();
    let output = other.cli(&["join", &node.bind.to_string()]);
    assert!(!output.status.success(), "{output:?}");

    node.wait_for_log(
        "[WARN] gossip: decrypt packet failed",
        Duration::from_secs(20),
    );
    node.wait_for_log(
        "[WARN] gossip: failed to receive stream",
        Duration::from_secs(20),
    );
    let packets = eventually(Duration::from_secs(20), || {
        let packets = counter(&node, "gossip", "packets_decrypt_failed");
        (packets >= 200).then_some(packets)
    });
    assert!(packets.is_some(), "{:#}", node.info());
    assert!(counter(&node, "gossip", "streams_decrypt_failed") >= 1);
    let lines = node
        .log()
        .lines()
        .filter(|line| line.contains("decrypt packet failed"))
        .count();
    assert!(lines <= 3, "{lines} lines for 200 packets:\n{}", node.log());
}

#[test]
fn events_a_stream_client_does_not_read_show_as_event_stream_drops() {
    let net = next_net();
    let node = Node::builder(net, 1).start();
    // A `stream` client that never reads what it asked for.
    let mut slow = RawRpc::handshake(node.rpc);
    slow.request("stream", 1, Some(map(&[("Type", "user".into())])));
    let stream_ok = slow.read().expect("the stream's answer");
    assert_eq!(serf_tests::field(&stream_ok, "Error"), Some(&"".into()));

    let mut firer = RawRpc::handshake(node.rpc);
    let payload = rmpv::Value::Binary(vec![b'x'; 450]);
    const BATCH: u64 = 500;
    let mut seq = 0u64;
    let mut drops = 0;
    // Bounded: at most 200 batches (100,000 events), far more than the queues and socket
    // buffers between the agent and the slow client hold.
    for batch in 0..200 {
        let mut bytes = Vec::new();
        for _ in 0..BATCH {
            seq += 1;
            let header = map(&[("Command", "event".into()), ("Seq", seq.into())]);
            let body = map(&[
                ("Name", "flood".into()),
                ("Payload", payload.clone()),
                ("Coalesce", false.into()),
            ]);
            rmpv::encode::write_value(&mut bytes, &header).expect("encode");
            rmpv::encode::write_value(&mut bytes, &body).expect("encode");
        }
        firer.send_bytes(&bytes);
        for _ in 0..BATCH {
            let reply = firer.read().expect("an event reply");
            assert_eq!(
                serf_tests::field(&reply, "Error"),
                Some(&"".into()),
                "{reply}"
            );
        }
        // Records can be dropped on the agent's channel to the stream (when a burst outruns
        // the session) or on the client's write queue (once the socket is full): go on until
        // the write queue has dropped one, the kind this test is about.
        if batch % 10 == 9 {
            drops = counter(&node, "serf", "event_stream_drops");
            if drops > 0 && node.log().contains("record dropped kind=Event") {
                break;
            }
        }
    }
    assert!(
        drops > 0,
        "no drop shown after {seq} events: {:#}",
        node.info()
    );
    // The drops happened where the report found them uncounted: on the client's write queue.
    assert!(
        node.log().contains("record dropped kind=Event"),
        "{}",
        node.log()
    );
    drop(slow);
}
