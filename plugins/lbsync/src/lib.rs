//! Example plugin: keeps a load balancer's backend list in step with the cluster, the job of
//! the classic Serf handler script that rewrites haproxy's backends and reloads it.
//!
//! On every membership event it reads the member list, keeps the alive members whose tags
//! match (`role=web` by default), renders one `server NAME ADDR:PORT check` line per member,
//! sorted by name, and when the text changed writes it to the backends file (atomically: a
//! temporary file, then a rename) and runs the granted command `reload`. The agent runs that
//! command's fixed argv without a shell, with the environment its table sets.
//!
//! ```toml
//! [plugins.lbsync]
//! events = "member-join,member-leave,member-failed,member-update,member-reap"
//! capabilities = ["members"]
//! dirs = { "/lb" = "/etc/haproxy/backends.d" }
//! config = { file = "/lb/web.cfg", tag = "role=web", port = 80 }
//!
//! [plugins.lbsync.commands.reload]
//! argv = ["/usr/bin/systemctl", "reload", "haproxy"]
//! timeout = "10s"
//! ```
//!
//! Config keys: `file` (default [`DEFAULT_FILE`]), `tag` (`KEY=VALUE`, default `role=web`),
//! `port` (the backends' port, default 80) and `command` (the granted command to run, default
//! `reload`). A reload that fails (non-zero exit, timeout) is logged at warn with its stderr,
//! and the next event that changes nothing tries it again.

use serf_plugin_sdk::{Error, Event, Host, HostError, InitContext, Member, Plugin};

/// Where the backends go when config key `file` is not set.
pub const DEFAULT_FILE: &str = "/lb/backends.cfg";

/// The rendered list and whether the balancer has it.
#[derive(Debug)]
pub struct LbSync {
    file: String,
    tag: (String, String),
    port: u16,
    command: String,
    /// The text last written, and whether the reload after it succeeded.
    written: Option<String>,
    reloaded: bool,
}

impl Default for LbSync {
    fn default() -> Self {
        LbSync {
            file: DEFAULT_FILE.to_owned(),
            tag: ("role".to_owned(), "web".to_owned()),
            port: 80,
            command: "reload".to_owned(),
            written: None,
            reloaded: false,
        }
    }
}

impl Plugin for LbSync {
    fn init(&mut self, ctx: &InitContext, _host: &mut dyn Host) -> Result<(), Error> {
        if let Some(file) = ctx.config_str("file") {
            self.file = file.to_owned();
        }
        if let Some(tag) = ctx.config_str("tag") {
            let (key, value) = tag.split_once('=').ok_or_else(|| {
                Error::new(format!("config key tag must be KEY=VALUE, not {tag:?}"))
            })?;
            self.tag = (key.to_owned(), value.to_owned());
        }
        if let Some(port) = ctx.config_i64("port") {
            self.port = u16::try_from(port).map_err(|_| {
                Error::new(format!("config key port must be 0 to 65535, not {port}"))
            })?;
        }
        if let Some(command) = ctx.config_str("command") {
            self.command = command.to_owned();
        }
        // What an earlier instance wrote: no reload when nothing changed.
        self.written = std::fs::read_to_string(&self.file).ok();
        self.reloaded = self.written.is_some();
        Ok(())
    }

    fn handle(&mut self, event: Event, host: &mut dyn Host) -> Result<(), Error> {
        let changed = match &event {
            Event::MemberJoin { members }
            | Event::MemberLeave { members }
            | Event::MemberFailed { members }
            | Event::MemberUpdate { members }
            | Event::MemberReap { members } => members,
            _ => return Ok(()),
        };
        // The agent's snapshot, corrected by the event itself (the freshest word on its members).
        let mut members = host.members()?;
        for member in changed {
            members.retain(|known| known.name != member.name);
            members.push(member.clone());
        }
        let text = self.render(&members);
        if self.written.as_deref() == Some(text.as_str()) && self.reloaded {
            return Ok(());
        }
        if self.written.as_deref() != Some(text.as_str()) {
            write_atomically(&self.file, &text)
                .map_err(|error| Error::new(format!("cannot write {}: {error}", self.file)))?;
            self.written = Some(text.clone());
            self.reloaded = false;
        }
        let result = host
            .run_command(&self.command, &[], b"")
            .map_err(|error| match error {
                HostError::Denied => Error::new(format!(
                    "command {0} is not granted: add a [plugins.NAME.commands.{0}] table to serf.toml",
                    self.command
                )),
                other => other.into(),
            })?;
        let backends = text.lines().count();
        if result.exit_status == 0 && result.error.is_empty() {
            self.reloaded = true;
            host.info(&format!(
                "{backends} backends written to {}; {} ran",
                self.file, self.command
            ));
            Ok(())
        } else {
            let stderr = String::from_utf8_lossy(&result.stderr);
            Err(Error::new(format!(
                "{} failed (exit {}{}): {}",
                self.command,
                result.exit_status,
                if result.error.is_empty() {
                    String::new()
                } else {
                    format!(", {}", result.error)
                },
                stderr.trim()
            )))
        }
    }
}

serf_plugin_sdk::register_plugin!(LbSync);

impl LbSync {
    /// One `server` line per alive member carrying the tag, by name.
    fn render(&self, members: &[Member]) -> String {
        let mut backends: Vec<&Member> = members
            .iter()
            .filter(|m| m.status == "alive" && m.tags.get(&self.tag.0) == Some(&self.tag.1))
            .collect();
        backends.sort_by(|a, b| a.name.cmp(&b.name));
        backends
            .iter()
            .map(|m| {
                let addr = if m.addr.contains(':') {
                    format!("[{}]", m.addr)
                } else {
                    m.addr.clone()
                };
                format!("server {} {addr}:{} check\n", m.name, self.port)
            })
            .collect()
    }
}

/// Writes through a temporary file and a rename, so the balancer never reads half a list.
fn write_atomically(path: &str, text: &str) -> std::io::Result<()> {
    let temp = format!("{path}.tmp");
    std::fs::write(&temp, text)?;
    std::fs::rename(&temp, path)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serf_plugin_sdk::abi::Capability;
    use serf_plugin_sdk::testing::{MockHost, init_context};
    use serf_plugin_sdk::{CommandResult, LogLevel};

    use super::*;

    fn member(name: &str, addr: &str, role: &str, status: &str) -> Member {
        Member {
            name: name.into(),
            addr: addr.into(),
            port: 7946,
            tags: BTreeMap::from([("role".to_owned(), role.to_owned())]),
            status: status.into(),
        }
    }

    fn plugin(dir: &std::path::Path) -> (LbSync, MockHost) {
        let mut host = MockHost::new();
        host.grant(Capability::Members).grant_command("reload");
        let file = dir.join("backends.cfg").display().to_string();
        let ctx = init_context([("file", file.as_str().into())]);
        let mut plugin = LbSync::default();
        host.init(&mut plugin, &ctx).unwrap();
        (plugin, host)
    }

    #[test]
    fn web_members_are_written_and_the_balancer_reloaded_once_per_change() {
        let dir = std::env::temp_dir().join(format!("lbsync-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (mut plugin, mut host) = plugin(&dir);
        host.members = vec![
            member("web2", "10.0.0.2", "web", "alive"),
            member("db1", "10.0.0.9", "db", "alive"),
        ];
        let join = Event::MemberJoin {
            members: vec![member("web1", "10.0.0.1", "web", "alive")],
        };
        host.deliver(&mut plugin, join.clone()).unwrap();
        // The agent's snapshot catches up with the join.
        host.members
            .push(member("web1", "10.0.0.1", "web", "alive"));
        let file = std::fs::read_to_string(dir.join("backends.cfg")).unwrap();
        assert_eq!(
            file,
            "server web1 10.0.0.1:80 check\nserver web2 10.0.0.2:80 check\n"
        );
        assert_eq!(host.runs_of("reload"), 1, "ran command reload");
        host.deliver(&mut plugin, join).unwrap();
        assert_eq!(host.runs_of("reload"), 1, "nothing changed, no reload");
        let leave = Event::MemberLeave {
            members: vec![member("web2", "10.0.0.2", "web", "left")],
        };
        host.deliver(&mut plugin, leave).unwrap();
        let file = std::fs::read_to_string(dir.join("backends.cfg")).unwrap();
        assert_eq!(file, "server web1 10.0.0.1:80 check\n");
        assert_eq!(host.runs_of("reload"), 2);
        assert!(host.logged(LogLevel::Info, "1 backends written"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_reload_is_an_error_and_is_retried() {
        let dir = std::env::temp_dir().join(format!("lbsync-fail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (mut plugin, mut host) = plugin(&dir);
        host.commands.get_mut("reload").unwrap().result = CommandResult {
            exit_status: 1,
            stderr: b"haproxy: bad config".to_vec(),
            ..CommandResult::default()
        };
        let join = Event::MemberJoin {
            members: vec![member("web1", "10.0.0.1", "web", "alive")],
        };
        let error = host.deliver(&mut plugin, join.clone()).unwrap_err();
        assert!(error.message().contains("haproxy: bad config"), "{error}");
        host.commands.get_mut("reload").unwrap().result = CommandResult::default();
        host.deliver(&mut plugin, join).unwrap();
        assert_eq!(host.runs_of("reload"), 2, "the reload was tried again");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_ungranted_reload_is_the_hosts_refusal() {
        let dir = std::env::temp_dir().join(format!("lbsync-deny-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (mut plugin, mut host) = plugin(&dir);
        host.commands.clear();
        let join = Event::MemberJoin {
            members: vec![member("web1", "10.0.0.1", "web", "alive")],
        };
        let error = host.deliver(&mut plugin, join).unwrap_err();
        assert!(
            error.message().contains("[plugins.NAME.commands.reload]"),
            "{error}"
        );
        assert!(host.ran.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
