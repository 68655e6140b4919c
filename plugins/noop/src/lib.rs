//! Example plugin that does nothing with every event: the baseline for measuring what the
//! agent's plugin machinery itself costs per event.

use serf_plugin_sdk::{Error, Event, Host, Plugin};

/// Handles every event by returning at once.
#[derive(Debug, Default)]
pub struct Noop;

impl Plugin for Noop {
    fn handle(&mut self, _event: Event, _host: &mut dyn Host) -> Result<(), Error> {
        Ok(())
    }
}

serf_plugin_sdk::register_plugin!(Noop);

#[cfg(test)]
mod tests {
    use serf_plugin_sdk::testing::{
        MockHost, dropped, init_context, member, member_join, query, user_event,
    };

    use super::*;

    #[test]
    fn every_event_is_handled_without_any_host_call() {
        let mut host = MockHost::new();
        host.init(&mut Noop, &init_context([])).unwrap();
        for event in [
            user_event("deploy", b"v1"),
            query("upcase", b"foo"),
            member_join([member("a", "127.0.0.1")]),
            dropped(3),
        ] {
            host.deliver(&mut Noop, event).unwrap();
        }
        assert!(host.responses.is_empty());
        assert!(host.logs.is_empty());
    }
}
