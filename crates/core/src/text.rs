//! The one check of free text a request may store: at most so many characters (not bytes), and
//! printable. Whether a text may be blank, or must be trimmed, is the caller's rule; the 422s
//! here name the field and are the same wherever a text is checked.

use crate::error::ApiError;

/// Which control characters a text may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lines {
    /// One line: no control character at all.
    One,
    /// Prose: newlines, carriage returns and tabs, and no other control character.
    Many,
}

/// Checks that `text` has at most `max` characters and no control character but those `lines`
/// allows.
///
/// # Errors
/// 422 naming `field`: `must be at most {max} characters`, else `must not contain control
/// characters`.
pub fn check_text(field: &str, text: &str, max: usize, lines: Lines) -> Result<(), ApiError> {
    if text.chars().count() > max {
        return Err(ApiError::invalid(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    let refused =
        |c: char| c.is_control() && !(lines == Lines::Many && matches!(c, '\n' | '\t' | '\r'));
    if text.chars().any(refused) {
        return Err(ApiError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(r: Result<(), ApiError>) -> Option<String> {
        match r {
            Ok(()) => None,
            Err(ApiError::Invalid { field, message }) => {
                assert_eq!(field, "f");
                Some(message)
            }
            Err(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn length_counts_characters_not_bytes() {
        assert_eq!(message(check_text("f", "ééé", 3, Lines::One)), None);
        assert_eq!(
            message(check_text("f", "éééé", 3, Lines::One)).as_deref(),
            Some("must be at most 3 characters")
        );
        assert_eq!(message(check_text("f", "", 3, Lines::One)), None);
    }

    #[test]
    fn prose_keeps_its_layout_and_nothing_else() {
        for (text, one, many) in [
            ("a b", true, true),
            ("a\nb", false, true),
            ("a\r\nb\tc", false, true),
            ("a\u{7}b", false, false),
            ("a\u{0}b", false, false),
            ("a\u{85}b", false, false),
            ("a\u{1b}[31m", false, false),
        ] {
            for (lines, ok) in [(Lines::One, one), (Lines::Many, many)] {
                let got = message(check_text("f", text, 100, lines));
                if ok {
                    assert_eq!(got, None, "{text:?} {lines:?}");
                } else {
                    assert_eq!(
                        got.as_deref(),
                        Some("must not contain control characters"),
                        "{text:?} {lines:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn length_is_reported_before_control_characters() {
        assert_eq!(
            message(check_text("f", "\u{7}\u{7}", 1, Lines::One)).as_deref(),
            Some("must be at most 1 characters")
        );
    }
}
