//! Decoding what the host writes into the input buffer: the init context and the envelopes.
//!
//! Payloads are read into an [`rmpv::Value`] first and deserialized from that, instead of with
//! `rmp_serde` directly: rmpv's reader is not generic over the target type, which keeps every
//! plugin module about 50 KiB smaller. The result equals [`abi::decode`](crate::abi::decode)'s (the fixture tests
//! check both). Compiled for wasm, where `guest` uses it, and for native tests.

use rmpv::Value;

use crate::abi::{ABI_VERSION, Envelope, InitContext};

/// A decoded envelope, or one to skip.
#[derive(Debug, PartialEq)]
pub(crate) enum Input {
    /// An event for the plugin.
    Envelope(Envelope),
    /// A well-formed envelope of an event kind this SDK does not know, from a newer v1 host.
    UnknownKind(String),
}

/// The `kind` values of ABI v1.0, the ones [`abi::Event`] can hold.
const KNOWN_KINDS: [&str; 8] = [
    "member-join",
    "member-leave",
    "member-failed",
    "member-update",
    "member-reap",
    "user",
    "query",
    "dropped",
];

/// How deep the decoder recurses; each array, map or string level counts twice. ABI payloads
/// nest about six levels (a member's tags); only deeply nested `config` tables come close.
/// Bounded well below rmpv's default so a hostile payload fails with an error instead of
/// overflowing the guest's stack.
const MAX_DECODE_DEPTH: usize = 256;

fn read(mut bytes: &[u8], what: &str) -> Result<Value, String> {
    rmpv::decode::read_value_with_max_depth(&mut bytes, MAX_DECODE_DEPTH)
        .map_err(|error| format!("cannot decode {what}: {error}"))
}

/// The value of string key `key` in `map`, if `map` is a map that has it.
fn field<'a>(map: &'a Value, key: &str) -> Option<&'a Value> {
    map.as_map()?
        .iter()
        .find(|(name, _)| name.as_str() == Some(key))
        .map(|(_, value)| value)
}

/// Decodes `serf_init`'s payload and checks that it speaks this ABI version.
pub(crate) fn decode_init(bytes: &[u8]) -> Result<InitContext, String> {
    let ctx: InitContext = rmpv::ext::from_value(read(bytes, "init context")?)
        .map_err(|error| format!("cannot decode init context: {error}"))?;
    if ctx.abi != ABI_VERSION {
        return Err(format!(
            "host speaks plugin abi {}, this plugin speaks {ABI_VERSION}",
            ctx.abi
        ));
    }
    Ok(ctx)
}

/// Decodes `serf_handle`'s payload; event kinds newer than this SDK are skipped, not errors.
pub(crate) fn decode_envelope(bytes: &[u8]) -> Result<Input, String> {
    let value = read(bytes, "envelope")?;
    if let Some(v) = field(&value, "v").and_then(Value::as_u64)
        && v != u64::from(ABI_VERSION)
    {
        return Err(format!(
            "envelope of abi {v}, this plugin speaks {ABI_VERSION}"
        ));
    }
    let kind = field(&value, "event").and_then(|event| field(event, "kind"));
    if let Some(kind) = kind.and_then(Value::as_str)
        && !KNOWN_KINDS.contains(&kind)
    {
        return Ok(Input::UnknownKind(kind.to_owned()));
    }
    rmpv::ext::from_value(value)
        .map(Input::Envelope)
        .map_err(|error| format!("cannot decode envelope: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{self, Event};
    use crate::testing::{init_context, query};

    fn envelope(event: Event) -> Envelope {
        Envelope {
            v: ABI_VERSION,
            seq: 1,
            event,
        }
    }

    fn encode_value(value: &Value) -> Vec<u8> {
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, value).unwrap();
        bytes
    }

    #[test]
    fn envelopes_decode_like_abi_decode() {
        let sent = envelope(query("upcase", &[0, 0xff]));
        let bytes = abi::encode(&sent);
        assert_eq!(decode_envelope(&bytes), Ok(Input::Envelope(sent)));
    }

    #[test]
    fn init_contexts_decode_like_abi_decode() {
        let sent = init_context([("file", "/data/x".into()), ("n", (-3).into())]);
        assert_eq!(decode_init(&abi::encode(&sent)), Ok(sent));
    }

    #[test]
    fn unknown_event_kinds_are_skipped() {
        let value = Value::Map(vec![
            ("v".into(), 1.into()),
            ("seq".into(), 4.into()),
            (
                "event".into(),
                Value::Map(vec![
                    ("kind".into(), "job-done".into()),
                    ("job_id".into(), 9.into()),
                ]),
            ),
        ]);
        assert_eq!(
            decode_envelope(&encode_value(&value)),
            Ok(Input::UnknownKind("job-done".into()))
        );
    }

    #[test]
    fn a_known_kind_with_bad_fields_is_an_error() {
        let value = Value::Map(vec![
            ("v".into(), 1.into()),
            ("seq".into(), 4.into()),
            (
                "event".into(),
                Value::Map(vec![("kind".into(), "dropped".into())]),
            ),
        ]);
        let error = decode_envelope(&encode_value(&value)).unwrap_err();
        assert!(error.starts_with("cannot decode envelope: "), "{error}");
    }

    #[test]
    fn other_abi_versions_are_refused() {
        let mut sent = envelope(Event::Dropped { count: 1 });
        sent.v = 2;
        assert_eq!(
            decode_envelope(&abi::encode(&sent)),
            Err("envelope of abi 2, this plugin speaks 1".into())
        );
        let mut ctx = init_context([]);
        ctx.abi = 2;
        assert_eq!(
            decode_init(&abi::encode(&ctx)),
            Err("host speaks plugin abi 2, this plugin speaks 1".into())
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(decode_envelope(&[0xc1]).is_err());
        assert!(decode_envelope(&[]).is_err());
        assert!(decode_init(&[0x93, 1, 2]).is_err());
        // Lengths far beyond the input, and nesting beyond the decoder's depth limit.
        assert!(decode_envelope(&[0xdd, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(decode_envelope(&[0xc6, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(decode_envelope(&[0x91; 100_000]).is_err());
    }

    #[test]
    fn config_may_nest_a_hundred_levels() {
        let mut nested = Value::from("bottom");
        for _ in 0..100 {
            nested = Value::Array(vec![nested]);
        }
        let ctx = init_context([("deep", nested)]);
        assert_eq!(decode_init(&abi::encode(&ctx)), Ok(ctx));
    }

    #[cfg(not(target_family = "wasm"))]
    mod properties {
        use std::collections::BTreeMap;

        use proptest::prelude::*;

        use super::super::*;
        use crate::abi::{self, Event, Member, Query, UserEvent};

        fn member() -> impl Strategy<Value = Member> {
            (
                "[a-z0-9-]{1,12}",
                "[0-9a-f:.]{2,39}",
                any::<u16>(),
                proptest::collection::btree_map("[a-z]{1,6}", ".{0,8}", 0..3),
                prop_oneof![Just("alive"), Just("leaving"), Just("left"), Just("failed")],
            )
                .prop_map(|(name, addr, port, tags, status)| Member {
                    name,
                    addr,
                    port,
                    tags: tags.into_iter().collect::<BTreeMap<_, _>>(),
                    status: status.into(),
                })
        }

        fn event() -> impl Strategy<Value = Event> {
            let members = || proptest::collection::vec(member(), 0..4);
            prop_oneof![
                members().prop_map(|members| Event::MemberJoin { members }),
                members().prop_map(|members| Event::MemberLeave { members }),
                members().prop_map(|members| Event::MemberFailed { members }),
                members().prop_map(|members| Event::MemberUpdate { members }),
                members().prop_map(|members| Event::MemberReap { members }),
                (
                    ".{0,16}",
                    proptest::collection::vec(any::<u8>(), 0..64),
                    any::<u64>(),
                    any::<bool>()
                )
                    .prop_map(|(name, payload, ltime, coalesce)| Event::User(
                        UserEvent {
                            name,
                            payload,
                            ltime,
                            coalesce,
                        }
                    )),
                (
                    any::<u32>(),
                    ".{0,16}",
                    proptest::collection::vec(any::<u8>(), 0..64),
                    any::<u64>(),
                    ".{0,16}",
                    any::<u64>(),
                )
                    .prop_map(
                        |(id, name, payload, ltime, source_node, deadline_ms)| {
                            Event::Query(Query {
                                id,
                                name,
                                payload,
                                ltime,
                                source_node,
                                deadline_ms,
                            })
                        }
                    ),
                any::<u64>().prop_map(|count| Event::Dropped { count }),
            ]
        }

        proptest! {
            #[test]
            fn every_envelope_round_trips(seq in any::<u64>(), event in event()) {
                let sent = Envelope { v: ABI_VERSION, seq, event };
                let bytes = abi::encode(&sent);
                prop_assert_eq!(abi::decode::<Envelope>(&bytes).unwrap(), sent.clone());
                prop_assert_eq!(decode_envelope(&bytes), Ok(Input::Envelope(sent)));
            }

            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
                let _ = decode_envelope(&bytes);
                let _ = decode_init(&bytes);
            }
        }
    }
}
