//! Plugin capabilities: each is denied by default and works once serf.toml grants it; and the
//! authors' tools, `serf plugin check` and `serf plugin run`, on the example plugins.

use std::process::Command;
use std::time::Duration;

use serf_tests::cluster::wait_statuses;
use serf_tests::{Node, eventually, next_net, run, serf_bin, stdout_ok, wasm};

/// The captest plugin on `query:captest` and every user event, with `grants` added to its
/// table.
fn captest(grants: &str) -> String {
    format!("[plugins.captest]\nevents = \"query:captest,user\"\n{grants}\n")
}

/// Asks `node`'s captest plugin to run `command` (only `node` answers); returns its answer.
fn ask(node: &Node, command: &str) -> String {
    let node_flag = format!("-node={}", node.name);
    let output = node.cli(&[
        "query",
        "-format=json",
        "-timeout=2s",
        &node_flag,
        "captest",
        command,
    ]);
    let json: serde_json::Value = serde_json::from_str(&stdout_ok(&output)).expect("query json");
    json["Responses"][&node.name]
        .as_str()
        .unwrap_or_else(|| {
            panic!(
                "{} did not answer {command:?}: {json}\n{}",
                node.name,
                node.log()
            )
        })
        .to_owned()
}

/// How often the agent logged that `plugin` was denied `capability`.
fn denials(node: &Node, capability: &str) -> usize {
    node.log()
        .lines()
        .filter(|line| line.contains("plugin call denied") && line.contains(capability))
        .count()
}

#[test]
fn every_capability_is_denied_by_default_and_works_once_granted() {
    let net = next_net();
    let plain = Node::builder(net, 1)
        .plugin("captest", "captest")
        .config(&captest(""))
        .start();
    let granted = Node::builder(net, 2)
        .plugin("captest", "captest")
        .plugin("upcase", "upcase")
        .config(&captest(
            "capabilities = [\"members\", \"events\", \"queries\"]\n\
             env = { CAPTEST_REGION = \"eu-west\" }\n\
             dirs = { \"/data\" = \"data\" }",
        ))
        .config("[plugins.upcase]\nevents = \"query:upcase\"\n")
        .start();
    let text = stdout_ok(&plain.cli(&["join", &granted.bind.to_string()]));
    assert!(text.contains("Successfully joined"), "{text}");
    let both = [("node1", "alive"), ("node2", "alive")];
    wait_statuses(plain.rpc, &both, Duration::from_secs(20));
    wait_statuses(granted.rpc, &both, Duration::from_secs(20));

    // Denied by default: each host call returns Denied, logged once per capability; the
    // sandbox shows no environment and no files.
    let denied = "err:capability not granted: add it to capabilities = [...] in the plugin's \
                  [plugins.NAME] table in serf.toml";
    for command in ["members", "members", "fire:fired:v0", "query:upcase:foo"] {
        assert_eq!(ask(&plain, command), denied, "{command}");
    }
    assert_eq!(ask(&plain, "env:CAPTEST_REGION"), "err:unset");
    assert!(ask(&plain, "write:/data/cap.txt:hi").starts_with("err:"));
    for capability in ["members", "events", "queries"] {
        assert_eq!(
            denials(&plain, capability),
            1,
            "{capability}:\n{}",
            plain.log()
        );
    }
    assert_eq!(denials(&granted, "members"), 0);

    // Granted: the member list, the environment and the directory.
    let members = eventually(Duration::from_secs(10), || {
        let answer = ask(&granted, "members");
        (answer == "ok:node1,node2").then_some(answer)
    });
    assert!(members.is_some(), "{}", ask(&granted, "members"));
    assert_eq!(ask(&granted, "env:CAPTEST_REGION"), "ok:eu-west");
    assert_eq!(ask(&granted, "write:/data/cap.txt:hi"), "ok");
    let file = granted.dir.path().join("data/cap.txt");
    assert_eq!(std::fs::read_to_string(&file).ok().as_deref(), Some("hi"));

    // A fired user event reaches the other node's plugin.
    assert_eq!(ask(&granted, "fire:fired:v1"), "ok");
    let seen = eventually(Duration::from_secs(20), || {
        let seen = ask(&plain, "seen");
        seen.contains("fired=v1").then_some(seen)
    });
    assert!(seen.is_some(), "{}\n{}", ask(&plain, "seen"), plain.log());
    assert!(
        !ask(&plain, "seen").contains("v0"),
        "the denied event went nowhere"
    );

    // A query's answers come back to the plugin as events, then its end.
    assert_eq!(ask(&granted, "query:upcase:foo"), "ok:1");
    let answers = eventually(Duration::from_secs(20), || {
        let answers = ask(&granted, "answers");
        answers.contains("done 1").then_some(answers)
    })
    .unwrap_or_else(|| panic!("no query-done: {}", granted.log()));
    assert_eq!(answers, "ok:response 1 node2 FOO\ndone 1 ", "{answers}");
    assert_eq!(denials(&granted, "members"), 0, "{}", granted.log());
}

#[test]
fn an_unknown_capability_stops_the_agent_with_a_config_error() {
    let mut node = Node::builder(next_net(), 1)
        .plugin("captest", "captest")
        .config(&captest("capabilities = [\"members\", \"teleport\"]"))
        .spawn();
    let status = node.wait_exit(Duration::from_secs(20));
    assert!(status.is_some_and(|s| !s.success()), "{status:?}");
    let log = node.log();
    assert!(
        log.contains("unknown capability") && log.contains("teleport"),
        "{log}"
    );
}

fn plugin_tool(args: &[&str]) -> std::process::Output {
    run(
        Command::new(serf_bin()).arg("plugin").args(args),
        Duration::from_secs(60),
    )
}

#[test]
fn plugin_run_answers_a_query_like_the_agent() {
    let upcase = wasm("upcase");
    let upcase = upcase.to_str().expect("utf-8 path");
    let text = stdout_ok(&plugin_tool(&[
        "run",
        upcase,
        "--event",
        "query:upcase",
        "--payload",
        "foo",
    ]));
    assert!(text.contains("response: FOO"), "{text}");
    assert!(text.contains("event: ok"), "{text}");
    assert!(text.contains("fuel: "), "{text}");
    assert!(text.contains("time: "), "{text}");

    let hello = wasm("hello");
    let hello = hello.to_str().expect("utf-8 path");
    let text = stdout_ok(&plugin_tool(&[
        "run",
        hello,
        "--event",
        "user:deploy",
        "--payload",
        "v1.2",
    ]));
    assert!(
        text.contains("log [info] user event deploy payload=\"v1.2\""),
        "{text}"
    );
    assert!(!text.contains("response:"), "{text}");

    // A refused config is a failed run, with the plugin's reason.
    let memresponse = wasm("memresponse");
    let output = plugin_tool(&[
        "run",
        memresponse.to_str().expect("utf-8 path"),
        "--event",
        "user:memresponse",
        "--config",
        "file=3",
    ]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("config key file must be a path"), "{text}");
}

#[test]
fn plugin_run_grants_capabilities_on_request() {
    let captest = wasm("captest");
    let captest = captest.to_str().expect("utf-8 path");
    let run_captest = |payload: &str, extra: &[&str]| {
        let mut args = vec![
            "run",
            captest,
            "--event",
            "query:captest",
            "--payload",
            payload,
        ];
        args.extend_from_slice(extra);
        stdout_ok(&plugin_tool(&args))
    };
    let text = run_captest("members", &[]);
    assert!(
        text.contains("response: err:capability not granted"),
        "{text}"
    );
    assert!(text.contains("plugin call denied"), "{text}");
    let text = run_captest("members", &["--grant", "members"]);
    assert!(text.contains("response: ok:local"), "{text}");
    let text = run_captest("query:upcase:x", &["--grant", "members,queries"]);
    assert!(text.contains("sent query 1: upcase payload x"), "{text}");
    assert!(text.contains("query-done: ok"), "{text}");
    let text = run_captest("env:REGION", &["--env", "REGION=eu"]);
    assert!(text.contains("response: ok:eu"), "{text}");
}

#[test]
fn plugin_check_lists_imports_and_the_capabilities_they_need() {
    let upcase = wasm("upcase");
    let text = stdout_ok(&plugin_tool(&[
        "check",
        upcase.to_str().expect("utf-8 path"),
    ]));
    for needle in [
        "serf plugin, ABI v1",
        "serf_handle (i32, i32) -> (i32)",
        "  respond\n",
        "events handled: not declared",
        "init with an empty config: ok",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from {text}");
    }
    assert!(
        text.contains("capabilities: none needed"),
        "upcase imports capability functions: was it built in one cargo run with captest, \
         whose SDK features cargo then unified? (tests/run-all.sh builds them apart)\n{text}"
    );
    let captest = wasm("captest");
    let text = stdout_ok(&plugin_tool(&[
        "check",
        captest.to_str().expect("utf-8 path"),
    ]));
    assert!(
        text.contains("members (needs capability members)"),
        "{text}"
    );
    assert!(
        text.contains(
            "capabilities: grant with capabilities = [\"members\", \"events\", \"queries\"]"
        ),
        "{text}"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let bogus = dir.path().join("bogus.wasm");
    std::fs::write(&bogus, b"\0asm\x01\0\0\0").expect("write module");
    let output = plugin_tool(&["check", bogus.to_str().expect("utf-8 path")]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("is not a serf plugin: missing export serf_plugin_abi_v1"),
        "{text}"
    );
}

#[test]
fn the_plugin_template_builds_and_runs() {
    let template = wasm("template");
    let template = template.to_str().expect("utf-8 path");
    let text = stdout_ok(&plugin_tool(&["check", template]));
    assert!(text.contains("capabilities: none needed"), "{text}");
    let text = stdout_ok(&plugin_tool(&["run", template, "--event", "query:ping"]));
    assert!(text.contains("response: pong"), "{text}");
    let text = stdout_ok(&plugin_tool(&[
        "run",
        template,
        "--event",
        "member-join",
        "--config",
        "greeting=hello",
    ]));
    assert!(text.contains("log [info] hello local"), "{text}");
}
