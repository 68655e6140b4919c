//! Hot reload: new plugin versions, added and removed plugins and new settings reach a running
//! agent through the file watcher, SIGHUP and `serf reload`, without losing an event.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serf_tests::cluster::{GoNode, members, wait_statuses};
use serf_tests::{
    Node, RawRpc, eventually, field, go_serf, map, next_net, noop_module, serf_bin, stdout_ok,
};

/// A plugin that appends `tag` and then every envelope it gets (msgpack, self-delimiting) to
/// `records.bin` in its first granted directory; `serf_init` returns `init_status`. Two tags
/// are two versions of one plugin whose every event shows which version handled it.
fn recorder(tag: u8, init_status: i32) -> Vec<u8> {
    let text = include_str!("../wat/recorder.wat")
        .replace("INIT_STATUS", &init_status.to_string())
        .replace("TAG", &tag.to_string());
    wat::parse_str(text).expect("the recorder is valid text")
}

/// What a recorder wrote: (tag, seq, payload) per envelope.
fn records(file: &Path) -> Vec<(u8, u64, String)> {
    let bytes = std::fs::read(file).unwrap_or_default();
    let mut records = Vec::new();
    let mut cursor = std::io::Cursor::new(&bytes[..]);
    while (cursor.position() as usize) < bytes.len() {
        let tag = bytes[cursor.position() as usize];
        cursor.set_position(cursor.position() + 1);
        let Ok(envelope) = rmpv::decode::read_value(&mut cursor) else {
            break; // A record still being written.
        };
        let seq = field(&envelope, "seq")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        let payload = field(&envelope, "event")
            .and_then(|event| field(event, "payload"))
            .and_then(|payload| payload.as_slice())
            .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
            .unwrap_or_default();
        records.push((tag, seq, payload));
    }
    records
}

fn tags(file: &Path) -> String {
    records(file)
        .iter()
        .map(|(tag, _, _)| *tag as char)
        .collect()
}

/// A `.wasm` file outside the agent's directories, for the node builder to copy.
fn wasm_file(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).expect("write wasm");
    path
}

/// Fires user event `rec` with `payload` (never coalesced) and waits for the agent's answer.
fn fire(rpc: &mut RawRpc, seq: u64, payload: &str) {
    let body = map(&[
        ("Name", "rec".into()),
        ("Payload", rmpv::Value::Binary(payload.as_bytes().to_vec())),
        ("Coalesce", false.into()),
    ]);
    rpc.request("event", seq, Some(body));
    let header = rpc.read().expect("event answer");
    assert_eq!(field(&header, "Error"), Some(&"".into()), "{header}");
}

/// The `[plugins.rec]` table: user events `rec`, recorded in `data/records.bin`.
const REC: &str = "[plugins.rec]\nevents = \"user:rec\"\nqueue_capacity = 8192\n\
                   dirs = { \"/data\" = \"data\" }\n";

#[test]
fn a_reload_in_the_middle_of_5000_events_loses_and_reorders_nothing() {
    let wasm = tempfile::tempdir().unwrap();
    let node = Node::builder(next_net(), 1)
        .raw_plugin_file("rec.wasm", wasm_file(&wasm, "a.wasm", &recorder(b'A', 0)))
        .config("auto_reload = false")
        .config(REC)
        .start();
    let file = node.dir.path().join("data/records.bin");
    let acked = Arc::new(AtomicUsize::new(0));
    let stream = {
        let (addr, acked) = (node.rpc, Arc::clone(&acked));
        std::thread::spawn(move || {
            let mut rpc = RawRpc::handshake(addr);
            for (seq, i) in (1u64..).zip(0..5000usize) {
                fire(&mut rpc, seq, &i.to_string());
                acked.store(i + 1, Ordering::SeqCst);
            }
        })
    };
    let started = eventually(Duration::from_secs(60), || {
        (records(&file).len() >= 1500).then_some(())
    });
    assert!(
        started.is_some(),
        "the stream did not start\n{}",
        node.log()
    );
    std::fs::write(node.dir.path().join("plugins/rec.wasm"), recorder(b'B', 0)).unwrap();
    let output = stdout_ok(&node.cli(&["reload"]));
    assert!(output.contains("plugin rec: replaced (module)"), "{output}");
    // Events answered after the reload returned were dispatched after the swap.
    let swapped_by = acked.load(Ordering::SeqCst) + 1;
    stream.join().expect("the stream finished");

    let all = eventually(Duration::from_secs(60), || {
        let records = records(&file);
        (records.len() >= 5000).then_some(records)
    })
    .unwrap_or_else(|| panic!("events missing: {}\n{}", records(&file).len(), node.log()));
    let seqs: Vec<u64> = all.iter().map(|(_, seq, _)| *seq).collect();
    assert_eq!(seqs, (1..=5000).collect::<Vec<u64>>(), "lost or reordered");
    let payloads: Vec<&str> = all.iter().map(|(_, _, p)| p.as_str()).collect();
    let expected: Vec<String> = (0..5000).map(|i| i.to_string()).collect();
    assert_eq!(payloads, expected, "lost or reordered");
    let first_b = all.iter().position(|(tag, _, _)| *tag == b'B');
    let first_b = first_b.expect("the new version handled nothing");
    assert!(first_b >= 1500, "the old version handled the start");
    assert!(
        first_b <= swapped_by,
        "an event after the reload reached the old version"
    );
    assert!(
        all[first_b..].iter().all(|(tag, _, _)| *tag == b'B'),
        "the old version came back"
    );
    assert_eq!(node.plugin_stat("rec", "reloads").as_deref(), Some("1"));
    assert_eq!(node.plugin_stat("rec", "dropped").as_deref(), Some("0"));
}

#[test]
fn a_broken_wasm_over_a_good_one_leaves_it_working_until_fixed() {
    let wasm = tempfile::tempdir().unwrap();
    let node = Node::builder(next_net(), 1)
        .raw_plugin_file("rec.wasm", wasm_file(&wasm, "a.wasm", &recorder(b'A', 0)))
        .config(REC)
        .start();
    let file = node.dir.path().join("data/records.bin");
    let plugin = node.dir.path().join("plugins/rec.wasm");
    let mut rpc = RawRpc::handshake(node.rpc);
    let mut send = |n: u64| {
        fire(&mut rpc, n, &n.to_string());
        let written = eventually(Duration::from_secs(30), || {
            (records(&file).len() as u64 == n).then_some(())
        });
        assert!(written.is_some(), "event {n} not recorded\n{}", node.log());
    };
    send(1);

    std::fs::write(&plugin, b"\0asm but not really").unwrap();
    let error = eventually(Duration::from_secs(30), || {
        node.plugin_stat("rec", "last_reload_error")
            .filter(|error| !error.is_empty())
    });
    let error = error.unwrap_or_else(|| panic!("the watcher missed the write\n{}", node.log()));
    assert!(error.contains("cannot compile"), "{error}");
    assert_eq!(node.plugin_stat("rec", "state").as_deref(), Some("running"));
    send(2);

    // A version that compiles but refuses to start is no better.
    std::fs::write(&plugin, recorder(b'B', 7)).unwrap();
    let refused = eventually(Duration::from_secs(30), || {
        node.plugin_stat("rec", "last_reload_error")
            .filter(|error| error.contains("failed to start"))
    });
    assert!(refused.is_some(), "{}", node.log());
    send(3);

    std::fs::write(&plugin, recorder(b'B', 0)).unwrap();
    let fixed = eventually(Duration::from_secs(30), || {
        (node.plugin_stat("rec", "reloads").as_deref() == Some("1")).then_some(())
    });
    assert!(
        fixed.is_some(),
        "the fixed file was not loaded\n{}",
        node.log()
    );
    send(4);
    assert_eq!(tags(&file), "AAAB");
    assert_eq!(
        node.plugin_stat("rec", "last_reload_error").as_deref(),
        Some("")
    );
    assert_eq!(
        node.plugin_stat("rec", "reload_failures").as_deref(),
        Some("2")
    );
    node.wait_for_log(
        "plugin reload failed; the running version stays",
        Duration::ZERO,
    );
}

#[test]
fn serf_toml_changes_apply_on_sighup_and_serf_reload() {
    let wasm = tempfile::tempdir().unwrap();
    let node = Node::builder(next_net(), 1)
        .raw_plugin_file("rec.wasm", wasm_file(&wasm, "a.wasm", &recorder(b'A', 0)))
        .config("auto_reload = false")
        .config(REC)
        .start();
    let config = node.dir.path().join("serf.toml");
    let original = std::fs::read_to_string(&config).unwrap();
    std::fs::create_dir_all(node.dir.path().join("extra")).unwrap();
    std::fs::write(node.dir.path().join("extra/second.wasm"), recorder(b'S', 0)).unwrap();
    let mut rpc = RawRpc::handshake(node.rpc);

    // SIGHUP: a plugin added in serf.toml starts.
    let with_second = format!(
        "{original}[plugins.second]\npath = \"extra/second.wasm\"\nevents = \"user:rec\"\n\
         dirs = {{ \"/data\" = \"second\" }}\n"
    );
    std::fs::write(&config, &with_second).unwrap();
    node.send_signal("HUP");
    node.wait_for_log("==> Caught signal: hangup", Duration::from_secs(10));
    let started = eventually(Duration::from_secs(30), || {
        node.plugin_stat("second", "state")
            .filter(|state| state == "running")
    });
    assert!(started.is_some(), "{}", node.log());
    fire(&mut rpc, 1, "both");
    let second = node.dir.path().join("second/records.bin");
    let seen = eventually(Duration::from_secs(30), || {
        (tags(&second) == "S" && tags(&node.dir.path().join("data/records.bin")) == "A")
            .then_some(())
    });
    assert!(seen.is_some(), "{}", node.log());

    // A broken serf.toml changes nothing and says why.
    std::fs::write(&config, format!("{with_second}bogus_key = 1\n")).unwrap();
    let output = node.cli(&["reload"]);
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("Error reloading") && text.contains("bogus_key"),
        "{text}"
    );

    // `serf reload`: the second plugin goes, the first gets a new filter, the log level
    // applies at once; other settings wait for a restart.
    assert!(!node.log().contains("[DEBUG]"), "{}", node.log());
    let retuned = original.replace("events = \"user:rec\"", "events = \"user:other\"");
    let top = "log_level = \"debug\"\nleave_on_terminate = true";
    std::fs::write(&config, format!("{top}\n{retuned}")).unwrap();
    let text = stdout_ok(&node.cli(&["reload"]));
    for line in [
        "log level: DEBUG (was INFO)",
        "plugin rec: updated (filter)",
        "plugin second: removed",
        "needs a restart to apply: leave_on_terminate",
    ] {
        assert!(text.contains(line), "{line:?} missing from {text}");
    }
    fire(&mut rpc, 2, "filtered out");
    let info = node.info();
    assert_eq!(info["plugin:rec"]["events"], "user:other", "{info}");
    assert_eq!(info["plugin:rec"]["offered"], "1", "{info}");
    assert!(info.get("plugin:second").is_none(), "{info}");
    node.wait_for_log("plugin stopped", Duration::from_secs(10));
    node.wait_for_log("[DEBUG] rpc: rpc request", Duration::from_secs(10));
}

#[test]
fn wasm_files_added_to_or_removed_from_the_plugin_dir_start_and_stop() {
    let node = Node::builder(next_net(), 1).arg("-plugins=plugins").start();
    let plugin = node.dir.path().join("plugins/dropin.wasm");
    // Written elsewhere and renamed in, as deployment tools do.
    let staged = node.dir.path().join("dropin.tmp");
    std::fs::write(&staged, noop_module()).unwrap();
    std::fs::rename(&staged, &plugin).unwrap();
    let running = eventually(Duration::from_secs(30), || {
        node.plugin_stat("dropin", "state")
            .filter(|state| state == "running")
    });
    assert!(running.is_some(), "{}", node.log());
    let mut rpc = RawRpc::handshake(node.rpc);
    fire(&mut rpc, 1, "hello");
    let handled = eventually(Duration::from_secs(30), || {
        (node.plugin_stat("dropin", "handled").as_deref() == Some("1")).then_some(())
    });
    assert!(handled.is_some(), "{}", node.log());

    std::fs::remove_file(&plugin).unwrap();
    let gone = eventually(Duration::from_secs(30), || {
        node.info().get("plugin:dropin").is_none().then_some(())
    });
    assert!(gone.is_some(), "{}", node.log());
    node.wait_for_log("plugin removed", Duration::ZERO);
}

/// Serf's SIGHUP re-reads the config files and applies the log level, the event handlers and
/// the tags. One scenario on a Serf 0.9.4 agent and on ours, in one cluster, through both
/// CLIs; then what we do on purpose otherwise: a reload that does not touch the configured
/// tags keeps the ones `serf tags` set since (Serf puts the configured ones back).
#[test]
fn sighup_applies_handlers_and_tags_on_serf_and_on_our_agent_alike() {
    let net = next_net();
    let scratch = tempfile::tempdir().unwrap();
    let out = |node: &str, file: &str| scratch.path().join(format!("{node}-{file}"));
    let handler = |node: &str, file: &str| {
        format!(
            "user=echo $SERF_USER_EVENT >> {}",
            out(node, file).display()
        )
    };
    let go_config = scratch.path().join("go1.json");
    let go_json = |role: &str, file: &str| {
        serde_json::json!({"tags": {"role": role}, "event_handlers": [handler("go1", file)]})
            .to_string()
    };
    let our_toml = |level: &str, role: &str, file: &str| {
        format!(
            "log_level = \"{level}\"\ntags = {{ role = \"{role}\" }}\nevent_handlers = [{:?}]",
            handler("node2", file)
        )
    };
    std::fs::write(&go_config, go_json("a", "old")).unwrap();
    let go = GoNode::start(
        net,
        1,
        "go1",
        &[&format!("-config-file={}", go_config.display())],
    );
    let before = our_toml("warn", "a", "old");
    let ours = Node::builder(net, 2)
        .config(&before)
        .arg(&format!("-join={}", go.bind))
        .start();
    let logs = || format!("go1:\n{}\nnode2:\n{}", go.log(), ours.log());
    let both = [("go1", "alive"), ("node2", "alive")];
    wait_statuses(go.rpc, &both, Duration::from_secs(60));
    wait_statuses(ours.rpc, &both, Duration::from_secs(60));
    let has = |path: PathBuf, text: &str| {
        let text = text.to_owned();
        eventually(Duration::from_secs(30), move || {
            (std::fs::read_to_string(&path).unwrap_or_default() == text).then_some(())
        })
        .is_some()
    };
    assert!(stdout_ok(&ours.cli(&["event", "before"])).contains("dispatched"));
    for node in ["go1", "node2"] {
        assert!(has(out(node, "old"), "before\n"), "{node}: {}", logs());
    }
    assert!(!ours.log().contains("[DEBUG]"), "{}", ours.log());

    // New handlers, tags and (ours) log level in the files; SIGHUP to both.
    std::fs::write(&go_config, go_json("b", "new")).unwrap();
    let config = ours.dir.path().join("serf.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(&before, &our_toml("debug", "b", "new")),
    )
    .unwrap();
    go.hangup();
    ours.send_signal("HUP");
    for line in [
        "log level: DEBUG (was WARN)",
        "event handlers: 1 added, 1 removed, 0 kept",
        "tags: role=b",
    ] {
        ours.wait_for_log(line, Duration::from_secs(20));
    }
    let role_b_everywhere = eventually(Duration::from_secs(60), || {
        [go.rpc, ours.rpc]
            .iter()
            .all(|rpc| {
                [serf_bin(), go_serf()].iter().all(|cli| {
                    members(cli, *rpc).is_some_and(|seen| {
                        ["go1", "node2"]
                            .iter()
                            .all(|node| seen.get(*node).is_some_and(|m| m.tags["role"] == "b"))
                    })
                })
            })
            .then_some(())
    });
    assert!(role_b_everywhere.is_some(), "{}", logs());
    let fired = go.rpc.to_string();
    let output = serf_tests::run(
        std::process::Command::new(go_serf()).args([
            "event",
            &format!("-rpc-addr={fired}"),
            "after",
        ]),
        Duration::from_secs(30),
    );
    assert!(stdout_ok(&output).contains("dispatched"));
    for node in ["go1", "node2"] {
        assert!(has(out(node, "new"), "after\n"), "{node}: {}", logs());
        assert!(has(out(node, "old"), "before\n"), "{node}: {}", logs());
    }
    ours.wait_for_log("[DEBUG] rpc: rpc request", Duration::from_secs(10));

    // Ours: tags set at runtime survive a reload that leaves the configured tags alone.
    stdout_ok(&ours.cli(&["tags", "-set", "extra=1"]));
    ours.send_signal("HUP");
    ours.wait_for_log("    no changes", Duration::from_secs(20));
    let seen = members(&serf_bin(), ours.rpc).expect("members");
    let expected: BTreeMap<String, String> = [("extra", "1"), ("role", "b")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert_eq!(seen["node2"].tags, expected, "{}", logs());
}
