//! Errors. `ControlError` is what an operator sees (opening the store, bad
//! settings, internal faults); `ApiError` (`api`) is what the person calling
//! the API sees, each variant with its HTTP status and a sentence they can
//! act on.

use std::path::PathBuf;
use std::time::Duration;

use portcullis_protocol::duration;

use crate::store::DbError;

mod api;

pub use api::ApiError;

/// A fault of the control plane itself; `Display` is the operator's sentence.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The data directory could not be created.
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The store could not be opened or set up.
    #[error("cannot open the store at {store}: {source}")]
    Open {
        /// The database file, or the server's URL without its password.
        store: String,
        /// Why.
        source: DbError,
    },
    /// The store was written by a newer Portcullis.
    #[error(
        "the store at {path} has schema version {found}, newer than the {known} this portcullis knows; run a newer portcullis"
    )]
    SchemaTooNew {
        /// The database file, or the server's URL without its password.
        path: String,
        /// Version found in `schema_migrations`.
        found: i64,
        /// Highest version this build knows.
        known: i64,
    },
    /// A schema migration failed (and was rolled back).
    #[error("store migration {version} ({name}) failed: {source}")]
    Migration {
        /// Migration number.
        version: i64,
        /// What it does.
        name: &'static str,
        /// Why it failed.
        source: DbError,
    },
    /// A store query failed.
    #[error("store error: {0}")]
    Store(#[from] DbError),
    /// Two resources share a name.
    #[error("resource {name} is defined twice")]
    DuplicateResource {
        /// The name.
        name: String,
    },
    /// A resource has no roles.
    #[error("resource {resource} has no roles")]
    NoRoles {
        /// The resource.
        resource: String,
    },
    /// `approvals_required` is 0.
    #[error("resource {resource}: approvals_required must be 1 or more")]
    NoApprovals {
        /// The resource.
        resource: String,
    },
    /// `default_duration` is longer than `max_duration`.
    #[error("resource {resource}: default_duration {} is longer than max_duration {}", duration::format(*.default), duration::format(*.max))]
    DefaultOverMax {
        /// The resource.
        resource: String,
        /// Its default.
        default: Duration,
        /// Its max.
        max: Duration,
    },
    /// `min_duration` is longer than `max_duration`.
    #[error("resource {resource}: min_duration {} is longer than max_duration {}", duration::format(*.min), duration::format(*.max))]
    MinOverMax {
        /// The resource.
        resource: String,
        /// Its min.
        min: Duration,
        /// Its max.
        max: Duration,
    },
    /// Escalation steps whose `after` does not grow.
    #[error("resource {resource}: escalation steps must be listed with growing `after` times")]
    EscalationOrder {
        /// The resource.
        resource: String,
    },
    /// A reason pattern is not a valid regular expression.
    #[error("resource {resource}: reason pattern \"{pattern}\" is not a valid regular expression: {error}")]
    BadReasonPattern {
        /// The resource.
        resource: String,
        /// The pattern.
        pattern: String,
        /// What the regex parser said.
        error: String,
    },
    /// `admin.token` exists but the store has no users.
    #[error(
        "{path} already exists but the store has no users; move it away (or restore the store) so a new admin token can be written"
    )]
    StaleAdminToken {
        /// The token file.
        path: PathBuf,
    },
    /// `admin.token` could not be written.
    #[error("cannot write the admin token to {path}: {source}")]
    AdminToken {
        /// The token file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The system's random source failed.
    #[error("the system's random number source failed: {0}")]
    Random(getrandom::Error),
    /// A metric could not be registered.
    #[error("cannot register the control plane's metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// A blocking store task panicked or was cancelled.
    #[error("a store task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The audit log failed.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    /// Two notification destinations of one kind share a URL.
    #[error("notifications: two {kind} destinations have the same URL")]
    DuplicateDestination {
        /// `webhook` or `slack`.
        kind: &'static str,
    },
    /// A recording or its directory could not be read.
    #[error("cannot read the recordings in {path}: {source}")]
    Recordings {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP client for notifications could not be built.
    #[error("notifications: cannot set up the HTTP client: {0}")]
    HttpClient(reqwest::Error),
}
