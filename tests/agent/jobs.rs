//! Long jobs (ABI v1.1): the `longjob` example plugin starts jobs from its query handler; the
//! jobs run on the agent's job pool while the plugin goes on with its events, and `serf jobs`
//! lists, shows, kills and reaps them over the RPC. Job records survive a restart.

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serf_tests::{Node, RawRpc, eventually, field, map, next_net, serf_bin, stdout_ok};

/// The `longjob` plugin, answering `longjob` queries (and taking, and ignoring, `tick` user
/// events).
fn longjob_node() -> Node {
    Node::builder(next_net(), 1)
        .plugin("longjob", "longjob")
        .config(
            "[plugins.longjob]\nevents = \"query:longjob,user:tick\"\ncapabilities = [\"jobs\"]\n",
        )
        .start()
}

/// A counter of the plugin's section in `serf info`.
fn counter(node: &Node, name: &str) -> u64 {
    let info = node.info();
    info["plugin:longjob"][name]
        .as_str()
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {info}"))
}

/// Sends `longjob` queries over one RPC connection and returns the node's answers.
struct Asker {
    rpc: RawRpc,
    seq: u64,
}

impl Asker {
    fn new(addr: SocketAddr) -> Asker {
        Asker {
            rpc: RawRpc::handshake(addr),
            seq: 0,
        }
    }

    /// One query, answered by the plugin (the query ends once the only member answered).
    fn ask(&mut self, payload: &str) -> String {
        self.seq += 1;
        let seq = self.seq;
        let body = map(&[
            ("FilterNodes", rmpv::Value::Nil),
            ("FilterTags", rmpv::Value::Map(Vec::new())),
            ("Name", "longjob".into()),
            ("Payload", rmpv::Value::Binary(payload.as_bytes().to_vec())),
            ("RelayFactor", 0.into()),
            ("RequestAck", false.into()),
            ("Timeout", 5_000_000_000u64.into()),
        ]);
        self.rpc.request("query", seq, Some(body));
        let header = self.rpc.read().expect("query accepted");
        assert_eq!(field(&header, "Error"), Some(&"".into()), "{header}");
        let mut answer = None;
        loop {
            let header = self.rpc.read().expect("query record header");
            assert_eq!(field(&header, "Seq"), Some(&seq.into()), "{header}");
            let record = self.rpc.read().expect("query record");
            match field(&record, "Type").and_then(rmpv::Value::as_str) {
                Some("response") => {
                    let payload = field(&record, "Payload").and_then(rmpv::Value::as_slice);
                    answer = payload.map(|bytes| String::from_utf8_lossy(bytes).into_owned());
                }
                Some("done") => break,
                _ => {}
            }
        }
        answer.unwrap_or_else(|| panic!("no answer to {payload:?}"))
    }
}

/// `serf jobs -format json`, parsed.
fn jobs_json(node: &Node) -> Vec<serde_json::Value> {
    let text = stdout_ok(&node.cli(&["jobs", "-format=json"]));
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{error}: {text}"))
}

/// Waits until job `id` is in `state` (per `serf jobs -show`), and returns the job as JSON.
fn wait_state(node: &Node, id: u64, state: &str, timeout: Duration) -> serde_json::Value {
    let found = eventually(timeout, || {
        let output = node.cli(&["jobs", "-format=json", "-show", &id.to_string()]);
        let job: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
        (job["state"] == state).then_some(job)
    });
    found.unwrap_or_else(|| {
        panic!(
            "job {id} never {state}: {}\n{}",
            stdout_ok(&node.cli(&["jobs"])),
            node.log()
        )
    })
}

#[test]
fn a_plugin_running_a_ten_second_job_handles_the_next_100_events_at_once() {
    let node = longjob_node();
    let mut asker = Asker::new(node.rpc);
    assert_eq!(asker.ask("start deploy 10"), "started 1");
    let started = Instant::now();
    let handled_before = counter(&node, "handled");

    // The next 100 events, over one connection. Had the job held the plugin's queue, none
    // would be handled before it ended (or they would pile up and drop).
    let mut rpc = RawRpc::handshake(node.rpc);
    for seq in 1..=100u64 {
        let body = map(&[
            ("Name", "tick".into()),
            ("Payload", rmpv::Value::Binary(seq.to_string().into_bytes())),
            ("Coalesce", false.into()),
        ]);
        rpc.request("event", seq, Some(body));
        let header = rpc.read().expect("event answer");
        assert_eq!(field(&header, "Error"), Some(&"".into()), "{header}");
    }
    let handled = eventually(Duration::from_secs(30), || {
        let handled = counter(&node, "handled") - handled_before;
        (handled >= 100).then_some(handled)
    });
    assert_eq!(handled, Some(100), "{}", node.log());
    let job = &jobs_json(&node)[0];
    assert_eq!(
        job["state"],
        "running",
        "the 100 events were handled only {:?} after the job started: {job}",
        started.elapsed()
    );
    // And the plugin still answers while its job works.
    let answer = asker.ask("check 1");
    assert!(answer.starts_with("1 deploy running"), "{answer}");

    // The job ends on its own, and the plugin hears of it.
    let job = wait_state(&node, 1, "finished", Duration::from_secs(30));
    assert_eq!(job["exit_status"], 0, "{job}");
    assert!(
        job["output"]
            .as_array()
            .is_some_and(|lines| lines.iter().any(|line| line == "job 1 deploy: 10/10 s")),
        "{job}"
    );
    node.wait_for_log("job 1 deploy finished exit=0", Duration::from_secs(10));
    assert_eq!(counter(&node, "dropped"), 0);
    assert_eq!(counter(&node, "jobs"), 1);
}

/// Our agent started again in the directory of a stopped [`Node`]; killed when dropped.
struct Restarted {
    child: Child,
}

impl Restarted {
    fn start(node: &Node) -> Restarted {
        let log = std::fs::File::create(node.dir.path().join("restarted.log")).expect("log");
        let child = Command::new(serf_bin())
            .arg("agent")
            .arg(format!(
                "-config-file={}",
                node.dir.path().join("serf.toml").display()
            ))
            .current_dir(node.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start serf agent");
        let up = eventually(Duration::from_secs(60), || {
            TcpStream::connect(node.rpc).ok()
        });
        assert!(up.is_some(), "the restarted agent never opened RPC");
        Restarted { child }
    }
}

impl Drop for Restarted {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_job_outlives_its_handler_and_is_listed_killed_reaped_and_kept_across_a_restart() {
    let mut node = longjob_node();
    let query = |payload: &str| {
        let output = node.cli(&["query", "-timeout=5s", "longjob", payload]);
        stdout_ok(&output)
    };

    // The handler that started the job has returned: its answer came back.
    let text = query("start backup 120");
    assert!(text.contains("Response from 'node1': started 1"), "{text}");
    wait_state(&node, 1, "running", Duration::from_secs(10));
    let text = query("start quick 0.2 3");
    assert!(text.contains("started 2"), "{text}");
    let job = wait_state(&node, 2, "finished", Duration::from_secs(10));
    assert_eq!(job["exit_status"], 3, "{job}");
    node.wait_for_log("job 2 quick finished exit=3", Duration::from_secs(10));

    // Listed, in text and JSON.
    let list = stdout_ok(&node.cli(&["jobs"]));
    let lines: Vec<&str> = list.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("STATE"),
        "{list}"
    );
    assert!(
        lines[1].contains("longjob") && lines[1].contains("backup"),
        "{list}"
    );
    assert!(lines[1].contains("running"), "{list}");
    assert!(
        lines[2].contains("quick") && lines[2].contains("finished"),
        "{list}"
    );
    let jobs = jobs_json(&node);
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert_eq!(jobs[0]["arg"], "120");

    // A running job cannot be reaped; killed, it can.
    let output = node.cli(&["jobs", "-reap", "1"]);
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("job 1 has not ended (running)"), "{text}");
    let text = stdout_ok(&node.cli(&["jobs", "-kill", "1"]));
    assert_eq!(text.trim(), "Job 1 killed");
    let show = stdout_ok(&node.cli(&["jobs", "-show", "1"]));
    assert!(show.contains("State:       killed"), "{show}");
    assert!(show.contains("killed through the RPC"), "{show}");
    assert!(show.contains("job 1 backup: working for 120s"), "{show}");
    node.wait_for_log("job 1 backup killed exit=-1", Duration::from_secs(10));
    let output = node.cli(&["jobs", "-kill", "1"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("has already ended (killed)"));

    // The plugin reaps its own job; the CLI reaps the other.
    assert!(query("reap 2").contains("reaped 2"));
    let text = stdout_ok(&node.cli(&["jobs", "-reap", "1"]));
    assert_eq!(text.trim(), "Reaped job 1");
    assert_eq!(stdout_ok(&node.cli(&["jobs"])).trim(), "No jobs");

    // One job that ended and one cut off by a crash; both records survive it.
    assert!(query("start short 0").contains("started 3"));
    wait_state(&node, 3, "finished", Duration::from_secs(10));
    assert!(query("start long 120").contains("started 4"));
    wait_state(&node, 4, "running", Duration::from_secs(10));
    node.kill_9();
    let records = node.dir.path().join("data/jobs");
    assert!(records.join("3.json").exists() && records.join("4.json").exists());

    let _restarted = Restarted::start(&node);
    let jobs = jobs_json(&node);
    let states: Vec<(&serde_json::Value, &serde_json::Value)> =
        jobs.iter().map(|job| (&job["id"], &job["state"])).collect();
    assert_eq!(
        states,
        [
            (&3.into(), &"finished".into()),
            (&4.into(), &"failed".into())
        ],
        "{jobs:?}"
    );
    assert_eq!(
        jobs[1]["error"], "the agent stopped while the job was running",
        "{jobs:?}"
    );
    // Ids go on from the highest ever given out, reaped ones included.
    let text = stdout_ok(&node.cli(&["query", "-timeout=5s", "longjob", "start again 0"]));
    assert!(text.contains("started 5"), "{text}");
    let text = stdout_ok(&node.cli(&["jobs", "-reap"]));
    assert!(text.starts_with("Reaped"), "{text}");
}
