//! The `webhook` example plugin (ABI v1.2 effects): it POSTs member failures and the `deploy`
//! user event as JSON to the URL of its config, which must be an origin its table allows. An
//! HTTP server on loopback plays the webhook and records what it received.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serf_tests::{Node, eventually, next_net, stdout_ok};

/// A one-thread HTTP/1.1 server on loopback: records each request's path and body, answers
/// `fail_first` requests with 503 and the rest with 200. Stops when dropped.
struct Hook {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<(String, String)>>>,
    connections: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Hook {
    fn start(ip: &str, fail_first: u32) -> Hook {
        let listener = TcpListener::bind((ip, 0)).expect("bind the hook");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("hook address");
        let received = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicU32::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (received, connections, stop) = (
                Arc::clone(&received),
                Arc::clone(&connections),
                Arc::clone(&stop),
            );
            std::thread::spawn(move || {
                let mut answered = 0;
                // Bounded: the test drops the hook within minutes; a loop turn is 10 ms at most.
                while !stop.load(Ordering::Relaxed) {
                    let Ok((stream, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    };
                    connections.fetch_add(1, Ordering::Relaxed);
                    let status = if answered < fail_first { 503 } else { 200 };
                    if let Some(request) = serve(stream, status) {
                        answered += 1;
                        received.lock().unwrap().push(request);
                    }
                }
            })
        };
        Hook {
            addr,
            received,
            connections,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn bodies(&self) -> Vec<String> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|(_, body)| body.clone())
            .collect()
    }

    /// Waits until a body containing `needle` arrived; returns it.
    fn wait_for(&self, needle: &str, node: &Node) -> String {
        eventually(Duration::from_secs(60), || {
            self.bodies().into_iter().find(|body| body.contains(needle))
        })
        .unwrap_or_else(|| {
            panic!(
                "the hook never got {needle:?}; got {:?}\n{}",
                self.bodies(),
                node.log()
            )
        })
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads one request from `stream` and answers it with `status`; (path, body).
fn serve(stream: TcpStream, status: u16) -> Option<(String, String)> {
    stream.set_nonblocking(false).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_owned();
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length.min(1 << 20)];
    reader.read_exact(&mut body).ok()?;
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    Some((path, String::from_utf8_lossy(&body).into_owned()))
}

/// `serf plugin state -rpc-addr=... ARGS...` (flags go before the plugin's name).
fn plugin_state(node: &Node, args: &[&str]) -> std::process::Output {
    serf_tests::run(
        std::process::Command::new(serf_tests::serf_bin())
            .args(["plugin", "state"])
            .arg(node.rpc_flag())
            .args(args),
        Duration::from_secs(30),
    )
}

/// A node running `webhook`, posting to `url`, allowed to reach `origin` only.
fn webhook_node(net: u8, n: u8, url: &str, origin: &str) -> Node {
    Node::builder(net, n)
        .plugin("webhook", "webhook")
        .config(&format!(
            "[plugins.webhook]\nevents = \"member-failed,user:deploy\"\ntick = \"200ms\"\n\
             config = {{ url = \"{url}\", event = \"deploy\" }}\n\
             [plugins.webhook.http]\nallow = [\"{origin}\"]\n\
             [plugins.webhook.state]\n[plugins.webhook.metrics]\n"
        ))
        .start()
}

#[test]
fn webhook_posts_a_deploy_event_and_a_member_failure_as_json() {
    let net = next_net();
    let hook = Hook::start(&format!("127.{net}.0.100"), 0);
    let node = webhook_node(net, 1, &hook.url(), &hook.origin());
    stdout_ok(&node.cli(&["event", "deploy", "v42"]));
    let body = hook.wait_for("\"name\":\"deploy\"", &node);
    assert!(body.contains("\"payload\":\"v42\""), "{body}");
    assert!(body.contains("\"node\":\"node1\""), "{body}");

    let mut other = Node::builder(net, 2).start();
    stdout_ok(&node.cli(&["join", &other.bind.to_string()]));
    other.kill_9();
    let body = hook.wait_for("member-failed", &node);
    assert!(body.contains("\"name\":\"node2\""), "{body}");
    assert_eq!(hook.received.lock().unwrap()[0].0, "/hook");

    let info = node.info();
    let stat = |key: &str| serf_tests::plugin_stat(&info, "webhook", key).unwrap_or_default();
    assert_eq!(stat("http_allow"), format!("{}", hook.origin()));
    assert!(stat("http_calls").parse::<u64>().unwrap() >= 2, "{info}");
    assert_eq!(stat("metric.posts_sent"), "counter 2", "{info}");
}

#[test]
fn webhook_to_an_unlisted_url_is_refused_before_any_connection() {
    let net = next_net();
    let listed = Hook::start(&format!("127.{net}.0.100"), 0);
    let unlisted = Hook::start(&format!("127.{net}.0.101"), 0);
    let node = webhook_node(net, 1, &unlisted.url(), &listed.origin());
    stdout_ok(&node.cli(&["event", "deploy", "v1"]));
    let denied = eventually(Duration::from_secs(30), || {
        (node.plugin_number("webhook", "http_denied") >= 1).then_some(())
    });
    assert!(denied.is_some(), "{}", node.log());
    assert_eq!(unlisted.connections.load(Ordering::Relaxed), 0);
    assert_eq!(listed.connections.load(Ordering::Relaxed), 0);
    assert!(node.plugin_number("webhook", "errors") >= 1);
    node.wait_for_log("is not allowed", Duration::from_secs(10));
}

#[test]
fn webhook_keeps_a_refused_post_in_its_state_and_retries_it_on_a_tick() {
    let net = next_net();
    let hook = Hook::start(&format!("127.{net}.0.100"), 1);
    let node = webhook_node(net, 1, &hook.url(), &hook.origin());
    stdout_ok(&node.cli(&["event", "deploy", "v7"]));
    // The first post gets a 503, is kept, and goes through on a later tick.
    let found = eventually(Duration::from_secs(30), || {
        let bodies = hook.bodies();
        (bodies.iter().filter(|b| b.contains("v7")).count() >= 2).then_some(())
    });
    assert!(found.is_some(), "{:?}\n{}", hook.bodies(), node.log());
    let emptied = eventually(Duration::from_secs(30), || {
        let text = stdout_ok(&plugin_state(&node, &["-prefix=pending/", "webhook"]));
        (!text.contains("pending/") && text.contains("keys,")).then_some(text)
    });
    assert!(emptied.is_some(), "the retried post stays stored");
    let next = stdout_ok(&plugin_state(&node, &["webhook", "next"]));
    assert_eq!(next.trim(), "1");
    assert!(node.plugin_number("webhook", "ticks") >= 1);
}
