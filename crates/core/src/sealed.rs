//! Secrets at rest. Town config, container env values and integration tokens are stored sealed
//! with AES-256-GCM under a key derived from `GASTOWN_ENCRYPTION_KEY`, bound by associated data
//! to where they belong (a town's config cannot be replayed into another town, an integration's
//! refresh token into another integration).
//!
//! Format: `v2:` + base64url(key version ‖ nonce ‖ ciphertext ‖ tag), the version byte also
//! bound as associated data. The version names the key that sealed the value, so the key can
//! rotate: the operator sets a new `GASTOWN_ENCRYPTION_KEY` with a new
//! `GASTOWN_ENCRYPTION_KEY_VERSION` and keeps the old one as `GASTOWN_ENCRYPTION_KEY_PREVIOUS`
//! (with its version); values sealed under either open, and every write seals under the
//! current one. Values of the first format, `v1:` + base64url(nonce ‖ ciphertext ‖ tag), were
//! all sealed under version 1 and still open.
//!
//! The caller supplies the 12-byte nonce from the runtime's CSPRNG (this crate reads no
//! randomness, like it reads no clock). A stored value without a prefix is refused, never read
//! as plaintext: a row that is not sealed was not written by this code.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use sha2::{Digest, Sha256};

const PREFIX_V1: &str = "v1:";
const PREFIX_V2: &str = "v2:";
/// The key version of values sealed before versions existed, and the default.
pub const DEFAULT_KEY_VERSION: u8 = 1;

/// Why a sealed value could not be opened. Never says more: no plaintext, no key material.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealError {
    /// No (or an empty) `GASTOWN_ENCRYPTION_KEY`, or none of the version a value names.
    NoKey,
    /// Malformed, tampered with, sealed under another key or for another place.
    Corrupt,
    /// Not a sealed value at all (no `v1:`/`v2:` prefix).
    NotSealed,
}

impl std::fmt::Display for SealError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SealError::NoKey => "GASTOWN_ENCRYPTION_KEY is not configured (or not the version that sealed this value)",
            SealError::Corrupt => "a sealed value could not be opened",
            SealError::NotSealed => "a stored secret is not sealed",
        })
    }
}

fn cipher_of(secret: &str) -> Aes256Gcm {
    let key: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
    Aes256Gcm::new(&key.into())
}

/// The AES-256-GCM keys, derived once per isolate (SHA-256 of each configured secret): the
/// current one, which seals, and optionally the previous one, which only opens.
#[derive(Clone)]
pub struct Sealer {
    current: Option<(u8, Aes256Gcm)>,
    previous: Option<(u8, Aes256Gcm)>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(****)")
    }
}

impl Sealer {
    /// One key, version 1.
    pub fn new(secret: Option<&str>) -> Self {
        Self::with_versions(secret, DEFAULT_KEY_VERSION, None)
    }

    /// The current key with its version, and the previous key (with its version) during a
    /// rotation. A previous key of the current version is ignored.
    pub fn with_versions(secret: Option<&str>, version: u8, previous: Option<(&str, u8)>) -> Self {
        let current = secret
            .filter(|s| !s.is_empty())
            .map(|s| (version, cipher_of(s)));
        let previous = previous
            .filter(|(s, v)| !s.is_empty() && *v != version)
            .map(|(s, v)| (v, cipher_of(s)));
        Self { current, previous }
    }

    fn key(&self, version: u8) -> Option<&Aes256Gcm> {
        [&self.current, &self.previous]
            .into_iter()
            .flatten()
            .find(|(v, _)| *v == version)
            .map(|(_, c)| c)
    }

    /// Seals `plaintext` for the place named by `aad`, under the current key.
    ///
    /// # Errors
    /// `NoKey` without a configured key.
    pub fn seal(&self, plaintext: &[u8], aad: &str, nonce: [u8; 12]) -> Result<String, SealError> {
        let (version, cipher) = self.current.as_ref().ok_or(SealError::NoKey)?;
        let aad = versioned_aad(*version, aad);
        let sealed = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Corrupt)?;
        let mut out = Vec::with_capacity(1 + 12 + sealed.len());
        out.push(*version);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(format!("{PREFIX_V2}{}", B64.encode(out)))
    }

    /// Whether `stored` was sealed under an older key than the current one (worth re-sealing).
    pub fn is_stale(&self, stored: &str) -> bool {
        let current = self.current.as_ref().map(|(v, _)| *v);
        match stored.strip_prefix(PREFIX_V2) {
            Some(body) => B64
                .decode(body)
                .ok()
                .and_then(|b| b.first().copied())
                .is_some_and(|v| Some(v) != current),
            None => stored.starts_with(PREFIX_V1) && current != Some(DEFAULT_KEY_VERSION),
        }
    }

    /// Opens a stored value.
    ///
    /// # Errors
    /// `NotSealed` for a value without a prefix; `NoKey` for a value whose key version is not
    /// configured; `Corrupt` for anything that does not open under that key and `aad`.
    pub fn open(&self, stored: &str, aad: &str) -> Result<Vec<u8>, SealError> {
        let (version, body, aad) = if let Some(body) = stored.strip_prefix(PREFIX_V2) {
            let bytes = B64.decode(body).map_err(|_| SealError::Corrupt)?;
            let (&version, rest) = bytes.split_first().ok_or(SealError::Corrupt)?;
            (version, rest.to_vec(), versioned_aad(version, aad))
        } else if let Some(body) = stored.strip_prefix(PREFIX_V1) {
            let bytes = B64.decode(body).map_err(|_| SealError::Corrupt)?;
            (DEFAULT_KEY_VERSION, bytes, aad.as_bytes().to_vec())
        } else {
            return Err(SealError::NotSealed);
        };
        let cipher = self.key(version).ok_or(SealError::NoKey)?;
        if body.len() < 12 + 16 {
            return Err(SealError::Corrupt);
        }
        let (nonce, sealed) = body.split_at(12);
        cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Corrupt)
    }
}

/// v2 binds the key version too, so a value cannot be relabelled with another version.
fn versioned_aad(version: u8, aad: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(aad.len() + 1);
    out.push(version);
    out.extend_from_slice(aad.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding() {
        let s = Sealer::new(Some("encryption-key-for-tests"));
        let sealed = s.seal(b"ghp_secret", "town:t1", [7; 12]).unwrap();
        assert!(sealed.starts_with("v2:"));
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
        assert_eq!(s.open("v2:", "town:t1"), Err(SealError::Corrupt));
    }

    /// A v1 value, as the first format wrote it (nonce ‖ ciphertext, no version byte).
    fn v1(secret: &str, plaintext: &[u8], aad: &str, nonce: [u8; 12]) -> String {
        let sealed = cipher_of(secret)
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: aad.as_bytes(),
                },
            )
            .unwrap();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        format!("v1:{}", B64.encode(out))
    }

    #[test]
    fn values_of_the_first_format_still_open() {
        let old = v1("k1", b"pat", "town:t1", [3; 12]);
        let s = Sealer::new(Some("k1"));
        assert_eq!(s.open(&old, "town:t1").unwrap(), b"pat");
        assert!(!s.is_stale(&old));
        assert_eq!(s.open(&old, "town:t2"), Err(SealError::Corrupt));
    }

    #[test]
    fn the_key_rotates_by_version() {
        let before = Sealer::new(Some("old-key"));
        let sealed_v1 = before.seal(b"token", "integration:i1", [5; 12]).unwrap();
        let legacy = v1("old-key", b"legacy", "integration:i1", [6; 12]);
        let rotated = Sealer::with_versions(Some("new-key"), 2, Some(("old-key", 1)));
        assert_eq!(
            rotated.open(&sealed_v1, "integration:i1").unwrap(),
            b"token"
        );
        assert_eq!(rotated.open(&legacy, "integration:i1").unwrap(), b"legacy");
        assert!(rotated.is_stale(&sealed_v1) && rotated.is_stale(&legacy));
        let sealed_v2 = rotated.seal(b"token", "integration:i1", [5; 12]).unwrap();
        assert!(!rotated.is_stale(&sealed_v2));
        assert_eq!(
            B64.decode(sealed_v2.strip_prefix("v2:").unwrap()).unwrap()[0],
            2,
            "the version byte leads"
        );
        // Once the previous key is dropped, its values no longer open; new ones still do.
        let after = Sealer::with_versions(Some("new-key"), 2, None);
        assert_eq!(
            after.open(&sealed_v1, "integration:i1"),
            Err(SealError::NoKey)
        );
        assert_eq!(after.open(&sealed_v2, "integration:i1").unwrap(), b"token");
        // Relabelling a value with another version does not open it.
        let mut bytes = B64.decode(sealed_v2.strip_prefix("v2:").unwrap()).unwrap();
        bytes[0] = 1;
        let relabelled = format!("v2:{}", B64.encode(bytes));
        assert_eq!(
            rotated.open(&relabelled, "integration:i1"),
            Err(SealError::Corrupt)
        );
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
