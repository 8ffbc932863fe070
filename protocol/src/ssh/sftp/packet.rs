//! What the SFTP decoder hands out: the packets audit follows, the
//! attributes they set, the names audit gives status codes and open flags,
//! and the error that says a stream cannot be followed.

use std::fmt;

/// Which peer wrote the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The sftp client: requests.
    Client,
    /// The sftp server: responses.
    Server,
}

/// File attributes a request sets (`SSH_FILEXFER_ATTR_*`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attrs {
    /// New size.
    pub size: Option<u64>,
    /// New owner and group.
    pub owner: Option<(u32, u32)>,
    /// New permission bits.
    pub mode: Option<u32>,
    /// New access and modification times (Unix seconds).
    pub times: Option<(u32, u32)>,
}

impl fmt::Display for Attrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(mode) = self.mode {
            parts.push(format!("mode={:04o}", mode & 0o7777));
        }
        if let Some((uid, gid)) = self.owner {
            parts.push(format!("uid={uid} gid={gid}"));
        }
        if let Some(size) = self.size {
            parts.push(format!("size={size}"));
        }
        if let Some((atime, mtime)) = self.times {
            parts.push(format!("atime={atime} mtime={mtime}"));
        }
        f.write_str(&parts.join(" "))
    }
}

/// One decoded packet: the requests and responses audit follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    /// Open a file.
    Open {
        /// Request id.
        id: u32,
        /// Path as sent.
        path: String,
        /// `SSH_FXF_*` flags.
        pflags: u32,
    },
    /// Close a handle.
    Close {
        /// Request id.
        id: u32,
        /// The handle.
        handle: Vec<u8>,
    },
    /// Read from a handle.
    Read {
        /// Request id.
        id: u32,
        /// The handle.
        handle: Vec<u8>,
    },
    /// Write to a handle.
    Write {
        /// Request id.
        id: u32,
        /// The handle.
        handle: Vec<u8>,
        /// Bytes of data carried (not kept).
        len: u64,
    },
    /// A request on one or two paths: remove, rename, mkdir, rmdir, setstat,
    /// symlink, opendir, stat, lstat, realpath, readlink, and OpenSSH's
    /// posix-rename, hardlink, lsetstat, statvfs and expand-path extensions.
    PathOp {
        /// Request id.
        id: u32,
        /// `remove`, `rename`, `mkdir`, `rmdir`, `setstat`, `symlink`,
        /// `hardlink`, `opendir`, `stat`, `lstat`, `realpath`, `readlink`, `statvfs`.
        op: &'static str,
        /// The path acted on (for symlink and hardlink: the new link).
        path: String,
        /// The second path: rename's new name, a link's target.
        to: Option<String>,
        /// Attributes set.
        attrs: Option<Attrs>,
    },
    /// OpenSSH's `copy-data` extension: bytes copied from one open handle
    /// to another by the server.
    CopyData {
        /// Request id.
        id: u32,
        /// The handle read from.
        from: Vec<u8>,
        /// The handle written to.
        to: Vec<u8>,
        /// Bytes asked for (0: up to the end of the file).
        len: u64,
    },
    /// An extension request audit knows nothing of: its name only.
    Extension {
        /// Request id.
        id: u32,
        /// The extension's name (cut to 256 characters).
        name: String,
    },
    /// A request that changes nothing and names no path audit keeps (a
    /// READDIR or FSTAT on a handle, an unknown type, a harmless
    /// extension): followed only so that its answer is matched to it.
    Request {
        /// Request id.
        id: u32,
    },
    /// Set attributes through a handle.
    FSetStat {
        /// Request id.
        id: u32,
        /// The handle.
        handle: Vec<u8>,
        /// Attributes set.
        attrs: Attrs,
    },
    /// The outcome of a request.
    Status {
        /// Request id.
        id: u32,
        /// `SSH_FX_*` code.
        code: u32,
        /// The server's message (cut to 256 characters).
        message: String,
    },
    /// A handle for an opened file.
    Handle {
        /// Request id.
        id: u32,
        /// The handle.
        handle: Vec<u8>,
    },
    /// Data read (not kept).
    Data {
        /// Request id.
        id: u32,
        /// Bytes of data carried.
        len: u64,
    },
    /// Any other answer (NAME, ATTRS, EXTENDED_REPLY): the request succeeded.
    Answer {
        /// Request id.
        id: u32,
    },
}

/// The stream cannot be followed any further; `why` says where it broke.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{why}")]
pub struct Garbled {
    /// What was wrong, without any of the stream's content.
    pub why: String,
}

pub(super) fn garbled(why: impl Into<String>) -> Garbled {
    Garbled { why: why.into() }
}

/// The name of an `SSH_FX_*` status code, as audit events spell it.
pub fn status_name(code: u32) -> String {
    match code {
        0 => "ok".into(),
        1 => "eof".into(),
        2 => "no_such_file".into(),
        3 => "permission_denied".into(),
        4 => "failure".into(),
        5 => "bad_message".into(),
        6 => "no_connection".into(),
        7 => "connection_lost".into(),
        8 => "op_unsupported".into(),
        n => format!("status_{n}"),
    }
}

/// The names of `SSH_FXF_*` open flags, comma-separated.
pub fn open_flags(pflags: u32) -> String {
    let names = [
        (0x01, "read"),
        (0x02, "write"),
        (0x04, "append"),
        (0x08, "create"),
        (0x10, "truncate"),
        (0x20, "exclusive"),
    ];
    let mut out: Vec<String> = names
        .iter()
        .filter(|(bit, _)| pflags & bit != 0)
        .map(|(_, name)| (*name).to_owned())
        .collect();
    let unknown = pflags & !0x3f;
    if unknown != 0 {
        out.push(format!("0x{unknown:x}"));
    }
    out.join(",")
}
