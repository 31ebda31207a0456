//! What a child's report changes: it is recorded once (a late one is
//! marked late), and a report of the step the child is at moves it on —
//! to the SSL port step after a passed certificate test, else to its end.

use rusqlite::Transaction;
use uuid::Uuid;

use fleetls_proto::{Step, StepReport, StepSpec};

use super::orders::run_step;
use crate::broker::Outgoing;
use crate::registry::campaign_states::{ChildState, ChildStep};
use crate::registry::campaigns::{self, StepReportRow};
use crate::registry::RegistryError;

/// A one-step report (switch, broker switch, re-issue) of `step`: ends the
/// child as passed or failed, once. Returns whether it ended a child.
pub fn on_single_report(
    tx: &Transaction<'_>,
    agent: Uuid,
    campaign: Uuid,
    step: ChildStep,
    ok: bool,
    message: &str,
) -> Result<bool, RegistryError> {
    let now = fleetls_proto::now_ms() as i64;
    let current = campaigns::is_at(tx, campaign, agent, step)?;
    let inserted = campaigns::record_step_result(
        tx,
        &StepReportRow {
            campaign,
            agent,
            step,
            ok,
            message,
            cause: None,
            at: now,
            late: !current,
        },
    )?;
    if !inserted || !current {
        return Ok(false);
    }
    campaigns::end_child(tx, campaign, agent, ChildState::ended(ok), now, message)?;
    Ok(true)
}

/// Records a step report and moves its child on: after a passed step 1 it
/// sends step 2; a failed step or a passed step 2 ends the child. A report
/// for a step already recorded changes nothing; one that comes after the
/// child was ended is recorded as late. Returns whether a child ended.
pub fn on_report(
    tx: &Transaction<'_>,
    agent: Uuid,
    report: &StepReport,
    sent_at: u64,
    ssl_port_open_since: u64,
    outgoing: &mut Vec<Outgoing>,
) -> Result<bool, RegistryError> {
    // A failed connection to the SSL port made while this parent was not
    // running says nothing about the child: run the step again.
    if !report.ok && report.step == Step::SslPort && sent_at < ssl_port_open_since {
        if let Some(again) = ssl_port_again(tx, agent, report.campaign)? {
            outgoing.push(again);
            return Ok(false);
        }
    }
    let campaign = report.campaign;
    let step = ChildStep::from(report.step);
    let now = fleetls_proto::now_ms() as i64;
    let enrolled = campaigns::enrolled(tx, campaign, agent)?;
    let current =
        matches!(&enrolled, Some(e) if e.state == ChildState::Acting && e.step == Some(step));
    let cause = report.cause.map(|c| c.as_str());
    let inserted = campaigns::record_step_result(
        tx,
        &StepReportRow {
            campaign,
            agent,
            step,
            ok: report.ok,
            message: &report.message,
            cause,
            at: now,
            late: !current,
        },
    )?;
    let Some(enrolled) = enrolled else {
        return Ok(false);
    };
    if !inserted || !current {
        return Ok(false);
    }
    if report.ok && report.step == Step::CertTest {
        let step_deadline = now + enrolled.step_timeout_ms;
        campaigns::to_ssl_port(tx, campaign, agent, step_deadline, &report.message)?;
        outgoing.push(run_step(
            agent,
            campaign,
            StepSpec::SslPort {
                host: enrolled.host,
                port: enrolled.port,
            },
            step_deadline as u64,
        ));
        return Ok(false);
    }
    let state = ChildState::ended(report.ok);
    campaigns::end_child_with_cause(tx, campaign, agent, state, now, &report.message, cause)?;
    Ok(true)
}

/// The SSL port step once more, with a fresh deadline, for a child acting
/// on it.
fn ssl_port_again(
    tx: &Transaction<'_>,
    agent: Uuid,
    campaign: Uuid,
) -> Result<Option<Outgoing>, RegistryError> {
    let Some((host, port, step_timeout)) = campaigns::acting_on_ssl_port(tx, campaign, agent)?
    else {
        return Ok(None);
    };
    let step_deadline = fleetls_proto::now_ms() as i64 + step_timeout;
    campaigns::set_step_deadline(tx, campaign, agent, step_deadline)?;
    Ok(Some(run_step(
        agent,
        campaign,
        StepSpec::SslPort { host, port },
        step_deadline as u64,
    )))
}

#[cfg(test)]
mod tests {
    //! Reports against an in-memory registry: in and out of turn.

    use fleetls_proto::Step;

    use crate::campaign::test_support::*;
    use crate::campaign::{CampaignState, Kind};

    #[test]
    fn a_failed_step_ends_the_child_and_a_late_report_changes_nothing() {
        let registry = registry();
        let enrolled = children(1);
        let child = enrolled[0].agent;
        let id = start(&registry, Kind::Verify, 1, &enrolled);
        turn(&registry, id, ONLINE, false);
        assert!(report(&registry, id, child, Step::CertTest, false).is_empty());
        // A second report for the same step, and one for a step never sent.
        report(&registry, id, child, Step::CertTest, true);
        report(&registry, id, child, Step::SslPort, true);
        let tick = turn(&registry, id, ONLINE, false);
        assert!(!tick.running);
        let p = progress_of(&registry, id);
        assert_eq!((p.failed, p.passed, p.total), (1, 0, 1));
        assert_eq!(p.state, CampaignState::Finished);
    }
}
