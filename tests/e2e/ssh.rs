//! SSH through the gateway with the real OpenSSH client against a real sshd:
//! the login name `USER+RESOURCE`, the engineer's registered key, the role's
//! key upstream with the pinned host key, and refusals told on stderr.

use crate::harness::sshd::{Sshd, keygen, ssh};
use crate::harness::{Gateway, GatewayOptions, stderr, stdout};

/// A gateway in front of a fresh sshd, alice (with a registered key) and carol (approver).
struct Setup {
    gw: Gateway,
    _sshd: Sshd,
    _keys: tempfile::TempDir,
    alice_key: std::path::PathBuf,
    alice: String,
    carol: String,
}

fn setup() -> Setup {
    let sshd = Sshd::start();
    let gw = Gateway::start(GatewayOptions {
        ssh_resources: Some(sshd.resource_yaml()),
        ..GatewayOptions::default()
    });
    let keys = tempfile::tempdir().expect("tempdir");
    let alice_key = keys.path().join("alice_ed25519");
    keygen(&alice_key);
    let pub_path = keys.path().join("alice_ed25519.pub");
    let alice = gw.cli_ok(
        &gw.admin_token,
        &["user", "add", "alice", "--ssh-key", &pub_path.display().to_string()],
    );
    let carol = gw.add_user("carol", &[], false);
    Setup {
        gw,
        _sshd: sshd,
        _keys: keys,
        alice_key,
        alice,
        carol,
    }
}

#[test]
fn exec_with_a_grant_prints_and_keeps_the_exit_status() {
    let s = setup();
    s.gw.grant(&s.alice, &s.carol, "web1", None, "30m");
    let out = ssh(s.gw.ssh_port, &s.alice_key, "alice+web1", "echo hello; exit 3");
    assert_eq!(stdout(&out), "hello\n", "stderr: {}", stderr(&out));
    assert_eq!(out.status.code(), Some(3), "stderr: {}", stderr(&out));
}

#[test]
fn without_a_grant_stderr_names_the_request_command() {
    let s = setup();
    let out = ssh(s.gw.ssh_port, &s.alice_key, "alice+web1", "echo hello");
    let err = stderr(&out);
    assert!(!out.status.success(), "should be refused; stdout: {}", stdout(&out));
    assert!(stdout(&out).is_empty(), "nothing ran upstream: {}", stdout(&out));
    assert!(
        err.contains("no grant for alice on \"web1\"") && err.contains("portcullis request web1 --reason"),
        "stderr should say why and how to ask: {err}"
    );
}
