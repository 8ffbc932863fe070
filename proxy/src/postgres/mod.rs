//! The Postgres side of the proxy. The life of a connection, in file order:
//! `listener` accepts, `startup` negotiates TLS and reads the startup packet,
//! `auth` runs SCRAM with the engineer, `admission` checks the grant,
//! `upstream` logs in to the real server, `relay` moves bytes while `enforce`
//! decides when the session must end. `refusal` turns every "no" into an
//! ErrorResponse; `cancel` routes CancelRequests to the right backend;
//! `pool` keeps server connections warm between sessions; `buffers` lends
//! read buffers only while bytes move.

pub mod admission;
pub mod auth;
pub mod buffers;
pub mod cancel;
pub mod io;
pub mod listener;
pub mod pool;
pub mod recorder;
pub mod refusal;
pub mod relay;
pub mod session;
pub mod startup;
pub mod stream;
pub mod upstream;
