//! UDP packets: framing (decrypt, CRC, compound, compress) then every message body.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use serf_gossip::Keyring;
use serf_gossip::message::Message;
use serf_gossip::packet::unpack_packet;

/// The key of the captured encrypted test cluster (bytes 0x00..0x1f), so seeds taken from
/// real encrypted traffic decrypt.
fn keyring() -> &'static Keyring {
    static KEYRING: OnceLock<Keyring> = OnceLock::new();
    KEYRING.get_or_init(|| Keyring::new(vec![(0u8..32).collect()]).expect("a 32-byte key"))
}

fuzz_target!(|data: &[u8]| {
    for keyring in [None, Some(keyring())] {
        if let Ok(unpacked) = unpack_packet(data, keyring) {
            for message in &unpacked.messages {
                let _ = Message::decode(message);
            }
        }
    }
});
