//! The seam through which the control plane lists and ends live sessions
//! without depending on the proxy that holds them.

use serde::{Deserialize, Serialize};

use crate::feed::UnixMillis;

/// A live proxied session, as `portcullis sessions` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// Session id, e.g. `ses_3f9a1c2b7d4e`.
    pub id: String,
    /// Engineer.
    pub user: String,
    /// Resource name.
    pub resource: String,
    /// Role in use.
    pub role: String,
    /// `postgres` or `ssh`.
    pub protocol: String,
    /// The grant that admits it.
    pub grant_id: String,
    /// When the session started.
    pub started_at: UnixMillis,
    /// Bytes from the engineer's client.
    pub bytes_in: u64,
    /// Bytes to the engineer's client.
    pub bytes_out: u64,
}

/// Implemented by whatever holds live sessions (the proxy, or later a set of remote proxies).
pub trait SessionDirectory: Send + Sync {
    /// Live sessions, in start order.
    fn list(&self) -> Vec<SessionInfo>;
    /// Ends one session; `false` when no live session has that id.
    fn kill(&self, id: &str, by: &str) -> bool;
}
