//! Saga rows: each order's saga as a JSON body with its state, order
//! status and earliest timer in columns; its history; persisting a
//! transition together with its commands and the order's event.

use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

use super::{command_message, to_json};
use crate::domain::{Millis, OrderId, OrderStatus, SagaId};
use crate::events::{self, DomainEvent, OrderData, Payload};
use crate::messages::WorkerCommand;
use crate::orchestrator::search::{SagaSearch, WAITING};
use crate::saga::definition::SagaDefinition;
use crate::saga::machine::{Command, HistoryEntry, Saga, Transition};
use crate::storage::{Page, StorageError, StorageResult, optional, outbox};

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sagas (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    state        TEXT    NOT NULL,
    order_status TEXT    NOT NULL,
    customer_id  INTEGER NOT NULL,
    body         TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    -- The earliest timer the saga waits on (NULL: none): recovery loads
    -- every saga with one, whatever its state.
    wakes_at     INTEGER,
    -- What an operator searches by (layout 4): the order's food, and the
    -- step the saga is busy with or stuck on (NULL once it has none).
    food_id      INTEGER,
    step         TEXT
);
CREATE INDEX IF NOT EXISTS sagas_state ON sagas (state, id);
CREATE INDEX IF NOT EXISTS sagas_customer ON sagas (customer_id, id);
CREATE TABLE IF NOT EXISTS saga_history (
    saga_id INTEGER NOT NULL,
    seq     INTEGER NOT NULL,
    body    TEXT    NOT NULL,
    PRIMARY KEY (saga_id, seq)
) WITHOUT ROWID;
";

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> StorageResult<T> {
    serde_json::from_str(s)
        .map_err(|e| StorageError::Invalid(format!("cannot decode stored saga: {e}")))
}

/// A stored saga whose body cannot be decoded (written by an incompatible
/// version, or damaged). It is quarantined: shown as `Failed` with the
/// reason, never driven, and never in the way of start-up or the lists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Quarantined {
    pub id: SagaId,
    pub order_status: Option<OrderStatus>,
    pub reason: String,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// A row of `sagas`, decoded or quarantined.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "stored", content = "value", rename_all = "camelCase")]
pub enum Stored {
    Saga(Box<Saga>),
    Quarantined(Quarantined),
}

/// The columns `decode` reads, in this order.
pub(super) const ROW: &str = "id, body, order_status, created_at, updated_at";

/// Decodes one row of [`ROW`]; a body that does not decode is quarantined,
/// whatever the damage (not JSON, not a saga, not even text), so that one
/// bad row never fails a query that reads others.
pub(super) fn decode(r: &rusqlite::Row<'_>) -> rusqlite::Result<Stored> {
    use rusqlite::types::ValueRef;
    let id: i64 = r.get(0)?;
    let decoded = match r.get_ref(1)? {
        ValueRef::Text(body) => serde_json::from_slice::<Saga>(body).map_err(|e| e.to_string()),
        other => Err(format!("the body is {:?}, not text", other.data_type())),
    };
    Ok(match decoded {
        Ok(saga) => Stored::Saga(Box::new(saga)),
        Err(e) => Stored::Quarantined(Quarantined {
            id: OrderId::new(id)
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?,
            order_status: r.get::<_, String>(2).ok().and_then(|s| s.parse().ok()),
            reason: format!("quarantined: the stored saga cannot be decoded ({e})"),
            created_at: Millis(r.get(3).unwrap_or(0)),
            updated_at: Millis(r.get(4).unwrap_or(0)),
        }),
    })
}

/// The earliest timer a saga waits on, if any.
pub(super) fn wakes_at(saga: &Saga) -> Option<Millis> {
    saga.pending_timers()
        .iter()
        .filter_map(|c| match c {
            Command::ArmTimer { at, .. } | Command::ArmAdmission { at } => Some(*at),
            _ => None,
        })
        .min()
}

/// An order's current state as a domain event: `order.placed`,
/// `order.paid`, ..., `order.cancelled`. Its version is the number of the
/// saga's last history line, which only grows.
pub fn order_event(saga: &Saga, version: i64) -> DomainEvent {
    let what = match saga.order_status {
        OrderStatus::Ordered => "placed".to_owned(),
        other => other.as_str().to_ascii_lowercase(),
    };
    let data = OrderData {
        order_id: saga.id,
        customer_id: saga.order.customer_id,
        food_catalog_id: saga.order.food_id,
        qty: saga.order.qty,
        amount_cents: saga.order.amount,
        status: saga.order_status,
        saga_state: saga.state,
        reason: saga.reason.clone(),
    };
    DomainEvent::new(&what, version, Payload::Order(data))
}

/// Writes a saga, its history lines, its commands and (when the order
/// changed) the order's event, inside the caller's transaction.
pub(super) fn persist(
    tx: &Connection,
    def: &SagaDefinition,
    saga: &Saga,
    transition: &Transition,
    first_seq: i64,
    now: Millis,
    order_changed: bool,
) -> StorageResult<()> {
    if order_changed {
        let version = first_seq + transition.history.len() as i64;
        events::emit(tx, &order_event(saga, version))?;
    }
    tx.prepare_cached(
        "UPDATE sagas SET state = ?2, order_status = ?3, body = ?4, updated_at = ?5, wakes_at = ?6,
             step = ?7
         WHERE id = ?1",
    )?
    .execute(params![
        saga.id.get(),
        saga.state.as_str(),
        saga.order_status.as_str(),
        to_json(saga)?,
        now.0,
        wakes_at(saga).map(|m| m.0),
        saga.current_step().map(|s| s.name.as_str())
    ])?;
    for (n, h) in transition.history.iter().enumerate() {
        tx.prepare_cached("INSERT INTO saga_history (saga_id, seq, body) VALUES (?1, ?2, ?3)")?
            .execute(params![
                saga.id.get(),
                first_seq + 1 + n as i64,
                to_json(h)?
            ])?;
    }
    for c in &transition.commands {
        if let Command::Send {
            step,
            direction,
            attempt,
            delay,
        } = c
        {
            let cmd = WorkerCommand::Step {
                step: def.steps[*step].name.clone(),
                direction: *direction,
                attempt: *attempt,
                order: saga.order,
            };
            outbox::enqueue(
                tx,
                &command_message(def, &cmd, &saga.order)?,
                now.plus(*delay),
            )?;
        }
        if let Command::Progress { step, progress } = c {
            let cmd = WorkerCommand::Progress {
                step: def.steps[*step].name.clone(),
                order_id: saga.id,
                progress: *progress,
            };
            outbox::enqueue(tx, &command_message(def, &cmd, &saga.order)?, now)?;
        }
    }
    Ok(())
}

/// The sagas `search` asks for, ordered by id, after its cursor. Only the
/// filters given are in the statement, so SQLite's planner picks the index
/// that serves them (`sagas_state`, `sagas_customer`, `sagas_food`,
/// `sagas_step`, `sagas_created`, or the rowid from the cursor on).
pub fn search_sagas(
    c: &Connection,
    search: &SagaSearch,
    page: Page,
    now: Millis,
) -> StorageResult<Vec<Stored>> {
    use rusqlite::types::Value;
    let mut sql = format!("SELECT {ROW} FROM sagas WHERE id > ?");
    let mut args: Vec<Value> = vec![Value::Integer(search.after.map_or(0, SagaId::get))];
    let mut filter = |clause: &str, value: Value| {
        sql.push_str(" AND ");
        sql.push_str(clause);
        args.push(value);
    };
    if let Some(state) = search.state {
        filter("state = ?", Value::Text(state.as_str().into()));
    }
    if let Some(step) = &search.step {
        filter("step = ?", Value::Text(step.clone()));
    }
    if let Some(customer) = search.customer {
        filter("customer_id = ?", Value::Integer(customer.get()));
    }
    if let Some(food) = search.food {
        filter("food_id = ?", Value::Integer(food.get()));
    }
    for (column, range) in [
        ("created_at", search.created),
        ("updated_at", search.updated),
    ] {
        if let Some(from) = range.from {
            filter(&format!("{column} >= ?"), Value::Integer(from.0));
        }
        if let Some(to) = range.to {
            filter(&format!("{column} < ?"), Value::Integer(to.0));
        }
    }
    if let Some(since) = search.waiting_since(now) {
        filter("updated_at <= ?", Value::Integer(since.0));
        let waiting: Vec<String> = WAITING
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        sql.push_str(&format!(" AND state IN ({})", waiting.join(", ")));
    }
    sql.push_str(" ORDER BY id LIMIT ? OFFSET ?");
    args.push(Value::Integer(page.limit));
    args.push(Value::Integer(page.offset));
    let run = |stmt: &mut rusqlite::Statement<'_>| {
        stmt.query_map(rusqlite::params_from_iter(&args), decode)?
            .collect::<rusqlite::Result<Vec<_>>>()
    };
    // The lists every page of the API and the bench ask for keep their
    // statement; an operator's other searches (up to 512 shapes) are
    // prepared each time rather than evicting the hot statements.
    let plain = search.step.is_none()
        && search.food.is_none()
        && search.created.is_open()
        && search.updated.is_open()
        && search.waiting_longer_than_ms.is_none();
    Ok(match plain {
        true => run(&mut *c.prepare_cached(&sql)?)?,
        false => run(&mut c.prepare(&sql)?)?,
    })
}

pub fn get_saga(c: &Connection, id: SagaId) -> StorageResult<Option<Stored>> {
    Ok(optional(
        c.prepare_cached(&format!("SELECT {ROW} FROM sagas WHERE id = ?1"))?
            .query_row([id.get()], decode),
    )?)
}

/// The number of a saga's last history line (0: none yet).
pub(super) fn last_history_seq(c: &Connection, id: SagaId) -> rusqlite::Result<i64> {
    c.prepare_cached("SELECT coalesce(max(seq), 0) FROM saga_history WHERE saga_id = ?1")?
        .query_row([id.get()], |r| r.get(0))
}

pub fn history(c: &Connection, id: SagaId) -> StorageResult<Vec<HistoryEntry>> {
    let mut stmt =
        c.prepare_cached("SELECT body FROM saga_history WHERE saga_id = ?1 ORDER BY seq")?;
    let bodies = stmt
        .query_map([id.get()], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    bodies.iter().map(|b| from_json(b)).collect()
}

/// Every order's current state as its latest order event (to rebuild the
/// read models).
pub fn order_snapshots(c: &Connection) -> StorageResult<Vec<DomainEvent>> {
    let mut stmt = c.prepare(
        "SELECT s.body, (SELECT coalesce(max(seq), 0) FROM saga_history h WHERE h.saga_id = s.id)
         FROM sagas s ORDER BY s.id",
    )?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    // Quarantined rows have no order to show; they stay visible in `/sagas`.
    Ok(rows
        .iter()
        .filter_map(|(body, version)| {
            let saga: Saga = from_json(body).ok()?;
            Some(order_event(&saga, *version))
        })
        .collect())
}

/// Every order id.
pub fn order_ids(c: &Connection) -> StorageResult<Vec<OrderId>> {
    let mut stmt = c.prepare("SELECT id FROM sagas ORDER BY id")?;
    let ids = stmt
        .query_map([], |r| r.get::<_, i64>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(ids
        .into_iter()
        .filter_map(|id| OrderId::new(id).ok())
        .collect())
}

/// A message of a saga that is still in the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingMessage {
    pub message_id: String,
    pub message_type: String,
    pub available_at: Millis,
}

/// The saga's outbox rows not yet confirmed by the broker.
pub fn pending_messages(c: &Connection, id: SagaId) -> StorageResult<Vec<PendingMessage>> {
    let mut stmt = c.prepare_cached(
        "SELECT message_id, message_type, available_at FROM outbox WHERE correlation_id = ?1 ORDER BY seq",
    )?;
    Ok(stmt
        .query_map([id.to_string()], |r| {
            Ok(PendingMessage {
                message_id: r.get(0)?,
                message_type: r.get(1)?,
                available_at: Millis(r.get(2)?),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}
