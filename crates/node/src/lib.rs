//! Serf as a library: a node of a Serf cluster inside any tokio program, as Go programs embed
//! Serf through its `serf` package.
//!
//! [`Node::start`] binds the gossip sockets and starts one task that owns the sans-io
//! [`serf_core::Serf`] state machine. Everything else talks to that task through a
//! [`NodeHandle`]: a bounded command channel with one-shot replies. Between awaits the task
//! does bounded CPU work only: it feeds the core packets, stream messages, commands and
//! timeouts, and drains its outputs: packets go out with `try_send_to`, TCP streams run on
//! tasks of their own (`transport`), events go to subscribers with `try_send`, a full
//! subscriber losing the event and the loss being counted ([`NodeStats::stream_drops`]); it
//! never waits on the network or a consumer. DNS for joins happens on the caller's task.
//!
//! The verbs are Go's: [`NodeHandle::join`], [`NodeHandle::members`],
//! [`NodeHandle::user_event`], [`NodeHandle::query`], [`NodeHandle::set_tags`],
//! [`NodeHandle::leave`], [`NodeHandle::force_leave`] (Go's `RemoveFailedNode`),
//! [`Node::shutdown`]; events arrive in order on [`NodeHandle::subscribe`]'s bounded stream,
//! coalesced as [`serf_core::Config::coalesce`] says (Go's `CoalescePeriod` and
//! `QuiescentPeriod`). Reconnect and tombstone timeouts are [`serf_core::Config`]'s.
//!
//! The `serf` agent is this crate plus plugins, shell handlers, RPC and a config file: it
//! sees every event through an [`EventSink`] and runs its own work on the task through
//! [`NodeHandle::try_run`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod accept;
mod join;
pub mod snapshot;
mod transport;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use serf_core::filter::EventFilter;
use serf_core::{
    Event, LamportTime, Member, QueryError, QueryKey, QueryOutput, QueryParams, RespondError, Serf,
    Tags, TagsError, UserEventError,
};
use serf_gossip::{JoinId, JoinOutcome};

pub use join::retry_join;
pub use serf_core;
pub use transport::{
    FIRST_BYTE_TIMEOUT, MAX_INBOUND_STREAMS, MAX_OUTBOUND_STREAMS, PENDING_PER_SOURCE,
    PENDING_TOTAL, TransportStats,
};

/// Commands waiting for the node's task before senders must wait (RPC) or fail (plugins).
const COMMAND_QUEUE: usize = 1024;
/// Commands the node's task takes in one go before it hands out what they produced.
const COMMAND_BATCH: usize = 64;
/// How long the task sleeps when no timer is due.
const IDLE_WAKEUP: Duration = Duration::from_secs(1);
/// Answers buffered per query before further ones are dropped.
const QUERY_OUTPUT_QUEUE: usize = 1024;
/// How long a graceful leave may take before the node gives up waiting: Serf's broadcast
/// timeout (5 s) plus its leave propagation delay (1 s). The core normally finishes sooner.
pub const LEAVE_BOUND: Duration = Duration::from_secs(12);

/// Why the node did not do what a handle asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// The node's task has stopped.
    #[error("agent is shutting down")]
    Closed,
    /// The core refused a user event.
    #[error(transparent)]
    UserEvent(#[from] UserEventError),
    /// The core refused a query.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// The core refused a response.
    #[error(transparent)]
    Respond(#[from] RespondError),
    /// The graceful leave did not finish within [`LEAVE_BOUND`]; the node may still stop.
    #[error("timeout while waiting for graceful leave")]
    LeaveTimeout,
    /// The tags do not fit in node meta; nothing changed.
    #[error(transparent)]
    Tags(#[from] TagsError),
    /// The tags file could not be written; the tags were not changed.
    #[error("Failed to write tags file: {0}")]
    TagsFile(String),
}

/// Counters and clocks (what `serf info` shows).
#[derive(Debug, Clone)]
pub struct NodeStats {
    /// The core's counters.
    pub serf: serf_core::Stats,
    /// This node.
    pub local: Member,
    /// Events dropped because an event stream (RPC `stream`) was full.
    pub stream_drops: u64,
    /// Query answers dropped because the querier's stream was full.
    pub query_output_drops: u64,
    /// Event streams open.
    pub num_streams: usize,
    /// The membership layer's counters.
    pub gossip: serf_gossip::Stats,
    /// Socket and stream counters.
    pub transport: TransportStats,
    /// Whether gossip is encrypted.
    pub encrypted: bool,
    /// Joins waiting for their outcome.
    pub pending_joins: usize,
    /// The snapshot file's counters, when there is one.
    pub snapshot: Option<snapshot::SnapshotStats>,
}

/// An event stream: events matching `filter`, until the receiver is dropped.
pub struct Subscription {
    /// The events; `Arc` because every stream shares one copy.
    pub events: mpsc::Receiver<Arc<Event>>,
}

/// The answers to a query this node sent, ending with [`QueryOutput::Done`].
pub struct QueryStream {
    /// Which query.
    pub key: QueryKey,
    /// Acks, responses, then `Done`.
    pub outputs: mpsc::Receiver<QueryOutput>,
}

/// What the node's task can be asked.
enum Command {
    UserEvent {
        name: String,
        payload: Vec<u8>,
        coalesce: bool,
        reply: oneshot::Sender<Result<LamportTime, UserEventError>>,
    },
    Query {
        params: QueryParams,
        reply: oneshot::Sender<Result<QueryStream, QueryError>>,
    },
    Respond {
        key: QueryKey,
        payload: Vec<u8>,
        reply: oneshot::Sender<Result<(), RespondError>>,
    },
    Members {
        reply: oneshot::Sender<Vec<Member>>,
    },
    Coordinate {
        node: String,
        reply: oneshot::Sender<Option<serf_core::wire::Coordinate>>,
    },
    Stats {
        reply: oneshot::Sender<NodeStats>,
    },
    SetTags {
        tags: Tags,
        reply: oneshot::Sender<Result<(), TagsError>>,
    },
    /// Sets the tags unless they are this node's already; replies whether it did.
    ApplyTags {
        tags: Tags,
        reply: oneshot::Sender<Result<bool, TagsError>>,
    },
    ForceLeave {
        node: String,
        prune: bool,
        reply: oneshot::Sender<()>,
    },
    Leave {
        reply: oneshot::Sender<Result<(), NodeError>>,
    },
    Join {
        addrs: Vec<SocketAddr>,
        replay: bool,
        reply: oneshot::Sender<JoinOutcome>,
    },
    /// A node from the snapshot file (memberlist's join alone).
    Rejoin {
        addrs: Vec<SocketAddr>,
        reply: oneshot::Sender<JoinOutcome>,
    },
    Subscribe {
        filter: EventFilter,
        capacity: usize,
        reply: oneshot::Sender<Subscription>,
    },
    /// A key query (`serf keys`): its answers and how many members should answer.
    KeyQuery {
        command: serf_core::keys::KeyCommand,
        key: Vec<u8>,
        reply: oneshot::Sender<Result<(QueryStream, usize), QueryError>>,
    },
    /// The keyring file for a key query was written (or not, with Serf's message).
    KeyringWritten {
        query: QueryKey,
        result: Result<(), String>,
    },
    /// Code of the embedding program's, run on the task with the core at hand.
    Run(Box<dyn FnOnce(&mut Context<'_>) + Send>),
}

/// Where and how a node runs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The core's settings: name, advertised address, tags, timings, keyring, coalescing,
    /// reconnect and tombstone timeouts. An advertised port of 0 becomes the bound port.
    pub serf: serf_core::Config,
    /// The address the gossip UDP and TCP sockets bind to (port 0: any free port).
    pub bind: SocketAddr,
    /// Serf's snapshot file: members and clocks survive a restart, and the node rejoins the
    /// members it knew at start.
    pub snapshot_path: Option<PathBuf>,
    /// With a snapshot, rejoin at start even after a graceful leave (Serf's `-rejoin`).
    pub rejoin_after_leave: bool,
    /// Where key rotations (`serf keys`) are persisted, as Serf's `-keyring-file`.
    pub keyring_file: Option<PathBuf>,
    /// Where tags are persisted, as Serf's `-tags-file`; [`NodeHandle::set_tags`] writes it first.
    pub tags_file: Option<PathBuf>,
}

impl NodeConfig {
    /// A LAN node named `name` bound to `bind` and advertising it, with `tags`, Serf's LAN
    /// timings and no coalescing, snapshot, keyring or files.
    pub fn lan(name: impl Into<String>, bind: SocketAddr, tags: Tags) -> NodeConfig {
        NodeConfig {
            serf: serf_core::Config::lan(name.into(), bind, tags),
            bind,
            snapshot_path: None,
            rejoin_after_leave: false,
            keyring_file: None,
            tags_file: None,
        }
    }

    /// [`NodeConfig::lan`] with memberlist's "local" timings (loopback, tests): failures are
    /// detected in about a second instead of several.
    pub fn local(name: impl Into<String>, bind: SocketAddr, tags: Tags) -> NodeConfig {
        let mut config = NodeConfig::lan(name, bind, tags);
        let memberlist = serf_gossip::Config::local(config.serf.node_name.clone(), bind);
        config.serf.gossip_interval = memberlist.gossip_interval;
        config.serf.memberlist = memberlist;
        config
    }
}

/// What an embedding program adds on the node's task. Both methods run on the task, between
/// two awaits: they must be quick and must never wait (hand work to a queue of your own with
/// `try_send`).
pub trait EventSink: Send + 'static {
    /// Every event, in order, before any subscription sees it; `local` is this node.
    fn event(&mut self, event: &Event, local: &Member);

    /// Once per turn of the task's loop, with the core to read (to refresh a cache of the
    /// member list, say).
    fn turn(&mut self, now: std::time::Instant, core: &Serf) {
        let _ = (now, core);
    }
}

/// Why [`NodeHandle::try_run`] did not queue its work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TryRunError {
    /// The task's command queue is full: the node is overloaded.
    #[error("the node's command queue is full")]
    Full,
    /// The node has stopped.
    #[error("agent is shutting down")]
    Closed,
}

/// What work passed to [`NodeHandle::try_run`] gets: the core and the task's bookkeeping.
pub struct Context<'a> {
    shell: &'a mut Shell,
    now: std::time::Instant,
}

impl Context<'_> {
    /// The time the work started.
    pub fn now(&self) -> std::time::Instant {
        self.now
    }

    /// The core.
    pub fn serf(&mut self) -> &mut Serf {
        &mut self.shell.core
    }

    /// Sends a query as [`NodeHandle::query`] does; its answers arrive on the stream.
    pub fn query(&mut self, params: QueryParams) -> Result<QueryStream, QueryError> {
        let key = self.shell.core.query(self.now, params)?;
        Ok(self.shell.track_query(key))
    }
}

/// What the rest of the program holds to talk to the node. Cheap to clone.
#[derive(Clone)]
pub struct NodeHandle {
    commands: mpsc::Sender<Command>,
    shutdown_requested: CancellationToken,
    gossip_addr: SocketAddr,
    serf_config: Arc<serf_core::Config>,
    tags_file: Option<PathBuf>,
}

/// Commands queued for a node task that does not run: what a [`NodeHandle::without_task`]
/// handle sent, for tests of code that uses a handle.
#[cfg(feature = "testing")]
pub struct TaskQueue(mpsc::Receiver<Command>);

#[cfg(feature = "testing")]
impl TaskQueue {
    /// How many commands wait.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(feature = "testing")]
impl NodeHandle {
    /// A handle whose commands only queue (at most `capacity`), with no task behind it.
    pub fn without_task(capacity: usize, serf: serf_core::Config) -> (NodeHandle, TaskQueue) {
        let (commands, receiver) = mpsc::channel(capacity);
        let handle = NodeHandle {
            commands,
            shutdown_requested: CancellationToken::new(),
            gossip_addr: serf.advertise,
            serf_config: Arc::new(serf),
            tags_file: None,
        };
        (handle, TaskQueue(receiver))
    }
}

/// A running node; [`Node::shutdown`] stops it.
pub struct Node {
    handle: NodeHandle,
    task: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
}

impl Node {
    /// Binds the gossip sockets and starts the node's task on the current runtime. Nothing
    /// is joined yet: call [`NodeHandle::join`].
    pub async fn start(config: NodeConfig) -> Result<Node, StartError> {
        Node::start_with(config, None).await
    }

    /// [`Node::start`] with an [`EventSink`] that sees every event first.
    pub async fn start_with(
        config: NodeConfig,
        sink: Option<Box<dyn EventSink>>,
    ) -> Result<Node, StartError> {
        let NodeConfig {
            serf: mut core_config,
            bind,
            snapshot_path,
            rejoin_after_leave,
            keyring_file,
            tags_file,
        } = config;
        // As Serf, before anything starts: tags that do not fit in node meta would reach every
        // peer as no tags at all.
        serf_core::check_tags(&core_config, &core_config.tags).map_err(StartError::Tags)?;
        let (commands, receiver) = mpsc::channel(COMMAND_QUEUE);
        let transport = transport::Transport::bind(bind, core_config.memberlist.tcp_timeout)
            .await
            .map_err(StartError::Bind)?;
        let gossip_addr = transport.local_addr;
        // Port 0 (tests) means whatever port the sockets got.
        if core_config.advertise.port() == 0 {
            core_config.advertise.set_port(gossip_addr.port());
            core_config
                .memberlist
                .advertise
                .set_port(gossip_addr.port());
        }
        let advertise = core_config.advertise;
        let (snapshot, previous) = match &snapshot_path {
            Some(path) => {
                let (snapshot, state) = snapshot::Snapshotter::open(path, rejoin_after_leave)
                    .map_err(StartError::Snapshot)?;
                core_config.restored_clocks = Some(state.clocks());
                core_config.raw_member_events = true;
                (Some(snapshot), state.previous_nodes(&core_config.node_name))
            }
            None => (None, Vec::new()),
        };
        let encrypted = core_config.memberlist.keyring.is_some();
        let node_name = core_config.node_name.clone();
        let serf_config = Arc::new(core_config.clone());
        let core = Serf::new(core_config, rand::random(), Instant::now().into_std());
        tracing::info!(addr = %gossip_addr, %advertise, "gossip listening");
        let stop = CancellationToken::new();
        let shutdown_requested = CancellationToken::new();
        let keyring_writer = keyring_file.map(|path| spawn_keyring_writer(path, commands.clone()));
        let shell = Shell {
            core,
            transport,
            sink,
            streams: Vec::new(),
            queries: HashMap::new(),
            joins: HashMap::new(),
            leave_waiters: Vec::new(),
            leave_deadline: None,
            stream_drops: 0,
            query_output_drops: 0,
            encrypted,
            snapshot,
            keyring_writer,
            shutdown_requested: shutdown_requested.clone(),
        };
        let span = tracing::info_span!("agent", node = %node_name);
        let task = tokio::spawn(tracing::Instrument::instrument(
            shell.run(receiver, stop.clone()),
            span,
        ));
        let handle = NodeHandle {
            commands,
            shutdown_requested,
            gossip_addr,
            serf_config,
            tags_file,
        };
        if !previous.is_empty() {
            tokio::spawn(snapshot::rejoin(handle.clone(), previous));
        }
        Ok(Node { handle, task, stop })
    }

    /// A handle to talk to the node.
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// Stops the node's task (without leaving: call [`NodeHandle::leave`] first for a
    /// graceful exit) and waits for it, the snapshot file included.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        let _ = (&mut self.task).await;
    }
}

/// Why a node did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The tags do not fit in node meta (Serf's message, in full: no source follows).
    #[error("Error creating Serf: {0}")]
    Tags(TagsError),
    /// The gossip sockets could not be bound.
    #[error(transparent)]
    Bind(anyhow::Error),
    /// The snapshot file could not be opened or read.
    #[error(transparent)]
    Snapshot(snapshot::SnapshotError),
}

/// A user event handed to the node's task, whose outcome is still to come.
pub struct PendingUserEvent {
    answer: oneshot::Receiver<Result<LamportTime, UserEventError>>,
}

impl PendingUserEvent {
    /// The event's Lamport time once the node has taken it, or why it was refused.
    pub async fn outcome(self) -> Result<LamportTime, NodeError> {
        Ok(self.answer.await.map_err(|_| NodeError::Closed)??)
    }
}

impl NodeHandle {
    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NodeError> {
        let answer = self.send(command).await?;
        answer.await.map_err(|_| NodeError::Closed)
    }

    /// Queues a command for the node's task; its answer is to come on the receiver.
    async fn send<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<oneshot::Receiver<T>, NodeError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| NodeError::Closed)?;
        Ok(answer)
    }

    /// Sets the tags unless they are this node's already; says whether it did (a reload that
    /// keeps the tags sends no update).
    pub async fn apply_tags(&self, tags: Tags) -> Result<bool, NodeError> {
        Ok(self
            .ask(|reply| Command::ApplyTags { tags, reply })
            .await??)
    }

    /// Runs `work` on the node's task, with the core at hand, without waiting: for callers
    /// that must not block (a plugin's host call). Fails at once when the task's queue is full
    /// or the node has stopped. `work` must itself be quick and never wait.
    pub fn try_run(
        &self,
        work: impl FnOnce(&mut Context<'_>) + Send + 'static,
    ) -> Result<(), TryRunError> {
        self.commands
            .try_send(Command::Run(Box::new(work)))
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => TryRunError::Full,
                mpsc::error::TrySendError::Closed(_) => TryRunError::Closed,
            })
    }

    /// Fires a user event; returns its Lamport time.
    pub async fn user_event(
        &self,
        name: String,
        payload: Vec<u8>,
        coalesce: bool,
    ) -> Result<LamportTime, NodeError> {
        self.send_user_event(name, payload, coalesce)
            .await?
            .outcome()
            .await
    }

    /// Queues a user event for the node's task without waiting for the outcome, so that a
    /// caller with many events (an RPC connection with pipelined requests) can hand them all
    /// over before waiting for the first. Outcomes come in the order the events were sent.
    pub async fn send_user_event(
        &self,
        name: String,
        payload: Vec<u8>,
        coalesce: bool,
    ) -> Result<PendingUserEvent, NodeError> {
        let answer = self
            .send(|reply| Command::UserEvent {
                name,
                payload,
                coalesce,
                reply,
            })
            .await?;
        Ok(PendingUserEvent { answer })
    }

    /// Sends a query; its answers arrive on the returned stream.
    pub async fn query(&self, params: QueryParams) -> Result<QueryStream, NodeError> {
        Ok(self.ask(|reply| Command::Query { params, reply }).await??)
    }

    /// Answers a query this node received.
    pub async fn respond(&self, key: QueryKey, payload: Vec<u8>) -> Result<(), NodeError> {
        let result = self
            .ask(|reply| Command::Respond {
                key,
                payload,
                reply,
            })
            .await?;
        Ok(result?)
    }

    /// Every known member.
    pub async fn members(&self) -> Result<Vec<Member>, NodeError> {
        self.ask(|reply| Command::Members { reply }).await
    }

    /// The network coordinate of `node` (ours included), `None` if none is known.
    pub async fn coordinate(
        &self,
        node: String,
    ) -> Result<Option<serf_core::wire::Coordinate>, NodeError> {
        self.ask(|reply| Command::Coordinate { node, reply }).await
    }

    /// Counters and clocks.
    pub async fn stats(&self) -> Result<NodeStats, NodeError> {
        self.ask(|reply| Command::Stats { reply }).await
    }

    /// Replaces this node's tags (writing the tags file first, if there is one). Tags too
    /// large for node meta are refused before the file is written.
    pub async fn set_tags(&self, tags: Tags) -> Result<(), NodeError> {
        serf_core::check_tags(&self.serf_config, &tags)?;
        if let Some(path) = &self.tags_file {
            snapshot::write_tags_file(path, &tags).await?;
        }
        Ok(self.ask(|reply| Command::SetTags { tags, reply }).await??)
    }

    /// Removes a failed member (`prune`: at once), as `serf force-leave` asks.
    pub async fn force_leave(&self, node: String, prune: bool) -> Result<(), NodeError> {
        self.ask(|reply| Command::ForceLeave { node, prune, reply })
            .await
    }

    /// Leaves the cluster gracefully: completes once the leave has been gossiped (or after
    /// [`LEAVE_BOUND`]). The node keeps running until shut down.
    pub async fn leave(&self) -> Result<(), NodeError> {
        self.ask(|reply| Command::Leave { reply }).await?
    }

    /// Joins the cluster through `addrs` (`[name/]host[:port]`, `[v6]:port`; the port defaults
    /// to this node's gossip port). Without `replay`, user events older than the join are not
    /// handed to plugins. Returns how many nodes were contacted, or, if none was, Serf's
    /// message listing every failure (`1 error occurred:\n\t* Failed to join ...`).
    pub async fn join(&self, addrs: Vec<String>, replay: bool) -> Result<usize, String> {
        let seeds = join::ResolvedSeeds::resolve(&addrs, self.gossip_addr.port()).await;
        let targets = seeds.addrs();
        if targets.is_empty() {
            return seeds.result(None);
        }
        tracing::info!(addrs = ?targets, replay, "joining");
        let outcome = self
            .ask(|reply| Command::Join {
                addrs: targets,
                replay,
                reply,
            })
            .await
            .map_err(|error| error.to_string())?;
        seeds.result(Some(&outcome))
    }

    /// The address the gossip sockets are bound to.
    pub fn gossip_addr(&self) -> SocketAddr {
        self.gossip_addr
    }

    /// Opens an event stream holding at most `capacity` undelivered events.
    pub async fn subscribe(
        &self,
        filter: EventFilter,
        capacity: usize,
    ) -> Result<Subscription, NodeError> {
        self.ask(|reply| Command::Subscribe {
            filter,
            capacity,
            reply,
        })
        .await
    }

    /// Asks every member to run a key command (`key` is raw bytes, ignored for `list`);
    /// returns the answers and how many members should answer.
    pub async fn key_query(
        &self,
        command: serf_core::keys::KeyCommand,
        key: Vec<u8>,
    ) -> Result<(QueryStream, usize), NodeError> {
        tracing::info!("{}", command.initiating());
        let (stream, num_nodes) = self
            .ask(|reply| Command::KeyQuery {
                command,
                key,
                reply,
            })
            .await??;
        Ok((stream, num_nodes))
    }

    /// Asks whoever runs the node to stop it (after the RPC `leave`, or when the core shut itself
    /// down after losing a name-conflict vote).
    pub fn request_shutdown(&self) {
        self.shutdown_requested.cancel();
    }

    /// Completes once [`NodeHandle::request_shutdown`] was called.
    pub async fn shutdown_requested(&self) {
        self.shutdown_requested.cancelled().await;
    }
}

/// An open event stream.
struct Stream {
    filter: EventFilter,
    sender: mpsc::Sender<Arc<Event>>,
}

/// The node task's state.
struct Shell {
    core: Serf,
    transport: transport::Transport,
    /// The embedding program's view of every event, in order.
    sink: Option<Box<dyn EventSink>>,
    streams: Vec<Stream>,
    queries: HashMap<QueryKey, mpsc::Sender<QueryOutput>>,
    /// Joins waiting for their outcome.
    joins: HashMap<JoinId, oneshot::Sender<JoinOutcome>>,
    /// Callers of `leave` waiting for it to finish.
    leave_waiters: Vec<oneshot::Sender<Result<(), NodeError>>>,
    /// When waiting for the leave stops.
    leave_deadline: Option<Instant>,
    stream_drops: u64,
    query_output_drops: u64,
    encrypted: bool,
    /// The snapshot file's writer, with `-snapshot`.
    snapshot: Option<snapshot::Snapshotter>,
    /// Writes the keyring file after key queries, with `-keyring-file`.
    keyring_writer: Option<mpsc::Sender<serf_core::keys::KeyringWrite>>,
    /// Cancelled when the core shuts itself down (a lost name-conflict vote).
    shutdown_requested: CancellationToken,
}

impl Shell {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>, stop: CancellationToken) {
        tracing::info!("agent started");
        let mut packet = vec![0u8; transport::UDP_RECEIVE_BYTES];
        loop {
            self.drain_outputs();
            if let Some(sink) = &mut self.sink {
                sink.turn(Instant::now().into_std(), &self.core);
            }
            if self.core.is_shutdown() {
                tracing::warn!("Serf shutdown detected, quitting");
                self.shutdown_requested.cancel();
                break;
            }
            self.check_leave();
            let mut deadline = self
                .core
                .poll_timeout()
                .map(Instant::from_std)
                .unwrap_or_else(|| Instant::now() + IDLE_WAKEUP);
            if let Some(leave_deadline) = self.leave_deadline {
                deadline = deadline.min(leave_deadline);
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep_until(deadline) => {
                    self.core.handle_timeout(Instant::now().into_std());
                }
                command = commands.recv() => match command {
                    Some(command) => {
                        self.handle_command(command);
                        // Whatever else is queued already is taken now, so that the work
                        // between commands (outputs, timers) is done once per batch.
                        for _ in 1..COMMAND_BATCH {
                            match commands.try_recv() {
                                Ok(command) => self.handle_command(command),
                                Err(_) => break,
                            }
                        }
                    }
                    None => break,
                },
                received = self.transport.udp.recv_from(&mut packet) => match received {
                    Ok((len, from)) => {
                        let now = Instant::now().into_std();
                        if let Err(error) = self.core.handle_packet(now, from, &packet[..len]) {
                            tracing::debug!(%from, %error, "dropped gossip packet");
                        }
                    }
                    Err(error) => self.transport.receive_failed(&error),
                },
                Some(inbound) = self.transport.inbound.recv() => {
                    let now = Instant::now().into_std();
                    let reply = self.core.handle_stream(now, inbound.from, &inbound.message);
                    // The connection may have timed out meanwhile; then nobody reads this.
                    let _ = inbound.reply.send(reply);
                }
                Some(reply) = self.transport.replies.recv() => {
                    let now = Instant::now().into_std();
                    self.core.handle_stream_reply(now, reply.id, reply.result);
                }
            }
        }
        self.feed_snapshot();
        if let Some(snapshot) = self.snapshot.take() {
            snapshot.close().await;
        }
        tracing::info!("agent stopped");
    }

    /// Answers the callers of `leave` once the core has left or the bound has passed.
    fn check_leave(&mut self) {
        let Some(deadline) = self.leave_deadline else {
            return;
        };
        let result = if self.core.has_left() {
            tracing::info!("graceful leave complete");
            Ok(())
        } else if Instant::now() >= deadline {
            tracing::warn!(bound = ?LEAVE_BOUND, "graceful leave did not finish in time");
            Err(NodeError::LeaveTimeout)
        } else {
            return;
        };
        self.leave_deadline = None;
        for waiter in self.leave_waiters.drain(..) {
            let _ = waiter.send(result.clone());
        }
    }

    fn handle_command(&mut self, command: Command) {
        let now = Instant::now().into_std();
        match command {
            Command::UserEvent {
                name,
                payload,
                coalesce,
                reply,
            } => {
                let _ = reply.send(self.core.user_event(now, &name, &payload, coalesce));
            }
            Command::Query { params, reply } => {
                let result = self
                    .core
                    .query(now, params)
                    .map(|key| self.track_query(key));
                let _ = reply.send(result);
            }
            Command::Respond {
                key,
                payload,
                reply,
            } => {
                let _ = reply.send(self.core.respond(now, key, &payload));
            }
            Command::Members { reply } => {
                let _ = reply.send(self.core.members().cloned().collect());
            }
            Command::Coordinate { node, reply } => {
                let _ = reply.send(self.core.coordinate(&node));
            }
            Command::Stats { reply } => {
                self.streams.retain(|stream| !stream.sender.is_closed());
                let _ = reply.send(NodeStats {
                    serf: self.core.stats(),
                    local: self.core.local_member().clone(),
                    stream_drops: self.stream_drops,
                    query_output_drops: self.query_output_drops,
                    num_streams: self.streams.len(),
                    gossip: self.core.gossip_stats(),
                    transport: self.transport.counters.snapshot(),
                    encrypted: self.encrypted,
                    pending_joins: self.joins.len(),
                    snapshot: self.snapshot.as_ref().map(snapshot::Snapshotter::stats),
                });
            }
            Command::SetTags { tags, reply } => {
                let _ = reply.send(self.core.set_tags(now, tags));
            }
            Command::ApplyTags { tags, reply } => {
                let changed = self.core.local_member().tags != tags;
                let result = if changed {
                    self.core.set_tags(now, tags).map(|()| true)
                } else {
                    Ok(false)
                };
                let _ = reply.send(result);
            }
            Command::ForceLeave { node, prune, reply } => {
                tracing::info!(%node, prune, "force leave requested");
                self.core.force_leave(now, &node, prune);
                let _ = reply.send(());
            }
            Command::Leave { reply } => {
                tracing::info!("requesting graceful leave");
                if let Some(snapshot) = &self.snapshot {
                    snapshot.leave();
                }
                self.core.leave(now);
                self.leave_waiters.push(reply);
                if self.leave_deadline.is_none() {
                    self.leave_deadline = Some(Instant::now() + LEAVE_BOUND);
                }
            }
            Command::Join {
                addrs,
                replay,
                reply,
            } => {
                let id = self.core.join(now, addrs, replay);
                self.joins.insert(id, reply);
            }
            Command::Rejoin { addrs, reply } => {
                let id = self.core.rejoin(now, addrs);
                self.joins.insert(id, reply);
            }
            Command::Subscribe {
                filter,
                capacity,
                reply,
            } => {
                let (sender, events) = mpsc::channel(capacity.max(1));
                self.streams.push(Stream { filter, sender });
                let _ = reply.send(Subscription { events });
            }
            Command::KeyQuery {
                command,
                key,
                reply,
            } => {
                let _ = reply.send(self.start_key_query(now, command, &key));
            }
            Command::KeyringWritten { query, result } => {
                self.core.keyring_written(now, query, result);
            }
            Command::Run(work) => work(&mut Context { shell: self, now }),
        }
    }

    /// Drains every output of the core without waiting: packets, streams, join outcomes,
    /// events and query answers. A refused stream is reported back at once, which may queue
    /// more output, so this repeats until the core has nothing left.
    fn drain_outputs(&mut self) {
        loop {
            let mut refused = Vec::new();
            while let Some(transmit) = self.core.poll_transmit() {
                self.transport.send(transmit.to, &transmit.payload);
            }
            while let Some(request) = self.core.poll_stream() {
                let id = request.id;
                if let Err(reason) = self.transport.start_stream(request) {
                    refused.push((id, reason));
                }
            }
            while let Some(outcome) = self.core.poll_join_outcome() {
                match self.joins.remove(&outcome.id) {
                    Some(reply) => {
                        let _ = reply.send(outcome);
                    }
                    None => tracing::debug!(join = outcome.id.0, "join outcome without a caller"),
                }
            }
            self.drain_keyring_writes();
            self.drain_events();
            if refused.is_empty() {
                return;
            }
            let now = Instant::now().into_std();
            for (id, reason) in refused {
                self.core.handle_stream_reply(
                    now,
                    id,
                    Err(serf_gossip::StreamError::Other(reason)),
                );
            }
        }
    }

    /// Hands every pending event and query answer to its consumers, without waiting.
    fn drain_events(&mut self) {
        self.feed_snapshot();
        while let Some(event) = self.core.poll_event() {
            log_event(&event);
            if let Some(sink) = &mut self.sink {
                sink.event(&event, self.core.local_member());
            }
            if self.streams.is_empty() {
                continue;
            }
            let event = Arc::new(event);
            let mut closed = false;
            for stream in &self.streams {
                if !stream.filter.matches(&event) {
                    continue;
                }
                match stream.sender.try_send(Arc::clone(&event)) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        self.stream_drops += 1;
                        tracing::warn!(
                            dropped = self.stream_drops,
                            "event stream full; event dropped"
                        );
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => closed = true,
                }
            }
            if closed {
                self.streams.retain(|stream| !stream.sender.is_closed());
            }
        }
        while let Some((key, output)) = self.core.poll_query_output() {
            let done = output == QueryOutput::Done;
            if let Some(sender) = self.queries.get(&key)
                && let Err(mpsc::error::TrySendError::Full(_)) = sender.try_send(output)
            {
                self.query_output_drops += 1;
                tracing::warn!(
                    query_id = key.id,
                    "query answer stream full; answer dropped"
                );
            }
            if done {
                self.queries.remove(&key);
            }
        }
    }
}

impl Shell {
    fn start_key_query(
        &mut self,
        now: std::time::Instant,
        command: serf_core::keys::KeyCommand,
        key: &[u8],
    ) -> Result<(QueryStream, usize), QueryError> {
        let query = self.core.key_query(now, command, key)?;
        Ok((self.track_query(query.key), query.num_nodes))
    }

    /// Hands keyring files to the writer task; without one (or when it is swamped) the key
    /// query is answered at once.
    fn drain_keyring_writes(&mut self) {
        while let Some(write) = self.core.poll_keyring_write() {
            let query = write.query;
            let sent = match &self.keyring_writer {
                Some(writer) => writer.try_send(write).is_ok(),
                None => false,
            };
            if !sent {
                let error = "Failed to write keyring file: writer unavailable".to_owned();
                self.core
                    .keyring_written(Instant::now().into_std(), query, Err(error));
            }
        }
    }
}

/// Keyring files waiting for the writer task.
const KEYRING_WRITE_QUEUE: usize = 16;

/// Starts the task that writes the keyring file (mode 0600), in order, and reports each write
/// back to the node's task.
fn spawn_keyring_writer(
    path: std::path::PathBuf,
    commands: mpsc::Sender<Command>,
) -> mpsc::Sender<serf_core::keys::KeyringWrite> {
    let (sender, mut writes) = mpsc::channel::<serf_core::keys::KeyringWrite>(KEYRING_WRITE_QUEUE);
    tokio::spawn(async move {
        while let Some(write) = writes.recv().await {
            let result = write_keyring_file(&path, &write.contents).await;
            let query = write.query;
            if commands
                .send(Command::KeyringWritten { query, result })
                .await
                .is_err()
            {
                return;
            }
        }
    });
    sender
}

/// Writes the keyring file; the error is Serf's message.
async fn write_keyring_file(path: &std::path::Path, contents: &str) -> Result<(), String> {
    use tokio::io::AsyncWriteExt as _;
    let failed = |op: &str, error: std::io::Error| {
        format!(
            "Failed to write keyring file: {op} {}: {}",
            path.display(),
            serf_rpc::go_text::io_error(&error)
        )
    };
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .await
        .map_err(|error| failed("open", error))?;
    file.write_all(contents.as_bytes())
        .await
        .map_err(|error| failed("write", error))?;
    file.flush().await.map_err(|error| failed("write", error))
}

/// Logs an event as Serf's agent does: member events at info, the rest at debug.
fn log_event(event: &Event) {
    match event {
        Event::Member(member_event) => {
            for member in &member_event.members {
                tracing::info!(
                    event = member_event.kind.as_str(),
                    member = %member.name,
                    addr = %member.addr.ip(),
                    "member event"
                );
            }
        }
        Event::User(user) => {
            tracing::debug!(event = %user.name, ltime = user.ltime, "user event");
        }
        Event::Query(query) => {
            tracing::debug!(query = %query.name, ltime = query.key.ltime, query_id = query.key.id, "query");
        }
    }
}

impl Shell {
    /// Opens the answer stream of a query this node just sent.
    fn track_query(&mut self, key: QueryKey) -> QueryStream {
        let (sender, outputs) = mpsc::channel(QUERY_OUTPUT_QUEUE);
        self.queries.insert(key, sender);
        QueryStream { key, outputs }
    }
}
