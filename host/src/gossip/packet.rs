//! Packet and stream framing (reference 2.4–2.10): compound, CRC, LZW compression, encryption.
//!
//! Works on whole messages (type byte + body); the bodies themselves are `message`'s business.

use rand::RngCore;

use super::error::DecodeError;
use super::keyring::Keyring;

/// The most a stream may carry (memberlist's `maxPushStateBytes`).
pub const MAX_STREAM_BYTES: usize = 20 * 1024 * 1024;

/// How deep compound/compress layers may nest before a packet is refused.
pub const MAX_NESTING: usize = 8;

/// A decoded UDP packet: its messages, each starting with its type byte, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Unpacked {
    /// Dispatchable messages (never compound, compress or hasCrc).
    pub messages: Vec<Vec<u8>>,
    /// Compound parts dropped because they were cut short.
    pub truncated: usize,
}

/// What to apply when sending a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PackOptions {
    /// LZW-compress when that makes the packet smaller.
    pub compress: bool,
    /// Prefix a CRC (toward peers whose protocol max is at least 5).
    pub crc: bool,
}

/// Receives a UDP packet: decrypts (every key, in order), verifies a CRC, and unwraps
/// compound and compress layers into the messages to dispatch.
pub fn unpack_packet(packet: &[u8], keyring: Option<&Keyring>) -> Result<Unpacked, DecodeError> {
    let _ = (packet, keyring);
    todo!("packet layer")
}

/// Prepares one message (possibly a compound) for UDP: compress, CRC, encrypt, in that order.
pub fn pack_packet(
    message: &[u8],
    options: PackOptions,
    keyring: Option<&Keyring>,
    rng: &mut dyn RngCore,
) -> Vec<u8> {
    let _ = (message, options, keyring, rng);
    todo!("packet layer")
}

/// `[7] [n] [len u16]… [msg]…`; callers keep `messages.len() <= 255` and each part < 64 KiB.
pub fn encode_compound(messages: &[Vec<u8>]) -> Vec<u8> {
    let _ = messages;
    todo!("packet layer")
}

/// How many bytes a stream message starting at `buf[0]` occupies: `Ok(None)` while more bytes
/// are needed. Needs no key: an encrypted frame carries its length.
pub fn stream_frame_len(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    let _ = buf;
    todo!("packet layer")
}

/// Opens a complete stream message: decrypts the `[10]` frame (AAD = its 5 header bytes),
/// then unwraps a compress layer; returns the plain message starting with its type byte.
pub fn unpack_stream(bytes: &[u8], keyring: Option<&Keyring>) -> Result<Vec<u8>, DecodeError> {
    let _ = (bytes, keyring);
    todo!("packet layer")
}

/// Prepares a stream message: always compressed when `compress`, then encrypted in a
/// `[10] [len u32]` frame when there is a keyring.
pub fn pack_stream(
    message: &[u8],
    compress: bool,
    keyring: Option<&Keyring>,
    rng: &mut dyn RngCore,
) -> Vec<u8> {
    let _ = (message, compress, keyring, rng);
    todo!("packet layer")
}
