//! One turn of the campaign engine: time out what is late, send again
//! what may have been lost, fill the window, finish when nothing is left.

use rusqlite::Transaction;
use uuid::Uuid;

use super::orders::Orders;
use crate::broker::Outgoing;
use crate::registry::campaign_states::Kind;
use crate::registry::campaigns::{self, ActingStep, Head};
use crate::registry::RegistryError;

/// What one engine tick decided.
#[derive(Debug, Default)]
pub struct Tick {
    /// Steps to send.
    pub outgoing: Vec<Outgoing>,
    /// Whether the campaign is still running.
    pub running: bool,
    /// The earliest moment something may time out (ms), to sleep until.
    pub next_deadline: Option<u64>,
    /// The campaign's kind.
    pub kind: Option<Kind>,
    /// The AMQPS address of a broker switch campaign.
    pub amqps: Option<String>,
}

/// Whether a waiting child can start when its turn comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Online: it starts.
    Online,
    /// Gone a moment ago (the broker says it is not connected, but it was
    /// heard within [`crate::status::JUDGE_GRACE_MS`]): it keeps its place
    /// and is looked at again — a broker shutting down or a node failing
    /// over disconnects everyone for seconds.
    Away,
    /// Offline: it does not participate.
    Gone,
}

/// One turn of the engine: time out what is late, fill the window, finish
/// when nothing is left. `online` says whether an agent can start now;
/// `resend` re-sends the step of every acting child with a fresh step
/// deadline (after a restart or reconnect). Until `judge` (the backlog of
/// reports was read), nothing is timed out, nobody is judged offline and
/// nobody new starts: the reports and heartbeats may still be queued.
pub fn tick(
    tx: &Transaction<'_>,
    campaign: Uuid,
    online: &dyn Fn(&Uuid) -> Reach,
    resend: bool,
    judge: bool,
) -> Result<Tick, RegistryError> {
    let now = fleetls_proto::now_ms() as i64;
    let head = campaigns::head(tx, campaign)?;
    let orders = Orders::of(campaign, head.kind, head.params.as_deref());
    let mut result = Tick {
        kind: Some(head.kind),
        amqps: orders.amqps(),
        ..Tick::default()
    };
    let turn = Turn {
        tx,
        campaign,
        head,
        orders,
        now,
    };
    if judge && now >= turn.head.deadline_at {
        campaigns::time_out(tx, campaign, now)?;
        return Ok(result);
    }
    result.outgoing = turn.resend_and_nudge(resend, judge)?;
    let acting = campaigns::count_acting(tx, campaign)?;
    if !judge {
        result.running = true;
        return Ok(result);
    }
    let (started, away) = turn.fill_window(online, acting, &mut result.outgoing)?;
    let now_acting = acting + started;
    campaigns::note_acting(tx, campaign, now_acting)?;
    if now_acting == 0 && away == 0 {
        campaigns::finish(tx, campaign, now)?;
        return Ok(result);
    }
    result.running = true;
    result.next_deadline =
        campaigns::next_step_deadline(tx, campaign)?.map(|d| d.min(turn.head.deadline_at) as u64);
    if away > 0 {
        // Those away are looked at again in a moment.
        let again = (now + AWAY_LOOK_MS) as u64;
        result.next_deadline = Some(result.next_deadline.map_or(again, |d| d.min(again)));
    }
    Ok(result)
}

/// How soon a turn with children away looks at them again (ms).
const AWAY_LOOK_MS: i64 = 1_000;

/// What one turn works with: the campaign's row, its orders, the time.
struct Turn<'t, 'c> {
    tx: &'t Transaction<'c>,
    campaign: Uuid,
    head: Head,
    orders: Orders,
    now: i64,
}

impl Turn<'_, '_> {
    /// The acting children: with `resend`, each step's deadline moves on
    /// and every step is sent again; with `judge`, a step past its
    /// deadline ends its child and one unanswered by half its time is
    /// sent once more. What to send.
    fn resend_and_nudge(&self, resend: bool, judge: bool) -> Result<Vec<Outgoing>, RegistryError> {
        let (tx, campaign, now) = (self.tx, self.campaign, self.now);
        let step_timeout = self.head.step_timeout_ms;
        let mut outgoing = Vec::new();
        if resend {
            campaigns::extend_step_deadlines(tx, campaign, now + step_timeout)?;
        }
        if judge {
            campaigns::time_out_steps(tx, campaign, now, step_timeout)?;
        }
        if resend {
            for acting in campaigns::acting_steps(tx, campaign)? {
                outgoing.push(self.orders.command(acting));
            }
        }
        if judge {
            // Commands are transient: a step not answered by half its time is
            // sent once more (the child answers a duplicate from what it did).
            for late in campaigns::nudge_late(tx, campaign, now, step_timeout)? {
                outgoing.push(self.orders.command(late));
            }
        }
        Ok(outgoing)
    }

    /// Starts waiting children, in order, until `acting` and those started
    /// fill the window; one offline when its turn comes does not
    /// participate, one away keeps its place. Their first steps go to
    /// `outgoing`; how many started, and how many are away.
    fn fill_window(
        &self,
        online: &dyn Fn(&Uuid) -> Reach,
        acting: i64,
        outgoing: &mut Vec<Outgoing>,
    ) -> Result<(i64, usize), RegistryError> {
        let (tx, campaign, now) = (self.tx, self.campaign, self.now);
        let mut free = (self.head.window - acting).max(0);
        let mut started = 0i64;
        let mut away = std::collections::HashSet::new();
        while free > 0 {
            let next = campaigns::next_waiting(tx, campaign, free + away.len() as i64)?;
            let next: Vec<_> = next
                .into_iter()
                .filter(|(agent, _, _)| !away.contains(agent))
                .collect();
            if next.is_empty() {
                break;
            }
            for (agent_text, host, port) in next {
                let Ok(agent) = agent_text.parse::<Uuid>() else {
                    continue;
                };
                match online(&agent) {
                    Reach::Online => {}
                    Reach::Away => {
                        away.insert(agent_text);
                        continue;
                    }
                    Reach::Gone => {
                        campaigns::mark_offline(tx, campaign, &agent_text, now)?;
                        continue;
                    }
                }
                if free == 0 {
                    break;
                }
                let step_deadline = now + self.head.step_timeout_ms;
                let step = self.head.kind.first_step();
                campaigns::start_child(tx, campaign, &agent_text, now, step_deadline, step)?;
                outgoing.push(self.orders.command(ActingStep {
                    agent,
                    step,
                    host,
                    port,
                    deadline: step_deadline as u64,
                }));
                free -= 1;
                started += 1;
            }
        }
        Ok((started, away.len()))
    }
}

#[cfg(test)]
mod tests {
    //! The engine against an in-memory registry: the window, the step and
    //! campaign deadlines, offline children, reports (in and out of turn),
    //! and resuming after a restart.

    use fleetls_proto::{RunStep, Step, StepSpec, ToChild};

    use super::*;
    use crate::campaign::test_support::*;
    use crate::campaign::{acting_command, CampaignState, ChildState};
    use crate::registry::test_support::{
        child_causes, nudged, set_campaign_deadline, set_campaign_kind, set_step_deadline,
        set_step_deadlines,
    };

    #[test]
    fn the_window_bounds_who_acts_and_the_next_starts_when_one_ends() {
        let registry = registry();
        let enrolled = children(5);
        let id = start(&registry, Kind::Verify, 2, &enrolled);
        let first = turn(&registry, id, ONLINE, false);
        assert_eq!(
            agents_of(&first.outgoing),
            [enrolled[0].agent, enrolled[1].agent]
        );
        assert!(matches!(
            &first.outgoing[0].body,
            ToChild::RunStep(RunStep {
                step: StepSpec::CertTest,
                ..
            })
        ));
        // Nobody finished: nobody new starts.
        assert!(turn(&registry, id, ONLINE, false).outgoing.is_empty());
        // Step 1 passed: step 2 to the same child, still within the window.
        let next = report(&registry, id, enrolled[0].agent, Step::CertTest, true);
        assert!(matches!(
            &next[0].body,
            ToChild::RunStep(RunStep {
                step: StepSpec::SslPort { port: 12365, .. },
                ..
            })
        ));
        assert!(turn(&registry, id, ONLINE, false).outgoing.is_empty());
        // Step 2 passed: the child ends and the third starts.
        report(&registry, id, enrolled[0].agent, Step::SslPort, true);
        let third = turn(&registry, id, ONLINE, false);
        assert_eq!(agents_of(&third.outgoing), [enrolled[2].agent]);
        let p = progress_of(&registry, id);
        assert_eq!((p.passed, p.acting, p.waiting, p.max_acting), (1, 2, 2, 2));
        assert_eq!(p.state, CampaignState::Running);
    }

    #[test]
    fn a_child_away_for_a_moment_keeps_its_place() {
        let registry = registry();
        let enrolled = children(2);
        let away = enrolled[0].agent;
        let id = start(&registry, Kind::Verify, 2, &enrolled);
        let reach = move |a: &Uuid| {
            if *a == away {
                Reach::Away
            } else {
                Reach::Online
            }
        };
        let first = registry
            .with_tx(|tx| tick(tx, id, &reach, false, true))
            .unwrap();
        assert_eq!(agents_of(&first.outgoing), [enrolled[1].agent]);
        let p = progress_of(&registry, id);
        assert_eq!((p.acting, p.waiting, p.did_not_participate), (1, 1, 0));
        // The other one done, the campaign waits for the one away ...
        report(&registry, id, enrolled[1].agent, Step::CertTest, true);
        report(&registry, id, enrolled[1].agent, Step::SslPort, true);
        let waiting = registry
            .with_tx(|tx| tick(tx, id, &reach, false, true))
            .unwrap();
        assert!(waiting.running && waiting.next_deadline.is_some());
        assert_eq!(progress_of(&registry, id).state, CampaignState::Running);
        // ... and starts it once it is back.
        let back = registry
            .with_tx(|tx| tick(tx, id, &|_| Reach::Online, false, true))
            .unwrap();
        assert_eq!(agents_of(&back.outgoing), [away]);
    }

    #[test]
    fn offline_children_and_silent_ones_do_not_participate() {
        let registry = registry();
        let enrolled = children(3);
        let offline = enrolled[0].agent;
        let id = start(&registry, Kind::Verify, 3, &enrolled);
        let online = move |a: &Uuid| *a != offline;
        let first = turn(&registry, id, &online, false);
        assert_eq!(
            first.outgoing.len(),
            2,
            "the offline child is not sent anything"
        );
        // The step deadline passes without an answer.
        registry
            .with_tx(|tx| set_step_deadlines(tx, id, 0))
            .unwrap();
        let last = turn(&registry, id, &online, false);
        assert!(!last.running);
        let p = progress_of(&registry, id);
        assert_eq!(p.did_not_participate, 3);
        let causes = registry.with_db(|db| child_causes(db, id)).unwrap();
        assert_eq!(
            causes,
            [None, Some("timeout".into()), Some("timeout".into())]
        );
    }

    #[test]
    fn an_unanswered_step_is_sent_once_more_at_half_time_and_after_a_hello() {
        let registry = registry();
        let enrolled = children(2);
        let (slow, other) = (enrolled[0].agent, enrolled[1].agent);
        let id = start(&registry, Kind::Verify, 2, &enrolled);
        let first = turn(&registry, id, ONLINE, false);
        let deadline_of = |out: &Outgoing| match &out.body {
            ToChild::RunStep(run) => run.deadline,
            other => panic!("not a step: {other:?}"),
        };
        let sent = deadline_of(&first.outgoing[0]);
        // Before half the step time nothing is sent again.
        assert!(turn(&registry, id, ONLINE, false).outgoing.is_empty());
        // Half the step time (60 s) has passed for the slow child only.
        registry
            .with_tx(|tx| set_step_deadline(tx, id, slow, fleetls_proto::now_ms() as i64 + 20_000))
            .unwrap();
        let nudge = turn(&registry, id, ONLINE, false);
        assert_eq!(agents_of(&nudge.outgoing), [slow]);
        assert!(
            deadline_of(&nudge.outgoing[0]) < sent,
            "the same, earlier deadline"
        );
        // Once only.
        assert!(turn(&registry, id, ONLINE, false).outgoing.is_empty());
        // After a Hello, each acting child is owed its current step.
        let owed = registry
            .with_tx(|tx| acting_command(tx, other))
            .unwrap()
            .expect("the other child is acting");
        assert_eq!(deadline_of(&owed), sent);
        // Step 2 starts afresh: it may be nudged again.
        let next = report(&registry, id, slow, Step::CertTest, true);
        assert!(matches!(
            &next[0].body,
            ToChild::RunStep(RunStep {
                step: StepSpec::SslPort { .. },
                ..
            })
        ));
        let was_nudged = registry.with_db(|db| nudged(db, slow)).unwrap();
        assert_eq!(was_nudged, 0);
        // An ended child, or one whose step deadline passed, is owed nothing.
        report(&registry, id, slow, Step::SslPort, true);
        assert!(registry
            .with_tx(|tx| acting_command(tx, slow))
            .unwrap()
            .is_none());
    }

    #[test]
    fn the_campaign_deadline_ends_everyone_left() {
        let registry = registry();
        let enrolled = children(4);
        let id = start(&registry, Kind::Verify, 1, &enrolled);
        turn(&registry, id, ONLINE, false);
        registry
            .with_tx(|tx| set_campaign_deadline(tx, id, 0))
            .unwrap();
        let tick = turn(&registry, id, ONLINE, false);
        assert!(!tick.running && tick.outgoing.is_empty());
        let p = progress_of(&registry, id);
        assert_eq!(
            (p.state, p.did_not_participate),
            (CampaignState::TimedOut, 4)
        );
    }

    #[test]
    fn a_restarted_engine_resends_what_is_acting_and_judges_nobody_early() {
        let registry = registry();
        let enrolled = children(3);
        let id = start(&registry, Kind::Switch, 2, &enrolled);
        let first = turn(&registry, id, ONLINE, false);
        assert!(matches!(first.outgoing[0].body, ToChild::UseSsl(_)));
        // After a restart, before the backlog is read: no judging, no new
        // child, nothing timed out — even past the step deadline.
        registry
            .with_tx(|tx| set_step_deadlines(tx, id, 0))
            .unwrap();
        let early = registry
            .with_tx(|tx| tick(tx, id, &|_| Reach::Online, true, false))
            .unwrap();
        assert!(early.running);
        assert_eq!(
            agents_of(&early.outgoing),
            [enrolled[0].agent, enrolled[1].agent],
            "the acting children get their command again"
        );
        let p = progress_of(&registry, id);
        assert_eq!((p.acting, p.waiting, p.did_not_participate), (2, 1, 0));
        // Their step deadline moved on with the re-send.
        let later = turn(&registry, id, ONLINE, false);
        assert!(later.outgoing.is_empty(), "the window is still full");
        assert_eq!(progress_of(&registry, id).did_not_participate, 0);
    }

    #[test]
    fn an_unknown_kind_or_state_in_the_registry_is_an_error_not_a_default() {
        assert!("verify".parse::<Kind>().is_ok());
        assert!("frobnicate"
            .parse::<Kind>()
            .unwrap_err()
            .contains("frobnicate"));
        assert!("maybe".parse::<ChildState>().is_err());
        assert!("paused".parse::<CampaignState>().is_err());
        let registry = registry();
        let id = start(&registry, Kind::Verify, 1, &children(1));
        registry
            .with_tx(|tx| set_campaign_kind(tx, id, "frobnicate"))
            .unwrap();
        assert!(registry
            .with_tx(|tx| tick(tx, id, &|_| Reach::Online, false, true))
            .is_err());
    }
}
