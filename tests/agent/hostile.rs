//! Plugins that attack the sandbox on purpose, in a real agent: host-call time bombs and file
//! descriptor exhaustion. Whatever they do, a well-behaved plugin keeps answering queries,
//! `serf members` keeps answering, and the agent stops when told.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serf_tests::{Node, RawRpc, eventually, field, map, next_net, plugin_counter, stdout_ok};

/// tests/wat/hostile.wat with `handle` as its `serf_handle` body, written to a file.
fn hostile(dir: &tempfile::TempDir, name: &str, pages: u32, handle: &str) -> PathBuf {
    let text = include_str!("../wat/hostile.wat")
        .replace("PAGES", &pages.to_string())
        .replace("HANDLE", handle);
    let path = dir.path().join(format!("{name}.wasm"));
    std::fs::write(&path, wat::parse_str(text).expect("hostile.wat is valid")).unwrap();
    path
}

/// 64 MiB "texts" logged and set as the error, forever.
const LOG_BOMB: &str = "(loop $again
    (drop (call $log (i32.const 2) (i32.const 1048576) (i32.const 67108864)))
    (drop (call $set_error (i32.const 1048576) (i32.const 67108864)))
    (br $again))";

/// The most random bytes WASI gives in one call, and 60 MiB, forever.
const RANDOM_BOMB: &str = "(loop $again
    (drop (call $random_get (i32.const 1048576) (i32.const 1048576)))
    (drop (call $random_get (i32.const 1048576) (i32.const 62914560)))
    (br $again))";

/// 16 MiB and 1 MiB writes to stdout, forever.
const STDOUT_BOMB: &str = "(i32.store (i32.const 0) (i32.const 1048576))
    (i32.store (i32.const 16) (i32.const 1048576))
    (i32.store (i32.const 4) (i32.const 16777216))
    (i32.store (i32.const 20) (i32.const 1048576))
    (loop $again
        (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
        (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 8)))
        (br $again))";

/// Opens files "0".."9999" in its granted directory (fd 3) without closing any.
const FD_BOMB: &str = "(block $done (loop $again
    (br_if $done (i32.ge_u (local.get $i) (i32.const 10000)))
    (i32.store8 (i32.const 2048) (i32.add (i32.const 48) (i32.rem_u (local.get $i) (i32.const 10))))
    (i32.store8 (i32.const 2049) (i32.add (i32.const 48) (i32.rem_u (i32.div_u (local.get $i) (i32.const 10)) (i32.const 10))))
    (i32.store8 (i32.const 2050) (i32.add (i32.const 48) (i32.rem_u (i32.div_u (local.get $i) (i32.const 100)) (i32.const 10))))
    (i32.store8 (i32.const 2051) (i32.add (i32.const 48) (i32.div_u (local.get $i) (i32.const 1000))))
    (drop (call $path_open (i32.const 3) (i32.const 0) (i32.const 2048) (i32.const 4)
        (i32.const 1) (i64.const 66) (i64.const 66) (i32.const 0) (i32.const 4096)))
    (local.set $i (i32.add (local.get $i) (i32.const 1)))
    (br $again)))";

fn fire(rpc: &mut RawRpc, seq: u64, name: &str) {
    let body = map(&[
        ("Name", name.into()),
        ("Payload", rmpv::Value::Binary(b"x".to_vec())),
        ("Coalesce", false.into()),
    ]);
    rpc.request("event", seq, Some(body));
    let header = rpc.read().expect("event answer");
    assert_eq!(field(&header, "Error"), Some(&"".into()), "{header}");
}

/// The agent's open file descriptors.
fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

#[test]
fn host_call_time_bombs_leave_queries_members_and_the_stop_on_time() {
    let wat_dir = tempfile::tempdir().unwrap();
    let bombs = [
        ("logbomb", LOG_BOMB),
        ("randombomb", RANDOM_BOMB),
        ("stdoutbomb", STDOUT_BOMB),
    ];
    let mut builder = Node::builder(next_net(), 1)
        .plugin("upcase", "upcase")
        .config("[plugins.upcase]\nevents = \"query:upcase\"\n");
    for (name, handle) in bombs {
        let file = hostile(&wat_dir, name, 1040, handle);
        builder = builder
            .raw_plugin_file(&format!("{name}.wasm"), file)
            .config(&format!(
                "[plugins.{name}]\nevents = \"user:boom\"\nevent_timeout = \"500ms\"\n\
                 max_memory_mib = 128\nfuel_per_event = 1000000000000\n"
            ));
    }
    let mut node = builder.start();
    // Enough events to keep every bomb busy for the whole test (6 s each at 500 ms).
    let mut rpc = RawRpc::handshake(node.rpc);
    for seq in 1..=12 {
        fire(&mut rpc, seq, "boom");
    }
    for i in 0..5 {
        let started = Instant::now();
        let members = stdout_ok(&node.cli(&["members"]));
        assert!(members.contains("node1"), "{members}");
        let took = started.elapsed();
        let text = stdout_ok(&node.go_cli(&["query", "-timeout=3s", "upcase", &format!("q{i}")]));
        assert!(
            text.contains(&format!("Response from 'node1': Q{i}")),
            "query {i} while the bombs run: {text}\nmembers took {took:?}\n{}",
            node.log()
        );
    }
    // Every bomb event ends at its deadline, counted as a timeout, not as handled.
    let info = eventually(Duration::from_secs(60), || {
        let info = node.info();
        bombs
            .iter()
            .all(|(name, _)| plugin_counter(&info, name, "timeouts") == 12)
            .then_some(info)
    })
    .unwrap_or_else(|| panic!("bombs timed out each event: {}", node.info()));
    for (name, _) in bombs {
        assert_eq!(plugin_counter(&info, name, "handled"), 0, "{name}: {info}");
    }
    assert!(plugin_counter(&info, "upcase", "handled") >= 5, "{info}");
    // The stop waits for no bomb beyond its deadline and its 1 s shutdown.
    let started = Instant::now();
    node.send_signal("TERM");
    let status = node.wait_exit(Duration::from_secs(30));
    assert!(status.is_some(), "agent still running 30 s after SIGTERM");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(15), "stop took {took:?}");
}

#[test]
fn a_plugin_opening_files_without_end_holds_a_bounded_number() {
    let wat_dir = tempfile::tempdir().unwrap();
    let file = hostile(&wat_dir, "fdbomb", 1, FD_BOMB);
    let mut node = Node::builder(next_net(), 1)
        .plugin("upcase", "upcase")
        .raw_plugin_file("fdbomb.wasm", file)
        .config(
            "[plugins.upcase]\nevents = \"query:upcase\"\n\
             [plugins.fdbomb]\nevents = \"user:boom\"\ndirs = { \"/data\" = \"fdbomb\" }\n",
        )
        .start();
    let pid = node.child().id();
    let before = descriptors(pid);
    let mut rpc = RawRpc::handshake(node.rpc);
    let mut most = before;
    for seq in 1..=10 {
        fire(&mut rpc, seq, "boom");
        for _ in 0..20 {
            most = most.max(descriptors(pid));
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let info = eventually(Duration::from_secs(30), || {
        let info = node.info();
        (plugin_counter(&info, "fdbomb", "traps") == 10).then_some(info)
    })
    .unwrap_or_else(|| panic!("each event trapped at the cap: {}", node.info()));
    assert_eq!(plugin_counter(&info, "fdbomb", "handled"), 0, "{info}");
    assert!(
        most < before + 128 + 32,
        "{before} descriptors at start, {most} at most while the plugin opened files"
    );
    node.wait_for_log("WASI resources", Duration::from_secs(5));
    let text = stdout_ok(&node.go_cli(&["query", "-timeout=3s", "upcase", "still"]));
    assert!(text.contains("Response from 'node1': STILL"), "{text}");
    let members = stdout_ok(&node.cli(&["members"]));
    assert!(members.contains("alive"), "{members}");
}

/// Context switches of the agent's thread named `name`, if it has one.
fn thread_switches(pid: u32, name: &str) -> Option<u64> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).ok()?;
        let switches = status
            .lines()
            .filter(|line| line.contains("ctxt_switches"))
            .filter_map(|line| line.split_whitespace().last()?.parse::<u64>().ok())
            .sum();
        return Some(switches);
    }
    None
}

#[test]
fn the_epoch_thread_sleeps_while_no_plugin_runs() {
    let mut node = Node::builder(next_net(), 1)
        .plugin("upcase", "upcase")
        .config("[plugins.upcase]\nevents = \"query:upcase\"\n")
        .start();
    let text = stdout_ok(&node.go_cli(&["query", "-timeout=2s", "upcase", "tick"]));
    assert!(text.contains("TICK"), "{text}");
    let pid = node.child().id();
    // It ticks on for a second after the last call, then parks.
    std::thread::sleep(Duration::from_millis(1500));
    let before = thread_switches(pid, "serf-epoch").expect("the epoch thread runs");
    std::thread::sleep(Duration::from_secs(2));
    let after = thread_switches(pid, "serf-epoch").expect("the epoch thread runs");
    // Ticking, it would switch about 200 times in 2 s; asleep, about twice.
    assert!(
        after - before < 50,
        "{} context switches while idle",
        after - before
    );
}

#[test]
fn plugin_text_cannot_forge_an_agent_log_line() {
    // Logs, writes to stdout and sets as its error a text that starts a new, official-looking
    // line with a terminal escape; then fails.
    let forged = "ok\\n2026/12/07 10:00:00 [ERR] agent: FORGED\\1b[2K";
    let handle = format!(
        "(drop (call $log (i32.const 2) (i32.const 4096) (i32.const {len})))
         (i32.store (i32.const 0) (i32.const 4096))
         (i32.store (i32.const 4) (i32.const {len}))
         (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
         (i32.store (i32.const 16) (i32.const 5000))
         (i32.store (i32.const 20) (i32.const 1))
         (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 8)))
         (drop (call $set_error (i32.const 4096) (i32.const {len})))
         (return (i32.const 1))",
        len = "ok\n2026/12/07 10:00:00 [ERR] agent: FORGED\u{1b}[2K".len()
    );
    let wat_dir = tempfile::tempdir().unwrap();
    let text = include_str!("../wat/hostile.wat")
        .replace("PAGES", "1")
        .replace("HANDLE", &handle)
        .replace(
            "(func (export \"serf_plugin_abi_v1\"))",
            &format!(
                "(data (i32.const 4096) \"{forged}\") (data (i32.const 5000) \"\\n\")
                 (func (export \"serf_plugin_abi_v1\"))"
            ),
        );
    let path = wat_dir.path().join("forger.wasm");
    std::fs::write(&path, wat::parse_str(text).expect("valid")).unwrap();
    let node = Node::builder(next_net(), 1)
        .raw_plugin_file("forger.wasm", path)
        .config("[plugins.forger]\nevents = \"user:boom\"\n")
        .start();
    let mut rpc = RawRpc::handshake(node.rpc);
    fire(&mut rpc, 1, "boom");
    node.wait_for_log("FORGED", Duration::from_secs(30));
    // Give the three copies time to reach the log: `log` and the error keep the text on one
    // line with the newline escaped; stdout is line-oriented, so its second line is a plugin
    // line of its own.
    let log = eventually(Duration::from_secs(10), || {
        let log = node.log();
        (log.matches("FORGED").count() >= 3).then_some(log)
    })
    .unwrap_or_else(|| panic!("three copies of the text: {}", node.log()));
    let lines: Vec<&str> = log.lines().filter(|line| line.contains("FORGED")).collect();
    for line in &lines {
        let own = line.trim_start().split_once(" [").is_some_and(|(_, rest)| {
            rest.starts_with("INFO] plugin: forger: ") || rest.starts_with("WARN] plugin: forger: ")
        });
        assert!(own, "a line that is not the plugin's: {line:?}");
        assert!(
            !line.contains('\u{1b}'),
            "a raw escape reached the log: {line:?}"
        );
        assert!(
            line.contains("\\u{1b}[2K"),
            "the escape is shown escaped: {line:?}"
        );
    }
    let escaped = lines
        .iter()
        .filter(|line| line.contains("ok\\n2026/12/07"))
        .count();
    assert_eq!(
        escaped, 2,
        "log and error text keep the newline escaped: {lines:?}"
    );
}
