//! The SSH side of the proxy. The life of a connection, in file order:
//! `listener` accepts and runs russh's server with `handler`, which checks
//! the engineer's key (`auth`), reads the target from the login name
//! (`target`) and asks `admission`; `conn` holds the session and its
//! enforcer; `bridge` joins each channel to one on the real server, reached
//! through `upstream`. `refusal` words every "no"; `keys` loads and makes keys.

pub mod admission;
pub mod auth;
pub mod bridge;
pub mod conn;
pub mod handler;
pub mod keys;
pub mod listener;
pub mod refusal;
pub mod target;
pub mod upstream;
