//! A serf plugin to start from: it greets new members in the log, answers the `ping` query
//! with `pong` and counts `deploy` user events. Replace each part with your own handling.
//!
//! The agent calls [`Plugin::init`] once per instance with the plugin's `serf.toml` table,
//! then [`Plugin::handle`] once per event, one at a time, in order. Everything runs in a
//! sandbox with a CPU (fuel) budget, a memory cap and a deadline per event; a panic only
//! costs this instance, which the agent replaces (and `self` starts again from `Default`).

use serf_plugin_sdk::{Error, Event, Host, InitContext, Plugin};

/// The plugin's state: one value per instance, kept from event to event.
#[derive(Debug, Default)]
pub struct Template {
    /// Config key `greeting` of its `serf.toml` table (`config = { greeting = "hi" }`).
    greeting: String,
    /// `deploy` user events seen by this instance.
    deploys: u64,
}

impl Plugin for Template {
    /// Reads the config. Return an error to refuse it: the agent logs the message and retries
    /// later, so say what is wrong and with which value.
    fn init(&mut self, ctx: &InitContext, host: &mut dyn Host) -> Result<(), Error> {
        self.greeting = ctx.config_str("greeting").unwrap_or("welcome").to_owned();
        host.debug(&format!("plugin {} started on {}", ctx.plugin, ctx.node));
        Ok(())
    }

    /// Handles one event. Return `Ok(())` for events you do not care about: new kinds may
    /// appear, and the `events` filter in `serf.toml` decides what arrives at all.
    fn handle(&mut self, event: Event, host: &mut dyn Host) -> Result<(), Error> {
        match event {
            Event::MemberJoin { members } => {
                for member in members {
                    host.info(&format!("{} {}", self.greeting, member.name));
                }
            }
            Event::User(user) if user.name == "deploy" => {
                self.deploys += 1;
                let version = String::from_utf8_lossy(&user.payload);
                host.info(&format!("deploy {} of {version}", self.deploys));
            }
            Event::Query(query) if query.name == "ping" => {
                // At most one answer per query, well under 1 KiB.
                host.respond(b"pong")?;
            }
            // Member leaves and failures, other user events and queries, `Dropped` notices
            // (the agent dropped events because this plugin was too slow), and so on.
            _ => {}
        }
        Ok(())
    }
}

serf_plugin_sdk::register_plugin!(Template);

#[cfg(test)]
mod tests {
    use serf_plugin_sdk::LogLevel;
    use serf_plugin_sdk::testing::{
        MockHost, init_context, member, member_join, query, user_event,
    };

    use super::*;

    fn started() -> (Template, MockHost) {
        let mut plugin = Template::default();
        let mut host = MockHost::new();
        host.init(&mut plugin, &init_context([("greeting", "hello".into())]))
            .unwrap();
        (plugin, host)
    }

    #[test]
    fn new_members_are_greeted() {
        let (mut plugin, mut host) = started();
        host.deliver(&mut plugin, member_join([member("node-b", "127.0.0.2")]))
            .unwrap();
        assert!(host.logged(LogLevel::Info, "hello node-b"));
    }

    #[test]
    fn ping_is_answered_with_pong() {
        let (mut plugin, mut host) = started();
        host.deliver(&mut plugin, query("ping", b"")).unwrap();
        assert_eq!(host.response(), Some(&b"pong"[..]));
    }

    #[test]
    fn deploys_are_counted() {
        let (mut plugin, mut host) = started();
        for version in [b"v1", b"v2"] {
            host.deliver(&mut plugin, user_event("deploy", version))
                .unwrap();
        }
        assert!(host.logged(LogLevel::Info, "deploy 2 of v2"));
    }
}
