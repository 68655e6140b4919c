//! Example plugin: logs every user event and every membership change, and answers nothing.
//!
//! Lines go to the agent's log at info level, attributed to the plugin:
//!
//! - `user event deploy payload="v1"` (the payload as lossy UTF-8, quoted and escaped);
//! - `member-join: node-a 127.0.0.1:7946, node-b [::1]:7946` (the same for `member-leave`,
//!   `member-failed`, `member-update`, `member-reap`);
//! - at warn level, `missed 3 events` when the agent had to drop events for this plugin.
//!
//! Queries are ignored.

use std::fmt::Write;
use std::net::{IpAddr, SocketAddr};

use serf_plugin_sdk::{Error, Event, Host, Member, Plugin};

/// Stateless: formats each event into one log line.
#[derive(Debug, Default)]
pub struct Hello;

impl Plugin for Hello {
    fn handle(&mut self, event: Event, host: &mut dyn Host) -> Result<(), Error> {
        match &event {
            Event::User(user) => host.info(&format!(
                "user event {} payload={:?}",
                user.name,
                String::from_utf8_lossy(&user.payload)
            )),
            Event::Dropped { count } => host.warn(&format!("missed {count} events")),
            Event::Query(_) => {}
            other => {
                if let Some(members) = other.members() {
                    host.info(&describe_members(other.kind(), members));
                }
            }
        }
        Ok(())
    }
}

serf_plugin_sdk::register_plugin!(Hello);

/// `kind: name addr:port, ...`, with IPv6 addresses in brackets.
fn describe_members(kind: &str, members: &[Member]) -> String {
    let mut line = format!("{kind}:");
    for (index, member) in members.iter().enumerate() {
        let separator = if index == 0 { " " } else { ", " };
        let _ = match member.addr.parse::<IpAddr>() {
            Ok(ip) => write!(
                line,
                "{separator}{} {}",
                member.name,
                SocketAddr::new(ip, member.port)
            ),
            Err(_) => write!(
                line,
                "{separator}{} {}:{}",
                member.name, member.addr, member.port
            ),
        };
    }
    line
}

#[cfg(test)]
mod tests {
    use serf_plugin_sdk::LogLevel;
    use serf_plugin_sdk::testing::{
        MockHost, dropped, member, member_failed, member_join, query, user_event,
    };

    use super::*;

    fn logs_of(event: Event) -> Vec<(LogLevel, String)> {
        let mut host = MockHost::new();
        host.deliver(&mut Hello, event).unwrap();
        assert!(host.responses.is_empty());
        host.logs
    }

    #[test]
    fn user_events_are_logged_with_name_and_payload() {
        assert_eq!(
            logs_of(user_event("deploy", b"v1")),
            [(
                LogLevel::Info,
                r#"user event deploy payload="v1""#.to_string()
            )]
        );
    }

    #[test]
    fn binary_payloads_are_logged_lossily_and_escaped() {
        assert_eq!(
            logs_of(user_event("bin", b"a\n\xff")),
            [(
                LogLevel::Info,
                "user event bin payload=\"a\\n\u{fffd}\"".to_string()
            )]
        );
    }

    #[test]
    fn member_events_list_names_and_addresses() {
        let mut v6 = member("node-b", "::1");
        v6.port = 7947;
        assert_eq!(
            logs_of(member_join([member("node-a", "127.0.0.1"), v6])),
            [(
                LogLevel::Info,
                "member-join: node-a 127.0.0.1:7946, node-b [::1]:7947".to_string()
            )]
        );
        assert_eq!(
            logs_of(member_failed([member("node-c", "not-an-ip")])),
            [(
                LogLevel::Info,
                "member-failed: node-c not-an-ip:7946".to_string()
            )]
        );
    }

    #[test]
    fn dropped_events_are_a_warning() {
        assert_eq!(
            logs_of(dropped(3)),
            [(LogLevel::Warn, "missed 3 events".to_string())]
        );
    }

    #[test]
    fn queries_are_neither_logged_nor_answered() {
        assert!(logs_of(query("upcase", b"foo")).is_empty());
    }
}
