//! The agent: a [`serf_node::Node`] with WebAssembly plugins, shell handlers, a reloadable
//! configuration and the RPC server's view of them.
//!
//! The node's task owns the Serf core; the agent sees every event on that task through its
//! [`EventSink`] (plugins' queues, shell handlers' queues, the member list plugins read, all
//! fed with `try_send`, never waiting), and runs plugins' requests (responses, user events,
//! queries) there with [`NodeHandle::try_run`], which fails at once when the agent is
//! overloaded. Everything else (the RPC server, the command line) holds an [`AgentHandle`]:
//! the node's verbs plus the plugins, jobs, handlers, logs and config.

mod live;
pub mod reload;
pub mod shell;

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use serf_plugin_sdk::abi::{self, Status};
use tokio::time::Instant;

use crate::config::{Config, Profile};
use crate::logging::LogHub;
use reload::{ReloadError, ReloadReport, Reloader, Trigger};
use serf_core::{Event, Member, QueryKey, QueryOutput, QueryParams, Serf};
use serf_node::{Context, EventSink, Node, NodeConfig, NodeHandle, TryRunError};
use serf_plugins::jobs::Jobs;
use serf_plugins::{Engine, HostServices, PluginHost};
use shell::ShellHandlers;

pub use serf_node::{LEAVE_BOUND, NodeError, NodeStats, QueryStream, Subscription, retry_join};

/// What the rest of the program holds to talk to the agent: the node's verbs (through
/// `Deref`) and the agent's own parts. Cheap to clone.
#[derive(Clone)]
pub struct AgentHandle {
    node: NodeHandle,
    jobs: Jobs,
    plugins: Arc<PluginHost>,
    handlers: Arc<ShellHandlers>,
    logs: LogHub,
    config: Arc<Config>,
    respond_drops: Arc<AtomicU64>,
    reloader: Arc<Reloader>,
}

impl Deref for AgentHandle {
    type Target = NodeHandle;

    fn deref(&self) -> &NodeHandle {
        &self.node
    }
}

/// A running agent; [`Agent::shutdown`] stops it.
pub struct Agent {
    handle: AgentHandle,
    node: Node,
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
    /// Starts loading the plugins on a runtime of their own, then starts the node on the
    /// current runtime without waiting for them.
    pub async fn start(config: Config, logs: LogHub) -> anyhow::Result<Agent> {
        use anyhow::Context as _;
        let plugin_runtime = PluginRuntime(Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("serf-plugin")
                .enable_all()
                .build()
                .context("cannot start the plugin runtime")?,
        ));
        let engine = Engine::new(config.plugin_cache_dir.clone()).with_budget(config.plugin_budget);
        let respond_drops = Arc::new(AtomicU64::new(0));
        let member_snapshot = Arc::new(MemberSnapshot::for_plugins(&config.plugins));
        // Jobs (ABI v1.1): records under `<data_dir>/jobs`, read back before any plugin runs.
        let jobs = Jobs::open(
            config.data_dir.as_ref().map(|dir| dir.join("jobs")),
            config.job_workers.get(),
        )
        .context("cannot read the job records")?;
        config.warn_plugins_without_table();
        // The node first (its sink feeds the plugins' queues, which exist from here on and
        // hold events until each plugin runs); then the plugins, which load in the
        // background: gossip and RPC answer while they compile.
        let plugins_cell = Arc::new(std::sync::OnceLock::new());
        let (sink, sink_parts) = AgentSink::new(Arc::clone(&member_snapshot));
        let node = Node::start_with(node_config(&config), Some(Box::new(sink))).await?;
        let node_handle = node.handle();
        let services = Arc::new(Services {
            jobs: jobs.clone(),
            node: node_handle.clone(),
            drops: Arc::clone(&respond_drops),
            members: Arc::clone(&member_snapshot),
            limits: config.serf_limits,
            plugins: Arc::clone(&plugins_cell),
            next_query_handle: AtomicU32::new(0),
            answered: AnsweredQueries::default(),
            effects: serf_plugins::effects::EffectHost::new(config.data_dir.as_deref()),
        });
        let effects = Arc::clone(&services.effects);
        let plugins = PluginHost::spawn(
            engine,
            config.plugins.clone(),
            &config.node_name,
            config.serf_limits,
            services.clone(),
            plugin_runtime.handle(),
        );
        let _ = plugins_cell.set(Arc::clone(&plugins));
        jobs.attach(&plugins);
        serf_plugins::timers::spawn(&effects, &plugins);
        let handlers = Arc::new(ShellHandlers::start(
            config.handlers.clone(),
            services,
            plugin_runtime.handle(),
        ));
        sink_parts.connect(Arc::clone(&plugins), Arc::clone(&handlers));
        let config = Arc::new(config);
        let live = Arc::new(live::AgentSettings {
            logs: logs.clone(),
            handlers: Arc::clone(&handlers),
            node: node_handle.clone(),
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
            node: node_handle,
            jobs,
            plugins,
            handlers,
            logs,
            config,
            respond_drops,
            reloader,
        };
        Ok(Agent {
            handle,
            node,
            plugin_runtime,
            watcher,
        })
    }

    /// A handle for the RPC server and others.
    pub fn handle(&self) -> AgentHandle {
        self.handle.clone()
    }

    /// Stops the node's task, then the plugins (each finishes its current call).
    pub async fn shutdown(mut self) {
        self.node.shutdown().await;
        self.handle.jobs.shutdown().await;
        drop(self.watcher.take());
        self.handle.plugins.shutdown().await;
        self.handle.handlers.shutdown().await;
        drop(self.plugin_runtime);
    }
}

impl AgentHandle {
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

    /// Plugin responses refused because the agent was overloaded.
    pub fn respond_drops(&self) -> u64 {
        self.respond_drops.load(Ordering::Relaxed)
    }
}

/// The agent's view of every event, on the node's task: the plugins' and shell handlers'
/// queues (after the node is up, events before that are none: nothing is joined yet) and the
/// member list plugins read.
struct AgentSink {
    parts: Arc<std::sync::OnceLock<(Arc<PluginHost>, Arc<ShellHandlers>)>>,
    members_for_plugins: MemberSnapshotWriter,
}

/// Where [`AgentSink`] learns of the plugins and handlers, once they exist.
struct SinkParts(Arc<std::sync::OnceLock<(Arc<PluginHost>, Arc<ShellHandlers>)>>);

impl SinkParts {
    fn connect(self, plugins: Arc<PluginHost>, handlers: Arc<ShellHandlers>) {
        let _ = self.0.set((plugins, handlers));
    }
}

impl AgentSink {
    fn new(member_snapshot: Arc<MemberSnapshot>) -> (AgentSink, SinkParts) {
        let parts = Arc::new(std::sync::OnceLock::new());
        let sink = AgentSink {
            parts: Arc::clone(&parts),
            members_for_plugins: MemberSnapshotWriter::new(member_snapshot),
        };
        (sink, SinkParts(parts))
    }
}

impl EventSink for AgentSink {
    fn event(&mut self, event: &Event, local: &Member) {
        if matches!(event, Event::Member(_)) {
            self.members_for_plugins.mark_stale();
        }
        if let Some((plugins, handlers)) = self.parts.get() {
            plugins.dispatch(event);
            handlers.dispatch(event, local);
        }
    }

    fn turn(&mut self, _now: std::time::Instant, core: &Serf) {
        self.members_for_plugins.refresh(Instant::now(), core);
    }
}

/// The node's settings for this agent.
fn node_config(config: &Config) -> NodeConfig {
    NodeConfig {
        serf: serf_config(config, config.advertise),
        bind: config.bind,
        snapshot_path: config.snapshot_path.clone(),
        rejoin_after_leave: config.rejoin_after_leave,
        keyring_file: config.keyring_file.clone(),
        tags_file: config.tags_file.clone(),
    }
}

/// What plugins may ask of the agent: never waits, fails when the agent is overloaded.
struct Services {
    /// The job pool (ABI v1.1).
    jobs: Jobs,
    node: NodeHandle,
    drops: Arc<AtomicU64>,
    /// The member list for plugins granted `members`.
    members: Arc<MemberSnapshot>,
    /// Serf's size limits, checked before a plugin's event or query is queued.
    limits: serf_core::SerfLimits,
    /// Where a plugin's query answers go; set once the plugins exist.
    plugins: Arc<std::sync::OnceLock<Arc<PluginHost>>>,
    /// The last query handle handed out.
    next_query_handle: AtomicU32,
    /// Queries a plugin answered: a second plugin's answer is refused at its call.
    answered: AnsweredQueries,
    /// Effects (ABI v1.2): HTTP, state under `<data_dir>/plugin-state`, ticks, metrics.
    effects: Arc<serf_plugins::effects::EffectHost>,
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

    fn effects(&self) -> Option<&Arc<serf_plugins::effects::EffectHost>> {
        Some(&self.effects)
    }

    fn respond(&self, plugin: &str, query: QueryKey, payload: Vec<u8>) -> Result<(), Status> {
        if !self.answered.claim(query) {
            return Err(Status::NotAllowed);
        }
        let name: Arc<str> = Arc::from(plugin);
        let work = move |cx: &mut Context<'_>| {
            let now = cx.now();
            if let Err(error) = cx.serf().respond(now, query, &payload) {
                tracing::warn!(plugin = %name, query_id = query.id, %error, "plugin response refused");
            }
        };
        self.node.try_run(work).map_err(|error| {
            self.answered.release(query);
            if error == TryRunError::Full {
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
        let name: Arc<str> = Arc::from(plugin);
        self.try_run(plugin, move |cx| plugin_user_event(cx, &name, &event))
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
        let name: Arc<str> = Arc::from(plugin);
        let plugins = Arc::clone(&self.plugins);
        self.try_run(plugin, move |cx| {
            plugin_query(cx, &plugins, name, handle, request)
        })?;
        Ok(handle)
    }
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
    /// Runs a plugin's request on the agent task; a full queue is `Unavailable` to the plugin.
    fn try_run(
        &self,
        plugin: &str,
        work: impl FnOnce(&mut Context<'_>) + Send + 'static,
    ) -> Result<(), Status> {
        self.node.try_run(work).map_err(|error| {
            if error == TryRunError::Full {
                tracing::warn!(plugin, "agent command queue full; plugin request refused");
            }
            Status::Unavailable
        })
    }
}

/// Fires a plugin's user event; a refusal (the agent is leaving, the encoded event is too
/// large) is logged, since the plugin's call returned already.
fn plugin_user_event(cx: &mut Context<'_>, plugin: &str, event: &abi::FireEvent) {
    let now = cx.now();
    match cx
        .serf()
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
    cx: &mut Context<'_>,
    plugins: &std::sync::OnceLock<Arc<PluginHost>>,
    plugin: Arc<str>,
    handle: u32,
    request: abi::QueryRequest,
) {
    let Some(plugins) = plugins.get() else {
        return;
    };
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
    match cx.query(params) {
        Ok(stream) => {
            tracing::debug!(%plugin, query = %name, query_id = stream.key.id, "plugin sent query");
            tokio::spawn(forward_query_answers(
                Arc::clone(plugins),
                plugin,
                handle,
                name,
                stream.outputs,
            ));
        }
        Err(error) => {
            tracing::warn!(%plugin, query = %name, %error, "plugin query refused");
            let done = abi::Event::QueryDone(abi::QueryDone {
                query: handle,
                name,
                error: error.to_string(),
            });
            deliver_to_plugin(plugins, &plugin, &done);
        }
    }
}

/// Hands the answers of a plugin's query to the plugin, as events, until the query is done.
async fn forward_query_answers(
    plugins: Arc<PluginHost>,
    plugin: Arc<str>,
    handle: u32,
    name: String,
    mut outputs: tokio::sync::mpsc::Receiver<QueryOutput>,
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
    use serf_core::filter::EventFilter;
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

    fn services(capacity: usize) -> (Services, serf_node::TaskQueue) {
        let addr = SocketAddr::from(([127, 0, 0, 1], 7946));
        let core = serf_core::Config::lan("p".into(), addr, serf_core::Tags::new());
        let (node, receiver) = NodeHandle::without_task(capacity, core);
        let services = Services {
            jobs: Jobs::open(None, 1).expect("jobs in memory need no files"),
            node,
            plugins: Arc::default(),
            drops: Arc::default(),
            members: Arc::new(MemberSnapshot::for_plugins(&[])),
            limits: serf_core::SerfLimits::SERF,
            next_query_handle: AtomicU32::new(0),
            answered: AnsweredQueries::default(),
            effects: serf_plugins::effects::EffectHost::new(None),
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
        let (services, queued) = services(2);
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
        assert_eq!(
            queued.len(),
            2,
            "the event and the query wait for the agent task"
        );
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
