//! The broker's own ceiling, measured in the same run: request/reply round
//! trips through the same RabbitMQ with the same persistence (durable queues,
//! persistent messages, publisher confirms, manual acks after the work), the
//! same message size and concurrency, by a minimal lapin client and
//! responder with no saga logic — optionally with one SQLite commit
//! (`synchronous = FULL`) per round trip, to show what durability costs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::sync::oneshot;

use hearty::storage::Db;

use crate::cpu::{self, Meter};

/// What one ceiling run measured.
#[derive(Debug, Clone, Copy, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Ceiling {
    pub round_trips: u64,
    pub seconds: f64,
    pub round_trips_per_sec: f64,
    /// Round trips per second ÷ 4: the most 4-step sagas per second.
    pub sagas_per_sec: f64,
    /// CPU the broker spent per 4 round trips, in milliseconds (a local
    /// broker only).
    pub broker_cpu_ms_per_saga: Option<f64>,
    /// CPU the ceiling's own clients and responder spent per 4 round trips.
    pub client_cpu_ms_per_saga: Option<f64>,
}

async fn declare(ch: &Channel, name: &str) -> lapin::Result<()> {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions::durable(),
        FieldTable::default(),
    )
    .await
    .map(|_| ())
}

fn props(id: u64) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_correlation_id(id.to_string().into())
        .with_message_id(format!("raw-{id}").into())
        .with_type("raw.request".into())
}

/// Runs round trips from `concurrency` clients for `duration`.
pub async fn measure(
    url: &str,
    namespace: &str,
    concurrency: usize,
    duration: Duration,
    payload: usize,
    sqlite: Option<&std::path::Path>,
) -> anyhow::Result<Ceiling> {
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let requests = format!("{namespace}.raw.requests");
    let replies = format!("{namespace}.raw.replies");
    let setup = conn.create_channel().await?;
    declare(&setup, &requests).await?;
    declare(&setup, &replies).await?;
    let db = match sqlite {
        Some(path) => Some(Db::open(
            path,
            "CREATE TABLE IF NOT EXISTS rt (id INTEGER PRIMARY KEY, body BLOB NOT NULL);",
        )?),
        None => None,
    };

    // The responder: consume, (commit), publish the reply with a confirm, ack.
    let resp_in = conn.create_channel().await?;
    resp_in
        .basic_qos(concurrency as u16, BasicQosOptions::default())
        .await?;
    let resp_out = conn.create_channel().await?;
    resp_out
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut incoming = resp_in
        .basic_consume(
            requests.clone().into(),
            "raw-responder".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let replies_q = replies.clone();
    let responder = tokio::spawn(async move {
        while let Some(Ok(d)) = incoming.next().await {
            let out = resp_out.clone();
            let db = db.clone();
            let replies_q = replies_q.clone();
            tokio::spawn(async move {
                if let Some(db) = &db {
                    let body = d.data.clone();
                    let _ = db
                        .write(move |tx| {
                            Ok(tx.execute("INSERT INTO rt (body) VALUES (?1)", [body])?)
                        })
                        .await;
                }
                let id = d
                    .properties
                    .correlation_id()
                    .as_ref()
                    .and_then(|c| c.as_str().parse::<u64>().ok())
                    .unwrap_or(0);
                if let Ok(confirm) = out
                    .basic_publish(
                        "".into(),
                        replies_q.into(),
                        BasicPublishOptions::default(),
                        &d.data,
                        props(id),
                    )
                    .await
                {
                    let _ = confirm.await;
                }
                let _ = d.acker.ack(BasicAckOptions::default()).await;
            });
        }
    });

    // The clients' reply router.
    let waiting: Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>> = Arc::default();
    let reply_in = conn.create_channel().await?;
    reply_in
        .basic_qos(concurrency as u16 * 2, BasicQosOptions::default())
        .await?;
    let mut reply_stream = reply_in
        .basic_consume(
            replies.clone().into(),
            "raw-client".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let router_waiting = waiting.clone();
    let router = tokio::spawn(async move {
        while let Some(Ok(d)) = reply_stream.next().await {
            let id = d
                .properties
                .correlation_id()
                .as_ref()
                .and_then(|c| c.as_str().parse::<u64>().ok())
                .unwrap_or(0);
            let _ = d.acker.ack(BasicAckOptions::default()).await;
            if let Some(tx) = router_waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id)
            {
                let _ = tx.send(());
            }
        }
    });

    let publisher = conn.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let body = vec![b'x'; payload];
    let broker = Meter::start(cpu::broker_pid().into_iter().collect());
    let client = Meter::start(vec!["self".to_owned()]);
    let started = Instant::now();
    let deadline = started + duration;
    let mut clients = Vec::new();
    for c in 0..concurrency {
        let publisher = publisher.clone();
        let waiting = waiting.clone();
        let body = body.clone();
        let requests = requests.clone();
        clients.push(tokio::spawn(async move {
            let mut done = 0u64;
            let mut n = 0u64;
            while Instant::now() < deadline {
                let id = (c as u64) << 40 | n;
                n += 1;
                let (tx, rx) = oneshot::channel();
                waiting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id, tx);
                let Ok(confirm) = publisher
                    .basic_publish(
                        "".into(),
                        requests.clone().into(),
                        BasicPublishOptions::default(),
                        &body,
                        props(id),
                    )
                    .await
                else {
                    break;
                };
                if confirm.await.is_err() {
                    break;
                }
                if tokio::time::timeout(Duration::from_secs(30), rx)
                    .await
                    .is_err()
                {
                    break;
                }
                done += 1;
            }
            done
        }));
    }
    let mut total = 0;
    for c in clients {
        total += c.await.unwrap_or(0);
    }
    let seconds = started.elapsed().as_secs_f64();
    let sagas = total as f64 / 4.0;
    let (broker_cpu_ms_per_saga, client_cpu_ms_per_saga) =
        (broker.ms_per(sagas), client.ms_per(sagas));
    responder.abort();
    router.abort();
    let _ = setup
        .queue_delete(requests.into(), QueueDeleteOptions::default())
        .await;
    let _ = setup
        .queue_delete(replies.into(), QueueDeleteOptions::default())
        .await;
    let _ = conn.close(200, "bench done".into()).await;
    let per_sec = total as f64 / seconds;
    Ok(Ceiling {
        round_trips: total,
        seconds,
        round_trips_per_sec: per_sec,
        sagas_per_sec: per_sec / 4.0,
        broker_cpu_ms_per_saga,
        client_cpu_ms_per_saga,
    })
}
