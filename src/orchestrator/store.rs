//! The orchestrator's database (`orchestrator.db`): customers, sagas (one
//! per order, the order's state included), their history, and the outbox of
//! commands. Only the orchestrator and the API write it.

use std::sync::Arc;

use rusqlite::{Connection, params};
use serde::Serialize;

use crate::domain::{CustomerId, Millis, OrderId, OrderStatus, SagaId};
use crate::events::{self, DomainEvent, OrderData, Payload, ReviewData};
use crate::messages::{OrderDetails, WorkerCommand, partition_key};
use crate::partition::Owned;
use crate::saga::definition::SagaDefinition;
use crate::saga::machine::{Admission, Command, Event, HistoryEntry, Saga, SagaState, Transition};
use crate::storage::{Db, Page, StorageError, StorageResult, next_owned_id, optional, outbox};
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
    updated_at   INTEGER NOT NULL,
    -- The earliest timer the saga waits on (NULL: none): recovery loads
    -- every saga with one, whatever its state.
    wakes_at     INTEGER
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
CREATE TABLE IF NOT EXISTS order_keys (
    key        TEXT PRIMARY KEY,
    saga_id    INTEGER NOT NULL,
    -- The request's fingerprint; NULL for a key kept from before version 2,
    -- which matches any request as keys then did.
    request    TEXT,
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
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
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
    /// The partitions this orchestrator owns: new ids fall in them.
    owned: Owned,
}

fn to_json<T: Serialize>(v: &T) -> StorageResult<String> {
    serde_json::to_string(v).map_err(|e| StorageError::Invalid(format!("cannot encode: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> StorageResult<T> {
    serde_json::from_str(s)
        .map_err(|e| StorageError::Invalid(format!("cannot decode stored saga: {e}")))
}

/// A stored saga whose body cannot be decoded (written by an incompatible
/// version, or damaged). It is quarantined: shown as `Failed` with the
/// reason, never driven, and never in the way of start-up or the lists.
#[derive(Debug, Clone, PartialEq)]
pub struct Quarantined {
    pub id: SagaId,
    pub order_status: Option<OrderStatus>,
    pub reason: String,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// A row of `sagas`, decoded or quarantined.
#[derive(Debug, Clone)]
pub enum Stored {
    Saga(Box<Saga>),
    Quarantined(Quarantined),
}

/// The columns `decode` reads, in this order.
const ROW: &str = "id, body, order_status, created_at, updated_at";

/// Decodes one row of [`ROW`]; a body that does not decode is quarantined.
fn decode(r: &rusqlite::Row<'_>) -> rusqlite::Result<Stored> {
    let id: i64 = r.get(0)?;
    let body: String = r.get(1)?;
    Ok(match serde_json::from_str::<Saga>(&body) {
        Ok(saga) => Stored::Saga(Box::new(saga)),
        Err(e) => Stored::Quarantined(Quarantined {
            id: OrderId::new(id)
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?,
            order_status: r.get::<_, String>(2)?.parse().ok(),
            reason: format!("quarantined: the stored saga cannot be decoded ({e})"),
            created_at: Millis(r.get(3)?),
            updated_at: Millis(r.get(4)?),
        }),
    })
}

/// The outgoing message of a command for a worker.
pub fn command_message(
    def: &SagaDefinition,
    cmd: &WorkerCommand,
    order: &OrderDetails,
) -> StorageResult<Outgoing> {
    let worker = def
        .steps
        .iter()
        .find(|s| s.name == cmd.step())
        .map(|s| s.worker)
        .ok_or_else(|| StorageError::Invalid(format!("no step `{}` in the saga", cmd.step())))?;
    Ok(Outgoing {
        message_id: cmd.message_id(),
        correlation_id: order.order_id.to_string(),
        message_type: cmd.message_type(worker),
        route: Route::Command(worker, partition_key(worker, order)),
        body: to_json(cmd)?.into_bytes(),
    })
}

impl SagaStore {
    pub fn new(db: Db, def: Arc<SagaDefinition>, owned: Owned) -> Self {
        SagaStore { db, def, owned }
    }

    pub fn owned(&self) -> &Owned {
        &self.owned
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Creates an order's saga and applies its `Start`, in one transaction.
    /// `admit_within`: how long the payment may take before the order is
    /// abandoned (kept in the saga, so it survives a restart).
    pub async fn create(
        &self,
        draft: OrderDetails,
        key: Option<IdempotencyKey>,
        admit_within: std::time::Duration,
    ) -> StorageResult<Created> {
        let def = self.def.clone();
        let owned = self.owned.clone();
        let result = self
            .db
            .write(move |tx| {
                let now = Millis::now();
                let request = request_fingerprint(&draft);
                if let Some(key) = &key {
                    match key_use(tx, key, &request)? {
                        KeyUse::Fresh => {}
                        KeyUse::OtherRequest(id) => return Ok(Created::KeyReused(id)),
                        KeyUse::Placed(id) => return Ok(Created::Existing(id)),
                        KeyUse::TurnedAway => {
                            // Its order was turned away with a 503 and nothing
                            // was established: the retry places it anew.
                            tx.execute("DELETE FROM order_keys WHERE key = ?1", [key.as_str()])?;
                        }
                    }
                }
                let next = next_owned_id(tx, "sagas", &owned)?;
                tx.execute(
                    "INSERT INTO sagas (id, state, order_status, customer_id, body, created_at, updated_at)
                     VALUES (?1, 'Running', 'Ordered', ?2, '{}', ?3, ?3)",
                    params![next, draft.customer_id.get(), now.0],
                )?;
                let id = OrderId::new(next).map_err(|e| StorageError::Invalid(e.to_string()))?;
                let mut saga = Saga::new(&def, OrderDetails { order_id: id, ..draft }, now);
                saga.admit_by = Some(now.plus(admit_within));
                let transition = saga
                    .apply(&def, &Event::Start, now)
                    .map_err(|e| StorageError::Invalid(e.to_string()))?;
                persist(tx, &def, &saga, &transition, 0, now, true)?;
                if let Some(key) = &key {
                    tx.execute(
                        "INSERT INTO order_keys (key, saga_id, request, created_at) VALUES (?1, ?2, ?3, ?4)",
                        params![key.as_str(), id.get(), request, now.0],
                    )?;
                }
                Ok(Created::New(Box::new(saga)))
            })
            .await?;
        self.db.notify_outbox();
        Ok(result)
    }

    /// What `key` says about this request now (read-only). `create` decides
    /// again in its own transaction; this only spares a replay the checks a
    /// new order needs (a replay answers for its order even if the stock has
    /// run out since).
    pub async fn key_use(
        &self,
        key: &IdempotencyKey,
        draft: &OrderDetails,
    ) -> StorageResult<KeyUse> {
        let (key, request) = (key.clone(), request_fingerprint(draft));
        self.db.read(move |c| key_use(c, &key, &request)).await
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

    pub async fn load(&self, id: SagaId) -> StorageResult<Option<Stored>> {
        self.db.read(move |c| get_saga(c, id)).await
    }

    /// Every saga that still has work to do (for recovery), in one query.
    /// Rows that cannot be decoded are marked `Failed` (quarantined) and
    /// returned apart, so that one bad row never stops start-up.
    pub async fn load_active(&self) -> StorageResult<(Vec<Saga>, Vec<Quarantined>)> {
        let rows = self
            .db
            .read(|c| {
                let mut stmt = c.prepare(&format!(
                    "SELECT {ROW} FROM sagas
                     WHERE state IN ('Running', 'Compensating') OR wakes_at IS NOT NULL ORDER BY id"
                ))?;
                Ok(stmt
                    .query_map([], decode)?
                    .collect::<rusqlite::Result<Vec<_>>>()?)
            })
            .await?;
        let (mut sagas, mut bad) = (Vec::new(), Vec::new());
        for row in rows {
            match row {
                Stored::Saga(s) => sagas.push(*s),
                Stored::Quarantined(q) => bad.push(q),
            }
        }
        if !bad.is_empty() {
            let ids: Vec<i64> = bad.iter().map(|q| q.id.get()).collect();
            self.db
                .write(move |tx| {
                    for id in ids {
                        tx.execute("UPDATE sagas SET state = 'Failed' WHERE id = ?1", [id])?;
                    }
                    Ok(())
                })
                .await?;
        }
        Ok((sagas, bad))
    }
}

/// The earliest timer a saga waits on, if any.
fn wakes_at(saga: &Saga) -> Option<Millis> {
    saga.pending_timers()
        .iter()
        .filter_map(|c| match c {
            Command::ArmTimer { at, .. } | Command::ArmAdmission { at } => Some(*at),
            _ => None,
        })
        .min()
}

/// The version of `orchestrator.db`'s layout (`PRAGMA user_version`).
const LAYOUT_VERSION: i64 = 2;

impl SagaStore {
    /// Brings a database written by an earlier version up to this one, in
    /// one transaction (nothing to do for a new or current one):
    ///
    /// 1 → 2: amounts in whole cents (a saga's and an unsent command's
    /// `order.amount` was a decimal), idempotency keys with their request
    /// (kept keys match any request, as they did), and `wakes_at`.
    pub async fn migrate(&self) -> StorageResult<()> {
        self.db
            .write(|tx| {
                let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
                if version >= LAYOUT_VERSION {
                    return Ok(());
                }
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
                tx.execute_batch(&format!(
                    "CREATE INDEX IF NOT EXISTS sagas_wakes ON sagas (wakes_at) WHERE wakes_at IS NOT NULL;
                     PRAGMA user_version = {LAYOUT_VERSION};"
                ))?;
                Ok(())
            })
            .await
    }
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

fn key_use(tx: &Connection, key: &IdempotencyKey, request: &str) -> StorageResult<KeyUse> {
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
    /// The idempotency key belongs to another request (this order).
    KeyReused(SagaId),
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
        "UPDATE sagas SET state = ?2, order_status = ?3, body = ?4, updated_at = ?5, wakes_at = ?6
         WHERE id = ?1",
    )?
    .execute(params![
        saga.id.get(),
        saga.state.as_str(),
        saga.order_status.as_str(),
        to_json(saga)?,
        now.0,
        wakes_at(saga).map(|m| m.0)
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

/// Sagas, optionally of one state or one customer, ordered by id.
pub fn list_sagas(
    c: &Connection,
    page: Page,
    state: Option<SagaState>,
    customer: Option<CustomerId>,
) -> StorageResult<Vec<Stored>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {ROW} FROM sagas WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR customer_id = ?2)
         ORDER BY id LIMIT ?3 OFFSET ?4"
    ))?;
    Ok(stmt
        .query_map(
            params![
                state.map(SagaState::as_str),
                customer.map(CustomerId::get),
                page.limit,
                page.offset
            ],
            decode,
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

pub fn get_saga(c: &Connection, id: SagaId) -> StorageResult<Option<Stored>> {
    Ok(optional(c.query_row(
        &format!("SELECT {ROW} FROM sagas WHERE id = ?1"),
        [id.get()],
        decode,
    ))?)
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
    owned: &Owned,
) -> StorageResult<CustomerRecord> {
    let next = next_owned_id(tx, "customers", owned)?;
    tx.execute(
        "INSERT INTO customers (id, name, phone, address, age, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![next, name, phone, address, age, Millis::now().0],
    )?;
    let id = CustomerId::new(next).map_err(|e| StorageError::Invalid(e.to_string()))?;
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
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
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
    let data = ReviewData {
        id: rec.id,
        username: rec.username.clone(),
        productname: rec.productname.clone(),
        content: rec.content.clone(),
        rating: rec.rating,
        created_at: rec.created_at.clone(),
    };
    DomainEvent::new("created", 1, Payload::Review(data))
}

/// Stores a review and emits `review.created`, in one transaction.
pub fn create_review(
    tx: &Connection,
    username: &str,
    productname: &str,
    content: &str,
    rating: Option<i64>,
    owned: &Owned,
) -> StorageResult<ReviewRecord> {
    let now = Millis::now();
    let next = next_owned_id(tx, "reviews", owned)?;
    tx.execute(
        "INSERT INTO reviews (id, username, productname, content, rating, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![next, username, productname, content, rating, now.0],
    )?;
    let rec = ReviewRecord {
        id: next,
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
