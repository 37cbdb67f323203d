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
mod log_reader;
pub mod my_orders;
pub mod reviews;
pub mod snapshot;

pub use log_reader::consume_log;

use std::sync::Arc;

use rusqlite::Connection;

use crate::config::Config;
use crate::domain::ViewKind;
use crate::events::DomainEvent;
use crate::metrics::{METRICS, inc};
use crate::shutdown::Shutdown;
use crate::storage::{Db, StorageError, StorageResult};
use crate::transport::consume::consume_each;
use crate::transport::poison::{FailureCounts, dead_letter, hand_back_or_dead_letter};
use crate::transport::{QueueName, Received, Transport, TransportError};

/// Where a read model is in the event log (RabbitMQ): the offset of the
/// next event to read, committed with the events applied before it.
const POSITION_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS log_position (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    next_offset INTEGER NOT NULL
);
-- The last entry of the log read when the position was recorded: which
-- log the position is in (a log deleted and declared again starts its
-- offsets over; its entry there has another id).
CREATE TABLE IF NOT EXISTS log_anchor (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    log_offset INTEGER NOT NULL,
    message_id TEXT    NOT NULL
);";

/// An entry of the event log by offset and message id.
pub type Anchor = (i64, String);

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
async fn commit_batch(
    kind: ViewKind,
    db: &Db,
    events: Vec<DomainEvent>,
    next: i64,
    anchor: Option<Anchor>,
) {
    let events = Arc::new(events);
    loop {
        let evs = events.clone();
        let anchor = anchor.clone();
        let committed = db
            .write(move |tx| {
                for e in evs.iter() {
                    apply(kind, tx, e)?;
                }
                tx.prepare_cached(
                    "INSERT INTO log_position (id, next_offset) VALUES (1, ?1)
                     ON CONFLICT (id) DO UPDATE SET next_offset = excluded.next_offset",
                )?
                .execute([next])?;
                if let Some((offset, id)) = &anchor {
                    tx.prepare_cached(
                        "INSERT INTO log_anchor (id, log_offset, message_id) VALUES (1, ?1, ?2)
                         ON CONFLICT (id) DO UPDATE SET log_offset = excluded.log_offset,
                                                        message_id = excluded.message_id",
                    )?
                    .execute(rusqlite::params![offset, id])?;
                }
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

/// Recomputes every read model from the write side's current state: each
/// source row becomes a snapshot event, applied to an emptied read model in
/// one transaction. Sources are only read.
pub async fn rebuild(config: &Config) -> anyhow::Result<Vec<(ViewKind, usize)>> {
    use crate::orchestrator::store::{reviews, sagas};
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
        events.extend(sagas::order_snapshots(&orch)?);
        events.extend(reviews::snapshots(&orch)?);
        let ids = sagas::order_ids(&orch)?;
        let (p, k, d, c) = (
            open_source("pay")?,
            open_source("kitchen")?,
            open_source("delivery")?,
            open_source("coupon")?,
        );
        for id in ids {
            events.extend(pay::PAYS.snapshot(&p, id)?);
            events.extend(kitchen::TICKETS.snapshot(&k, id)?);
            events.extend(delivery::DELIVERIES.snapshot(&d, id)?);
            events.extend(coupon::COUPONS.snapshot(&c, id)?);
        }
        let every = crate::storage::Page {
            limit: i64::MAX,
            offset: 0,
        };
        for food in kitchen::FOODS.list(&k, every, None, None)? {
            events.extend(kitchen::FOODS.snapshot(&k, food.id)?);
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
