//! The coupon worker: issues a coupon to the customer once the order is paid
//! and cooked, and cancels it when the order is cancelled.
//!
//! Owns `coupon.db`: table `coupons`, one row per order (its id is the order
//! id).

use rusqlite::{Connection, Row, params};
use serde::Serialize;

use super::{Applied, WorkerLogic, order_id_of};
use crate::domain::{CouponStatus, CustomerId, Millis, OrderId, WorkerKind};
use crate::events::{CouponData, DomainEvent, Payload};
use crate::messages::{Direction, ReplyOutcome, WorkerCommand};
use crate::storage::{Page, inbox, optional};

pub struct CouponWorker;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS coupons (
    id          INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL,
    code        TEXT    NOT NULL,
    status      TEXT    NOT NULL,
    version     INTEGER NOT NULL DEFAULT 1,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
";

/// A coupon as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CouponRecord {
    pub id: OrderId,
    pub order_id: OrderId,
    pub customer_id: CustomerId,
    pub code: String,
    pub status: CouponStatus,
    pub created_at: String,
    pub updated_at: String,
}

fn status_of(tx: &Connection, order: OrderId) -> rusqlite::Result<Option<CouponStatus>> {
    let raw: Option<String> = optional(tx.query_row(
        "SELECT status FROM coupons WHERE id = ?1",
        [order.get()],
        |r| r.get(0),
    ))?;
    Ok(raw.and_then(|s| s.parse().ok()))
}

impl WorkerLogic for CouponWorker {
    fn kind(&self) -> WorkerKind {
        WorkerKind::Coupon
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
            return Ok(Applied::Ignored(
                "the coupon worker takes no progress".into(),
            ));
        };
        let id = order.order_id;
        match direction {
            Direction::Do => {
                if inbox::is_buried(tx, id)? {
                    return Ok(Applied::Final(vec![ReplyOutcome::Failed {
                        reason: "the order was cancelled before the coupon was issued".into(),
                    }]));
                }
                match status_of(tx, id)? {
                    Some(CouponStatus::Issued) => Ok(Applied::Final(vec![ReplyOutcome::Done])),
                    Some(CouponStatus::Cancelled) => {
                        Ok(Applied::Final(vec![ReplyOutcome::Failed {
                            reason: "the coupon is cancelled".into(),
                        }]))
                    }
                    None => {
                        let code = format!("HEARTY-{:06}-{:04X}", id.get(), rand::random::<u16>());
                        tx.execute(
                            "INSERT INTO coupons (id, customer_id, code, status, created_at, updated_at)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                            params![id.get(), order.customer_id.get(), code, CouponStatus::Issued.as_str(), now.0],
                        )?;
                        publish(tx, id)?;
                        Ok(Applied::Final(vec![ReplyOutcome::Done]))
                    }
                }
            }
            Direction::Undo => {
                match status_of(tx, id)? {
                    Some(CouponStatus::Issued) => {
                        tx.execute(
                            "UPDATE coupons SET status = ?2, updated_at = ?3, version = version + 1 WHERE id = ?1",
                            params![id.get(), CouponStatus::Cancelled.as_str(), now.0],
                        )?;
                        publish(tx, id)?;
                    }
                    Some(CouponStatus::Cancelled) => {}
                    None => inbox::bury(tx, id)?,
                }
                Ok(Applied::Final(vec![ReplyOutcome::Compensated]))
            }
        }
    }
}

/// Emits the coupon's current state as a domain event (`coupon.issued`, ...).
fn publish(tx: &Connection, id: OrderId) -> rusqlite::Result<()> {
    super::emit(tx, snapshot(tx, id)?)
}

/// The coupon of an order as a domain event (also used to rebuild views).
pub fn snapshot(c: &Connection, id: OrderId) -> rusqlite::Result<Option<DomainEvent>> {
    super::record_event(c, "coupons", id.get(), get(c, id)?, |r| {
        r.status.as_str().to_ascii_lowercase()
    })
}

impl super::Snapshot for CouponRecord {
    fn payload(&self) -> Payload {
        Payload::Coupon(CouponData {
            order_id: self.order_id,
            customer_id: self.customer_id,
            status: self.status,
            code: self.code.clone(),
        })
    }
}

fn record(r: &Row<'_>) -> rusqlite::Result<CouponRecord> {
    let id = order_id_of(r.get(0)?)?;
    let status: String = r.get(3)?;
    Ok(CouponRecord {
        id,
        order_id: id,
        customer_id: super::parsed(CustomerId::new(r.get(1)?))?,
        code: r.get(2)?,
        status: status.parse().unwrap_or(CouponStatus::Cancelled),
        created_at: Millis(r.get(4)?).to_rfc3339(),
        updated_at: Millis(r.get(5)?).to_rfc3339(),
    })
}

const COLUMNS: &str = "id, customer_id, code, status, created_at, updated_at";

pub fn list(
    c: &Connection,
    page: Page,
    order: Option<OrderId>,
) -> rusqlite::Result<Vec<CouponRecord>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM coupons WHERE (?1 IS NULL OR id = ?1) ORDER BY id LIMIT ?2 OFFSET ?3"
    ))?;
    stmt.query_map(
        params![order.map(OrderId::get), page.limit, page.offset],
        record,
    )?
    .collect()
}

pub fn get(c: &Connection, id: OrderId) -> rusqlite::Result<Option<CouponRecord>> {
    optional(c.query_row(
        &format!("SELECT {COLUMNS} FROM coupons WHERE id = ?1"),
        [id.get()],
        record,
    ))
}
