//! The golden ABI payloads in `testdata/`: the bytes a v1 host sends, shared with the Go SDK.
//!
//! Each file must decode, with both [`abi::decode`] and the guest's decoder, to exactly the
//! value built here, and that value must encode back to the same bytes. After a deliberate
//! ABI change, `SERF_UPDATE_FIXTURES=1 cargo test -p serf-plugin-sdk fixtures` rewrites the
//! files; then update `testdata/README.md` and the Go SDK's copy of these values.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rmpv::Value;

use crate::abi::{self, ABI_VERSION, Envelope, Event, InitContext, Member, Query, UserEvent};
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

#[test]
fn envelope_member_join() {
    let tags = BTreeMap::from([
        ("role".to_owned(), "web".to_owned()),
        ("dc".to_owned(), "east".to_owned()),
    ]);
    check_envelope(
        "envelope-member-join.msgpack",
        envelope(
            1,
            Event::MemberJoin {
                members: vec![
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
                ],
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
