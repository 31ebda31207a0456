//! Times the status view on a copy of a real registry, and checks it
//! against the way it was computed before (every agent, every refusal and
//! every step result read into memory, counted in Rust):
//!
//! ```text
//! cargo run --release -p fleetls-parent --example status_timing -- REGISTRY.db [ROUNDS]
//! ```
//!
//! The file is copied to a temporary folder first; it is never changed.
//! Make one with a swarm (see `scripts/bench`) and
//! `sqlite3 DIR/fleetls.db ".backup /tmp/fleetls-10k.db"`.

use std::time::{Duration, Instant};

use fleetls_parent::config::Version;
use fleetls_parent::console::{self, RawPageQuery};
use fleetls_parent::registry::{Registry, RegistryError};
use fleetls_parent::status::{self, AgentStatus, Network, Status, Summary, ViewContext};
use fleetls_proto::AgentKind;

const MIN: Version = Version(1, 0, 0);
const OFFLINE_AFTER_MS: u64 = 1_800_000;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let source = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("give the registry file to time"))?;
    let rounds: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(20);
    let dir = tempfile::tempdir()?;
    let copy = dir.path().join("fleetls.db");
    std::fs::copy(&source, &copy)?;
    let registry = Registry::open(&copy)?;

    // The old way first, before the new one adds its index.
    let old = old_compute(&registry)?;
    time("before: compute", rounds, || {
        old_compute(&registry).map(drop)
    })?;
    time("before: compute + JSON", rounds, || {
        old_compute(&registry).map(|s| drop(to_json(&s)))
    })?;

    // Same figures and the same list as before, in the same order.
    let new = status::compute(&registry, MIN, OFFLINE_AFTER_MS, None)?;
    let cache = status::Cache::default();
    let overview = cache.with_status(&registry, MIN, OFFLINE_AFTER_MS, None, |o, _| o)?;
    assert_eq!(
        serde_json::to_value(&old)?,
        serde_json::to_value(&new)?,
        "the status changed"
    );
    assert_eq!(
        (&overview.network, &overview.summary, &overview.campaign),
        (&old.network, &old.summary, &old.campaign),
        "the summary changed"
    );
    // The console's pages hold the same agents as the status list.
    let context = ViewContext {
        now_ms: fleetls_proto::now_ms(),
        offline_after_ms: OFFLINE_AFTER_MS,
        min_ssl_version: MIN,
    };
    let page = |offset: usize| {
        let query = RawPageQuery {
            offset: Some(offset.to_string()),
            limit: Some(console::MAX_LIMIT.to_string()),
            ..Default::default()
        }
        .check()
        .map_err(anyhow::Error::msg)?;
        Ok::<_, anyhow::Error>(console::page(&registry, context, &query)?)
    };
    let mut paged = Vec::new();
    while paged.len() < new.agents.len() {
        let agents = page(paged.len())?.agents;
        anyhow::ensure!(!agents.is_empty(), "the console's pages end early");
        paged.extend(agents);
    }
    anyhow::ensure!(
        paged == new.agents,
        "the console's pages differ from the status"
    );
    println!(
        "{} agents, {} bytes of JSON: status, summary and console pages agree with before",
        new.agents.len(),
        to_json(&new).len()
    );

    time("after: compute (the whole list)", rounds, || {
        status::compute(&registry, MIN, OFFLINE_AFTER_MS, None).map(drop)
    })?;
    time("after: compute + JSON", rounds, || {
        status::compute(&registry, MIN, OFFLINE_AFTER_MS, None).map(|s| drop(to_json(&s)))
    })?;
    // What the parent serves: the kept list, with nothing changed since the
    // last call, or with 100 agents heard from (their rows read again).
    time("kept: nothing changed + JSON", rounds, || {
        cache.with_status(&registry, MIN, OFFLINE_AFTER_MS, None, |o, agents| {
            drop(to_json_ref(&o, agents))
        })
    })?;
    let mut round = 0;
    time("kept: 100 heartbeats + JSON", rounds, || {
        round += 1;
        registry.with_tx(|db| {
            db.execute(
                "UPDATE agents SET last_seen = last_seen + 1
                 WHERE rowid IN (SELECT rowid FROM agents LIMIT 100 OFFSET ?1)",
                [round * 100 % new.agents.len()],
            )?;
            Ok(())
        })?;
        cache.with_status(&registry, MIN, OFFLINE_AFTER_MS, None, |o, agents| {
            drop(to_json_ref(&o, agents))
        })
    })?;
    Ok(())
}

/// The kept status as JSON, as `GET /api/status` writes it.
fn to_json_ref(overview: &status::Overview, agents: &[AgentStatus]) -> Vec<u8> {
    let status = status::StatusRef {
        network: &overview.network,
        summary: &overview.summary,
        campaign: overview.campaign.as_ref(),
        agents,
    };
    let mut body = Vec::with_capacity(4096 + agents.len() * 1024);
    serde_json::to_writer(&mut body, &status).expect("a status serialises");
    body
}

/// The status as JSON, into a buffer sized as `GET /api/status` sizes it.
fn to_json(status: &Status) -> Vec<u8> {
    let mut body = Vec::with_capacity(4096 + status.agents.len() * 1024);
    serde_json::to_writer(&mut body, status).expect("a status serialises");
    body
}

/// Runs `f` `rounds` times and prints the fastest and the median run, in
/// wall time and in this thread's CPU time (which a busy machine disturbs
/// less).
fn time(
    what: &str,
    rounds: usize,
    mut f: impl FnMut() -> Result<(), RegistryError>,
) -> anyhow::Result<()> {
    f()?;
    let mut wall = Vec::new();
    let mut cpu = Vec::new();
    for _ in 0..rounds.max(1) {
        let (started, cpu_started) = (Instant::now(), cpu_time());
        f()?;
        wall.push(started.elapsed());
        cpu.push(cpu_time().saturating_sub(cpu_started));
    }
    wall.sort();
    cpu.sort();
    let median = wall.len() / 2;
    println!(
        "{what:<26} wall min {:>8.2?} median {:>8.2?}   cpu min {:>8.2?} median {:>8.2?}",
        wall[0], wall[median], cpu[0], cpu[median]
    );
    Ok(())
}

/// This thread's CPU time so far (Linux; zero elsewhere).
fn cpu_time() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .map(Duration::from_nanos)
        .unwrap_or_default()
}

/// The status as `status::compute` made it before: every agent, every
/// refusal and every step result read into memory, counted in Rust.
fn old_compute(registry: &Registry) -> Result<Status, RegistryError> {
    let now = fleetls_proto::now_ms();
    let agents = registry.agents()?;
    let mut refusals = registry.refusals()?;
    let (mut last, campaign) = registry.with_db(|db| {
        let last = fleetls_parent::campaign::last_results(db)?;
        let campaign = match fleetls_parent::campaign::latest(db)? {
            Some(id) => fleetls_parent::campaign::progress(db, id)?,
            None => None,
        };
        Ok((last, campaign))
    })?;
    let list: Vec<AgentStatus> = agents
        .into_iter()
        .map(|a| AgentStatus {
            refusal: refusals.remove(&a.id).map(|(reason, _)| reason),
            last_result: last.remove(&a.id),
            online: now.saturating_sub(a.last_seen) < OFFLINE_AFTER_MS,
            ssl_capable: status::ssl_capable(&a.version, MIN),
            id: a.id,
            last_seen: a.last_seen,
            name: a.name,
            kind: a.kind,
            version: a.version,
            location: a.location,
            hostnames: a.hostnames,
            ips: a.ips,
            has_certificate: a.has_certificate,
            ssl: a.ssl,
            broker_tls: a.broker_tls,
        })
        .collect();
    let count = |f: &dyn Fn(&AgentStatus) -> bool| list.iter().filter(|a| f(a)).count();
    let eligible = |a: &AgentStatus| a.ssl_capable && a.kind != AgentKind::Mpos;
    fn outcome(a: &AgentStatus) -> Option<&str> {
        a.last_result.as_ref().map(|r| r.state.as_str())
    }
    let online = count(&|a| a.online);
    let with_certs = count(&|a| eligible(a) && a.has_certificate);
    let switched = count(&|a| a.ssl);
    let broker_tls = count(&|a| a.broker_tls);
    let eligible_on_tls = count(&|a| eligible(a) && a.broker_tls);
    let eligible_count = count(&eligible);
    let phase = if eligible_count > 0 && eligible_on_tls == eligible_count {
        "broker-tls"
    } else if switched > 0 {
        "ssl"
    } else if with_certs > 0 {
        "certificates"
    } else {
        "plain"
    };
    Ok(Status {
        network: Network {
            phase: phase.into(),
            agents: list.len(),
            online,
            offline: list.len() - online,
            eligible: eligible_count,
            children_with_certificates: with_certs,
            switched_to_ssl: switched,
            broker_tls,
            min_ssl_version: MIN.to_string(),
            certificates_generated: false,
            ssl_port: None,
            ca_fingerprint: None,
        },
        summary: Summary {
            passed: count(&|a| eligible(a) && outcome(a) == Some("passed")),
            with_errors: count(&|a| eligible(a) && outcome(a) == Some("failed")),
            did_not_participate: if campaign.is_some() {
                count(&|a| eligible(a) && !matches!(outcome(a), Some("passed" | "failed")))
            } else {
                0
            },
            version_not_supporting_ssl: count(&|a| !a.ssl_capable),
            mpos: count(&|a| a.kind == AgentKind::Mpos && a.ssl_capable),
        },
        campaign,
        agents: list,
    })
}
