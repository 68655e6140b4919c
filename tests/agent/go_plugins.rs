//! The example plugins written with the Go SDK (`plugins/go/`), in the scenarios `basics` runs
//! with the Rust ones: same events in, same effects out. Built by `plugin-sdk/go/build.sh`.

use std::time::Duration;

use serf_tests::{
    MEMRESPONSE_CONFIG, Node, UPCASE_CONFIG, assert_memresponse_scenario, assert_upcase_scenario,
    eventually, next_net, stdout_ok,
};

/// Compiling a 2 MB Go module takes a few seconds on a loaded 2-core machine.
const GO_PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// An agent that gives its plugins as long to compile as these tests wait for them: the
/// default 30 s budget is for production, and several test processes may compile Go modules at
/// once (the budget itself is tested in `containment`).
fn go_node(net: u8, n: u8) -> serf_tests::NodeBuilder {
    Node::builder(net, n).config(&format!(
        "plugin_compile_timeout = \"{}s\"",
        GO_PLUGIN_TIMEOUT.as_secs()
    ))
}

/// The text of every line a plugin logged, without the agent's timestamp and level.
fn plugin_lines(node: &Node, plugin: &str) -> Vec<String> {
    let marker = format!("plugin: {plugin}: ");
    node.log()
        .lines()
        .filter_map(|line| line.split_once(&marker).map(|(_, text)| text.to_owned()))
        .collect()
}

#[test]
fn go_memresponse_event_lands_in_mem_txt() {
    let node = go_node(next_net(), 1)
        .go_plugin("memresponse", "memresponse")
        .config(MEMRESPONSE_CONFIG)
        .start();
    assert_memresponse_scenario(&node, GO_PLUGIN_TIMEOUT);
    node.wait_for_log(
        "appending memresponse payloads to /data/mem.txt",
        GO_PLUGIN_TIMEOUT,
    );
}

#[test]
fn go_upcase_query_answers_foo() {
    let node = go_node(next_net(), 1)
        .go_plugin("upcase", "upcase")
        .config(UPCASE_CONFIG)
        .start();
    // The first query may arrive while the module still compiles; wait for the plugin.
    let answered = eventually(GO_PLUGIN_TIMEOUT, || {
        let output = node.cli(&["query", "-format=json", "-timeout=1s", "upcase", "warm"]);
        output.status.success().then_some(())?;
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
        (json["Responses"]["node1"] == "WARM").then_some(())
    });
    assert!(
        answered.is_some(),
        "the Go upcase plugin never answered:\n{}",
        node.log()
    );
    assert_upcase_scenario(&node, &[("bar", "BAR"), ("straße", "STRASSE")]);
}

#[test]
fn go_hello_logs_events() {
    let node = go_node(next_net(), 1).go_plugin("hello", "hello").start();
    let join = format!("plugin: hello: member-join: node1 {}", node.bind);
    node.wait_for_log(&join, GO_PLUGIN_TIMEOUT);
    stdout_ok(&node.go_cli(&["event", "my-name-is", "Mitchell"]));
    node.wait_for_log(
        "plugin: hello: user event my-name-is payload=\"Mitchell\"",
        GO_PLUGIN_TIMEOUT,
    );
    let info = node.info();
    assert_eq!(info["plugin:hello"]["state"], "running", "{info}");
}

#[test]
fn go_and_rust_hello_log_the_same_lines() {
    let net = next_net();
    let rust = Node::builder(net, 1).plugin("hello", "hello").start();
    let go = go_node(net, 2).go_plugin("hello", "hello").start();
    let events: [&[&str]; 3] = [
        &["event", "deploy", "v1"],
        &["event", "-coalesce=false", "tabbed", "a\tb \"q\" \\ é"],
        &["event", "empty"],
    ];
    for node in [&rust, &go] {
        node.wait_for_log("plugin: hello: member-join: ", GO_PLUGIN_TIMEOUT);
        for args in events {
            stdout_ok(&node.go_cli(args));
        }
    }
    let user_lines = |node: &Node| {
        eventually(GO_PLUGIN_TIMEOUT, || {
            let lines: Vec<String> = plugin_lines(node, "hello")
                .into_iter()
                .filter(|line| line.starts_with("user event "))
                .collect();
            (lines.len() == events.len()).then_some(lines)
        })
    };
    let mut from_rust = user_lines(&rust).unwrap_or_else(|| panic!("rust hello:\n{}", rust.log()));
    let mut from_go = user_lines(&go).unwrap_or_else(|| panic!("go hello:\n{}", go.log()));
    // Coalescing holds `deploy` and `empty` back while `-coalesce=false` passes at once, and
    // how long depends on each node's timing: compare the lines, not their order.
    from_rust.sort();
    from_go.sort();
    assert_eq!(from_go, from_rust);
    assert!(from_go.contains(&"user event deploy payload=\"v1\"".to_string()));
    // Each node logs its own join the same way, up to its address.
    for (node, lines) in [
        (&rust, plugin_lines(&rust, "hello")),
        (&go, plugin_lines(&go, "hello")),
    ] {
        let join = format!("member-join: {} {}", node.name, node.bind);
        assert!(lines.contains(&join), "{lines:?}");
    }
}
