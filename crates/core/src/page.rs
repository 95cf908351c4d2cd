//! Pagination of list routes: `?limit=N&after=<id>`, oldest first. The DO answers from an index
//! on creation order, so a page costs the same however many rows the owner has.

use crate::error::ApiError;
use crate::ids::percent_decode;
use serde::{Deserialize, Serialize};

pub const DEFAULT_LIMIT: u32 = 500;
pub const MAX_LIMIT: u32 = 500;

/// One page request: at most `limit` rows created after the row `after`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    pub limit: u32,
    #[serde(default)]
    pub after: Option<String>,
}

impl Default for Page {
    fn default() -> Self {
        Page {
            limit: DEFAULT_LIMIT,
            after: None,
        }
    }
}

/// The `key=value` pairs of a query string (without `?`), values still percent-encoded; a
/// pair without `=` has an empty value, empty pairs are skipped.
pub fn query_pairs(query: Option<&str>) -> impl Iterator<Item = (&str, &str)> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

impl Page {
    /// Parses the query string (without `?`). Unknown parameters are ignored.
    ///
    /// # Errors
    /// 422 naming `limit` or `after` when either is malformed.
    pub fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let mut page = Page::default();
        for (key, value) in query_pairs(query) {
            match key {
                "limit" => {
                    page.limit = value
                        .parse::<u32>()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| {
                            ApiError::invalid(
                                "limit",
                                format!("must be a whole number from 1 to {MAX_LIMIT}"),
                            )
                        })?;
                }
                "after" => {
                    let id = percent_decode(value)
                        .filter(|v| crate::ids::TownId::parse(v).is_ok())
                        .ok_or_else(|| {
                            ApiError::invalid("after", "must be an id from the previous page")
                        })?;
                    page.after = Some(id);
                }
                _ => {}
            }
        }
        Ok(page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_limit_and_after() {
        assert_eq!(Page::parse(None).unwrap(), Page::default());
        assert_eq!(Page::parse(Some("")).unwrap(), Page::default());
        let p = Page::parse(Some("limit=50&after=t-1&x=y")).unwrap();
        assert_eq!((p.limit, p.after.as_deref()), (50, Some("t-1")));
        for bad in [
            "limit=0",
            "limit=501",
            "limit=x",
            "limit=",
            "limit=-1",
            "after=",
            "after=a%20b",
        ] {
            assert!(
                matches!(Page::parse(Some(bad)), Err(ApiError::Invalid { .. })),
                "{bad}"
            );
        }
    }
}
