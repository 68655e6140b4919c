//! A plugin's WASI stdout and stderr, forwarded line by line to the agent's log.

use std::pin::Pin;
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

/// One plugin's output lines in the current second.
struct Window {
    started: Instant,
    lines: u32,
}

/// Output written by a plugin, logged with target `plugin` at info (stdout) or warn (stderr).
#[derive(Clone)]
pub(crate) struct LogPipe {
    plugin: Arc<str>,
    is_stderr: bool,
    pending: Arc<Mutex<Vec<u8>>>,
    window: Arc<Mutex<Window>>,
}

impl LogPipe {
    /// A pair for stdout and stderr, sharing one rate limit.
    pub(crate) fn pair(plugin: Arc<str>) -> (LogPipe, LogPipe) {
        let window = Arc::new(Mutex::new(Window {
            started: Instant::now(),
            lines: 0,
        }));
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
        for &byte in bytes {
            if byte == b'\n' {
                self.emit(&pending);
                pending.clear();
            } else {
                pending.push(byte);
                if pending.len() >= MAX_LINE_BYTES {
                    self.emit(&pending);
                    pending.clear();
                }
            }
        }
    }

    fn emit(&self, line: &[u8]) {
        let plugin = &*self.plugin;
        {
            let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
            if window.started.elapsed() >= Duration::from_secs(1) {
                let dropped = window.lines.saturating_sub(MAX_LINES_PER_SECOND);
                if dropped > 0 {
                    tracing::warn!(target: "plugin", plugin, dropped, "plugin output lines dropped by the rate limit");
                }
                *window = Window {
                    started: Instant::now(),
                    lines: 0,
                };
            }
            window.lines += 1;
            if window.lines > MAX_LINES_PER_SECOND {
                return;
            }
        }
        let line = String::from_utf8_lossy(line);
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
