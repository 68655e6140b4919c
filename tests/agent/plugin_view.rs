//! The live view of a running agent's plugins: `serf plugin list` and `serf plugin status
//! NAME` over the RPC commands `plugin-list` and `plugin-status`, and the `path` and
//! `capabilities` keys of `serf info`, which Serf's own CLI still prints.

use std::process::{Command, Output};
use std::time::Duration;

use serf_tests::{Node, next_net, run, serf_bin, stdout_ok};

/// Two good plugins (`upcase` with grants and limits, `hello` with none) and a broken one
/// (`script`: a shell script named `.wasm`).
fn node() -> (Node, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script.wasm");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    let node = Node::builder(next_net(), 1)
        .plugin("upcase", "upcase")
        .plugin("hello", "hello")
        .raw_plugin_file("script.wasm", script)
        .config(
            "[plugins.upcase]\nevents = \"query:upcase\"\ncapabilities = [\"members\", \"queries\"]\n\
             env = { UPCASE_SECRET = \"hunter2\", UPCASE_REGION = \"eu\" }\n\
             dirs = { \"/data\" = \"data\" }\nfuel_per_event = 2000000000\nmax_memory_mib = 32\n\
             event_timeout = \"3s\"\nqueue_capacity = 64\n",
        )
        .start();
    (node, dir)
}

/// `serf plugin ARGS... -rpc-addr=...` with our CLI; flags go before a plugin name.
fn plugin_cli(node: &Node, args: &[&str]) -> Output {
    let (command, rest) = args.split_first().expect("a plugin subcommand");
    run(
        Command::new(serf_bin())
            .arg("plugin")
            .arg(command)
            .arg(node.rpc_flag())
            .args(rest),
        Duration::from_secs(30),
    )
}

fn json(output: &Output) -> serde_json::Value {
    let text = stdout_ok(output);
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{error}: {text}"))
}

#[test]
fn list_and_status_show_each_plugins_state_grants_limits_and_counters() {
    let (node, _dir) = node();
    // A query for upcase, so that its counters move.
    let text = stdout_ok(&node.cli(&["query", "-timeout=1s", "upcase", "ok"]));
    assert!(text.contains("Response from 'node1': OK"), "{text}");

    let text = stdout_ok(&plugin_cli(&node, &["list"]));
    let line = |name: &str| {
        text.lines()
            .find(|line| line.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .to_owned()
    };
    assert!(text.starts_with("NAME"), "{text}");
    assert!(line("upcase").contains(" running "), "{text}");
    assert!(line("hello").contains(" running "), "{text}");
    assert!(line("script").contains(" failed: "), "{text}");
    assert!(line("upcase").contains("upcase.wasm"), "{text}");

    let list = json(&plugin_cli(&node, &["list", "-format=json"]));
    let list = list.as_array().expect("an array");
    assert_eq!(list.len(), 3, "{list:?}");
    let names: Vec<&str> = list.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["hello", "script", "upcase"]);
    assert!(
        list[1]["state"]
            .as_str()
            .unwrap()
            .contains("not a WebAssembly module"),
        "{list:?}"
    );
    assert_eq!(list[1]["sha256"], "", "a failed plugin runs no version");
    assert_eq!(list[2]["sha256"].as_str().unwrap().len(), 64, "{list:?}");

    let upcase = json(&plugin_cli(&node, &["status", "-format", "json", "upcase"]));
    assert_eq!(upcase["state"], "running", "{upcase}");
    assert!(
        upcase["path"].as_str().unwrap().ends_with("upcase.wasm"),
        "{upcase}"
    );
    assert_eq!(upcase["events"], "query:upcase", "{upcase}");
    assert_eq!(
        upcase["capabilities"],
        serde_json::json!(["members", "queries"])
    );
    // Environment variables by name only: values may be secrets.
    assert_eq!(
        upcase["env_keys"],
        serde_json::json!(["UPCASE_REGION", "UPCASE_SECRET"])
    );
    assert!(!upcase.to_string().contains("hunter2"), "{upcase}");
    assert!(
        upcase["dirs"]["/data"].as_str().unwrap().ends_with("data"),
        "{upcase}"
    );
    assert_eq!(upcase["limits"]["fuel_per_event"], "2000000000");
    assert_eq!(upcase["limits"]["max_memory_mib"], "32");
    assert_eq!(upcase["limits"]["event_timeout"], "3s");
    assert_eq!(upcase["limits"]["queue_capacity"], "64");
    assert_eq!(upcase["counters"]["handled"], "1", "{upcase}");
    // Every counter of its `serf info` section.
    let info = node.info();
    for key in info["plugin:upcase"].as_object().unwrap().keys() {
        let shown = ["state", "events", "sha256", "path", "capabilities"].contains(&key.as_str())
            || upcase["counters"].get(key).is_some();
        assert!(shown, "{key} missing from {upcase}");
    }

    let text = stdout_ok(&plugin_cli(&node, &["status", "hello"]));
    for expected in [
        "plugin:\n\tname = hello\n\tstate = running\n",
        "\tcapabilities = none\n",
        "\tenv_keys = none\n",
        "\tdirs = none\n",
        "limits:\n",
        "\tfuel_per_event = 1000000000\n",
        "counters:\n",
        "\tstarts = ",
    ] {
        assert!(text.contains(expected), "{expected:?} not in {text}");
    }
    let text = stdout_ok(&plugin_cli(&node, &["status", "script"]));
    assert!(text.contains("\tstate = failed: "), "{text}");
    assert!(text.contains("\tstart_failures = "), "{text}");
}

#[test]
fn an_unknown_plugin_is_an_error_and_serfs_cli_still_reads_info() {
    let (node, _dir) = node();
    let output = plugin_cli(&node, &["status", "nosuch"]);
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("Error getting plugin status") && text.contains("nosuch"),
        "{text}"
    );
    let output = plugin_cli(&node, &["list", "-format=yaml"]);
    assert!(!output.status.success());

    // Serf 0.9.4's CLI prints our info, the new keys included.
    let text = stdout_ok(&node.go_cli(&["info"]));
    assert!(text.contains("plugin:upcase:"), "{text}");
    assert!(text.contains("\tcapabilities = members,queries"), "{text}");
    assert!(text.contains("\tpath = "), "{text}");
    assert!(text.contains("plugin:script:"), "{text}");
    let info = node.info();
    assert_eq!(info["plugin:hello"]["capabilities"], "none", "{info}");
}
