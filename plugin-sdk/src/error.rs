//! The two error types of the SDK: [`Error`], what a plugin returns to the host, and
//! [`HostError`], what a host call returns to the plugin.
//!
//! Both are plain data with hand-written `Display`, so the SDK needs no error-handling crate.

use std::fmt;

use crate::abi::Status;

/// Why a plugin refused its configuration or could not handle an event.
///
/// Returned from [`Plugin::init`](crate::Plugin::init) or
/// [`Plugin::handle`](crate::Plugin::handle). The SDK passes the message to the host through the
/// `set_error` import and makes the export return a non-zero status. The host logs and counts
/// it; a failed `handle` keeps the instance (its state is whatever the plugin left), a failed
/// `init` means the host does not activate the instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
}

impl Error {
    /// An error with this message: lowercase, no trailing period, naming the offending value.
    pub fn new(message: impl Into<String>) -> Self {
        Error {
            message: message.into(),
        }
    }

    /// The message the host will log.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Error::new(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Error::new(message)
    }
}

impl From<HostError> for Error {
    fn from(error: HostError) -> Self {
        Error::new(format!("host call failed: {error}"))
    }
}

/// Why the host refused a host call: the negative [`Status`] codes of the ABI, typed.
///
/// None of these change host state: a refused `respond` sends nothing and may be retried
/// (a smaller payload, for instance) while the query is still being handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HostError {
    /// [`Status::BadArgument`]: an argument is out of range (a bad log level, text that is not
    /// UTF-8).
    BadArgument,
    /// [`Status::InvalidMemory`]: a pointer and length do not lie inside the guest's memory.
    InvalidMemory,
    /// [`Status::NotAllowed`]: `respond` outside a query, a second time for one query, or to a
    /// query another plugin on this node answered first (a node sends one answer per query).
    NotAllowed,
    /// [`Status::TooLarge`]: the payload is over its limit (Serf's query response limit).
    TooLarge,
    /// [`Status::RateLimited`]: too many calls in too short a time.
    RateLimited,
    /// [`Status::NotFound`]: the thing named does not exist.
    NotFound,
    /// [`Status::Unavailable`]: the host cannot take it now (shutting down, a queue is full).
    Unavailable,
    /// [`Status::Denied`]: the plugin's `serf.toml` table does not grant the capability this
    /// call needs (`capabilities = ["members", "events", "queries"]`).
    Denied,
    /// The call is not linked into this module: the SDK's crate feature of this name is off
    /// (`members`, `events`, `queries`, `jobs`). The host was not asked; its [`Self::status`]
    /// is [`Status::Denied`] for a capability and [`Status::NotAllowed`] for jobs.
    FeatureMissing(&'static str),
    /// A negative code this SDK does not know (from a newer host).
    Unknown(i32),
}

impl HostError {
    /// The error for a host call's raw return value, or `None` if it means success (`>= 0`).
    pub fn from_code(code: i32) -> Option<HostError> {
        Some(match Status::from_code(code) {
            Some(Status::Ok) => return None,
            Some(Status::BadArgument) => HostError::BadArgument,
            Some(Status::InvalidMemory) => HostError::InvalidMemory,
            Some(Status::NotAllowed) => HostError::NotAllowed,
            Some(Status::TooLarge) => HostError::TooLarge,
            Some(Status::RateLimited) => HostError::RateLimited,
            Some(Status::NotFound) => HostError::NotFound,
            Some(Status::Unavailable) => HostError::Unavailable,
            Some(Status::Denied) => HostError::Denied,
            None => HostError::Unknown(code),
        })
    }

    /// `Ok(())` for a success code, the error otherwise.
    pub fn check(code: i32) -> Result<(), HostError> {
        match HostError::from_code(code) {
            None => Ok(()),
            Some(error) => Err(error),
        }
    }

    /// The ABI status, or `None` for [`HostError::Unknown`].
    pub fn status(self) -> Option<Status> {
        match self {
            HostError::BadArgument => Some(Status::BadArgument),
            HostError::InvalidMemory => Some(Status::InvalidMemory),
            HostError::NotAllowed => Some(Status::NotAllowed),
            HostError::TooLarge => Some(Status::TooLarge),
            HostError::RateLimited => Some(Status::RateLimited),
            HostError::NotFound => Some(Status::NotFound),
            HostError::Unavailable => Some(Status::Unavailable),
            HostError::Denied => Some(Status::Denied),
            HostError::FeatureMissing("jobs") => Some(Status::NotAllowed),
            HostError::FeatureMissing(_) => Some(Status::Denied),
            HostError::Unknown(_) => None,
        }
    }

    /// The raw (negative) code that crossed the boundary.
    pub fn code(self) -> i32 {
        match self {
            HostError::Unknown(code) => code,
            known => known.status().map_or(0, Status::code),
        }
    }
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::BadArgument => f.write_str("bad argument"),
            HostError::InvalidMemory => f.write_str("pointer outside guest memory"),
            HostError::NotAllowed => f.write_str("not allowed here"),
            HostError::TooLarge => f.write_str("payload too large"),
            HostError::RateLimited => f.write_str("rate limited"),
            HostError::NotFound => f.write_str("not found"),
            HostError::Unavailable => f.write_str("host unavailable"),
            HostError::Denied => f.write_str(
                "capability not granted: add it to capabilities = [...] in the plugin's \
                 [plugins.NAME] table in serf.toml",
            ),
            HostError::FeatureMissing(feature) => write!(
                f,
                "{feature} needs the SDK's `{feature}` feature in Cargo.toml \
                 (serf-plugin-sdk = {{ features = [\"{feature}\"] }})"
            ),
            HostError::Unknown(code) => write!(f, "unknown host status {code}"),
        }
    }
}

impl std::error::Error for HostError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_negative_status_maps_to_a_host_error_and_back() {
        for code in -8..=-1 {
            let error = HostError::from_code(code).unwrap();
            assert_eq!(error.code(), code);
            assert_eq!(error.status().map(Status::code), Some(code));
        }
    }

    #[test]
    fn a_capability_error_says_which_half_is_missing() {
        let grant = HostError::Denied.to_string();
        assert!(
            grant.starts_with("capability not granted: add it to capabilities"),
            "{grant}"
        );
        assert!(grant.contains("serf.toml"), "{grant}");
        let feature = HostError::FeatureMissing("members").to_string();
        assert_eq!(
            feature,
            "members needs the SDK's `members` feature in Cargo.toml \
             (serf-plugin-sdk = { features = [\"members\"] })"
        );
        assert_eq!(
            HostError::FeatureMissing("members").status(),
            Some(Status::Denied)
        );
        assert_eq!(
            HostError::FeatureMissing("jobs").status(),
            Some(Status::NotAllowed)
        );
    }

    #[test]
    fn success_codes_are_not_errors() {
        assert_eq!(HostError::from_code(0), None);
        assert_eq!(HostError::from_code(17), None);
        assert_eq!(HostError::check(0), Ok(()));
    }

    #[test]
    fn unknown_codes_keep_their_value() {
        assert_eq!(HostError::check(-42), Err(HostError::Unknown(-42)));
        assert_eq!(HostError::Unknown(-42).code(), -42);
        assert_eq!(
            HostError::Unknown(-42).to_string(),
            "unknown host status -42"
        );
    }

    #[test]
    fn host_errors_become_plugin_errors_with_context() {
        let error = Error::from(HostError::TooLarge);
        assert_eq!(error.message(), "host call failed: payload too large");
    }
}
