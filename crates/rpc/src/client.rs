//! An async client for Serf's RPC protocol, used by our CLI and by integration tests; it talks
//! to our agent and to the real Serf agent alike.
//!
//! Owns one TCP connection: a reader task demultiplexes replies by `Seq` (replies, `stream`,
//! `monitor` and `query` records interleave on the wire), requests are written whole under a
//! lock. Whether a reply carries a body is decided per command ([`protocol::response_has_body`]),
//! exactly as Serf's own client does; records of streams we have stopped are still consumed so
//! the connection never goes out of sync. Does not print, retry or reconnect.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::protocol::{
    self, AuthRequest, Coordinate, CoordinateRequest, CoordinateResponse, EncodeError,
    EventRequest, ForceLeaveRequest, FrameError, FrameReader, HandshakeRequest, JoinRequest,
    JoinResponse, KeyRequest, KeyResponse, LogRecord, Member, MembersFilteredRequest,
    MembersResponse, MonitorRequest, QueryRecord, QueryRecordType, QueryRequest, ReloadResponse,
    RequestHeader, RespondRequest, ResponseHeader, Stats, StopRequest, StreamRecord, StreamRequest,
    TagsRequest, command,
};

/// Dial timeout, per-write timeout and handshake timeout, as in Serf's Go client.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Records buffered per stream, monitor or query before new ones are dropped (Serf's CLI uses
/// 1024 for streams and monitors).
pub const DEFAULT_STREAM_CAPACITY: usize = 1024;

/// How to reach an agent.
#[derive(Debug, Clone)]
pub struct Config {
    /// `host:port` (`[v6]:port` for IPv6).
    pub addr: String,
    /// Sent with `auth` after the handshake when non-empty.
    pub auth_key: Option<String>,
    /// Bounds the dial, each write, and the wait for the handshake and auth replies.
    pub timeout: Duration,
    /// Capacity of each [`Subscription`]'s queue.
    pub stream_capacity: usize,
    /// Largest reply accepted, see [`protocol::DEFAULT_MAX_FRAME_BYTES`].
    pub max_frame_bytes: usize,
}

impl Config {
    /// Defaults for `addr`: no auth, [`DEFAULT_TIMEOUT`], [`DEFAULT_STREAM_CAPACITY`].
    pub fn new(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            auth_key: None,
            timeout: DEFAULT_TIMEOUT,
            stream_capacity: DEFAULT_STREAM_CAPACITY,
            max_frame_bytes: protocol::DEFAULT_MAX_FRAME_BYTES,
        }
    }
}

/// Why a client call failed. The `Display` texts of the connection errors follow Go's `net`
/// package and [`RpcError::Remote`] is Serf's text verbatim, so the CLI prints what Serf's does.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The address is not `host:port`; nothing was sent.
    #[error("dial tcp: address {addr}: {reason}")]
    Address { addr: String, reason: &'static str },
    /// The host name did not resolve; nothing was sent.
    #[error("dial tcp: lookup {host}: {reason}")]
    Lookup { host: String, reason: String },
    /// The TCP connection was refused or failed; nothing was sent.
    #[error("dial tcp {addr}: {reason}")]
    Dial { addr: String, reason: String },
    /// No connection (or no handshake reply) within [`Config::timeout`].
    #[error("dial tcp {addr}: i/o timeout")]
    DialTimeout { addr: String },
    /// The agent answered with an error, e.g. [`protocol::errors::AUTH_REQUIRED`]. Whether the
    /// command took effect depends on the command (join may have contacted some nodes).
    #[error("{0}")]
    Remote(String),
    /// A key command failed on some nodes; `response` holds each node's message.
    #[error("{message}")]
    Key {
        message: String,
        response: KeyResponse,
    },
    /// The connection is closed (by the agent, or after an earlier failure). Serf's wording.
    #[error("client closed")]
    Closed,
    /// A request could not be written in time; the connection is closed.
    #[error("writing to the agent timed out after {0:?}")]
    WriteTimeout(Duration),
    /// A request could not be written; the connection is closed.
    #[error("writing to the agent failed")]
    Write(#[source] std::io::Error),
    #[error("encoding the request failed")]
    Encode(#[from] EncodeError),
    /// A reply body was missing or malformed; the command may have taken effect.
    #[error("malformed reply to {command}")]
    Reply {
        command: &'static str,
        #[source]
        source: FrameError,
    },
}

impl RpcError {
    /// The agent's error text, if the agent answered with one.
    pub fn remote_message(&self) -> Option<&str> {
        match self {
            Self::Remote(message) | Self::Key { message, .. } => Some(message),
            _ => None,
        }
    }
}

/// Records of one `stream`, `monitor` or `query`, in arrival order. The queue ends (`None`)
/// when the agent finishes it (a query's `done`), after [`Client::stop`], or when the
/// connection closes. Dropping it without `stop` leaves the agent streaming; the client
/// discards those records.
#[derive(Debug)]
pub struct Subscription<T> {
    seq: u64,
    records: mpsc::Receiver<T>,
    dropped: Arc<AtomicU64>,
}

impl<T> Subscription<T> {
    /// The request's `Seq`, which [`Client::stop`] takes.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The next record, or `None` once the subscription has ended.
    pub async fn recv(&mut self) -> Option<T> {
        self.records.recv().await
    }

    /// Records dropped because this queue was full.
    pub fn num_dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// The underlying queue, e.g. for `tokio::select!`.
    pub fn receiver(&mut self) -> &mut mpsc::Receiver<T> {
        &mut self.records
    }
}

/// A connection to an agent's RPC port, handshaken (and authenticated if configured).
///
/// Methods take `&self` and may run concurrently. Dropping the client closes the connection.
#[derive(Debug)]
pub struct Client {
    inner: Arc<Inner>,
    reader: JoinHandle<()>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    timeout: Duration,
    stream_capacity: usize,
}

#[derive(Debug, Default)]
struct State {
    /// Seq of the last request; Serf's Go client starts at 1.
    last_seq: u64,
    pending: HashMap<u64, Pending>,
    closed: bool,
}

/// What the reader does with the next header carrying a given `Seq`.
#[derive(Debug)]
enum Pending {
    /// A plain request: one header, then a body if the command has one.
    Reply {
        command: &'static str,
        reply: oneshot::Sender<Result<Reply, RpcError>>,
    },
    /// A stream, monitor or query whose first (bodyless) header has not arrived.
    Starting {
        sink: Sink,
        started: oneshot::Sender<Result<(), RpcError>>,
    },
    /// Every header is followed by a record.
    Streaming(Sink),
    /// Stopped or abandoned: records are read and discarded; a query is forgotten at `done`.
    Discarding { query: bool },
}

#[derive(Debug, Clone)]
enum Sink {
    Events(Queue<StreamRecord>),
    Logs(Queue<String>),
    Query(Queue<QueryRecord>),
}

#[derive(Debug, Clone)]
struct Queue<T> {
    sender: mpsc::Sender<T>,
    dropped: Arc<AtomicU64>,
}

#[derive(Debug)]
struct Reply {
    error: String,
    body: Option<Vec<u8>>,
}

impl Reply {
    fn ok(self) -> Result<(), RpcError> {
        if self.error.is_empty() {
            Ok(())
        } else {
            Err(RpcError::Remote(self.error))
        }
    }

    fn body<T: DeserializeOwned>(self, command: &'static str) -> Result<T, RpcError> {
        if !self.error.is_empty() {
            return Err(RpcError::Remote(self.error));
        }
        self.decode(command)
    }

    fn decode<T: DeserializeOwned>(&self, command: &'static str) -> Result<T, RpcError> {
        let body = self.body.as_deref().ok_or(RpcError::Reply {
            command,
            source: FrameError::Truncated { buffered: 0 },
        })?;
        protocol::decode(body).map_err(|source| RpcError::Reply { command, source })
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Client {
    /// Connects to `addr` without auth, with the default timeouts.
    pub async fn connect(addr: &str) -> Result<Self, RpcError> {
        Self::connect_with(Config::new(addr)).await
    }

    /// Connects, sends `handshake` and, if `config.auth_key` is non-empty, `auth`.
    pub async fn connect_with(config: Config) -> Result<Self, RpcError> {
        let stream = dial(&config.addr, config.timeout).await?;
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot disable nagle on the rpc connection");
        }
        let peer = stream
            .peer_addr()
            .map_or_else(|_| config.addr.clone(), |a| a.to_string());
        let (read, write) = stream.into_split();
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            writer: tokio::sync::Mutex::new(write),
            timeout: config.timeout,
            stream_capacity: config.stream_capacity.max(1),
        });
        let frames = FrameReader::with_max_frame_bytes(read, config.max_frame_bytes);
        let reader = tokio::spawn(read_loop(Arc::clone(&inner), frames));
        let client = Client { inner, reader };

        let handshake = HandshakeRequest {
            version: protocol::IPC_VERSION,
        };
        let timeout_error = || RpcError::DialTimeout { addr: peer.clone() };
        tokio::time::timeout(
            config.timeout,
            client.call(command::HANDSHAKE, Some(&handshake)),
        )
        .await
        .map_err(|_| timeout_error())??
        .ok()?;
        if let Some(auth_key) = config.auth_key.filter(|key| !key.is_empty()) {
            let auth = AuthRequest { auth_key };
            tokio::time::timeout(config.timeout, client.call(command::AUTH, Some(&auth)))
                .await
                .map_err(|_| timeout_error())??
                .ok()?;
        }
        tracing::debug!(addr = %peer, "rpc client connected");
        Ok(client)
    }

    /// Whether the connection has closed; every call then fails with [`RpcError::Closed`].
    pub fn is_closed(&self) -> bool {
        self.inner.lock().closed
    }

    /// Every known member, any status.
    pub async fn members(&self) -> Result<Vec<Member>, RpcError> {
        let reply = self.call::<()>(command::MEMBERS, None).await?;
        Ok(reply.body::<MembersResponse>(command::MEMBERS)?.members)
    }

    /// Members matching all filters: anchored regexes on tag values, status and name (empty
    /// status or name: no filter). A bad regex makes the agent close the connection
    /// ([`RpcError::Closed`]).
    pub async fn members_filtered(
        &self,
        tags: &BTreeMap<String, String>,
        status: &str,
        name: &str,
    ) -> Result<Vec<Member>, RpcError> {
        let request = MembersFilteredRequest {
            name: name.to_owned(),
            status: status.to_owned(),
            tags: tags.clone(),
        };
        let reply = self.call(command::MEMBERS_FILTERED, Some(&request)).await?;
        Ok(reply
            .body::<MembersResponse>(command::MEMBERS_FILTERED)?
            .members)
    }

    /// Fires a user event; `payload: None` is sent as nil (as the CLI does without a payload).
    pub async fn user_event(
        &self,
        name: &str,
        payload: Option<&[u8]>,
        coalesce: bool,
    ) -> Result<(), RpcError> {
        let request = EventRequest {
            coalesce,
            name: name.to_owned(),
            payload: payload.map(<[u8]>::to_vec),
        };
        self.call(command::EVENT, Some(&request)).await?.ok()
    }

    /// Forces `node` into the left state; `prune` also erases it from the member list.
    pub async fn force_leave(&self, node: &str, prune: bool) -> Result<(), RpcError> {
        let request = ForceLeaveRequest {
            node: node.to_owned(),
            prune,
        };
        self.call(command::FORCE_LEAVE, Some(&request)).await?.ok()
    }

    /// Joins the cluster through `addrs`; returns how many were contacted. On error the agent
    /// may still have contacted some (the count is lost, as in Serf's client).
    pub async fn join(&self, addrs: &[String], replay: bool) -> Result<i32, RpcError> {
        let request = JoinRequest {
            existing: addrs.to_vec(),
            replay,
        };
        let reply = self.call(command::JOIN, Some(&request)).await?;
        Ok(reply.body::<JoinResponse>(command::JOIN)?.num)
    }

    /// Makes the agent leave gracefully and shut down; the connection closes afterwards.
    pub async fn leave(&self) -> Result<(), RpcError> {
        self.call::<()>(command::LEAVE, None).await?.ok()
    }

    /// New tags = current − `delete` + `set`.
    pub async fn tags(
        &self,
        set: &BTreeMap<String, String>,
        delete: &[String],
    ) -> Result<(), RpcError> {
        let request = TagsRequest {
            delete_tags: delete.to_vec(),
            tags: set.clone(),
        };
        self.call(command::TAGS, Some(&request)).await?.ok()
    }

    /// Subscribes to events matching `filter` (handler syntax, `*` for all).
    pub async fn stream(&self, filter: &str) -> Result<Subscription<StreamRecord>, RpcError> {
        let request = StreamRequest {
            filter: filter.to_owned(),
        };
        self.subscribe(command::STREAM, &request, Sink::Events)
            .await
    }

    /// Subscribes to the agent's log at `log_level` or above; the agent first replays its
    /// recent lines.
    pub async fn monitor(&self, log_level: &str) -> Result<Subscription<String>, RpcError> {
        let request = MonitorRequest {
            log_level: log_level.to_owned(),
        };
        self.subscribe(command::MONITOR, &request, Sink::Logs).await
    }

    /// Starts a query; the subscription yields acks and responses, then one `done` record,
    /// then ends.
    pub async fn query(
        &self,
        request: QueryRequest,
    ) -> Result<Subscription<QueryRecord>, RpcError> {
        self.subscribe(command::QUERY, &request, Sink::Query).await
    }

    /// Ends the `stream` or `monitor` started with `seq` (a [`Subscription::seq`]); its
    /// subscription ends at once. Always succeeds on the agent's side.
    pub async fn stop(&self, seq: u64) -> Result<(), RpcError> {
        {
            let mut state = self.inner.lock();
            if let Some(entry) = state.pending.get_mut(&seq)
                && matches!(entry, Pending::Streaming(_))
            {
                let query = matches!(entry, Pending::Streaming(Sink::Query(_)));
                *entry = Pending::Discarding { query };
            }
        }
        let request = StopRequest { stop: seq };
        self.call(command::STOP, Some(&request)).await?.ok()
    }

    /// Answers the query with [`protocol::QueryEventRecord::id`] `id` seen on this connection's
    /// stream.
    pub async fn respond(&self, id: u64, payload: &[u8]) -> Result<(), RpcError> {
        let request = RespondRequest {
            id,
            payload: Some(payload.to_vec()),
        };
        self.call(command::RESPOND, Some(&request)).await?.ok()
    }

    /// Installs `key` (base64) on every member.
    pub async fn install_key(&self, key: &str) -> Result<KeyResponse, RpcError> {
        self.key_command(command::INSTALL_KEY, Some(key)).await
    }

    /// Makes `key` the primary key on every member.
    pub async fn use_key(&self, key: &str) -> Result<KeyResponse, RpcError> {
        self.key_command(command::USE_KEY, Some(key)).await
    }

    /// Removes `key` from every member.
    pub async fn remove_key(&self, key: &str) -> Result<KeyResponse, RpcError> {
        self.key_command(command::REMOVE_KEY, Some(key)).await
    }

    /// Lists the keys in use and how many members hold each.
    pub async fn list_keys(&self) -> Result<KeyResponse, RpcError> {
        self.key_command(command::LIST_KEYS, None).await
    }

    /// The agent's `stats` sections.
    pub async fn stats(&self) -> Result<Stats, RpcError> {
        let reply = self.call::<()>(command::STATS, None).await?;
        reply.body(command::STATS)
    }

    /// Asks the agent to read its configuration again and apply the plugin changes (our
    /// extension; Serf's agents answer "Unsupported command").
    pub async fn reload(&self) -> Result<ReloadResponse, RpcError> {
        let reply = self.call::<()>(command::RELOAD, None).await?;
        reply.body(command::RELOAD)
    }

    // Jobs (our extension; Serf's agents answer "Unsupported command").

    /// Every job record of the agent, by id.
    pub async fn jobs_list(&self) -> Result<Vec<protocol::Job>, RpcError> {
        let reply = self.call::<()>(command::JOBS_LIST, None).await?;
        Ok(reply
            .body::<protocol::JobsResponse>(command::JOBS_LIST)?
            .jobs)
    }

    // Plugins (our extension; Serf's agents answer "Unsupported command").

    /// Every configured plugin of the agent, by name.
    pub async fn plugin_list(&self) -> Result<Vec<protocol::Plugin>, RpcError> {
        let reply = self.call::<()>(command::PLUGIN_LIST, None).await?;
        Ok(reply
            .body::<protocol::PluginsResponse>(command::PLUGIN_LIST)?
            .plugins)
    }

    /// A plugin's durable state (ABI v1.2): the value of `key`, or with an empty key the keys
    /// under `prefix`.
    pub async fn plugin_state(
        &self,
        name: &str,
        key: &str,
        prefix: &str,
    ) -> Result<protocol::PluginStateResponse, RpcError> {
        let request = protocol::PluginStateRequest {
            name: name.to_owned(),
            key: key.to_owned(),
            prefix: prefix.to_owned(),
        };
        let reply = self.call(command::PLUGIN_STATE, Some(&request)).await?;
        reply.body::<protocol::PluginStateResponse>(command::PLUGIN_STATE)
    }

    /// One plugin, with its grants, limits and counters; an unknown name is an error.
    pub async fn plugin_status(&self, name: &str) -> Result<protocol::Plugin, RpcError> {
        let request = protocol::PluginRequest {
            name: name.to_owned(),
        };
        let reply = self.call(command::PLUGIN_STATUS, Some(&request)).await?;
        Ok(reply
            .body::<protocol::PluginResponse>(command::PLUGIN_STATUS)?
            .plugin)
    }

    /// One job's record.
    pub async fn job_show(&self, id: u64) -> Result<protocol::Job, RpcError> {
        self.job_command(command::JOB_SHOW, id).await
    }

    /// Kills a job that has not ended; returns its record once it has (or after a few
    /// seconds, if it has not yet).
    pub async fn job_kill(&self, id: u64) -> Result<protocol::Job, RpcError> {
        self.job_command(command::JOB_KILL, id).await
    }

    /// Deletes the record of job `id`, which must have ended, or with `None` of every job
    /// that has; returns the ids deleted.
    pub async fn job_reap(&self, id: Option<u64>) -> Result<Vec<u64>, RpcError> {
        let request = protocol::JobRequest {
            id: id.unwrap_or(0),
        };
        let reply = self.call(command::JOB_REAP, Some(&request)).await?;
        Ok(reply
            .body::<protocol::JobReapResponse>(command::JOB_REAP)?
            .reaped)
    }

    async fn job_command(&self, command: &'static str, id: u64) -> Result<protocol::Job, RpcError> {
        let request = protocol::JobRequest { id };
        let reply = self.call(command, Some(&request)).await?;
        Ok(reply.body::<protocol::JobResponse>(command)?.job)
    }

    /// The cached network coordinate of `node`, `None` if the agent has none.
    pub async fn get_coordinate(&self, node: &str) -> Result<Option<Coordinate>, RpcError> {
        let request = CoordinateRequest {
            node: node.to_owned(),
        };
        let reply = self.call(command::GET_COORDINATE, Some(&request)).await?;
        let response: CoordinateResponse = reply.body(command::GET_COORDINATE)?;
        Ok(response.ok.then_some(response.coord))
    }

    async fn key_command(
        &self,
        command: &'static str,
        key: Option<&str>,
    ) -> Result<KeyResponse, RpcError> {
        let request = key.map(|key| KeyRequest {
            key: key.to_owned(),
        });
        let reply = self.call(command, request.as_ref()).await?;
        if reply.error.is_empty() || reply.body.is_none() {
            return reply.body(command);
        }
        let response = reply.decode(command)?;
        Err(RpcError::Key {
            message: reply.error,
            response,
        })
    }

    /// Sends a request and waits for its reply (header plus body if the command has one).
    async fn call<B: Serialize>(
        &self,
        command: &'static str,
        body: Option<&B>,
    ) -> Result<Reply, RpcError> {
        let (reply, replied) = oneshot::channel();
        let seq = self.inner.register(Pending::Reply { command, reply })?;
        self.send(command, seq, body).await?;
        replied.await.unwrap_or(Err(RpcError::Closed))
    }

    async fn subscribe<B: Serialize, T>(
        &self,
        command: &'static str,
        body: &B,
        sink: fn(Queue<T>) -> Sink,
    ) -> Result<Subscription<T>, RpcError> {
        let (sender, records) = mpsc::channel(self.inner.stream_capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        let queue = Queue {
            sender,
            dropped: Arc::clone(&dropped),
        };
        let (started, starting) = oneshot::channel();
        let seq = self.inner.register(Pending::Starting {
            sink: sink(queue),
            started,
        })?;
        self.send(command, seq, Some(body)).await?;
        starting.await.unwrap_or(Err(RpcError::Closed))?;
        Ok(Subscription {
            seq,
            records,
            dropped,
        })
    }

    async fn send<B: Serialize>(
        &self,
        command: &'static str,
        seq: u64,
        body: Option<&B>,
    ) -> Result<(), RpcError> {
        let result = self.write(command, seq, body).await;
        if let Err(error) = &result {
            tracing::debug!(%error, command, seq, "rpc request not sent");
            if matches!(error, RpcError::Encode(_)) {
                self.inner.lock().pending.remove(&seq);
            } else {
                // A partial write leaves the agent's decoder out of sync: give up the connection.
                self.inner.close();
                self.reader.abort();
            }
        }
        result
    }

    async fn write<B: Serialize>(
        &self,
        command: &'static str,
        seq: u64,
        body: Option<&B>,
    ) -> Result<(), RpcError> {
        let frame = protocol::encode_frame(&RequestHeader::new(command, seq), body)?;
        let mut writer = self.inner.writer.lock().await;
        match tokio::time::timeout(self.inner.timeout, writer.write_all(&frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(RpcError::Write(error)),
            Err(_) => Err(RpcError::WriteTimeout(self.inner.timeout)),
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent under every panic point (single assignments only).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Allocates the next `Seq` and records what its replies are.
    fn register(&self, pending: Pending) -> Result<u64, RpcError> {
        let mut state = self.lock();
        if state.closed {
            return Err(RpcError::Closed);
        }
        state.last_seq += 1;
        let seq = state.last_seq;
        state.pending.insert(seq, pending);
        Ok(seq)
    }

    /// Marks the connection closed and fails everything still waiting.
    fn close(&self) {
        let pending = {
            let mut state = self.lock();
            state.closed = true;
            std::mem::take(&mut state.pending)
        };
        for (_, entry) in pending {
            match entry {
                Pending::Reply { reply, .. } => {
                    let _ = reply.send(Err(RpcError::Closed));
                }
                Pending::Starting { started, .. } => {
                    let _ = started.send(Err(RpcError::Closed));
                }
                Pending::Streaming(_) | Pending::Discarding { .. } => {}
            }
        }
    }

    /// Decides, under the lock, what the header means; the body is read afterwards.
    fn route(&self, header: &ResponseHeader) -> Route {
        let mut state = self.lock();
        let Some(entry) = state.pending.remove(&header.seq) else {
            return Route::Unknown;
        };
        match entry {
            Pending::Reply { command, reply } => Route::Reply {
                has_body: protocol::response_has_body(command, &header.error),
                reply,
            },
            Pending::Starting { sink, started } => {
                if header.error.is_empty() {
                    state.pending.insert(header.seq, Pending::Streaming(sink));
                }
                Route::Started { started }
            }
            Pending::Streaming(sink) => {
                state
                    .pending
                    .insert(header.seq, Pending::Streaming(sink.clone()));
                Route::Record(sink)
            }
            Pending::Discarding { query } => {
                state
                    .pending
                    .insert(header.seq, Pending::Discarding { query });
                Route::Discard { query }
            }
        }
    }

    /// Called after a record was read for `seq`: a query ends at `done`, a stream whose
    /// subscriber is gone is discarded from now on.
    fn after_record(&self, seq: u64, outcome: Delivered) {
        let mut state = self.lock();
        match outcome {
            Delivered::Yes => {}
            Delivered::QueryDone => {
                state.pending.remove(&seq);
            }
            Delivered::Abandoned { query } => {
                if let Some(entry) = state.pending.get_mut(&seq) {
                    *entry = Pending::Discarding { query };
                }
            }
        }
    }
}

enum Route {
    Reply {
        has_body: bool,
        reply: oneshot::Sender<Result<Reply, RpcError>>,
    },
    Started {
        started: oneshot::Sender<Result<(), RpcError>>,
    },
    /// A record follows.
    Record(Sink),
    /// A record follows, for a subscription nobody reads any more.
    Discard {
        query: bool,
    },
    Unknown,
}

enum Delivered {
    Yes,
    QueryDone,
    Abandoned { query: bool },
}

/// Reads headers (and bodies) until the connection ends, then fails whatever is still waiting.
async fn read_loop(inner: Arc<Inner>, mut frames: FrameReader<OwnedReadHalf>) {
    let outcome = read_replies(&inner, &mut frames).await;
    match &outcome {
        Ok(()) => tracing::debug!("rpc connection closed by the agent"),
        Err(error) => tracing::debug!(%error, "rpc connection failed"),
    }
    inner.close();
}

async fn read_replies(
    inner: &Inner,
    frames: &mut FrameReader<OwnedReadHalf>,
) -> Result<(), FrameError> {
    while let Some(header) = frames.read::<ResponseHeader>().await? {
        match inner.route(&header) {
            Route::Reply { has_body, reply } => {
                let body = if has_body {
                    Some(read_body(frames).await?)
                } else {
                    None
                };
                let _ = reply.send(Ok(Reply {
                    error: header.error,
                    body,
                }));
            }
            Route::Started { started } => {
                let result = if header.error.is_empty() {
                    Ok(())
                } else {
                    Err(RpcError::Remote(header.error))
                };
                let _ = started.send(result);
            }
            Route::Record(sink) => {
                let body = read_body(frames).await?;
                inner.after_record(header.seq, deliver(sink, &body));
            }
            Route::Discard { query } => {
                let body = read_body(frames).await?;
                if query
                    && protocol::decode::<QueryRecord>(&body)
                        .is_ok_and(|record| record.kind == QueryRecordType::Done)
                {
                    inner.after_record(header.seq, Delivered::QueryDone);
                }
            }
            Route::Unknown => {
                // Serf's client does the same: assume no body follows.
                tracing::warn!(seq = header.seq, "rpc reply for an unknown sequence number");
            }
        }
    }
    Ok(())
}

async fn read_body(frames: &mut FrameReader<OwnedReadHalf>) -> Result<Vec<u8>, FrameError> {
    frames
        .read_frame()
        .await?
        .ok_or(FrameError::Truncated { buffered: 0 })
}

fn deliver(sink: Sink, body: &[u8]) -> Delivered {
    match sink {
        Sink::Events(queue) => match protocol::decode::<StreamRecord>(body) {
            Ok(record) => push(&queue, record, false),
            Err(error) => {
                tracing::warn!(%error, "undecodable stream record skipped");
                Delivered::Yes
            }
        },
        Sink::Logs(queue) => match protocol::decode::<LogRecord>(body) {
            Ok(record) => push(&queue, record.log, false),
            Err(error) => {
                tracing::warn!(%error, "undecodable log record skipped");
                Delivered::Yes
            }
        },
        Sink::Query(queue) => match protocol::decode::<QueryRecord>(body) {
            Ok(record) => {
                let done = record.kind == QueryRecordType::Done;
                let outcome = push(&queue, record, true);
                if done { Delivered::QueryDone } else { outcome }
            }
            Err(error) => {
                tracing::warn!(%error, "undecodable query record skipped");
                Delivered::Yes
            }
        },
    }
}

fn push<T>(queue: &Queue<T>, record: T, query: bool) -> Delivered {
    match queue.sender.try_send(record) {
        Ok(()) => Delivered::Yes,
        Err(mpsc::error::TrySendError::Full(_)) => {
            let dropped = queue.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(dropped, "subscription queue full; record dropped");
            Delivered::Yes
        }
        Err(mpsc::error::TrySendError::Closed(_)) => Delivered::Abandoned { query },
    }
}

/// Connects like Go's `net.DialTimeout("tcp", addr, timeout)`, with Go's error texts.
async fn dial(addr: &str, timeout: Duration) -> Result<TcpStream, RpcError> {
    let deadline = Instant::now() + timeout;
    let (host, port) = split_host_port(addr)?;
    let port: u16 = port.parse().map_err(|_| RpcError::Address {
        addr: addr.to_owned(),
        reason: "invalid port",
    })?;
    let host = if host.is_empty() { "localhost" } else { host };
    let timed_out = || RpcError::DialTimeout {
        addr: addr.to_owned(),
    };
    let candidates: Vec<SocketAddr> =
        tokio::time::timeout_at(deadline, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| timed_out())?
            .map_err(|error| RpcError::Lookup {
                host: host.to_owned(),
                reason: crate::go_text::io_error(&error),
            })?
            .collect();
    let mut last_error = RpcError::Lookup {
        host: host.to_owned(),
        reason: "no such host".to_owned(),
    };
    for candidate in candidates {
        match tokio::time::timeout_at(deadline, TcpStream::connect(candidate)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(error)) => {
                last_error = RpcError::Dial {
                    addr: candidate.to_string(),
                    reason: format!("connect: {}", crate::go_text::io_error(&error)),
                };
            }
            Err(_) => {
                return Err(RpcError::DialTimeout {
                    addr: candidate.to_string(),
                });
            }
        }
    }
    Err(last_error)
}

/// Go's `net.SplitHostPort`, with its error texts.
fn split_host_port(addr: &str) -> Result<(&str, &str), RpcError> {
    let error = |reason| RpcError::Address {
        addr: addr.to_owned(),
        reason,
    };
    if let Some(rest) = addr.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or(error("missing ']' in address"))?;
        let port = after
            .strip_prefix(':')
            .ok_or(error("missing port in address"))?;
        return Ok((host, port));
    }
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or(error("missing port in address"))?;
    if host.contains(':') {
        return Err(error("too many colons in address"));
    }
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{QueryEventRecord, UserEventRecord, errors};
    use tokio::net::TcpListener;

    /// The agent side of one scripted connection.
    struct FakeAgent {
        frames: FrameReader<OwnedReadHalf>,
        writer: OwnedWriteHalf,
    }

    impl FakeAgent {
        async fn accept(listener: &TcpListener) -> Self {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, writer) = stream.into_split();
            let mut agent = Self {
                frames: FrameReader::new(read),
                writer,
            };
            let header = agent.request().await;
            assert_eq!(header.command, command::HANDSHAKE);
            let body: HandshakeRequest = agent.body().await;
            assert_eq!(body.version, 1);
            agent.reply(header.seq, "").await;
            agent
        }

        async fn request(&mut self) -> RequestHeader {
            self.frames.read().await.unwrap().unwrap()
        }

        async fn body<T: DeserializeOwned>(&mut self) -> T {
            self.frames.read().await.unwrap().unwrap()
        }

        async fn reply(&mut self, seq: u64, error: &str) {
            let frame = protocol::encode_header(&ResponseHeader::error(seq, error)).unwrap();
            self.writer.write_all(&frame).await.unwrap();
        }

        async fn reply_with<B: Serialize>(&mut self, seq: u64, error: &str, body: &B) {
            let frame =
                protocol::encode_frame(&ResponseHeader::error(seq, error), Some(body)).unwrap();
            self.writer.write_all(&frame).await.unwrap();
        }
    }

    async fn listener() -> (TcpListener, String) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        (listener, addr)
    }

    fn member(name: &str) -> Member {
        Member {
            addr: vec![127, 0, 0, 1],
            name: name.into(),
            port: 7946,
            status: "alive".into(),
            ..Member::default()
        }
    }

    #[tokio::test]
    async fn replies_are_matched_to_requests_while_stream_records_interleave() {
        let (listener, addr) = listener().await;
        let agent = tokio::spawn(async move {
            let mut agent = FakeAgent::accept(&listener).await;
            let stream = agent.request().await;
            assert_eq!(stream.command, command::STREAM);
            let filter: StreamRequest = agent.body().await;
            assert_eq!(filter.filter, "*");
            agent.reply(stream.seq, "").await;
            let members = agent.request().await;
            assert_eq!(members.command, command::MEMBERS);
            // A record for the stream arrives before the members reply.
            let record = UserEventRecord {
                event: "user".into(),
                name: "deploy".into(),
                ltime: 3,
                ..UserEventRecord::default()
            };
            agent.reply_with(stream.seq, "", &record).await;
            let body = MembersResponse {
                members: vec![member("a")],
            };
            agent.reply_with(members.seq, "", &body).await;
            let record = QueryEventRecord {
                event: "query".into(),
                id: 1,
                name: "ping".into(),
                ..QueryEventRecord::default()
            };
            agent.reply_with(stream.seq, "", &record).await;
            let respond = agent.request().await;
            assert_eq!(respond.command, command::RESPOND);
            let body: RespondRequest = agent.body().await;
            assert_eq!((body.id, body.payload.as_deref()), (1, Some(&b"pong"[..])));
            agent.reply(respond.seq, "").await;
            agent
        });

        let client = Client::connect(&addr).await.unwrap();
        let mut events = client.stream("*").await.unwrap();
        assert_eq!(events.seq(), 2);
        let members = client.members().await.unwrap();
        assert_eq!(members, vec![member("a")]);
        let Some(StreamRecord::User(user)) = events.recv().await else {
            panic!("expected a user event");
        };
        assert_eq!(user.name, "deploy");
        let Some(StreamRecord::Query(query)) = events.recv().await else {
            panic!("expected a query");
        };
        client.respond(query.id, b"pong").await.unwrap();
        let _agent = agent.await.unwrap();
    }

    #[tokio::test]
    async fn auth_required_reply_has_no_body_even_for_members() {
        let (listener, addr) = listener().await;
        let agent = tokio::spawn(async move {
            let mut agent = FakeAgent::accept(&listener).await;
            let members = agent.request().await;
            let _: MembersFilteredRequest = agent.body().await;
            agent.reply(members.seq, errors::AUTH_REQUIRED).await;
            let stats = agent.request().await;
            let mut body = Stats::new();
            body.entry("agent".into())
                .or_default()
                .insert("name".into(), "a".into());
            agent.reply_with(stats.seq, "", &body).await;
            agent
        });
        let client = Client::connect(&addr).await.unwrap();
        let error = client
            .members_filtered(&BTreeMap::new(), "", "")
            .await
            .unwrap_err();
        assert_eq!(error.to_string(), "Authentication required");
        let stats = client.stats().await.unwrap();
        assert_eq!(stats["agent"]["name"], "a");
        let _agent = agent.await.unwrap();
    }

    #[tokio::test]
    async fn query_yields_acks_responses_and_done_then_ends() {
        let (listener, addr) = listener().await;
        let agent = tokio::spawn(async move {
            let mut agent = FakeAgent::accept(&listener).await;
            let query = agent.request().await;
            let body: QueryRequest = agent.body().await;
            assert_eq!(body.name, "upcase");
            assert!(body.request_ack);
            agent.reply(query.seq, "").await;
            for record in [
                QueryRecord::ack("a"),
                QueryRecord::response("a", b"HI\n".to_vec()),
                QueryRecord::done(),
            ] {
                agent.reply_with(query.seq, "", &record).await;
            }
            agent
        });
        let client = Client::connect(&addr).await.unwrap();
        let mut records = client
            .query(QueryRequest {
                name: "upcase".into(),
                payload: Some(b"hi".to_vec()),
                request_ack: true,
                ..QueryRequest::default()
            })
            .await
            .unwrap();
        let mut kinds = Vec::new();
        while let Some(record) = records.recv().await {
            kinds.push(record.kind);
        }
        assert_eq!(
            kinds,
            [
                QueryRecordType::Ack,
                QueryRecordType::Response,
                QueryRecordType::Done
            ]
        );
        let _agent = agent.await.unwrap();
    }

    #[tokio::test]
    async fn stopped_monitor_records_are_consumed_not_misread() {
        let (listener, addr) = listener().await;
        let agent = tokio::spawn(async move {
            let mut agent = FakeAgent::accept(&listener).await;
            let monitor = agent.request().await;
            let level: MonitorRequest = agent.body().await;
            assert_eq!(level.log_level, "DEBUG");
            agent.reply(monitor.seq, "").await;
            let stop = agent.request().await;
            let body: StopRequest = agent.body().await;
            assert_eq!(body.stop, monitor.seq);
            // A log line already in flight when the stop arrived.
            let line = LogRecord {
                log: "[INFO] late".into(),
            };
            agent.reply_with(monitor.seq, "", &line).await;
            agent.reply(stop.seq, "").await;
            let members = agent.request().await;
            let body = MembersResponse::default();
            agent.reply_with(members.seq, "", &body).await;
            agent
        });
        let client = Client::connect(&addr).await.unwrap();
        let mut logs = client.monitor("DEBUG").await.unwrap();
        client.stop(logs.seq()).await.unwrap();
        assert_eq!(logs.recv().await, None);
        assert!(client.members().await.unwrap().is_empty());
        let _agent = agent.await.unwrap();
    }

    #[tokio::test]
    async fn agent_errors_and_closing_reach_the_caller() {
        let (listener, addr) = listener().await;
        let agent = tokio::spawn(async move {
            let mut agent = FakeAgent::accept(&listener).await;
            let monitor = agent.request().await;
            let _: MonitorRequest = agent.body().await;
            agent
                .reply(monitor.seq, &errors::unknown_log_level("FOO"))
                .await;
            let stream = agent.request().await;
            let _: StreamRequest = agent.body().await;
            agent.reply(stream.seq, "").await;
            let filtered = agent.request().await;
            assert_eq!(filtered.command, command::MEMBERS_FILTERED);
            // A bad regex: Serf closes the connection without replying.
        });
        let client = Client::connect(&addr).await.unwrap();
        let error = client.monitor("foo").await.unwrap_err();
        assert_eq!(error.to_string(), "Unknown log level: FOO");
        let mut events = client.stream("*").await.unwrap();
        let tags = BTreeMap::from([("role".to_owned(), "(".to_owned())]);
        let error = client.members_filtered(&tags, "", "").await.unwrap_err();
        assert!(matches!(error, RpcError::Closed), "{error:?}");
        assert_eq!(error.to_string(), "client closed");
        assert!(events.recv().await.is_none());
        assert!(client.is_closed());
        agent.await.unwrap();
    }

    #[tokio::test]
    async fn invalid_auth_token_fails_the_connect() {
        let (listener, addr) = listener().await;
        let agent = tokio::spawn(async move {
            let mut agent = FakeAgent::accept(&listener).await;
            let auth = agent.request().await;
            let body: AuthRequest = agent.body().await;
            assert_eq!(body.auth_key, "wrong");
            agent.reply(auth.seq, errors::INVALID_AUTH_TOKEN).await;
            agent
        });
        let mut config = Config::new(addr);
        config.auth_key = Some("wrong".into());
        let error = Client::connect_with(config).await.unwrap_err();
        assert_eq!(error.to_string(), "Invalid authentication token");
        let _agent = agent.await.unwrap();
    }

    #[tokio::test]
    async fn dial_errors_read_like_go() {
        let (listener, addr) = listener().await;
        drop(listener);
        let error = Client::connect(&addr).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("dial tcp {addr}: connect: connection refused")
        );
        let error = Client::connect("127.0.0.1").await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "dial tcp: address 127.0.0.1: missing port in address"
        );
        let error = Client::connect("::1:7373").await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "dial tcp: address ::1:7373: too many colons in address"
        );
    }

    #[test]
    fn split_host_port_handles_brackets() {
        assert_eq!(split_host_port("[::1]:7373").unwrap(), ("::1", "7373"));
        assert_eq!(split_host_port("a:1").unwrap(), ("a", "1"));
        assert!(split_host_port("[::1]").is_err());
    }
}
