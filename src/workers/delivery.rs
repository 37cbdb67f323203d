//! The delivery worker: dispatches an order to the delivery team, which picks
//! it up (the step is then done) and later delivers it.
//!
//! Owns `delivery.db`: table `deliveries`, one row per order (its id is the
//! order id).

use rusqlite::{Connection, Row, params};
use serde::{Deserialize, Serialize};

use super::records::{Snapshot, Table, emit, parsed, record_table};
use super::{Applied, Effect, WorkerLogic};
use crate::config::Mode;
use crate::domain::{CustomerId, DeliveryStatus, Millis, OrderId};
use crate::events::{DeliveryData, Payload};
use crate::messages::{OrderDetails, Progress, ReplyOutcome};

pub struct DeliveryWorker {
    pub mode: Mode,
}

pub const SCHEMA: &str = record_table!(
    "deliveries",
    "    customer_id   INTEGER NOT NULL,
    status        TEXT    NOT NULL,
    picked_up_at  INTEGER,
    delivered_at  INTEGER,
"
);

/// The delivery of an order: its id is its order's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    pub order_id: OrderId,
    pub customer_id: CustomerId,
    pub status: DeliveryStatus,
    pub picked_up_at: Option<Millis>,
    pub delivered_at: Option<Millis>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

impl Delivery {
    pub fn picked_up(&self) -> bool {
        self.picked_up_at.is_some()
    }
}

/// The `deliveries` table.
pub(crate) const DELIVERIES: Table<Delivery> = Table {
    name: "deliveries",
    per_customer: true,
    columns: "id, customer_id, status, picked_up_at, delivered_at, created_at, updated_at",
    row: delivery,
    key: std::marker::PhantomData,
};

/// Status and whether it was picked up.
fn state_of(tx: &Connection, order: OrderId) -> rusqlite::Result<Option<(DeliveryStatus, bool)>> {
    Ok(DELIVERIES
        .get(tx, order)?
        .map(|d| (d.status, d.picked_up())))
}

impl WorkerLogic for DeliveryWorker {
    fn reached(&self) -> &'static str {
        "dispatch"
    }

    fn forward(&self, tx: &Connection, order: &OrderDetails, now: Millis) -> Effect {
        let id = order.order_id;
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
        tx.prepare_cached(
            "INSERT INTO deliveries (id, customer_id, status, picked_up_at, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
        )?
        .execute(params![
            id.get(),
            order.customer_id.get(),
            DeliveryStatus::Dispatched.as_str(),
            picked_up,
            now.0
        ])?;
        publish(tx, id, "dispatched")?;
        Ok(Applied::Final(match picked_up {
            // Dispatched and picked up in one go (auto mode): one reply.
            Some(_) => vec![ReplyOutcome::Done],
            None => vec![ReplyOutcome::Accepted],
        }))
    }

    fn compensate(&self, tx: &Connection, order: &OrderDetails, now: Millis) -> Effect {
        let id = order.order_id;
        match state_of(tx, id)? {
            None => return Ok(Applied::NoRecord),
            Some((DeliveryStatus::Dispatched, _)) => {
                DELIVERIES.set_status(tx, id, DeliveryStatus::Cancelled.as_str(), now)?;
                publish(tx, id, "cancelled")?;
            }
            Some((DeliveryStatus::Delivered, _)) => {
                // Not recorded: an operator may sort it out and retry.
                return Ok(Applied::Transient(ReplyOutcome::CompensationFailed {
                    reason: "the order was already delivered".into(),
                }));
            }
            Some((DeliveryStatus::Cancelled, _)) => {}
        }
        Ok(Applied::Final(vec![ReplyOutcome::Compensated]))
    }

    fn progress(&self, tx: &Connection, order: OrderId, progress: Progress, now: Millis) -> Effect {
        match (progress, state_of(tx, order)?) {
            (Progress::PickedUp, Some((DeliveryStatus::Dispatched, false))) => {
                tx.prepare_cached(
                    "UPDATE deliveries SET picked_up_at = ?2, updated_at = ?2, version = version + 1 WHERE id = ?1")?.execute(
                    params![order.get(), now.0],
                )?;
                publish(tx, order, "pickedUp")?;
                Ok(Applied::Final(vec![ReplyOutcome::Done]))
            }
            (Progress::Delivered, Some((DeliveryStatus::Dispatched, true))) => {
                tx.prepare_cached(
                    "UPDATE deliveries SET status = ?2, delivered_at = ?3, updated_at = ?3, version = version + 1 WHERE id = ?1")?.execute(
                    params![order.get(), DeliveryStatus::Delivered.as_str(), now.0],
                )?;
                publish(tx, order, "delivered")?;
                Ok(Applied::Final(vec![ReplyOutcome::Delivered]))
            }
            (p, s) => Ok(Applied::Ignored(format!(
                "delivery {order} cannot take `{}` in state {s:?}",
                p.as_str()
            ))),
        }
    }
}

/// Emits the delivery's current state as `delivery.<what>`.
fn publish(tx: &Connection, id: OrderId, what: &str) -> rusqlite::Result<()> {
    let event = DELIVERIES.snapshot(tx, id)?.map(|mut e| {
        e.event_type = format!("delivery.{what}");
        e
    });
    emit(tx, event)
}

impl Snapshot for Delivery {
    fn payload(&self) -> Payload {
        Payload::Delivery(DeliveryData {
            order_id: self.order_id,
            customer_id: self.customer_id,
            status: self.status,
            picked_up: self.picked_up(),
        })
    }

    fn what(&self) -> String {
        match (self.status, self.picked_up()) {
            (DeliveryStatus::Dispatched, true) => "pickedUp".to_owned(),
            (s, _) => s.as_str().to_ascii_lowercase(),
        }
    }
}

fn delivery(r: &Row<'_>) -> rusqlite::Result<Delivery> {
    Ok(Delivery {
        order_id: parsed(OrderId::new(r.get(0)?))?,
        customer_id: parsed(CustomerId::new(r.get(1)?))?,
        status: parsed(r.get::<_, String>(2)?.parse())?,
        picked_up_at: r.get::<_, Option<i64>>(3)?.map(Millis),
        delivered_at: r.get::<_, Option<i64>>(4)?.map(Millis),
        created_at: Millis(r.get(5)?),
        updated_at: Millis(r.get(6)?),
    })
}
