//! `fleetls-bench`: the machine's own ceilings, measured with the same
//! libraries fleetls uses, so that `scripts/bench` can show each phase as a
//! share of what the broker allows.
//!
//! - `rpc`: request/reply round trips through the broker (publish with
//!   confirms, a consumer answers, the answer is consumed), C in flight.
//! - `amqps-open`: AMQPS connections opened (TLS handshake with a client
//!   certificate, AMQP handshake) and closed, C at a time.
//! - `rpc-agents`: the same round trips in fleetls's own topology (a queue
//!   and channel per agent, one queue to the parent), from a plain client
//!   without batching: what the topology costs the broker.
//! - `hold`: N connections opened the way a child opens its own (AMQPS through
//!   `fleetls_child::broker_tls::connect`, plain AMQP through
//!   `fleetls_child::agent::connect`), each with a channel, and kept open,
//!   with the process's memory after every step: what one connection costs.
//!
//! - `floor`: what one message costs a consumer that does nothing else —
//!   lapin's I/O thread, the wake-ups, an ack per 50 —, and with `--signed`
//!   also decoding and checking the signature of a real state report: the
//!   floor beside which `scripts/bench` puts the parent's CPU per report.
//!   The messages come from a second process (`trickle`) at a steady rate,
//!   spread out as a fleet's reports are.
//!
//! `rpc`, `rpc-agents` and `amqps-open` print one JSON object:
//! `{"what", "count", "seconds", "per_second"}`; `hold` prints one per step;
//! `floor` adds `us_per_message`, its CPU per message.

use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, Subcommand};
use futures_lite::StreamExt;
use lapin::options::{BasicAckOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio::sync::Semaphore;

#[path = "../bench/agents.rs"]
mod agents;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Request/reply round trips per second in fleetls's topology: one
    /// queue per agent, a shared queue to the parent.
    RpcAgents {
        /// AMQP URL
        #[arg(long)]
        broker: String,
        /// Agents (each with its own queue and channel), all at once
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        /// Round trips each agent makes
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Agents making their round trips at once (a campaign's window)
        #[arg(long, default_value_t = 500)]
        window: usize,
        /// How answers are sent: persistent, transient with an expiration
        /// (as fleetls's commands), or both in turn over the same queues
        /// (one line each)
        #[arg(long, value_enum, default_value = "persistent")]
        answers: agents::Answers,
        /// Leave the queues behind (the caller deletes the whole vhost,
        /// which costs the broker less than deleting them one by one)
        #[arg(long)]
        keep: bool,
        /// Start the rounds only once this file exists (several clients,
        /// one per cluster node, then run at the same time)
        #[arg(long)]
        go: Option<std::path::PathBuf>,
    },
    /// Request/reply round trips per second through the broker.
    Rpc {
        /// AMQP URL
        #[arg(long)]
        broker: String,
        /// Round trips to make
        #[arg(long, default_value_t = 20_000)]
        count: usize,
        /// Requests in flight
        #[arg(long, default_value_t = 200)]
        concurrency: usize,
    },
    /// AMQPS connections opened and closed per second.
    AmqpsOpen {
        /// amqps:// URL
        #[arg(long)]
        uri: String,
        /// CA (PEM) the broker's certificate chains to
        #[arg(long)]
        ca: std::path::PathBuf,
        /// Client certificate chain (PEM)
        #[arg(long)]
        cert: std::path::PathBuf,
        /// Client key (PEM)
        #[arg(long)]
        key: std::path::PathBuf,
        /// Connections to open
        #[arg(long, default_value_t = 500)]
        count: usize,
        /// Connections opening at once
        #[arg(long, default_value_t = 20)]
        concurrency: usize,
    },
    /// A consumer's CPU per message at a steady rate (the messages come from
    /// a `trickle` process it starts).
    Floor {
        /// AMQP URL
        #[arg(long)]
        broker: String,
        /// Messages per second
        #[arg(long, default_value_t = 200)]
        rate: u32,
        /// Seconds measured
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Send signed state reports and check each one's signature, as the
        /// parent does
        #[arg(long)]
        signed: bool,
    },
    /// Publishes signed state reports to a queue at a steady rate (for
    /// `floor`).
    #[command(hide = true)]
    Trickle {
        /// AMQP URL
        #[arg(long)]
        broker: String,
        /// The queue
        #[arg(long)]
        queue: String,
        /// Messages per second
        #[arg(long)]
        rate: u32,
        /// Messages in all
        #[arg(long)]
        count: usize,
    },
    /// Memory per open connection: N connections opened like a child's own
    /// and held open.
    Hold {
        /// amqps:// URL (the child's AMQPS path) or amqp:// URL (plain); a
        /// `frame_max=N` in it overrides the child's own frame size
        #[arg(long)]
        uri: String,
        /// CA (PEM) the broker's certificate chains to (amqps only)
        #[arg(long)]
        ca: Option<std::path::PathBuf>,
        /// Client certificate chain (PEM; amqps only)
        #[arg(long)]
        cert: Option<std::path::PathBuf>,
        /// Client key (PEM; amqps only)
        #[arg(long)]
        key: Option<std::path::PathBuf>,
        /// Connections to open and hold
        #[arg(long, default_value_t = 2_000)]
        count: usize,
        /// Connections opening at once
        #[arg(long, default_value_t = 20)]
        concurrency: usize,
        /// Print the memory after every this many connections
        #[arg(long, default_value_t = 500)]
        every: usize,
        /// Seconds to hold them all open before closing (memory printed again)
        #[arg(long, default_value_t = 5)]
        hold_secs: u64,
    },
}

fn report(what: &str, extra: &[(&str, serde_json::Value)], count: usize, started: Instant) {
    let seconds = started.elapsed().as_secs_f64();
    let mut line = serde_json::json!({
        "what": what,
        "count": count,
        "seconds": seconds,
        "per_second": count as f64 / seconds,
    });
    for (key, value) in extra {
        line[*key] = value.clone();
    }
    println!("{line}");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::RpcAgents {
            broker,
            agents,
            rounds,
            window,
            answers,
            keep,
            go,
        } => {
            agents::run(
                &broker,
                agents,
                rounds,
                window,
                answers,
                keep,
                go.as_deref(),
            )
            .await
        }
        Command::Rpc {
            broker,
            count,
            concurrency,
        } => rpc(&broker, count, concurrency).await,
        Command::Floor {
            broker,
            rate,
            seconds,
            signed,
        } => floor(&broker, rate.max(1), seconds.max(1), signed).await,
        Command::Trickle {
            broker,
            queue,
            rate,
            count,
        } => trickle(&broker, &queue, rate.max(1), count).await,
        Command::AmqpsOpen {
            uri,
            ca,
            cert,
            key,
            count,
            concurrency,
        } => {
            let config = lapin::tcp::OwnedTLSConfig {
                identity: Some(lapin::tcp::OwnedIdentity::PKCS8 {
                    pem: std::fs::read(cert)?,
                    key: std::fs::read(key)?,
                }),
                cert_chain: Some(std::fs::read_to_string(ca)?),
            };
            amqps_open(&uri, config, count, concurrency).await
        }
        Command::Hold {
            uri,
            ca,
            cert,
            key,
            count,
            concurrency,
            every,
            hold_secs,
        } => {
            let plan = HoldPlan {
                count,
                concurrency: concurrency.max(1),
                every: every.max(1),
                hold: std::time::Duration::from_secs(hold_secs),
            };
            if uri.starts_with("amqps://") {
                let (Some(ca), Some(cert), Some(key)) = (ca, cert, key) else {
                    anyhow::bail!("an amqps:// --uri needs --ca, --cert and --key");
                };
                let data_dir = tempfile::tempdir()?;
                // The files where a child keeps them.
                let layout = fleetls_child::layout::Layout::new(data_dir.path());
                std::fs::create_dir_all(layout.certs())?;
                std::fs::copy(cert, layout.chain())?;
                std::fs::copy(key, layout.key())?;
                std::fs::copy(ca, layout.broker_ca())?;
                hold(&uri, Some(data_dir.path()), plan).await
            } else {
                hold(&uri, None, plan).await
            }
        }
    }
}

async fn rpc(broker: &str, count: usize, concurrency: usize) -> anyhow::Result<()> {
    let server = Connection::connect(broker, ConnectionProperties::default()).await?;
    let client = Connection::connect(broker, ConnectionProperties::default()).await?;
    let requests = format!("bench.requests.{}", uuid::Uuid::new_v4().simple());
    let replies = format!("bench.replies.{}", uuid::Uuid::new_v4().simple());
    let server_channel = agents::confirm_channel(&server).await?;
    let client_channel = agents::confirm_channel(&client).await?;
    for (channel, queue) in [(&server_channel, &requests), (&client_channel, &replies)] {
        scratch_queue(channel, queue).await?;
    }
    // The server answers every request, persistent and confirmed, like the parent.
    let mut incoming = agents::consume(&server_channel, &requests).await?;
    let reply_queue = replies.clone();
    let answering = server_channel.clone();
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = incoming.next().await {
            let _ = answering
                .basic_publish(
                    "".into(),
                    reply_queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &delivery.data,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await;
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        }
    });
    let mut answers = agents::consume(&client_channel, &replies).await?;
    let window = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let publisher = client_channel.clone();
    let sender_window = window.clone();
    let sender = tokio::spawn(async move {
        for i in 0..count {
            let permit = sender_window
                .acquire()
                .await
                .expect("the window stays open");
            permit.forget();
            let confirm = publisher
                .basic_publish(
                    "".into(),
                    requests.as_str().into(),
                    BasicPublishOptions::default(),
                    &(i as u64).to_be_bytes(),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await?;
            tokio::spawn(confirm);
        }
        Ok::<_, lapin::Error>(())
    });
    let mut received = 0;
    while received < count {
        let Some(delivery) = answers.next().await else {
            anyhow::bail!("the reply consumer ended");
        };
        delivery?.acker.ack(BasicAckOptions::default()).await?;
        received += 1;
        window.add_permits(1);
    }
    sender.await??;
    report("rpc", &[], count, started);
    Ok(())
}

/// Declares `queue`, deleted with its last consumer.
async fn scratch_queue(channel: &lapin::Channel, queue: &str) -> lapin::Result<()> {
    let options = QueueDeclareOptions {
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await?;
    Ok(())
}

/// This process's CPU time so far (user + system), from `/proc`.
fn cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(i)
            .ok_or_else(|| anyhow::anyhow!("/proc/self/stat has no field {i}"))?
            .parse::<f64>()?)
    };
    // utime and stime (fields 14 and 15 of the whole line), in the
    // kernel's USER_HZ of 100 per second.
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// Consumes `rate` messages a second from a `trickle` process for
/// `seconds` (after a second to settle) and prints this process's CPU per
/// message: acks every 50 messages, as the parent acks a batch; with
/// `signed`, decodes each and checks its signature.
async fn floor(broker: &str, rate: u32, seconds: u64, signed: bool) -> anyhow::Result<()> {
    let connection = Connection::connect(broker, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(1024, lapin::options::BasicQosOptions::default())
        .await?;
    let queue = format!("bench.floor.{}", uuid::Uuid::new_v4().simple());
    scratch_queue(&channel, &queue).await?;
    let mut deliveries = agents::consume(&channel, &queue).await?;
    let settle = rate as usize;
    let measured = rate as usize * seconds as usize;
    let mut publisher = Publisher(
        std::process::Command::new(std::env::current_exe()?)
            .args(["trickle", "--broker", broker, "--queue", &queue])
            .args(["--rate", &rate.to_string()])
            .args(["--count", &(settle + measured).to_string()])
            .spawn()?,
    );
    let mut received = 0usize;
    let mut began = None;
    while received < settle + measured {
        let Some(delivery) = deliveries.next().await else {
            anyhow::bail!("the consumer ended after {received} messages");
        };
        let delivery = delivery?;
        if signed {
            fleetls_bus::seal::signer(&delivery.data, delivery.properties.headers().as_ref())?;
            fleetls_proto::decode(&delivery.data)?;
        }
        received += 1;
        if received == settle {
            began = Some((Instant::now(), cpu_seconds()?));
        }
        if received.is_multiple_of(50) {
            delivery
                .acker
                .ack(BasicAckOptions { multiple: true })
                .await?;
        }
    }
    let (started, cpu) = began.ok_or_else(|| anyhow::anyhow!("nothing was measured"))?;
    let used = cpu_seconds()? - cpu;
    let status = publisher.0.wait()?;
    anyhow::ensure!(status.success(), "the trickle process failed: {status}");
    report(
        if signed { "floor-signed" } else { "floor" },
        &[
            ("cpu_s", used.into()),
            ("us_per_message", (used / measured as f64 * 1e6).into()),
        ],
        measured,
        started,
    );
    Ok(())
}

/// The `trickle` process, stopped if `floor` ends early.
struct Publisher(std::process::Child);

impl Drop for Publisher {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Publishes `count` signed state reports to `queue`, `rate` a second,
/// persistent and confirmed as a child sends them.
async fn trickle(broker: &str, queue: &str, rate: u32, count: usize) -> anyhow::Result<()> {
    let connection = Connection::connect(broker, ConnectionProperties::default()).await?;
    let channel = agents::confirm_channel(&connection).await?;
    let (key, _) = fleetls_bus::seal::SigningKey::generate();
    let agent = uuid::Uuid::new_v4();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs_f64(1.0 / rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for seq in 1..=count as u64 {
        tick.tick().await;
        let report = fleetls_proto::ToParent::Heartbeat(fleetls_proto::Heartbeat::default());
        let envelope = fleetls_proto::Envelope::new(agent, report.into()).with_seq(seq);
        let sealed = key.seal(&envelope)?;
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &sealed.payload,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_headers(sealed.headers()),
            )
            .await?;
        tokio::spawn(confirm);
    }
    Ok(())
}

async fn amqps_open(
    uri: &str,
    config: lapin::tcp::OwnedTLSConfig,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let window = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..count {
        let permit = window.clone().acquire_owned().await?;
        let uri = uri.to_owned();
        let config = config.clone();
        tasks.spawn(async move {
            let connection = Connection::connect_with_config(
                &uri,
                ConnectionProperties::default(),
                config,
                lapin::runtime::default_runtime()?,
            )
            .await?;
            connection.close(200, "bench".into()).await?;
            drop(permit);
            Ok::<_, lapin::Error>(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    report("amqps-open", &[], count, started);
    Ok(())
}

/// How many connections `hold` opens, how fast, and how often it reports.
struct HoldPlan {
    count: usize,
    concurrency: usize,
    every: usize,
    hold: std::time::Duration,
}

/// The lines of /proc/self/status that say how much memory the process uses,
/// in KiB, with `Threads` and `maps` (memory mappings, bounded by
/// vm.max_map_count) as counts.
fn memory() -> serde_json::Map<String, serde_json::Value> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let maps = std::fs::read_to_string("/proc/self/maps").map_or(0, |m| m.lines().count());
    let mut memory: serde_json::Map<String, serde_json::Value> = status
        .lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            let wanted = ["VmRSS", "VmHWM", "RssAnon", "VmSize", "Threads"];
            if !wanted.contains(&name) {
                return None;
            }
            let number: u64 = value.split_whitespace().next()?.parse().ok()?;
            Some((name.to_owned(), number.into()))
        })
        .collect();
    memory.insert("maps".into(), maps.into());
    memory
}

/// Prints one `hold` step: the memory now, and what each open connection
/// added to the resident set since `base`.
fn memory_line(
    what: &str,
    open: usize,
    base: &serde_json::Map<String, serde_json::Value>,
    started: Instant,
) {
    let now = memory();
    let kib = |m: &serde_json::Map<String, serde_json::Value>, k: &str| {
        m.get(k).and_then(|v| v.as_u64()).unwrap_or(0)
    };
    let mut line = now.clone();
    line.insert("what".into(), what.into());
    line.insert("open".into(), open.into());
    line.insert("seconds".into(), started.elapsed().as_secs_f64().into());
    if open > 0 {
        let grown = kib(&now, "VmRSS").saturating_sub(kib(base, "VmRSS"));
        line.insert("kib_per_connection".into(), (grown / open as u64).into());
    }
    println!("{}", serde_json::Value::Object(line));
}

/// Opens `plan.count` connections (AMQPS with the certificates in
/// `data_dir`, else plain), a channel with confirms on each, holds them
/// open and prints the memory as it goes.
async fn hold(uri: &str, data_dir: Option<&std::path::Path>, plan: HoldPlan) -> anyhow::Result<()> {
    let what = if data_dir.is_some() {
        "hold-amqps"
    } else {
        "hold-amqp"
    };
    let base = memory();
    let started = Instant::now();
    memory_line(what, 0, &base, started);
    let window = Arc::new(Semaphore::new(plan.concurrency));
    let mut held = Vec::with_capacity(plan.count);
    let mut next = 0;
    while next < plan.count {
        let step = plan.every.min(plan.count - next);
        let mut tasks = tokio::task::JoinSet::new();
        for i in next..next + step {
            let permit = window.clone().acquire_owned().await?;
            let uri = uri.to_owned();
            let data_dir = data_dir.map(std::path::Path::to_path_buf);
            tasks.spawn(async move {
                let name = format!("fleetls-bench:hold:{i}");
                let connection = match &data_dir {
                    Some(dir) => fleetls_child::broker_tls::connect(dir, &uri, &name).await?,
                    None => fleetls_child::agent::connect(&uri, &name).await?,
                };
                let channel = agents::confirm_channel(&connection).await?;
                drop(permit);
                Ok::<_, anyhow::Error>((connection, channel))
            });
        }
        while let Some(result) = tasks.join_next().await {
            held.push(result??);
        }
        next += step;
        memory_line(what, held.len(), &base, started);
    }
    tokio::time::sleep(plan.hold).await;
    memory_line(what, held.len(), &base, started);
    for (connection, _channel) in held {
        let _ = connection.close(200, "bench".into()).await;
    }
    Ok(())
}
