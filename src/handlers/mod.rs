//! Route handlers. Each receives a principal the router has already verified and authorised.
//!
//! - `owned`: towns and rigs through their owner DO, the same code for personal and org routes.
//! - `town`: `/api/towns/:townId/...`, for whoever the town's ownership allows.
//! - `container`: routes the town's agents call with the container token.
//! - `internal`: operator and service routes.
//! - `integrations`: GitHub / GitLab connect flows, repositories, git tokens, the webhook.

pub mod container;
pub mod integrations;
pub mod internal;
pub mod owned;
pub mod town;
