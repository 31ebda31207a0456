//! CSRs: what the parent certifies, answers again or refuses, and the
//! signer that makes a certificate of a CSR (the CA, with the names a local
//! parent is allowed). Part of [`super`]'s transaction.

use fleetls_proto::{AgentKind, CertificateIssued, CsrRejected, ToChild};
use rusqlite::Transaction;

use super::{Applied, Clock, Event, Signer};
use crate::broker::Outgoing;
use crate::pki::Issued;
use crate::registry::certificates::{self, KeyHistory, Stored};
use crate::registry::{agent_in, agents, record_security, Admission, Agent, RegistryError};

/// A CSR: signed when the agent may have a certificate, answered with the
/// one already issued for the same key, ignored when the key was renewed
/// since, refused when the key is dead.
pub(super) fn on_csr(
    tx: &Transaction<'_>,
    event: &Event,
    pem: &str,
    signer: Option<&dyn Signer>,
    clock: Clock,
    applied: &mut Applied,
) -> Result<(), RegistryError> {
    let result = sign_csr(tx, event, pem, signer)?;
    if let Ok(issued) = &result {
        // A CSR sent again on the same key (its answer was lost
        // on the way) gets the same certificate, not a second.
        if let Some(again) = certificates::valid_for_key(tx, &event.agent, &issued.key)? {
            crate::registry::owed::settle_answered(tx, &event.agent)?;
            applied.outgoing.push(issued_answer(event, again));
            return Ok(());
        }
    }
    // A key whose certificate was revoked is never certified
    // again: a child makes a new key for every CSR, so only an
    // old CSR asks for one — a late duplicate (a renewal sent
    // again while the child was slow to answer: seen at 30,000
    // children; a new message, with its own seq). Certifying it
    // would revoke the child's current certificate, which the
    // child then still uses.
    let result = match result {
        Ok(issued) => match certificates::key_history(tx, &event.agent, &issued.key)? {
            // Superseded by a newer certificate of the same
            // agent: ignored, unanswered (the child has moved on).
            KeyHistory::Superseded(serial) => {
                tracing::debug!(agent = %event.agent, serial, "a CSR on a key already renewed was ignored (a late duplicate, or a replay)");
                return Ok(());
            }
            KeyHistory::Dead(why) => {
                let why = format!("the CSR was refused: {why}; a certificate needs a new key");
                record_security(tx, Some(&event.agent), "revoked_key_csr", &why)?;
                Err(why)
            }
            KeyHistory::Fresh => Ok(issued),
        },
        Err(e) => Err(e),
    };
    match result {
        Ok(issued) => certify(tx, event, issued, applied),
        Err(reason) => refuse_csr(tx, event, reason, clock, applied),
    }
}

/// Whether the agent may have a certificate, and if so the one the signer
/// made of `pem` (or why not).
fn sign_csr(
    tx: &Transaction<'_>,
    event: &Event,
    pem: &str,
    signer: Option<&dyn Signer>,
) -> Result<Result<Issued, String>, RegistryError> {
    let Some(registered) = agent_in(tx, &event.agent)? else {
        return Ok(Err("the CSR was refused: this agent is not registered; \
             it must send Hello first"
            .to_owned()));
    };
    let Some(signer) = signer else {
        return Ok(Err("the CSR was refused: the parent has no CA yet; \
             run `fleetls-parent certs generate`"
            .to_owned()));
    };
    if registered.admission != Admission::Accepted {
        return Ok(Err(format!(
            "the CSR was refused: this agent is {}; \
             an operator must run `fleetls-parent agents accept {}` first",
            registered.admission.as_str(),
            registered.name
        )));
    }
    // An mPOS identity comes by export only: its key is made on the parent
    // and carried to the device.
    if registered.kind == AgentKind::Mpos {
        return Ok(Err(
            "the CSR was refused: an mPOS device gets its certificate by export \
             (`fleetls-parent export --mpos`), never from a CSR"
                .to_owned(),
        ));
    }
    // It obeys another parent key: nothing is issued to it until an
    // operator clears it.
    if registered.compromised {
        return Ok(Err(format!(
            "the CSR was refused: this agent is shown COMPROMISED \
             (it pinned another parent key {}); \
             nothing is issued to it until an operator reinstalls it with --parent-key \
             and accepts it again (`fleetls-parent agents accept {}`)",
            registered.parent_key.as_deref().unwrap_or("?"),
            registered.name
        )));
    }
    Ok(signer.sign(pem, &registered))
}

/// Records the certificate issued for the CSR `event` (the one it replaces
/// revoked, superseded) and answers with it.
fn certify(
    tx: &Transaction<'_>,
    event: &Event,
    issued: Issued,
    applied: &mut Applied,
) -> Result<(), RegistryError> {
    // The certificate it replaces is revoked, superseded.
    let renewal =
        crate::registry::revoke_certificates(tx, &event.agent, certificates::SUPERSEDED)? > 0;
    if renewal {
        applied.revoked = true;
    }
    certificates::record_issued(tx, &event.agent, &issued, Some(&event.message), renewal)?;
    crate::registry::owed::settle_answered(tx, &event.agent)?;
    crate::rotation::on_csr_answered(tx, &event.agent, Ok(&issued.ca))?;
    agents::clear_refusal(tx, &event.agent)?;
    applied.outgoing.push(Outgoing {
        agent: event.agent,
        body: ToChild::CertificateIssued(CertificateIssued {
            chain_pem: issued.chain_pem,
            serial: issued.serial,
            not_after: issued.not_after,
            ignored: issued.ignored,
        }),
        re: Some(event.message),
    });
    Ok(())
}

/// Records why the CSR `event` was refused and answers with it.
fn refuse_csr(
    tx: &Transaction<'_>,
    event: &Event,
    reason: String,
    clock: Clock,
    applied: &mut Applied,
) -> Result<(), RegistryError> {
    agents::record_refusal(tx, &event.agent, &reason, clock.at)?;
    crate::rotation::on_csr_answered(tx, &event.agent, Err(&reason))?;
    applied.outgoing.push(Outgoing {
        agent: event.agent,
        body: ToChild::CsrRejected(CsrRejected { reason }),
        re: Some(event.message),
    });
    Ok(())
}

/// Whether `event` is signed by the key pinned for its agent: `Err` with
/// the reason to dead-letter it, and the kind of security event it is
/// (`None`: an ordinary refusal).
#[allow(clippy::type_complexity)]
/// The answer to `event` (a CSR) with a certificate issued before.
fn issued_answer(event: &Event, stored: Stored) -> Outgoing {
    Outgoing {
        agent: event.agent,
        body: ToChild::CertificateIssued(CertificateIssued {
            chain_pem: stored.chain_pem,
            serial: stored.serial,
            not_after: stored.not_after,
            ignored: Vec::new(),
        }),
        re: Some(event.message),
    }
}

/// Signs CSRs with the CA for the registry. A local parent's server names
/// are only those the operator allowed; the rest are left out and listed.
pub struct CaSigner {
    /// The CA.
    pub pki: std::sync::Arc<crate::pki::Pki>,
    /// Names local parents may have.
    pub names: Vec<String>,
    /// IP addresses local parents may have.
    pub ips: Vec<String>,
}

impl Signer for CaSigner {
    fn sign(&self, csr: &str, agent: &Agent) -> Result<crate::pki::Issued, String> {
        if agent.kind != fleetls_proto::AgentKind::LocalParent {
            return self.pki.sign_csr(csr, agent.id, agent.kind, &[], &[]);
        }
        let (names, mut left_out) =
            crate::admission::allowed_server_names(&agent.hostnames, &self.names);
        let (ips, ips_out): (Vec<String>, Vec<String>) = agent
            .ips
            .iter()
            .cloned()
            .partition(|ip| self.ips.contains(ip));
        left_out.extend(ips_out);
        let mut issued = self.pki.sign_csr(csr, agent.id, agent.kind, &names, &ips)?;
        issued.ignored.extend(left_out.into_iter().map(|n| {
            format!(
                "{n}: not among the names allowed for local parents \
                 (--local-parent-names / --local-parent-ips)"
            )
        }));
        Ok(issued)
    }
}
