//! `fleetls-parent enroll create | list | revoke`: the operator's enrollment
//! tokens, made, listed and revoked through the admin API.

use std::process::ExitCode;

use fleetls_parent::client::{self, AdminTarget, Client};
use fleetls_parent::ops::enroll::{CreateRequest, Created, Listed};

use super::output::print_out;

/// What `enroll` does.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum EnrollAction {
    /// Make a token: devices that prove it in their first Hello are
    /// accepted. The token is printed once, on the last line of stdout;
    /// give it to the devices with `--enroll-token-file`.
    Create {
        /// Kinds of agent it admits, `,`-separated: child (default), mpos,
        /// local-parent
        /// (`--kind` is the old spelling, kept as an alias: `FLEETLS_KIND`
        /// is the child's own kind)
        #[arg(long = "kinds", alias = "kind")]
        kind: Option<String>,
        /// Names it admits (`*` and `?` wildcards; default any). `--name`
        /// is the old spelling, kept as an alias (`FLEETLS_NAME` is the
        /// child's own name)
        #[arg(long = "name-pattern", alias = "name")]
        name: Option<String>,
        /// How many agents it may admit (default 1)
        #[arg(long)]
        uses: Option<u64>,
        /// How long it admits: `30m`, `12h`, `7d` (default 1d)
        #[arg(long)]
        expires: Option<String>,
        #[command(flatten)]
        target: AdminTarget,
        /// Print JSON (the token in its `token` field)
        #[arg(long)]
        json: bool,
    },
    /// List the tokens: what each admits, its uses, and whom it admitted
    /// (never the token itself).
    List {
        #[command(flatten)]
        target: AdminTarget,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token (by its id, or the token itself): it admits no one
    /// from now on; the agents it admitted stay.
    Revoke {
        /// The token's id, as `enroll list` shows it
        id: String,
        #[command(flatten)]
        target: AdminTarget,
    },
}

/// Runs `enroll ACTION`.
pub(crate) async fn run(action: EnrollAction) -> anyhow::Result<ExitCode> {
    match action {
        EnrollAction::Create {
            kind,
            name,
            uses,
            expires,
            target,
            json,
        } => {
            let request = CreateRequest {
                kind,
                name,
                uses,
                expires,
            };
            let made: Created = Client::new(&target)?.post("/api/enroll", &request).await?;
            if json {
                print_out(&(serde_json::to_string_pretty(&made)? + "\n"))?;
            } else {
                print_out(&format!(
                    "enrollment token {}: admits {} named {:?}, {} use(s), until {}\n{}\n",
                    made.info.id,
                    kinds(&made.info.kinds),
                    made.info.name_pattern,
                    made.info.max_uses,
                    client::when(made.info.expires_at),
                    made.token
                ))?;
            }
        }
        EnrollAction::List { target, json } => {
            let list: Vec<Listed> = Client::new(&target)?.get("/api/enroll").await?;
            if json {
                print_out(&(serde_json::to_string_pretty(&list)? + "\n"))?;
            } else {
                let mut out = format!(
                    "{:<16} {:<9} {:<20} {:<16} {:>11} {:<20} ADMITTED\n",
                    "ID", "STATE", "KINDS", "NAMES", "USES", "EXPIRES"
                );
                for t in &list {
                    out.push_str(&format!(
                        "{:<16} {:<9} {:<20} {:<16} {:>11} {:<20} {}\n",
                        t.info.id,
                        t.state,
                        kinds(&t.info.kinds),
                        t.info.name_pattern,
                        format!("{}/{}", t.info.uses, t.info.max_uses),
                        client::when(t.info.expires_at),
                        t.admitted.join(", ")
                    ));
                }
                print_out(&out)?;
            }
        }
        EnrollAction::Revoke { id, target } => {
            let revoked: Listed = Client::new(&target)?
                .post("/api/enroll/revoke", &serde_json::json!({ "id": id }))
                .await?;
            fleetls_bus::outln!(
                "enrollment token {} revoked: it admitted {} agent(s), who stay admitted",
                revoked.info.id,
                revoked.admitted.len()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn kinds(kinds: &[fleetls_proto::AgentKind]) -> String {
    kinds
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(",")
}
