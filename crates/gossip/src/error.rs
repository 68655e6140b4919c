//! Why a packet or stream was refused. Decoding never changes any state: a refused packet is
//! dropped whole (or, for a compound, the parts after the bad one).

use std::net::SocketAddr;

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

/// Why an outbound stream ([`crate::StreamRequest`]) brought no reply. The shell builds it from
/// its transport's errors; the core acts on the kind (a refused connection means nothing
/// listens on the peer's gossip port any more) and shows it worded as Go's net package words
/// it, because these texts reach `serf join`'s output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamError {
    /// The peer refused the connection: `dial tcp ADDR: connect: connection refused`.
    Refused(SocketAddr),
    /// The deadline passed during `stage` (`dial tcp ADDR: i/o timeout`), or, with no stage,
    /// the core's own deadline for the stream passed first (`stream timed out`).
    TimedOut(Option<(StreamStage, SocketAddr)>),
    /// Any other failure, already worded for display.
    Other(String),
}

/// The part of an outbound stream under way when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamStage {
    /// Connecting.
    Dial,
    /// Writing the request.
    Write,
    /// Reading the reply.
    Read,
}

impl StreamStage {
    /// Go's name for the operation (`dial`, `write`, `read`), as in `read tcp ADDR: ...`.
    pub fn go_op(self) -> &'static str {
        match self {
            Self::Dial => "dial",
            Self::Write => "write",
            Self::Read => "read",
        }
    }
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(to) => write!(f, "dial tcp {to}: connect: connection refused"),
            Self::TimedOut(Some((stage, to))) => {
                write!(f, "{} tcp {to}: i/o timeout", stage.go_op())
            }
            Self::TimedOut(None) => f.write_str("stream timed out"),
            Self::Other(text) => f.write_str(text),
        }
    }
}

impl std::error::Error for StreamError {}
