//! Message framing on the server-to-client stream, in bytes per second.
//!
//! Two ways the proxy reads the same backend bytes:
//! - `parse_message` splits whole messages off a buffer (the handshake and
//!   the upstream login read this way);
//! - `Boundary` only follows message ends in the relayed stream, fed in 8 KiB
//!   chunks the way a socket read hands them over, so notices and the final
//!   FATAL can be slipped in between messages. It runs on every byte a
//!   session relays, so its cost is a floor under the relay's own. Measured
//!   bare (`advance`) and as the relay calls it on the server's bytes
//!   (`advance_with`, counting ReadyForQuery).
//!
//! Two shapes of traffic, 67 KiB and 112 KiB of real backend messages built
//! with `encode`: many one-row results (pgbench `-S`: RowDescription, DataRow,
//! CommandComplete, ReadyForQuery, over and over) and one 1,000-row result of
//! `select * from pgbench_accounts` (RowDescription, DataRow x 1000,
//! CommandComplete, ReadyForQuery).
//!
//! `statements/tracker` is the audit's statement tracker on one extended-
//! protocol round trip (Parse, Bind with two parameters, Execute, Sync and
//! their answers), whole messages handed over as the relay will: its cost
//! per statement, to weigh against the relay's ~14 us of CPU per transaction.

use std::hint::black_box;

use bytes::{BufMut, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use portcullis_protocol::pg::boundary::Boundary;
use portcullis_protocol::pg::message::{encode, parse_message};
use portcullis_protocol::pg::statements::StatementTracker;

/// The proxy's largest message limit (upstream login).
const MAX: usize = 1 << 20;
/// What one socket read hands the relay.
const CHUNK: usize = 8 * 1024;

const INT4: u32 = 23;
const BPCHAR: u32 = 1042;

/// RowDescription for `(name, type oid, type size)` columns, text format.
fn row_description(columns: &[(&str, u32, i16)], out: &mut BytesMut) {
    let mut body = Vec::new();
    body.put_i16(columns.len() as i16);
    for (attnum, (name, oid, size)) in columns.iter().enumerate() {
        body.put_slice(name.as_bytes());
        body.put_u8(0);
        body.put_u32(16_397); // table oid
        body.put_i16(attnum as i16 + 1);
        body.put_u32(*oid);
        body.put_i16(*size);
        body.put_i32(-1); // type modifier
        body.put_i16(0); // text format
    }
    encode(b'T', &body, out);
}

/// DataRow of text values.
fn data_row(values: &[&[u8]], out: &mut BytesMut) {
    let mut body = Vec::new();
    body.put_i16(values.len() as i16);
    for v in values {
        body.put_i32(v.len() as i32);
        body.put_slice(v);
    }
    encode(b'D', &body, out);
}

fn command_complete(tag: &str, out: &mut BytesMut) {
    let mut body = tag.as_bytes().to_vec();
    body.push(0);
    encode(b'C', &body, out);
}

fn ready_for_query(out: &mut BytesMut) {
    encode(b'Z', b"I", out);
}

/// A stream to read, and what it holds.
struct Input {
    name: &'static str,
    stream: BytesMut,
    messages: usize,
    /// ReadyForQuery messages.
    results: usize,
}

/// `select abalance from pgbench_accounts where aid = $1`, answered `results` times.
fn one_row_results(results: usize) -> Input {
    let mut out = BytesMut::new();
    for i in 0..results {
        row_description(&[("abalance", INT4, 4)], &mut out);
        data_row(&[(i as i64 * 7 - 3000).to_string().as_bytes()], &mut out);
        command_complete("SELECT 1", &mut out);
        ready_for_query(&mut out);
    }
    Input {
        name: "one_row_results_x1000",
        stream: out,
        messages: results * 4,
        results,
    }
}

/// `select * from pgbench_accounts limit rows`: one result of `rows` rows.
fn wide_result(rows: usize) -> Input {
    let mut out = BytesMut::new();
    row_description(
        &[
            ("aid", INT4, 4),
            ("bid", INT4, 4),
            ("abalance", INT4, 4),
            ("filler", BPCHAR, -1),
        ],
        &mut out,
    );
    let filler = [b' '; 84];
    for aid in 1..=rows {
        let aid_text = aid.to_string();
        let bid_text = (aid / 100_000 + 1).to_string();
        let balance = ((aid * 37) % 5000).to_string();
        data_row(
            &[aid_text.as_bytes(), bid_text.as_bytes(), balance.as_bytes(), &filler],
            &mut out,
        );
    }
    command_complete(&format!("SELECT {rows}"), &mut out);
    ready_for_query(&mut out);
    Input {
        name: "wide_result_1000_rows",
        stream: out,
        messages: rows + 3,
        results: 1,
    }
}

fn inputs() -> [Input; 2] {
    [one_row_results(1000), wide_result(1000)]
}

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("framing/parse_message");
    for Input {
        name, stream, messages, ..
    } in inputs()
    {
        group.throughput(Throughput::Bytes(stream.len() as u64));
        group.bench_function(name, |b| {
            // A fresh copy of the stream per iteration, made outside the timing.
            b.iter_batched(
                || stream.clone(),
                |mut buf| {
                    let mut seen = 0;
                    while let Some(msg) = parse_message(&mut buf, MAX).expect("valid stream") {
                        black_box(&msg);
                        seen += 1;
                    }
                    assert_eq!(seen, messages, "every message framed");
                    buf
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

fn boundary(c: &mut Criterion) {
    let mut group = c.benchmark_group("framing/boundary_8k_chunks");
    for Input {
        name, stream, results, ..
    } in inputs()
    {
        group.throughput(Throughput::Bytes(stream.len() as u64));
        group.bench_function(format!("advance/{name}"), |b| {
            b.iter(|| {
                let mut boundary = Boundary::new();
                let mut last = None;
                for chunk in black_box(&stream[..]).chunks(CHUNK) {
                    last = boundary.advance(chunk).expect("valid stream").or(last);
                }
                assert!(boundary.at_boundary(), "stream ends on a message end");
                last
            })
        });
        // What the relay runs on the server's bytes: also counts ReadyForQuery.
        group.bench_function(format!("advance_with_count_z/{name}"), |b| {
            b.iter(|| {
                let mut boundary = Boundary::new();
                let mut ready = 0;
                for chunk in black_box(&stream[..]).chunks(CHUNK) {
                    let _ = boundary
                        .advance_with(chunk, |tag, _| {
                            if tag == b'Z' {
                                ready += 1;
                            }
                        })
                        .expect("valid stream");
                }
                assert_eq!(ready, results, "one ReadyForQuery per result");
                ready
            })
        });
    }
    group.finish();
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn statements(c: &mut Criterion) {
    let mut parse_body = cstr("");
    parse_body.extend(cstr(
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1 AND bid = $2",
    ));
    parse_body.put_i16(0);
    let mut bind_body = cstr("");
    bind_body.extend(cstr(""));
    bind_body.put_i16(0);
    bind_body.put_i16(2);
    for v in [&b"48213"[..], b"1"] {
        bind_body.put_i32(v.len() as i32);
        bind_body.put_slice(v);
    }
    bind_body.put_i16(0);
    let mut execute_body = cstr("");
    execute_body.put_i32(0);
    let client: [(u8, Vec<u8>); 4] = [
        (b'P', parse_body),
        (b'B', bind_body),
        (b'E', execute_body),
        (b'S', Vec::new()),
    ];
    let server: [(u8, Vec<u8>); 5] = [
        (b'1', Vec::new()),
        (b'2', Vec::new()),
        (b'D', vec![0, 1, 0, 0, 0, 4, b'1', b'2', b'3', b'4']),
        (b'C', cstr("SELECT 1")),
        (b'Z', b"I".to_vec()),
    ];
    let mut group = c.benchmark_group("statements");
    group.throughput(Throughput::Elements(1));
    group.bench_function("tracker/extended_round_trip", |b| {
        let mut tracker = StatementTracker::new();
        let mut out = Vec::new();
        b.iter(|| {
            let now = std::time::Instant::now();
            for (tag, body) in &client {
                tracker.client(*tag, black_box(body), now);
            }
            for (tag, body) in &server {
                tracker.server(*tag, black_box(body), now, &mut out);
            }
            assert_eq!(out.len(), 1, "one statement per round trip");
            out.pop()
        })
    });
    group.finish();
}

criterion_group!(benches, parse, boundary, statements);
criterion_main!(benches);
