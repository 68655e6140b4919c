//! The agent's log: Serf-style lines on stderr, and a [`LogHub`] that RPC `monitor` reads.
//!
//! Lines look like Serf's: `2026/11/22 10:00:00 [INFO] agent: message key=value`. The hub
//! keeps the last lines for a new monitor to replay and broadcasts new ones; a monitor that
//! falls behind loses lines (counted), it never slows the agent down.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::Context;

use crate::config::LogLevel;

/// Lines a new monitor replays, as in Serf.
pub const LOG_BACKLOG_LINES: usize = 512;

/// Lines held back from stderr while the banner prints ([`LogHub::hold_stderr`]); more than
/// this opens the gate early, so a long start-up join never hides its log for good.
pub const HELD_STDERR_LINES: usize = 4096;

/// One formatted log line.
#[derive(Debug, Clone)]
pub struct LogLine {
    /// Its level.
    pub level: LogLevel,
    /// The line, without a trailing newline.
    pub text: Arc<str>,
}

struct Inner {
    backlog: Mutex<VecDeque<LogLine>>,
    lines: broadcast::Sender<LogLine>,
    /// The most verbose level any monitor asked for (a `LogLevel` as u8).
    monitor_level: AtomicU8,
    /// The level of the lines written to stderr (a `LogLevel` as u8); a reload changes it.
    stderr_level: AtomicU8,
    lagged: AtomicU64,
    /// Lines for stderr held back while the banner prints; `None` writes them at once.
    held: Mutex<Option<Vec<String>>>,
}

/// Recent and live log lines for monitors. Cheap to clone.
#[derive(Clone)]
pub struct LogHub {
    inner: Arc<Inner>,
}

impl Default for LogHub {
    fn default() -> LogHub {
        LogHub::new()
    }
}

impl LogHub {
    /// An empty hub.
    pub fn new() -> LogHub {
        let (lines, _) = broadcast::channel(LOG_BACKLOG_LINES);
        LogHub {
            inner: Arc::new(Inner {
                backlog: Mutex::new(VecDeque::with_capacity(LOG_BACKLOG_LINES)),
                lines,
                monitor_level: AtomicU8::new(LogLevel::Err as u8),
                stderr_level: AtomicU8::new(LogLevel::Info as u8),
                lagged: AtomicU64::new(0),
                held: Mutex::new(None),
            }),
        }
    }

    /// Records a line.
    pub fn push(&self, line: LogLine) {
        let mut backlog = self.inner.backlog.lock().unwrap_or_else(|e| e.into_inner());
        if backlog.len() == LOG_BACKLOG_LINES {
            backlog.pop_front();
        }
        backlog.push_back(line.clone());
        drop(backlog);
        let _ = self.inner.lines.send(line);
    }

    /// The buffered lines at `level` or above, and a receiver for new ones (which the caller
    /// filters by level too). Makes the log capture lines down to `level` from now on.
    pub fn subscribe(&self, level: LogLevel) -> (Vec<LogLine>, broadcast::Receiver<LogLine>) {
        self.inner
            .monitor_level
            .fetch_min(level as u8, Ordering::Relaxed);
        let backlog = self.inner.backlog.lock().unwrap_or_else(|e| e.into_inner());
        let receiver = self.inner.lines.subscribe();
        let lines = backlog
            .iter()
            .filter(|line| line.level >= level)
            .cloned()
            .collect();
        (lines, receiver)
    }

    /// Counts lines a slow monitor missed.
    pub fn record_lagged(&self, missed: u64) {
        self.inner.lagged.fetch_add(missed, Ordering::Relaxed);
    }

    /// Lines monitors missed because they fell behind.
    pub fn lagged(&self) -> u64 {
        self.inner.lagged.load(Ordering::Relaxed)
    }

    /// Holds the lines for stderr back until [`LogHub::release_stderr`], as Serf's gated log
    /// writer does while `serf agent` prints its banner: no log line lands inside it.
    /// Monitors get every line at once regardless.
    pub fn hold_stderr(&self) {
        let mut held = self.inner.held.lock().unwrap_or_else(|e| e.into_inner());
        held.get_or_insert_with(Vec::new);
    }

    /// Writes the lines held back (in one write) and lets the next ones through; does nothing
    /// when nothing is held.
    pub fn release_stderr(&self) {
        let mut held = self.inner.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(lines) = held.take() {
            write_lines(&lines);
        }
    }

    /// Writes one line to stderr, or holds it back.
    fn write_stderr(&self, line: String) {
        let mut held = self.inner.held.lock().unwrap_or_else(|e| e.into_inner());
        match held.as_mut() {
            Some(lines) if lines.len() < HELD_STDERR_LINES => lines.push(line),
            Some(lines) => {
                lines.push(line);
                write_lines(lines);
                *held = None;
            }
            None => write_lines(&[line]),
        }
    }

    fn monitor_level(&self) -> LogLevel {
        level_from_u8(self.inner.monitor_level.load(Ordering::Relaxed))
    }

    /// The level of the lines the agent writes to stderr.
    pub fn level(&self) -> LogLevel {
        level_from_u8(self.inner.stderr_level.load(Ordering::Relaxed))
    }

    /// Changes the level of the lines written to stderr (a reload, as Serf's SIGHUP does);
    /// returns the previous one. The hub keeps at least the same lines for monitors.
    pub fn set_level(&self, level: LogLevel) -> LogLevel {
        self.inner
            .monitor_level
            .fetch_min(level as u8, Ordering::Relaxed);
        let previous = self.inner.stderr_level.swap(level as u8, Ordering::Relaxed);
        // Call sites cached as always or never enabled ask the layer again.
        tracing::callsite::rebuild_interest_cache();
        level_from_u8(previous)
    }
}

/// Writes log lines to stderr in one write, each indented as Serf's.
fn write_lines(lines: &[String]) {
    let mut text = String::with_capacity(lines.iter().map(|l| l.len() + 5).sum());
    for line in lines {
        text.push_str("    ");
        text.push_str(line);
        text.push('\n');
    }
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

fn level_from_u8(level: u8) -> LogLevel {
    match level {
        0 => LogLevel::Trace,
        1 => LogLevel::Debug,
        2 => LogLevel::Info,
        3 => LogLevel::Warn,
        _ => LogLevel::Err,
    }
}

/// The tracing layer that writes Serf-style lines to stderr and the hub.
pub struct SerfLogLayer {
    hub: LogHub,
}

impl SerfLogLayer {
    /// Lines at `stderr_level` or above go to stderr; the hub gets those and whatever more
    /// verbose level a monitor asks for. [`LogHub::set_level`] changes the level later.
    pub fn new(hub: LogHub, stderr_level: LogLevel) -> SerfLogLayer {
        hub.set_level(stderr_level);
        SerfLogLayer { hub }
    }
}

fn level_of(level: &Level) -> LogLevel {
    match *level {
        Level::TRACE => LogLevel::Trace,
        Level::DEBUG => LogLevel::Debug,
        Level::INFO => LogLevel::Info,
        Level::WARN => LogLevel::Warn,
        Level::ERROR => LogLevel::Err,
    }
}

/// The component a line names, as Serf's log lines name theirs: `serf_host::rpc::server` →
/// `rpc`, `serf_gossip::memberlist` → `gossip`, `serf_core` → `serf`, the node's task
/// (`serf_node`) → `agent` but its doors (`serf_node::accept`) → `accept`, `serf_plugins::…`
/// → `plugin`; other crates by their own name.
fn short_target(target: &str) -> &str {
    let mut parts = target.split("::");
    match (parts.next(), parts.next()) {
        (Some("serf_host"), Some(module)) => module,
        (Some("serf_node"), Some("accept")) => "accept",
        (Some("serf_node"), _) => "agent",
        (Some("serf_gossip"), _) => "gossip",
        (Some("serf_core"), _) => "serf",
        (Some("serf_plugins"), _) => "plugin",
        (Some("serf_rpc"), _) => "rpc",
        (Some("serf_msgpack"), _) => "msgpack",
        (Some(first), _) => first,
        _ => target,
    }
}

/// Whether a line is the project's own (from one of its crates), not a dependency's.
fn is_ours(target: &str) -> bool {
    target == "plugin"
        || [
            "serf_host",
            "serf_node",
            "serf_gossip",
            "serf_core",
            "serf_plugins",
            "serf_rpc",
            "serf_msgpack",
        ]
        .iter()
        .any(|name| target.split("::").next() == Some(*name))
}

/// The level a line counts as. A dependency's debug lines (wasmtime's and cranelift's
/// internals: tens of thousands of lines for one plugin compile) count as trace, so
/// `-log-level=debug` shows the agent's own detail and `trace` shows everything.
fn effective_level(metadata: &Metadata<'_>) -> LogLevel {
    let level = level_of(metadata.level());
    let ours = is_ours(metadata.target());
    if !ours && level == LogLevel::Debug {
        LogLevel::Trace
    } else {
        level
    }
}

/// `text` on one line: a newline or carriage return inside an entry (a multi-line error)
/// is written as `\n` or `\r`, so every entry is one line of the log.
fn one_line(text: &mut String) {
    if text.contains(['\n', '\r']) {
        *text = text.replace('\r', "\\r").replace('\n', "\\n");
    }
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for SerfLogLayer {
    fn register_callsite(
        &self,
        metadata: &'static Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if effective_level(metadata) >= self.hub.level() {
            tracing::subscriber::Interest::always()
        } else {
            // A monitor may ask for more detail later: decide per event.
            tracing::subscriber::Interest::sometimes()
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>, _: Context<'_, S>) -> bool {
        let level = effective_level(metadata);
        level >= self.hub.level() || level >= self.hub.monitor_level()
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let metadata = event.metadata();
        if effective_level(metadata) < self.hub.level().min(self.hub.monitor_level()) {
            return;
        }
        let level = level_of(metadata.level());
        let mut visitor = LineVisitor::default();
        event.record(&mut visitor);
        let mut text = String::with_capacity(96);
        let now = jiff::Zoned::now();
        let _ = write!(
            text,
            "{} [{}] {}: ",
            now.strftime("%Y/%m/%d %H:%M:%S"),
            level.as_str(),
            short_target(metadata.target())
        );
        if let Some(plugin) = &visitor.plugin {
            let _ = write!(text, "{plugin}: ");
        }
        text.push_str(&visitor.message);
        text.push_str(&visitor.fields);
        one_line(&mut text);
        if effective_level(metadata) >= self.hub.level() {
            self.hub.write_stderr(text.clone());
        }
        self.hub.push(LogLine {
            level,
            text: Arc::from(text),
        });
    }
}

/// Collects an event's message and its fields as ` key=value`.
#[derive(Default)]
struct LineVisitor {
    message: String,
    plugin: Option<String>,
    fields: String,
}

impl Visit for LineVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message.push_str(value),
            "plugin" => self.plugin = Some(value.to_owned()),
            name => {
                let _ = write!(self.fields, " {name}={value}");
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => {
                let _ = write!(self.message, "{value:?}");
            }
            "plugin" => self.plugin = Some(format!("{value:?}")),
            name => {
                let _ = write!(self.fields, " {name}={value:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(level: LogLevel, text: &str) -> LogLine {
        LogLine {
            level,
            text: Arc::from(text),
        }
    }

    #[test]
    fn each_crate_reads_as_the_component_serf_names() {
        for (target, component) in [
            ("serf_host::rpc::server", "rpc"),
            ("serf_node", "agent"),
            ("serf_node::snapshot", "agent"),
            ("serf_node::accept", "accept"),
            ("serf_gossip::memberlist", "gossip"),
            ("serf_core::keys", "serf"),
            ("serf_plugins::dispatch", "plugin"),
            ("wasmtime::runtime", "wasmtime"),
        ] {
            assert_eq!(short_target(target), component, "{target}");
        }
        assert!(is_ours("serf_gossip::packet") && is_ours("plugin"));
        assert!(!is_ours("cranelift_codegen") && !is_ours("serf_hostile"));
    }

    #[test]
    fn backlog_keeps_the_last_lines_at_the_asked_level() {
        let hub = LogHub::new();
        for i in 0..LOG_BACKLOG_LINES + 10 {
            let level = if i % 2 == 0 {
                LogLevel::Debug
            } else {
                LogLevel::Info
            };
            hub.push(line(level, &i.to_string()));
        }
        let (info, _) = hub.subscribe(LogLevel::Info);
        assert_eq!(info.len(), LOG_BACKLOG_LINES / 2);
        assert_eq!(
            &*info.last().unwrap().text,
            (LOG_BACKLOG_LINES + 9).to_string()
        );
        let (all, mut live) = hub.subscribe(LogLevel::Debug);
        assert_eq!(all.len(), LOG_BACKLOG_LINES);
        assert_eq!(&*all[0].text, "10");
        hub.push(line(LogLevel::Warn, "live"));
        assert_eq!(&*live.try_recv().unwrap().text, "live");
    }

    #[test]
    fn lines_look_like_serfs() {
        use tracing_subscriber::layer::SubscriberExt;
        let hub = LogHub::new();
        let subscriber =
            tracing_subscriber::registry().with(SerfLogLayer::new(hub.clone(), LogLevel::Warn));
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(target: "serf_host::agent", member = "a", "member joined");
            tracing::warn!(target: "plugin", plugin = "hello", "got deploy");
            tracing::info!(target: "serf_host::agent", "not recorded at warn");
        });
        let (lines, _) = hub.subscribe(LogLevel::Trace);
        let texts: Vec<&str> = lines.iter().map(|l| &*l.text).collect();
        assert_eq!(texts.len(), 2, "{texts:?}");
        assert!(
            texts[0].ends_with(" [WARN] agent: member joined member=a"),
            "{}",
            texts[0]
        );
        assert!(
            texts[1].ends_with(" [WARN] plugin: hello: got deploy"),
            "{}",
            texts[1]
        );
        // `2026/11/22 10:00:00 ` is 20 characters.
        assert_eq!(texts[0].as_bytes()[4], b'/');
        assert_eq!(texts[0].as_bytes()[19], b' ');
    }

    #[test]
    fn dependency_internals_wait_for_trace_and_entries_stay_on_one_line() {
        use tracing_subscriber::layer::SubscriberExt;
        let hub = LogHub::new();
        let subscriber =
            tracing_subscriber::registry().with(SerfLogLayer::new(hub.clone(), LogLevel::Debug));
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(target: "cranelift_codegen::machinst", "internals");
            tracing::info!(target: "wasmtime::runtime", "a dependency's info");
            tracing::debug!(target: "serf_host::agent", "our detail");
            tracing::warn!(target: "serf_host::config", "bad config:\n  line 2\r");
            hub.set_level(LogLevel::Trace);
            tracing::debug!(target: "cranelift_codegen::machinst", "internals at trace");
        });
        let (lines, _) = hub.subscribe(LogLevel::Trace);
        let texts: Vec<&str> = lines.iter().map(|l| &*l.text).collect();
        assert_eq!(texts.len(), 4, "{texts:?}");
        assert!(
            texts[0].ends_with("wasmtime: a dependency's info"),
            "{texts:?}"
        );
        assert!(texts[1].ends_with("agent: our detail"), "{texts:?}");
        assert!(
            texts[2].ends_with("config: bad config:\\n  line 2\\r"),
            "{texts:?}"
        );
        assert!(
            texts[3].ends_with("cranelift_codegen: internals at trace"),
            "{texts:?}"
        );
    }

    #[test]
    fn a_new_level_applies_to_the_next_line() {
        use tracing_subscriber::layer::SubscriberExt;
        let hub = LogHub::new();
        let subscriber =
            tracing_subscriber::registry().with(SerfLogLayer::new(hub.clone(), LogLevel::Warn));
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(target: "serf_host::agent", "before the reload");
            assert_eq!(hub.set_level(LogLevel::Debug), LogLevel::Warn);
            tracing::debug!(target: "serf_host::agent", "after the reload");
        });
        assert_eq!(hub.level(), LogLevel::Debug);
        let (lines, _) = hub.subscribe(LogLevel::Trace);
        let texts: Vec<&str> = lines.iter().map(|l| &*l.text).collect();
        assert_eq!(texts.len(), 1, "{texts:?}");
        assert!(
            texts[0].ends_with(" [DEBUG] agent: after the reload"),
            "{}",
            texts[0]
        );
    }
}
