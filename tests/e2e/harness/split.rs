//! A split deployment per test: one `portcullis control` and N `portcullis
//! proxy` processes on free loopback ports, each a `Gateway` (same config
//! writing, same PostgreSQL cluster), the proxies following the control
//! plane's feed with their own tokens.

use super::gateway::{Gateway, GatewayOptions, Mode};

/// A control plane and its proxies; all killed on drop.
pub struct Split {
    /// `portcullis control`: the API, the CLI's target.
    pub control: Gateway,
    /// `portcullis proxy` processes; `api_port` is each one's health listener.
    pub proxies: Vec<Gateway>,
    /// Each proxy's token, by index.
    pub tokens: Vec<String>,
}

impl Split {
    /// Starts the control plane with `proxies: p0..pN`, then `n` proxies
    /// with `staleness`, each waited on until its `/readyz` says ready.
    pub fn start(n: usize, opts: GatewayOptions, staleness: &str) -> Split {
        let tokens: Vec<String> = (0..n).map(|i| format!("pxt_{i}_{}", std::process::id())).collect();
        let mut yaml = String::from("proxies:\n");
        let mut env = Vec::new();
        for (i, token) in tokens.iter().enumerate() {
            yaml.push_str(&format!("  - {{ name: p{i}, token_env: PROXY_TOKEN_{i} }}\n"));
            env.push((format!("PROXY_TOKEN_{i}"), token.clone()));
        }
        assert!(opts.extra_yaml.is_empty(), "Split writes extra_yaml itself");
        let control = Gateway::start(GatewayOptions {
            mode: Mode::Control,
            extra_yaml: yaml,
            env,
            ..opts.clone()
        });
        let proxies = tokens
            .iter()
            .enumerate()
            .map(|(i, token)| {
                Gateway::start(GatewayOptions {
                    mode: Mode::Proxy {
                        name: format!("p{i}"),
                        control: control.url(),
                        staleness: staleness.to_owned(),
                        token: token.clone(),
                    },
                    ..opts.clone()
                })
            })
            .collect();
        Split {
            control,
            proxies,
            tokens,
        }
    }
}
