//! Route handlers, one module per resource. Each receives an already verified principal.

pub mod internal;
pub mod personal;
