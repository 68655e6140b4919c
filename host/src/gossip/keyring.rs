//! The AES-GCM keyring (reference 2.9): the primary key encrypts, every key may decrypt.

/// An ordered set of 16-, 24- or 32-byte AES keys; the first is the primary.
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("keys", &self.keys.len())
            .finish()
    }
}
