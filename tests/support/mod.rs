//! Test support: real agents as child processes on loopback addresses.
//!
//! Each test takes its own `127.<net>.0.0/24` (see [`next_net`]), so tests run in parallel
//! without sharing ports, also beside another suite on the same machine. A [`Node`] kills its
//! own child (by its PID, through `Child::kill`) when dropped; waits poll to a deadline
//! ([`eventually`]) instead of sleeping.

pub mod cluster;

use std::fs::{File, TryLockError};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository")
        .to_path_buf()
}

/// Where cargo builds: `CARGO_TARGET_DIR`, else `target/` in the repository.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

/// Our `serf` binary (`SERF_BIN` overrides), built by `cargo build -p serf-host`.
pub fn serf_bin() -> PathBuf {
    let path = std::env::var_os("SERF_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("debug/serf"));
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p serf-host` first",
        path.display()
    );
    path
}

/// A cargo example of the workspace, built by `cargo build -p <crate> --example <name>`.
pub fn example_bin(name: &str) -> PathBuf {
    let path = target_dir().join("debug/examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --examples --workspace` first",
        path.display()
    );
    path
}

/// Serf 0.9.4 from Debian, the compatibility oracle.
pub fn go_serf() -> PathBuf {
    let path = PathBuf::from("/usr/bin/serf");
    assert!(
        path.exists(),
        "/usr/bin/serf is missing: run `apt-get install -y serf` (tests/run-all.sh does)"
    );
    path
}

/// A plugin built for wasm32-wasip1 with the `plugin` profile.
pub fn wasm(name: &str) -> PathBuf {
    let path = target_dir().join(format!("wasm32-wasip1/plugin/{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --profile plugin --target wasm32-wasip1 -p {name}` first",
        path.display()
    );
    path
}

/// One compiled-plugin cache for every agent the tests start, so each plugin compiles once.
pub fn shared_plugin_cache() -> PathBuf {
    target_dir().join("test-plugin-cache")
}

/// A fresh `127.<net>.0.0/24` for one test.
///
/// A net is held through an exclusive lock on a file of its own under the system's temporary
/// directory, kept until this test process exits (the kernel drops the lock with the process,
/// also after a crash). So two suites running at once on one machine (two checkouts, two
/// developers, a benchmark beside the tests) never hand out the same net; a net that another
/// process holds is skipped. The same holds tests apart under cargo-nextest, which runs each
/// test in a process of its own: the locks, not this process's count, decide which net is
/// free. Each process starts at a net picked by its process ID and goes round from there, so
/// a net that a test process just gave up is rarely the next one taken.
pub fn next_net() -> u8 {
    static TRIED: AtomicU16 = AtomicU16::new(0);
    static HELD: Mutex<Vec<File>> = Mutex::new(Vec::new());
    let span = u16::from(LAST_NET - FIRST_NET) + 1;
    let start = (std::process::id() % u32::from(span)) as u16;
    let dir = std::env::temp_dir().join("serf-test-nets");
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|error| panic!("cannot create {}: {error}", dir.display()));
    loop {
        let tried = TRIED.fetch_add(1, Ordering::Relaxed);
        assert!(
            tried < span,
            "no free loopback net left in 127.{FIRST_NET}-{LAST_NET}.0.0/24"
        );
        let net = FIRST_NET + ((start + tried) % span) as u8;
        let path = dir.join(format!("{net}.lock"));
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|error| panic!("cannot open {}: {error}", path.display()));
        match file.try_lock() {
            Ok(()) => {
                HELD.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(file);
                return net;
            }
            Err(TryLockError::WouldBlock) => continue,
            Err(TryLockError::Error(error)) => panic!("cannot lock {}: {error}", path.display()),
        }
    }
}

/// The loopback nets the tests may take: `127.100.0.0/24` to `127.249.0.0/24`.
const FIRST_NET: u8 = 100;
const LAST_NET: u8 = 249;

pub use serf_testkit::eventually;

/// Runs a command to completion, killing it after `timeout`.
pub fn run(command: &mut Command, timeout: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    let finished = eventually(timeout, || child.try_wait().ok().flatten());
    if finished.is_none() {
        let _ = child.kill();
    }
    let output = child.wait_with_output().expect("child output");
    assert!(
        finished.is_some(),
        "{command:?} did not finish within {timeout:?}: {output:?}"
    );
    output
}

/// A command's stdout as text, asserting it succeeded.
pub fn stdout_ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "command failed: {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `kill -<signal> <pid>`, asserting that the signal was sent.
pub fn send_signal(pid: u32, signal: &str) {
    let sent = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
    assert!(
        sent.is_ok_and(|s| s.success()),
        "kill -{signal} {pid} failed"
    );
}

/// An agent process of ours.
pub struct Node {
    /// Its node name.
    pub name: String,
    /// Its gossip address.
    pub bind: SocketAddr,
    /// Its RPC address.
    pub rpc: SocketAddr,
    /// Its working directory (config, plugins, data).
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

/// What a [`Node`] starts with.
pub struct NodeBuilder {
    name: String,
    ip: String,
    config: String,
    plugins: Vec<(String, PathBuf)>,
    args: Vec<String>,
}

impl NodeBuilder {
    /// Adds config text (TOML) to the node's serf.toml.
    pub fn config(mut self, toml: &str) -> NodeBuilder {
        self.config.push_str(toml);
        self.config.push('\n');
        self
    }

    /// Copies a built plugin into the node's plugin directory as `<as_name>.wasm`.
    pub fn plugin(mut self, wasm_name: &str, as_name: &str) -> NodeBuilder {
        self.plugins.push((as_name.to_owned(), wasm(wasm_name)));
        self
    }

    /// Writes a file into the node's plugin directory (for broken-plugin tests).
    pub fn raw_plugin_file(mut self, file_name: &str, source: PathBuf) -> NodeBuilder {
        self.plugins.push((file_name.to_owned(), source));
        self
    }

    /// Extra `serf agent` arguments.
    pub fn arg(mut self, arg: &str) -> NodeBuilder {
        self.args.push(arg.to_owned());
        self
    }

    /// Starts the agent and waits until its RPC port answers and its plugins have loaded (or
    /// failed to: plugins load in the background while the agent already answers).
    pub fn start(self) -> Node {
        let mut node = self.spawn();
        let up = eventually(Duration::from_secs(60), || {
            if let Ok(Some(status)) = node.child().try_wait() {
                panic!("agent {} exited with {status}: {}", node.name, node.log());
            }
            TcpStream::connect(node.rpc).ok()
        });
        assert!(
            up.is_some(),
            "agent {} never opened RPC: {}",
            node.name,
            node.log()
        );
        let loaded = eventually(Duration::from_secs(60), || {
            let output = node.cli(&["info", "-format=json"]);
            if !output.status.success() {
                return Some(()); // RPC wants a key (`rpc_auth`): nothing to wait for then.
            }
            let info: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
            let loading = info
                .as_object()?
                .values()
                .any(|section| section["state"] == "loading");
            (!loading).then_some(())
        });
        assert!(
            loaded.is_some(),
            "agent {} never loaded its plugins: {}",
            node.name,
            node.log()
        );
        node
    }

    /// Starts the agent without waiting for it.
    pub fn spawn(self) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let plugin_dir = dir.path().join("plugins");
        std::fs::create_dir_all(&plugin_dir).expect("plugin dir");
        for (name, source) in &self.plugins {
            let file = if name.contains('.') {
                name.clone()
            } else {
                format!("{name}.wasm")
            };
            std::fs::copy(source, plugin_dir.join(file)).expect("copy plugin");
        }
        let bind: SocketAddr = format!("{}:7946", self.ip).parse().expect("bind addr");
        let rpc: SocketAddr = format!("{}:7373", self.ip).parse().expect("rpc addr");
        let config = format!(
            "node_name = \"{}\"\nbind = \"{bind}\"\nrpc_addr = \"{rpc}\"\ndata_dir = \"data\"\n\
             plugin_dir = \"plugins\"\nplugin_cache_dir = \"{}\"\n{}",
            self.name,
            shared_plugin_cache().display(),
            self.config
        );
        let config_path = dir.path().join("serf.toml");
        std::fs::write(&config_path, config).expect("write serf.toml");
        let log = std::fs::File::create(dir.path().join("agent.log")).expect("log file");
        let child = Command::new(serf_bin())
            .arg("agent")
            .arg(format!("-config-file={}", config_path.display()))
            .args(&self.args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start serf agent");
        Node {
            name: self.name,
            bind,
            rpc,
            dir,
            child: Some(child),
        }
    }
}

impl Node {
    /// A node named `node<n>` on `127.<net>.0.<n>`.
    pub fn builder(net: u8, n: u8) -> NodeBuilder {
        NodeBuilder {
            name: format!("node{n}"),
            ip: format!("127.{net}.0.{n}"),
            config: String::new(),
            plugins: Vec::new(),
            args: Vec::new(),
        }
    }

    /// `-rpc-addr=...` for either CLI.
    pub fn rpc_flag(&self) -> String {
        format!("-rpc-addr={}", self.rpc)
    }

    /// Runs our CLI against this node.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with(&serf_bin(), args)
    }

    /// Runs Serf's own CLI (`/usr/bin/serf`) against this node.
    pub fn go_cli(&self, args: &[&str]) -> Output {
        self.cli_with(&go_serf(), args)
    }

    /// Runs the given CLI binary against this node.
    pub fn cli_with(&self, bin: &Path, args: &[&str]) -> Output {
        let (command, rest) = args.split_first().expect("a subcommand");
        run(
            Command::new(bin)
                .arg(command)
                .arg(self.rpc_flag())
                .args(rest),
            Duration::from_secs(30),
        )
    }

    /// Everything the agent wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// Waits until the log contains `needle`, or panics with the log.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let found = eventually(timeout, || self.log().contains(needle).then_some(()));
        assert!(
            found.is_some(),
            "{} never logged {needle:?}:\n{}",
            self.name,
            self.log()
        );
    }

    /// The process, while it runs.
    pub fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("the agent was started")
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        eventually(timeout, || child.try_wait().ok().flatten())
    }

    /// Sends `signal` (`INT`, `TERM`) to the agent and asserts that it exits with `code`.
    pub fn signal_and_expect_exit(&mut self, signal: &str, code: i32) {
        self.send_signal(signal);
        let status = self.wait_exit(Duration::from_secs(20));
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(code),
            "{status:?}\n{}",
            self.log()
        );
    }

    /// Sends `signal` (`HUP`, `INT`, ...) to the agent, without waiting for anything.
    pub fn send_signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("the agent was started");
        send_signal(child.id(), signal);
    }

    /// SIGKILL: the agent vanishes without a word.
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `serf info -format=json` from our CLI, parsed.
    pub fn info(&self) -> serde_json::Value {
        let output = self.cli(&["info", "-format=json"]);
        serde_json::from_str(&stdout_ok(&output)).expect("info json")
    }

    /// One field of a plugin's section in `serf info`, if it has it.
    pub fn plugin_stat(&self, plugin: &str, key: &str) -> Option<String> {
        plugin_stat(&self.info(), plugin, key)
    }

    /// One counter of a plugin's section in `serf info`; panics if it has none.
    pub fn plugin_number(&self, plugin: &str, key: &str) -> u64 {
        plugin_counter(&self.info(), plugin, key)
    }
}

/// One field of a plugin's section in a `serf info -format=json` answer, if it has it.
pub fn plugin_stat(info: &serde_json::Value, plugin: &str, key: &str) -> Option<String> {
    info[format!("plugin:{plugin}")][key]
        .as_str()
        .map(str::to_owned)
}

/// One counter of a plugin's section in a `serf info -format=json` answer; panics (showing
/// the answer) if it has none.
pub fn plugin_counter(info: &serde_json::Value, plugin: &str, key: &str) -> u64 {
    plugin_stat(info, plugin, key)
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {key} for {plugin} in {info}"))
}

/// A plugin that handles every event by doing nothing (its `offered` counts events).
pub fn noop_module() -> Vec<u8> {
    wat::parse_str(
        r#"(module
          (memory (export "memory") 1)
          (func (export "serf_plugin_abi_v1"))
          (func (export "serf_input_buffer") (param i32) (result i32) (i32.const 1024))
          (func (export "serf_init") (param i32 i32) (result i32) (i32.const 0))
          (func (export "serf_handle") (param i32 i32) (result i32) (i32.const 0)))"#,
    )
    .expect("the no-op module is valid text")
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A bare RPC connection that sends and reads msgpack values as they are: for bad input and
/// for firing many events over one connection.
pub struct RawRpc {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl RawRpc {
    /// Connects (no handshake).
    pub fn connect(addr: SocketAddr) -> RawRpc {
        let stream = TcpStream::connect(addr).expect("connect to RPC");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("read timeout");
        RawRpc {
            stream,
            buffer: Vec::new(),
        }
    }

    /// Connects and performs the handshake.
    pub fn handshake(addr: SocketAddr) -> RawRpc {
        let mut rpc = RawRpc::connect(addr);
        rpc.request("handshake", 0, Some(map(&[("Version", 1.into())])));
        let header = rpc.read().expect("handshake answer");
        assert_eq!(field(&header, "Error"), Some(&rmpv::Value::from("")));
        rpc
    }

    /// Writes raw bytes.
    pub fn send_bytes(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.stream.write_all(bytes).expect("write to RPC");
    }

    /// Sends a request header (and body).
    pub fn request(&mut self, command: &str, seq: u64, body: Option<rmpv::Value>) {
        let mut bytes = Vec::new();
        let header = map(&[("Command", command.into()), ("Seq", seq.into())]);
        rmpv::encode::write_value(&mut bytes, &header).expect("encode header");
        if let Some(body) = body {
            rmpv::encode::write_value(&mut bytes, &body).expect("encode body");
        }
        self.send_bytes(&bytes);
    }

    /// Reads one msgpack value; `None` when the agent closed the connection.
    pub fn read(&mut self) -> Option<rmpv::Value> {
        use std::io::Read;
        loop {
            let mut cursor = std::io::Cursor::new(&self.buffer[..]);
            if let Ok(value) = rmpv::decode::read_value(&mut cursor) {
                let used = cursor.position() as usize;
                self.buffer.drain(..used);
                return Some(value);
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// A msgpack map with string keys.
pub fn map(entries: &[(&str, rmpv::Value)]) -> rmpv::Value {
    rmpv::Value::Map(
        entries
            .iter()
            .map(|(key, value)| (rmpv::Value::from(*key), value.clone()))
            .collect(),
    )
}

/// A field of a msgpack map.
pub fn field<'a>(value: &'a rmpv::Value, key: &str) -> Option<&'a rmpv::Value> {
    value
        .as_map()?
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

impl RawRpc {
    /// Closes our sending half, so the agent sees EOF after what was sent.
    pub fn stream_shutdown_write(&mut self) -> std::io::Result<()> {
        self.stream.shutdown(std::net::Shutdown::Write)
    }
}

/// A Go plugin built by `plugin-sdk/go/build.sh` into `target/wasm32-wasip1/go/`.
pub fn go_wasm(name: &str) -> PathBuf {
    let path = target_dir().join(format!("wasm32-wasip1/go/{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run `bash plugin-sdk/go/build.sh` (or `GOOS=wasip1 GOARCH=wasm go build \
         -buildmode=c-shared -o target/wasm32-wasip1/go/{name}.wasm ./plugins/go/{name}`) first",
        path.display()
    );
    path
}

impl NodeBuilder {
    /// Copies a Go plugin built by `plugin-sdk/go/build.sh` into the node's plugin directory as
    /// `<as_name>.wasm`.
    pub fn go_plugin(self, wasm_name: &str, as_name: &str) -> NodeBuilder {
        self.raw_plugin_file(&format!("{as_name}.wasm"), go_wasm(wasm_name))
    }
}

/// The `[plugins.memresponse]` table of the example configuration.
pub const MEMRESPONSE_CONFIG: &str = "[plugins.memresponse]\nevents = \"user:memresponse\"\n\
                                      dirs = { \"/data\" = \"data\" }\nconfig = { file = \"/data/mem.txt\" }\n";

/// The `[plugins.upcase]` table of the example configuration.
pub const UPCASE_CONFIG: &str = "[plugins.upcase]\nevents = \"query:upcase\"\n";

/// The tour's memresponse step, for either SDK's plugin: `event memresponse xcxx` from Serf's
/// CLI and `yy` from ours land in the node's `data/mem.txt`, in order. The agent coalesces
/// user events of one name (reference 3.11), so each is awaited before the next is sent, as
/// someone typing them would.
pub fn assert_memresponse_scenario(node: &Node, timeout: Duration) {
    let file = node.dir.path().join("data/mem.txt");
    let mut expected = String::new();
    for (cli, payload) in [(go_serf(), "xcxx"), (serf_bin(), "yy")] {
        let output = node.cli_with(&cli, &["event", "memresponse", payload]);
        let text = stdout_ok(&output);
        assert!(text.contains("Event 'memresponse' dispatched!"), "{text}");
        expected.push_str(payload);
        expected.push('\n');
        let written = eventually(timeout, || {
            std::fs::read_to_string(&file)
                .ok()
                .filter(|text| *text == expected)
        });
        assert!(
            written.is_some(),
            "mem.txt: {:?}\n{}",
            std::fs::read_to_string(&file),
            node.log()
        );
    }
}

/// The tour's upcase step, for either SDK's plugin: `query upcase foo` answers FOO through both
/// CLIs, and each `(payload, answer)` pair holds in `-format=json`.
pub fn assert_upcase_scenario(node: &Node, json_cases: &[(&str, &str)]) {
    for output in [
        node.go_cli(&["query", "-timeout=1s", "upcase", "foo"]),
        node.cli(&["query", "-timeout=1s", "upcase", "foo"]),
    ] {
        let text = stdout_ok(&output);
        for needle in [
            "Query 'upcase' dispatched",
            "Ack from 'node1'",
            "Response from 'node1': FOO",
            "Total Acks: 1",
            "Total Responses: 1",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from {text}");
        }
    }
    for (payload, expected) in json_cases {
        for output in [
            node.go_cli(&["query", "-format=json", "-timeout=1s", "upcase", payload]),
            node.cli(&["query", "-format=json", "-timeout=1s", "upcase", payload]),
        ] {
            let json: serde_json::Value = serde_json::from_str(&stdout_ok(&output)).unwrap();
            assert_eq!(json["Responses"]["node1"], *expected, "{json}");
            assert_eq!(json["Acks"][0], "node1", "{json}");
        }
    }
}
