//! Granted host commands (ABI v1.1): the `lbsync` example keeps a backends file in step with
//! the `role=web` members and runs a granted `reload` script; `longjob` runs a granted command
//! as a job (serfx's `AsyncJob`); hostile plugins that start commands in a loop, ask for huge
//! output or pass arguments where none are allowed hit a limit, get an error and are counted,
//! while the agent and another plugin go on.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serf_tests::{Node, eventually, next_net, plugin_counter, stdout_ok};

/// A reload script that appends `reload <lines of the backends file>` to `reloads.log`; its
/// PATH comes from the command's table (the agent's environment is not passed on).
fn reload_script(dir: &Path) -> PathBuf {
    let script = dir.join("reload.sh");
    let text = format!(
        "#!/bin/sh\nset -e\necho \"$RELOAD_TAG $(wc -l < {lb}/backends.cfg)\" >> {log}\n",
        lb = dir.join("lb").display(),
        log = dir.join("reloads.log").display()
    );
    std::fs::write(&script, text).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    script
}

fn reloads(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("reloads.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn backends(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("lb/backends.cfg")).unwrap_or_default()
}

/// Waits until the plugin has handled every event it was offered.
fn settled(node: &Node, plugin: &str) {
    let done = eventually(Duration::from_secs(30), || {
        let info = node.info();
        let offered = plugin_counter(&info, plugin, "offered");
        let over =
            plugin_counter(&info, plugin, "handled") + plugin_counter(&info, plugin, "errors");
        (offered > 0 && over >= offered).then_some(())
    });
    assert!(done.is_some(), "{} never settled: {}", plugin, node.log());
}

fn join(node: &Node, to: &Node) {
    stdout_ok(&node.cli(&["join", &to.bind.to_string()]));
}

#[test]
fn lbsync_renders_web_backends_and_reloads_after_joins_a_leave_and_a_kill_9() {
    let work = tempfile::tempdir().unwrap();
    let script = reload_script(work.path());
    let net = next_net();
    let lb = Node::builder(net, 1)
        .arg("-tag=role=lb")
        .plugin("lbsync", "lbsync")
        .config(&format!(
            "[plugins.lbsync]\n\
             events = \"member-join,member-leave,member-failed,member-update,member-reap\"\n\
             capabilities = [\"members\"]\n\
             dirs = {{ \"/lb\" = \"{lb}\" }}\n\
             config = {{ file = \"/lb/backends.cfg\", tag = \"role=web\", port = 8080 }}\n\
             [plugins.lbsync.commands.reload]\n\
             argv = [\"{script}\"]\n\
             timeout = \"10s\"\n\
             env = {{ PATH = \"/usr/bin:/bin\", RELOAD_TAG = \"reload\" }}\n",
            lb = work.path().join("lb").display(),
            script = script.display()
        ))
        .start();
    let web2 = Node::builder(net, 2).arg("-tag=role=web").start();
    let mut web3 = Node::builder(net, 3).arg("-tag=role=web").start();
    let db4 = Node::builder(net, 4).arg("-tag=role=db").start();

    join(&web2, &lb);
    join(&web3, &lb);
    let two = format!(
        "server node2 {}:8080 check\nserver node3 {}:8080 check\n",
        web2.bind.ip(),
        web3.bind.ip()
    );
    let rendered = eventually(Duration::from_secs(30), || {
        (backends(work.path()) == two).then_some(())
    });
    assert!(
        rendered.is_some(),
        "{:?}\n{}",
        backends(work.path()),
        lb.log()
    );
    settled(&lb, "lbsync");
    let after_joins = reloads(work.path());
    assert_eq!(
        after_joins.last().map(String::as_str),
        Some("reload 2"),
        "{after_joins:?}"
    );
    // One reload per change of the file: perhaps one at the start (no backends yet, if the
    // plugin ran before the joins reached it), then one or two for the joins.
    assert!((1..=3).contains(&after_joins.len()), "{after_joins:?}");

    // A member without the tag changes nothing: no reload.
    join(&db4, &lb);
    let seen = eventually(Duration::from_secs(30), || {
        stdout_ok(&lb.cli(&["members"]))
            .contains("node4")
            .then_some(())
    });
    assert!(seen.is_some());
    settled(&lb, "lbsync");
    assert_eq!(reloads(work.path()), after_joins, "{}", lb.log());

    // A graceful leave, then a kill -9 (member-failed): each one more reload.
    stdout_ok(&web3.cli(&["leave"]));
    web3.wait_exit(Duration::from_secs(20));
    let one = format!("server node2 {}:8080 check\n", web2.bind.ip());
    let left = eventually(Duration::from_secs(30), || {
        (backends(work.path()) == one).then_some(())
    });
    assert!(left.is_some(), "{:?}\n{}", backends(work.path()), lb.log());
    settled(&lb, "lbsync");
    assert_eq!(
        reloads(work.path()).last().map(String::as_str),
        Some("reload 1")
    );
    assert_eq!(reloads(work.path()).len(), after_joins.len() + 1);

    let mut web2 = web2;
    web2.kill_9();
    let failed = eventually(Duration::from_secs(60), || {
        backends(work.path()).is_empty().then_some(())
    });
    assert!(
        failed.is_some(),
        "{:?}\n{}",
        backends(work.path()),
        lb.log()
    );
    settled(&lb, "lbsync");
    let all = reloads(work.path());
    assert_eq!(all.last().map(String::as_str), Some("reload 0"), "{all:?}");
    assert_eq!(all.len(), after_joins.len() + 2, "{all:?}");

    // Grants and counters in `serf info`.
    let info = lb.info();
    assert_eq!(info["plugin:lbsync"]["commands"], "reload", "{info}");
    assert_eq!(
        plugin_counter(&info, "lbsync", "command_calls"),
        all.len() as u64
    );
    assert_eq!(plugin_counter(&info, "lbsync", "command_denials"), 0);
    assert_eq!(plugin_counter(&info, "lbsync", "command_failures"), 0);
    drop(db4);
}

#[test]
fn longjob_runs_a_granted_command_as_a_job_checked_killed_and_reaped_from_serf_query() {
    let node = Node::builder(next_net(), 1)
        .plugin("longjob", "longjob")
        .config(
            "[plugins.longjob]\nevents = \"query:longjob\"\n\
             [plugins.longjob.commands.count]\n\
             argv = [\"/bin/bash\", \"-c\", \"for i in $(seq 1 300); do echo $i; sleep 1; done\"]\n\
             timeout = \"10m\"\nenv = { PATH = \"/usr/bin:/bin\" }\n",
        )
        .start();
    let query = |payload: &str| stdout_ok(&node.cli(&["query", "-timeout=5s", "longjob", payload]));
    let text = query("exec count");
    assert!(text.contains("started 1"), "{text}");
    // The count goes on while the plugin answers.
    let counting = eventually(Duration::from_secs(30), || {
        let text = query("check 1");
        (text.contains("1 count running exit=-") && text.contains("last=\"3\"")).then_some(())
    });
    assert!(counting.is_some(), "{}", node.log());
    let listed = stdout_ok(&node.cli(&["jobs", "-format=json"]));
    assert!(
        listed.contains("\"command\"") && listed.contains("/bin/bash"),
        "{listed}"
    );
    let text = query("kill 1");
    assert!(text.contains("killed 1"), "{text}");
    let killed = eventually(Duration::from_secs(10), || {
        query("check 1").contains("1 count killed").then_some(())
    });
    assert!(killed.is_some(), "{}", node.log());
    // The whole process group is gone: no `sleep` of the count survives.
    let gone = eventually(Duration::from_secs(10), || {
        let ps = std::process::Command::new("pgrep")
            .args(["-f", "seq 1 300"])
            .output()
            .ok()?;
        ps.stdout.is_empty().then_some(())
    });
    assert!(gone.is_some(), "the command's processes survived the kill");
    assert!(query("reap 1").contains("reaped 1"));
    assert!(query("exec rm").contains("command rm is not granted"));
    node.wait_for_log("command rm is not granted", Duration::from_secs(10));
}

/// A plugin in WebAssembly text whose `serf_handle` body is `handle`, with the msgpack
/// `CommandRequest` for `name` (and `args`) at address 2048 (its length as `LEN`).
fn commander(dir: &Path, file: &str, name: &str, args: &[&str], handle: &str) -> PathBuf {
    let mut request = vec![0x83, 0xa4];
    request.extend_from_slice(b"name");
    request.push(0xa0 | name.len() as u8);
    request.extend_from_slice(name.as_bytes());
    request.push(0xa4);
    request.extend_from_slice(b"args");
    request.push(0x90 | args.len() as u8);
    for arg in args {
        request.push(0xa0 | arg.len() as u8);
        request.extend_from_slice(arg.as_bytes());
    }
    request.push(0xa5);
    request.extend_from_slice(b"stdin");
    request.extend_from_slice(&[0xc4, 0x00]);
    let data: String = request.iter().map(|byte| format!("\\{byte:02x}")).collect();
    let text = format!(
        "(module
          (import \"serf\" \"command_run\" (func $run (param i32 i32 i32 i32) (result i32)))
          (import \"serf\" \"command_start\" (func $start (param i32 i32) (result i32)))
          (memory (export \"memory\") 2)
          (data (i32.const 2048) \"{data}\")
          (func (export \"serf_plugin_abi_v1\"))
          (func (export \"serf_input_buffer\") (param i32) (result i32) i32.const 65536)
          (func (export \"serf_init\") (param i32 i32) (result i32) i32.const 0)
          (func (export \"serf_handle\") (param i32 i32) (result i32)
            (local $i i32) (local $r i32)
            {}
            i32.const 0))",
        handle.replace("LEN", &request.len().to_string())
    );
    let path = dir.join(file);
    std::fs::write(&path, wat::parse_str(text).expect("valid commander module")).unwrap();
    path
}

/// `count` calls of `call` (`$run` or `$start`) in a row.
fn in_a_loop(count: u32, call: &str) -> String {
    format!(
        "(block $done (loop $again
            (br_if $done (i32.ge_u (local.get $i) (i32.const {count})))
            (drop {call})
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $again)))"
    )
}

#[test]
fn hostile_command_plugins_hit_their_limits_and_are_counted_while_others_go_on() {
    let work = tempfile::tempdir().unwrap();
    let marker = work.path().join("ran-with-args");
    let looper = commander(
        work.path(),
        "looper.wasm",
        "sleepy",
        &[],
        &in_a_loop(100, "(call $start (i32.const 2048) (i32.const LEN))"),
    );
    // Traps if the result it gets is larger than the 16 KiB stdout cap and some room.
    let flooder = commander(
        work.path(),
        "flooder.wasm",
        "flood",
        &[],
        "(local.set $r (call $run (i32.const 2048) (i32.const LEN) (i32.const 4096) (i32.const 60000)))
         (if (i32.gt_s (local.get $r) (i32.const 20000)) (then unreachable))
         (if (i32.lt_s (local.get $r) (i32.const 16384)) (then unreachable))",
    );
    let arguer = commander(
        work.path(),
        "arguer.wasm",
        "touch",
        &["-x"],
        "(local.set $r (call $run (i32.const 2048) (i32.const LEN) (i32.const 4096) (i32.const 60000)))
         (if (i32.ne (local.get $r) (i32.const -3)) (then unreachable))",
    );
    let node = Node::builder(next_net(), 1)
        .raw_plugin_file("looper.wasm", looper)
        .raw_plugin_file("flooder.wasm", flooder)
        .raw_plugin_file("arguer.wasm", arguer)
        .plugin("upcase", "upcase")
        .config(&format!(
            "[plugins.looper]\nevents = \"user:go\"\nmax_jobs = 2\n\
             [plugins.looper.commands.sleepy]\nargv = [\"/bin/sleep\", \"300\"]\ntimeout = \"10m\"\n\
             [plugins.flooder]\nevents = \"user:go\"\n\
             [plugins.flooder.commands.flood]\n\
             argv = [\"/bin/sh\", \"-c\", \"/usr/bin/head -c 100000000 /dev/zero\"]\n\
             max_output_kib = 16\n\
             [plugins.arguer]\nevents = \"user:go\"\n\
             [plugins.arguer.commands.touch]\nargv = [\"/usr/bin/touch\", \"{}\"]\n\
             [plugins.upcase]\nevents = \"query:upcase\"\n",
            marker.display()
        ))
        .start();
    stdout_ok(&node.cli(&["event", "go", "1"]));
    for plugin in ["looper", "flooder", "arguer"] {
        settled(&node, plugin);
    }
    let info = node.info();
    // The loop: ten spawns a second at most, and two jobs at once (max_jobs).
    assert_eq!(
        plugin_counter(&info, "looper", "command_calls"),
        100,
        "{info}"
    );
    assert_eq!(
        plugin_counter(&info, "looper", "command_limited"),
        98,
        "{info}"
    );
    assert_eq!(plugin_counter(&info, "looper", "jobs"), 2, "{info}");
    // The flood: cut at 16 KiB, the rest drained, the run a success.
    assert_eq!(
        plugin_counter(&info, "flooder", "traps"),
        0,
        "{}",
        node.log()
    );
    assert_eq!(
        plugin_counter(&info, "flooder", "command_failures"),
        0,
        "{info}"
    );
    // The arguments: refused with NotAllowed, counted, logged, and nothing ran.
    assert_eq!(
        plugin_counter(&info, "arguer", "traps"),
        0,
        "{}",
        node.log()
    );
    assert_eq!(
        plugin_counter(&info, "arguer", "command_denials"),
        1,
        "{info}"
    );
    assert!(!marker.exists(), "the refused command never started");
    node.wait_for_log(
        "command touch takes no arguments from the plugin",
        Duration::from_secs(5),
    );
    // The agent and another plugin go on.
    let text = stdout_ok(&node.cli(&["query", "-timeout=5s", "upcase", "still"]));
    assert!(text.contains("STILL"), "{text}");
    stdout_ok(&node.cli(&["members"]));
    // The two jobs' processes die with their group when killed.
    let jobs: Vec<serde_json::Value> =
        serde_json::from_str(&stdout_ok(&node.cli(&["jobs", "-format=json"]))).unwrap();
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    for job in &jobs {
        stdout_ok(&node.cli(&["jobs", "-kill", &job["id"].to_string()]));
    }
    let gone = eventually(Duration::from_secs(10), || {
        let ps = std::process::Command::new("pgrep")
            .args(["-f", "^/bin/sleep 300$"])
            .output()
            .ok()?;
        ps.stdout.is_empty().then_some(())
    });
    assert!(gone.is_some(), "killed command jobs left processes behind");
}

/// Fires user event `bench` over `rpc` and returns when it was sent, in ns since the epoch.
fn fire_bench(rpc: &mut serf_tests::RawRpc, seq: u64) -> u128 {
    let body = serf_tests::map(&[
        ("Name", "bench".into()),
        ("Payload", rmpv::Value::Binary(Vec::new())),
        ("Coalesce", false.into()),
    ]);
    let sent = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    rpc.request("event", seq, Some(body));
    let header = rpc.read().expect("event answer");
    assert_eq!(
        serf_tests::field(&header, "Error"),
        Some(&"".into()),
        "{header}"
    );
    sent
}

/// Fires `runs` events, one at a time, each once the stamp of the last one is in `stamps` and
/// 110 ms have passed;
/// returns the median and the 90th percentile of event-to-stamp, in microseconds.
fn event_to_stamp(rpc: std::net::SocketAddr, stamps: &Path, runs: u64) -> (u128, u128) {
    let mut rpc = serf_tests::RawRpc::handshake(rpc);
    let mut latencies = Vec::new();
    for seq in 1..=runs {
        // Paced under the plugin's limit of 10 commands a second, for both agents.
        std::thread::sleep(Duration::from_millis(110));
        let sent = fire_bench(&mut rpc, seq);
        let stamp = eventually(Duration::from_secs(10), || {
            let text = std::fs::read_to_string(stamps).ok()?;
            let lines: Vec<&str> = text.lines().collect();
            (lines.len() as u64 == seq).then(|| lines[lines.len() - 1].parse::<u128>().ok())?
        })
        .unwrap_or_else(|| panic!("no stamp for event {seq}"));
        latencies.push((stamp.saturating_sub(sent)) / 1000);
    }
    latencies.sort_unstable();
    (
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 9 / 10],
    )
}

/// The cost of one granted command run, against Serf 0.9.4's shell handler for the same
/// script: `cargo test -p serf-tests --test agent commands::command_run_benchmark -- --ignored
/// --nocapture` (docs/benchmarks.md). Both agents run `stamp.sh`, which appends the time, for
/// each `bench` user event fired over RPC; our plugin runs it with `command_run`.
#[test]
#[ignore = "a benchmark: run it on demand"]
fn command_run_benchmark() {
    const RUNS: u64 = 100;
    let work = tempfile::tempdir().unwrap();
    let script = |name: &str| {
        let path = work.path().join(format!("{name}.sh"));
        let stamps = work.path().join(format!("{name}.stamps"));
        std::fs::write(
            &path,
            format!("#!/bin/sh\n/bin/date +%s%N >> {}\n", stamps.display()),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        (path, stamps)
    };
    let (ours_script, ours_stamps) = script("ours");
    let (go_script, go_stamps) = script("go");
    let plugin = commander(
        work.path(),
        "stamper.wasm",
        "stamp",
        &[],
        "(drop (call $run (i32.const 2048) (i32.const LEN) (i32.const 4096) (i32.const 60000)))",
    );
    let net = next_net();
    let ours = Node::builder(net, 1)
        .raw_plugin_file("stamper.wasm", plugin)
        .config(&format!(
            "[plugins.stamper]\nevents = \"user:bench\"\n\
             [plugins.stamper.commands.stamp]\nargv = [\"{}\"]\n",
            ours_script.display()
        ))
        .start();
    let handler = format!("user:bench={}", go_script.display());
    let go = serf_tests::cluster::GoNode::start(net, 2, "go2", &["-event-handler", &handler]);
    let (go_p50, go_p90) = event_to_stamp(go.rpc, &go_stamps, RUNS);
    let (ours_p50, ours_p90) = event_to_stamp(ours.rpc, &ours_stamps, RUNS);
    let info = ours.info();
    let calls = plugin_counter(&info, "stamper", "command_calls");
    let time_us = plugin_counter(&info, "stamper", "command_time_us");
    report(&format!(
        "{RUNS} events each, event fired over RPC to stamp.sh's time, microseconds:\n\
         serf 0.9.4 shell handler: median {go_p50}, p90 {go_p90}\n\
         granted command:          median {ours_p50}, p90 {ours_p90}\n\
         command_run wall time in the agent: {} us a run on average ({calls} runs)",
        time_us / calls.max(1)
    ));
}

/// Prints a benchmark's figures (with `--nocapture`).
#[allow(clippy::print_stdout, reason = "a benchmark's report")]
fn report(text: &str) {
    println!("{text}");
}
