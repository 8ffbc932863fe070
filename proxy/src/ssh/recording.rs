//! Recording of an interactive (pty) channel in asciicast v2: a header line,
//! then `[seconds, "o", text]` for what the server printed and `[seconds,
//! "r", "COLSxROWS"]` for window changes. The engineer's keystrokes are not
//! recorded: they include passwords typed at prompts (a terminal echoes
//! what should be seen). A writer thread of its own does the file work,
//! fed through a bounded queue.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use portcullis_protocol::feed::UnixMillis;
use portcullis_protocol::ssh::recording::{CAST, DIR, META, RecordingMeta};
use tokio::sync::mpsc;

/// Output chunks waiting for the writer. When the disk falls behind, the
/// pump that feeds this queue waits for room, which slows that session's
/// output and only its (the same choice as the audit queue): nothing is
/// dropped, and memory stays bounded at this many chunks (each at most one
/// SSH packet, ~32 KiB) per recorded channel.
const QUEUE: usize = 256;

/// What the pumps hand to the writer.
enum Frame {
    Output(Duration, Bytes),
    Resize(Duration, u32, u32),
}

/// A recording in progress; dropping it ends the file.
pub struct Recorder {
    tx: mpsc::Sender<Frame>,
    began: Instant,
}

/// The terminal a recording starts with.
pub struct Screen {
    /// `TERM`.
    pub term: String,
    /// Columns.
    pub width: u32,
    /// Rows.
    pub height: u32,
}

impl Recorder {
    /// Creates `DATA_DIR/recordings/ID.cast` (mode 0600, directory 0700)
    /// and its description, and starts the writer.
    pub fn start(data_dir: &Path, meta: &RecordingMeta, screen: &Screen) -> std::io::Result<Recorder> {
        let dir = data_dir.join(DIR);
        DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        let description = serde_json::to_vec(meta).map_err(std::io::Error::other)?;
        private_file(&dir.join(format!("{}.{META}", meta.id)))?.write_all(&description)?;
        let mut out = BufWriter::new(private_file(&dir.join(format!("{}.{CAST}", meta.id)))?);
        out.write_all(header(meta.started_at, screen).as_bytes())?;
        out.flush()?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let id = meta.id.clone();
        std::thread::Builder::new()
            .name("portcullis-rec".into())
            .spawn(move || write_all(rx, out, &id))?;
        Ok(Recorder {
            tx,
            began: Instant::now(),
        })
    }

    /// Records server output (a cheap clone of the relayed buffer, no copy).
    pub async fn output(&self, data: &Bytes) {
        let _ = self.tx.send(Frame::Output(self.began.elapsed(), data.clone())).await;
    }

    /// Records a window change.
    pub async fn resize(&self, cols: u32, rows: u32) {
        let _ = self.tx.send(Frame::Resize(self.began.elapsed(), cols, rows)).await;
    }
}

fn private_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)
}

/// The asciicast v2 header line.
fn header(started_at: UnixMillis, screen: &Screen) -> String {
    let header = serde_json::json!({
        "version": 2,
        "width": screen.width,
        "height": screen.height,
        "timestamp": started_at / 1000,
        "env": { "TERM": screen.term },
    });
    format!("{header}\n")
}

/// The writer thread: one line per frame, flushed whenever the queue runs
/// dry. A write error stops the file (logged once) but the queue is still
/// drained, so the session never waits on a broken disk.
fn write_all(mut rx: mpsc::Receiver<Frame>, mut out: BufWriter<File>, id: &str) {
    let mut text = Utf8Carry::default();
    let mut failed = false;
    while let Some(frame) = rx.blocking_recv() {
        if failed {
            continue;
        }
        let line = match frame {
            Frame::Output(at, data) => event_line(at, "o", &text.decode(&data)),
            Frame::Resize(at, cols, rows) => event_line(at, "r", &format!("{cols}x{rows}")),
        };
        let mut written = out.write_all(line.as_bytes());
        if written.is_ok() && rx.is_empty() {
            written = out.flush();
        }
        if let Err(e) = written {
            tracing::warn!(recording = id, error = %e, "recording stopped: cannot write");
            failed = true;
        }
    }
    let _ = out.flush();
}

/// `[seconds, "code", "data"]` and a newline.
fn event_line(at: Duration, code: &str, data: &str) -> String {
    let data = serde_json::Value::from(data);
    format!("[{:.6}, \"{code}\", {data}]\n", at.as_secs_f64())
}

/// Output split inside a UTF-8 character keeps its start for the next chunk,
/// so a character is never turned into replacement marks by a packet boundary.
#[derive(Default)]
struct Utf8Carry {
    tail: Vec<u8>,
}

impl Utf8Carry {
    fn decode(&mut self, data: &[u8]) -> String {
        let mut bytes = std::mem::take(&mut self.tail);
        bytes.extend_from_slice(data);
        let keep = incomplete_tail(&bytes);
        self.tail = bytes.split_off(bytes.len() - keep);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// How many bytes at the end start a UTF-8 character not yet complete.
fn incomplete_tail(b: &[u8]) -> usize {
    for back in 1..=b.len().min(3) {
        let Some(&c) = b.get(b.len() - back) else { break };
        if c & 0xc0 == 0x80 {
            continue; // a continuation byte: look further back for the lead
        }
        let need = match c {
            0xf0..=0xf7 => 4,
            0xe0..=0xef => 3,
            0xc0..=0xdf => 2,
            _ => 1,
        };
        return if need > back { back } else { 0 };
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_split_across_chunks_survive() {
        let mut t = Utf8Carry::default();
        let s = "é€😀".as_bytes();
        let mut out = String::new();
        for chunk in s.chunks(1) {
            out.push_str(&t.decode(chunk));
        }
        assert_eq!(out, "é€😀");
        assert_eq!(t.decode(b"\xff"), "\u{fffd}", "invalid bytes are replaced, not held");
    }

    #[test]
    fn lines_are_asciicast_v2() {
        let screen = Screen {
            term: "xterm".into(),
            width: 80,
            height: 24,
        };
        let h: serde_json::Value = serde_json::from_str(&header(1_700_000_000_123, &screen)).expect("json");
        assert_eq!(
            h,
            serde_json::json!({"version": 2, "width": 80, "height": 24, "timestamp": 1_700_000_000u64, "env": {"TERM": "xterm"}})
        );
        let line = event_line(Duration::from_millis(1500), "o", "a\"\r\n");
        assert_eq!(line, "[1.500000, \"o\", \"a\\\"\\r\\n\"]\n");
    }

    #[tokio::test]
    async fn a_recording_is_written_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("portcullis-rec-{}", crate::random::hex(6).expect("random")));
        std::fs::create_dir(&dir).expect("mkdir");
        let dir = Scratch(dir);
        let meta = RecordingMeta {
            id: "ses_01".into(),
            session_id: "ses_01".into(),
            user: "alice".into(),
            resource: "web1".into(),
            role: "deploy".into(),
            started_at: 0,
        };
        let screen = Screen {
            term: "xterm".into(),
            width: 80,
            height: 24,
        };
        let r = Recorder::start(dir.path(), &meta, &screen).expect("start");
        r.output(&Bytes::from_static(b"hello")).await;
        r.resize(100, 30).await;
        drop(r);
        let path = dir.path().join("recordings/ses_01.cast");
        let mut text = String::new();
        for _ in 0..100 {
            text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[1].ends_with(", \"o\", \"hello\"]"), "{text}");
        assert!(lines[2].ends_with(", \"r\", \"100x30\"]"), "{text}");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("recordings")), 0o700);
        assert_eq!(mode(&dir.path().join("recordings/ses_01.json")), 0o600);
    }

    /// A directory removed after the test.
    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
