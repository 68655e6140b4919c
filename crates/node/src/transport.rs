//! The gossip transport: one UDP socket and one TCP listener on the bind address.
//!
//! The agent task owns the UDP socket (it receives with `recv_from` and sends with
//! `try_send_to`, never waiting for the network) and the receiving ends of two bounded
//! channels: complete inbound stream messages, and the outcomes of outbound streams. TCP
//! streams run on tasks of their own, each under a deadline. This module moves bytes; what they
//! mean is the core's business.
//!
//! Idle sockets cannot shut the gossip port (docs/compatibility.md, "Connection limits"): a
//! peer sends its message as soon as it has connected, so an inbound connection that has sent
//! nothing is *pending*, closed after [`FIRST_BYTE_TIMEOUT`], and pending connections are capped
//! per source address and in total, a new one closing the oldest ([`crate::accept::Pending`]).
//! Once its first byte is in, a stream takes one of [`MAX_INBOUND_STREAMS`] slots (over it, it
//! is closed and counted) and must complete within the TCP timeout. At most
//! [`MAX_OUTBOUND_STREAMS`] outbound streams run at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use crate::accept::{AcceptStats, Acceptor, Admission, Doorway};
use serf_gossip::packet::{MAX_STREAM_BYTES, stream_frame_len};
use serf_gossip::{DecodeError, StreamError, StreamId, StreamRequest, StreamStage};

/// The largest UDP packet read (memberlist's receive buffer).
pub(super) const UDP_RECEIVE_BYTES: usize = 65536;
/// Inbound TCP streams that have sent their first byte, served at once; more are closed at
/// once and counted.
pub const MAX_INBOUND_STREAMS: usize = 512;
/// Outbound TCP streams running at once; more fail at once and are counted.
pub const MAX_OUTBOUND_STREAMS: usize = 128;
/// How long an inbound connection may stay silent after it was accepted (at most the TCP
/// timeout). memberlist writes its message right after connecting.
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(3);
/// Inbound connections that have sent nothing yet, from one source address; a new one closes
/// the oldest.
pub const PENDING_PER_SOURCE: usize = 2048;
/// Inbound connections that have sent nothing yet, in all; a new one closes the oldest.
pub const PENDING_TOTAL: usize = 8192;
/// Read size for stream messages.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// A complete stream message from a peer, waiting for the core; `reply` carries the bytes to
/// write back (if any) before the connection closes.
pub(super) struct InboundStream {
    pub(super) from: SocketAddr,
    pub(super) message: Vec<u8>,
    pub(super) reply: oneshot::Sender<Option<Vec<u8>>>,
}

/// How an outbound stream ended: the reply message (empty when none was expected) or why not.
pub(super) struct StreamReply {
    pub(super) id: StreamId,
    pub(super) result: Result<Vec<u8>, StreamError>,
}

/// Transport counters for `serf info`. Decode failures are the core's (`serf_gossip::Stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// UDP packets that could not be sent (socket buffer full or a send error).
    pub udp_send_failures: u64,
    /// Errors receiving from the UDP socket.
    pub udp_receive_errors: u64,
    /// Inbound TCP connections closed because [`MAX_INBOUND_STREAMS`] were open.
    pub inbound_streams_refused: u64,
    /// Inbound connections open now that have sent nothing yet.
    pub inbound_pending: u64,
    /// Inbound connections closed because they sent nothing within [`FIRST_BYTE_TIMEOUT`].
    pub inbound_first_byte_timeouts: u64,
    /// Inbound connections that had sent nothing, closed to make room for newer ones.
    pub inbound_pending_evicted: u64,
    /// Failed accepts on the TCP listener.
    pub accept_errors: u64,
    /// Connections accepted and closed at once because the agent was out of file descriptors.
    pub closed_out_of_fds: u64,
    /// Inbound streams that failed: timeout, oversized or malformed message, I/O error.
    pub inbound_stream_failures: u64,
    /// Inbound messages dropped because the agent's queue was full.
    pub inbound_stream_drops: u64,
    /// Outbound streams failed at once because [`MAX_OUTBOUND_STREAMS`] were running.
    pub outbound_streams_refused: u64,
    /// Outbound streams that failed: connect, write, read or timeout.
    pub outbound_stream_failures: u64,
}

/// Shared between the agent task and the stream tasks.
#[derive(Debug)]
pub(super) struct Counters {
    doorway: Doorway,
    accept: Arc<AcceptStats>,
    udp_send_failures: AtomicU64,
    udp_receive_errors: AtomicU64,
    inbound_streams_refused: AtomicU64,
    inbound_first_byte_timeouts: AtomicU64,
    inbound_stream_failures: AtomicU64,
    inbound_stream_drops: AtomicU64,
    outbound_streams_refused: AtomicU64,
    outbound_stream_failures: AtomicU64,
}

impl Counters {
    fn new() -> Counters {
        Counters {
            doorway: Doorway::new(PENDING_PER_SOURCE, PENDING_TOTAL),
            accept: Arc::default(),
            udp_send_failures: AtomicU64::default(),
            udp_receive_errors: AtomicU64::default(),
            inbound_streams_refused: AtomicU64::default(),
            inbound_first_byte_timeouts: AtomicU64::default(),
            inbound_stream_failures: AtomicU64::default(),
            inbound_stream_drops: AtomicU64::default(),
            outbound_streams_refused: AtomicU64::default(),
            outbound_stream_failures: AtomicU64::default(),
        }
    }

    fn bump(counter: &AtomicU64) -> u64 {
        counter.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(super) fn snapshot(&self) -> TransportStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        TransportStats {
            udp_send_failures: load(&self.udp_send_failures),
            udp_receive_errors: load(&self.udp_receive_errors),
            inbound_streams_refused: load(&self.inbound_streams_refused),
            inbound_pending: self.doorway.num_pending() as u64,
            inbound_first_byte_timeouts: load(&self.inbound_first_byte_timeouts),
            inbound_pending_evicted: self.doorway.num_evicted(),
            accept_errors: load(&self.accept.errors),
            closed_out_of_fds: load(&self.accept.closed_out_of_fds),
            inbound_stream_failures: load(&self.inbound_stream_failures),
            inbound_stream_drops: load(&self.inbound_stream_drops),
            outbound_streams_refused: load(&self.outbound_streams_refused),
            outbound_stream_failures: load(&self.outbound_stream_failures),
        }
    }
}

/// The agent task's side of the transport.
pub(super) struct Transport {
    pub(super) udp: UdpSocket,
    /// The bound address (the real port when the bind address asked for port 0).
    pub(super) local_addr: SocketAddr,
    pub(super) inbound: mpsc::Receiver<InboundStream>,
    pub(super) replies: mpsc::Receiver<StreamReply>,
    reply_sender: mpsc::Sender<StreamReply>,
    outbound_permits: Arc<Semaphore>,
    pub(super) counters: Arc<Counters>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl Transport {
    /// Binds the TCP listener and the UDP socket to the same address and starts accepting.
    /// Inbound streams must complete within `tcp_timeout`.
    pub(super) async fn bind(addr: SocketAddr, tcp_timeout: Duration) -> anyhow::Result<Transport> {
        let (listener, udp) = bind_both(addr).await?;
        let local_addr = listener
            .local_addr()
            .context("cannot read the gossip listener's address")?;
        let counters = Arc::new(Counters::new());
        // Each inbound task sends one message while it holds a permit, so this never fills.
        let (inbound_sender, inbound) = mpsc::channel(MAX_INBOUND_STREAMS);
        let (reply_sender, replies) = mpsc::channel(MAX_OUTBOUND_STREAMS);
        let acceptor = Acceptor::new(listener, "gossip", Arc::clone(&counters.accept));
        let accept_task = tokio::spawn(accept_loop(
            acceptor,
            Arc::new(Semaphore::new(MAX_INBOUND_STREAMS)),
            inbound_sender,
            tcp_timeout,
            Arc::clone(&counters),
        ));
        Ok(Transport {
            udp,
            local_addr,
            inbound,
            replies,
            reply_sender,
            outbound_permits: Arc::new(Semaphore::new(MAX_OUTBOUND_STREAMS)),
            counters,
            accept_task,
        })
    }

    /// Sends one packet without waiting; a failure is logged and counted.
    pub(super) fn send(&self, to: SocketAddr, payload: &[u8]) {
        if let Err(error) = self.udp.try_send_to(payload, to) {
            let failures = Counters::bump(&self.counters.udp_send_failures);
            tracing::debug!(%to, %error, failures, "gossip send failed");
        }
    }

    /// Counts a failed receive on the UDP socket.
    pub(super) fn receive_failed(&self, error: &std::io::Error) {
        let errors = Counters::bump(&self.counters.udp_receive_errors);
        tracing::debug!(%error, errors, "gossip receive failed");
    }

    /// Starts an outbound stream on a task of its own; its outcome arrives on `replies`.
    /// Refuses (returning the reason, for the core) when too many are running.
    pub(super) fn start_stream(&self, request: StreamRequest) -> Result<(), String> {
        let Ok(permit) = Arc::clone(&self.outbound_permits).try_acquire_owned() else {
            let refused = Counters::bump(&self.counters.outbound_streams_refused);
            tracing::warn!(to = %request.to, refused, "too many outbound gossip streams; stream refused");
            return Err(format!(
                "too many concurrent outbound streams ({MAX_OUTBOUND_STREAMS})"
            ));
        };
        let replies = self.reply_sender.clone();
        let counters = Arc::clone(&self.counters);
        tokio::spawn(async move {
            let id = request.id;
            let to = request.to;
            let result = run_outbound(request).await;
            if let Err(error) = &result {
                let failures = Counters::bump(&counters.outbound_stream_failures);
                tracing::debug!(%to, %error, failures, "gossip stream failed");
            }
            // The agent is gone when this fails; nobody is waiting any more.
            let _ = replies.send(StreamReply { id, result }).await;
            drop(permit);
        });
        Ok(())
    }
}

/// Binds TCP first, then UDP on the port TCP got (they differ only when asked for port 0, and
/// then another try may find a port free for both).
async fn bind_both(addr: SocketAddr) -> anyhow::Result<(TcpListener, UdpSocket)> {
    const TRIES_FOR_ANY_PORT: usize = 10;
    let mut tries = 0;
    loop {
        tries += 1;
        let listener = crate::accept::listen(addr)
            .with_context(|| format!("cannot listen for gossip streams on {addr}"))?;
        let port = listener
            .local_addr()
            .context("cannot read the gossip listener's address")?
            .port();
        let udp_addr = SocketAddr::new(addr.ip(), port);
        match UdpSocket::bind(udp_addr).await {
            Ok(udp) => {
                enlarge_receive_buffer(&udp);
                return Ok((listener, udp));
            }
            Err(error) if addr.port() == 0 && tries < TRIES_FOR_ANY_PORT => {
                tracing::debug!(%udp_addr, %error, "gossip port taken for UDP; trying another");
            }
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("cannot bind the gossip UDP socket to {udp_addr}"));
            }
        }
    }
}

/// Asks for a 2 MiB UDP receive buffer, halving until the system allows it, as memberlist
/// does: a burst of gossip from many members at once then waits in the kernel instead of being
/// dropped there while the agent is busy. Whatever size is granted, the agent works.
fn enlarge_receive_buffer(udp: &UdpSocket) {
    const WANTED: usize = 2 * 1024 * 1024;
    let socket = socket2::SockRef::from(udp);
    let mut size = WANTED;
    while size >= 64 * 1024 {
        match socket.set_recv_buffer_size(size) {
            Ok(()) => break,
            Err(error) => {
                tracing::debug!(size, %error, "UDP receive buffer size refused");
                size /= 2;
            }
        }
    }
    if let Ok(granted) = socket.recv_buffer_size() {
        tracing::debug!(granted, "gossip UDP receive buffer");
    }
}

async fn accept_loop(
    mut acceptor: Acceptor,
    permits: Arc<Semaphore>,
    inbound: mpsc::Sender<InboundStream>,
    tcp_timeout: Duration,
    counters: Arc<Counters>,
) {
    let first_byte_timeout = FIRST_BYTE_TIMEOUT.min(tcp_timeout);
    loop {
        let (stream, peer) = acceptor.accept().await;
        let admission = counters.doorway.admit(peer);
        let permits = Arc::clone(&permits);
        let inbound = inbound.clone();
        let counters = Arc::clone(&counters);
        tokio::spawn(async move {
            let accepted = Instant::now();
            if !first_byte(&stream, peer, admission, first_byte_timeout, &counters).await {
                return;
            }
            let Ok(permit) = permits.try_acquire_owned() else {
                let refused = Counters::bump(&counters.inbound_streams_refused);
                if refused.is_power_of_two() {
                    tracing::warn!(%peer, refused, "too many inbound gossip streams; connection closed");
                }
                return;
            };
            let deadline = accepted + tcp_timeout;
            let served =
                tokio::time::timeout_at(deadline, serve_inbound(stream, peer, &inbound, &counters))
                    .await
                    .unwrap_or_else(|_| Err("i/o timeout".to_owned()));
            if let Err(error) = served {
                let failures = Counters::bump(&counters.inbound_stream_failures);
                tracing::debug!(%peer, %error, failures, "inbound gossip stream failed");
            }
            drop(permit);
        });
    }
}

/// Waits for an inbound connection's first byte while it is pending; false when the
/// connection is to be closed (silent too long, evicted, closed or failed).
async fn first_byte(
    stream: &TcpStream,
    peer: SocketAddr,
    mut admission: Admission,
    timeout: Duration,
    counters: &Counters,
) -> bool {
    let mut byte = [0u8; 1];
    let evicted = admission.evicted().clone();
    let peeked = tokio::select! {
        () = evicted.cancelled() => {
            tracing::debug!(%peer, "silent gossip connection closed to make room");
            return false;
        }
        peeked = tokio::time::timeout(timeout, stream.peek(&mut byte)) => peeked,
    };
    match peeked {
        Ok(Ok(read)) if read > 0 => admission.settle(),
        Ok(Ok(_)) => false,
        Ok(Err(error)) => {
            let failures = Counters::bump(&counters.inbound_stream_failures);
            tracing::debug!(%peer, %error, failures, "inbound gossip stream failed");
            false
        }
        Err(_) => {
            let timeouts = Counters::bump(&counters.inbound_first_byte_timeouts);
            tracing::debug!(%peer, timeouts, "gossip connection sent nothing; closed");
            false
        }
    }
}

/// Reads one message, hands it to the agent task, writes its reply (if any) and closes.
async fn serve_inbound(
    mut stream: TcpStream,
    peer: SocketAddr,
    inbound: &mpsc::Sender<InboundStream>,
    counters: &Counters,
) -> Result<(), String> {
    let message = read_message(&mut stream, MAX_STREAM_BYTES, stream_frame_len)
        .await
        .map_err(|error| error.to_string())?;
    let (reply, answer) = oneshot::channel();
    let request = InboundStream {
        from: peer,
        message,
        reply,
    };
    if let Err(error) = inbound.try_send(request) {
        if matches!(error, mpsc::error::TrySendError::Full(_)) {
            let dropped = Counters::bump(&counters.inbound_stream_drops);
            tracing::warn!(%peer, dropped, "agent busy; inbound gossip stream dropped");
        }
        return Ok(());
    }
    let Ok(reply) = answer.await else {
        return Ok(()); // The agent stopped.
    };
    if let Some(bytes) = reply {
        stream.write_all(&bytes).await.map_err(|error| {
            format!("write tcp {peer}: {}", serf_rpc::go_text::io_error(&error))
        })?;
    }
    let _ = stream.shutdown().await;
    Ok(())
}

/// Connects, writes the request and, if one is expected, reads the reply, all before the
/// request's deadline. A refused connection and a passed deadline are told apart for the core;
/// other errors read like Go's (`write tcp 10.0.0.1:7946: broken pipe`), because they end up in
/// `serf join`'s output.
async fn run_outbound(request: StreamRequest) -> Result<Vec<u8>, StreamError> {
    let to = request.to;
    let deadline = Instant::from_std(request.deadline);
    let mut stream = match tokio::time::timeout_at(deadline, TcpStream::connect(to)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return Err(dial_error(to, &error)),
        Err(_) => return Err(StreamError::TimedOut(Some((StreamStage::Dial, to)))),
    };
    let exchange = async {
        stream.write_all(&request.payload).await.map_err(|error| {
            StreamError::Other(format!(
                "write tcp {to}: {}",
                serf_rpc::go_text::io_error(&error)
            ))
        })?;
        if !request.expects_reply {
            return Ok(Vec::new());
        }
        read_message(&mut stream, MAX_STREAM_BYTES, stream_frame_len)
            .await
            .map_err(|error| StreamError::Other(format!("read tcp {to}: {error}")))
    };
    tokio::time::timeout_at(deadline, exchange)
        .await
        .unwrap_or(Err(StreamError::TimedOut(Some((StreamStage::Read, to)))))
}

/// A failed connect as the core sees it: refused (nothing listens on the port), or anything
/// else worded as Go's `dial tcp ADDR: connect: ...`.
fn dial_error(to: SocketAddr, error: &std::io::Error) -> StreamError {
    match error.kind() {
        std::io::ErrorKind::ConnectionRefused => StreamError::Refused(to),
        _ => StreamError::Other(format!(
            "dial tcp {to}: connect: {}",
            serf_rpc::go_text::io_error(error)
        )),
    }
}

/// Why a stream message could not be read. The connection is closed afterwards.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamReadError {
    /// The message (as its header announces, or as far as it was read) exceeds the limit.
    #[error("stream message of {len} bytes exceeds the {max} byte limit")]
    TooLarge { len: usize, max: usize },
    /// The peer closed the connection before the message was complete.
    #[error("EOF after {0} bytes of an incomplete message")]
    Eof(usize),
    /// The message's header is malformed.
    #[error("malformed stream message: {0}")]
    Decode(#[from] DecodeError),
    /// Reading failed.
    #[error("{}", serf_rpc::go_text::io_error(.0))]
    Io(#[from] std::io::Error),
}

/// Reads exactly one stream message: bytes until `frame_len` (normally [`stream_frame_len`])
/// says how long the message is and that many have arrived. Refuses messages longer than `max`
/// (reading at most `max + 1` bytes). Never reads past the message once its length is known.
///
/// `frame_len` measures from the first byte each time, so it runs only when the reader has
/// caught up with the peer (nothing more to read right now) or at end of stream: a peer
/// sending a large message in one go costs one measurement, not one per read.
pub(crate) async fn read_message<R, F>(
    reader: &mut R,
    max: usize,
    frame_len: F,
) -> Result<Vec<u8>, StreamReadError>
where
    R: AsyncRead + Unpin,
    F: Fn(&[u8]) -> Result<Option<usize>, DecodeError>,
{
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let mut known: Option<usize> = None;
    // How much of `buf` the last measurement saw.
    let mut measured = 0;
    loop {
        if known.is_none() && buf.len() > measured && buf.len() > max {
            measured = buf.len();
            known = frame_len(&buf)?;
        }
        match known {
            Some(len) if len > max => return Err(StreamReadError::TooLarge { len, max }),
            Some(len) if buf.len() >= len => {
                buf.truncate(len);
                return Ok(buf);
            }
            None if buf.len() > max => {
                return Err(StreamReadError::TooLarge {
                    len: buf.len(),
                    max,
                });
            }
            _ => {}
        }
        // One byte past the limit is enough to know the message is too long.
        let limit = known.unwrap_or(max + 1);
        let want = (limit - buf.len()).min(chunk.len());
        let read = match read_ready(reader, &mut chunk[..want]) {
            Some(read) => read?,
            None => {
                // Everything the peer has sent is here: is the message complete?
                if known.is_none() && buf.len() > measured {
                    measured = buf.len();
                    known = frame_len(&buf)?;
                    if known.is_some() {
                        continue;
                    }
                }
                reader.read(&mut chunk[..want]).await?
            }
        };
        if read == 0 {
            if known.is_none() && buf.len() > measured {
                measured = buf.len();
                known = frame_len(&buf)?;
                if known.is_some() {
                    continue;
                }
            }
            return Err(StreamReadError::Eof(buf.len()));
        }
        buf.extend_from_slice(&chunk[..read]);
    }
}

/// Reads what has already arrived without waiting: `None` when nothing has.
fn read_ready<R: AsyncRead + Unpin>(
    reader: &mut R,
    into: &mut [u8],
) -> Option<std::io::Result<usize>> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut read_buf = tokio::io::ReadBuf::new(into);
    match std::pin::Pin::new(reader).poll_read(&mut cx, &mut read_buf) {
        std::task::Poll::Ready(Ok(())) => Some(Ok(read_buf.filled().len())),
        std::task::Poll::Ready(Err(error)) => Some(Err(error)),
        std::task::Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stands in for the gossip framing: `[10] [len u32]` and `len` bytes, like an encrypted
    /// stream message; any other first byte is refused.
    fn framed(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
        match buf {
            [10, rest @ ..] if rest.len() >= 4 => {
                let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
                Ok(Some(5 + len as usize))
            }
            [10, ..] => Ok(None),
            [other, ..] => Err(DecodeError::UnknownType(*other)),
            [] => Ok(None),
        }
    }

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut bytes = vec![10];
        bytes.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
        bytes.extend_from_slice(body);
        bytes
    }

    #[tokio::test]
    async fn a_message_trickling_in_byte_by_byte_is_read_exactly() {
        let message = frame(b"push pull state");
        // A one-byte pipe: every read sees at most one byte.
        let (mut reader, mut writer) = tokio::io::duplex(1);
        let mut sent = message.clone();
        sent.extend_from_slice(b"NEXT");
        let writing = tokio::spawn(async move {
            for byte in sent {
                writer.write_all(&[byte]).await.unwrap();
            }
            writer
        });
        let read = read_message(&mut reader, 1024, framed).await.unwrap();
        assert_eq!(read, message);
        let mut rest = [0u8; 4];
        reader.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"NEXT", "nothing past the message was consumed");
        writing.await.unwrap();
    }

    #[tokio::test]
    async fn gossip_framing_finds_the_end_of_a_trickling_ping() {
        // [0] ping {"SeqNo": 1, "Node": "a"}, then the start of something else.
        let mut ping = vec![0, 0x82, 0xa5];
        ping.extend_from_slice(b"SeqNo");
        ping.extend_from_slice(&[0x01, 0xa4]);
        ping.extend_from_slice(b"Node");
        ping.extend_from_slice(&[0xa1, b'a']);
        let (mut reader, mut writer) = tokio::io::duplex(1);
        let mut sent = ping.clone();
        sent.push(0x99);
        let writing = tokio::spawn(async move {
            for byte in sent {
                writer.write_all(&[byte]).await.unwrap();
            }
            writer
        });
        let read = read_message(&mut reader, MAX_STREAM_BYTES, stream_frame_len)
            .await
            .unwrap();
        assert_eq!(read, ping);
        let mut next = [0u8; 1];
        reader.read_exact(&mut next).await.unwrap();
        assert_eq!(next, [0x99]);
        writing.await.unwrap();
    }

    #[tokio::test]
    async fn a_large_message_sent_at_once_is_measured_rarely() {
        let message = frame(&vec![7; 1 << 20]);
        let (mut reader, mut writer) = tokio::io::duplex(8 << 20);
        writer.write_all(&message).await.unwrap();
        let calls = std::cell::Cell::new(0);
        let counted = |buf: &[u8]| {
            calls.set(calls.get() + 1);
            match framed(buf)? {
                // Like the real framing: no length until the whole message is here.
                Some(len) if len <= buf.len() => Ok(Some(len)),
                _ => Ok(None),
            }
        };
        let read = read_message(&mut reader, MAX_STREAM_BYTES, counted)
            .await
            .unwrap();
        assert_eq!(read.len(), message.len());
        assert_eq!(calls.get(), 1, "measured once, when the reader caught up");
    }

    #[tokio::test]
    async fn an_encrypted_frame_announcing_too_much_is_refused_by_the_gossip_framing() {
        let (mut reader, mut writer) = tokio::io::duplex(64);
        let too_long = u32::try_from(MAX_STREAM_BYTES + 1).unwrap();
        let mut header = vec![10];
        header.extend_from_slice(&too_long.to_be_bytes());
        writer.write_all(&header).await.unwrap();
        let error = read_message(&mut reader, MAX_STREAM_BYTES, stream_frame_len)
            .await
            .unwrap_err();
        assert!(
            matches!(error, StreamReadError::Decode(DecodeError::TooLarge { .. })),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_message_announcing_more_than_the_limit_is_refused_unread() {
        let (mut reader, mut writer) = tokio::io::duplex(64);
        // Only the header is ever sent: the reader must not wait for the body.
        writer.write_all(&frame(&[0; 100])[..5]).await.unwrap();
        let error = read_message(&mut reader, 64, framed).await.unwrap_err();
        assert!(
            matches!(error, StreamReadError::TooLarge { len: 105, max: 64 }),
            "{error}"
        );
        assert_eq!(
            error.to_string(),
            "stream message of 105 bytes exceeds the 64 byte limit"
        );
    }

    #[tokio::test]
    async fn a_message_whose_length_never_shows_stops_past_the_limit() {
        let (mut reader, mut writer) = tokio::io::duplex(4096);
        writer.write_all(&[10; 200]).await.unwrap();
        let never = |_: &[u8]| Ok(None);
        let error = read_message(&mut reader, 100, never).await.unwrap_err();
        assert!(
            matches!(error, StreamReadError::TooLarge { len: 101, max: 100 }),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_cut_short_or_malformed_message_is_an_error() {
        let (mut reader, mut writer) = tokio::io::duplex(64);
        writer.write_all(&frame(b"abcdef")[..8]).await.unwrap();
        drop(writer);
        let error = read_message(&mut reader, 64, framed).await.unwrap_err();
        assert!(matches!(error, StreamReadError::Eof(8)), "{error}");

        let (mut reader, mut writer) = tokio::io::duplex(64);
        writer.write_all(&[0xff, 1, 2]).await.unwrap();
        let error = read_message(&mut reader, 64, framed).await.unwrap_err();
        assert!(
            matches!(
                error,
                StreamReadError::Decode(DecodeError::UnknownType(0xff))
            ),
            "{error}"
        );
    }

    #[tokio::test]
    async fn udp_and_tcp_share_the_port_picked_for_port_zero() {
        let transport = Transport::bind("127.0.0.1:0".parse().unwrap(), Duration::from_secs(1))
            .await
            .unwrap();
        let port = transport.local_addr.port();
        assert_ne!(port, 0);
        assert_eq!(transport.udp.local_addr().unwrap().port(), port);
        TcpStream::connect(transport.local_addr).await.unwrap();
    }

    #[tokio::test]
    async fn the_gossip_socket_asks_for_more_receive_buffer_than_the_default() {
        let transport = Transport::bind("127.0.0.1:0".parse().unwrap(), Duration::from_secs(1))
            .await
            .unwrap();
        let granted = socket2::SockRef::from(&transport.udp)
            .recv_buffer_size()
            .unwrap();
        let plain = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let default = socket2::SockRef::from(&plain).recv_buffer_size().unwrap();
        assert!(
            granted > default,
            "{granted} bytes, the default is {default}"
        );
    }

    fn request(to: SocketAddr, expects_reply: bool, deadline: Duration) -> StreamRequest {
        StreamRequest {
            id: StreamId(7),
            to,
            payload: b"hello".to_vec(),
            expects_reply,
            deadline: (Instant::now() + deadline).into_std(),
        }
    }

    #[tokio::test]
    async fn outbound_failures_read_like_gos() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed = listener.local_addr().unwrap();
        drop(listener);
        let error = run_outbound(request(closed, true, Duration::from_secs(5)))
            .await
            .unwrap_err();
        assert_eq!(error, StreamError::Refused(closed));
        assert_eq!(
            error.to_string(),
            format!("dial tcp {closed}: connect: connection refused")
        );

        // A peer that accepts and never answers: the read gives up at the deadline.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent = listener.local_addr().unwrap();
        let holder = tokio::spawn(async move { listener.accept().await });
        let error = run_outbound(request(silent, true, Duration::from_millis(300)))
            .await
            .unwrap_err();
        assert_eq!(
            error,
            StreamError::TimedOut(Some((StreamStage::Read, silent)))
        );
        assert_eq!(error.to_string(), format!("read tcp {silent}: i/o timeout"));
        drop(holder);
    }

    #[tokio::test]
    async fn an_outbound_stream_without_a_reply_writes_and_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = listener.local_addr().unwrap();
        let peer = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut received = Vec::new();
            stream.read_to_end(&mut received).await.unwrap();
            received
        });
        let reply = run_outbound(request(to, false, Duration::from_secs(5))).await;
        assert_eq!(reply, Ok(Vec::new()));
        assert_eq!(peer.await.unwrap(), b"hello");
    }

    #[test]
    fn os_errors_print_like_go() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(serf_rpc::go_text::io_error(&refused), "connection refused");
        let raw = std::io::Error::from_raw_os_error(111);
        assert_eq!(serf_rpc::go_text::io_error(&raw), "connection refused");
    }
}
