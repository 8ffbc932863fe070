//! A split deployment per test: one `portcullis control` and N `portcullis
//! proxy` processes on free loopback ports, each a `Gateway` (same config
//! writing, same PostgreSQL cluster), the proxies following the control
//! plane's feed with their own tokens.

use super::gateway::{Gateway, GatewayOptions, Mode};
use super::pg::pg;

/// A control plane and its proxies; all killed on drop.
pub struct Split {
    /// `portcullis control`: the API, the CLI's target.
    pub control: Gateway,
    /// Further control replicas on the same (PostgreSQL) store.
    pub replicas: Vec<Gateway>,
    /// `portcullis proxy` processes; `api_port` is each one's health listener.
    pub proxies: Vec<Gateway>,
    /// Each proxy's token, by index.
    pub tokens: Vec<String>,
}

impl Split {
    /// Starts the control plane with `proxies: p0..pN`, then `n` proxies
    /// with `staleness`, each waited on until its `/readyz` says ready.
    pub fn start(n: usize, opts: GatewayOptions, staleness: &str) -> Split {
        let (tokens, yaml, env) = proxy_tokens(n, &opts);
        let control = Gateway::start(GatewayOptions {
            mode: Mode::Control,
            extra_yaml: yaml,
            env,
            ..opts.clone()
        });
        let proxies = start_proxies(&tokens, &opts, staleness, |_| control.url());
        Split {
            control,
            replicas: Vec::new(),
            proxies,
            tokens,
        }
    }

    /// Two control replicas on one PostgreSQL store (a fresh database of the
    /// test cluster), then `n` proxies: proxy i follows replica i % 2 and
    /// moves to the other when that one is gone (`--control FIRST,SECOND`).
    pub fn start_replicated(n: usize, opts: GatewayOptions, staleness: &str) -> Split {
        let (tokens, mut yaml, mut env) = proxy_tokens(n, &opts);
        yaml.push_str("store: { postgres_env: PORTCULLIS_STORE }\n");
        env.push(("PORTCULLIS_STORE".to_owned(), pg().new_database().1));
        let control = Gateway::start(GatewayOptions {
            mode: Mode::Control,
            extra_yaml: yaml.clone(),
            env: env.clone(),
            ..opts.clone()
        });
        let replica = Gateway::start(GatewayOptions {
            mode: Mode::Replica {
                admin_token: control.admin_token.clone(),
                audit_key: std::fs::read(control.data_dir.join("audit.key")).expect("the first replica's audit.key"),
            },
            extra_yaml: yaml,
            env,
            ..opts.clone()
        });
        let urls = [control.url(), replica.url()];
        let proxies = start_proxies(&tokens, &opts, staleness, |i| {
            format!("{},{}", urls[i % 2], urls[(i + 1) % 2])
        });
        Split {
            control,
            replicas: vec![replica],
            proxies,
            tokens,
        }
    }
}

/// Tokens of `n` proxies, and the `proxies:` section and environment that
/// let a control plane check them.
fn proxy_tokens(n: usize, opts: &GatewayOptions) -> (Vec<String>, String, Vec<(String, String)>) {
    let tokens: Vec<String> = (0..n).map(|i| format!("pxt_{i}_{}", std::process::id())).collect();
    let mut yaml = String::from("proxies:\n");
    let mut env = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        yaml.push_str(&format!("  - {{ name: p{i}, token_env: PROXY_TOKEN_{i} }}\n"));
        env.push((format!("PROXY_TOKEN_{i}"), token.clone()));
    }
    assert!(opts.extra_yaml.is_empty(), "Split writes extra_yaml itself");
    (tokens, yaml, env)
}

/// One proxy per token, proxy i following `control(i)`.
fn start_proxies(
    tokens: &[String],
    opts: &GatewayOptions,
    staleness: &str,
    control: impl Fn(usize) -> String,
) -> Vec<Gateway> {
    tokens
        .iter()
        .enumerate()
        .map(|(i, token)| {
            Gateway::start(GatewayOptions {
                mode: Mode::Proxy {
                    name: format!("p{i}"),
                    control: control(i),
                    staleness: staleness.to_owned(),
                    token: token.clone(),
                },
                ..opts.clone()
            })
        })
        .collect()
}
