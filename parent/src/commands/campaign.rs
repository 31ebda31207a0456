//! The campaigns: `verify`, `reverify`, `switch`, `force-switch` and
//! `switch-broker` start one and follow it with a progress line; `campaign`
//! follows the newest one.

use std::process::ExitCode;

use fleetls_parent::campaign::Kind;
use fleetls_parent::client::{AdminTarget, Client};
use fleetls_parent::ops::{CampaignRequest, CampaignStart};

use super::output::confirm;

/// The flags every campaign command takes.
#[derive(clap::Args)]
pub(crate) struct CampaignArgs {
    /// The campaign's deadline (e.g. 60m, 90s); unfinished children then
    /// count as "did not participate"
    #[arg(long, default_value = "60m", value_parser = fleetls_parent::follow::parse_duration)]
    timeout: std::time::Duration,
    /// Each step's deadline
    #[arg(long, default_value = "60s", value_parser = fleetls_parent::follow::parse_duration)]
    step_timeout: std::time::Duration,
    /// Number of child agents that can simultaneously perform remote actions
    /// (default: the parent's --window)
    #[arg(long)]
    concurrency: Option<usize>,
    /// Start it and return at once
    #[arg(long)]
    detach: bool,
    #[command(flatten)]
    target: AdminTarget,
    /// Print the final progress and summary as JSON
    #[arg(long)]
    json: bool,
}

/// The flags of `force-switch`.
#[derive(clap::Args)]
pub(crate) struct ForceSwitchArgs {
    #[command(flatten)]
    args: CampaignArgs,
    /// Do not ask for confirmation
    #[arg(long)]
    yes: bool,
}

/// The flags of `switch-broker`.
#[derive(clap::Args)]
pub(crate) struct SwitchBrokerArgs {
    #[command(flatten)]
    args: CampaignArgs,
    /// The AMQPS address agents move to (default: the --broker host, on the
    /// port `broker-tls --amqps-port` wrote the listener with, else 5671).
    /// It holds a password: prefer the FLEETLS_AMQPS variable
    #[arg(long, env = "FLEETLS_AMQPS")]
    amqps: Option<String>,
    /// Children authenticate with their certificate (SASL EXTERNAL) instead of the password
    #[arg(long)]
    external: bool,
}

/// The flags of `campaign`.
#[derive(clap::Args)]
pub(crate) struct FollowArgs {
    #[command(flatten)]
    target: AdminTarget,
    /// Print the progress as JSON once instead of following
    #[arg(long)]
    json: bool,
}

/// Runs `verify`, `reverify` or `switch`: a campaign of `kind`.
pub(crate) async fn start(kind: Kind, args: CampaignArgs) -> anyhow::Result<ExitCode> {
    start_and_follow(kind, args, None, None).await
}

/// Runs `force-switch`: names the children that may lose their connection
/// (a dry run), asks unless `--yes`, then starts it.
pub(crate) async fn force_switch(flags: ForceSwitchArgs) -> anyhow::Result<ExitCode> {
    let ForceSwitchArgs { args, yes } = flags;
    let client = Client::new(&args.target)?;
    let mut request = campaign_request(Kind::ForceSwitch, &args, None, None);
    request.dry_run = true;
    let start: CampaignStart = client.post("/api/campaigns", &request).await?;
    if !start.plan.at_risk.is_empty() {
        eprintln!("These children did not pass the test and may lose their connection:");
        for name in &start.plan.at_risk {
            eprintln!("  {name}");
        }
    }
    if !yes {
        let prompt = format!(
            "Switch all {} child(ren) to SSL? Type \"force\" to go on: ",
            start.plan.children.len()
        );
        if let Some(code) = confirm(
            "force-switch needs a confirmation; give --yes",
            &prompt,
            "force",
        )? {
            return Ok(code);
        }
    }
    start_and_follow(Kind::ForceSwitch, args, None, None).await
}

/// Runs `switch-broker`.
pub(crate) async fn switch_broker(flags: SwitchBrokerArgs) -> anyhow::Result<ExitCode> {
    let SwitchBrokerArgs {
        args,
        amqps,
        external,
    } = flags;
    let auth = external.then_some(fleetls_proto::BrokerAuth::External);
    start_and_follow(Kind::SwitchBroker, args, amqps, auth).await
}

/// Runs `campaign`: follows the newest campaign, or prints its progress
/// as JSON once.
pub(crate) async fn follow(args: FollowArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.target)?;
    if args.json {
        let progress: Option<fleetls_parent::campaign::Progress> =
            client.get("/api/campaigns/current").await?;
        fleetls_bus::outln!("{}", serde_json::to_string_pretty(&progress)?);
        return Ok(ExitCode::SUCCESS);
    }
    let (_, ended) = fleetls_parent::follow::follow(&client).await?;
    if ended {
        print_summary(&client.status().await?);
    }
    Ok(ExitCode::SUCCESS)
}

/// What the flags ask of the parent.
fn campaign_request(
    kind: Kind,
    args: &CampaignArgs,
    amqps: Option<String>,
    auth: Option<fleetls_proto::BrokerAuth>,
) -> CampaignRequest {
    CampaignRequest {
        kind,
        timeout_secs: Some(args.timeout.as_secs()),
        step_timeout_secs: Some(args.step_timeout.as_secs()),
        window: args.concurrency,
        amqps,
        auth,
        dry_run: false,
    }
}

/// Starts the campaign and follows it to its end (or returns at once with
/// `--detach`); exit code 4 when a child failed or did not take part.
async fn start_and_follow(
    kind: Kind,
    args: CampaignArgs,
    amqps: Option<String>,
    auth: Option<fleetls_proto::BrokerAuth>,
) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.target)?;
    let request = campaign_request(kind, &args, amqps, auth);
    let start: CampaignStart = client.post("/api/campaigns", &request).await?;
    let started = start
        .progress
        .ok_or_else(|| anyhow::anyhow!("the parent did not start the campaign"))?;
    if let (Some(amqps), Some(tls)) = (&start.plan.amqps, &start.plan.broker_tls) {
        eprintln!("{amqps} answers with {tls} and a certificate from the network's CA");
    }
    for down in &start.plan.amqps_down {
        eprintln!(
            "warning: {down}\n  (the other nodes answer: children try the list in turn and use this one once it is back)"
        );
    }
    if args.detach {
        if args.json {
            fleetls_bus::outln!("{}", serde_json::to_string_pretty(&started)?);
        } else {
            fleetls_bus::outln!(
                "campaign {} started over {} child(ren), {} at once",
                started.id,
                started.total,
                started.window
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (progress, ended) = fleetls_parent::follow::follow(&client).await?;
    let overview = || client.get::<fleetls_parent::status::Overview>("/api/summary");
    if args.json {
        let status = overview().await?;
        fleetls_bus::outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "campaign": progress,
                "summary": status.summary,
            }))?
        );
    } else if ended && kind.is_test() {
        // It names every child that did not pass: the whole list.
        print_summary(&client.status().await?);
    } else if ended {
        let status = overview().await?;
        fleetls_bus::outln!(
            "{}: {} done, {} failed, {} did not take part; switched to SSL: {}, on AMQPS: {}",
            kind.as_str(),
            progress.passed,
            progress.failed,
            progress.did_not_participate,
            status.network.switched_to_ssl,
            status.network.broker_tls
        );
    }
    // 0 when every child passed; 4 when some failed or did not take part.
    Ok(if ended && progress.passed == progress.total {
        ExitCode::SUCCESS
    } else if ended {
        ExitCode::from(4)
    } else {
        ExitCode::SUCCESS
    })
}

/// The summary of the SSL switchover test, with every child that did
/// not pass.
fn print_summary(status: &fleetls_parent::status::Status) {
    let s = &status.summary;
    fleetls_bus::outln!("Summary of the SSL switchover test:");
    fleetls_bus::outln!("  properly passed:            {}", s.passed);
    fleetls_bus::outln!("  with errors:                {}", s.with_errors);
    fleetls_bus::outln!("  did not participate:        {}", s.did_not_participate);
    fleetls_bus::outln!(
        "  version not supporting SSL: {}",
        s.version_not_supporting_ssl
    );
    fleetls_bus::outln!("  mPOS:                       {}", s.mpos);
    fleetls_bus::outln!("  excluded (kept plain):      {}", s.excluded);
    for agent in &status.agents {
        if let Some(result) = &agent.last_result {
            if result.state != fleetls_parent::campaign::ChildState::Passed {
                fleetls_bus::outln!(
                    "  {:<24} {:<20} {} {}",
                    agent.name,
                    result.state,
                    result.cause.as_deref().unwrap_or("-"),
                    result.message.as_deref().unwrap_or("")
                );
            }
        }
    }
}
