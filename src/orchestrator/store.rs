//! The orchestrator's database (`orchestrator.db`): customers, sagas (one
//! per order, the order's state included), their history, and the outbox of
//! commands. Only the orchestrator and the API write it.

use std::sync::Arc;

use rusqlite::{Connection, params};
use serde::Serialize;

use crate::domain::{CustomerId, Millis, OrderId, OrderStatus, SagaId};
use crate::events::{self, DomainEvent, Entity};
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
CREATE TABLE IF NOT EXISTS reviews (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    username    TEXT    NOT NULL,
    productname TEXT    NOT NULL,
    content     TEXT    NOT NULL,
    rating      INTEGER,
    created_at  INTEGER NOT NULL
);
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
                persist(tx, &def, &saga, &transition, 0, now, true)?;
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
    /// `order_changed`: the order's status or the saga's state changed, so
    /// an order event goes out with it.
    pub async fn commit(
        &self,
        saga: &Saga,
        transition: &Transition,
        order_changed: bool,
    ) -> StorageResult<()> {
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
                persist(
                    tx,
                    &def,
                    &saga,
                    &transition,
                    next_seq,
                    saga.updated_at,
                    order_changed,
                )
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

fn saga_of_key(tx: &Connection, key: &IdempotencyKey) -> StorageResult<Option<SagaId>> {
    let raw: Option<i64> = optional(tx.query_row(
        "SELECT saga_id FROM idempotency_keys WHERE key = ?1",
        [key.as_str()],
        |r| r.get(0),
    ))?;
    Ok(raw.and_then(|id| OrderId::new(id).ok()))
}

/// An order's current state as a domain event: `order.placed`,
/// `order.paid`, ..., `order.cancelled`. Its version is the number of the
/// saga's last history line, which only grows.
pub fn order_event(saga: &Saga, version: i64) -> DomainEvent {
    let what = match saga.order_status {
        OrderStatus::Ordered => "placed".to_owned(),
        other => other.as_str().to_ascii_lowercase(),
    };
    DomainEvent::new(
        Entity::Order,
        &what,
        saga.id.get(),
        version,
        order_json(saga),
    )
}

/// An order as the API shows it and its events carry it.
pub fn order_json(saga: &Saga) -> serde_json::Value {
    serde_json::json!({
        "id": saga.id,
        "orderId": saga.id,
        "customerId": saga.order.customer_id,
        "foodCatalogId": saga.order.food_id,
        "qty": saga.order.qty,
        "amount": saga.order.amount,
        "status": saga.order_status,
        "sagaState": saga.state,
        "reason": saga.reason,
        "createdAt": saga.created_at.to_rfc3339(),
        "updatedAt": saga.updated_at.to_rfc3339(),
    })
}

/// Writes a saga, its history lines, its commands and (when the order
/// changed) the order's event, inside the caller's transaction.
fn persist(
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
        "UPDATE sagas SET state = ?2, order_status = ?3, body = ?4, updated_at = ?5 WHERE id = ?1",
    )?
    .execute(params![
        saga.id.get(),
        saga.state.as_str(),
        saga.order_status.as_str(),
        to_json(saga)?,
        now.0
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
    tx: &Connection,
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

/// A product review as stored and shown.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReviewRecord {
    pub id: i64,
    pub username: String,
    pub productname: String,
    pub content: String,
    pub rating: Option<i64>,
    pub created_at: String,
}

fn review(r: &rusqlite::Row<'_>) -> rusqlite::Result<ReviewRecord> {
    Ok(ReviewRecord {
        id: r.get(0)?,
        username: r.get(1)?,
        productname: r.get(2)?,
        content: r.get(3)?,
        rating: r.get(4)?,
        created_at: Millis(r.get(5)?).to_rfc3339(),
    })
}

fn review_event(rec: &ReviewRecord) -> DomainEvent {
    let data = serde_json::to_value(rec).unwrap_or_default();
    DomainEvent::new(Entity::Review, "created", rec.id, 1, data)
}

/// Stores a review and emits `review.created`, in one transaction.
pub fn create_review(
    tx: &Connection,
    username: &str,
    productname: &str,
    content: &str,
    rating: Option<i64>,
) -> StorageResult<ReviewRecord> {
    let now = Millis::now();
    tx.execute(
        "INSERT INTO reviews (username, productname, content, rating, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![username, productname, content, rating, now.0],
    )?;
    let rec = ReviewRecord {
        id: tx.last_insert_rowid(),
        username: username.to_owned(),
        productname: productname.to_owned(),
        content: content.to_owned(),
        rating,
        created_at: now.to_rfc3339(),
    };
    events::emit(tx, &review_event(&rec))?;
    Ok(rec)
}

const REVIEW_COLUMNS: &str = "id, username, productname, content, rating, created_at";

pub fn list_reviews(c: &Connection, page: Page) -> StorageResult<Vec<ReviewRecord>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {REVIEW_COLUMNS} FROM reviews ORDER BY id LIMIT ?1 OFFSET ?2"
    ))?;
    Ok(stmt
        .query_map(params![page.limit, page.offset], review)?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Every review as its `review.created` event (to rebuild the read model).
pub fn review_snapshots(c: &Connection) -> StorageResult<Vec<DomainEvent>> {
    let mut stmt = c.prepare(&format!("SELECT {REVIEW_COLUMNS} FROM reviews ORDER BY id"))?;
    let reviews = stmt
        .query_map([], review)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(reviews.iter().map(review_event).collect())
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
    rows.iter()
        .map(|(body, version)| Ok(order_event(&from_json::<Saga>(body)?, *version)))
        .collect()
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
#[derive(Debug, Clone)]
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
