//! `recordings` and `recording ID`: the asciicast recordings of interactive
//! SSH sessions (admins only). `recording ID` prints the cast itself, so
//! `portcullis recording ID > s.cast && asciinema play s.cast` works.

use std::io::{BufWriter, Write};

use super::client::{Api, seg};
use super::output::{cell, is_broken_pipe, print_list};

/// `recordings [--json]`.
pub async fn list(api: &Api, json: bool) -> anyhow::Result<()> {
    let value = api.get("/v1/recordings").await?;
    print_list(
        &value,
        json,
        &["ID", "SESSION", "USER", "RESOURCE", "ROLE", "STARTED", "SIZE"],
        |r| {
            vec![
                cell(r, "id"),
                cell(r, "session_id"),
                cell(r, "user"),
                cell(r, "resource"),
                cell(r, "role"),
                cell(r, "started_at"),
                cell(r, "size"),
            ]
        },
    )
}

/// `recording ID`: the asciicast v2 file on stdout, line by line as it arrives.
pub async fn show(api: &Api, id: &str) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let result = api
        .get_lines(&format!("/v1/recordings/{}", seg(id)), |line| {
            out.write_all(line)?;
            out.write_all(b"\n")?;
            Ok(())
        })
        .await
        .and_then(|()| out.flush().map_err(anyhow::Error::from));
    match result {
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}
