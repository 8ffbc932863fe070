//! The proxy's HTTP client of the control plane: its token as a bearer on
//! every call, rustls when a URL is https, and failover across the URLs
//! given to `--control` (the one that answered last is tried first).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use portcullis_protocol::secret::Secret;
use serde::Serialize;

/// How long connecting to a control URL may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on a short call (session report, audit batch).
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// The certificates of a private CA's PEM file, which a client of the
/// control plane then trusts alone.
pub fn private_roots(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    match reqwest::Certificate::from_pem_bundle(&pem) {
        Ok(roots) if !roots.is_empty() => Ok(roots),
        Ok(_) => Err(format!("{} holds no PEM certificate", path.display())),
        Err(e) => Err(format!("{} holds no PEM certificate: {e}", path.display())),
    }
}

/// Why a call to the control plane failed; never includes the token.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Connecting, sending or reading failed.
    #[error("{url}: {detail}")]
    Transport {
        /// The control URL tried.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// The control plane answered with an error status.
    #[error("{url} answered {status}: {body}")]
    Status {
        /// The control URL tried.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The start of its answer (the API's JSON error).
        body: String,
    },
}

/// A client of one or more control URLs.
pub struct ControlClient {
    urls: Vec<String>,
    token: Secret<String>,
    http: reqwest::Client,
    /// Index of the URL to try first.
    current: AtomicUsize,
}

impl ControlClient {
    /// A client of `urls` (at least one; trailing slashes dropped) with
    /// `token`; https certificates must chain to the PEM certificates in
    /// `ca_file` when given (a private CA), else to the system's roots.
    pub fn new(urls: Vec<String>, token: Secret<String>, ca_file: Option<&Path>) -> Result<ControlClient, String> {
        let urls: Vec<String> = urls
            .into_iter()
            .map(|u| u.trim().trim_end_matches('/').to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            return Err("--control: give at least one control plane URL".into());
        }
        for u in &urls {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(format!("--control: {u} is not an http:// or https:// URL"));
            }
        }
        let mut http = reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT);
        if let Some(path) = ca_file {
            http = http.tls_certs_only(private_roots(path).map_err(|e| format!("proxy.ca_file: {e}"))?);
        }
        let http = http.build().map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(ControlClient {
            urls,
            token,
            http,
            current: AtomicUsize::new(0),
        })
    }

    /// The URL tried first now.
    pub fn current_url(&self) -> &str {
        let i = self.current.load(Ordering::Relaxed) % self.urls.len().max(1);
        self.urls.get(i).map_or("", String::as_str)
    }

    /// Moves on to the next URL (after a failure).
    pub fn rotate(&self) {
        if self.urls.len() > 1 {
            self.current.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `GET path` on the current URL, with no overall timeout (the feed's
    /// stream is read with its own per-chunk bound). Error statuses are
    /// answered as they are, for the caller to judge (410 means resync).
    pub async fn get(&self, path: &str) -> Result<reqwest::Response, CallError> {
        let url = self.current_url().to_owned();
        self.http
            .get(format!("{url}{path}"))
            .bearer_auth(self.token.expose())
            .send()
            .await
            .map_err(|e| transport(&url, &e))
    }

    /// `POST path` with a JSON body, trying each URL once from the current
    /// one; a 2xx from any of them is success.
    pub async fn post_json<T: Serialize + ?Sized>(&self, path: &str, body: &T) -> Result<(), CallError> {
        let mut last = None;
        for _ in 0..self.urls.len() {
            let url = self.current_url().to_owned();
            let sent = self
                .http
                .post(format!("{url}{path}"))
                .bearer_auth(self.token.expose())
                .timeout(CALL_TIMEOUT)
                .json(body)
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => {
                    let status = r.status().as_u16();
                    let err = refused(url, r).await;
                    // A refusal is the same on every replica; only a server error moves on.
                    if status < 500 {
                        return Err(err);
                    }
                    last = Some(err);
                }
                Err(e) => last = Some(transport(&url, &e)),
            }
            self.rotate();
        }
        Err(last.unwrap_or_else(|| CallError::Transport {
            url: String::new(),
            detail: "no control URL".into(),
        }))
    }
}

/// A non-2xx answer from `url`, with the start of its body.
pub async fn refused(url: String, r: reqwest::Response) -> CallError {
    let status = r.status().as_u16();
    let body: String = r.text().await.unwrap_or_default().chars().take(300).collect();
    CallError::Status { url, status, body }
}

fn transport(url: &str, e: &reqwest::Error) -> CallError {
    // reqwest's Display names the URL, never headers: the token stays out.
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        source = s.source();
    }
    CallError::Transport {
        url: url.to_owned(),
        detail,
    }
}

impl std::fmt::Debug for ControlClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlClient")
            .field("urls", &self.urls)
            .finish_non_exhaustive()
    }
}
