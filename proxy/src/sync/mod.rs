//! A proxy in split mode (`portcullis proxy`): how it follows its control
//! plane over the network. `follow.rs` keeps the grant table in sync from
//! the feed (snapshot, then the change stream, resuming from its cursor),
//! `contact.rs` decides staleness, `report.rs` sends the live-session list,
//! `ship.rs` delivers audit events, `client.rs` is the HTTP client that tries
//! each control URL in turn, `metrics.rs` the feed's metrics.

pub mod client;
pub mod contact;
pub mod follow;
pub mod metrics;
pub mod report;
pub mod ship;
