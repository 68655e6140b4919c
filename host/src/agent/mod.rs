//! The agent: a thin tokio shell around the [`Serf`] core.
//!
//! One task owns the core. Everything else (the RPC server, plugins, the command line) talks
//! to it through an [`AgentHandle`]: a bounded command channel with one-shot replies. Between
//! awaits the task does bounded CPU work only: it feeds the core, drains its outputs and hands
//! events to plugin queues and event streams with `try_send`, never waiting on a consumer.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serf_plugin_sdk::abi::Status;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::logging::LogHub;
use crate::plugin::{Engine, EventFilter, HostServices, PluginHost};
use crate::serf::{
    self, Event, LamportTime, Member, QueryError, QueryKey, QueryOutput, QueryParams, RespondError,
    Serf, Tags, UserEventError,
};

/// Commands waiting for the agent task before senders must wait (RPC) or fail (plugins).
const COMMAND_QUEUE: usize = 1024;
/// How long the task sleeps when no timer is due.
const IDLE_WAKEUP: Duration = Duration::from_secs(1);
/// Answers buffered per query before further ones are dropped.
const QUERY_OUTPUT_QUEUE: usize = 1024;

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
}

/// Counters and clocks for `serf info`.
#[derive(Debug, Clone)]
pub struct AgentStats {
    /// The core's counters.
    pub serf: serf::Stats,
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
    Stats {
        reply: oneshot::Sender<AgentStats>,
    },
    SetTags {
        tags: Tags,
        reply: oneshot::Sender<()>,
    },
    Leave {
        reply: oneshot::Sender<()>,
    },
    Subscribe {
        filter: EventFilter,
        capacity: usize,
        reply: oneshot::Sender<Subscription>,
    },
}

/// What the rest of the program holds to talk to the agent. Cheap to clone.
#[derive(Clone)]
pub struct AgentHandle {
    commands: mpsc::Sender<Command>,
    plugins: Arc<PluginHost>,
    logs: LogHub,
    config: Arc<Config>,
    shutdown_requested: CancellationToken,
    respond_drops: Arc<AtomicU64>,
}

/// A running agent; [`Agent::shutdown`] stops it.
pub struct Agent {
    handle: AgentHandle,
    task: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
    plugin_runtime: Option<tokio::runtime::Runtime>,
}

impl Agent {
    /// Loads the plugins, then starts the agent task on the current runtime and the plugins on
    /// a runtime of their own.
    pub async fn start(config: Config, logs: LogHub) -> anyhow::Result<Agent> {
        use anyhow::Context as _;
        let plugin_runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("serf-plugin")
            .enable_all()
            .build()
            .context("cannot start the plugin runtime")?;
        let engine = Engine::new(config.plugin_cache_dir.clone())
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .context("cannot create the WebAssembly engine")?;
        let (commands, receiver) = mpsc::channel(COMMAND_QUEUE);
        let respond_drops = Arc::new(AtomicU64::new(0));
        let services = Arc::new(Services {
            commands: commands.clone(),
            drops: Arc::clone(&respond_drops),
        });
        let plugins = PluginHost::start(
            engine,
            config.plugins.clone(),
            &config.node_name,
            config.serf_limits,
            services,
            plugin_runtime.handle(),
        )
        .await;
        let plugins = Arc::new(plugins);
        let serf_config = serf::Config {
            limits: config.serf_limits,
            ..serf::Config::lan(
                config.node_name.clone(),
                config.advertise,
                config.tags.clone(),
            )
        };
        let core = Serf::new(serf_config, rand::random(), Instant::now().into_std());
        let stop = CancellationToken::new();
        let shell = Shell {
            core,
            plugins: Arc::clone(&plugins),
            streams: Vec::new(),
            queries: HashMap::new(),
            stream_drops: 0,
            query_output_drops: 0,
            respond_drops: Arc::clone(&respond_drops),
        };
        let span = tracing::info_span!("agent", node = %config.node_name);
        let task = tokio::spawn(tracing::Instrument::instrument(
            shell.run(receiver, stop.clone()),
            span,
        ));
        let handle = AgentHandle {
            commands,
            plugins,
            logs,
            config: Arc::new(config),
            shutdown_requested: CancellationToken::new(),
            respond_drops,
        };
        Ok(Agent {
            handle,
            task,
            stop,
            plugin_runtime: Some(plugin_runtime),
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
        self.handle.plugins.shutdown().await;
        if let Some(runtime) = self.plugin_runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl AgentHandle {
    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, AgentError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| AgentError::Closed)?;
        answer.await.map_err(|_| AgentError::Closed)
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

    /// Fires a user event; returns its Lamport time.
    pub async fn user_event(
        &self,
        name: String,
        payload: Vec<u8>,
        coalesce: bool,
    ) -> Result<LamportTime, AgentError> {
        let result = self
            .ask(|reply| Command::UserEvent {
                name,
                payload,
                coalesce,
                reply,
            })
            .await?;
        Ok(result?)
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

    /// Counters and clocks.
    pub async fn stats(&self) -> Result<AgentStats, AgentError> {
        self.ask(|reply| Command::Stats { reply }).await
    }

    /// Replaces this node's tags.
    pub async fn set_tags(&self, tags: Tags) -> Result<(), AgentError> {
        self.ask(|reply| Command::SetTags { tags, reply }).await
    }

    /// Leaves the cluster gracefully (the agent keeps running until shut down).
    pub async fn leave(&self) -> Result<(), AgentError> {
        self.ask(|reply| Command::Leave { reply }).await
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
    commands: mpsc::Sender<Command>,
    drops: Arc<AtomicU64>,
}

impl HostServices for Services {
    fn respond(&self, plugin: &str, query: QueryKey, payload: Vec<u8>) -> Result<(), Status> {
        let command = Command::Respond {
            key: query,
            payload,
            plugin: Some(Arc::from(plugin)),
            reply: None,
        };
        self.commands.try_send(command).map_err(|error| {
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
}

/// An open event stream.
struct Stream {
    filter: EventFilter,
    sender: mpsc::Sender<Arc<Event>>,
}

/// The agent task's state.
struct Shell {
    core: Serf,
    plugins: Arc<PluginHost>,
    streams: Vec<Stream>,
    queries: HashMap<QueryKey, mpsc::Sender<QueryOutput>>,
    stream_drops: u64,
    query_output_drops: u64,
    respond_drops: Arc<AtomicU64>,
}

impl Shell {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>, stop: CancellationToken) {
        tracing::info!("agent started");
        loop {
            self.drain_outputs();
            let deadline = self
                .core
                .poll_timeout()
                .map(Instant::from_std)
                .unwrap_or_else(|| Instant::now() + IDLE_WAKEUP);
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep_until(deadline) => {
                    self.core.handle_timeout(Instant::now().into_std());
                }
                command = commands.recv() => match command {
                    Some(command) => self.handle_command(command),
                    None => break,
                },
            }
        }
        tracing::info!("agent stopped");
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
            Command::Stats { reply } => {
                self.streams.retain(|stream| !stream.sender.is_closed());
                let _ = reply.send(AgentStats {
                    serf: self.core.stats(),
                    local: self.core.local_member().clone(),
                    stream_drops: self.stream_drops,
                    query_output_drops: self.query_output_drops,
                    respond_drops: self.respond_drops.load(Ordering::Relaxed),
                    num_streams: self.streams.len(),
                });
            }
            Command::SetTags { tags, reply } => {
                self.core.set_tags(now, tags);
                let _ = reply.send(());
            }
            Command::Leave { reply } => {
                tracing::info!("requesting graceful leave");
                self.core.leave(now);
                let _ = reply.send(());
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
        }
    }

    /// Hands every pending event and query answer to its consumers, without waiting.
    fn drain_outputs(&mut self) {
        while let Some(event) = self.core.poll_event() {
            log_event(&event);
            self.plugins.dispatch(&event);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AgentFlags, FileConfig};

    async fn agent() -> Agent {
        let flags = AgentFlags {
            node: Some("solo".into()),
            bind: Some("127.0.0.1".into()),
            ..AgentFlags::default()
        };
        let mut config =
            Config::resolve(FileConfig::default(), std::path::Path::new("."), &flags).unwrap();
        config.data_dir = None;
        config.plugin_cache_dir = None;
        Agent::start(config, LogHub::new()).await.unwrap()
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
    async fn a_query_is_answered_then_done_at_its_deadline() {
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
        let started = Instant::now();
        assert_eq!(answers.outputs.recv().await, Some(QueryOutput::Done));
        assert!(
            started.elapsed() >= Duration::from_secs(4),
            "done only at the deadline"
        );
        agent.shutdown().await;
    }
}
