//! SSH in the audit log, through the real OpenSSH clients and a real sshd:
//! refusals as `connect.denied`, `session.start`/`session.end` with bytes and
//! how the session ended, one `exec` event per command (secrets redacted)
//! with its exit status, one `sftp` event per operation, a pinned host key
//! that does not match, and the asciicast recording of a pty session.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::clients::run_bounded_input;
use crate::harness::sshd::{SshSetup, Sshd, keygen, public_line, sftp_batch, spawn_bounded, ssh, ssh_command};
use crate::harness::{Gateway, GatewayOptions, stderr, stdout};

type Setup = SshSetup;

/// A gateway in front of `sshd`, with `resource` as its `web1` entry.
fn setup_with(sshd: Sshd, resource: String) -> Setup {
    SshSetup::start(
        sshd,
        GatewayOptions {
            ssh_resources: Some(resource),
            ..GatewayOptions::default()
        },
    )
}

fn setup() -> Setup {
    SshSetup::start(Sshd::start(), GatewayOptions::default())
}

/// `detail.KEY` of `e`, or "" when absent.
fn d<'a>(e: &'a Value, key: &str) -> &'a str {
    e["detail"][key].as_str().unwrap_or_default()
}

/// The one event of `action` among `events`.
fn one<'a>(events: &'a [Value], action: &str) -> &'a Value {
    let found: Vec<&Value> = events.iter().filter(|e| e["action"] == action).collect();
    assert_eq!(found.len(), 1, "expected one {action}: {events:#?}");
    found[0]
}

#[test]
fn refusals_sessions_and_exec_commands_are_audited() {
    let s = setup();
    // Refused first: no grant yet.
    let out = ssh(s.gw.ssh_port, &s.alice_key, "alice+web1", "echo hi");
    assert!(!out.status.success(), "{}", stderr(&out));
    let denied = s.gw.audit_until(&["--action", "connect.denied"], |e| !e.is_empty());
    let x = one(&denied, "connect.denied");
    assert_eq!(
        (
            x["user"].as_str(),
            x["resource"].as_str(),
            d(x, "protocol"),
            d(x, "outcome")
        ),
        (Some("alice"), Some("web1"), "ssh", "no_grant"),
        "{x}"
    );
    assert!(d(x, "why").contains("no grant for alice on \"web1\""), "{x}");
    assert_eq!(d(x, "peer"), "127.0.0.1", "{x}");

    // Keys alone, none registered (BatchMode never reaches the token prompt):
    // one refusal for the connection, not one a key.
    let stray = s.keys.path().join("stray_ed25519");
    keygen(&stray);
    let out = ssh(s.gw.ssh_port, &stray, "alice+web1", "echo hi");
    assert!(!out.status.success(), "{}", stderr(&out));
    let denied = s.gw.audit_until(&["--action", "connect.denied"], |e| e.len() >= 2);
    assert_eq!(denied.len(), 2, "{denied:#?}");
    let x = &denied[1];
    assert_eq!(
        (x["user"].as_str(), x["resource"].as_str(), d(x, "outcome")),
        (Some("alice"), Some("web1"), "bad_credentials"),
        "{x}"
    );
    assert!(
        d(x, "why").contains("none of the offered SSH keys is registered"),
        "{x}"
    );

    let (_, gid) = s.gw.grant(&s.alice, &s.carol, "web1", None, "30m");
    let out = ssh(s.gw.ssh_port, &s.alice_key, "alice+web1", "echo hello; exit 3");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let secret = "PGPASSWORD=hunter2 sh -c 'exit 0' --password=hunter2";
    let out = ssh(s.gw.ssh_port, &s.alice_key, "alice+web1", secret);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let execs = s.gw.audit_until(&["--action", "exec"], |e| e.len() >= 2);
    assert_eq!(execs.len(), 2, "{execs:#?}");
    let first = &execs[0];
    for (k, v) in [
        ("command", "echo hello; exit 3"),
        ("outcome", "exited"),
        ("exit_status", "3"),
        ("protocol", "ssh"),
    ] {
        assert_eq!(d(first, k), v, "{k}: {first}");
    }
    assert!(first["detail"].get("redacted").is_none(), "{first}");
    assert_eq!(
        (
            first["user"].as_str(),
            first["resource"].as_str(),
            first["role"].as_str(),
            first["grant_id"].as_str()
        ),
        (Some("alice"), Some("web1"), Some("deploy"), Some(gid.as_str())),
        "{first}"
    );
    let second = &execs[1];
    assert_eq!(
        d(second, "command"),
        "PGPASSWORD='[redacted]' sh -c 'exit 0' --password='[redacted]'",
        "{second}"
    );
    assert_eq!(
        (d(second, "redacted"), d(second, "exit_status")),
        ("true", "0"),
        "{second}"
    );

    // The first command's session: started, then ended by the client, with its bytes.
    let sid = first["session_id"].as_str().expect("session id").to_owned();
    assert!(sid.starts_with("ses_"), "{first}");
    let session =
        s.gw.audit_until(&["--session", &sid], |e| e.iter().any(|e| e["action"] == "session.end"));
    let start = one(&session, "session.start");
    assert_eq!(
        (d(start, "protocol"), d(start, "peer")),
        ("ssh", "127.0.0.1"),
        "{start}"
    );
    assert_eq!(start["grant_id"].as_str(), Some(gid.as_str()), "{start}");
    let end = one(&session, "session.end");
    for (k, v) in [
        ("protocol", "ssh"),
        ("ended", "client_quit"),
        ("bytes_out", "6"),
        ("bytes_in", "0"),
    ] {
        assert_eq!(d(end, k), v, "{k}: {end}");
    }
    assert!(d(end, "duration_ms").parse::<u64>().is_ok(), "{end}");
    let actions: Vec<&str> = session.iter().filter_map(|e| e["action"].as_str()).collect();
    assert_eq!(actions, ["session.start", "exec", "session.end"], "in order");

    let everything = s.gw.cli_ok(&s.gw.admin_token, &["audit", "--jsonl"]);
    assert!(!everything.contains("hunter2"), "a password reached the audit log");
}

#[test]
fn a_revoke_ends_the_session_and_interrupts_the_command() {
    let s = setup();
    let (_, gid) = s.gw.grant(&s.alice, &s.carol, "web1", None, "1h");
    let running = spawn_bounded(ssh_command(s.gw.ssh_port, &s.alice_key, "alice+web1", "sleep 300"));
    let started = s.gw.audit_until(&["--action", "session.start"], |e| !e.is_empty());
    let sid = one(&started, "session.start")["session_id"]
        .as_str()
        .expect("session id")
        .to_owned();
    // The command is under way once the session has output nothing but is live; give it a moment.
    std::thread::sleep(Duration::from_millis(500));
    s.gw.cli_ok(&s.carol, &["revoke", &gid, "--reason", "audit says stop"]);
    let out = running.join().expect("ssh thread");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let session =
        s.gw.audit_until(&["--session", &sid], |e| e.iter().any(|e| e["action"] == "session.end"));
    let end = one(&session, "session.end");
    assert_eq!(d(end, "ended"), "revoked", "{end}");
    let exec = one(&session, "exec");
    assert_eq!(
        (d(exec, "command"), d(exec, "outcome"), d(exec, "ended")),
        ("sleep 300", "interrupted", "revoked"),
        "{exec}"
    );
}

#[test]
fn a_host_key_mismatch_is_refused_on_stderr_and_audited() {
    let sshd = Sshd::start();
    let wrong = tempfile::tempdir().expect("tempdir");
    let wrong_key = wrong.path().join("wrong_host");
    keygen(&wrong_key);
    let resource = sshd.resource_yaml().replace(&sshd.host_key, &public_line(&wrong_key));
    assert_ne!(resource, sshd.resource_yaml(), "the pinned key should have changed");
    let s = setup_with(sshd, resource);
    let (_, gid) = s.gw.grant(&s.alice, &s.carol, "web1", None, "30m");
    let out = ssh(s.gw.ssh_port, &s.alice_key, "alice+web1", "echo must-not-run");
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(stdout(&out).is_empty(), "nothing ran: {}", stdout(&out));
    assert!(
        err.lines().any(|l| l.starts_with(
            "portcullis: the gateway could not open a session on \"web1\": the server's host key SHA256:"
        ) && l.contains("does not match the host_key pinned in the gateway's config")),
        "stderr should say the host key does not match: {err}"
    );
    let denied = s.gw.audit_until(&["--action", "connect.denied"], |e| !e.is_empty());
    let x = one(&denied, "connect.denied");
    for (k, v) in [
        ("outcome", "host_key_mismatch"),
        ("protocol", "ssh"),
        ("peer", "127.0.0.1"),
    ] {
        assert_eq!(d(x, k), v, "{k}: {x}");
    }
    assert_eq!(
        (
            x["user"].as_str(),
            x["resource"].as_str(),
            x["role"].as_str(),
            x["grant_id"].as_str()
        ),
        (Some("alice"), Some("web1"), Some("deploy"), Some(gid.as_str())),
        "{x}"
    );
    // The grant's context, as on every event of an admitted session.
    assert!(x["reason"].as_str().is_some_and(|r| !r.is_empty()), "{x}");
    assert_eq!(x["approvers"], serde_json::json!(["carol"]), "{x}");
    assert!(d(x, "why").contains("does not match the host_key pinned"), "{x}");
    let all = s.gw.audit_json(&["--user", "alice"]);
    assert!(
        all.iter()
            .all(|e| e["action"] != "session.start" && e["action"] != "exec"),
        "a refused session neither starts nor runs anything: {all:#?}"
    );
}

#[test]
fn a_client_gone_during_the_upstream_login_still_leaves_the_decision_on_record() {
    // An upstream that accepts and says nothing until the client has left.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let sshd = Sshd::start();
    let resource = sshd.resource_yaml().replace(
        &format!("port: {}", sshd.port),
        &format!("port: {}", hole.local_addr().expect("addr").port()),
    );
    let s = setup_with(sshd, resource);
    s.gw.grant(&s.alice, &s.carol, "web1", None, "30m");
    let mut client = ssh_command(s.gw.ssh_port, &s.alice_key, "alice+web1", "echo must-not-run")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn ssh");
    hole.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + Duration::from_secs(30);
    let upstream = loop {
        match hole.accept() {
            Ok((stream, _)) => break stream,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("the gateway never began its upstream login: {e}"),
        }
    };
    let _ = client.kill();
    let _ = client.wait();
    // Let the gateway see the client go before the login fails.
    std::thread::sleep(Duration::from_millis(300));
    drop(upstream);
    let denied = s.gw.audit_until(&["--action", "connect.denied"], |e| !e.is_empty());
    let x = one(&denied, "connect.denied");
    assert_eq!(
        (x["user"].as_str(), x["resource"].as_str()),
        (Some("alice"), Some("web1")),
        "{x}"
    );
    assert!(d(x, "outcome").starts_with("upstream"), "{x}");
}

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
fn a_pty_session_is_recorded_in_asciicast_and_fetched_with_the_cli() {
    let s = setup();
    s.gw.grant(&s.alice, &s.carol, "web1", None, "30m");
    // Typed: `echo marker-$((100+23))`. Only the shell's output says marker-123,
    // so finding it proves output is recorded, whatever the terminal echoes.
    // `-tt`: a pty upstream although stdin is a pipe.
    let mut tty = login_shell(&s, "-tt");
    tty.env("TERM", "xterm-256color");
    let input = b"echo marker-$((100+23))\nexit 0\n";
    let out = run_bounded_input(&mut tty, Some(input), Duration::from_secs(60));
    assert!(
        stdout(&out).contains("marker-123"),
        "the shell ran the command: {}\n{}",
        stdout(&out),
        stderr(&out)
    );

    let listed = wait_recordings(&s.gw, 1);
    let r = &listed[0];
    let id = r["id"].as_str().expect("id").to_owned();
    assert_eq!(
        (r["user"].as_str(), r["resource"].as_str(), r["role"].as_str()),
        (Some("alice"), Some("web1"), Some("deploy")),
        "{r}"
    );
    assert_eq!(
        r["session_id"].as_str(),
        Some(id.as_str()),
        "the first pty's recording is named after the session: {r}"
    );
    assert!(r["size"].as_u64().unwrap_or(0) > 0, "{r}");
    assert!(r["started_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{r}");

    let table = s.gw.cli_ok(&s.gw.admin_token, &["recordings"]);
    assert!(table.contains(&id) && table.contains("alice"), "{table}");

    let cast = s.gw.cli_ok(&s.gw.admin_token, &["recording", &id]);
    let mut lines = cast.lines();
    let header: Value = serde_json::from_str(lines.next().expect("a header line")).expect("header is JSON");
    assert_eq!(header["version"], 2, "{header}");
    assert!(header["width"].as_u64().is_some_and(|w| w > 0), "{header}");
    assert!(header["height"].as_u64().is_some_and(|h| h > 0), "{header}");
    assert!(header["timestamp"].as_u64().is_some(), "{header}");
    assert_eq!(header["env"]["TERM"], "xterm-256color", "{header}");
    let mut output = String::new();
    let mut last = 0.0;
    let mut events = 0;
    for line in lines {
        let e: Value = serde_json::from_str(line).unwrap_or_else(|err| panic!("event line not JSON ({err}): {line}"));
        let e = e.as_array().unwrap_or_else(|| panic!("an event is an array: {line}"));
        assert_eq!(e.len(), 3, "{line}");
        let t = e[0].as_f64().unwrap_or_else(|| panic!("time is a number: {line}"));
        assert!(t >= last, "times never go back: {line}");
        last = t;
        let code = e[1].as_str().expect("code");
        assert!(code == "o" || code == "r", "{line}");
        if code == "o" {
            output.push_str(e[2].as_str().expect("data is a string"));
        }
        events += 1;
    }
    assert!(events > 0, "{cast}");
    assert!(
        output.contains("marker-123"),
        "the command's output is recorded: {output:?}"
    );

    // Not found, and not for everyone.
    let missing = s.gw.cli(&s.gw.admin_token, &["recording", "ses_000000000000"]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("unknown recording ses_000000000000"),
        "{}",
        stderr(&missing)
    );
    let not_admin = s.gw.cli(&s.alice, &["recordings"]);
    assert!(!not_admin.status.success());
    assert!(
        stderr(&not_admin).contains("only an admin may read session recordings"),
        "{}",
        stderr(&not_admin)
    );
    let (status, _) = s.gw.http(
        "GET",
        "/v1/recordings/..%2F..%2Fadmin.token",
        Some(&s.gw.admin_token),
        None,
    );
    assert_eq!(status, 404, "no path leaves the recordings directory");

    // The file is private, and session.end names it.
    let path = s.gw.data_dir.join("recordings").join(format!("{id}.cast"));
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).expect("cast on disk").permissions());
    assert_eq!(mode & 0o777, 0o600);
    let session =
        s.gw.audit_until(&["--session", &id], |e| e.iter().any(|e| e["action"] == "session.end"));
    let end = one(&session, "session.end");
    assert_eq!(d(end, "recording"), format!("{id}.cast"), "{end}");
    let shell = one(&session, "shell");
    assert_eq!(
        (d(shell, "pty"), d(shell, "outcome"), d(shell, "exit_status")),
        ("true", "exited", "0"),
        "{shell}"
    );
}

#[test]
fn a_shell_without_a_pty_is_one_event_with_its_exit_and_bytes() {
    let s = setup();
    s.gw.grant(&s.alice, &s.carol, "web1", None, "30m");
    // `ssh -T host < script`: a login shell reads the script from stdin.
    let mut plain = login_shell(&s, "-T");
    let script = b"echo marker-$((40+2))\nexit 3\n";
    let out = run_bounded_input(&mut plain, Some(script), Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stdout(&out).contains("marker-42"), "{}", stdout(&out));

    let session =
        s.gw.audit_until(&[], |e| e.iter().any(|e| e["action"] == "session.end"));
    let shell = one(&session, "shell");
    assert_eq!(
        (d(shell, "pty"), d(shell, "outcome"), d(shell, "exit_status")),
        ("", "exited", "3"),
        "{shell}"
    );
    assert_eq!(d(shell, "bytes_in"), script.len().to_string(), "{shell}");
    assert!(d(shell, "bytes_out").parse::<u64>().is_ok_and(|n| n >= 10), "{shell}");
    assert!(session.iter().all(|e| e["action"] != "exec"), "{session:#?}");
}

/// `ssh FLAG alice+web1` with no command: a login shell.
fn login_shell(s: &Setup, flag: &str) -> std::process::Command {
    let cmd = ssh_command(s.gw.ssh_port, &s.alice_key, "alice+web1", "");
    let mut shell = std::process::Command::new(cmd.get_program());
    shell
        .arg(flag)
        .args(cmd.get_args().filter(|a| !a.is_empty()))
        .env_remove("SSH_AUTH_SOCK");
    shell
}

/// `recordings --json` until it lists `n`, bounded.
fn wait_recordings(gw: &Gateway, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = gw.cli_ok(&gw.admin_token, &["recordings", "--json"]);
        let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("recordings --json ({e}): {out}"));
        let list = v.as_array().cloned().unwrap_or_default();
        if list.len() == n {
            return list;
        }
        assert!(Instant::now() < deadline, "expected {n} recordings: {out}");
        std::thread::sleep(Duration::from_millis(100));
    }
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
    let sftp = s.gw.audit_until(&["--action", "sftp"], |e| !e.is_empty());
    let path = far.path().join("sftp-mode.bin").display().to_string();
    let open = sftp
        .iter()
        .find(|e| d(e, "op") == "open" && d(e, "path") == path)
        .unwrap_or_else(|| panic!("scp's open: {sftp:#?}"));
    assert_eq!((d(open, "bytes_written"), d(open, "outcome")), ("5000", "ok"), "{open}");
}
