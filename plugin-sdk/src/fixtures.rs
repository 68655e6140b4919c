//! The golden ABI payloads in `testdata/`: the bytes a v1 host sends, shared with the Go SDK.
//!
//! Each file must decode, with both [`abi::decode`] and the guest's decoder, to exactly the
//! value built here, and that value must encode back to the same bytes. After a deliberate
//! ABI change, `SERF_UPDATE_FIXTURES=1 cargo test -p serf-plugin-sdk fixtures` rewrites the
//! files; then update `testdata/README.md` and the Go SDK's copy of these values.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rmpv::Value;

use crate::abi::{
    self, ABI_VERSION, Envelope, Event, FireEvent, InitContext, Member, MemberList, Query,
    QueryDone, QueryRequest, QueryResponse, UserEvent,
};
use crate::input::{self, Input};

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
}

/// The file's bytes, after rewriting it from `encoded` if `SERF_UPDATE_FIXTURES` is set.
fn golden(name: &str, encoded: &[u8]) -> Vec<u8> {
    if std::env::var_os("SERF_UPDATE_FIXTURES").is_some() {
        std::fs::write(path(name), encoded).unwrap();
    }
    std::fs::read(path(name)).unwrap_or_else(|error| panic!("cannot read testdata/{name}: {error}"))
}

fn check_envelope(name: &str, expected: Envelope) {
    let encoded = abi::encode(&expected);
    let bytes = golden(name, &encoded);
    assert_eq!(abi::decode::<Envelope>(&bytes).unwrap(), expected, "{name}");
    assert_eq!(
        input::decode_envelope(&bytes),
        Ok(Input::Envelope(expected)),
        "{name}"
    );
    assert_eq!(encoded, bytes, "{name} no longer encodes to the same bytes");
}

fn envelope(seq: u64, event: Event) -> Envelope {
    Envelope {
        v: ABI_VERSION,
        seq,
        event,
    }
}

#[test]
fn envelope_user() {
    check_envelope(
        "envelope-user.msgpack",
        envelope(
            7,
            Event::User(UserEvent {
                name: "deploy".into(),
                payload: b"v1\x00\xff".to_vec(),
                ltime: 42,
                coalesce: true,
            }),
        ),
    );
}

#[test]
fn envelope_query() {
    check_envelope(
        "envelope-query.msgpack",
        envelope(
            8,
            Event::Query(Query {
                id: 1_234_567,
                name: "upcase".into(),
                payload: b"foo".to_vec(),
                ltime: 43,
                source_node: "node-b".into(),
                deadline_ms: 1_767_225_600_000,
            }),
        ),
    );
}

/// The two members of `envelope-member-join.msgpack` and `members.msgpack`.
fn two_members() -> Vec<Member> {
    let tags = BTreeMap::from([
        ("role".to_owned(), "web".to_owned()),
        ("dc".to_owned(), "east".to_owned()),
    ]);
    vec![
        Member {
            name: "node-a".into(),
            addr: "127.0.0.1".into(),
            port: 7946,
            tags,
            status: "alive".into(),
        },
        Member {
            name: "node-b".into(),
            addr: "::1".into(),
            port: 7947,
            tags: BTreeMap::new(),
            status: "alive".into(),
        },
    ]
}

#[test]
fn envelope_member_join() {
    check_envelope(
        "envelope-member-join.msgpack",
        envelope(
            1,
            Event::MemberJoin {
                members: two_members(),
            },
        ),
    );
}

#[test]
fn envelope_dropped() {
    // The host sends this notice with seq 0: it is not one of the offered events.
    check_envelope(
        "envelope-dropped.msgpack",
        envelope(0, Event::Dropped { count: 3 }),
    );
    // The annotated example of testdata/README.md.
    let documented = b"\x83\xa1v\x01\xa3seq\x00\xa5event\x82\xa4kind\xa7dropped\xa5count\x03";
    assert_eq!(
        std::fs::read(path("envelope-dropped.msgpack")).unwrap(),
        documented
    );
}

#[test]
fn init_context() {
    let expected = InitContext {
        abi: ABI_VERSION,
        host: "serf/0.1.0".into(),
        node: "node-a".into(),
        plugin: "memresponse".into(),
        config: BTreeMap::from([
            ("file".to_owned(), Value::from("/data/mem.txt")),
            ("limit".to_owned(), Value::from(300)),
            (
                "nested".to_owned(),
                Value::Map(vec![(Value::from("a"), Value::from("b"))]),
            ),
            ("ratio".to_owned(), Value::from(0.5)),
            ("retries".to_owned(), Value::from(-2)),
            (
                "sizes".to_owned(),
                Value::Array(vec![Value::from(1), Value::from(2)]),
            ),
            ("verbose".to_owned(), Value::from(true)),
        ]),
    };
    let encoded = abi::encode(&expected);
    let bytes = golden("init-context.msgpack", &encoded);
    assert_eq!(abi::decode::<InitContext>(&bytes).unwrap(), expected);
    assert_eq!(input::decode_init(&bytes), Ok(expected));
    assert_eq!(
        encoded, bytes,
        "init-context.msgpack no longer encodes to the same bytes"
    );
}

// --- Capabilities (ABI v1.1): the answers to a plugin's query, the member list the host
// writes, and the requests a guest encodes (which must be these exact bytes in every SDK).

#[test]
fn envelope_query_response() {
    check_envelope(
        "envelope-query-response.msgpack",
        envelope(
            9,
            Event::QueryResponse(QueryResponse {
                query: 3,
                name: "upcase".into(),
                from: "node-b".into(),
                payload: b"FOO".to_vec(),
            }),
        ),
    );
}

#[test]
fn envelope_query_done() {
    check_envelope(
        "envelope-query-done.msgpack",
        envelope(
            10,
            Event::QueryDone(QueryDone {
                query: 3,
                name: "upcase".into(),
                error: String::new(),
            }),
        ),
    );
}

#[test]
fn member_list() {
    let expected = MemberList {
        members: two_members(),
    };
    let encoded = abi::encode(&expected);
    let bytes = golden("members.msgpack", &encoded);
    assert_eq!(abi::decode::<MemberList>(&bytes).unwrap(), expected);
    assert_eq!(input::decode_member_list(&bytes), Ok(expected.members));
    assert_eq!(
        encoded, bytes,
        "members.msgpack no longer encodes to the same bytes"
    );
}

#[test]
fn fire_event() {
    let expected = FireEvent {
        name: "deploy".into(),
        payload: b"v2".to_vec(),
        coalesce: false,
    };
    let bytes = golden("fire-event.msgpack", &abi::encode(&expected));
    assert_eq!(abi::decode::<FireEvent>(&bytes).unwrap(), expected);
    assert_eq!(input::encode_fire_event("deploy", b"v2", false), bytes);
}

#[test]
fn query_request() {
    let expected = QueryRequest {
        name: "upcase".into(),
        payload: b"foo".to_vec(),
        filter_nodes: vec!["node-b".into()],
        filter_tags: BTreeMap::from([("role".to_owned(), "^web$".to_owned())]),
        timeout_ms: 5000,
    };
    let bytes = golden("query-request.msgpack", &abi::encode(&expected));
    assert_eq!(abi::decode::<QueryRequest>(&bytes).unwrap(), expected);
    assert_eq!(input::encode_query_request(&expected), bytes);
}

// --- Jobs (ABI v1.1): the job-done event, the job `serf_job` runs, the status `job_status`
// writes, and the request a guest encodes for `job_start`.

#[test]
fn envelope_job_done() {
    check_envelope(
        "envelope-job-done.msgpack",
        envelope(
            11,
            Event::JobDone(abi::JobDone {
                id: 7,
                name: "deploy".into(),
                state: abi::JobState::Finished,
                exit_status: 3,
                error: "2 hosts unreachable".into(),
            }),
        ),
    );
}

#[test]
fn job() {
    let expected = abi::Job {
        id: 7,
        name: "deploy".into(),
        arg: b"v2\x00\xff".to_vec(),
    };
    let encoded = abi::encode(&expected);
    let bytes = golden("job.msgpack", &encoded);
    assert_eq!(abi::decode::<abi::Job>(&bytes).unwrap(), expected);
    assert_eq!(input::decode_job(&bytes), Ok(expected));
    assert_eq!(
        encoded, bytes,
        "job.msgpack no longer encodes to the same bytes"
    );
}

#[test]
fn job_info() {
    let expected = abi::JobInfo {
        id: 7,
        name: "deploy".into(),
        state: abi::JobState::Running,
        exit_status: -1,
        error: String::new(),
        started_ms: 1_767_225_600_000,
        ended_ms: 0,
        output: vec!["1/3 hosts".into(), "2/3 hosts".into()],
    };
    let encoded = abi::encode(&expected);
    let bytes = golden("job-info.msgpack", &encoded);
    assert_eq!(abi::decode::<abi::JobInfo>(&bytes).unwrap(), expected);
    assert_eq!(input::decode_job_info(&bytes), Ok(expected));
    assert_eq!(
        encoded, bytes,
        "job-info.msgpack no longer encodes to the same bytes"
    );
}

#[test]
fn job_start() {
    let expected = abi::JobStart {
        name: "deploy".into(),
        arg: b"v2".to_vec(),
    };
    let bytes = golden("job-start.msgpack", &abi::encode(&expected));
    assert_eq!(abi::decode::<abi::JobStart>(&bytes).unwrap(), expected);
    assert_eq!(input::encode_job_start("deploy", b"v2"), bytes);
}
