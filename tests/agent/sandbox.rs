//! Misbehaving plugins are contained; well-behaved ones keep every event, in order.

use std::time::Duration;

use serf_tests::{Node, RawRpc, eventually, field, map, next_net, plugin_counter, stdout_ok};

/// One misbehaving plugin per mode, each on `user:boom` and `query:boom` only.
fn misbehaving(mode: &str) -> String {
    format!(
        "[plugins.{mode}]\nevents = \"user:boom,query:boom\"\nevent_timeout = \"500ms\"\n\
         max_memory_mib = 16\nconfig = {{ mode = \"{mode}\" }}\n"
    )
}

#[test]
fn misbehaving_plugins_are_contained_and_others_keep_order() {
    let modes = ["loop", "alloc", "trap", "garbage", "sleep"];
    let mut builder = Node::builder(next_net(), 1)
        .plugin("memresponse", "memresponse")
        .plugin("upcase", "upcase")
        .config(
            "[plugins.memresponse]\nevents = \"user:memresponse\"\nqueue_capacity = 2048\n\
             dirs = { \"/data\" = \"data\" }\nconfig = { file = \"/data/mem.txt\" }\n\
             [plugins.upcase]\nevents = \"query:upcase\"\n",
        );
    for mode in modes {
        builder = builder.plugin("misbehave", mode).config(&misbehaving(mode));
    }
    let node = builder.start();

    // 1,000 events on one connection, with a query for the misbehavers every 100.
    let mut rpc = RawRpc::handshake(node.rpc);
    for (seq, i) in (1u64..).zip(0..1000u32) {
        let name = if i % 100 == 50 { "boom" } else { "memresponse" };
        let body = map(&[
            ("Name", name.into()),
            ("Payload", rmpv::Value::Binary(i.to_string().into_bytes())),
            ("Coalesce", false.into()),
        ]);
        rpc.request("event", seq, Some(body));
        let header = rpc.read().expect("event answer");
        assert_eq!(
            field(&header, "Error"),
            Some(&"".into()),
            "event {i}: {header}"
        );
    }
    // Fire a query the misbehavers handle too; the agent must go on answering.
    let output = node.go_cli(&["query", "-timeout=1s", "boom", "x"]);
    stdout_ok(&output);
    let text = stdout_ok(&node.go_cli(&["query", "-timeout=1s", "upcase", "still"]));
    assert!(text.contains("Response from 'node1': STILL"), "{text}");

    let file = node.dir.path().join("data/mem.txt");
    let expected: String = (0..1000)
        .filter(|i| i % 100 != 50)
        .map(|i| format!("{i}\n"))
        .collect();
    let written = eventually(Duration::from_secs(60), || {
        let text = std::fs::read_to_string(&file).ok()?;
        (text.len() >= expected.len()).then_some(text)
    });
    assert_eq!(
        written.as_deref(),
        Some(expected.as_str()),
        "events lost or reordered\n{}",
        node.log()
    );

    // Each misbehaver saw 10 user events and 1 query; each failure is counted by kind.
    let info = eventually(Duration::from_secs(60), || {
        let info = node.info();
        modes
            .iter()
            .all(|mode| {
                plugin_counter(&info, mode, "offered") == 11
                    && plugin_counter(&info, mode, "queue_depth") == 0
            })
            .then_some(info)
    })
    .expect("misbehavers drained their queues");
    assert!(
        plugin_counter(&info, "loop", "fuel_exhausted") + plugin_counter(&info, "loop", "timeouts")
            >= 10,
        "{info}"
    );
    assert!(
        plugin_counter(&info, "alloc", "memory_exceeded") >= 10,
        "{info}"
    );
    assert!(plugin_counter(&info, "trap", "traps") >= 10, "{info}");
    assert!(plugin_counter(&info, "garbage", "errors") >= 10, "{info}");
    assert_eq!(
        plugin_counter(&info, "garbage", "traps"),
        0,
        "garbage output must not crash: {info}"
    );
    assert!(plugin_counter(&info, "sleep", "timeouts") >= 10, "{info}");
    for mode in ["loop", "alloc", "trap", "sleep"] {
        assert!(
            plugin_counter(&info, mode, "starts") >= 10,
            "{mode} is recycled after each trap: {info}"
        );
    }
    assert_eq!(
        plugin_counter(&info, "memresponse", "handled"),
        990,
        "{info}"
    );
    assert_eq!(plugin_counter(&info, "memresponse", "traps"), 0, "{info}");
    assert_eq!(plugin_counter(&info, "memresponse", "dropped"), 0, "{info}");
    let log = node.log();
    assert!(log.contains("plugin panicked"), "{log}");
    assert!(log.contains("memory limit"), "{log}");
}

#[test]
fn a_full_queue_drops_counts_and_tells_the_plugin() {
    let node = Node::builder(next_net(), 1)
        .plugin("misbehave", "sleep")
        .config(
            "[plugins.sleep]\nevents = \"user\"\nqueue_capacity = 2\nevent_timeout = \"300ms\"\n\
             config = { mode = \"sleep\" }\n",
        )
        .start();
    let mut rpc = RawRpc::handshake(node.rpc);
    for seq in 1..=20u64 {
        let body = map(&[
            ("Name", "boom".into()),
            ("Payload", rmpv::Value::Nil),
            ("Coalesce", false.into()),
        ]);
        rpc.request("event", seq, Some(body));
        rpc.read().expect("event answer");
    }
    let info = eventually(Duration::from_secs(30), || {
        let info = node.info();
        (plugin_counter(&info, "sleep", "queue_depth") == 0).then_some(info)
    })
    .expect("queue drained");
    let dropped = plugin_counter(&info, "sleep", "dropped");
    assert!(dropped >= 10, "{info}");
    assert_eq!(plugin_counter(&info, "sleep", "offered"), 20, "{info}");
    node.wait_for_log("plugin queue full; event dropped", Duration::from_secs(5));
}
