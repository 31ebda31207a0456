//! The status view: the network's phase and counters, the campaign summary
//! and every agent, computed from the registry. `GET /api/status` serves it
//! and `fleetls-parent status` prints it; `GET /api/summary` serves the same
//! without the agent list. The parent keeps the list between calls
//! ([`Cache`]) and reads again only what changed.
//!
//! What the status says of an agent is defined once, in SQL, in the
//! registry (`registry::views`: [`DEFINITIONS`], [`AGENTS_FROM`],
//! [`LAST_ENROLMENT`], [`STEP_RESULTS`]), and the console's pages query the
//! same definitions: whether it holds a certificate, which test result is
//! its last one, which step results count, its last refusal. What the
//! counters count is defined once, by `Tally` (`status::counters`).
//!
//! Here: the status's types and [`compute`]; the list and what its rows
//! say in `list`, the kept list in `cache`.

use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::campaign::{LastResult, Progress};
use crate::config::Version;
use crate::registry::{Agent, Registry, RegistryError};
use fleetls_proto::AgentKind;

mod cache;
mod counters;
mod list;

pub use crate::registry::views::{
    AGENTS_FROM, AGENTS_ORDER, AGENT_COLUMNS, AGENT_COLUMN_COUNT, DEFINITIONS, LAST_COLUMNS,
    LAST_ENROLMENT, STEP_RESULTS,
};
pub use cache::{Cache, KeptList, StatusJson};
pub use list::{agents_where, attach_step, row_to_last_result, row_to_status};

use counters::Tally;
use list::{agent_list, newest_campaign};

/// What `status --json` prints.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// Where the network stands and its counters.
    pub network: Network,
    /// The figures of the last campaign.
    pub summary: Summary,
    /// The newest campaign's progress.
    pub campaign: Option<Progress>,
    /// Every agent.
    pub agents: Vec<AgentStatus>,
}

/// [`Status`] borrowed, to serialise the kept list without copying it
/// (the same JSON).
#[derive(Debug, Serialize)]
pub struct StatusRef<'a> {
    /// Where the network stands and its counters.
    pub network: &'a Network,
    /// The figures of the last campaign.
    pub summary: &'a Summary,
    /// The newest campaign's progress.
    pub campaign: Option<&'a Progress>,
    /// Every agent.
    pub agents: &'a [AgentStatus],
}

/// The status without the agent list: what `GET /api/summary` serves.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Overview {
    /// Where the network stands and its counters.
    pub network: Network,
    /// The figures of the last campaign.
    pub summary: Summary,
    /// The newest campaign's progress.
    pub campaign: Option<Progress>,
}

impl Overview {
    /// The whole status: this with the agent list.
    pub fn with_agents(self, agents: Vec<AgentStatus>) -> Status {
        Status {
            network: self.network,
            summary: self.summary,
            campaign: self.campaign,
            agents,
        }
    }
}

/// The network's phase and counters.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Network {
    /// `plain`, `certificates`, `ssl` or `broker-tls`.
    pub phase: String,
    /// Registered agents.
    pub agents: usize,
    /// Agents online (consuming their queue, as the broker says).
    pub online: usize,
    /// Agents not online.
    pub offline: usize,
    /// Agents connected whose last state report is too old (maybe wedged).
    #[serde(default)]
    pub silent: usize,
    /// Children that can take part (SSL-capable and not mPOS).
    pub eligible: usize,
    /// Children holding a certificate.
    pub children_with_certificates: usize,
    /// Children switched to SSL.
    pub switched_to_ssl: usize,
    /// Children whose broker connection is AMQPS: they say so, and they
    /// are accepted and hold a certificate the registry issued (a claim
    /// alone counts for nothing).
    pub broker_tls: usize,
    /// The lowest SSL-capable version.
    pub min_ssl_version: String,
    /// Whether the CA and certificates were generated.
    pub certificates_generated: bool,
    /// The root CA fingerprint, once generated.
    pub ca_fingerprint: Option<String>,
    /// The SSL port, while it listens.
    pub ssl_port: Option<u16>,
    /// Agents waiting for an operator to accept them.
    #[serde(default)]
    pub pending: usize,
    /// Agents an operator rejected.
    #[serde(default)]
    pub rejected: usize,
    /// Agents that pinned another parent key than this parent's: they obey
    /// someone else.
    #[serde(default)]
    pub compromised: usize,
    /// Security events recorded (forged or replayed commands, impersonation,
    /// banned keys, oversized or invalid messages).
    #[serde(default)]
    pub security_events: u64,
    /// The fingerprint of the key the parent signs commands with (give it
    /// to children as `--parent-key`).
    #[serde(default)]
    pub signing_key: Option<String>,
    /// The soonest expiry of a valid agent certificate (seconds since the
    /// epoch): renewal keeps it ahead.
    #[serde(default)]
    pub soonest_expiry: Option<i64>,
    /// Certificates revoked (by `revoke`, rejection, deletion, or
    /// superseded by a renewal).
    #[serde(default)]
    pub revoked_certificates: u64,
    /// Renewals done: certificates issued to an agent that held one (the
    /// one replaced is revoked, superseded).
    #[serde(default)]
    pub renewals_done: u64,
    /// Renewals failed: CSRs refused from an agent that had been issued a
    /// certificate before.
    #[serde(default)]
    pub renewals_failed: u64,
    /// The newest CA rotation and how far it got.
    #[serde(default)]
    pub ca_rotation: Option<crate::rotation::RotationView>,
    /// The topology alarm: how many times a broker user's damage (a deleted
    /// exchange or queue, an unbinding) was found and rebuilt, and the last
    /// time, with what was rebuilt (`None`: never).
    #[serde(default)]
    pub topology: Option<TopologyAlarm>,
    /// The broker's nodes and their health, as management last showed them
    /// (with `--management`; see [`crate::cluster`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<crate::cluster::NodeHealth>,
    /// When management showed `nodes` (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes_at: Option<u64>,
    /// When management listed the connections behind each node's counts
    /// (ms since the epoch; less often than `nodes_at` on a big fleet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections_at: Option<u64>,
    /// The type of `fleetls.parent` and `fleetls.dead` and why the parent
    /// chose it (see [`crate::queue_choice`]).
    #[serde(default)]
    pub queue_type: Option<crate::queue_choice::QueueChoice>,
    /// Open enrollment (`--auto-accept`), when the operator chose it: the
    /// kinds and names any broker user can obtain a certificate for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_enrollment: Option<String>,
    /// Agents whose name is taken by another or prints like another's.
    #[serde(default)]
    pub flagged_names: u64,
    /// Where online comes from: `broker` (who consumes their queue, from
    /// the broker's event exchange), `reading` (that is being read, at
    /// start or after the broker was lost: nobody counts as online yet) or
    /// `reports` (heard within `--offline-after`: no event exchange,
    /// presence turned off, or a broker that has not answered for a minute).
    #[serde(default)]
    pub online_from: String,
}

/// The campaign summary (every figure a query over the registry).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// Properly passed.
    pub passed: usize,
    /// Finished with errors.
    pub with_errors: usize,
    /// Did not participate (offline, silent, timed out).
    pub did_not_participate: usize,
    /// Version not supporting SSL.
    pub version_not_supporting_ssl: usize,
    /// mPOS devices (certificate by export).
    pub mpos: usize,
    /// Kept on plain AMQP by an operator's decision (`agents exclude`):
    /// never counted as an error or as absent.
    #[serde(default)]
    pub excluded: usize,
}

/// One agent in the status list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentStatus {
    /// Its id.
    pub id: Uuid,
    /// Display name.
    pub name: String,
    /// Kind.
    pub kind: AgentKind,
    /// Reported version.
    pub version: String,
    /// Site.
    pub location: Option<String>,
    /// DNS names.
    pub hostnames: Vec<String>,
    /// IP addresses.
    pub ips: Vec<String>,
    /// Online: it consumes its queue now, as the broker says (or, where
    /// the broker does not say, it was heard from recently).
    pub online: bool,
    /// It consumes its queue now, as the broker says.
    #[serde(default)]
    pub connected: bool,
    /// Connected, but its last state report is older than `--silent-after`:
    /// maybe wedged.
    #[serde(default)]
    pub silent: bool,
    /// Last heard (ms since the epoch).
    pub last_seen: u64,
    /// Its version supports SSL.
    pub ssl_capable: bool,
    /// Holds a certificate.
    pub has_certificate: bool,
    /// In SSL mode.
    pub ssl: bool,
    /// Broker connection is AMQPS.
    pub broker_tls: bool,
    /// The last test result, if any.
    pub last_result: Option<LastResult>,
    /// The last command this agent refused or was refused, and why.
    pub refusal: Option<String>,
    /// `pending`, `accepted` or `rejected`.
    #[serde(default)]
    pub admission: crate::registry::Admission,
    /// It pinned another parent key than this parent's.
    #[serde(default)]
    pub compromised: bool,
    /// When its valid certificate expires (seconds since the epoch).
    #[serde(default)]
    pub certificate_not_after: Option<i64>,
    /// Kept on plain AMQP by an operator's decision, and why.
    #[serde(default)]
    pub excluded: Option<String>,
    /// `sha256:HEX` of the CA that signed its valid certificate (during a
    /// CA rotation: the old or the new one).
    #[serde(default)]
    pub certificate_ca: Option<String>,
}

/// How long a child heard from last counts as online for a campaign's
/// judgement though the broker says it is gone ([`Liveness::for_judging`]).
pub const JUDGE_GRACE_MS: u64 = 15_000;

/// How the parent tells who is online (see `crate::tasks::presence`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// Agents not heard from for this long are offline, unless the broker
    /// says they are connected; 0 while the broker says who is (presence
    /// alone decides).
    pub offline_after_ms: u64,
    /// A connected agent whose last report is older than this is flagged
    /// silent (connected, but maybe wedged); 0: never (no presence).
    pub silent_after_ms: u64,
}

impl Liveness {
    /// Online from the last report alone: heard within `offline_after_ms`.
    pub fn heard_within(offline_after_ms: u64) -> Liveness {
        Liveness {
            offline_after_ms,
            silent_after_ms: 0,
        }
    }

    /// The liveness a campaign judges an acting child by: with presence, a
    /// child heard within [`JUDGE_GRACE_MS`] still counts — a broker that
    /// shuts down closes every consumer a moment before the parent's own
    /// connection, and a child cut off for the seconds of a restart or a
    /// node's failover comes back and finishes its step; it is not judged
    /// "did not participate" for it. Without presence, as it is.
    pub fn for_judging(self) -> Liveness {
        if self.offline_after_ms == 0 {
            Liveness {
                offline_after_ms: JUDGE_GRACE_MS,
                ..self
            }
        } else {
            self
        }
    }

    /// Whether an agent that consumes its queue now (`present`, from the
    /// broker) and was last heard at `last_seen` (ms) is online at `now_ms`.
    pub fn online(&self, now_ms: u64, last_seen: u64, present: bool) -> bool {
        present || now_ms.saturating_sub(last_seen) < self.offline_after_ms
    }

    /// Whether it is connected and yet has not reported for too long.
    pub fn silent(&self, now_ms: u64, last_seen: u64, present: bool) -> bool {
        present
            && self.silent_after_ms > 0
            && now_ms.saturating_sub(last_seen) >= self.silent_after_ms
    }
}

/// What shaping an agent's row needs besides the row.
#[derive(Debug, Clone, Copy)]
pub struct ViewContext {
    /// Now, ms since the epoch.
    pub now_ms: u64,
    /// Who is online.
    pub liveness: Liveness,
    /// The lowest SSL-capable version.
    pub min_ssl_version: Version,
}

impl ViewContext {
    /// The context as of now.
    pub fn new(min_ssl_version: Version, liveness: Liveness) -> ViewContext {
        ViewContext {
            now_ms: fleetls_proto::now_ms(),
            liveness,
            min_ssl_version,
        }
    }

    /// Whether an agent last heard at `last_seen` (ms), connected or not
    /// (`present`), is online.
    pub fn online(&self, last_seen: u64, present: bool) -> bool {
        self.liveness.online(self.now_ms, last_seen, present)
    }

    /// Whether it is connected and silent for too long.
    pub fn silent(&self, last_seen: u64, present: bool) -> bool {
        self.liveness.silent(self.now_ms, last_seen, present)
    }

    /// The last report before which an agent not connected is offline.
    pub fn cutoff_ms(&self) -> u64 {
        self.now_ms.saturating_sub(self.liveness.offline_after_ms)
    }
}

/// Runs `f` in one read transaction: every query sees the same registry.
pub fn read<T>(
    registry: &Registry,
    f: impl FnOnce(&Connection) -> Result<T, RegistryError>,
) -> Result<T, RegistryError> {
    registry.with_db(|db| {
        let tx = db.unchecked_transaction()?;
        let value = f(&tx)?;
        tx.commit()?;
        Ok(value)
    })
}

/// Computes the status from the registry.
pub fn compute(
    registry: &Registry,
    min_ssl_version: Version,
    liveness: Liveness,
    ca_fingerprint: Option<&str>,
) -> Result<Status, RegistryError> {
    let context = ViewContext::new(min_ssl_version, liveness);
    let ((agents, _), campaign) = read(registry, |db| {
        Ok((agent_list(db, context)?, newest_campaign(db)?))
    })?;
    let overview = Tally::of(&agents).overview(context, ca_fingerprint, campaign);
    Ok(overview.with_agents(agents))
}

/// Whether a reported version supports SSL.
pub fn ssl_capable(version: &str, min: Version) -> bool {
    Version::parse(version).is_ok_and(|v| v >= min)
}

/// The broker's topology found damaged and rebuilt (`crate::topology`).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct TopologyAlarm {
    /// How many times it was rebuilt since the registry began.
    pub repairs: u64,
    /// When it was last rebuilt (ms).
    pub last_at: u64,
    /// What was rebuilt the last time.
    pub last: String,
}

/// Whether an agent takes part in certificates and campaigns: accepted, not
/// COMPROMISED, not excluded, not an mPOS device, on a version with SSL.
pub fn eligible(agent: &Agent, min: Version) -> bool {
    agent.admission == crate::registry::Admission::Accepted
        && !agent.compromised
        && agent.excluded.is_none()
        && agent.kind != AgentKind::Mpos
        && ssl_capable(&agent.version, min)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::campaign::ChildState;
    use crate::console::{self, RawPageQuery};
    use crate::registry::test_support::*;

    const MIN: Version = Version(1, 0, 0);
    const OFFLINE_AFTER_MS: Liveness = Liveness {
        offline_after_ms: 60_000,
        silent_after_ms: 0,
    };

    /// Inserts an agent row, heard now, at shop-1.
    fn agent(db: &Connection, name: &str, kind: &str, version: &str, claims_cert: bool) -> Uuid {
        let id = Uuid::new_v4();
        insert_agent_row(
            db,
            &AgentRow {
                id,
                name,
                kind,
                version,
                location: "shop-1",
                hostnames: "[\"till.shop\"]",
                ips: "[\"10.0.0.1\"]",
                last_seen: fleetls_proto::now_ms() as i64,
                has_certificate: claims_cert,
            },
        )
        .unwrap();
        id
    }

    fn certificate(db: &Connection, agent: Uuid, revoked: bool) {
        insert_certificate_row(
            db,
            &CertificateRow {
                serial: &Uuid::new_v4().to_string(),
                agent,
                subject: "CN=x",
                not_after: 0,
                issued_at: 0,
                revoked,
                chain_pem: "PEM",
                renewal: false,
            },
        )
        .unwrap();
    }

    fn campaign(db: &Connection, kind: &str, started: i64, children: &[(Uuid, &str)]) -> Uuid {
        let id = insert_finished_campaign(db, kind, started).unwrap();
        for (seq, (agent, state)) in children.iter().enumerate() {
            insert_campaign_child(db, id, *agent, seq, state, "h").unwrap();
        }
        id
    }

    fn step(db: &Connection, campaign: Uuid, agent: Uuid, step: &str, ok: bool, late: bool) {
        insert_step_result(
            db,
            &StepResultRow {
                campaign,
                agent,
                step,
                ok,
                message: &format!("{step} {ok}"),
                at: 7,
                late,
            },
        )
        .unwrap();
    }

    #[test]
    fn the_list_the_summary_and_the_pages_agree() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(&dir.path().join("fleetls.db")).unwrap();
        let ids = registry
            .with_tx(|db| {
                let a = agent(db, "till-a", "child", "1.2.0", true);
                let b = agent(db, "till-b", "child", "1.0.0", true);
                let c = agent(db, "till-c", "child", "1.0.0", false);
                agent(db, "bo-old", "child", "0.9.0", false);
                let mpos = agent(db, "mpos-1", "mpos", "1.0.0", true);
                // Two agents may share a name: the id orders them.
                let twin = agent(db, "till-a", "local-parent", "1.0.0", true);
                certificate(db, a, false);
                certificate(db, b, true);
                certificate(db, mpos, false);
                certificate(db, twin, false);
                let verify = campaign(db, "verify", 10, &[(a, "failed"), (b, "passed")]);
                let reverify = campaign(db, "reverify", 20, &[(a, "passed"), (twin, "passed")]);
                // Same start as the reverify, created later: the newer.
                let tie = campaign(db, "verify", 20, &[(twin, "failed")]);
                campaign(db, "switch", 30, &[(a, "failed"), (c, "failed")]);
                step(db, verify, a, "cert-test", false, false);
                step(db, reverify, a, "cert-test", true, false);
                step(db, reverify, a, "ssl-port", true, false);
                step(db, verify, b, "cert-test", true, false);
                // Reported after the child was ended: does not count.
                step(db, verify, b, "ssl-port", false, true);
                step(db, tie, twin, "cert-test", false, false);
                insert_refusal(db, c, "no", 1)?;
                Ok([a, b, c, twin, verify, reverify, tie])
            })
            .unwrap();
        let [a, b, c, twin, verify, reverify, tie] = ids;

        let status = compute(&registry, MIN, OFFLINE_AFTER_MS, Some("sha256:x")).unwrap();
        let names: Vec<&str> = status.agents.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(
            names,
            ["bo-old", "mpos-1", "till-a", "till-a", "till-b", "till-c"]
        );
        let by_id = |id: Uuid| status.agents.iter().find(|x| x.id == id).unwrap();
        let last_a = by_id(a).last_result.as_ref().unwrap();
        assert_eq!(
            (last_a.campaign, last_a.kind.as_str()),
            (reverify, "reverify")
        );
        assert_eq!(last_a.state, ChildState::Passed);
        assert!(last_a.cert_test.as_ref().unwrap().ok && last_a.ssl_port.is_some());
        let last_b = by_id(b).last_result.as_ref().unwrap();
        assert_eq!((last_b.campaign, last_b.state.as_str()), (verify, "passed"));
        assert!(
            last_b.cert_test.is_some() && last_b.ssl_port.is_none(),
            "late"
        );
        let last_twin = by_id(twin).last_result.as_ref().unwrap();
        assert_eq!(
            (last_twin.campaign, last_twin.state.as_str()),
            (tie, "failed")
        );
        assert!(by_id(c).last_result.is_none(), "a switch is no test");
        assert_eq!(by_id(c).refusal.as_deref(), Some("no"));
        // A revoked certificate, or none issued, is no certificate.
        assert!(by_id(a).has_certificate && !by_id(b).has_certificate);
        assert_eq!(
            status.network,
            Network {
                phase: "certificates".into(),
                agents: 6,
                online: 6,
                offline: 0,
                silent: 0,
                eligible: 4,
                children_with_certificates: 2,
                switched_to_ssl: 0,
                broker_tls: 0,
                min_ssl_version: "1.0.0".into(),
                certificates_generated: true,
                ca_fingerprint: Some("sha256:x".into()),
                ssl_port: None,
                pending: 0,
                rejected: 0,
                compromised: 0,
                online_from: "reports".into(),
                security_events: 0,
                signing_key: None,
                // The test's certificates carry not_after = 0.
                soonest_expiry: Some(0),
                revoked_certificates: 0,
                renewals_done: 0,
                renewals_failed: 0,
                ca_rotation: None,
                topology: None,
                nodes: Vec::new(),
                nodes_at: None,
                connections_at: None,
                queue_type: None,
                open_enrollment: None,
                flagged_names: 0,
            }
        );
        assert_eq!(
            status.summary,
            Summary {
                passed: 2,
                with_errors: 1,
                did_not_participate: 1,
                version_not_supporting_ssl: 1,
                mpos: 1,
                excluded: 0,
            }
        );

        let context = ViewContext::new(MIN, OFFLINE_AFTER_MS);
        let query = RawPageQuery::default().check().unwrap();
        let page = console::page(&registry, context, &query).unwrap();
        assert_eq!(page.agents, status.agents);
    }

    #[test]
    fn the_kept_list_follows_every_change() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(&dir.path().join("fleetls.db")).unwrap();
        let (a, b, verify) = registry
            .with_tx(|db| {
                let a = agent(db, "till-a", "child", "1.2.0", true);
                let b = agent(db, "till-b", "child", "1.0.0", true);
                certificate(db, a, false);
                let verify = campaign(db, "verify", 10, &[(a, "failed"), (b, "passed")]);
                step(db, verify, a, "cert-test", false, false);
                Ok((a, b, verify))
            })
            .unwrap();
        let cache = Cache::default();
        let whole_reads = || cache.whole_reads.load(std::sync::atomic::Ordering::Relaxed);
        // The kept list and overview, as the API serves them, against a
        // fresh computation.
        let check = |what: &str| {
            let fresh = compute(&registry, MIN, OFFLINE_AFTER_MS, Some("sha256:x")).unwrap();
            let (kept, json) = cache
                .with_status(
                    &registry,
                    MIN,
                    OFFLINE_AFTER_MS,
                    Some("sha256:x"),
                    |o, mut list| {
                        let value = serde_json::to_vec(&StatusRef {
                            network: &o.network,
                            summary: &o.summary,
                            campaign: o.campaign.as_ref(),
                            agents: list.agents(),
                        })
                        .unwrap();
                        (value, list.status_json(&o).unwrap().to_vec())
                    },
                )
                .unwrap();
            assert_eq!(kept, serde_json::to_vec(&fresh).unwrap(), "after {what}");
            assert_eq!(
                String::from_utf8(json).unwrap(),
                String::from_utf8(kept).unwrap(),
                "the kept JSON after {what}"
            );
        };
        check("the first call");
        assert_eq!(whole_reads(), 1);
        check("nothing");
        assert_eq!(whole_reads(), 1, "nothing changed: nothing read");

        // Agents' own rows: read again one by one, last results kept.
        let now = fleetls_proto::now_ms() as i64;
        registry
            .with_tx(|db| {
                set_last_seen(db, a, 0)?;
                set_ssl(db, a, true)?;
                set_version(db, b, "0.9.0")?;
                set_last_seen(db, b, now)?;
                Ok(())
            })
            .unwrap();
        check("a heartbeat and a new version");
        registry
            .with_tx(|db| {
                set_name(db, b, "a-first")?;
                agent(db, "new-till", "child", "1.0.0", false);
                Ok(())
            })
            .unwrap();
        check("a new name and a new agent");
        assert_eq!(whole_reads(), 1, "agents' rows are read one by one");

        // A campaign's results, certificates and refusals: the agents they
        // belong to are read again.
        registry
            .with_tx(|db| {
                certificate(db, b, false);
                set_children_state(db, a, "passed", "again")?;
                step(db, verify, a, "ssl-port", true, false);
                insert_refusal(db, b, "no", 1)?;
                set_campaign_state(db, verify, "timed_out")?;
                Ok(())
            })
            .unwrap();
        check("results, a certificate, a refusal and a campaign's end");
        assert_eq!(whole_reads(), 1, "only the agents concerned are read");

        // A new campaign, a deleted row: the whole list again.
        registry
            .with_tx(|db| {
                campaign(db, "reverify", 20, &[(b, "failed")]);
                Ok(())
            })
            .unwrap();
        check("a new campaign");
        assert_eq!(whole_reads(), 2);
        registry
            .with_tx(|db| {
                delete_refusal(db, b)?;
                Ok(())
            })
            .unwrap();
        check("a refusal cleared");
        assert_eq!(whole_reads(), 3);
        registry.forget_certificates().unwrap();
        check("certs reset (a DELETE the update hook does not see)");
        assert_eq!(whole_reads(), 4);
        // A rolled back write changes nothing but is read again, safely.
        let _ = registry.with_tx(|db| {
            agent(db, "rolled-back", "child", "1.0.0", false);
            Err::<(), _>(RegistryError::Corrupt("no".into()))
        });
        check("a rolled back registration");
    }

    #[test]
    fn a_campaign_judges_a_child_just_cut_off_as_still_there() {
        let presence = Liveness {
            offline_after_ms: 0,
            silent_after_ms: 900_000,
        };
        let now = 1_000_000;
        // The broker says it is gone; heard 5 s ago: offline for status,
        // still there for a campaign's judgement, until the grace is over.
        assert!(!presence.online(now, now - 5_000, false));
        assert!(presence.for_judging().online(now, now - 5_000, false));
        assert!(!presence
            .for_judging()
            .online(now, now - JUDGE_GRACE_MS, false));
        // Without presence the report rule stands as it is.
        let reports = Liveness::heard_within(4_000);
        assert_eq!(reports.for_judging(), reports);
    }

    #[test]
    fn an_empty_registry_is_plain() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(&dir.path().join("fleetls.db")).unwrap();
        let status = compute(&registry, MIN, OFFLINE_AFTER_MS, None).unwrap();
        let overview = Cache::default()
            .with_status(&registry, MIN, OFFLINE_AFTER_MS, None, |o, _| o)
            .unwrap();
        assert_eq!(status.network.phase, "plain");
        assert!(status.agents.is_empty() && status.campaign.is_none());
        assert_eq!(overview.network, status.network);
        assert_eq!(overview.summary, Summary::default());
    }
}
