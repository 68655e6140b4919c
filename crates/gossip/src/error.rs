//! Why a packet or stream was refused. Decoding never changes any state: a refused packet is
//! dropped whole (or, for a compound, the parts after the bad one).

/// What was wrong with bytes from the network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Nothing to decode.
    #[error("empty message")]
    Empty,
    /// The first byte names no message memberlist 0.2.2 knows (or one not allowed here).
    #[error("msg type ({0}) not supported")]
    UnknownType(u8),
    /// A msgpack body did not decode as the named message.
    #[error("failed to decode {what}: {reason}")]
    Body {
        /// The message or field being decoded.
        what: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// A compound message's length table or a part was cut short.
    #[error("truncated compound message: {0}")]
    Truncated(String),
    /// The CRC did not match.
    #[error("invalid checksum")]
    BadChecksum,
    /// No key in the keyring opened the packet.
    #[error("No installed keys could decrypt the message")]
    Decrypt,
    /// Encryption is configured but the peer sent plaintext.
    #[error("Encryption is configured but remote state is not encrypted")]
    NotEncrypted,
    /// The peer sent ciphertext but this node has no keys.
    #[error("Remote state is encrypted and encryption is not configured")]
    EncryptionNotConfigured,
    /// The compress wrapper named an algorithm other than LZW.
    #[error("Cannot decompress unknown algorithm {0}")]
    UnknownCompression(u64),
    /// The LZW data was malformed.
    #[error("failed to decompress: {0}")]
    Decompress(String),
    /// Larger than this node accepts.
    #[error("message of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Bytes seen.
        len: usize,
        /// Bytes allowed.
        limit: usize,
    },
    /// Compound or compress layers nested deeper than any real agent produces.
    #[error("messages nested too deeply")]
    TooDeep,
    /// A stream message arrived where it is not allowed (e.g. suspect over TCP).
    #[error("Received invalid msgType ({0})")]
    InvalidStreamType(u8),
}
