//! TCP stream messages: where a message ends, the encrypt/compress layers, then the body.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use serf_gossip::Keyring;
use serf_gossip::message::Message;
use serf_gossip::packet::{stream_frame_len, unpack_stream};

/// The key of the captured encrypted test cluster (bytes 0x00..0x1f).
fn keyring() -> &'static Keyring {
    static KEYRING: OnceLock<Keyring> = OnceLock::new();
    KEYRING.get_or_init(|| Keyring::new(vec![(0u8..32).collect()]).expect("a 32-byte key"))
}

fuzz_target!(|data: &[u8]| {
    // Measuring must be consistent: a length never exceeds the bytes given, and the measured
    // message measures the same on its own.
    let frame = match stream_frame_len(data) {
        Ok(Some(len)) => {
            assert!(len <= data.len());
            assert_eq!(stream_frame_len(&data[..len]), Ok(Some(len)));
            &data[..len]
        }
        _ => data,
    };
    for keyring in [None, Some(keyring())] {
        if let Ok(message) = unpack_stream(frame, keyring) {
            let _ = Message::decode_stream(&message);
        }
    }
});
