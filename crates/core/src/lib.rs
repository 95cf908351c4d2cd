//! Pure logic of the Gastown control plane, compiled both for the worker (wasm32) and natively
//! for fast unit tests: token kinds and their verification, the route table, request validation,
//! the domain records, the internal requests the worker sends its Durable Objects, and the one
//! error type every failure becomes.
//!
//! Nothing here touches the Workers runtime. In particular nothing reads a clock: callers pass
//! `now` in, because wasm32 has no system clock and a hidden `SystemTime::now()` would panic there.

pub mod agent_settings;
pub mod auth;
pub mod authz;
pub mod beads;
pub mod body;
pub mod control;
pub mod error;
pub mod events;
pub mod ids;
pub mod integrations;
pub mod mayor;
pub mod model;
pub mod openapi;
pub mod page;
pub mod policy;
pub mod protocol;
pub mod refinery;
pub mod rig_patch;
pub mod routes;
pub mod schema;
pub mod sealed;
pub mod stream;
pub mod text;
pub mod time;
pub mod town_config;
pub mod transitions;
pub mod vocab;

pub use error::ApiError;
