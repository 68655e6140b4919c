//! The README's tour, checked with both CLIs.

use std::time::Duration;

use serf_tests::{
    MEMRESPONSE_CONFIG, Node, UPCASE_CONFIG, assert_memresponse_scenario, assert_upcase_scenario,
    next_net, stdout_ok,
};

#[test]
fn members_lists_the_node_with_its_tags_in_both_clis() {
    let node = Node::builder(next_net(), 1)
        .arg("-tag=role=web")
        .arg("-tag=dc=east")
        .start();
    for output in [node.cli(&["members"]), node.go_cli(&["members"])] {
        let text = stdout_ok(&output);
        let line = text.lines().next().expect("one member line");
        let columns: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            columns[..3],
            ["node1", &node.bind.to_string(), "alive"],
            "{text}"
        );
        let mut tags: Vec<&str> = columns[3].split(',').collect();
        tags.sort();
        assert_eq!(tags, ["dc=east", "role=web"], "{text}");
    }
    for output in [
        node.cli(&["members", "-format=json"]),
        node.go_cli(&["members", "-format=json"]),
    ] {
        let json: serde_json::Value = serde_json::from_str(&stdout_ok(&output)).unwrap();
        let member = &json["members"][0];
        assert_eq!(member["name"], "node1");
        assert_eq!(member["addr"], node.bind.to_string());
        assert_eq!(member["status"], "alive");
        assert_eq!(member["tags"]["role"], "web");
        assert_eq!(member["tags"]["dc"], "east");
    }
    // Filters are regexes anchored at both ends, as in Serf.
    for output in [
        node.cli(&["members", "-tag", "role=we"]),
        node.go_cli(&["members", "-tag", "role=we"]),
    ] {
        assert_eq!(stdout_ok(&output).trim(), "");
    }
    let output = node.go_cli(&["members", "-status=alive", "-name=node.*"]);
    assert!(stdout_ok(&output).contains("node1"));
}

#[test]
fn memresponse_event_lands_in_mem_txt() {
    let node = Node::builder(next_net(), 1)
        .plugin("memresponse", "memresponse")
        .config(MEMRESPONSE_CONFIG)
        .start();
    assert_memresponse_scenario(&node, Duration::from_secs(20));
}

#[test]
fn coalesced_events_of_one_name_reach_a_plugin_once() {
    use serf_tests::{RawRpc, eventually, field, map};

    let node = Node::builder(next_net(), 1)
        .plugin("memresponse", "memresponse")
        .config(MEMRESPONSE_CONFIG)
        .start();
    // Within one quiet second: the newest coalescible event wins; an uncoalesced one passes
    // straight through, ahead of it.
    let mut rpc = RawRpc::handshake(node.rpc);
    for (seq, payload, coalesce) in [(1, "old", true), (2, "new", true), (3, "direct", false)] {
        let body = map(&[
            ("Name", "memresponse".into()),
            ("Payload", rmpv::Value::Binary(payload.into())),
            ("Coalesce", coalesce.into()),
        ]);
        rpc.request("event", seq, Some(body));
        let header = rpc.read().expect("event answer");
        assert_eq!(field(&header, "Error"), Some(&"".into()), "{header}");
    }
    let file = node.dir.path().join("data/mem.txt");
    let written = eventually(Duration::from_secs(20), || {
        std::fs::read_to_string(&file)
            .ok()
            .filter(|text| text.contains("new"))
    });
    assert_eq!(written.as_deref(), Some("direct\nnew\n"), "{}", node.log());
}

#[test]
fn pipelined_events_are_answered_in_request_order() {
    use serf_tests::{RawRpc, eventually, field, map};

    let node = Node::builder(next_net(), 1)
        .plugin("memresponse", "memresponse")
        .config(MEMRESPONSE_CONFIG)
        .start();
    // One write holding 150 events (the 75th too large for Serf's limit), a `members`, then
    // 9 more events: the agent takes the events in batches, and every reply still comes in
    // request order with its own outcome.
    let mut bytes = Vec::new();
    let mut push = |command: &str, seq: u64, body: Option<rmpv::Value>| {
        let header = map(&[("Command", command.into()), ("Seq", seq.into())]);
        rmpv::encode::write_value(&mut bytes, &header).unwrap();
        if let Some(body) = body {
            rmpv::encode::write_value(&mut bytes, &body).unwrap();
        }
    };
    let event = |payload: String| {
        map(&[
            ("Name", "memresponse".into()),
            ("Payload", rmpv::Value::Binary(payload.into_bytes())),
            ("Coalesce", false.into()),
        ])
    };
    for seq in (1..=150).chain(152..=160) {
        let payload = if seq == 75 {
            "x".repeat(600)
        } else {
            format!("e{seq}")
        };
        push("event", seq, Some(event(payload)));
        if seq == 150 {
            push("members", 151, None);
        }
    }
    let mut rpc = RawRpc::handshake(node.rpc);
    rpc.send_bytes(&bytes);
    for seq in 1..=160u64 {
        let header = rpc.read().expect("a reply");
        assert_eq!(field(&header, "Seq"), Some(&seq.into()), "{header}");
        let error = field(&header, "Error")
            .and_then(rmpv::Value::as_str)
            .unwrap();
        match seq {
            75 => assert!(error.contains("exceeds configured limit"), "{header}"),
            151 => {
                assert_eq!(error, "", "{header}");
                let body = rpc.read().expect("members body");
                assert!(field(&body, "Members").is_some(), "{body}");
            }
            _ => assert_eq!(error, "", "{header}"),
        }
    }
    let expected: String = (1..=160)
        .filter(|seq| *seq != 75 && *seq != 151)
        .map(|seq| format!("e{seq}\n"))
        .collect();
    let file = node.dir.path().join("data/mem.txt");
    let written = eventually(Duration::from_secs(20), || {
        std::fs::read_to_string(&file)
            .ok()
            .filter(|text| text.len() >= expected.len())
    });
    assert_eq!(
        written.as_deref(),
        Some(expected.as_str()),
        "{}",
        node.log()
    );
}

#[test]
fn upcase_query_answers_foo() {
    let node = Node::builder(next_net(), 1)
        .plugin("upcase", "upcase")
        .config(UPCASE_CONFIG)
        .start();
    assert_upcase_scenario(&node, &[("bar", "BAR"), ("straße", "STRASSE")]);
    // A query nobody handles is acked, not answered.
    let text = stdout_ok(&node.go_cli(&["query", "-timeout=500ms", "nobody", "x"]));
    assert!(text.contains("Total Responses: 0"), "{text}");
}

#[test]
fn hello_logs_events_and_monitor_shows_them() {
    let node = Node::builder(next_net(), 1)
        .plugin("hello", "hello")
        .start();
    node.wait_for_log("member-join", Duration::from_secs(20));
    let output = node.go_cli(&["event", "my-name-is", "Mitchell"]);
    stdout_ok(&output);
    node.wait_for_log("my-name-is", Duration::from_secs(20));
    let text = node.log();
    assert!(text.contains("Mitchell"), "{text}");
    assert!(text.contains("plugin: hello:"), "{text}");
}

#[test]
fn info_reports_the_agent_and_its_plugins() {
    let node = Node::builder(next_net(), 1)
        .plugin("upcase", "upcase")
        .start();
    let info = node.info();
    assert_eq!(info["agent"]["name"], "node1", "{info}");
    assert_eq!(info["serf"]["members"], "1", "{info}");
    assert_eq!(info["plugin:upcase"]["state"], "running", "{info}");
    let text = stdout_ok(&node.go_cli(&["info"]));
    assert!(text.contains("agent:"), "{text}");
    assert!(text.contains("name = node1"), "{text}");
}

#[test]
fn leave_stops_the_agent_gracefully() {
    let mut node = Node::builder(next_net(), 1).start();
    let output = node.go_cli(&["leave"]);
    assert!(
        stdout_ok(&output).contains("Graceful leave complete"),
        "{output:?}"
    );
    let status = node.wait_exit(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        node.log()
    );
}

#[test]
fn interrupt_leaves_and_exits() {
    let mut node = Node::builder(next_net(), 1).start();
    node.signal_and_expect_exit("INT", 0);
    let log = node.log();
    assert!(log.contains("Gracefully shutting down agent"), "{log}");
}

#[test]
fn terminate_stops_without_leaving() {
    let mut node = Node::builder(next_net(), 1).start();
    // As Serf: a stop without a leave exits 1.
    node.signal_and_expect_exit("TERM", 1);
    let log = node.log();
    assert!(log.contains("Caught signal: terminated"), "{log}");
    assert!(
        !log.contains("requesting graceful leave"),
        "SIGTERM must not leave: {log}"
    );
    assert!(log.contains("shutdown complete"), "{log}");
}
