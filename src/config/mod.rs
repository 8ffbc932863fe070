//! The YAML config file: its shape (as in DESIGN.md), loading with errors
//! that name the file, line and what was expected, and the split into what
//! the control plane and the proxy each need.

mod convert;
mod notifications;
mod schema;

pub use convert::{control_plane, proxy_link, proxy_settings};
pub use schema::{Config, TlsFiles};

use std::path::Path;

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// YAML syntax, an unknown key or a bad value, with its position.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        /// File.
        path: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What was wrong and what was expected.
        message: String,
    },
    /// A value that parses but cannot work (e.g. a missing secret).
    #[error("{path}: {message}")]
    Invalid {
        /// File.
        path: String,
        /// What is wrong, naming the key.
        message: String,
    },
}

/// Reads and checks `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: shown.clone(),
        source,
    })?;
    parse(&text, &shown)
}

/// Parses config text; `shown` names the file in errors.
pub fn parse(text: &str, shown: &str) -> Result<Config, ConfigError> {
    let config: Config = serde_norway::from_str(text).map_err(|e| {
        let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
        // serde_norway appends " at line N column M"; the prefix already says where.
        let message = e.to_string();
        let message = match message.rfind(" at line ") {
            Some(i) => message[..i].to_owned(),
            None => message,
        };
        ConfigError::Parse {
            path: shown.to_owned(),
            line,
            column,
            message,
        }
    })?;
    config.validate().map_err(|message| ConfigError::Invalid {
        path: shown.to_owned(),
        message,
    })?;
    Ok(config)
}

#[cfg(test)]
mod tests;
