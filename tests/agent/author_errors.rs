//! What a plugin author sees when something is wrong: errors the plugin gets back, counters in
//! `serf info`, and log lines that name the cause.

use std::time::Duration;

use serf_tests::{Node, eventually, next_net, plugin_counter, run, serf_bin, stdout_ok};

/// Two plugins answer the same query: one answer goes out, and the other plugin's `respond`
/// fails (its error and refused-response counters say so) instead of returning Ok.
#[test]
fn a_second_answer_to_a_query_is_an_error_the_plugin_sees() {
    let node = Node::builder(next_net(), 1)
        .plugin("upcase", "first")
        .plugin("upcase", "second")
        .config(
            "[plugins.first]\nevents = \"query:upcase\"\n\
             [plugins.second]\nevents = \"query:upcase\"\n",
        )
        .start();
    let text = stdout_ok(&node.cli(&["query", "-timeout=1s", "upcase", "foo"]));
    assert!(text.contains("Total Responses: 1"), "{text}");

    let counts = eventually(Duration::from_secs(10), || {
        let info = node.info();
        let count =
            |name| plugin_counter(&info, "first", name) + plugin_counter(&info, "second", name);
        (count("handled") + count("errors") == 2).then(|| {
            (
                count("handled"),
                count("errors"),
                count("refused_responses"),
            )
        })
    });
    assert_eq!(counts, Some((1, 1, 1)), "{}", node.log());
    assert!(
        !node.log().contains("response already sent"),
        "the refusal reached the plugin, not only the log: {}",
        node.log()
    );
}

/// A `.wasm` dropped into the plugin directory without a `[plugins.NAME]` table gets member
/// and user events but no queries, and the agent says so when it loads it.
#[test]
fn a_plugin_without_a_table_gets_no_queries_and_is_warned_about() {
    let node = Node::builder(next_net(), 1)
        .plugin("upcase", "loose")
        .start();
    node.wait_for_log(
        "plugin loose has no [plugins.loose] table: it gets member and user events but no queries",
        Duration::from_secs(10),
    );
    let info = node.info();
    assert_eq!(
        info["plugin:loose"]["events"],
        "member-join,member-leave,member-failed,member-update,member-reap,user",
        "{info}"
    );
    let text = stdout_ok(&node.cli(&["query", "-timeout=500ms", "upcase", "foo"]));
    assert!(text.contains("Total Responses: 0"), "{text}");
}

/// A value of the wrong type in serf.toml is refused with its key path and line.
#[test]
fn a_config_value_of_the_wrong_type_names_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("serf.toml");
    std::fs::write(&path, "node_name = \"a\"\n[plugins.upcase]\nevents = 42\n").unwrap();
    let output = run(
        std::process::Command::new(serf_bin())
            .arg("agent")
            .arg(format!("-config-file={}", path.display())),
        Duration::from_secs(30),
    );
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "plugins.upcase.events: invalid type: integer `42`, expected a string (line 3, column 10)"
        ),
        "{stderr}"
    );
}
