//! `gastown-standins`: what stands in, for local dev and tests, for what the town's container
//! talks to but Gastown does not own. None of it is part of the control server's library
//! (`gastown-control`), whose HTTP plumbing, HTTP client and command line it reuses.
//!
//! * [`gateway`]: the Kilo gateway (binary `gastown-gateway`), checking sandbox tokens as the
//!   real one must and recording who used which model. Never deployed, never in the image.
//! * [`demo_agent`]: a coding agent (binary `gastown-demo-agent`), the control server's default
//!   agent command, with the directives tests put in a bead's body (`[demo:hang]`,
//!   `[demo:crash]`). The image ships it until a real agent runtime replaces it.

pub mod demo_agent;
pub mod gateway;
pub mod script;
