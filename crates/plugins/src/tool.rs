//! `serf plugin check` and `serf plugin run`: a plugin examined, and run against one synthetic
//! event or a sequence of them in one instance, on this machine with no agent.
//!
//! Both use the agent's own code: [`Engine`] validates and compiles the module, [`Instance`]
//! runs it under the same limits and host functions. Host services are local stand-ins
//! ([`LocalServices`]): a one-member cluster, and events, queries and responses recorded
//! instead of sent. The plugin's log lines (target `plugin`) are captured on the calling thread.
//! This module returns reports; printing them is the CLI's job. Both functions block.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serf_plugin_sdk::abi::{self, Capability, Status};
use tracing_subscriber::layer::SubscriberExt as _;
use wasmtime::ExternType;

use super::engine::{CompileBudget, LoadedModule};
use super::instance::{CallError, Instance, InstanceContext};
use super::{Engine, EventFilter, Grants, HostServices, Limits, LoadError, PluginSpec};
use serf_core::QueryKey;

/// The node name a local run pretends to be.
pub const LOCAL_NODE: &str = "local";
/// How long the synthetic query's sender waits, for its `deadline_ms`.
const QUERY_TIMEOUT: Duration = Duration::from_secs(15);
/// Serf's default limit on an encoded query response, in bytes.
const RESPONSE_LIMIT: usize = 1024;

/// Why a plugin could not be checked or run at all.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The module failed to load or validate, as it would in the agent.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The `--event` is not one this tool can make up.
    #[error(
        "invalid event {0:?}: use member-join, member-leave, member-failed, member-update, \
         member-reap, user:NAME or query:NAME"
    )]
    BadEvent(String),
    /// The local runtime could not start.
    #[error("cannot start a runtime: {0}")]
    Runtime(String),
    /// A sequence file that cannot be read as one.
    #[error("invalid sequence: {0}")]
    BadSequence(String),
}

/// One line the plugin logged (through `serf.log`, stdout or stderr, or the host about it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// `trace` to `error`.
    pub level: tracing::Level,
    /// The text.
    pub text: String,
}

/// How one call into the plugin went.
#[derive(Debug, Clone)]
pub struct CallReport {
    /// `Err` says why it failed (a refusal with the plugin's text, or a trap).
    pub result: Result<(), CallError>,
    /// Fuel burnt; `None` where the host does not count it (start-up).
    pub fuel: Option<u64>,
    /// Wall-clock time.
    pub time: Duration,
}

/// A `serf` import of the module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerfImport {
    /// Its name, e.g. `log`, `members`.
    pub name: String,
    /// The capability the plugin's table must grant for it to work.
    pub capability: Option<Capability>,
}

/// What `serf plugin check` found.
#[derive(Debug)]
pub struct CheckReport {
    /// The file.
    pub path: PathBuf,
    /// Its size, in bytes.
    pub size_bytes: u64,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// Validation and compilation time.
    pub compile_time: Duration,
    /// The ABI version its marker export names.
    pub abi_version: u32,
    /// Every export: name and type (`(i32) -> (i32)`, `memory`).
    pub exports: Vec<(String, String)>,
    /// Its `serf` imports.
    pub serf_imports: Vec<SerfImport>,
    /// Its `wasi_snapshot_preview1` imports.
    pub wasi_imports: Vec<String>,
    /// Start-up (`_initialize`, `serf_init` with an empty config, no grants).
    pub init: CallReport,
    /// What it logged while starting.
    pub logs: Vec<LogLine>,
}

impl CheckReport {
    /// The capabilities its imports need, in documentation order.
    pub fn capabilities(&self) -> Vec<Capability> {
        let mut needed: Vec<Capability> = self
            .serf_imports
            .iter()
            .filter_map(|import| import.capability)
            .collect();
        needed.sort();
        needed.dedup();
        needed
    }
}

/// A synthetic event for `serf plugin run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyntheticEvent {
    /// `member-join` and the other member events, about the local node.
    Member(String),
    /// `user:NAME`.
    User(String),
    /// `query:NAME`.
    Query(String),
}

impl SyntheticEvent {
    /// Parses `member-join`, ..., `user:NAME`, `query:NAME`.
    pub fn parse(text: &str) -> Result<SyntheticEvent, ToolError> {
        const MEMBER_EVENTS: [&str; 5] = [
            "member-join",
            "member-leave",
            "member-failed",
            "member-update",
            "member-reap",
        ];
        match text.split_once(':') {
            Some(("user", name)) if !name.is_empty() => Ok(SyntheticEvent::User(name.to_owned())),
            Some(("query", name)) if !name.is_empty() => Ok(SyntheticEvent::Query(name.to_owned())),
            None if MEMBER_EVENTS.contains(&text) => Ok(SyntheticEvent::Member(text.to_owned())),
            _ => Err(ToolError::BadEvent(text.to_owned())),
        }
    }

    fn to_abi(&self, payload: &[u8], key: QueryKey) -> abi::Event {
        match self {
            SyntheticEvent::Member(kind) => {
                let members = vec![local_member()];
                match kind.as_str() {
                    "member-leave" => abi::Event::MemberLeave { members },
                    "member-failed" => abi::Event::MemberFailed { members },
                    "member-update" => abi::Event::MemberUpdate { members },
                    "member-reap" => abi::Event::MemberReap { members },
                    _ => abi::Event::MemberJoin { members },
                }
            }
            SyntheticEvent::User(name) => abi::Event::User(abi::UserEvent {
                name: name.clone(),
                payload: payload.to_vec(),
                ltime: 1,
                coalesce: false,
            }),
            SyntheticEvent::Query(name) => {
                let deadline = SystemTime::now() + QUERY_TIMEOUT;
                let deadline_ms = deadline
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                abi::Event::Query(abi::Query {
                    id: key.id,
                    name: name.clone(),
                    payload: payload.to_vec(),
                    ltime: key.ltime,
                    source_node: LOCAL_NODE.to_owned(),
                    deadline_ms,
                })
            }
        }
    }
}

/// What `serf plugin run` runs with.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The event to hand the plugin.
    pub event: SyntheticEvent,
    /// Its payload (user events and queries).
    pub payload: Vec<u8>,
    /// The plugin's `config` table.
    pub config: BTreeMap<String, rmpv::Value>,
    /// Capabilities and environment variables granted.
    pub grants: Grants,
    /// Directories granted: guest path → host directory.
    pub dirs: BTreeMap<String, PathBuf>,
    /// Fuel for the event (default: the agent's default).
    pub fuel: Option<u64>,
}

/// What `serf plugin run` saw.
#[derive(Debug)]
pub struct RunReport {
    /// Start-up: `_initialize` and `serf_init`.
    pub init: CallReport,
    /// The event; `None` if the plugin did not start.
    pub event: Option<CallReport>,
    /// Every line logged, start-up included, in order.
    pub logs: Vec<LogLine>,
    /// The answer to a `query:NAME` event.
    pub response: Option<Vec<u8>>,
    /// User events the plugin fired.
    pub fired: Vec<abi::FireEvent>,
    /// Queries the plugin sent, with their handles.
    pub queries: Vec<(u32, abi::QueryRequest)>,
    /// Each sent query ends with a `query-done` event, handed to the plugin after the event.
    pub query_done: Vec<CallReport>,
}

impl RunReport {
    /// Whether start-up and the event (and any `query-done`) succeeded.
    pub fn is_ok(&self) -> bool {
        self.init.result.is_ok()
            && self
                .event
                .as_ref()
                .is_some_and(|event| event.result.is_ok())
            && self.query_done.iter().all(|done| done.result.is_ok())
    }
}

/// The stand-in for the agent: one member, and calls recorded instead of sent.
#[derive(Default)]
pub struct LocalServices {
    recorded: Mutex<Recorded>,
}

#[derive(Default)]
struct Recorded {
    response: Option<Vec<u8>>,
    fired: Vec<abi::FireEvent>,
    queries: Vec<(u32, abi::QueryRequest)>,
}

impl LocalServices {
    fn recorded(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.recorded.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl HostServices for LocalServices {
    fn respond(&self, _plugin: &str, _query: QueryKey, payload: Vec<u8>) -> Result<(), Status> {
        self.recorded().response = Some(payload);
        Ok(())
    }

    fn members(&self) -> Option<Arc<[u8]>> {
        let list = abi::MemberList {
            members: vec![local_member()],
        };
        Some(Arc::from(abi::encode(&list)))
    }

    fn fire_event(&self, _plugin: &str, event: abi::FireEvent) -> Result<(), Status> {
        self.recorded().fired.push(event);
        Ok(())
    }

    fn query(&self, _plugin: &str, request: abi::QueryRequest) -> Result<u32, Status> {
        let mut recorded = self.recorded();
        let handle = u32::try_from(recorded.queries.len() + 1).map_err(|_| Status::TooLarge)?;
        recorded.queries.push((handle, request));
        Ok(handle)
    }
}

/// The only member of a local run.
fn local_member() -> abi::Member {
    abi::Member {
        name: LOCAL_NODE.to_owned(),
        addr: "127.0.0.1".to_owned(),
        port: 7946,
        tags: BTreeMap::new(),
        status: "alive".to_owned(),
    }
}

/// Validates `path` as the agent would (under `budget`: a file too large, or a compilation
/// too long or too large, is refused as the agent refuses it), lists what it exports and
/// imports, and starts it once with an empty config and no grants.
pub fn check(path: &Path, budget: CompileBudget) -> Result<CheckReport, ToolError> {
    let engine = Engine::new(None).with_budget(budget);
    let bytes = engine.read(path)?;
    let size_bytes = bytes.len() as u64;
    let started = Instant::now();
    let loaded = engine.load(path, &bytes)?;
    let compile_time = started.elapsed();
    let module = loaded.pre.module();
    let exports = module
        .exports()
        .map(|export| (export.name().to_owned(), describe(&export.ty())))
        .collect();
    let mut serf_imports = Vec::new();
    let mut wasi_imports = Vec::new();
    // Each import once: Go modules import `fd_write` (and others) more than once.
    for import in module.imports() {
        if import.module() == abi::IMPORT_MODULE {
            if !serf_imports
                .iter()
                .any(|known: &SerfImport| known.name == import.name())
            {
                serf_imports.push(SerfImport {
                    name: import.name().to_owned(),
                    capability: Capability::of_import(import.name()),
                });
            }
        } else if !wasi_imports.iter().any(|known| known == import.name()) {
            wasi_imports.push(import.name().to_owned());
        }
    }
    let spec = local_spec(path, Grants::default(), BTreeMap::new(), None);
    let services = Arc::new(LocalServices::default());
    let (init, logs) = with_captured_logs(|sink| {
        block_on(async {
            let (init, instance) = start(&loaded, &spec, &services, BTreeMap::new()).await;
            if let Some(instance) = instance {
                instance.shutdown().await;
            }
            (init, drain(sink))
        })
    })?;
    Ok(CheckReport {
        path: path.to_path_buf(),
        size_bytes,
        sha256: loaded.sha256.clone(),
        compile_time,
        abi_version: abi::ABI_VERSION,
        exports,
        serf_imports,
        wasi_imports,
        init,
        logs,
    })
}

/// Loads `path`, starts it with `options`' config and grants, and hands it the synthetic event;
/// then a `query-done` for each query it sent.
pub fn run(path: &Path, options: &RunOptions) -> Result<RunReport, ToolError> {
    let spec = local_spec(
        path,
        options.grants.clone(),
        options.dirs.clone(),
        options.fuel,
    );
    let step = Step {
        event: options.event.clone(),
        payload: options.payload.clone(),
    };
    let report = run_sequence(path, &spec, options.config.clone(), &[step])?;
    let mut logs = report.init_logs;
    let Some(step) = report.steps.into_iter().next() else {
        return Ok(RunReport {
            init: report.init,
            event: None,
            logs,
            response: None,
            fired: Vec::new(),
            queries: Vec::new(),
            query_done: Vec::new(),
        });
    };
    logs.extend(step.logs);
    Ok(RunReport {
        init: report.init,
        event: Some(step.call),
        logs,
        response: step.response,
        fired: step.fired,
        queries: step.queries,
        query_done: step.query_done,
    })
}

/// The most events a sequence file may hold.
pub const MAX_STEPS: usize = 10_000;

/// One event of a sequence for `serf plugin run --sequence`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The event.
    pub event: SyntheticEvent,
    /// Its payload (user events and queries).
    pub payload: Vec<u8>,
}

/// A step as a sequence file writes it: `{"event": "user:deploy", "payload": "v1"}`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StepText {
    event: String,
    #[serde(default)]
    payload: String,
}

/// A TOML sequence file: `[[event]]` tables.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SequenceToml {
    #[serde(default)]
    event: Vec<StepText>,
}

impl Step {
    fn from_text(text: StepText) -> Result<Step, ToolError> {
        Ok(Step {
            event: SyntheticEvent::parse(&text.event)?,
            payload: text.payload.into_bytes(),
        })
    }
}

/// Parses a sequence file: TOML (`[[event]]` tables, each with `event` and an optional
/// `payload`) when `toml` is set, else JSON lines (one such object a line; blank lines and
/// lines starting with `#` are skipped). Errors name the line or the entry.
pub fn parse_sequence(text: &str, toml: bool) -> Result<Vec<Step>, ToolError> {
    let bad =
        |place: String, message: String| ToolError::BadSequence(format!("{place}: {message}"));
    let steps = if toml {
        let file: SequenceToml =
            toml::from_str(text).map_err(|error| bad("TOML".into(), error.to_string()))?;
        if file.event.len() > MAX_STEPS {
            return Err(bad("TOML".into(), format!("more than {MAX_STEPS} events")));
        }
        file.event
            .into_iter()
            .enumerate()
            .map(|(index, step)| {
                Step::from_text(step)
                    .map_err(|error| bad(format!("event {}", index + 1), error.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?
    } else {
        let mut steps = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let place = || format!("line {}", index + 1);
            if steps.len() == MAX_STEPS {
                return Err(bad(place(), format!("more than {MAX_STEPS} events")));
            }
            let step: StepText =
                serde_json::from_str(line).map_err(|error| bad(place(), error.to_string()))?;
            steps.push(Step::from_text(step).map_err(|error| bad(place(), error.to_string()))?);
        }
        steps
    };
    if steps.is_empty() {
        return Err(ToolError::BadSequence("no events".into()));
    }
    Ok(steps)
}

/// How one step of a sequence went.
#[derive(Debug)]
pub struct StepReport {
    /// The step.
    pub step: Step,
    /// The call.
    pub call: CallReport,
    /// What the plugin logged during the step (its `query-done` calls included).
    pub logs: Vec<LogLine>,
    /// Its answer, for a query.
    pub response: Option<Vec<u8>>,
    /// User events it fired.
    pub fired: Vec<abi::FireEvent>,
    /// Queries it sent, with their handles.
    pub queries: Vec<(u32, abi::QueryRequest)>,
    /// The `query-done` events for those queries, handed to it after the step.
    pub query_done: Vec<CallReport>,
}

impl StepReport {
    /// Whether the event and any `query-done` succeeded.
    pub fn is_ok(&self) -> bool {
        self.call.result.is_ok() && self.query_done.iter().all(|done| done.result.is_ok())
    }
}

/// What `serf plugin run --sequence` saw.
#[derive(Debug)]
pub struct SequenceReport {
    /// Start-up: `_initialize` and `serf_init`.
    pub init: CallReport,
    /// What the plugin logged while starting.
    pub init_logs: Vec<LogLine>,
    /// The steps run, in order: all of them, unless one trapped (the instance is gone then,
    /// as it would be in the agent, and the sequence ends there).
    pub steps: Vec<StepReport>,
    /// How many steps the sequence had.
    pub total: usize,
}

impl SequenceReport {
    /// Whether start-up and every step succeeded.
    pub fn is_ok(&self) -> bool {
        self.init.result.is_ok()
            && self.steps.len() == self.total
            && self.steps.iter().all(StepReport::is_ok)
    }
}

/// Whether the instance survives `call`: a refusal keeps it, a trap ends it.
fn survives(call: &CallReport) -> bool {
    matches!(call.result, Ok(()) | Err(CallError::Refused { .. }))
}

/// Loads `path` and runs `steps` in order on one instance started with `spec`'s grants, limits
/// and directories and `config` as its config table, as the agent would: state carries from
/// event to event. After each step, a `query-done` for each query the step sent.
pub fn run_sequence(
    path: &Path,
    spec: &PluginSpec,
    config: BTreeMap<String, rmpv::Value>,
    steps: &[Step],
) -> Result<SequenceReport, ToolError> {
    let loaded = Engine::new(None).load_file(path)?;
    super::dispatch::prepare_dirs(spec)?;
    let services = Arc::new(LocalServices::default());
    with_captured_logs(|sink| {
        block_on(async {
            let (init, instance) = start(&loaded, spec, &services, config).await;
            let init_logs = drain(sink);
            let mut reports = Vec::new();
            let Some(mut instance) = instance else {
                return SequenceReport {
                    init,
                    init_logs,
                    steps: reports,
                    total: steps.len(),
                };
            };
            let mut seq = 0;
            let mut alive = true;
            for (number, step) in (1..).zip(steps) {
                seq += 1;
                let key = QueryKey {
                    ltime: number,
                    id: u32::try_from(number).unwrap_or(u32::MAX),
                };
                let event = step.event.to_abi(&step.payload, key);
                let query = matches!(step.event, SyntheticEvent::Query(_)).then_some(key);
                let call = deliver(&mut instance, seq, &event, query).await;
                alive = survives(&call);
                let sent = std::mem::take(&mut services.recorded().queries);
                let mut query_done = Vec::new();
                for (handle, request) in &sent {
                    if !alive {
                        break;
                    }
                    seq += 1;
                    let done = abi::Event::QueryDone(abi::QueryDone {
                        query: *handle,
                        name: request.name.clone(),
                        error: String::new(),
                    });
                    let report = deliver(&mut instance, seq, &done, None).await;
                    alive = survives(&report);
                    query_done.push(report);
                }
                let mut recorded = std::mem::take(&mut *services.recorded());
                // A query-done may send queries of its own: they are reported, not answered.
                let mut queries = sent;
                queries.append(&mut recorded.queries);
                reports.push(StepReport {
                    step: step.clone(),
                    call,
                    logs: drain(sink),
                    response: recorded.response,
                    fired: recorded.fired,
                    queries,
                    query_done,
                });
                if !alive {
                    break;
                }
            }
            if alive {
                instance.shutdown().await;
            }
            SequenceReport {
                init,
                init_logs,
                steps: reports,
                total: steps.len(),
            }
        })
    })
}

/// The plugin's settings for a local run: named after the file, default limits, the grants given.
pub fn local_spec(
    path: &Path,
    grants: Grants,
    dirs: BTreeMap<String, PathBuf>,
    fuel: Option<u64>,
) -> PluginSpec {
    let name = path.file_stem().map_or_else(
        || "plugin".to_owned(),
        |stem| stem.to_string_lossy().into_owned(),
    );
    let mut limits = Limits::DEFAULT;
    if let Some(fuel) = fuel {
        limits.fuel_per_event = fuel;
    }
    PluginSpec {
        name,
        path: path.to_path_buf(),
        filter: EventFilter::all(),
        limits,
        dirs,
        config: toml::Table::new(),
        grants,
    }
}

/// Starts an instance as the agent does, with `config` as its `config` table.
async fn start(
    loaded: &LoadedModule,
    spec: &PluginSpec,
    services: &Arc<LocalServices>,
    config: BTreeMap<String, rmpv::Value>,
) -> (CallReport, Option<Instance>) {
    let context = Arc::new(InstanceContext {
        plugin: Arc::from(spec.name.as_str()),
        node: Arc::from(LOCAL_NODE),
        services: Arc::clone(services) as Arc<dyn HostServices>,
        response_limit: RESPONSE_LIMIT,
        rates: Arc::default(),
    });
    let init = abi::encode(&abi::InitContext {
        abi: abi::ABI_VERSION,
        host: format!("serf/{}", env!("CARGO_PKG_VERSION")),
        node: LOCAL_NODE.to_owned(),
        plugin: spec.name.clone(),
        config,
    });
    let started = Instant::now();
    let outcome = Instance::start(loaded, spec, context, &init).await;
    let time = started.elapsed();
    match outcome {
        Ok(instance) => (
            CallReport {
                result: Ok(()),
                fuel: None,
                time,
            },
            Some(instance),
        ),
        Err(error) => (
            CallReport {
                result: Err(error),
                fuel: None,
                time,
            },
            None,
        ),
    }
}

/// Hands one event to the instance in an envelope numbered `seq`.
async fn deliver(
    instance: &mut Instance,
    seq: u64,
    event: &abi::Event,
    query: Option<QueryKey>,
) -> CallReport {
    let envelope = abi::encode(&abi::Envelope {
        v: abi::ABI_VERSION,
        seq,
        event: event.clone(),
    });
    let started = Instant::now();
    let outcome = instance.handle(&[], &envelope, query).await;
    let time = started.elapsed();
    match outcome {
        Ok(cost) => CallReport {
            result: Ok(()),
            fuel: Some(cost.fuel),
            time,
        },
        Err(error) => CallReport {
            result: Err(error),
            fuel: None,
            time,
        },
    }
}

/// A wasmtime extern type as `(i32, i32) -> (i32)`, `memory`, `global`, `table`.
fn describe(ty: &ExternType) -> String {
    match ty {
        ExternType::Func(func) => {
            let list = |types: Vec<String>| types.join(", ");
            let params = list(func.params().map(|t| t.to_string()).collect());
            let results = list(func.results().map(|t| t.to_string()).collect());
            format!("({params}) -> ({results})")
        }
        ExternType::Memory(_) => "memory".to_owned(),
        ExternType::Global(_) => "global".to_owned(),
        ExternType::Table(_) => "table".to_owned(),
        ExternType::Tag(_) => "tag".to_owned(),
    }
}

/// Runs `work` on a single-threaded runtime on this thread, so the log capture sees it all.
fn block_on<T>(work: impl std::future::Future<Output = T>) -> Result<T, ToolError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| ToolError::Runtime(error.to_string()))?;
    Ok(runtime.block_on(work))
}

/// Where the plugin's lines collect while they are captured.
type LogSink = Arc<Mutex<Vec<LogLine>>>;

/// The lines captured so far, taken out of `sink`.
fn drain(sink: &LogSink) -> Vec<LogLine> {
    std::mem::take(&mut *sink.lock().unwrap_or_else(PoisonError::into_inner))
}

/// Runs `work` with every `plugin`-target event on this thread captured into the sink it gets.
fn with_captured_logs<T>(
    work: impl FnOnce(&LogSink) -> Result<T, ToolError>,
) -> Result<T, ToolError> {
    let lines = LogSink::default();
    let subscriber = tracing_subscriber::registry().with(Capture {
        lines: Arc::clone(&lines),
    });
    tracing::subscriber::with_default(subscriber, || work(&lines))
}

/// A tracing layer that keeps the plugin's lines.
struct Capture {
    lines: Arc<Mutex<Vec<LogLine>>>,
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() != "plugin" {
            return;
        }
        let mut text = Text::default();
        event.record(&mut text);
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(LogLine {
                level: *event.metadata().level(),
                text: text.0,
            });
    }
}

/// An event's message, then its other fields except `plugin` as `key=value`.
#[derive(Default)]
struct Text(String);

impl tracing::field::Visit for Text {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.0.insert_str(0, &format!("{value:?}")),
            "plugin" => {}
            name => self.0.push_str(&format!(" {name}={value:?}")),
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            "message" => self.0.insert_str(0, value),
            "plugin" => {}
            name => self.0.push_str(&format!(" {name}={value}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plugin in WAT: `serf_handle` calls the import that config key `op` names (`m`
    /// members, `s` members with a 2-byte buffer, `f` fire_event, `q` query) and returns what
    /// it returned, so the status arrives as [`CallError::Refused`]'s code (or `Ok` for 0).
    const CALLER: &str = r#"(module
        (import "serf" "members" (func $members (param i32 i32) (result i32)))
        (import "serf" "fire_event" (func $fire (param i32 i32) (result i32)))
        (import "serf" "query" (func $query (param i32 i32) (result i32)))
        (memory (export "memory") 1)
        ;; fire_event {name: "e", payload: bin "", coalesce: false}
        (data (i32.const 2048) "\83\a4name\a1e\a7payload\c4\00\a8coalesce\c2")
        ;; query {name: "q", payload: bin "", filter_nodes: [], filter_tags: {}, timeout_ms: 0}
        (data (i32.const 3072) "\85\a4name\a1q\a7payload\c4\00\acfilter_nodes\90\abfilter_tags\80\aatimeout_ms\00")
        (global $op (mut i32) (i32.const 0))
        (func (export "serf_plugin_abi_v1"))
        (func (export "serf_input_buffer") (param i32) (result i32) i32.const 1024)
        ;; The config {op: "x"} comes last in the init context: its last byte is the op.
        (func (export "serf_init") (param $ptr i32) (param $len i32) (result i32)
            (global.set $op (i32.load8_u (i32.sub (i32.add (local.get $ptr) (local.get $len)) (i32.const 1))))
            i32.const 0)
        (func (export "serf_handle") (param i32 i32) (result i32)
            (if (i32.eq (global.get $op) (i32.const 109))
                (then (return (call $members (i32.const 4096) (i32.const 4096)))))
            (if (i32.eq (global.get $op) (i32.const 115))
                (then (return (call $members (i32.const 4096) (i32.const 2)))))
            (if (i32.eq (global.get $op) (i32.const 102))
                (then (return (call $fire (i32.const 2048) (i32.const 28)))))
            (if (i32.eq (global.get $op) (i32.const 113))
                (then (return (call $query (i32.const 3072) (i32.const 57)))))
            i32.const 0))"#;

    fn caller_wasm(dir: &Path) -> PathBuf {
        let path = dir.join("caller.wasm");
        std::fs::write(&path, wat::parse_str(CALLER).unwrap()).unwrap();
        path
    }

    /// A user event for the WAT plugin configured with `op`.
    fn user_event(op: &str, grants: Grants) -> RunOptions {
        RunOptions {
            event: SyntheticEvent::User("op".into()),
            payload: Vec::new(),
            config: BTreeMap::from([("op".to_owned(), rmpv::Value::from(op))]),
            grants,
            dirs: BTreeMap::new(),
            fuel: None,
        }
    }

    fn granted(names: &[&str]) -> Grants {
        Grants {
            capabilities: super::super::Capabilities::from_names(names).unwrap(),
            ..Grants::default()
        }
    }

    /// The code the WAT plugin returned: 0 for success.
    fn code(report: &CallReport) -> i32 {
        match &report.result {
            Ok(()) => 0,
            Err(CallError::Refused { code, .. }) => *code,
            Err(other) => panic!("{other}"),
        }
    }

    #[test]
    fn sequences_parse_from_json_lines_and_toml() {
        let user = |payload: &str| Step {
            event: SyntheticEvent::User("deploy".into()),
            payload: payload.as_bytes().to_vec(),
        };
        let ping = Step {
            event: SyntheticEvent::Query("ping".into()),
            payload: Vec::new(),
        };
        let lines = "# a comment\n{\"event\": \"user:deploy\", \"payload\": \"v1\"}\n\n\
                     {\"event\": \"query:ping\"}\n";
        assert_eq!(
            parse_sequence(lines, false).unwrap(),
            [user("v1"), ping.clone()]
        );
        let toml = "[[event]]\nevent = \"user:deploy\"\npayload = \"v1\"\n\n\
                    [[event]]\nevent = \"query:ping\"\n";
        assert_eq!(parse_sequence(toml, true).unwrap(), [user("v1"), ping]);
    }

    #[test]
    fn sequence_errors_name_the_line_or_entry() {
        let error = |text: &str, toml: bool| parse_sequence(text, toml).unwrap_err().to_string();
        let text = error(
            "{\"event\": \"member-join\"}\n{\"event\": \"dance\"}\n",
            false,
        );
        assert!(text.contains("line 2: invalid event \"dance\""), "{text}");
        let text = error("{\"event\": \"member-join\", \"extra\": 1}", false);
        assert!(text.contains("line 1: unknown field `extra`"), "{text}");
        let text = error("not json", false);
        assert!(text.starts_with("invalid sequence: line 1:"), "{text}");
        let text = error("[[event]]\nevent = \"query:\"\n", true);
        assert!(text.contains("event 1: invalid event"), "{text}");
        assert!(error("# nothing\n", false).contains("no events"));
        let many = "{\"event\": \"member-join\"}\n".repeat(MAX_STEPS + 1);
        let text = error(&many, false);
        assert!(
            text.contains(&format!("line {}: more than", MAX_STEPS + 1)),
            "{text}"
        );
    }

    /// Counts events in a global; traps (unreachable) on the second.
    const TRAPS_ON_SECOND: &str = r#"(module
        (memory (export "memory") 1)
        (global $n (mut i32) (i32.const 0))
        (func (export "serf_plugin_abi_v1"))
        (func (export "serf_input_buffer") (param i32) (result i32) i32.const 1024)
        (func (export "serf_init") (param i32 i32) (result i32) i32.const 0)
        (func (export "serf_handle") (param i32 i32) (result i32)
            (global.set $n (i32.add (global.get $n) (i32.const 1)))
            (if (i32.eq (global.get $n) (i32.const 2)) (then unreachable))
            i32.const 0))"#;

    #[test]
    fn a_sequence_runs_on_one_instance_and_ends_at_a_trap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("second.wasm");
        std::fs::write(&path, wat::parse_str(TRAPS_ON_SECOND).unwrap()).unwrap();
        let spec = local_spec(&path, Grants::default(), BTreeMap::new(), None);
        let step = Step {
            event: SyntheticEvent::Member("member-join".into()),
            payload: Vec::new(),
        };
        let steps = vec![step; 3];
        let report = run_sequence(&path, &spec, BTreeMap::new(), &steps).unwrap();
        assert!(report.init.result.is_ok(), "{:?}", report.init);
        // The global carried over from the first event: the second trapped, and the third
        // never ran, because the instance is gone.
        assert_eq!(report.total, 3);
        assert_eq!(report.steps.len(), 2, "{report:?}");
        assert!(report.steps[0].is_ok());
        assert!(report.steps[0].call.fuel.is_some());
        assert!(
            matches!(report.steps[1].call.result, Err(CallError::Panicked(_))),
            "{:?}",
            report.steps[1].call
        );
        assert!(!report.is_ok());
    }

    #[test]
    fn each_step_reports_its_own_effects() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = caller_wasm(dir.path());
        let spec = local_spec(&wasm, granted(&["events"]), BTreeMap::new(), None);
        let config = BTreeMap::from([("op".to_owned(), rmpv::Value::from("f"))]);
        let step = Step {
            event: SyntheticEvent::User("op".into()),
            payload: Vec::new(),
        };
        let report = run_sequence(&wasm, &spec, config, &[step.clone(), step]).unwrap();
        assert!(report.is_ok(), "{report:?}");
        for step in &report.steps {
            assert_eq!(step.fired.len(), 1, "{step:?}");
            assert!(step.response.is_none() && step.queries.is_empty());
        }
    }

    #[test]
    fn events_parse_as_serf_names_them() {
        assert_eq!(
            SyntheticEvent::parse("user:deploy").unwrap(),
            SyntheticEvent::User("deploy".into())
        );
        assert_eq!(
            SyntheticEvent::parse("query:upcase").unwrap(),
            SyntheticEvent::Query("upcase".into())
        );
        assert_eq!(
            SyntheticEvent::parse("member-failed").unwrap(),
            SyntheticEvent::Member("member-failed".into())
        );
        for bad in ["user", "query:", "deploy", "member-dance", "*"] {
            assert!(SyntheticEvent::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_capability_is_denied_by_default_and_logged_once() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = caller_wasm(dir.path());
        for (op, capability) in [("m", "members"), ("f", "events"), ("q", "queries")] {
            let report = run(&wasm, &user_event(op, Grants::default())).unwrap();
            let event = report.event.as_ref().unwrap();
            assert_eq!(code(event), Status::Denied.code(), "{op}");
            let denials: Vec<_> = report
                .logs
                .iter()
                .filter(|line| line.text.contains("plugin call denied"))
                .collect();
            assert_eq!(denials.len(), 1, "{:?}", report.logs);
            assert_eq!(denials[0].level, tracing::Level::WARN);
            assert!(
                denials[0]
                    .text
                    .contains(&format!("capabilities = [\"{capability}\"]")),
                "{:?}",
                denials[0]
            );
            assert!(report.fired.is_empty() && report.queries.is_empty());
        }
    }

    #[test]
    fn a_second_denial_of_the_same_capability_is_not_logged_again() {
        let grants = Grants::default();
        assert!(!grants.check("p", Capability::Events));
        let dir = tempfile::tempdir().unwrap();
        let wasm = caller_wasm(dir.path());
        // The run's spec shares `grants`' denial log, as every instance of a plugin does.
        let report = run(&wasm, &user_event("f", grants)).unwrap();
        assert_eq!(code(report.event.as_ref().unwrap()), Status::Denied.code());
        assert!(
            !report.logs.iter().any(|l| l.text.contains("denied")),
            "{:?}",
            report.logs
        );
    }

    #[test]
    fn granted_capabilities_work() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = caller_wasm(dir.path());
        let all = granted(&["members", "events", "queries"]);

        let members = run(&wasm, &user_event("m", all.clone())).unwrap();
        let expected = abi::encode(&abi::MemberList {
            members: vec![local_member()],
        });
        assert_eq!(code(members.event.as_ref().unwrap()), expected.len() as i32);

        // Too small a buffer: the needed length comes back and nothing is written.
        let small = run(&wasm, &user_event("s", all.clone())).unwrap();
        assert_eq!(code(small.event.as_ref().unwrap()), expected.len() as i32);

        let fired = run(&wasm, &user_event("f", all.clone())).unwrap();
        assert!(fired.is_ok(), "{fired:?}");
        assert_eq!(fired.fired.len(), 1);
        assert_eq!(fired.fired[0].name, "e");

        let queried = run(&wasm, &user_event("q", all)).unwrap();
        assert_eq!(code(queried.event.as_ref().unwrap()), 1, "handle 1");
        // The WAT plugin queries again while handling the query-done.
        assert_eq!(queried.queries.len(), 2);
        assert_eq!(
            queried.queries[0],
            (
                1,
                abi::QueryRequest {
                    name: "q".into(),
                    ..abi::QueryRequest::default()
                }
            )
        );
        assert_eq!(queried.query_done.len(), 1, "a query-done follows");
        assert!(
            !queried.logs.iter().any(|l| l.text.contains("denied")),
            "{:?}",
            queried.logs
        );
    }

    #[test]
    fn one_grant_does_not_open_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = caller_wasm(dir.path());
        let report = run(&wasm, &user_event("q", granted(&["members"]))).unwrap();
        assert_eq!(code(report.event.as_ref().unwrap()), Status::Denied.code());
    }

    #[test]
    fn check_lists_imports_with_their_capabilities_and_starts_the_plugin() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = caller_wasm(dir.path());
        let report = check(&wasm, CompileBudget::DEFAULT).unwrap();
        assert_eq!(report.abi_version, 1);
        assert_eq!(
            report.capabilities(),
            [Capability::Members, Capability::Events, Capability::Queries]
        );
        assert!(report.wasi_imports.is_empty());
        assert!(
            report
                .exports
                .contains(&("serf_handle".to_owned(), "(i32, i32) -> (i32)".to_owned()))
        );
        assert!(report.init.result.is_ok(), "{:?}", report.init);
    }

    #[test]
    fn check_lists_each_import_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("twice.wasm");
        let fd_write = r#"(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))"#;
        let log = r#"(import "serf" "log" (func (param i32 i32 i32) (result i32)))"#;
        let text = CALLER.replacen(
            "(memory",
            &format!("{fd_write}\n{fd_write}\n{log}\n{log}\n(memory"),
            1,
        );
        std::fs::write(&path, wat::parse_str(text).unwrap()).unwrap();
        let report = check(&path, CompileBudget::DEFAULT).unwrap();
        assert_eq!(report.wasi_imports, ["fd_write"]);
        let names: Vec<&str> = report
            .serf_imports
            .iter()
            .map(|i| i.name.as_str())
            .collect();
        assert_eq!(names, ["members", "fire_event", "query", "log"]);
    }

    #[test]
    fn check_refuses_what_the_agent_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.wasm");
        std::fs::write(&path, wat::parse_str("(module)").unwrap()).unwrap();
        let error = check(&path, CompileBudget::DEFAULT)
            .unwrap_err()
            .to_string();
        assert!(error.contains("is not a serf plugin"), "{error}");
    }
}
