//! Files over SSH in the audit log: one `sftp` event per operation, from
//! the real `sftp` and `scp` (both its modes) through a real sshd.

use serde_json::Value;

use crate::harness::sshd::sftp_batch;
use crate::harness::stderr;
use crate::ssh_audit::{d, setup};

#[test]
fn each_sftp_operation_is_one_event() {
    let s = setup();
    s.gw.grant(&s.alice, &s.carol, "web1", None, "30m");
    let local = tempfile::tempdir().expect("tempdir");
    let far = tempfile::tempdir().expect("tempdir");
    let far_path = far.path().display().to_string();
    let src = local.path().join("src.bin");
    std::fs::write(&src, vec![7u8; 20_000]).expect("write sample");
    let back = local.path().join("back.bin");
    let batch = local.path().join("batch");
    std::fs::write(
        &batch,
        format!(
            "cd {far_path}\nput {src} up.bin\nmkdir sub\nls sub\nrename up.bin sub/moved.bin\nget sub/moved.bin {back}\nchmod 640 sub/moved.bin\nrm sub/moved.bin\nrmdir sub\nrm gone.bin\n",
            src = src.display(),
            back = back.display()
        ),
    )
    .expect("write batch");
    let out = sftp_batch(s.gw.ssh_port, &s.alice_key, "alice+web1", &batch);
    // The last `rm` fails (no such file), so sftp -b stops there with an error.
    assert!(
        !out.status.success(),
        "the failing rm should fail the batch: {}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(&back).expect("downloaded").len(), 20_000);

    let events = s.gw.audit_until(&["--action", "sftp"], |e| {
        e.iter().filter(|e| d(e, "op") == "remove").count() >= 2
    });
    let ops = |op: &str| -> Vec<&Value> { events.iter().filter(|e| d(e, "op") == op).collect() };
    let at = |name: &str| format!("{far_path}/{name}");

    let opens = ops("open");
    let upload = opens
        .iter()
        .find(|e| d(e, "path") == at("up.bin"))
        .unwrap_or_else(|| panic!("the upload's open: {events:#?}"));
    for (k, v) in [
        ("flags", "write,create,truncate"),
        ("outcome", "ok"),
        ("bytes_written", "20000"),
        ("bytes_read", "0"),
        ("protocol", "ssh"),
    ] {
        assert_eq!(d(upload, k), v, "{k}: {upload}");
    }
    // Each event names the grant's request, its reason and its approvers.
    assert!(
        upload["request_id"].as_str().is_some_and(|r| r.starts_with("req_")),
        "{upload}"
    );
    assert!(upload["reason"].as_str().is_some_and(|r| !r.is_empty()), "{upload}");
    assert_eq!(upload["approvers"], serde_json::json!(["carol"]), "{upload}");
    assert!(
        upload["detail"].get("closed").is_none(),
        "closed by the client: {upload}"
    );
    let download = opens
        .iter()
        .find(|e| d(e, "path") == at("sub/moved.bin"))
        .unwrap_or_else(|| panic!("the download's open: {events:#?}"));
    for (k, v) in [
        ("flags", "read"),
        ("outcome", "ok"),
        ("bytes_read", "20000"),
        ("bytes_written", "0"),
    ] {
        assert_eq!(d(download, k), v, "{k}: {download}");
    }

    let mkdir = ops("mkdir");
    assert_eq!(mkdir.len(), 1, "{events:#?}");
    assert_eq!(
        (d(mkdir[0], "path"), d(mkdir[0], "outcome")),
        (at("sub").as_str(), "ok")
    );
    let rename = ops("rename");
    assert_eq!(rename.len(), 1, "{events:#?}");
    assert_eq!(
        (d(rename[0], "path"), d(rename[0], "to"), d(rename[0], "outcome")),
        (at("up.bin").as_str(), at("sub/moved.bin").as_str(), "ok")
    );
    let setstat = ops("setstat");
    assert_eq!(setstat.len(), 1, "{events:#?}");
    assert_eq!(
        (d(setstat[0], "path"), d(setstat[0], "attrs"), d(setstat[0], "outcome")),
        (at("sub/moved.bin").as_str(), "mode=0640", "ok")
    );
    let removes = ops("remove");
    assert_eq!(removes.len(), 2, "{events:#?}");
    assert_eq!(
        (d(removes[0], "path"), d(removes[0], "outcome")),
        (at("sub/moved.bin").as_str(), "ok")
    );
    assert_eq!(
        (d(removes[1], "path"), d(removes[1], "outcome")),
        (at("gone.bin").as_str(), "no_such_file")
    );
    assert!(
        !d(removes[1], "error").is_empty(),
        "the server's message: {}",
        removes[1]
    );
    let rmdir = ops("rmdir");
    assert_eq!(rmdir.len(), 1, "{events:#?}");
    assert_eq!(
        (d(rmdir[0], "path"), d(rmdir[0], "outcome")),
        (at("sub").as_str(), "ok")
    );
    assert!(ops("unparseable").is_empty(), "{events:#?}");
    // Looking is recorded too: `cd` resolves the path, `ls` opens the directory.
    assert!(
        ops("realpath")
            .iter()
            .any(|e| d(e, "path") == far_path && d(e, "outcome") == "ok"),
        "{events:#?}"
    );
    let opendir = ops("opendir");
    assert!(
        opendir
            .iter()
            .any(|e| d(e, "path").trim_end_matches('/') == at("sub") && d(e, "outcome") == "ok"),
        "{events:#?}"
    );
    // Order: the changes as the batch made them.
    let changes = ["mkdir", "rename", "setstat", "remove", "rmdir"];
    let order: Vec<&str> = events
        .iter()
        .map(|e| d(e, "op"))
        .filter(|op| changes.contains(op))
        .collect();
    assert_eq!(order, ["mkdir", "rename", "setstat", "remove", "rmdir", "remove"]);
}

#[test]
fn scp_is_audited_in_both_modes() {
    let s = setup();
    s.gw.grant(&s.alice, &s.carol, "web1", None, "30m");
    let local = tempfile::tempdir().expect("tempdir");
    let far = tempfile::tempdir().expect("tempdir");
    let src = local.path().join("src.bin");
    std::fs::write(&src, vec![1u8; 5_000]).expect("write sample");
    let up = far.path().join("legacy.bin");
    let remote = |p: &std::path::Path| format!("alice+web1@127.0.0.1:{}", p.display());
    let src_arg = src.display().to_string();
    let down = local.path().join("down.bin").display().to_string();
    let (up_remote, sftp_remote) = (remote(&up), remote(&far.path().join("sftp-mode.bin")));
    for args in [
        vec!["-O", src_arg.as_str(), up_remote.as_str()],
        vec!["-O", up_remote.as_str(), down.as_str()],
        vec![src_arg.as_str(), sftp_remote.as_str()],
    ] {
        let out = crate::harness::sshd::scp(s.gw.ssh_port, &s.alice_key, &args);
        assert!(out.status.success(), "scp {args:?}: {}", stderr(&out));
    }
    // Legacy mode: the remote scp is an exec command, upload (-t) then download (-f).
    let execs = s.gw.audit_until(&["--action", "exec"], |e| e.len() >= 2);
    let commands: Vec<(&str, &str)> = execs.iter().map(|e| (d(e, "command"), d(e, "exit_status"))).collect();
    let up_cmd = format!("scp -t {}", up.display());
    let down_cmd = format!("scp -f {}", up.display());
    assert_eq!(
        commands,
        [(up_cmd.as_str(), "0"), (down_cmd.as_str(), "0")],
        "{execs:#?}"
    );
    // SFTP mode: an open for writing with the bytes.
    let path = far.path().join("sftp-mode.bin").display().to_string();
    let sftp = s.gw.audit_until(&["--action", "sftp"], |e| {
        e.iter().any(|e| d(e, "op") == "open" && d(e, "path") == path)
    });
    let open = sftp
        .iter()
        .find(|e| d(e, "op") == "open" && d(e, "path") == path)
        .unwrap_or_else(|| panic!("scp's open: {sftp:#?}"));
    assert_eq!((d(open, "bytes_written"), d(open, "outcome")), ("5000", "ok"), "{open}");
}
