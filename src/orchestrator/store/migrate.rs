//! Upgrades of `orchestrator.db` written by earlier versions, in place, in
//! one transaction, before anything is served.

use super::sagas::wakes_at;
use super::{SagaStore, keys, to_json};
use crate::domain::OrderStatus;
use crate::saga::machine::Saga;
use crate::storage::StorageResult;
use rusqlite::params;

/// The version of `orchestrator.db`'s layout (`PRAGMA user_version`).
const LAYOUT_VERSION: i64 = 3;

impl SagaStore {
    /// Brings a database written by an earlier version up to this one, in
    /// one transaction (nothing to do for a new or current one):
    ///
    /// 1 → 2: amounts in whole cents (a saga's and an unsent command's
    /// `order.amount` was a decimal), idempotency keys with their request
    /// (kept keys match any request, as they did), and `wakes_at`.
    ///
    /// 2 → 3: idempotency keys scoped to their order's customer (one
    /// customer's key no longer finds another's order).
    pub async fn migrate(&self) -> StorageResult<()> {
        self.db
            .write(|tx| {
                let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
                if version < LAYOUT_VERSION {
                    if version < 2 {
                        to_version_2(tx)?;
                    }
                    keys::scope_to_customers(tx)?;
                    tx.execute_batch(&format!("PRAGMA user_version = {LAYOUT_VERSION};"))?;
                }
                // Recovery reads the sagas that wait on a timer through
                // this index (made here, once `wakes_at` exists in every
                // layout; a database of an earlier release gets it on its
                // first start with this one).
                tx.execute_batch(
                    "CREATE INDEX IF NOT EXISTS sagas_wakes ON sagas (wakes_at)
                     WHERE wakes_at IS NOT NULL;",
                )?;
                Ok(())
            })
            .await
    }
}

/// 1 → 2 (see [`SagaStore::migrate`]).
fn to_version_2(tx: &rusqlite::Connection) -> StorageResult<()> {
    let has_wakes_at: bool = tx.query_row(
        "SELECT count(*) FROM pragma_table_info('sagas') WHERE name = 'wakes_at'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has_wakes_at {
        tx.execute_batch("ALTER TABLE sagas ADD COLUMN wakes_at INTEGER;")?;
    }
    let legacy_keys: bool = tx.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'idempotency_keys'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if legacy_keys {
        tx.execute_batch(
            "INSERT OR IGNORE INTO order_keys (key, saga_id, request, created_at)
                             SELECT key, saga_id, NULL, created_at FROM idempotency_keys;
                         DROP TABLE idempotency_keys;",
        )?;
    }
    let rows: Vec<(i64, String)> = tx
        .prepare("SELECT id, body FROM sagas")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (id, body) in rows {
        let mut body = amounts_to_cents(&body);
        let mut wakes = None;
        // A body that still does not decode is quarantined on read.
        if let Ok(mut saga) = serde_json::from_str::<Saga>(&body) {
            saga.admitted = legacy_admitted(&saga);
            wakes = wakes_at(&saga).map(|m| m.0);
            body = to_json(&saga)?;
        }
        tx.execute(
            "UPDATE sagas SET body = ?2, wakes_at = ?3 WHERE id = ?1",
            params![id, body, wakes],
        )?;
    }
    let unsent: Vec<(i64, Vec<u8>)> = tx
        .prepare("SELECT seq, body FROM outbox")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (seq, body) in unsent {
        let text = String::from_utf8_lossy(&body);
        let fixed = amounts_to_cents(&text);
        if fixed != text {
            tx.execute(
                "UPDATE outbox SET body = ?2 WHERE seq = ?1",
                params![seq, fixed.into_bytes()],
            )?;
        }
    }
    Ok(())
}

/// Whether a version-1 saga (which did not record it) was established: its
/// payment is done, or a later step started (only a paid order gets there),
/// or the manager cancelled it after it was paid.
fn legacy_admitted(saga: &Saga) -> bool {
    use crate::saga::machine::{Effect, StepStatus};
    let paid = saga
        .steps
        .first()
        .is_some_and(|s| s.status == StepStatus::Done);
    let went_on = saga
        .steps
        .get(1)
        .is_some_and(|s| s.status != StepStatus::Pending);
    let cancelled_paid = saga.order_status == OrderStatus::Cancelled
        && saga
            .steps
            .first()
            .is_some_and(|s| s.effect == Effect::Applied);
    saga.admitted || paid || went_on || cancelled_paid
}

/// Rewrites a version-1 document's `order.amount` (a decimal of the
/// currency unit) as whole cents; anything else is returned unchanged.
fn amounts_to_cents(json: &str) -> String {
    let Ok(mut doc) = serde_json::from_str::<serde_json::Value>(json) else {
        return json.to_owned();
    };
    let Some(amount) = doc.pointer_mut("/order/amount") else {
        return json.to_owned();
    };
    match amount.as_f64() {
        Some(units) if !amount.is_i64() && !amount.is_u64() => {
            *amount = serde_json::Value::from((units * 100.0).round() as i64);
            doc.to_string()
        }
        _ => json.to_owned(),
    }
}
