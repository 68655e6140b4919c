//! The RPC server: Serf's msgpack RPC on TCP, for Serf's CLI, its client libraries and ours.
//!
//! One task per connection reads requests in order and enforces Serf's connection rules
//! (handshake first, then auth when configured; an unknown command or an undecodable body
//! closes the connection). A second task per connection writes: replies and the records of
//! `stream`, `monitor` and `query` all go through one bounded queue, and records for a client
//! that does not keep up are dropped and counted rather than waited for.
//!
//! Idle or slow sockets cannot lock clients out (docs/compatibility.md, "Connection limits"):
//! there is no fixed cap on connections (file descriptors are the bound, and the agent raises
//! its soft limit to the hard one at start). A connection must finish its handshake (and `auth`
//! when `rpc_auth` is set) within [`HANDSHAKE_TIMEOUT`] of being accepted; until then it is
//! *pending*, and pending connections are capped per source address and in total, the oldest
//! being closed to make room for a new one ([`serf_node::accept::Pending`]). After the handshake a
//! connection may stay idle as long as it likes (`monitor` and `stream` clients do), but once
//! the first byte of a request arrives the whole request must follow within
//! [`REQUEST_TIMEOUT`]. A frame size limit caps the memory of a request, and an idle
//! connection holds no read buffer.
//!
//! Requests are handled one after the other, as Serf does, with one exception that keeps
//! their order: consecutive `event` requests that a client has pipelined are handed to the
//! agent together, up to `EVENT_PIPELINE` (64) of them, and their replies written in one go, in
//! request order, before any other request is looked at.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use super::handlers;
use crate::agent::AgentHandle;
use serf_core::QueryKey;
use serf_node::PendingUserEvent;
use serf_node::accept::{AcceptStats, Acceptor, Admission, Doorway};
use serf_rpc::protocol::{self, FrameReader, RequestHeader, ResponseHeader, command, errors};

/// From accept to a completed handshake (and `auth`, when `rpc_auth` is set).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// From the first byte of a request to its last.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections before their handshake from one source address; a new one closes the oldest.
pub const PENDING_PER_SOURCE: usize = 2048;
/// Connections before their handshake in all; a new one closes the oldest.
pub const PENDING_TOTAL: usize = 8192;
/// Frames queued for one client before stream records are dropped.
const WRITE_QUEUE: usize = 1024;
/// Queued frames are joined into writes of about this size.
const WRITE_BATCH_BYTES: usize = 64 * 1024;
/// Pipelined `event` requests handed to the agent before their replies are waited for.
const EVENT_PIPELINE: usize = 64;

/// What kind of record a slow client missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RecordKind {
    /// An event of a `stream`.
    Event,
    /// A log line of a `monitor`.
    Log,
    /// An ack or response of a `query`.
    Query,
}

/// Counters shared by every connection, for `serf info` (section `rpc`, and the drop counters
/// of section `serf`).
#[derive(Default)]
pub struct ServerStats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections closed because their handshake (or auth) did not come in time.
    pub handshake_timeouts: AtomicU64,
    /// Connections closed because a request started but did not finish in time.
    pub request_timeouts: AtomicU64,
    /// `stream` events dropped because a client was too slow.
    pub dropped_events: AtomicU64,
    /// `monitor` lines dropped because a client was too slow.
    pub dropped_log_lines: AtomicU64,
    /// `query` acks and responses dropped because a client was too slow.
    pub dropped_query_records: AtomicU64,
    /// The listener's failed accepts.
    pub accept: Arc<AcceptStats>,
    /// Pending (not yet handshaken) connections, for the eviction counter.
    doorway: Option<Doorway>,
}

impl ServerStats {
    /// Pending connections closed to make room for new ones.
    pub fn pending_evicted(&self) -> u64 {
        self.doorway.as_ref().map_or(0, Doorway::num_evicted)
    }

    /// Connections waiting for their handshake now.
    pub fn pending(&self) -> usize {
        self.doorway.as_ref().map_or(0, Doorway::num_pending)
    }

    fn dropped(&self, kind: RecordKind) -> &AtomicU64 {
        match kind {
            RecordKind::Event => &self.dropped_events,
            RecordKind::Log => &self.dropped_log_lines,
            RecordKind::Query => &self.dropped_query_records,
        }
    }
}

/// A listening RPC server.
pub struct RpcServer {
    local_addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
}

impl RpcServer {
    /// Binds `addr` and serves until [`RpcServer::shutdown`].
    pub async fn start(agent: AgentHandle, addr: SocketAddr) -> std::io::Result<RpcServer> {
        let listener = serf_node::accept::listen(addr)?;
        let local_addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let doorway = Doorway::new(PENDING_PER_SOURCE, PENDING_TOTAL);
        let stats = Arc::new(ServerStats {
            doorway: Some(doorway.clone()),
            ..ServerStats::default()
        });
        let acceptor = Acceptor::new(listener, "rpc", Arc::clone(&stats.accept));
        let task = tokio::spawn(accept_loop(acceptor, doorway, agent, stats, stop.clone()));
        Ok(RpcServer {
            local_addr,
            task,
            stop,
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting and closes every connection.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn accept_loop(
    mut acceptor: Acceptor,
    doorway: Doorway,
    agent: AgentHandle,
    stats: Arc<ServerStats>,
    stop: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = acceptor.accept() => accepted,
        };
        stats.connections.fetch_add(1, Ordering::Relaxed);
        let admission = doorway.admit(peer);
        let agent = agent.clone();
        let stats = Arc::clone(&stats);
        let stop = stop.clone();
        let span = tracing::debug_span!("rpc", %peer);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                tracing::debug!("rpc client connected");
                stats.open.fetch_add(1, Ordering::Relaxed);
                let evicted = admission.evicted().clone();
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = evicted.cancelled() => {
                        tracing::debug!("rpc client closed before its handshake to make room");
                    }
                    () = serve(stream, agent, Arc::clone(&stats), admission) => {}
                }
                stats.open.fetch_sub(1, Ordering::Relaxed);
                tracing::debug!("rpc client disconnected");
            },
            span,
        ));
    }
}

/// The read half of a connection under its read deadline: a fixed instant (the handshake's),
/// or [`REQUEST_TIMEOUT`] from the first byte of a request, or none. A read past the deadline
/// fails with `TimedOut`.
struct Deadlined<R> {
    inner: R,
    deadline: Deadline,
    sleep: Pin<Box<Sleep>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deadline {
    /// Reads may wait forever (not used while reading a request).
    Off,
    /// Armed by the first byte read.
    FromFirstByte,
    /// Armed: `sleep` fires at the deadline.
    Armed,
}

impl<R> Deadlined<R> {
    fn new(inner: R) -> Deadlined<R> {
        Deadlined {
            inner,
            deadline: Deadline::Off,
            sleep: Box::pin(tokio::time::sleep_until(Instant::now())),
        }
    }

    fn until(&mut self, at: Instant) {
        self.sleep.as_mut().reset(at);
        self.deadline = Deadline::Armed;
    }

    fn arm_on_first_byte(&mut self) {
        self.deadline = Deadline::FromFirstByte;
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Deadlined<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.deadline == Deadline::Armed && this.sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()));
        }
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.deadline == Deadline::FromFirstByte
            && matches!(poll, Poll::Ready(Ok(())))
            && buf.filled().len() > before
        {
            this.until(Instant::now() + REQUEST_TIMEOUT);
        }
        poll
    }
}

type Reader = FrameReader<Deadlined<OwnedReadHalf>>;

/// The sending side of a connection, shared by the reader and the stream tasks.
#[derive(Clone)]
pub(super) struct Outbox {
    frames: mpsc::Sender<Vec<u8>>,
    stats: Arc<ServerStats>,
}

impl Outbox {
    /// Queues a reply, waiting for room: replies are never dropped.
    pub(super) async fn reply<B: Serialize>(&self, seq: u64, error: &str, body: Option<&B>) {
        if let Some(frame) = encode_reply(seq, error, body) {
            let _ = self.frames.send(frame).await;
        }
    }

    /// Queues frames encoded already, waiting for room.
    async fn encoded(&self, frames: Vec<u8>) {
        let _ = self.frames.send(frames).await;
    }

    /// A reply without a body.
    pub(super) async fn ok(&self, seq: u64) {
        self.reply::<()>(seq, "", None).await;
    }

    /// An error reply without a body.
    pub(super) async fn error(&self, seq: u64, error: &str) {
        self.reply::<()>(seq, error, None).await;
    }

    /// Queues a stream record without waiting; returns false once the client is gone.
    pub(super) fn record<B: Serialize>(&self, kind: RecordKind, seq: u64, body: &B) -> bool {
        let frame = match protocol::encode_frame(&ResponseHeader::ok(seq), Some(body)) {
            Ok(frame) => frame,
            Err(error) => {
                tracing::error!(%error, "cannot encode rpc record");
                return true;
            }
        };
        match self.frames.try_send(frame) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                let dropped = self.stats.dropped(kind).fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    tracing::warn!(?kind, dropped, "rpc client too slow; record dropped");
                }
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// The server's counters.
    pub(super) fn stats(&self) -> &ServerStats {
        &self.stats
    }

    /// Waits until the client is gone.
    pub(super) async fn closed(&self) {
        self.frames.closed().await;
    }
}

/// A reply frame; one that cannot be encoded is logged and left out.
fn encode_reply<B: Serialize>(seq: u64, error: &str, body: Option<&B>) -> Option<Vec<u8>> {
    protocol::encode_frame(&ResponseHeader::error(seq, error), body)
        .inspect_err(|error| tracing::error!(%error, "cannot encode rpc reply"))
        .ok()
}

/// What one connection has set up.
pub(super) struct Session {
    pub(super) agent: AgentHandle,
    pub(super) outbox: Outbox,
    /// The connection's place among pending connections, until it has proven itself.
    admission: Option<Admission>,
    handshake: bool,
    authenticated: bool,
    /// `stream` and `monitor` tasks by request Seq.
    pub(super) streams: HashMap<u64, tokio::task::JoinHandle<()>>,
    pub(super) monitor: Option<u64>,
    /// Queries seen on this connection's streams, by the ID handed to the client.
    pub(super) pending_queries: Arc<Mutex<PendingQueries>>,
    /// `event` requests handed to the agent whose replies are not written yet, in order.
    pub(super) pending_events: VecDeque<(u64, PendingUserEvent)>,
}

impl Session {
    /// Waits for the outcome of every pending `event` request and queues their replies,
    /// in request order, as one write.
    pub(super) async fn flush_events(&mut self) {
        if self.pending_events.is_empty() {
            return;
        }
        let mut frames = Vec::new();
        for (seq, pending) in self.pending_events.drain(..) {
            let error = match pending.outcome().await {
                Ok(_) => String::new(),
                Err(error) => handlers::agent_error(&error),
            };
            if let Some(frame) = encode_reply::<()>(seq, &error, None) {
                frames.extend_from_slice(&frame);
            }
        }
        self.outbox.encoded(frames).await;
    }
}

/// Per-connection query IDs for `respond`, as Serf hands them out.
#[derive(Default)]
pub(super) struct PendingQueries {
    next_id: u64,
    by_id: HashMap<u64, (QueryKey, std::time::Instant)>,
}

impl PendingQueries {
    /// Registers a query and returns its ID (1, 2, ...).
    pub(super) fn register(&mut self, key: QueryKey, deadline: std::time::Instant) -> u64 {
        let now = std::time::Instant::now();
        self.by_id.retain(|_, (_, deadline)| *deadline > now);
        self.next_id += 1;
        self.by_id.insert(self.next_id, (key, deadline));
        self.next_id
    }

    /// The query behind an ID, if it is still before its deadline.
    pub(super) fn get(&self, id: u64) -> Option<QueryKey> {
        let now = std::time::Instant::now();
        self.by_id
            .get(&id)
            .filter(|(_, deadline)| *deadline > now)
            .map(|(key, _)| *key)
    }
}

/// How a request ended for the connection.
pub(super) enum Flow {
    /// Read the next request.
    Continue,
    /// Close the connection after the replies already queued.
    Close,
    /// Close the connection once the replies already queued are written, then stop the agent
    /// (an RPC `leave`).
    CloseAndStop,
}

async fn serve(
    stream: TcpStream,
    agent: AgentHandle,
    stats: Arc<ServerStats>,
    admission: Admission,
) {
    let _ = stream.set_nodelay(true);
    let handshake_deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let (read, mut write) = stream.into_split();
    let (frames, mut queue) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(mut batch) = queue.recv().await {
            // Whatever else is already queued goes out in the same write.
            while batch.len() < WRITE_BATCH_BYTES {
                match queue.try_recv() {
                    Ok(frame) => batch.extend_from_slice(&frame),
                    Err(_) => break,
                }
            }
            if write.write_all(&batch).await.is_err() {
                return;
            }
        }
        let _ = write.shutdown().await;
    });
    let stats_for_timeouts = Arc::clone(&stats);
    let mut session = Session {
        agent,
        outbox: Outbox { frames, stats },
        admission: Some(admission),
        handshake: false,
        authenticated: false,
        streams: HashMap::new(),
        monitor: None,
        pending_queries: Arc::default(),
        pending_events: VecDeque::new(),
    };
    let mut reader = FrameReader::new(Deadlined::new(read));
    reader.get_mut().until(handshake_deadline);
    let mut stop_agent = false;
    loop {
        // Pipelined events are answered once no further request is buffered (or enough
        // are waiting): a client that waits for each reply gets it at once.
        if !session.pending_events.is_empty()
            && (session.pending_events.len() >= EVENT_PIPELINE || !reader.has_buffered_object())
        {
            session.flush_events().await;
        }
        if session.admission.is_none() {
            if reader.buffered().is_empty() {
                // Idle between requests: no deadline and no buffer until the next one starts.
                reader.release_idle_buffer();
                reader.get_mut().arm_on_first_byte();
            } else {
                reader.get_mut().until(Instant::now() + REQUEST_TIMEOUT);
            }
        }
        match read_request(&mut reader, &mut session).await {
            Ok(Flow::Continue) => {}
            Ok(Flow::Close) => break,
            Ok(Flow::CloseAndStop) => {
                stop_agent = true;
                break;
            }
            Err(error) => {
                if is_timeout(&error) {
                    let counter = if session.admission.is_some() {
                        &stats_for_timeouts.handshake_timeouts
                    } else {
                        &stats_for_timeouts.request_timeouts
                    };
                    let timeouts = counter.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::debug!(
                        handshake = session.admission.is_none(),
                        timeouts,
                        "rpc connection timed out"
                    );
                } else {
                    tracing::debug!(%error, "rpc connection closed");
                }
                break;
            }
        }
        if session.admission.is_some() && session.is_trusted() {
            // Handshake (and auth) done: the connection may stay, idle if it likes, and
            // can no longer be closed to make room.
            if let Some(mut admission) = session.admission.take()
                && !admission.settle()
            {
                break;
            }
        }
    }
    session.flush_events().await;
    for (_, task) in session.streams.drain() {
        task.abort();
    }
    let agent = session.agent.clone();
    drop(session);
    let _ = writer.await;
    if stop_agent {
        agent.request_shutdown();
    }
}

fn is_timeout(error: &protocol::FrameError) -> bool {
    matches!(error, protocol::FrameError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut)
}

impl Session {
    /// Whether the client has done what the agent requires before it may idle: a handshake,
    /// and `auth` when `rpc_auth` is set.
    fn is_trusted(&self) -> bool {
        self.handshake && (self.authenticated || self.agent.config().rpc_auth.is_none())
    }
}

/// Reads one request (a header and, for most commands, a body) and handles it.
async fn read_request(
    reader: &mut Reader,
    session: &mut Session,
) -> Result<Flow, protocol::FrameError> {
    let Some(header) = reader.read::<RequestHeader>().await? else {
        return Ok(Flow::Close);
    };
    let (name, seq) = (header.command.as_str(), header.seq);
    tracing::debug!(command = name, seq, "rpc request");
    if name != command::EVENT {
        // Every reply goes out in request order.
        session.flush_events().await;
    }
    if !session.handshake && name != command::HANDSHAKE {
        session.outbox.error(seq, errors::HANDSHAKE_REQUIRED).await;
        return Ok(Flow::Close);
    }
    if session.agent.config().rpc_auth.is_some()
        && !session.authenticated
        && name != command::HANDSHAKE
        && name != command::AUTH
    {
        // As in Serf, the body (if any) is left unread and will be taken for the next header.
        session.outbox.error(seq, errors::AUTH_REQUIRED).await;
        return Ok(Flow::Continue);
    }
    if !command::ALL.contains(&name) {
        session.outbox.error(seq, errors::UNSUPPORTED_COMMAND).await;
        return Ok(Flow::Close);
    }
    match name {
        command::HANDSHAKE => {
            let request: protocol::HandshakeRequest = body(reader).await?;
            let error = if session.handshake {
                errors::DUPLICATE_HANDSHAKE
            } else if request.version != protocol::IPC_VERSION {
                errors::UNSUPPORTED_IPC_VERSION
            } else {
                session.handshake = true;
                ""
            };
            session.outbox.error(seq, error).await;
            Ok(Flow::Continue)
        }
        command::AUTH => {
            let request: protocol::AuthRequest = body(reader).await?;
            let auth_key = session
                .agent
                .config()
                .rpc_auth
                .as_deref()
                .unwrap_or_default();
            if request.auth_key == auth_key {
                session.authenticated = true;
                session.outbox.ok(seq).await;
            } else {
                session.outbox.error(seq, errors::INVALID_AUTH_TOKEN).await;
            }
            Ok(Flow::Continue)
        }
        command::EVENT => handlers::event(session, seq, body(reader).await?).await,
        command::FORCE_LEAVE => handlers::force_leave(session, seq, body(reader).await?).await,
        command::JOIN => handlers::join(session, seq, body(reader).await?).await,
        command::MEMBERS => handlers::members(session, seq, None).await,
        command::MEMBERS_FILTERED => {
            handlers::members(session, seq, Some(body(reader).await?)).await
        }
        command::TAGS => handlers::tags(session, seq, body(reader).await?).await,
        command::STREAM => handlers::stream(session, seq, body(reader).await?).await,
        command::MONITOR => handlers::monitor(session, seq, body(reader).await?).await,
        command::STOP => handlers::stop(session, seq, body(reader).await?).await,
        command::LEAVE => handlers::leave(session, seq).await,
        command::QUERY => handlers::query(session, seq, body(reader).await?).await,
        command::RESPOND => handlers::respond(session, seq, body(reader).await?).await,
        command::INSTALL_KEY | command::USE_KEY | command::REMOVE_KEY => {
            let request: protocol::KeyRequest = body(reader).await?;
            handlers::keys(session, seq, name, Some(request.key)).await
        }
        command::LIST_KEYS => handlers::keys(session, seq, name, None).await,
        command::STATS => handlers::stats(session, seq).await,
        command::RELOAD => handlers::reload(session, seq).await,
        command::JOBS_LIST => handlers::jobs_list(session, seq).await,
        command::JOB_SHOW | command::JOB_KILL | command::JOB_REAP => {
            handlers::job(session, seq, name, body(reader).await?).await
        }
        command::PLUGIN_LIST => handlers::plugin_list(session, seq).await,
        command::PLUGIN_STATUS => handlers::plugin_status(session, seq, body(reader).await?).await,
        command::PLUGIN_STATE => handlers::plugin_state(session, seq, body(reader).await?).await,
        command::GET_COORDINATE => {
            handlers::get_coordinate(session, seq, body(reader).await?).await
        }
        _ => unreachable!("every name in command::ALL is handled above"),
    }
}

/// Reads and decodes a request body; an undecodable one ends the connection, as in Serf.
async fn body<T: serde::de::DeserializeOwned>(
    reader: &mut Reader,
) -> Result<T, protocol::FrameError> {
    match reader.read::<T>().await? {
        Some(body) => Ok(body),
        None => Err(protocol::FrameError::Truncated { buffered: 0 }),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test]
    async fn records_a_slow_client_misses_are_counted_by_kind() {
        let (frames, _queue) = mpsc::channel(1);
        let stats = Arc::new(ServerStats::default());
        let outbox = Outbox {
            frames,
            stats: Arc::clone(&stats),
        };
        assert!(outbox.record(RecordKind::Event, 1, &"first"));
        assert!(outbox.record(RecordKind::Event, 1, &"dropped"));
        assert!(outbox.record(RecordKind::Log, 2, &"dropped"));
        assert!(outbox.record(RecordKind::Query, 3, &"dropped"));
        assert_eq!(stats.dropped_events.load(Ordering::Relaxed), 1);
        assert_eq!(stats.dropped_log_lines.load(Ordering::Relaxed), 1);
        assert_eq!(stats.dropped_query_records.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_reader_waits_for_ever_but_a_started_request_must_finish() {
        let (read, mut write) = tokio::io::duplex(64);
        let mut reader = Deadlined::new(read);
        reader.arm_on_first_byte();
        let mut buf = [0u8; 8];
        let idle = tokio::time::timeout(Duration::from_secs(3600), reader.read(&mut buf)).await;
        assert!(idle.is_err(), "an idle connection is not timed out");

        write.write_all(&[0x82]).await.unwrap();
        assert_eq!(reader.read(&mut buf).await.unwrap(), 1);
        let started = Instant::now();
        let error = reader.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), REQUEST_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fixed_deadline_holds_however_the_bytes_trickle() {
        let (read, mut write) = tokio::io::duplex(64);
        let mut reader = Deadlined::new(read);
        let start = Instant::now();
        reader.until(start + HANDSHAKE_TIMEOUT);
        let mut buf = [0u8; 8];
        let error = loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            write.write_all(&[0]).await.unwrap();
            match reader.read(&mut buf).await {
                Ok(_) => continue,
                Err(error) => break error,
            }
        };
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        assert!(start.elapsed() <= HANDSHAKE_TIMEOUT + Duration::from_secs(1));
    }
}
