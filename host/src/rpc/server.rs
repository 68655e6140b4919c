//! The RPC server: Serf's msgpack RPC on TCP, for Serf's CLI, its client libraries and ours.
//!
//! One task per connection reads requests in order and enforces Serf's connection rules
//! (handshake first, then auth when configured; an unknown command or an undecodable body
//! closes the connection). A second task per connection writes: replies and the records of
//! `stream`, `monitor` and `query` all go through one bounded queue, and records for a client
//! that does not keep up are dropped and counted rather than waited for. A semaphore caps
//! connections; a frame size limit caps memory per connection.
//!
//! Requests are handled one after the other, as Serf does, with one exception that keeps
//! their order: consecutive `event` requests that a client has pipelined are handed to the
//! agent together, up to `EVENT_PIPELINE` (64) of them, and their replies written in one go, in
//! request order, before any other request is looked at.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::handlers;
use super::protocol::{self, FrameReader, RequestHeader, ResponseHeader, command, errors};
use crate::agent::{AgentHandle, PendingUserEvent};
use crate::serf::QueryKey;

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 256;
/// Frames queued for one client before stream records are dropped.
const WRITE_QUEUE: usize = 1024;
/// Queued frames are joined into writes of about this size.
const WRITE_BATCH_BYTES: usize = 64 * 1024;
/// Pipelined `event` requests handed to the agent before their replies are waited for.
const EVENT_PIPELINE: usize = 64;

/// Counters shared by every connection.
#[derive(Default)]
pub struct ServerStats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Stream, monitor and query records dropped because a client was too slow.
    pub dropped_records: AtomicU64,
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
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let stats = Arc::new(ServerStats::default());
        let task = tokio::spawn(accept_loop(listener, agent, stats, stop.clone()));
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
    listener: TcpListener,
    agent: AgentHandle,
    stats: Arc<ServerStats>,
    stop: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            () = stop.cancelled() => return,
            permit = Arc::clone(&permits).acquire_owned() => permit.expect("never closed"),
        };
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "rpc accept failed");
                    continue;
                }
            },
        };
        stats.connections.fetch_add(1, Ordering::Relaxed);
        let agent = agent.clone();
        let stats = Arc::clone(&stats);
        let stop = stop.clone();
        let span = tracing::debug_span!("rpc", %peer);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                tracing::debug!("rpc client connected");
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = serve(stream, agent, stats) => {}
                }
                tracing::debug!("rpc client disconnected");
                drop(permit);
            },
            span,
        ));
    }
}

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
    pub(super) fn record<B: Serialize>(&self, seq: u64, body: &B) -> bool {
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
                let dropped = self.stats.dropped_records.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    tracing::warn!(dropped, "rpc client too slow; record dropped");
                }
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
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

async fn serve(stream: TcpStream, agent: AgentHandle, stats: Arc<ServerStats>) {
    let _ = stream.set_nodelay(true);
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
    let mut session = Session {
        agent,
        outbox: Outbox { frames, stats },
        handshake: false,
        authenticated: false,
        streams: HashMap::new(),
        monitor: None,
        pending_queries: Arc::default(),
        pending_events: VecDeque::new(),
    };
    let mut reader = FrameReader::new(read);
    let mut stop_agent = false;
    loop {
        // Pipelined events are answered once no further request is buffered (or enough
        // are waiting): a client that waits for each reply gets it at once.
        if !session.pending_events.is_empty()
            && (session.pending_events.len() >= EVENT_PIPELINE || !reader.has_buffered_object())
        {
            session.flush_events().await;
        }
        match read_request(&mut reader, &mut session).await {
            Ok(Flow::Continue) => {}
            Ok(Flow::Close) => break,
            Ok(Flow::CloseAndStop) => {
                stop_agent = true;
                break;
            }
            Err(error) => {
                tracing::debug!(%error, "rpc connection closed");
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

/// Reads one request (a header and, for most commands, a body) and handles it.
async fn read_request(
    reader: &mut FrameReader<OwnedReadHalf>,
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
        command::GET_COORDINATE => {
            handlers::get_coordinate(session, seq, body(reader).await?).await
        }
        _ => unreachable!("every name in command::ALL is handled above"),
    }
}

/// Reads and decodes a request body; an undecodable one ends the connection, as in Serf.
async fn body<T: serde::de::DeserializeOwned>(
    reader: &mut FrameReader<OwnedReadHalf>,
) -> Result<T, protocol::FrameError> {
    match reader.read::<T>().await? {
        Some(body) => Ok(body),
        None => Err(protocol::FrameError::Truncated { buffered: 0 }),
    }
}
