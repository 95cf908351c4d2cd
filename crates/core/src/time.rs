//! Time as the caller gives it. wasm32 has no system clock, so every function that needs "now"
//! takes it as milliseconds since the Unix epoch (`worker::Date::now().as_millis()` in the worker).

use chrono::{DateTime, SecondsFormat};

/// Milliseconds since the Unix epoch.
pub type Millis = u64;

/// RFC 3339 with millisecond precision and a `Z`, the format of every `*_at` field.
pub fn rfc3339(ms: Millis) -> String {
    let ms = i64::try_from(ms).unwrap_or(i64::MAX);
    DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_utc_millis() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            super::rfc3339(1_763_876_000_123),
            "2025-11-23T05:33:20.123Z"
        );
    }
}
