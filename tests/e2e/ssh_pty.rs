//! An interactive shell as a person has it: OpenSSH in a real terminal (a
//! pty this test holds the other end of), typing into a login shell on the
//! server, resizing the window, interrupting a command with Ctrl-C, and
//! leaving with an exit status; the session's recording follows the resize.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pty_process::Size;
use serde_json::Value;

use crate::harness::GatewayOptions;
use crate::harness::sshd::{CLIENT_OPTIONS, SshSetup, Sshd};

/// Bound on waiting for one piece of output.
const WAIT: Duration = Duration::from_secs(20);

/// The terminal's side the test holds: what ssh printed so far, and the keyboard.
struct Terminal {
    pty: Arc<pty_process::blocking::Pty>,
    seen: Arc<Mutex<Vec<u8>>>,
    child: std::process::Child,
}

impl Terminal {
    /// Types `keys`.
    fn type_keys(&self, keys: &str) {
        (&*self.pty).write_all(keys.as_bytes()).expect("type into the terminal");
    }

    /// Waits until the screen shows `text` after position `from`; answers where it ends.
    fn wait_for(&self, text: &str, from: usize) -> usize {
        let deadline = Instant::now() + WAIT;
        loop {
            let seen = String::from_utf8_lossy(&self.seen.lock().expect("screen")).into_owned();
            if let Some(at) = seen.get(from..).and_then(|s| s.find(text)) {
                return from + at + text.len();
            }
            assert!(
                Instant::now() < deadline,
                "the terminal never showed {text:?}; it shows:\n{seen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ssh LOGIN@gateway` with no command, in a fresh 24x80 terminal.
fn open_terminal(port: u16, key: &std::path::Path, login: &str) -> Terminal {
    let (pty, pts) = pty_process::blocking::open().expect("a pty");
    pty.resize(Size::new(24, 80)).expect("set the terminal size");
    let child = pty_process::blocking::Command::new("ssh")
        .args(CLIENT_OPTIONS)
        .arg("-p")
        .arg(port.to_string())
        .arg("-i")
        .arg(key)
        .arg(format!("{login}@127.0.0.1"))
        .env("TERM", "xterm")
        .env_remove("SSH_AUTH_SOCK")
        .spawn(pts)
        .expect("spawn ssh in the pty");
    let pty = Arc::new(pty);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (reader, screen) = (Arc::clone(&pty), Arc::clone(&seen));
    // Reads until ssh exits and the pty closes (EIO), so the test never blocks on it.
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = (&*reader).read(&mut buf) {
            screen.lock().expect("screen").extend_from_slice(&buf[..n]);
        }
    });
    Terminal { pty, seen, child }
}

#[test]
fn a_shell_in_a_real_terminal_follows_resizes_and_ctrl_c_and_keeps_the_exit_status() {
    let s = SshSetup::start(Sshd::start(), GatewayOptions::default());
    let (gw, key) = (&s.gw, &s.alice_key);
    gw.grant(&s.alice, &s.carol, "web1", None, "30m");

    let mut t = open_terminal(gw.ssh_port, key, "alice+web1");
    // Markers are computed by the shell, so the terminal's echo of what was typed never matches.
    t.type_keys("stty size; echo size-$((40+2))\r");
    let at = t.wait_for("size-42", 0);
    let screen = String::from_utf8_lossy(&t.seen.lock().expect("screen")).into_owned();
    assert!(
        screen.contains("24 80"),
        "the server's pty has the terminal's size:\n{screen}"
    );

    // The window grows: ssh sends a window change, the server's pty follows.
    t.pty.resize(Size::new(40, 100)).expect("resize");
    std::thread::sleep(Duration::from_millis(300));
    t.type_keys("stty size; echo resized-$((40+3))\r");
    let at = t.wait_for("40 100", at);
    let at = t.wait_for("resized-43", at);

    // Ctrl-C interrupts the command on the server; the shell goes on.
    // (Waiting for after-5 is bounded well below 60 s.)
    t.type_keys("sleep 60; echo not-$((1+1))-interrupted\r");
    std::thread::sleep(Duration::from_millis(500));
    t.type_keys("\u{3}");
    t.type_keys("echo after-$((2+3))\r");
    t.wait_for("after-5", at);
    t.type_keys("exit 7\r");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = t.child.try_wait().expect("wait for ssh") {
            break status;
        }
        assert!(Instant::now() < deadline, "ssh did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(7), "the shell's exit status reaches ssh");
    let screen = String::from_utf8_lossy(&t.seen.lock().expect("screen")).into_owned();
    assert!(!screen.contains("not-2-interrupted"), "{screen}");

    // The recording holds the output and the resize.
    let deadline = Instant::now() + WAIT;
    let cast = loop {
        let listed: Value = serde_json::from_str(&gw.cli_ok(&gw.admin_token, &["recordings", "--json"])).expect("JSON");
        if let Some(id) = listed.as_array().and_then(|l| l.first()).and_then(|r| r["id"].as_str()) {
            break gw.cli_ok(&gw.admin_token, &["recording", id]);
        }
        assert!(Instant::now() < deadline, "no recording listed");
        std::thread::sleep(Duration::from_millis(200));
    };
    let header: Value = serde_json::from_str(cast.lines().next().unwrap_or_default()).expect("header");
    assert_eq!(
        (header["width"].as_u64(), header["height"].as_u64()),
        (Some(80), Some(24)),
        "{header}"
    );
    let events: Vec<Value> = cast
        .lines()
        .skip(1)
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(events.iter().any(|e| e[1] == "r" && e[2] == "100x40"), "{cast}");
    assert!(
        events
            .iter()
            .any(|e| e[1] == "o" && e[2].as_str().is_some_and(|o| o.contains("after-5"))),
        "{cast}"
    );
}
