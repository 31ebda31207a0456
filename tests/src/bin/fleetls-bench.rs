//! `fleetls-bench`: the machine's own ceilings, measured with the same
//! libraries fleetls uses, so that `scripts/bench` can show each phase as a
//! share of what the broker allows.
//!
//! - `rpc`: request/reply round trips through the broker (publish with
//!   confirms, a consumer answers, the answer is consumed), C in flight.
//! - `amqps-open`: AMQPS connections opened (TLS handshake with a client
//!   certificate, AMQP handshake) and closed, C at a time.
//!
//! Each prints one JSON object: `{"what", "count", "seconds", "per_second"}`.

use std::sync::Arc;
use std::time::Instant;

use clap::{Parser, Subcommand};
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio::sync::Semaphore;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
}

fn report(what: &str, count: usize, started: Instant) {
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "what": what,
            "count": count,
            "seconds": seconds,
            "per_second": count as f64 / seconds,
        })
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Rpc {
            broker,
            count,
            concurrency,
        } => rpc(&broker, count, concurrency).await,
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
    }
}

async fn rpc(broker: &str, count: usize, concurrency: usize) -> anyhow::Result<()> {
    let server = Connection::connect(broker, ConnectionProperties::default()).await?;
    let client = Connection::connect(broker, ConnectionProperties::default()).await?;
    let requests = format!("bench.requests.{}", uuid::Uuid::new_v4().simple());
    let replies = format!("bench.replies.{}", uuid::Uuid::new_v4().simple());
    let server_channel = server.create_channel().await?;
    server_channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let client_channel = client.create_channel().await?;
    client_channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let auto_delete = QueueDeclareOptions {
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    for (channel, queue) in [(&server_channel, &requests), (&client_channel, &replies)] {
        channel
            .queue_declare(queue.as_str().into(), auto_delete, FieldTable::default())
            .await?;
    }
    // The server answers every request, persistent and confirmed, like the parent.
    let mut incoming = server_channel
        .basic_consume(
            requests.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
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
    let mut answers = client_channel
        .basic_consume(
            replies.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
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
    report("rpc", count, started);
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
    report("amqps-open", count, started);
    Ok(())
}
