//! The HTTP side of the CLI: bearer auth, JSON bodies, and errors turned into
//! the one line a person reads (the API's `{"error": ..}` text, or why the API
//! could not be reached).

use std::time::Duration;

use anyhow::{Context, anyhow};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::ClientArgs;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on a streamed answer (an export of the whole audit log).
const STREAM_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Bound on a pause within a streamed answer.
const STREAM_IDLE: Duration = Duration::from_secs(60);
/// Longest line a streamed answer may send.
const MAX_LINE: usize = 64 * 1024 * 1024;

/// A client of one Portcullis API with one token.
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    /// Builds the client; does not contact the server.
    pub fn new(args: &ClientArgs) -> anyhow::Result<Api> {
        let mut http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT);
        if let Some(path) = &args.ca_file {
            let roots = portcullis_proxy::sync::client::private_roots(path).map_err(|e| anyhow!("--ca-file: {e}"))?;
            http = http.tls_certs_only(roots);
        }
        let http = http.build().context("cannot set up the HTTP client")?;
        let base = args.url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(anyhow!(
                "the API URL must start with http:// or https://, got \"{}\"",
                args.url
            ));
        }
        Ok(Api {
            http,
            base,
            token: args.token.clone().filter(|t| !t.trim().is_empty()),
        })
    }

    /// The API's base URL, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The caller's token, or the error that says how to give one.
    pub fn token(&self) -> anyhow::Result<&str> {
        self.token
            .as_deref()
            .ok_or_else(|| anyhow!("no token: pass --token or set PORTCULLIS_TOKEN"))
    }

    /// `GET path`, answering the JSON body.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(Method::GET, path, None).await
    }

    /// `POST path` with a JSON body, answering the JSON body.
    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.call(Method::POST, path, Some(body)).await
    }

    /// `GET path` whose answer is JSON lines, handed to `line` one by one as
    /// they arrive, so an answer of any size takes little memory. An answer
    /// that breaks off is an error, never taken for a short one.
    pub async fn get_lines(&self, path: &str, mut line: impl FnMut(&[u8]) -> anyhow::Result<()>) -> anyhow::Result<()> {
        let token = self.token()?;
        let url = format!("{}{path}", self.base);
        let req = self.http.get(&url).bearer_auth(token).timeout(STREAM_TIMEOUT);
        let mut resp = req.send().await.map_err(|e| unreachable_api(&self.base, e))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.map_err(|e| unreachable_api(&self.base, e))?;
            return Err(anyhow!(api_error(status, &text)));
        }
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let chunk = tokio::time::timeout(STREAM_IDLE, resp.chunk())
                .await
                .map_err(|_| {
                    anyhow!(
                        "the API at {} stopped sending for {}s",
                        self.base,
                        STREAM_IDLE.as_secs()
                    )
                })?
                .map_err(|e| anyhow!("the answer from {} broke off: {e}", self.base))?;
            let Some(chunk) = chunk else { break };
            buf.extend_from_slice(&chunk);
            let mut start = 0;
            while let Some(len) = buf.get(start..).and_then(|rest| rest.iter().position(|b| *b == b'\n')) {
                if let Some(l) = buf.get(start..start + len).filter(|l| !l.is_empty()) {
                    line(l)?;
                }
                start += len + 1;
            }
            buf.drain(..start);
            if buf.len() > MAX_LINE {
                return Err(anyhow!(
                    "the API at {} sent a line over {} MiB",
                    self.base,
                    MAX_LINE >> 20
                ));
            }
        }
        if !buf.is_empty() {
            line(&buf)?;
        }
        Ok(())
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let token = self.token()?;
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url).bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.map_err(|e| unreachable_api(&self.base, e))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| unreachable_api(&self.base, e))?;
        if !status.is_success() {
            return Err(anyhow!(api_error(status, &text)));
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| {
            anyhow!(
                "the API at {} answered {status} with a body that is not JSON: {e}",
                self.base
            )
        })
    }
}

fn unreachable_api(base: &str, e: reqwest::Error) -> anyhow::Error {
    // reqwest's Display names the URL; the chain below it says why (refused, timeout, DNS).
    let mut why = Vec::new();
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(&e);
    while let Some(s) = source {
        why.push(s.to_string());
        source = s.source();
    }
    if e.is_timeout() {
        why.push("timed out".to_owned());
    }
    if why.is_empty() {
        why.push(e.to_string());
    }
    why.dedup();
    anyhow!("cannot reach the Portcullis API at {base}: {}", why.join(": "))
}

/// One line from an error answer: the API's own sentence when it sent one.
fn api_error(status: StatusCode, body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<Value>(body)
        && let Some(msg) = v.get("error").and_then(Value::as_str)
    {
        return one_line(msg);
    }
    let body = one_line(body);
    if body.is_empty() {
        format!("the API answered {status}")
    } else {
        format!("the API answered {status}: {body}")
    }
}

fn one_line(text: &str) -> String {
    let joined: Vec<&str> = text.split_whitespace().collect();
    let mut line = joined.join(" ");
    if line.chars().count() > 300 {
        line = line.chars().take(300).collect::<String>() + "...";
    }
    line
}

/// Percent-encodes one path segment (ids are typed by people).
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A string field of an answer, or an error naming what was missing.
pub fn field<'a>(v: &'a Value, key: &str) -> anyhow::Result<&'a str> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("the API's answer has no \"{key}\" field"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_is_the_api_sentence() {
        let e = api_error(StatusCode::BAD_REQUEST, r#"{"error":"a reason is required"}"#);
        assert_eq!(e, "a reason is required");
        let e = api_error(StatusCode::BAD_GATEWAY, "upstream\nbroken");
        assert_eq!(e, "the API answered 502 Bad Gateway: upstream broken");
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(seg("req_01H-x.y"), "req_01H-x.y");
        assert_eq!(seg("a/b?c"), "a%2Fb%3Fc");
    }
}
