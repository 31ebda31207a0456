//! `fleetls-child swarm`: many simulated children in one process, for load
//! tests and benchmarks. Each has its own identity, data dir, key, queue,
//! channel and CSR, and makes real TLS handshakes; they share broker
//! connections, at most `--per-connection` channels each. Shares of them can
//! be made old-version, mPOS, failing (their SSL port test goes to a closed
//! port) or silent (they never answer a command).

use std::path::PathBuf;
use std::sync::Arc;

use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::agent::{connect, connect_agent, Agent, Outcome, Quirks, Session};
use crate::config::{RawRun, RunConfig};
use crate::shutdown::Shutdown;
use fleetls_bus::amqp::ClosedOnDrop;
use fleetls_proto::AgentKind;
use lapin::Connection;

/// The flags of `swarm`.
#[derive(Debug, Clone, clap::Args)]
pub struct SwarmArgs {
    /// AMQP URL of the broker; for a cluster, its nodes' URLs separated by
    /// commas (each connection starts with the first that answers)
    #[arg(long, env = "FLEETLS_BROKER")]
    pub broker: String,
    /// Type of the children's queues: classic or quorum (see `run`)
    #[arg(long, env = "FLEETLS_QUEUE_TYPE")]
    pub queue_type: Option<String>,
    /// Folder holding one data dir per simulated child
    #[arg(long, env = "FLEETLS_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Number of simulated children
    #[arg(long)]
    pub count: usize,
    /// Name prefix: children are PREFIX-0, PREFIX-1, ...
    #[arg(long, default_value = "swarm")]
    pub prefix: String,
    /// Number of locations the children are spread over
    #[arg(long, default_value_t = 50)]
    pub locations: usize,
    /// Share (0-1) of children reporting a version below the SSL minimum
    #[arg(long, default_value_t = 0.0)]
    pub old_share: f64,
    /// Share of mPOS children
    #[arg(long, default_value_t = 0.0)]
    pub mpos_share: f64,
    /// Share of children whose SSL port test fails (closed port)
    #[arg(long, default_value_t = 0.0)]
    pub failing_share: f64,
    /// Share of children that never answer a command
    #[arg(long, default_value_t = 0.0)]
    pub silent_share: f64,
    /// Seconds between two state reports of each child when nothing changes
    /// (see `run`; default the same as `run`'s, 300)
    #[arg(long, env = "FLEETLS_REPORT_EVERY")]
    pub report_every: Option<u64>,
    /// The old name of --report-every
    #[arg(long, env = "FLEETLS_HEARTBEAT", hide = true)]
    pub heartbeat: Option<u64>,
    /// The longest wait, in seconds, between two attempts of a connection
    /// (a group's, or a child's on AMQPS) to reach the broker (see `run`;
    /// default 60)
    #[arg(long, env = "FLEETLS_RECONNECT_MAX")]
    pub reconnect_max: Option<u64>,
    /// Most channels (children) on one broker connection
    /// (1-1000). lapin checks every channel of a connection on each turn of
    /// its I/O loop, so 1,000 children on one connection cost more CPU than
    /// five connections of 200 (measured with `perf`: 10% of the swarm's time
    /// in `Channels::flow` at 1,000).
    #[arg(long, default_value_t = 200)]
    pub per_connection: usize,
    /// Enrollment token every simulated child proves (one token, many uses;
    /// see `run --enroll-token`)
    #[arg(
        long,
        env = "FLEETLS_ENROLL_TOKEN",
        conflicts_with = "enroll_token_file"
    )]
    pub enroll_token: Option<String>,
    /// File holding that enrollment token
    #[arg(long, env = "FLEETLS_ENROLL_TOKEN_FILE")]
    pub enroll_token_file: Option<PathBuf>,
}

/// Child `i` of `count` belongs to a share when it falls in that share's
/// slice: deterministic, so a test knows who is who (by name).
fn in_share(i: usize, count: usize, start: f64, share: f64) -> bool {
    let lo = (start * count as f64).round() as usize;
    let hi = ((start + share) * count as f64).round() as usize;
    (lo..hi).contains(&i)
}

/// What each child moved to AMQPS costs the process besides memory: lapin
/// gives every connection a socket and an OS thread, and each thread maps a
/// stack and a signal stack, each with a guard page (measured: 4 to 5 maps
/// per connection).
const MAPS_PER_AMQPS_CHILD: usize = 5;

/// The soft limit called `name` in a /proc/PID/limits text; `None` when it
/// is unlimited or not there.
fn soft_limit(limits: &str, name: &str) -> Option<usize> {
    limits
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|soft| soft.parse().ok())
}

/// Warns when `count` children, once moved to AMQPS with a connection each,
/// would not fit this machine's limits: past them a child cannot open its
/// connection, or the allocator fails and the whole swarm aborts.
fn check_amqps_headroom(count: usize) {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
    };
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let checks = [
        (
            "open files (ulimit -n)",
            soft_limit(&limits, "Max open files"),
            count + 256,
        ),
        (
            "threads of this user (ulimit -u)",
            soft_limit(&limits, "Max processes"),
            count + 256,
        ),
        (
            "process ids of the machine (kernel.pid_max)",
            read("/proc/sys/kernel/pid_max"),
            count + 256,
        ),
        (
            "memory maps (vm.max_map_count)",
            read("/proc/sys/vm/max_map_count"),
            count * MAPS_PER_AMQPS_CHILD + 1024,
        ),
    ];
    for (what, limit, needed) in checks {
        if let Some(limit) = limit.filter(|&limit| limit < needed) {
            warn!(
                count,
                limit,
                needed,
                "{what} too low for every child on AMQPS (one connection and thread each): \
                 raise it before `switch-broker`"
            );
        }
    }
}

/// Runs the swarm until `shutdown`.
pub async fn run(args: SwarmArgs, shutdown: Shutdown) -> anyhow::Result<()> {
    check(&args)?;
    check_amqps_headroom(args.count);
    let agents = identities(&args)?;
    let mut groups = JoinSet::new();
    // Sessions opened at once, across every group: a broker declares queues
    // at its own pace (on a cluster some tens a second), and thousands of
    // declarations queued at once would each wait past the open deadline.
    let opening = Arc::new(tokio::sync::Semaphore::new(OPENING_AT_ONCE));
    for (n, group) in agents.chunks(args.per_connection).enumerate() {
        let group = group.to_vec();
        let broker = args.broker.clone();
        let shutdown = shutdown.clone();
        groups.spawn(run_group(n, broker, group, opening.clone(), shutdown));
    }
    while groups.join_next().await.is_some() {}
    Ok(())
}

/// The shares, the count and the channels per connection, checked.
fn check(args: &SwarmArgs) -> anyhow::Result<()> {
    for (name, share) in [
        ("--old-share", args.old_share),
        ("--mpos-share", args.mpos_share),
        ("--failing-share", args.failing_share),
        ("--silent-share", args.silent_share),
    ] {
        anyhow::ensure!(
            (0.0..=1.0).contains(&share),
            "invalid {name} {share}: give a share from 0 to 1"
        );
    }
    anyhow::ensure!(
        args.old_share + args.mpos_share + args.failing_share + args.silent_share <= 1.0,
        "the shares add up to more than 1"
    );
    anyhow::ensure!(args.count > 0, "invalid --count 0: give at least 1");
    anyhow::ensure!(
        (1..=1000).contains(&args.per_connection),
        "invalid --per-connection {}: give 1 to 1000 channels per connection",
        args.per_connection
    );
    Ok(())
}

/// Every simulated child's identity and settings (files written with
/// fsync, so on many threads), in order.
fn identities(args: &SwarmArgs) -> anyhow::Result<Vec<Arc<Agent>>> {
    let started = std::time::Instant::now();
    fleetls_bus::files::set_durable(false);
    let count = args.count;
    let mut agents = Vec::with_capacity(count);
    let mut slices = 0.0;
    let old = slices;
    slices += args.old_share;
    let mpos = slices;
    slices += args.mpos_share;
    let failing = slices;
    slices += args.failing_share;
    let silent = slices;
    // The token is read and checked once, then given to every child.
    let enroll_token = match &args.enroll_token_file {
        None => args.enroll_token.clone(),
        Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!(
                "--enroll-token-file {}: {e}: give the file the token was written to",
                path.display()
            )
        })?),
    };
    // Identities are files written with fsync: make them on many threads.
    let make = |i: usize| -> anyhow::Result<Agent> {
        let kind = if in_share(i, count, mpos, args.mpos_share) {
            AgentKind::Mpos
        } else {
            AgentKind::Child
        };
        let raw = RawRun {
            broker: Some(args.broker.clone()),
            data_dir: Some(args.data_dir.join(format!("{}-{i}", args.prefix))),
            name: Some(format!("{}-{i}", args.prefix)),
            kind: Some(kind.as_str().into()),
            location: Some(format!("site-{}", i % args.locations.max(1))),
            report_every: args.report_every,
            heartbeat: args.heartbeat,
            reconnect_max: args.reconnect_max,
            queue_type: args.queue_type.clone(),
            report_version: in_share(i, count, old, args.old_share).then(|| "0.9.0".to_owned()),
            enroll_token: enroll_token.clone(),
            ..RawRun::default()
        };
        let mut agent = Agent::open(RunConfig::from_raw(raw)?)?;
        let misbehaves = Misbehaviour {
            silent: in_share(i, count, silent, args.silent_share),
            fail_ssl_port: in_share(i, count, failing, args.failing_share),
        };
        if misbehaves.silent || misbehaves.fail_ssl_port {
            agent.quirks = Some(Box::new(misbehaves));
        }
        Ok(agent)
    };
    let threads = 16.min(count);
    let made: Vec<anyhow::Result<Vec<(usize, Agent)>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let make = &make;
                scope.spawn(move || {
                    (t..count)
                        .step_by(threads)
                        .map(|i| make(i).map(|a| (i, a)))
                        .collect::<anyhow::Result<Vec<_>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("an identity thread panicked")))
            })
            .collect()
    });
    let mut numbered = Vec::with_capacity(count);
    for part in made {
        numbered.extend(part?);
    }
    numbered.sort_by_key(|(i, _)| *i);
    agents.extend(numbered.into_iter().map(|(_, a)| Arc::new(a)));
    info!(count, elapsed = ?started.elapsed(), "swarm identities ready");
    Ok(agents)
}

/// Runs one simulated child's session; after a move to AMQPS it goes on
/// over its own connection.
async fn run_child(
    agent: Arc<Agent>,
    mut session: Session,
    own: Option<Connection>,
) -> Result<(), crate::agent::SessionError> {
    // Closed even when the group aborts this task (its shared connection
    // failed): a moved child's own connection must not outlive it.
    let mut own = own.map(ClosedOnDrop::new);
    let result = loop {
        match session.run(&agent).await {
            Ok(Outcome::MoveTo(connection, next)) => {
                session.close().await;
                if let Some(old) = own.replace(ClosedOnDrop::new(*connection)) {
                    fleetls_bus::amqp::close_connection(&old.take(), "moved").await;
                }
                session = *next;
            }
            Ok(Outcome::Stopped) => break Ok(()),
            // Its connection opens again with the renewed certificate.
            Ok(Outcome::Reconnect) => break Err(crate::agent::SessionError::Renewed),
            Err(e) => break Err(e),
        }
    };
    session.close().await;
    if let Some(connection) = own {
        fleetls_bus::amqp::close_connection(&connection.take(), "swarm stopping").await;
    }
    result
}

/// The queue type of a group's children (one setting for the swarm).
fn queue_type(agents: &[Arc<Agent>]) -> fleetls_bus::queue_type::QueueType {
    agents
        .first()
        .map(|a| a.config.queue_type)
        .unwrap_or_default()
}

/// The reconnect delays of a group (one setting for the swarm).
fn backoff(agents: &[Arc<Agent>]) -> fleetls_bus::reconnect::Backoff {
    agents
        .first()
        .map(|a| a.config.backoff())
        .unwrap_or_default()
}

/// Declares the shared topology once on a connection, as a real child does
/// once per connection; each child then declares only its own queue.
async fn declare_on(
    connection: &Connection,
    queue_type: fleetls_bus::queue_type::QueueType,
) -> Result<(), crate::agent::SessionError> {
    Ok(fleetls_bus::amqp::ensure_shared(connection, queue_type).await?)
}

/// How many children of a swarm open their sessions at once.
const OPENING_AT_ONCE: usize = 64;

/// One connection and its children; reconnects them all when it fails.
async fn run_group(
    n: usize,
    broker: String,
    agents: Vec<Arc<Agent>>,
    opening: Arc<tokio::sync::Semaphore>,
    shutdown: Shutdown,
) {
    let what = format!("swarm group {n}");
    let delays = backoff(&agents);
    fleetls_bus::reconnect::run_with(&what, delays, shutdown.clone(), || {
        let (broker, agents, opening, shutdown) = (
            broker.clone(),
            agents.clone(),
            opening.clone(),
            shutdown.clone(),
        );
        async move { group_session(n, &broker, &agents, opening, shutdown).await }
    })
    .await
}

/// One session of a group: its shared connection, each child's channel on
/// it (or its own AMQPS connection), until the first child's session fails.
/// A child whose session cannot be opened (a queue that cannot be declared
/// yet, a broker that does not answer) tries again with backoff while the
/// others run: it is never left out until the next reconnect.
async fn group_session(
    n: usize,
    broker: &str,
    agents: &[Arc<Agent>],
    limit: Arc<tokio::sync::Semaphore>,
    shutdown: Shutdown,
) -> fleetls_bus::reconnect::Ended {
    use fleetls_bus::reconnect::Ended;
    let name = format!("fleetls-swarm:{n}");
    let connection = match connect(broker, &name).await {
        Ok(connection) => {
            let declared = tokio::time::timeout(
                crate::session::OPEN_DEADLINE,
                declare_on(&connection, queue_type(agents)),
            )
            .await;
            match declared {
                Ok(Ok(())) => connection,
                failed => {
                    fleetls_bus::amqp::close_connection(&connection, "swarm retrying").await;
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "no answer".into(),
                    };
                    return Ended::Unreachable(format!("cannot declare the topology: {why}"));
                }
            }
        }
        Err(e) => return Ended::Unreachable(e.to_string()),
    };
    let connection = Arc::new(connection);
    // Open the children's channels many at a time (the swarm's limit).
    let opened = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut sessions = JoinSet::new();
    for agent in agents {
        let (agent, connection, shutdown, limit, opened) = (
            agent.clone(),
            connection.clone(),
            shutdown.clone(),
            limit.clone(),
            opened.clone(),
        );
        let total = agents.len();
        sessions.spawn(async move {
            let delays = agent.config.backoff();
            let mut attempt = 0u32;
            let (session, own) = loop {
                let tried = {
                    let _permit = limit.acquire().await;
                    open_child(&agent, &connection, shutdown.clone()).await
                };
                match tried {
                    Ok(opened) => break opened,
                    // The shared connection is gone: the group reconnects.
                    Err(e) if !connection.status().connected() => return Err(e),
                    Err(e) => {
                        warn!(group = n, agent = %agent.identity.id, error = %e, attempt, "cannot open a child's session; trying again");
                        let mut stop = shutdown.clone();
                        tokio::select! {
                            _ = stop.wait() => return Ok(()),
                            _ = tokio::time::sleep(delays.delay(attempt)) => {}
                        }
                        attempt = attempt.saturating_add(1);
                    }
                }
            };
            if opened.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == total {
                info!(group = n, children = total, "swarm group connected");
            }
            run_child(agent, session, own).await
        });
    }
    // The first session to fail means the connection is gone.
    let mut ended = Ended::Stopped;
    while let Some(result) = sessions.join_next().await {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                ended = Ended::Broke(format!("the group lost its connection: {e}"));
                break;
            }
            Err(e) => warn!(group = n, error = %e, "a simulated child failed"),
        }
    }
    sessions.abort_all();
    fleetls_bus::amqp::close_connection(&connection, "swarm stopping").await;
    ended
}

/// Opens one simulated child's session: on the group's connection, or on
/// its own AMQPS connection once it moved there.
async fn open_child(
    agent: &Arc<Agent>,
    connection: &Connection,
    shutdown: Shutdown,
) -> Result<(Session, Option<Connection>), crate::agent::SessionError> {
    let moved = agent
        .state
        .lock()
        .map(|s| s.broker_tls_uri.is_some())
        .unwrap_or(false);
    if !moved {
        return Ok((
            Session::open_on(connection, agent, shutdown, false).await?,
            None,
        ));
    }
    let name =
        fleetls_proto::topology::child_connection_name(&agent.identity.id, &agent.identity.name);
    let own = ClosedOnDrop::new(connect_agent(agent, &name).await?);
    match Session::open(own.get(), agent, shutdown).await {
        Ok(session) => Ok((session, Some(own.take()))),
        Err(e) => {
            fleetls_bus::amqp::close_connection(&own.take(), "swarm retrying").await;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_limits_are_read_from_proc_limits() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             96365                96365                processes \n\
                      Max open files            20000                524288               files     \n\
                      Max locked memory         unlimited            unlimited            bytes     \n";
        assert_eq!(soft_limit(limits, "Max open files"), Some(20_000));
        assert_eq!(soft_limit(limits, "Max processes"), Some(96_365));
        assert_eq!(soft_limit(limits, "Max locked memory"), None);
        assert_eq!(soft_limit(limits, "Max msgqueue size"), None);
    }

    #[test]
    fn the_report_interval_and_reconnect_cap_are_the_childs() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            swarm: SwarmArgs,
        }
        let words = [
            "swarm",
            "--broker",
            "amqp://h/%2f",
            "--data-dir",
            "/tmp/s",
            "--count",
            "1",
        ];
        // Not given: left to the child's own defaults.
        let args = Cli::try_parse_from(words).unwrap().swarm;
        assert_eq!(
            (args.report_every, args.heartbeat, args.reconnect_max),
            (None, None, None)
        );
        let dir = tempfile::tempdir().unwrap();
        let mut args = Cli::try_parse_from(words.iter().chain(&["--heartbeat", "5"]))
            .unwrap()
            .swarm;
        assert_eq!(args.heartbeat, Some(5));
        args.data_dir = dir.path().to_owned();
        let agents = identities(&args).unwrap();
        assert_eq!(
            agents[0].config.report_every,
            std::time::Duration::from_secs(5)
        );
        args.heartbeat = None;
        let agents = identities(&args).unwrap();
        assert_eq!(
            agents[0].config.report_every,
            std::time::Duration::from_secs(crate::config::REPORT_EVERY)
        );
        assert_eq!(
            backoff(&agents).cap(),
            std::time::Duration::from_secs(crate::config::RECONNECT_MAX)
        );
        args.reconnect_max = Some(0);
        let err = identities(&args).err().unwrap().to_string();
        assert!(err.contains("--reconnect-max"), "{err}");
    }

    #[test]
    fn shares_are_disjoint_slices() {
        let count = 200;
        let picked: Vec<usize> = (0..count)
            .filter(|&i| in_share(i, count, 0.0, 0.1))
            .collect();
        assert_eq!(picked.len(), 20);
        let next: Vec<usize> = (0..count)
            .filter(|&i| in_share(i, count, 0.1, 0.05))
            .collect();
        assert_eq!(next.len(), 10);
        assert!(picked.iter().all(|i| !next.contains(i)));
        assert_eq!(
            (0..count).filter(|&i| in_share(i, count, 0.0, 0.0)).count(),
            0
        );
    }
}

/// How one simulated child misbehaves (`--silent-share`, `--failing-share`).
#[derive(Debug, Clone, Copy)]
struct Misbehaviour {
    /// Takes commands and never answers them.
    silent: bool,
    /// Its SSL port test goes to a closed port.
    fail_ssl_port: bool,
}

impl Quirks for Misbehaviour {
    fn silent(&self) -> bool {
        self.silent
    }

    fn step(&self, step: &mut fleetls_proto::StepSpec) {
        if let fleetls_proto::StepSpec::SslPort { host, port } = step {
            if self.fail_ssl_port {
                *host = "127.0.0.1".into();
                *port = 1;
            }
        }
    }
}
