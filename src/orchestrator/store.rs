//! The orchestrator's database (`orchestrator.db`): customers, sagas (one
//! per order, the order's state included), their history, and the outbox of
//! commands. Only the orchestrator and the API write it.

use std::sync::Arc;

use rusqlite::{Connection, Transaction, params};
use serde::Serialize;

use crate::domain::{CustomerId, Millis, OrderId, SagaId};
use crate::messages::{OrderDetails, Progress, WorkerCommand};
use crate::saga::definition::SagaDefinition;
use crate::saga::machine::{Command, Event, HistoryEntry, Saga, SagaState, Transition};
use crate::storage::{Db, Page, StorageError, StorageResult, optional, outbox};
use crate::transport::{Outgoing, Route};

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS customers (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT    NOT NULL,
    phone      TEXT    NOT NULL,
    address    TEXT    NOT NULL,
    age        INTEGER,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sagas (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    state        TEXT    NOT NULL,
    order_status TEXT    NOT NULL,
    customer_id  INTEGER NOT NULL,
    body         TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sagas_state ON sagas (state, id);
CREATE INDEX IF NOT EXISTS sagas_customer ON sagas (customer_id, id);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key        TEXT PRIMARY KEY,
    saga_id    INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS saga_history (
    saga_id INTEGER NOT NULL,
    seq     INTEGER NOT NULL,
    body    TEXT    NOT NULL,
    PRIMARY KEY (saga_id, seq)
) WITHOUT ROWID;
";

/// A customer as stored and shown.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CustomerRecord {
    pub id: CustomerId,
    pub name: String,
    pub phone: String,
    pub address: String,
    pub age: Option<i64>,
}

/// Saga persistence. Cheap to clone.
#[derive(Clone)]
pub struct SagaStore {
    db: Db,
    def: Arc<SagaDefinition>,
}

fn to_json<T: Serialize>(v: &T) -> StorageResult<String> {
    serde_json::to_string(v).map_err(|e| StorageError::Invalid(format!("cannot encode: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> StorageResult<T> {
    serde_json::from_str(s)
        .map_err(|e| StorageError::Invalid(format!("cannot decode stored saga: {e}")))
}

/// The outgoing message of a command for a worker.
pub fn command_message(
    def: &SagaDefinition,
    cmd: &WorkerCommand,
    saga: SagaId,
) -> StorageResult<Outgoing> {
    let worker = def
        .steps
        .iter()
        .find(|s| s.name == cmd.step())
        .map(|s| s.worker)
        .ok_or_else(|| StorageError::Invalid(format!("no step `{}` in the saga", cmd.step())))?;
    Ok(Outgoing {
        message_id: cmd.message_id(),
        correlation_id: saga.to_string(),
        message_type: cmd.message_type(worker),
        route: Route::Command(worker),
        body: to_json(cmd)?.into_bytes(),
    })
}

impl SagaStore {
    pub fn new(db: Db, def: Arc<SagaDefinition>) -> Self {
        SagaStore { db, def }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Creates an order's saga and applies its `Start`, in one transaction.
    pub async fn create(
        &self,
        draft: OrderDetails,
        key: Option<IdempotencyKey>,
    ) -> StorageResult<Created> {
        let def = self.def.clone();
        let result = self
            .db
            .write(move |tx| {
                let now = Millis::now();
                if let Some(key) = &key
                    && let Some(existing) = saga_of_key(tx, key)?
                {
                    return Ok(Created::Existing(existing));
                }
                tx.execute(
                    "INSERT INTO sagas (state, order_status, customer_id, body, created_at, updated_at)
                     VALUES ('Running', 'Ordered', ?1, '{}', ?2, ?2)",
                    params![draft.customer_id.get(), now.0],
                )?;
                let id = OrderId::new(tx.last_insert_rowid()).map_err(|e| StorageError::Invalid(e.to_string()))?;
                let mut saga = Saga::new(&def, OrderDetails { order_id: id, ..draft }, now);
                let transition = saga
                    .apply(&def, &Event::Start, now)
                    .map_err(|e| StorageError::Invalid(e.to_string()))?;
                persist(tx, &def, &saga, &transition, 0, now)?;
                if let Some(key) = &key {
                    tx.execute(
                        "INSERT INTO idempotency_keys (key, saga_id, created_at) VALUES (?1, ?2, ?3)",
                        params![key.as_str(), id.get(), now.0],
                    )?;
                }
                Ok(Created::New(Box::new(saga)))
            })
            .await?;
        self.db.notify_outbox();
        Ok(result)
    }

    /// The order an idempotency key created, if any.
    pub async fn order_of_key(&self, key: &IdempotencyKey) -> StorageResult<Option<SagaId>> {
        let key = key.clone();
        self.db
            .read(move |c| {
                let raw: Option<i64> = optional(c.query_row(
                    "SELECT saga_id FROM idempotency_keys WHERE key = ?1",
                    [key.as_str()],
                    |r| r.get(0),
                ))?;
                Ok(raw.and_then(|id| OrderId::new(id).ok()))
            })
            .await
    }

    /// Persists a transition: the saga, its new history lines and the
    /// commands it emits, in one transaction.
    pub async fn commit(&self, saga: &Saga, transition: &Transition) -> StorageResult<()> {
        let def = self.def.clone();
        let saga = saga.clone();
        let transition = transition.clone();
        self.db
            .write(move |tx| {
                let next_seq: i64 = tx.query_row(
                    "SELECT coalesce(max(seq), 0) FROM saga_history WHERE saga_id = ?1",
                    [saga.id.get()],
                    |r| r.get(0),
                )?;
                persist(tx, &def, &saga, &transition, next_seq, saga.updated_at)
            })
            .await?;
        crate::failpoint::hit("orchestrator-after-commit");
        self.db.notify_outbox();
        Ok(())
    }

    pub async fn load(&self, id: SagaId) -> StorageResult<Option<Saga>> {
        self.db.read(move |c| load(c, id)).await
    }

    /// Every saga that still has work to do (for recovery), in one query.
    pub async fn load_active(&self) -> StorageResult<Vec<Saga>> {
        self.db
            .read(|c| {
                let mut stmt = c.prepare(
                    "SELECT body FROM sagas WHERE state IN ('Running', 'Compensating') ORDER BY id",
                )?;
                let bodies = stmt
                    .query_map([], |r| r.get::<_, String>(0))?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                bodies.iter().map(|b| from_json(b)).collect()
            })
            .await
    }

    /// Queues a manual-progress command for a worker (through the outbox, so
    /// it is published with confirms like every other message).
    pub async fn send_progress(&self, order: OrderId, progress: Progress) -> StorageResult<String> {
        let def = self.def.clone();
        let id = self
            .db
            .write(move |tx| {
                let step = def
                    .steps
                    .iter()
                    .find(|s| s.worker == progress.worker())
                    .map(|s| s.name.clone())
                    .ok_or_else(|| StorageError::Invalid("no step for this worker".into()))?;
                let cmd = WorkerCommand::Progress {
                    step,
                    order_id: order,
                    progress,
                };
                let msg = command_message(&def, &cmd, order)?;
                outbox::enqueue(tx, &msg, Millis::now())?;
                Ok(msg.message_id)
            })
            .await?;
        self.db.notify_outbox();
        Ok(id)
    }
}

/// A client's `Idempotency-Key`: 1 to 200 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let ok = !raw.is_empty() && raw.len() <= 200 && raw.bytes().all(|b| b.is_ascii_graphic());
        if ok {
            Ok(IdempotencyKey(raw.to_owned()))
        } else {
            Err("Idempotency-Key must be 1 to 200 visible ASCII characters".into())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What `create` did.
pub enum Created {
    /// A new saga, committed with its first command.
    New(Box<Saga>),
    /// The idempotency key had already created this one.
    Existing(SagaId),
}

fn saga_of_key(tx: &Transaction<'_>, key: &IdempotencyKey) -> StorageResult<Option<SagaId>> {
    let raw: Option<i64> = optional(tx.query_row(
        "SELECT saga_id FROM idempotency_keys WHERE key = ?1",
        [key.as_str()],
        |r| r.get(0),
    ))?;
    Ok(raw.and_then(|id| OrderId::new(id).ok()))
}

fn persist(
    tx: &Transaction<'_>,
    def: &SagaDefinition,
    saga: &Saga,
    transition: &Transition,
    first_seq: i64,
    now: Millis,
) -> StorageResult<()> {
    tx.execute(
        "UPDATE sagas SET state = ?2, order_status = ?3, body = ?4, updated_at = ?5 WHERE id = ?1",
        params![
            saga.id.get(),
            saga.state.as_str(),
            saga.order_status.as_str(),
            to_json(saga)?,
            now.0
        ],
    )?;
    for (n, h) in transition.history.iter().enumerate() {
        tx.execute(
            "INSERT INTO saga_history (saga_id, seq, body) VALUES (?1, ?2, ?3)",
            params![saga.id.get(), first_seq + 1 + n as i64, to_json(h)?],
        )?;
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
            outbox::enqueue(tx, &command_message(def, &cmd, saga.id)?, now.plus(*delay))?;
        }
    }
    Ok(())
}

fn load(c: &Connection, id: SagaId) -> StorageResult<Option<Saga>> {
    let body: Option<String> = optional(c.query_row(
        "SELECT body FROM sagas WHERE id = ?1",
        [id.get()],
        |r| r.get(0),
    ))?;
    body.map(|b| from_json(&b)).transpose()
}

/// Sagas, optionally of one state or one customer, ordered by id.
pub fn list_sagas(
    c: &Connection,
    page: Page,
    state: Option<SagaState>,
    customer: Option<CustomerId>,
) -> StorageResult<Vec<Saga>> {
    let mut stmt = c.prepare_cached(
        "SELECT body FROM sagas WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR customer_id = ?2)
         ORDER BY id LIMIT ?3 OFFSET ?4",
    )?;
    let bodies = stmt
        .query_map(
            params![
                state.map(SagaState::as_str),
                customer.map(CustomerId::get),
                page.limit,
                page.offset
            ],
            |r| r.get::<_, String>(0),
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    bodies.iter().map(|b| from_json(b)).collect()
}

pub fn get_saga(c: &Connection, id: SagaId) -> StorageResult<Option<Saga>> {
    load(c, id)
}

pub fn history(c: &Connection, id: SagaId) -> StorageResult<Vec<HistoryEntry>> {
    let mut stmt =
        c.prepare_cached("SELECT body FROM saga_history WHERE saga_id = ?1 ORDER BY seq")?;
    let bodies = stmt
        .query_map([id.get()], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    bodies.iter().map(|b| from_json(b)).collect()
}

pub fn create_customer(
    tx: &Transaction<'_>,
    name: &str,
    phone: &str,
    address: &str,
    age: Option<i64>,
) -> StorageResult<CustomerRecord> {
    tx.execute(
        "INSERT INTO customers (name, phone, address, age, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![name, phone, address, age, Millis::now().0],
    )?;
    let id = CustomerId::new(tx.last_insert_rowid())
        .map_err(|e| StorageError::Invalid(e.to_string()))?;
    Ok(CustomerRecord {
        id,
        name: name.to_owned(),
        phone: phone.to_owned(),
        address: address.to_owned(),
        age,
    })
}

fn customer(r: &rusqlite::Row<'_>) -> rusqlite::Result<CustomerRecord> {
    Ok(CustomerRecord {
        id: CustomerId::new(r.get(0)?)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?,
        name: r.get(1)?,
        phone: r.get(2)?,
        address: r.get(3)?,
        age: r.get(4)?,
    })
}

pub fn list_customers(c: &Connection, page: Page) -> StorageResult<Vec<CustomerRecord>> {
    let mut stmt = c.prepare_cached(
        "SELECT id, name, phone, address, age FROM customers ORDER BY id LIMIT ?1 OFFSET ?2",
    )?;
    Ok(stmt
        .query_map(params![page.limit, page.offset], customer)?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

pub fn get_customer(c: &Connection, id: CustomerId) -> StorageResult<Option<CustomerRecord>> {
    Ok(optional(c.query_row(
        "SELECT id, name, phone, address, age FROM customers WHERE id = ?1",
        [id.get()],
        customer,
    ))?)
}
