//! Re-driving the orders a restored folder lost.
//!
//! `hearty restore` leaves a marker ([`MARKER`]) in the new folder. Before
//! the restored owner recovers anything, it reads the event log (bounded,
//! but far longer than the time between two backups) and finds every order
//! of its partitions that the log knows and the restored database does not:
//! the orders it took after the backup. Each order event carries the
//! order's inputs (customer, food, quantity, amount), so the saga is made
//! again under its own id and runs from its start: its commands carry the
//! same deterministic message ids as the first time, so a worker that kept
//! its records (another folder) answers them from its inbox, and one that
//! was restored with it (the same folder) does the work again — as of the
//! backup, it never did it. An order the log last shows cancelled is
//! cancelled again (by `system:restore`). Then the marker goes.
//!
//! Not re-driven: what the log no longer holds (retention is far longer than
//! the backup schedule: DEPLOYMENT.md, *Backups*), customers and reviews
//! (they have no events that carry them whole), and idempotency keys (a
//! client's retry of a re-driven order with its key places it again).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::StreamExt;

use super::store::SagaStore;
use crate::domain::OrderStatus;
use crate::events::{DomainEvent, OrderData, Payload};
use crate::messages::OrderDetails;
use crate::transport::event_log::{self, BATCH_TYPE, MARKER_TYPE};
use crate::transport::{EventLog, LogFrom};

/// The file `hearty restore` leaves in a restored folder (it holds when
/// the backup was taken).
pub const MARKER: &str = "redrive.pending";

/// How far before the backup's time the log is read.
const SKEW: Duration = Duration::from_secs(120);

/// What the log says of one order: its first and its last known state.
struct Known {
    first: (i64, OrderData),
    last: (i64, OrderData),
}

/// Re-drives the orders the restored folder `data_dir` lost, if it has the
/// marker; answers how many.
pub async fn after_restore(
    data_dir: &Path,
    sagas: &SagaStore,
    log: Option<&dyn EventLog>,
    admit_within: Duration,
) -> anyhow::Result<usize> {
    let marker = data_dir.join(MARKER);
    if !marker.exists() {
        return Ok(0);
    }
    let Some(log) = log else {
        tracing::warn!(
            "this folder was restored from a backup, but without a broker there is no event \
             log to re-drive the orders taken after the backup from"
        );
        std::fs::remove_file(&marker).context("removing the re-drive marker")?;
        return Ok(0);
    };
    // The log from a little before the backup was taken (the clocks of the
    // backup's host and the broker may differ); all of it if the marker
    // does not say when.
    let taken_at = std::fs::read_to_string(&marker).unwrap_or_default();
    let since = time::OffsetDateTime::parse(
        taken_at.trim(),
        &time::format_description::well_known::Rfc3339,
    )
    .ok()
    .and_then(|t| u64::try_from(t.unix_timestamp()).ok())
    .map(|secs| secs.saturating_sub(SKEW.as_secs()));
    let known = read_orders(log, since).await?;
    let ids: Vec<i64> = known.keys().copied().collect();
    let (lost, kept) = sagas.lost_after_restore(ids).await?;
    let mut redriven = 0;
    for id in kept {
        let cancelled = known
            .get(&id)
            .is_some_and(|k| k.last.1.status == OrderStatus::Cancelled);
        if cancelled {
            let id = crate::domain::SagaId::new(id).map_err(|e| anyhow::anyhow!("{e}"))?;
            if sagas.cancel_after_restore(id).await? {
                redriven += 1;
                tracing::warn!(
                    order = id.get(),
                    "cancelling again an order cancelled after the backup"
                );
            }
        }
    }
    for id in lost {
        let Some(k) = known.get(&id) else { continue };
        let order = &k.first.1;
        let details = OrderDetails {
            order_id: order.order_id,
            customer_id: order.customer_id,
            food_id: order.food_catalog_id,
            qty: order.qty,
            amount: order.amount_cents,
        };
        let cancel = k.last.1.status == OrderStatus::Cancelled;
        if sagas.recreate(details, admit_within, cancel).await? {
            redriven += 1;
            tracing::warn!(
                order = id,
                last_known = k.last.1.status.as_str(),
                version = k.last.0,
                "re-driving an order taken after the backup this folder was restored from"
            );
        }
    }
    std::fs::remove_file(&marker).context("removing the re-drive marker")?;
    Ok(redriven)
}

/// Every order event the log holds, by order id: the first and the last
/// (by version). Read from `since` (seconds; the first retained entry if
/// `None`) up to a marker appended now.
async fn read_orders(
    log: &dyn EventLog,
    since: Option<u64>,
) -> anyhow::Result<BTreeMap<i64, Known>> {
    let until = format!("redrive.{:032x}", rand::random::<u128>());
    // The broker may be coming back: asked again for a minute.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while let Err(e) = log.append_marker(&until).await {
        if tokio::time::Instant::now() > deadline {
            return Err(e).context("appending to the event log");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let from = match since {
        Some(secs) => log
            .entry_from(LogFrom::Time(secs))
            .await
            .context("finding where the log was when the backup was taken")?
            .map_or(0, |(offset, _)| offset),
        None => 0,
    };
    let mut deliveries = log.read(Arc::new(AtomicI64::new(from)));
    let mut known: BTreeMap<i64, Known> = BTreeMap::new();
    loop {
        let d = tokio::time::timeout(Duration::from_secs(30), deliveries.next())
            .await
            .context("reading the event log: no entry for 30 s")?
            .context("the event log ended")?;
        let kind = d.message_type.clone().unwrap_or_default();
        let id = d.message_id.clone().unwrap_or_default();
        let body = d.body.clone();
        let _ = d.ack().await;
        if kind == MARKER_TYPE {
            if id == until {
                return Ok(known);
            }
            continue;
        }
        let events: Vec<Vec<u8>> = if kind == BATCH_TYPE {
            match event_log::decode(&body) {
                Ok(entries) => entries.into_iter().map(|e| e.body).collect(),
                Err(_) => continue,
            }
        } else {
            vec![body]
        };
        for body in events {
            let Ok(event) = DomainEvent::decode(&body) else {
                continue;
            };
            let Payload::Order(order) = event.payload else {
                continue;
            };
            let at = (event.version, order);
            match known.get_mut(&at.1.order_id.get()) {
                None => {
                    known.insert(
                        at.1.order_id.get(),
                        Known {
                            first: at.clone(),
                            last: at,
                        },
                    );
                }
                Some(k) => {
                    if at.0 < k.first.0 {
                        k.first = at.clone();
                    }
                    if at.0 > k.last.0 {
                        k.last = at;
                    }
                }
            }
        }
    }
}
