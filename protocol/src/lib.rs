//! Sans-I/O wire formats for Portcullis: PostgreSQL frontend/backend messages,
//! SCRAM-SHA-256, durations, the grant feed types that `control` publishes
//! and `proxy` follows, and audit events with their tamper-evident chain. No sockets and no async runtime live here.
#![forbid(unsafe_code)]

pub mod audit;
pub mod duration;
pub mod feed;
pub mod pg;
pub mod scram;
pub mod secret;
pub mod sessions;
pub mod ssh;
