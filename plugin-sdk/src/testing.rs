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

use crate::Plugin;
use crate::abi::{ABI_VERSION, Event, InitContext, LogLevel, Member, Query, UserEvent};
use crate::error::{Error, HostError};
use crate::host::Host;

/// Serf's default limit on an encoded query response, in bytes; [`MockHost`]'s default cap on
/// a response payload.
///
/// The agent counts the response header and node name too, so it refuses a little earlier.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 1024;

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

    #[test]
    fn init_context_carries_the_config_pairs() {
        let ctx = init_context([("mode", "loop".into())]);
        assert_eq!(ctx.abi, ABI_VERSION);
        assert_eq!(ctx.plugin, "test-plugin");
        assert_eq!(ctx.config_str("mode"), Some("loop"));
        assert!(init_context([]).config.is_empty());
    }
}
