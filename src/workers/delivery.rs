//! The delivery worker: dispatches an order to the delivery team, which picks
//! it up (the step is then done) and later delivers it.
//!
//! Owns `delivery.db`: table `deliveries`, one row per order (its id is the
//! order id).

use rusqlite::{Connection, Row, params};
use serde::Serialize;

use super::{Applied, WorkerLogic, order_id_of};
use crate::config::Mode;
use crate::domain::{CustomerId, DeliveryStatus, Millis, OrderId, WorkerKind};
use crate::events::{DeliveryData, DomainEvent, Payload};
use crate::messages::{Direction, Progress, ReplyOutcome, WorkerCommand};
use crate::storage::{Page, inbox, optional};

pub struct DeliveryWorker {
    pub mode: Mode,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS deliveries (
    id            INTEGER PRIMARY KEY,
    customer_id   INTEGER NOT NULL,
    status        TEXT    NOT NULL,
    picked_up_at  INTEGER,
    delivered_at  INTEGER,
    version       INTEGER NOT NULL DEFAULT 1,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
";

/// A delivery as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryRecord {
    pub id: OrderId,
    pub order_id: OrderId,
    pub customer_id: CustomerId,
    pub status: DeliveryStatus,
    pub picked_up: bool,
    pub picked_up_at: Option<String>,
    pub delivered_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// Status and whether it was picked up.
fn state_of(tx: &Connection, order: OrderId) -> rusqlite::Result<Option<(DeliveryStatus, bool)>> {
    let raw: Option<(String, Option<i64>)> = optional(tx.query_row(
        "SELECT status, picked_up_at FROM deliveries WHERE id = ?1",
        [order.get()],
        |r| Ok((r.get(0)?, r.get(1)?)),
    ))?;
    Ok(raw.and_then(|(s, p)| s.parse().ok().map(|s| (s, p.is_some()))))
}

impl WorkerLogic for DeliveryWorker {
    fn kind(&self) -> WorkerKind {
        WorkerKind::Delivery
    }

    fn schema(&self) -> &'static str {
        SCHEMA
    }

    fn apply(
        &self,
        tx: &Connection,
        cmd: &WorkerCommand,
        now: Millis,
    ) -> rusqlite::Result<Applied> {
        match cmd {
            WorkerCommand::Step {
                direction: Direction::Do,
                order,
                ..
            } => {
                let id = order.order_id;
                if inbox::is_buried(tx, id)? {
                    return Ok(Applied::Final(vec![ReplyOutcome::Failed {
                        reason: "the order was cancelled before dispatch".into(),
                    }]));
                }
                match state_of(tx, id)? {
                    Some((DeliveryStatus::Cancelled, _)) => {
                        return Ok(Applied::Final(vec![ReplyOutcome::Failed {
                            reason: "the delivery is cancelled".into(),
                        }]));
                    }
                    Some((_, true)) => return Ok(Applied::Final(vec![ReplyOutcome::Done])),
                    Some((_, false)) => return Ok(Applied::Final(vec![ReplyOutcome::Accepted])),
                    None => {}
                }
                let picked_up = (self.mode == Mode::Auto).then_some(now.0);
                tx.execute(
                    "INSERT INTO deliveries (id, customer_id, status, picked_up_at, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                    params![id.get(), order.customer_id.get(), DeliveryStatus::Dispatched.as_str(), picked_up, now.0],
                )?;
                publish(tx, id, "dispatched")?;
                Ok(Applied::Final(match picked_up {
                    // Dispatched and picked up in one go (auto mode): one reply.
                    Some(_) => vec![ReplyOutcome::Done],
                    None => vec![ReplyOutcome::Accepted],
                }))
            }
            WorkerCommand::Step {
                direction: Direction::Undo,
                order,
                ..
            } => {
                let id = order.order_id;
                match state_of(tx, id)? {
                    Some((DeliveryStatus::Dispatched, _)) => {
                        tx.execute(
                            "UPDATE deliveries SET status = ?2, updated_at = ?3, version = version + 1 WHERE id = ?1",
                            params![id.get(), DeliveryStatus::Cancelled.as_str(), now.0],
                        )?;
                        publish(tx, id, "cancelled")?;
                    }
                    Some((DeliveryStatus::Delivered, _)) => {
                        // Not recorded: an operator may sort it out and retry.
                        return Ok(Applied::Transient(ReplyOutcome::CompensationFailed {
                            reason: "the order was already delivered".into(),
                        }));
                    }
                    Some((DeliveryStatus::Cancelled, _)) => {}
                    None => inbox::bury(tx, id)?,
                }
                Ok(Applied::Final(vec![ReplyOutcome::Compensated]))
            }
            WorkerCommand::Progress {
                order_id, progress, ..
            } => {
                let state = state_of(tx, *order_id)?;
                match (progress, state) {
                    (Progress::PickedUp, Some((DeliveryStatus::Dispatched, false))) => {
                        tx.execute(
                            "UPDATE deliveries SET picked_up_at = ?2, updated_at = ?2, version = version + 1 WHERE id = ?1",
                            params![order_id.get(), now.0],
                        )?;
                        publish(tx, *order_id, "pickedUp")?;
                        Ok(Applied::Final(vec![ReplyOutcome::Done]))
                    }
                    (Progress::Delivered, Some((DeliveryStatus::Dispatched, true))) => {
                        tx.execute(
                            "UPDATE deliveries SET status = ?2, delivered_at = ?3, updated_at = ?3, version = version + 1 WHERE id = ?1",
                            params![order_id.get(), DeliveryStatus::Delivered.as_str(), now.0],
                        )?;
                        publish(tx, *order_id, "delivered")?;
                        Ok(Applied::Final(vec![ReplyOutcome::Delivered]))
                    }
                    (p, s) => Ok(Applied::Ignored(format!(
                        "delivery {order_id} cannot take `{}` in state {s:?}",
                        p.as_str()
                    ))),
                }
            }
        }
    }
}

/// Emits the delivery's current state as `delivery.<what>`.
fn publish(tx: &Connection, id: OrderId, what: &str) -> rusqlite::Result<()> {
    let event = snapshot(tx, id)?.map(|mut e| {
        e.event_type = format!("delivery.{what}");
        e
    });
    super::emit(tx, event)
}

/// The delivery of an order as a domain event (also used to rebuild views).
pub fn snapshot(c: &Connection, id: OrderId) -> rusqlite::Result<Option<DomainEvent>> {
    super::record_event(c, "deliveries", id.get(), get(c, id)?, |r| {
        match (r.status, r.picked_up) {
            (DeliveryStatus::Dispatched, true) => "pickedUp".to_owned(),
            (s, _) => s.as_str().to_ascii_lowercase(),
        }
    })
}

impl super::Snapshot for DeliveryRecord {
    fn payload(&self) -> Payload {
        Payload::Delivery(DeliveryData {
            order_id: self.order_id,
            customer_id: self.customer_id,
            status: self.status,
            picked_up: self.picked_up,
        })
    }
}

fn record(r: &Row<'_>) -> rusqlite::Result<DeliveryRecord> {
    let id = order_id_of(r.get(0)?)?;
    let status: String = r.get(2)?;
    let picked: Option<i64> = r.get(3)?;
    let delivered: Option<i64> = r.get(4)?;
    Ok(DeliveryRecord {
        id,
        order_id: id,
        customer_id: super::parsed(CustomerId::new(r.get(1)?))?,
        status: status.parse().unwrap_or(DeliveryStatus::Cancelled),
        picked_up: picked.is_some(),
        picked_up_at: picked.map(|m| Millis(m).to_rfc3339()),
        delivered_at: delivered.map(|m| Millis(m).to_rfc3339()),
        created_at: Millis(r.get(5)?).to_rfc3339(),
        updated_at: Millis(r.get(6)?).to_rfc3339(),
    })
}

const COLUMNS: &str = "id, customer_id, status, picked_up_at, delivered_at, created_at, updated_at";

pub fn list(
    c: &Connection,
    page: Page,
    order: Option<OrderId>,
) -> rusqlite::Result<Vec<DeliveryRecord>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM deliveries WHERE (?1 IS NULL OR id = ?1) ORDER BY id LIMIT ?2 OFFSET ?3"
    ))?;
    stmt.query_map(
        params![order.map(OrderId::get), page.limit, page.offset],
        record,
    )?
    .collect()
}

pub fn get(c: &Connection, id: OrderId) -> rusqlite::Result<Option<DeliveryRecord>> {
    optional(c.query_row(
        &format!("SELECT {COLUMNS} FROM deliveries WHERE id = ?1"),
        [id.get()],
        record,
    ))
}
