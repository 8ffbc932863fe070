//! PostgreSQL wire protocol v3, sans-I/O: framing, the startup packet, the
//! messages the proxy writes itself, the few it must read, and the
//! statement tracker audit records are made from.

pub mod backend;
pub mod boundary;
pub mod capture;
pub mod error;
pub mod frontend;
pub mod message;
pub mod startup;
pub mod statements;
