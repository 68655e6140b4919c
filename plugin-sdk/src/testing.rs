//! Native unit tests for plugin logic: a [`MockHost`] and event constructors.
//!
//! A plugin's `handle` only sees an [`Event`] and a `&mut dyn Host`, so the same code runs
//! under `cargo test` on the build machine, with no wasm runtime involved:
//!
//! ```
//! use serf_plugin_sdk::testing::{user_event, MockHost};
//! use serf_plugin_sdk::{Error, Event, Host, LogLevel, Plugin};
//!
//! #[derive(Default)]
//! struct Echo;
//!
//! impl Plugin for Echo {
//!     fn handle(&mut self, event: Event, host: &mut dyn Host) -> Result<(), Error> {
//!         if let Event::User(user) = event {
//!             host.info(&format!("got {}", user.name));
//!         }
//!         Ok(())
//!     }
//! }
//!
//! let mut host = MockHost::new();
//! host.deliver(&mut Echo, user_event("deploy", b"v1"))?;
//! assert_eq!(host.logs, [(LogLevel::Info, "got deploy".to_string())]);
//! # Ok::<(), Error>(())
//! ```
//!
//! The constructors fill the fields a test rarely cares about with fixed values (Lamport time
//! 1, node `test-node`, port 7946), so tests stay deterministic. Build the `abi` structs
//! directly when a test needs other values.

use std::collections::{BTreeMap, BTreeSet};

use crate::Plugin;
use crate::abi::{
    ABI_VERSION, Capability, Event, FireEvent, InitContext, LogLevel, Member, Query, QueryDone,
    QueryRequest, QueryResponse, UserEvent,
};
use crate::abi::{CommandRequest, CommandResult, Job, JobDone, JobInfo, JobStart, JobState};
use crate::error::{Error, HostError};
use crate::host::Host;

// Effects (ABI v1.2).
#[path = "testing_effects.rs"]
mod effects;
pub use effects::{MockEffects, MockMetric};

/// Serf's default limit on an encoded query response, in bytes; [`MockHost`]'s default cap on
/// a response payload.
///
/// The agent counts the response header and node name too, so it refuses a little earlier.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 1024;

/// Serf's default limit on a user event's name and payload together, in bytes; the cap
/// [`MockHost::fire_event`](Host::fire_event) applies, like the agent.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 512;

/// Serf's default limit on an encoded query, in bytes; [`MockHost`] caps a query's name and
/// payload together at this (the agent also counts the header, so it refuses a little earlier).
pub const DEFAULT_MAX_QUERY_BYTES: usize = 1024;

/// A [`Host`] that records what a plugin asked for, with the agent's rules for `respond`.
///
/// Drive a plugin through [`MockHost::init`] and [`MockHost::deliver`]: they tell the mock
/// which event is being handled, so `respond` is refused outside a query and after the first
/// answer, as the agent does. Calling `plugin.handle(event, &mut host)` directly also works,
/// but then the mock cannot know whether a query is in progress and allows one response.
#[derive(Debug, Clone)]
pub struct MockHost {
    /// Every accepted response, oldest first (one per query handled).
    pub responses: Vec<Vec<u8>>,
    /// Every log line, oldest first.
    pub logs: Vec<(LogLevel, String)>,
    /// Responses longer than this get [`HostError::TooLarge`]; defaults to
    /// [`DEFAULT_MAX_RESPONSE_BYTES`].
    pub max_response_bytes: usize,
    respond: RespondState,
    // Capabilities (ABI v1.1).
    /// The capabilities granted, none by default as in the agent: calls that need another
    /// one get [`HostError::Denied`]. See [`MockHost::grant`].
    pub granted: BTreeSet<Capability>,
    /// What [`Host::members`] returns (when `members` is granted); empty by default.
    pub members: Vec<Member>,
    /// Every user event fired through [`Host::fire_event`], oldest first.
    pub fired: Vec<FireEvent>,
    /// Every query sent through [`Host::query`], oldest first; the handle of each is its
    /// position plus one.
    pub queries: Vec<QueryRequest>,
    // Jobs (ABI v1.1).
    /// Every job started through [`Host::start_job`] and not reaped, by id (from 1).
    pub jobs: BTreeMap<u32, MockJob>,
    /// Jobs that may be running at once, as the agent's `max_jobs` (default
    /// [`DEFAULT_MAX_JOBS`]); beyond it [`Host::start_job`] gets [`HostError::Unavailable`].
    pub max_jobs: usize,
    last_job_id: u32,
    in_job: bool,
    // Commands (ABI v1.1).
    /// The commands granted, by name, none by default as in the agent: see
    /// [`MockHost::grant_command`].
    pub commands: BTreeMap<String, MockCommand>,
    /// Every command run or started, oldest first (refused calls are not here).
    pub ran: Vec<RanCommand>,
    // Effects (ABI v1.2).
    /// HTTP, state, ticks and metrics: what is granted and what the plugin did.
    pub effects: MockEffects,
}

/// A command granted on a [`MockHost`], as a `[plugins.NAME.commands.CMD]` table grants it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MockCommand {
    /// Whether the plugin may pass arguments (`allow_args`); off by default, as in the agent.
    pub allow_args: bool,
    /// What [`Host::run_command`] returns for it.
    pub result: CommandResult,
}

/// A command the plugin ran through [`Host::run_command`] or started with
/// [`Host::start_command`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RanCommand {
    /// Its name in the table.
    pub name: String,
    /// The arguments the plugin passed.
    pub args: Vec<String>,
    /// The bytes the plugin passed as stdin.
    pub stdin: Vec<u8>,
    /// The job id when started as a job; `None` when waited for.
    pub job: Option<u32>,
}

/// The agent's default `max_jobs`: jobs of one plugin that may be running at once.
pub const DEFAULT_MAX_JOBS: usize = 4;

/// A job the plugin started on a [`MockHost`]. It stays `running` until the test ends it with
/// [`MockHost::end_job`] (or the plugin kills it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockJob {
    /// What [`Host::job_status`] returns for it.
    pub info: JobInfo,
    /// The argument it was started with.
    pub arg: Vec<u8>,
}

/// Whether `respond` is allowed right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RespondState {
    /// A query is being handled and has no answer yet.
    Open,
    /// The query being handled was answered.
    Answered,
    /// No query is being handled.
    Closed,
}

impl Default for MockHost {
    fn default() -> Self {
        MockHost::new()
    }
}

impl MockHost {
    /// A host with no calls recorded, which allows one response until told otherwise.
    pub fn new() -> Self {
        MockHost {
            responses: Vec::new(),
            logs: Vec::new(),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            respond: RespondState::Open,
            granted: BTreeSet::new(),
            members: Vec::new(),
            fired: Vec::new(),
            queries: Vec::new(),
            jobs: BTreeMap::new(),
            max_jobs: DEFAULT_MAX_JOBS,
            last_job_id: 0,
            in_job: false,
            commands: BTreeMap::new(),
            ran: Vec::new(),
            effects: MockEffects::default(),
        }
    }

    /// Grants command `name` (no extra arguments), which exits 0 with no output; change
    /// [`MockHost::commands`] for other results.
    pub fn grant_command(&mut self, name: &str) -> &mut Self {
        self.commands
            .insert(name.to_owned(), MockCommand::default());
        self
    }

    /// How many times command `name` was run or started.
    pub fn runs_of(&self, name: &str) -> usize {
        self.ran.iter().filter(|ran| ran.name == name).count()
    }

    /// The agent's checks of a command call: granted, arguments allowed, request in shape.
    fn admit_command(&self, name: &str, args: &[&str], stdin: &[u8]) -> Result<(), HostError> {
        let request = CommandRequest {
            name: name.to_owned(),
            args: args.iter().map(|arg| (*arg).to_owned()).collect(),
            stdin: stdin.to_vec(),
        };
        request.check().map_err(|status| {
            HostError::from_code(status.code()).unwrap_or(HostError::BadArgument)
        })?;
        let command = self.commands.get(name).ok_or(HostError::Denied)?;
        if !args.is_empty() && !command.allow_args {
            return Err(HostError::NotAllowed);
        }
        Ok(())
    }

    /// Records a job in state running, within `max_jobs` (else `Unavailable`); its id.
    fn add_running_job(&mut self, name: String, arg: Vec<u8>) -> Result<u32, HostError> {
        let running = self.jobs.values().filter(|job| !job.info.state.is_over());
        if running.count() >= self.max_jobs {
            return Err(HostError::Unavailable);
        }
        self.last_job_id += 1;
        let id = self.last_job_id;
        let info = JobInfo {
            id,
            name,
            state: JobState::Running,
            exit_status: -1,
            error: String::new(),
            started_ms: 1_767_225_600_000,
            ended_ms: 0,
            output: Vec::new(),
        };
        self.jobs.insert(id, MockJob { info, arg });
        Ok(id)
    }

    fn record_command(&mut self, name: &str, args: &[&str], stdin: &[u8], job: Option<u32>) {
        self.ran.push(RanCommand {
            name: name.to_owned(),
            args: args.iter().map(|arg| (*arg).to_owned()).collect(),
            stdin: stdin.to_vec(),
            job,
        });
    }

    /// Grants `capability`, as `capabilities = ["..."]` in `serf.toml` does.
    pub fn grant(&mut self, capability: Capability) -> &mut Self {
        self.granted.insert(capability);
        self
    }

    fn check_grant(&self, capability: Capability) -> Result<(), HostError> {
        if self.granted.contains(&capability) {
            Ok(())
        } else {
            Err(HostError::Denied)
        }
    }

    /// Runs `plugin.init(ctx)` as `serf_init` would (no query in progress).
    pub fn init<P: Plugin + ?Sized>(
        &mut self,
        plugin: &mut P,
        ctx: &InitContext,
    ) -> Result<(), Error> {
        self.respond = RespondState::Closed;
        let result = plugin.init(ctx, self);
        self.respond = RespondState::Closed;
        result
    }

    /// Hands `event` to `plugin.handle` as `serf_handle` would: `respond` is allowed once if
    /// the event is a query, never otherwise.
    pub fn deliver<P: Plugin + ?Sized>(
        &mut self,
        plugin: &mut P,
        event: Event,
    ) -> Result<(), Error> {
        self.respond = match event {
            Event::Query(_) => RespondState::Open,
            _ => RespondState::Closed,
        };
        let result = plugin.handle(event, self);
        self.respond = RespondState::Closed;
        result
    }

    /// Runs `plugin.shutdown()` as `serf_shutdown` would.
    pub fn shutdown<P: Plugin + ?Sized>(&mut self, plugin: &mut P) {
        self.respond = RespondState::Closed;
        plugin.shutdown(self);
    }

    // --- Jobs (ABI v1.1).

    /// Runs `plugin.run_job(job)` as `serf_job` would, in the instance the agent builds for
    /// the job: no query is being handled, and starting another job is not allowed.
    pub fn run_job<P: Plugin + ?Sized>(&mut self, plugin: &mut P, job: Job) -> Result<i32, Error> {
        self.respond = RespondState::Closed;
        self.in_job = true;
        let result = plugin.run_job(job, self);
        self.in_job = false;
        result
    }

    /// Ends job `id` as the agent would (`state` finished, failed or killed; `exit_status`
    /// counts only for finished) and returns the job-done event to [`MockHost::deliver`].
    /// `None` if there is no such job or it has already ended.
    pub fn end_job(&mut self, id: u32, state: JobState, exit_status: i32) -> Option<Event> {
        let job = self
            .jobs
            .get_mut(&id)
            .filter(|job| !job.info.state.is_over())?;
        job.info.state = state;
        job.info.exit_status = if state == JobState::Finished {
            exit_status
        } else {
            -1
        };
        job.info.ended_ms = job.info.started_ms + 1;
        Some(job_done(id, &job.info.name, state, job.info.exit_status))
    }

    /// The most recent accepted response.
    pub fn response(&self) -> Option<&[u8]> {
        self.responses.last().map(Vec::as_slice)
    }

    /// Whether a line at `level` containing `needle` was logged.
    pub fn logged(&self, level: LogLevel, needle: &str) -> bool {
        self.logs
            .iter()
            .any(|(logged_level, message)| *logged_level == level && message.contains(needle))
    }
}

impl Host for MockHost {
    fn respond(&mut self, payload: &[u8]) -> Result<(), HostError> {
        if self.respond != RespondState::Open {
            return Err(HostError::NotAllowed);
        }
        if payload.len() > self.max_response_bytes {
            return Err(HostError::TooLarge);
        }
        self.respond = RespondState::Answered;
        self.responses.push(payload.to_vec());
        Ok(())
    }

    fn log(&mut self, level: LogLevel, message: &str) {
        self.logs.push((level, message.to_owned()));
    }

    fn members(&mut self) -> Result<Vec<Member>, HostError> {
        self.check_grant(Capability::Members)?;
        Ok(self.members.clone())
    }

    fn fire_event(&mut self, name: &str, payload: &[u8], coalesce: bool) -> Result<(), HostError> {
        self.check_grant(Capability::Events)?;
        if name.len() + payload.len() > DEFAULT_MAX_EVENT_BYTES {
            return Err(HostError::TooLarge);
        }
        self.fired.push(FireEvent {
            name: name.to_owned(),
            payload: payload.to_vec(),
            coalesce,
        });
        Ok(())
    }

    fn query(&mut self, request: &QueryRequest) -> Result<u32, HostError> {
        self.check_grant(Capability::Queries)?;
        if request.name.len() + request.payload.len() > DEFAULT_MAX_QUERY_BYTES {
            return Err(HostError::TooLarge);
        }
        self.queries.push(request.clone());
        Ok(u32::try_from(self.queries.len()).unwrap_or(u32::MAX))
    }

    // Jobs (ABI v1.1): the agent's rules, with jobs that run until the test ends them.

    fn start_job(&mut self, name: &str, arg: &[u8]) -> Result<u32, HostError> {
        if self.in_job || self.max_jobs == 0 {
            return Err(HostError::NotAllowed);
        }
        self.check_grant(Capability::Jobs)?;
        let request = JobStart {
            name: name.to_owned(),
            arg: arg.to_vec(),
        };
        request.check().map_err(|status| {
            HostError::from_code(status.code()).unwrap_or(HostError::BadArgument)
        })?;
        self.add_running_job(request.name, request.arg)
    }

    fn job_status(&mut self, id: u32) -> Result<JobInfo, HostError> {
        let job = self.jobs.get(&id).ok_or(HostError::NotFound)?;
        Ok(job.info.clone())
    }

    fn kill_job(&mut self, id: u32) -> Result<(), HostError> {
        let job = self.jobs.get(&id).ok_or(HostError::NotFound)?;
        if job.info.state.is_over() {
            return Err(HostError::NotAllowed);
        }
        self.end_job(id, JobState::Killed, -1);
        Ok(())
    }

    fn reap_job(&mut self, id: u32) -> Result<(), HostError> {
        let job = self.jobs.get(&id).ok_or(HostError::NotFound)?;
        if !job.info.state.is_over() {
            return Err(HostError::NotAllowed);
        }
        self.jobs.remove(&id);
        Ok(())
    }

    fn run_command(
        &mut self,
        name: &str,
        args: &[&str],
        stdin: &[u8],
    ) -> Result<CommandResult, HostError> {
        self.admit_command(name, args, stdin)?;
        self.record_command(name, args, stdin, None);
        Ok(self.commands[name].result.clone())
    }

    fn start_command(&mut self, name: &str, args: &[&str], stdin: &[u8]) -> Result<u32, HostError> {
        if self.in_job || self.max_jobs == 0 {
            return Err(HostError::NotAllowed);
        }
        self.admit_command(name, args, stdin)?;
        let id = self.add_running_job(name.to_owned(), stdin.to_vec())?;
        self.record_command(name, args, stdin, Some(id));
        Ok(id)
    }

    // Effects (ABI v1.2): see [`MockEffects`].

    fn http(
        &mut self,
        request: &crate::abi::HttpRequest,
    ) -> Result<crate::abi::HttpResponse, HostError> {
        self.effects.http(request)
    }

    fn state_get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, HostError> {
        self.effects.state_get(key)
    }

    fn state_set(&mut self, key: &[u8], value: &[u8]) -> Result<(), HostError> {
        self.effects.state_set(key, value)
    }

    fn state_delete(&mut self, key: &[u8]) -> Result<bool, HostError> {
        self.effects.state_delete(key)
    }

    fn state_list(
        &mut self,
        prefix: &[u8],
        after: &[u8],
        limit: u32,
    ) -> Result<crate::abi::StateKeys, HostError> {
        self.effects.state_list(prefix, after, limit)
    }

    fn set_tick(&mut self, period: std::time::Duration) -> Result<(), HostError> {
        self.effects.set_tick(period)
    }

    fn define_metric(
        &mut self,
        name: &str,
        kind: crate::abi::MetricKind,
        help: &str,
    ) -> Result<u32, HostError> {
        let _ = help;
        self.effects.define_metric(name, kind)
    }

    fn record_metric(&mut self, id: u32, value: f64) -> Result<(), HostError> {
        self.effects.record_metric(id, value)
    }
}

/// A user event `name` with `payload` (Lamport time 1, no coalescing).
pub fn user_event(name: &str, payload: &[u8]) -> Event {
    Event::User(UserEvent {
        name: name.to_owned(),
        payload: payload.to_vec(),
        ltime: 1,
        coalesce: false,
    })
}

/// A query `name` with `payload` from `test-node` (id 1, Lamport time 1, a deadline in 2100).
pub fn query(name: &str, payload: &[u8]) -> Event {
    Event::Query(Query {
        id: 1,
        name: name.to_owned(),
        payload: payload.to_vec(),
        ltime: 1,
        source_node: "test-node".to_owned(),
        deadline_ms: 4_102_444_800_000,
    })
}

/// An alive member `name` at `addr`, port 7946, without tags.
pub fn member(name: &str, addr: &str) -> Member {
    Member {
        name: name.to_owned(),
        addr: addr.to_owned(),
        port: 7946,
        tags: Default::default(),
        status: "alive".to_owned(),
    }
}

/// A `member-join` event.
pub fn member_join(members: impl IntoIterator<Item = Member>) -> Event {
    Event::MemberJoin {
        members: members.into_iter().collect(),
    }
}

/// A `member-leave` event.
pub fn member_leave(members: impl IntoIterator<Item = Member>) -> Event {
    Event::MemberLeave {
        members: members.into_iter().collect(),
    }
}

/// A `member-failed` event.
pub fn member_failed(members: impl IntoIterator<Item = Member>) -> Event {
    Event::MemberFailed {
        members: members.into_iter().collect(),
    }
}

/// A `member-update` event.
pub fn member_update(members: impl IntoIterator<Item = Member>) -> Event {
    Event::MemberUpdate {
        members: members.into_iter().collect(),
    }
}

/// A `member-reap` event.
pub fn member_reap(members: impl IntoIterator<Item = Member>) -> Event {
    Event::MemberReap {
        members: members.into_iter().collect(),
    }
}

/// The event the host sends after it had to drop `count` events for this plugin.
pub fn dropped(count: u64) -> Event {
    Event::Dropped { count }
}

/// A tick (ABI v1.2, timers), with no tick coalesced into it.
pub fn tick() -> Event {
    Event::Tick(crate::abi::Tick { coalesced: 0 })
}

/// `from`'s answer `payload` to the query with handle `query`, named `name`.
pub fn query_response(query: u32, name: &str, from: &str, payload: &[u8]) -> Event {
    Event::QueryResponse(QueryResponse {
        query,
        name: name.to_owned(),
        from: from.to_owned(),
        payload: payload.to_vec(),
    })
}

/// The end of the query with handle `query`, named `name`, which ran its course.
pub fn query_done(query: u32, name: &str) -> Event {
    Event::QueryDone(QueryDone {
        query,
        name: name.to_owned(),
        error: String::new(),
    })
}

/// Job `id` named `name` with `arg`, as `serf_job` receives it.
pub fn job(id: u32, name: &str, arg: &[u8]) -> Job {
    Job {
        id,
        name: name.to_owned(),
        arg: arg.to_vec(),
    }
}

/// The event the agent sends when job `id` named `name` ended in `state`; `exit_status` is
/// kept for `finished` and -1 otherwise, and the error is empty.
pub fn job_done(id: u32, name: &str, state: JobState, exit_status: i32) -> Event {
    Event::JobDone(JobDone {
        id,
        name: name.to_owned(),
        state,
        exit_status: if state == JobState::Finished {
            exit_status
        } else {
            -1
        },
        error: String::new(),
    })
}

/// The init context of plugin `test-plugin` on node `test-node`, with these config pairs.
///
/// ```
/// let ctx = serf_plugin_sdk::testing::init_context([("file", "/tmp/x".into()), ("n", 3.into())]);
/// assert_eq!(ctx.config_str("file"), Some("/tmp/x"));
/// ```
pub fn init_context<'a>(config: impl IntoIterator<Item = (&'a str, rmpv::Value)>) -> InitContext {
    InitContext {
        abi: ABI_VERSION,
        host: concat!("serf/", env!("CARGO_PKG_VERSION")).to_owned(),
        node: "test-node".to_owned(),
        plugin: "test-plugin".to_owned(),
        config: config
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers every query twice and logs the outcome of each attempt.
    #[derive(Default)]
    struct Greedy;

    impl Plugin for Greedy {
        fn handle(&mut self, event: Event, host: &mut dyn Host) -> Result<(), Error> {
            let first = host.respond(b"one");
            let second = host.respond(b"two");
            host.info(&format!("{} {first:?} {second:?}", event.kind()));
            Ok(())
        }
    }

    #[test]
    fn a_query_gets_one_response() {
        let mut host = MockHost::new();
        host.deliver(&mut Greedy, query("q", b"")).unwrap();
        assert_eq!(host.responses, [b"one".to_vec()]);
        assert!(host.logged(LogLevel::Info, "query Ok(()) Err(NotAllowed)"));
    }

    #[test]
    fn every_query_may_be_answered_once() {
        let mut host = MockHost::new();
        host.deliver(&mut Greedy, query("q", b"")).unwrap();
        host.deliver(&mut Greedy, query("q", b"")).unwrap();
        assert_eq!(host.responses.len(), 2);
    }

    #[test]
    fn responding_outside_a_query_is_not_allowed() {
        let mut host = MockHost::new();
        host.deliver(&mut Greedy, user_event("e", b"")).unwrap();
        host.deliver(&mut Greedy, member_join([member("a", "127.0.0.1")]))
            .unwrap();
        assert!(host.responses.is_empty());
        assert!(host.logged(LogLevel::Info, "user Err(NotAllowed) Err(NotAllowed)"));
    }

    #[test]
    fn oversized_responses_are_refused_and_not_recorded() {
        let mut host = MockHost::new();
        host.max_response_bytes = 2;
        host.deliver(&mut Greedy, query("q", b"")).unwrap();
        assert!(host.responses.is_empty());
        assert!(host.logged(LogLevel::Info, "Err(TooLarge) Err(TooLarge)"));
    }

    /// Uses every capability on each user event and logs what each call returned.
    #[derive(Default)]
    struct Curious;

    impl Plugin for Curious {
        fn handle(&mut self, _event: Event, host: &mut dyn Host) -> Result<(), Error> {
            let members = host.members().map(|members| members.len());
            let fired = host.fire_event("ping", b"", false);
            let queried = host.query(&QueryRequest {
                name: "who".into(),
                ..QueryRequest::default()
            });
            host.info(&format!("{members:?} {fired:?} {queried:?}"));
            Ok(())
        }
    }

    #[test]
    fn capabilities_are_denied_until_granted() {
        let mut host = MockHost::new();
        host.members = vec![member("a", "127.0.0.1")];
        host.deliver(&mut Curious, user_event("e", b"")).unwrap();
        assert!(host.logged(LogLevel::Info, "Err(Denied) Err(Denied) Err(Denied)"));
        assert!(host.fired.is_empty() && host.queries.is_empty());

        host.grant(Capability::Members)
            .grant(Capability::Events)
            .grant(Capability::Queries);
        host.deliver(&mut Curious, user_event("e", b"")).unwrap();
        host.deliver(&mut Curious, user_event("e", b"")).unwrap();
        assert!(host.logged(LogLevel::Info, "Ok(1) Ok(()) Ok(1)"));
        assert!(host.logged(LogLevel::Info, "Ok(1) Ok(()) Ok(2)"));
        assert_eq!(host.fired.len(), 2);
        assert_eq!(host.fired[0].name, "ping");
        assert_eq!(host.queries[1].name, "who");
    }

    #[test]
    fn oversized_events_and_queries_are_refused() {
        let mut host = MockHost::new();
        host.grant(Capability::Events).grant(Capability::Queries);
        let big = vec![0; DEFAULT_MAX_QUERY_BYTES];
        assert_eq!(host.fire_event("e", &big, false), Err(HostError::TooLarge));
        let request = QueryRequest {
            name: "q".into(),
            payload: big,
            ..QueryRequest::default()
        };
        assert_eq!(host.query(&request), Err(HostError::TooLarge));
        assert!(host.fired.is_empty() && host.queries.is_empty());
    }

    #[test]
    fn init_context_carries_the_config_pairs() {
        let ctx = init_context([("mode", "loop".into())]);
        assert_eq!(ctx.abi, ABI_VERSION);
        assert_eq!(ctx.plugin, "test-plugin");
        assert_eq!(ctx.config_str("mode"), Some("loop"));
        assert!(init_context([]).config.is_empty());
    }

    // --- Jobs (ABI v1.1).

    /// Starts a job per user event; its job tries to start another one and logs the outcome.
    #[derive(Default)]
    struct Starter;

    impl Plugin for Starter {
        fn handle(&mut self, event: Event, host: &mut dyn Host) -> Result<(), Error> {
            if let Event::User(user) = event {
                let id = host.start_job(&user.name, &user.payload)?;
                host.info(&format!("started {id}"));
            }
            Ok(())
        }

        fn run_job(&mut self, job: Job, host: &mut dyn Host) -> Result<i32, Error> {
            let nested = host.start_job("nested", b"");
            host.info(&format!("job {} nested {nested:?}", job.id));
            Ok(i32::try_from(job.arg.len()).unwrap_or(-1))
        }
    }

    #[test]
    fn jobs_run_until_the_test_ends_them() {
        let mut host = MockHost::new();
        host.grant(Capability::Jobs);
        host.deliver(&mut Starter, user_event("deploy", b"v2"))
            .unwrap();
        assert!(host.logged(LogLevel::Info, "started 1"));
        assert_eq!(host.jobs[&1].info.state, JobState::Running);
        assert_eq!(host.reap_job(1), Err(HostError::NotAllowed));
        let done = host.end_job(1, JobState::Finished, 5).unwrap();
        assert_eq!(done, job_done(1, "deploy", JobState::Finished, 5));
        assert_eq!(
            host.end_job(1, JobState::Killed, 0),
            None,
            "an end is final"
        );
        assert_eq!(host.kill_job(1), Err(HostError::NotAllowed));
        assert_eq!(host.job_status(1).unwrap().exit_status, 5);
        host.reap_job(1).unwrap();
        assert_eq!(host.job_status(1), Err(HostError::NotFound));
    }

    #[test]
    fn a_job_may_not_start_jobs() {
        let mut host = MockHost::new();
        host.grant(Capability::Jobs);
        assert_eq!(host.run_job(&mut Starter, job(3, "x", b"abc")), Ok(3));
        assert!(host.logged(LogLevel::Info, "job 3 nested Err(NotAllowed)"));
        assert!(host.jobs.is_empty());
    }

    #[test]
    fn job_requests_follow_the_agent_rules() {
        let mut host = MockHost::new();
        host.grant(Capability::Jobs);
        assert_eq!(host.start_job("", b""), Err(HostError::BadArgument));
        assert_eq!(host.start_job("a\nb", b""), Err(HostError::BadArgument));
        let big = vec![0; crate::abi::MAX_JOB_ARG_BYTES + 1];
        assert_eq!(host.start_job("big", &big), Err(HostError::TooLarge));
        host.max_jobs = 1;
        host.start_job("one", b"").unwrap();
        assert_eq!(host.start_job("two", b""), Err(HostError::Unavailable));
        host.max_jobs = 0;
        assert_eq!(host.start_job("none", b""), Err(HostError::NotAllowed));
    }

    #[test]
    fn plugins_run_no_jobs_unless_they_say_how() {
        let mut host = MockHost::new();
        host.grant(Capability::Jobs);
        let error = host
            .run_job(&mut Greedy, job(1, "deploy", b""))
            .unwrap_err();
        assert!(error.message().contains("runs no jobs"), "{error}");
    }
}
