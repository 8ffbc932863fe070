//! SSH sessions as records: a pty session in asciicast, fetched with the
//! CLI, and a shell without a pty as one event with its exit and bytes.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::clients::run_bounded_input;
use crate::harness::sshd::ssh_command;
use crate::harness::{Gateway, stderr, stdout};
use crate::ssh_audit::{Setup, d, one, setup};

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
