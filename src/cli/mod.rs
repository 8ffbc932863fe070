//! The `portcullis` client verbs for people: a thin client of the HTTP API
//! (docs/API.md) whose output is the contract in DESIGN.md's CLI table.

mod audit;
pub(crate) mod client;
mod connect;
mod grants;
mod history;
mod output;
mod recordings;
mod requests;
mod sessions;
mod users;

use std::fmt;

use client::Api;

/// Where the API is and who is calling; global flags of every client verb.
#[derive(Clone, clap::Args)]
pub struct ClientArgs {
    /// URL of the Portcullis HTTP API.
    #[arg(
        long,
        env = "PORTCULLIS_URL",
        default_value = "http://127.0.0.1:8080",
        global = true,
        value_name = "URL"
    )]
    pub url: String,
    /// Your personal token.
    #[arg(
        long,
        env = "PORTCULLIS_TOKEN",
        hide_env_values = true,
        global = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// PEM certificates an https API's certificate must chain to (a private CA).
    #[arg(long, env = "PORTCULLIS_CA_FILE", global = true, value_name = "FILE")]
    pub ca_file: Option<std::path::PathBuf>,
}

impl fmt::Debug for ClientArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientArgs")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish()
    }
}

/// The client verbs.
#[derive(Debug, clap::Subcommand)]
pub enum ClientCommand {
    /// Manage users (admin only).
    #[command(subcommand)]
    User(users::UserCommand),
    /// Ask for time-boxed access to a resource; prints the request id.
    Request(requests::RequestArgs),
    /// List requests: pending ones, or all with --all.
    Requests(ListArgs),
    /// Approve a request; prints its new state.
    Approve {
        /// Request id.
        id: String,
        /// A note kept with the approval.
        #[arg(long, value_name = "TEXT")]
        comment: Option<String>,
    },
    /// Deny a request; prints its new state.
    Deny {
        /// Request id.
        id: String,
        /// Why, shown to the requester.
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
    /// Cancel one of your own pending requests; prints its new state.
    Cancel {
        /// Request id.
        id: String,
    },
    /// List grants: active and scheduled ones, or all with --all.
    Grants(ListArgs),
    /// End a grant and its live sessions now; prints its state and deadline.
    Revoke {
        /// Grant id.
        grant_id: String,
        /// Why, shown to the grant's user.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Move a grant's deadline (and its live sessions'); prints its state and deadline.
    Extend {
        /// Grant id.
        grant_id: String,
        /// How much longer, e.g. 15m.
        #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
        by: String,
    },
    /// List live sessions; with --all past ones too; `sessions show ID` for one and its statements.
    Sessions(sessions::SessionsArgs),
    /// End one live session.
    Kill {
        /// Session id.
        session_id: String,
    },
    /// Search the audit log (oldest first), or `audit verify` its hash chain.
    Audit(audit::AuditArgs),
    /// List the recordings of interactive SSH sessions (admin only).
    Recordings {
        /// Print the API's JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Print one recording (asciicast v2) to stdout, e.g. for `asciinema play`.
    Recording {
        /// Recording id: the session id (`.N` for its N-th terminal).
        id: String,
    },
    /// Show who the token belongs to.
    Whoami,
    /// Show every transition of a request or grant: who, when and why.
    History {
        /// Request id (req_...) or grant id (grt_...).
        id: String,
        /// Print the API's JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Run psql (postgres) or ssh (ssh) against a resource through the gateway.
    Connect {
        /// Resource name.
        resource: String,
        /// Role to use when several are granted.
        #[arg(long, value_name = "ROLE")]
        role: Option<String>,
        /// Passed on to psql or ssh after `--`, e.g. `-- uname -a`.
        #[arg(last = true, value_name = "ARGS")]
        args: Vec<String>,
    },
}

/// `[--all] [--json]`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Include decided, expired and revoked entries.
    #[arg(long)]
    pub all: bool,
    /// Print the API's JSON array.
    #[arg(long)]
    pub json: bool,
}

/// Runs one client verb.
pub async fn run(args: ClientArgs, cmd: ClientCommand) -> anyhow::Result<()> {
    let api = Api::new(&args)?;
    match cmd {
        ClientCommand::User(cmd) => users::run(&api, cmd).await,
        ClientCommand::Request(req) => requests::request(&api, req).await,
        ClientCommand::Requests(list) => requests::list(&api, list).await,
        ClientCommand::Approve { id, comment } => requests::approve(&api, &id, comment).await,
        ClientCommand::Deny { id, reason } => requests::deny(&api, &id, &reason).await,
        ClientCommand::Cancel { id } => requests::cancel(&api, &id).await,
        ClientCommand::Grants(list) => grants::list(&api, list).await,
        ClientCommand::Revoke { grant_id, reason } => grants::revoke(&api, &grant_id, reason).await,
        ClientCommand::Extend { grant_id, by } => grants::extend(&api, &grant_id, &by).await,
        ClientCommand::Sessions(args) => sessions::run(&api, args).await,
        ClientCommand::Audit(args) => audit::run(&api, args).await,
        ClientCommand::Kill { session_id } => sessions::kill(&api, &session_id).await,
        ClientCommand::Recordings { json } => recordings::list(&api, json).await,
        ClientCommand::Recording { id } => recordings::show(&api, &id).await,
        ClientCommand::Whoami => users::whoami(&api).await,
        ClientCommand::History { id, json } => history::show(&api, &id, json).await,
        ClientCommand::Connect { resource, role, args } => {
            connect::connect(&api, &resource, role.as_deref(), &args).await
        }
    }
}
