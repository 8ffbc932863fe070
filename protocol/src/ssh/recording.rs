//! Where recordings of interactive SSH sessions live and what describes
//! them, shared by the proxy that writes them and the API that lists them:
//! `DATA_DIR/recordings/ID.cast` (asciicast v2) beside `ID.json` (a
//! [`RecordingMeta`]). `ID` is the session id, with `.N` for the session's
//! N-th pty channel after its first.

use serde::{Deserialize, Serialize};

use crate::feed::UnixMillis;

/// The directory under `data_dir`.
pub const DIR: &str = "recordings";
/// Extension of the asciicast file.
pub const CAST: &str = "cast";
/// Extension of the description beside it.
pub const META: &str = "json";

/// Who and what a recording is of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordingMeta {
    /// The recording's id (its file name without extension).
    pub id: String,
    /// The session it belongs to.
    pub session_id: String,
    /// The engineer.
    pub user: String,
    /// Resource name.
    pub resource: String,
    /// Role name.
    pub role: String,
    /// When recording began.
    pub started_at: UnixMillis,
}

/// The id of the `n`-th pty channel's recording (from 1) in `session_id`.
pub fn recording_id(session_id: &str, n: u32) -> String {
    if n <= 1 {
        session_id.to_owned()
    } else {
        format!("{session_id}.{n}")
    }
}

/// Whether `id` is a recording id (and so a safe file name): `ses_` and hex
/// digits, optionally `.` and a number. Nothing else reaches the file system.
pub fn valid_id(id: &str) -> bool {
    let (session, n) = match id.split_once('.') {
        Some((s, n)) => (s, Some(n)),
        None => (id, None),
    };
    let hex = session
        .strip_prefix("ses_")
        .is_some_and(|h| !h.is_empty() && h.len() <= 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    let number = n.is_none_or(|n| !n.is_empty() && n.len() <= 9 && n.bytes().all(|b| b.is_ascii_digit()));
    hex && number
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_session_ids_are_recording_ids() {
        assert!(valid_id("ses_0123abcdef01"));
        assert!(valid_id(&recording_id("ses_0a", 2)));
        assert_eq!(recording_id("ses_0a", 1), "ses_0a");
        for bad in [
            "",
            "ses_",
            "../x",
            "ses_0a/../../etc",
            "ses_0a.",
            "ses_0a.x",
            "ses_zz",
            "x_01",
        ] {
            assert!(!valid_id(bad), "{bad}");
        }
    }
}
