//! Clients that try to run something the audit would not see. A second
//! program on one channel needs a client OpenSSH is not (russh's, which can
//! send one); an sftp stream that cannot be followed is written raw through
//! `ssh -s HOST sftp`. Either way nothing unrecorded reaches the server.

use std::sync::Arc;
use std::time::Duration;

use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate, load_secret_key};
use russh::{ChannelMsg, client};
use serde_json::Value;

use crate::harness::clients::run_bounded_input;
use crate::harness::sshd::{SshSetup, ssh_with};
use crate::harness::stderr;

/// Takes any host key: the gateway's own is not what is tested here.
struct AnyKey;

impl client::Handler for AnyKey {
    type Error = russh::Error;

    async fn check_server_key(&mut self, _: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

fn d<'a>(e: &'a Value, k: &str) -> &'a str {
    e["detail"][k].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_program_on_one_channel_is_refused_and_never_runs() {
    let s = SshSetup::with_policy("", "", "");
    s.gw.grant(&s.alice, &s.carol, "web1", None, "30m");
    let far = tempfile::tempdir().expect("tempdir");
    let (first, second) = (far.path().join("first"), far.path().join("second"));

    let config = Arc::new(client::Config::default());
    let mut ssh = client::connect(config, ("127.0.0.1", s.gw.ssh_port), AnyKey)
        .await
        .expect("connect to the gateway");
    let key = load_secret_key(&s.alice_key, None).expect("alice's key");
    let auth = ssh
        .authenticate_publickey("alice+web1", PrivateKeyWithHashAlg::new(Arc::new(key), None))
        .await
        .expect("authenticate");
    assert!(auth.success(), "alice's key should log in");
    let mut channel = ssh.channel_open_session().await.expect("a session channel");
    // The first runs long enough for the second to arrive while it does.
    channel
        .exec(true, format!("sleep 1; touch {}", first.display()))
        .await
        .expect("first exec");
    channel
        .exec(true, format!("touch {}", second.display()))
        .await
        .expect("second exec");
    let mut replies = Vec::new();
    let mut exit = None;
    let wait = async {
        while let Some(msg) = channel.wait().await {
            match msg {
                ChannelMsg::Success => replies.push("success"),
                ChannelMsg::Failure => replies.push("failure"),
                ChannelMsg::ExitStatus { exit_status } => exit = Some(exit_status),
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .expect("the channel should end within 30 s");
    assert_eq!(replies, ["success", "failure"], "one program a channel");
    assert_eq!(exit, Some(0), "the first ran to its end");
    assert!(first.exists(), "the first command ran");
    assert!(!second.exists(), "the refused one never reached the server");

    let execs = s.gw.audit_until(&["--action", "exec"], |v| !v.is_empty());
    assert_eq!(execs.len(), 1, "{execs:#?}");
    assert_eq!(d(&execs[0], "command"), format!("sleep 1; touch {}", first.display()));
    assert_eq!(d(&execs[0], "exit_status"), "0", "{}", execs[0]);
}

/// An SFTP packet: length, type, then the body.
fn packet(kind: u8, body: &[&[u8]]) -> Vec<u8> {
    let body = body.concat();
    let mut p = u32::try_from(body.len() + 1).expect("small").to_be_bytes().to_vec();
    p.push(kind);
    p.extend(body);
    p
}

/// An SFTP string.
fn string(v: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(v.len()).expect("small").to_be_bytes().to_vec();
    out.extend_from_slice(v);
    out
}

/// Writes `stream` to the sftp subsystem through `ssh -s`, and checks that
/// the session was cut because the audit could not follow it, with `why`.
fn cut_for(s: &SshSetup, stream: &[u8], why: &str) {
    let mut cmd = ssh_with(s.gw.ssh_port, &s.alice_key, &["-s"], "alice+web1", Some("sftp"));
    let out = run_bounded_input(&mut cmd, Some(stream), Duration::from_secs(30));
    assert!(!out.status.success(), "the session should be cut: {}", stderr(&out));
    assert!(
        stderr(&out).contains("is closed: the audit cannot follow it (its sftp stream: "),
        "the client should be told: {}",
        stderr(&out)
    );
    let ended = s.gw.audit_until(&["--action", "session.end"], |v| !v.is_empty());
    assert_eq!(d(&ended[0], "ended"), "audit_lost", "{}", ended[0]);
    let lost = s.gw.audit_json(&["--action", "sftp"]);
    let lost = lost
        .iter()
        .find(|e| d(e, "op") == "unparseable")
        .unwrap_or_else(|| panic!("no unparseable event: {lost:#?}"));
    assert_eq!(d(lost, "why"), why, "{lost}");
}

#[test]
fn an_sftp_stream_that_cannot_be_followed_cuts_the_session() {
    let s = SshSetup::with_policy("", "", "");
    s.gw.grant(&s.alice, &s.carol, "web1", None, "30m");
    cut_for(
        &s,
        b"\xff\xff\xff\xff not sftp at all",
        "a packet length of 4294967295 bytes (the limit is 1048576)",
    );
}

#[test]
fn a_request_id_used_twice_cuts_the_session_and_neither_request_runs() {
    let s = SshSetup::with_policy("", "", "");
    s.gw.grant(&s.alice, &s.carol, "web1", None, "30m");
    let far = tempfile::tempdir().expect("tempdir");
    let (a, b) = (far.path().join("a"), far.path().join("b"));
    std::fs::write(&a, "a").expect("write a");
    std::fs::write(&b, "b").expect("write b");
    // INIT, then two REMOVEs under id 7: one answer could pass for the
    // other's, and one of them would go unrecorded.
    let id = 7u32.to_be_bytes();
    let stream = [
        packet(1, &[&3u32.to_be_bytes()]),
        packet(13, &[&id, &string(a.display().to_string().as_bytes())]),
        packet(13, &[&id, &string(b.display().to_string().as_bytes())]),
    ]
    .concat();
    cut_for(&s, &stream, "request id 7 used again before its answer");
    assert!(a.exists() && b.exists(), "nothing the audit could not follow ran");
    let sftp = s.gw.audit_json(&["--action", "sftp"]);
    let first = sftp
        .iter()
        .find(|e| d(e, "op") == "remove")
        .unwrap_or_else(|| panic!("the first remove is on record: {sftp:#?}"));
    assert_eq!(
        (d(first, "path"), d(first, "outcome")),
        (a.display().to_string().as_str(), "interrupted")
    );
}
