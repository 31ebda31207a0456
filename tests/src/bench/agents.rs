//! `fleetls-bench rpc-agents`: request/reply round trips in fleetls's own
//! topology, without fleetls. N simulated agents each have their own durable
//! queue and channel (shared connections, like `fleetls-child swarm`); a
//! "parent" consumes one shared queue and answers each request into the
//! asking agent's queue through a direct exchange. Requests are persistent,
//! answers persistent too or, with `--transient`, transient with an
//! expiration (as fleetls sends its commands); every message is confirmed,
//! every delivery acked (`--answers both`: persistent rounds, then
//! transient ones, over the same queues, declared once — on a cluster
//! declaring the queues costs far more than the round trips): the broker does exactly
//! the work it does for one step of a fleetls campaign, from a plain client:
//! each answer published and acked on its own, no batching. It shows what
//! the topology itself (a durable queue per agent) costs the broker next to
//! one shared queue (`rpc`); fleetls, which batches, can do better than it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

/// A new channel with publisher confirms on.
pub(crate) async fn confirm_channel(connection: &Connection) -> lapin::Result<Channel> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Consumes `queue` on `channel`, acking by hand.
pub(crate) async fn consume(channel: &Channel, queue: &str) -> lapin::Result<lapin::Consumer> {
    channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// Agents per shared connection, as in the swarm.
const PER_CONNECTION: usize = 200;

/// How the "parent" sends its answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Answers {
    /// Persistent answers.
    Persistent,
    /// Transient answers with an expiration (as fleetls sends its commands).
    Transient,
    /// Persistent rounds, then transient ones, over the same queues: one
    /// JSON line each.
    Both,
}

/// Runs `agents` agents making `rounds` round trips each, `window` agents
/// at a time (as a campaign's window), and prints the round trips per
/// second, one line per kind of answer (`answers`); the queues are deleted
/// after, unless `keep` (the caller deletes the vhost). With `go`, the
/// rounds start once that file exists (after "ready" on stderr).
pub(crate) async fn run(
    broker: &str,
    agents: usize,
    rounds: usize,
    window: usize,
    answers: Answers,
    keep: bool,
    go: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    anyhow::ensure!(agents > 0, "invalid --agents 0: give at least 1");
    anyhow::ensure!(window > 0, "invalid --window 0: give at least 1");
    anyhow::ensure!(rounds > 0, "invalid --rounds 0: give at least 1");
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let exchange = format!("bench.agents.{tag}");
    let requests = format!("bench.parent.{tag}");

    // The parent: one connection, one consuming channel answering everything.
    let parent = Connection::connect(broker, ConnectionProperties::default()).await?;
    let channel = confirm_channel(&parent).await?;
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            requests.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await?;
    channel.basic_qos(1024, BasicQosOptions::default()).await?;
    let mut incoming = consume(&channel, &requests).await?;
    let answering = channel.clone();
    let answer_exchange = exchange.clone();
    let transient = Arc::new(AtomicBool::new(answers == Answers::Transient));
    let answer_transient = transient.clone();
    let server = tokio::spawn(async move {
        // Each answer on its own task, so that answers and acks are
        // pipelined like the parent's batches instead of one at a time.
        while let Some(Ok(delivery)) = incoming.next().await {
            let Some(agent) = delivery.properties.reply_to().clone() else {
                continue;
            };
            let (answering, exchange) = (answering.clone(), answer_exchange.clone());
            let transient = answer_transient.load(Ordering::Relaxed);
            tokio::spawn(async move {
                let published = answering
                    .basic_publish(
                        exchange.as_str().into(),
                        agent,
                        BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        },
                        &delivery.data,
                        answer_properties(transient),
                    )
                    .await;
                if let Ok(confirm) = published {
                    let _ = confirm.await;
                }
                let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            });
        }
    });

    // The agents: their queues, channels and consumers, opened before the clock starts.
    let mut connections = Vec::new();
    for _ in 0..agents.div_ceil(PER_CONNECTION) {
        connections.push(Arc::new(
            Connection::connect(broker, ConnectionProperties::default()).await?,
        ));
    }
    let opened_at = Instant::now();
    let mut opening = tokio::task::JoinSet::new();
    let limit = Arc::new(tokio::sync::Semaphore::new(64));
    for i in 0..agents {
        let connection = connections[i / PER_CONNECTION].clone();
        let (exchange, tag, limit) = (exchange.clone(), tag.clone(), limit.clone());
        opening.spawn(async move {
            let _permit = limit.acquire_owned().await?;
            let channel = confirm_channel(&connection).await?;
            let queue = format!("bench.agent.{tag}.{i}");
            channel
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions::durable(),
                    FieldTable::default(),
                )
                .await?;
            channel
                .queue_bind(
                    queue.as_str().into(),
                    exchange.as_str().into(),
                    queue.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            channel.basic_qos(16, BasicQosOptions::default()).await?;
            let consumer = consume(&channel, &queue).await?;
            Ok::<(String, Channel, lapin::Consumer), anyhow::Error>((queue, channel, consumer))
        });
    }
    let mut ready = Vec::with_capacity(agents);
    while let Some(opened) = opening.join_next().await {
        ready.push(opened??);
    }

    eprintln!(
        "rpc-agents: {agents} queues, channels and consumers ready after {:.1} s",
        opened_at.elapsed().as_secs_f64()
    );
    if let Some(go) = go {
        // Several clients (one per cluster node) start their rounds together.
        while !go.exists() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    let modes: &[bool] = match answers {
        Answers::Persistent => &[false],
        Answers::Transient => &[true],
        Answers::Both => &[false, true],
    };
    let acting = Arc::new(tokio::sync::Semaphore::new(window));
    for &mode in modes {
        transient.store(mode, Ordering::Relaxed);
        let started = Instant::now();
        let mut running = tokio::task::JoinSet::new();
        for (queue, channel, mut consumer) in ready {
            let (requests, acting) = (requests.clone(), acting.clone());
            running.spawn(async move {
                let _turn = acting.acquire_owned().await?;
                for round in 0..rounds {
                    publish(&channel, &requests, &queue, round).await?;
                    let Some(answer) = consumer.next().await else {
                        anyhow::bail!("the answer consumer of {queue} ended");
                    };
                    answer?.acker.ack(BasicAckOptions::default()).await?;
                }
                Ok::<(String, Channel, lapin::Consumer), anyhow::Error>((queue, channel, consumer))
            });
        }
        ready = Vec::with_capacity(agents);
        while let Some(done) = running.join_next().await {
            ready.push(done??);
        }
        super::report(
            "rpc-agents",
            &[(
                "answers",
                if mode { "transient" } else { "persistent" }.into(),
            )],
            agents * rounds,
            started,
        );
    }
    let finished: Vec<(String, Channel)> = ready
        .into_iter()
        .map(|(queue, channel, _)| (queue, channel))
        .collect();

    server.abort();
    if keep {
        return Ok(());
    }
    // Leave the broker as it was.
    let deleting_at = Instant::now();
    let mut deleting = tokio::task::JoinSet::new();
    for (queue, channel) in finished {
        let limit = limit.clone();
        deleting.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        });
    }
    while deleting.join_next().await.is_some() {}
    eprintln!(
        "rpc-agents: {agents} queues deleted in {:.1} s",
        deleting_at.elapsed().as_secs_f64()
    );
    let _ = channel
        .queue_delete(requests.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = channel
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await;
    for connection in &connections {
        let _ = connection.close(200, "bench".into()).await;
    }
    let _ = parent.close(200, "bench".into()).await;
    Ok(())
}

/// How an answer is kept: persistent, or transient with a minute to live.
fn answer_properties(transient: bool) -> BasicProperties {
    if transient {
        BasicProperties::default()
            .with_delivery_mode(1)
            .with_expiration("60000".into())
    } else {
        BasicProperties::default().with_delivery_mode(2)
    }
}

/// One persistent, confirmed request naming the agent's queue to answer to.
async fn publish(
    channel: &Channel,
    requests: &str,
    queue: &str,
    round: usize,
) -> anyhow::Result<()> {
    let confirm = channel
        .basic_publish(
            "".into(),
            requests.into(),
            BasicPublishOptions::default(),
            &(round as u64).to_be_bytes(),
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_reply_to(ShortString::from(queue)),
        )
        .await?
        .await?;
    anyhow::ensure!(!confirm.is_nack(), "the broker refused a request");
    Ok(())
}
