//! A `portcullis serve` process per test: its config in a fresh temp dir, its
//! log beside it; `clients` has the helpers that drive it the way people do.

use std::fmt::Write as _;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::pg::{free_port, pg};

/// How long the gateway may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The upstream roles a test can configure on `orders`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `read`: orders_ro, SCRAM, password from an env var.
    Read,
    /// `admin`: orders_admin, SCRAM, password from a file.
    Admin,
    /// `md5`: md5user, md5, password from an env var.
    Md5,
    /// `trust`: trustuser, no password.
    Trust,
    /// `cleartext`: pwuser, whose server asks for the password in cleartext.
    Cleartext,
}

impl Role {
    /// The role's name in the config and in `dbname=orders@NAME`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Admin => "admin",
            Role::Md5 => "md5",
            Role::Trust => "trust",
            Role::Cleartext => "cleartext",
        }
    }

    /// The upstream user it logs in as.
    pub fn upstream_user(self) -> &'static str {
        match self {
            Role::Read => "orders_ro",
            Role::Admin => "orders_admin",
            Role::Md5 => "md5user",
            Role::Trust => "trustuser",
            Role::Cleartext => "pwuser",
        }
    }
}

/// What a test may vary in the config.
#[derive(Clone, Debug)]
pub struct GatewayOptions {
    /// `warn_before:` offsets.
    pub warn_before: Vec<String>,
    /// `postgres.require_tls`.
    pub require_tls: bool,
    /// `postgres.handshake_timeout`.
    pub handshake_timeout: String,
    /// Roles of `orders`.
    pub roles: Vec<Role>,
    /// `policy.approvals_required` of `orders`.
    pub approvals_required: u32,
    /// `policy.min_duration` of `orders`.
    pub min_duration: Option<String>,
    /// `policy.max_duration` of `orders`.
    pub max_duration: String,
    /// `policy.default_duration` of `orders`.
    pub default_duration: String,
    /// `policy.reason: required` when true.
    pub reason_required: bool,
    /// RUST_LOG for the gateway, when set.
    pub log_filter: Option<String>,
    /// `tls:` of `orders` towards the upstream server.
    pub upstream_tls: &'static str,
    /// `ca_file:` of `orders`.
    pub upstream_ca: Option<PathBuf>,
    /// More lines of `orders`' policy, each indented six spaces
    /// (e.g. `      pending_ttl: 1s\n`).
    pub policy_extra: String,
    /// More top-level YAML appended to the config (e.g. a `notifications:` section).
    pub extra_yaml: String,
    /// SSH resources (`resources:` entries, e.g. `Sshd::resource_yaml`); when set,
    /// the gateway also gets an `ssh:` listener on a free port.
    pub ssh_resources: Option<String>,
    /// More keys of the `ssh:` section, e.g. `, handshake_timeout: 1s`.
    pub ssh_extra: String,
    /// Which process: `serve` (default), `control` or `proxy` (see `split.rs`).
    pub mode: Mode,
    /// More environment variables of the process (e.g. proxy tokens).
    pub env: Vec<(String, String)>,
}

/// The process mode a `Gateway` runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// `portcullis serve`: everything in one process.
    #[default]
    Serve,
    /// `portcullis control`: no proxy listeners; ready when the API answers.
    Control,
    /// `portcullis control`, a further replica on a shared store: the first
    /// made `admin` and holds its token; this one writes none.
    Replica {
        /// The first replica's admin token.
        admin_token: String,
        /// The first replica's audit chain key (`DATA_DIR/audit.key`), which every replica needs.
        audit_key: Vec<u8>,
    },
    /// `portcullis proxy --control URL`: `api_port` is its health listener
    /// (`proxy.listen`); ready when `/readyz` answers 200.
    Proxy {
        /// `proxy.name`.
        name: String,
        /// The control plane's URL(s), comma-separated.
        control: String,
        /// `proxy.staleness`.
        staleness: String,
        /// The proxy's token (given as PORTCULLIS_PROXY_TOKEN).
        token: String,
    },
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            warn_before: vec!["5m".into(), "1m".into()],
            require_tls: false,
            handshake_timeout: "10s".into(),
            roles: vec![Role::Read],
            approvals_required: 1,
            min_duration: None,
            max_duration: "4h".into(),
            default_duration: "1h".into(),
            reason_required: true,
            log_filter: None,
            upstream_tls: "disable",
            upstream_ca: None,
            policy_extra: String::new(),
            extra_yaml: String::new(),
            ssh_resources: None,
            ssh_extra: String::new(),
            mode: Mode::Serve,
            env: Vec::new(),
        }
    }
}

/// A running gateway; killed on drop.
pub struct Gateway {
    /// Temp dir with the config, the log and the data dir; removed on drop.
    _dir: TempDir,
    /// HTTP API port.
    pub api_port: u16,
    /// Postgres listener port.
    pub pg_port: u16,
    /// SSH listener port (0 without `ssh_resources`).
    pub ssh_port: u16,
    /// `data_dir`.
    pub data_dir: PathBuf,
    /// Token of the built-in `admin`, from `data_dir/admin.token`.
    pub admin_token: String,
    log_path: PathBuf,
    log_filter: Option<String>,
    mode: Mode,
    env: Vec<(String, String)>,
    child: Child,
}

impl Gateway {
    /// Writes a config, starts `portcullis serve -c FILE`, and waits until the
    /// API answers `/healthz`, the Postgres port accepts and admin.token exists.
    pub fn start(opts: GatewayOptions) -> Gateway {
        // A port found free can still be taken before the gateway binds it;
        // such a start is retried on other ports, anything else fails at once.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut gw = Gateway::spawn(&opts);
            match gw.wait_ready() {
                Ok(()) => return gw,
                Err(e) if attempts < 3 && gw.log().contains("Address already in use") => {
                    eprintln!("gateway start hit a port clash, retrying: {e}");
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn spawn(opts: &GatewayOptions) -> Gateway {
        let pg = pg();
        let dir = tempfile::Builder::new()
            .prefix("portcullis-e2e-gw-")
            .tempdir()
            .expect("tempdir");
        let data_dir = dir.path().join("data");
        let admin_pw = dir.path().join("orders_admin.password");
        std::fs::write(&admin_pw, format!("{}\n", pg.admin_password)).expect("write password file");
        let api_port = free_port();
        let pg_port = free_port();
        let ssh_port = if opts.ssh_resources.is_some() { free_port() } else { 0 };
        let mut config = config_yaml(opts, &data_dir, api_port, pg_port, &admin_pw);
        if opts.ssh_resources.is_some() {
            config.push_str(&format!("ssh: {{ listen: 127.0.0.1:{ssh_port}{} }}\n", opts.ssh_extra));
        }
        if let Mode::Proxy { name, staleness, .. } = &opts.mode {
            // Its health listener takes the API's port: `http()` then reaches /readyz and /metrics.
            config.push_str(&format!(
                "proxy: {{ name: {name}, token_env: PORTCULLIS_PROXY_TOKEN, listen: 127.0.0.1:{api_port}, staleness: {staleness} }}\n"
            ));
        }
        let config_path = dir.path().join("portcullis.yaml");
        std::fs::write(&config_path, config).expect("write config");
        if let Mode::Replica { audit_key, .. } = &opts.mode {
            use std::os::unix::fs::PermissionsExt;
            std::fs::create_dir_all(&data_dir).expect("data dir");
            let path = data_dir.join("audit.key");
            std::fs::write(&path, audit_key).expect("write audit.key");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod audit.key");
        }
        let log_path = dir.path().join("gateway.log");
        let child = spawn_process(
            &opts.mode,
            &opts.env,
            &config_path,
            &log_path,
            opts.log_filter.as_deref(),
        );
        Gateway {
            _dir: dir,
            api_port,
            pg_port,
            ssh_port,
            admin_token: String::new(),
            data_dir,
            log_path,
            log_filter: opts.log_filter.clone(),
            mode: opts.mode.clone(),
            env: opts.env.clone(),
            child,
        }
    }

    /// Kills the process at once (SIGKILL, as a crash would); `restart` starts it again.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the process and starts it again on the same config, ports and data dir.
    fn respawn(&mut self) {
        self.stop();
        let config_path = self._dir.path().join("portcullis.yaml");
        self.child = spawn_process(
            &self.mode,
            &self.env,
            &config_path,
            &self.log_path,
            self.log_filter.as_deref(),
        );
    }

    /// Starts the process again on the same config, ports and data dir; waits until it is ready.
    pub fn restart(&mut self) {
        self.respawn();
        if let Err(e) = self.wait_ready() {
            panic!("{e}");
        }
    }

    /// Starts the process again on the same config, ports and data dir, and
    /// waits only until its Postgres port accepts: a proxy whose control
    /// plane is down never becomes ready.
    pub fn restart_listening(&mut self) {
        self.respawn();
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect(("127.0.0.1", self.pg_port)).is_err() {
            assert!(Instant::now() < deadline, "not listening; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the gateway at once (SIGKILL, as a crash would) and starts it
    /// again on the same config, ports and data dir; waits until it is ready.
    pub fn crash_and_restart(&mut self) {
        self.restart();
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        match self.mode {
            Mode::Serve => self.wait_serve_ready(),
            Mode::Control | Mode::Replica { .. } | Mode::Proxy { .. } => self.wait_split_ready(),
        }
    }

    /// A control plane: the API answers and admin.token exists. A proxy: its
    /// `/readyz` says ready (the feed's snapshot is applied) and the Postgres port accepts.
    fn wait_split_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let control = matches!(self.mode, Mode::Control | Mode::Replica { .. });
        let token_path = self.data_dir.join("admin.token");
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "portcullis exited during start ({status}); log:\n{}",
                    self.log()
                ));
            }
            let ready = if control {
                let token = match &self.mode {
                    Mode::Replica { admin_token, .. } => admin_token.clone(),
                    _ => std::fs::read_to_string(&token_path).unwrap_or_default(),
                };
                let ok =
                    matches!(self.try_http("GET", "/healthz", None, None), Ok((200, _))) && !token.trim().is_empty();
                if ok {
                    self.admin_token = token.trim().to_owned();
                }
                ok
            } else {
                matches!(self.try_http("GET", "/readyz", None, None), Ok((200, _)))
                    && TcpStream::connect(("127.0.0.1", self.pg_port)).is_ok()
            };
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "portcullis ({:?}) not ready after {START_TIMEOUT:?}; log:\n{}",
                    self.mode_name(),
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn mode_name(&self) -> &'static str {
        match self.mode {
            Mode::Serve => "serve",
            Mode::Control | Mode::Replica { .. } => "control",
            Mode::Proxy { .. } => "proxy",
        }
    }

    fn wait_serve_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let token_path = self.data_dir.join("admin.token");
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "portcullis serve exited during start ({status}); log:\n{}",
                    self.log()
                ));
            }
            let healthy = matches!(self.try_http("GET", "/healthz", None, None), Ok((200, _)));
            let pg_up = TcpStream::connect(("127.0.0.1", self.pg_port)).is_ok()
                && (self.ssh_port == 0 || TcpStream::connect(("127.0.0.1", self.ssh_port)).is_ok());
            let token = std::fs::read_to_string(&token_path).unwrap_or_default();
            if healthy && pg_up && !token.trim().is_empty() {
                self.admin_token = token.trim().to_owned();
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "portcullis serve not ready after {START_TIMEOUT:?} (healthz {healthy}, postgres port {pg_up}, admin.token {}); log:\n{}",
                    !token.trim().is_empty(),
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The API's base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    /// The most memory the gateway process has held so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmHWM in the gateway's status:\n{status}"))
    }

    /// Everything the gateway wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log_path).unwrap_or_default()).into_owned()
    }

    /// What the audit log's files hold, as someone reading them could see
    /// it: each file's raw bytes (lossy UTF-8), and every block's
    /// statements decompressed, as LZ4 keeps a repeated text only as a
    /// reference to its first copy.
    pub fn audit_files_text(&self) -> Vec<(String, String)> {
        let mut found = Vec::new();
        for file in ["audit.db", "audit.db-wal"] {
            let bytes = std::fs::read(self.data_dir.join(file)).unwrap_or_default();
            found.push((file.to_owned(), String::from_utf8_lossy(&bytes).into_owned()));
        }
        let conn = rusqlite::Connection::open(self.data_dir.join("audit.db")).expect("open audit.db");
        portcullis_control::audit::body::register(&conn).expect("audit_body");
        let mut bodies = conn
            .prepare("SELECT audit_body(body) FROM events WHERE body IS NOT NULL")
            .expect("prepare");
        let bodies: Vec<String> = bodies
            .query_map([], |r| r.get(0))
            .and_then(Iterator::collect)
            .expect("bodies");
        found.push(("audit.db's blocks, decompressed".to_owned(), bodies.join("\n")));
        found
    }

    /// Panics (with the log) if the gateway process has exited.
    pub fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("the gateway exited ({status}); log:\n{}", self.log());
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- gateway log ({}) ---\n{}", self.log_path.display(), self.log());
        }
    }
}

/// `portcullis serve|control|proxy -c CONFIG`, its output appended to `log_path`.
fn spawn_process(
    mode: &Mode,
    env: &[(String, String)],
    config_path: &std::path::Path,
    log_path: &std::path::Path,
    log_filter: Option<&str>,
) -> Child {
    let pg = pg();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .expect("open log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    match mode {
        Mode::Serve => cmd.arg("serve"),
        Mode::Control | Mode::Replica { .. } => cmd.arg("control"),
        Mode::Proxy { control, token, .. } => cmd
            .arg("proxy")
            .arg("--control")
            .arg(control)
            .env("PORTCULLIS_PROXY_TOKEN", token),
    };
    cmd.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    cmd.arg("-c")
        .arg(config_path)
        .env("ORDERS_RO_PASSWORD", &pg.ro_password)
        .env("MD5_PASSWORD", &pg.md5_password)
        .env_remove("PORTCULLIS_TOKEN")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone log"))
        .stderr(log);
    if let Some(filter) = log_filter {
        cmd.env("RUST_LOG", filter);
    }
    cmd.spawn().expect("spawn portcullis")
}

fn config_yaml(
    opts: &GatewayOptions,
    data_dir: &std::path::Path,
    api_port: u16,
    pg_port: u16,
    admin_pw: &std::path::Path,
) -> String {
    let pg = pg();
    let mut roles = String::new();
    for role in &opts.roles {
        let creds = match role {
            Role::Read => "{ user: orders_ro, password_env: ORDERS_RO_PASSWORD }".to_owned(),
            Role::Admin => format!("{{ user: orders_admin, password_file: {} }}", admin_pw.display()),
            Role::Md5 => "{ user: md5user, password_env: MD5_PASSWORD }".to_owned(),
            Role::Trust => "{ user: trustuser }".to_owned(),
            Role::Cleartext => "{ user: pwuser, password_env: MD5_PASSWORD }".to_owned(),
        };
        let _ = writeln!(roles, "      {}: {creds}", role.name());
    }
    let mut policy = format!(
        "      approvers: {{ users: [carol], groups: [dba] }}\n      approvals_required: {}\n      max_duration: {}\n      default_duration: {}\n",
        opts.approvals_required, opts.max_duration, opts.default_duration
    );
    if let Some(min) = &opts.min_duration {
        let _ = writeln!(policy, "      min_duration: {min}");
    }
    if opts.reason_required {
        policy.push_str("      reason: required\n");
    }
    policy.push_str(&opts.policy_extra);
    let mut upstream_tls = format!("tls: {}", opts.upstream_tls);
    if let Some(ca) = &opts.upstream_ca {
        let _ = write!(upstream_tls, "\n    ca_file: {}", ca.display());
    }
    let mut yaml = format!(
        "data_dir: {data}\n\
         api: {{ listen: 127.0.0.1:{api_port} }}\n\
         postgres:\n  listen: 127.0.0.1:{pg_port}\n  require_tls: {tls}\n  handshake_timeout: {hs}\n  workers: 1\n\
         warn_before: [{warn}]\n\
         resources:\n\
         \x20 - name: orders\n    kind: postgres\n    host: 127.0.0.1\n    port: {port}\n    database: orders\n    {upstream_tls}\n    roles:\n{roles}    policy:\n{policy}\
         \x20 - name: bench\n    kind: postgres\n    host: 127.0.0.1\n    port: {port}\n    database: bench\n    tls: disable\n    roles:\n      admin: {{ user: orders_admin, password_file: {pw} }}\n    policy:\n      approvers: {{ users: [carol], groups: [dba] }}\n      max_duration: 4h\n      default_duration: 1h\n",
        data = data_dir.display(),
        tls = opts.require_tls,
        hs = opts.handshake_timeout,
        warn = opts.warn_before.join(", "),
        port = pg.port,
        pw = admin_pw.display(),
    );
    // More entries of `resources:`, before any other section.
    if let Some(resources) = &opts.ssh_resources {
        yaml.push_str(resources);
    }
    yaml.push_str(&opts.extra_yaml);
    yaml
}
