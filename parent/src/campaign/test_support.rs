//! Helpers of the engine's unit tests: an in-memory registry, children to
//! enrol, a turn of the engine, a report, a campaign's progress.

use uuid::Uuid;

use fleetls_proto::{Cause, Step, StepReport};

use super::{create, on_report, progress, tick, Enrolment, Kind, Progress, Tick};
use crate::broker::Outgoing;
use crate::registry::Registry;

pub(super) fn registry() -> Registry {
    Registry::open(std::path::Path::new(":memory:")).unwrap()
}

pub(super) fn children(n: usize) -> Vec<Enrolment> {
    (0..n)
        .map(|_| Enrolment {
            agent: Uuid::new_v4(),
            host: "parent.test".into(),
            port: 12365,
        })
        .collect()
}

pub(super) fn start(
    registry: &Registry,
    kind: Kind,
    window: usize,
    enrolled: &[Enrolment],
) -> Uuid {
    registry
        .with_tx(|tx| create(tx, kind, window, 3_600_000, 60_000, enrolled, None))
        .unwrap()
}

pub(super) fn turn(
    registry: &Registry,
    id: Uuid,
    online: &dyn Fn(&Uuid) -> bool,
    resend: bool,
) -> Tick {
    registry
        .with_tx(|tx| {
            let reach = |a: &Uuid| {
                if online(a) {
                    super::Reach::Online
                } else {
                    super::Reach::Gone
                }
            };
            tick(tx, id, &reach, resend, true)
        })
        .unwrap()
}

pub(super) fn report(
    registry: &Registry,
    id: Uuid,
    agent: Uuid,
    step: Step,
    ok: bool,
) -> Vec<Outgoing> {
    let mut out = Vec::new();
    let report = StepReport {
        campaign: id,
        step,
        ok,
        message: if ok { "fine".into() } else { "broken".into() },
        cause: (!ok).then_some(Cause::Refused),
        started_at: None,
    };
    registry
        .with_tx(|tx| on_report(tx, agent, &report, fleetls_proto::now_ms(), 0, &mut out))
        .unwrap();
    out
}

pub(super) fn progress_of(registry: &Registry, id: Uuid) -> Progress {
    registry.with_db(|db| progress(db, id)).unwrap().unwrap()
}

pub(super) fn agents_of(out: &[Outgoing]) -> Vec<Uuid> {
    out.iter().map(|o| o.agent).collect()
}

pub(super) const ONLINE: &dyn Fn(&Uuid) -> bool = &|_| true;
