//! [`Host`]: what a plugin may ask of the agent while it runs.
//!
//! In a wasm build the SDK hands plugins an implementation that calls the `serf.*` imports; in
//! native tests [`MockHost`](crate::testing::MockHost) records the calls instead. Plugin code
//! takes `&mut dyn Host` and never knows which one it has.

use crate::abi::{CommandResult, JobInfo, LogLevel, Member, QueryRequest};
use crate::error::HostError;

/// The agent, as seen from inside a plugin call.
///
/// Host calls never call back into the plugin, and never block except
/// [`Host::run_command`], which waits for its command (only this plugin waits, and no longer
/// than the event's deadline).
pub trait Host {
    /// Answers the query being handled with `payload`.
    ///
    /// Allowed only while handling an [`Event::Query`](crate::Event::Query), and only once per
    /// query: otherwise [`HostError::NotAllowed`]. The encoded response must fit Serf's query
    /// response limit (1024 bytes including about 30 bytes of header and the node name), so
    /// keep payloads well under 1 KiB: a larger one gets [`HostError::TooLarge`] and nothing
    /// is sent.
    fn respond(&mut self, payload: &[u8]) -> Result<(), HostError>;

    /// Writes one line to the agent's log, attributed to this plugin.
    ///
    /// The host truncates long lines and rate-limits chatty plugins; a refused line is dropped
    /// silently, since there is nowhere better to report it.
    fn log(&mut self, level: LogLevel, message: &str);

    /// [`Host::log`] at [`LogLevel::Trace`].
    fn trace(&mut self, message: &str) {
        self.log(LogLevel::Trace, message);
    }

    /// [`Host::log`] at [`LogLevel::Debug`].
    fn debug(&mut self, message: &str) {
        self.log(LogLevel::Debug, message);
    }

    /// [`Host::log`] at [`LogLevel::Info`].
    fn info(&mut self, message: &str) {
        self.log(LogLevel::Info, message);
    }

    /// [`Host::log`] at [`LogLevel::Warn`].
    fn warn(&mut self, message: &str) {
        self.log(LogLevel::Warn, message);
    }

    /// [`Host::log`] at [`LogLevel::Error`].
    fn error(&mut self, message: &str) {
        self.log(LogLevel::Error, message);
    }

    // --- Capabilities (ABI v1.1). Each needs a grant in the plugin's `serf.toml` table, such
    // as `capabilities = ["members", "events", "queries"]`; without it the call fails with
    // [`HostError::Denied`]. The defaults here deny, for hosts written before them.

    /// Every member this node knows, the local node included, in name order.
    ///
    /// Needs the `members` capability and crate feature. The list is a snapshot the agent refreshes about once a
    /// second and on every membership event, so it may lag the cluster slightly.
    fn members(&mut self) -> Result<Vec<Member>, HostError> {
        Err(HostError::Denied)
    }

    /// Fires a user event across the cluster, as `serf event` does.
    ///
    /// Needs the `events` capability and crate feature. The agent queues it and returns at once; name and
    /// payload together must fit its user event size limit (512 bytes by default, else
    /// [`HostError::TooLarge`]), and a plugin may send about ten events and queries per second
    /// ([`HostError::RateLimited`] beyond). Careful: a plugin that fires the events it handles
    /// keeps the cluster busy.
    fn fire_event(&mut self, name: &str, payload: &[u8], coalesce: bool) -> Result<(), HostError> {
        let _ = (name, payload, coalesce);
        Err(HostError::Denied)
    }

    /// Sends a query across the cluster, as `serf query` does, and returns its handle.
    ///
    /// Needs the `queries` capability and crate feature. The answers arrive later, as
    /// [`Event::QueryResponse`](crate::Event::QueryResponse) events carrying the handle, then
    /// one [`Event::QueryDone`](crate::Event::QueryDone); they come through this plugin's queue
    /// whatever its `events` filter says. The same size and rate limits as
    /// [`Host::fire_event`] apply (the query size limit is 1024 bytes by default).
    fn query(&mut self, request: &QueryRequest) -> Result<u32, HostError> {
        let _ = request;
        Err(HostError::Denied)
    }

    // --- Jobs (ABI v1.1). They need the SDK's `jobs` crate feature (which also makes the
    // module export `serf_job`, run by `Plugin::run_job`). The defaults here refuse, for hosts
    // written before them.

    /// Starts a job: the agent runs [`Plugin::run_job`](crate::Plugin::run_job) in a separate
    /// instance of this plugin, on a worker, and this call returns its id at once, so the
    /// plugin's next event does not wait for it.
    ///
    /// `name` (1 to 128 bytes of text, no control characters, else [`HostError::BadArgument`])
    /// says what the job is; `arg` (at most 64 KiB, else [`HostError::TooLarge`]) is its input.
    /// The end arrives later as an [`Event::JobDone`](crate::Event::JobDone) through this
    /// plugin's queue, whatever its `events` filter says. [`HostError::Unavailable`] when the
    /// plugin already has `max_jobs` jobs that have not ended (or the agent is stopping);
    /// [`HostError::NotAllowed`] inside a job, or when `max_jobs = 0`.
    fn start_job(&mut self, name: &str, arg: &[u8]) -> Result<u32, HostError> {
        let _ = (name, arg);
        Err(HostError::NotAllowed)
    }

    /// The state, exit status and output tail of one of this plugin's jobs;
    /// [`HostError::NotFound`] for an id it does not own (or that was reaped).
    fn job_status(&mut self, id: u32) -> Result<JobInfo, HostError> {
        let _ = id;
        Err(HostError::NotAllowed)
    }

    /// Kills one of this plugin's jobs that has not ended. The job ends as `killed` almost at
    /// once (its instance is interrupted, even in a sleep) and a job-done event follows.
    /// [`HostError::NotAllowed`] if it has already ended.
    fn kill_job(&mut self, id: u32) -> Result<(), HostError> {
        let _ = id;
        Err(HostError::NotAllowed)
    }

    /// Deletes the record of one of this plugin's jobs that has ended, on disk too.
    /// [`HostError::NotAllowed`] while it has not ended.
    fn reap_job(&mut self, id: u32) -> Result<(), HostError> {
        let _ = id;
        Err(HostError::NotAllowed)
    }
    // --- Commands (ABI v1.1). They need the SDK's `commands` crate feature and a
    // `[plugins.NAME.commands.CMD]` table in serf.toml for each command; the defaults here
    // deny, for hosts written before them.

    /// Runs the host command the plugin's table calls `name` and waits for it (within the
    /// command's `timeout` and this call's deadline); returns its exit status and its stdout
    /// and stderr, each cut at the table's `max_output_kib`.
    ///
    /// The table fixes the program and its arguments: no shell runs. `args` are appended only
    /// where the table says `allow_args = true` (else [`HostError::NotAllowed`], and nothing
    /// runs); `stdin` (at most 64 KiB) is written to its stdin. A name the table does not grant
    /// is [`HostError::Denied`]; more than ten commands a second is
    /// [`HostError::RateLimited`]. A command that could not start, was killed or timed out is
    /// still `Ok`: [`CommandResult::error`] says what happened. Only this plugin waits: keep
    /// waited-for commands quick (`systemctl reload haproxy`) and start long ones with
    /// [`Host::start_command`].
    fn run_command(
        &mut self,
        name: &str,
        args: &[&str],
        stdin: &[u8],
    ) -> Result<CommandResult, HostError> {
        let _ = (name, args, stdin);
        Err(HostError::Denied)
    }

    /// Starts the host command the plugin's table calls `name` as a job and returns its id at
    /// once. Check it with [`Host::job_status`] (its output tail holds the command's last lines
    /// of stdout and stderr), stop it with [`Host::kill_job`] (its whole process group is
    /// killed) and delete its record with [`Host::reap_job`] (those three need the `jobs`
    /// crate feature); its end arrives as an [`Event::JobDone`](crate::Event::JobDone). It
    /// counts against the plugin's `max_jobs` ([`HostError::Unavailable`] beyond). The same
    /// grant, argument and rate rules as [`Host::run_command`] apply.
    fn start_command(&mut self, name: &str, args: &[&str], stdin: &[u8]) -> Result<u32, HostError> {
        let _ = (name, args, stdin);
        Err(HostError::Denied)
    }

    // --- Effects (ABI v1.2). Each needs its crate feature (`http`, `state`, `timers`,
    // `metrics`), which links its imports, and its grant in the plugin's `serf.toml` table;
    // otherwise the call fails with [`HostError::Denied`]. The defaults here deny, for hosts
    // written before them.

    /// Makes an HTTP(S) request and returns the response, whatever its status.
    ///
    /// Needs `[plugins.NAME.http]` with the URL's origin in `allow`; any other origin, and a
    /// redirect to one, is [`HostError::Denied`] before any connection. The call waits for
    /// the response (the agent does not), within the table's `timeout` and the event's
    /// deadline ([`HostError::Unavailable`] on a timeout or a connection failure);
    /// [`HostError::TooLarge`] for a response body over `max_response_kib`;
    /// [`HostError::RateLimited`] beyond `max_concurrent` or `per_second`.
    fn http(
        &mut self,
        request: &crate::abi::HttpRequest,
    ) -> Result<crate::abi::HttpResponse, HostError> {
        let _ = request;
        Err(HostError::Denied)
    }

    /// POSTs `body` as `application/json` to `url`: [`Host::http`] for webhooks.
    fn post_json(&mut self, url: &str, body: &[u8]) -> Result<crate::abi::HttpResponse, HostError> {
        self.http(&crate::abi::HttpRequest {
            method: "POST".into(),
            url: url.into(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_vec(),
            timeout_ms: 0,
        })
    }

    /// The value stored under `key`, or `None`. Needs `[plugins.NAME.state]`.
    ///
    /// The store is the plugin's, on the agent's disk: it survives traps, reloads and
    /// restarts. Keys have 1 to 1024 bytes ([`HostError::TooLarge`] otherwise).
    fn state_get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, HostError> {
        let _ = key;
        Err(HostError::Denied)
    }

    /// Stores `value` under `key`, durably, before it returns. [`HostError::TooLarge`] for a
    /// value over the table's `max_value_bytes` or a store over its quota (`max_bytes`,
    /// `max_keys`).
    fn state_set(&mut self, key: &[u8], value: &[u8]) -> Result<(), HostError> {
        let _ = (key, value);
        Err(HostError::Denied)
    }

    /// Deletes `key`; returns whether it was there.
    fn state_delete(&mut self, key: &[u8]) -> Result<bool, HostError> {
        let _ = key;
        Err(HostError::Denied)
    }

    /// Up to `limit` keys (at most 1000; 0 for 1000) that start with `prefix` and come after
    /// `after` (empty: from the first), in byte order; `more` says whether others follow.
    fn state_list(
        &mut self,
        prefix: &[u8],
        after: &[u8],
        limit: u32,
    ) -> Result<crate::abi::StateKeys, HostError> {
        let _ = (prefix, after, limit);
        Err(HostError::Denied)
    }

    /// Ticks every `period` from now on ([`Event::Tick`](crate::Event::Tick) through this
    /// plugin's queue, at most one queued at a time); `Duration::ZERO` stops them. Needs
    /// `tick` in the plugin's table; [`HostError::BadArgument`] under 100 ms.
    fn set_tick(&mut self, period: std::time::Duration) -> Result<(), HostError> {
        let _ = period;
        Err(HostError::Denied)
    }

    /// Defines a metric (or finds the one of that name and kind) and returns its id. Names
    /// are 1 to 64 bytes of `a-z`, `0-9` and `_`, starting with a letter. Needs
    /// `[plugins.NAME.metrics]`; [`HostError::TooLarge`] past its `max_metrics`.
    fn define_metric(
        &mut self,
        name: &str,
        kind: crate::abi::MetricKind,
        help: &str,
    ) -> Result<u32, HostError> {
        let _ = (name, kind, help);
        Err(HostError::Denied)
    }

    /// Adds `value` to a counter (not negative), sets a gauge, or observes into a histogram.
    fn record_metric(&mut self, id: u32, value: f64) -> Result<(), HostError> {
        let _ = (id, value);
        Err(HostError::Denied)
    }
}
