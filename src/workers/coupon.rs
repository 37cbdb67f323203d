//! The coupon worker: issues a coupon to the customer once the order is paid
//! and cooked, and cancels it when the order is cancelled.
//!
//! Owns `coupon.db`: table `coupons`, one row per order (its id is the order
//! id).

use rusqlite::{Connection, Row, params};
use serde::{Deserialize, Serialize};

use super::records::{Snapshot, Table, parsed, record_table};
use super::{Applied, Effect, WorkerLogic};
use crate::domain::{CouponStatus, CustomerId, Millis, OrderId};
use crate::events::{CouponData, Payload};
use crate::messages::{OrderDetails, ReplyOutcome};

pub struct CouponWorker;

pub const SCHEMA: &str = record_table!(
    "coupons",
    "    customer_id INTEGER NOT NULL,
    code        TEXT    NOT NULL,
    status      TEXT    NOT NULL,
"
);

/// A coupon issued for an order: its id is its order's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Coupon {
    pub order_id: OrderId,
    pub customer_id: CustomerId,
    pub code: String,
    pub status: CouponStatus,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// The `coupons` table.
pub(crate) const COUPONS: Table<Coupon> = Table {
    name: "coupons",
    per_customer: true,
    columns: "id, customer_id, code, status, created_at, updated_at",
    row: coupon,
    key: std::marker::PhantomData,
};

impl WorkerLogic for CouponWorker {
    fn reached(&self) -> &'static str {
        "the coupon was issued"
    }

    fn forward(&self, tx: &Connection, order: &OrderDetails, now: Millis) -> Effect {
        let id = order.order_id;
        match COUPONS.status::<CouponStatus>(tx, id)? {
            Some(CouponStatus::Issued) => Ok(Applied::Final(vec![ReplyOutcome::Done])),
            Some(CouponStatus::Cancelled) => Ok(Applied::Final(vec![ReplyOutcome::Failed {
                reason: "the coupon is cancelled".into(),
            }])),
            None => {
                tx.prepare_cached(
                    "INSERT INTO coupons (id, customer_id, code, status, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                )?
                .execute(params![
                    id.get(),
                    order.customer_id.get(),
                    code(id),
                    CouponStatus::Issued.as_str(),
                    now.0
                ])?;
                COUPONS.publish(tx, id)?;
                Ok(Applied::Final(vec![ReplyOutcome::Done]))
            }
        }
    }

    fn compensate(&self, tx: &Connection, order: &OrderDetails, now: Millis) -> Effect {
        let id = order.order_id;
        let Some(status) = COUPONS.status::<CouponStatus>(tx, id)? else {
            return Ok(Applied::NoRecord);
        };
        if status == CouponStatus::Issued {
            COUPONS.set_status(tx, id, CouponStatus::Cancelled.as_str(), now)?;
            COUPONS.publish(tx, id)?;
        }
        Ok(Applied::Final(vec![ReplyOutcome::Compensated]))
    }
}

/// A new coupon's code: the order and 64 random bits (from the operating
/// system's generator, through `rand`'s thread-local CSPRNG), so a code
/// cannot be guessed from another.
fn code(id: OrderId) -> String {
    format!("HEARTY-{:06}-{:016X}", id.get(), rand::random::<u64>())
}

impl Snapshot for Coupon {
    fn payload(&self) -> Payload {
        Payload::Coupon(CouponData {
            order_id: self.order_id,
            customer_id: self.customer_id,
            status: self.status,
            code: self.code.clone(),
        })
    }

    fn what(&self) -> String {
        self.status.as_str().to_ascii_lowercase()
    }
}

fn coupon(r: &Row<'_>) -> rusqlite::Result<Coupon> {
    Ok(Coupon {
        order_id: parsed(OrderId::new(r.get(0)?))?,
        customer_id: parsed(CustomerId::new(r.get(1)?))?,
        code: r.get(2)?,
        status: parsed(r.get::<_, String>(3)?.parse())?,
        created_at: Millis(r.get(4)?),
        updated_at: Millis(r.get(5)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_carry_64_random_bits() {
        let id = OrderId::new(7).expect("valid");
        let c = code(id);
        let random = c.rsplit('-').next().expect("a random part");
        assert_eq!(random.len(), 16, "{c}");
        assert!(random.bytes().all(|b| b.is_ascii_hexdigit()), "{c}");
        let codes: std::collections::HashSet<String> = (0..10_000).map(|_| code(id)).collect();
        assert_eq!(codes.len(), 10_000, "no two alike");
    }
}
