//! A child agent as it stands: its checked settings, identity, state, the
//! key it signs with and its trust in the parent, kept in its data dir.

use fleetls_bus::seal::SigningKey;
use fleetls_proto::{AgentState, Hello, StepReport, StepSpec, ToParent};

use crate::certs::CertStore;
use crate::config::RunConfig;
use crate::identity::{self, Identity, State, StoreError};
use crate::layout::Layout;
use crate::seq::Counter;
use crate::shutdown::Shutdown;
use crate::trust::Trust;

/// Why the child could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The data dir could not be prepared.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A local parent's SSL port while it serves.
struct LocalPort {
    /// Stops it when dropped with the agent (or fired).
    _stop: crate::shutdown::Trigger,
    /// The configuration the next handshake uses.
    config: tokio::sync::watch::Sender<std::sync::Arc<rustls::ServerConfig>>,
}

/// A running child: its settings, identity and state.
pub struct Agent {
    /// The checked configuration.
    pub config: RunConfig,
    /// Who it is.
    pub identity: Identity,
    /// Where it stands.
    pub state: std::sync::Mutex<State>,
    /// The local SSL port of a local parent, while it serves.
    local_port: std::sync::Mutex<Option<LocalPort>>,
    /// How a simulated child departs from a real one (set by the swarm;
    /// a real agent has none).
    pub quirks: Option<Box<dyn Quirks>>,
    /// When it last asked for a renewal (it asks again only after a while).
    pub last_renewal: std::sync::Mutex<Option<std::time::Instant>>,
    /// The key this agent signs its messages with (`DIR/identity.key`):
    /// the parent pins it at the first Hello.
    pub key: SigningKey,
    /// Which commands it obeys.
    pub trust: Trust,
    /// The last steps it ran: a step sent again is answered from here.
    pub steps_done: StepMemory,
    /// Its replay counter. Held from taking a seq until the broker confirmed
    /// the message (`Session::send`): the agent's sends take turns, so seq
    /// order is the order they enter the parent's queue.
    pub(crate) sending: tokio::sync::Mutex<Counter>,
}

/// The last few steps an agent ran, with their reports. The parent's
/// commands are transient and sent again when no answer came in time (or
/// after a reconnect), so the same step may arrive twice: the second copy
/// is answered with the first result instead of being run again. A step is
/// the same when campaign, step and deadline are (a retry the parent means
/// to be run has a new deadline).
#[derive(Debug, Default)]
pub struct StepMemory(std::sync::Mutex<std::collections::VecDeque<(StepKey, StepReport)>>);

type StepKey = (uuid::Uuid, fleetls_proto::Step, u64);

impl StepMemory {
    /// How many steps are remembered (a campaign has two per child).
    const KEEP: usize = 4;

    fn key(run: &fleetls_proto::RunStep) -> StepKey {
        (run.campaign, run.step.step(), run.deadline)
    }

    /// The report of `run` if it was run already.
    pub fn recall(&self, run: &fleetls_proto::RunStep) -> Option<StepReport> {
        let key = Self::key(run);
        let done = self.0.lock().unwrap_or_else(|p| p.into_inner());
        done.iter().find(|(k, _)| *k == key).map(|(_, r)| r.clone())
    }

    /// Keeps the report of `run`.
    pub fn remember(&self, run: &fleetls_proto::RunStep, report: &StepReport) {
        let mut done = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if done.len() == Self::KEEP {
            done.pop_front();
        }
        done.push_back((Self::key(run), report.clone()));
    }
}

/// How a simulated child departs from a real one, for load tests and
/// benchmarks: the swarm gives its children these; a real agent has none.
pub trait Quirks: Send + Sync {
    /// Takes its commands and never answers them.
    fn silent(&self) -> bool {
        false
    }

    /// Changes a test step before it runs (e.g. to a closed port).
    fn step(&self, _step: &mut StepSpec) {}
}

impl Agent {
    /// Prepares the data dir and loads (or makes) the identity.
    pub fn open(config: RunConfig) -> Result<Agent, RunError> {
        fleetls_bus::files::create_private_dir(&config.data_dir).map_err(|e| StoreError {
            path: config.data_dir.clone(),
            why: e.to_string(),
        })?;
        let identity = identity::load_or_create_identity(&config.data_dir, config.name.as_deref())?;
        let state = identity::load_state(&config.data_dir)?;
        let key_path = Layout::new(&config.data_dir).signing_key();
        let key = SigningKey::load_or_create(&key_path).map_err(|e| StoreError {
            path: key_path,
            why: e.to_string(),
        })?;
        let trust = Trust::load(&config.data_dir, config.parent_key.clone())?;
        let sending = tokio::sync::Mutex::new(Counter::resume(state.seq_floor));
        Ok(Agent {
            config,
            identity,
            state: std::sync::Mutex::new(state),
            local_port: std::sync::Mutex::new(None),
            quirks: None,
            last_renewal: std::sync::Mutex::new(None),
            key,
            trust,
            steps_done: StepMemory::default(),
            sending,
        })
    }

    /// The seq of a message about to be sent at `now_us`, from `counter`
    /// (this agent's, held in [`Agent::sending`] until the message is
    /// confirmed); a new reserve is saved in the state file when due.
    pub(crate) fn next_seq(&self, counter: &mut Counter, now_us: u64) -> u64 {
        counter.next(now_us, |floor| {
            self.update_state(|s| s.seq_floor = s.seq_floor.max(floor))
        })
    }

    /// Updates and saves the state.
    pub fn update_state(&self, f: impl FnOnce(&mut State)) -> Result<(), StoreError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = state.clone();
        f(&mut next);
        if next != *state {
            identity::save_state(&self.config.data_dir, &next)?;
            *state = next;
        }
        Ok(())
    }

    /// A local parent with a certificate and a port serves TLS for its
    /// location (started once; restarted after a new certificate).
    pub fn serve_local_port(&self, shutdown: &Shutdown, restart: bool) {
        if self.config.kind != fleetls_proto::AgentKind::LocalParent {
            return;
        }
        let (port, policy) = {
            let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            (
                state.serve_port,
                state.serve_tls.clone().unwrap_or_default(),
            )
        };
        let store = CertStore::new(&self.config.data_dir);
        let (Some(port), true) = (port, store.has_certificate()) else {
            return;
        };
        let mut running = self.local_port.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(port) = running.as_ref() {
            // Serving already: a new certificate or revocation list applies
            // from the next handshake on (the port is never closed, so no
            // new listener races the old one for it).
            if restart {
                match crate::local_port::server_config(&store, &policy) {
                    Ok(config) => {
                        port.config.send_replace(config);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the local SSL port keeps its old certificates")
                    }
                }
            }
            return;
        }
        let config = match crate::local_port::server_config(&store, &policy) {
            Ok(config) => config,
            Err(e) => {
                tracing::warn!(error = %e, "cannot serve the local SSL port");
                return;
            }
        };
        let (config_tx, config_rx) = tokio::sync::watch::channel(config);
        let (trigger, own) = crate::shutdown::channel();
        let mut global = shutdown.clone();
        let (both_trigger, both) = crate::shutdown::channel();
        let mut own_wait = own.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = global.wait() => {}
                _ = own_wait.wait() => {}
            }
            both_trigger.fire();
        });
        tokio::spawn(crate::local_port::serve(config_rx, port, both));
        *running = Some(LocalPort {
            _stop: trigger,
            config: config_tx,
        });
    }

    /// Whether the certificate valid from `not_before` to `not_after`
    /// (seconds) is due for renewal at `now`: past `--renew-at` of its
    /// lifetime, give or take 5% of it (the same for one agent and
    /// certificate, different between agents, so a network issued in one
    /// afternoon does not renew in one minute), and no request in the last
    /// twentieth of the lifetime (at least 10 s).
    pub fn renewal_due(&self, now: i64, not_before: i64, not_after: i64) -> bool {
        let lifetime = (not_after - not_before).max(1) as f64;
        let seed = self.identity.id.as_u128() as u64 ^ not_after as u64;
        let jitter = (seed % 1001) as f64 / 1000.0 * 0.1 - 0.05;
        let due_at = not_before as f64 + lifetime * (self.config.renew_at + jitter);
        if (now as f64) < due_at {
            return false;
        }
        let retry = std::time::Duration::from_secs_f64((lifetime / 20.0).max(10.0));
        let mut last = self.last_renewal.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < retry) {
            return false;
        }
        *last = Some(std::time::Instant::now());
        true
    }

    pub(crate) fn report_state(&self) -> AgentState {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let store = CertStore::new(&self.config.data_dir);
        AgentState {
            has_certificate: store.has_certificate(),
            trusted_cas: store.trusted_fingerprints(),
            ssl: state.ssl,
            broker_tls: state.broker_tls_uri.is_some(),
            parent_key: self.trust.pinned(),
        }
    }

    pub(crate) fn hello(&self) -> ToParent {
        ToParent::Hello(Hello {
            name: self.identity.name.clone(),
            kind: self.config.kind,
            version: self.config.version.clone(),
            location: self.config.location.clone(),
            hostnames: self.config.hostnames.clone(),
            ips: self.config.ips.iter().map(|ip| ip.to_string()).collect(),
            key_fingerprint: Some(self.key.public().fingerprint()),
            state: self.report_state(),
            enroll: self.config.enroll_token.as_ref().map(|token| {
                token.proof(
                    self.identity.id,
                    &self.key.public().hex(),
                    self.config.kind,
                    &self.identity.name,
                )
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seq::RESERVE_US;

    /// The agent of data dir `dir`, as a start of the process opens it.
    fn start(dir: &std::path::Path) -> Agent {
        let raw = crate::config::RawRun {
            broker: Some("amqp://127.0.0.1:1".into()),
            data_dir: Some(dir.to_owned()),
            name: Some("till-1".into()),
            ..Default::default()
        };
        Agent::open(RunConfig::from_raw(raw).unwrap()).unwrap()
    }

    /// The seqs of messages sent at each of `clock` (µs), in turn.
    fn send_at(agent: &Agent, clock: &[u64]) -> Vec<u64> {
        let mut counter = agent.sending.try_lock().expect("nothing else sends");
        clock
            .iter()
            .map(|now| agent.next_seq(&mut counter, *now))
            .collect()
    }

    fn strictly_increasing(seqs: &[u64]) -> bool {
        seqs.windows(2).all(|w| w[0] < w[1])
    }

    #[test]
    fn seq_keeps_rising_across_restarts_with_the_clock_set_back() {
        let dir = tempfile::tempdir().unwrap();
        let t = 1_700_000_000_000_000;
        let day = 24 * 3_600 * 1_000_000;
        // Two hours of messages, some in the same microsecond, the clock
        // stepping back a second in between.
        let mut sent = send_at(
            &start(dir.path()),
            &[
                t,
                t,
                t + 10,
                t - 1_000_000,
                t + RESERVE_US,
                t + 2 * RESERVE_US,
            ],
        );
        // Restarted with the clock a day behind: above everything sent,
        // and going on from there.
        sent.extend(send_at(
            &start(dir.path()),
            &[t - day, t - day, t - day + 5],
        ));
        // Once more, a week behind, after a restart that sent nothing.
        drop(start(dir.path()));
        sent.extend(send_at(&start(dir.path()), &[t - 7 * day]));
        assert!(strictly_increasing(&sent), "{sent:?}");
        // The reserve is in the state file, an hour ahead of the last seq:
        // one write at each start that sent, and once an hour of seqs.
        let floor = identity::load_state(dir.path()).unwrap().seq_floor;
        assert_eq!(floor, sent.last().unwrap() + RESERVE_US);
        // Back to the real time: the clock wins again.
        let agent = start(dir.path());
        assert_eq!(send_at(&agent, &[floor + day]), [floor + day]);
    }
}
