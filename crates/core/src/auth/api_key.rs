//! The internal API key (`x-internal-api-key`), compared in constant time.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The configured key, kept only as its SHA-256 digest. Comparing digests in constant time hides
/// both the content and the length of the key from a timing observer.
#[derive(Clone)]
pub struct InternalKey {
    digest: Option<[u8; 32]>,
}

impl InternalKey {
    /// An empty or missing configured key matches nothing, so a deployment that forgot the secret
    /// is closed rather than open.
    pub fn new(configured: Option<&str>) -> Self {
        let digest = configured
            .filter(|k| !k.is_empty())
            .map(|k| Sha256::digest(k.as_bytes()).into());
        Self { digest }
    }

    pub fn matches(&self, presented: Option<&str>) -> bool {
        let (Some(expected), Some(presented)) = (self.digest.as_ref(), presented) else {
            return false;
        };
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        bool::from(expected.ct_eq(&presented))
    }
}

impl std::fmt::Debug for InternalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InternalKey(****)")
    }
}

#[cfg(test)]
mod tests {
    use super::InternalKey;

    #[test]
    fn matches_only_the_configured_key() {
        let key = InternalKey::new(Some("s3cret-key"));
        assert!(key.matches(Some("s3cret-key")));
        assert!(!key.matches(Some("s3cret-kex")));
        assert!(!key.matches(Some("s3cret-key ")));
        assert!(!key.matches(Some("")));
        assert!(!key.matches(None));
    }

    #[test]
    fn unconfigured_key_matches_nothing() {
        for key in [InternalKey::new(None), InternalKey::new(Some(""))] {
            assert!(!key.matches(Some("")));
            assert!(!key.matches(Some("anything")));
        }
    }

    #[test]
    fn debug_does_not_leak() {
        let key = InternalKey::new(Some("s3cret-key"));
        assert!(!format!("{key:?}").contains("s3cret"));
    }
}
