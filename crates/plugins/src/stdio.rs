//! A plugin's WASI stdout and stderr, forwarded line by line to the agent's log.

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use super::rates::PluginRates;

/// Longest line kept; longer output is split at this many bytes.
const MAX_LINE_BYTES: usize = 4096;

/// Warns about `dropped` output lines, if any.
pub(crate) fn report_output_drops(plugin: &str, dropped: u64) {
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
    rates: Arc<PluginRates>,
}

impl LogPipe {
    /// A pair for stdout and stderr, under the plugin's shared rate limit.
    pub(crate) fn pair(plugin: Arc<str>, rates: Arc<PluginRates>) -> (LogPipe, LogPipe) {
        let pipe = |is_stderr| LogPipe {
            plugin: Arc::clone(&plugin),
            is_stderr,
            pending: Arc::default(),
            rates: Arc::clone(&rates),
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
        let (allowed, to_report) = self.rates.take_output_line(Instant::now());
        report_output_drops(plugin, to_report);
        if !allowed {
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
            report_output_drops(&self.plugin, self.rates.take_unreported_output());
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
