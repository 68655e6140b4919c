//! A third-party client: serfclient, the Python library (`pip install serfclient`).

use std::process::Command;
use std::time::Duration;

use serf_tests::{Node, eventually, next_net, run, stdout_ok};

const SCRIPT: &str = r#"
import json, sys
from serfclient import SerfClient

client = SerfClient(host=sys.argv[1], port=int(sys.argv[2]))
members = client.members().body["Members"]
filtered = client.members(tags={"role": "web"}).body["Members"]
none = client.members(status="failed").body["Members"]
client.event("memresponse", "from-python", coalesce=False)
stats = client.stats().body
print(json.dumps({
    "names": [m["Name"] for m in members],
    "addr": list(members[0]["Addr"]),
    "port": members[0]["Port"],
    "tags": members[0]["Tags"],
    "status": members[0]["Status"],
    "filtered": len(filtered),
    "failed": len(none),
    "agent": stats["agent"]["name"],
}))
"#;

/// The interpreter with serfclient: `SERF_TEST_PYTHON` (tests/run-all.sh sets up a venv), else
/// `python3`.
fn python() -> Command {
    Command::new(std::env::var_os("SERF_TEST_PYTHON").unwrap_or_else(|| "python3".into()))
}

#[test]
fn python_serfclient_works_against_our_agent() {
    let probe = run(
        python().args(["-c", "import serfclient"]),
        Duration::from_secs(30),
    );
    assert!(
        probe.status.success(),
        "the Python client is missing: run `pip install serfclient` (tests/run-all.sh does)"
    );
    let node = Node::builder(next_net(), 1)
        .arg("-tag=role=web")
        .plugin("memresponse", "memresponse")
        .config(
            "[plugins.memresponse]\nevents = \"user:memresponse\"\n\
             dirs = { \"/data\" = \"data\" }\nconfig = { file = \"/data/mem.txt\" }\n",
        )
        .start();
    let output = run(
        python().args([
            "-c",
            SCRIPT,
            &node.rpc.ip().to_string(),
            &node.rpc.port().to_string(),
        ]),
        Duration::from_secs(30),
    );
    let json: serde_json::Value = serde_json::from_str(stdout_ok(&output).trim()).unwrap();
    assert_eq!(json["names"], serde_json::json!(["node1"]), "{json}");
    let ip: Vec<u8> = node
        .bind
        .ip()
        .to_string()
        .split('.')
        .map(|b| b.parse().unwrap())
        .collect();
    assert_eq!(json["addr"], serde_json::json!(ip), "{json}");
    assert_eq!(json["port"], 7946, "{json}");
    assert_eq!(json["tags"]["role"], "web", "{json}");
    assert_eq!(json["status"], "alive", "{json}");
    assert_eq!(json["filtered"], 1, "{json}");
    assert_eq!(json["failed"], 0, "{json}");
    assert_eq!(json["agent"], "node1", "{json}");
    let file = node.dir.path().join("data/mem.txt");
    let written = eventually(Duration::from_secs(20), || {
        std::fs::read_to_string(&file)
            .ok()
            .filter(|text| text == "from-python\n")
    });
    assert!(written.is_some(), "{}", node.log());
}
