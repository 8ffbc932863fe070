//! The SSH side of the proxy. The life of a connection, in file order:
//! `listener` accepts and runs russh's server with `handler`, which checks
//! the engineer's key (`auth`), reads the target from the login name
//! (`target`) and asks `admission`; `conn` holds the session and its
//! enforcer; `bridge` joins each channel to one on the real server, reached
//! through `upstream`. `forward` carries `ssh -L` channels the role's `policy` allows;
//! `refusal` words every "no"; `keys` loads and makes keys; `wire` is the
//! stream under russh (the version line, and the stop of a stalled handshake).
//! What each channel does is audited by `channel_audit` (exec commands; sftp
//! through `sftp_audit`; pty output through `recording`).

pub mod admission;
pub mod auth;
pub mod bridge;
pub mod channel_audit;
pub mod conn;
pub mod forward;
pub mod handler;
pub mod keys;
pub mod listener;
pub mod policy;
pub mod recording;
pub mod refusal;
pub mod sftp_audit;
pub mod target;
pub mod upstream;
pub mod wire;
