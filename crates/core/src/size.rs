//! Encoded sizes of Serf messages, for Serf's size limits.
//!
//! Serf checks its limits against the gossip encoding (go-msgpack without `WriteExt`,
//! reference section 1.2): byte strings use the str family (no `str8`), integers the smallest
//! unsigned form, structs are maps keyed by field name. These functions count that encoding
//! exactly, including the one-byte message type, without building it.

#[cfg(test)]
use std::net::SocketAddr;

use super::QueryKey;
#[cfg(test)]
use super::QueryParams;

/// A str/raw header plus `len` bytes.
fn raw(len: usize) -> usize {
    len + match len {
        0..32 => 1,
        32..65536 => 3,
        _ => 5,
    }
}

/// A non-negative integer in its smallest form.
fn uint(value: u64) -> usize {
    match value {
        0..128 => 1,
        128..256 => 2,
        256..65536 => 3,
        65536..=0xffff_ffff => 5,
        _ => 9,
    }
}

/// A map, array or raw header for `n` entries (maps and arrays share the thresholds).
fn collection(n: usize) -> usize {
    match n {
        0..16 => 1,
        16..65536 => 3,
        _ => 5,
    }
}

/// `[3]` + `{CC, LTime, Name, Payload}` (a cross-check of the encoder in tests).
#[cfg(test)]
pub(super) fn user_event(ltime: u64, name: &str, payload: &[u8]) -> usize {
    1 + collection(4)
        + raw(2)
        + 1
        + raw(5)
        + uint(ltime)
        + raw(4)
        + raw(name.len())
        + raw(7)
        + raw(payload.len())
}

/// `[4]` + `{Addr, Filters, Flags, ID, LTime, Name, Payload, Port, RelayFactor, SourceNode, Timeout}`.
#[cfg(test)]
pub(super) fn query(
    key: QueryKey,
    params: &QueryParams,
    source_node: &str,
    source: SocketAddr,
) -> usize {
    let addr_len = if source.is_ipv4() { 4 } else { 16 };
    let mut filters: Vec<usize> = Vec::new();
    if !params.filter_nodes.is_empty() {
        let names: usize = params.filter_nodes.iter().map(|n| raw(n.len())).sum();
        filters.push(1 + collection(params.filter_nodes.len()) + names);
    }
    for (tag, expr) in &params.filter_tags {
        filters.push(1 + collection(2) + raw(4) + raw(expr.len()) + raw(3) + raw(tag.len()));
    }
    let filters_len = if filters.is_empty() {
        1 // nil
    } else {
        collection(filters.len()) + filters.iter().map(|&len| raw(len)).sum::<usize>()
    };
    let flags = u64::from(params.request_ack);
    let timeout_ns = params
        .timeout
        .map_or(0, |t| u64::try_from(t.as_nanos()).unwrap_or(u64::MAX));
    1 + collection(11)
        + raw(4)
        + raw(addr_len)
        + raw(7)
        + filters_len
        + raw(5)
        + uint(flags)
        + raw(2)
        + uint(u64::from(key.id))
        + raw(5)
        + uint(key.ltime)
        + raw(4)
        + raw(params.name.len())
        + raw(7)
        + raw(params.payload.len())
        + raw(4)
        + uint(u64::from(source.port()))
        + raw(11)
        + uint(u64::from(params.relay_factor))
        + raw(10)
        + raw(source_node.len())
        + raw(7)
        + uint(timeout_ns)
}

/// `[5]` + `{Flags, From, ID, LTime, Payload}` for a response (not an ack).
pub(super) fn query_response(key: QueryKey, from: &str, payload: &[u8]) -> usize {
    1 + collection(5)
        + raw(5)
        + uint(0)
        + raw(4)
        + raw(from.len())
        + raw(2)
        + uint(u64::from(key.id))
        + raw(5)
        + uint(key.ltime)
        + raw(7)
        + raw(payload.len())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Reference 7.5: the 46-byte gossip packet is the CRC byte, 4 CRC bytes, the user-message
    /// byte and then the 40 bytes Serf counts: `03 84 a2 CC c3 a5 LTime 01 ...`.
    #[test]
    fn user_event_matches_the_captured_vector() {
        assert_eq!(user_event(1, "deploy", b"v1.2.3"), 46 - 6);
    }

    /// Reference 7.7: a response from `a` is `08` followed by the message Serf counts.
    #[test]
    fn query_response_matches_the_captured_vector() {
        let hex = "080585a5466c61677300a446726f6da161a24944ce183fe5dfa54c54696d6501a75061796c6f6164\
                   ac726573702d66726f6d2d610a";
        let key = QueryKey {
            ltime: 1,
            id: 406_840_799,
        };
        assert_eq!(
            query_response(key, "a", b"resp-from-a\n"),
            hex.len() / 2 - 1
        );
    }

    #[test]
    fn thresholds_follow_go_msgpack() {
        assert_eq!(raw(31), 32);
        assert_eq!(raw(32), 35);
        assert_eq!(uint(127), 1);
        assert_eq!(uint(128), 2);
        assert_eq!(uint(7946), 3);
        assert_eq!(uint(2_000_000_000), 5);
    }

    /// Reference 7.6 is a 122-byte gossip packet: 1 CRC type byte + 4 CRC bytes + 1 user-message
    /// byte + the 116-byte query `upcase`/`hello` from `a` (127.0.0.10:7946), timeout 2 s.
    #[test]
    fn query_matches_the_captured_vector() {
        let params = QueryParams {
            name: "upcase".into(),
            payload: b"hello".to_vec(),
            request_ack: true,
            timeout: Some(Duration::from_secs(2)),
            ..QueryParams::default()
        };
        let key = QueryKey {
            ltime: 1,
            id: 0x7fff_ffff,
        };
        let len = query(key, &params, "a", "127.0.0.10:7946".parse().unwrap());
        assert_eq!(len, 122 - 6);
    }
}
