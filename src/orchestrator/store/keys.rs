//! Idempotency keys: each bound to its order and to its request's
//! fingerprint, checked and written in the transaction that creates the
//! saga. A key belongs to the customer the order is for: two customers'
//! equal keys are two keys (stored as `<customer>/<key>`), so one
//! customer's key never finds, nor blocks, another's order. (Routing to a
//! partition still goes by the key as sent, so a retry finds its owner.)

use rusqlite::Connection;

use super::Stored;
use super::sagas::get_saga;
use crate::domain::{CustomerId, IdempotencyKey, OrderId, SagaId};
use crate::messages::OrderDetails;
use crate::saga::machine::Admission;
use crate::storage::{StorageError, StorageResult, optional};

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS order_keys (
    -- `<customer id>/<the client's key>`
    key        TEXT PRIMARY KEY,
    saga_id    INTEGER NOT NULL,
    -- The request's fingerprint; NULL for a key kept from before version 2,
    -- which matches any request as keys then did.
    request    TEXT,
    created_at INTEGER NOT NULL
);
";

/// What a client's key says about a new `POST /orders`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUse {
    /// Never used: place the order and bind the key to it.
    Fresh,
    /// Used for a different request: refused (422).
    OtherRequest(SagaId),
    /// Its order exists (paid, declined, pending, ...): answer for it.
    Placed(SagaId),
    /// Its order was turned away as unavailable (503), so nothing was
    /// established; the key may place the order again.
    TurnedAway,
}

/// How `key`, sent for an order of `customer`, is stored.
pub(super) fn stored(customer: CustomerId, key: &IdempotencyKey) -> String {
    format!("{customer}/{key}")
}

pub(super) fn key_use(
    tx: &Connection,
    customer: CustomerId,
    key: &IdempotencyKey,
    request: &str,
) -> StorageResult<KeyUse> {
    let row: Option<(i64, Option<String>)> = optional(tx.query_row(
        "SELECT saga_id, request FROM order_keys WHERE key = ?1",
        [stored(customer, key)],
        |r| Ok((r.get(0)?, r.get(1)?)),
    ))?;
    let Some((raw, stored)) = row else {
        return Ok(KeyUse::Fresh);
    };
    let id = OrderId::new(raw).map_err(|e| StorageError::Invalid(e.to_string()))?;
    if stored.is_some_and(|s| s != request) {
        return Ok(KeyUse::OtherRequest(id));
    }
    // `Unavailable` is read from committed state but is final: an order once
    // rejected stays rejected, so this is no stale decision.
    Ok(match get_saga(tx, id)? {
        Some(Stored::Saga(saga)) if matches!(saga.admission(), Admission::Unavailable(_)) => {
            KeyUse::TurnedAway
        }
        _ => KeyUse::Placed(id),
    })
}

/// What makes two `POST /orders` the same request for an idempotency key.
pub fn request_fingerprint(order: &OrderDetails) -> String {
    format!(
        "customer={};food={};qty={}",
        order.customer_id,
        order.food_id,
        order.qty.get()
    )
}

/// Layout 2 → 3: each kept key scoped to its order's customer.
pub(super) fn scope_to_customers(tx: &Connection) -> StorageResult<()> {
    tx.execute_batch(
        "DELETE FROM order_keys WHERE saga_id NOT IN (SELECT id FROM sagas);
         UPDATE order_keys
            SET key = (SELECT customer_id FROM sagas WHERE sagas.id = order_keys.saga_id) || '/' || key;",
    )?;
    Ok(())
}
