//! The control plane served on loopback and called with plain HTTP/1.1,
//! shared by the API tests. Each test crate uses part of it.
#![allow(dead_code, reason = "each test crate uses its own part of the helpers")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_control::{Control, ControlSettings, Policy, Principals, ReasonRule, ResourceKind, ResourceSettings};
use portcullis_protocol::sessions::{SessionDirectory, SessionInfo};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Sessions held in a list; `kill` removes one.
#[derive(Default)]
pub struct FakeSessions(pub Mutex<Vec<SessionInfo>>);

impl SessionDirectory for FakeSessions {
    fn list(&self) -> Vec<SessionInfo> {
        self.0.lock().expect("lock").clone()
    }
    fn kill(&self, id: &str, _by: &str) -> bool {
        let mut list = self.0.lock().expect("lock");
        let before = list.len();
        list.retain(|s| s.id != id);
        list.len() != before
    }
}

/// A running control plane, its admin's token and its fake session directory.
pub struct Api {
    pub addr: std::net::SocketAddr,
    pub admin: String,
    pub sessions: Arc<FakeSessions>,
    pub control: Arc<Control>,
    pub _dir: tempfile::TempDir,
}

/// The control plane with `orders` and `web1`.
pub async fn start() -> Api {
    start_with(resources()).await
}

/// The resources most tests use.
pub fn resources() -> Vec<ResourceSettings> {
    vec![
        ResourceSettings {
            name: "orders".to_owned(),
            kind: ResourceKind::Postgres,
            roles: vec!["read".to_owned(), "admin".to_owned()],
            policy: Policy {
                approvers: Some(Principals {
                    users: vec!["carol".to_owned()],
                    groups: vec!["dba".to_owned()],
                }),
                max_duration: Duration::from_secs(4 * 3600),
                default_duration: Duration::from_secs(3600),
                reason: ReasonRule::Pattern("^[A-Z]+-[0-9]+".to_owned()),
                ..Policy::default()
            },
            role_policies: Default::default(),
        },
        ResourceSettings {
            name: "web1".to_owned(),
            kind: ResourceKind::Ssh,
            roles: vec!["deploy".to_owned()],
            policy: Policy::default(),
            role_policies: Default::default(),
        },
    ]
}

/// The control plane with these resources.
pub async fn start_with(resources: Vec<ResourceSettings>) -> Api {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = ControlSettings {
        data_dir: dir.path().join("data"),
        store_postgres: None,
        resources,
        gateway_postgres: Some("127.0.0.1:6432".to_owned()),
        gateway_ssh: None,
        notifications: Default::default(),
        proxies: Vec::new(),
    };
    let registry = prometheus::Registry::new();
    let control = Control::open(settings, &registry).await.expect("open");
    let sessions = Arc::new(FakeSessions::default());
    let router = control.router(sessions.clone(), registry);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    let admin = std::fs::read_to_string(dir.path().join("data/admin.token"))
        .expect("admin.token")
        .trim()
        .to_owned();
    Api {
        addr,
        admin,
        sessions,
        control,
        _dir: dir,
    }
}

impl Api {
    /// One call: (status, body as JSON or as a string).
    pub async fn raw(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> (u16, String) {
        let mut s = TcpStream::connect(self.addr).await.expect("connect");
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
        if let Some(t) = token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        let body = body.unwrap_or("");
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
        s.write_all(req.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.expect("read");
        let text = String::from_utf8(raw).expect("utf-8");
        let (head, rest) = text.split_once("\r\n\r\n").expect("header");
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status");
        assert!(
            !head.to_ascii_lowercase().contains("transfer-encoding: chunked"),
            "answers carry a length"
        );
        (status, rest.to_owned())
    }

    pub async fn call(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string());
        let (status, text) = self.raw(method, path, Some(token), body.as_deref()).await;
        let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"));
        (status, v)
    }

    pub async fn ok(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method, path, token, body).await;
        assert!(status == 200 || status == 201, "{method} {path} answered {status}: {v}");
        v
    }

    pub async fn refused(&self, method: &str, path: &str, token: &str, body: Option<Value>, want: u16) -> String {
        let (status, v) = self.call(method, path, token, body).await;
        assert_eq!(status, want, "{method} {path}: {v}");
        let msg = v["error"].as_str().unwrap_or_else(|| panic!("no error sentence: {v}"));
        assert_eq!(v.as_object().map(|o| o.len()), Some(1), "only the error: {v}");
        msg.to_owned()
    }

    pub async fn user(&self, name: &str, groups: &[&str], admin: bool) -> String {
        let v = self
            .ok(
                "POST",
                "/v1/users",
                &self.admin,
                Some(json!({"name": name, "groups": groups, "admin": admin})),
            )
            .await;
        v["token"].as_str().expect("token").to_owned()
    }
}

pub fn is_api_time(v: &Value) -> bool {
    let s = v.as_str().unwrap_or_default();
    // 2026-11-23T10:15:00.123Z
    s.len() == 24 && s.ends_with('Z') && s.as_bytes().get(19) == Some(&b'.') && s.as_bytes().get(10) == Some(&b'T')
}
