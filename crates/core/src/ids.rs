//! Identifier newtypes. Each can only be built by parsing, so a handler holding a `TownId` knows
//! it is non-empty, at most [`MAX_ID_LEN`] bytes and printable ASCII without spaces.
//!
//! Ids arrive from path segments (percent-decoded first) and from token claims. Town and rig ids
//! this worker mints are lowercase UUIDv4s; ids minted elsewhere (user and org ids) are opaque.

use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

/// Longest id accepted anywhere.
pub const MAX_ID_LEN: usize = 128;

/// Why a string is not an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdError {
    Empty,
    TooLong,
    BadChar,
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdError::Empty => "must not be empty",
            IdError::TooLong => "is longer than 128 characters",
            IdError::BadChar => "may hold only printable ASCII without spaces",
        })
    }
}

fn check(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong);
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(IdError::BadChar);
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// # Errors
            /// When `s` is empty, too long, or holds a character outside printable ASCII.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                check(s)?;
                Ok(Self(s.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(|e| serde::de::Error::custom(format!("id {e}")))
            }
        }
    };
}

id_type!(
    /// A user, as the dashboard's `kiloUserId`.
    UserId
);
id_type!(
    /// An organisation.
    OrgId
);
id_type!(
    /// A town (one TownDO, one container).
    TownId
);
id_type!(
    /// A rig: a repository attached to a town.
    RigId
);
id_type!(
    /// An agent running in a town's container.
    AgentId
);
id_type!(
    /// A bead: one work item of a town.
    BeadId
);
id_type!(
    /// A platform integration (a GitHub App installation or a GitLab connection).
    IntegrationId
);

/// Formats 16 random bytes as a lowercase RFC 4122 version-4 UUID.
pub fn uuid_v4(mut bytes: [u8; 16]) -> String {
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut out = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        out.push(char::from_digit(u32::from(b & 0x0f), 16).unwrap_or('0'));
    }
    out
}

/// Decodes `%XX` escapes in one path segment. `None` for a malformed escape or non-UTF-8 result.
pub fn percent_decode(segment: &str) -> Option<String> {
    if !segment.contains('%') {
        return Some(segment.to_owned());
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hi = (hex[0] as char).to_digit(16)?;
            let lo = (hex[1] as char).to_digit(16)?;
            out.push(u8::try_from(hi * 16 + lo).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_strictly() {
        assert!(UserId::parse("user-1").is_ok());
        assert!(UserId::parse("oauth/google:123").is_ok());
        assert_eq!(UserId::parse(""), Err(IdError::Empty));
        assert_eq!(UserId::parse("a b"), Err(IdError::BadChar));
        assert_eq!(UserId::parse("é"), Err(IdError::BadChar));
        assert_eq!(UserId::parse("a\n"), Err(IdError::BadChar));
        assert_eq!(UserId::parse(&"x".repeat(129)), Err(IdError::TooLong));
        assert!(UserId::parse(&"x".repeat(128)).is_ok());
    }

    #[test]
    fn ids_deserialize_through_parse() {
        assert!(serde_json::from_str::<TownId>("\"\"").is_err());
        assert_eq!(
            serde_json::from_str::<TownId>("\"t-1\"").unwrap().as_str(),
            "t-1"
        );
    }

    #[test]
    fn uuid_has_version_and_variant() {
        let id = uuid_v4([0xff; 16]);
        assert_eq!(id, "ffffffff-ffff-4fff-bfff-ffffffffffff");
        let id = uuid_v4([0; 16]);
        assert_eq!(id, "00000000-0000-4000-8000-000000000000");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("abc").as_deref(), Some("abc"));
        assert_eq!(percent_decode("a%2Fb").as_deref(), Some("a/b"));
        assert_eq!(percent_decode("a%2").as_deref(), None);
        assert_eq!(percent_decode("a%zz").as_deref(), None);
        assert_eq!(percent_decode("%ff").as_deref(), None);
    }
}
