//! Secrets at rest: the cluster secret every replica shares, the keys derived from it, AES-GCM sealing, and a
//! [`Store`](kumo_store::Store) wrapper that encrypts chosen kinds (Secrets by default) on any backend.
//!
//! Start with [`EncryptedStore`]; [`EncryptionConfig`] reads Kubernetes' EncryptionConfiguration file.

mod cluster_secret;
mod config;
mod store;

pub use cluster_secret::ClusterSecret;
pub use config::EncryptionConfig;
pub use store::EncryptedStore;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// An AES-GCM key (128 or 256 bits).
#[derive(Clone)]
pub struct AeadKey {
    key: std::sync::Arc<LessSafeKey>,
}

impl std::fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AeadKey(..)")
    }
}

impl AeadKey {
    pub fn new(bytes: &[u8]) -> Result<Self, String> {
        let alg = match bytes.len() {
            16 => &AES_128_GCM,
            32 => &AES_256_GCM,
            n => return Err(format!("an AES-GCM key must be 16 or 32 bytes, not {n}")),
        };
        let unbound = UnboundKey::new(alg, bytes).map_err(|_| "invalid AES-GCM key".to_string())?;
        Ok(AeadKey { key: std::sync::Arc::new(LessSafeKey::new(unbound)) })
    }

    /// `nonce ‖ ciphertext ‖ tag`, authenticated together with `aad` (the storage key, so a value cannot be
    /// moved to another key unnoticed). Nonces are random: far below the 2^32 seals per key where that matters.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).expect("the system random source works");
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + 16);
        out.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut body)
            .expect("sealing cannot fail for in-memory sizes");
        out.extend_from_slice(&body);
        out
    }

    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, String> {
        if sealed.len() < NONCE_LEN + 16 {
            return Err("sealed value is too short".into());
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| "bad nonce".to_string())?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut body)
            .map_err(|_| "decryption failed: wrong key, or the value was altered".to_string())?;
        Ok(plain.to_vec())
    }
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    SystemRandom::new().fill(&mut b).expect("the system random source works");
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let k = AeadKey::new(&[7u8; 32]).unwrap();
        let s = k.seal(b"hello", b"/k");
        assert_ne!(&s[NONCE_LEN..NONCE_LEN + 5], b"hello");
        assert_eq!(k.open(&s, b"/k").unwrap(), b"hello");
        assert!(k.open(&s, b"/other").is_err(), "bound to its key");
        let mut bad = s.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(k.open(&bad, b"/k").is_err());
        assert!(AeadKey::new(&[0u8; 32]).unwrap().open(&s, b"/k").is_err());
        assert!(AeadKey::new(&[0u8; 24]).is_err());
        assert!(AeadKey::new(&[0u8; 16]).is_ok());
    }
}
