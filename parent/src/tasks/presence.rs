//! Presence: the broker knows who is connected. An agent is online while
//! it consumes its queue, as RabbitMQ says — not while it chatters. The
//! `rabbitmq_event_exchange` plugin publishes `consumer.created` and
//! `consumer.deleted` (and `queue.deleted`) to `amq.rabbitmq.event`, in one
//! virtual host for the whole broker (`--presence-vhost`, `/` by default;
//! each event names its own virtual host). The parent binds a queue of its
//! own there, and each event only says *which* agent's queue to look at:
//! the queue's consumer count, from a passive declare on the parent's own
//! virtual host, is the answer, so events that arrive twice, late or out
//! of order cannot leave a wrong picture. At start (and after any
//! reconnection, events being lost meanwhile) every registered agent's
//! queue is looked at once.
//!
//! Chosen over management's consumer view: the events cost nothing while
//! nobody connects or leaves, come within milliseconds, and need no
//! management API; the view would be a full listing of every consumer
//! (tens of MB at 30,000 agents) at each poll, on the statistics database
//! that is the first thing to burn a big broker's CPU.
//!
//! What presence proves: that *someone* consumes the agent's queue. With the
//! shared broker credentials of a default install anyone may; after
//! `--external` (one broker user per agent, its certificate's CN) only the
//! agent can. Identity stays the signed state report's to prove: an agent
//! connected but silent past `--silent-after` is flagged (connected, but
//! maybe wedged or not who it says), and a step it does not answer fails
//! it as before.
//!
//! Without the plugin (or without access to its virtual host) the parent
//! says so once and counts online from the last report (`--offline-after`),
//! and tries again every minute.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetls_bus::amqp::{amqp, close_channel, close_connection, BusError};
use fleetls_proto::topology;
use futures_lite::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::app::App;
use crate::shutdown::Shutdown;

/// The plugin's exchange.
pub const EVENTS: &str = "amq.rabbitmq.event";

/// The events followed.
const KEYS: [&str; 3] = ["consumer.created", "consumer.deleted", "queue.deleted"];

/// Events are gathered this long, then their queues looked at together.
const GATHER: Duration = Duration::from_millis(200);

/// An agent seen consuming before its first Hello was recorded is looked at
/// again at each turn, for this long.
const UNREGISTERED_FOR: Duration = Duration::from_secs(300);

/// Most agents kept waiting for their registration: queues named like an
/// agent's by a hostile broker user cannot make the parent look at them
/// without end.
const MOST_UNREGISTERED: usize = 10_000;

/// How long a queue said to have no consumer waits for its second look.
const DOUBT_FOR: Duration = Duration::from_secs(2);

/// How long to wait before trying again after the events could not be
/// followed (no plugin: an operator may enable it meanwhile).
const RETRY: Duration = Duration::from_secs(60);

/// Why following the events stopped.
#[derive(Debug)]
enum Stop {
    /// Shut down.
    Stopped,
    /// The broker offers no event exchange there, or it cannot be read.
    Unavailable(String),
    /// The connection broke: the next try comes soon.
    Broke(String),
}

/// Follows presence until shutdown, reconnecting after failures.
pub async fn run(app: Arc<App>, mut shutdown: Shutdown) {
    // What a process before this one recorded is no longer known.
    clear(&app).await;
    let Some(events_vhost) = app.config.presence_vhost.clone() else {
        set_pending(&app, false);
        info!("presence from the broker is off (--presence-vhost off): online is from the last report");
        return;
    };
    let mut told_unavailable = false;
    set_pending(&app, true);
    loop {
        let stop = follow(&app, &events_vhost, &mut shutdown).await;
        forget(&app).await;
        let pause = match stop {
            Stop::Stopped => return,
            Stop::Unavailable(why) => {
                set_pending(&app, false);
                if !told_unavailable {
                    warn!(
                        error = %why,
                        vhost = %events_vhost,
                        "presence: the broker does not say who is connected (enable the \
                         rabbitmq_event_exchange plugin; the parent's user needs to read \
                         amq.rabbitmq.event in that virtual host): online is from the last \
                         report (--offline-after) until it does"
                    );
                    told_unavailable = true;
                }
                RETRY
            }
            Stop::Broke(why) => {
                // Who is connected is not known until it is read again.
                if !told_unavailable {
                    set_pending(&app, true);
                }
                debug!(error = %why, "presence: the event connection broke; following again");
                Duration::from_secs(2)
            }
        };
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Marks presence as being read (since now, unless it already was) or not.
fn set_pending(app: &App, pending: bool) {
    let since = &app.presence_pending_since;
    if !pending {
        since.store(0, Ordering::SeqCst);
    } else if since.load(Ordering::SeqCst) == 0 {
        since.store(fleetls_proto::now_ms().max(1), Ordering::SeqCst);
    }
}

/// Forgets every agent's presence: the broker no longer tells.
async fn forget(app: &Arc<App>) {
    if app.presence_active.swap(false, Ordering::SeqCst) {
        app.presence_lost.store(true, Ordering::SeqCst);
        clear(app).await;
    }
}

/// Sets every agent's `present` to 0 in the registry.
async fn clear(app: &Arc<App>) {
    let registry = app.registry.clone();
    let cleared =
        tokio::task::spawn_blocking(move || registry.with_db(crate::registry::presence::clear))
            .await;
    if !matches!(cleared, Ok(Ok(()))) {
        warn!("presence: the registry could not be cleared; connected flags may be stale");
    }
}

/// The broker URL (the parent's current one: plain, or AMQPS once moved)
/// with its virtual host, or `vhost` instead.
fn broker_url(app: &App, vhost: Option<&str>) -> (String, bool) {
    let amqps = app.amqps.read().unwrap_or_else(|p| p.into_inner()).clone();
    let tls = amqps.is_some();
    let url = amqps.unwrap_or_else(|| app.config.broker.clone());
    match vhost {
        Some(vhost) => (
            fleetls_bus::brokers::map_each(&url, |one| with_vhost(one, vhost)),
            tls,
        ),
        None => (url, tls),
    }
}

/// Whether the parent's broker connections are AMQPS now.
fn moved(app: &App) -> bool {
    app.amqps
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .is_some()
}

/// `url` with its virtual host replaced by `vhost` (percent-encoded).
pub fn with_vhost(url: &str, vhost: &str) -> String {
    let encoded: String = vhost
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02x}"),
        })
        .collect();
    let authority_at = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[authority_at..];
    let path_at = rest
        .find(['/', '?'])
        .map_or(url.len(), |i| authority_at + i);
    let query_at = url[path_at..].find('?').map_or(url.len(), |i| path_at + i);
    format!("{}/{}{}", &url[..path_at], encoded, &url[query_at..])
}

async fn connect(app: &App, vhost: Option<&str>, what: &str) -> Result<Connection, String> {
    let (url, tls) = broker_url(app, vhost);
    let name = format!("{}:{what}", topology::PARENT_CONNECTION_NAME);
    let connected = if tls {
        crate::broker::connect_tls(&app.config.data_dir, &url, &name).await
    } else {
        crate::broker::connect(&url, &name).await
    };
    connected.map_err(|e| e.to_string())
}

/// One session: binds to the events, looks at every agent once, then
/// follows the events until the connection breaks or shutdown.
async fn follow(app: &Arc<App>, events_vhost: &str, shutdown: &mut Shutdown) -> Stop {
    let events = match connect(app, Some(events_vhost), "presence").await {
        Ok(connection) => connection,
        Err(why) => return Stop::Broke(why),
    };
    let looker = match connect(app, None, "presence-look").await {
        Ok(connection) => connection,
        Err(why) => {
            close_connection(&events, "presence stopping").await;
            return Stop::Broke(why);
        }
    };
    let stop = match subscribe(&events).await {
        Ok(consumer) => follow_events(app, &looker, consumer, shutdown).await,
        Err(why) => Stop::Unavailable(why),
    };
    close_connection(&events, "presence stopping").await;
    close_connection(&looker, "presence stopping").await;
    stop
}

/// Binds a queue of this connection's own to the events.
async fn subscribe(connection: &Connection) -> Result<lapin::Consumer, String> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("declaring the presence queue: {e}"))?
        .name()
        .to_string();
    for key in KEYS {
        channel
            .queue_bind(
                queue.as_str().into(),
                EVENTS.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("binding to {EVENTS}: {e}"))?;
    }
    channel
        .basic_consume(
            queue.as_str().into(),
            "fleetls-presence".into(),
            BasicConsumeOptions {
                no_ack: true,
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("consuming the presence queue: {e}"))
}

/// The agent whose queue an event is about, when it is one of this
/// parent's virtual host.
fn agent_of(delivery: &lapin::message::Delivery, vhost: &str) -> Option<(Uuid, bool)> {
    let headers = delivery.properties.headers().as_ref()?;
    let text = |key: &str| match headers.inner().get(key)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    };
    if text("vhost")? != vhost {
        return None;
    }
    let queue = text(if delivery.routing_key.as_str() == "queue.deleted" {
        "name"
    } else {
        "queue"
    })?;
    let agent = queue.strip_prefix("fleetls.agent.")?.parse().ok()?;
    Some((agent, delivery.routing_key.as_str() == "consumer.created"))
}

/// Looks at every registered agent's queue, then follows the events.
async fn follow_events(
    app: &Arc<App>,
    looker: &Connection,
    mut consumer: lapin::Consumer,
    shutdown: &mut Shutdown,
) -> Stop {
    let vhost = app.config.vhost();
    let on_amqps = moved(app);
    let mut look = match Look::open(looker).await {
        Ok(look) => look,
        Err(e) => return Stop::Broke(e.to_string()),
    };
    // Every agent once: events that come meanwhile are looked at after.
    let absent = match first_look(app, &mut look).await {
        Ok(absent) => absent,
        Err(stop) => return stop,
    };
    let mut seen = Seen::after_first_look(absent);
    let mut tick = tokio::time::interval(GATHER);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return Stop::Stopped,
            delivery = consumer.next() => match delivery {
                Some(Ok(delivery)) => {
                    if let Some((agent, created)) = agent_of(&delivery, &vhost) {
                        seen.heard(agent, created);
                    }
                }
                Some(Err(e)) => return Stop::Broke(e.to_string()),
                None => return Stop::Broke("the event consumer was cancelled".into()),
            },
            _ = tick.tick() => {
                if moved(app) != on_amqps {
                    // The parent moved to AMQPS: its presence follows.
                    return Stop::Broke("the parent moved to AMQPS".into());
                }
                if let Err(stop) = seen.turn(app, &mut look).await {
                    return stop;
                }
            }
        }
    }
}

/// Looks at every registered agent's queue once and records who is
/// connected; returns those said to have no consumer (they are looked at
/// once more, a turn later: see [`Seen::doubted`]).
async fn first_look(app: &Arc<App>, look: &mut Look<'_>) -> Result<Vec<Uuid>, Stop> {
    let registry = app.registry.clone();
    let ids =
        match tokio::task::spawn_blocking(move || registry.with_db(crate::registry::presence::ids))
            .await
        {
            Ok(Ok(ids)) => ids,
            _ => return Err(Stop::Broke("the registry could not list the agents".into())),
        };
    let started = Instant::now();
    let mut present = HashSet::new();
    let mut absent = Vec::new();
    for id in &ids {
        match look.consumed(id).await {
            Ok(true) => {
                present.insert(*id);
            }
            Ok(false) => absent.push(*id),
            Err(e) => return Err(Stop::Broke(e.to_string())),
        }
    }
    let registry = app.registry.clone();
    let count = present.len();
    let written = tokio::task::spawn_blocking(move || {
        registry.with_tx(|tx| crate::registry::presence::set_all(tx, &present))
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        return Err(Stop::Broke("the registry could not record presence".into()));
    }
    if app.presence_lost.swap(false, Ordering::SeqCst) {
        let until = fleetls_proto::now_ms() + crate::app::RETURN_GRACE_MS;
        app.presence_returning_until.store(until, Ordering::SeqCst);
    }
    app.presence_active.store(true, Ordering::SeqCst);
    set_pending(app, false);
    info!(
        agents = ids.len(),
        connected = count,
        took_ms = started.elapsed().as_millis() as u64,
        "presence: the broker says who is connected"
    );
    Ok(absent)
}

/// What the events said since the last turn, and what waits to be looked
/// at again.
struct Seen {
    /// Agents whose consumer or queue went: their queue is looked at (another
    /// consumer may stay).
    dirty: HashSet<Uuid>,
    /// Agents whose consumer was created: that is presence itself.
    joined: HashSet<Uuid>,
    /// Agents whose queue was said to have no consumer, since when: looked at
    /// once more, a turn or more later ([`DOUBT_FOR`]), before they count
    /// offline.
    doubted: HashMap<Uuid, Instant>,
    /// Seen consuming (or not) before their first Hello was recorded: what
    /// was seen is written again each turn until their row exists.
    unregistered: HashMap<Uuid, (bool, Instant)>,
}

impl Seen {
    /// Nothing heard yet; `absent`, said to have no consumer at the first
    /// look, are doubted from now.
    fn after_first_look(absent: Vec<Uuid>) -> Seen {
        Seen {
            dirty: HashSet::new(),
            joined: HashSet::new(),
            doubted: absent.into_iter().map(|id| (id, Instant::now())).collect(),
            unregistered: HashMap::new(),
        }
    }

    /// An event about `agent`'s queue: a consumer created is presence
    /// itself; a consumer or queue gone is looked at.
    fn heard(&mut self, agent: Uuid, created: bool) {
        if created {
            self.dirty.remove(&agent);
            self.joined.insert(agent);
        } else {
            self.joined.remove(&agent);
            self.dirty.insert(agent);
        }
    }

    /// One turn: looks at the queues the events named (and the doubted whose
    /// wait is over), records what was seen, and keeps the agents not
    /// registered yet for the next turn.
    async fn turn(&mut self, app: &Arc<App>, look: &mut Look<'_>) -> Result<(), Stop> {
        // A Hello recorded (its consumer may have been created before the
        // events were followed, and its row after the first look), or an
        // agent heard from while counted not connected: its queue is looked
        // at unless an event already told.
        for agent in app.take_to_look_at() {
            if !self.joined.contains(&agent) {
                self.dirty.insert(agent);
            }
        }
        let (dirty, joined) = (&self.dirty, &self.joined);
        self.unregistered.retain(|agent, (_, since)| {
            since.elapsed() < UNREGISTERED_FOR && !dirty.contains(agent) && !joined.contains(agent)
        });
        if self.dirty.is_empty()
            && self.joined.is_empty()
            && self.unregistered.is_empty()
            && self.doubted.is_empty()
        {
            return Ok(());
        }
        let mut known: Vec<(Uuid, bool)> = self
            .unregistered
            .iter()
            .map(|(a, (c, _))| (*a, *c))
            .collect();
        let joined_now: HashSet<Uuid> = std::mem::take(&mut self.joined);
        known.extend(joined_now.iter().map(|agent| (*agent, true)));
        let (looked, again) = self.due_for_a_look(&joined_now);
        for (agent, consumed, second) in look_at(look, looked, &again).await? {
            if consumed || second {
                known.push((agent, consumed));
            } else {
                self.doubted.insert(agent, Instant::now());
            }
        }
        let unknown = settle(app, known).await?;
        self.wait_for_hello(unknown);
        Ok(())
    }

    /// The queues to look at this turn: those the events named, and the
    /// doubted whose wait is over (the second of the pair). A queue said to
    /// have no consumer is looked at once more, a turn or more later, before
    /// its agent counts offline: a quorum queue whose leader is slow to
    /// answer (a busy cluster, a node just lost) says 0 for a while.
    fn due_for_a_look(&mut self, joined_now: &HashSet<Uuid>) -> (HashSet<Uuid>, HashSet<Uuid>) {
        let mut looked = std::mem::take(&mut self.dirty);
        let mut again = HashSet::new();
        self.doubted.retain(|agent, since| {
            if joined_now.contains(agent) || looked.contains(agent) {
                return false;
            }
            if since.elapsed() >= DOUBT_FOR {
                again.insert(*agent);
                return false;
            }
            true
        });
        looked.extend(again.iter().copied());
        (looked, again)
    }

    /// Keeps the agents not registered yet (with what was seen of them and
    /// since when, [`MOST_UNREGISTERED`] at most) for the next turn.
    fn wait_for_hello(&mut self, unknown: Vec<(Uuid, bool)>) {
        let before = std::mem::take(&mut self.unregistered);
        for (agent, consumed) in unknown {
            if self.unregistered.len() >= MOST_UNREGISTERED {
                break;
            }
            let since = before.get(&agent).map_or_else(Instant::now, |(_, s)| *s);
            self.unregistered.insert(agent, (consumed, since));
        }
    }
}

/// Looks at each agent's queue: (agent, consumed, whether it was looked at
/// before, doubted).
async fn look_at(
    look: &mut Look<'_>,
    agents: HashSet<Uuid>,
    again: &HashSet<Uuid>,
) -> Result<Vec<(Uuid, bool, bool)>, Stop> {
    let mut out = Vec::with_capacity(agents.len());
    for agent in agents {
        let consumed = look
            .consumed(&agent)
            .await
            .map_err(|e| Stop::Broke(e.to_string()))?;
        out.push((agent, consumed, again.contains(&agent)));
    }
    Ok(out)
}

/// Looks at the queues of the agents in `dirty`, and records what it saw
/// and what was seen before of the agents in `known` (not looked at
/// again); returns the agents not registered yet (their Hello is on the
/// way) with what was seen of them.
async fn settle(app: &Arc<App>, seen: Vec<(Uuid, bool)>) -> Result<Vec<(Uuid, bool)>, Stop> {
    let registry = app.registry.clone();
    let written = tokio::task::spawn_blocking(move || {
        registry.with_tx(|tx| {
            let mut unknown = Vec::new();
            for (agent, consumed) in &seen {
                if !crate::registry::presence::set(tx, agent, *consumed)? {
                    unknown.push((*agent, *consumed));
                }
            }
            Ok(unknown)
        })
    })
    .await;
    match written {
        Ok(Ok(unknown)) => Ok(unknown),
        _ => Err(Stop::Broke("the registry could not record presence".into())),
    }
}

/// Passive declares of agents' queues, on a channel opened again after each
/// 404 (a queue not declared yet closes the channel).
struct Look<'a> {
    connection: &'a Connection,
    channel: Channel,
}

impl<'a> Look<'a> {
    async fn open(connection: &'a Connection) -> Result<Look<'a>, BusError> {
        let channel = connection
            .create_channel()
            .await
            .map_err(amqp("opening the presence channel"))?;
        Ok(Look {
            connection,
            channel,
        })
    }

    /// Whether someone consumes the agent's queue now (no queue: nobody).
    async fn consumed(&mut self, agent: &Uuid) -> Result<bool, BusError> {
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        match self
            .channel
            .queue_declare(
                topology::agent_queue(agent).as_str().into(),
                passive,
                FieldTable::default(),
            )
            .await
        {
            Ok(queue) => Ok(queue.consumer_count() > 0),
            Err(_) if self.connection.status().connected() => {
                close_channel(&self.channel, "presence looked").await;
                self.channel = self
                    .connection
                    .create_channel()
                    .await
                    .map_err(amqp("opening the presence channel"))?;
                Ok(false)
            }
            Err(e) => Err(amqp("looking at an agent's queue")(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::with_vhost;

    #[test]
    fn the_virtual_host_is_replaced_whatever_the_url_has() {
        assert_eq!(
            with_vhost("amqp://u:p@h:5672/%2ffleet", "/"),
            "amqp://u:p@h:5672/%2f"
        );
        assert_eq!(with_vhost("amqp://h", "/"), "amqp://h/%2f");
        assert_eq!(
            with_vhost("amqps://h:5671/x?auth_mechanism=external", "fleet a"),
            "amqps://h:5671/fleet%20a?auth_mechanism=external"
        );
        assert_eq!(
            with_vhost("amqp://h?heartbeat=5", "v"),
            "amqp://h/v?heartbeat=5"
        );
    }
}
