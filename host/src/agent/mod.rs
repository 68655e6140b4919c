//! The agent: a thin tokio shell around the [`Serf`] core.
//!
//! One task owns the core and the gossip UDP socket. Everything else (the RPC server, plugins,
//! the command line) talks to it through an [`AgentHandle`]: a bounded command channel with
//! one-shot replies. Between awaits the task does bounded CPU work only: it feeds the core
//! packets, stream messages, commands and timeouts, and drains its outputs: packets go out with
//! `try_send_to`, TCP streams run on tasks of their own (`transport`), events go to plugin
//! queues and event streams with `try_send`; it never waits on the network or a consumer. DNS
//! for joins happens on the caller's task (`join`).

mod join;
mod live;
pub mod reload;
pub mod shell;
pub mod snapshot;
mod transport;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use serf_plugin_sdk::abi::{self, Status};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Profile};
use crate::logging::LogHub;
use reload::{ReloadError, ReloadReport, Reloader, Trigger};
use serf_core::{
    self, Event, LamportTime, Member, QueryError, QueryKey, QueryOutput, QueryParams, RespondError,
    Serf, Tags, TagsError, UserEventError,
};
use serf_gossip::{JoinId, JoinOutcome};
use serf_plugins::jobs::Jobs;
use serf_plugins::{Engine, EventFilter, HostServices, PluginHost};
use shell::ShellHandlers;

/// Commands waiting for the agent task before senders must wait (RPC) or fail (plugins).
const COMMAND_QUEUE: usize = 1024;
/// Commands the agent task takes in one go before it hands out what they produced.
const COMMAND_BATCH: usize = 64;
/// How long the task sleeps when no timer is due.
const IDLE_WAKEUP: Duration = Duration::from_secs(1);
/// Answers buffered per query before further ones are dropped.
const QUERY_OUTPUT_QUEUE: usize = 1024;
/// How long a graceful leave may take before the agent gives up waiting: Serf's broadcast
/// timeout (5 s) plus its leave propagation delay (1 s). The core normally finishes sooner.
pub const LEAVE_BOUND: Duration = Duration::from_secs(12);

pub use join::retry_join;
pub use transport::{
    FIRST_BYTE_TIMEOUT, MAX_INBOUND_STREAMS, MAX_OUTBOUND_STREAMS, PENDING_PER_SOURCE,
    PENDING_TOTAL, TransportStats,
};

/// Why the agent did not do what a handle asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// The agent task has stopped.
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
    /// The graceful leave did not finish within [`LEAVE_BOUND`]; the agent may still stop.
    #[error("timeout while waiting for graceful leave")]
    LeaveTimeout,
    /// The tags do not fit in node meta; nothing changed.
    #[error(transparent)]
    Tags(#[from] TagsError),
    /// The tags file could not be written; the tags were not changed.
    #[error("Failed to write tags file: {0}")]
    TagsFile(String),
}

/// Counters and clocks for `serf info`.
#[derive(Debug, Clone)]
pub struct AgentStats {
    /// The core's counters.
    pub serf: serf_core::Stats,
    /// This node.
    pub local: Member,
    /// Events dropped because an event stream (RPC `stream`) was full.
    pub stream_drops: u64,
    /// Query answers dropped because the querier's stream was full.
    pub query_output_drops: u64,
    /// Plugin responses refused because the command queue was full.
    pub respond_drops: u64,
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

/// What the agent task can be asked.
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
        /// The plugin that answered, when there is no one to reply to.
        plugin: Option<Arc<str>>,
        reply: Option<oneshot::Sender<Result<(), RespondError>>>,
    },
    Members {
        reply: oneshot::Sender<Vec<Member>>,
    },
    Coordinate {
        node: String,
        reply: oneshot::Sender<Option<serf_core::wire::Coordinate>>,
    },
    Stats {
        reply: oneshot::Sender<AgentStats>,
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
        reply: oneshot::Sender<Result<(), AgentError>>,
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
    /// A user event from a plugin granted `events`.
    PluginUserEvent {
        plugin: Arc<str>,
        event: abi::FireEvent,
    },
    /// A query from a plugin granted `queries`; its answers go back to it as events.
    PluginQuery {
        plugin: Arc<str>,
        handle: u32,
        request: abi::QueryRequest,
    },
}

/// What the rest of the program holds to talk to the agent. Cheap to clone.
#[derive(Clone)]
pub struct AgentHandle {
    jobs: Jobs,
    commands: mpsc::Sender<Command>,
    plugins: Arc<PluginHost>,
    handlers: Arc<ShellHandlers>,
    logs: LogHub,
    config: Arc<Config>,
    shutdown_requested: CancellationToken,
    respond_drops: Arc<AtomicU64>,
    gossip_addr: SocketAddr,
    reloader: Arc<Reloader>,
}

/// A running agent; [`Agent::shutdown`] stops it.
pub struct Agent {
    handle: AgentHandle,
    task: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
    plugin_runtime: PluginRuntime,
    /// Reloads when serf.toml or a plugin file changes (`auto_reload`).
    watcher: Option<reload::Watcher>,
}

/// The plugins' runtime, shut down without waiting when dropped: dropping a runtime inside
/// async code would panic, and a start-up that fails half way drops it there.
struct PluginRuntime(Option<tokio::runtime::Runtime>);

impl PluginRuntime {
    fn handle(&self) -> &tokio::runtime::Handle {
        self.0
            .as_ref()
            .expect("the plugin runtime exists until dropped")
            .handle()
    }
}

impl Drop for PluginRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl Agent {
    /// Starts loading the plugins on a runtime of their own, then starts the agent task on the
    /// current runtime without waiting for them.
    pub async fn start(config: Config, logs: LogHub) -> anyhow::Result<Agent> {
        use anyhow::Context as _;
        // As Serf, before anything starts: tags that do not fit in node meta would reach every
        // peer as no tags at all.
        serf_core::check_tags(&serf_config(&config, config.advertise), &config.tags)
            .context("Error creating Serf")?;
        let plugin_runtime = PluginRuntime(Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("serf-plugin")
                .enable_all()
                .build()
                .context("cannot start the plugin runtime")?,
        ));
        let engine = Engine::new(config.plugin_cache_dir.clone()).with_budget(config.plugin_budget);
        let (commands, receiver) = mpsc::channel(COMMAND_QUEUE);
        let respond_drops = Arc::new(AtomicU64::new(0));
        let member_snapshot = Arc::new(MemberSnapshot::for_plugins(&config.plugins));
        // Jobs (ABI v1.1): records under `<data_dir>/jobs`, read back before any plugin runs.
        let jobs = Jobs::open(
            config.data_dir.as_ref().map(|dir| dir.join("jobs")),
            config.job_workers.get(),
        )
        .context("cannot read the job records")?;
        let services = Arc::new(Services {
            jobs: jobs.clone(),
            commands: commands.clone(),
            drops: Arc::clone(&respond_drops),
            members: Arc::clone(&member_snapshot),
            limits: config.serf_limits,
            next_query_handle: AtomicU32::new(0),
            answered: AnsweredQueries::default(),
        });
        config.warn_plugins_without_table();
        // Plugins load in the background: gossip and RPC answer while they compile, and
        // events queue for each until it runs.
        let plugins = PluginHost::spawn(
            engine,
            config.plugins.clone(),
            &config.node_name,
            config.serf_limits,
            services.clone(),
            plugin_runtime.handle(),
        );
        jobs.attach(&plugins);
        let handlers = Arc::new(ShellHandlers::start(
            config.handlers.clone(),
            services,
            plugin_runtime.handle(),
        ));
        let tcp_timeout = serf_config(&config, config.advertise)
            .memberlist
            .tcp_timeout;
        let transport = transport::Transport::bind(config.bind, tcp_timeout).await?;
        let gossip_addr = transport.local_addr;
        // Port 0 (tests) means whatever port the sockets got.
        let mut advertise = config.advertise;
        if advertise.port() == 0 {
            advertise.set_port(gossip_addr.port());
        }
        let mut core_config = serf_config(&config, advertise);
        let (snapshot, previous) = match &config.snapshot_path {
            Some(path) => {
                let (snapshot, state) =
                    snapshot::Snapshotter::open(path, config.rejoin_after_leave)?;
                core_config.restored_clocks = Some(state.clocks());
                core_config.raw_member_events = true;
                (Some(snapshot), state.previous_nodes(&config.node_name))
            }
            None => (None, Vec::new()),
        };
        let core = Serf::new(core_config, rand::random(), Instant::now().into_std());
        tracing::info!(addr = %gossip_addr, %advertise, "gossip listening");
        let stop = CancellationToken::new();
        let shutdown_requested = CancellationToken::new();
        let keyring_writer = config
            .keyring_file
            .clone()
            .map(|path| spawn_keyring_writer(path, commands.clone()));
        let shell = Shell {
            core,
            transport,
            plugins: Arc::clone(&plugins),
            handlers: Arc::clone(&handlers),
            streams: Vec::new(),
            queries: HashMap::new(),
            joins: HashMap::new(),
            leave_waiters: Vec::new(),
            leave_deadline: None,
            stream_drops: 0,
            query_output_drops: 0,
            respond_drops: Arc::clone(&respond_drops),
            encrypted: config.keyring.is_some(),
            snapshot,
            keyring_writer,
            shutdown_requested: shutdown_requested.clone(),
            members_for_plugins: MemberSnapshotWriter::new(member_snapshot),
        };
        let span = tracing::info_span!("agent", node = %config.node_name);
        let task = tokio::spawn(tracing::Instrument::instrument(
            shell.run(receiver, stop.clone()),
            span,
        ));
        let config = Arc::new(config);
        let live = Arc::new(live::AgentSettings {
            logs: logs.clone(),
            handlers: Arc::clone(&handlers),
            commands: commands.clone(),
        });
        let reloader = Arc::new(Reloader::new(
            Arc::clone(&plugins),
            Arc::clone(&config),
            live,
        ));
        let watcher = config
            .auto_reload
            .then(|| reload::spawn_watcher(Arc::clone(&reloader)));
        let handle = AgentHandle {
            jobs,
            commands,
            plugins,
            handlers,
            logs,
            config,
            shutdown_requested,
            respond_drops,
            gossip_addr,
            reloader,
        };
        if !previous.is_empty() {
            tokio::spawn(snapshot::rejoin(handle.clone(), previous));
        }
        Ok(Agent {
            handle,
            task,
            stop,
            plugin_runtime,
            watcher,
        })
    }

    /// A handle for the RPC server and others.
    pub fn handle(&self) -> AgentHandle {
        self.handle.clone()
    }

    /// Stops the agent task, then the plugins (each finishes its current call).
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        let _ = (&mut self.task).await;
        self.handle.jobs.shutdown().await;
        drop(self.watcher.take());
        self.handle.plugins.shutdown().await;
        self.handle.handlers.shutdown().await;
        drop(self.plugin_runtime);
    }
}

/// A user event handed to the agent task, whose outcome is still to come.
pub struct PendingUserEvent {
    answer: oneshot::Receiver<Result<LamportTime, UserEventError>>,
}

impl PendingUserEvent {
    /// The event's Lamport time once the agent has taken it, or why it was refused.
    pub async fn outcome(self) -> Result<LamportTime, AgentError> {
        Ok(self.answer.await.map_err(|_| AgentError::Closed)??)
    }
}

impl AgentHandle {
    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, AgentError> {
        let answer = self.send(command).await?;
        answer.await.map_err(|_| AgentError::Closed)
    }

    /// Queues a command for the agent task; its answer is to come on the receiver.
    async fn send<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<oneshot::Receiver<T>, AgentError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| AgentError::Closed)?;
        Ok(answer)
    }

    /// The configuration the agent runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The agent's log lines, for `monitor`.
    pub fn logs(&self) -> &LogHub {
        &self.logs
    }

    /// The plugins.
    pub fn plugins(&self) -> &PluginHost {
        &self.plugins
    }

    /// The plugins' long jobs (ABI v1.1).
    pub fn jobs(&self) -> &Jobs {
        &self.jobs
    }

    /// The shell event handlers.
    pub fn handlers(&self) -> &ShellHandlers {
        &self.handlers
    }

    /// Reads the configuration again and applies its plugin changes (see
    /// [`crate::agent::reload`]); completes once every new version handles events.
    pub async fn reload(&self, trigger: Trigger) -> Result<ReloadReport, ReloadError> {
        self.reloader.reload(trigger).await
    }

    /// Fires a user event; returns its Lamport time.
    pub async fn user_event(
        &self,
        name: String,
        payload: Vec<u8>,
        coalesce: bool,
    ) -> Result<LamportTime, AgentError> {
        self.send_user_event(name, payload, coalesce)
            .await?
            .outcome()
            .await
    }

    /// Queues a user event for the agent task without waiting for the outcome, so that a
    /// caller with many events (an RPC connection with pipelined requests) can hand them all
    /// over before waiting for the first. Outcomes come in the order the events were sent.
    pub async fn send_user_event(
        &self,
        name: String,
        payload: Vec<u8>,
        coalesce: bool,
    ) -> Result<PendingUserEvent, AgentError> {
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
    pub async fn query(&self, params: QueryParams) -> Result<QueryStream, AgentError> {
        Ok(self.ask(|reply| Command::Query { params, reply }).await??)
    }

    /// Answers a query this node received.
    pub async fn respond(&self, key: QueryKey, payload: Vec<u8>) -> Result<(), AgentError> {
        let result = self
            .ask(|reply| Command::Respond {
                key,
                payload,
                plugin: None,
                reply: Some(reply),
            })
            .await?;
        Ok(result?)
    }

    /// Every known member.
    pub async fn members(&self) -> Result<Vec<Member>, AgentError> {
        self.ask(|reply| Command::Members { reply }).await
    }

    /// The network coordinate of `node` (ours included), `None` if none is known.
    pub async fn coordinate(
        &self,
        node: String,
    ) -> Result<Option<serf_core::wire::Coordinate>, AgentError> {
        self.ask(|reply| Command::Coordinate { node, reply }).await
    }

    /// Counters and clocks.
    pub async fn stats(&self) -> Result<AgentStats, AgentError> {
        self.ask(|reply| Command::Stats { reply }).await
    }

    /// Replaces this node's tags (writing the tags file first, if there is one). Tags too
    /// large for node meta are refused before the file is written.
    pub async fn set_tags(&self, tags: Tags) -> Result<(), AgentError> {
        serf_core::check_tags(&serf_config(&self.config, self.config.advertise), &tags)?;
        if let Some(path) = &self.config.tags_file {
            snapshot::write_tags_file(path, &tags).await?;
        }
        Ok(self.ask(|reply| Command::SetTags { tags, reply }).await??)
    }

    /// Removes a failed member (`prune`: at once), as `serf force-leave` asks.
    pub async fn force_leave(&self, node: String, prune: bool) -> Result<(), AgentError> {
        self.ask(|reply| Command::ForceLeave { node, prune, reply })
            .await
    }

    /// Leaves the cluster gracefully: completes once the leave has been gossiped (or after
    /// [`LEAVE_BOUND`]). The agent keeps running until shut down.
    pub async fn leave(&self) -> Result<(), AgentError> {
        self.ask(|reply| Command::Leave { reply }).await?
    }

    /// Joins the cluster through `addrs` (`[name/]host[:port]`, `[v6]:port`; the port defaults
    /// to this agent's gossip port). Without `replay`, user events older than the join are not
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
    ) -> Result<Subscription, AgentError> {
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
    ) -> Result<(QueryStream, usize), AgentError> {
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

    /// Asks whoever runs the agent to stop it (after the RPC `leave`).
    pub fn request_shutdown(&self) {
        self.shutdown_requested.cancel();
    }

    /// Completes once [`AgentHandle::request_shutdown`] was called.
    pub async fn shutdown_requested(&self) {
        self.shutdown_requested.cancelled().await;
    }

    /// Plugin responses refused because the agent was overloaded.
    pub fn respond_drops(&self) -> u64 {
        self.respond_drops.load(Ordering::Relaxed)
    }
}

/// What plugins may ask of the agent: never waits, fails when the agent is overloaded.
struct Services {
    /// The job pool (ABI v1.1).
    jobs: Jobs,
    commands: mpsc::Sender<Command>,
    drops: Arc<AtomicU64>,
    /// The member list for plugins granted `members`.
    members: Arc<MemberSnapshot>,
    /// Serf's size limits, checked before a plugin's event or query is queued.
    limits: serf_core::SerfLimits,
    /// The last query handle handed out.
    next_query_handle: AtomicU32,
    /// Queries a plugin answered: a second plugin's answer is refused at its call.
    answered: AnsweredQueries,
}

/// The keys of the last [`AnsweredQueries::REMEMBERED`] queries a plugin answered, so that
/// a later `respond` to one of them fails in the plugin (`NotAllowed`) instead of being
/// dropped with a warning by the agent task. Queries end within seconds; far more than the
/// queries in flight are remembered.
#[derive(Default)]
struct AnsweredQueries(
    std::sync::Mutex<(
        std::collections::HashSet<QueryKey>,
        std::collections::VecDeque<QueryKey>,
    )>,
);

impl AnsweredQueries {
    const REMEMBERED: usize = 4096;

    /// Claims `key`; false if it was claimed already.
    fn claim(&self, key: QueryKey) -> bool {
        let mut guard = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (set, order) = &mut *guard;
        if !set.insert(key) {
            return false;
        }
        order.push_back(key);
        if order.len() > Self::REMEMBERED
            && let Some(oldest) = order.pop_front()
        {
            set.remove(&oldest);
        }
        true
    }

    /// Gives `key` back after its answer could not be queued.
    fn release(&self, key: QueryKey) {
        let mut guard = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (set, order) = &mut *guard;
        if set.remove(&key) {
            order.retain(|&k| k != key);
        }
    }
}

impl HostServices for Services {
    fn jobs(&self) -> Option<&Jobs> {
        Some(&self.jobs)
    }

    fn respond(&self, plugin: &str, query: QueryKey, payload: Vec<u8>) -> Result<(), Status> {
        if !self.answered.claim(query) {
            return Err(Status::NotAllowed);
        }
        let command = Command::Respond {
            key: query,
            payload,
            plugin: Some(Arc::from(plugin)),
            reply: None,
        };
        self.commands.try_send(command).map_err(|error| {
            self.answered.release(query);
            if matches!(error, mpsc::error::TrySendError::Full(_)) {
                let dropped = self.drops.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(
                    plugin,
                    dropped,
                    "agent command queue full; plugin response dropped"
                );
            }
            Status::Unavailable
        })
    }

    fn members(&self) -> Option<Arc<[u8]>> {
        self.members.read()
    }

    fn fire_event(&self, plugin: &str, event: abi::FireEvent) -> Result<(), Status> {
        if event.name.len() + event.payload.len() > self.limits.user_event_size_limit {
            return Err(Status::TooLarge);
        }
        let plugin = Arc::from(plugin);
        self.try_command(Command::PluginUserEvent { plugin, event })
    }

    fn query(&self, plugin: &str, request: abi::QueryRequest) -> Result<u32, Status> {
        if request.name.starts_with(serf_core::INTERNAL_QUERY_PREFIX) {
            return Err(Status::BadArgument);
        }
        if request.name.len() + request.payload.len() > self.limits.query_size_limit {
            return Err(Status::TooLarge);
        }
        // 1, 2, ... 2^31 - 1, then 1 again: always a positive i32 for the guest.
        let handle = self.next_query_handle.fetch_add(1, Ordering::Relaxed) % (i32::MAX as u32) + 1;
        let plugin = Arc::from(plugin);
        self.try_command(Command::PluginQuery {
            plugin,
            handle,
            request,
        })?;
        Ok(handle)
    }
}

/// An open event stream.
struct Stream {
    filter: EventFilter,
    sender: mpsc::Sender<Arc<Event>>,
}

/// The agent task's state.
struct Shell {
    core: Serf,
    transport: transport::Transport,
    plugins: Arc<PluginHost>,
    handlers: Arc<ShellHandlers>,
    streams: Vec<Stream>,
    queries: HashMap<QueryKey, mpsc::Sender<QueryOutput>>,
    /// Joins waiting for their outcome.
    joins: HashMap<JoinId, oneshot::Sender<JoinOutcome>>,
    /// Callers of `leave` waiting for it to finish.
    leave_waiters: Vec<oneshot::Sender<Result<(), AgentError>>>,
    /// When waiting for the leave stops.
    leave_deadline: Option<Instant>,
    stream_drops: u64,
    query_output_drops: u64,
    respond_drops: Arc<AtomicU64>,
    encrypted: bool,
    /// The snapshot file's writer, with `-snapshot`.
    snapshot: Option<snapshot::Snapshotter>,
    /// Writes the keyring file after key queries, with `-keyring-file`.
    keyring_writer: Option<mpsc::Sender<serf_core::keys::KeyringWrite>>,
    /// Cancelled when the core shuts itself down (a lost name-conflict vote).
    shutdown_requested: CancellationToken,
    /// The member list plugins granted `members` read.
    members_for_plugins: MemberSnapshotWriter,
}

impl Shell {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>, stop: CancellationToken) {
        tracing::info!("agent started");
        let mut packet = vec![0u8; transport::UDP_RECEIVE_BYTES];
        loop {
            self.drain_outputs();
            self.members_for_plugins.refresh(Instant::now(), &self.core);
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
            Err(AgentError::LeaveTimeout)
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
                let result = self.core.query(now, params).map(|key| {
                    let (sender, outputs) = mpsc::channel(QUERY_OUTPUT_QUEUE);
                    self.queries.insert(key, sender);
                    QueryStream { key, outputs }
                });
                let _ = reply.send(result);
            }
            Command::Respond {
                key,
                payload,
                plugin,
                reply,
            } => {
                let result = self.core.respond(now, key, &payload);
                if let (Err(error), Some(plugin)) = (&result, &plugin) {
                    tracing::warn!(%plugin, query_id = key.id, %error, "plugin response refused");
                }
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            Command::Members { reply } => {
                let _ = reply.send(self.core.members().cloned().collect());
            }
            Command::Coordinate { node, reply } => {
                let _ = reply.send(self.core.coordinate(&node));
            }
            Command::Stats { reply } => {
                self.streams.retain(|stream| !stream.sender.is_closed());
                let _ = reply.send(AgentStats {
                    serf: self.core.stats(),
                    local: self.core.local_member().clone(),
                    stream_drops: self.stream_drops,
                    query_output_drops: self.query_output_drops,
                    respond_drops: self.respond_drops.load(Ordering::Relaxed),
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
            Command::PluginUserEvent { plugin, event } => {
                self.plugin_user_event(now, &plugin, &event);
            }
            Command::PluginQuery {
                plugin,
                handle,
                request,
            } => self.plugin_query(now, plugin, handle, request),
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
            if matches!(event, Event::Member(_)) {
                self.members_for_plugins.mark_stale();
            }
            self.plugins.dispatch(&event);
            self.handlers.dispatch(&event, self.core.local_member());
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
        let (sender, outputs) = mpsc::channel(QUERY_OUTPUT_QUEUE);
        self.queries.insert(query.key, sender);
        let stream = QueryStream {
            key: query.key,
            outputs,
        };
        Ok((stream, query.num_nodes))
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
/// back to the agent task.
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

/// The core's settings for this agent: the profile's timings with the agent's keyring,
/// compression and Serf protocol version (the last byte of the version vector).
pub fn serf_config(config: &Config, advertise: SocketAddr) -> serf_core::Config {
    let name = config.node_name.clone();
    let profile = match config.profile {
        Profile::Lan => serf_gossip::Config::lan(name.clone(), advertise),
        Profile::Wan => serf_gossip::Config::wan(name.clone(), advertise),
        Profile::Local => serf_gossip::Config::local(name.clone(), advertise),
    };
    let mut vsn = profile.vsn;
    vsn[5] = config.protocol;
    let memberlist = serf_gossip::Config {
        vsn,
        keyring: config.keyring.clone(),
        enable_compression: config.enable_compression,
        ..profile
    };
    serf_core::Config {
        limits: config.serf_limits,
        // Serf's default query timeout scales with the profile's gossip interval.
        gossip_interval: memberlist.gossip_interval,
        memberlist,
        // Serf's agent always coalesces, with fixed periods, whatever the profile.
        coalesce: serf_core::coalesce::Config::AGENT,
        persist_keyring: config.keyring_file.is_some(),
        ..serf_core::Config::lan(name, advertise, config.tags.clone())
    }
}

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

// --- Capabilities (ABI v1.1): what plugins granted `members`, `events` or `queries` ask of the
// agent. Host functions never wait on the agent task: they read a member list the task keeps
// up to date, and queue events and queries with `try_send`; query answers go back to the
// plugin's own queue as `query-response` and `query-done` events.

/// How often the member list for plugins is rebuilt when no member event asked for it sooner.
const MEMBER_SNAPSHOT_INTERVAL: Duration = Duration::from_secs(1);

/// The member list plugins read: an encoded `abi::MemberList`, replaced whole by the agent task.
struct MemberSnapshot {
    encoded: std::sync::RwLock<Option<Arc<[u8]>>>,
    /// Whether anyone reads it; until then the agent task does not build it.
    wanted: AtomicBool,
}

impl MemberSnapshot {
    /// Wanted from the start if a configured plugin is granted `members`; otherwise from the
    /// first read (a reload may grant it later).
    fn for_plugins(plugins: &[serf_plugins::PluginSpec]) -> MemberSnapshot {
        let wanted = plugins
            .iter()
            .any(|spec| spec.grants.capabilities.contains(abi::Capability::Members));
        MemberSnapshot {
            encoded: std::sync::RwLock::new(None),
            wanted: AtomicBool::new(wanted),
        }
    }

    /// The latest list; `None` until the agent task built one.
    fn read(&self) -> Option<Arc<[u8]>> {
        self.wanted.store(true, Ordering::Relaxed);
        self.encoded
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The agent task's side of [`MemberSnapshot`].
struct MemberSnapshotWriter {
    snapshot: Arc<MemberSnapshot>,
    /// A member event was seen since the last build.
    stale: bool,
    /// When the list is rebuilt anyway.
    due: Instant,
}

impl MemberSnapshotWriter {
    fn new(snapshot: Arc<MemberSnapshot>) -> MemberSnapshotWriter {
        MemberSnapshotWriter {
            snapshot,
            stale: true,
            due: Instant::now(),
        }
    }

    fn mark_stale(&mut self) {
        self.stale = true;
    }

    /// Rebuilds the list from the core's members if someone reads it and it is stale or due.
    /// Bounded work: one pass over the members, one encoding.
    fn refresh(&mut self, now: Instant, core: &Serf) {
        if !self.snapshot.wanted.load(Ordering::Relaxed) || (!self.stale && now < self.due) {
            return;
        }
        let list = abi::MemberList {
            members: core
                .members()
                .map(serf_plugins::dispatch::abi_member)
                .collect(),
        };
        let encoded: Arc<[u8]> = Arc::from(abi::encode(&list));
        *self
            .snapshot
            .encoded
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(encoded);
        self.stale = false;
        self.due = now + MEMBER_SNAPSHOT_INTERVAL;
    }
}

impl Services {
    /// Queues a command for the agent task; a full queue is `Unavailable` to the plugin.
    fn try_command(&self, command: Command) -> Result<(), Status> {
        self.commands.try_send(command).map_err(|error| {
            if let mpsc::error::TrySendError::Full(command) = error {
                let plugin = match &command {
                    Command::PluginUserEvent { plugin, .. } | Command::PluginQuery { plugin, .. } => {
                        Some(Arc::clone(plugin))
                    }
                    _ => None,
                };
                tracing::warn!(plugin = ?plugin, "agent command queue full; plugin request refused");
            }
            Status::Unavailable
        })
    }
}

impl Shell {
    /// Fires a plugin's user event; a refusal (the agent is leaving, the encoded event is too
    /// large) is logged, since the plugin's call returned already.
    fn plugin_user_event(&mut self, now: std::time::Instant, plugin: &str, event: &abi::FireEvent) {
        match self
            .core
            .user_event(now, &event.name, &event.payload, event.coalesce)
        {
            Ok(ltime) => {
                tracing::debug!(plugin, event = %event.name, ltime, "plugin fired user event")
            }
            Err(error) => {
                tracing::warn!(plugin, event = %event.name, %error, "plugin user event refused");
            }
        }
    }

    /// Sends a plugin's query and forwards its answers to the plugin's queue; a query the core
    /// refuses ends at once with a `query-done` carrying the reason.
    fn plugin_query(
        &mut self,
        now: std::time::Instant,
        plugin: Arc<str>,
        handle: u32,
        request: abi::QueryRequest,
    ) {
        let name = request.name.clone();
        let params = QueryParams {
            name: request.name,
            payload: request.payload,
            filter_nodes: request.filter_nodes,
            filter_tags: request.filter_tags,
            request_ack: false,
            relay_factor: 0,
            timeout: (request.timeout_ms > 0).then(|| Duration::from_millis(request.timeout_ms)),
        };
        match self.core.query(now, params) {
            Ok(key) => {
                tracing::debug!(%plugin, query = %name, query_id = key.id, "plugin sent query");
                let (sender, outputs) = mpsc::channel(QUERY_OUTPUT_QUEUE);
                self.queries.insert(key, sender);
                let plugins = Arc::clone(&self.plugins);
                tokio::spawn(forward_query_answers(
                    plugins, plugin, handle, name, outputs,
                ));
            }
            Err(error) => {
                tracing::warn!(%plugin, query = %name, %error, "plugin query refused");
                let done = abi::Event::QueryDone(abi::QueryDone {
                    query: handle,
                    name,
                    error: error.to_string(),
                });
                deliver_to_plugin(&self.plugins, &plugin, &done);
            }
        }
    }
}

/// Hands the answers of a plugin's query to the plugin, as events, until the query is done.
async fn forward_query_answers(
    plugins: Arc<PluginHost>,
    plugin: Arc<str>,
    handle: u32,
    name: String,
    mut outputs: mpsc::Receiver<QueryOutput>,
) {
    while let Some(output) = outputs.recv().await {
        let event = match output {
            QueryOutput::Ack { .. } => continue,
            QueryOutput::Response { from, payload } => {
                abi::Event::QueryResponse(abi::QueryResponse {
                    query: handle,
                    name: name.clone(),
                    from,
                    payload,
                })
            }
            QueryOutput::Done => break,
        };
        deliver_to_plugin(&plugins, &plugin, &event);
    }
    let done = abi::Event::QueryDone(abi::QueryDone {
        query: handle,
        name,
        error: String::new(),
    });
    deliver_to_plugin(&plugins, &plugin, &done);
}

/// Queues an event for one plugin; a full queue is counted there (and the plugin later gets
/// a `dropped` notice), a plugin removed meanwhile just misses it.
fn deliver_to_plugin(plugins: &PluginHost, plugin: &str, event: &abi::Event) {
    if let Err(error) = plugins.deliver_to(plugin, event) {
        tracing::debug!(plugin, kind = event.kind(), %error, "query answer not delivered to plugin");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AgentFlags, FileConfig};
    use serf_testkit::eventually_async as eventually;

    fn config(flags: AgentFlags) -> Config {
        let mut config =
            Config::resolve(FileConfig::default(), std::path::Path::new("."), &flags).unwrap();
        config.data_dir = None;
        config.plugin_cache_dir = None;
        config
    }

    #[test]
    fn a_query_is_answered_once_and_a_released_claim_can_be_retried() {
        let answered = AnsweredQueries::default();
        let key = |id| QueryKey { ltime: 1, id };
        assert!(answered.claim(key(1)));
        assert!(!answered.claim(key(1)), "a second answer is refused");
        answered.release(key(1));
        assert!(
            answered.claim(key(1)),
            "an answer that could not be queued frees the query"
        );
        for id in 2..=AnsweredQueries::REMEMBERED as u32 + 1 {
            assert!(answered.claim(key(id)));
        }
        assert!(
            answered.claim(key(1)),
            "the oldest claim is forgotten beyond the bound"
        );
    }

    async fn agent() -> Agent {
        named_agent("solo").await
    }

    /// An agent on loopback, any port, with the fast `local` profile.
    async fn named_agent(name: &str) -> Agent {
        let config = config(AgentFlags {
            node: Some(name.into()),
            bind: Some("127.0.0.1:0".into()),
            profile: Some("local".into()),
            ..AgentFlags::default()
        });
        Agent::start(config, LogHub::new()).await.unwrap()
    }

    #[tokio::test]
    async fn a_start_that_fails_half_way_is_an_error_not_a_panic() {
        let first = agent().await;
        let taken = first.handle().gossip_addr();
        let config = config(AgentFlags {
            node: Some("second".into()),
            bind: Some(taken.to_string()),
            profile: Some("local".into()),
            ..AgentFlags::default()
        });
        let error = Agent::start(config, LogHub::new()).await.err();
        assert!(error.is_some(), "the gossip port is taken");
        first.shutdown().await;
    }

    async fn status_of(handle: &AgentHandle, name: &str) -> Option<serf_core::MemberStatus> {
        let members = handle.members().await.ok()?;
        members.iter().find(|m| m.name == name).map(|m| m.status)
    }

    #[test]
    fn the_core_gets_the_profile_keyring_compression_and_protocol() {
        let config = config(AgentFlags {
            node: Some("n".into()),
            profile: Some("wan".into()),
            protocol: Some(3),
            disable_compression: true,
            encrypt: Some("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".into()),
            ..AgentFlags::default()
        });
        let advertise: SocketAddr = "10.0.0.1:7946".parse().unwrap();
        let core = serf_config(&config, advertise);
        let wan = serf_gossip::Config::wan("n".into(), advertise);
        assert_eq!(core.memberlist.tcp_timeout, wan.tcp_timeout);
        assert_eq!(core.memberlist.probe_interval, wan.probe_interval);
        assert_eq!(core.gossip_interval, wan.gossip_interval);
        assert_eq!(core.memberlist.vsn, [1, 5, 2, 2, 5, 3]);
        assert!(!core.memberlist.enable_compression);
        assert_eq!(core.memberlist.keyring.map(|k| k.keys().len()), Some(1));
        assert_eq!(core.memberlist.advertise, advertise);
        assert_eq!(core.advertise, advertise);

        let plain = serf_config(&self::config(AgentFlags::default()), advertise);
        assert_eq!(plain.memberlist.vsn, serf_gossip::message::SERF_0_9_4_VSN);
        assert!(plain.memberlist.enable_compression);
        assert!(plain.memberlist.keyring.is_none());
        assert_eq!(plain.gossip_interval, Duration::from_millis(200));
    }

    #[tokio::test]
    async fn two_agents_join_and_leave_over_loopback() {
        let a = named_agent("a").await;
        let b = named_agent("b").await;
        let (a_handle, b_handle) = (a.handle(), b.handle());
        let seed = b_handle.gossip_addr().to_string();
        assert_eq!(a_handle.join(vec![seed], false).await, Ok(1));
        let converged = eventually(Duration::from_secs(10), || async {
            status_of(&b_handle, "a").await == Some(serf_core::MemberStatus::Alive)
                && status_of(&a_handle, "b").await == Some(serf_core::MemberStatus::Alive)
        })
        .await;
        assert!(converged, "the agents never saw each other");
        let stats = a_handle.stats().await.unwrap();
        assert!(stats.gossip.streams_out >= 1, "{:?}", stats.gossip);
        assert!(!stats.encrypted);

        a_handle.leave().await.unwrap();
        let left = eventually(Duration::from_secs(10), || async {
            status_of(&b_handle, "a").await == Some(serf_core::MemberStatus::Left)
        })
        .await;
        assert!(left, "b never saw a leave");
        a.shutdown().await;
        b.shutdown().await;
    }

    #[tokio::test]
    async fn a_join_reaching_nobody_fails_with_serfs_message() {
        let a = named_agent("a").await;
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let error = a
            .handle()
            .join(vec![closed.to_string()], false)
            .await
            .unwrap_err();
        assert_eq!(
            error,
            format!(
                "1 error occurred:\n\t* Failed to join 127.0.0.1: \
                 dial tcp {closed}: connect: connection refused\n\n"
            )
        );
        assert_eq!(a.handle().stats().await.unwrap().pending_joins, 0);
        a.shutdown().await;
    }

    #[tokio::test]
    async fn leaving_alone_completes_at_once() {
        let agent = agent().await;
        let handle = agent.handle();
        let started = Instant::now();
        handle.leave().await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(
            status_of(&handle, "solo").await,
            Some(serf_core::MemberStatus::Left)
        );
        agent.shutdown().await;
    }

    #[tokio::test]
    async fn events_reach_streams_in_order() {
        let agent = agent().await;
        let handle = agent.handle();
        let mut stream = handle
            .subscribe(EventFilter::parse("user").unwrap(), 16)
            .await
            .unwrap();
        for i in 0..10u8 {
            handle
                .user_event("deploy".into(), vec![i], false)
                .await
                .unwrap();
        }
        for i in 0..10u8 {
            let event = stream.events.recv().await.unwrap();
            let Event::User(user) = &*event else {
                panic!("{event:?}")
            };
            assert_eq!(
                (user.ltime, user.payload.as_slice()),
                (u64::from(i) + 1, &[i][..])
            );
        }
        agent.shutdown().await;
    }

    #[tokio::test]
    async fn streams_see_a_burst_of_joins_coalesced() {
        let a = named_agent("a").await;
        let handle = a.handle();
        let mut joins = handle
            .subscribe(EventFilter::parse("member-join").unwrap(), 16)
            .await
            .unwrap();
        let (b, c) = (named_agent("b").await, named_agent("c").await);
        for other in [&b, &c] {
            let seed = handle.gossip_addr().to_string();
            assert_eq!(other.handle().join(vec![seed], false).await, Ok(1));
        }
        let mut events = Vec::new();
        let mut seen: Vec<String> = Vec::new();
        while seen.len() < 3 {
            let next = tokio::time::timeout(Duration::from_secs(10), joins.events.recv()).await;
            let Ok(Some(event)) = next else {
                panic!("joins missing; saw {events:?}")
            };
            let Event::Member(member_event) = &*event else {
                panic!("{event:?}")
            };
            seen.extend(member_event.members.iter().map(|m| m.name.clone()));
            events.push(event);
        }
        seen.sort();
        assert_eq!(seen, ["a", "b", "c"], "each join once");
        assert!(events.len() < 3, "joins not coalesced: {events:?}");
        for agent in [a, b, c] {
            agent.shutdown().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn coalesced_user_events_reach_streams_once_per_name() {
        let agent = agent().await;
        let handle = agent.handle();
        let mut stream = handle
            .subscribe(EventFilter::parse("user").unwrap(), 16)
            .await
            .unwrap();
        for payload in [b"v1", b"v2"] {
            handle
                .user_event("deploy".into(), payload.to_vec(), true)
                .await
                .unwrap();
        }
        let event = stream.events.recv().await.unwrap();
        let Event::User(user) = &*event else {
            panic!("{event:?}")
        };
        assert_eq!((user.ltime, user.payload.as_slice()), (2, &b"v2"[..]));
        let more = tokio::time::timeout(Duration::from_secs(10), stream.events.recv()).await;
        assert!(more.is_err(), "only the newest deploy: {more:?}");
        agent.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_stream_drops_and_counts_instead_of_waiting() {
        let agent = agent().await;
        let handle = agent.handle();
        let _slow = handle.subscribe(EventFilter::all(), 2).await.unwrap();
        for _ in 0..5 {
            handle.user_event("e".into(), vec![], false).await.unwrap();
        }
        let stats = handle.stats().await.unwrap();
        assert_eq!(stats.stream_drops, 3);
        assert_eq!(stats.serf.event_time, 6);
        agent.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_query_is_answered_then_done_once_every_member_answered() {
        let agent = agent().await;
        let handle = agent.handle();
        let mut queries = handle
            .subscribe(EventFilter::parse("query:ping").unwrap(), 4)
            .await
            .unwrap();
        let params = QueryParams {
            name: "ping".into(),
            request_ack: true,
            timeout: Some(Duration::from_secs(5)),
            ..QueryParams::default()
        };
        let mut answers = handle.query(params).await.unwrap();
        let event = queries.events.recv().await.unwrap();
        let Event::Query(query) = &*event else {
            panic!("{event:?}")
        };
        handle.respond(query.key, b"pong".to_vec()).await.unwrap();
        let again = handle
            .respond(query.key, b"again".to_vec())
            .await
            .unwrap_err();
        assert_eq!(again.to_string(), "response already sent");
        assert_eq!(
            answers.outputs.recv().await,
            Some(QueryOutput::Ack {
                from: "solo".into()
            })
        );
        assert_eq!(
            answers.outputs.recv().await,
            Some(QueryOutput::Response {
                from: "solo".into(),
                payload: b"pong".to_vec()
            })
        );
        // The only member answered: done at once, not at the 5 s deadline.
        let done = tokio::time::timeout(Duration::from_secs(3), answers.outputs.recv()).await;
        assert_eq!(done, Ok(Some(QueryOutput::Done)));
        agent.shutdown().await;
    }

    // --- Capabilities (ABI v1.1).

    fn services(capacity: usize) -> (Services, mpsc::Receiver<Command>) {
        let (commands, receiver) = mpsc::channel(capacity);
        let services = Services {
            jobs: Jobs::open(None, 1).expect("jobs in memory need no files"),
            commands,
            drops: Arc::default(),
            members: Arc::new(MemberSnapshot::for_plugins(&[])),
            limits: serf_core::SerfLimits::SERF,
            next_query_handle: AtomicU32::new(0),
            answered: AnsweredQueries::default(),
        };
        (services, receiver)
    }

    fn request(name: &str, payload: &[u8]) -> abi::QueryRequest {
        abi::QueryRequest {
            name: name.into(),
            payload: payload.to_vec(),
            ..abi::QueryRequest::default()
        }
    }

    #[test]
    fn plugin_events_and_queries_are_checked_then_queued_without_waiting() {
        let (services, mut queued) = services(2);
        let event = |payload: &[u8]| abi::FireEvent {
            name: "deploy".into(),
            payload: payload.to_vec(),
            coalesce: false,
        };
        assert_eq!(
            services.fire_event("p", event(&[0; 512])),
            Err(Status::TooLarge)
        );
        assert_eq!(
            services.query("p", request("_serf_ping", b"")),
            Err(Status::BadArgument)
        );
        assert_eq!(
            services.query("p", request("q", &[0; 1024])),
            Err(Status::TooLarge)
        );
        assert_eq!(services.fire_event("p", event(b"v1")), Ok(()));
        assert_eq!(
            services.query("p", request("q", b"")),
            Ok(1),
            "refusals take no handle"
        );
        // The queue holds two: the next request is refused at once, not awaited.
        assert_eq!(
            services.fire_event("p", event(b"v2")),
            Err(Status::Unavailable)
        );
        assert!(matches!(
            queued.try_recv(),
            Ok(Command::PluginUserEvent { .. })
        ));
        assert!(matches!(
            queued.try_recv(),
            Ok(Command::PluginQuery { handle: 1, .. })
        ));
    }

    #[test]
    fn the_member_list_is_built_only_once_someone_reads_it() {
        let snapshot = MemberSnapshot::for_plugins(&[]);
        assert!(!snapshot.wanted.load(Ordering::Relaxed));
        assert!(snapshot.read().is_none(), "nothing built yet");
        assert!(snapshot.wanted.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn plugins_granted_members_read_the_agents_member_list() {
        let agent = agent().await;
        let snapshot = Arc::new(MemberSnapshot::for_plugins(&[]));
        let mut writer = MemberSnapshotWriter::new(Arc::clone(&snapshot));
        let handle = agent.handle();
        // The core lives on the agent task; build the list from a core of our own instead.
        let config = serf_config(handle.config(), handle.gossip_addr());
        let core = Serf::new(config, 1, Instant::now().into_std());
        writer.refresh(Instant::now(), &core);
        assert!(snapshot.read().is_none(), "not wanted, not built");
        writer.refresh(Instant::now(), &core);
        let list: abi::MemberList = abi::decode(&snapshot.read().unwrap()).unwrap();
        assert_eq!(list.members.len(), 1);
        assert_eq!(list.members[0].name, "solo");
        assert_eq!(list.members[0].status, "alive");
        agent.shutdown().await;
    }
}
