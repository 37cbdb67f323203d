//! `--history N`: a bounded event log under a long history. N orders'
//! events go through the product's own publish path (each event to the
//! events exchange and, batched, to the event log) while a read-model
//! process (`views`) applies them and writes snapshots; the log is bounded
//! to a fraction of that history. Then, with events still arriving, a new
//! API replica starts on an empty folder: the time until it is ready (it
//! restores the latest snapshot and reads the log's tail), and the log's
//! size on the broker's disk throughout.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hearty::domain::{CustomerId, FoodId, Money, OrderId, OrderStatus, Qty};
use hearty::events::{DomainEvent, OrderData, Payload};
use hearty::partition::PartitionCount;
use hearty::saga::machine::SagaState;
use hearty::transport::Transport;
use hearty::transport::amqp::{AmqpSettings, AmqpTransport, Retention, Scope};
use hearty::transport::nodes::BrokerNodes;
use serde_json::{Value, json};

use super::{Service, secret, wait_ready};

/// Events published per call of the transport (one relay pass's worth).
const PUBLISH_BATCH: usize = 1_000;

/// The bound of the log in this measurement, and its segments.
pub struct Bound {
    pub max_bytes: u64,
    pub segment_bytes: u64,
}

async fn declare(amqp: &str, namespace: &str, bound: &Bound) -> anyhow::Result<AmqpTransport> {
    let nodes = BrokerNodes::parse(amqp).map_err(|e| anyhow::anyhow!("{e}"))?;
    AmqpTransport::connect(&AmqpSettings {
        nodes,
        namespace: namespace.to_owned(),
        prefetch: 64,
        connection_name: "hearty-bench history".into(),
        quorum_queues: false,
        adopt_queue_type: true,
        connect_wait: Duration::from_secs(10),
        partitions: PartitionCount::default(),
        scope: Scope::everything(),
        log_retention: Retention {
            max_age: None,
            max_bytes: bound.max_bytes,
            segment_bytes: bound.segment_bytes,
        },
    })
    .await
    .context("connecting to RabbitMQ")
}

/// One order's event: the order as it ends (completed).
fn order_event(id: i64) -> anyhow::Result<DomainEvent> {
    let data = OrderData {
        order_id: OrderId::new(id).map_err(|e| anyhow::anyhow!("{e}"))?,
        customer_id: CustomerId::new(1 + id % 5_000).map_err(|e| anyhow::anyhow!("{e}"))?,
        food_catalog_id: FoodId::new(1 + id % 20).map_err(|e| anyhow::anyhow!("{e}"))?,
        qty: Qty::new(1).map_err(|e| anyhow::anyhow!("{e}"))?,
        amount_cents: Money::from_cents(400),
        status: OrderStatus::Delivered,
        saga_state: SagaState::Completed,
        reason: None,
    };
    Ok(DomainEvent::new("completed", 1, Payload::Order(data)))
}

/// Publishes the events of orders `from..to`, a batch at a time, through
/// the product's publish path; retried until confirmed.
async fn publish_orders(t: &AmqpTransport, from: i64, to: i64) -> anyhow::Result<()> {
    let mut next = from;
    while next < to {
        let end = (next + PUBLISH_BATCH as i64).min(to);
        let batch: Vec<_> = (next..end)
            .map(|id| order_event(id).map(|e| e.message()))
            .collect::<anyhow::Result<_>>()?;
        let mut tries = 0;
        loop {
            let results = t.publish(batch.clone()).await;
            if results.iter().all(Result::is_ok) {
                break;
            }
            tries += 1;
            if tries > 20 {
                bail!(
                    "publishing events failed: {:?}",
                    results.into_iter().find(Result::is_err)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        next = end;
    }
    Ok(())
}

/// The event log's folder on the local broker's disk (the stream's
/// segments and indexes), if this machine runs the broker.
fn log_folder(broker_data: &Path, namespace: &str) -> Option<PathBuf> {
    let wanted = format!("__{}_events_log_", namespace.replace(['.', '-'], "_"));
    let nodes = std::fs::read_dir(broker_data).ok()?;
    for node in nodes.filter_map(Result::ok) {
        let Ok(streams) = std::fs::read_dir(node.path().join("stream")) else {
            continue;
        };
        for s in streams.filter_map(Result::ok) {
            let name = s.file_name().to_string_lossy().into_owned();
            if name.replace('-', "_").starts_with(&wanted) {
                return Some(s.path());
            }
        }
    }
    None
}

fn folder_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn rows(db: &Path) -> anyhow::Result<i64> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    Ok(c.query_row("SELECT count(*) FROM my_orders", [], |r| r.get(0))?)
}

fn position(db: &Path) -> anyhow::Result<i64> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    Ok(c.query_row("SELECT next_offset FROM log_position", [], |r| r.get(0))?)
}

/// Runs the measurement in `dir`.
pub async fn measure(
    exe: &Path,
    amqp: &str,
    namespace: &str,
    dir: &Path,
    orders: usize,
    bound: &Bound,
    broker_data: &Path,
) -> anyhow::Result<Value> {
    let orders = i64::try_from(orders)?;
    let t = declare(amqp, namespace, bound).await?;
    let snapshots = dir.join("snapshots");
    let (manager, key) = (secret(), secret());
    let log_env = [
        ("HEARTY_LOG_MAX_BYTES", bound.max_bytes.to_string()),
        ("HEARTY_LOG_SEGMENT_BYTES", bound.segment_bytes.to_string()),
        (
            "HEARTY_SNAPSHOT_DIR",
            snapshots.to_string_lossy().into_owned(),
        ),
        ("HEARTY_SNAPSHOT_EVERY", "15s".to_owned()),
        ("HEARTY_ROLES", "views".to_owned()),
    ];
    let env: Vec<(&str, &str)> = log_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let first_dir = dir.join("views-1");
    let first = Service::start(exe, amqp, namespace, &first_dir, (&manager, &key), &env)?;
    wait_ready(&first.base, Duration::from_secs(60)).await?;

    // The log's size on disk, sampled every second until the end.
    let folder = log_folder(broker_data, namespace);
    let done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let sampler = {
        let (folder, done) = (folder.clone(), done.clone());
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while !done.load(Ordering::SeqCst) {
                if let Some(f) = &folder {
                    samples.push((started.elapsed().as_secs(), folder_bytes(f)));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            samples
        })
    };

    // The history, through the product's publish path.
    let publish_start = Instant::now();
    publish_orders(&t, 1, orders + 1).await?;
    let published_in = publish_start.elapsed();
    // The first read-model process applies it all (the old way: every
    // replica replayed this).
    let my_orders = first_dir.join("views-my-orders.db");
    let deadline = Instant::now() + Duration::from_secs(1800);
    while rows(&my_orders).unwrap_or(0) < orders {
        if Instant::now() > deadline {
            bail!("the read-model process did not apply the history");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let replayed_in = publish_start.elapsed();
    let log_head = hearty::transport::EventLog::head(&t).await?.unwrap_or(0);

    // A snapshot that holds the whole history.
    let store = hearty::views::snapshot::Snapshots::new(&snapshots, namespace);
    let applied_to = position(&my_orders)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let snapshot = loop {
        if let Some(s) = store
            .latest()
            .filter(|s| s.manifest.position() >= applied_to.min(log_head))
        {
            break s;
        }
        if Instant::now() > deadline {
            bail!("no snapshot of the history was written");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let snapshot_bytes = folder_bytes(&snapshot.path);

    // Orders keep arriving (about 1,000 a second) while a new API replica
    // starts on an empty folder.
    let arriving = {
        let t = t.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut next = orders + 1;
            while !done.load(Ordering::SeqCst) {
                if publish_orders(&t, next, next + 100).await.is_err() {
                    break;
                }
                next += 100;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            next - orders - 1
        })
    };
    let replica_dir = dir.join("api-new");
    let mut api_env = env.clone();
    api_env.retain(|(k, _)| *k != "HEARTY_ROLES");
    api_env.push(("HEARTY_ROLES", "api"));
    let spawn = Instant::now();
    let replica = Service::start(
        exe,
        amqp,
        namespace,
        &replica_dir,
        (&manager, &key),
        &api_env,
    )?;
    wait_ready(&replica.base, Duration::from_secs(300)).await?;
    let ready_after = spawn.elapsed();
    let replica_rows = rows(&replica_dir.join("views-my-orders.db"))?;
    // Keep orders coming a little longer, watching the log's size.
    tokio::time::sleep(Duration::from_secs(10)).await;
    done.store(true, Ordering::SeqCst);
    let more = arriving.await.unwrap_or(0);
    let samples = sampler.await.unwrap_or_default();
    replica.terminate();
    first.terminate();
    t.close().await;
    Ok(json!({
        "orders": orders,
        "logBound": { "maxBytes": bound.max_bytes, "segmentBytes": bound.segment_bytes },
        "historyPublishedSecs": published_in.as_secs_f64(),
        "replayWholeHistorySecs": replayed_in.as_secs_f64(),
        "logHeadAfterHistory": log_head,
        "snapshot": { "position": snapshot.manifest.position(), "bytes": snapshot_bytes },
        "newReplicaReadySecs": ready_after.as_secs_f64(),
        "newReplicaRowsWhenReady": replica_rows,
        "ordersArrivingMeanwhile": more,
        "logDiskBytesMax": samples.iter().map(|(_, b)| *b).max(),
        "logDiskBytes": samples,
    }))
}
