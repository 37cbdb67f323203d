//! The pay worker: authorizes `qty × price` and refunds it.
//!
//! Owns `pay.db`: table `pays`, one row per order (its id is the order id).

use rusqlite::{Connection, Row, params};
use serde::{Deserialize, Serialize};

use super::records::{Snapshot, Table, parsed, record_table};
use super::{Applied, Effect, WorkerLogic};
use crate::domain::{CustomerId, Millis, Money, OrderId, PayStatus};
use crate::events::{PayData, Payload};
use crate::messages::{OrderDetails, ReplyOutcome};

pub struct PayWorker {
    /// Payments above this amount are declined.
    pub decline_above: Money,
}

pub const SCHEMA: &str = record_table!(
    "pays",
    "    customer_id  INTEGER NOT NULL,
    amount_cents INTEGER NOT NULL,
    status       TEXT    NOT NULL,
    reason       TEXT,
"
);

/// A payment: its id is its order's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Payment {
    pub order_id: OrderId,
    pub customer_id: CustomerId,
    pub amount: Money,
    pub status: PayStatus,
    pub reason: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// The `pays` table.
pub(crate) const PAYS: Table<Payment> = Table {
    name: "pays",
    per_customer: true,
    columns: "id, customer_id, amount_cents, status, reason, created_at, updated_at",
    row: payment,
    key: std::marker::PhantomData,
};

impl WorkerLogic for PayWorker {
    fn reached(&self) -> &'static str {
        "payment"
    }

    fn forward(&self, tx: &Connection, order: &OrderDetails, now: Millis) -> Effect {
        let id = order.order_id;
        let refused = |reason: &str| {
            Applied::Final(vec![ReplyOutcome::Failed {
                reason: reason.into(),
            }])
        };
        match PAYS.status::<PayStatus>(tx, id)? {
            Some(PayStatus::Approved) => return Ok(Applied::Final(vec![ReplyOutcome::Done])),
            Some(PayStatus::Declined) => return Ok(refused("payment declined")),
            Some(PayStatus::Refunded) => {
                return Ok(refused("the order was cancelled before payment"));
            }
            None => {}
        }
        let reason = (order.amount > self.decline_above).then(|| {
            format!(
                "payment declined: amount {} is above the limit of {}",
                order.amount, self.decline_above
            )
        });
        let status = match reason {
            None => PayStatus::Approved,
            Some(_) => PayStatus::Declined,
        };
        tx.prepare_cached(
            "INSERT INTO pays (id, customer_id, amount_cents, status, reason, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
        )?
        .execute(params![id.get(), order.customer_id.get(), order.amount.cents(), status.as_str(), reason, now.0])?;
        PAYS.publish(tx, id)?;
        Ok(Applied::Final(vec![match reason {
            None => ReplyOutcome::Done,
            Some(reason) => ReplyOutcome::Failed { reason },
        }]))
    }

    fn compensate(&self, tx: &Connection, order: &OrderDetails, now: Millis) -> Effect {
        let id = order.order_id;
        let Some(status) = PAYS.status::<PayStatus>(tx, id)? else {
            return Ok(Applied::NoRecord);
        };
        if status == PayStatus::Approved {
            PAYS.set_status(tx, id, PayStatus::Refunded.as_str(), now)?;
            PAYS.publish(tx, id)?;
        }
        Ok(Applied::Final(vec![ReplyOutcome::Compensated]))
    }
}

impl Snapshot for Payment {
    fn payload(&self) -> Payload {
        Payload::Pay(PayData {
            order_id: self.order_id,
            customer_id: self.customer_id,
            amount_cents: self.amount,
            status: self.status,
            reason: self.reason.clone(),
        })
    }

    fn what(&self) -> String {
        self.status.as_str().to_ascii_lowercase()
    }
}

fn payment(r: &Row<'_>) -> rusqlite::Result<Payment> {
    Ok(Payment {
        order_id: parsed(OrderId::new(r.get(0)?))?,
        customer_id: parsed(CustomerId::new(r.get(1)?))?,
        amount: Money::from_cents(r.get(2)?),
        status: parsed(r.get::<_, String>(3)?.parse())?,
        reason: r.get(4)?,
        created_at: Millis(r.get(5)?),
        updated_at: Millis(r.get(6)?),
    })
}
