//! Read models (CQRS): each is fed only by domain events, from its own queue,
//! into its own SQLite file, and answers one family of queries.
//!
//! - [`my_orders`] (`views-my-orders.db`): per order, the order's and every
//!   worker's status — `/myOrders`.
//! - [`catalog`] (`views-catalog.db`): the food catalog's stock —
//!   `/foodCatalogViews`.
//! - [`reviews`] (`views-reviews.db`): count, average rating and latest
//!   reviews per product — `/reviewViews`.
//!
//! Projections are idempotent and tolerate redelivered, duplicated and
//! reordered events: every event carries its entity's version, and a
//! projection only applies what is newer than what it has. `hearty views
//! rebuild` recomputes every read model from the write side's current state
//! (read-only) in one transaction per read model.

pub mod catalog;
pub mod my_orders;
pub mod reviews;

use std::sync::Arc;

use rusqlite::Connection;

use crate::config::Config;
use crate::domain::ViewKind;
use crate::events::DomainEvent;
use crate::metrics::{METRICS, inc};
use crate::shutdown::Shutdown;
use crate::storage::{Db, StorageError, StorageResult};
use crate::transport::consume::consume_each;
use crate::transport::event_log::{self, Logged};
use crate::transport::poison::{FailureCounts, dead_letter, hand_back_or_dead_letter};
use crate::transport::{DeadLetter, EventLog, QueueName, Received, Transport, TransportError};

/// Where a read model is in the event log (RabbitMQ): the offset of the
/// next event to read, committed with the events applied before it.
const POSITION_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS log_position (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    next_offset INTEGER NOT NULL
);";

/// The schema of a read model's database.
pub fn schema(kind: ViewKind) -> String {
    let own = match kind {
        ViewKind::MyOrders => my_orders::SCHEMA,
        ViewKind::Catalog => catalog::SCHEMA,
        ViewKind::Reviews => reviews::SCHEMA,
    };
    format!("{own}\n{POSITION_SCHEMA}")
}

/// Applies one event to a read model (inside the caller's transaction).
pub fn apply(kind: ViewKind, tx: &Connection, event: &DomainEvent) -> rusqlite::Result<()> {
    match kind {
        ViewKind::MyOrders => my_orders::apply(tx, event),
        ViewKind::Catalog => catalog::apply(tx, event),
        ViewKind::Reviews => reviews::apply(tx, event),
    }
}

/// Opens a read model's database.
pub fn open(config: &Config, kind: ViewKind) -> StorageResult<Db> {
    Db::open(
        &config.db_path(&format!("views-{}", kind.as_str())),
        &schema(kind),
    )
}

/// Consumes a read model's queue until shutdown: decode, apply, then ack.
pub async fn consume(
    kind: ViewKind,
    db: Db,
    transport: Arc<dyn Transport>,
    shutdown: Shutdown,
) -> Result<(), TransportError> {
    consume_each(transport, QueueName::View(kind), shutdown, |d, f| {
        project(kind, db.clone(), d, f)
    })
    .await
}

async fn project(kind: ViewKind, db: Db, delivery: Received, failures: Arc<FailureCounts>) {
    let event = match DomainEvent::decode(&delivery.body) {
        Ok(e) => e,
        Err(reason) => {
            // A malformed or unknown event is never defaulted into a read
            // model: it goes to the dead-letter queue with the reason.
            dead_letter(delivery, &reason).await;
            return;
        }
    };
    let id = event.id();
    let applied = db
        .write(move |tx| apply(kind, tx, &event).map_err(StorageError::from))
        .await;
    match applied {
        Ok(()) => {
            failures.forget(&id);
            inc(&METRICS.events_projected_total);
            let _ = delivery.ack().await;
        }
        Err(e) => {
            tracing::warn!(view = kind.as_str(), error = %e, "event not projected");
            hand_back_or_dead_letter(delivery, &failures, &id, &e.to_string()).await;
        }
    }
}

/// Whether a read model projects events of this type.
fn binds(kind: ViewKind, event_type: &str) -> bool {
    kind.bindings()
        .iter()
        .any(|p| crate::transport::topic_matches(p, event_type))
}

/// How often a read model without events records its position.
const POSITION_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Most events applied in one transaction.
const LOG_BATCH: usize = 256;

/// Where a read model stands in the log: the offset of its next event.
async fn log_position(db: &Db) -> i64 {
    loop {
        let read = db
            .read(|c| {
                Ok(crate::storage::optional(c.query_row(
                    "SELECT next_offset FROM log_position WHERE id = 1",
                    [],
                    |r| r.get::<_, i64>(0),
                ))?)
            })
            .await;
        match read {
            Ok(v) => return v.unwrap_or(0),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a read model's log position");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}

/// Applies `events` to a read model and moves its position to `next`, in
/// one transaction; retried (never skipped) until it commits, since the
/// log keeps the order.
async fn commit_batch(kind: ViewKind, db: &Db, events: Vec<DomainEvent>, next: i64) {
    let events = Arc::new(events);
    loop {
        let evs = events.clone();
        let committed = db
            .write(move |tx| {
                for e in evs.iter() {
                    apply(kind, tx, e)?;
                }
                tx.execute(
                    "INSERT INTO log_position (id, next_offset) VALUES (1, ?1)
                     ON CONFLICT (id) DO UPDATE SET next_offset = excluded.next_offset",
                    [next],
                )?;
                Ok(())
            })
            .await;
        match committed {
            Ok(()) => {
                for _ in events.iter() {
                    inc(&METRICS.events_projected_total);
                }
                return;
            }
            Err(e) => {
                tracing::warn!(view = kind.as_str(), error = %e, "events not projected; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    }
}

/// Reads the event log (a RabbitMQ stream) into this process's read models
/// until shutdown, once for all of them, from the earliest of their
/// positions. Each batch of events is applied to each read model that
/// projects some of them, together with that read model's new position, in
/// one transaction per read model; then the batch is acked. A read model
/// skips what lies before its own position. So a new replica replays the
/// whole log, and a restarted one goes on where each read model committed,
/// applying nothing twice.
///
/// `caught_up` is set once the reader has read back a marker it appended
/// to the log when it started: from then on its read models hold
/// everything logged before the process started (the process is ready).
pub async fn consume_log(
    models: Vec<(ViewKind, Db)>,
    transport: Arc<dyn Transport>,
    mut shutdown: Shutdown,
    caught_up: Arc<std::sync::atomic::AtomicBool>,
) -> Result<(), TransportError> {
    use futures_util::{FutureExt, StreamExt};
    let marker = format!(
        "catch-up.{}.{:016x}",
        std::process::id(),
        rand::random::<u64>()
    );
    let Some(log) = transport.event_log() else {
        return Err(TransportError::Unavailable(
            "this transport keeps no event log".into(),
        ));
    };
    {
        let (transport, marker) = (transport.clone(), marker.clone());
        actix::spawn(async move {
            let Some(log) = transport.event_log() else {
                return;
            };
            // Until the broker confirms it (it may be reconnecting).
            let mut failures = 0u32;
            while let Err(e) = log.append_marker(&marker).await {
                failures += 1;
                if failures.is_multiple_of(20) {
                    tracing::warn!(error = %e, failures, "cannot append the catch-up marker; not ready until it is");
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        });
    }
    let mut positions = Vec::new();
    for (kind, db) in &models {
        positions.push((*kind, db.clone(), log_position(db).await));
    }
    let start = positions.iter().map(|(_, _, p)| *p).min().unwrap_or(0);
    let next = Arc::new(std::sync::atomic::AtomicI64::new(start));
    let mut saved_at: Vec<std::time::Instant> = positions
        .iter()
        .map(|_| std::time::Instant::now())
        .collect();
    let mut deliveries = log.read(next.clone());
    loop {
        let first = tokio::select! {
            _ = shutdown.recv() => return Ok(()),
            d = deliveries.next() => match d {
                Some(d) => d,
                None => return Ok(()),
            },
        };
        let mut batch = vec![first];
        while batch.len() < LOG_BATCH {
            match deliveries.next().now_or_never() {
                Some(Some(d)) => batch.push(d),
                _ => break,
            }
        }
        let mut per_model: Vec<Vec<DomainEvent>> = positions.iter().map(|_| Vec::new()).collect();
        let mut settled = Vec::new();
        let mut last = None;
        let mut marker_read = false;
        for d in batch {
            let Some(offset) = d.stream_offset else {
                settled.push(d);
                continue;
            };
            // This reader's own marker counts wherever it is: a log behind
            // the read models' positions (recreated under them) must not
            // keep the process from ever being ready.
            if d.message_type.as_deref() == Some(event_log::MARKER_TYPE)
                && d.message_id.as_deref() == Some(marker.as_str())
            {
                marker_read = true;
                if offset < next.load(std::sync::atomic::Ordering::SeqCst) {
                    tracing::warn!(
                        offset,
                        "the event log ends before this process's read models' positions: \
                         was it recreated? (start on new folders to rebuild them)"
                    );
                }
            }
            // Read again after a reconnection: already handled.
            if offset < next.load(std::sync::atomic::Ordering::SeqCst) {
                settled.push(d);
                continue;
            }
            last = Some(offset);
            if d.message_type.as_deref() == Some(event_log::MARKER_TYPE) {
                settled.push(d);
                continue;
            }
            let entries = match log_entries(&d) {
                Ok(entries) => entries,
                // The whole entry, copied until the broker confirms it: the
                // position moves past it afterwards.
                Err(reason) => {
                    if !dead_letter_copy(log, as_logged(&d), &reason, &mut shutdown).await {
                        return Ok(());
                    }
                    settled.push(d);
                    continue;
                }
            };
            for entry in entries {
                let wanted: Vec<usize> = positions
                    .iter()
                    .enumerate()
                    .filter(|(_, (kind, _, from))| {
                        offset >= *from && binds(*kind, &entry.message_type)
                    })
                    .map(|(i, _)| i)
                    .collect();
                if wanted.is_empty() {
                    continue;
                }
                match DomainEvent::decode(&entry.body) {
                    Ok(event) => {
                        for i in wanted {
                            per_model[i].push(event.clone());
                        }
                    }
                    // Never defaulted into a read model: a copy goes to the
                    // dead-letter queue with the reason (the log keeps it).
                    Err(reason) => {
                        if !dead_letter_copy(log, entry, &reason, &mut shutdown).await {
                            return Ok(());
                        }
                    }
                }
            }
            settled.push(d);
        }
        // Ready only once the events before the marker are committed.
        let mark_ready = |read: bool| {
            if read && !caught_up.swap(true, std::sync::atomic::Ordering::SeqCst) {
                tracing::info!("read models caught up with the event log");
            }
        };
        let Some(last) = last else {
            ack_batch(settled).await;
            mark_ready(marker_read);
            continue;
        };
        for (((kind, db, from), events), saved) in
            positions.iter_mut().zip(per_model).zip(saved_at.iter_mut())
        {
            // A read model with nothing in the batch still records where it
            // is now and then, so a restart does not replay the log for it.
            if !events.is_empty() || (saved.elapsed() > POSITION_EVERY && last + 1 > *from) {
                commit_batch(*kind, db, events, last + 1).await;
                *from = last + 1;
                *saved = std::time::Instant::now();
            }
        }
        next.store(last + 1, std::sync::atomic::Ordering::SeqCst);
        mark_ready(marker_read);
        ack_batch(settled).await;
    }
}

/// The events of one entry of the log: a batch, or (written before
/// batches) one event with its properties on the message.
fn log_entries(d: &Received) -> Result<Vec<Logged>, String> {
    if d.message_type.as_deref() == Some(event_log::BATCH_TYPE) {
        return event_log::decode(&d.body);
    }
    Ok(vec![as_logged(d)])
}

/// An entry of the log taken whole, with its message's properties.
fn as_logged(d: &Received) -> Logged {
    Logged {
        message_id: d.message_id.clone().unwrap_or_default(),
        correlation_id: d.correlation_id.clone().unwrap_or_default(),
        message_type: d.message_type.clone().unwrap_or_default(),
        body: d.body.clone(),
    }
}

/// Puts a copy of one event of the log, with its reason, in the
/// dead-letter queue; tried again until the broker confirms it, since the
/// reader's position moves past it afterwards. `false`: shut down first.
async fn dead_letter_copy(
    log: &dyn EventLog,
    entry: Logged,
    reason: &str,
    shutdown: &mut Shutdown,
) -> bool {
    inc(&METRICS.dead_letters_total);
    tracing::warn!(msg = %entry.message_id, reason, "dead-lettering an event of the log");
    let letter = DeadLetter {
        message_id: Some(entry.message_id),
        correlation_id: Some(entry.correlation_id),
        message_type: Some(entry.message_type),
        body: entry.body,
        reason: reason.to_owned(),
    };
    loop {
        match log.dead_letter(letter.clone()).await {
            Ok(()) => return true,
            Err(e) => {
                tracing::warn!(error = %e, "cannot dead-letter an event of the log; trying again");
                tokio::select! {
                    _ = shutdown.recv() => return false,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

/// Acks a batch of one consumer in one frame (the last, `multiple`).
async fn ack_batch(mut settled: Vec<Received>) {
    if let Some(last) = settled.pop() {
        for d in settled {
            d.covered();
        }
        let _ = last.ack_through().await;
    }
}

/// Recomputes every read model from the write side's current state: each
/// source row becomes a snapshot event, applied to an emptied read model in
/// one transaction. Sources are only read.
pub async fn rebuild(config: &Config) -> anyhow::Result<Vec<(ViewKind, usize)>> {
    use crate::workers::{coupon, delivery, kitchen, pay};
    let open_source = |name: &str| -> anyhow::Result<rusqlite::Connection> {
        let path = config.db_path(name);
        anyhow::ensure!(path.exists(), "no {} to rebuild from", path.display());
        Ok(rusqlite::Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?)
    };
    let mut events: Vec<DomainEvent> = Vec::new();
    {
        let orch = open_source("orchestrator")?;
        events.extend(crate::orchestrator::store::order_snapshots(&orch)?);
        events.extend(crate::orchestrator::store::review_snapshots(&orch)?);
        let ids = crate::orchestrator::store::order_ids(&orch)?;
        let (p, k, d, c) = (
            open_source("pay")?,
            open_source("kitchen")?,
            open_source("delivery")?,
            open_source("coupon")?,
        );
        for id in ids {
            events.extend(pay::snapshot(&p, id)?);
            events.extend(kitchen::ticket_snapshot(&k, id)?);
            events.extend(delivery::snapshot(&d, id)?);
            events.extend(coupon::snapshot(&c, id)?);
        }
        for food in kitchen::list_foods(
            &k,
            crate::storage::Page {
                limit: i64::MAX,
                offset: 0,
            },
        )? {
            events.extend(kitchen::food_snapshot(&k, food.id)?);
        }
    }
    let events = Arc::new(events);
    let mut counts = Vec::new();
    for kind in ViewKind::ALL {
        let db = open(config, kind)?;
        let evs = events.clone();
        let n = db
            .write(move |tx| {
                clear(kind, tx)?;
                let mut n = 0;
                for e in evs.iter() {
                    if kind
                        .bindings()
                        .iter()
                        .any(|p| crate::transport::topic_matches(p, &e.event_type))
                    {
                        apply(kind, tx, e)?;
                        n += 1;
                    }
                }
                Ok(n)
            })
            .await?;
        db.close();
        counts.push((kind, n));
    }
    Ok(counts)
}

fn clear(kind: ViewKind, tx: &Connection) -> rusqlite::Result<()> {
    let tables: &[&str] = match kind {
        ViewKind::MyOrders => &["my_orders", "foods"],
        ViewKind::Catalog => &["food_views"],
        ViewKind::Reviews => &["review_views", "applied_reviews"],
    };
    for t in tables {
        tx.execute(&format!("DELETE FROM {t}"), [])?;
    }
    Ok(())
}
