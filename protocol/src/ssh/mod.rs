//! SSH-side wire formats the gateway reads for audit.

pub mod recording;
pub mod sftp;
