//! Example plugin: answers the `upcase` query with its payload in upper case.
//!
//! `serf query upcase hello` gets `HELLO` back from every node running it. A payload that is
//! valid UTF-8 is upper-cased by Unicode rules (`straße` becomes `STRASSE`); any other payload
//! has its ASCII letters upper-cased byte by byte. Every other event is ignored.

use serf_plugin_sdk::{Error, Event, Host, Plugin};

/// The query this plugin answers.
pub const QUERY_NAME: &str = "upcase";

/// Stateless: the whole plugin is one `handle`.
#[derive(Debug, Default)]
pub struct Upcase;

impl Plugin for Upcase {
    fn handle(&mut self, event: Event, host: &mut dyn Host) -> Result<(), Error> {
        if let Event::Query(query) = event
            && query.name == QUERY_NAME
        {
            host.respond(&upcase(&query.payload))?;
        }
        Ok(())
    }
}

serf_plugin_sdk::register_plugin!(Upcase);

/// `payload` in upper case: Unicode rules for UTF-8 text, ASCII rules for other bytes.
pub fn upcase(payload: &[u8]) -> Vec<u8> {
    match std::str::from_utf8(payload) {
        Ok(text) => text.to_uppercase().into_bytes(),
        Err(_) => payload.to_ascii_uppercase(),
    }
}

#[cfg(test)]
mod tests {
    use serf_plugin_sdk::HostError;
    use serf_plugin_sdk::testing::{MockHost, member, member_join, query, user_event};

    use super::*;

    #[test]
    fn upcase_query_is_answered_in_upper_case() {
        let mut host = MockHost::new();
        host.deliver(&mut Upcase, query("upcase", b"foo")).unwrap();
        assert_eq!(host.responses, [b"FOO".to_vec()]);
    }

    #[test]
    fn utf8_payloads_follow_unicode_rules() {
        assert_eq!(upcase("straße ü".as_bytes()), "STRASSE Ü".as_bytes());
    }

    #[test]
    fn binary_payloads_upcase_ascii_letters_only() {
        assert_eq!(upcase(&[b'a', 0xff, b'z', 0x00]), [b'A', 0xff, b'Z', 0x00]);
    }

    #[test]
    fn empty_payload_gets_an_empty_answer() {
        let mut host = MockHost::new();
        host.deliver(&mut Upcase, query("upcase", b"")).unwrap();
        assert_eq!(host.responses, [Vec::<u8>::new()]);
    }

    #[test]
    fn other_queries_and_events_are_ignored() {
        let mut host = MockHost::new();
        host.deliver(&mut Upcase, query("downcase", b"foo"))
            .unwrap();
        host.deliver(&mut Upcase, user_event("upcase", b"foo"))
            .unwrap();
        host.deliver(&mut Upcase, member_join([member("a", "127.0.0.1")]))
            .unwrap();
        assert!(host.responses.is_empty());
        assert!(host.logs.is_empty());
    }

    #[test]
    fn an_answer_over_the_size_limit_is_a_plugin_error() {
        let mut host = MockHost::new();
        let payload = vec![b'a'; host.max_response_bytes + 1];
        let error = host
            .deliver(&mut Upcase, query("upcase", &payload))
            .unwrap_err();
        assert_eq!(error, Error::from(HostError::TooLarge));
        assert!(host.responses.is_empty());
    }
}
