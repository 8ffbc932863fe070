//! `user add`, `user list`, `whoami`.

use anyhow::Context;
use serde_json::{Value, json};

use super::client::{Api, field};
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
    }
}

/// `whoami`: the name on the first line, then groups and the admin right.
pub async fn whoami(api: &Api) -> anyhow::Result<()> {
    let me = api.get("/v1/whoami").await?;
    println!("{}", field(&me, "name")?);
    println!("groups: {}", cell(&me, "groups"));
    println!("admin: {}", cell(&me, "admin"));
    Ok(())
}
