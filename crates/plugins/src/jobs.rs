//! Long jobs: work a plugin starts from a handler and that runs in a separate instance of the
//! same module, on a pool of its own, so that the plugin's queue moves on at once.
//!
//! [`Table`] is the pure core: every job's [`JobRecord`] and the rules of its life (`starting`,
//! `running`, then `finished`, `failed` or `killed`; per-plugin limits; who may kill or reap
//! what). [`Jobs`] is the shell around it: it starts each job as a task on the job runtime
//! (threads named `serf-job`, built when the first job starts: never the agent's task, never a
//! plugin's event task), runs `serf_job` under the plugin's job budget (`job_fuel`,
//! `job_timeout`, `job_max_memory_mib`), kills a job by dropping its call (the same
//! cancellation that enforces the deadline, so a guest asleep in WASI stops too), and hands
//! the owner a `job-done` event through [`PluginHost::deliver_to`].
//!
//! Records are JSON files `<data_dir>/jobs/<id>.json`, written atomically (a temporary file and
//! a rename) by a writer thread fed without waiting, so neither host calls nor the agent task
//! touch the disk. [`Jobs::open`] reads them back at start; a job that was running when the
//! agent stopped becomes `failed`, saying so. Records stay until reaped (`serf jobs -reap`, or
//! the plugin's `job_reap`). Without a data directory the records live in memory only.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serf_plugin_sdk::abi::{self, JobState, Status};
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use super::PluginSpec;
use super::dispatch::PluginHost;
use super::engine::LoadedModule;
use super::instance::{Instance, InstanceContext};

/// A job's number, unique on this agent across restarts; 1 to `i32::MAX`, since the ABI
/// passes it as an `i32`.
pub type JobId = u32;

/// Records one plugin may keep, ended or not, before it must reap some to start more. With the
/// largest argument and output tail, that is about 20 MiB per plugin.
pub const MAX_RECORDS_PER_PLUGIN: usize = 256;
/// How often a running job's output tail is written to its file, at most.
const OUTPUT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// How long the agent waits for its running jobs to stop when it shuts down.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
/// The error of a job that was running when the agent stopped.
pub const AGENT_STOPPED: &str = "the agent stopped while the job was running";

/// One job, as kept in memory, written to its file and shown by `serf jobs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Its id.
    pub id: JobId,
    /// The plugin that started it, which alone receives its `job-done` event.
    pub plugin: String,
    /// The name the plugin gave it.
    pub name: String,
    /// The argument the plugin gave it (base64 in the file).
    #[serde(with = "base64_bytes")]
    pub arg: Vec<u8>,
    /// Where it is in its life.
    pub state: JobState,
    /// What `serf_job` returned when `state` is `finished`; -1 otherwise.
    pub exit_status: i32,
    /// Why it failed or was killed, or the text the job gave `set_error`.
    pub error: String,
    /// When it was started, in milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// When it ended, in milliseconds since the Unix epoch; 0 until then.
    pub ended_ms: u64,
    /// The last lines it logged (at most [`abi::MAX_JOB_OUTPUT_LINES`] and
    /// [`abi::MAX_JOB_OUTPUT_BYTES`]), oldest first.
    pub output: VecDeque<String>,
    /// For a command job (ABI v1.1, commands): the argv the agent ran; empty for a wasm job.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
}

impl JobRecord {
    /// The record as the `job_status` host call reports it.
    pub fn info(&self) -> abi::JobInfo {
        abi::JobInfo {
            id: self.id,
            name: self.name.clone(),
            state: self.state,
            exit_status: self.exit_status,
            error: self.error.clone(),
            started_ms: self.started_ms,
            ended_ms: self.ended_ms,
            output: self.output.iter().cloned().collect(),
        }
    }

    /// The event the owning plugin receives when the job ends.
    pub fn done_event(&self) -> abi::Event {
        abi::Event::JobDone(abi::JobDone {
            id: self.id,
            name: self.name.clone(),
            state: self.state,
            exit_status: self.exit_status,
            error: self.error.clone(),
        })
    }
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEnd {
    /// `serf_job` returned `status`; `error` is what it gave `set_error` (may be empty).
    Finished { status: i32, error: String },
    /// It could not start, trapped or ran out of a budget; the text says which.
    Failed(String),
    /// Someone killed it; the text says who.
    Killed(String),
}

/// Why a job operation was refused. None of these change any record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// No job has this id (or it belongs to another plugin, which is the same to a plugin).
    #[error("no job {0}")]
    NotFound(JobId),
    /// The job has not ended, so it cannot be reaped.
    #[error("job {id} has not ended ({state}): kill it first")]
    NotOver { id: JobId, state: &'static str },
    /// The job has already ended, so it cannot be killed.
    #[error("job {id} has already ended ({state})")]
    Over { id: JobId, state: &'static str },
    /// The plugin has `max_jobs` jobs that have not ended.
    #[error("plugin {plugin} already has {max} jobs running (max_jobs)")]
    TooMany { plugin: String, max: usize },
    /// The plugin keeps [`MAX_RECORDS_PER_PLUGIN`] records.
    #[error("plugin {plugin} keeps {max} job records: reap some")]
    TooManyRecords { plugin: String, max: usize },
    /// The plugin's `max_jobs` is 0.
    #[error("plugin {0} may not start jobs (max_jobs = 0)")]
    Disabled(String),
    /// The plugin's module does not export `serf_job`.
    #[error("plugin {0} does not export serf_job")]
    NoJobExport(String),
    /// The plugin is not running (it failed to load or was removed).
    #[error("plugin {0} is not running")]
    NotRunning(String),
    /// A job may not start another job.
    #[error("a job may not start jobs")]
    InsideJob,
    /// The name or argument breaks the ABI's rules.
    #[error("bad job request: {0:?}")]
    BadRequest(Status),
    /// Every id up to `i32::MAX` was used on this agent.
    #[error("job ids are exhausted")]
    IdsExhausted,
    /// The agent is stopping, or the job runtime could not start.
    #[error("the agent cannot run jobs now: {0}")]
    Unavailable(String),
}

impl JobError {
    /// The ABI status a plugin's host call returns for this refusal.
    pub fn status(&self) -> Status {
        match self {
            JobError::NotFound(_) => Status::NotFound,
            JobError::NotOver { .. }
            | JobError::Over { .. }
            | JobError::Disabled(_)
            | JobError::NoJobExport(_)
            | JobError::InsideJob => Status::NotAllowed,
            JobError::BadRequest(status) => *status,
            JobError::TooMany { .. }
            | JobError::TooManyRecords { .. }
            | JobError::NotRunning(_)
            | JobError::IdsExhausted
            | JobError::Unavailable(_) => Status::Unavailable,
        }
    }
}

/// Every job's record and the rules of their lives. Pure: time comes in as an argument, and
/// the shell writes what changed.
#[derive(Debug, Default)]
pub struct Table {
    records: BTreeMap<JobId, JobRecord>,
    /// The highest id ever given out, reaped or not.
    last_id: JobId,
}

impl Table {
    /// The table after a restart: `records` read back and the highest id given out before.
    /// Jobs that had not ended were cut off by the stop; they become `failed`. Returns the
    /// table and the ids of the records it changed.
    pub fn recover(records: Vec<JobRecord>, last_id: JobId, now_ms: u64) -> (Table, Vec<JobId>) {
        let mut table = Table {
            records: BTreeMap::new(),
            last_id,
        };
        let mut changed = Vec::new();
        for mut record in records {
            if record.id == 0 || i32::try_from(record.id).is_err() {
                continue;
            }
            if !record.state.is_over() {
                record.state = JobState::Failed;
                record.exit_status = -1;
                record.error = AGENT_STOPPED.to_owned();
                record.ended_ms = now_ms.max(record.started_ms);
                changed.push(record.id);
            }
            table.last_id = table.last_id.max(record.id);
            table.records.insert(record.id, record);
        }
        (table, changed)
    }

    /// Records a new job of `plugin` in state `starting`. `request` must have passed
    /// [`abi::JobStart::check`]. Refused when the plugin has `max_jobs` jobs that have not
    /// ended, or keeps [`MAX_RECORDS_PER_PLUGIN`] records.
    pub fn start(
        &mut self,
        plugin: &str,
        request: abi::JobStart,
        max_jobs: usize,
        now_ms: u64,
    ) -> Result<&JobRecord, JobError> {
        if max_jobs == 0 {
            return Err(JobError::Disabled(plugin.to_owned()));
        }
        let (mut active, mut kept) = (0, 0);
        for record in self.records.values().filter(|r| r.plugin == plugin) {
            kept += 1;
            if !record.state.is_over() {
                active += 1;
            }
        }
        if active >= max_jobs {
            return Err(JobError::TooMany {
                plugin: plugin.to_owned(),
                max: max_jobs,
            });
        }
        if kept >= MAX_RECORDS_PER_PLUGIN {
            return Err(JobError::TooManyRecords {
                plugin: plugin.to_owned(),
                max: MAX_RECORDS_PER_PLUGIN,
            });
        }
        let id = self
            .last_id
            .checked_add(1)
            .filter(|&id| i32::try_from(id).is_ok())
            .ok_or(JobError::IdsExhausted)?;
        self.last_id = id;
        let record = JobRecord {
            id,
            plugin: plugin.to_owned(),
            name: request.name,
            arg: request.arg,
            state: JobState::Starting,
            exit_status: -1,
            error: String::new(),
            started_ms: now_ms,
            ended_ms: 0,
            output: VecDeque::new(),
            command: Vec::new(),
        };
        Ok(self.records.entry(id).or_insert(record))
    }

    /// Records the argv of a command job.
    pub fn set_command(&mut self, id: JobId, argv: Vec<String>) {
        if let Some(record) = self.records.get_mut(&id) {
            record.command = argv;
        }
    }

    /// `starting` → `running`; `None` if the job is not starting (it ended meanwhile).
    pub fn set_running(&mut self, id: JobId) -> Option<&JobRecord> {
        let record = self.records.get_mut(&id)?;
        if record.state != JobState::Starting {
            return None;
        }
        record.state = JobState::Running;
        Some(record)
    }

    /// Ends a job that has not ended; `None` if it has (or is unknown): an end is final.
    pub fn end(&mut self, id: JobId, end: JobEnd, now_ms: u64) -> Option<&JobRecord> {
        let record = self.records.get_mut(&id)?;
        if record.state.is_over() {
            return None;
        }
        let (state, exit_status, error) = match end {
            JobEnd::Finished { status, error } => (JobState::Finished, status, error),
            JobEnd::Failed(error) => (JobState::Failed, -1, error),
            JobEnd::Killed(error) => (JobState::Killed, -1, error),
        };
        record.state = state;
        record.exit_status = exit_status;
        record.error = error;
        record.ended_ms = now_ms.max(record.started_ms);
        Some(record)
    }

    /// Appends a line to a job's output tail, keeping the last [`abi::MAX_JOB_OUTPUT_LINES`]
    /// lines and [`abi::MAX_JOB_OUTPUT_BYTES`] bytes; lines after the job ended are ignored.
    pub fn push_output(&mut self, id: JobId, line: &str) -> Option<&JobRecord> {
        let record = self
            .records
            .get_mut(&id)
            .filter(|record| !record.state.is_over())?;
        let mut end = line.len().min(abi::MAX_JOB_OUTPUT_BYTES);
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        record.output.push_back(line[..end].to_owned());
        let mut bytes: usize = record.output.iter().map(String::len).sum();
        while record.output.len() > abi::MAX_JOB_OUTPUT_LINES || bytes > abi::MAX_JOB_OUTPUT_BYTES {
            bytes -= record.output.pop_front().map_or(0, |line| line.len());
        }
        Some(record)
    }

    /// A job's record; with `owner`, only if that plugin started it.
    pub fn get(&self, id: JobId, owner: Option<&str>) -> Result<&JobRecord, JobError> {
        self.records
            .get(&id)
            .filter(|record| owner.is_none_or(|owner| record.plugin == owner))
            .ok_or(JobError::NotFound(id))
    }

    /// Checks that a job may be killed: it exists (and belongs to `owner`) and has not ended.
    pub fn check_kill(&self, id: JobId, owner: Option<&str>) -> Result<(), JobError> {
        let record = self.get(id, owner)?;
        if record.state.is_over() {
            return Err(JobError::Over {
                id,
                state: record.state.as_str(),
            });
        }
        Ok(())
    }

    /// Deletes the records of ended jobs: job `id` (which must have ended), or with `None`
    /// every ended job (of `owner`, if given). Returns the ids deleted.
    pub fn reap(&mut self, id: Option<JobId>, owner: Option<&str>) -> Result<Vec<JobId>, JobError> {
        if let Some(id) = id {
            let record = self.get(id, owner)?;
            if !record.state.is_over() {
                return Err(JobError::NotOver {
                    id,
                    state: record.state.as_str(),
                });
            }
            self.records.remove(&id);
            return Ok(vec![id]);
        }
        let ids: Vec<JobId> = self
            .records
            .values()
            .filter(|r| r.state.is_over() && owner.is_none_or(|owner| r.plugin == owner))
            .map(|r| r.id)
            .collect();
        for id in &ids {
            self.records.remove(id);
        }
        Ok(ids)
    }

    /// Every record, by id.
    pub fn records(&self) -> impl Iterator<Item = &JobRecord> {
        self.records.values()
    }

    /// The highest id ever given out.
    pub fn last_id(&self) -> JobId {
        self.last_id
    }
}

/// What a job needs to start its own instance of its plugin: the running version's module,
/// settings, context and `serf_init` payload.
pub struct JobSource {
    /// The module.
    pub loaded: LoadedModule,
    /// The plugin's settings (the job budget among its limits).
    pub spec: PluginSpec,
    /// What every instance of the plugin shares.
    pub context: Arc<InstanceContext>,
    /// The encoded `InitContext`.
    pub init: Vec<u8>,
}

/// Marks an instance as a job's: `job_start` is refused in it, and its log lines also go to
/// the job's output tail.
#[derive(Clone)]
pub struct JobCall {
    /// The pool the job belongs to.
    pub jobs: Jobs,
    /// The job.
    pub id: JobId,
}

/// The job pool: the records, the running jobs and the threads they run on. Cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    inner: Arc<Inner>,
}

struct Inner {
    table: Mutex<Table>,
    /// Jobs that have not ended: how to stop each, and why it was stopped.
    running: Mutex<HashMap<JobId, Running>>,
    /// When each running job's output was last written.
    flushed: Mutex<HashMap<JobId, Instant>>,
    /// Woken whenever a job ends.
    ended: Notify,
    store: Option<Store>,
    plugins: OnceLock<Weak<PluginHost>>,
    runtime: OnceLock<Result<tokio::runtime::Runtime, String>>,
    workers: usize,
    stopping: CancellationToken,
}

struct Running {
    cancel: CancellationToken,
    /// Set by a kill: the error the record gets.
    reason: Option<String>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Jobs {
    /// The pool for an agent, with the records of `dir` (none: in memory only) and `workers`
    /// threads for the jobs, started with the first job. Reads and, for jobs cut off by the
    /// last stop, rewrites the records: blocking, for start-up.
    pub fn open(dir: Option<PathBuf>, workers: usize) -> std::io::Result<Jobs> {
        let (table, store) = match dir {
            None => (Table::default(), None),
            Some(dir) => {
                let (records, last_id) = load_dir(&dir)?;
                let (table, changed) = Table::recover(records, last_id, now_ms());
                for id in &changed {
                    if let Ok(record) = table.get(*id, None) {
                        tracing::warn!(job = id, plugin = %record.plugin, name = %record.name, "job was running when the agent stopped; marked failed");
                        write_record(&dir, record)?;
                    }
                }
                if table.records().next().is_some() {
                    tracing::info!(jobs = table.records().count(), dir = %dir.display(), "job records loaded");
                }
                (table, Some(Store::new(dir)))
            }
        };
        Ok(Jobs {
            inner: Arc::new(Inner {
                table: Mutex::new(table),
                running: Mutex::new(HashMap::new()),
                flushed: Mutex::new(HashMap::new()),
                ended: Notify::new(),
                store,
                plugins: OnceLock::new(),
                runtime: OnceLock::new(),
                workers: workers.max(1),
                stopping: CancellationToken::new(),
            }),
        })
    }

    /// Connects the pool to the plugins whose jobs it runs (once, after they started).
    pub fn attach(&self, plugins: &Arc<PluginHost>) {
        let _ = self.inner.plugins.set(Arc::downgrade(plugins));
    }

    fn plugins(&self) -> Option<Arc<PluginHost>> {
        self.inner.plugins.get().and_then(Weak::upgrade)
    }

    /// Starts a job of `plugin` and returns its id at once; the job runs on the pool.
    pub fn start(&self, plugin: &str, request: abi::JobStart) -> Result<JobId, JobError> {
        if self.inner.stopping.is_cancelled() {
            return Err(JobError::Unavailable("it is shutting down".into()));
        }
        request.check().map_err(JobError::BadRequest)?;
        let plugins = self
            .plugins()
            .ok_or_else(|| JobError::Unavailable("no plugins are running".into()))?;
        let source = plugins
            .job_source(plugin)
            .ok_or_else(|| JobError::NotRunning(plugin.to_owned()))?;
        if source.spec.limits.max_jobs == 0 {
            return Err(JobError::Disabled(plugin.to_owned()));
        }
        if source
            .loaded
            .pre
            .module()
            .get_export(abi::EXPORT_JOB)
            .is_none()
        {
            return Err(JobError::NoJobExport(plugin.to_owned()));
        }
        let runtime = self.runtime()?;
        let record = {
            let mut table = lock(&self.inner.table);
            table
                .start(plugin, request, source.spec.limits.max_jobs, now_ms())?
                .clone()
        };
        let cancel = self.track(record.id);
        self.save(&record);
        plugins.count_job(plugin);
        tracing::info!(plugin, job = record.id, name = %record.name, "job started");
        let job = abi::Job {
            id: record.id,
            name: record.name,
            arg: record.arg,
        };
        runtime.spawn(self.clone().run(Arc::new(source), job, cancel));
        Ok(record.id)
    }

    /// Starts a granted host command as a job of the plugin of `context` (ABI v1.1,
    /// commands) and returns its id at once. It counts against `max_jobs` like a wasm job, runs
    /// on the job runtime, and its stdout and stderr lines make its output tail.
    pub fn start_command(
        &self,
        context: &InstanceContext,
        max_jobs: usize,
        spec: super::commands::CommandSpec,
        request: abi::CommandRequest,
    ) -> Result<JobId, JobError> {
        if self.inner.stopping.is_cancelled() {
            return Err(JobError::Unavailable("it is shutting down".into()));
        }
        let plugin = &*context.plugin;
        let runtime = self.runtime()?;
        let start = abi::JobStart {
            name: request.name.clone(),
            arg: Vec::new(),
        };
        start.check().map_err(JobError::BadRequest)?;
        let record = {
            let mut table = lock(&self.inner.table);
            let record = table.start(plugin, start, max_jobs, now_ms())?;
            let id = record.id;
            table.set_command(id, spec.argv.iter().chain(&request.args).cloned().collect());
            table.set_running(id).cloned()
        };
        let Some(record) = record else {
            return Err(JobError::Unavailable(
                "the job ended before it started".into(),
            ));
        };
        let cancel = self.track(record.id);
        self.save(&record);
        if let Some(plugins) = self.plugins() {
            plugins.count_job(plugin);
        }
        tracing::info!(plugin, job = record.id, command = %request.name, argv = ?record.command, "command job started");
        let (jobs, id, counters) = (self.clone(), record.id, Arc::clone(&context.rates));
        runtime.spawn(async move {
            let started = Instant::now();
            let tail = {
                let jobs = jobs.clone();
                move |line: &str| jobs.append_output(id, line)
            };
            let run = super::commands::execute(
                &spec,
                &request.args,
                request.stdin,
                spec.timeout,
                Some(&tail as &(dyn Fn(&str) + Send + Sync)),
            );
            let end = tokio::select! {
                biased;
                () = cancel.cancelled() => jobs.cancelled_end(id),
                result = run => {
                    counters.commands.ended(&result, started.elapsed());
                    super::commands::job_end(&request.name, &result)
                }
            };
            jobs.finish(id, end);
        });
        Ok(record.id)
    }

    /// Marks job `id` as running; the token that stops it.
    fn track(&self, id: JobId) -> CancellationToken {
        let cancel = CancellationToken::new();
        lock(&self.inner.running).insert(
            id,
            Running {
                cancel: cancel.clone(),
                reason: None,
            },
        );
        cancel
    }

    /// How a job whose call was cancelled ended: killed (saying who) or stopped with the
    /// agent.
    fn cancelled_end(&self, id: JobId) -> JobEnd {
        match lock(&self.inner.running)
            .get(&id)
            .and_then(|r| r.reason.clone())
        {
            Some(reason) => JobEnd::Killed(reason),
            None => JobEnd::Failed(AGENT_STOPPED.to_owned()),
        }
    }

    /// The job runtime, built on first use.
    fn runtime(&self) -> Result<tokio::runtime::Handle, JobError> {
        let workers = self.inner.workers;
        self.inner
            .runtime
            .get_or_init(|| {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(workers)
                    .thread_name("serf-job")
                    .enable_all()
                    .build()
                    .map_err(|error| format!("cannot start the job runtime: {error}"))
            })
            .as_ref()
            .map(|runtime| runtime.handle().clone())
            .map_err(|message| JobError::Unavailable(message.clone()))
    }

    /// One job's life on the pool: its instance, `serf_job`, its end.
    async fn run(self, source: Arc<JobSource>, job: abi::Job, cancel: CancellationToken) {
        let id = job.id;
        let end = tokio::select! {
            biased;
            () = cancel.cancelled() => self.cancelled_end(id),
            end = self.execute(&source, &job) => {
                // A kill that came while the job's last host call ran is still a kill.
                match lock(&self.inner.running).get(&id).and_then(|r| r.reason.clone()) {
                    Some(reason) => JobEnd::Killed(reason),
                    None => end,
                }
            }
        };
        self.finish(id, end);
    }

    async fn execute(&self, source: &JobSource, job: &abi::Job) -> JobEnd {
        let limits = source.spec.limits;
        let mut spec = source.spec.clone();
        spec.limits.max_memory_bytes = limits.job_max_memory_bytes;
        let call = JobCall {
            jobs: self.clone(),
            id: job.id,
        };
        let started = Instance::start_job(
            &source.loaded,
            &spec,
            Arc::clone(&source.context),
            &source.init,
            call,
        )
        .await;
        let mut instance = match started {
            Ok(instance) => instance,
            Err(error) => return JobEnd::Failed(format!("cannot start: {error}")),
        };
        if let Some(record) = lock(&self.inner.table).set_running(job.id).cloned() {
            self.save(&record);
        }
        match instance
            .run_job(&abi::encode(job), limits.job_fuel, limits.job_timeout)
            .await
        {
            Ok(exit) => JobEnd::Finished {
                status: exit.status,
                error: exit.error,
            },
            Err(error) => JobEnd::Failed(error.to_string()),
        }
    }

    /// Records a job's end, writes it and tells the owning plugin.
    fn finish(&self, id: JobId, end: JobEnd) {
        let record = lock(&self.inner.table).end(id, end, now_ms()).cloned();
        lock(&self.inner.running).remove(&id);
        lock(&self.inner.flushed).remove(&id);
        self.inner.ended.notify_waiters();
        let Some(record) = record else { return };
        self.save(&record);
        tracing::info!(
            plugin = %record.plugin,
            job = id,
            name = %record.name,
            state = record.state.as_str(),
            exit_status = record.exit_status,
            error = %record.error,
            "job ended"
        );
        if self.inner.stopping.is_cancelled() {
            return;
        }
        let Some(plugins) = self.plugins() else {
            return;
        };
        if let Err(error) = plugins.deliver_to(&record.plugin, &record.done_event()) {
            tracing::warn!(plugin = %record.plugin, job = id, %error, "job-done event not delivered");
        }
    }

    /// Appends a line the job logged to its output tail (written at most once a second while
    /// it runs, and with its end).
    pub fn append_output(&self, id: JobId, line: &str) {
        let record = lock(&self.inner.table).push_output(id, line).cloned();
        let Some(record) = record else { return };
        let now = Instant::now();
        let due = {
            let mut flushed = lock(&self.inner.flushed);
            let last = flushed.entry(id).or_insert(now - OUTPUT_FLUSH_INTERVAL);
            let due = now.duration_since(*last) >= OUTPUT_FLUSH_INTERVAL;
            if due {
                *last = now;
            }
            due
        };
        if due {
            self.save(&record);
        }
    }

    /// A job's record; with `owner`, only if that plugin started it.
    pub fn get(&self, id: JobId, owner: Option<&str>) -> Result<JobRecord, JobError> {
        lock(&self.inner.table).get(id, owner).cloned()
    }

    /// Every record, by id.
    pub fn list(&self) -> Vec<JobRecord> {
        lock(&self.inner.table).records().cloned().collect()
    }

    /// Kills a job that has not ended (with `owner`, only one that plugin started). Returns
    /// at once; the job ends as `killed` as soon as its call is dropped, at its next yield.
    pub fn kill(&self, id: JobId, owner: Option<&str>) -> Result<(), JobError> {
        lock(&self.inner.table).check_kill(id, owner)?;
        let reason = match owner {
            Some(_) => "killed by the plugin",
            None => "killed through the RPC (serf jobs -kill)",
        };
        let mut running = lock(&self.inner.running);
        if let Some(job) = running.get_mut(&id) {
            job.reason.get_or_insert_with(|| reason.to_owned());
            job.cancel.cancel();
        }
        Ok(())
    }

    /// Waits until job `id` has ended, at most `timeout`; its record either way.
    pub async fn wait_ended(&self, id: JobId, timeout: Duration) -> Result<JobRecord, JobError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.ended.notified();
            let record = self.get(id, None)?;
            if record.state.is_over() {
                return Ok(record);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.get(id, None);
            }
        }
    }

    /// Deletes the records (and files) of ended jobs: job `id`, or with `None` every ended
    /// job (of `owner`, if given). Returns the ids deleted.
    pub fn reap(&self, id: Option<JobId>, owner: Option<&str>) -> Result<Vec<JobId>, JobError> {
        let reaped = lock(&self.inner.table).reap(id, owner)?;
        if let Some(store) = &self.inner.store {
            for id in &reaped {
                store.send(StoreOp::Remove(*id));
            }
        }
        Ok(reaped)
    }

    /// Stops the pool: no new jobs, running ones end as failed (the agent stopped), and every
    /// record is on disk when this returns (or after a few seconds at most).
    pub async fn shutdown(&self) {
        self.inner.stopping.cancel();
        let running: Vec<CancellationToken> = lock(&self.inner.running)
            .values()
            .map(|job| job.cancel.clone())
            .collect();
        for cancel in &running {
            cancel.cancel();
        }
        let deadline = tokio::time::Instant::now() + SHUTDOWN_WAIT;
        loop {
            let notified = self.inner.ended.notified();
            if lock(&self.inner.running).is_empty() {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                tracing::warn!("jobs still running at shutdown");
                break;
            }
        }
        if let Some(store) = &self.inner.store {
            let (done, written) = oneshot::channel();
            store.send(StoreOp::Flush(done));
            let _ = tokio::time::timeout(SHUTDOWN_WAIT, written).await;
        }
    }

    /// Jobs that have not ended.
    pub fn num_running(&self) -> usize {
        lock(&self.inner.running).len()
    }

    fn save(&self, record: &JobRecord) {
        if let Some(store) = &self.inner.store {
            store.send(StoreOp::Write(Box::new(record.clone())));
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropping a runtime inside async code would panic; the jobs are over or abandoned.
        if let Some(Ok(runtime)) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// What the writer thread does.
enum StoreOp {
    /// Writes a record (and raises `last-id` to its id).
    Write(Box<JobRecord>),
    /// Deletes a record's file.
    Remove(JobId),
    /// Answers once everything sent before is written.
    Flush(oneshot::Sender<()>),
}

/// The record files, written on a thread of their own, started with the first write.
struct Store {
    dir: PathBuf,
    sender: Mutex<Option<std::sync::mpsc::Sender<StoreOp>>>,
}

impl Store {
    fn new(dir: PathBuf) -> Store {
        Store {
            dir,
            sender: Mutex::new(None),
        }
    }

    /// Hands an operation to the writer thread. Never waits.
    fn send(&self, op: StoreOp) {
        let mut sender = lock(&self.sender);
        let op = match sender.as_ref() {
            Some(tx) => match tx.send(op) {
                Ok(()) => return,
                Err(std::sync::mpsc::SendError(op)) => op,
            },
            None => op,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let dir = self.dir.clone();
        let spawned = std::thread::Builder::new()
            .name("serf-job-store".into())
            .spawn(move || write_loop(&dir, &rx));
        match spawned {
            Ok(_) => {
                let _ = tx.send(op);
                *sender = Some(tx);
            }
            Err(error) => tracing::error!(%error, "cannot start the job record writer"),
        }
    }
}

fn write_loop(dir: &Path, ops: &std::sync::mpsc::Receiver<StoreOp>) {
    let mut last_id_written = read_last_id(dir);
    while let Ok(op) = ops.recv() {
        let result = match op {
            StoreOp::Write(record) => {
                let mut result = write_record(dir, &record);
                if result.is_ok() && record.id > last_id_written {
                    result =
                        write_atomically(&dir.join("last-id"), record.id.to_string().as_bytes());
                    if result.is_ok() {
                        last_id_written = record.id;
                    }
                }
                result
            }
            StoreOp::Remove(id) => match std::fs::remove_file(record_path(dir, id)) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
                _ => Ok(()),
            },
            StoreOp::Flush(done) => {
                let _ = done.send(());
                Ok(())
            }
        };
        if let Err(error) = result {
            tracing::warn!(dir = %dir.display(), %error, "cannot write job record");
        }
    }
}

fn record_path(dir: &Path, id: JobId) -> PathBuf {
    dir.join(format!("{id}.json"))
}

fn write_record(dir: &Path, record: &JobRecord) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    write_atomically(&record_path(dir, record.id), &bytes)
}

/// Writes through a temporary file and a rename, so a reader sees the old or the new file.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, bytes)?;
    std::fs::rename(&temp, path)
}

fn read_last_id(dir: &Path) -> JobId {
    std::fs::read_to_string(dir.join("last-id"))
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

/// Reads every record of `dir` (a missing directory has none) and the highest id given out.
/// A file that does not parse is logged and left alone.
fn load_dir(dir: &Path) -> std::io::Result<(Vec<JobRecord>, JobId)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(error) => return Err(error),
    };
    let mut records = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_none_or(|ext| ext != "json") {
            continue;
        }
        let parsed = std::fs::read(&path).and_then(|bytes| {
            serde_json::from_slice::<JobRecord>(&bytes).map_err(std::io::Error::other)
        });
        match parsed {
            Ok(record) if path == record_path(dir, record.id) => records.push(record),
            Ok(record) => {
                tracing::warn!(file = %path.display(), job = record.id, "job record file named for another id; ignored");
            }
            Err(error) => {
                tracing::warn!(file = %path.display(), %error, "unreadable job record; ignored");
            }
        }
    }
    records.sort_by_key(|record| record.id);
    Ok((records, read_last_id(dir)))
}

/// Bytes as base64 text in the JSON record.
mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use crate::{Capabilities, Grants};

    fn request(name: &str) -> abi::JobStart {
        abi::JobStart {
            name: name.to_owned(),
            arg: b"10".to_vec(),
        }
    }

    fn started(table: &mut Table, plugin: &str, name: &str) -> JobId {
        table.start(plugin, request(name), 4, 1_000).unwrap().id
    }

    #[test]
    fn a_job_moves_from_starting_to_running_to_one_end() {
        let mut table = Table::default();
        let id = started(&mut table, "longjob", "deploy");
        assert_eq!(id, 1);
        assert_eq!(table.get(id, None).unwrap().state, JobState::Starting);
        assert_eq!(table.set_running(id).unwrap().state, JobState::Running);
        assert!(
            table.set_running(id).is_none(),
            "only a starting job starts running"
        );
        table.push_output(id, "working");
        let end = JobEnd::Finished {
            status: 3,
            error: String::new(),
        };
        let record = table.end(id, end, 5_000).unwrap().clone();
        assert_eq!(
            (record.state, record.exit_status, record.ended_ms),
            (JobState::Finished, 3, 5_000)
        );
        assert_eq!(record.output, ["working"]);
        // An end is final: a late kill or failure changes nothing.
        assert!(
            table
                .end(id, JobEnd::Killed("late".into()), 6_000)
                .is_none()
        );
        assert!(table.push_output(id, "after the end").is_none());
        assert_eq!(table.get(id, None).unwrap(), &record);
    }

    #[test]
    fn killed_and_failed_jobs_have_exit_status_minus_one() {
        let mut table = Table::default();
        let a = started(&mut table, "p", "a");
        let b = started(&mut table, "p", "b");
        let killed = table.end(a, JobEnd::Killed("by test".into()), 2).unwrap();
        assert_eq!((killed.state, killed.exit_status), (JobState::Killed, -1));
        let failed = table.end(b, JobEnd::Failed("fuel".into()), 2).unwrap();
        assert_eq!(
            (failed.state, failed.error.as_str()),
            (JobState::Failed, "fuel")
        );
    }

    #[test]
    fn max_jobs_counts_only_jobs_that_have_not_ended() {
        let mut table = Table::default();
        let first = table.start("p", request("a"), 2, 0).unwrap().id;
        table.start("p", request("b"), 2, 0).unwrap();
        let error = table.start("p", request("c"), 2, 0).unwrap_err();
        assert_eq!(error.status(), Status::Unavailable);
        assert!(error.to_string().contains("max_jobs"), "{error}");
        // Another plugin has its own count.
        table.start("q", request("a"), 2, 0).unwrap();
        table.end(first, JobEnd::Killed("x".into()), 1);
        table.start("p", request("c"), 2, 0).unwrap();
        assert_eq!(
            table.start("p", request("d"), 0, 0).unwrap_err(),
            JobError::Disabled("p".into())
        );
    }

    #[test]
    fn ids_are_never_reused_after_a_reap() {
        let mut table = Table::default();
        let id = started(&mut table, "p", "a");
        table.end(id, JobEnd::Failed("x".into()), 1);
        assert_eq!(table.reap(Some(id), None).unwrap(), [id]);
        assert_eq!(started(&mut table, "p", "b"), id + 1);
    }

    #[test]
    fn owners_see_only_their_own_jobs() {
        let mut table = Table::default();
        let id = started(&mut table, "p", "a");
        assert_eq!(table.get(id, Some("q")), Err(JobError::NotFound(id)));
        assert_eq!(table.check_kill(id, Some("q")), Err(JobError::NotFound(id)));
        assert!(table.check_kill(id, Some("p")).is_ok());
        assert!(table.check_kill(id, None).is_ok());
        table.end(
            id,
            JobEnd::Finished {
                status: 0,
                error: String::new(),
            },
            1,
        );
        assert_eq!(table.reap(Some(id), Some("q")), Err(JobError::NotFound(id)));
        assert_eq!(table.reap(Some(id), Some("p")).unwrap(), [id]);
    }

    #[test]
    fn only_ended_jobs_are_reaped_and_only_running_ones_killed() {
        let mut table = Table::default();
        let running = started(&mut table, "p", "a");
        let over = started(&mut table, "q", "b");
        table.end(over, JobEnd::Killed("x".into()), 1);
        let error = table.reap(Some(running), None).unwrap_err();
        assert_eq!(error.status(), Status::NotAllowed);
        assert_eq!(
            error.to_string(),
            "job 1 has not ended (starting): kill it first"
        );
        let error = table.check_kill(over, None).unwrap_err();
        assert_eq!(error.to_string(), "job 2 has already ended (killed)");
        assert_eq!(table.reap(None, Some("p")).unwrap(), Vec::<JobId>::new());
        assert_eq!(table.reap(None, None).unwrap(), [over]);
        assert_eq!(table.records().count(), 1);
    }

    #[test]
    fn the_output_tail_keeps_the_last_lines() {
        let mut table = Table::default();
        let id = started(&mut table, "p", "a");
        for line in 0..abi::MAX_JOB_OUTPUT_LINES + 10 {
            table.push_output(id, &line.to_string());
        }
        let output = &table.get(id, None).unwrap().output;
        assert_eq!(output.len(), abi::MAX_JOB_OUTPUT_LINES);
        assert_eq!(output.front().map(String::as_str), Some("10"));
        // Long lines count in bytes too.
        let long = "é".repeat(3000);
        for _ in 0..4 {
            table.push_output(id, &long);
        }
        let output = &table.get(id, None).unwrap().output;
        let bytes: usize = output.iter().map(String::len).sum();
        assert!(bytes <= abi::MAX_JOB_OUTPUT_BYTES, "{bytes}");
        assert_eq!(output.back().map(String::as_str), Some(long.as_str()));
    }

    #[test]
    fn a_plugin_must_reap_before_keeping_too_many_records() {
        let mut table = Table::default();
        for n in 0..MAX_RECORDS_PER_PLUGIN {
            let id = started(&mut table, "p", &n.to_string());
            table.end(id, JobEnd::Failed("x".into()), 1);
        }
        let error = table.start("p", request("one more"), 4, 1).unwrap_err();
        assert!(matches!(error, JobError::TooManyRecords { .. }), "{error}");
        table.reap(None, Some("p")).unwrap();
        started(&mut table, "p", "now");
    }

    #[test]
    fn recovery_fails_the_jobs_the_stop_cut_off_and_keeps_the_rest() {
        let mut table = Table::default();
        let running = started(&mut table, "p", "a");
        table.set_running(running);
        let starting = started(&mut table, "p", "b");
        let over = started(&mut table, "p", "c");
        table.end(
            over,
            JobEnd::Finished {
                status: 7,
                error: String::new(),
            },
            2,
        );
        let records: Vec<JobRecord> = table.records().cloned().collect();
        let (recovered, changed) = Table::recover(records, 10, 9_000);
        assert_eq!(changed, [running, starting]);
        for id in [running, starting] {
            let record = recovered.get(id, None).unwrap();
            assert_eq!(
                (record.state, record.error.as_str()),
                (JobState::Failed, AGENT_STOPPED)
            );
            assert_eq!(record.ended_ms, 9_000);
        }
        assert_eq!(recovered.get(over, None).unwrap().exit_status, 7);
        // Ids go on from the highest ever given out, here the remembered one.
        assert_eq!(recovered.last_id(), 10);
    }

    #[test]
    fn records_round_trip_through_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = Table::default();
        let id = started(&mut table, "longjob", "backup");
        table.set_running(id);
        table.push_output(id, "step 1 of 3 \u{2713}");
        let mut record = table.get(id, None).unwrap().clone();
        record.arg = vec![0, 0xff, b'x'];
        write_record(dir.path(), &record).unwrap();
        write_atomically(&dir.path().join("last-id"), b"41").unwrap();
        std::fs::write(dir.path().join("junk.json"), b"{").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"ignored").unwrap();
        let (records, last_id) = load_dir(dir.path()).unwrap();
        assert_eq!(records, [record]);
        assert_eq!(last_id, 41);
        let text = std::fs::read_to_string(record_path(dir.path(), id)).unwrap();
        assert!(text.contains("\"state\": \"running\""), "{text}");
        assert!(text.contains("\"arg\": \"AP94\""), "{text}");
        assert_eq!(
            load_dir(&dir.path().join("missing")).unwrap(),
            (Vec::new(), 0)
        );
    }

    /// A plugin whose `serf_job` does what the job argument's last byte says: `e` logs
    /// "step" and exits 7, `f` fails with status 3 and an error text, `t` traps, `l` loops,
    /// `r` asks for random bytes forever (a host-call bomb that burns almost no fuel).
    const WORKER: &str = r#"(module
        (import "serf" "log" (func $log (param i32 i32 i32) (result i32)))
        (import "serf" "set_error" (func $set_error (param i32 i32) (result i32)))
        (import "wasi_snapshot_preview1" "random_get"
            (func $random_get (param i32 i32) (result i32)))
        (memory (export "memory") 20)
        (data (i32.const 16) "stepbad deploy")
        (func (export "serf_plugin_abi_v1"))
        (func (export "serf_input_buffer") (param i32) (result i32) i32.const 1024)
        (func (export "serf_init") (param i32 i32) (result i32) i32.const 0)
        (func (export "serf_handle") (param i32 i32) (result i32) i32.const 0)
        (func (export "serf_job") (param $ptr i32) (param $len i32) (result i32)
            (local $mode i32)
            (local.set $mode (i32.load8_u (i32.sub (i32.add (local.get $ptr) (local.get $len)) (i32.const 1))))
            (if (i32.eq (local.get $mode) (i32.const 101))
                (then
                    (drop (call $log (i32.const 2) (i32.const 16) (i32.const 4)))
                    (return (i32.const 7))))
            (if (i32.eq (local.get $mode) (i32.const 102))
                (then
                    (drop (call $set_error (i32.const 20) (i32.const 10)))
                    (return (i32.const 3))))
            (if (i32.eq (local.get $mode) (i32.const 116)) (then unreachable))
            (if (i32.eq (local.get $mode) (i32.const 114))
                (then (loop $bomb
                    (drop (call $random_get (i32.const 65536) (i32.const 1048576)))
                    (br $bomb))))
            (loop $forever (br $forever))
            i32.const 0))"#;

    struct PoolServices(Jobs);

    impl super::super::HostServices for PoolServices {
        fn respond(&self, _: &str, _: serf_core::QueryKey, _: Vec<u8>) -> Result<(), Status> {
            Err(Status::Unavailable)
        }

        fn jobs(&self) -> Option<&Jobs> {
            Some(&self.0)
        }
    }

    /// Plugins `p` (the default job budget), `small` (10^7 fuel per job) and `quick` (a
    /// 300 ms `job_timeout`), all [`WORKER`], and `plain` (without `serf_job`), on a runtime of their own, with a pool whose records
    /// live in `dir/jobs`.
    fn start_pool(dir: &Path) -> (tokio::runtime::Runtime, Arc<PluginHost>, Jobs) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let path = dir.join("worker.wasm");
        std::fs::write(&path, wat::parse_str(WORKER).unwrap()).unwrap();
        let without_job = WORKER.replace(r#"(func (export "serf_job")"#, "(func $no_job");
        let plain = dir.join("plain.wasm");
        std::fs::write(&plain, wat::parse_str(without_job).unwrap()).unwrap();
        let spec = |name: &str, job_fuel: u64| PluginSpec {
            grants: Grants {
                capabilities: Capabilities::all(),
                ..Grants::default()
            },
            name: name.to_owned(),
            path: if name == "plain" {
                plain.clone()
            } else {
                path.clone()
            },
            filter: super::super::EventFilter::all(),
            limits: super::super::Limits {
                job_fuel,
                job_timeout: if name == "quick" {
                    Duration::from_millis(300)
                } else {
                    super::super::Limits::DEFAULT.job_timeout
                },
                ..super::super::Limits::DEFAULT
            },
            dirs: BTreeMap::new(),
            config: toml::Table::new(),
        };
        let jobs = Jobs::open(Some(dir.join("jobs")), 1).unwrap();
        let host = runtime.block_on(PluginHost::start(
            super::super::Engine::new(None),
            vec![
                spec("p", 1_000_000_000_000),
                spec("small", 10_000_000),
                spec("quick", 1_000_000_000_000),
                spec("plain", 1),
            ],
            "node",
            serf_core::SerfLimits::SERF,
            Arc::new(PoolServices(jobs.clone())),
            runtime.handle(),
        ));
        jobs.attach(&host);
        (runtime, host, jobs)
    }

    fn ended(jobs: &Jobs, id: JobId) -> JobRecord {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let record = jobs.get(id, None).unwrap();
            if record.state.is_over() {
                return record;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} never ended: {record:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn offered(host: &PluginHost, plugin: &str) -> u64 {
        let stats = host.stats().into_iter().find(|s| s.name == plugin).unwrap();
        stats.offered
    }

    #[test]
    fn jobs_end_finished_failed_or_killed_and_their_plugin_hears_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let (runtime, host, jobs) = start_pool(dir.path());
        let start = |plugin: &str, arg: &str| {
            jobs.start(
                plugin,
                abi::JobStart {
                    name: "deploy".into(),
                    arg: arg.as_bytes().to_vec(),
                },
            )
            .unwrap()
        };

        let record = ended(&jobs, start("p", "e"));
        assert_eq!((record.state, record.exit_status), (JobState::Finished, 7));
        assert_eq!(
            record.output,
            ["step"],
            "the job's log lines are its output"
        );
        let record = ended(&jobs, start("p", "f"));
        assert_eq!((record.state, record.exit_status), (JobState::Finished, 3));
        assert_eq!(record.error, "bad deploy");
        let record = ended(&jobs, start("p", "t"));
        assert_eq!((record.state, record.exit_status), (JobState::Failed, -1));
        assert!(record.error.starts_with("plugin panicked"), "{record:?}");
        let record = ended(&jobs, start("small", "l"));
        assert_eq!(record.state, JobState::Failed);
        assert_eq!(record.error, "fuel budget of 10000000 exceeded");

        // An endless loop with fuel to spare stops when killed.
        let id = start("p", "l");
        let deadline = Instant::now() + Duration::from_secs(30);
        while jobs.get(id, None).unwrap().state != JobState::Running {
            assert!(Instant::now() < deadline, "job {id} never ran");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(jobs.num_running(), 1);
        jobs.kill(id, Some("p")).unwrap();
        let record = ended(&jobs, id);
        assert_eq!(record.state, JobState::Killed);
        assert_eq!(record.error, "killed by the plugin");
        assert_eq!(jobs.num_running(), 0);

        // A job that spends its time in host calls burns almost no fuel, yet a kill and the
        // job's deadline stop it within about an epoch tick (it ran for minutes before).
        let id = start("p", "r");
        let deadline = Instant::now() + Duration::from_secs(30);
        while jobs.get(id, None).unwrap().state != JobState::Running {
            assert!(Instant::now() < deadline, "job {id} never ran");
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(100));
        let killed_at = Instant::now();
        jobs.kill(id, None).unwrap();
        let record = ended(&jobs, id);
        assert_eq!(record.state, JobState::Killed, "{record:?}");
        assert!(killed_at.elapsed() < Duration::from_secs(3), "{record:?}");
        let started_at = Instant::now();
        let record = ended(&jobs, start("quick", "r"));
        assert_eq!(record.state, JobState::Failed, "{record:?}");
        assert_eq!(record.error, "wall-clock timeout after 300ms");
        assert!(started_at.elapsed() < Duration::from_secs(5), "{record:?}");

        // Each end went to its plugin's queue, past its filter.
        let deadline = Instant::now() + Duration::from_secs(10);
        while offered(&host, "p") < 5 || offered(&host, "small") < 1 || offered(&host, "quick") < 1
        {
            assert!(Instant::now() < deadline, "job-done events missing");
            std::thread::sleep(Duration::from_millis(10));
        }
        // Every record reached the disk.
        runtime.block_on(jobs.shutdown());
        let reopened = Jobs::open(Some(dir.path().join("jobs")), 1).unwrap();
        assert_eq!(reopened.list(), jobs.list());
    }

    #[test]
    fn a_pool_without_the_plugin_or_its_export_starts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (_runtime, _host, jobs) = start_pool(dir.path());
        let request = abi::JobStart {
            name: "deploy".into(),
            arg: Vec::new(),
        };
        assert_eq!(
            jobs.start("nobody", request.clone()),
            Err(JobError::NotRunning("nobody".into()))
        );
        let error = jobs.start("plain", request).unwrap_err();
        assert_eq!(error, JobError::NoJobExport("plain".into()));
        assert_eq!(error.status(), Status::NotAllowed);
        assert!(jobs.list().is_empty());
    }

    #[tokio::test]
    async fn a_reopened_pool_keeps_its_records_and_fails_cut_off_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let jobs_dir = dir.path().join("jobs");
        let mut table = Table::default();
        let running = started(&mut table, "p", "a");
        table.set_running(running);
        let over = started(&mut table, "p", "b");
        table.end(
            over,
            JobEnd::Finished {
                status: 0,
                error: String::new(),
            },
            1,
        );
        for record in table.records() {
            write_record(&jobs_dir, record).unwrap();
        }
        let jobs = Jobs::open(Some(jobs_dir.clone()), 1).unwrap();
        assert_eq!(jobs.get(running, None).unwrap().state, JobState::Failed);
        assert_eq!(jobs.get(over, None).unwrap().state, JobState::Finished);
        // The recovered state is on disk before the agent goes on.
        let (records, _) = load_dir(&jobs_dir).unwrap();
        assert!(records.iter().all(|record| record.state.is_over()));
        // Reaping removes the file too.
        assert_eq!(jobs.reap(Some(over), None).unwrap(), [over]);
        jobs.shutdown().await;
        assert!(!record_path(&jobs_dir, over).exists());
        let reopened = Jobs::open(Some(jobs_dir), 1).unwrap();
        assert_eq!(reopened.list().len(), 1);
        // Without plugins no job starts, and nothing was written for the attempt.
        let error = reopened.start("p", request("c")).unwrap_err();
        assert_eq!(error.status(), Status::Unavailable);
        assert_eq!(
            reopened.start("p", request("")).unwrap_err(),
            JobError::BadRequest(Status::BadArgument)
        );
    }
}
