//! LZW in the gossip protocol's flavour (reference 2.8): LSB-first bit order, 8-bit literals,
//! codes of 9 to 12 bits, clear code 256, end code 257. The encoder starts with a clear code,
//! emits one whenever the table fills, and ends with the end code; the decoder insists on that
//! end code and stops at a size limit so a tiny packet cannot expand into gigabytes.

use weezl::{BitOrder, LzwStatus};

use super::error::DecodeError;

/// Literal width: one byte per literal code.
const LITERAL_BITS: u8 = 8;

/// Output is produced in chunks of this many bytes while checking the limit.
const CHUNK_BYTES: usize = 32 * 1024;

/// Compresses `data` (any length, including empty).
pub fn compress(data: &[u8]) -> Vec<u8> {
    weezl::encode::Encoder::new(BitOrder::Lsb, LITERAL_BITS)
        .encode(data)
        .expect("8-bit literals give every byte a code")
}

/// Decompresses `data`, which must end with the end code, into at most `limit` bytes.
/// Bytes after the end code are ignored.
pub fn decompress(data: &[u8], limit: usize) -> Result<Vec<u8>, DecodeError> {
    let mut decoder = weezl::decode::Decoder::new(BitOrder::Lsb, LITERAL_BITS);
    let mut output = Vec::new();
    let mut input = data;
    let mut chunk = vec![0u8; CHUNK_BYTES];
    loop {
        let result = decoder.decode_bytes(input, &mut chunk);
        input = &input[result.consumed_in..];
        if output.len() + result.consumed_out > limit {
            return Err(DecodeError::TooLarge {
                len: output.len() + result.consumed_out,
                limit,
            });
        }
        output.extend_from_slice(&chunk[..result.consumed_out]);
        match result.status {
            Ok(LzwStatus::Done) => return Ok(output),
            Ok(LzwStatus::Ok) if result.consumed_in > 0 || result.consumed_out > 0 => {}
            // Out of input before the end code (or stuck): the stream was cut short.
            Ok(LzwStatus::Ok | LzwStatus::NoProgress) => {
                return Err(DecodeError::Decompress("unexpected end of data".to_owned()));
            }
            Err(error) => return Err(DecodeError::Decompress(error.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    /// A line-by-line model of the reference LZW reader (LSB, 8-bit literals), used as an
    /// oracle: it is what the other side runs on what we send.
    fn reference_decode(data: &[u8]) -> Result<Vec<u8>, String> {
        const CLEAR: u32 = 256;
        const EOF: u32 = 257;
        const MAX_WIDTH: u32 = 12;
        const INVALID: u32 = u32::MAX;
        let mut suffix = vec![0u8; 1 << MAX_WIDTH];
        let mut prefix = vec![0u32; 1 << MAX_WIDTH];
        let (mut bits, mut n_bits, mut pos) = (0u32, 0u32, 0usize);
        let mut width = 9u32;
        let mut hi = EOF;
        let mut overflow = 1u32 << width;
        let mut last = INVALID;
        let mut out = Vec::new();
        loop {
            while n_bits < width {
                let Some(&byte) = data.get(pos) else {
                    return Err("unexpected EOF".to_owned());
                };
                pos += 1;
                bits |= u32::from(byte) << n_bits;
                n_bits += 8;
            }
            let code = bits & ((1 << width) - 1);
            bits >>= width;
            n_bits -= width;
            if code < CLEAR {
                out.push(code as u8);
                if last != INVALID {
                    suffix[hi as usize] = code as u8;
                    prefix[hi as usize] = last;
                }
            } else if code == CLEAR {
                width = 9;
                hi = EOF;
                overflow = 1 << width;
                last = INVALID;
                continue;
            } else if code == EOF {
                return Ok(out);
            } else if code <= hi {
                let mut expansion = Vec::new();
                let mut c = code;
                if code == hi && last != INVALID {
                    let mut head = last;
                    while head >= CLEAR {
                        head = prefix[head as usize];
                    }
                    expansion.push(head as u8);
                    c = last;
                }
                while c >= CLEAR {
                    expansion.push(suffix[c as usize]);
                    c = prefix[c as usize];
                }
                expansion.push(c as u8);
                expansion.reverse();
                out.extend_from_slice(&expansion);
                if last != INVALID {
                    suffix[hi as usize] = c as u8;
                    prefix[hi as usize] = last;
                }
            } else {
                return Err("invalid code".to_owned());
            }
            last = code;
            hi += 1;
            if hi >= overflow {
                if width == MAX_WIDTH {
                    last = INVALID;
                    hi -= 1;
                } else {
                    width += 1;
                    overflow = 1 << width;
                }
            }
        }
    }

    /// A model of the reference LZW writer: clear code first, clear when `hi` reaches 4095,
    /// end code last.
    fn reference_encode(data: &[u8]) -> Vec<u8> {
        use std::collections::HashMap;
        struct Writer {
            out: Vec<u8>,
            bits: u32,
            n_bits: u32,
            width: u32,
            hi: u32,
            overflow: u32,
            table: HashMap<u32, u32>,
        }
        impl Writer {
            fn write(&mut self, code: u32) {
                self.bits |= code << self.n_bits;
                self.n_bits += self.width;
                while self.n_bits >= 8 {
                    self.out.push(self.bits as u8);
                    self.bits >>= 8;
                    self.n_bits -= 8;
                }
            }
            /// Returns false when the table was reset.
            fn inc_hi(&mut self) -> bool {
                self.hi += 1;
                if self.hi == self.overflow {
                    self.width += 1;
                    self.overflow <<= 1;
                }
                if self.hi == 4095 {
                    self.write(256);
                    self.width = 9;
                    self.hi = 257;
                    self.overflow = 512;
                    self.table.clear();
                    return false;
                }
                true
            }
        }
        let mut w = Writer {
            out: Vec::new(),
            bits: 0,
            n_bits: 0,
            width: 9,
            hi: 257,
            overflow: 512,
            table: HashMap::new(),
        };
        w.write(256);
        if let Some((&first, rest)) = data.split_first() {
            let mut code = u32::from(first);
            for &byte in rest {
                let key = code << 8 | u32::from(byte);
                if let Some(&next) = w.table.get(&key) {
                    code = next;
                    continue;
                }
                w.write(code);
                code = u32::from(byte);
                if w.inc_hi() {
                    let hi = w.hi;
                    w.table.insert(key, hi);
                }
            }
            w.write(code);
            w.inc_hi();
        }
        w.write(257);
        if w.n_bits > 0 {
            w.out.push(w.bits as u8);
        }
        w.out
    }

    fn random_bytes(seed: u64, len: usize, alphabet: u8) -> Vec<u8> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..len).map(|_| rng.random_range(0..=alphabet)).collect()
    }

    #[test]
    fn empty_input_is_a_clear_code_then_the_end_code() {
        let encoded = compress(&[]);
        // 256 then 257, 9 bits each, LSB first.
        assert_eq!(encoded, vec![0x00, 0x03, 0x02]);
        assert_eq!(encoded, reference_encode(&[]));
        assert_eq!(decompress(&encoded, 10).unwrap(), Vec::<u8>::new());
        assert_eq!(reference_decode(&encoded).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn encoded_data_starts_with_a_clear_code() {
        let encoded = compress(b"\x07hello");
        // The first 9-bit code is 256, the second the literal 7.
        let first = u32::from(encoded[0]) | (u32::from(encoded[1]) & 1) << 8;
        assert_eq!(first, 256);
        assert_eq!(
            u32::from(encoded[1]) >> 1 | (u32::from(encoded[2]) & 3) << 7,
            7
        );
    }

    #[test]
    fn round_trips_through_both_decoders_including_table_resets() {
        // Random bytes over the full alphabet create a new code almost every byte, so 20 000
        // bytes fill the 4096-entry table several times; a small alphabet gives long matches.
        let cases = [
            b"hello hello hello hello".to_vec(),
            vec![0u8; 100_000],
            random_bytes(1, 20_000, 255),
            random_bytes(2, 50_000, 3),
            random_bytes(3, 9_000, 15),
            (0..=255u8).cycle().take(70_000).collect(),
        ];
        for data in cases {
            let encoded = compress(&data);
            assert_eq!(decompress(&encoded, data.len()).unwrap(), data);
            assert_eq!(reference_decode(&encoded).unwrap(), data);
            let theirs = reference_encode(&data);
            assert_eq!(decompress(&theirs, data.len()).unwrap(), data);
        }
    }

    #[test]
    fn missing_end_code_is_refused() {
        let mut encoded = reference_encode(b"some text some text some text");
        encoded.truncate(encoded.len() - 2);
        assert!(matches!(
            decompress(&encoded, 1000),
            Err(DecodeError::Decompress(_))
        ));
        assert!(reference_decode(&encoded).is_err());
        assert!(matches!(
            decompress(&[], 1000),
            Err(DecodeError::Decompress(_))
        ));
    }

    #[test]
    fn output_beyond_the_limit_is_refused() {
        let data = vec![b'a'; 1_000_000];
        let encoded = compress(&data);
        assert!(encoded.len() < 10_000);
        assert!(matches!(
            decompress(&encoded, 999_999),
            Err(DecodeError::TooLarge { limit: 999_999, .. })
        ));
        assert_eq!(decompress(&encoded, 1_000_000).unwrap().len(), 1_000_000);
    }

    #[test]
    fn code_beyond_the_table_is_refused() {
        // Clear, literal 'a', then code 300 (the next free code is 258).
        let mut w = (0u64, 0u32, Vec::new());
        for code in [256u64, 97, 300, 257] {
            w.0 |= code << w.1;
            w.1 += 9;
            while w.1 >= 8 {
                w.2.push(w.0 as u8);
                w.0 >>= 8;
                w.1 -= 8;
            }
        }
        w.2.push(w.0 as u8);
        assert!(reference_decode(&w.2).is_err());
        assert!(matches!(
            decompress(&w.2, 1000),
            Err(DecodeError::Decompress(_))
        ));
    }

    proptest! {
        #[test]
        fn compress_round_trips_and_the_reference_reader_agrees(
            data in proptest::collection::vec(any::<u8>(), 0..6000),
        ) {
            let encoded = compress(&data);
            prop_assert_eq!(&decompress(&encoded, data.len()).unwrap(), &data);
            prop_assert_eq!(&reference_decode(&encoded).unwrap(), &data);
            prop_assert_eq!(&decompress(&reference_encode(&data), data.len()).unwrap(), &data);
        }

        #[test]
        fn decompress_never_panics_and_agrees_with_the_reference(
            data in proptest::collection::vec(any::<u8>(), 0..400),
        ) {
            let ours = decompress(&data, 1 << 20).ok();
            let reference = reference_decode(&data).ok();
            prop_assert_eq!(ours, reference);
        }

        #[test]
        fn decompress_agrees_with_the_reference_on_mangled_streams(
            data in proptest::collection::vec(0u8..4, 0..3000),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        ) {
            let mut encoded = reference_encode(&data);
            for (index, byte) in flips {
                let i = index.index(encoded.len());
                encoded[i] ^= byte;
            }
            let ours = decompress(&encoded, 1 << 20).ok();
            let reference = reference_decode(&encoded).ok();
            prop_assert_eq!(ours, reference);
        }
    }
}
