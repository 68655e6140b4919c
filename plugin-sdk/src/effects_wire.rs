//! Effects (ABI v1.2) on the guest side of the wire: what the guest sends (`http_request`,
//! `state_list`, `metric_define`) and reads back (`HttpResponse`, `StateKeys`).
//!
//! Built by hand as rmpv maps, the same bytes as [`abi::encode`](crate::abi::encode) without
//! serde's encoder in the module (the tests check both), and read like the rest of `input`.

#![allow(dead_code, reason = "each part is used only with its crate feature")]

use rmpv::Value;

use crate::abi::{HttpRequest, HttpResponse, StateKeys};

fn write(value: &Value) -> Vec<u8> {
    let mut bytes = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut bytes, value);
    bytes
}

fn map(pairs: Vec<(&str, Value)>) -> Value {
    Value::Map(
        pairs
            .into_iter()
            .map(|(k, v)| (Value::from(k), v))
            .collect(),
    )
}

/// An [`HttpRequest`] as `http_request` reads it.
pub(crate) fn encode_http_request(request: &HttpRequest) -> Vec<u8> {
    let headers = request
        .headers
        .iter()
        .map(|(name, value)| {
            Value::Array(vec![
                Value::from(name.as_str()),
                Value::from(value.as_str()),
            ])
        })
        .collect();
    write(&map(vec![
        ("method", Value::from(request.method.as_str())),
        ("url", Value::from(request.url.as_str())),
        ("headers", Value::Array(headers)),
        ("body", Value::Binary(request.body.clone())),
        ("timeout_ms", Value::from(request.timeout_ms)),
    ]))
}

/// A [`StateList`](crate::abi::StateList) as `state_list` reads it.
pub(crate) fn encode_state_list(prefix: &[u8], after: &[u8], limit: u32) -> Vec<u8> {
    write(&map(vec![
        ("prefix", Value::Binary(prefix.to_vec())),
        ("after", Value::Binary(after.to_vec())),
        ("limit", Value::from(limit)),
    ]))
}

/// A [`MetricDefine`](crate::abi::MetricDefine) as `metric_define` reads it.
pub(crate) fn encode_metric_define(name: &str, kind: &str, help: &str) -> Vec<u8> {
    write(&map(vec![
        ("name", Value::from(name)),
        ("kind", Value::from(kind)),
        ("help", Value::from(help)),
    ]))
}

/// How deep the decoder recurses (as in `input`).
const MAX_DECODE_DEPTH: usize = 64;

fn read<T: serde::de::DeserializeOwned>(mut bytes: &[u8], what: &str) -> Result<T, String> {
    let value = rmpv::decode::read_value_with_max_depth(&mut bytes, MAX_DECODE_DEPTH)
        .map_err(|error| format!("cannot decode {what}: {error}"))?;
    rmpv::ext::from_value(value).map_err(|error| format!("cannot decode {what}: {error}"))
}

/// What `http_request` wrote.
pub(crate) fn decode_http_response(bytes: &[u8]) -> Result<HttpResponse, String> {
    read(bytes, "http response")
}

/// What `state_list` wrote.
pub(crate) fn decode_state_keys(bytes: &[u8]) -> Result<StateKeys, String> {
    read(bytes, "state keys")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{self, MetricDefine, StateList};
    use proptest::prelude::*;

    #[test]
    fn hand_built_requests_are_the_bytes_abi_encode_writes() {
        let request = HttpRequest {
            method: "POST".into(),
            url: "http://127.0.0.1:8080/hook".into(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: b"{\"a\":1}".to_vec(),
            timeout_ms: 250,
        };
        assert_eq!(encode_http_request(&request), abi::encode(&request));
        let list = StateList {
            prefix: b"deploy/".to_vec(),
            after: b"deploy/3".to_vec(),
            limit: 10,
        };
        assert_eq!(
            encode_state_list(&list.prefix, &list.after, list.limit),
            abi::encode(&list)
        );
        let define = MetricDefine {
            name: "posts".into(),
            kind: "counter".into(),
            help: "posts sent".into(),
        };
        assert_eq!(
            encode_metric_define(&define.name, &define.kind, &define.help),
            abi::encode(&define)
        );
    }

    #[test]
    fn the_guest_reads_what_the_host_writes() {
        let response = HttpResponse {
            status: 201,
            headers: vec![("x".into(), "y".into())],
            body: vec![0, 1, 255],
        };
        assert_eq!(
            decode_http_response(&abi::encode(&response)).unwrap(),
            response
        );
        let keys = StateKeys {
            keys: vec![serde_bytes::ByteBuf::from(b"a".to_vec())],
            more: true,
        };
        assert_eq!(decode_state_keys(&abi::encode(&keys)).unwrap(), keys);
    }

    proptest! {
        // The host decodes these from guest bytes, the guest decodes the answers from host
        // bytes: arbitrary input is an error, never a panic, and what encodes decodes back.
        #[test]
        fn decoders_of_effect_payloads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = abi::decode::<HttpRequest>(&bytes);
            let _ = abi::decode::<StateList>(&bytes);
            let _ = abi::decode::<MetricDefine>(&bytes);
            let _ = decode_http_response(&bytes);
            let _ = decode_state_keys(&bytes);
        }

        #[test]
        fn http_requests_round_trip(
            method in "[A-Z]{0,8}",
            url in ".{0,64}",
            headers in proptest::collection::vec((".{0,16}", ".{0,16}"), 0..4),
            body in proptest::collection::vec(any::<u8>(), 0..64),
            timeout_ms in any::<u64>(),
        ) {
            let request = HttpRequest { method, url, headers, body, timeout_ms };
            let bytes = encode_http_request(&request);
            prop_assert_eq!(abi::decode::<HttpRequest>(&bytes).unwrap(), request);
        }
    }
}
