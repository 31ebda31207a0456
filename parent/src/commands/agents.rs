//! `fleetls-parent agents list | accept | reject | delete | exclude |
//! include`: admission, deletion and exclusion of agents.

use std::process::ExitCode;

use clap::Subcommand;
use fleetls_parent::client::{AdminTarget, Client};
use fleetls_parent::ops::{AgentEntry, AgentsReport, AgentsRequest};

use super::output::{print_out, print_pretty};

/// What `agents` does.
#[derive(Subcommand)]
pub(crate) enum AgentsAction {
    /// Every agent with its admission, its key and the parent key it pinned.
    List {
        #[command(flatten)]
        target: AdminTarget,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Accept pending agents (by name or id), or --all of them.
    Accept {
        /// Names or ids
        agents: Vec<String>,
        /// Every pending agent whose name is not flagged (taken, or looking
        /// like another's); more than 10 only with --yes
        #[arg(long, conflicts_with = "agents")]
        all: bool,
        /// With --all: accept them even when there are more than 10
        #[arg(long, requires = "all")]
        yes: bool,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Reject agents: they get nothing, their certificates are revoked and
    /// their key cannot register again (until accepted).
    Reject {
        /// Names or ids
        #[arg(required_unless_present = "pending_older_than")]
        agents: Vec<String>,
        /// Every agent pending for longer than this (`30m`, `12h`, `1d`)
        #[arg(long, conflicts_with = "agents")]
        pending_older_than: Option<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Delete agents: rows and queue removed, certificates revoked, key banned.
    Delete {
        /// Names or ids
        #[arg(required = true)]
        agents: Vec<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Keep agents on plain AMQP by decision: no campaign, no switch; counted
    /// as excluded and listed with the reason by without-ssl, and the final
    /// broker configuration keeps the plain listener for them.
    Exclude {
        /// Names or ids
        #[arg(required = true)]
        agents: Vec<String>,
        /// Why (one line, shown by status and without-ssl)
        #[arg(long, required = true)]
        reason: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Take excluded agents back into campaigns and switches.
    Include {
        /// Names or ids
        #[arg(required = true)]
        agents: Vec<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
}

/// Runs `agents ACTION`.
pub(crate) async fn run(action: AgentsAction) -> anyhow::Result<ExitCode> {
    let (path, target, request) = match action {
        AgentsAction::List { target, json } => return list(&target, json).await,
        AgentsAction::Accept {
            agents,
            all,
            yes,
            target,
        } => (
            "/api/agents/accept",
            target,
            AgentsRequest {
                agents,
                all,
                yes,
                ..Default::default()
            },
        ),
        AgentsAction::Reject {
            agents,
            pending_older_than,
            target,
        } => (
            "/api/agents/reject",
            target,
            AgentsRequest {
                agents,
                pending_older_than,
                ..Default::default()
            },
        ),
        AgentsAction::Delete { agents, target } => (
            "/api/agents/delete",
            target,
            AgentsRequest {
                agents,
                ..Default::default()
            },
        ),
        AgentsAction::Exclude {
            agents,
            reason,
            target,
        } => (
            "/api/agents/exclude",
            target,
            AgentsRequest {
                agents,
                reason: Some(reason),
                ..Default::default()
            },
        ),
        AgentsAction::Include { agents, target } => (
            "/api/agents/include",
            target,
            AgentsRequest {
                agents,
                ..Default::default()
            },
        ),
    };
    let report: AgentsReport = Client::new(&target)?.post(path, &request).await?;
    let verb = path.rsplit('/').next().unwrap_or("changed");
    if report.changed.is_empty() {
        fleetls_bus::outln!("nothing to {verb}");
    }
    for name in &report.changed {
        fleetls_bus::outln!("{verb}: {name}");
    }
    for why in &report.skipped {
        fleetls_bus::outln!("left pending, accept it by id if it is genuine: {why}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `agents list`: a table of every agent, or JSON.
async fn list(target: &AdminTarget, json: bool) -> anyhow::Result<ExitCode> {
    let list: Vec<AgentEntry> = Client::new(target)?.get("/api/admission").await?;
    if json {
        print_pretty(&list)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = format!(
        "{:<24} {:<12} {:<9} {:<8} {:<20} ID\n",
        "NAME", "KIND", "ADMISSION", "STATE", "KEY"
    );
    for a in &list {
        let key = a
            .key
            .as_deref()
            .map(|k| &k[..k.len().min(20)])
            .unwrap_or("-");
        // A name beyond ASCII is shown escaped too: `t\u{456}ll-1`
        // cannot pass for `till-1` on the operator's screen.
        let name = if a.name.is_ascii() {
            a.name.clone()
        } else {
            format!("{} ({})", a.name, fleetls_parent::admission::ascii(&a.name))
        };
        out.push_str(&format!(
            "{:<24} {:<12} {:<9} {:<8} {:<20} {}{}\n",
            name,
            a.kind.as_str(),
            a.admission.as_str(),
            if a.online { "online" } else { "offline" },
            key,
            a.id,
            a.name_flag
                .as_deref()
                .map(|f| format!("  ! {f}"))
                .unwrap_or_default()
        ));
    }
    print_out(&out)?;
    Ok(ExitCode::SUCCESS)
}
