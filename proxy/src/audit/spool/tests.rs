//! The spool on real files in a scratch directory.

use std::collections::HashSet;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use portcullis_protocol::audit::AuditEvent;

use super::{Limits, Spool};

mod shipper;

/// A directory removed after the test.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let hex = crate::random::hex(6).expect("random");
        Scratch(std::env::temp_dir().join(format!("portcullis-spool-{hex}")))
    }

    fn spool(&self) -> PathBuf {
        self.0.join("spool")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn event(i: u64) -> AuditEvent {
    let mut e = AuditEvent::new(
        format!("evt_{i:08}"),
        1_700_000_000_000 + i as i64,
        "statement",
        "alice",
    );
    e.session_id = Some("ses_1".into());
    e.detail.insert(
        "text".into(),
        format!("SELECT {i} -- {}", "x".repeat((i % 7) as usize * 10)),
    );
    e
}

fn events(range: std::ops::Range<u64>) -> Vec<AuditEvent> {
    range.map(event).collect()
}

fn ids(events: &[AuditEvent]) -> Vec<String> {
    events.iter().map(|e| e.id.clone()).collect()
}

fn small() -> Limits {
    Limits {
        max_bytes: 1 << 30,
        segment_bytes: 1024,
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    out.sort();
    out
}

/// Takes everything pending, acknowledging as it goes, `chunk` at a time.
fn drain(spool: &mut Spool, chunk: usize) -> Vec<AuditEvent> {
    let mut out = Vec::new();
    loop {
        let got = spool.peek(chunk, usize::MAX).expect("peek");
        if got.is_empty() {
            return out;
        }
        spool.ack(got.len()).expect("ack");
        out.extend(got);
    }
}

#[test]
fn events_come_back_in_order_across_segments() {
    let dir = Scratch::new();
    let mut spool = Spool::open(&dir.spool(), small()).expect("open");
    for chunk in events(0..100).chunks(7) {
        spool.append(chunk).expect("append");
    }
    assert_eq!(spool.depth(), 100);
    assert!(
        segments(&dir.spool()).len() > 5,
        "rotated: {:?}",
        segments(&dir.spool())
    );
    // Peeking does not remove; the same events come again until acknowledged.
    assert_eq!(ids(&spool.peek(3, usize::MAX).expect("peek")), ids(&events(0..3)));
    assert_eq!(ids(&spool.peek(3, usize::MAX).expect("peek")), ids(&events(0..3)));
    // Appends between a peek and its ack do not disturb it.
    spool.append(&events(100..110)).expect("append");
    spool.ack(2).expect("ack");
    assert_eq!(spool.depth(), 108);
    let rest = drain(&mut spool, 9);
    assert_eq!(ids(&rest), ids(&events(2..110)));
    assert_eq!((spool.depth(), spool.bytes()), (0, 0));
    assert!(spool.ack(1).is_err(), "nothing peeked is left to acknowledge");
}

#[test]
fn a_byte_budget_bounds_a_peek_but_one_event_always_comes() {
    let dir = Scratch::new();
    let mut spool = Spool::open(&dir.spool(), small()).expect("open");
    spool.append(&events(0..10)).expect("append");
    assert_eq!(spool.peek(10, 1).expect("peek").len(), 1);
    let one = serde_json::to_vec(&event(0)).expect("json").len();
    assert_eq!(
        spool.peek(10, one * 3).expect("peek").len(),
        2,
        "events 1 and 2 are larger than 0"
    );
}

#[test]
fn a_reopened_spool_holds_exactly_the_unacknowledged_events() {
    let dir = Scratch::new();
    {
        let mut spool = Spool::open(&dir.spool(), small()).expect("open");
        spool.append(&events(0..50)).expect("append");
        spool.append(&events(50..60)).expect("append");
        assert_eq!(spool.peek(20, usize::MAX).expect("peek").len(), 20);
        spool.ack(20).expect("ack");
        // Peeked but not acknowledged: these must come again.
        assert_eq!(spool.peek(5, usize::MAX).expect("peek").len(), 5);
    }
    let mut spool = Spool::open(&dir.spool(), small()).expect("reopen");
    assert_eq!(spool.depth(), 40);
    let bytes = spool.bytes();
    assert!(bytes > 0);
    assert_eq!(ids(&drain(&mut spool, 7)), ids(&events(20..60)));
    // And appending goes on where it was.
    spool.append(&events(60..61)).expect("append");
    drop(spool);
    let mut spool = Spool::open(&dir.spool(), small()).expect("reopen");
    assert_eq!(ids(&drain(&mut spool, 7)), ids(&events(60..61)));
}

#[test]
fn a_torn_last_record_is_cut_off_and_the_rest_survives() {
    let dir = Scratch::new();
    {
        let mut spool = Spool::open(&dir.spool(), Limits::default()).expect("open");
        for i in 0..10 {
            spool.append(&[event(i)]).expect("append");
        }
    }
    let segs = segments(&dir.spool());
    assert_eq!(segs.len(), 1);
    let last = &segs[0];
    let len = std::fs::metadata(last).expect("stat").len();
    // The crash came in the middle of the last record.
    std::fs::OpenOptions::new()
        .write(true)
        .open(last)
        .expect("open")
        .set_len(len - 5)
        .expect("truncate");
    let mut spool = Spool::open(&dir.spool(), Limits::default()).expect("reopen");
    assert_eq!(spool.depth(), 9);
    assert_eq!(
        damaged(&dir.spool()).len(),
        1,
        "the torn bytes are set aside, not deleted"
    );
    spool.append(&events(10..12)).expect("append");
    let mut want = ids(&events(0..9));
    want.extend(ids(&events(10..12)));
    assert_eq!(ids(&drain(&mut spool, 4)), want);
}

/// The `.damaged` files of a spool, with their sizes.
fn damaged(dir: &std::path::Path) -> Vec<u64> {
    std::fs::read_dir(dir)
        .expect("read_dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".damaged"))
        .map(|e| e.metadata().expect("stat").len())
        .collect()
}

/// Where each record of a segment file starts, and its size with its frame.
fn records(seg: &Path) -> Vec<(usize, usize)> {
    let bytes = std::fs::read(seg).expect("read");
    let mut out = Vec::new();
    let mut at = 8;
    while at < bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        out.push((at, 12 + len));
        at += 12 + len;
    }
    out
}

/// Flips one byte of `seg` at `at`.
fn flip(seg: &Path, at: usize) {
    let mut bytes = std::fs::read(seg).expect("read");
    bytes[at] ^= 0xff;
    std::fs::write(seg, &bytes).expect("write");
}

#[test]
fn a_damaged_record_early_in_the_newest_segment_costs_only_itself() {
    let dir = Scratch::new();
    {
        let mut spool = Spool::open(&dir.spool(), Limits::default()).expect("open");
        for i in 0..10 {
            spool.append(&[event(i)]).expect("append");
        }
    }
    let seg = segments(&dir.spool())[0].clone();
    let recs = records(&seg);
    // A byte of the first record's payload: no torn write looks like this,
    // and the nine records after it must not be set aside with it.
    flip(&seg, recs[0].0 + 20);
    let mut spool = Spool::open(&dir.spool(), Limits::default()).expect("reopen");
    assert_eq!(spool.depth(), 9);
    assert_eq!(
        damaged(&dir.spool()),
        [recs[0].1 as u64],
        "the damaged record alone is kept aside"
    );
    spool.append(&events(10..11)).expect("append");
    assert_eq!(ids(&drain(&mut spool, 4)), ids(&events(1..11)));
}

#[test]
fn damaged_records_before_or_after_the_cursor_cost_only_themselves() {
    let dir = Scratch::new();
    {
        let mut spool = Spool::open(&dir.spool(), Limits::default()).expect("open");
        spool.append(&events(0..10)).expect("append");
        assert_eq!(spool.peek(5, usize::MAX).expect("peek").len(), 5);
        spool.ack(5).expect("ack");
    }
    let seg = segments(&dir.spool())[0].clone();
    let recs = records(&seg);
    // The length of a delivered record, a byte of another, and one not
    // yet delivered.
    flip(&seg, recs[1].0 + 1);
    flip(&seg, recs[3].0 + 30);
    flip(&seg, recs[7].0 + 30);
    let mut want = ids(&events(5..7));
    want.extend(ids(&events(8..10)));
    for _ in 0..2 {
        let mut spool = Spool::open(&dir.spool(), Limits::default()).expect("reopen");
        assert_eq!(spool.depth(), 4);
        let undelivered = [5, 6, 8, 9].map(|i| recs[i].1 as u64);
        assert_eq!(spool.bytes(), undelivered.iter().sum::<u64>());
        assert_eq!(ids(&spool.peek(100, usize::MAX).expect("peek")), want);
    }
    assert_eq!(
        damaged(&dir.spool()).len(),
        3,
        "each damaged stretch is kept aside once, however often the spool opens"
    );
    let mut spool = Spool::open(&dir.spool(), Limits::default()).expect("reopen");
    assert_eq!(ids(&drain(&mut spool, 2)), want);
    assert_eq!((spool.depth(), spool.bytes()), (0, 0));
}

#[test]
fn a_segment_only_begun_when_the_crash_came_is_removed() {
    let dir = Scratch::new();
    {
        let mut spool = Spool::open(&dir.spool(), Limits::default()).expect("open");
        spool.append(&events(0..3)).expect("append");
    }
    // Its size reached the disk, its bytes did not.
    let begun = dir.spool().join(format!("{:020}.seg", 99));
    std::fs::write(&begun, [0u8; 16]).expect("write");
    let mut spool = Spool::open(&dir.spool(), Limits::default()).expect("reopen");
    assert!(!begun.exists());
    spool.append(&events(3..4)).expect("append");
    assert_eq!(ids(&drain(&mut spool, 10)), ids(&events(0..4)));
}

#[test]
fn garbage_after_the_last_record_is_never_read_as_an_event() {
    let dir = Scratch::new();
    let len;
    {
        let mut spool = Spool::open(&dir.spool(), Limits::default()).expect("open");
        spool.append(&events(0..10)).expect("append");
        len = std::fs::metadata(&segments(&dir.spool())[0]).expect("stat").len();
    }
    let last = segments(&dir.spool())[0].clone();
    for garbage in [
        &b"\x00\x00\x00\x05abcdefgh{\"id\""[..],
        &[0u8; 40][..],
        &b"\x00\x00\x10"[..],
    ] {
        let mut f = std::fs::OpenOptions::new().append(true).open(&last).expect("open");
        f.write_all(garbage).expect("write");
        drop(f);
        let mut spool = Spool::open(&dir.spool(), Limits::default()).expect("reopen");
        assert_eq!(spool.depth(), 10);
        assert_eq!(
            std::fs::metadata(&last).expect("stat").len(),
            len,
            "the tail is cut off"
        );
        assert_eq!(ids(&spool.peek(100, usize::MAX).expect("peek")), ids(&events(0..10)));
    }
}

#[test]
fn damage_inside_an_older_segment_is_set_aside_and_the_rest_delivered() {
    let dir = Scratch::new();
    {
        let mut spool = Spool::open(&dir.spool(), small()).expect("open");
        for i in 0..30 {
            spool.append(&[event(i)]).expect("append");
        }
    }
    let segs = segments(&dir.spool());
    assert!(segs.len() >= 3);
    // Flip a byte in the last record of the first segment.
    let mut bytes = std::fs::read(&segs[0]).expect("read");
    let at = bytes.len() - 3;
    bytes[at] ^= 0xff;
    std::fs::write(&segs[0], &bytes).expect("write");
    let mut spool = Spool::open(&dir.spool(), small()).expect("reopen");
    let got = drain(&mut spool, 100);
    let got: HashSet<String> = ids(&got).into_iter().collect();
    assert_eq!(got.len(), 29, "only the damaged record is missing");
    let aside: Vec<_> = std::fs::read_dir(dir.spool())
        .expect("read_dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".damaged"))
        .collect();
    assert_eq!(aside.len(), 1);
}

#[test]
fn acknowledging_deletes_finished_segments() {
    let dir = Scratch::new();
    let mut spool = Spool::open(&dir.spool(), small()).expect("open");
    for chunk in events(0..60).chunks(5) {
        spool.append(chunk).expect("append");
    }
    let before = segments(&dir.spool());
    assert!(before.len() >= 4, "{before:?}");
    let got = spool.peek(30, usize::MAX).expect("peek");
    spool.ack(got.len()).expect("ack");
    let after = segments(&dir.spool());
    assert!(after.len() < before.len(), "{before:?} -> {after:?}");
    assert!(!after.contains(&before[0]));
    drain(&mut spool, 100);
    // Everything acknowledged: at most the newest segment is kept, and the
    // next append past it starts afresh and lets it go.
    assert!(segments(&dir.spool()).len() <= 1);
    spool.append(&events(60..62)).expect("append");
    assert!(segments(&dir.spool()).len() <= 2);
}

#[test]
fn a_full_spool_refuses_whole_batches_until_events_are_acknowledged() {
    let dir = Scratch::new();
    let limits = Limits {
        max_bytes: 2000,
        segment_bytes: 1024,
    };
    let mut spool = Spool::open(&dir.spool(), limits).expect("open");
    // An empty spool takes any batch, so a large one can never wedge it.
    spool.append(&events(0..20)).expect("append");
    assert!(spool.bytes() > 2000 && spool.is_full());
    let err = spool.append(&events(20..21)).expect_err("full");
    assert_eq!(err.kind(), ErrorKind::StorageFull);
    assert_eq!(spool.depth(), 20, "nothing written");
    drain(&mut spool, 5);
    spool.append(&events(20..25)).expect("room again");
    assert_eq!(spool.depth(), 5);
    // Refusals survive a reopen: the bound is on what is pending.
    drop(spool);
    let mut spool = Spool::open(&dir.spool(), limits).expect("reopen");
    assert_eq!(ids(&drain(&mut spool, 3)), ids(&events(20..25)));
}

#[test]
fn the_spool_is_private_and_opened_by_one_at_a_time() {
    let dir = Scratch::new();
    let mut spool = Spool::open(&dir.spool(), small()).expect("open");
    spool.append(&events(0..40)).expect("append");
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&dir.spool()), 0o700);
    for entry in std::fs::read_dir(dir.spool()).expect("read_dir") {
        let path = entry.expect("entry").path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
    let err = Spool::open(&dir.spool(), small()).err().expect("locked");
    assert_eq!(err.kind(), ErrorKind::WouldBlock);
    drop(spool);
    Spool::open(&dir.spool(), small()).expect("free again");
}
