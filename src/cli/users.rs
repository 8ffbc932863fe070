//! `user add`, `user list`, `user key add|remove|list`, `whoami`.

use anyhow::Context;
use serde_json::{Value, json};

use super::client::{Api, field, seg};
use super::output::{cell, print_list};

/// `user ...`.
#[derive(Debug, clap::Subcommand)]
pub enum UserCommand {
    /// Create a user; prints the new token, once, alone on stdout.
    Add {
        /// User name.
        name: String,
        /// A group the user belongs to (repeatable).
        #[arg(long = "group", value_name = "G")]
        groups: Vec<String>,
        /// Give the admin right.
        #[arg(long)]
        admin: bool,
        /// An SSH public key file for the user (repeatable).
        #[arg(long = "ssh-key", value_name = "FILE")]
        ssh_keys: Vec<std::path::PathBuf>,
    },
    /// List users.
    List {
        /// Print the API's JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Manage a user's SSH public keys; changes reach the SSH gateway at once.
    #[command(subcommand)]
    Key(KeyCommand),
}

/// `user key ...`.
#[derive(Debug, clap::Subcommand)]
pub enum KeyCommand {
    /// Register a public key (a `.pub` file) for a user; prints its fingerprint.
    Add {
        /// User name.
        name: String,
        /// OpenSSH public key file, e.g. ~/.ssh/id_ed25519.pub.
        file: std::path::PathBuf,
    },
    /// Remove a key, named by its fingerprint (`SHA256:...`) or its `.pub` file; prints its fingerprint.
    Remove {
        /// User name.
        name: String,
        /// `SHA256:...` as `user key list` shows it, or the public key file.
        key: String,
    },
    /// List a user's registered keys.
    List {
        /// User name.
        name: String,
        /// Print the API's JSON array.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `user` verb.
pub async fn run(api: &Api, cmd: UserCommand) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Add {
            name,
            groups,
            admin,
            ssh_keys,
        } => {
            let mut body = json!({ "name": name, "groups": groups, "admin": admin });
            if !ssh_keys.is_empty() {
                let mut keys = Vec::new();
                for path in &ssh_keys {
                    let key = std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read the SSH key {}", path.display()))?;
                    keys.push(Value::String(key.trim().to_owned()));
                }
                body["ssh_keys"] = Value::Array(keys);
            }
            let user = api.post("/v1/users", body).await?;
            println!("{}", field(&user, "token")?);
            Ok(())
        }
        UserCommand::List { json } => {
            let value = api.get("/v1/users").await?;
            print_list(&value, json, &["NAME", "GROUPS", "ADMIN", "CREATED"], |u| {
                vec![
                    cell(u, "name"),
                    cell(u, "groups"),
                    cell(u, "admin"),
                    cell(u, "created_at"),
                ]
            })
        }
        UserCommand::Key(cmd) => key(api, cmd).await,
    }
}

/// Runs a `user key` verb.
async fn key(api: &Api, cmd: KeyCommand) -> anyhow::Result<()> {
    let path = |name: &str| format!("/v1/users/{}/ssh-keys", seg(name));
    match cmd {
        KeyCommand::Add { name, file } => {
            let key = read_key(&file)?;
            let added = api.post(&path(&name), json!({ "key": key })).await?;
            println!("{}", field(&added, "fingerprint")?);
        }
        KeyCommand::Remove { name, key } => {
            // A fingerprint is what `list` shows; anything else must be a key file.
            let body = if key.starts_with("SHA256:") {
                json!({ "fingerprint": key })
            } else {
                let file = std::path::Path::new(&key);
                if !file.exists() {
                    anyhow::bail!("\"{key}\" is neither a fingerprint (SHA256:...) nor a public key file");
                }
                json!({ "key": read_key(file)? })
            };
            let removed = api.post(&format!("{}/remove", path(&name)), body).await?;
            println!("{}", field(&removed, "fingerprint")?);
        }
        KeyCommand::List { name, json } => {
            let value = api.get(&path(&name)).await?;
            print_list(&value, json, &["FINGERPRINT", "TYPE", "COMMENT"], |k| {
                vec![cell(k, "fingerprint"), cell(k, "type"), cell(k, "comment")]
            })?;
        }
    }
    Ok(())
}

/// One public key line from `file`.
fn read_key(file: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read the SSH key {}", file.display()))?;
    Ok(text.trim().to_owned())
}

/// `whoami`: the name on the first line, then groups and the admin right.
pub async fn whoami(api: &Api) -> anyhow::Result<()> {
    let me = api.get("/v1/whoami").await?;
    println!("{}", field(&me, "name")?);
    println!("groups: {}", cell(&me, "groups"));
    println!("admin: {}", cell(&me, "admin"));
    Ok(())
}
