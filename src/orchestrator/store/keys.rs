//! Idempotency keys: each bound to its order and to its request's
//! fingerprint, checked and written in the transaction that creates the
//! saga.

use rusqlite::Connection;

use super::Stored;
use super::sagas::get_saga;
use crate::domain::{IdempotencyKey, OrderId, SagaId};
use crate::messages::OrderDetails;
use crate::saga::machine::Admission;
use crate::storage::{StorageError, StorageResult, optional};

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS order_keys (
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

pub(super) fn key_use(
    tx: &Connection,
    key: &IdempotencyKey,
    request: &str,
) -> StorageResult<KeyUse> {
    let row: Option<(i64, Option<String>)> = optional(tx.query_row(
        "SELECT saga_id, request FROM order_keys WHERE key = ?1",
        [key.as_str()],
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
