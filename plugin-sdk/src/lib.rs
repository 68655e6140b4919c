//! Write serf event handlers as sandboxed WebAssembly plugins.
//!
//! A plugin is a type implementing [`Plugin`], registered once per crate with
//! [`register_plugin!`]. Built for `wasm32-wasip1` as a `cdylib`, the crate becomes a module
//! the agent loads from `serf.toml`: the macro emits the exports of the plugin ABI (see
//! `docs/plugin-abi.md`), decodes each event and calls your [`Plugin::handle`] with a
//! [`Host`] for answering queries and logging. Built natively, nothing is exported and the
//! same logic unit-tests against [`testing::MockHost`].
//!
//! ```
//! use serf_plugin_sdk::testing::{query, MockHost};
//! use serf_plugin_sdk::{Error, Event, Host, Plugin};
//!
//! /// Answers `upcase` queries with the payload in upper case.
//! #[derive(Default)]
//! struct Upcase;
//!
//! impl Plugin for Upcase {
//!     fn handle(&mut self, event: Event, host: &mut dyn Host) -> Result<(), Error> {
//!         if let Event::Query(query) = event
//!             && query.name == "upcase"
//!         {
//!             host.respond(&query.payload.to_ascii_uppercase())?;
//!         }
//!         Ok(())
//!     }
//! }
//!
//! serf_plugin_sdk::register_plugin!(Upcase);
//!
//! // Natively, the same code runs against a mock host.
//! let mut host = MockHost::new();
//! host.deliver(&mut Upcase, query("upcase", b"foo"))?;
//! assert_eq!(host.response(), Some(&b"FOO"[..]));
//! # Ok::<(), Error>(())
//! ```
//!
//! The agent hands one plugin its events one at a time, in order, on one long-lived instance,
//! so `&mut self` state carries from event to event. It runs every call under a fuel budget, a
//! memory cap and a wall-clock deadline; a panic or an exceeded limit traps, and the agent
//! throws the instance away and builds a fresh one (`Default`, then [`Plugin::init`] again).
//! The crate README covers building, the event model and these limits.
//!
//! Capabilities (ABI v1.1): [`Host::members`], [`Host::fire_event`] and [`Host::query`] work
//! only when the crate feature of the same name (`members`, `events`, `queries`) links their
//! import and the plugin's `serf.toml` table grants them; otherwise they return
//! [`HostError::Denied`].
//!
//! With the `json` feature, payloads read as JSON (`query.json::<T>()`) and answers are
//! written from your types (`host.respond_json(&value)`): see the `json` module.
//!
//! Modules: [`abi`] is the wire contract shared with the agent; [`testing`] is for native
//! tests; `sys` (wasm builds only) declares the raw host-call imports for code that must break
//! the rules on purpose.
#![warn(missing_docs)]

pub mod abi;
mod config;
#[cfg(any(
    test,
    all(
        target_family = "wasm",
        any(feature = "http", feature = "state", feature = "metrics")
    )
))]
mod effects_wire;
mod error;
#[cfg(test)]
mod fixtures;
#[cfg(target_family = "wasm")]
#[doc(hidden)]
pub mod guest;
mod host;
#[cfg(any(target_family = "wasm", test))]
mod input;
#[cfg(feature = "json")]
pub mod json;
pub mod testing;

pub use abi::{Envelope, Event, InitContext, LogLevel, Member, Query, Status, UserEvent};
// Capabilities (ABI v1.1).
pub use abi::{Capability, QueryDone, QueryRequest, QueryResponse};
// Jobs (ABI v1.1).
pub use abi::{Job, JobDone, JobInfo, JobState};
// Commands (ABI v1.1).
pub use abi::{CommandRequest, CommandResult};
// Effects (ABI v1.2).
pub use abi::{HttpRequest, HttpResponse, MetricKind, StateKeys, Tick};
pub use error::{Error, HostError};
#[cfg(target_family = "wasm")]
pub use guest::sys;
pub use host::Host;
// JSON helpers: the versions of serde and serde_json the SDK is built with.
#[cfg(feature = "json")]
pub use {serde, serde_json};

/// An event handler. The agent keeps one value of it per plugin instance.
///
/// The type must also be `Default + 'static` for [`register_plugin!`]: the SDK builds the value
/// with `Default::default()` inside `serf_init`, then calls [`Plugin::init`].
pub trait Plugin {
    /// Called once per instance, before any event, with the plugin's `serf.toml` settings.
    ///
    /// Return an error to refuse the configuration: the agent logs the message, drops this
    /// instance, and tries again later with backoff. `host` allows logging; `respond` is
    /// refused here.
    fn init(&mut self, ctx: &InitContext, host: &mut dyn Host) -> Result<(), Error> {
        let _ = (ctx, host);
        Ok(())
    }

    /// Handles one event. Events arrive one at a time, in the order the agent saw them.
    ///
    /// Ignore the kinds you do not care about by returning `Ok(())`. An error is logged and
    /// counted by the agent, which keeps the instance and goes on with the next event.
    fn handle(&mut self, event: Event, host: &mut dyn Host) -> Result<(), Error>;

    /// Called at most once, best effort, before the agent drops the instance on shutdown or
    /// reload. Not called after a trap. Keep it short: it gets the `fuel_init` budget and at
    /// most one second.
    fn shutdown(&mut self, host: &mut dyn Host) {
        let _ = host;
    }

    // --- Jobs (ABI v1.1).

    /// Runs one job that [`Host::start_job`] started, in an instance of its own: the agent
    /// builds a fresh value (`Default`, then [`Plugin::init`]) on a worker, away from the
    /// plugin's events, under the plugin's job budget (`job_fuel`, `job_timeout`,
    /// `job_max_memory_mib`).
    ///
    /// `Ok(status)` is the job's exit status (0 for success, by convention); an error ends it
    /// with status 1 and the error's message. Lines logged through `host` also go to the job's
    /// output tail (`serf jobs -show ID`). The plugin learns of the end through an
    /// [`Event::JobDone`]. Blocking here is fine (`std::thread::sleep` works): only this job
    /// waits. Needs the SDK's `jobs` crate feature; the default refuses every job.
    fn run_job(&mut self, job: Job, host: &mut dyn Host) -> Result<i32, Error> {
        let _ = host;
        Err(Error::new(format!(
            "this plugin runs no jobs (asked to run job {} {:?})",
            job.id, job.name
        )))
    }
}

/// Makes `$plugin` this crate's plugin: `register_plugin!(MyPlugin);` at the crate root.
///
/// `$plugin` must implement [`Plugin`] + `Default` + `'static`; that is checked on every
/// target. Only when compiling for `target_family = "wasm"` does the macro emit the ABI's
/// exports (`serf_plugin_abi_v1`, `serf_input_buffer`, `serf_init`, `serf_handle`,
/// `serf_shutdown`, and `serf_job` with the `jobs` feature) and install, on the first call, a panic hook that sends the panic message
/// to the agent's log at error level before the module aborts. Use it once per crate: the
/// export names are fixed, so a second use fails to build for wasm.
#[macro_export]
macro_rules! register_plugin {
    ($plugin:ty) => {
        const _: fn() = || {
            fn registered<P: $crate::Plugin + ::core::default::Default + 'static>() {}
            registered::<$plugin>();
        };
        #[cfg(target_family = "wasm")]
        $crate::__export_plugin!($plugin);
    };
}
