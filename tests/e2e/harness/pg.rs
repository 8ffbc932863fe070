//! One throwaway PostgreSQL 15 cluster per test run, started on first use:
//! SCRAM on host connections (md5 and trust for one role each), the `orders`
//! database with 1000 items, upstream roles for every auth kind, and pgbench
//! tables in `bench`. A guardian process stops it when the test process ends.

use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

const BIN: &str = "/usr/lib/postgresql/15/bin";

/// The running cluster and the upstream secrets the gateway is given.
pub struct Pg {
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// Temp dir holding the data dir, the unix socket and the server log.
    pub dir: PathBuf,
    /// Password of `postgres`.
    pub superuser_password: String,
    /// Password of `orders_ro` (SCRAM).
    pub ro_password: String,
    /// Password of `orders_admin` (SCRAM).
    pub admin_password: String,
    /// Password of `md5user` (stored as md5).
    pub md5_password: String,
    /// The server's self-signed certificate (for 127.0.0.1 and localhost),
    /// the CA a `verify-full` resource trusts.
    pub ca_file: PathBuf,
}

static PG: OnceLock<Pg> = OnceLock::new();

/// The cluster, started on first call.
pub fn pg() -> &'static Pg {
    PG.get_or_init(|| match Pg::start() {
        Ok(pg) => pg,
        Err(e) => panic!("cannot start the test PostgreSQL cluster: {e}"),
    })
}

/// 16 hex digits from std's randomly keyed hasher.
pub fn random_hex() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// A port that was free a moment ago on 127.0.0.1.
///
/// Taken below the kernel's ephemeral range (32768 and up by default): a port
/// from `bind(0)` can be handed to another test's outgoing connection before
/// the server that was meant to listen on it binds it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Start each test process at its own place so concurrent runs rarely meet.
    let start = std::process::id().wrapping_mul(7919) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(LOW + (start + n) % SPAN).expect("port in range");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 127.0.0.1:{LOW}..{}", LOW + SPAN);
}

impl Pg {
    /// Every upstream secret, for leak checks.
    pub fn secrets(&self) -> Vec<&str> {
        vec![
            &self.superuser_password,
            &self.ro_password,
            &self.admin_password,
            &self.md5_password,
        ]
    }

    /// A new empty database (e.g. a control plane's store): its name, and a
    /// URL that reaches it as the superuser over TCP.
    pub fn new_database(&self) -> (String, String) {
        let name = format!("store_{}", random_hex());
        self.sql("postgres", &format!("CREATE DATABASE {name}"));
        let url = format!(
            "postgres://postgres:{}@127.0.0.1:{}/{name}",
            self.superuser_password, self.port
        );
        (name, url)
    }

    /// Runs SQL as the superuser over the unix socket; answers unaligned tuples.
    pub fn sql(&self, db: &str, sql: &str) -> String {
        let out = Command::new("psql")
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", path_str(&self.dir), "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", db, "-c", sql])
            .env_remove("PGPASSWORD")
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "superuser SQL failed: {sql}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn start() -> Result<Pg, String> {
        let dir = tempfile::Builder::new()
            .prefix("portcullis-e2e-pg-")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?
            .keep();
        spawn_guardian(&dir)?;
        let owner = pg_owner()?;
        if owner.is_some() {
            run(Command::new("chown").arg("postgres").arg(&dir), "chown")?;
        }
        let pg = Pg {
            port: free_port(),
            dir: dir.clone(),
            superuser_password: format!("su-{}", random_hex()),
            ro_password: format!("ro-{}", random_hex()),
            admin_password: format!("adm-{}", random_hex()),
            md5_password: format!("md5-{}", random_hex()),
            ca_file: dir.join("server.crt"),
        };
        let data = dir.join("data");
        let pwfile = dir.join("pw");
        write(&pwfile, &pg.superuser_password)?;
        let mut initdb = Command::new(format!("{BIN}/initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()));
        run(as_owner(&mut initdb, owner, &dir), "initdb")?;
        write(
            &data.join("pg_hba.conf"),
            "local all all trust\n\
             host all md5user 127.0.0.1/32 md5\n\
             host all trustuser 127.0.0.1/32 trust\n\
             host all pwuser 127.0.0.1/32 password\n\
             host all all 127.0.0.1/32 scram-sha-256\n",
        )?;
        let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).map_err(|e| e.to_string())?;
        let _ = write!(
            conf,
            "\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 200\n",
            pg.port,
            dir.display()
        );
        write_server_cert(&pg.ca_file, &dir.join("server.key"))?;
        let _ = write!(
            conf,
            "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
            pg.ca_file.display(),
            dir.join("server.key").display()
        );
        write(&data.join("postgresql.conf"), &conf)?;
        let mut ctl = Command::new(format!("{BIN}/pg_ctl"));
        ctl.arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.join("postgres.log"))
            .args(["-w", "-t", "60", "start"]);
        run(as_owner(&mut ctl, owner, &dir), "pg_ctl start")?;
        pg.setup()?;
        Ok(pg)
    }

    fn setup(&self) -> Result<(), String> {
        let script = format!(
            "CREATE ROLE orders_ro LOGIN PASSWORD '{ro}';\n\
             CREATE ROLE orders_admin LOGIN PASSWORD '{adm}';\n\
             SET password_encryption = 'md5';\n\
             CREATE ROLE md5user LOGIN PASSWORD '{md5}';\n\
             RESET password_encryption;\n\
             CREATE ROLE trustuser LOGIN;\n\
             CREATE ROLE pwuser LOGIN PASSWORD '{md5}';\n\
             CREATE DATABASE orders OWNER orders_admin;\n\
             CREATE DATABASE bench OWNER orders_admin;\n\
             \\c orders\n\
             SET ROLE orders_admin;\n\
             CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL);\n\
             INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 1000) g;\n\
             GRANT SELECT ON items TO orders_ro, md5user, trustuser, pwuser;\n",
            ro = self.ro_password,
            adm = self.admin_password,
            md5 = self.md5_password,
        );
        let file = self.dir.join("setup.sql");
        write(&file, &script)?;
        let out = Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", path_str(&self.dir), "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-f"])
            .arg(&file)
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        let _ = std::fs::remove_file(&file);
        if !out.status.success() {
            return Err(format!("setup SQL failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let stored = self.sql(
            "postgres",
            "SELECT rolpassword LIKE 'md5%' FROM pg_authid WHERE rolname = 'md5user'",
        );
        if stored != "t" {
            return Err(format!("md5user's password is not stored as md5 (got {stored:?})"));
        }
        let out = Command::new(format!("{BIN}/pgbench"))
            .args(["-i", "-s", "1", "-q"])
            .args(["-h", path_str(&self.dir), "-p", &self.port.to_string()])
            .args(["-U", "orders_admin", "bench"])
            .output()
            .map_err(|e| format!("pgbench: {e}"))?;
        if !out.status.success() {
            return Err(format!("pgbench -i failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(())
    }
}

/// uid and gid of `postgres` when we run as root (initdb refuses root).
fn pg_owner() -> Result<Option<(u32, u32)>, String> {
    let me = capture(Command::new("id").arg("-u"))?;
    if me != "0" {
        return Ok(None);
    }
    let uid = capture(Command::new("id").args(["-u", "postgres"]))?;
    let gid = capture(Command::new("id").args(["-g", "postgres"]))?;
    match (uid.parse(), gid.parse()) {
        (Ok(u), Ok(g)) => Ok(Some((u, g))),
        _ => Err(format!("cannot read the postgres user's ids: {uid:?} {gid:?}")),
    }
}

fn as_owner<'a>(cmd: &'a mut Command, owner: Option<(u32, u32)>, dir: &Path) -> &'a mut Command {
    use std::os::unix::process::CommandExt;
    cmd.current_dir(dir);
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid).env("HOME", dir);
    }
    cmd
}

/// Stops the cluster (SIGQUIT to the postmaster, as `pg_ctl stop -m immediate`)
/// and removes its dir once this test process is gone. Its own process group,
/// so a Ctrl-C aimed at the tests does not kill it first.
fn spawn_guardian(dir: &Path) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let d = dir.display();
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
         if [ -f {d}/data/postmaster.pid ]; then kill -QUIT $(head -1 {d}/data/postmaster.pid) 2>/dev/null; sleep 2; fi; \
         rm -rf {d}",
        pid = std::process::id()
    );
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(drop)
        .map_err(|e| format!("guardian: {e}"))
}

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn capture(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
    // The cluster runs as `postgres`; it must be able to read what we write.
    let _ = Command::new("chmod").arg("0644").arg(path).status();
    if pg_owner().ok().flatten().is_some() {
        let _ = Command::new("chown").arg("postgres").arg(path).status();
    }
    Ok(())
}

/// A self-signed certificate for 127.0.0.1 and localhost, and its key
/// (mode 0600, owned by the cluster's user, as PostgreSQL insists).
fn write_server_cert(cert_path: &Path, key_path: &Path) -> Result<(), String> {
    let names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
    let key = rcgen::KeyPair::generate().map_err(|e| format!("key: {e}"))?;
    let cert = rcgen::CertificateParams::new(names)
        .and_then(|p| p.self_signed(&key))
        .map_err(|e| format!("certificate: {e}"))?;
    write(cert_path, &cert.pem())?;
    std::fs::write(key_path, key.serialize_pem()).map_err(|e| format!("write key: {e}"))?;
    let _ = Command::new("chmod").arg("0600").arg(key_path).status();
    if pg_owner().ok().flatten().is_some() {
        let _ = Command::new("chown").arg("postgres").arg(key_path).status();
    }
    Ok(())
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// The harness itself: the cluster has what the tests rely on.
#[test]
fn cluster_is_set_up() {
    let pg = pg();
    assert_eq!(
        pg.sql("orders", "SELECT count(*), min(id), max(id) FROM items"),
        "1000|1|1000"
    );
    let stored = pg.sql(
        "postgres",
        "SELECT string_agg(rolname || ':' || CASE WHEN rolpassword LIKE 'md5%' THEN 'md5' \
         WHEN rolpassword LIKE 'SCRAM-SHA-256$%' THEN 'scram' WHEN rolpassword IS NULL THEN 'none' END, ',' ORDER BY rolname) \
         FROM pg_authid WHERE rolname IN ('orders_ro', 'orders_admin', 'md5user', 'trustuser', 'postgres')",
    );
    assert_eq!(
        stored,
        "md5user:md5,orders_admin:scram,orders_ro:scram,postgres:scram,trustuser:none"
    );
    let hba = pg.sql(
        "postgres",
        "SELECT string_agg(user_name[1] || ':' || auth_method, ',' ORDER BY line_number) FROM pg_hba_file_rules WHERE type = 'host'",
    );
    assert_eq!(hba, "md5user:md5,trustuser:trust,pwuser:password,all:scram-sha-256");
    assert_eq!(pg.sql("bench", "SELECT count(*) FROM pgbench_accounts"), "100000");
    assert_eq!(
        pg.sql(
            "bench",
            "SELECT tableowner FROM pg_tables WHERE tablename = 'pgbench_accounts'"
        ),
        "orders_admin"
    );
}
