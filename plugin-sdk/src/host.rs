//! [`Host`]: what a plugin may ask of the agent while it runs.
//!
//! In a wasm build the SDK hands plugins an implementation that calls the `serf.*` imports; in
//! native tests [`MockHost`](crate::testing::MockHost) records the calls instead. Plugin code
//! takes `&mut dyn Host` and never knows which one it has.

use crate::abi::LogLevel;
use crate::error::HostError;

/// The agent, as seen from inside a plugin call.
///
/// Host calls never block and never call back into the plugin.
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
}
