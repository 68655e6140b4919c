//! Decoding what the host writes into the input buffer: the init context and the envelopes;
//! for the capability imports, also the member list and the requests the guest sends.
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

/// The `kind` values [`abi::Event`] can hold: those of ABI v1.0, then later additions.
const KNOWN_KINDS: [&str; 12] = [
    "member-join",
    "member-leave",
    "member-failed",
    "member-update",
    "member-reap",
    "user",
    "query",
    "dropped",
    // Capabilities (ABI v1.1).
    "query-response",
    "query-done",
    // Jobs (ABI v1.1).
    "job-done",
    // Timers (ABI v1.2).
    "tick",
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

// --- Capabilities (ABI v1.1): the member list the host writes, and what the guest sends.

/// Decodes what the `members` import wrote.
#[cfg(any(test, feature = "members"))]
pub(crate) fn decode_member_list(bytes: &[u8]) -> Result<Vec<crate::abi::Member>, String> {
    let list: crate::abi::MemberList = rmpv::ext::from_value(read(bytes, "member list")?)
        .map_err(|error| format!("cannot decode member list: {error}"))?;
    Ok(list.members)
}

#[cfg(any(test, feature = "events", feature = "queries"))]
fn write(value: &Value) -> Vec<u8> {
    let mut bytes = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut bytes, value);
    bytes
}

#[cfg(any(test, feature = "events", feature = "queries"))]
fn str_key(key: &str) -> Value {
    Value::from(key)
}

/// A [`FireEvent`](crate::abi::FireEvent) as the `fire_event` import reads it; the same bytes
/// as `abi::encode`, without serde's encoder in the module.
#[cfg(any(test, feature = "events"))]
pub(crate) fn encode_fire_event(name: &str, payload: &[u8], coalesce: bool) -> Vec<u8> {
    write(&Value::Map(vec![
        (str_key("name"), Value::from(name)),
        (str_key("payload"), Value::Binary(payload.to_vec())),
        (str_key("coalesce"), Value::from(coalesce)),
    ]))
}

/// A [`QueryRequest`](crate::abi::QueryRequest) as the `query` import reads it; the same
/// bytes as `abi::encode`.
#[cfg(any(test, feature = "queries"))]
pub(crate) fn encode_query_request(request: &crate::abi::QueryRequest) -> Vec<u8> {
    let nodes = request
        .filter_nodes
        .iter()
        .map(|node| Value::from(node.as_str()));
    let tags = request
        .filter_tags
        .iter()
        .map(|(tag, expr)| (Value::from(tag.as_str()), Value::from(expr.as_str())));
    write(&Value::Map(vec![
        (str_key("name"), Value::from(request.name.as_str())),
        (str_key("payload"), Value::Binary(request.payload.clone())),
        (str_key("filter_nodes"), Value::Array(nodes.collect())),
        (str_key("filter_tags"), Value::Map(tags.collect())),
        (str_key("timeout_ms"), Value::from(request.timeout_ms)),
    ]))
}

// --- Jobs (ABI v1.1): the job `serf_job` runs, the status `job_status` writes, and the
// request the guest sends to `job_start`.

/// Decodes `serf_job`'s payload.
#[cfg_attr(not(feature = "jobs"), allow(dead_code))]
pub(crate) fn decode_job(bytes: &[u8]) -> Result<crate::abi::Job, String> {
    rmpv::ext::from_value(read(bytes, "job")?)
        .map_err(|error| format!("cannot decode job: {error}"))
}

/// Decodes what the `job_status` import wrote.
#[cfg_attr(not(feature = "jobs"), allow(dead_code))]
pub(crate) fn decode_job_info(bytes: &[u8]) -> Result<crate::abi::JobInfo, String> {
    rmpv::ext::from_value(read(bytes, "job status")?)
        .map_err(|error| format!("cannot decode job status: {error}"))
}

/// A [`JobStart`](crate::abi::JobStart) as the `job_start` import reads it; the same bytes as
/// `abi::encode`, without serde's encoder in the module.
#[cfg_attr(not(feature = "jobs"), allow(dead_code))]
pub(crate) fn encode_job_start(name: &str, arg: &[u8]) -> Vec<u8> {
    let value = Value::Map(vec![
        (Value::from("name"), Value::from(name)),
        (Value::from("arg"), Value::Binary(arg.to_vec())),
    ]);
    let mut bytes = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut bytes, &value);
    bytes
}

/// A [`CommandRequest`](crate::abi::CommandRequest) as the `command_*` imports read it; the
/// same bytes as `abi::encode`.
#[cfg_attr(not(feature = "commands"), allow(dead_code))]
pub(crate) fn encode_command_request(name: &str, args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let value = Value::Map(vec![
        (Value::from("name"), Value::from(name)),
        (
            Value::from("args"),
            Value::Array(args.iter().map(|arg| Value::from(*arg)).collect()),
        ),
        (Value::from("stdin"), Value::Binary(stdin.to_vec())),
    ]);
    let mut bytes = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut bytes, &value);
    bytes
}

/// The [`CommandResult`](crate::abi::CommandResult) `command_run` writes.
#[cfg_attr(not(feature = "commands"), allow(dead_code))]
pub(crate) fn decode_command_result(bytes: &[u8]) -> Result<crate::abi::CommandResult, String> {
    rmpv::ext::from_value(read(bytes, "command result")?)
        .map_err(|error| format!("cannot decode command result: {error}"))
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
    fn job_payloads_decode_like_abi_decode() {
        let job = abi::Job {
            id: 3,
            name: "deploy".into(),
            arg: vec![0, 0xff],
        };
        assert_eq!(decode_job(&abi::encode(&job)), Ok(job));
        let info = abi::JobInfo {
            id: 3,
            name: "deploy".into(),
            state: abi::JobState::Running,
            exit_status: -1,
            error: String::new(),
            started_ms: 1_767_225_600_000,
            ended_ms: 0,
            output: vec!["1/10".into()],
        };
        assert_eq!(decode_job_info(&abi::encode(&info)), Ok(info));
        let start = abi::JobStart {
            name: "deploy".into(),
            arg: b"10".to_vec(),
        };
        assert_eq!(
            encode_job_start(&start.name, &start.arg),
            abi::encode(&start)
        );
    }

    #[test]
    fn command_payloads_match_abi_encode() {
        let request = abi::CommandRequest {
            name: "reload".into(),
            args: vec!["-s".into()],
            stdin: b"in".to_vec(),
        };
        assert_eq!(
            encode_command_request("reload", &["-s"], b"in"),
            abi::encode(&request)
        );
        let result = abi::CommandResult {
            exit_status: 3,
            timed_out: false,
            stdout: b"out".to_vec(),
            stderr: Vec::new(),
            truncated: true,
            error: String::new(),
            duration_ms: 12,
        };
        assert_eq!(decode_command_result(&abi::encode(&result)), Ok(result));
    }

    #[test]
    fn unknown_event_kinds_are_skipped() {
        let value = Value::Map(vec![
            ("v".into(), 1.into()),
            ("seq".into(), 4.into()),
            (
                "event".into(),
                Value::Map(vec![
                    ("kind".into(), "from-the-future".into()),
                    ("id".into(), 9.into()),
                ]),
            ),
        ]);
        assert_eq!(
            decode_envelope(&encode_value(&value)),
            Ok(Input::UnknownKind("from-the-future".into()))
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
        use crate::abi::{self, Event, Member, Query, QueryDone, QueryResponse, UserEvent};

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
                (
                    any::<u32>(),
                    ".{0,16}",
                    ".{0,16}",
                    proptest::collection::vec(any::<u8>(), 0..64),
                )
                    .prop_map(|(query, name, from, payload)| {
                        Event::QueryResponse(QueryResponse {
                            query,
                            name,
                            from,
                            payload,
                        })
                    }),
                (any::<u32>(), ".{0,16}", ".{0,16}").prop_map(|(query, name, error)| {
                    Event::QueryDone(QueryDone { query, name, error })
                }),
                // Jobs (ABI v1.1).
                (
                    any::<u32>(),
                    ".{0,16}",
                    prop_oneof![
                        Just(abi::JobState::Finished),
                        Just(abi::JobState::Failed),
                        Just(abi::JobState::Killed)
                    ],
                    any::<i32>(),
                    ".{0,16}",
                )
                    .prop_map(|(id, name, state, exit_status, error)| {
                        Event::JobDone(abi::JobDone {
                            id,
                            name,
                            state,
                            exit_status,
                            error,
                        })
                    }),
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
