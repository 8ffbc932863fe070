//! End-to-end tests: the real `portcullis` binary against a throwaway
//! PostgreSQL 15 cluster, driven by the CLI, psql, pgbench, tokio-postgres
//! and raw sockets. See harness/ for how the pieces are started.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::large_enum_variant
)]

mod harness;

mod audit;
mod audit_workflow;
mod bad_input;
mod config;
mod driver;
mod enforcement;
mod metrics;
mod notifications;
mod pool;
mod psql;
mod refusals;
mod secrets;
mod slack;
mod split;
mod ssh;
mod ssh_audit;
mod ssh_evasion;
mod ssh_file_audit;
mod ssh_forwarding;
mod ssh_input;
mod ssh_pty;
mod ssh_recording;
mod ssh_transfer;
mod statement_names;
mod statements;
mod store;
mod workflow;
mod workflow_rules;
