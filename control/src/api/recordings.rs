//! `/v1/recordings`: the asciicast v2 recordings of interactive SSH
//! sessions, which the proxy writes to `DATA_DIR/recordings` (see
//! `portcullis_protocol::ssh::recording`). Listed with who and where, and
//! fetched raw, ready for `asciinema play`. Admins only, like the audit log:
//! they hold everything an engineer's terminal showed.

use std::path::{Path, PathBuf};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use portcullis_protocol::ssh::recording::{CAST, META, RecordingMeta, valid_id};
use serde::Serialize;
use tokio::io::AsyncReadExt;

use crate::api::AppState;
use crate::api::extract::Caller;
use crate::error::{ApiError, ControlError};
use crate::model::User;
use crate::time;

/// Largest description file read (they are a few hundred bytes).
const MAX_META: u64 = 64 * 1024;
/// Bytes of a recording sent at a time.
const CHUNK: usize = 64 * 1024;

/// One recording, as the list shows it.
#[derive(Serialize)]
pub(crate) struct RecordingView {
    id: String,
    session_id: String,
    user: String,
    resource: String,
    role: String,
    started_at: String,
    size: u64,
}

/// Refuses anyone but an admin.
fn auditor(me: &User) -> Result<(), ApiError> {
    if me.admin {
        Ok(())
    } else {
        Err(ApiError::AdminOnly {
            action: "read session recordings",
        })
    }
}

fn io_error(path: &Path, source: std::io::Error) -> ApiError {
    ApiError::Internal(ControlError::Recordings {
        path: path.to_owned(),
        source,
    })
}

/// `GET /v1/recordings`: every recording, oldest first.
pub(crate) async fn list(
    State(state): State<AppState>,
    Caller(me): Caller,
) -> Result<Json<Vec<RecordingView>>, ApiError> {
    auditor(&me)?;
    let dir = state.recordings.as_ref().clone();
    let mut entries = match tokio::fs::read_dir(&dir).await {
        Ok(entries) => entries,
        // Nothing was recorded yet.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Json(Vec::new())),
        Err(e) => return Err(io_error(&dir, e)),
    };
    let mut out = Vec::new();
    while let Some(entry) = entries.next_entry().await.map_err(|e| io_error(&dir, e))? {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some(META) {
            continue;
        }
        // A description that cannot be read or parsed is skipped (and logged), not fatal to the list.
        match describe(&path).await {
            Ok(Some(view)) => out.push(view),
            Ok(None) => {}
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "recording description unreadable"),
        }
    }
    out.sort_by(|a, b| a.started_at.cmp(&b.started_at).then_with(|| a.id.cmp(&b.id)));
    Ok(Json(out))
}

/// The list entry of the description at `path`; `None` when its cast is gone.
async fn describe(path: &Path) -> std::io::Result<Option<RecordingView>> {
    let mut raw = Vec::new();
    tokio::fs::File::open(path)
        .await?
        .take(MAX_META)
        .read_to_end(&mut raw)
        .await?;
    let meta: RecordingMeta = serde_json::from_slice(&raw).map_err(std::io::Error::other)?;
    if !valid_id(&meta.id) {
        return Ok(None);
    }
    let size = match tokio::fs::metadata(cast_path(path.parent().unwrap_or(path), &meta.id)).await {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(Some(RecordingView {
        id: meta.id,
        session_id: meta.session_id,
        user: meta.user,
        resource: meta.resource,
        role: meta.role,
        started_at: time::rfc3339(meta.started_at),
        size,
    }))
}

fn cast_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.{CAST}"))
}

/// `GET /v1/recordings/{id}`: the asciicast file, streamed as it is on disk.
pub(crate) async fn get(
    State(state): State<AppState>,
    Caller(me): Caller,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    auditor(&me)?;
    // Only well-formed ids reach the file system: no `..`, no separators.
    let unknown = || ApiError::UnknownRecording { id: id.clone() };
    if !valid_id(&id) {
        return Err(unknown());
    }
    let path = cast_path(&state.recordings, &id);
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(unknown()),
        Err(e) => return Err(io_error(&path, e)),
    };
    let stream = futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; CHUNK];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-asciicast")],
        Body::from_stream(stream),
    )
        .into_response())
}
