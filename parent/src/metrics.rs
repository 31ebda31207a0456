//! The `/metrics` page: Prometheus text format rendered from plain inputs —
//! the status overview (agents by state, certificates, the summary, the
//! broker's nodes, the newest campaign), the message counters and the
//! security events by kind. The admin API reads them and calls [`render`].

use std::fmt::Write;

use crate::campaign::Progress;
use crate::cluster::NodeHealth;
use crate::rotation::Phase;
use crate::status::{Network, Overview, Summary};

/// The parent's message counters, read once for one page.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    /// Messages consumed from `fleetls.parent`.
    pub received: u64,
    /// Messages sent to agents.
    pub sent: u64,
    /// Messages dead-lettered to `fleetls.dead`.
    pub dead_lettered: u64,
    /// Dead letters a full `fleetls.dead` refused.
    pub dead_letters_refused: u64,
    /// Messages dropped because their seq was not above their agent's
    /// replay counter: redeliveries and replays.
    pub replayed: u64,
    /// Registry transactions of consumed messages.
    pub batches: u64,
}

/// The page: every gauge of the overview, then the counters, then the
/// security events recorded by kind (`security`: kind and count).
/// `cert_lifetime_seconds` is the validity of the certificates the parent
/// issues (`serve --cert-lifetime`): alerting rules measure the renewal
/// window against it.
pub fn render(
    status: &Overview,
    counters: &Counters,
    security: &[(String, u64)],
    cert_lifetime_seconds: i64,
) -> String {
    let mut page = Page::default();
    let n = &status.network;
    agents(&mut page, n);
    certificates(&mut page, n, cert_lifetime_seconds);
    summary(&mut page, &status.summary);
    if !n.nodes.is_empty() {
        nodes(&mut page, &n.nodes);
    }
    if let Some(c) = &status.campaign {
        campaign(&mut page, c);
    }
    page.counters(counters);
    page.security(security);
    page.out
}

/// The text being written.
#[derive(Default)]
struct Page {
    /// What is written so far.
    out: String,
}

impl Page {
    /// A gauge: its help, its type and one line per sample (labels, value).
    fn gauge(&mut self, name: &str, help: &str, samples: &[(&str, f64)]) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, value) in samples {
            let _ = writeln!(self.out, "{name}{labels} {value}");
        }
    }

    /// A gauge whose labels are made for this page.
    fn gauge_owned(&mut self, name: &str, help: &str, samples: &[(String, f64)]) {
        let refs: Vec<(&str, f64)> = samples.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        self.gauge(name, help, &refs);
    }

    /// The message counters.
    fn counters(&mut self, c: &Counters) {
        for (name, help, value) in [
            (
                "fleetls_messages_received_total",
                "Messages consumed from fleetls.parent.",
                c.received,
            ),
            (
                "fleetls_messages_sent_total",
                "Messages sent to agents.",
                c.sent,
            ),
            (
                "fleetls_messages_dead_lettered_total",
                "Messages dead-lettered to fleetls.dead.",
                c.dead_lettered,
            ),
            (
                "fleetls_dead_letters_refused_total",
                "Dead letters fleetls.dead refused at its bound (a flood fills it: what it holds is kept, the newest are only counted).",
                c.dead_letters_refused,
            ),
            (
                "fleetls_replayed_messages_total",
                "Messages acked and ignored because their seq was not above their agent's replay counter (redeliveries and replays).",
                c.replayed,
            ),
            (
                "fleetls_registry_batches_total",
                "Registry transactions of consumed messages.",
                c.batches,
            ),
        ] {
            let _ = writeln!(
                self.out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
    }

    /// The security events recorded, by kind.
    fn security(&mut self, counts: &[(String, u64)]) {
        let _ = writeln!(
            self.out,
            "# HELP fleetls_security_events_total Security events recorded: forged or replayed commands, impersonation, banned keys, unsigned, oversized or invalid messages.\n# TYPE fleetls_security_events_total counter"
        );
        for (kind, count) in counts {
            let _ = writeln!(
                self.out,
                "fleetls_security_events_total{{kind=\"{kind}\"}} {count}"
            );
        }
    }
}

/// Registered agents by state.
fn agents(page: &mut Page, n: &Network) {
    page.gauge(
        "fleetls_agents",
        "Registered agents by state.",
        &[
            ("{state=\"online\"}", n.online as f64),
            ("{state=\"offline\"}", n.offline as f64),
            ("{state=\"silent\"}", n.silent as f64),
            ("{state=\"eligible\"}", n.eligible as f64),
            (
                "{state=\"with_certificate\"}",
                n.children_with_certificates as f64,
            ),
            ("{state=\"ssl\"}", n.switched_to_ssl as f64),
            ("{state=\"broker_tls\"}", n.broker_tls as f64),
            ("{state=\"pending\"}", n.pending as f64),
            ("{state=\"rejected\"}", n.rejected as f64),
            ("{state=\"compromised\"}", n.compromised as f64),
            ("{state=\"name_flagged\"}", n.flagged_names as f64),
        ],
    );
    page.gauge(
        "fleetls_open_enrollment",
        "1 while --auto-accept lets any broker user obtain a certificate (open enrollment), else 0.",
        &[("", f64::from(u8::from(n.open_enrollment.is_some())))],
    );
}

/// Revocations, the certificates' lifetime and soonest expiry, renewals and
/// the newest CA rotation.
fn certificates(page: &mut Page, n: &Network, lifetime_seconds: i64) {
    page.gauge(
        "fleetls_certificates_revoked",
        "Certificates revoked (by revoke, rejection, deletion, or superseded by a renewal).",
        &[("", n.revoked_certificates as f64)],
    );
    page.gauge(
        "fleetls_certificate_lifetime_seconds",
        "Validity of the certificates the parent issues (serve --cert-lifetime); children renew at two thirds of it.",
        &[("", lifetime_seconds as f64)],
    );
    if let Some(soonest) = n.soonest_expiry {
        page.gauge(
            "fleetls_certificate_soonest_expiry_seconds",
            "When the first valid agent certificate expires (Unix seconds).",
            &[("", soonest as f64)],
        );
    }
    page.gauge(
        "fleetls_certificate_renewals",
        "Renewals: done (a certificate issued to an agent that held one), failed (a CSR refused from such an agent).",
        &[
            ("{result=\"done\"}", n.renewals_done as f64),
            ("{result=\"failed\"}", n.renewals_failed as f64),
        ],
    );
    if let Some(r) = &n.ca_rotation {
        page.gauge(
            "fleetls_ca_rotation_agents",
            "The newest CA rotation: agents concerned, trusting the new CA, on the new CA, still trusting the old.",
            &[
                ("{state=\"concerned\"}", r.agents as f64),
                ("{state=\"trusting_new\"}", r.trusting_new as f64),
                ("{state=\"on_new_ca\"}", r.on_new_ca as f64),
                ("{state=\"trusting_old\"}", r.trusting_old as f64),
            ],
        );
        let phases = [Phase::Trust, Phase::Reissue, Phase::Finished].map(|p| {
            (
                format!("{{phase=\"{}\"}}", p.as_str()),
                f64::from(u8::from(p == r.phase)),
            )
        });
        page.gauge_owned(
            "fleetls_ca_rotation_phase",
            "The newest CA rotation's phase: 1 for the one it is in (trust, reissue, finished).",
            &phases,
        );
        page.gauge(
            "fleetls_ca_rotation_started_seconds",
            "When the newest CA rotation began (Unix seconds).",
            &[("", r.started_at as f64 / 1000.0)],
        );
    }
}

/// The SSL switchover test summary.
fn summary(page: &mut Page, s: &Summary) {
    page.gauge(
        "fleetls_summary",
        "The SSL switchover test summary.",
        &[
            ("{result=\"passed\"}", s.passed as f64),
            ("{result=\"with_errors\"}", s.with_errors as f64),
            (
                "{result=\"did_not_participate\"}",
                s.did_not_participate as f64,
            ),
            (
                "{result=\"version_not_supporting_ssl\"}",
                s.version_not_supporting_ssl as f64,
            ),
            ("{result=\"mpos\"}", s.mpos as f64),
            ("{result=\"excluded\"}", s.excluded as f64),
        ],
    );
}

/// The broker's nodes as management last showed them, one gauge a figure.
fn nodes(page: &mut Page, nodes: &[NodeHealth]) {
    let label =
        |node: &NodeHealth| format!("{{node=\"{}\"}}", node.name.replace(['"', '\\', '\n'], "_"));
    for (name, help, value) in [
        (
            "fleetls_broker_node_running",
            "1 when the broker node runs (management's view).",
            (|n: &NodeHealth| f64::from(u8::from(n.running))) as fn(&NodeHealth) -> f64,
        ),
        (
            "fleetls_broker_node_mem_alarm",
            "1 while the broker node's memory alarm blocks publishers.",
            |n| f64::from(u8::from(n.mem_alarm)),
        ),
        (
            "fleetls_broker_node_disk_free_alarm",
            "1 while the broker node's disk alarm blocks publishers.",
            |n| f64::from(u8::from(n.disk_free_alarm)),
        ),
        (
            "fleetls_broker_node_connections",
            "fleetls connections on the broker node.",
            |n| n.connections as f64,
        ),
    ] {
        let samples: Vec<(String, f64)> = nodes
            .iter()
            .map(|node| (label(node), value(node)))
            .collect();
        page.gauge_owned(name, help, &samples);
    }
}

/// The newest campaign's children by state.
fn campaign(page: &mut Page, c: &Progress) {
    let kind = format!("{{kind=\"{}\",state=\"{}\"", c.kind, c.state);
    let samples: Vec<(String, f64)> = [
        ("waiting", c.waiting),
        ("acting", c.acting),
        ("passed", c.passed),
        ("failed", c.failed),
        ("did_not_participate", c.did_not_participate),
    ]
    .iter()
    .map(|(k, v)| (format!("{kind},children=\"{k}\"}}"), *v as f64))
    .collect();
    page.gauge_owned(
        "fleetls_campaign_children",
        "Children of the newest campaign by state.",
        &samples,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_security_events_close_the_page() {
        let status = Overview {
            network: serde_json::from_value(serde_json::json!({
                "phase": "plain", "agents": 2, "online": 1, "offline": 1, "eligible": 2,
                "children_with_certificates": 0, "switched_to_ssl": 0, "broker_tls": 0,
                "min_ssl_version": "1.0", "certificates_generated": false,
                "ca_fingerprint": null, "ssl_port": null,
            }))
            .unwrap(),
            summary: Summary::default(),
            campaign: None,
        };
        let counters = Counters {
            received: 7,
            replayed: 2,
            ..Counters::default()
        };
        let page = render(&status, &counters, &[("forged".into(), 3)], 86_400);
        assert!(page.starts_with(
            "# HELP fleetls_agents Registered agents by state.\n# TYPE fleetls_agents gauge\nfleetls_agents{state=\"online\"} 1\n"
        ));
        assert!(page.contains("\nfleetls_messages_received_total 7\n"));
        assert!(page.contains("\nfleetls_certificate_lifetime_seconds 86400\n"));
        assert!(page.contains(
            "\n# TYPE fleetls_replayed_messages_total counter\nfleetls_replayed_messages_total 2\n"
        ));
        assert!(page.ends_with("fleetls_security_events_total{kind=\"forged\"} 3\n"));
        assert!(!page.contains("fleetls_broker_node"));
    }
}
