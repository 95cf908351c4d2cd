//! Request bodies: size cap, JSON object parsing, and field extraction that names the field
//! in every 422. Nothing is written before a body has passed all of this.

use crate::error::ApiError;
use crate::text::{check_text, Lines};
use serde_json::{Map, Value};

/// Largest request body any route accepts.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Parses a body that must be one JSON object.
///
/// # Errors
/// 413 over [`MAX_BODY_BYTES`]; 400 `invalid_json` for anything that is not a JSON object.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if bytes.len() > MAX_BODY_BYTES {
        return Err(ApiError::PayloadTooLarge);
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::InvalidJson("body must be a JSON object".into())),
        Err(e) if e.is_eof() && bytes.iter().all(u8::is_ascii_whitespace) => Err(
            ApiError::InvalidJson("body is empty; a JSON object is required".into()),
        ),
        Err(e) => Err(ApiError::InvalidJson(format!(
            "body is not valid JSON (line {}, column {})",
            e.line(),
            e.column()
        ))),
    }
}

/// A serde_json error without the input it quotes (`invalid type: string "ghp_…"` would put a
/// secret in a log line): its category and position only.
pub fn json_error_summary(e: &serde_json::Error) -> String {
    let category = match e.classify() {
        serde_json::error::Category::Io => "io",
        serde_json::error::Category::Syntax => "syntax",
        serde_json::error::Category::Data => "data",
        serde_json::error::Category::Eof => "eof",
    };
    format!(
        "{category} error at line {} column {}",
        e.line(),
        e.column()
    )
}

/// Refuses a field the route does not know (422 naming it): a misspelt field is an error, not
/// silently ignored.
///
/// # Errors
/// 422 naming the first unknown field.
pub fn only_fields(map: &Map<String, Value>, allowed: &[&str]) -> Result<(), ApiError> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(unknown) => Err(ApiError::invalid(unknown.clone(), "is not a known field")),
        None => Ok(()),
    }
}

/// Typed, length-capped access to the fields of a JSON object.
pub struct Fields<'a>(pub &'a Map<String, Value>);

impl<'a> Fields<'a> {
    /// A string that must be present, non-blank after trimming, and at most `max` characters.
    ///
    /// # Errors
    /// 422 naming `name`.
    pub fn required_str(&self, name: &str, max: usize) -> Result<&'a str, ApiError> {
        self.optional_str(name, max)?
            .ok_or_else(|| ApiError::invalid(name, "is required"))
    }

    /// Like [`Fields::required_str`], but absent or `null` gives `None`.
    ///
    /// # Errors
    /// 422 naming `name`.
    pub fn optional_str(&self, name: &str, max: usize) -> Result<Option<&'a str>, ApiError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => {
                let s = s.trim();
                if s.is_empty() {
                    return Err(ApiError::invalid(name, "must not be blank"));
                }
                check_text(name, s, max, Lines::One)?;
                Ok(Some(s))
            }
            Some(_) => Err(ApiError::invalid(name, "must be a string")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_objects_are_bodies() {
        assert!(parse_object(br#"{"a":1}"#).is_ok());
        for bad in [
            &b""[..],
            b"  ",
            b"[]",
            b"null",
            b"\"x\"",
            b"{",
            b"{\"a\":}",
            b"\xff",
        ] {
            assert!(
                matches!(parse_object(bad), Err(ApiError::InvalidJson(_))),
                "{bad:?}"
            );
        }
        let big = format!(r#"{{"a":"{}"}}"#, "x".repeat(MAX_BODY_BYTES));
        assert_eq!(parse_object(big.as_bytes()), Err(ApiError::PayloadTooLarge));
    }

    #[test]
    fn field_errors_name_the_field() {
        let map =
            parse_object(br#"{"n":5,"s":"  ok  ","b":" ","l":"abcdef","c":"a\u0007","z":null}"#)
                .unwrap();
        let f = Fields(&map);
        assert_eq!(f.required_str("s", 10), Ok("ok"));
        assert_eq!(f.optional_str("z", 10), Ok(None));
        assert_eq!(f.optional_str("missing", 10), Ok(None));
        for (name, max) in [
            ("n", 10),
            ("b", 10),
            ("l", 5),
            ("c", 10),
            ("missing", 10),
            ("z", 10),
        ] {
            match f.required_str(name, max) {
                Err(ApiError::Invalid { field, .. }) => assert_eq!(field, name),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn json_error_summary_never_quotes_input() {
        let e = serde_json::from_str::<u32>(r#""ghp_secret_value""#).unwrap_err();
        assert!(
            e.to_string().contains("ghp_secret_value"),
            "serde_json itself quotes"
        );
        let summary = json_error_summary(&e);
        assert!(!summary.contains("ghp_"), "{summary}");
        assert!(summary.starts_with("data error at line 1"));
    }

    #[test]
    fn length_counts_characters_not_bytes() {
        let map = parse_object("{\"s\":\"ééé\"}".as_bytes()).unwrap();
        assert_eq!(Fields(&map).required_str("s", 3), Ok("ééé"));
    }
}
