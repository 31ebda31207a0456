//! The serving parent: opens the registry, serves the admin API, and consumes
//! `fleetls.parent` — reconnecting with backoff whenever the broker goes away —
//! until it is asked to stop.

use std::sync::Arc;
use std::time::Duration;

use fleetls_proto::topology;
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tracing::{debug, info, warn};

use crate::broker::{self, amqp, BrokerError};
use crate::config::ServeConfig;
use std::sync::{Mutex, RwLock};

use crate::app::{App, Metrics};
use crate::inbound::{Event, EventKind};
use crate::pki::Pki;
use crate::registry::{Registry, RegistryError};
use crate::settings::SslSettings;
use crate::shutdown::Shutdown;

/// Why the parent could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The data dir could not be prepared.
    #[error("data dir {path}: {source}")]
    DataDir {
        /// The folder.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The SSL settings cannot be used.
    #[error("SSL settings: {0}")]
    Settings(String),
    /// The stored CA cannot be loaded.
    #[error("the stored certificates cannot be loaded: {0}")]
    Pki(#[from] crate::pki::PkiError),
    /// The admin address could not be bound.
    #[error("cannot listen on the admin address {addr}: {source} (is another parent running? choose another with --admin)")]
    AdminBind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Most deliveries applied in one registry transaction.
const BATCH: usize = 512;
/// How long a batch waits for more messages after its first.
const GATHER: Duration = Duration::from_millis(10);
/// How long a batch of state reports only waits for more: a report's
/// worth is the same a quarter of a second later, and at a fleet's ~100 a
/// second a batch of one paid the transaction, the thread hand-offs and the
/// ack for each report (~0.5 ms of the parent's CPU per report).
const GATHER_REPORTS: Duration = Duration::from_millis(250);

/// Whether a delivery says it is a state report (its AMQP `type`). Only a
/// hint for how long its batch gathers: a message that lies about it is
/// checked like any other and at most waits [`GATHER_REPORTS`].
fn says_state_report(delivery: &Delivery) -> bool {
    delivery
        .properties
        .kind()
        .as_ref()
        .is_some_and(|kind| kind.as_str() == "Heartbeat")
}

/// Runs the parent until `shutdown` fires. Returns the bound admin address
/// through `ready` as soon as it listens (tests use port 0).
pub async fn serve(
    config: ServeConfig,
    shutdown: Shutdown,
    ready: Option<tokio::sync::oneshot::Sender<std::net::SocketAddr>>,
) -> Result<(), ServeError> {
    let data_dir = config.data_dir.clone();
    fleetls_bus::files::create_private_dir(&data_dir).map_err(|source| ServeError::DataDir {
        path: data_dir.clone(),
        source,
    })?;
    let registry = Registry::open(&crate::layout::Layout::new(&data_dir).registry())?;
    let token =
        crate::token::load_or_create(&crate::token::token_path(&data_dir)).map_err(|source| {
            ServeError::DataDir {
                path: data_dir.clone(),
                source,
            }
        })?;
    let (listener, admin_addr) = bind_admin(config.admin).await?;
    info!(admin = %admin_addr, data_dir = %data_dir.display(), "parent starting");
    if config.enrollment.auto_accept.is_open() {
        tracing::warn!(
            auto_accept = %config.enrollment.auto_accept,
            "open enrollment: any broker user can obtain a certificate for these kinds and names \
             (--auto-accept); prefer enrollment tokens (`fleetls-parent enroll create`)"
        );
    }
    // Operator commands given only --data-dir find the admin API here.
    let addr_file = crate::layout::Layout::new(&data_dir).admin_addr();
    fleetls_bus::files::write_atomic(&addr_file, format!("{admin_addr}\n").as_bytes(), 0o600)
        .map_err(|source| ServeError::DataDir {
            path: addr_file.clone(),
            source,
        })?;
    let settings = initial_settings(&config)?;
    let signing_key = Arc::new(
        fleetls_bus::seal::SigningKey::load_or_create(&crate::signing_key_path(&data_dir))
            .map_err(|e| ServeError::Settings(e.to_string()))?,
    );
    info!(fingerprint = %signing_key.public().fingerprint(), "the parent signs its commands with this key (give it to children as --parent-key)");
    // The CA files follow the phase of a CA rotation the registry recorded.
    crate::rotation::reconcile(&data_dir, &registry)
        .map_err(|e| ServeError::Pki(crate::pki::PkiError::Invalid(e)))?;
    let pki = if crate::pki::exists(&data_dir) {
        Some(Arc::new(Pki::load(&data_dir, config.cert_lifetime)?))
    } else {
        None
    };
    let (queue_type, queue_choice) = crate::queue_choice::choose(&config).await;
    let app = Arc::new(App {
        queue_type,
        queue_choice,
        config,
        registry,
        token,
        settings: RwLock::new(settings),
        pki: RwLock::new(pki),
        channel: Mutex::new(None),
        campaign_changed: tokio::sync::Notify::new(),
        crl_stale: tokio::sync::Notify::new(),
        ssl_port: tokio::sync::Mutex::new(None),
        shutdown: shutdown.clone(),
        amqps: RwLock::new(crate::broker_switch::load_state(&data_dir)),
        reconnect: tokio::sync::Notify::new(),
        metrics: Metrics::default(),
        drained: std::sync::atomic::AtomicBool::new(false),
        status_cache: crate::status::Cache::default(),
        signing_key,
        ssl_port_open_since: std::sync::atomic::AtomicU64::new(u64::MAX),
        presence_active: std::sync::atomic::AtomicBool::new(false),
        presence_pending_since: std::sync::atomic::AtomicU64::new(0),
        presence_lost: std::sync::atomic::AtomicBool::new(false),
        presence_returning_until: std::sync::atomic::AtomicU64::new(0),
        unrouted: Default::default(),
        to_look_at: Default::default(),
        cluster: RwLock::new(None),
    });
    bound_dead_queue(&app);
    if app.pki().is_some() {
        // Signed anew at every start: a CRL is valid a week.
        if let Err(e) = app.refresh_crl().await {
            warn!(error = %e, "the revocation list cannot be signed");
        }
        if let Err(e) = app.start_ssl_port().await {
            warn!(error = %e, "the SSL port cannot be opened");
        }
    }
    run_tasks(&app, listener, admin_addr, ready, shutdown).await;
    // A clean stop says so: the next operator command finds no address
    // (a parent that was killed leaves it, and the command says it found
    // nobody listening there).
    if std::fs::read_to_string(&addr_file).is_ok_and(|a| a.trim() == admin_addr.to_string()) {
        let _ = std::fs::remove_file(&addr_file);
    }
    info!("parent stopped");
    Ok(())
}

/// Binds the admin API's address: the listener and the address it got.
async fn bind_admin(
    addr: std::net::SocketAddr,
) -> Result<(tokio::net::TcpListener, std::net::SocketAddr), ServeError> {
    let bind_error = |source| ServeError::AdminBind { addr, source };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    Ok((listener, local))
}

/// Bounds `fleetls.dead` through management, in the background: a broker
/// user cannot flood it without end.
fn bound_dead_queue(app: &Arc<App>) {
    let Some(management) = app.config.management.clone() else {
        return;
    };
    let vhost = app.config.vhost();
    tokio::spawn(async move {
        match crate::management::bound_dead_queue(&management, &vhost).await {
            Ok(()) => info!(
                max_length = crate::management::DEAD_MAX_LENGTH,
                max_bytes = crate::management::DEAD_MAX_BYTES,
                "fleetls.dead is bounded (policy fleetls-dead)"
            ),
            Err(e) => warn!(error = %e, "fleetls.dead could not be bounded"),
        }
    });
}

/// Starts the tasks and the admin API, runs the broker loop until
/// `shutdown`, then waits for the engine and the admin API to stop.
async fn run_tasks(
    app: &Arc<App>,
    listener: tokio::net::TcpListener,
    admin_addr: std::net::SocketAddr,
    ready: Option<tokio::sync::oneshot::Sender<std::net::SocketAddr>>,
    shutdown: Shutdown,
) {
    let engine = tokio::spawn(crate::engine::run(app.clone(), shutdown.clone()));
    tokio::spawn(renew_own(app.clone(), shutdown.clone()));
    tokio::spawn(refresh_crl_after_renewals(app.clone(), shutdown.clone()));
    tokio::spawn(crate::tasks::owed::run(app.clone(), shutdown.clone()));
    tokio::spawn(crate::tasks::rotation::run(app.clone(), shutdown.clone()));
    tokio::spawn(crate::tasks::cluster::watch(app.clone(), shutdown.clone()));
    tokio::spawn(crate::tasks::presence::run(app.clone(), shutdown.clone()));
    let admin = tokio::spawn(crate::admin::run(listener, app.clone(), shutdown.clone()));
    if let Some(ready) = ready {
        let _ = ready.send(admin_addr);
    }
    broker_loop(app, shutdown.clone()).await;
    let _ = engine.await;
    match admin.await {
        Ok(Err(e)) => warn!(error = %e, "admin server stopped with an error"),
        Err(e) => warn!(error = %e, "admin server task failed"),
        Ok(Ok(())) => {}
    }
}

/// Signs the CRL again after certificates were superseded by renewals: one
/// second after the first notice, so that a burst of 10,000 renewals signs
/// it a few times, not once per batch of messages (a revocation by an
/// operator signs it at once, in `ops::revoke`).
async fn refresh_crl_after_renewals(app: Arc<App>, mut shutdown: Shutdown) {
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = app.crl_stale.notified() => {}
        }
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if let Err(e) = app.refresh_crl().await {
            warn!(error = %e, "the revocation list cannot be signed again");
        }
    }
}

/// Checks every so often (a twentieth of the certificate lifetime, at most
/// a minute) whether the parent's own certificates are due for renewal.
async fn renew_own(app: Arc<App>, mut shutdown: Shutdown) {
    let lifetime = app.config.cert_lifetime.whole_seconds().max(20) as u64;
    let every = Duration::from_secs((lifetime / 20).clamp(1, 60));
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if let Err(e) = app.renew_own_if_due().await {
            warn!(error = %e, "cannot renew the parent's own certificates");
        }
    }
}

/// The stored SSL settings (or the defaults), with the config file's `[ssl]`
/// table applied — refused when it would change frozen settings.
fn initial_settings(config: &ServeConfig) -> Result<SslSettings, ServeError> {
    let stored = SslSettings::load(&config.data_dir).map_err(ServeError::Settings)?;
    let current = stored
        .clone()
        .unwrap_or_else(|| SslSettings::for_brokers(&config.broker_hosts));
    let Some(change) = &config.ssl else {
        return Ok(current);
    };
    let next = current
        .apply(change)
        .map_err(|e| ServeError::Settings(format!("[ssl] {e}")))?;
    if next != current && crate::pki::exists(&config.data_dir) {
        return Err(ServeError::Settings(
            "the config file's [ssl] table differs from the settings inside the existing certificates; \
             they are frozen: restore the old values, or run `fleetls-parent certs reset` first"
                .into(),
        ));
    }
    if stored.as_ref() != Some(&next) {
        next.save(&config.data_dir)
            .map_err(|e| ServeError::Settings(e.to_string()))?;
    }
    Ok(next)
}

/// Connects, consumes, and reconnects after any broker failure until stopped.
async fn broker_loop(app: &Arc<App>, shutdown: Shutdown) {
    use fleetls_bus::reconnect::{self, Ended};
    reconnect::run("parent", Duration::ZERO, shutdown.clone(), || {
        let (app, mut shutdown) = (app.clone(), shutdown.clone());
        async move {
            let session = tokio::select! {
                _ = shutdown.wait() => return Ended::Stopped,
                session = open_session(&app) => session,
            };
            let (connection, channel, consumer, ops_channel) = match session {
                Ok(session) => session,
                Err(e) => return Ended::Unreachable(e.to_string()),
            };
            info!("connected to the broker, consuming {}", topology::PARENT);
            app.set_channel(Some(ops_channel.clone()));
            let result = tokio::select! {
                result = consume(&app, &channel, consumer, shutdown.clone()) => result,
                why = watch_topology(&app, &connection, &ops_channel) => Err(why),
            };
            app.set_channel(None);
            // The channels first, each awaited: a channel dropped while the
            // connection closes makes lapin log an ERROR for what is a
            // planned close (a move to AMQPS, a stop).
            fleetls_bus::amqp::close_channel(&ops_channel, "parent stopping").await;
            fleetls_bus::amqp::close_channel(&channel, "parent stopping").await;
            fleetls_bus::amqp::close_connection(&connection, "parent stopping").await;
            match result {
                Ok(()) => Ended::Stopped,
                // Moving to AMQPS: the next session opens there at once.
                Err(SessionError::Reconnect) => Ended::Again,
                Err(e) => Ended::Broke(e.to_string()),
            }
        }
    })
    .await
}

/// The connection, the consuming channel, its consumer, and a second
/// channel for what operations and the campaign engine send, so that a big
/// send does not queue behind the consumer's acks and answers.
async fn open_session(
    app: &App,
) -> Result<(Connection, Channel, lapin::Consumer, Channel), BrokerError> {
    let amqps = app.amqps.read().unwrap_or_else(|p| p.into_inner()).clone();
    let connection = match amqps {
        Some(uri) => {
            crate::broker::connect_tls(&app.config.data_dir, &uri, topology::PARENT_CONNECTION_NAME)
                .await?
        }
        None => broker::connect(&app.config.broker, topology::PARENT_CONNECTION_NAME).await?,
    };
    let channel = broker::confirm_channel(&connection).await?;
    broker::declare_topology(&channel, app.queue_type).await?;
    channel
        .basic_qos(BATCH as u16 * 2, BasicQosOptions::default())
        .await
        .map_err(amqp("setting the prefetch"))?;
    let consumer = channel
        .basic_consume(
            topology::PARENT.into(),
            "fleetls-parent".into(),
            // No other client may take the children's messages.
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(amqp("consuming fleetls.parent"))?;
    let ops_channel = broker::confirm_channel(&connection).await?;
    Ok((connection, channel, consumer, ops_channel))
}

/// Looks at the topology every few seconds while the session lasts and
/// repairs what a hostile broker user removed (`crate::topology`); returns
/// why the session must end (the sending channel closed, the broker gone).
async fn watch_topology(app: &Arc<App>, connection: &Connection, ops: &Channel) -> SessionError {
    let sentinel = match crate::topology::Sentinel::plant(connection).await {
        Ok(sentinel) => sentinel,
        Err(e) => return SessionError::Broker(e),
    };
    loop {
        tokio::time::sleep(crate::topology::EVERY).await;
        let mut damage = match crate::topology::look(connection).await {
            Ok(damage) => damage,
            Err(e) => return SessionError::Broker(e),
        };
        match sentinel.holds(connection).await {
            Ok(true) => {}
            Ok(false) => damage.0.push("the bindings of fleetls.agents"),
            Err(e) => return SessionError::Broker(e),
        }
        if !damage.0.is_empty() {
            if let Err(e) = repair_topology(app, connection, &sentinel, damage).await {
                return e;
            }
        } else if let Err(e) = rebind_unrouted(app, connection).await {
            return e;
        }
        if !ops.status().connected() {
            return SessionError::Topology(
                "the channel the parent sends on was closed by the broker",
            );
        }
    }
}

/// Declares the topology again, binds every accepted agent again, and
/// records what was rebuilt.
async fn repair_topology(
    app: &Arc<App>,
    connection: &Connection,
    sentinel: &crate::topology::Sentinel,
    damage: crate::topology::Damage,
) -> Result<(), SessionError> {
    let registry = app.registry.clone();
    let agents: Vec<uuid::Uuid> = tokio::task::spawn_blocking(move || registry.agents())
        .await
        .map_err(|e| SessionError::Registry(RegistryError::Corrupt(e.to_string())))??
        .into_iter()
        .filter(|a| a.admission == crate::registry::Admission::Accepted)
        .map(|a| a.id)
        .collect();
    let repair = crate::topology::repair(connection, app.queue_type, damage, &agents).await?;
    sentinel.replant(connection).await?;
    tracing::warn!(%repair, "the broker's topology was damaged (a broker user deleted or unbound it): rebuilt");
    let registry = app.registry.clone();
    let detail = format!("the broker's topology was damaged and rebuilt: {repair}");
    tokio::task::spawn_blocking(move || {
        registry.with_tx(|tx| crate::registry::record_security(tx, None, "topology", &detail))
    })
    .await
    .map_err(|e| SessionError::Registry(RegistryError::Corrupt(e.to_string())))??;
    Ok(())
}

/// Binds again the queues of the agents a message to which came back
/// unrouted ([`App::send`]): a broker user with the shared credentials
/// may unbind one agent's queue, leaving it deaf while it still looks
/// connected. Recorded as a `topology` event when a consumed queue had
/// lost its binding; the registry sends what was lost again.
async fn rebind_unrouted(app: &Arc<App>, connection: &Connection) -> Result<(), SessionError> {
    let agents = app.take_unrouted();
    if agents.is_empty() {
        return Ok(());
    }
    let rebound = crate::topology::rebind(connection, &agents).await?;
    let detail = (rebound.consumed > 0).then(|| {
        format!(
            "{} agent queue(s) consumed by their agent had lost their binding to {} \
         (a broker user unbound them): bound again",
            rebound.consumed,
            fleetls_proto::topology::AGENTS
        )
    });
    if let Some(detail) = &detail {
        tracing::warn!(%detail, "the broker's topology was damaged: rebuilt");
    }
    let registry = app.registry.clone();
    tokio::task::spawn_blocking(move || {
        registry.with_tx(|tx| {
            crate::registry::owed::mark_unsent(tx, &rebound.agents)?;
            match &detail {
                Some(detail) => crate::registry::record_security(tx, None, "topology", detail),
                None => Ok(()),
            }
        })
    })
    .await
    .map_err(|e| SessionError::Registry(RegistryError::Corrupt(e.to_string())))??;
    Ok(())
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{0}")]
    Topology(&'static str),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("the consumer was cancelled by the broker")]
    Cancelled,
    #[error("registry write failed, messages left unacked for redelivery: {0}")]
    Registry(#[from] RegistryError),
    #[error("moving to a new broker address")]
    Reconnect,
}

/// Takes deliveries in batches: decode, dead-letter what is bad, write the
/// rest in one transaction, then ack. Returns `Ok` only on shutdown.
async fn consume(
    app: &Arc<App>,
    channel: &Channel,
    mut consumer: lapin::Consumer,
    mut shutdown: Shutdown,
) -> Result<(), SessionError> {
    use std::sync::atomic::Ordering::SeqCst;
    loop {
        // The backlog is read once nothing more arrives for a moment.
        let quiet = async {
            if app.drained.load(SeqCst) {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        let first = tokio::select! {
            _ = shutdown.wait() => return Ok(()),
            _ = app.reconnect.notified() => return Err(SessionError::Reconnect),
            _ = quiet => {
                app.drained.store(true, SeqCst);
                app.campaign_changed.notify_one();
                continue;
            }
            next = consumer.next() => next,
        };
        let mut deliveries = vec![first
            .ok_or(SessionError::Cancelled)?
            .map_err(amqp("consuming"))?];
        // What else arrives within GATHER joins the batch: each batch is a
        // transaction, and its commit (an fsync) costs more than the rest of
        // a state report — at a few hundred messages a second, batches of
        // one or two were most of the parent's work. A batch of state
        // reports only waits longer; anything else that joins it brings its
        // end back to GATHER after the first.
        let began = tokio::time::Instant::now();
        let mut reports_only = says_state_report(&deliveries[0]);
        let gather = tokio::time::sleep(if reports_only { GATHER_REPORTS } else { GATHER });
        tokio::pin!(gather);
        while deliveries.len() < BATCH {
            tokio::select! {
                biased;
                next = consumer.next() => match next {
                    Some(delivery) => {
                        let delivery = delivery.map_err(amqp("consuming"))?;
                        if reports_only && !says_state_report(&delivery) {
                            reports_only = false;
                            gather.as_mut().reset(began + GATHER);
                        }
                        deliveries.push(delivery);
                    }
                    None => return Err(SessionError::Cancelled),
                },
                _ = &mut gather => break,
            }
        }
        handle_batch(app, channel, deliveries).await?;
        if !app.drained.load(SeqCst) {
            // Heartbeats keep arriving, so quiet may never come: ask the
            // broker whether anything is still waiting.
            let queue = channel
                .queue_declare(
                    topology::PARENT.into(),
                    lapin::options::QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(amqp("checking the backlog of fleetls.parent"))?;
            if queue.message_count() == 0 {
                app.drained.store(true, SeqCst);
                app.campaign_changed.notify_one();
            }
        }
    }
}

/// Records the security events of a batch's refused deliveries.
async fn record_forged(
    app: &Arc<App>,
    forged: Vec<(Option<uuid::Uuid>, &'static str, String)>,
) -> Result<(), SessionError> {
    use std::sync::atomic::Ordering::Relaxed;
    if forged.is_empty() {
        return Ok(());
    }
    app.metrics
        .security_events
        .fetch_add(forged.len() as u64, Relaxed);
    let registry = app.registry.clone();
    tokio::task::spawn_blocking(move || {
        registry.with_tx(|tx| {
            for (agent, kind, reason) in &forged {
                crate::registry::record_security(tx, agent.as_ref(), kind, reason)?;
            }
            Ok(())
        })
    })
    .await
    .map_err(|e| RegistryError::Corrupt(format!("registry task failed: {e}")))??;
    Ok(())
}

/// Applies a batch's events in one transaction, dead-letters what the
/// registry refused, and sends what it returned (and what greeted agents
/// are still owed).
async fn apply_events(
    app: &Arc<App>,
    channel: &Channel,
    deliveries: &[Delivery],
    events: Vec<Event>,
) -> Result<(), SessionError> {
    use std::sync::atomic::Ordering::Relaxed;
    let reports = events.iter().any(|e| {
        matches!(
            e.what,
            EventKind::StepReport(_)
                | EventKind::SwitchReport(_)
                | EventKind::BrokerSwitchReport(_)
                // A certificate may end a child's turn in a CA rotation.
                | EventKind::Csr(_)
        )
    });
    let registry = app.registry.clone();
    let signer = app.pki().map(|pki| crate::inbound::CaSigner {
        pki,
        names: app.config.local_parent_names.clone(),
        ips: app.config.local_parent_ips.clone(),
    });
    let policy = crate::inbound::Policy {
        parent_key: app.signing_key.public().fingerprint(),
        enrollment: app.config.enrollment.clone(),
        ssl_port_open_since: app
            .ssl_port_open_since
            .load(std::sync::atomic::Ordering::SeqCst),
    };
    let applied = tokio::task::spawn_blocking(move || {
        crate::inbound::apply(
            &registry,
            &events,
            signer.as_ref().map(|s| s as &dyn crate::inbound::Signer),
            &policy,
        )
    })
    .await
    .map_err(|e| RegistryError::Corrupt(format!("registry task failed: {e}")))??;
    app.metrics.replayed.fetch_add(applied.replayed, Relaxed);
    for (index, reason) in &applied.rejected {
        let delivery = &deliveries[*index];
        warn!(reason = %reason, "a message was refused by the registry; dead-lettered");
        app.metrics.dead_lettered.fetch_add(1, Relaxed);
        dead_letter(app, channel, delivery, reason).await?;
    }
    let mut outgoing = applied.outgoing;
    // Commands are transient: a reconnected agent is sent again what
    // the registry says it is still owed.
    app.note_to_look_at(&applied.greeted);
    app.note_to_look_at(&applied.heard_absent);
    outgoing.extend(crate::tasks::owed::on_hello(app, applied.greeted).await);
    app.send(channel, outgoing).await?;
    if applied.revoked {
        app.crl_stale.notify_one();
    }
    if reports {
        app.campaign_changed.notify_one();
    }
    Ok(())
}

/// Dead-letters `delivery` with `reason`; one a full `fleetls.dead`
/// refused is counted (`fleetls_dead_letters_refused_total`).
async fn dead_letter(
    app: &App,
    channel: &Channel,
    delivery: &Delivery,
    reason: &str,
) -> Result<(), BrokerError> {
    let kept = broker::dead_letter(channel, &delivery.data, &delivery.properties, reason).await?;
    if kept == fleetls_bus::amqp::Kept::Refused {
        app.metrics
            .dead_letters_refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(())
}

async fn handle_batch(
    app: &Arc<App>,
    channel: &Channel,
    deliveries: Vec<Delivery>,
) -> Result<(), SessionError> {
    use std::sync::atomic::Ordering::Relaxed;
    app.metrics
        .received
        .fetch_add(deliveries.len() as u64, Relaxed);
    app.metrics.batches.fetch_add(1, Relaxed);
    let mut events: Vec<Event> = Vec::with_capacity(deliveries.len());
    // Every delivery of the batch is either recorded or dead-lettered before
    // the one ack at the end.
    let last = deliveries.last().map(|d| d.acker.clone());
    let mut forged = Vec::new();
    for (index, delivery) in deliveries.iter().enumerate() {
        match crate::inbound::check(delivery, index) {
            Ok(event) => events.extend(event),
            Err(refusal) => {
                debug!(reason = %refusal.reason, "dead-lettering a message");
                app.metrics.dead_lettered.fetch_add(1, Relaxed);
                dead_letter(app, channel, delivery, &refusal.reason).await?;
                if let Some(kind) = refusal.security {
                    forged.push((refusal.agent, kind, refusal.reason));
                }
            }
        }
    }
    record_forged(app, forged).await?;
    if !events.is_empty() {
        apply_events(app, channel, &deliveries, events).await?;
    }
    // One ack for the whole batch: deliveries on this channel come in tag
    // order and every earlier one was acked with its own batch.
    if let Some(last) = last {
        fleetls_bus::amqp::answered("acking", last.ack(BasicAckOptions { multiple: true })).await?;
    }
    Ok(())
}
