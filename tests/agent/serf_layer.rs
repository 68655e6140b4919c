//! The Serf layer across mixed clusters: user events, queries, tag changes and member events
//! reach every node, whichever kind of agent (Serf 0.9.4 or ours) and whichever CLI starts
//! them. Serf's nodes handle events with shell handlers, ours with plugins or shell handlers.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serf_tests::cluster::{Agent, GoNode, members, wait_statuses};
use serf_tests::{
    MEMRESPONSE_CONFIG, Node, UPCASE_CONFIG, eventually, go_serf, next_net, run, serf_bin,
    stdout_ok,
};

/// Start-up joins converge in a few seconds; a missed alive message waits for a push/pull.
const CONVERGE: Duration = Duration::from_secs(45);
/// Failure detection (suspicion up to ~12 s with four nodes) and gossip of leaves and tags.
const DETECT: Duration = Duration::from_secs(45);
/// Event delivery, including up to 3 s of coalescing on both kinds of agent.
const DELIVER: Duration = Duration::from_secs(20);

/// Records member events: one `EVENT NAME` line per member into `members.txt` in the agent's
/// working directory (Serf runs handlers there; ours too).
const MEMBER_HANDLER: &str = "-event-handler=member-leave,member-failed=awk -v e=\"$SERF_EVENT\" '{print e, $1}' >> members.txt";

fn join_arg(agent: &dyn Agent) -> String {
    format!("-join={}", agent.bind())
}

/// Runs `bin` (either CLI) against the agent at `rpc`: `args[0]` is the subcommand.
fn cli(bin: &Path, rpc: SocketAddr, args: &[&str]) -> Output {
    let (command, rest) = args.split_first().expect("a subcommand");
    run(
        Command::new(bin)
            .arg(command)
            .arg(format!("-rpc-addr={rpc}"))
            .args(rest),
        Duration::from_secs(30),
    )
}

/// Every agent lists every name as alive, through both CLIs.
fn assert_all_alive(agents: &[&dyn Agent]) {
    let expected: Vec<(&str, &str)> = agents.iter().map(|a| (a.name(), "alive")).collect();
    for agent in agents {
        wait_statuses(agent.rpc(), &expected, CONVERGE);
    }
}

/// Every agent's log, for failure messages.
fn logs(agents: &[&dyn Agent]) -> String {
    agents
        .iter()
        .map(|agent| format!("--- {}:\n{}", agent.name(), agent.log()))
        .collect()
}

/// The file's text, empty while it does not exist.
fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Waits until every file reads `expected`; panics with the files and the logs.
fn wait_files(files: &[PathBuf], expected: &str, agents: &[&dyn Agent]) {
    let done = eventually(DELIVER, || {
        files.iter().all(|f| read(f) == expected).then_some(())
    });
    if done.is_none() {
        let seen: Vec<(String, String)> = files
            .iter()
            .map(|f| (f.display().to_string(), read(f)))
            .collect();
        panic!(
            "expected {expected:?} in every file, saw {seen:#?}\n{}",
            logs(agents)
        );
    }
}

/// Asserts that `check` keeps holding for `period`: a duplicate delivery would come with the
/// gossip retransmits, well within it.
fn assert_stays(period: Duration, what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + period;
    while Instant::now() < deadline {
        if let Err(seen) = check() {
            panic!("{what} changed: {seen}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_user_event_from_either_cli_runs_every_nodes_handler_exactly_once() {
    let net = next_net();
    let go_handler = "-event-handler=user:memresponse=cat >> mem.txt";
    let go1 = GoNode::start(net, 1, "go1", &[go_handler]);
    let ours = |n: u8, seed: &dyn Agent| {
        Node::builder(net, n)
            .config(MEMRESPONSE_CONFIG)
            .plugin("memresponse", "memresponse")
            .arg(&join_arg(seed))
            .start()
    };
    let node2 = ours(2, &go1);
    let go3 = GoNode::start(net, 3, "go3", &[go_handler, &join_arg(&node2)]);
    let node4 = ours(4, &go3);
    let agents: [&dyn Agent; 4] = [&go1, &node2, &go3, &node4];
    assert_all_alive(&agents);
    let files = [
        go1.dir.path().join("mem.txt"),
        node2.dir.path().join("data/mem.txt"),
        go3.dir.path().join("mem.txt"),
        node4.dir.path().join("data/mem.txt"),
    ];

    // Both agents coalesce user events of one name (3 s, 1 s quiet), keeping the newest only:
    // the second event is fired once the first has been handled everywhere.
    let text = stdout_ok(&node2.cli(&["event", "memresponse", "from-ours"]));
    assert!(
        text.contains("Event 'memresponse' dispatched! Coalescing enabled: true"),
        "{text}"
    );
    wait_files(&files, "from-ours\n", &agents);
    let text = stdout_ok(&cli(
        &go_serf(),
        go3.rpc,
        &["event", "memresponse", "from-go"],
    ));
    assert!(
        text.contains("Event 'memresponse' dispatched! Coalescing enabled: true"),
        "{text}"
    );
    wait_files(&files, "from-ours\nfrom-go\n", &agents);

    // Without coalescing, two events of one name fired back to back both run everywhere, in
    // whichever order each node received them.
    for (bin, rpc, payload) in [
        (go_serf(), node4.rpc, "burst-go"),
        (serf_bin(), go1.rpc, "burst-ours"),
    ] {
        let text = stdout_ok(&cli(
            &bin,
            rpc,
            &["event", "-coalesce=false", "memresponse", payload],
        ));
        assert!(text.contains("Coalescing enabled: false"), "{text}");
    }
    let expected = ["burst-go", "burst-ours", "from-go", "from-ours"];
    let sorted_lines = |file: &Path| {
        let mut lines: Vec<String> = read(file).lines().map(String::from).collect();
        lines.sort();
        lines
    };
    let delivered = eventually(DELIVER, || {
        files
            .iter()
            .all(|f| sorted_lines(f) == expected)
            .then_some(())
    });
    assert!(
        delivered.is_some(),
        "{:#?}\n{}",
        files.iter().map(|f| read(f)).collect::<Vec<_>>(),
        logs(&agents)
    );
    assert_stays(
        Duration::from_secs(2),
        "a handled event file",
        || match files.iter().find(|f| sorted_lines(f) != expected) {
            Some(file) => Err(format!("{}: {:?}", file.display(), read(file))),
            None => Ok(()),
        },
    );
}

/// What a `query -format=json` returned: who acked, and each responder's answer.
#[derive(Debug)]
struct Answers {
    acks: BTreeSet<String>,
    responses: BTreeMap<String, String>,
}

/// `query -format=json -timeout=3s upcase PAYLOAD` plus `filters`, through `bin` at `rpc`.
fn query_upcase(bin: &Path, rpc: SocketAddr, filters: &[&str], payload: &str) -> Answers {
    let mut args = vec!["query", "-format=json", "-timeout=3s"];
    args.extend_from_slice(filters);
    args.extend_from_slice(&["upcase", payload]);
    let output = cli(bin, rpc, &args);
    let text = stdout_ok(&output);
    let json: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|error| panic!("{error}: {text}"));
    let acks = json["Acks"]
        .as_array()
        .map(|acks| {
            acks.iter()
                .filter_map(|a| a.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let responses = json["Responses"]
        .as_object()
        .unwrap_or_else(|| panic!("no Responses: {text}"))
        .iter()
        .map(|(node, answer)| (node.clone(), answer.as_str().unwrap_or("?").to_owned()))
        .collect();
    Answers { acks, responses }
}

#[test]
fn a_query_from_either_cli_is_answered_by_both_kinds_and_honours_filters() {
    let net = next_net();
    let go_handler = "-event-handler=query:upcase=tr a-z A-Z";
    let go1 = GoNode::start(net, 1, "go1", &["-tag", "role=web", go_handler]);
    let ours = |n: u8, role: &str, seed: &dyn Agent| {
        Node::builder(net, n)
            .config(UPCASE_CONFIG)
            .plugin("upcase", "upcase")
            // Debug logs, so that a failure message shows each query's path.
            .arg("-log-level=debug")
            .arg(&format!("-tag=role={role}"))
            .arg(&join_arg(seed))
            .start()
    };
    let node2 = ours(2, "web", &go1);
    let go3 = GoNode::start(
        net,
        3,
        "go3",
        &["-tag", "role=db", go_handler, &join_arg(&node2)],
    );
    let node4 = ours(4, "db", &go3);
    let agents: [&dyn Agent; 4] = [&go1, &node2, &go3, &node4];
    assert_all_alive(&agents);

    // Serf's handler answers with the payload plus the newline it adds to stdin; the plugin
    // answers the payload alone.
    let answer = |node: &str| {
        let upper = if node.starts_with("go") {
            "FOO\n"
        } else {
            "FOO"
        };
        (node.to_owned(), upper.to_owned())
    };
    // Every CLI at every kind of agent, without and with filters (all of them must match).
    let everyone: &[&str] = &["go1", "node2", "go3", "node4"];
    let cases: [(PathBuf, SocketAddr, &[&str], &[&str]); 7] = [
        (serf_bin(), node2.rpc, &[], everyone),
        (go_serf(), go1.rpc, &[], everyone),
        (
            serf_bin(),
            go3.rpc,
            &["-node=go1", "-node=node4"],
            &["go1", "node4"],
        ),
        (go_serf(), node4.rpc, &["-node=node2"], &["node2"]),
        (
            go_serf(),
            node2.rpc,
            &["-tag", "role=web"],
            &["go1", "node2"],
        ),
        (
            serf_bin(),
            go1.rpc,
            &["-tag", "role=d.*"],
            &["go3", "node4"],
        ),
        (
            go_serf(),
            node4.rpc,
            &["-node=go1", "-node=go3", "-node=node4", "-tag", "role=db"],
            &["go3", "node4"],
        ),
    ];
    for (bin, rpc, filters, expected) in cases {
        let answers = query_upcase(&bin, rpc, filters, "foo");
        let context = format!("{} at {rpc} with {filters:?}: {answers:?}", bin.display());
        let names: BTreeSet<String> = expected.iter().map(|n| (*n).to_owned()).collect();
        let responses: BTreeMap<String, String> = expected.iter().map(|n| answer(n)).collect();
        // Our agents end a query a grace period after the last expected answer; Serf's CLI must
        // still see every answer (its client closes its channels on `done`).
        let as_expected = answers.acks == names && answers.responses == responses;
        if !as_expected {
            let plugins: Vec<String> = [&node2, &node4]
                .iter()
                .map(|node| format!("{}: {}", node.name, node.info()["plugin:upcase"]))
                .collect();
            panic!(
                "{context}\nexpected acks {names:?} and responses {responses:?}\n\
                 plugin stats: {plugins:#?}\n{}",
                logs(&agents)
            );
        }
    }

    // The text form, through each CLI at each kind of agent.
    for (bin, rpc) in [
        (go_serf(), go3.rpc),
        (serf_bin(), node4.rpc),
        (go_serf(), node2.rpc),
        (serf_bin(), go1.rpc),
    ] {
        let text = stdout_ok(&cli(&bin, rpc, &["query", "-timeout=3s", "upcase", "bar"]));
        for needle in [
            "Query 'upcase' dispatched",
            "Ack from 'go1'",
            "Ack from 'node4'",
            "Response from 'go1': BAR",
            "Response from 'node2': BAR",
            "Response from 'go3': BAR",
            "Response from 'node4': BAR",
            "Total Acks: 4",
            "Total Responses: 4",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from {text}");
        }
    }
}

fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn a_tag_change_through_either_cli_on_either_kind_is_seen_by_every_node() {
    let net = next_net();
    let go1 = GoNode::start(net, 1, "go1", &["-tag", "role=web", "-tag", "old=g1"]);
    let ours = |n: u8, seed: &dyn Agent| {
        Node::builder(net, n)
            .arg("-tag=role=db")
            .arg(&format!("-tag=old=n{n}"))
            .arg(&join_arg(seed))
            .start()
    };
    let node2 = ours(2, &go1);
    let go3 = GoNode::start(
        net,
        3,
        "go3",
        &["-tag", "role=web", "-tag", "old=g3", &join_arg(&node2)],
    );
    let node4 = ours(4, &go3);
    let agents: [&dyn Agent; 4] = [&go1, &node2, &go3, &node4];
    assert_all_alive(&agents);

    // Each agent is changed through one CLI; deletes apply before sets, so `-set old=x
    // -delete old` keeps old=x on both kinds.
    let changes: [(PathBuf, SocketAddr, &[&str]); 4] = [
        (go_serf(), go1.rpc, &["-set", "k=go1", "-delete", "old"]),
        (
            serf_bin(),
            node2.rpc,
            &["-set", "k=node2", "-delete", "old"],
        ),
        (
            serf_bin(),
            go3.rpc,
            &["-set", "old=new3", "-delete", "old", "-delete", "role"],
        ),
        (
            go_serf(),
            node4.rpc,
            &["-set", "old=new4", "-delete", "old", "-delete", "role"],
        ),
    ];
    for (bin, rpc, args) in changes {
        let mut command = vec!["tags"];
        command.extend_from_slice(args);
        let text = stdout_ok(&cli(&bin, rpc, &command));
        assert!(text.contains("Successfully updated agent tags"), "{text}");
    }
    let expected: BTreeMap<&str, BTreeMap<String, String>> = [
        ("go1", tags(&[("role", "web"), ("k", "go1")])),
        ("node2", tags(&[("role", "db"), ("k", "node2")])),
        ("go3", tags(&[("old", "new3")])),
        ("node4", tags(&[("old", "new4")])),
    ]
    .into_iter()
    .collect();
    for agent in agents {
        let mut last = None;
        let seen_everywhere = eventually(DETECT, || {
            for bin in [serf_bin(), go_serf()] {
                let seen = members(&bin, agent.rpc())?;
                let matches = expected
                    .iter()
                    .all(|(name, tags)| seen.get(*name).is_some_and(|m| m.tags == *tags));
                last = Some((bin, seen));
                if !matches {
                    return None;
                }
            }
            Some(())
        });
        assert!(
            seen_everywhere.is_some(),
            "{} never listed {expected:#?}; last saw {last:#?}\n{}",
            agent.name(),
            logs(&agents)
        );
    }
}

/// A four-node cluster, every node recording member-leave and member-failed events: two
/// observers (`go1`, `node2`) and two subjects (`go3`, `node4`).
struct Watched {
    go1: GoNode,
    node2: Node,
    go3: GoNode,
    node4: Node,
}

impl Watched {
    fn start() -> Watched {
        let net = next_net();
        let go1 = GoNode::start(net, 1, "go1", &[MEMBER_HANDLER]);
        let node2 = Node::builder(net, 2)
            .arg(MEMBER_HANDLER)
            .arg(&join_arg(&go1))
            .start();
        let go3 = GoNode::start(net, 3, "go3", &[MEMBER_HANDLER, &join_arg(&node2)]);
        let node4 = Node::builder(net, 4)
            .arg(MEMBER_HANDLER)
            .arg(&join_arg(&go3))
            .start();
        let watched = Watched {
            go1,
            node2,
            go3,
            node4,
        };
        assert_all_alive(&watched.agents());
        watched
    }

    fn agents(&self) -> [&dyn Agent; 4] {
        [&self.go1, &self.node2, &self.go3, &self.node4]
    }

    /// The observers, with their recorded member events.
    fn observers(&self) -> [(&dyn Agent, PathBuf); 2] {
        [
            (
                &self.go1 as &dyn Agent,
                self.go1.dir.path().join("members.txt"),
            ),
            (&self.node2, self.node2.dir.path().join("members.txt")),
        ]
    }

    /// Waits until both observers, through both CLIs, report `statuses`, and their handlers
    /// have recorded exactly `events` (`EVENT NAME` lines, in any order).
    fn wait_observed(&self, statuses: &[(&str, &str)], events: &[&str]) {
        let expected: BTreeSet<&str> = events.iter().copied().collect();
        for (observer, file) in self.observers() {
            wait_statuses(observer.rpc(), statuses, DETECT);
            let recorded = eventually(DELIVER, || {
                let text = read(&file);
                let lines: BTreeSet<&str> = text.lines().collect();
                (lines == expected && text.lines().count() == expected.len()).then_some(())
            });
            assert!(
                recorded.is_some(),
                "{} recorded {:?}, expected {expected:?}\n{}",
                observer.name(),
                read(&file),
                logs(&self.agents())
            );
        }
    }
}

#[test]
fn graceful_leaves_of_both_kinds_show_as_left_with_member_leave_events_everywhere() {
    let mut cluster = Watched::start();
    // Ours leaves through Serf's CLI, Serf's through ours; each agent exits afterwards.
    stdout_ok(&cluster.node4.go_cli(&["leave"]));
    stdout_ok(&cli(&serf_bin(), cluster.go3.rpc, &["leave"]));
    let exited = cluster.node4.wait_exit(Duration::from_secs(20));
    assert!(
        exited.is_some_and(|s| s.success()),
        "node4 did not exit cleanly: {exited:?}\n{}",
        cluster.node4.log()
    );
    cluster.wait_observed(
        &[
            ("go1", "alive"),
            ("node2", "alive"),
            ("go3", "left"),
            ("node4", "left"),
        ],
        &["member-leave go3", "member-leave node4"],
    );
    assert_stays(Duration::from_secs(2), "recorded member events", || {
        for (observer, file) in cluster.observers() {
            if read(&file).lines().count() != 2 {
                return Err(format!("{}: {:?}", observer.name(), read(&file)));
            }
        }
        Ok(())
    });
}

#[test]
fn killed_nodes_of_both_kinds_fail_then_force_leave_through_either_cli_makes_them_left() {
    let mut cluster = Watched::start();
    cluster.go3.kill_9();
    cluster.node4.kill_9();
    cluster.wait_observed(
        &[
            ("go1", "alive"),
            ("node2", "alive"),
            ("go3", "failed"),
            ("node4", "failed"),
        ],
        &["member-failed go3", "member-failed node4"],
    );

    // Our CLI asks our agent to remove Serf's node, Serf's CLI asks Serf's agent to remove ours.
    stdout_ok(&cluster.node2.cli(&["force-leave", "go3"]));
    stdout_ok(&cli(&go_serf(), cluster.go1.rpc, &["force-leave", "node4"]));
    cluster.wait_observed(
        &[
            ("go1", "alive"),
            ("node2", "alive"),
            ("go3", "left"),
            ("node4", "left"),
        ],
        &[
            "member-failed go3",
            "member-failed node4",
            "member-leave go3",
            "member-leave node4",
        ],
    );
}
