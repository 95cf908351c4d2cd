//! Secrets at rest. Town config and container env values are stored sealed with AES-256-GCM
//! under a key derived from `GASTOWN_ENCRYPTION_KEY`, bound by associated data to where they
//! belong (a town's config cannot be replayed into another town).
//!
//! Format: `v1:` + base64url(nonce ‖ ciphertext ‖ tag). The caller supplies the 12-byte nonce
//! from the runtime's CSPRNG (this crate reads no randomness, like it reads no clock).
//! A stored value without the prefix is refused, never read as plaintext: a row that is not
//! sealed was not written by this code.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use sha2::{Digest, Sha256};

const PREFIX: &str = "v1:";

/// Why a sealed value could not be opened. Never says more: no plaintext, no key material.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealError {
    /// No (or an empty) `GASTOWN_ENCRYPTION_KEY`.
    NoKey,
    /// Malformed, tampered with, sealed under another key or for another place.
    Corrupt,
    /// Not a sealed value at all (no `v1:` prefix).
    NotSealed,
}

impl std::fmt::Display for SealError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SealError::NoKey => "GASTOWN_ENCRYPTION_KEY is not configured",
            SealError::Corrupt => "a sealed value could not be opened",
            SealError::NotSealed => "a stored secret is not sealed",
        })
    }
}

/// The AES-256-GCM key, derived once per isolate (SHA-256 of the configured secret).
#[derive(Clone)]
pub struct Sealer {
    cipher: Option<Aes256Gcm>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(****)")
    }
}

impl Sealer {
    pub fn new(secret: Option<&str>) -> Self {
        let cipher = secret.filter(|s| !s.is_empty()).map(|s| {
            let key: [u8; 32] = Sha256::digest(s.as_bytes()).into();
            Aes256Gcm::new(&key.into())
        });
        Self { cipher }
    }

    /// Seals `plaintext` for the place named by `aad`.
    ///
    /// # Errors
    /// `NoKey` without a configured key.
    pub fn seal(&self, plaintext: &[u8], aad: &str, nonce: [u8; 12]) -> Result<String, SealError> {
        let cipher = self.cipher.as_ref().ok_or(SealError::NoKey)?;
        let sealed = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| SealError::Corrupt)?;
        let mut out = Vec::with_capacity(12 + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(format!("{PREFIX}{}", B64.encode(out)))
    }

    /// Opens a stored value.
    ///
    /// # Errors
    /// `NotSealed` for a value without the prefix; `NoKey` for a sealed value without a
    /// configured key; `Corrupt` for anything that does not open under this key and `aad`.
    pub fn open(&self, stored: &str, aad: &str) -> Result<Vec<u8>, SealError> {
        let Some(body) = stored.strip_prefix(PREFIX) else {
            return Err(SealError::NotSealed);
        };
        let cipher = self.cipher.as_ref().ok_or(SealError::NoKey)?;
        let bytes = B64.decode(body).map_err(|_| SealError::Corrupt)?;
        if bytes.len() < 12 + 16 {
            return Err(SealError::Corrupt);
        }
        let (nonce, sealed) = bytes.split_at(12);
        cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| SealError::Corrupt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding() {
        let s = Sealer::new(Some("encryption-key-for-tests"));
        let sealed = s.seal(b"ghp_secret", "town:t1", [7; 12]).unwrap();
        assert!(sealed.starts_with("v1:"));
        assert!(!sealed.contains("ghp_secret"));
        assert_eq!(s.open(&sealed, "town:t1").unwrap(), b"ghp_secret");
        assert_eq!(
            s.open(&sealed, "town:t2"),
            Err(SealError::Corrupt),
            "bound to its place"
        );
        let other = Sealer::new(Some("another-key"));
        assert_eq!(
            other.open(&sealed, "town:t1"),
            Err(SealError::Corrupt),
            "bound to its key"
        );
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert_eq!(s.open(&tampered, "town:t1"), Err(SealError::Corrupt));
        assert_eq!(s.open("v1:", "town:t1"), Err(SealError::Corrupt));
        assert_eq!(s.open("v1:!!!", "town:t1"), Err(SealError::Corrupt));
    }

    #[test]
    fn nonces_make_ciphertexts_differ() {
        let s = Sealer::new(Some("k"));
        assert_ne!(
            s.seal(b"x", "a", [1; 12]).unwrap(),
            s.seal(b"x", "a", [2; 12]).unwrap()
        );
    }

    #[test]
    fn plaintext_is_refused_and_no_key_fails_closed() {
        let s = Sealer::new(Some("k"));
        assert_eq!(s.open(r#"{"a":1}"#, "x"), Err(SealError::NotSealed));
        assert_eq!(s.open("", "x"), Err(SealError::NotSealed));
        let none = Sealer::new(None);
        assert_eq!(none.seal(b"x", "a", [0; 12]), Err(SealError::NoKey));
        let sealed = s.seal(b"x", "a", [0; 12]).unwrap();
        assert_eq!(none.open(&sealed, "a"), Err(SealError::NoKey));
        assert!(!format!("{:?}", s).contains('k'));
    }
}
