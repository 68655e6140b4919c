//! Reading a plugin's `config` table and small conveniences on ABI types.
//!
//! `serf.toml` gives each plugin a free-form `config` table; the host converts it to msgpack
//! values in [`InitContext::config`]. These helpers read single keys or deserialize the whole
//! table into a plugin's own type. They only read: the ABI types stay plain data.

use serde::de::DeserializeOwned;

use crate::abi::{Event, InitContext, Member};
use crate::error::Error;

impl InitContext {
    /// The raw value of config key `key`, if present.
    pub fn config_value(&self, key: &str) -> Option<&rmpv::Value> {
        self.config.get(key)
    }

    /// Config key `key` if it is present and a (UTF-8) string.
    pub fn config_str(&self, key: &str) -> Option<&str> {
        self.config_value(key)?.as_str()
    }

    /// Config key `key` if it is present and a boolean.
    pub fn config_bool(&self, key: &str) -> Option<bool> {
        self.config_value(key)?.as_bool()
    }

    /// Config key `key` if it is present and an integer that fits an `i64`.
    pub fn config_i64(&self, key: &str) -> Option<i64> {
        self.config_value(key)?.as_i64()
    }

    /// The whole config table deserialized into `T`, typically a
    /// `#[derive(Deserialize)]` struct with `#[serde(default)]` fields.
    ///
    /// Fails with a message naming the problem (a missing key, a wrong type), which makes a good
    /// [`Plugin::init`](crate::Plugin::init) refusal as it is.
    ///
    /// ```
    /// # use serf_plugin_sdk::testing::init_context;
    /// #[derive(serde::Deserialize)]
    /// struct Config {
    ///     file: String,
    ///     #[serde(default)]
    ///     verbose: bool,
    /// }
    ///
    /// let ctx = init_context([("file", "/data/out.txt".into())]);
    /// let config: Config = ctx.config_as()?;
    /// assert_eq!(config.file, "/data/out.txt");
    /// assert!(!config.verbose);
    /// # Ok::<(), serf_plugin_sdk::Error>(())
    /// ```
    pub fn config_as<T: DeserializeOwned>(&self) -> Result<T, Error> {
        let table = rmpv::Value::Map(
            self.config
                .iter()
                .map(|(key, value)| (rmpv::Value::from(key.as_str()), value.clone()))
                .collect(),
        );
        rmpv::ext::from_value(table)
            .map_err(|error| Error::new(format!("invalid plugin config: {error}")))
    }
}

impl Event {
    /// The members of a `member-*` event, `None` for other kinds.
    pub fn members(&self) -> Option<&[Member]> {
        match self {
            Event::MemberJoin { members }
            | Event::MemberLeave { members }
            | Event::MemberFailed { members }
            | Event::MemberUpdate { members }
            | Event::MemberReap { members } => Some(members),
            Event::User(_)
            | Event::Query(_)
            | Event::Dropped { .. }
            | Event::QueryResponse(_)
            | Event::QueryDone(_)
            | Event::JobDone(_)
            | Event::Tick(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use crate::testing::{init_context, member, member_failed, query};

    #[test]
    fn typed_getters_return_none_for_missing_keys_and_other_types() {
        let ctx = init_context([
            ("file", "/data/a.txt".into()),
            ("verbose", true.into()),
            ("limit", 3.into()),
        ]);
        assert_eq!(ctx.config_str("file"), Some("/data/a.txt"));
        assert_eq!(ctx.config_bool("verbose"), Some(true));
        assert_eq!(ctx.config_i64("limit"), Some(3));
        assert_eq!(ctx.config_str("limit"), None);
        assert_eq!(ctx.config_bool("missing"), None);
    }

    #[derive(Debug, PartialEq, Deserialize)]
    struct Config {
        file: String,
        #[serde(default)]
        limit: u32,
    }

    #[test]
    fn config_deserializes_into_a_struct() {
        let ctx = init_context([("file", "/x".into()), ("limit", 9.into())]);
        let config: Config = ctx.config_as().unwrap();
        assert_eq!(
            config,
            Config {
                file: "/x".into(),
                limit: 9
            }
        );
    }

    #[test]
    fn config_of_the_wrong_shape_is_an_error_that_says_why() {
        let ctx = init_context([("limit", "many".into())]);
        let error = ctx.config_as::<Config>().unwrap_err();
        assert!(
            error.message().starts_with("invalid plugin config: "),
            "{error}"
        );
    }

    #[test]
    fn members_only_for_member_events() {
        let event = member_failed([member("node-b", "127.0.0.2")]);
        assert_eq!(event.members().map(<[_]>::len), Some(1));
        assert_eq!(query("q", b"").members(), None);
    }
}
