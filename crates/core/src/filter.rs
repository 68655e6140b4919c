//! Serf's handler filter syntax (as Serf's `-event-handler` takes it), applied before an event is queued.

use crate::{Event, MemberEventKind};

/// One comma-separated token of a filter.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    /// `*`
    All,
    /// `member-join`, ...
    Member(MemberEventKind),
    /// `user` / `user:` (any name) or `user:NAME`.
    User(Option<String>),
    /// `query` / `query:` (any name) or `query:NAME`.
    Query(Option<String>),
}

/// Which events a plugin receives: `member-join,member-leave`, `user:deploy`, `query`, `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFilter {
    entries: Vec<Entry>,
}

/// A filter token Serf does not know. The filter is not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid event filter {token:?}: expected member-join, member-leave, member-failed, member-update, member-reap, user, user:NAME, query, query:NAME or *"
)]
pub struct FilterError {
    /// The offending token.
    pub token: String,
}

impl EventFilter {
    /// Every event (`*`).
    pub fn all() -> EventFilter {
        EventFilter {
            entries: vec![Entry::All],
        }
    }

    /// What a plugin in the plugin directory without a `[plugins.NAME]` table gets: member and
    /// user events, no queries (a query is answered by one plugin, so answering is opted into).
    pub const UNCONFIGURED: &str =
        "member-join,member-leave,member-failed,member-update,member-reap,user";

    /// [`EventFilter::UNCONFIGURED`], parsed.
    pub fn unconfigured() -> EventFilter {
        EventFilter::parse(EventFilter::UNCONFIGURED).expect("a valid filter")
    }

    /// Parses a comma-separated filter. Tokens are not trimmed, as in Serf.
    pub fn parse(text: &str) -> Result<EventFilter, FilterError> {
        let entries = text
            .split(',')
            .map(|token| {
                let named = |name: &str| (!name.is_empty()).then(|| name.to_owned());
                Ok(match token {
                    "*" => Entry::All,
                    "user" => Entry::User(None),
                    "query" => Entry::Query(None),
                    _ => {
                        if let Some(name) = token.strip_prefix("user:") {
                            Entry::User(named(name))
                        } else if let Some(name) = token.strip_prefix("query:") {
                            Entry::Query(named(name))
                        } else if let Some(kind) = MemberEventKind::ALL
                            .into_iter()
                            .find(|k| k.as_str() == token)
                        {
                            Entry::Member(kind)
                        } else {
                            return Err(FilterError {
                                token: token.to_owned(),
                            });
                        }
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(EventFilter { entries })
    }

    /// Whether the event passes. Unlike Serf's scripts, a plugin runs once per event even
    /// when several tokens match it.
    pub fn matches(&self, event: &Event) -> bool {
        self.entries.iter().any(|entry| match (entry, event) {
            (Entry::All, _) => true,
            (Entry::Member(kind), Event::Member(member)) => *kind == member.kind,
            (Entry::User(name), Event::User(user)) => name.as_ref().is_none_or(|n| *n == user.name),
            (Entry::Query(name), Event::Query(query)) => {
                name.as_ref().is_none_or(|n| *n == query.name)
            }
            _ => false,
        })
    }
}

impl std::fmt::Display for EventFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, entry) in self.entries.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match entry {
                Entry::All => f.write_str("*")?,
                Entry::Member(kind) => f.write_str(kind.as_str())?,
                Entry::User(None) => f.write_str("user")?,
                Entry::User(Some(name)) => write!(f, "user:{name}")?,
                Entry::Query(None) => f.write_str("query")?,
                Entry::Query(Some(name)) => write!(f, "query:{name}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::{MemberEvent, QueryEvent, QueryKey, UserEvent};

    fn user(name: &str) -> Event {
        Event::User(UserEvent {
            ltime: 1,
            name: name.into(),
            payload: vec![],
            coalesce: false,
        })
    }

    fn query(name: &str) -> Event {
        Event::Query(QueryEvent {
            key: QueryKey { ltime: 1, id: 1 },
            name: name.into(),
            payload: vec![],
            source_node: "a".into(),
            deadline: Instant::now(),
        })
    }

    fn member(kind: MemberEventKind) -> Event {
        Event::Member(MemberEvent {
            kind,
            members: vec![],
        })
    }

    #[test]
    fn tokens_select_their_events() {
        let cases: [(&str, Event, bool); 12] = [
            ("*", user("x"), true),
            ("*", member(MemberEventKind::Reap), true),
            ("member-join", member(MemberEventKind::Join), true),
            ("member-join", member(MemberEventKind::Leave), false),
            (
                "member-leave,member-failed",
                member(MemberEventKind::Failed),
                true,
            ),
            ("user:deploy", user("deploy"), true),
            ("user:deploy", user("deployx"), false),
            ("user", user("anything"), true),
            ("user:", user("anything"), true),
            ("query:upcase", query("upcase"), true),
            ("query:upcase", user("upcase"), false),
            ("query", query("any"), true),
        ];
        for (text, event, expected) in cases {
            let filter = EventFilter::parse(text).unwrap();
            assert_eq!(filter.matches(&event), expected, "{text} on {event:?}");
        }
    }

    #[test]
    fn unknown_tokens_are_refused_untrimmed() {
        for text in ["bogus", "member-join, user", "", "member-*", "users"] {
            let error = EventFilter::parse(text).unwrap_err();
            assert!(error.to_string().contains("invalid event filter"), "{text}");
        }
    }

    #[test]
    fn display_round_trips() {
        for text in ["*", "member-join,user:deploy,query", "query:upcase,user"] {
            assert_eq!(EventFilter::parse(text).unwrap().to_string(), text);
        }
    }
}
