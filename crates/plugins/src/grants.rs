//! What a plugin's `serf.toml` table grants it beyond the sandbox: capabilities and
//! environment variables (directories are [`super::PluginSpec::dirs`]).
//!
//! Everything is denied by default. The host functions in [`super::instance`] check
//! [`Grants::capabilities`] before doing anything; a denied call returns `Status::Denied` and
//! is logged once per plugin and capability ([`DenialLog`]). This module only holds and
//! checks grants; it does not parse `serf.toml` (that is `config`).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use serf_plugin_sdk::abi::Capability;

/// A set of [`Capability`]s; empty by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities(u8);

fn bit(capability: Capability) -> u8 {
    1 << (capability as u8)
}

impl Capabilities {
    /// No capability at all.
    pub const NONE: Capabilities = Capabilities(0);

    /// Every capability.
    pub fn all() -> Capabilities {
        Capability::ALL.into_iter().collect()
    }

    /// Parses `serf.toml` names (`members`, `events`, `queries`); an unknown name is the error.
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Result<Capabilities, String> {
        names
            .iter()
            .map(|name| {
                Capability::from_name(name.as_ref()).ok_or_else(|| name.as_ref().to_owned())
            })
            .collect()
    }

    /// Whether `capability` is granted.
    pub fn contains(self, capability: Capability) -> bool {
        self.0 & bit(capability) != 0
    }

    /// Grants `capability` too.
    pub fn insert(&mut self, capability: Capability) {
        self.0 |= bit(capability);
    }

    /// Whether nothing is granted.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The granted capabilities, in documentation order.
    pub fn iter(self) -> impl Iterator<Item = Capability> {
        Capability::ALL
            .into_iter()
            .filter(move |c| self.contains(*c))
    }
}

impl FromIterator<Capability> for Capabilities {
    fn from_iter<I: IntoIterator<Item = Capability>>(iter: I) -> Capabilities {
        let mut set = Capabilities::NONE;
        for capability in iter {
            set.insert(capability);
        }
        set
    }
}

impl fmt::Display for Capabilities {
    /// `members,queries`, or `none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        let names: Vec<&str> = self.iter().map(Capability::name).collect();
        f.write_str(&names.join(","))
    }
}

/// What one plugin is granted; [`Grants::default`] grants nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// `capabilities = [...]`.
    pub capabilities: Capabilities,
    /// `env = { KEY = "value" }`: the only environment variables the plugin sees.
    pub env: BTreeMap<String, String>,
    /// Which denials were logged already; shared by every instance of the plugin.
    pub denials: DenialLog,
    /// `[plugins.NAME.commands.CMD]`: the host commands it may run (ABI v1.1, commands).
    pub commands: super::commands::CommandGrants,
    /// Effects (ABI v1.2): HTTP, state, ticks and metrics; none by default.
    pub effects: super::effects::EffectGrants,
}

impl Grants {
    /// Whether `capability` is granted; if not, logs the denial the first time for this
    /// plugin and capability.
    pub fn check(&self, plugin: &str, capability: Capability) -> bool {
        if self.capabilities.contains(capability) {
            return true;
        }
        if self.denials.first(capability) {
            tracing::warn!(
                target: "plugin",
                plugin,
                capability = capability.name(),
                "plugin call denied: {} is not granted: add capabilities = [\"{}\"] to [plugins.{plugin}] in serf.toml",
                capability.name(),
                capability.name()
            );
        }
        false
    }
}

/// Remembers which capabilities a plugin was denied, so each denial is logged once. It is
/// runtime memory, not configuration: two logs always compare equal.
#[derive(Debug, Clone, Default)]
pub struct DenialLog(Arc<AtomicU8>);

impl DenialLog {
    /// Records a denial of `capability`; true if it is the first.
    pub fn first(&self, capability: Capability) -> bool {
        self.0.fetch_or(bit(capability), Ordering::Relaxed) & bit(capability) == 0
    }
}

impl PartialEq for DenialLog {
    fn eq(&self, _other: &DenialLog) -> bool {
        true
    }
}

impl Eq for DenialLog {}

/// Why an `env` entry cannot be handed to a plugin.
pub fn check_env_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("an environment variable needs a name")
    } else if name.contains('=') || name.contains('\0') {
        Err("an environment variable name may not contain '=' or NUL")
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_granted_by_default() {
        let grants = Grants::default();
        for capability in Capability::ALL {
            assert!(!grants.capabilities.contains(capability));
        }
        assert!(grants.env.is_empty());
        assert_eq!(grants.capabilities.to_string(), "none");
    }

    #[test]
    fn capabilities_parse_from_their_names_and_print_back() {
        let set = Capabilities::from_names(&["queries", "members"]).unwrap();
        assert!(set.contains(Capability::Members) && set.contains(Capability::Queries));
        assert!(!set.contains(Capability::Events));
        assert_eq!(set.to_string(), "members,queries");
        assert_eq!(
            Capabilities::all().to_string(),
            "members,events,queries,jobs"
        );
        assert_eq!(
            Capabilities::from_names(&["members", "teleport"]),
            Err("teleport".to_owned())
        );
    }

    #[test]
    fn a_denial_is_remembered_once_per_capability_across_clones() {
        let grants = Grants::default();
        let clone = grants.clone();
        assert!(!grants.check("p", Capability::Members));
        assert!(!grants.denials.first(Capability::Members), "already logged");
        assert!(
            !clone.denials.first(Capability::Members),
            "clones share the log"
        );
        assert!(clone.denials.first(Capability::Events));
        assert_eq!(grants, Grants::default(), "the log is not configuration");
    }

    #[test]
    fn env_names_must_be_usable() {
        assert!(check_env_name("REGION").is_ok());
        assert!(check_env_name("").is_err());
        assert!(check_env_name("A=B").is_err());
    }
}
