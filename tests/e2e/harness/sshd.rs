//! A throwaway OpenSSH `sshd` per test on a loopback port (the config from
//! STACK.md), with keys made by ssh-keygen in its temp dir: its host key (to
//! pin in the gateway's config), the key the gateway logs in with upstream,
//! and an engineer's key for the `ssh` client.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::clients::run_bounded;
use super::pg::free_port;

/// Bound on any ssh client run.
const SSH_TIMEOUT: Duration = Duration::from_secs(60);

/// A running sshd; killed on drop.
pub struct Sshd {
    dir: TempDir,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its host key as an OpenSSH public key line, for `host_key:`.
    pub host_key: String,
    /// The private key the gateway's role logs in with (in `authorized_keys`).
    pub upstream_key: PathBuf,
    /// The local user the gateway logs in as.
    pub user: String,
    child: Child,
}

/// Makes an unencrypted ed25519 key pair at `path` (and `path.pub`).
pub fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "e2e", "-f"])
        .arg(path)
        .output()
        .expect("run ssh-keygen");
    assert!(
        out.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The public key line of the pair at `path`.
pub fn public_line(path: &Path) -> String {
    let mut pub_path = path.as_os_str().to_owned();
    pub_path.push(".pub");
    std::fs::read_to_string(PathBuf::from(pub_path))
        .expect("read public key")
        .trim()
        .to_owned()
}

impl Sshd {
    /// Starts sshd and waits until its port accepts.
    pub fn start() -> Sshd {
        Sshd::start_with("")
    }

    /// Like `start`, with more `sshd_config` lines (e.g. `AcceptEnv LANG\n`).
    pub fn start_with(extra_config: &str) -> Sshd {
        let dir = tempfile::Builder::new()
            .prefix("portcullis-e2e-sshd-")
            .tempdir()
            .expect("tempdir");
        std::fs::create_dir_all("/run/sshd").expect("mkdir /run/sshd (sshd's privilege separation dir)");
        let d = dir.path();
        let host = d.join("host_ed25519");
        keygen(&host);
        let upstream_key = d.join("upstream_ed25519");
        keygen(&upstream_key);
        std::fs::write(d.join("authorized_keys"), format!("{}\n", public_line(&upstream_key)))
            .expect("authorized_keys");
        let port = free_port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_ed25519\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             UsePAM no\nStrictModes no\nSubsystem sftp internal-sftp\n",
            d = d.display()
        );
        let config = format!("{config}{extra_config}");
        let config_path = d.join("sshd_config");
        std::fs::write(&config_path, config).expect("sshd_config");
        let log = std::fs::File::create(d.join("sshd.log")).expect("sshd log");
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("spawn /usr/sbin/sshd (apt-get install openssh-server)");
        let user = String::from_utf8_lossy(&Command::new("id").arg("-un").output().expect("id -un").stdout)
            .trim()
            .to_owned();
        let mut sshd = Sshd {
            host_key: public_line(&host),
            dir,
            port,
            upstream_key,
            user,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = sshd.child.try_wait() {
                panic!("sshd exited ({status}); log:\n{}", sshd.log());
            }
            assert!(
                Instant::now() < deadline,
                "sshd not listening after 20 s; log:\n{}",
                sshd.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        sshd
    }

    /// What sshd logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// The `resources:` entry `web1` for this sshd, one role `deploy`, approver carol.
    pub fn resource_yaml(&self) -> String {
        self.resource_yaml_with("")
    }

    /// Like `resource_yaml`, with more lines of its policy, each indented six
    /// spaces (e.g. `      env: [LANG]\n`).
    pub fn resource_yaml_with(&self, policy_extra: &str) -> String {
        format!(
            "  - name: web1\n    kind: ssh\n    host: 127.0.0.1\n    port: {}\n    host_key: \"{}\"\n    roles:\n      deploy: {{ user: {}, key_file: {} }}\n    policy:\n      approvers: {{ users: [carol] }}\n      max_duration: 4h\n      default_duration: 1h\n{policy_extra}",
            self.port,
            self.host_key,
            self.user,
            self.upstream_key.display()
        )
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- sshd log ---\n{}", self.log());
        }
    }
}

/// Options every client run gets: no config file, no known_hosts, no agent
/// prompts, only the given key, errors only.
pub const CLIENT_OPTIONS: [&str; 12] = [
    "-F",
    "/dev/null",
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "BatchMode=yes",
    "-o",
    "IdentitiesOnly=yes",
    "-o",
    "LogLevel=ERROR",
];

/// `ssh` with the test options, not yet given a port, key or target.
fn client(program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(CLIENT_OPTIONS).env_remove("SSH_AUTH_SOCK");
    cmd
}

/// `ssh` as a person runs it (no BatchMode, messages at the default level),
/// answering the one keyboard-interactive prompt with `answer` through an
/// askpass script, since there is no terminal to type it into.
pub fn ssh_prompted(port: u16, key: &Path, login: &str, command: &str, answer: &str) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let askpass = dir.path().join("askpass");
    std::fs::write(&askpass, "#!/bin/sh\nprintf '%s\\n' \"$E2E_ASKPASS_ANSWER\"\n").expect("write askpass");
    std::fs::set_permissions(&askpass, std::os::unix::fs::PermissionsExt::from_mode(0o700)).expect("chmod askpass");
    let mut cmd = Command::new("ssh");
    cmd.args([
        "-F",
        "/dev/null",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "NumberOfPasswordPrompts=1",
        "-p",
    ])
    .arg(port.to_string())
    .arg("-i")
    .arg(key)
    .arg(format!("{login}@127.0.0.1"))
    .arg(command)
    .env_remove("SSH_AUTH_SOCK")
    .env("SSH_ASKPASS", &askpass)
    .env("SSH_ASKPASS_REQUIRE", "force")
    .env("E2E_ASKPASS_ANSWER", answer);
    run_bounded(&mut cmd, SSH_TIMEOUT)
}

/// The real `ssh` client through the gateway, not yet run:
/// `ssh -p PORT -i KEY LOGIN@127.0.0.1 COMMAND`.
pub fn ssh_command(port: u16, key: &Path, login: &str, command: &str) -> Command {
    let mut cmd = client("ssh");
    cmd.arg("-p")
        .arg(port.to_string())
        .arg("-i")
        .arg(key)
        .arg(format!("{login}@127.0.0.1"))
        .arg(command);
    cmd
}

/// `ssh` with the test options but messages at the default level (as a person
/// sees them: e.g. why a forward failed), `-p PORT -i KEY`, then `options`
/// (e.g. `-W HOST:PORT`, `-A`, `-o SetEnv=...`), the login and, when given, the command.
pub fn ssh_with(port: u16, key: &Path, options: &[&str], login: &str, command: Option<&str>) -> Command {
    let mut cmd = Command::new("ssh");
    let (without_log_level, _) = CLIENT_OPTIONS.split_at(CLIENT_OPTIONS.len() - 2);
    cmd.args(without_log_level).env_remove("SSH_AUTH_SOCK");
    cmd.arg("-p")
        .arg(port.to_string())
        .arg("-i")
        .arg(key)
        .args(options)
        .arg(format!("{login}@127.0.0.1"));
    if let Some(c) = command {
        cmd.arg(c);
    }
    cmd
}

/// Runs `ssh_command` to completion, bounded.
pub fn ssh(port: u16, key: &Path, login: &str, command: &str) -> Output {
    run_bounded(&mut ssh_command(port, key, login, command), SSH_TIMEOUT)
}

/// `scp` through the gateway (`-P PORT -i KEY`), then `args` (add `-O` for legacy mode).
pub fn scp(port: u16, key: &Path, args: &[&str]) -> Output {
    let mut cmd = client("scp");
    cmd.arg("-P").arg(port.to_string()).arg("-i").arg(key).args(args);
    run_bounded(&mut cmd, SSH_TIMEOUT)
}

/// `sftp -b BATCH` through the gateway to `LOGIN@127.0.0.1`.
pub fn sftp_batch(port: u16, key: &Path, login: &str, batch: &Path) -> Output {
    let mut cmd = client("sftp");
    cmd.arg("-P")
        .arg(port.to_string())
        .arg("-i")
        .arg(key)
        .arg("-b")
        .arg(batch)
        .arg(format!("{login}@127.0.0.1"));
    run_bounded(&mut cmd, SSH_TIMEOUT)
}

/// `rsync -e 'ssh -p PORT -i KEY ...'` through the gateway, then `args`.
pub fn rsync(port: u16, key: &Path, args: &[&str]) -> Output {
    let rsh = format!("ssh {} -p {port} -i {}", CLIENT_OPTIONS.join(" "), key.display());
    let mut cmd = Command::new("rsync");
    cmd.arg("-e").arg(rsh).args(args).env_remove("SSH_AUTH_SOCK");
    run_bounded(&mut cmd, SSH_TIMEOUT)
}

/// Runs `cmd` on a thread of its own, bounded; join it for the output.
pub fn spawn_bounded(mut cmd: Command) -> std::thread::JoinHandle<Output> {
    std::thread::spawn(move || run_bounded(&mut cmd, SSH_TIMEOUT))
}

/// A gateway in front of an sshd, alice (with a registered key) and carol, the approver.
pub struct SshSetup {
    /// The gateway.
    pub gw: super::Gateway,
    /// The upstream server, `web1`: kept running for the test.
    _sshd: Sshd,
    /// Where alice's key lives; tests add more keys here.
    pub keys: TempDir,
    /// Alice's private key.
    pub alice_key: PathBuf,
    /// Alice's token.
    pub alice: String,
    /// Carol's token.
    pub carol: String,
}

impl SshSetup {
    /// A gateway whose `web1` has `policy` lines under its policy (six
    /// spaces in), before an sshd with `sshd_extra` in its config, and with
    /// `ssh_extra` in the gateway's `ssh:` section.
    pub fn with_policy(policy: &str, sshd_extra: &str, ssh_extra: &str) -> SshSetup {
        let sshd = Sshd::start_with(sshd_extra);
        let resource = sshd.resource_yaml_with(policy);
        SshSetup::start(
            sshd,
            super::GatewayOptions {
                ssh_resources: Some(resource),
                ssh_extra: ssh_extra.to_owned(),
                ..super::GatewayOptions::default()
            },
        )
    }

    /// Starts a gateway with `opts`, whose SSH resources default to `sshd`'s `web1`.
    pub fn start(sshd: Sshd, opts: super::GatewayOptions) -> SshSetup {
        let resources = opts.ssh_resources.clone().unwrap_or_else(|| sshd.resource_yaml());
        let gw = super::Gateway::start(super::GatewayOptions {
            ssh_resources: Some(resources),
            ..opts
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
        SshSetup {
            gw,
            _sshd: sshd,
            keys,
            alice_key,
            alice,
            carol,
        }
    }
}
