//! The transactional outbox: messages are written in the same SQLite
//! transaction as the state change that causes them, and a relay publishes
//! them afterwards, deleting each row only once the broker confirmed it.
//!
//! A crash before the commit loses both the change and the message; a crash
//! after it leaves the row for the relay (at start-up or on its next pass), so
//! a message can go out twice but never zero times. Consumers deduplicate
//! by message id.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use rusqlite::{Connection, params};

use super::{Db, StorageResult};
use crate::domain::Millis;
use crate::shutdown::Shutdown;
use crate::transport::{Outgoing, Route, Transport};

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS outbox (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id     TEXT    NOT NULL,
    route          TEXT    NOT NULL,
    message_type   TEXT    NOT NULL,
    correlation_id TEXT    NOT NULL,
    body           BLOB    NOT NULL,
    available_at   INTEGER NOT NULL,
    created_at     INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (available_at, seq);
";

/// The two lanes of an outbox, each published by its own relay: domain
/// events (to the events exchange and its stream, whose confirms may take
/// longer) never hold back the commands and replies a saga waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Commands and replies.
    Messages = 0,
    /// Domain events.
    Events = 1,
}

impl Lane {
    pub const ALL: [Lane; 2] = [Lane::Messages, Lane::Events];

    fn is_events(self) -> bool {
        self == Lane::Events
    }
}

/// Most rows published in one pipelined batch.
const BATCH: i64 = 512;

/// Adds a message to the outbox inside the caller's transaction; it is
/// published no earlier than `available_at`.
pub fn enqueue(tx: &Connection, msg: &Outgoing, available_at: Millis) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO outbox (message_id, route, message_type, correlation_id, body, available_at, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
            msg.message_id,
            msg.route.encode(),
            msg.message_type,
            msg.correlation_id,
            msg.body,
            available_at.0,
        Millis::now().0
    ])?;
    Ok(())
}

/// Rows waiting to be published (all of them, due or not).
pub async fn backlog(db: &Db) -> StorageResult<i64> {
    db.read(|c| Ok(c.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))?))
        .await
}

/// What one look at the outbox found.
struct Due {
    rows: Vec<(i64, Outgoing)>,
    /// When the earliest row that is not due yet becomes due.
    next_at: Option<Millis>,
}

async fn due_rows(db: &Db, now: Millis, lane: Lane) -> StorageResult<Due> {
    db.read(move |c| {
        let mut stmt = c.prepare_cached(
            "SELECT seq, message_id, route, message_type, correlation_id, body
             FROM outbox WHERE available_at <= ?1 AND (substr(route, 1, 6) = 'event:') = ?3
             ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt
            .query_map(params![now.0, BATCH, lane.is_events()], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, Vec<u8>>(5)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut out = Vec::with_capacity(rows.len());
        for (seq, message_id, route, message_type, correlation_id, body) in rows {
            let Some(route) = Route::decode(&route, &correlation_id) else {
                tracing::error!(seq, route, "outbox row with an unknown route; skipped");
                continue;
            };
            out.push((
                seq,
                Outgoing {
                    message_id,
                    correlation_id,
                    message_type,
                    route,
                    body,
                },
            ));
        }
        let next_at: Option<i64> = c.query_row(
            "SELECT min(available_at) FROM outbox
             WHERE available_at > ?1 AND (substr(route, 1, 6) = 'event:') = ?2",
            params![now.0, lane.is_events()],
            |r| r.get(0),
        )?;
        Ok(Due {
            rows: out,
            next_at: next_at.map(Millis),
        })
    })
    .await
}

/// Publishes one lane of a database's outbox until shutdown.
pub async fn run_relay(db: Db, transport: Arc<dyn Transport>, mut shutdown: Shutdown, lane: Lane) {
    let backoff = ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(5))
        .without_max_times();
    let mut failures = backoff.build();
    loop {
        let now = Millis::now();
        let wait = match pass(&db, transport.as_ref(), lane, now).await {
            // Everything due went out: at once again (more may be due).
            Pass::Published => {
                failures = backoff.build();
                continue;
            }
            // Sleep until the next delayed row, a notification, or a
            // periodic look (rows written by another process).
            Pass::Idle(next_at) => {
                failures = backoff.build();
                next_at
                    .map(|at| at.until_from(now))
                    .unwrap_or(Duration::from_secs(1))
                    .min(Duration::from_secs(1))
            }
            Pass::Failed => failures.next().unwrap_or(Duration::from_secs(5)),
        };
        tokio::select! {
            _ = shutdown.recv() => break,
            _ = db.outbox_notified(lane) => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
    flush(&db, transport.as_ref(), lane).await;
}

/// What one pass of a relay came to.
enum Pass {
    /// Every due row it found was published and confirmed.
    Published,
    /// Nothing was due; the next row becomes due then.
    Idle(Option<Millis>),
    /// The outbox could not be read, or some rows were not confirmed (they
    /// go out again after a backoff).
    Failed,
}

/// Publishes what is due; deletes each row the broker confirmed.
async fn pass(db: &Db, transport: &dyn Transport, lane: Lane, now: Millis) -> Pass {
    let due = match due_rows(db, now, lane).await {
        Ok(due) => due,
        Err(e) => {
            tracing::warn!(db = %db.path().display(), error = %e, "cannot read outbox");
            return Pass::Failed;
        }
    };
    if due.rows.is_empty() {
        return Pass::Idle(due.next_at);
    }
    let (seqs, msgs): (Vec<i64>, Vec<Outgoing>) = due.rows.into_iter().unzip();
    let results = transport.publish(msgs).await;
    let mut confirmed = Vec::with_capacity(seqs.len());
    let mut failed = 0usize;
    for (seq, r) in seqs.into_iter().zip(results) {
        match r {
            Ok(()) => confirmed.push(seq),
            Err(e) => {
                failed += 1;
                tracing::debug!(seq, error = %e, "publish not confirmed; will retry");
            }
        }
    }
    if !confirmed.is_empty() {
        crate::failpoint::hit("outbox-after-confirm");
        if let Err(e) = delete(db, confirmed).await {
            tracing::warn!(error = %e, "cannot delete published outbox rows; they will go out again");
        }
    }
    if failed == 0 {
        return Pass::Published;
    }
    tracing::warn!(
        failed,
        "some messages were not confirmed; retrying with backoff"
    );
    Pass::Failed
}

/// At shutdown: publishes what is due, for a bounded time; the rest waits
/// in the table for the next start.
async fn flush(db: &Db, transport: &dyn Transport, lane: Lane) {
    let flushed =
        async { while let Pass::Published = pass(db, transport, lane, Millis::now()).await {} };
    if tokio::time::timeout(Duration::from_secs(5), flushed)
        .await
        .is_err()
    {
        tracing::warn!(db = %db.path().display(), "outbox not fully flushed at shutdown; the rest goes out at the next start");
    }
}

async fn delete(db: &Db, seqs: Vec<i64>) -> StorageResult<()> {
    db.write(move |tx| {
        let mut stmt = tx.prepare_cached("DELETE FROM outbox WHERE seq = ?1")?;
        for seq in seqs {
            stmt.execute([seq])?;
        }
        Ok(())
    })
    .await
}
