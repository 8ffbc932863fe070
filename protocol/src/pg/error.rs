//! What can be wrong with bytes a peer sent.

/// A malformed, oversized or unsupported packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A startup packet longer than [`crate::pg::startup::MAX_STARTUP_LEN`].
    #[error("startup packet of {len} bytes is too large")]
    StartupTooLarge {
        /// Declared length.
        len: u32,
    },
    /// A startup packet shorter than its own header.
    #[error("startup packet of {len} bytes is too short")]
    StartupTooShort {
        /// Declared length.
        len: u32,
    },
    /// A startup code that is neither a protocol version nor a known request.
    #[error("unknown startup request code {code}")]
    UnknownStartupCode {
        /// The code as sent.
        code: u32,
    },
    /// A protocol version other than 3.x.
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0")]
    UnsupportedVersion {
        /// Major version.
        major: u16,
        /// Minor version.
        minor: u16,
    },
    /// A message longer than this point of the conversation allows.
    #[error("message '{}' of {len} bytes exceeds the limit of {max}", char::from(*tag))]
    MessageTooLarge {
        /// Message type byte.
        tag: u8,
        /// Declared length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A length field below 4.
    #[error("message '{}' has an invalid length {len}", char::from(*tag))]
    BadLength {
        /// Message type byte.
        tag: u8,
        /// Declared length.
        len: i64,
    },
    /// A message whose body does not have the expected shape.
    #[error("malformed {what}")]
    Malformed {
        /// What was being read.
        what: &'static str,
    },
}

impl ProtocolError {
    /// Short stable label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ProtocolError::StartupTooLarge { .. } => "startup_too_large",
            ProtocolError::StartupTooShort { .. } => "startup_too_short",
            ProtocolError::UnknownStartupCode { .. } => "unknown_startup_code",
            ProtocolError::UnsupportedVersion { .. } => "unsupported_version",
            ProtocolError::MessageTooLarge { .. } => "message_too_large",
            ProtocolError::BadLength { .. } => "bad_length",
            ProtocolError::Malformed { .. } => "malformed",
        }
    }
}
