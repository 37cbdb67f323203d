//! The inbox of a worker: the message ids it has applied, with the replies
//! they produced, and tombstones of orders compensated before their forward
//! command arrived.
//!
//! The inbox row is written in the same transaction as the command's effect,
//! so a redelivered command is recognised and answered with the same replies
//! without a second effect.

use rusqlite::{Connection, params};

use crate::domain::{Millis, OrderId};

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS inbox (
    message_id   TEXT PRIMARY KEY,
    replies      TEXT    NOT NULL,
    processed_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS injected_failures (
    message_id   TEXT PRIMARY KEY,
    count        INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tombstones (
    order_id     INTEGER PRIMARY KEY,
    created_at   INTEGER NOT NULL
);
";

/// The replies recorded for a message id, if it was applied before.
pub fn replies_of(tx: &Connection, message_id: &str) -> rusqlite::Result<Option<String>> {
    super::optional(
        tx.prepare_cached("SELECT replies FROM inbox WHERE message_id = ?1")?
            .query_row([message_id], |r| r.get(0)),
    )
}

/// Records that a message id was applied and what it answered.
pub fn record(tx: &Connection, message_id: &str, replies: &str) -> rusqlite::Result<()> {
    tx.prepare_cached("INSERT INTO inbox (message_id, replies, processed_at) VALUES (?1, ?2, ?3)")?
        .execute(params![message_id, replies, Millis::now().0])?;
    Ok(())
}

/// Marks an order as compensated before its forward command was applied: a
/// forward command arriving later is refused.
pub fn bury(tx: &Connection, order: OrderId) -> rusqlite::Result<()> {
    tx.prepare_cached("INSERT OR IGNORE INTO tombstones (order_id, created_at) VALUES (?1, ?2)")?
        .execute(params![order.get(), Millis::now().0])?;
    Ok(())
}

pub fn is_buried(tx: &Connection, order: OrderId) -> rusqlite::Result<bool> {
    Ok(super::optional(
        tx.prepare_cached("SELECT 1 FROM tombstones WHERE order_id = ?1")?
            .query_row([order.get()], |r| r.get::<_, i64>(0)),
    )?
    .is_some())
}

/// Counts one more injected failure of a message; returns the count before.
pub fn count_injected_failure(tx: &Connection, message_id: &str) -> rusqlite::Result<u32> {
    let before: u32 = super::optional(tx.query_row(
        "SELECT count FROM injected_failures WHERE message_id = ?1",
        [message_id],
        |r| r.get(0),
    ))?
    .unwrap_or(0);
    tx.prepare_cached(
        "INSERT INTO injected_failures (message_id, count) VALUES (?1, 1)
         ON CONFLICT (message_id) DO UPDATE SET count = count + 1",
    )?
    .execute([message_id])?;
    Ok(before)
}
