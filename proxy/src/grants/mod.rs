//! The proxy's view of grants: an in-memory table fed by the control plane's
//! feed, and the pure admission check run for every new session.

pub mod check;
pub mod table;
pub mod wording;
