use super::*;

/// A packet: length, type, body.
fn packet(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut p = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    p.push(kind);
    p.extend_from_slice(body);
    p
}

fn s(v: &[u8]) -> Vec<u8> {
    let mut out = (v.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(v);
    out
}

fn body(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn all(side: Side, stream: &[u8], piece: usize) -> Result<Vec<Packet>, Garbled> {
    let mut f = Framer::new(side);
    let mut out = Vec::new();
    for chunk in stream.chunks(piece.max(1)) {
        f.push(chunk, &mut out)?;
    }
    Ok(out)
}

/// A client stream with one of each kind of request: followed, matched only, and INIT.
fn client_stream() -> (Vec<u8>, Vec<Packet>) {
    let data = vec![0xabu8; 40_000];
    let mut stream = Vec::new();
    stream.extend(packet(1, &3u32.to_be_bytes())); // INIT: not followed
    stream.extend(packet(
        OPEN,
        &body(&[
            &7u32.to_be_bytes(),
            &s(b"/tmp/x"),
            &0x1au32.to_be_bytes(),
            &0u32.to_be_bytes(),
        ]),
    ));
    stream.extend(packet(
        WRITE,
        &body(&[&8u32.to_be_bytes(), &s(b"h1"), &0u64.to_be_bytes(), &s(&data)]),
    ));
    stream.extend(packet(17, &body(&[&9u32.to_be_bytes(), &s(b"/etc")]))); // STAT
    stream.extend(packet(8, &body(&[&14u32.to_be_bytes(), &s(b"h1")]))); // FSTAT: matched only
    stream.extend(packet(RENAME, &body(&[&10u32.to_be_bytes(), &s(b"a"), &s(b"b")])));
    stream.extend(packet(
        EXTENDED,
        &body(&[
            &11u32.to_be_bytes(),
            &s(b"posix-rename@openssh.com"),
            &s(b"c"),
            &s(b"d"),
        ]),
    ));
    stream.extend(packet(
        SETSTAT,
        &body(&[
            &12u32.to_be_bytes(),
            &s(b"f"),
            &0x4u32.to_be_bytes(),
            &0o100640u32.to_be_bytes(),
        ]),
    ));
    stream.extend(packet(CLOSE, &body(&[&13u32.to_be_bytes(), &s(b"h1")])));
    let want = vec![
        Packet::Open {
            id: 7,
            path: "/tmp/x".into(),
            pflags: 0x1a,
        },
        Packet::Write {
            id: 8,
            handle: b"h1".to_vec(),
            len: 40_000,
        },
        Packet::PathOp {
            id: 9,
            op: "stat",
            path: "/etc".into(),
            to: None,
            attrs: None,
        },
        Packet::Request { id: 14 },
        Packet::PathOp {
            id: 10,
            op: "rename",
            path: "a".into(),
            to: Some("b".into()),
            attrs: None,
        },
        Packet::PathOp {
            id: 11,
            op: "rename",
            path: "c".into(),
            to: Some("d".into()),
            attrs: None,
        },
        Packet::PathOp {
            id: 12,
            op: "setstat",
            path: "f".into(),
            to: None,
            attrs: Some(Attrs {
                mode: Some(0o100640),
                ..Attrs::default()
            }),
        },
        Packet::Close {
            id: 13,
            handle: b"h1".to_vec(),
        },
    ];
    (stream, want)
}

#[test]
fn requests_decode_whatever_the_pieces() {
    let (stream, want) = client_stream();
    for piece in [1, 2, 3, 5, 7, 64, 1000, stream.len()] {
        assert_eq!(
            all(Side::Client, &stream, piece).expect("parses"),
            want,
            "pieces of {piece}"
        );
    }
}

#[test]
fn responses_decode_with_data_skipped() {
    let mut stream = Vec::new();
    stream.extend(packet(2, &3u32.to_be_bytes())); // VERSION
    stream.extend(packet(HANDLE, &body(&[&7u32.to_be_bytes(), &s(b"h1")])));
    stream.extend(packet(DATA, &body(&[&8u32.to_be_bytes(), &s(&[1u8; 32_768])])));
    stream.extend(packet(
        STATUS,
        &body(&[&9u32.to_be_bytes(), &2u32.to_be_bytes(), &s(b"No such file"), &s(b"")]),
    ));
    stream.extend(packet(
        104,
        &body(&[&10u32.to_be_bytes(), &1u32.to_be_bytes(), &s(&[b'n'; 5000])]),
    )); // NAME
    let want = vec![
        Packet::Handle {
            id: 7,
            handle: b"h1".to_vec(),
        },
        Packet::Data { id: 8, len: 32_768 },
        Packet::Status {
            id: 9,
            code: 2,
            message: "No such file".into(),
        },
        Packet::Answer { id: 10 },
    ];
    for piece in [1, 4, 9, 4096, stream.len()] {
        assert_eq!(all(Side::Server, &stream, piece).expect("parses"), want);
    }
}

#[test]
fn data_is_never_held() {
    // A 1 MiB - 1 write arrives in pieces; the framer keeps only its header.
    let mut f = Framer::new(Side::Client);
    let len = MAX_PACKET - 1 - 8 - 2 - 12;
    let mut head = packet(WRITE, &body(&[&1u32.to_be_bytes(), &s(b"h1"), &0u64.to_be_bytes()]));
    let total = (MAX_PACKET).to_be_bytes();
    head.splice(0..4, total);
    head.extend(len.to_be_bytes());
    let mut out = Vec::new();
    f.push(&head, &mut out).expect("header");
    assert_eq!(out.len(), 1);
    assert!(matches!(f.state, State::Skip { left } if left == len as usize));
    f.push(&vec![0u8; len as usize], &mut out).expect("data");
    assert!(matches!(f.state, State::Header { have: 0, .. }));
}

#[test]
fn garbage_is_reported_once_and_never_panics() {
    let mut f = Framer::new(Side::Client);
    let mut out = Vec::new();
    let err = f.push(b"GET / HTTP/1.1\r\n\r\n", &mut out).expect_err("not sftp");
    assert!(err.why.contains("packet length"), "{err}");
    assert!(f.push(&[0u8; 100], &mut out).is_ok(), "quiet after the first error");
    assert!(out.is_empty());

    // An OPEN whose string runs past the packet.
    let bad = packet(OPEN, &body(&[&1u32.to_be_bytes(), &500u32.to_be_bytes(), b"x"]));
    assert!(all(Side::Client, &bad, 3).is_err());
    // A metadata request too large to keep.
    let big = packet(REMOVE, &body(&[&1u32.to_be_bytes(), &s(&vec![b'a'; MAX_KEPT + 10])]));
    assert!(all(Side::Client, &big, 4096).is_err());
    // Every prefix of every truncation and every byte flipped: no panic.
    let (stream, _) = client_stream();
    let stream = &stream[..stream.len().min(400)];
    for i in 0..stream.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut bent = stream.to_vec();
            bent[i] ^= flip;
            let _ = all(Side::Client, &bent, 7);
            let _ = all(Side::Server, &bent, 7);
        }
    }
}

#[test]
fn flags_and_statuses_have_names() {
    assert_eq!(open_flags(0x1a), "write,create,truncate");
    assert_eq!(open_flags(0x101), "read,0x100");
    assert_eq!(status_name(3), "permission_denied");
    assert_eq!(status_name(42), "status_42");
    let a = Attrs {
        size: Some(5),
        owner: Some((1, 2)),
        mode: Some(0o100755),
        times: Some((3, 4)),
    };
    assert_eq!(a.to_string(), "mode=0755 uid=1 gid=2 size=5 atime=3 mtime=4");
}
