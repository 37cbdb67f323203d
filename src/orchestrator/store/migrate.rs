//! Upgrades of `orchestrator.db` written by earlier versions, in place, in
//! one transaction, before anything is served.

use super::sagas::wakes_at;
use super::{SagaStore, keys, to_json};
use crate::domain::OrderStatus;
use crate::saga::machine::Saga;
use crate::storage::StorageResult;
use rusqlite::params;

/// The version of `orchestrator.db`'s layout (`PRAGMA user_version`).
const LAYOUT_VERSION: i64 = 4;

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
    ///
    /// 3 → 4: what an operator searches by in columns of their own: each
    /// saga's food, and the step of each saga not finished.
    pub async fn migrate(&self) -> StorageResult<()> {
        self.db
            .write(|tx| {
                let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
                if version < LAYOUT_VERSION {
                    if version < 2 {
                        to_version_2(tx)?;
                    }
                    // Not idempotent: a scoped key would be scoped again.
                    if version < 3 {
                        keys::scope_to_customers(tx)?;
                    }
                    to_version_4(tx)?;
                    tx.execute_batch(&format!("PRAGMA user_version = {LAYOUT_VERSION};"))?;
                }
                // Recovery reads the sagas that wait on a timer through
                // the first index, the operator's search uses the others
                // (made here, once their columns exist in every layout; a
                // database of an earlier release gets them on its first
                // start with this one). `updated_at` has none: it changes
                // with every transition, and a search by it narrows the
                // state's index (`waitingLongerThan`) or the cursor's range.
                tx.execute_batch(
                    "CREATE INDEX IF NOT EXISTS sagas_wakes ON sagas (wakes_at)
                     WHERE wakes_at IS NOT NULL;
                     CREATE INDEX IF NOT EXISTS sagas_food ON sagas (food_id, id);
                     CREATE INDEX IF NOT EXISTS sagas_created ON sagas (created_at, id);
                     CREATE INDEX IF NOT EXISTS sagas_step ON sagas (step, id)
                     WHERE step IS NOT NULL;",
                )?;
                // A saga written by an earlier release after this layout
                // (a downgrade, an older standby taking over during a
                // rolling upgrade) has no food: found through the index,
                // so nothing to do costs one probe.
                fill_foods(tx)?;
                Ok(())
            })
            .await
    }
}

/// Whether `sagas` has `column` already.
fn has_column(tx: &rusqlite::Connection, column: &str) -> rusqlite::Result<bool> {
    tx.query_row(
        "SELECT count(*) FROM pragma_table_info('sagas') WHERE name = ?1",
        [column],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )
}

/// Each saga's food from its body, where the column has none (a body that
/// is not JSON keeps none).
fn fill_foods(tx: &rusqlite::Connection) -> rusqlite::Result<()> {
    tx.execute_batch(
        "UPDATE sagas SET food_id = json_extract(body, '$.order.foodId')
         WHERE food_id IS NULL AND typeof(body) = 'text' AND json_valid(body);",
    )
}

/// 3 → 4 (see [`SagaStore::migrate`]): the columns, and their values for
/// the rows there are (a body that does not decode keeps none: it is
/// quarantined on read).
fn to_version_4(tx: &rusqlite::Connection) -> StorageResult<()> {
    for column in ["food_id INTEGER", "step TEXT"] {
        let name = column.split(' ').next().unwrap_or(column);
        if !has_column(tx, name)? {
            tx.execute_batch(&format!("ALTER TABLE sagas ADD COLUMN {column};"))?;
        }
    }
    // (Each saga's food is filled on every start, below the indexes.)
    // Read as bytes: a damaged body (not even UTF-8) keeps no step and is
    // quarantined on read, it never stops the upgrade.
    let waiting: Vec<(i64, Vec<u8>)> = tx
        .prepare(
            "SELECT id, CAST(body AS BLOB) FROM sagas
             WHERE state IN ('Running', 'Compensating', 'Failed') AND typeof(body) = 'text'",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (id, body) in waiting {
        if let Ok(saga) = serde_json::from_slice::<Saga>(&body)
            && let Some(step) = saga.current_step()
        {
            tx.execute(
                "UPDATE sagas SET step = ?2 WHERE id = ?1",
                params![id, step.name],
            )?;
        }
    }
    Ok(())
}

/// 1 → 2 (see [`SagaStore::migrate`]).
fn to_version_2(tx: &rusqlite::Connection) -> StorageResult<()> {
    if !has_column(tx, "wakes_at")? {
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
