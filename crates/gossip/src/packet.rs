//! Packet and stream framing (reference 2.4–2.10): compound, CRC, LZW compression, encryption.
//!
//! Works on whole messages (type byte + body); the bodies themselves are `message`'s business.
//! The little msgpack this layer must understand (the compress wrapper, stream headers, and
//! where a stream message ends) is read by a bounded cursor that never recurses and never
//! allocates for what it skips.

use rand::RngCore;

use super::error::DecodeError;
use super::keyring::Keyring;
use super::lzw;
use super::message::MessageType;

/// The most a stream may carry (memberlist's `maxPushStateBytes`).
pub const MAX_STREAM_BYTES: usize = 20 * 1024 * 1024;

/// How deep compound/compress layers may nest before a packet is refused.
pub const MAX_NESTING: usize = 8;

/// The most all compress layers of one UDP packet may expand to, together. Real packets are
/// at most 64 KiB before compression.
pub const MAX_PACKET_EXPANSION: usize = 1024 * 1024;

/// Bytes of the encrypted stream frame header `[10] [len: u32 BE]`, which is also the AAD.
pub const STREAM_FRAME_HEADER: usize = 5;

/// Bytes of the CRC header `[12] [crc32: u32 BE]`.
const CRC_HEADER: usize = 5;

/// Compression algorithm 0: LZW.
const LZW_ALGO: u64 = 0;

/// A decoded UDP packet: its messages, each starting with its type byte, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Unpacked {
    /// Dispatchable messages (never compound, compress or hasCrc).
    pub messages: Vec<Vec<u8>>,
    /// Compound parts dropped because they were cut short.
    pub truncated: usize,
    /// Why other compound parts were dropped (the rest of the packet was kept).
    pub errors: Vec<DecodeError>,
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
///
/// With a keyring only encrypted packets are accepted. A CRC is only understood as the
/// outermost layer. Only types that may arrive by UDP are returned (ping, indirect ping, ack,
/// suspect, alive, dead, user, nack); anything else is `UnknownType`. An error in one compound
/// part drops only that part (it is listed in `errors`); any other error drops the packet.
pub fn unpack_packet(packet: &[u8], keyring: Option<&Keyring>) -> Result<Unpacked, DecodeError> {
    let decrypted;
    let mut plain = packet;
    if let Some(keyring) = keyring {
        decrypted = keyring.decrypt(packet, &[])?;
        plain = &decrypted;
    }
    if plain.len() >= CRC_HEADER && plain[0] == MessageType::HasCrc as u8 {
        let expected = u32::from_be_bytes([plain[1], plain[2], plain[3], plain[4]]);
        plain = &plain[CRC_HEADER..];
        if crc32fast::hash(plain) != expected {
            return Err(DecodeError::BadChecksum);
        }
    }
    let mut unwrapper = Unwrapper {
        unpacked: Unpacked::default(),
        budget: MAX_PACKET_EXPANSION,
    };
    unwrapper.unwrap(plain, 0)?;
    Ok(unwrapper.unpacked)
}

struct Unwrapper {
    unpacked: Unpacked,
    /// Bytes compress layers may still expand to.
    budget: usize,
}

impl Unwrapper {
    fn unwrap(&mut self, msg: &[u8], depth: usize) -> Result<(), DecodeError> {
        let &kind = msg.first().ok_or(DecodeError::Empty)?;
        let is_layer = kind == MessageType::Compound as u8 || kind == MessageType::Compress as u8;
        if is_layer && depth >= MAX_NESTING {
            return Err(DecodeError::TooDeep);
        }
        match MessageType::from_byte(kind) {
            Some(MessageType::Compound) => {
                let (parts, truncated) = split_compound(&msg[1..])?;
                self.unpacked.truncated += truncated;
                for part in parts {
                    if let Err(error) = self.unwrap(part, depth + 1) {
                        self.unpacked.errors.push(error);
                    }
                }
                Ok(())
            }
            Some(MessageType::Compress) => {
                let inner = decompress_wrapper(&msg[1..], self.budget)?;
                self.budget -= inner.len();
                self.unwrap(&inner, depth + 1)
            }
            Some(
                MessageType::Ping
                | MessageType::IndirectPing
                | MessageType::Ack
                | MessageType::Suspect
                | MessageType::Alive
                | MessageType::Dead
                | MessageType::User
                | MessageType::Nack,
            ) => {
                self.unpacked.messages.push(msg.to_vec());
                Ok(())
            }
            _ => Err(DecodeError::UnknownType(kind)),
        }
    }
}

/// Splits a compound body (after its type byte) into its parts and the number of parts cut
/// short. Bytes after the last part are ignored.
fn split_compound(body: &[u8]) -> Result<(Vec<&[u8]>, usize), DecodeError> {
    let (&count, rest) = body
        .split_first()
        .ok_or_else(|| DecodeError::Truncated("missing compound length byte".to_owned()))?;
    let count = usize::from(count);
    if rest.len() < count * 2 {
        return Err(DecodeError::Truncated(format!(
            "length table of {count} parts needs {} bytes, got {}",
            count * 2,
            rest.len()
        )));
    }
    let (table, mut data) = rest.split_at(count * 2);
    let mut parts = Vec::with_capacity(count);
    for (index, len) in table.chunks_exact(2).enumerate() {
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        if data.len() < len {
            return Ok((parts, count - index));
        }
        let (part, after) = data.split_at(len);
        parts.push(part);
        data = after;
    }
    Ok((parts, 0))
}

/// Prepares one message (possibly a compound) for UDP: compress, CRC, encrypt, in that order.
pub fn pack_packet(
    message: &[u8],
    options: PackOptions,
    keyring: Option<&Keyring>,
    rng: &mut dyn RngCore,
) -> Vec<u8> {
    let mut packet = message.to_vec();
    if options.compress {
        let compressed = compress_wrapper(message);
        if compressed.len() < packet.len() {
            packet = compressed;
        }
    }
    if options.crc {
        let mut with_crc = Vec::with_capacity(CRC_HEADER + packet.len());
        with_crc.push(MessageType::HasCrc as u8);
        with_crc.extend_from_slice(&crc32fast::hash(&packet).to_be_bytes());
        with_crc.extend_from_slice(&packet);
        packet = with_crc;
    }
    match keyring {
        Some(keyring) => keyring.encrypt(&packet, &[], rng),
        None => packet,
    }
}

/// `[7] [n] [len u16]… [msg]…`; callers keep `messages.len() <= 255` and each part < 64 KiB.
pub fn encode_compound(messages: &[Vec<u8>]) -> Vec<u8> {
    debug_assert!(messages.len() <= usize::from(u8::MAX));
    let body: usize = messages.iter().map(Vec::len).sum();
    let mut out = Vec::with_capacity(2 + 2 * messages.len() + body);
    out.push(MessageType::Compound as u8);
    out.push(messages.len() as u8);
    for message in messages {
        debug_assert!(message.len() <= usize::from(u16::MAX));
        out.extend_from_slice(&(message.len() as u16).to_be_bytes());
    }
    for message in messages {
        out.extend_from_slice(message);
    }
    out
}

/// `[9]` + `{Algo: 0, Buf: LZW(message)}`, keys in that order, `Buf` with a str-family header.
fn compress_wrapper(message: &[u8]) -> Vec<u8> {
    let compressed = lzw::compress(message);
    let mut out = Vec::with_capacity(compressed.len() + 16);
    out.push(MessageType::Compress as u8);
    out.extend_from_slice(b"\x82\xa4Algo\x00\xa3Buf");
    let len = compressed.len();
    if len < 32 {
        out.push(0xa0 | len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.push(0xda);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
    out.extend_from_slice(&compressed);
    out
}

/// Decodes a compress wrapper body (after its type byte) and decompresses it into at most
/// `limit` bytes. Bytes after the map are ignored.
fn decompress_wrapper(body: &[u8], limit: usize) -> Result<Vec<u8>, DecodeError> {
    let mut cursor = Cursor::new(body, usize::MAX);
    let (algo, buf) = read_compress(&mut cursor).map_err(|error| error.body("compress"))?;
    if algo != LZW_ALGO {
        return Err(DecodeError::UnknownCompression(algo));
    }
    lzw::decompress(buf, limit)
}

fn read_compress<'a>(cursor: &mut Cursor<'a>) -> Result<(u64, &'a [u8]), Mp> {
    let mut algo = 0;
    let mut buf: &[u8] = &[];
    for _ in 0..cursor.map_len()? {
        match cursor.key()? {
            b"Algo" => {
                algo = u64::try_from(cursor.int()?).map_err(|_| Mp::Bad("negative Algo"))?;
            }
            b"Buf" => buf = cursor.bytes()?,
            _ => cursor.skip_value()?,
        }
    }
    Ok((algo, buf))
}

/// How many bytes a stream message starting at `buf[0]` occupies: `Ok(None)` while more bytes
/// are needed (a returned length never exceeds `buf.len()`). Needs no key: an encrypted frame
/// carries its length.
///
/// Plaintext messages are measured by their msgpack structure (push/pull: header, `Nodes`
/// values, `UserStateLen` bytes; user: header, `UserMsgLen` bytes; ping, ack, err and compress:
/// one value). Each call starts from the beginning, so callers should call again only after a
/// sizeable read.
pub fn stream_frame_len(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    if kind == MessageType::Encrypt as u8 {
        let Some(header) = buf.get(..STREAM_FRAME_HEADER) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if len > MAX_STREAM_BYTES {
            return Err(DecodeError::TooLarge {
                len,
                limit: MAX_STREAM_BYTES,
            });
        }
        let total = STREAM_FRAME_HEADER + len;
        return Ok((buf.len() >= total).then_some(total));
    }
    let mut cursor = Cursor::new(buf, MAX_STREAM_BYTES);
    cursor.pos = 1;
    let measured = match MessageType::from_byte(kind) {
        Some(MessageType::Ping | MessageType::Ack | MessageType::Err | MessageType::Compress) => {
            cursor.skip_value()
        }
        Some(MessageType::PushPull) => measure_push_pull(&mut cursor),
        Some(MessageType::User) => measure_user(&mut cursor),
        _ => return Err(DecodeError::InvalidStreamType(kind)),
    };
    match measured {
        Ok(()) => Ok(Some(cursor.pos)),
        Err(Mp::Short) => Ok(None),
        Err(error) => Err(error.body("stream message")),
    }
}

fn measure_push_pull(cursor: &mut Cursor<'_>) -> Result<(), Mp> {
    let (mut nodes, mut user_state_len) = (0i128, 0i128);
    for _ in 0..cursor.map_len()? {
        match cursor.key()? {
            b"Nodes" => nodes = cursor.int()?,
            b"UserStateLen" => user_state_len = cursor.int()?,
            _ => cursor.skip_value()?,
        }
    }
    let nodes = u64::try_from(nodes).map_err(|_| Mp::Bad("negative Nodes"))?;
    let user_state_len =
        u64::try_from(user_state_len).map_err(|_| Mp::Bad("negative UserStateLen"))?;
    cursor.skip_values(nodes)?;
    cursor.skip(user_state_len)
}

fn measure_user(cursor: &mut Cursor<'_>) -> Result<(), Mp> {
    let mut len = 0i128;
    for _ in 0..cursor.map_len()? {
        match cursor.key()? {
            b"UserMsgLen" => len = cursor.int()?,
            _ => cursor.skip_value()?,
        }
    }
    // A length of zero or less carries no bytes.
    cursor.skip(u64::try_from(len).unwrap_or(0))
}

/// Opens a complete stream message: decrypts the `[10]` frame (AAD = its 5 header bytes),
/// then unwraps a compress layer; returns the plain message starting with its type byte.
///
/// A keyring requires the frame, and the frame requires a keyring. Only stream types (ping,
/// ack, push/pull, user, err) come out; anything else is `InvalidStreamType`. Bytes after the
/// frame or after the compress map are ignored.
pub fn unpack_stream(bytes: &[u8], keyring: Option<&Keyring>) -> Result<Vec<u8>, DecodeError> {
    let &kind = bytes.first().ok_or(DecodeError::Empty)?;
    let decrypted;
    let mut plain = bytes;
    if kind == MessageType::Encrypt as u8 {
        let keyring = keyring.ok_or(DecodeError::EncryptionNotConfigured)?;
        let len = match stream_frame_len(bytes)? {
            Some(len) if len <= bytes.len() => len,
            _ => {
                return Err(DecodeError::Body {
                    what: "encrypted stream",
                    reason: format!("frame cut short at {} bytes", bytes.len()),
                });
            }
        };
        let (header, blob) = bytes[..len].split_at(STREAM_FRAME_HEADER);
        decrypted = keyring.decrypt(blob, header)?;
        plain = &decrypted;
    } else if keyring.is_some() {
        return Err(DecodeError::NotEncrypted);
    }
    let &kind = plain.first().ok_or(DecodeError::Empty)?;
    let message = if kind == MessageType::Compress as u8 {
        decompress_wrapper(&plain[1..], MAX_STREAM_BYTES)?
    } else {
        plain.to_vec()
    };
    let &kind = message.first().ok_or(DecodeError::Empty)?;
    match MessageType::from_byte(kind) {
        Some(
            MessageType::Ping
            | MessageType::Ack
            | MessageType::PushPull
            | MessageType::User
            | MessageType::Err,
        ) => Ok(message),
        _ => Err(DecodeError::InvalidStreamType(kind)),
    }
}

/// Prepares a stream message: always compressed when `compress`, then encrypted in a
/// `[10] [len u32]` frame when there is a keyring.
pub fn pack_stream(
    message: &[u8],
    compress: bool,
    keyring: Option<&Keyring>,
    rng: &mut dyn RngCore,
) -> Vec<u8> {
    let plain = if compress {
        compress_wrapper(message)
    } else {
        message.to_vec()
    };
    let Some(keyring) = keyring else {
        return plain;
    };
    let blob_len = plain.len() + super::keyring::ENCRYPTION_OVERHEAD;
    let mut header = [0u8; STREAM_FRAME_HEADER];
    header[0] = MessageType::Encrypt as u8;
    header[1..].copy_from_slice(&(blob_len as u32).to_be_bytes());
    let blob = keyring.encrypt(&plain, &header, rng);
    debug_assert_eq!(blob.len(), blob_len);
    let mut frame = Vec::with_capacity(STREAM_FRAME_HEADER + blob.len());
    frame.extend_from_slice(&header);
    frame.extend_from_slice(&blob);
    frame
}

/// Why the cursor stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mp {
    /// More bytes are needed.
    Short,
    /// The message would exceed the cursor's limit.
    TooLarge(u64),
    /// Not acceptable msgpack here.
    Bad(&'static str),
}

impl Mp {
    fn body(self, what: &'static str) -> DecodeError {
        match self {
            Mp::Short => DecodeError::Body {
                what,
                reason: "unexpected end of data".to_owned(),
            },
            Mp::TooLarge(len) => DecodeError::TooLarge {
                len: usize::try_from(len).unwrap_or(usize::MAX),
                limit: MAX_STREAM_BYTES,
            },
            Mp::Bad(reason) => DecodeError::Body {
                what,
                reason: reason.to_owned(),
            },
        }
    }
}

/// Reads just enough msgpack to find keys, integers, byte strings and value boundaries.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// A message longer than this is refused as soon as its declared sizes show it.
    limit: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8], limit: usize) -> Cursor<'a> {
        Cursor { buf, pos: 0, limit }
    }

    /// Checks that `n` more bytes fit the limit and are present.
    fn ensure(&self, n: u64) -> Result<usize, Mp> {
        let end = (self.pos as u64).saturating_add(n);
        if end > self.limit as u64 {
            return Err(Mp::TooLarge(end));
        }
        if end > self.buf.len() as u64 {
            return Err(Mp::Short);
        }
        Ok(end as usize)
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], Mp> {
        let end = self.ensure(n)?;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn skip(&mut self, n: u64) -> Result<(), Mp> {
        self.take(n).map(|_| ())
    }

    fn u8(&mut self) -> Result<u8, Mp> {
        Ok(self.take(1)?[0])
    }

    fn be(&mut self, n: u64) -> Result<u64, Mp> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, &b| acc << 8 | u64::from(b)))
    }

    /// Skips one value of any type.
    fn skip_value(&mut self) -> Result<(), Mp> {
        self.skip_values(1)
    }

    /// Skips `count` consecutive values, iteratively (nesting costs no stack).
    fn skip_values(&mut self, count: u64) -> Result<(), Mp> {
        let mut pending = count;
        while pending > 0 {
            // Every value takes at least one byte.
            let end = (self.pos as u64).saturating_add(pending);
            if end > self.limit as u64 {
                return Err(Mp::TooLarge(end));
            }
            pending -= 1;
            let marker = self.u8()?;
            let children = match marker {
                0x00..=0x7f | 0xc0 | 0xc2 | 0xc3 | 0xe0..=0xff => 0,
                0x80..=0x8f => 2 * u64::from(marker & 0x0f),
                0x90..=0x9f => u64::from(marker & 0x0f),
                0xa0..=0xbf => {
                    self.skip(u64::from(marker & 0x1f))?;
                    0
                }
                0xc1 => return Err(Mp::Bad("reserved msgpack marker 0xc1")),
                0xc4 | 0xd9 => {
                    let n = self.be(1)?;
                    self.skip(n)?;
                    0
                }
                0xc5 | 0xda => {
                    let n = self.be(2)?;
                    self.skip(n)?;
                    0
                }
                0xc6 | 0xdb => {
                    let n = self.be(4)?;
                    self.skip(n)?;
                    0
                }
                0xc7 => {
                    let n = self.be(1)?;
                    self.skip(1 + n)?;
                    0
                }
                0xc8 => {
                    let n = self.be(2)?;
                    self.skip(1 + n)?;
                    0
                }
                0xc9 => {
                    let n = self.be(4)?;
                    self.skip(1 + n)?;
                    0
                }
                0xcc | 0xd0 => self.skip(1).map(|()| 0)?,
                0xcd | 0xd1 => self.skip(2).map(|()| 0)?,
                0xca | 0xce | 0xd2 => self.skip(4).map(|()| 0)?,
                0xcb | 0xcf | 0xd3 => self.skip(8).map(|()| 0)?,
                0xd4 => self.skip(2).map(|()| 0)?,
                0xd5 => self.skip(3).map(|()| 0)?,
                0xd6 => self.skip(5).map(|()| 0)?,
                0xd7 => self.skip(9).map(|()| 0)?,
                0xd8 => self.skip(17).map(|()| 0)?,
                0xdc => self.be(2)?,
                0xdd => self.be(4)?,
                0xde => 2 * self.be(2)?,
                0xdf => 2 * self.be(4)?,
            };
            pending += children;
        }
        Ok(())
    }

    /// A map header (nil counts as an empty map).
    fn map_len(&mut self) -> Result<u64, Mp> {
        match self.u8()? {
            marker @ 0x80..=0x8f => Ok(u64::from(marker & 0x0f)),
            0xde => self.be(2),
            0xdf => self.be(4),
            0xc0 => Ok(0),
            _ => Err(Mp::Bad("expected a map")),
        }
    }

    /// A map key: a string of any str-family width.
    fn key(&mut self) -> Result<&'a [u8], Mp> {
        let len = match self.u8()? {
            marker @ 0xa0..=0xbf => u64::from(marker & 0x1f),
            0xd9 => self.be(1)?,
            0xda => self.be(2)?,
            0xdb => self.be(4)?,
            _ => return Err(Mp::Bad("map key is not a string")),
        };
        self.take(len)
    }

    /// A byte string: str or bin family; nil is empty.
    fn bytes(&mut self) -> Result<&'a [u8], Mp> {
        let len = match self.u8()? {
            marker @ 0xa0..=0xbf => u64::from(marker & 0x1f),
            0xc4 | 0xd9 => self.be(1)?,
            0xc5 | 0xda => self.be(2)?,
            0xc6 | 0xdb => self.be(4)?,
            0xc0 => 0,
            _ => return Err(Mp::Bad("expected a byte string")),
        };
        self.take(len)
    }

    /// An integer in any width or signedness; nil is zero.
    fn int(&mut self) -> Result<i128, Mp> {
        let marker = self.u8()?;
        Ok(match marker {
            0x00..=0x7f => i128::from(marker),
            0xe0..=0xff => i128::from(marker as i8),
            0xc0 => 0,
            0xcc => i128::from(self.be(1)?),
            0xcd => i128::from(self.be(2)?),
            0xce => i128::from(self.be(4)?),
            0xcf => i128::from(self.be(8)?),
            0xd0 => i128::from(self.be(1)? as u8 as i8),
            0xd1 => i128::from(self.be(2)? as u16 as i16),
            0xd2 => i128::from(self.be(4)? as u32 as i32),
            0xd3 => i128::from(self.be(8)? as i64),
            _ => return Err(Mp::Bad("expected an integer")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msgpack::hex;
    use proptest::prelude::*;
    use rand::{SeedableRng, rngs::StdRng};

    fn rng() -> StdRng {
        StdRng::seed_from_u64(42)
    }

    /// The key of the captured encrypted cluster (reference 7.1): bytes 0x00..0x1f.
    fn captured_keyring() -> Keyring {
        Keyring::new(vec![(0u8..32).collect()]).unwrap()
    }

    const VECTOR_7_2: &str = "
        0c457c59870702004c00430486a441646472a47f00000aab496e6361726e6174696f6e01a44d657461b3ff82a4726f6c
        65a3776562a26463a465617374a44e6f6465a161a4506f7274cd1f0aa356736ea60105020205050486a441646472a47f
        00000bab496e6361726e6174696f6e01a44d657461aaff81a4726f6c65a26462a44e6f6465a162a4506f7274cd1f0aa3
        56736ea6010502020505";

    const VECTOR_7_11: &str = "
        0112d46446514f7046431a94fb9ca26a978ce90d7722b9789fd50c81906477f751e8fdec2c26738110e9a6c1a66e6b4f
        2a1f072bd0db689f2d14f9b33d68c9b731389eae50d3963ef6e186beeaeacf850685652ce7ded47c";

    const VECTOR_7_12: &str = "
        013fc4efcef22ff8e4407e266ee5d38fe5f4c643f3315e8f06d8e04f587913a36cd3c94d2a7869d76955bb12bd6361e7
        a0cdb9ae91bf17ef13ae49cf68135167ef5ecc68c9343690012888a9b9137645e9c9cb894a688ea8b1df76190f8720f8
        ab7a455f7f3ac655203cc0535bf4cd583aa2ccb22d458a6e576bb4a08175c52d37ce35b1fccf84dd99bd0c7fb7b60788
        0a3197af249757ff8e5ebec096fcb00884c6bfad3165";

    const VECTOR_7_13: &str = "
        0a000000f201891cad3c05c79ec9d3e7ddd49c920c0d23bb86d4c9f27ec2fae0af2cbf35a767f22d32e120f97df771ff
        f20c9189ea12eb4f7f99003fe16d681f401256b55a562d2ca9b5d8d53aa568a115b75fba5d62b460807d7508b69ffc0b
        4fcd4f3512448ffb2464bd735e7fa3371be724495979c7661db0c6f17e04c9bb0d4b922fc95f75fce2bf11899551ba26
        2b968de052863c38173ef6606ef75b21152da10b7fa48b28e563e181119c4e1c4ff528c8e0746f5258ec0dace51d4ef9
        485b17b43a4461a6fdb0b4b2d198b76d09bd0801581b1578b249f92a30794dcce56bbb20deee9f440e856829ce56b14f
        a33851b68e4659";

    /// Reference 7.14 with the 512 nils written out (689 bytes).
    fn vector_7_14() -> Vec<u8> {
        let mut bytes = hex(
            "0683a44a6f696ec3a54e6f64657301ac5573657253746174654c656ecd024987a441646472a47f00000bab496e636172
             6e6174696f6e01a44d657461aaff81a4726f6c65a26462a44e616d65a162a4506f7274cd1f0aa5537461746500a35673
             6ea60105020205050286aa4576656e744c54696d6501a64576656e7473dc0200",
        );
        bytes.extend_from_slice(&[0xc0; 512]);
        bytes.extend_from_slice(&hex(
            "a54c54696d6501ab4c6566744d656d6265727390aa51756572794c54696d6501ac5374617475734c54696d657381a16200",
        ));
        bytes
    }

    /// Reference 7.20: a push/pull with its keys in another order and no user state.
    const PYTHON_PUSH_PULL: &str = "
        0683a54e6f64657301ac5573657253746174654c656e00a44a6f696ec287a44e616d65a27079a441646472a47f000013
        a4506f7274cd1f0aa44d657461a2ff80ab496e6361726e6174696f6e01a5537461746500a356736ea6010502020505";

    /// Ping `{SeqNo: 7, Node: "h"}` (reference 7.20).
    const PING_H: &str = "0082a55365714e6f07a44e6f6465a168";

    fn options(compress: bool, crc: bool) -> PackOptions {
        PackOptions { compress, crc }
    }

    #[test]
    fn captured_gossip_packet_verifies_its_crc_and_splits_into_two_alives() {
        let packet = hex(VECTOR_7_2);
        assert_eq!(packet.len(), 154);
        let unpacked = unpack_packet(&packet, None).unwrap();
        assert_eq!(unpacked.truncated, 0);
        assert!(unpacked.errors.is_empty());
        let lens: Vec<usize> = unpacked.messages.iter().map(Vec::len).collect();
        assert_eq!(lens, vec![76, 67]);
        assert!(unpacked.messages.iter().all(|m| m[0] == 4));
        assert_eq!(&unpacked.messages[0][..7], &hex("0486a441646472")[..]);
        assert_eq!(unpacked.messages[1], packet[5 + 2 + 4 + 76..]);
    }

    #[test]
    fn captured_crcs_verify_and_a_flipped_bit_is_refused() {
        let vectors = [
            VECTOR_7_2,
            // 7.5 user event
            "0ca639cc5a080384a24343c3a54c54696d6501a44e616d65a66465706c6f79a75061796c6f6164a676312e322e33",
            // 7.6 query
            "0c953885ce08048ba441646472a47f00000aa746696c74657273c0a5466c61677301a24944ce183fe5dfa54c54696d65
             01a44e616d65a6757063617365a75061796c6f6164a568656c6c6fa4506f7274cd1f0aab52656c6179466163746f7200
             aa536f757263654e6f6465a161a754696d656f7574ce77359400",
            // 7.10 ping + suspect compound, then dead, then a graceful leave
            "0cd80b2f160702003b001d0085a44e6f6465a162a55365714e6f2daa536f7572636541646472a47f00000aaa536f7572
             63654e6f6465a161aa536f75726365506f7274cd1f0a0383a446726f6da161ab496e6361726e6174696f6e03a44e6f64
             65a162",
            "0cf1bcb0c00583a446726f6da161ab496e6361726e6174696f6e03a44e6f6465a162",
            "0c460832bd0583a446726f6da162ab496e6361726e6174696f6e02a44e6f6465a162",
        ];
        for vector in vectors {
            let packet = hex(vector);
            let unpacked = unpack_packet(&packet, None).unwrap();
            assert!(!unpacked.messages.is_empty());
            let mut flipped = packet.clone();
            *flipped.last_mut().unwrap() ^= 0x01;
            assert_eq!(unpack_packet(&flipped, None), Err(DecodeError::BadChecksum));
        }
        let compound = unpack_packet(&hex(vectors[3]), None).unwrap();
        let types: Vec<u8> = compound.messages.iter().map(|m| m[0]).collect();
        assert_eq!(types, vec![0, 3]);
        assert_eq!(compound.messages[0].len(), 0x3b);
        assert_eq!(compound.messages[1].len(), 0x1d);
    }

    #[test]
    fn captured_encrypted_ping_decrypts_to_the_documented_ping() {
        let unpacked = unpack_packet(&hex(VECTOR_7_11), Some(&captured_keyring())).unwrap();
        assert_eq!(
            unpacked.messages,
            vec![hex(
                "0085a44e6f6465a163a55365714e6f01aa536f7572636541646472a47f00000daa536f757263654e6f6465a164aa536f
                 75726365506f7274cd1f0a"
            )]
        );
    }

    #[test]
    fn captured_encrypted_compressed_packet_is_an_ack_and_a_join_intent() {
        let packet = hex(VECTOR_7_12);
        assert_eq!(packet.len(), 166);
        let keyring = captured_keyring();
        let plain = keyring.decrypt(&packet, &[]).unwrap();
        assert_eq!(plain.len(), 137);
        assert_eq!(&plain[..15], &hex("0982a4416c676f00a3427566da007a")[..]);
        let compound = decompress_wrapper(&plain[1..], MAX_PACKET_EXPANSION).unwrap();
        assert_eq!(compound.len(), 173);
        assert_eq!(&compound[..2], &[0x07, 0x02]);

        let unpacked = unpack_packet(&packet, Some(&keyring)).unwrap();
        let types: Vec<u8> = unpacked.messages.iter().map(|m| m[0]).collect();
        assert_eq!(types, vec![2, 8]);
        assert_eq!(
            unpacked.messages.iter().map(Vec::len).sum::<usize>(),
            173 - 2 - 4
        );
        // The join intent: user (8), Serf join (1), {LTime: 1, Node: "d"}.
        let join = &unpacked.messages[1];
        assert_eq!(&join[..2], &[0x08, 0x01]);
        assert!(join.ends_with(&hex("a44e6f6465a164")));
    }

    #[test]
    fn captured_encrypted_push_pull_stream_opens_with_its_header_as_aad() {
        let frame = hex(VECTOR_7_13);
        assert_eq!(frame.len(), 247);
        assert_eq!(&frame[..5], &hex("0a000000f2")[..]);
        assert_eq!(stream_frame_len(&frame).unwrap(), Some(247));
        let keyring = captured_keyring();
        // The AAD is the 5 header bytes: without it the blob does not open.
        assert_eq!(keyring.decrypt(&frame[5..], &[]), Err(DecodeError::Decrypt));
        let plain = keyring.decrypt(&frame[5..], &frame[..5]).unwrap();
        assert_eq!(plain.len(), 213);
        assert_eq!(&plain[..10], &hex("0982a4416c676f00a342")[..]);

        let message = unpack_stream(&frame, Some(&keyring)).unwrap();
        assert_eq!(message.len(), 681);
        assert_eq!(&message[..8], &hex("0683a44a6f696ec3")[..]);
        // Header {Join: true, Nodes: 1, UserStateLen: 585}: the plaintext frame is complete.
        assert_eq!(stream_frame_len(&message).unwrap(), Some(681));
        assert_eq!(message[681 - 585], 0x02);

        assert_eq!(
            unpack_stream(&frame, None),
            Err(DecodeError::EncryptionNotConfigured)
        );
        let other = Keyring::new(vec![vec![0x11; 16]]).unwrap();
        assert_eq!(
            unpack_stream(&frame, Some(&other)),
            Err(DecodeError::Decrypt)
        );
    }

    #[test]
    fn hand_built_packets_are_treated_as_the_real_agent_treats_them() {
        let ping = hex(PING_H);
        // Correct CRC: the ping.
        let good = [hex("0c61863f63"), ping.clone()].concat();
        assert_eq!(
            unpack_packet(&good, None).unwrap().messages,
            vec![ping.clone()]
        );
        // Wrong CRC: dropped.
        let bad = [hex("0c00000000"), ping.clone()].concat();
        assert_eq!(unpack_packet(&bad, None), Err(DecodeError::BadChecksum));
        // Compound of two pings: two messages.
        let ping9 = hex("0082a55365714e6f09a44e6f6465a168");
        let ping10 = hex("0082a55365714e6f0aa44e6f6465a0");
        let compound = [hex("07020010000f"), ping9.clone(), ping10.clone()].concat();
        let unpacked = unpack_packet(&compound, None).unwrap();
        assert_eq!(unpacked.messages, vec![ping9, ping10]);
        // A label header (later protocol versions): unknown type 244.
        let labelled = hex("f40361626300");
        assert_eq!(
            unpack_packet(&labelled, None),
            Err(DecodeError::UnknownType(244))
        );
        // A ping whose body is bad msgpack still passes this layer; the body decoder refuses it.
        assert_eq!(
            unpack_packet(&hex("00c1c1"), None).unwrap().messages,
            vec![hex("00c1c1")]
        );
        // An encrypted stream to a node without keys.
        let frame = [hex("0a00000010"), vec![0; 16]].concat();
        assert_eq!(stream_frame_len(&frame).unwrap(), Some(21));
        assert_eq!(
            unpack_stream(&frame, None),
            Err(DecodeError::EncryptionNotConfigured)
        );
        // Suspect over TCP.
        assert_eq!(
            stream_frame_len(&hex("0381a17801")),
            Err(DecodeError::InvalidStreamType(3))
        );
        assert_eq!(
            unpack_stream(&hex("0381a17801"), None),
            Err(DecodeError::InvalidStreamType(3))
        );
    }

    #[test]
    fn plaintext_is_refused_when_a_keyring_is_configured() {
        let keyring = captured_keyring();
        let ping = hex(PING_H);
        assert_eq!(
            unpack_packet(&ping, Some(&keyring)),
            Err(DecodeError::Decrypt)
        );
        assert_eq!(
            unpack_stream(&ping, Some(&keyring)),
            Err(DecodeError::NotEncrypted)
        );
    }

    #[test]
    fn compound_parts_cut_short_are_counted_and_earlier_parts_kept() {
        let parts = vec![hex(PING_H), vec![8, 1, 2, 3], vec![2, 0x80]];
        let mut compound = encode_compound(&parts);
        assert_eq!(&compound[..8], &[7, 3, 0, 16, 0, 4, 0, 2]);
        let full = unpack_packet(&compound, None).unwrap();
        assert_eq!(full.messages, parts);
        assert_eq!(full.truncated, 0);
        compound.truncate(compound.len() - 3);
        let cut = unpack_packet(&compound, None).unwrap();
        assert_eq!(cut.messages, vec![parts[0].clone()]);
        assert_eq!(cut.truncated, 2);
        // A length table cut short drops the whole packet.
        assert!(matches!(
            unpack_packet(&[7, 3, 0, 16, 0], None),
            Err(DecodeError::Truncated(_))
        ));
        assert!(matches!(
            unpack_packet(&[7], None),
            Err(DecodeError::Truncated(_))
        ));
        // Trailing bytes after the parts are ignored; an empty compound is fine.
        assert_eq!(
            unpack_packet(&[7, 0, 9, 9], None).unwrap(),
            Unpacked::default()
        );
    }

    #[test]
    fn a_bad_part_drops_only_itself() {
        let crc_inside = [hex("0c61863f63"), hex(PING_H)].concat();
        let compound = encode_compound(&[
            hex(PING_H),
            crc_inside,
            vec![],
            vec![0x06, 0x80],
            vec![0x07, 0x05],
            hex(PING_H),
        ]);
        let unpacked = unpack_packet(&compound, None).unwrap();
        assert_eq!(unpacked.messages, vec![hex(PING_H), hex(PING_H)]);
        assert_eq!(unpacked.errors.len(), 4);
        assert_eq!(unpacked.errors[0], DecodeError::UnknownType(12));
        assert_eq!(unpacked.errors[1], DecodeError::Empty);
        assert_eq!(unpacked.errors[2], DecodeError::UnknownType(6));
        assert!(matches!(unpacked.errors[3], DecodeError::Truncated(_)));
    }

    #[test]
    fn top_level_oddities_are_refused() {
        assert_eq!(unpack_packet(&[], None), Err(DecodeError::Empty));
        // Too short to carry a CRC: a message of type 12, which is not dispatchable.
        assert_eq!(
            unpack_packet(&[12, 0, 0], None),
            Err(DecodeError::UnknownType(12))
        );
        // A CRC over a CRC.
        let inner = [hex("0c61863f63"), hex(PING_H)].concat();
        let outer = pack_packet(&inner, options(false, true), None, &mut rng());
        assert_eq!(
            unpack_packet(&outer, None),
            Err(DecodeError::UnknownType(12))
        );
        for kind in [6u8, 10, 13, 14, 255] {
            assert_eq!(
                unpack_packet(&[kind, 0x80], None),
                Err(DecodeError::UnknownType(kind))
            );
        }
    }

    #[test]
    fn nesting_beyond_the_limit_is_refused() {
        let mut message = hex(PING_H);
        for _ in 0..MAX_NESTING {
            message = encode_compound(&[message]);
        }
        assert_eq!(
            unpack_packet(&message, None).unwrap().messages,
            vec![hex(PING_H)]
        );
        let deeper = encode_compound(&[message]);
        let unpacked = unpack_packet(&deeper, None).unwrap();
        assert!(unpacked.messages.is_empty());
        assert_eq!(unpacked.errors, vec![DecodeError::TooDeep]);
        // Compress layers count too.
        let mut message = hex(PING_H);
        for _ in 0..=MAX_NESTING {
            message = compress_wrapper(&message);
        }
        assert_eq!(unpack_packet(&message, None), Err(DecodeError::TooDeep));
    }

    #[test]
    fn compress_wrapper_has_algo_then_buf_with_a_str_header() {
        let short = compress_wrapper(b"\x08a");
        assert_eq!(&short[..12], b"\x09\x82\xa4Algo\x00\xa3Buf");
        assert_eq!(short[12] & 0xe0, 0xa0);
        assert_eq!(usize::from(short[12] & 0x1f), short.len() - 13);

        let long_message: Vec<u8> = (0..=255u8).cycle().take(2000).collect();
        let long = compress_wrapper(&long_message);
        assert_eq!(long[12], 0xda);
        let len = usize::from(u16::from_be_bytes([long[13], long[14]]));
        assert_eq!(len, long.len() - 15);
        assert_eq!(
            decompress_wrapper(&long[1..], 1 << 20).unwrap(),
            long_message
        );

        let huge_message: Vec<u8> = {
            let mut rng = rng();
            (0..100_000)
                .map(|_| rand::RngCore::next_u32(&mut rng) as u8)
                .collect()
        };
        let huge = compress_wrapper(&huge_message);
        assert_eq!(huge[12], 0xdb);
        assert_eq!(
            decompress_wrapper(&huge[1..], 1 << 20).unwrap(),
            huge_message
        );
    }

    #[test]
    fn compress_wrapper_is_read_in_any_key_order_with_str_or_bin() {
        let lzw = lzw::compress(&hex(PING_H));
        let len = lzw.len() as u8;
        let reordered = [
            b"\x09\x83\xa3Buf\xc4".to_vec(),
            vec![len],
            lzw.clone(),
            b"\xa5Extra\x92\x01\xa1x\xa4Algo\xcc\x00".to_vec(),
        ]
        .concat();
        assert_eq!(
            unpack_packet(&reordered, None).unwrap().messages,
            vec![hex(PING_H)]
        );
        let str8 = [
            b"\x09\x82\xa4Algo\x00\xa3Buf\xd9".to_vec(),
            vec![len],
            lzw.clone(),
        ]
        .concat();
        assert_eq!(
            unpack_packet(&str8, None).unwrap().messages,
            vec![hex(PING_H)]
        );
        let lzw_algo_1 = [
            b"\x09\x82\xa4Algo\x01\xa3Buf\xc4".to_vec(),
            vec![len],
            lzw.clone(),
        ]
        .concat();
        assert_eq!(
            unpack_packet(&lzw_algo_1, None),
            Err(DecodeError::UnknownCompression(1))
        );
        let not_a_map = b"\x09\x92\x00\xa0".to_vec();
        assert!(matches!(
            unpack_packet(&not_a_map, None),
            Err(DecodeError::Body {
                what: "compress",
                ..
            })
        ));
        let cut = [
            b"\x09\x82\xa4Algo\x00\xa3Buf\xc4".to_vec(),
            vec![len],
            lzw[..3].to_vec(),
        ]
        .concat();
        assert!(matches!(
            unpack_packet(&cut, None),
            Err(DecodeError::Body {
                what: "compress",
                ..
            })
        ));
    }

    #[test]
    fn a_compression_bomb_is_refused() {
        let bomb = compress_wrapper(&vec![0u8; MAX_PACKET_EXPANSION + 1]);
        assert!(bomb.len() < 20_000);
        assert!(matches!(
            unpack_packet(&bomb, None),
            Err(DecodeError::TooLarge { .. })
        ));
        // The budget is shared by all compress layers of a packet.
        let half = compress_wrapper(&[vec![8u8], vec![0; MAX_PACKET_EXPANSION / 2]].concat());
        let twice = encode_compound(&[half.clone(), half.clone(), half]);
        let unpacked = unpack_packet(&twice, None).unwrap();
        assert_eq!(unpacked.messages.len(), 1);
        assert!(matches!(
            unpacked.errors[..],
            [DecodeError::TooLarge { .. }, DecodeError::TooLarge { .. }]
        ));
    }

    #[test]
    fn packets_round_trip_with_every_option() {
        let keyring = Keyring::new(vec![vec![3; 32], vec![4; 16]]).unwrap();
        let mut second_primary = keyring.clone();
        second_primary.use_key(&[4; 16]).unwrap();
        let parts = vec![
            hex(PING_H),
            [
                vec![8u8],
                b"a user message that repeats, repeats, repeats, repeats".to_vec(),
            ]
            .concat(),
        ];
        let messages = [hex(PING_H), encode_compound(&parts)];
        for message in &messages {
            for compress in [false, true] {
                for crc in [false, true] {
                    for (sender, receiver) in [
                        (None, None),
                        (Some(&keyring), Some(&keyring)),
                        // Sent with the receiver's second key.
                        (Some(&second_primary), Some(&keyring)),
                    ] {
                        let packet =
                            pack_packet(message, options(compress, crc), sender, &mut rng());
                        let unpacked = unpack_packet(&packet, receiver).unwrap();
                        let expected = if message[0] == 7 {
                            parts.clone()
                        } else {
                            vec![message.clone()]
                        };
                        assert_eq!(unpacked.messages, expected, "{compress} {crc}");
                        assert_eq!(unpacked.truncated, 0);
                    }
                }
            }
        }
    }

    #[test]
    fn packets_are_compressed_only_when_smaller() {
        let ping = hex(PING_H);
        assert_eq!(
            pack_packet(&ping, options(true, false), None, &mut rng()),
            ping
        );
        let repetitive = [vec![8u8], vec![b'x'; 500]].concat();
        let packed = pack_packet(&repetitive, options(true, false), None, &mut rng());
        assert_eq!(packed[0], 9);
        assert!(packed.len() < repetitive.len());
        let with_crc = pack_packet(&repetitive, options(true, true), None, &mut rng());
        assert_eq!(with_crc[0], 12);
        assert_eq!(&with_crc[5..], &packed[..]);
        assert_eq!(
            u32::from_be_bytes([with_crc[1], with_crc[2], with_crc[3], with_crc[4]]),
            crc32fast::hash(&packed)
        );
        let keyring = captured_keyring();
        let encrypted = pack_packet(&repetitive, options(true, true), Some(&keyring), &mut rng());
        assert_eq!(encrypted.len(), with_crc.len() + 29);
        assert_eq!(keyring.decrypt(&encrypted, &[]).unwrap(), with_crc);
    }

    #[test]
    fn version_zero_packets_decrypt() {
        let keyring = captured_keyring();
        let blob = keyring.encrypt_v0(&hex(PING_H), &[], &mut rng());
        assert_eq!(blob[0], 0);
        assert_eq!(
            unpack_packet(&blob, Some(&keyring)).unwrap().messages,
            vec![hex(PING_H)]
        );
    }

    #[test]
    fn streams_round_trip_with_every_option() {
        let keyring = Keyring::new(vec![vec![3; 24], vec![4; 16]]).unwrap();
        let mut second_primary = keyring.clone();
        second_primary.use_key(&[4; 16]).unwrap();
        let messages = [
            hex(PING_H),
            vector_7_14(),
            hex(PYTHON_PUSH_PULL),
            hex("0282a75061796c6f6164c0a55365714e6f63"),
            [hex("0881aa557365724d73674c656e05"), b"hello".to_vec()].concat(),
        ];
        for message in &messages {
            for compress in [false, true] {
                for (sender, receiver) in [
                    (None, None),
                    (Some(&keyring), Some(&keyring)),
                    (Some(&second_primary), Some(&keyring)),
                ] {
                    let frame = pack_stream(message, compress, sender, &mut rng());
                    if sender.is_some() {
                        assert_eq!(frame[0], 10);
                    } else if compress {
                        assert_eq!(frame[0], 9);
                    }
                    assert_eq!(stream_frame_len(&frame).unwrap(), Some(frame.len()));
                    // Trailing bytes belong to whatever comes next.
                    let mut longer = frame.clone();
                    longer.extend_from_slice(&[0xc1, 0xc1]);
                    assert_eq!(stream_frame_len(&longer).unwrap(), Some(frame.len()));
                    assert_eq!(&unpack_stream(&frame, receiver).unwrap(), message);
                }
            }
        }
    }

    #[test]
    fn every_strict_prefix_of_a_stream_message_is_incomplete() {
        let keyring = captured_keyring();
        let frames = [
            hex(VECTOR_7_13),
            vector_7_14(),
            hex(PYTHON_PUSH_PULL),
            hex(PING_H),
            hex("0282a75061796c6f6164c0a55365714e6f63"),
            [hex("0881aa557365724d73674c656e05"), b"hello".to_vec()].concat(),
            // A user message with a negative length carries nothing.
            hex("0881aa557365724d73674c656eff"),
            // errResp: "Remote state is encrypted and encryption is not configured".
            [
                hex("0d81a54572726f72da003a"),
                b"Remote state is encrypted and encryption is not configured".to_vec(),
            ]
            .concat(),
            pack_stream(&vector_7_14(), true, None, &mut rng()),
            pack_stream(&vector_7_14(), true, Some(&keyring), &mut rng()),
            // Every msgpack family inside an ack body.
            hex("0289a1610ca162cd0102a163cb3ff0000000000000a164c4026869a165dc00020102a166de0001a178c0
                 a167d40102a168c70201aabba169ca3f800000"),
        ];
        for frame in frames {
            assert_eq!(
                stream_frame_len(&frame).unwrap(),
                Some(frame.len()),
                "{frame:02x?}"
            );
            for end in 0..frame.len() {
                assert_eq!(
                    stream_frame_len(&frame[..end]).unwrap(),
                    None,
                    "prefix {end}"
                );
            }
        }
        assert_eq!(stream_frame_len(&vector_7_14()).unwrap(), Some(689));
    }

    #[test]
    fn stream_sizes_beyond_the_limit_are_refused_early() {
        let too_long = [
            vec![10u8],
            (MAX_STREAM_BYTES as u32 + 1).to_be_bytes().to_vec(),
        ]
        .concat();
        assert!(matches!(
            stream_frame_len(&too_long),
            Err(DecodeError::TooLarge { .. })
        ));
        let at_limit = [vec![10u8], (MAX_STREAM_BYTES as u32).to_be_bytes().to_vec()].concat();
        // At the limit: accepted, waiting for the rest.
        assert_eq!(stream_frame_len(&at_limit).unwrap(), None);
        // A push/pull declaring 1 GiB of user state, or a billion nodes.
        let user_state = hex("0682a54e6f64657300ac5573657253746174654c656ece40000000");
        assert!(matches!(
            stream_frame_len(&user_state),
            Err(DecodeError::TooLarge { .. })
        ));
        let nodes = hex("0682a54e6f646573ce40000000ac5573657253746174654c656e00");
        assert!(matches!(
            stream_frame_len(&nodes),
            Err(DecodeError::TooLarge { .. })
        ));
        // A ping body declaring a 4 GiB string.
        assert!(matches!(
            stream_frame_len(&hex("00dbffffffff")),
            Err(DecodeError::TooLarge { .. })
        ));
        // A negative node count is refused outright.
        assert!(matches!(
            stream_frame_len(&hex("0682a54e6f646573ffac5573657253746174654c656e00")),
            Err(DecodeError::Body { .. })
        ));
    }

    #[test]
    fn stream_oddities_are_refused() {
        assert_eq!(stream_frame_len(&[]).unwrap(), None);
        assert_eq!(unpack_stream(&[], None), Err(DecodeError::Empty));
        for kind in [1u8, 3, 4, 5, 7, 11, 12, 244] {
            assert_eq!(
                stream_frame_len(&[kind, 0x80]),
                Err(DecodeError::InvalidStreamType(kind))
            );
        }
        assert!(matches!(
            stream_frame_len(&hex("00c1")),
            Err(DecodeError::Body { .. })
        ));
        // A compressed stream hiding a type that streams do not carry.
        let hidden = pack_stream(&hex("0381a17801"), true, None, &mut rng());
        assert_eq!(
            unpack_stream(&hidden, None),
            Err(DecodeError::InvalidStreamType(3))
        );
        // An encrypted frame cut short.
        let keyring = captured_keyring();
        let frame = hex(VECTOR_7_13);
        assert!(matches!(
            unpack_stream(&frame[..100], Some(&keyring)),
            Err(DecodeError::Body { .. })
        ));
        // An encrypted frame whose plaintext is empty.
        let empty = pack_stream(&[], false, Some(&keyring), &mut rng());
        assert_eq!(
            unpack_stream(&empty, Some(&keyring)),
            Err(DecodeError::Empty)
        );
    }

    /// Byte strings made of pieces that real messages are made of, so the fuzzing reaches
    /// past the first byte more often than uniform noise does.
    fn framing_bytes() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..8),
            Just(vec![7, 2, 0, 3, 0, 2]),
            Just(b"\x09\x82\xa4Algo\x00\xa3Buf\xc4".to_vec()),
            Just(lzw::compress(b"\x00\x80")),
            Just(hex(PING_H)),
            Just(vec![0x0c, 0, 0, 0, 0]),
            Just(vec![0x0a, 0, 0, 0, 0x1d]),
            Just(b"\x83\xa4Join\xc3\xa5Nodes\x01\xacUserStateLen".to_vec()),
            Just(b"\x81\xaaUserMsgLen".to_vec()),
        ];
        proptest::collection::vec(piece, 0..8).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #[test]
        fn unpacking_arbitrary_packets_never_panics(
            bytes in prop_oneof![proptest::collection::vec(any::<u8>(), 0..300), framing_bytes()],
        ) {
            let keyring = captured_keyring();
            let _ = unpack_packet(&bytes, None);
            let _ = unpack_packet(&bytes, Some(&keyring));
            // The same bytes, validly encrypted, reach the inner layers with a keyring too.
            let sealed = keyring.encrypt(&bytes, &[], &mut rng());
            let _ = unpack_packet(&sealed, Some(&keyring));
        }

        #[test]
        fn arbitrary_streams_never_panic(
            bytes in prop_oneof![proptest::collection::vec(any::<u8>(), 0..300), framing_bytes()],
        ) {
            let keyring = captured_keyring();
            if let Ok(Some(len)) = stream_frame_len(&bytes) {
                prop_assert!(len <= bytes.len());
            }
            let _ = unpack_stream(&bytes, None);
            let _ = unpack_stream(&bytes, Some(&keyring));
            let sealed = pack_stream(&bytes, false, Some(&keyring), &mut rng());
            prop_assert_eq!(stream_frame_len(&sealed).unwrap(), Some(sealed.len()));
            let _ = unpack_stream(&sealed, Some(&keyring));
        }

        #[test]
        fn packed_packets_unpack_to_their_message(
            body in proptest::collection::vec(any::<u8>(), 0..2000),
            kind in prop::sample::select(vec![0u8, 1, 2, 3, 4, 5, 8, 11]),
            compress in any::<bool>(),
            crc in any::<bool>(),
            encrypt in any::<bool>(),
        ) {
            let keyring = captured_keyring();
            let keyring = encrypt.then_some(&keyring);
            let message = [vec![kind], body].concat();
            let packet = pack_packet(&message, options(compress, crc), keyring, &mut rng());
            let unpacked = unpack_packet(&packet, keyring).unwrap();
            prop_assert_eq!(unpacked.messages, vec![message]);
        }

        #[test]
        fn packed_user_streams_measure_and_unpack(
            payload in proptest::collection::vec(any::<u8>(), 0..3000),
            compress in any::<bool>(),
            encrypt in any::<bool>(),
        ) {
            let keyring = captured_keyring();
            let keyring = encrypt.then_some(&keyring);
            let mut message = b"\x08\x81\xaaUserMsgLen\xcd".to_vec();
            message.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            message.extend_from_slice(&payload);
            prop_assert_eq!(stream_frame_len(&message).unwrap(), Some(message.len()));
            let frame = pack_stream(&message, compress, keyring, &mut rng());
            prop_assert_eq!(stream_frame_len(&frame).unwrap(), Some(frame.len()));
            prop_assert_eq!(stream_frame_len(&frame[..frame.len() - 1]).unwrap(), None);
            prop_assert_eq!(unpack_stream(&frame, keyring).unwrap(), message);
        }
    }
}
