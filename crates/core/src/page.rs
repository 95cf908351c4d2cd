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

/// An `after=` position in a log numbered from 1: a whole number JSON can carry exactly.
///
/// # Errors
/// 422 naming `after`, with `message`.
pub fn seq_after(value: &str, message: &str) -> Result<u64, ApiError> {
    value
        .parse::<u64>()
        .ok()
        .filter(|n| *n < (1 << 53))
        .ok_or_else(|| ApiError::invalid("after", message))
}

/// Default and largest page of a log paged by sequence number.
pub const DEFAULT_SEQ_LIMIT: u32 = 100;
pub const MAX_SEQ_LIMIT: u32 = 500;

/// `?after=<seq>&limit=N` of a log paged by sequence number (the mayor's transcript, an
/// agent's events): the entries after `after`, oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqPage {
    pub after: u64,
    pub limit: u32,
}

impl SeqPage {
    /// # Errors
    /// 422 naming `after` or `limit`.
    pub fn parse(query: Option<&str>) -> Result<SeqPage, ApiError> {
        let mut page = SeqPage {
            after: 0,
            limit: DEFAULT_SEQ_LIMIT,
        };
        for (key, value) in query_pairs(query) {
            match key {
                "after" => page.after = seq_after(value, "must be the seq of a message")?,
                "limit" => {
                    page.limit = value
                        .parse::<u32>()
                        .ok()
                        .filter(|n| (1..=MAX_SEQ_LIMIT).contains(n))
                        .ok_or_else(|| {
                            ApiError::invalid(
                                "limit",
                                format!("must be a whole number from 1 to {MAX_SEQ_LIMIT}"),
                            )
                        })?;
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
    fn seq_pages() {
        assert_eq!(
            SeqPage::parse(Some("after=12&limit=3")).unwrap(),
            SeqPage {
                after: 12,
                limit: 3
            }
        );
        assert_eq!(SeqPage::parse(None).unwrap().limit, DEFAULT_SEQ_LIMIT);
        for bad in [
            "after=-1",
            "after=x",
            "limit=0",
            "limit=501",
            "after=9007199254740993",
        ] {
            assert!(SeqPage::parse(Some(bad)).is_err(), "{bad}");
        }
    }

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
