//! `portcullis`: the one binary. `serve` runs the control plane and the proxy
//! in one process; every other verb is a client of the HTTP API.
#![forbid(unsafe_code)]

mod cli;
mod config;
mod control_mode;
mod process;
mod proxy_mode;
mod serve;
mod tls_listener;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Just-in-time access to PostgreSQL and SSH, through a gateway that cuts sessions at expiry.
#[derive(Parser)]
#[command(name = "portcullis", version, about)]
struct Cli {
    #[command(flatten)]
    client: cli::ClientArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane and the proxy in one process on the embedded store.
    Serve {
        /// The YAML config file.
        #[arg(short = 'c', long)]
        config: PathBuf,
    },
    /// Run the control plane alone (API, store, workflow, feed) for remote proxies to follow.
    Control {
        /// The YAML config file (with `proxies:`).
        #[arg(short = 'c', long)]
        config: PathBuf,
    },
    /// Run a proxy alone (Postgres and SSH listeners) following a control plane over the network.
    Proxy {
        /// The YAML config file (with `proxy:`).
        #[arg(short = 'c', long)]
        config: PathBuf,
        /// Control plane URL(s), tried in turn: `--control URL[,URL...]`.
        #[arg(
            long,
            env = "PORTCULLIS_CONTROL",
            value_delimiter = ',',
            required = true,
            value_name = "URL"
        )]
        control: Vec<String>,
    },
    /// Check a config file and exit.
    CheckConfig {
        /// The YAML config file.
        #[arg(short = 'c', long)]
        config: PathBuf,
    },
    #[command(flatten)]
    Client(cli::ClientCommand),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portcullis: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve { config } => serve::run(&config).await,
            Command::Control { config } => control_mode::run(&config).await,
            Command::Proxy { config, control } => proxy_mode::run(&config, control).await,
            Command::CheckConfig { config } => config::load(&config)
                .map_err(anyhow::Error::from)
                .and_then(|c| {
                    let at = |m: String| anyhow::anyhow!("{}: {m}", config.display());
                    config::proxy_settings(&c).map_err(at)?;
                    config::proxy_link(&c).map_err(at)?;
                    config::control_plane(&c).map_err(at).map(drop)
                })
                .map(|_| println!("ok")),
            Command::Client(cmd) => cli::run(cli.client, cmd).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Help and version print in full; a usage mistake is one line on stderr,
/// as every other refusal of the CLI is, so scripts can show it as it is.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let rendered = e.render().to_string();
    let reason: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:"))
        .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
        .collect();
    let reason = reason.join(" ");
    eprintln!(
        "portcullis: {} (see portcullis --help)",
        reason.strip_prefix("error: ").unwrap_or(&reason)
    );
    ExitCode::from(2)
}
