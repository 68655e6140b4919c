//! Serf-compatible shell event handlers: the migration path for existing Serf scripts.
//!
//! A handler is a shell command and a Serf filter (`-event-handler [FILTERS=]script`, the
//! `event_handlers` list or a `[[handlers]]` table). It sees what a Serf 0.9.4 agent would
//! give it (reference 5): `/bin/sh -c script` with the agent's environment plus `SERF_EVENT`,
//! `SERF_SELF_NAME`, `SERF_SELF_ROLE`, `SERF_TAG_*` and the user-event or query variables,
//! the members or the payload on stdin, and for a query its output as the response.
//!
//! Unlike Serf, handlers do not run one after another on the event loop: each has its own
//! bounded, ordered queue and its own task on the plugin runtime, so a slow script delays only
//! its own later events, and a handler may have a timeout that kills the script's process
//! group. [`ShellHandlers::dispatch`] is what the agent's task calls; it renders the event
//! once ([`Invocation::new`], pure) and never waits. A full queue is a counted, logged drop.
//! Scripts still running at shutdown are left to finish, as Serf leaves them.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt as _;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use serf_core::{Event, Member, QueryKey};
use serf_plugins::{EventFilter, FilterError, HostServices};

/// The shell every script runs under, as in Serf.
pub const SHELL: &str = "/bin/sh";
/// Output (stdout and stderr together) kept per run: the last 8 KiB, as in Serf.
pub const MAX_OUTPUT_BYTES: usize = 8 * 1024;
/// Events queued for a handler, unless its table says otherwise.
pub const DEFAULT_QUEUE_CAPACITY: NonZeroUsize = NonZeroUsize::new(1024).expect("1024 is not zero");
/// A run still going after this long is logged as slow (Serf's warning).
const SLOW_WARNING: Duration = Duration::from_secs(1);
/// How long a killed script's pipes and exit status are awaited before giving up on them.
const KILL_GRACE: Duration = Duration::from_secs(1);

/// One configured shell handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerSpec {
    /// The command, run as `/bin/sh -c SCRIPT` in the agent's working directory.
    pub script: String,
    /// One filter per comma-separated token: as in Serf, a script runs once per token that
    /// matches an event (`*,user=x.sh` runs twice for a user event).
    pub filters: Vec<EventFilter>,
    /// After this long the script's process group is killed; `None` waits forever, as Serf.
    pub timeout: Option<Duration>,
    /// Events waiting for the handler before new ones are dropped (and counted).
    pub queue_capacity: NonZeroUsize,
}

impl HandlerSpec {
    /// Parses Serf's `-event-handler` value `[FILTERS=]script`: split at the first `=`, no
    /// trimming, an empty filter meaning `*`.
    pub fn parse(spec: &str) -> Result<HandlerSpec, FilterError> {
        match spec.split_once('=') {
            Some((filters, script)) => HandlerSpec::new(filters, script),
            None => HandlerSpec::new("", spec),
        }
    }

    /// A handler running `script` for the events of `filters` (Serf's filter syntax, `""` =
    /// `*`), without a timeout and with the default queue.
    pub fn new(filters: &str, script: &str) -> Result<HandlerSpec, FilterError> {
        let filters = if filters.is_empty() {
            vec![EventFilter::all()]
        } else {
            filters
                .split(',')
                .map(EventFilter::parse)
                .collect::<Result<_, _>>()?
        };
        Ok(HandlerSpec {
            script: script.to_owned(),
            filters,
            timeout: None,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
        })
    }

    /// How many times Serf runs the script for `event`: once per matching token.
    pub fn runs_for(&self, event: &Event) -> usize {
        self.filters
            .iter()
            .filter(|filter| filter.matches(event))
            .count()
    }

    /// The filter as written: `member-join,user:deploy`.
    pub fn events(&self) -> String {
        let tokens: Vec<String> = self.filters.iter().map(ToString::to_string).collect();
        tokens.join(",")
    }
}

/// What one run of a script gets, rendered once per event for every handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// `SERF_EVENT`'s value: `member-join`, ..., `user`, `query`.
    pub event: &'static str,
    /// Variables added to the agent's environment, in Serf's order (a later duplicate wins).
    pub env: Vec<(String, String)>,
    /// The whole of stdin, closed after it.
    pub stdin: Vec<u8>,
    /// For a query: which one, so that the output can answer it.
    pub query: Option<QueryKey>,
}

impl Invocation {
    /// Serf's environment and stdin for `event` on the node `local` (reference 5.2, 5.3).
    pub fn new(event: &Event, local: &Member) -> Invocation {
        let role = local.tags.get("role").cloned().unwrap_or_default();
        let name = match event {
            Event::Member(member_event) => member_event.kind.as_str(),
            Event::User(_) => "user",
            Event::Query(_) => "query",
        };
        let mut env = vec![
            ("SERF_EVENT".to_owned(), name.to_owned()),
            ("SERF_SELF_NAME".to_owned(), local.name.clone()),
            ("SERF_SELF_ROLE".to_owned(), role),
        ];
        for (key, value) in &local.tags {
            env.push((format!("SERF_TAG_{}", tag_env_name(key)), value.clone()));
        }
        let (stdin, query) = match event {
            Event::Member(member_event) => (member_stdin(&member_event.members), None),
            Event::User(user) => {
                env.push(("SERF_USER_EVENT".to_owned(), user.name.clone()));
                env.push(("SERF_USER_LTIME".to_owned(), user.ltime.to_string()));
                (payload_stdin(&user.payload), None)
            }
            Event::Query(query) => {
                env.push(("SERF_QUERY_NAME".to_owned(), query.name.clone()));
                env.push(("SERF_QUERY_LTIME".to_owned(), query.key.ltime.to_string()));
                (payload_stdin(&query.payload), Some(query.key))
            }
        };
        Invocation {
            event: name,
            env,
            stdin,
            query,
        }
    }
}

/// A tag key as Serf puts it in `SERF_TAG_<KEY>`: upper-cased, every character outside
/// `[A-Z0-9_]` replaced by one `_`.
pub fn tag_env_name(key: &str) -> String {
    key.chars()
        .map(|c| match c {
            'a'..='z' => c.to_ascii_uppercase(),
            'A'..='Z' | '0'..='9' | '_' => c,
            // The only non-ASCII letters whose simple upper case is ASCII.
            'ı' => 'I',
            'ſ' => 'S',
            _ => '_',
        })
        .collect()
}

/// Member-event stdin: `NAME\tADDR\tROLE\tTAGS\n` per member, tabs and newlines in NAME, ROLE
/// and TAGS written as `\t` and `\n`, TAGS as `k=v,k=v`.
pub fn member_stdin(members: &[Member]) -> Vec<u8> {
    let clean = |text: &str| text.replace('\t', "\\t").replace('\n', "\\n");
    let mut stdin = String::new();
    for member in members {
        let tags: Vec<String> = member
            .tags
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        let role = member.tags.get("role").map_or("", String::as_str);
        stdin.push_str(&format!(
            "{}\t{}\t{}\t{}\n",
            clean(&member.name),
            member.addr.ip().to_canonical(),
            clean(role),
            clean(&tags.join(","))
        ));
    }
    stdin.into_bytes()
}

/// User-event and query stdin: the payload, with a newline added unless it is empty or
/// already ends in one.
pub fn payload_stdin(payload: &[u8]) -> Vec<u8> {
    let mut stdin = payload.to_vec();
    if stdin.last().is_some_and(|&last| last != b'\n') {
        stdin.push(b'\n');
    }
    stdin
}

/// The last [`MAX_OUTPUT_BYTES`] a script wrote, and how much it wrote in all.
#[derive(Debug, Default)]
struct OutputTail {
    bytes: Vec<u8>,
    total: u64,
}

impl OutputTail {
    fn push(&mut self, chunk: &[u8]) {
        self.total += chunk.len() as u64;
        self.bytes.extend_from_slice(chunk);
        let excess = self.bytes.len().saturating_sub(MAX_OUTPUT_BYTES);
        self.bytes.drain(..excess);
    }

    fn is_truncated(&self) -> bool {
        self.total > self.bytes.len() as u64
    }
}

/// How one run ended.
enum Outcome {
    /// The script exited (or was ended by a signal) on its own.
    Exited(ExitStatus, OutputTail),
    /// The timeout passed; the process group was killed.
    TimedOut(OutputTail),
    /// The shell could not be started.
    NotStarted(std::io::Error),
}

/// Counters of one handler, written by its task and by the dispatcher.
#[derive(Default)]
struct Counters {
    offered: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    timeouts: AtomicU64,
    dropped: AtomicU64,
    responses: AtomicU64,
    truncated: AtomicU64,
}

/// A handler as the dispatcher sees it.
struct Slot {
    /// `handler:N`, N counting from 1 in registration order (a reload numbers new handlers
    /// after every earlier one, so a name never changes meaning).
    name: Arc<str>,
    spec: HandlerSpec,
    queue: mpsc::Sender<Arc<Invocation>>,
    counters: Counters,
    /// Cancelled when a reload removes the handler: it runs what is queued, then stops.
    retired: CancellationToken,
}

/// A handler's counters at one moment, for `serf info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerStatsSnapshot {
    /// `handler:N`.
    pub name: String,
    /// Its command.
    pub script: String,
    /// Its filter.
    pub events: String,
    /// Its timeout, if it has one.
    pub timeout: Option<Duration>,
    /// Runs queued (an event matching two tokens counts twice).
    pub offered: u64,
    /// Runs that exited 0.
    pub succeeded: u64,
    /// Runs that exited otherwise or could not start.
    pub failed: u64,
    /// Runs killed by the timeout.
    pub timeouts: u64,
    /// Runs dropped because the queue was full.
    pub dropped: u64,
    /// Query responses handed to the agent.
    pub responses: u64,
    /// Runs whose output exceeded [`MAX_OUTPUT_BYTES`].
    pub truncated: u64,
    /// Runs waiting in the queue.
    pub queue_depth: usize,
    /// The queue's size.
    pub queue_capacity: usize,
}

/// What [`ShellHandlers::update`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandlerChanges {
    /// Handlers started.
    pub added: usize,
    /// Handlers stopped (each after the events already queued for it).
    pub removed: usize,
    /// Handlers kept as they were, with their queues and counters.
    pub kept: usize,
}

impl HandlerChanges {
    /// Whether the update changed anything.
    pub fn is_empty(&self) -> bool {
        self.added == 0 && self.removed == 0
    }
}

impl fmt::Display for HandlerChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} added, {} removed, {} kept",
            self.added, self.removed, self.kept
        )
    }
}

/// Every shell handler, and the tasks that run them.
pub struct ShellHandlers {
    /// The handlers in configuration order; a reload swaps in a new list.
    slots: RwLock<Arc<[Arc<Slot>]>>,
    /// Every task started, and the number of the next handler; updates hold the lock.
    tasks: Mutex<Tasks>,
    services: Arc<dyn HostServices>,
    runtime: tokio::runtime::Handle,
    shutdown: CancellationToken,
}

struct Tasks {
    running: Vec<tokio::task::JoinHandle<()>>,
    next_number: usize,
}

impl ShellHandlers {
    /// Starts one task per handler on `runtime`. Query responses go through `services`.
    pub fn start(
        specs: Vec<HandlerSpec>,
        services: Arc<dyn HostServices>,
        runtime: &tokio::runtime::Handle,
    ) -> ShellHandlers {
        let handlers = ShellHandlers {
            slots: RwLock::new(Arc::from(Vec::new())),
            tasks: Mutex::new(Tasks {
                running: Vec::new(),
                next_number: 1,
            }),
            services,
            runtime: runtime.clone(),
            shutdown: CancellationToken::new(),
        };
        handlers.update(specs);
        handlers
    }

    /// Makes `specs` the handlers, as Serf's SIGHUP does with its scripts: a handler equal to
    /// a running one keeps its queue and counters, a new one starts, and one no longer
    /// configured runs the events already queued for it and stops. Events dispatched after
    /// this returns go to the new list.
    pub fn update(&self, specs: Vec<HandlerSpec>) -> HandlerChanges {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.running.retain(|task| !task.is_finished());
        let mut old: Vec<Option<Arc<Slot>>> = self.slots().iter().cloned().map(Some).collect();
        let mut changes = HandlerChanges::default();
        let mut slots = Vec::with_capacity(specs.len());
        for spec in specs {
            let same = old
                .iter_mut()
                .find(|slot| slot.as_ref().is_some_and(|slot| slot.spec == spec))
                .and_then(Option::take);
            if let Some(slot) = same {
                changes.kept += 1;
                slots.push(slot);
                continue;
            }
            changes.added += 1;
            let (queue, receiver) = mpsc::channel(spec.queue_capacity.get());
            let slot = Arc::new(Slot {
                name: Arc::from(format!("handler:{}", tasks.next_number)),
                spec,
                queue,
                counters: Counters::default(),
                retired: CancellationToken::new(),
            });
            tasks.next_number += 1;
            tracing::info!(
                handler = %slot.name,
                script = %slot.spec.script,
                events = %slot.spec.events(),
                timeout = ?slot.spec.timeout,
                "event handler registered"
            );
            let runner =
                Arc::clone(&slot).run(receiver, Arc::clone(&self.services), self.shutdown.clone());
            tasks.running.push(self.runtime.spawn(runner));
            slots.push(slot);
        }
        *self.slots.write().unwrap_or_else(|e| e.into_inner()) = Arc::from(slots);
        for slot in old.into_iter().flatten() {
            changes.removed += 1;
            tracing::info!(
                handler = %slot.name,
                script = %slot.spec.script,
                "event handler removed; it runs the events already queued, then stops"
            );
            slot.retired.cancel();
        }
        changes
    }

    fn slots(&self) -> Arc<[Arc<Slot>]> {
        Arc::clone(&self.slots.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Queues `event` for every handler whose filter takes it, rendered for the node `local`
    /// (whose tags fill `SERF_TAG_*`). Never waits.
    pub fn dispatch(&self, event: &Event, local: &Member) {
        let mut invocation: Option<Arc<Invocation>> = None;
        for slot in self.slots().iter() {
            for _ in 0..slot.spec.runs_for(event) {
                let invocation = Arc::clone(
                    invocation.get_or_insert_with(|| Arc::new(Invocation::new(event, local))),
                );
                match slot.queue.try_send(invocation) {
                    Ok(()) => {
                        slot.counters.offered.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        slot.counters.offered.fetch_add(1, Ordering::Relaxed);
                        let dropped = slot.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                        if dropped.is_power_of_two() {
                            tracing::warn!(handler = %slot.name, dropped, "event handler queue full; event dropped");
                        }
                    }
                    // A reload removed the handler while this event was on its way.
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
        }
    }

    /// Every handler's counters.
    pub fn stats(&self) -> Vec<HandlerStatsSnapshot> {
        self.slots().iter().map(|slot| slot.snapshot()).collect()
    }

    /// Serf's `event_handlers` section of `serf info`: `"<event>:<name>"` → script, one entry
    /// per filter token (a later handler with the same token wins, as in Serf).
    pub fn serf_stats(&self) -> BTreeMap<String, String> {
        let mut section = BTreeMap::new();
        for slot in self.slots().iter() {
            for filter in &slot.spec.filters {
                let mut key = filter.to_string();
                if !key.contains(':') {
                    key.push(':');
                }
                section.insert(key, slot.spec.script.clone());
            }
        }
        section
    }

    /// The number of handlers.
    pub fn num_handlers(&self) -> usize {
        self.slots().len()
    }

    /// Stops every handler task at once, dropping queued events; running scripts are left to
    /// finish on their own.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        let tasks =
            std::mem::take(&mut self.tasks.lock().unwrap_or_else(|e| e.into_inner()).running);
        for task in tasks {
            let _ = task.await;
        }
    }
}

impl Slot {
    fn snapshot(&self) -> HandlerStatsSnapshot {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let c = &self.counters;
        HandlerStatsSnapshot {
            name: self.name.to_string(),
            script: self.spec.script.clone(),
            events: self.spec.events(),
            timeout: self.spec.timeout,
            offered: load(&c.offered),
            succeeded: load(&c.succeeded),
            failed: load(&c.failed),
            timeouts: load(&c.timeouts),
            dropped: load(&c.dropped),
            responses: load(&c.responses),
            truncated: load(&c.truncated),
            queue_depth: self.queue.max_capacity() - self.queue.capacity(),
            queue_capacity: self.queue.max_capacity(),
        }
    }

    async fn run(
        self: Arc<Slot>,
        mut queue: mpsc::Receiver<Arc<Invocation>>,
        services: Arc<dyn HostServices>,
        shutdown: CancellationToken,
    ) {
        let mut retiring = false;
        loop {
            let invocation = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = self.retired.cancelled(), if !retiring => {
                    // No new events; the queued ones still run, in order.
                    queue.close();
                    retiring = true;
                    continue;
                }
                invocation = queue.recv() => match invocation {
                    Some(invocation) => invocation,
                    None => break,
                },
            };
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = self.handle(&invocation, &*services) => {}
            }
        }
        if retiring {
            tracing::info!(handler = %self.name, "event handler stopped");
        }
    }

    /// Runs the script once for `invocation`, then logs, counts and answers the query.
    async fn handle(&self, invocation: &Invocation, services: &dyn HostServices) {
        let handler = &*self.name;
        let script = &self.spec.script;
        let event = invocation.event;
        let counters = &self.counters;
        let output = match run_script(script, invocation, self.spec.timeout, handler).await {
            Outcome::NotStarted(error) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(handler, script, event, %error, "cannot run event handler script");
                return;
            }
            Outcome::TimedOut(output) => {
                counters.timeouts.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    handler, script, event, timeout = ?self.spec.timeout,
                    output = %String::from_utf8_lossy(&output.bytes),
                    "event handler script timed out; process group killed"
                );
                return;
            }
            Outcome::Exited(status, output) => {
                tracing::debug!(
                    handler, script, event,
                    output = %String::from_utf8_lossy(&output.bytes),
                    "event handler script output"
                );
                if output.is_truncated() {
                    counters.truncated.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        handler,
                        script,
                        written = output.total,
                        kept = MAX_OUTPUT_BYTES,
                        "event handler script output truncated"
                    );
                }
                if !status.success() {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        handler, script, event, %status,
                        output = %String::from_utf8_lossy(&output.bytes),
                        "event handler script failed"
                    );
                    return;
                }
                counters.succeeded.fetch_add(1, Ordering::Relaxed);
                output
            }
        };
        // As in Serf: a query is answered with whatever the script wrote, if anything; the
        // agent applies the size limit and the deadline, and logs a refusal.
        if let Some(key) = invocation.query
            && output.total > 0
        {
            match services.respond(handler, key, output.bytes) {
                Ok(()) => {
                    counters.responses.fetch_add(1, Ordering::Relaxed);
                }
                Err(status) => {
                    tracing::warn!(
                        handler,
                        query_id = key.id,
                        ?status,
                        "event handler response not sent"
                    );
                }
            }
        }
    }
}

/// Runs `/bin/sh -c script` in a process group of its own, feeding it the invocation's stdin
/// and collecting stdout and stderr through one pipe, as Serf does. The spawn and the wait
/// for the exit status block, so they happen on a blocking thread; the pipes are async.
async fn run_script(
    script: &str,
    invocation: &Invocation,
    timeout: Option<Duration>,
    handler: &str,
) -> Outcome {
    let pipes = (|| -> std::io::Result<_> {
        let (stdin_child, stdin_ours) = std::io::pipe()?;
        let (output_ours, stdout_child) = std::io::pipe()?;
        let stderr_child = stdout_child.try_clone()?;
        let stdin = pipe::Sender::from_owned_fd(OwnedFd::from(stdin_ours))?;
        let output = pipe::Receiver::from_owned_fd(OwnedFd::from(output_ours))?;
        Ok((stdin_child, stdout_child, stderr_child, stdin, output))
    })();
    let (stdin_child, stdout_child, stderr_child, mut stdin, mut output) = match pipes {
        Ok(pipes) => pipes,
        Err(error) => return Outcome::NotStarted(error),
    };
    let (pid_sender, pid) = oneshot::channel();
    let mut command = std::process::Command::new(SHELL);
    command
        .arg("-c")
        .arg(script)
        .envs(invocation.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::from(stdin_child))
        .stdout(Stdio::from(stdout_child))
        .stderr(Stdio::from(stderr_child))
        .process_group(0);
    let waiter = tokio::task::spawn_blocking(move || {
        let spawned = command.spawn();
        // Our copies of the child's pipe ends live in `command`: close them, or no EOF comes.
        drop(command);
        let mut child = spawned?;
        let _ = pid_sender.send(child.id());
        child.wait()
    });
    let Ok(pid) = pid.await else {
        return match waiter.await {
            Ok(Err(error)) => Outcome::NotStarted(error),
            _ => Outcome::NotStarted(std::io::Error::other("spawn task failed")),
        };
    };
    let tail = Arc::new(Mutex::new(OutputTail::default()));
    let work = {
        let tail = Arc::clone(&tail);
        async move {
            let write = async move {
                if let Err(error) = stdin.write_all(&invocation.stdin).await {
                    tracing::debug!(handler, %error, "event handler script did not read its stdin");
                }
            };
            let read = async move {
                let mut chunk = [0u8; 4096];
                while let Ok(len @ 1..) = output.read(&mut chunk).await {
                    tail.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(&chunk[..len]);
                }
            };
            let ((), (), status) = tokio::join!(write, read, waiter);
            status
        }
    };
    tokio::pin!(work);
    let started = Instant::now();
    let deadline = timeout.map(|timeout| started + timeout);
    let mut slow = std::pin::pin!(tokio::time::sleep(SLOW_WARNING));
    let mut warned = false;
    let finished = loop {
        tokio::select! {
            status = &mut work => break Some(status),
            () = &mut slow, if !warned => {
                warned = true;
                tracing::warn!(handler, script, elapsed = ?SLOW_WARNING, "event handler script slow");
            }
            () = sleep_until_some(deadline) => break None,
        }
    };
    let take = |tail: &Mutex<OutputTail>| {
        std::mem::take(&mut *tail.lock().unwrap_or_else(|e| e.into_inner()))
    };
    match finished {
        Some(Ok(Ok(status))) => Outcome::Exited(status, take(&tail)),
        Some(Ok(Err(error))) => Outcome::NotStarted(error),
        Some(Err(_)) => Outcome::NotStarted(std::io::Error::other("wait task failed")),
        None => {
            kill_process_group(pid).await;
            // Collect the exit and the last output; a process that left the group may keep
            // the pipe open, so only briefly.
            let _ = tokio::time::timeout(KILL_GRACE, &mut work).await;
            Outcome::TimedOut(take(&tail))
        }
    }
}

/// Completes at `deadline`, or never.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// SIGKILLs the process group `pgid` (the script and everything it started). The agent has
/// no unsafe code, so the shell's `kill` does it.
async fn kill_process_group(pgid: u32) {
    let killed = tokio::task::spawn_blocking(move || {
        std::process::Command::new(SHELL)
            .arg("-c")
            .arg(format!("kill -KILL -{pgid}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
    })
    .await;
    if !matches!(killed, Ok(Ok(status)) if status.success()) {
        tracing::debug!(
            pgid,
            ?killed,
            "killing an event handler's process group failed"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::path::Path;

    use super::*;
    use serf_core::{
        MemberEvent, MemberEventKind, MemberStatus, ProtocolVersions, QueryEvent, Tags, UserEvent,
    };
    use serf_plugin_sdk::abi::Status;

    fn tags(pairs: &[(&str, &str)]) -> Tags {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn member(name: &str, addr: &str, pairs: &[(&str, &str)]) -> Member {
        Member {
            name: name.into(),
            addr: addr.parse::<SocketAddr>().unwrap(),
            tags: tags(pairs),
            status: MemberStatus::Alive,
            versions: ProtocolVersions::SERF_0_9_4,
        }
    }

    fn local() -> Member {
        member("a", "127.0.0.10:7946", &[("role", "web"), ("dc", "east")])
    }

    fn user(name: &str, ltime: u64, payload: &[u8]) -> Event {
        Event::User(UserEvent {
            ltime,
            name: name.into(),
            payload: payload.to_vec(),
            coalesce: true,
        })
    }

    fn query(name: &str, ltime: u64, payload: &[u8]) -> Event {
        Event::Query(QueryEvent {
            key: QueryKey { ltime, id: 7 },
            name: name.into(),
            payload: payload.to_vec(),
            source_node: "a".into(),
            deadline: std::time::Instant::now() + Duration::from_secs(5),
        })
    }

    fn env_line(invocation: &Invocation) -> String {
        let mut pairs: Vec<String> = invocation
            .env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        pairs.sort();
        pairs.join(" ")
    }

    #[test]
    fn a_query_gets_the_captured_environment() {
        let invocation = Invocation::new(&query("upcase", 1, b"hello"), &local());
        assert_eq!(
            env_line(&invocation),
            "SERF_EVENT=query SERF_QUERY_LTIME=1 SERF_QUERY_NAME=upcase SERF_SELF_NAME=a \
             SERF_SELF_ROLE=web SERF_TAG_DC=east SERF_TAG_ROLE=web"
        );
        assert_eq!(invocation.stdin, b"hello\n");
        assert_eq!(invocation.query, Some(QueryKey { ltime: 1, id: 7 }));
    }

    #[test]
    fn a_user_event_gets_its_name_and_ltime() {
        let no_role = member("n", "10.0.0.1:7946", &[("zone-a.b", "1")]);
        let invocation = Invocation::new(&user("deploy", 42, b"v1.2.3\n"), &no_role);
        assert_eq!(
            env_line(&invocation),
            "SERF_EVENT=user SERF_SELF_NAME=n SERF_SELF_ROLE= SERF_TAG_ZONE_A_B=1 \
             SERF_USER_EVENT=deploy SERF_USER_LTIME=42"
        );
        assert_eq!(invocation.stdin, b"v1.2.3\n");
        assert_eq!(invocation.query, None);
        assert_eq!(invocation.event, "user");
    }

    #[test]
    fn member_events_list_one_line_per_member() {
        let event = Event::Member(MemberEvent {
            kind: MemberEventKind::Update,
            members: vec![
                member("b", "127.0.0.11:7946", &[("role", "db"), ("zone", "z1")]),
                member("c\td", "[::ffff:10.1.2.3]:7946", &[]),
                member("e", "[fe80::1]:7946", &[("role", "x\ny"), ("k", "v\tw")]),
            ],
        });
        let invocation = Invocation::new(&event, &local());
        assert_eq!(invocation.event, "member-update");
        assert_eq!(
            String::from_utf8(invocation.stdin.clone()).unwrap(),
            "b\t127.0.0.11\tdb\trole=db,zone=z1\n\
             c\\td\t10.1.2.3\t\t\n\
             e\tfe80::1\tx\\ny\tk=v\\tw,role=x\\ny\n"
        );
        assert_eq!(
            env_line(&invocation),
            "SERF_EVENT=member-update SERF_SELF_NAME=a SERF_SELF_ROLE=web SERF_TAG_DC=east \
             SERF_TAG_ROLE=web"
        );
    }

    #[test]
    fn payloads_get_a_final_newline_unless_empty() {
        assert_eq!(payload_stdin(b""), b"");
        assert_eq!(payload_stdin(b"x"), b"x\n");
        assert_eq!(payload_stdin(b"x\n"), b"x\n");
        assert_eq!(payload_stdin(b"a\nb"), b"a\nb\n");
    }

    #[test]
    fn tag_names_are_upper_cased_and_sanitized_per_character() {
        for (key, expected) in [
            ("dc", "DC"),
            ("Role_2", "ROLE_2"),
            ("a-b.c d", "A_B_C_D"),
            ("é", "_"),
            ("ıſ", "IS"),
            ("日本", "__"),
        ] {
            assert_eq!(tag_env_name(key), expected, "{key}");
        }
    }

    #[test]
    fn specs_split_at_the_first_equals_sign() {
        let spec = HandlerSpec::parse("user:deploy=echo a=b").unwrap();
        assert_eq!(
            (spec.events().as_str(), spec.script.as_str()),
            ("user:deploy", "echo a=b")
        );
        let spec = HandlerSpec::parse("./handler.sh").unwrap();
        assert_eq!(
            (spec.events().as_str(), spec.script.as_str()),
            ("*", "./handler.sh")
        );
        let spec = HandlerSpec::parse("=x.sh").unwrap();
        assert_eq!(spec.events(), "*");
        for bad in [
            "bogus=x.sh",
            "member-join, user=x.sh",
            "member-join,=x.sh",
            "echo a=b",
        ] {
            assert!(HandlerSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_script_runs_once_per_matching_token() {
        let spec = HandlerSpec::parse("*,user,user:deploy,member-join=x").unwrap();
        assert_eq!(spec.runs_for(&user("deploy", 1, b"")), 3);
        assert_eq!(spec.runs_for(&user("other", 1, b"")), 2);
        assert_eq!(spec.runs_for(&query("q", 1, b"")), 1);
        let member_join = Event::Member(MemberEvent {
            kind: MemberEventKind::Join,
            members: vec![],
        });
        let spec = HandlerSpec::parse("member-join,member-leave=x").unwrap();
        assert_eq!(spec.runs_for(&member_join), 1);
    }

    #[test]
    fn output_keeps_the_last_eight_kib() {
        let mut tail = OutputTail::default();
        tail.push(&[b'a'; 5000]);
        assert!(!tail.is_truncated());
        tail.push(&[b'b'; 5000]);
        assert!(tail.is_truncated());
        assert_eq!(tail.total, 10_000);
        assert_eq!(tail.bytes.len(), MAX_OUTPUT_BYTES);
        assert_eq!(&tail.bytes[MAX_OUTPUT_BYTES - 5000..], &[b'b'; 5000][..]);
    }

    // --- Running real scripts ---------------------------------------------------------------

    /// Records the responses handlers send.
    #[derive(Default)]
    struct Recorder {
        responses: Mutex<Vec<(String, QueryKey, Vec<u8>)>>,
    }

    impl HostServices for Recorder {
        fn respond(&self, plugin: &str, query: QueryKey, payload: Vec<u8>) -> Result<(), Status> {
            let mut responses = self.responses.lock().unwrap();
            responses.push((plugin.to_owned(), query, payload));
            Ok(())
        }
    }

    fn start(specs: Vec<HandlerSpec>) -> (ShellHandlers, Arc<Recorder>) {
        let recorder = Arc::new(Recorder::default());
        let services: Arc<dyn HostServices> = recorder.clone();
        let handlers = ShellHandlers::start(specs, services, &tokio::runtime::Handle::current());
        (handlers, recorder)
    }

    fn spec(filters: &str, script: &str) -> HandlerSpec {
        HandlerSpec::new(filters, script).unwrap()
    }

    async fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
        serf_testkit::eventually_async(timeout, || std::future::ready(check())).await
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_default()
    }

    fn pid_is_gone(pid: &str) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // A zombie nobody reaps (PID 1 in a container may not) is dead too.
            Ok(stat) => stat
                .rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z')),
            Err(_) => true,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_script_gets_the_environment_and_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let script = format!(
            // Scripts inherit the agent's environment, as in Serf: leave out the test suite's.
            "{{ env | grep '^SERF_' | grep -v '^SERF_TEST_' | sort; echo --; cat; }} > {}",
            out.display()
        );
        let (handlers, _) = start(vec![spec("user", &script)]);
        handlers.dispatch(&user("deploy", 9, b"payload"), &local());
        assert!(
            eventually(Duration::from_secs(10), || read(&out)
                .ends_with("payload\n"))
            .await
        );
        assert_eq!(
            read(&out),
            "SERF_EVENT=user\nSERF_SELF_NAME=a\nSERF_SELF_ROLE=web\nSERF_TAG_DC=east\n\
             SERF_TAG_ROLE=web\nSERF_USER_EVENT=deploy\nSERF_USER_LTIME=9\n--\npayload\n"
        );
        let stats = &handlers.stats()[0];
        assert!(
            eventually(Duration::from_secs(5), || handlers.stats()[0].succeeded
                == 1)
            .await
        );
        assert_eq!(
            (stats.name.as_str(), stats.events.as_str()),
            ("handler:1", "user")
        );
        handlers.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn query_output_becomes_the_response_only_after_exit_zero() {
        let script = "read line; case \"$line\" in \
                      fail) echo nope; exit 3;; \
                      quiet) ;; \
                      both) echo out; echo err >&2;; \
                      *) echo \"$line\" | tr a-z A-Z;; esac";
        let (handlers, recorder) = start(vec![spec("query", script)]);
        for (ltime, payload) in [(1, "hello"), (2, "fail"), (3, "quiet"), (4, "both")] {
            handlers.dispatch(&query("upcase", ltime, payload.as_bytes()), &local());
        }
        assert!(
            eventually(Duration::from_secs(10), || {
                let stats = &handlers.stats()[0];
                stats.succeeded + stats.failed == 4
            })
            .await
        );
        let responses = recorder.responses.lock().unwrap().clone();
        assert_eq!(
            responses,
            vec![
                (
                    "handler:1".to_owned(),
                    QueryKey { ltime: 1, id: 7 },
                    b"HELLO\n".to_vec()
                ),
                (
                    "handler:1".to_owned(),
                    QueryKey { ltime: 4, id: 7 },
                    b"out\nerr\n".to_vec()
                ),
            ]
        );
        let stats = &handlers.stats()[0];
        assert_eq!((stats.failed, stats.responses), (1, 2));
        handlers.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn long_output_keeps_its_tail() {
        let script =
            "i=0; while [ $i -lt 1000 ]; do echo 0123456789abcdef; i=$((i+1)); done; echo end";
        let (handlers, recorder) = start(vec![spec("query", script)]);
        handlers.dispatch(&query("q", 1, b""), &local());
        assert!(
            eventually(Duration::from_secs(10), || handlers.stats()[0].succeeded
                == 1)
            .await
        );
        let responses = recorder.responses.lock().unwrap().clone();
        assert_eq!(responses.len(), 1);
        assert_eq!(responses[0].2.len(), MAX_OUTPUT_BYTES);
        assert!(responses[0].2.ends_with(b"0123456789abcdef\nend\n"));
        assert_eq!(handlers.stats()[0].truncated, 1);
        handlers.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_handler_does_not_delay_another() {
        let dir = tempfile::tempdir().unwrap();
        let fast = dir.path().join("fast");
        let slow = spec("user", "sleep 3");
        let quick = spec(
            "user",
            &format!("echo $SERF_USER_LTIME >> {}", fast.display()),
        );
        let (handlers, _) = start(vec![slow, quick]);
        let started = Instant::now();
        for ltime in 1..=3 {
            handlers.dispatch(&user("e", ltime, b""), &local());
        }
        assert!(eventually(Duration::from_secs(3), || read(&fast) == "1\n2\n3\n").await);
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(handlers.stats()[0].queue_depth, 2);
        handlers.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let mut hanging = spec(
            "user",
            &format!("sleep 600 & echo $$ $! > {}; wait", pids.display()),
        );
        hanging.timeout = Some(Duration::from_millis(500));
        let (handlers, _) = start(vec![hanging]);
        handlers.dispatch(&user("e", 1, b""), &local());
        handlers.dispatch(&user("e", 2, b""), &local());
        assert!(
            eventually(Duration::from_secs(10), || handlers.stats()[0].timeouts
                == 2)
            .await
        );
        let text = read(&pids);
        let pids: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(pids.len(), 2, "{text:?}");
        for pid in pids {
            assert!(
                eventually(Duration::from_secs(5), || pid_is_gone(pid)).await,
                "{pid} lives"
            );
        }
        handlers.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_drops_and_counts() {
        let mut slow = spec("*", "sleep 1");
        slow.queue_capacity = NonZeroUsize::new(2).unwrap();
        let (handlers, _) = start(vec![slow]);
        for ltime in 1..=10 {
            handlers.dispatch(&user("e", ltime, b""), &local());
        }
        let stats = &handlers.stats()[0];
        assert_eq!(stats.offered, 10);
        // One may already be running, two queued.
        assert!((7..=8).contains(&stats.dropped), "{stats:?}");
        handlers.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_script_that_cannot_be_found_counts_as_failed() {
        let (handlers, recorder) = start(vec![spec("query", "/nonexistent/script")]);
        handlers.dispatch(&query("q", 1, b""), &local());
        assert!(eventually(Duration::from_secs(10), || handlers.stats()[0].failed == 1).await);
        assert!(recorder.responses.lock().unwrap().is_empty());
        handlers.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_update_keeps_equal_handlers_starts_new_ones_and_drains_removed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let append = |name: &str| format!("echo $SERF_USER_LTIME >> {}", path(name).display());
        // `old` is slow, so events are still queued for it when the update removes it.
        let old = spec("user", &format!("sleep 0.2; {}", append("old")));
        let kept = spec("user", &append("kept"));
        let (handlers, _) = start(vec![old, kept.clone()]);
        for ltime in 1..=3 {
            handlers.dispatch(&user("e", ltime, b""), &local());
        }
        let new = spec("user", &append("new"));
        let changes = handlers.update(vec![kept, new]);
        assert_eq!(
            changes,
            HandlerChanges {
                added: 1,
                removed: 1,
                kept: 1
            }
        );
        handlers.dispatch(&user("e", 4, b""), &local());
        let names: Vec<String> = handlers.stats().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["handler:2", "handler:3"]);
        let wait = Duration::from_secs(10);
        assert!(eventually(wait, || read(&path("kept")) == "1\n2\n3\n4\n").await);
        assert!(eventually(wait, || read(&path("new")) == "4\n").await);
        // The removed handler ran what was queued for it, and nothing after.
        assert!(eventually(wait, || read(&path("old")) == "1\n2\n3\n").await);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(read(&path("old")), "1\n2\n3\n");
        assert_eq!(handlers.stats()[0].offered, 4);
        assert!(handlers.update(handlers_specs(&handlers)).is_empty());
        handlers.shutdown().await;
    }

    fn handlers_specs(handlers: &ShellHandlers) -> Vec<HandlerSpec> {
        handlers
            .slots()
            .iter()
            .map(|slot| slot.spec.clone())
            .collect()
    }

    #[tokio::test]
    async fn serf_stats_list_one_entry_per_token() {
        let (handlers, _) = start(vec![
            spec("member-join,user:deploy,query", "a.sh"),
            spec("", "b.sh"),
        ]);
        let section = handlers.serf_stats();
        let expected: BTreeMap<String, String> = [
            ("*:", "b.sh"),
            ("member-join:", "a.sh"),
            ("query:", "a.sh"),
            ("user:deploy", "a.sh"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(section, expected);
        handlers.shutdown().await;
    }
}
