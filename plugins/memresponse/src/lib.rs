//! Example plugin: appends the payload of every `memresponse` user event to a file.
//!
//! `serf event memresponse hello` adds the line `hello` to the file on every node running it.
//! The file is config key `file` (default [`DEFAULT_FILE`]). A plugin sees no host directory
//! unless its entry in `serf.toml` grants one (a preopened directory: a guest path such as
//! `/data` mapped to a host directory), so the file must lie under a granted guest path.
//!
//! Each event opens the file in append mode, writes the payload and `\n`, and closes it, so
//! the file is complete after every event and may be rotated at any time. Payloads are written
//! as they are (binary too); other events are ignored.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;

use serf_plugin_sdk::{Error, Event, Host, InitContext, Plugin};

/// The user event this plugin records.
pub const EVENT_NAME: &str = "memresponse";
/// Where payloads go when config key `file` is not set.
pub const DEFAULT_FILE: &str = "/data/mem.txt";

/// Remembers where to write; the file itself is opened per event.
#[derive(Debug, Default)]
pub struct MemResponse {
    file: PathBuf,
}

impl Plugin for MemResponse {
    fn init(&mut self, ctx: &InitContext, host: &mut dyn Host) -> Result<(), Error> {
        self.file = match ctx.config_value("file") {
            None => PathBuf::from(DEFAULT_FILE),
            Some(value) => match value.as_str() {
                Some(path) if !path.is_empty() => PathBuf::from(path),
                _ => {
                    return Err(Error::new(format!(
                        "config key file must be a path, not {value}"
                    )));
                }
            },
        };
        host.info(&format!(
            "appending {EVENT_NAME} payloads to {}",
            self.file.display()
        ));
        Ok(())
    }

    fn handle(&mut self, event: Event, _host: &mut dyn Host) -> Result<(), Error> {
        let Event::User(user) = event else {
            return Ok(());
        };
        if user.name != EVENT_NAME {
            return Ok(());
        }
        let mut line = user.payload;
        line.push(b'\n');
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.file)
            .and_then(|mut file| file.write_all(&line))
            .map_err(|error| {
                Error::new(format!("cannot append to {}: {error}", self.file.display()))
            })
    }
}

serf_plugin_sdk::register_plugin!(MemResponse);

#[cfg(test)]
mod tests {
    use std::fs;

    use serf_plugin_sdk::LogLevel;
    use serf_plugin_sdk::testing::{
        MockHost, init_context, member, member_join, query, user_event,
    };

    use super::*;

    fn plugin_writing_to(path: &std::path::Path) -> (MemResponse, MockHost) {
        let mut plugin = MemResponse::default();
        let mut host = MockHost::new();
        let ctx = init_context([("file", path.to_str().unwrap().into())]);
        host.init(&mut plugin, &ctx).unwrap();
        (plugin, host)
    }

    #[test]
    fn payloads_are_appended_one_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mem.txt");
        let (mut plugin, mut host) = plugin_writing_to(&path);
        host.deliver(&mut plugin, user_event("memresponse", b"first"))
            .unwrap();
        host.deliver(&mut plugin, user_event("memresponse", b"second"))
            .unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"first\nsecond\n");
        assert!(host.logged(LogLevel::Info, &path.display().to_string()));
    }

    #[test]
    fn an_existing_file_is_appended_to() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mem.txt");
        fs::write(&path, b"old\n").unwrap();
        let (mut plugin, mut host) = plugin_writing_to(&path);
        host.deliver(&mut plugin, user_event("memresponse", &[0, 0xff]))
            .unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"old\n\x00\xff\n");
    }

    #[test]
    fn other_events_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mem.txt");
        let (mut plugin, mut host) = plugin_writing_to(&path);
        host.deliver(&mut plugin, user_event("deploy", b"x"))
            .unwrap();
        host.deliver(&mut plugin, query("memresponse", b"x"))
            .unwrap();
        host.deliver(&mut plugin, member_join([member("a", "127.0.0.1")]))
            .unwrap();
        assert!(!path.exists());
        assert!(host.responses.is_empty());
    }

    #[test]
    fn the_file_defaults_to_data_mem_txt() {
        let mut plugin = MemResponse::default();
        MockHost::new()
            .init(&mut plugin, &init_context([]))
            .unwrap();
        assert_eq!(plugin.file, PathBuf::from(DEFAULT_FILE));
    }

    #[test]
    fn a_file_that_is_not_a_string_is_refused_at_init() {
        let error = MockHost::new()
            .init(
                &mut MemResponse::default(),
                &init_context([("file", 3.into())]),
            )
            .unwrap_err();
        assert_eq!(error.message(), "config key file must be a path, not 3");
    }

    #[test]
    fn an_unwritable_file_is_a_plugin_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("mem.txt");
        let (mut plugin, mut host) = plugin_writing_to(&path);
        let error = host
            .deliver(&mut plugin, user_event("memresponse", b"x"))
            .unwrap_err();
        assert!(
            error
                .message()
                .starts_with(&format!("cannot append to {}", path.display()))
        );
    }
}
