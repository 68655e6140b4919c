//! The extent of one msgpack value, found without decoding it and without allocating per
//! element: the one scanner behind the gossip codec (whole packets) and the RPC framing (a
//! stream read in pieces). It checks that the value is complete, nested at most `max_depth`
//! containers deep, at most `max_bytes` long, and free of the never-used marker `0xc1`, which
//! Go refuses. No input makes it panic.
#![forbid(unsafe_code)]

/// The extent of one msgpack element, not counting the elements it contains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Element {
    /// Marker, length fields and inline payload.
    pub bytes: usize,
    /// Elements that follow as its content (array items, map keys plus values).
    pub children: u64,
}

/// Classifies the element starting at `bytes[0]`: `None` if more bytes are needed to know its
/// size, `Err(marker)` for the invalid marker `0xc1`.
pub fn element_at(bytes: &[u8]) -> Option<Result<Element, u8>> {
    let marker = *bytes.first()?;
    let be = |len: usize| -> Option<u64> {
        let field = bytes.get(1..1 + len)?;
        Some(
            field
                .iter()
                .fold(0_u64, |acc, b| (acc << 8) | u64::from(*b)),
        )
    };
    let fixed = |bytes: usize| Some(Ok(Element { bytes, children: 0 }));
    let sized = |header: usize, len: u64| {
        Some(Ok(Element {
            bytes: header.saturating_add(usize::try_from(len).unwrap_or(usize::MAX)),
            children: 0,
        }))
    };
    let nested = |header: usize, children: u64| {
        Some(Ok(Element {
            bytes: header,
            children,
        }))
    };
    match marker {
        0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => fixed(1),
        0x80..=0x8f => nested(1, 2 * u64::from(marker & 0x0f)),
        0x90..=0x9f => nested(1, u64::from(marker & 0x0f)),
        0xa0..=0xbf => sized(1, u64::from(marker & 0x1f)),
        0xc1 => Some(Err(marker)),
        0xc4 | 0xd9 => sized(2, be(1)?),
        0xc5 | 0xda => sized(3, be(2)?),
        0xc6 | 0xdb => sized(5, be(4)?),
        0xc7 => sized(3, be(1)?),
        0xc8 => sized(4, be(2)?),
        0xc9 => sized(6, be(4)?),
        0xca => fixed(5),
        0xcb => fixed(9),
        0xcc | 0xd0 => fixed(2),
        0xcd | 0xd1 => fixed(3),
        0xce | 0xd2 => fixed(5),
        0xcf | 0xd3 => fixed(9),
        0xd4 => fixed(3),
        0xd5 => fixed(4),
        0xd6 => fixed(6),
        0xd7 => fixed(10),
        0xd8 => fixed(18),
        0xdc => nested(3, be(2)?),
        0xdd => nested(5, be(4)?),
        0xde => nested(3, 2 * be(2)?),
        0xdf => nested(5, 2 * be(4)?),
    }
}

/// Why a value was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanError {
    /// The marker `0xc1` at `offset`.
    InvalidMarker { marker: u8, offset: usize },
    /// The value is longer than `max` bytes.
    TooLarge { max: usize },
    /// Containers nest deeper than `max`.
    TooDeep { max: usize },
}

impl std::fmt::Display for ScanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InvalidMarker { marker, offset } => {
                write!(f, "invalid marker {marker:#04x} at byte {offset}")
            }
            Self::TooLarge { max } => write!(f, "value longer than {max} bytes"),
            Self::TooDeep { max } => write!(f, "nested deeper than {max}"),
        }
    }
}

impl std::error::Error for ScanError {}

/// How far a scan got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The value is complete and this many bytes long.
    Complete(usize),
    /// More bytes are needed; the value is fine as far as it goes, up to `checked`.
    Incomplete { checked: usize },
}

/// How far the value at the start of a buffer has been checked; survives partial reads, so
/// a growing buffer is checked once, not once per read.
#[derive(Debug, Clone)]
pub struct Scan {
    /// Offset of the next unchecked element.
    pos: usize,
    /// Elements still expected at each open nesting level, outermost first.
    pending: Vec<u64>,
}

impl Default for Scan {
    fn default() -> Self {
        Self::new()
    }
}

impl Scan {
    /// A scan of a value not yet seen.
    pub fn new() -> Self {
        Self {
            pos: 0,
            pending: vec![1],
        }
    }

    /// Continues checking the value at the start of `buf` (the same buffer as before, maybe
    /// longer).
    pub fn advance(
        &mut self,
        buf: &[u8],
        max_bytes: usize,
        max_depth: usize,
    ) -> Result<Progress, ScanError> {
        loop {
            while self.pending.last() == Some(&0) {
                self.pending.pop();
            }
            if self.pending.is_empty() {
                return Ok(Progress::Complete(self.pos));
            }
            let incomplete = Progress::Incomplete { checked: self.pos };
            let Some(element) = element_at(&buf[self.pos.min(buf.len())..]) else {
                return Ok(incomplete);
            };
            let element = element.map_err(|marker| ScanError::InvalidMarker {
                marker,
                offset: self.pos,
            })?;
            let end = self
                .pos
                .checked_add(element.bytes)
                .filter(|end| *end <= max_bytes)
                .ok_or(ScanError::TooLarge { max: max_bytes })?;
            if buf.len() < end {
                return Ok(incomplete);
            }
            self.pos = end;
            if let Some(remaining) = self.pending.last_mut() {
                *remaining -= 1;
            }
            if element.children > 0 {
                // Every child takes at least one byte.
                if element.children > (max_bytes - end) as u64 {
                    return Err(ScanError::TooLarge { max: max_bytes });
                }
                if self.pending.len() > max_depth {
                    return Err(ScanError::TooDeep { max: max_depth });
                }
                self.pending.push(element.children);
            }
        }
    }
}

/// The length of the first msgpack value in `bytes` (complete bytes, no size limit), or
/// `Incomplete` with how far it checked out.
pub fn value_len(bytes: &[u8], max_depth: usize) -> Result<Progress, ScanError> {
    Scan::new().advance(bytes, usize::MAX, max_depth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_measured_whole_or_refused() {
        // {"a": [1, nil, "xy"]} then a trailing byte.
        let value = [0x81, 0xa1, b'a', 0x93, 0x01, 0xc0, 0xa2, b'x', b'y', 0xff];
        assert_eq!(value_len(&value, 64), Ok(Progress::Complete(9)));
        assert_eq!(
            value_len(&value[..5], 64),
            Ok(Progress::Incomplete { checked: 5 })
        );
        assert_eq!(
            value_len(&[0x92, 0x01, 0xc1], 64),
            Err(ScanError::InvalidMarker {
                marker: 0xc1,
                offset: 2
            })
        );
        let deep = [vec![0x91; 65], vec![0x01]].concat();
        assert_eq!(value_len(&deep, 64), Err(ScanError::TooDeep { max: 64 }));
        assert_eq!(
            value_len(&deep[1..], 64),
            Ok(Progress::Complete(65)),
            "64 levels are fine"
        );
        assert_eq!(
            Scan::new().advance(&[0xdc, 0xff, 0xff], 100, 64),
            Err(ScanError::TooLarge { max: 100 })
        );
    }

    #[test]
    fn a_value_read_in_pieces_is_checked_once() {
        let value = [0x82, 0x01, 0x02, 0x03, 0xa3, b'a', b'b', b'c'];
        let mut scan = Scan::new();
        for end in 0..value.len() {
            assert!(matches!(
                scan.advance(&value[..end], 1024, 64),
                Ok(Progress::Incomplete { .. })
            ));
        }
        assert_eq!(
            scan.advance(&value, 1024, 64),
            Ok(Progress::Complete(value.len()))
        );
    }

    proptest::proptest! {
        /// Any bytes: an extent within the input, a refusal or a wish for more, never a panic.
        #[test]
        fn any_bytes_are_measured_without_panicking(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)
        ) {
            if let Ok(Progress::Complete(len)) = value_len(&bytes, 64) {
                proptest::prop_assert!(len <= bytes.len());
            }
        }
    }
}
