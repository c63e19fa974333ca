//! Sealing private keys with the cluster data key (DESIGN §4): the log and snapshots never hold
//! a plaintext key.
//!
//! Envelope (core's [`SealedBlob`]): `"cfs1" | key id (4) | nonce (12) | ciphertext | tag (16)`.
//! The magic, key id and nonce are authenticated as associated data, so a blob cannot be moved
//! to another key id or have its header edited without `open` refusing it.

use std::sync::atomic::{AtomicU64, Ordering};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use certfleet_core::model::SealedBlob;
use certfleet_core::time::mix;
use zeroize::Zeroizing;

/// Why a sealed blob could not be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    /// The blob was sealed with another data key.
    #[error("sealed with data key {found}, but this node holds data key {expected}")]
    WrongKey {
        /// The key id in the blob.
        found: String,
        /// This node's key id.
        expected: String,
    },
    /// Authentication failed: the blob was altered, or the key is wrong.
    #[error("sealed key failed authentication (altered, or a different data key with the same id)")]
    Tampered,
}

/// The cluster data key: AES-256-GCM with a 4-byte id carried in every blob.
pub struct DataKey {
    id: [u8; 4],
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key material.
        write!(f, "DataKey({})", hex(&self.id))
    }
}

impl DataKey {
    /// A data key with id `id` and key material `key`.
    #[must_use]
    pub fn new(id: [u8; 4], key: &[u8; 32]) -> Self {
        Self {
            id,
            cipher: Aes256Gcm::new(key.into()),
        }
    }

    /// A fresh data key from the operating system's random source, with id `id` (the demo's
    /// cluster, whose key lives only in its process).
    #[must_use]
    pub fn generate(id: [u8; 4]) -> Self {
        let key = Aes256Gcm::generate_key(aes_gcm::aead::OsRng);
        Self {
            id,
            cipher: Aes256Gcm::new(&key),
        }
    }

    /// The key id, as written in blobs.
    #[must_use]
    pub fn id(&self) -> [u8; 4] {
        self.id
    }

    /// Seals `plaintext` with `nonce`, which must never repeat under this key ([`Nonces`]).
    #[must_use]
    pub fn seal(&self, plaintext: &[u8], nonce: [u8; 12]) -> SealedBlob {
        let mut header = Vec::with_capacity(SealedBlob::LEN_MIN + plaintext.len());
        header.extend_from_slice(&SealedBlob::MAGIC);
        header.extend_from_slice(&self.id);
        header.extend_from_slice(&nonce);
        let ciphertext = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &header,
                },
            )
            // aes-gcm fails only for plaintexts over 64 GiB; keys are a few KiB.
            .expect("AES-GCM seals any plaintext under 64 GiB");
        header.extend_from_slice(&ciphertext);
        // The envelope is well formed by construction; a key over LEN_MAX (16 KiB) is not one
        // this program makes (an RSA 4096 PKCS#8 key is about 2.4 KiB).
        SealedBlob::new(header).expect("a sealed key of a few KiB fits the envelope")
    }

    /// Opens a blob sealed with this key.
    pub fn open(&self, blob: &SealedBlob) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let bytes = blob.as_bytes();
        // `SealedBlob` checked the magic and the minimum length when it was made or decoded.
        let (header, ciphertext) = bytes.split_at(4 + 4 + 12);
        if header[4..8] != self.id {
            return Err(SealError::WrongKey {
                found: hex(&header[4..8]),
                expected: hex(&self.id),
            });
        }
        self.cipher
            .decrypt(
                Nonce::from_slice(&header[8..20]),
                Payload {
                    msg: ciphertext,
                    aad: header,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| SealError::Tampered)
    }
}

/// Nonces for one node's sealing: a per-process seed and a counter. Two processes sealing under
/// one key must have different seeds (production draws it from the OS; the simulation from the
/// node's seeded generator), so nonces never repeat while a process lives and collide across
/// processes only by a 64-bit birthday chance.
#[derive(Debug)]
pub struct Nonces {
    seed: u64,
    counter: AtomicU64,
}

impl Nonces {
    /// Nonces drawn from `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            counter: AtomicU64::new(0),
        }
    }

    /// The next nonce: the seed's mix of the counter, then the counter itself, so two nonces of
    /// one process always differ in their last 4 bytes' companions.
    pub fn next(&self) -> [u8; 12] {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&mix(self.seed, b"seal-nonce", n).to_le_bytes());
        // The low 32 bits of the counter make consecutive nonces distinct even if `mix`
        // collided; the 64-bit mix keeps processes apart.
        nonce[8..].copy_from_slice(&(n as u32).to_le_bytes());
        nonce
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: u8) -> DataKey {
        DataKey::new([id; 4], &[id; 32])
    }

    #[test]
    fn a_sealed_key_opens_with_its_data_key_and_holds_no_plaintext() {
        let nonces = Nonces::new(7);
        let secret = b"-----BEGIN PRIVATE KEY----- not really";
        let blob = key(1).seal(secret, nonces.next());
        assert!(
            !blob
                .as_bytes()
                .windows(secret.len())
                .any(|w| w == secret.as_slice())
        );
        assert_eq!(key(1).open(&blob).unwrap().as_slice(), secret);
        // A second sealing of the same key uses a fresh nonce: different bytes.
        assert_ne!(key(1).seal(secret, nonces.next()), blob);
    }

    #[test]
    fn a_blob_from_another_key_or_altered_is_refused_by_name() {
        let blob = key(1).seal(b"secret", Nonces::new(1).next());
        assert_eq!(
            key(2).open(&blob),
            Err(SealError::WrongKey {
                found: "01010101".into(),
                expected: "02020202".into()
            })
        );
        // Same id, different material.
        let impostor = DataKey::new([1; 4], &[9; 32]);
        assert_eq!(impostor.open(&blob), Err(SealError::Tampered));
        // Every single-bit flip after the magic is caught (the magic is checked by core).
        let bytes = blob.as_bytes().to_vec();
        for i in 4..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x10;
            let flipped = SealedBlob::new(flipped).unwrap();
            assert!(key(1).open(&flipped).is_err(), "flip at byte {i} opened");
        }
    }

    #[test]
    fn nonces_of_one_process_never_repeat() {
        let nonces = Nonces::new(3);
        let drawn: std::collections::BTreeSet<[u8; 12]> =
            (0..10_000).map(|_| nonces.next()).collect();
        assert_eq!(drawn.len(), 10_000);
        // Different seeds give different sequences.
        assert_ne!(Nonces::new(3).next(), Nonces::new(4).next());
    }
}
