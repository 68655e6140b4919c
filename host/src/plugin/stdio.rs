//! A plugin's WASI stdout and stderr, forwarded line by line to the agent's log.

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Longest line kept; longer output is split at this many bytes.
const MAX_LINE_BYTES: usize = 4096;
/// Lines a plugin's stdout and stderr together may log per second; the rest are counted.
const MAX_LINES_PER_SECOND: u32 = 100;

/// The rate limit on one plugin's output lines, shared by the stdout and stderr of all its
/// instances (a fresh instance does not get a fresh allowance).
#[derive(Debug)]
pub(crate) struct OutputWindow {
    window: Mutex<Window>,
    /// Lines dropped by the rate limit since the plugin started.
    dropped: AtomicU64,
    /// Lines dropped that no log line has reported yet, as [`Window::unreported`] holds them;
    /// read without the lock at the end of every call.
    unreported: AtomicU64,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    lines: u32,
    /// Lines dropped that no log line has reported yet.
    unreported: u64,
}

impl Default for OutputWindow {
    fn default() -> OutputWindow {
        OutputWindow {
            window: Mutex::new(Window {
                started: Instant::now(),
                lines: 0,
                unreported: 0,
            }),
            dropped: AtomicU64::new(0),
            unreported: AtomicU64::new(0),
        }
    }
}

impl OutputWindow {
    /// Counts one line; false if the second's allowance is spent (the line is dropped).
    fn admit(&self, plugin: &str) -> bool {
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        if window.started.elapsed() >= Duration::from_secs(1) {
            report(plugin, std::mem::take(&mut window.unreported));
            self.unreported.store(0, Ordering::Relaxed);
            window.started = Instant::now();
            window.lines = 0;
        }
        window.lines = window.lines.saturating_add(1);
        if window.lines > MAX_LINES_PER_SECOND {
            window.unreported += 1;
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.unreported.store(window.unreported, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Logs how many lines were dropped since the last report, if any. Called at the end of
    /// every call into the plugin, so a burst followed by silence or a trap is reported too.
    pub(crate) fn flush(&self, plugin: &str) {
        if self.unreported.load(Ordering::Relaxed) == 0 {
            return;
        }
        let unreported = {
            let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
            self.unreported.store(0, Ordering::Relaxed);
            std::mem::take(&mut window.unreported)
        };
        report(plugin, unreported);
    }

    /// Lines dropped by the rate limit so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn report(plugin: &str, dropped: u64) {
    if dropped > 0 {
        tracing::warn!(target: "plugin", plugin, dropped, "plugin output lines dropped by the rate limit");
    }
}

/// `text` with every control character escaped (`\n`, `\r`, `\u{1b}`, ...; tabs are
/// kept), so that a plugin's text can never start a new log line, rewrite one, or send
/// escape sequences to the terminal of whoever reads the log.
pub(crate) fn escape_controls(text: &str) -> Cow<'_, str> {
    let needs = |c: char| (c.is_control() && c != '\t') || c == '\u{2028}' || c == '\u{2029}';
    if !text.chars().any(needs) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            c if needs(c) => escaped.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => escaped.push(c),
        }
    }
    Cow::Owned(escaped)
}

/// Output written by a plugin, logged with target `plugin` at info (stdout) or warn (stderr).
#[derive(Clone)]
pub(crate) struct LogPipe {
    plugin: Arc<str>,
    is_stderr: bool,
    pending: Arc<Mutex<Vec<u8>>>,
    window: Arc<OutputWindow>,
}

impl LogPipe {
    /// A pair for stdout and stderr, under the plugin's shared rate limit.
    pub(crate) fn pair(plugin: Arc<str>, window: Arc<OutputWindow>) -> (LogPipe, LogPipe) {
        let pipe = |is_stderr| LogPipe {
            plugin: Arc::clone(&plugin),
            is_stderr,
            pending: Arc::default(),
            window: Arc::clone(&window),
        };
        (pipe(false), pipe(true))
    }

    fn write_bytes(&self, bytes: &[u8]) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let mut rest = bytes;
        while !rest.is_empty() {
            let room = MAX_LINE_BYTES - pending.len();
            let take = rest.len().min(room);
            match rest[..take].iter().position(|&b| b == b'\n') {
                Some(newline) => {
                    pending.extend_from_slice(&rest[..newline]);
                    self.emit(&pending);
                    pending.clear();
                    rest = &rest[newline + 1..];
                }
                None => {
                    pending.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    if pending.len() >= MAX_LINE_BYTES {
                        self.emit(&pending);
                        pending.clear();
                    }
                }
            }
        }
    }

    fn emit(&self, line: &[u8]) {
        let plugin = &*self.plugin;
        if self.is_stderr && is_backtrace_hint(line) {
            return;
        }
        if !self.window.admit(plugin) {
            return;
        }
        let line = String::from_utf8_lossy(line);
        let line = escape_controls(&line);
        if self.is_stderr {
            tracing::warn!(target: "plugin", plugin, stream = "stderr", "{line}");
        } else {
            tracing::info!(target: "plugin", plugin, stream = "stdout", "{line}");
        }
    }
}

impl Drop for LogPipe {
    fn drop(&mut self) {
        // The last clone flushes a final line written without a newline.
        if Arc::strong_count(&self.pending) == 1 {
            let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            if !pending.is_empty() {
                self.emit(&pending);
            }
            drop(pending);
            self.window.flush(&self.plugin);
        }
    }
}

impl IsTerminal for LogPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogPipe {
    async fn ready(&mut self) {}
}

impl OutputStream for LogPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl AsyncWrite for LogPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Rust's default panic hook ends with a hint to set `RUST_BACKTRACE=1`, which cannot work in
/// the sandbox (a plugin sees only the environment its `env` table grants, and wasm has no
/// unwinder to print a backtrace): the line is not forwarded.
fn is_backtrace_hint(line: &[u8]) -> bool {
    line.starts_with(b"note: run with `RUST_BACKTRACE=1`")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rust_backtrace_hint_is_not_forwarded() {
        assert!(is_backtrace_hint(
            b"note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace"
        ));
        assert!(!is_backtrace_hint(
            b"thread 'main' panicked at src/lib.rs:3:5:"
        ));
        assert!(!is_backtrace_hint(b"my note: run with care"));
    }
}
