//! Granted host commands (ABI v1.1): the programs a plugin's `serf.toml` table names, which the
//! plugin may run by name, waited for (`command_run`) or as a job (`command_start`).
//!
//! The security model, in short (docs/plugin-abi.md section 12 has it in full):
//!
//! - nothing is granted by default: a plugin runs only the commands of its
//!   `[plugins.NAME.commands.CMD]` tables, each a **fixed argv** whose first element is an
//!   absolute path, executed directly (no shell, so no globbing, no `;`, no `$(...)`);
//! - the plugin may append arguments only where the table says `allow_args = true`, and may
//!   feed stdin (at most 64 KiB);
//! - the process gets a **clean environment**: only the table's `env` (the agent's own
//!   environment, which may hold secrets, is not inherited; not even `PATH`), the table's
//!   `cwd` (default `/`), a process group of its own, and its stdout and stderr captured up to
//!   the table's `max_output_kib`, the rest read and thrown away;
//! - at its `timeout` (and, waited for, at the event's deadline), on a kill and when the agent
//!   stops, the whole process group gets SIGKILL;
//! - spawns are limited to [`SPAWNS_PER_SECOND`] per plugin, and command jobs count against
//!   the plugin's `max_jobs`;
//! - every call, denial, failure and the time spent is counted ([`CommandCounters`], shown in
//!   `serf info`), and each refused name is logged once, naming the table that would grant it.
//!
//! Processes run on the async runtime the call comes from (`tokio::process`): a waited-for
//! command suspends only the calling plugin's task, never a thread of the agent, gossip or RPC.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serf_plugin_sdk::abi::{self, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use wasmtime::{Caller, Linker};

use super::instance::{StoreState, charge, read_guest, write_guest};
use super::jobs::JobEnd;

/// Default `timeout` of a command.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest `timeout` a table may set (as `job_timeout`).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default `max_output_kib`: the bytes kept of stdout and of stderr, each.
pub const DEFAULT_MAX_OUTPUT_KIB: usize = 64;
/// Largest `max_output_kib`.
pub const MAX_MAX_OUTPUT_KIB: usize = 1024;
/// Commands a plugin may start per second, waited for and as jobs together, across all its
/// instances.
pub const SPAWNS_PER_SECOND: u32 = 10;
/// Longest command request read from a guest: the largest stdin and arguments, and room.
const MAX_REQUEST_BYTES: usize =
    abi::MAX_COMMAND_STDIN_BYTES + abi::MAX_COMMAND_ARGS * (abi::MAX_COMMAND_ARG_BYTES + 8) + 1024;
/// Longest line of a command job's output tail, in bytes (as a log line).
const MAX_LINE_BYTES: usize = 4096;
/// How long the output of a command that has exited is still read: a process it left behind
/// may hold the pipes open.
const EXIT_GRACE: Duration = Duration::from_millis(200);
/// Command names a plugin's refusals are remembered for (each is logged once).
const MAX_LOGGED_REFUSALS: usize = 64;

/// One `[plugins.NAME.commands.CMD]` table as written in `serf.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCommand {
    /// The program (an absolute path) and its fixed arguments.
    #[serde(default)]
    pub argv: Vec<String>,
    /// Whether the plugin may append arguments (default: no).
    #[serde(default)]
    pub allow_args: bool,
    /// Wall-clock limit of one run (default 30 s).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Bytes of stdout and of stderr kept, each, in KiB (default 64).
    pub max_output_kib: Option<usize>,
    /// Working directory, absolute (default `/`).
    pub cwd: Option<PathBuf>,
    /// The command's whole environment (default: empty).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// One granted command, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSpec {
    /// The program and its fixed arguments; `argv[0]` is an absolute path.
    pub argv: Vec<String>,
    /// Whether the plugin may append arguments.
    pub allow_args: bool,
    /// Wall-clock limit of one run.
    pub timeout: Duration,
    /// Bytes of stdout and of stderr kept, each.
    pub max_output: usize,
    /// Working directory.
    pub cwd: PathBuf,
    /// The command's whole environment.
    pub env: BTreeMap<String, String>,
}

/// The commands a plugin may run, by name; none by default.
pub type CommandGrants = BTreeMap<String, CommandSpec>;

/// Checks a plugin's `commands` tables: `(key, value, reason)` for the first bad entry.
pub fn resolve(
    file: &BTreeMap<String, FileCommand>,
) -> Result<CommandGrants, (&'static str, String, String)> {
    let mut grants = CommandGrants::new();
    for (name, table) in file {
        let bad = |key: &'static str, value: String, reason: &str| {
            Err((key, value, format!("command {name}: {reason}")))
        };
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return bad(
                "commands",
                name.clone(),
                "a name is 1 to 64 of A-Z a-z 0-9 - _ .",
            );
        }
        let Some(program) = table.argv.first() else {
            return bad("argv", String::new(), "argv needs at least the program");
        };
        if !program.starts_with('/') {
            return bad(
                "argv",
                program.clone(),
                "the program must be an absolute path (commands get no PATH)",
            );
        }
        if table.argv.iter().any(|arg| arg.contains('\0')) {
            return bad("argv", program.clone(), "an argument may not contain NUL");
        }
        let timeout = table.timeout.unwrap_or(DEFAULT_TIMEOUT);
        if timeout.is_zero() || timeout > MAX_TIMEOUT {
            return bad(
                "timeout",
                humantime::format_duration(timeout).to_string(),
                "must be more than 0 and at most 7 days",
            );
        }
        let kib = table.max_output_kib.unwrap_or(DEFAULT_MAX_OUTPUT_KIB);
        if kib == 0 || kib > MAX_MAX_OUTPUT_KIB {
            return bad("max_output_kib", kib.to_string(), "must be 1 to 1024");
        }
        let cwd = table.cwd.clone().unwrap_or_else(|| PathBuf::from("/"));
        if !cwd.is_absolute() {
            return bad("cwd", cwd.display().to_string(), "must be an absolute path");
        }
        for key in table.env.keys() {
            if let Err(reason) = super::grants::check_env_name(key) {
                return bad("env", key.clone(), reason);
            }
        }
        grants.insert(
            name.clone(),
            CommandSpec {
                argv: table.argv.clone(),
                allow_args: table.allow_args,
                timeout,
                max_output: kib << 10,
                cwd,
                env: table.env.clone(),
            },
        );
    }
    Ok(grants)
}

/// A plugin's command counters and spawn window, shared by all its instances and versions
/// (they live with its rate windows, so a trap or a reload resets none).
#[derive(Debug, Default)]
pub struct CommandCounters {
    /// `command_run` and `command_start` calls that named a command.
    pub calls: AtomicU64,
    /// Calls refused by the table: a name not granted, or arguments not allowed.
    pub denials: AtomicU64,
    /// Calls refused by the spawn rate or the job limit.
    pub limited: AtomicU64,
    /// Runs that did not exit 0: could not start, exited non-zero, timed out or were killed.
    pub failures: AtomicU64,
    /// Runs stopped at their timeout or the call's deadline.
    pub timeouts: AtomicU64,
    /// Wall-clock time of the runs that ended, in microseconds.
    pub time_us: AtomicU64,
    spawns: Mutex<Option<(Instant, u32)>>,
    refusals_logged: Mutex<BTreeSet<String>>,
}

impl CommandCounters {
    /// Counts one spawn; false once the second's [`SPAWNS_PER_SECOND`] are spent.
    pub fn take_spawn(&self, now: Instant) -> bool {
        let mut window = self.spawns.lock().unwrap_or_else(PoisonError::into_inner);
        let (started, count) = window.get_or_insert((now, 0));
        if now.saturating_duration_since(*started) >= Duration::from_secs(1) {
            (*started, *count) = (now, 0);
        }
        *count = count.saturating_add(1);
        let allowed = *count <= SPAWNS_PER_SECOND;
        if !allowed {
            self.limited.fetch_add(1, Ordering::Relaxed);
        }
        allowed
    }

    /// Whether this refusal of `name` is the first (so it gets logged).
    fn first_refusal(&self, key: String) -> bool {
        let mut logged = self
            .refusals_logged
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        logged.len() < MAX_LOGGED_REFUSALS && logged.insert(key)
    }

    /// Counts a run that ended after `took`.
    pub fn ended(&self, result: &abi::CommandResult, took: Duration) {
        self.time_us.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if result.exit_status != 0 || !result.error.is_empty() {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        if result.timed_out {
            self.timeouts.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counters as `serf info` lists them.
    pub fn view(&self) -> [(&'static str, u64); 6] {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        [
            ("command_calls", load(&self.calls)),
            ("command_denials", load(&self.denials)),
            ("command_limited", load(&self.limited)),
            ("command_failures", load(&self.failures)),
            ("command_timeouts", load(&self.timeouts)),
            ("command_time_us", load(&self.time_us)),
        ]
    }
}

/// The granted command names, as `serf info` shows them: `reload,restart`, or `none`.
pub fn names(grants: &CommandGrants) -> String {
    if grants.is_empty() {
        return "none".to_owned();
    }
    grants.keys().cloned().collect::<Vec<_>>().join(",")
}

/// Why a command call was refused before any process started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The name is not in the plugin's table.
    #[error("command {0} is not granted: add a [plugins.{1}.commands.{0}] table to serf.toml")]
    NotGranted(String, String),
    /// The plugin passed arguments to a command that takes none.
    #[error("command {0} takes no arguments from the plugin (allow_args = false)")]
    NoArgs(String),
    /// The plugin started more than [`SPAWNS_PER_SECOND`] commands in a second.
    #[error("more than {SPAWNS_PER_SECOND} commands a second")]
    RateLimited,
}

impl Refusal {
    /// The status the plugin gets.
    pub fn status(&self) -> Status {
        match self {
            Refusal::NotGranted(..) => Status::Denied,
            Refusal::NoArgs(_) => Status::NotAllowed,
            Refusal::RateLimited => Status::RateLimited,
        }
    }
}

/// Checks a request against the plugin's table and spawn rate; counts and logs the refusal.
/// Returns the command to run.
pub fn admit<'a>(
    plugin: &str,
    grants: &'a CommandGrants,
    counters: &CommandCounters,
    request: &abi::CommandRequest,
    now: Instant,
) -> Result<&'a CommandSpec, Refusal> {
    counters.calls.fetch_add(1, Ordering::Relaxed);
    let refusal = match grants.get(&request.name) {
        None => Refusal::NotGranted(request.name.clone(), plugin.to_owned()),
        Some(spec) if !request.args.is_empty() && !spec.allow_args => {
            Refusal::NoArgs(request.name.clone())
        }
        Some(spec) => {
            if counters.take_spawn(now) {
                return Ok(spec);
            }
            return Err(Refusal::RateLimited);
        }
    };
    counters.denials.fetch_add(1, Ordering::Relaxed);
    if counters.first_refusal(format!("{}/{:?}", request.name, refusal.status())) {
        tracing::warn!(target: "plugin", plugin, command = %request.name, "plugin call refused: {refusal}");
    }
    Err(refusal)
}

/// SIGKILLs a process group when dropped, unless disarmed: a run whose future is dropped (a
/// deadline, a kill, the agent stopping) leaves nothing behind.
struct GroupKill(Option<i32>);

impl GroupKill {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take().and_then(rustix::process::Pid::from_raw)
            && let Err(error) =
                rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL)
        {
            tracing::debug!(pgid = pgid.as_raw_nonzero().get(), %error, "killing a command's process group failed");
        }
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Output kept from one stream: the first `cap` bytes, and for jobs its lines as they come.
struct Capture {
    kept: Vec<u8>,
    cap: usize,
    truncated: bool,
    line: Vec<u8>,
}

impl Capture {
    fn new(cap: usize) -> Capture {
        Capture {
            kept: Vec::new(),
            cap,
            truncated: false,
            line: Vec::new(),
        }
    }

    /// Keeps what fits of `chunk` and hands complete lines to `on_line`.
    fn push(&mut self, chunk: &[u8], on_line: Option<&(dyn Fn(&str) + Send + Sync)>) {
        let room = self.cap - self.kept.len();
        self.kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
        self.truncated |= chunk.len() > room;
        let Some(on_line) = on_line else { return };
        for &byte in chunk {
            if byte == b'\n' || self.line.len() >= MAX_LINE_BYTES {
                self.flush(on_line);
            }
            if byte != b'\n' {
                self.line.push(byte);
            }
        }
    }

    fn flush(&mut self, on_line: &(dyn Fn(&str) + Send + Sync)) {
        let text = String::from_utf8_lossy(&self.line);
        on_line(&super::stdio::escape_controls(&text));
        self.line.clear();
    }
}

/// Reads `stream` to its end into `capture`.
async fn drain(
    stream: Option<impl AsyncRead + Unpin>,
    capture: &mut Capture,
    on_line: Option<&(dyn Fn(&str) + Send + Sync)>,
) {
    let Some(mut stream) = stream else { return };
    let mut chunk = vec![0u8; 16 << 10];
    while let Ok(len @ 1..) = stream.read(&mut chunk).await {
        capture.push(&chunk[..len], on_line);
    }
    if let Some(on_line) = on_line
        && !capture.line.is_empty()
    {
        capture.flush(on_line);
    }
}

/// Runs `spec` with the plugin's extra `args` and `stdin`, for at most `timeout`, and says how
/// it ended. `on_line` gets every line of stdout and stderr (a job's output tail). Dropping the
/// future kills the process group.
pub async fn execute(
    spec: &CommandSpec,
    args: &[String],
    stdin: Vec<u8>,
    timeout: Duration,
    on_line: Option<&(dyn Fn(&str) + Send + Sync)>,
) -> abi::CommandResult {
    let started = Instant::now();
    let elapsed_ms = || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut command = tokio::process::Command::new(&spec.argv[0]);
    command
        .args(&spec.argv[1..])
        .args(args)
        .env_clear()
        .envs(&spec.env)
        .current_dir(&spec.cwd)
        .stdin(if stdin.is_empty() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            return abi::CommandResult {
                exit_status: -1,
                error: format!("cannot start {}: {error}", spec.argv[0]),
                duration_ms: elapsed_ms(),
                ..abi::CommandResult::default()
            };
        }
    };
    let mut group = GroupKill(child.id().and_then(|id| i32::try_from(id).ok()));
    let (mut out, mut err) = (Capture::new(spec.max_output), Capture::new(spec.max_output));
    let (stdout, stderr, input) = (child.stdout.take(), child.stderr.take(), child.stdin.take());
    let status = {
        let write = async move {
            if let Some(mut input) = input {
                // A command that does not read its stdin is its own business.
                let _ = input.write_all(&stdin).await;
            }
        };
        let output = async {
            tokio::join!(
                drain(stdout, &mut out, on_line),
                drain(stderr, &mut err, on_line),
                write
            )
        };
        tokio::pin!(output);
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut status = None;
        let mut read_all = false;
        let grace = tokio::time::sleep(MAX_TIMEOUT);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                exit = child.wait(), if status.is_none() => {
                    status = Some(exit);
                    if read_all { break; }
                    grace.as_mut().reset(tokio::time::Instant::now() + EXIT_GRACE);
                }
                _ = &mut output, if !read_all => {
                    read_all = true;
                    if status.is_some() { break; }
                }
                () = &mut grace, if status.is_some() => break,
                () = &mut deadline => break,
            }
        }
        status
    };
    let mut result = abi::CommandResult {
        exit_status: -1,
        truncated: out.truncated || err.truncated,
        stdout: out.kept,
        stderr: err.kept,
        ..abi::CommandResult::default()
    };
    match status {
        Some(Ok(status)) => {
            use std::os::unix::process::ExitStatusExt as _;
            // The command is over; what it left behind in its group is its own.
            group.0 = None;
            match (status.code(), status.signal()) {
                (Some(code), _) => result.exit_status = code,
                (None, Some(signal)) => result.error = format!("killed by signal {signal}"),
                (None, None) => result.error = format!("ended with {status}"),
            }
        }
        Some(Err(error)) => result.error = format!("cannot wait for it: {error}"),
        None => {
            group.kill();
            let _ = tokio::time::timeout(EXIT_GRACE, child.wait()).await;
            result.timed_out = true;
            result.error = format!(
                "timed out after {}: its process group was killed",
                humantime::format_duration(timeout)
            );
        }
    }
    result.duration_ms = elapsed_ms();
    result
}

/// How a command job ended, for its record.
pub fn job_end(name: &str, result: &abi::CommandResult) -> JobEnd {
    if result.error.is_empty() {
        JobEnd::Finished {
            status: result.exit_status,
            error: String::new(),
        }
    } else {
        JobEnd::Failed(format!("command {name}: {}", result.error))
    }
}

/// What one instance keeps between `command_run` and `command_result`.
#[derive(Debug, Default)]
pub struct InstanceCommands {
    /// The encoded result the last `command_run` could not fit in the guest's buffer.
    kept: Option<Vec<u8>>,
    /// The plugin's `max_jobs`, which bounds its command jobs too.
    max_jobs: usize,
}

impl InstanceCommands {
    /// An instance's state, for a plugin allowed `max_jobs` jobs at once.
    pub fn new(max_jobs: usize) -> InstanceCommands {
        InstanceCommands {
            kept: None,
            max_jobs,
        }
    }
}

// --- The `serf.command_*` host functions.

/// The command host functions and their signatures, as [`super::engine`] checks imports.
pub(crate) const COMMAND_FUNCTIONS: [(&str, &str); 3] = [
    (abi::IMPORT_COMMAND_RUN, "(i32, i32, i32, i32) -> (i32)"),
    (abi::IMPORT_COMMAND_RESULT, "(i32, i32) -> (i32)"),
    (abi::IMPORT_COMMAND_START, "(i32, i32) -> (i32)"),
];

/// Reads, decodes and admits a request of the guest.
fn request(
    caller: &mut Caller<'_, StoreState>,
    ptr: i32,
    len: i32,
) -> Result<(CommandSpec, abi::CommandRequest), Status> {
    if len as u32 as usize > MAX_REQUEST_BYTES {
        return Err(Status::TooLarge);
    }
    let bytes = read_guest(caller, ptr, len)?;
    let request: abi::CommandRequest = abi::decode(&bytes).map_err(|_| Status::BadArgument)?;
    request.check()?;
    let state = caller.data();
    let context = &state.context;
    admit(
        &context.plugin,
        &state.grants().commands,
        &context.rates.commands,
        &request,
        Instant::now(),
    )
    .cloned()
    .map(|spec| (spec, request))
    .map_err(|refusal| refusal.status())
}

/// Writes `bytes` at `out_ptr` if they fit in `out_cap`; returns their length either way.
fn hand_over(
    caller: &mut Caller<'_, StoreState>,
    bytes: Vec<u8>,
    out_ptr: i32,
    out_cap: i32,
) -> Result<i32, Status> {
    let len = i32::try_from(bytes.len()).map_err(|_| Status::TooLarge)?;
    if bytes.len() <= out_cap as u32 as usize {
        write_guest(caller, out_ptr, &bytes)?;
    } else {
        caller.data_mut().commands.kept = Some(bytes);
    }
    Ok(len)
}

/// Defines the `serf.command_*` imports on the linker.
pub(crate) fn add_command_functions(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    linker.func_wrap_async(
        abi::IMPORT_MODULE,
        abi::IMPORT_COMMAND_RUN,
        |mut caller: Caller<'_, StoreState>,
         (ptr, len, out_ptr, out_cap): (i32, i32, i32, i32)| {
            Box::new(async move {
                caller.data_mut().commands.kept = None;
                let (spec, request) = match request(&mut caller, ptr, len) {
                    Ok(admitted) => admitted,
                    Err(status) => return Ok(status.code()),
                };
                // Only the calling plugin waits, and no longer than its call's deadline.
                let started = Instant::now();
                let left = caller.data().deadline.saturating_duration_since(started);
                let result =
                    execute(&spec, &request.args, request.stdin, spec.timeout.min(left), None)
                        .await;
                let context = Arc::clone(&caller.data().context);
                context.rates.commands.ended(&result, started.elapsed());
                tracing::debug!(target: "plugin", plugin = %context.plugin, command = %request.name, exit_status = result.exit_status, error = %result.error, "command ran");
                let bytes = abi::encode(&result);
                charge(&mut caller, bytes.len());
                Ok(hand_over(&mut caller, bytes, out_ptr, out_cap).unwrap_or_else(Status::code))
            })
        },
    )?;
    linker.func_wrap(
        abi::IMPORT_MODULE,
        abi::IMPORT_COMMAND_RESULT,
        |mut caller: Caller<'_, StoreState>, out_ptr: i32, out_cap: i32| -> i32 {
            let Some(bytes) = caller.data_mut().commands.kept.take() else {
                return Status::NotFound.code();
            };
            hand_over(&mut caller, bytes, out_ptr, out_cap).unwrap_or_else(Status::code)
        },
    )?;
    linker.func_wrap(
        abi::IMPORT_MODULE,
        abi::IMPORT_COMMAND_START,
        |mut caller: Caller<'_, StoreState>, ptr: i32, len: i32| -> i32 {
            if caller.data().job.is_some() {
                return Status::NotAllowed.code();
            }
            let (spec, request) = match request(&mut caller, ptr, len) {
                Ok(admitted) => admitted,
                Err(status) => return status.code(),
            };
            let state = caller.data();
            let context = Arc::clone(&state.context);
            let Some(jobs) = context.services.jobs().cloned() else {
                return Status::Unavailable.code();
            };
            match jobs.start_command(&context, state.commands.max_jobs, spec, request) {
                Ok(id) => i32::try_from(id).unwrap_or(Status::Unavailable.code()),
                Err(error) => {
                    context
                        .rates
                        .commands
                        .limited
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(plugin = %context.plugin, %error, "command job not started");
                    error.status().code()
                }
            }
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Result<CommandGrants, (&'static str, String, String)> {
        #[derive(Deserialize)]
        struct File {
            commands: BTreeMap<String, FileCommand>,
        }
        let file: File = toml::from_str(text).unwrap();
        resolve(&file.commands)
    }

    fn spec(argv: &[&str]) -> CommandSpec {
        CommandSpec {
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
            allow_args: false,
            timeout: Duration::from_secs(5),
            max_output: 1024,
            cwd: PathBuf::from("/"),
            env: BTreeMap::new(),
        }
    }

    fn run(spec: &CommandSpec, args: &[&str], stdin: &[u8]) -> abi::CommandResult {
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(execute(spec, &args, stdin.to_vec(), spec.timeout, None))
    }

    #[test]
    fn tables_are_checked() {
        let grants = table(
            "[commands.reload]\nargv = [\"/bin/echo\", \"hi\"]\ntimeout = \"2s\"\nenv = { A = \"1\" }\n",
        )
        .unwrap();
        let reload = &grants["reload"];
        assert_eq!(reload.argv, ["/bin/echo", "hi"]);
        assert!(!reload.allow_args, "extra arguments are off by default");
        assert_eq!(reload.timeout, Duration::from_secs(2));
        assert_eq!(reload.max_output, 64 << 10);
        assert_eq!(reload.cwd, PathBuf::from("/"));
        for (text, key) in [
            ("[commands.r]\nargv = []\n", "argv"),
            ("[commands.r]\nargv = [\"echo\"]\n", "argv"),
            (
                "[commands.r]\nargv = [\"/bin/echo\"]\ntimeout = \"0s\"\n",
                "timeout",
            ),
            (
                "[commands.r]\nargv = [\"/bin/echo\"]\nmax_output_kib = 5000\n",
                "max_output_kib",
            ),
            (
                "[commands.r]\nargv = [\"/bin/echo\"]\ncwd = \"rel\"\n",
                "cwd",
            ),
            (
                "[commands.r]\nargv = [\"/bin/echo\"]\nenv = { \"A=B\" = \"1\" }\n",
                "env",
            ),
            ("[commands.\"a b\"]\nargv = [\"/bin/echo\"]\n", "commands"),
        ] {
            assert_eq!(table(text).unwrap_err().0, key, "{text}");
        }
    }

    #[test]
    fn only_granted_names_run_and_args_need_allow_args() {
        let mut grants = CommandGrants::new();
        grants.insert("reload".into(), spec(&["/bin/true"]));
        let counters = CommandCounters::default();
        let now = Instant::now();
        let ask = |name: &str, args: &[&str]| abi::CommandRequest {
            name: name.into(),
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            stdin: Vec::new(),
        };
        let refused = admit("p", &grants, &counters, &ask("rm", &[]), now).unwrap_err();
        assert_eq!(refused.status(), Status::Denied);
        assert!(
            refused.to_string().contains("[plugins.p.commands.rm]"),
            "{refused}"
        );
        let refused = admit("p", &grants, &counters, &ask("reload", &["-x"]), now).unwrap_err();
        assert_eq!(refused.status(), Status::NotAllowed);
        assert!(admit("p", &grants, &counters, &ask("reload", &[]), now).is_ok());
        assert_eq!(counters.denials.load(Ordering::Relaxed), 2);
        assert_eq!(counters.calls.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn spawns_are_rate_limited_per_second() {
        let mut grants = CommandGrants::new();
        grants.insert("reload".into(), spec(&["/bin/true"]));
        let counters = CommandCounters::default();
        let now = Instant::now();
        let ask = abi::CommandRequest {
            name: "reload".into(),
            ..abi::CommandRequest::default()
        };
        let allowed = (0..100)
            .filter(|_| admit("p", &grants, &counters, &ask, now).is_ok())
            .count();
        assert_eq!(allowed, SPAWNS_PER_SECOND as usize);
        assert_eq!(counters.limited.load(Ordering::Relaxed), 90);
        let later = now + Duration::from_secs(1);
        assert!(admit("p", &grants, &counters, &ask, later).is_ok());
    }

    #[test]
    fn a_command_gets_its_argv_stdin_and_only_the_table_env() {
        let mut spec = spec(&[
            "/bin/sh",
            "-c",
            "echo \"$1 $A ${HOME:-nohome}\"; cat; echo err >&2; exit 3",
            "sh",
        ]);
        spec.env.insert("A".into(), "from-table".into());
        spec.allow_args = true;
        let result = run(&spec, &["arg"], b"in\n");
        assert_eq!(result.exit_status, 3);
        assert_eq!(
            String::from_utf8_lossy(&result.stdout),
            "arg from-table nohome\nin\n"
        );
        assert_eq!(result.stderr, b"err\n");
        assert!(!result.timed_out && !result.truncated && result.error.is_empty());
    }

    #[test]
    fn output_is_capped_and_the_rest_drained() {
        let spec = spec(&["/bin/sh", "-c", "head -c 1000000 /dev/zero; echo done >&2"]);
        let result = run(&spec, &[], b"");
        assert_eq!(result.stdout.len(), 1024);
        assert!(result.truncated);
        assert_eq!(result.exit_status, 0);
        assert_eq!(
            result.stderr, b"done\n",
            "the command was not blocked on a full pipe"
        );
    }

    #[test]
    fn a_timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survived");
        let script = format!("(sleep 2; touch {}) & sleep 30", marker.display());
        let mut spec = spec(&["/bin/sh", "-c", &script]);
        spec.timeout = Duration::from_millis(300);
        let result = run(&spec, &[], b"");
        assert!(result.timed_out, "{result:?}");
        assert_eq!(result.exit_status, -1);
        assert!(result.duration_ms < 5_000, "{result:?}");
        std::thread::sleep(Duration::from_millis(2500));
        assert!(
            !marker.exists(),
            "the background child was killed with the group"
        );
    }

    #[test]
    fn a_missing_program_is_an_error_not_a_panic() {
        let result = run(&spec(&["/nonexistent/reload"]), &[], b"");
        assert_eq!(result.exit_status, -1);
        assert!(
            result.error.contains("cannot start /nonexistent/reload"),
            "{result:?}"
        );
    }

    #[test]
    fn lines_reach_the_job_tail_as_they_come() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = {
            let lines = Arc::clone(&lines);
            move |line: &str| lines.lock().unwrap().push(line.to_owned())
        };
        let spec = spec(&["/bin/sh", "-c", "echo one; printf 'two\\033[0m'"]);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let result = runtime.block_on(execute(
            &spec,
            &[],
            Vec::new(),
            spec.timeout,
            Some(&sink as &(dyn Fn(&str) + Send + Sync)),
        ));
        assert_eq!(result.exit_status, 0);
        let lines = lines.lock().unwrap();
        assert_eq!(lines[0], "one");
        assert!(
            lines[1].starts_with("two") && !lines[1].contains('\x1b'),
            "{lines:?}"
        );
    }

    proptest::proptest! {
        /// Whatever bytes a guest hands `command_run`/`command_start`, decoding, the shape check
        /// and admission never panic, and nothing is admitted that the table does not grant:
        /// the name is in the table, and arguments only where `allow_args` says so.
        #[test]
        fn any_guest_bytes_are_refused_or_admitted_within_the_table(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
            name in "[a-z.]{0,8}",
            args in proptest::collection::vec("[ -~]{0,8}", 0..4),
            allow_args in proptest::bool::ANY,
        ) {
            let mut grants = CommandGrants::new();
            let mut granted = spec(&["/bin/true"]);
            granted.allow_args = allow_args;
            grants.insert("reload".to_owned(), granted);
            let counters = CommandCounters::default();
            let mut requests = Vec::new();
            if let Ok(request) = abi::decode::<abi::CommandRequest>(&bytes) {
                requests.push(request);
            }
            let built = abi::CommandRequest { name, args, stdin: Vec::new() };
            let decoded: abi::CommandRequest = abi::decode(&abi::encode(&built)).unwrap();
            proptest::prop_assert_eq!(&decoded, &built);
            requests.push(built);
            for request in requests {
                if request.check().is_err() {
                    continue;
                }
                if let Ok(spec) = admit("p", &grants, &counters, &request, Instant::now()) {
                    proptest::prop_assert_eq!(request.name.as_str(), "reload");
                    proptest::prop_assert!(request.args.is_empty() || spec.allow_args);
                }
            }
        }
    }
}
