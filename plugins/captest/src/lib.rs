//! A test plugin that exercises every capability on request, for the agent's capability tests.
//!
//! It answers the query `captest` with the outcome of the command in its payload. Each
//! outcome is `ok`, `ok:VALUE` or `err:REASON` (`err:capability not granted` for a denied
//! host call):
//!
//! | Payload | Does | Answers |
//! |---|---|---|
//! | `members` | `host.members()` | `ok:` and the member names, sorted, comma-separated |
//! | `fire:NAME:PAYLOAD` | `host.fire_event(NAME, PAYLOAD, false)` | `ok` |
//! | `query:NAME:PAYLOAD` | `host.query` (2 s timeout) | `ok:` and the handle |
//! | `answers` | | the answers to its queries so far: `response HANDLE FROM PAYLOAD` and `done HANDLE ERROR` lines |
//! | `env:KEY` | reads environment variable `KEY` | `ok:VALUE`, or `err:unset` |
//! | `write:PATH:TEXT` | writes `TEXT` to file `PATH` | `ok` |
//! | `seen` | | the user events it received, `NAME=PAYLOAD`, comma-separated |
//!
//! Anything else answers `err:unknown command`. Every user event is remembered for `seen`.

use serf_plugin_sdk::{Error, Event, Host, HostError, Plugin, QueryRequest};

/// The query this plugin answers.
pub const QUERY_NAME: &str = "captest";

/// What it has seen: user events, and the answers to its own queries.
#[derive(Debug, Default)]
pub struct CapTest {
    seen: Vec<String>,
    answers: Vec<String>,
}

impl Plugin for CapTest {
    fn handle(&mut self, event: Event, host: &mut dyn Host) -> Result<(), Error> {
        match event {
            Event::Query(query) if query.name == QUERY_NAME => {
                let command = String::from_utf8_lossy(&query.payload).into_owned();
                let answer = self.run(&command, host);
                host.info(&format!("captest {command}: {answer}"));
                host.respond(answer.as_bytes())?;
            }
            Event::User(user) => {
                let payload = String::from_utf8_lossy(&user.payload);
                self.seen.push(format!("{}={payload}", user.name));
            }
            Event::QueryResponse(response) => self.answers.push(format!(
                "response {} {} {}",
                response.query,
                response.from,
                String::from_utf8_lossy(&response.payload)
            )),
            Event::QueryDone(done) => self
                .answers
                .push(format!("done {} {}", done.query, done.error)),
            _ => {}
        }
        Ok(())
    }
}

serf_plugin_sdk::register_plugin!(CapTest);

impl CapTest {
    /// Runs one command and says how it went.
    fn run(&mut self, command: &str, host: &mut dyn Host) -> String {
        let mut parts = command.splitn(3, ':');
        let verb = parts.next().unwrap_or_default();
        let (first, rest) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        let outcome: Result<String, String> = match verb {
            "members" => host
                .members()
                .map(|members| {
                    let mut names: Vec<String> = members.into_iter().map(|m| m.name).collect();
                    names.sort();
                    names.join(",")
                })
                .map_err(reason),
            "fire" => host
                .fire_event(first, rest.as_bytes(), false)
                .map(|()| String::new())
                .map_err(reason),
            "query" => {
                let request = QueryRequest {
                    name: first.to_owned(),
                    payload: rest.as_bytes().to_vec(),
                    timeout_ms: 2000,
                    ..QueryRequest::default()
                };
                host.query(&request)
                    .map(|handle| handle.to_string())
                    .map_err(reason)
            }
            "answers" => Ok(self.answers.join("\n")),
            "env" => std::env::var(first).map_err(|_| "unset".to_owned()),
            "write" => std::fs::write(first, rest)
                .map(|()| String::new())
                .map_err(|error| error.to_string()),
            "seen" => Ok(self.seen.join(",")),
            _ => Err("unknown command".to_owned()),
        };
        match outcome {
            Ok(value) if value.is_empty() => "ok".to_owned(),
            Ok(value) => format!("ok:{value}"),
            Err(error) => format!("err:{error}"),
        }
    }
}

fn reason(error: HostError) -> String {
    error.to_string()
}

#[cfg(test)]
mod tests {
    use serf_plugin_sdk::Capability;
    use serf_plugin_sdk::testing::{
        MockHost, member, query, query_done, query_response, user_event,
    };

    use super::*;

    fn ask(plugin: &mut CapTest, host: &mut MockHost, command: &str) -> String {
        host.deliver(plugin, query(QUERY_NAME, command.as_bytes()))
            .unwrap();
        String::from_utf8(host.response().unwrap().to_vec()).unwrap()
    }

    #[test]
    fn every_capability_is_denied_without_a_grant() {
        let (mut plugin, mut host) = (CapTest::default(), MockHost::new());
        for command in ["members", "fire:e:x", "query:upcase:foo"] {
            assert_eq!(
                ask(&mut plugin, &mut host, command),
                "err:capability not granted: add it to capabilities = [...] in the plugin's \
                 [plugins.NAME] table in serf.toml"
            );
        }
    }

    #[test]
    fn granted_capabilities_answer() {
        let (mut plugin, mut host) = (CapTest::default(), MockHost::new());
        host.grant(Capability::Members)
            .grant(Capability::Events)
            .grant(Capability::Queries);
        host.members = vec![member("b", "127.0.0.2"), member("a", "127.0.0.1")];
        assert_eq!(ask(&mut plugin, &mut host, "members"), "ok:a,b");
        assert_eq!(ask(&mut plugin, &mut host, "fire:deploy:v1"), "ok");
        assert_eq!(host.fired[0].payload, b"v1");
        assert_eq!(ask(&mut plugin, &mut host, "query:upcase:foo"), "ok:1");
        host.deliver(&mut plugin, query_response(1, "upcase", "b", b"FOO"))
            .unwrap();
        host.deliver(&mut plugin, query_done(1, "upcase")).unwrap();
        assert_eq!(
            ask(&mut plugin, &mut host, "answers"),
            "ok:response 1 b FOO\ndone 1 "
        );
    }

    #[test]
    fn user_events_are_remembered_and_files_written() {
        let (mut plugin, mut host) = (CapTest::default(), MockHost::new());
        host.deliver(&mut plugin, user_event("fired", b"v1"))
            .unwrap();
        assert_eq!(ask(&mut plugin, &mut host, "seen"), "ok:fired=v1");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.txt");
        let command = format!("write:{}:hi", path.display());
        assert_eq!(ask(&mut plugin, &mut host, &command), "ok");
        assert_eq!(std::fs::read_to_string(path).unwrap(), "hi");
        assert_eq!(
            ask(&mut plugin, &mut host, "env:CAPTEST_SURELY_UNSET"),
            "err:unset"
        );
        assert_eq!(ask(&mut plugin, &mut host, "dance"), "err:unknown command");
    }
}
