//! Times the status view on a copy of a real registry: the console's pages,
//! the list read whole (as after a campaign), and as the parent serves it
//! again (kept, with nothing or a few agents changed); and checks that the
//! kept JSON, the whole list and the console's pages agree:
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
use fleetls_parent::status::{self, Status, ViewContext};

const MIN: Version = Version(1, 0, 0);
const OFFLINE_AFTER_MS: status::Liveness = status::Liveness {
    offline_after_ms: 1_800_000,
    silent_after_ms: 0,
};

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

    let whole = status::compute(&registry, MIN, OFFLINE_AFTER_MS, None)?;
    let cache = status::Cache::default();
    let kept = cache
        .with_status(&registry, MIN, OFFLINE_AFTER_MS, None, |o, mut list| {
            list.status_json(&o)
        })??
        .to_vec();
    anyhow::ensure!(
        kept == to_json(&whole),
        "the kept JSON differs from the whole list's"
    );
    // The console's pages hold the same agents as the status list.
    let context = ViewContext::new(MIN, OFFLINE_AFTER_MS);
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
    while paged.len() < whole.agents.len() {
        let agents = page(paged.len())?.agents;
        anyhow::ensure!(!agents.is_empty(), "the console's pages end early");
        paged.extend(agents);
    }
    anyhow::ensure!(
        paged == whole.agents,
        "the console's pages differ from the status"
    );
    println!(
        "{} agents, {} bytes of JSON: the kept JSON, the whole list and the console's pages agree",
        whole.agents.len(),
        kept.len()
    );

    // The console's pages as its tests walk them (the tests check what the
    // pages hold; how fast they come is timed here): the second page of
    // 100, the failed ones, and one location from the 51st agent on.
    let location = whole.agents.iter().find_map(|a| a.location.clone());
    let pages = [
        ("console page 2 of 100", Some("100"), None, None),
        ("console page, failed", None, Some("failed"), None),
        ("console page, a location", Some("50"), None, location),
    ];
    for (what, offset, filter, location) in pages {
        let query = RawPageQuery {
            offset: offset.map(str::to_owned),
            limit: Some("100".into()),
            filter: filter.map(str::to_owned),
            location,
            ..Default::default()
        }
        .check()
        .map_err(anyhow::Error::msg)?;
        time(what, rounds, || {
            console::page(&registry, context, &query).map(drop)
        })?;
    }

    time("whole list", rounds, || {
        status::compute(&registry, MIN, OFFLINE_AFTER_MS, None).map(drop)
    })?;
    time("whole list + JSON", rounds, || {
        status::compute(&registry, MIN, OFFLINE_AFTER_MS, None).map(|s| drop(to_json(&s)))
    })?;
    let served = || {
        cache.with_status(&registry, MIN, OFFLINE_AFTER_MS, None, |o, mut list| {
            drop(list.status_json(&o).map(|json| json.collect::<Vec<_>>()))
        })
    };
    time("kept, nothing changed", rounds, served)?;
    // Each round changes the next `n` rows of a table, then serves.
    for (what, table, set, n) in [
        (
            "kept, 100 agents heard",
            "agents",
            "last_seen = last_seen + 1",
            100,
        ),
        (
            "kept, 500 results changed",
            "campaign_children",
            "message = message",
            500,
        ),
    ] {
        let mut round = 0;
        time(what, rounds, || {
            round += 1;
            registry.with_tx(|db| {
                db.execute(
                    &format!(
                        "UPDATE {table} SET {set}
                         WHERE rowid IN (SELECT rowid FROM {table} LIMIT ?1 OFFSET ?2)"
                    ),
                    [n, round * n % whole.agents.len().max(1)],
                )?;
                Ok(())
            })?;
            served()
        })?;
    }
    Ok(())
}

/// The status as JSON, as serde writes it.
fn to_json(status: &Status) -> Vec<u8> {
    serde_json::to_vec(status).expect("a status serialises")
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
