//! The pay worker: authorizes `qty × price` and refunds it.
//!
//! Owns `pay.db`: table `pays`, one row per order (its id is the order id).

use rusqlite::{Connection, Row, params};
use serde::Serialize;

use super::{Applied, WorkerLogic, order_id_of};
use crate::domain::{CustomerId, Millis, Money, OrderId, PayStatus, WorkerKind};
use crate::events::{DomainEvent, PayData, Payload};
use crate::messages::{Direction, ReplyOutcome, WorkerCommand};
use crate::storage::{Page, inbox, optional};

pub struct PayWorker {
    /// Payments above this amount are declined.
    pub decline_above: Money,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS pays (
    id           INTEGER PRIMARY KEY,
    customer_id  INTEGER NOT NULL,
    amount_cents INTEGER NOT NULL,
    status       TEXT    NOT NULL,
    reason       TEXT,
    version      INTEGER NOT NULL DEFAULT 1,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);
";

/// A payment as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PayRecord {
    pub id: OrderId,
    pub order_id: OrderId,
    pub customer_id: CustomerId,
    /// The decimal the seed shows (`40.0`).
    #[serde(serialize_with = "Money::serialize_decimal")]
    #[schema(value_type = f64)]
    pub amount: Money,
    /// The same amount in whole cents.
    pub amount_cents: Money,
    pub status: PayStatus,
    pub reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

fn status_of(tx: &Connection, order: OrderId) -> rusqlite::Result<Option<PayStatus>> {
    let raw: Option<String> = optional(tx.query_row(
        "SELECT status FROM pays WHERE id = ?1",
        [order.get()],
        |r| r.get(0),
    ))?;
    Ok(raw.and_then(|s| s.parse().ok()))
}

impl WorkerLogic for PayWorker {
    fn kind(&self) -> WorkerKind {
        WorkerKind::Pay
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
        let WorkerCommand::Step {
            direction, order, ..
        } = cmd
        else {
            return Ok(Applied::Ignored("the pay worker takes no progress".into()));
        };
        let id = order.order_id;
        let existing = status_of(tx, id)?;
        match direction {
            Direction::Do => {
                if inbox::is_buried(tx, id)? || existing == Some(PayStatus::Refunded) {
                    return Ok(Applied::Final(vec![ReplyOutcome::Failed {
                        reason: "the order was cancelled before payment".into(),
                    }]));
                }
                match existing {
                    Some(PayStatus::Approved) => {
                        return Ok(Applied::Final(vec![ReplyOutcome::Done]));
                    }
                    Some(PayStatus::Declined) => {
                        return Ok(Applied::Final(vec![ReplyOutcome::Failed {
                            reason: "payment declined".into(),
                        }]));
                    }
                    _ => {}
                }
                let (status, reason) = if order.amount > self.decline_above {
                    (
                        PayStatus::Declined,
                        Some(format!(
                            "payment declined: amount {} is above the limit of {}",
                            order.amount, self.decline_above
                        )),
                    )
                } else {
                    (PayStatus::Approved, None)
                };
                tx.execute(
                    "INSERT INTO pays (id, customer_id, amount_cents, status, reason, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
                    params![id.get(), order.customer_id.get(), order.amount.cents(), status.as_str(), reason, now.0],
                )?;
                publish(tx, id)?;
                Ok(Applied::Final(vec![match reason {
                    None => ReplyOutcome::Done,
                    Some(reason) => ReplyOutcome::Failed { reason },
                }]))
            }
            Direction::Undo => {
                match existing {
                    Some(PayStatus::Approved) => {
                        tx.execute(
                            "UPDATE pays SET status = ?2, updated_at = ?3, version = version + 1 WHERE id = ?1",
                            params![id.get(), PayStatus::Refunded.as_str(), now.0],
                        )?;
                        publish(tx, id)?;
                    }
                    Some(_) => {}
                    None => inbox::bury(tx, id)?,
                }
                Ok(Applied::Final(vec![ReplyOutcome::Compensated]))
            }
        }
    }
}

/// Emits the payment's current state as a domain event (`pay.approved`, ...).
fn publish(tx: &Connection, id: OrderId) -> rusqlite::Result<()> {
    super::emit(tx, snapshot(tx, id)?)
}

/// The payment of an order as a domain event (also used to rebuild views).
pub fn snapshot(c: &Connection, id: OrderId) -> rusqlite::Result<Option<DomainEvent>> {
    super::record_event(c, "pays", id.get(), get(c, id)?, |r| {
        r.status.as_str().to_ascii_lowercase()
    })
}

impl super::Snapshot for PayRecord {
    fn payload(&self) -> Payload {
        Payload::Pay(PayData {
            order_id: self.order_id,
            customer_id: self.customer_id,
            amount_cents: self.amount_cents,
            status: self.status,
            reason: self.reason.clone(),
        })
    }
}

fn record(r: &Row<'_>) -> rusqlite::Result<PayRecord> {
    let id = order_id_of(r.get(0)?)?;
    let status: String = r.get(3)?;
    Ok(PayRecord {
        id,
        order_id: id,
        customer_id: super::parsed(CustomerId::new(r.get(1)?))?,
        amount: Money::from_cents(r.get(2)?),
        amount_cents: Money::from_cents(r.get(2)?),
        status: status.parse().unwrap_or(PayStatus::Declined),
        reason: r.get(4)?,
        created_at: Millis(r.get(5)?).to_rfc3339(),
        updated_at: Millis(r.get(6)?).to_rfc3339(),
    })
}

const COLUMNS: &str = "id, customer_id, amount_cents, status, reason, created_at, updated_at";

pub fn list(
    c: &Connection,
    page: Page,
    order: Option<OrderId>,
) -> rusqlite::Result<Vec<PayRecord>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM pays WHERE (?1 IS NULL OR id = ?1) ORDER BY id LIMIT ?2 OFFSET ?3"
    ))?;
    stmt.query_map(
        params![order.map(OrderId::get), page.limit, page.offset],
        record,
    )?
    .collect()
}

pub fn get(c: &Connection, id: OrderId) -> rusqlite::Result<Option<PayRecord>> {
    optional(c.query_row(
        &format!("SELECT {COLUMNS} FROM pays WHERE id = ?1"),
        [id.get()],
        record,
    ))
}
