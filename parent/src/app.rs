//! What the parent's tasks share: the configuration, the registry, the CA,
//! the SSL settings and port, the current broker channel, the signing key
//! and the counters. The service builds it; the admin API, the console, the
//! operations and the campaign engine use it.

use std::sync::{Arc, Mutex, RwLock};

use lapin::Channel;
use tracing::{info, warn};

use crate::config::ServeConfig;
use crate::pki::Pki;
use crate::registry::{Registry, RegistryError};
use crate::settings::SslSettings;
use crate::shutdown::Shutdown;
use crate::status::Status;

/// What the parent's tasks share.
pub struct App {
    /// The checked configuration.
    pub config: ServeConfig,
    /// The registry.
    pub registry: Registry,
    /// The admin token (never logged).
    pub token: String,
    /// The SSL settings (frozen once certificates exist).
    pub settings: RwLock<SslSettings>,
    /// The CA, once generated.
    pub pki: RwLock<Option<Arc<Pki>>>,
    /// The channel of the current broker session, for operations that send.
    pub channel: Mutex<Option<Channel>>,
    /// Wakes the campaign engine (a campaign started or a child ended).
    pub campaign_changed: tokio::sync::Notify,
    /// Certificates were superseded (renewals): the CRL is signed again
    /// once the burst is over, not once per batch.
    pub crl_stale: tokio::sync::Notify,
    /// The SSL port server, while it runs.
    pub ssl_port: tokio::sync::Mutex<Option<SslPortHandle>>,
    /// Stops everything.
    pub shutdown: Shutdown,
    /// The AMQPS address the parent moved to, once it did.
    pub amqps: RwLock<Option<String>>,
    /// Asks the broker session to reconnect (after the move to AMQPS).
    pub reconnect: tokio::sync::Notify,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
    /// Whether the backlog of `fleetls.parent` was read since the broker
    /// session began: until then the engine judges no child (its reports
    /// and heartbeats may still be waiting in the queue).
    pub drained: std::sync::atomic::AtomicBool,
    /// The status list, kept up to date between calls.
    pub status_cache: crate::status::Cache,
    /// The key every command to an agent is signed with (`DIR/signing.key`).
    pub signing_key: Arc<fleetls_bus::seal::SigningKey>,
    /// Since when this process's SSL port listens (ms; `u64::MAX` while it
    /// does not): what the campaign engine needs to know to discount a
    /// failed connection made while the port was down.
    pub ssl_port_open_since: std::sync::atomic::AtomicU64,
    /// The broker's nodes and the agents on each, as management last
    /// showed them (kept by `tasks::cluster::watch`).
    pub cluster: RwLock<Option<crate::cluster::ClusterView>>,
    /// The type of `fleetls.parent` and `fleetls.dead`, chosen at start.
    pub queue_type: fleetls_bus::queue_type::QueueType,
    /// That type and why it was chosen, for `status`.
    pub queue_choice: crate::queue_choice::QueueChoice,
    /// Whether the broker says who is connected (`crate::tasks::presence`): then
    /// online is presence, else the last report within `--offline-after`.
    pub presence_active: std::sync::atomic::AtomicBool,
    /// Since when (ms) presence is being read (at start, after the broker
    /// was lost): 0 when it is not. Nobody is known online meanwhile, and
    /// the campaign engine waits (see [`App::presence_pending`]).
    pub presence_pending_since: std::sync::atomic::AtomicU64,
    /// Whether presence was lost (the broker or the parent's connection to
    /// it went away) since it was last read: the next reading starts a
    /// return grace ([`App::presence_returning_until`]).
    pub presence_lost: std::sync::atomic::AtomicBool,
    /// Until when (ms) a campaign keeps waiting for a child the broker says
    /// is not connected: [`RETURN_GRACE_MS`] after presence was read again
    /// following a loss — every child was cut off with the broker and comes
    /// back within its reconnect backoff. 0: no grace.
    pub presence_returning_until: std::sync::atomic::AtomicU64,
    /// Agents a message to which came back unrouted since the topology was
    /// last looked at: their queue's binding is checked and made again
    /// (`crate::topology::rebind`) — a broker user may have removed it.
    pub unrouted: Mutex<std::collections::HashSet<uuid::Uuid>>,
    /// Agents whose queue presence looks at next (`crate::tasks::presence`):
    /// those whose Hello was recorded since it last looked — a consumer
    /// created before presence subscribed, of an agent registered after its
    /// first look, would otherwise never be seen —, and those heard from
    /// while counted not connected (a quorum queue whose leader does not
    /// answer within RabbitMQ's 250 ms says it has no consumer: without a
    /// new event nothing would look again).
    pub to_look_at: Mutex<std::collections::HashSet<uuid::Uuid>>,
}

/// The most unrouted agents kept for the topology's next look (the rest
/// are found at a later send).
pub const UNROUTED_KEPT: usize = 10_000;

/// How long presence may be pending before online falls back to the
/// reports (and the campaign engine stops waiting for it).
pub const PRESENCE_PATIENCE_MS: u64 = 60_000;

/// How long after presence was read again, following the loss of the
/// broker, an unconnected child is still waited for rather than judged
/// "did not participate": the child's default reconnect cap (60 s,
/// `fleetls-child --reconnect-max`) and a margin for a full broker's
/// reconnect storm.
pub const RETURN_GRACE_MS: u64 = 90_000;

/// Message counters since the parent started.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Messages consumed from `fleetls.parent`.
    pub received: std::sync::atomic::AtomicU64,
    /// Messages dead-lettered.
    pub dead_lettered: std::sync::atomic::AtomicU64,
    /// Dead letters a full `fleetls.dead` refused (its bound reached).
    pub dead_letters_refused: std::sync::atomic::AtomicU64,
    /// Messages dropped as not above their agent's replay counter
    /// (redeliveries and replays).
    pub replayed: std::sync::atomic::AtomicU64,
    /// Messages sent to agents.
    pub sent: std::sync::atomic::AtomicU64,
    /// Registry batches written.
    pub batches: std::sync::atomic::AtomicU64,
    /// Messages refused as forged, oversized or invalid before the registry.
    pub security_events: std::sync::atomic::AtomicU64,
}

/// A running SSL port.
pub struct SslPortHandle {
    /// Its port.
    pub port: u16,
    stop: crate::shutdown::Trigger,
    /// The configuration the next handshake uses.
    config: tokio::sync::watch::Sender<Arc<rustls::ServerConfig>>,
}

impl App {
    /// The current status view.
    pub fn status(&self) -> Result<Status, RegistryError> {
        self.with_status(|overview, list| overview.with_agents(list.agents().to_vec()))
    }

    /// Hands the status to `f` without copying the list (see
    /// [`crate::status::Cache`]).
    pub fn with_status<T>(
        &self,
        f: impl FnOnce(crate::status::Overview, crate::status::KeptList<'_>) -> T,
    ) -> Result<T, RegistryError> {
        let pki = self.pki();
        let ssl_port = self.ssl_port_number();
        let counts = self.registry.security_counts()?;
        let security_events = counts.iter().map(|(_, n)| n).sum();
        let repairs = counts
            .iter()
            .find(|(kind, _)| kind == "topology")
            .map_or(0, |(_, n)| *n);
        let topology = match repairs {
            0 => None,
            _ => self.registry.last_security_event("topology")?.map(|e| {
                crate::status::TopologyAlarm {
                    repairs,
                    last_at: e.at,
                    last: e.detail,
                }
            }),
        };
        let signing_key = self.signing_key.public().fingerprint();
        let revoked = self.registry.revoked_count()?;
        let (renewals_done, renewals_failed) =
            self.registry.with_db(crate::rotation::renewal_counts)?;
        let flagged_names = self.registry.flagged_names()?;
        let active_since = self.active_since();
        let rotation = self
            .registry
            .with_db(|db| crate::rotation::view(db, active_since))?;
        self.status_cache.with_status(
            &self.registry,
            self.config.min_ssl_version,
            self.liveness(),
            pki.as_deref().map(|p| p.root_fingerprint.as_str()),
            |mut overview, list| {
                overview.network.ssl_port = ssl_port;
                overview.network.security_events = security_events;
                overview.network.topology = topology;
                overview.network.signing_key = Some(signing_key);
                overview.network.revoked_certificates = revoked;
                overview.network.renewals_done = renewals_done;
                overview.network.renewals_failed = renewals_failed;
                overview.network.ca_rotation = rotation;
                let view = self.cluster_view();
                overview.network.nodes_at = view.as_ref().map(|v| v.at);
                overview.network.connections_at = view.as_ref().map(|v| v.connections_at);
                overview.network.nodes = view.map(|v| v.nodes).unwrap_or_default();
                overview.network.queue_type = Some(self.queue_choice.clone());
                let open = &self.config.enrollment.auto_accept;
                overview.network.open_enrollment = open.is_open().then(|| open.to_string());
                overview.network.flagged_names = flagged_names;
                if self.presence_pending() {
                    overview.network.online_from = "reading".into();
                }
                f(overview, list)
            },
        )
    }

    /// The status without the agent list.
    pub fn overview(&self) -> Result<crate::status::Overview, RegistryError> {
        self.with_status(|overview, _| overview)
    }

    /// The SSL port while it listens (`None` too while it is being changed).
    fn ssl_port_number(&self) -> Option<u16> {
        self.ssl_port
            .try_lock()
            .ok()
            .and_then(|handle| handle.as_ref().map(|h| h.port))
    }

    /// The broker's nodes as last read from management, if ever.
    pub fn cluster_view(&self) -> Option<crate::cluster::ClusterView> {
        self.cluster
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The CA, if generated.
    pub fn pki(&self) -> Option<Arc<Pki>> {
        self.pki.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The current SSL settings.
    pub fn settings(&self) -> SslSettings {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The channel of the current broker session.
    pub fn channel(&self) -> Option<Channel> {
        self.channel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Signs and sends `outgoing` on `channel` ([`crate::broker::send_all`]),
    /// each counted in `fleetls_messages_sent_total`; the agents whose
    /// message came back unrouted are returned and kept for the topology's
    /// next look ([`App::unrouted`]).
    pub async fn send(
        &self,
        channel: &Channel,
        outgoing: impl IntoIterator<Item = crate::broker::Outgoing>,
    ) -> Result<Vec<uuid::Uuid>, crate::broker::BrokerError> {
        let counted = outgoing.into_iter().inspect(|_| {
            self.metrics
                .sent
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        let unrouted = crate::broker::send_all(channel, &self.signing_key, counted).await?;
        if !unrouted.is_empty() {
            let mut kept = self.unrouted.lock().unwrap_or_else(|p| p.into_inner());
            for agent in unrouted
                .iter()
                .take(UNROUTED_KEPT.saturating_sub(kept.len()))
            {
                kept.insert(*agent);
            }
        }
        Ok(unrouted)
    }

    /// Notes agents for presence to look at ([`App::to_look_at`],
    /// [`UNROUTED_KEPT`] at most).
    pub fn note_to_look_at(&self, agents: &[uuid::Uuid]) {
        // Without presence nobody takes them; a new presence session looks
        // at every agent anyway.
        use std::sync::atomic::Ordering::SeqCst;
        let following =
            self.presence_active.load(SeqCst) || self.presence_pending_since.load(SeqCst) > 0;
        if agents.is_empty() || !following {
            return;
        }
        let mut kept = self.to_look_at.lock().unwrap_or_else(|p| p.into_inner());
        for agent in agents.iter().take(UNROUTED_KEPT.saturating_sub(kept.len())) {
            kept.insert(*agent);
        }
    }

    /// Takes the agents noted by [`App::note_to_look_at`].
    pub fn take_to_look_at(&self) -> Vec<uuid::Uuid> {
        std::mem::take(&mut *self.to_look_at.lock().unwrap_or_else(|p| p.into_inner()))
            .into_iter()
            .collect()
    }

    /// Takes the agents kept by [`App::send`].
    pub fn take_unrouted(&self) -> Vec<uuid::Uuid> {
        std::mem::take(&mut *self.unrouted.lock().unwrap_or_else(|p| p.into_inner()))
            .into_iter()
            .collect()
    }

    /// Sets (or clears) the channel of the current broker session; the
    /// backlog counts as unread again.
    pub fn set_channel(&self, channel: Option<Channel>) {
        self.drained
            .store(false, std::sync::atomic::Ordering::SeqCst);
        *self.channel.lock().unwrap_or_else(|p| p.into_inner()) = channel;
        self.campaign_changed.notify_one();
    }

    /// Opens the SSL port with the parent's certificate, if it is not open.
    pub async fn start_ssl_port(&self) -> Result<u16, crate::ssl_port::SslPortError> {
        let mut handle = self.ssl_port.lock().await;
        if let Some(running) = handle.as_ref() {
            return Ok(running.port);
        }
        let config =
            crate::ssl_port::parent_config(&self.config.data_dir, &self.settings().tls_policy())?;
        let port = self.settings().port;
        let listener = crate::ssl_port::bind(port).await?;
        self.ssl_port_open_since
            .store(fleetls_proto::now_ms(), std::sync::atomic::Ordering::SeqCst);
        let (stop, stopped) = crate::shutdown::channel();
        let mut global = self.shutdown.clone();
        let mut own = stopped.clone();
        let (trigger, both) = crate::shutdown::channel();
        tokio::spawn(async move {
            tokio::select! {
                _ = global.wait() => {}
                _ = own.wait() => {}
            }
            trigger.fire();
        });
        let greeting = format!("fleetls-parent {} ok\n", env!("CARGO_PKG_VERSION"));
        let (config, configs) = tokio::sync::watch::channel(config);
        tokio::spawn(crate::ssl_port::serve(listener, configs, greeting, both));
        *handle = Some(SslPortHandle { port, stop, config });
        Ok(port)
    }

    /// Reads the SSL port's certificates and revocation list again: the next
    /// handshake uses them (the port stays open).
    pub async fn reload_ssl_port(&self) -> Result<(), crate::ssl_port::SslPortError> {
        if let Some(handle) = self.ssl_port.lock().await.as_ref() {
            let config = crate::ssl_port::parent_config(
                &self.config.data_dir,
                &self.settings().tls_policy(),
            )?;
            handle.config.send_replace(config);
        }
        Ok(())
    }

    /// Renews the parent's and the broker's own certificates when they are
    /// due (the SSL port takes the new one at once; the broker's files are
    /// in `certificates/`, for `broker-tls --out` to write where RabbitMQ
    /// reads them). The CRL is signed again too: it is valid a week.
    pub async fn renew_own_if_due(&self) -> Result<(), String> {
        let Some(pki) = self.pki() else {
            return Ok(());
        };
        let (dir, settings) = (self.config.data_dir.clone(), self.settings());
        let now = (fleetls_proto::now_ms() / 1000) as i64;
        let renewed =
            tokio::task::spawn_blocking(move || pki.renew_own_if_due(&dir, &settings, now))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        if renewed {
            info!("the parent's and the broker's certificates were renewed");
            let dir = self.config.data_dir.clone();
            let pki = self.pki();
            let _ = tokio::task::spawn_blocking(move || {
                if let Some(pki) = pki {
                    crate::rotation::rewrite_broker_files(&dir, &pki)
                }
            })
            .await;
            self.reload_ssl_port().await.map_err(|e| e.to_string())?;
            self.refresh_crl().await?;
        }
        Ok(())
    }

    /// Signs the CA's revocation list again from the registry, writes it
    /// (`certificates/crl.pem`), makes the SSL port use it and sends it to
    /// every accepted local parent. Nothing to do without a CA.
    pub async fn refresh_crl(&self) -> Result<(), String> {
        let Some(pki) = self.pki() else {
            return Ok(());
        };
        let registry = self.registry.clone();
        let data_dir = self.config.data_dir.clone();
        let path = crate::layout::Layout::new(&self.config.data_dir)
            .certificate(crate::layout::CertFile::Crl);
        let crl = tokio::task::spawn_blocking(move || -> Result<String, String> {
            let (rows, number) = registry.revocations().map_err(|e| e.to_string())?;
            let mut revoked = Vec::with_capacity(rows.len());
            for (serial, at, reason) in rows {
                let reason = crate::pki::revocation_reason(&reason)?;
                revoked.push(crate::pki::Revoked { serial, at, reason });
            }
            let mut crl = pki.crl(&revoked, number).map_err(|e| e.to_string())?;
            // During a CA rotation the other CA's certificates are trusted
            // too: its list goes along (each SSL port matches a CRL to its
            // issuer).
            if let Some(other) =
                crate::rotation::other_ca(&data_dir, &registry, &pki.signing_fingerprint)
            {
                crl.push_str(&other.crl(&revoked, number).map_err(|e| e.to_string())?);
            }
            crate::files::write_atomic(&path, crl.as_bytes(), 0o644)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(crl)
        })
        .await
        .map_err(|e| e.to_string())??;
        self.reload_ssl_port().await.map_err(|e| e.to_string())?;
        // Only the local parents are read: during a renewal of every
        // certificate the list is signed again each second, and reading all
        // 30,000 agents each time was a quarter of the parent's work.
        let local_parents: Vec<crate::broker::Outgoing> = self
            .registry
            .agents_of_kind(fleetls_proto::AgentKind::LocalParent)
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|a| a.admission == crate::registry::Admission::Accepted)
            .map(|a| crate::broker::Outgoing {
                agent: a.id,
                body: fleetls_proto::ToChild::CrlUpdated(fleetls_proto::CrlUpdated {
                    crl_pem: crl.clone(),
                }),
                re: None,
            })
            .collect();
        if let (false, Some(channel)) = (local_parents.is_empty(), self.channel()) {
            self.send(&channel, local_parents)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Closes the SSL port (after `certs reset`).
    pub async fn stop_ssl_port(&self) {
        if let Some(handle) = self.ssl_port.lock().await.take() {
            handle.stop.fire();
        }
    }

    /// Moves the parent's own broker connection to AMQPS (persisted: a
    /// restarted parent comes back the same way).
    pub fn move_to_amqps(&self, uri: &str) {
        if let Err(e) = crate::broker_switch::save_state(&self.config.data_dir, uri) {
            warn!(error = %e, "cannot save the parent's AMQPS address");
            return;
        }
        *self.amqps.write().unwrap_or_else(|p| p.into_inner()) = Some(uri.to_owned());
        self.reconnect.notify_one();
        info!("the parent moves its own connection to AMQPS");
    }

    /// Whether presence is being read (at start, or after the broker was
    /// lost) and has not been for longer than [`PRESENCE_PATIENCE_MS`]:
    /// past that, online is from the reports until it comes.
    pub fn presence_pending(&self) -> bool {
        let since = self
            .presence_pending_since
            .load(std::sync::atomic::Ordering::SeqCst);
        since > 0 && fleetls_proto::now_ms().saturating_sub(since) < PRESENCE_PATIENCE_MS
    }

    /// How online is told now: from the broker's presence while it says
    /// (nobody is online while it is being read again), else from the last
    /// report.
    pub fn liveness(&self) -> crate::status::Liveness {
        if self
            .presence_active
            .load(std::sync::atomic::Ordering::SeqCst)
            || self.presence_pending()
        {
            crate::status::Liveness {
                offline_after_ms: 0,
                silent_after_ms: self.config.silent_after.as_millis() as u64,
            }
        } else {
            crate::status::Liveness::heard_within(self.config.offline_after.as_millis() as u64)
        }
    }

    /// Whether an agent last heard at `last_seen`, connected or not
    /// (`present`, from the broker), is online.
    pub fn is_online(&self, last_seen: u64, present: bool) -> bool {
        self.liveness()
            .online(fleetls_proto::now_ms(), last_seen, present)
    }

    /// Since when (ms) an accepted agent must have been heard to be waited
    /// for by a CA rotation and the final broker step (`--stale-after`).
    pub fn active_since(&self) -> u64 {
        fleetls_proto::now_ms().saturating_sub(self.config.stale_after.as_millis() as u64)
    }
}
