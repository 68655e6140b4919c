//! Mixed clusters: Serf 0.9.4 agents beside ours, and what each of them sees.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{Node, eventually, go_serf, run, serf_bin};

/// A key for `-encrypt` (bytes 0x00..0x1f, the reference's test key).
pub const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// Another valid key that opens nothing the first one sealed.
pub const OTHER_KEY: &str = "ERESEhISEhISEhISEhISEhISEhISEhISEhISEhISEhI=";

/// A Serf 0.9.4 agent process.
pub struct GoNode {
    pub name: String,
    pub bind: SocketAddr,
    pub rpc: SocketAddr,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl GoNode {
    /// Starts `/usr/bin/serf agent` as `name` on `127.<net>.0.<n>` and waits for its RPC port.
    pub fn start(net: u8, n: u8, name: &str, args: &[&str]) -> GoNode {
        let ip = format!("127.{net}.0.{n}");
        let bind: SocketAddr = format!("{ip}:7946").parse().expect("bind");
        let rpc: SocketAddr = format!("{ip}:7373").parse().expect("rpc");
        let dir = tempfile::tempdir().expect("temp dir");
        let log = std::fs::File::create(dir.path().join("agent.log")).expect("log");
        let child = Command::new(go_serf())
            .arg("agent")
            .arg(format!("-node={name}"))
            .arg(format!("-bind={bind}"))
            .arg(format!("-rpc-addr={rpc}"))
            .arg("-log-level=debug")
            .args(args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start /usr/bin/serf");
        let mut node = GoNode {
            name: name.to_owned(),
            bind,
            rpc,
            dir,
            child: Some(child),
        };
        let up = eventually(Duration::from_secs(20), || {
            if let Some(child) = node.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "go agent {} exited with {status}: {}",
                    node.name,
                    node.log()
                );
            }
            TcpStream::connect(node.rpc).ok()
        });
        assert!(
            up.is_some(),
            "go agent {name} never opened RPC: {}",
            node.log()
        );
        node
    }

    /// Everything the agent logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// SIGKILL: the agent vanishes without a word.
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` and waits for the exit.
    pub fn signal(&mut self, signal: &str) {
        if let Some(child) = self.child.as_mut() {
            crate::send_signal(child.id(), signal);
            eventually(Duration::from_secs(20), || child.try_wait().ok().flatten());
        }
    }

    /// Sends SIGHUP: the agent reloads its configuration.
    pub fn hangup(&self) {
        let child = self.child.as_ref().expect("the agent runs");
        crate::send_signal(child.id(), "HUP");
    }
}

impl Drop for GoNode {
    fn drop(&mut self) {
        self.kill_9();
    }
}

/// What one agent says about one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub addr: String,
    pub status: String,
    pub tags: BTreeMap<String, String>,
}

/// `members -format=json` from `cli` against the agent at `rpc`, by name; `None` if the
/// agent does not answer.
pub fn members(cli: &Path, rpc: SocketAddr) -> Option<BTreeMap<String, Seen>> {
    let output = run(
        Command::new(cli)
            .arg("members")
            .arg(format!("-rpc-addr={rpc}"))
            .arg("-format=json"),
        Duration::from_secs(20),
    );
    if !output.status.success() {
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    let mut seen = BTreeMap::new();
    for member in json["members"].as_array()? {
        let tags = member["tags"]
            .as_object()
            .map(|tags| {
                tags.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        seen.insert(
            member["name"].as_str()?.to_owned(),
            Seen {
                addr: member["addr"].as_str()?.to_owned(),
                status: member["status"].as_str()?.to_owned(),
                tags,
            },
        );
    }
    Some(seen)
}

/// Waits until the agent at `rpc`, asked through both CLIs, reports `expected` (name →
/// status) for those names; panics with what it last saw.
pub fn wait_statuses(rpc: SocketAddr, expected: &[(&str, &str)], timeout: Duration) {
    let mut last = None;
    let ok = eventually(timeout, || {
        for cli in [serf_bin(), go_serf()] {
            let seen = members(&cli, rpc)?;
            let matches = expected
                .iter()
                .all(|(name, status)| seen.get(*name).is_some_and(|m| m.status == *status));
            last = Some(seen);
            if !matches {
                return None;
            }
        }
        Some(())
    });
    assert!(
        ok.is_some(),
        "agent at {rpc} never reported {expected:?}; last saw {last:#?}"
    );
}

/// The RPC address of any agent.
pub trait Agent {
    fn rpc(&self) -> SocketAddr;
    fn bind(&self) -> SocketAddr;
    fn name(&self) -> &str;
    fn log(&self) -> String;
}

impl Agent for GoNode {
    fn rpc(&self) -> SocketAddr {
        self.rpc
    }
    fn bind(&self) -> SocketAddr {
        self.bind
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn log(&self) -> String {
        GoNode::log(self)
    }
}

impl Agent for Node {
    fn rpc(&self) -> SocketAddr {
        self.rpc
    }
    fn bind(&self) -> SocketAddr {
        self.bind
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn log(&self) -> String {
        Node::log(self)
    }
}
