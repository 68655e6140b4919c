//! Shell event handlers: one capture script under Serf 0.9.4 and under our agent in one
//! cluster, compared event by event; then our own additions (queues per handler, timeouts).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serf_tests::cluster::{GoNode, wait_statuses};
use serf_tests::{Node, eventually, next_net, run, serf_bin, stdout_ok};

/// Joins plus Serf's member-event coalescing (up to 3 s) plus a push/pull.
const CONVERGE: Duration = Duration::from_secs(75);

/// Records one event per run: stdin into `<dir>/<time>-<pid>.in`, then the `SERF_*`
/// variables into `.env` (renamed into place last, so a `.env` file means a finished run). Both
/// agents pass their own environment on, as Serf does; the test suite's `SERF_TEST_*` are left out.
/// A query is answered with `resp-from-<node>`.
const CAPTURE_SCRIPT: &str = r#"dir=$1
f="$dir/$(date +%s%N)-$$"
cat > "$f.in"
env | grep '^SERF_' | grep -v '^SERF_TEST_' | sort > "$f.tmp"
mv "$f.tmp" "$f.env"
if [ "$SERF_EVENT" = query ]; then printf 'resp-from-%s\n' "$SERF_SELF_NAME"; fi
"#;

/// One run of the capture script.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Capture {
    env: BTreeMap<String, String>,
    stdin: String,
}

/// Every finished run recorded in `dir`, oldest first.
fn captures(dir: &Path) -> Vec<Capture> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    names.retain(|path| path.extension().is_some_and(|ext| ext == "env"));
    names.sort();
    names
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let env = text
                .lines()
                .filter_map(|line| line.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            let stdin = std::fs::read_to_string(path.with_extension("in")).unwrap_or_default();
            Capture { env, stdin }
        })
        .collect()
}

/// The first capture in `dir` that `pick` accepts, waiting for it; `logs` explains a failure.
fn wait_capture(
    dir: &Path,
    what: &str,
    logs: &dyn Fn() -> String,
    pick: impl Fn(&Capture) -> bool,
) -> Capture {
    let found = eventually(CONVERGE, || captures(dir).into_iter().find(|c| pick(c)));
    found.unwrap_or_else(|| {
        let seen = captures(dir);
        panic!("no {what} in {}: {seen:#?}\n{}", dir.display(), logs())
    })
}

/// Drops the node-specific `SERF_SELF_NAME` (after checking it) and, in member lines, puts
/// the tags in one order (Serf writes them in Go's random map order).
fn normalized(mut capture: Capture, node: &str) -> Capture {
    assert_eq!(
        capture.env.remove("SERF_SELF_NAME").as_deref(),
        Some(node),
        "{capture:?}"
    );
    if capture.env["SERF_EVENT"].starts_with("member-") {
        let lines: Vec<String> = capture
            .stdin
            .lines()
            .map(|line| {
                let mut fields: Vec<&str> = line.split('\t').collect();
                let mut tags: Vec<&str> = fields.get(3).map_or(vec![], |t| t.split(',').collect());
                tags.sort_unstable();
                let tags = tags.join(",");
                fields.truncate(3);
                format!("{}\t{tags}\n", fields.join("\t"))
            })
            .collect();
        capture.stdin = lines.concat();
    }
    capture
}

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn is_event(capture: &Capture, key: &str, value: &str) -> bool {
    capture.env.get(key).is_some_and(|v| v == value)
}

/// `query -format=json` through `cli` against `rpc`: the responses by node.
fn query(cli: &Path, rpc: std::net::SocketAddr, name: &str, payload: &str) -> serde_json::Value {
    let output = run(
        Command::new(cli).args([
            "query",
            &format!("-rpc-addr={rpc}"),
            "-format=json",
            "-timeout=5s",
            name,
            payload,
        ]),
        Duration::from_secs(30),
    );
    let json: serde_json::Value = serde_json::from_str(&stdout_ok(&output)).expect("query json");
    json["Responses"].clone()
}

#[test]
fn a_script_sees_the_same_environment_and_stdin_under_serf_and_under_our_agent() {
    let net = next_net();
    let scratch = tempfile::tempdir().expect("temp dir");
    let script = scratch.path().join("capture.sh");
    std::fs::write(&script, CAPTURE_SCRIPT).expect("write script");
    let go_dir = scratch.path().join("go1");
    let our_dir = scratch.path().join("node2");
    for dir in [&go_dir, &our_dir] {
        std::fs::create_dir(dir).expect("capture dir");
    }
    let handler = |dir: &Path| format!("-event-handler=sh {} {}", script.display(), dir.display());
    let go = GoNode::start(
        net,
        1,
        "go1",
        &["-tag", "role=web", "-tag", "dc=east", &handler(&go_dir)],
    );
    let ours = Node::builder(net, 2)
        .arg("-tag=role=web")
        .arg("-tag=dc=east")
        .arg(&handler(&our_dir))
        .arg(&format!("-join={}", go.bind))
        .start();
    // A third node, without a handler, whose join both handlers see.
    let joiner = GoNode::start(
        net,
        3,
        "go3",
        &[
            "-tag",
            "role=db",
            "-tag",
            "zone=z1",
            &format!("-join={}", go.bind),
        ],
    );
    let logs = || format!("go1:\n{}\nnode2:\n{}", go.log(), ours.log());
    let all = [("go1", "alive"), ("node2", "alive"), ("go3", "alive")];
    wait_statuses(go.rpc, &all, CONVERGE);
    wait_statuses(ours.rpc, &all, CONVERGE);

    // member-join: compare the joiner's line (a coalesced event may list others too).
    let join_line = format!("go3\t{}\tdb\trole=db,zone=z1\n", joiner.bind.ip());
    let joined = |dir: &Path, node: &str| {
        let capture = wait_capture(dir, "member-join of go3", &logs, |c| {
            is_event(c, "SERF_EVENT", "member-join") && c.stdin.contains("go3\t")
        });
        let mut capture = normalized(capture, node);
        capture.stdin = lines_starting_with(&capture.stdin, "go3\t");
        capture
    };
    let (go_join, our_join) = (joined(&go_dir, "go1"), joined(&our_dir, "node2"));
    assert_eq!(our_join, go_join);
    let self_env = [
        ("SERF_SELF_ROLE", "web"),
        ("SERF_TAG_DC", "east"),
        ("SERF_TAG_ROLE", "web"),
    ];
    let mut expected = env(&self_env);
    expected.insert("SERF_EVENT".into(), "member-join".into());
    assert_eq!(
        our_join,
        Capture {
            env: expected,
            stdin: join_line
        }
    );

    // A user event with a payload, fired through Serf's CLI at our agent.
    let fired = ours.go_cli(&["event", "deploy", "v1.2.3"]);
    assert!(stdout_ok(&fired).contains("Event 'deploy' dispatched!"));
    let deployed = |dir: &Path, node: &str| {
        let capture = wait_capture(dir, "user event deploy", &logs, |c| {
            is_event(c, "SERF_USER_EVENT", "deploy")
        });
        normalized(capture, node)
    };
    let (go_user, our_user) = (deployed(&go_dir, "go1"), deployed(&our_dir, "node2"));
    assert_eq!(our_user, go_user);
    assert_eq!(our_user.stdin, "v1.2.3\n");
    assert_eq!(our_user.env["SERF_EVENT"], "user");

    // Queries through both CLIs, at both agents: both handlers answer each one.
    for (ltime, cli, rpc) in [
        (1, serf_bin(), go.rpc),
        (2, serf_tests::go_serf(), ours.rpc),
    ] {
        let responses = query(&cli, rpc, "upcase", "hello");
        assert_eq!(responses["go1"], "resp-from-go1\n", "{responses}");
        assert_eq!(responses["node2"], "resp-from-node2\n", "{responses}");
        assert_eq!(
            responses.as_object().map(|r| r.len()),
            Some(2),
            "{responses}"
        );
        let asked = |dir: &Path, node: &str| {
            let capture = wait_capture(dir, "query upcase", &logs, |c| {
                is_event(c, "SERF_QUERY_NAME", "upcase")
                    && is_event(c, "SERF_QUERY_LTIME", &ltime.to_string())
            });
            normalized(capture, node)
        };
        let (go_query, our_query) = (asked(&go_dir, "go1"), asked(&our_dir, "node2"));
        assert_eq!(our_query, go_query);
        assert_eq!(our_query.stdin, "hello\n");
    }
    drop(joiner);
}

/// The lines of `text` that start with `prefix`, newlines kept.
fn lines_starting_with(text: &str, prefix: &str) -> String {
    text.split_inclusive('\n')
        .filter(|line| line.starts_with(prefix))
        .collect()
}

/// Whether a process has exited (a zombie nobody reaps counts: PID 1 may not reap).
fn is_gone(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

#[test]
fn a_slow_handler_delays_no_other_and_a_timeout_kills_a_hanging_script() {
    let net = next_net();
    let node = Node::builder(net, 1)
        .config(
            "[[handlers]]\nevents = \"user:hang\"\n\
             command = \"sleep 600 & echo $$ $! > hang.pids; wait\"\nevent_timeout = \"3s\"\n\
             [[handlers]]\nevents = \"user\"\ncommand = \"sleep 5\"\n\
             [[handlers]]\nevents = \"user\"\ncommand = \"echo $SERF_USER_EVENT >> fast.txt\"\n\
             [[handlers]]\nevents = \"query:big\"\n\
             command = \"printf '%2000s' x\"\n",
        )
        .start();
    let started = Instant::now();
    for name in ["hang", "fast"] {
        let output = node.cli(&["event", "-coalesce=false", name]);
        assert!(stdout_ok(&output).contains("dispatched"));
    }
    let fast = node.dir.path().join("fast.txt");
    let done = eventually(Duration::from_secs(20), || {
        (std::fs::read_to_string(&fast).ok()? == "hang\nfast\n").then_some(())
    });
    assert!(
        done.is_some(),
        "fast.txt: {:?}\n{}",
        std::fs::read_to_string(&fast),
        node.log()
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the fast handler waited {:?}",
        started.elapsed()
    );

    let timed_out = eventually(Duration::from_secs(20), || {
        let info = node.info();
        (info["handler:1"]["timeouts"] == "1").then_some(info)
    });
    let info = timed_out.unwrap_or_else(|| panic!("no timeout counted: {}", node.info()));
    assert_eq!(info["handler:1"]["events"], "user:hang");
    assert_eq!(info["handler:1"]["timeout"], "3s");
    assert_eq!(info["handler:3"]["succeeded"], "2");
    assert_eq!(
        info["event_handlers"]["user:hang"],
        info["handler:1"]["script"]
    );
    assert_eq!(
        info["event_handlers"]["query:big"],
        info["handler:4"]["script"]
    );
    let pids = std::fs::read_to_string(node.dir.path().join("hang.pids")).expect("hang.pids");
    for pid in pids.split_whitespace() {
        let gone = eventually(Duration::from_secs(10), || is_gone(pid).then_some(()));
        assert!(
            gone.is_some(),
            "process {pid} of the hanging script survived"
        );
    }

    // Output over the response size limit is not sent: the querier sees the ack only.
    let responses = query(&serf_bin(), node.rpc, "big", "");
    assert_eq!(
        responses.as_object().map(|r| r.len()),
        Some(0),
        "{responses}"
    );
    node.wait_for_log(
        "response exceeds limit of 1024 bytes",
        Duration::from_secs(10),
    );
}
