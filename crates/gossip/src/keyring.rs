//! The AES-GCM keyring (reference 2.9): the primary key encrypts, every key may decrypt.
//!
//! Blob layout: `[version] [nonce: 12] [ciphertext ++ tag: 16]`. Version 1 seals the plaintext
//! as is; version 0 seals it PKCS#7-padded to a multiple of 16 bytes. We send version 1 and
//! accept both.

use aes_gcm::aead::consts::U12;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::aes::Aes192;
use aes_gcm::{Aes128Gcm, Aes256Gcm, AesGcm, Nonce};
use base64::Engine as _;
use base64::engine::{GeneralPurpose, GeneralPurposeConfig};
use rand::RngCore;

use super::error::DecodeError;

type Aes192Gcm = AesGcm<Aes192, U12>;

const NONCE_BYTES: usize = 12;
const TAG_BYTES: usize = 16;
const BLOCK_BYTES: usize = 16;

/// Bytes encryption adds to a message (version 1): version byte, nonce and tag.
pub const ENCRYPTION_OVERHEAD: usize = 1 + NONCE_BYTES + TAG_BYTES;

/// The shortest blob of each version: an empty plaintext (version 0 still pads one block).
const MIN_V1_BYTES: usize = ENCRYPTION_OVERHEAD;
const MIN_V0_BYTES: usize = ENCRYPTION_OVERHEAD + BLOCK_BYTES;

/// Standard base64 with padding; like the reference decoder it tolerates non-zero trailing bits.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

/// Why a key or keyring was refused. Nothing changes when one of these is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    /// A keyring needs a primary key.
    #[error("Empty primary key not allowed")]
    Empty,
    /// A keyring file held an empty list.
    #[error("no keys present in keyring file")]
    EmptyFile,
    /// Keys are 16, 24 or 32 bytes (AES-128, -192, -256).
    #[error("key size must be 16, 24 or 32 bytes")]
    KeySize(usize),
    /// `use_key` named a key that is not installed.
    #[error("Requested key is not in the keyring")]
    NotInKeyring,
    /// `remove_key` named the primary key.
    #[error("Removing the primary key is not allowed")]
    RemovePrimary,
    /// A key was not valid base64.
    #[error("illegal base64 data at input byte {0}")]
    Base64(usize),
    /// A keyring file was not a JSON array of strings.
    #[error("invalid keyring file: {0}")]
    File(String),
}

/// One AES-GCM cipher per key size.
#[derive(Clone)]
enum Cipher {
    Aes128(Box<Aes128Gcm>),
    Aes192(Box<Aes192Gcm>),
    Aes256(Box<Aes256Gcm>),
}

impl Cipher {
    fn new(key: &[u8]) -> Result<Cipher, KeyringError> {
        let size = KeyringError::KeySize(key.len());
        Ok(match key.len() {
            16 => Cipher::Aes128(Box::new(Aes128Gcm::new_from_slice(key).map_err(|_| size)?)),
            24 => Cipher::Aes192(Box::new(Aes192Gcm::new_from_slice(key).map_err(|_| size)?)),
            32 => Cipher::Aes256(Box::new(Aes256Gcm::new_from_slice(key).map_err(|_| size)?)),
            _ => return Err(size),
        })
    }

    fn seal(&self, nonce: &[u8; NONCE_BYTES], msg: &[u8], aad: &[u8]) -> Vec<u8> {
        let nonce = Nonce::<U12>::from_slice(nonce);
        let payload = Payload { msg, aad };
        match self {
            Cipher::Aes128(c) => c.encrypt(nonce, payload),
            Cipher::Aes192(c) => c.encrypt(nonce, payload),
            Cipher::Aes256(c) => c.encrypt(nonce, payload),
        }
        .expect("AES-GCM seals any message shorter than 64 GiB")
    }

    fn open(&self, nonce: &[u8], msg: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        let nonce = Nonce::<U12>::from_slice(nonce);
        let payload = Payload { msg, aad };
        match self {
            Cipher::Aes128(c) => c.decrypt(nonce, payload),
            Cipher::Aes192(c) => c.decrypt(nonce, payload),
            Cipher::Aes256(c) => c.decrypt(nonce, payload),
        }
        .ok()
    }
}

/// An ordered set of 16-, 24- or 32-byte AES keys; the first is the primary.
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<Vec<u8>>,
    ciphers: Vec<Cipher>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl Keyring {
    /// A keyring of `keys` (first = primary); duplicates are dropped.
    pub fn new(keys: Vec<Vec<u8>>) -> Result<Keyring, KeyringError> {
        if keys.is_empty() {
            return Err(KeyringError::Empty);
        }
        let mut keyring = Keyring {
            keys: Vec::with_capacity(keys.len()),
            ciphers: Vec::with_capacity(keys.len()),
        };
        for key in keys {
            keyring.add_key(key)?;
        }
        Ok(keyring)
    }

    /// The key that encrypts.
    pub fn primary(&self) -> &[u8] {
        &self.keys[0]
    }

    /// All keys, primary first.
    pub fn keys(&self) -> &[Vec<u8>] {
        &self.keys
    }

    /// Appends `key`; installing a key that is already present changes nothing.
    pub fn add_key(&mut self, key: Vec<u8>) -> Result<(), KeyringError> {
        let cipher = Cipher::new(&key)?;
        if !self.keys.contains(&key) {
            self.keys.push(key);
            self.ciphers.push(cipher);
        }
        Ok(())
    }

    /// Makes an installed key the primary; the others keep their order.
    pub fn use_key(&mut self, key: &[u8]) -> Result<(), KeyringError> {
        let index = self
            .keys
            .iter()
            .position(|k| k == key)
            .ok_or(KeyringError::NotInKeyring)?;
        let key = self.keys.remove(index);
        let cipher = self.ciphers.remove(index);
        self.keys.insert(0, key);
        self.ciphers.insert(0, cipher);
        Ok(())
    }

    /// Removes a secondary key; removing a key that is not installed succeeds.
    pub fn remove_key(&mut self, key: &[u8]) -> Result<(), KeyringError> {
        if self.primary() == key {
            return Err(KeyringError::RemovePrimary);
        }
        if let Some(index) = self.keys.iter().position(|k| k == key) {
            self.keys.remove(index);
            self.ciphers.remove(index);
        }
        Ok(())
    }

    /// Seals `plaintext` with the primary key as a version-1 blob:
    /// `01 nonce(12) ciphertext tag(16)`, `ENCRYPTION_OVERHEAD` bytes longer than `plaintext`.
    pub fn encrypt(&self, plaintext: &[u8], aad: &[u8], rng: &mut dyn RngCore) -> Vec<u8> {
        self.seal(1, plaintext, aad, rng)
    }

    /// Seals `plaintext` as a version-0 blob (PKCS#7-padded); only peers of protocol
    /// version 1 send these, so this exists for tests.
    pub fn encrypt_v0(&self, plaintext: &[u8], aad: &[u8], rng: &mut dyn RngCore) -> Vec<u8> {
        let pad = BLOCK_BYTES - plaintext.len() % BLOCK_BYTES;
        let mut padded = Vec::with_capacity(plaintext.len() + pad);
        padded.extend_from_slice(plaintext);
        padded.resize(plaintext.len() + pad, pad as u8);
        self.seal(0, &padded, aad, rng)
    }

    fn seal(&self, version: u8, plaintext: &[u8], aad: &[u8], rng: &mut dyn RngCore) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_BYTES];
        rng.fill_bytes(&mut nonce);
        let sealed = self.ciphers[0].seal(&nonce, plaintext, aad);
        let mut blob = Vec::with_capacity(1 + NONCE_BYTES + sealed.len());
        blob.push(version);
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&sealed);
        blob
    }

    /// Opens a version-0 or version-1 blob with the first key that authenticates it.
    pub fn decrypt(&self, blob: &[u8], aad: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let min = match blob.first() {
            Some(0) => MIN_V0_BYTES,
            Some(1) => MIN_V1_BYTES,
            _ => return Err(DecodeError::Decrypt),
        };
        if blob.len() < min {
            return Err(DecodeError::Decrypt);
        }
        let nonce = &blob[1..1 + NONCE_BYTES];
        let sealed = &blob[1 + NONCE_BYTES..];
        let plain = self
            .ciphers
            .iter()
            .find_map(|cipher| cipher.open(nonce, sealed, aad))
            .ok_or(DecodeError::Decrypt)?;
        if blob[0] == 0 {
            return strip_pkcs7(plain).ok_or(DecodeError::Decrypt);
        }
        Ok(plain)
    }

    /// Parses a keyring file: a JSON array of base64 keys, the first being the primary.
    pub fn load_file_contents(json: &str) -> Result<Keyring, KeyringError> {
        let encoded: Vec<String> =
            serde_json::from_str(json).map_err(|error| KeyringError::File(error.to_string()))?;
        if encoded.is_empty() {
            return Err(KeyringError::EmptyFile);
        }
        let keys = encoded
            .iter()
            .map(|key| parse_key(key))
            .collect::<Result<Vec<_>, _>>()?;
        Keyring::new(keys)
    }

    /// The keyring file for these keys (primary first), indented like Serf writes it.
    pub fn to_file_contents(&self) -> String {
        let encoded: Vec<String> = self.keys.iter().map(|key| encode_key(key)).collect();
        serde_json::to_string_pretty(&encoded).expect("a list of strings always serializes")
    }
}

/// Removes PKCS#7 padding (1 to 16 bytes, each holding the count); `None` if malformed.
fn strip_pkcs7(mut plain: Vec<u8>) -> Option<Vec<u8>> {
    let pad = usize::from(*plain.last()?);
    if pad == 0 || pad > BLOCK_BYTES || pad > plain.len() {
        return None;
    }
    let start = plain.len() - pad;
    if plain[start..].iter().any(|&b| usize::from(b) != pad) {
        return None;
    }
    plain.truncate(start);
    Some(plain)
}

/// Decodes a base64 key (standard alphabet, padded; line breaks ignored) and checks its size.
pub fn parse_key(text: &str) -> Result<Vec<u8>, KeyringError> {
    let key = decode_base64(text)?;
    match key.len() {
        16 | 24 | 32 => Ok(key),
        len => Err(KeyringError::KeySize(len)),
    }
}

/// Decodes standard padded base64 (line breaks ignored) without checking the length: key
/// commands send whatever decodes and let every node judge the size.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, KeyringError> {
    let cleaned: String = text.chars().filter(|c| *c != '\r' && *c != '\n').collect();
    BASE64.decode(cleaned.as_bytes()).map_err(|error| {
        KeyringError::Base64(match error {
            base64::DecodeError::InvalidByte(offset, _)
            | base64::DecodeError::InvalidLastSymbol(offset, _) => offset,
            base64::DecodeError::InvalidLength(len) => len,
            base64::DecodeError::InvalidPadding => cleaned.len(),
        })
    })
}

/// Standard base64 with padding, as `serf keys -list` and keyring files show keys.
pub fn encode_key(key: &[u8]) -> String {
    BASE64.encode(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msgpack::hex;
    use rand::{SeedableRng, rngs::StdRng};

    fn key(byte: u8, len: usize) -> Vec<u8> {
        vec![byte; len]
    }

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    #[test]
    fn new_requires_keys_of_aes_sizes() {
        assert_eq!(Keyring::new(vec![]).unwrap_err(), KeyringError::Empty);
        assert_eq!(
            Keyring::new(vec![key(1, 16), key(2, 20)]).unwrap_err(),
            KeyringError::KeySize(20)
        );
        for len in [16, 24, 32] {
            let keyring = Keyring::new(vec![key(1, len)]).unwrap();
            assert_eq!(keyring.primary(), &key(1, len)[..]);
        }
        assert_eq!(
            KeyringError::KeySize(20).to_string(),
            "key size must be 16, 24 or 32 bytes"
        );
    }

    #[test]
    fn add_key_appends_and_ignores_duplicates() {
        let mut keyring = Keyring::new(vec![key(1, 16)]).unwrap();
        keyring.add_key(key(2, 32)).unwrap();
        keyring.add_key(key(1, 16)).unwrap();
        keyring.add_key(key(2, 32)).unwrap();
        assert_eq!(keyring.keys(), &[key(1, 16), key(2, 32)]);
        assert_eq!(keyring.add_key(key(3, 15)), Err(KeyringError::KeySize(15)));
        assert_eq!(keyring.keys().len(), 2);
    }

    #[test]
    fn use_key_moves_the_key_to_the_front_and_keeps_the_rest_in_order() {
        let mut keyring = Keyring::new(vec![key(1, 16), key(2, 16), key(3, 16)]).unwrap();
        keyring.use_key(&key(3, 16)).unwrap();
        assert_eq!(keyring.keys(), &[key(3, 16), key(1, 16), key(2, 16)]);
        let err = keyring.use_key(&key(9, 16)).unwrap_err();
        assert_eq!(err.to_string(), "Requested key is not in the keyring");
        // The new primary encrypts.
        let blob = keyring.encrypt(b"x", &[], &mut rng());
        let only_three = Keyring::new(vec![key(3, 16)]).unwrap();
        assert_eq!(only_three.decrypt(&blob, &[]).unwrap(), b"x");
    }

    #[test]
    fn remove_key_refuses_the_primary_and_ignores_unknown_keys() {
        let mut keyring = Keyring::new(vec![key(1, 16), key(2, 16), key(3, 16)]).unwrap();
        let err = keyring.remove_key(&key(1, 16)).unwrap_err();
        assert_eq!(err.to_string(), "Removing the primary key is not allowed");
        keyring.remove_key(&key(9, 16)).unwrap();
        keyring.remove_key(&key(2, 16)).unwrap();
        assert_eq!(keyring.keys(), &[key(1, 16), key(3, 16)]);
        // A removed key no longer decrypts.
        let two = Keyring::new(vec![key(2, 16)]).unwrap();
        let blob = two.encrypt(b"secret", &[], &mut rng());
        assert_eq!(keyring.decrypt(&blob, &[]), Err(DecodeError::Decrypt));
    }

    #[test]
    fn captured_udp_ping_decrypts_with_the_documented_key() {
        // Reference 7.11.
        let blob = hex(
            "0112d46446514f7046431a94fb9ca26a978ce90d7722b9789fd50c81906477f751e8fdec2c26738110e9a6c1a66e6b4f
             2a1f072bd0db689f2d14f9b33d68c9b731389eae50d3963ef6e186beeaeacf850685652ce7ded47c",
        );
        let keyring = Keyring::new(vec![(0u8..32).collect()]).unwrap();
        let plain = keyring.decrypt(&blob, &[]).unwrap();
        assert_eq!(
            plain,
            hex("0085a44e6f6465a163a55365714e6f01aa536f7572636541646472a47f00000daa536f757263654e6f6465a164aa536f
                 75726365506f7274cd1f0a")
        );
        // Authenticated: a flipped bit or an AAD is refused.
        let mut flipped = blob.clone();
        flipped[40] ^= 1;
        assert_eq!(keyring.decrypt(&flipped, &[]), Err(DecodeError::Decrypt));
        assert_eq!(keyring.decrypt(&blob, b"x"), Err(DecodeError::Decrypt));
    }

    #[test]
    fn decrypt_tries_every_key_in_order() {
        let sender = Keyring::new(vec![key(2, 24)]).unwrap();
        let blob = sender.encrypt(b"hello", b"aad", &mut rng());
        assert_eq!(blob.len(), 5 + ENCRYPTION_OVERHEAD);
        assert_eq!(blob[0], 1);
        let receiver = Keyring::new(vec![key(1, 32), key(2, 24)]).unwrap();
        assert_eq!(receiver.decrypt(&blob, b"aad").unwrap(), b"hello");
        let stranger = Keyring::new(vec![key(1, 32)]).unwrap();
        assert_eq!(stranger.decrypt(&blob, b"aad"), Err(DecodeError::Decrypt));
    }

    #[test]
    fn version_zero_blobs_are_padded_and_decrypt() {
        let keyring = Keyring::new(vec![key(5, 32)]).unwrap();
        for len in [0usize, 1, 15, 16, 17, 40] {
            let plain: Vec<u8> = (0..len as u8).collect();
            let blob = keyring.encrypt_v0(&plain, &[], &mut rng());
            assert_eq!(blob[0], 0);
            let padded = len + (16 - len % 16);
            assert_eq!(blob.len(), 1 + 12 + padded + 16);
            assert_eq!(keyring.decrypt(&blob, &[]).unwrap(), plain);
        }
    }

    #[test]
    fn bad_padding_in_a_version_zero_blob_is_refused() {
        let keyring = Keyring::new(vec![key(5, 16)]).unwrap();
        // Seal bad paddings directly as version 0.
        for bad in [
            &[1u8, 2, 3, 0][..],
            &[5u8, 5, 5, 4][..],
            &[17u8; 16][..],
            &[1u8, 2, 2, 3][..],
        ] {
            let mut padded = vec![0u8; 16 - bad.len()];
            padded.extend_from_slice(bad);
            let blob = keyring.seal(0, &padded, &[], &mut rng());
            assert_eq!(
                keyring.decrypt(&blob, &[]),
                Err(DecodeError::Decrypt),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn short_blobs_and_unknown_versions_are_refused() {
        let keyring = Keyring::new(vec![key(5, 16)]).unwrap();
        let v1 = keyring.encrypt(&[], &[], &mut rng());
        assert_eq!(v1.len(), 29);
        assert_eq!(keyring.decrypt(&v1, &[]).unwrap(), Vec::<u8>::new());
        assert_eq!(keyring.decrypt(&v1[..28], &[]), Err(DecodeError::Decrypt));
        let v0 = keyring.encrypt_v0(&[], &[], &mut rng());
        assert_eq!(v0.len(), 45);
        assert_eq!(keyring.decrypt(&v0[..44], &[]), Err(DecodeError::Decrypt));
        let mut v2 = v1.clone();
        v2[0] = 2;
        assert_eq!(keyring.decrypt(&v2, &[]), Err(DecodeError::Decrypt));
        assert_eq!(keyring.decrypt(&[], &[]), Err(DecodeError::Decrypt));
    }

    #[test]
    fn keys_parse_from_and_encode_to_padded_base64() {
        let documented = parse_key("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
        assert_eq!(documented, (0u8..32).collect::<Vec<_>>());
        assert_eq!(
            encode_key(&documented),
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
        );
        assert_eq!(
            parse_key("ERESEhISEhISEhISEhISEg==").unwrap(),
            [&[0x11u8, 0x11][..], &[0x12; 14][..]].concat()
        );
        assert_eq!(parse_key("AAEC"), Err(KeyringError::KeySize(3)));
        assert_eq!(parse_key("AA!C"), Err(KeyringError::Base64(2)));
        assert_eq!(
            KeyringError::Base64(2).to_string(),
            "illegal base64 data at input byte 2"
        );
    }

    #[test]
    fn keyring_file_round_trips_with_the_primary_first() {
        let mut keyring = Keyring::new(vec![key(1, 16), key(2, 32)]).unwrap();
        keyring.use_key(&key(2, 32)).unwrap();
        let text = keyring.to_file_contents();
        assert!(text.starts_with("[\n  \""), "{text}");
        let loaded = Keyring::load_file_contents(&text).unwrap();
        assert_eq!(loaded.keys(), &[key(2, 32), key(1, 16)]);
        assert_eq!(
            Keyring::load_file_contents("[]").unwrap_err(),
            KeyringError::EmptyFile
        );
        assert!(matches!(
            Keyring::load_file_contents("{\"a\": 1}"),
            Err(KeyringError::File(_))
        ));
        assert_eq!(
            Keyring::load_file_contents("[\"AAEC\"]").unwrap_err(),
            KeyringError::KeySize(3)
        );
    }
}
