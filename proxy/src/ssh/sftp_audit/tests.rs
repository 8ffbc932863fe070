//! The sftp audit of one channel, fed SFTP packets built by hand.

use super::*;

fn packet(kind: u8, parts: &[&[u8]]) -> Vec<u8> {
    let body = parts.concat();
    let mut p = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    p.push(kind);
    p.extend(body);
    p
}

fn s(v: &[u8]) -> Vec<u8> {
    let mut out = (v.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(v);
    out
}

fn session() -> Arc<SessionAudit> {
    Arc::new(SessionAudit {
        user: "alice".into(),
        resource: "web1".into(),
        role: "deploy".into(),
        session_id: "ses_1".into(),
        protocol: "ssh",
        grant_id: "grt_1".into(),
        request_id: "req_1".into(),
        reason: None,
        approvers: Vec::new(),
        break_glass: false,
        redact_parameters: false,
        wall: 0,
        since: std::time::Instant::now(),
        handle: None,
    })
}

/// What `from_client` answers, its events alone.
fn client(a: &SftpAudit, data: &[u8]) -> Vec<AuditEvent> {
    a.from_client(data).0
}

fn ok(id: u32) -> Vec<u8> {
    packet(101, &[&id.to_be_bytes(), &0u32.to_be_bytes(), &s(b"Success"), &s(b"")])
}

#[test]
fn an_upload_is_one_event_with_its_bytes_and_a_failed_remove_another() {
    let a = SftpAudit::new(session());
    let id = |n: u32| n.to_be_bytes();
    let mut events = client(
        &a,
        &packet(3, &[&id(1), &s(b"/tmp/u"), &0x1au32.to_be_bytes(), &0u32.to_be_bytes()]),
    );
    events.extend(a.from_server(&packet(102, &[&id(1), &s(b"H")])));
    for (n, len) in [(2u32, 1000usize), (3, 500)] {
        events.extend(client(
            &a,
            &packet(6, &[&id(n), &s(b"H"), &0u64.to_be_bytes(), &s(&vec![0; len])]),
        ));
    }
    events.extend(a.from_server(&[ok(2), ok(3)].concat()));
    events.extend(client(&a, &packet(4, &[&id(4), &s(b"H")])));
    assert!(events.is_empty(), "nothing until the close is answered");
    events.extend(a.from_server(&ok(4)));
    events.extend(client(&a, &packet(13, &[&id(5), &s(b"/nope")])));
    events.extend(a.from_server(&packet(
        101,
        &[&id(5), &2u32.to_be_bytes(), &s(b"No such file"), &s(b"")],
    )));
    assert_eq!(events.len(), 2, "{events:?}");
    let d = &events[0].detail;
    for (k, v) in [
        ("op", "open"),
        ("path", "/tmp/u"),
        ("flags", "write,create,truncate"),
        ("bytes_written", "1500"),
        ("bytes_read", "0"),
        ("outcome", "ok"),
        ("protocol", "ssh"),
    ] {
        assert_eq!(d.get(k).map(String::as_str), Some(v), "{k}");
    }
    let d = &events[1].detail;
    assert_eq!(
        (
            d["op"].as_str(),
            d["path"].as_str(),
            d["outcome"].as_str(),
            d["error"].as_str()
        ),
        ("remove", "/nope", "no_such_file", "No such file")
    );
}

#[test]
fn garbage_is_one_event_then_silence() {
    let a = SftpAudit::new(session());
    let (events, followed) = a.from_client(b"\xff\xff\xff\xff garbage");
    assert!(!followed, "its bytes must not reach the server");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].detail["op"], "unparseable");
    assert!(client(&a, &[0u8; 64]).is_empty());
    assert!(a.from_server(&ok(1)).is_empty());
}

#[test]
fn an_unanswered_open_file_is_recorded_at_the_end() {
    let a = SftpAudit::new(session());
    let _ = client(
        &a,
        &packet(
            3,
            &[&1u32.to_be_bytes(), &s(b"/r"), &1u32.to_be_bytes(), &0u32.to_be_bytes()],
        ),
    );
    let _ = a.from_server(&packet(102, &[&1u32.to_be_bytes(), &s(b"H")]));
    let _ = client(
        &a,
        &packet(
            5,
            &[
                &2u32.to_be_bytes(),
                &s(b"H"),
                &0u64.to_be_bytes(),
                &4096u32.to_be_bytes(),
            ],
        ),
    );
    let _ = a.from_server(&packet(103, &[&2u32.to_be_bytes(), &s(&[7; 100])]));
    let events = a.finish();
    assert_eq!(events.len(), 1);
    let d = &events[0].detail;
    assert_eq!(
        (d["bytes_read"].as_str(), d["closed"].as_str(), d["flags"].as_str()),
        ("100", "false", "read")
    );
}

fn status(id: u32, code: u32, message: &[u8]) -> Vec<u8> {
    packet(101, &[&id.to_be_bytes(), &code.to_be_bytes(), &s(message), &s(b"")])
}

#[test]
fn a_request_id_used_again_before_its_answer_stops_the_audit() {
    let a = SftpAudit::new(session());
    let mut events = client(&a, &packet(13, &[&7u32.to_be_bytes(), &s(b"/a")]));
    events.extend(client(&a, &packet(13, &[&7u32.to_be_bytes(), &s(b"/b")])));
    let ops: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.detail["op"].as_str(), e.detail.get("path").map_or("", String::as_str)))
        .collect();
    assert_eq!(ops, [("remove", "/a"), ("unparseable", "")], "{events:?}");
    assert_eq!(events[0].detail["outcome"], "interrupted");
    assert_eq!(events[1].detail["why"], "request id 7 used again before its answer");
    assert!(a.from_server(&ok(7)).is_empty(), "nothing is followed after");
}

#[test]
fn an_unfollowed_request_keeps_its_id_from_another_s_answer() {
    // An unknown extension, then a remove under the same id: the
    // extension's answer must not be taken for the remove's.
    let a = SftpAudit::new(session());
    let mut events = client(&a, &packet(200, &[&9u32.to_be_bytes(), &s(b"x@example.com")]));
    events.extend(client(&a, &packet(13, &[&9u32.to_be_bytes(), &s(b"/a")])));
    assert_eq!(events.last().map(|e| e.detail["op"].as_str()), Some("unparseable"));
}

#[test]
fn looking_is_recorded_as_well_as_changing() {
    let a = SftpAudit::new(session());
    let id = |n: u32| n.to_be_bytes();
    let mut events = Vec::new();
    // opendir (a HANDLE), stat (ATTRS), realpath (NAME), readlink (a failure), statvfs.
    events.extend(client(&a, &packet(11, &[&id(1), &s(b"/etc")])));
    events.extend(client(&a, &packet(17, &[&id(2), &s(b"/etc/passwd")])));
    events.extend(client(&a, &packet(16, &[&id(3), &s(b".")])));
    events.extend(client(&a, &packet(19, &[&id(4), &s(b"/nope")])));
    events.extend(client(
        &a,
        &packet(200, &[&id(5), &s(b"statvfs@openssh.com"), &s(b"/")]),
    ));
    events.extend(client(&a, &packet(12, &[&id(6), &s(b"D")])));
    events.extend(a.from_server(&packet(102, &[&id(1), &s(b"D")])));
    events.extend(a.from_server(&packet(105, &[&id(2), &0u32.to_be_bytes()])));
    events.extend(a.from_server(&packet(104, &[&id(3), &1u32.to_be_bytes(), &s(b"/home/a")])));
    events.extend(a.from_server(&status(4, 2, b"No such file")));
    events.extend(a.from_server(&packet(201, &[&id(5), &[0; 88]])));
    events.extend(a.from_server(&packet(104, &[&id(6), &0u32.to_be_bytes()])));
    let seen: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|e| {
            let d = &e.detail;
            (d["op"].as_str(), d["path"].as_str(), d["outcome"].as_str())
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("opendir", "/etc", "ok"),
            ("stat", "/etc/passwd", "ok"),
            ("realpath", ".", "ok"),
            ("readlink", "/nope", "no_such_file"),
            ("statvfs", "/", "ok"),
        ]
    );
}

#[test]
fn a_server_side_copy_and_an_unknown_extension_are_recorded() {
    let a = SftpAudit::new(session());
    let id = |n: u32| n.to_be_bytes();
    let open =
        |n: u32, path: &[u8], flags: u32| packet(3, &[&id(n), &s(path), &flags.to_be_bytes(), &0u32.to_be_bytes()]);
    let mut events = client(&a, &[open(1, b"/src", 1), open(2, b"/dst", 0x1a)].concat());
    events.extend(a.from_server(&[packet(102, &[&id(1), &s(b"R")]), packet(102, &[&id(2), &s(b"W")])].concat()));
    events.extend(client(
        &a,
        &packet(
            200,
            &[
                &id(3),
                &s(b"copy-data"),
                &s(b"R"),
                &0u64.to_be_bytes(),
                &0u64.to_be_bytes(),
                &s(b"W"),
                &0u64.to_be_bytes(),
            ],
        ),
    ));
    events.extend(client(&a, &packet(200, &[&id(4), &s(b"wipe@example.com"), &s(b"/")])));
    events.extend(a.from_server(&[ok(3), status(4, 8, b"Unsupported")].concat()));
    // A close the server fails still tells what went through the file.
    events.extend(client(&a, &packet(4, &[&id(5), &s(b"W")])));
    events.extend(a.from_server(&status(5, 4, b"Failure")));
    assert_eq!(events.len(), 3, "{events:?}");
    let d = &events[0].detail;
    assert_eq!(
        (
            d["op"].as_str(),
            d["path"].as_str(),
            d["to"].as_str(),
            d["length"].as_str(),
            d["outcome"].as_str()
        ),
        ("copy-data", "/src", "/dst", "0", "ok")
    );
    let d = &events[1].detail;
    assert_eq!(
        (d["op"].as_str(), d["extension"].as_str(), d["outcome"].as_str()),
        ("extension", "wipe@example.com", "op_unsupported")
    );
    let d = &events[2].detail;
    assert_eq!(
        (
            d["op"].as_str(),
            d["path"].as_str(),
            d["outcome"].as_str(),
            d["bytes_written"].as_str()
        ),
        ("open", "/dst", "failure", "0")
    );
}
