//! The orchestrator's database (`orchestrator.db`): sagas (one per order,
//! the order's state included) with their history and the outbox of
//! commands, idempotency keys, customers and reviews. Only the orchestrator
//! owning its partitions writes it.
//!
//! - [`sagas`]: saga rows (decoded or quarantined), history, persisting a
//!   transition, the order's events;
//! - [`keys`]: idempotency keys bound to their request;
//! - [`customers`], [`reviews`]: the other families of rows;
//! - [`migrate`]: upgrades of older layouts, in place.

pub mod customers;
pub mod keys;
mod migrate;
pub mod reviews;
pub mod sagas;

use std::sync::Arc;

use rusqlite::params;
use serde::Serialize;

use crate::domain::{IdempotencyKey, Millis, OrderId, SagaId};
use crate::messages::{OrderDetails, WorkerCommand, partition_key};
use crate::partition::Owned;
use crate::saga::definition::SagaDefinition;
use crate::saga::machine::{Event, Saga, Transition};
use crate::storage::{Db, StorageError, StorageResult, next_owned_id};
use crate::transport::{Outgoing, Route};
pub use keys::KeyUse;
pub use sagas::{PendingMessage, Quarantined, Stored};

/// Every table of `orchestrator.db`.
pub fn schema() -> String {
    [
        sagas::SCHEMA,
        keys::SCHEMA,
        customers::SCHEMA,
        reviews::SCHEMA,
    ]
    .concat()
}

/// Saga persistence. Cheap to clone.
#[derive(Clone)]
pub struct SagaStore {
    db: Db,
    def: Arc<SagaDefinition>,
    /// The partitions this orchestrator owns: new ids fall in them.
    owned: Owned,
}

/// Inserts a new saga's row for `order` (its id given) and starts it: the
/// saga and its first transition, to persist in the same transaction.
fn start_saga(
    tx: &rusqlite::Connection,
    def: &SagaDefinition,
    order: OrderDetails,
    admit_within: std::time::Duration,
    now: Millis,
    by: Option<&str>,
) -> StorageResult<(Saga, Transition)> {
    tx.prepare_cached(
        "INSERT INTO sagas (id, state, order_status, customer_id, body, created_at, updated_at,
                            food_id)
         VALUES (?1, 'Running', 'Ordered', ?2, '{}', ?3, ?3, ?4)",
    )?
    .execute(params![
        order.order_id.get(),
        order.customer_id.get(),
        now.0,
        order.food_id.get()
    ])?;
    let mut saga = Saga::new(def, order, now);
    saga.admit_by = Some(now.plus(admit_within));
    let transition = saga
        .apply_by(def, &Event::Start, now, by)
        .map_err(|e| StorageError::Invalid(e.to_string()))?;
    Ok((saga, transition))
}

fn to_json<T: Serialize>(v: &T) -> StorageResult<String> {
    serde_json::to_string(v).map_err(|e| StorageError::Invalid(format!("cannot encode: {e}")))
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
    /// The new saga's id falls in one of `within` (owned partitions).
    pub async fn create(
        &self,
        draft: OrderDetails,
        key: Option<IdempotencyKey>,
        admit_within: std::time::Duration,
        within: Owned,
    ) -> StorageResult<Created> {
        let def = self.def.clone();
        let owned = within;
        let result = self
            .db
            .write(move |tx| {
                let now = Millis::now();
                let request = keys::request_fingerprint(&draft);
                if let Some(key) = &key {
                    match keys::key_use(tx, draft.customer_id, key, &request)? {
                        KeyUse::Fresh => {}
                        KeyUse::OtherRequest(id) => return Ok(Created::KeyReused(id)),
                        KeyUse::Placed(id) => return Ok(Created::Existing(id)),
                        KeyUse::TurnedAway => {
                            // Its order was turned away with a 503 and nothing
                            // was established: the retry places it anew.
                            tx.prepare_cached(
                                "DELETE FROM order_keys WHERE key = ?1")?.execute(
                                [keys::stored(draft.customer_id, key)],
                            )?;
                        }
                    }
                }
                let next = next_owned_id(tx, "sagas", &owned)?;
                let id = OrderId::new(next).map_err(|e| StorageError::Invalid(e.to_string()))?;
                let (saga, transition) = start_saga(
                    tx,
                    &def,
                    OrderDetails { order_id: id, ..draft },
                    admit_within,
                    now,
                    None,
                )?;
                sagas::persist(tx, &def, &saga, &transition, 0, now, true)?;
                if let Some(key) = &key {
                    tx.prepare_cached(
                        "INSERT INTO order_keys (key, saga_id, request, created_at) VALUES (?1, ?2, ?3, ?4)")?.execute(
                        params![keys::stored(draft.customer_id, key), id.get(), request, now.0],
                    )?;
                }
                Ok(Created::New(Box::new(saga)))
            })
            .await?;
        self.db.notify_outbox();
        Ok(result)
    }

    /// Of `ids` (orders the event log knows), those of owned partitions
    /// that this folder lost with a restore: below its id floor (set by
    /// `hearty restore` above every id it had) and not in it; and those it
    /// has (the backup holds them).
    pub async fn lost_after_restore(&self, ids: Vec<i64>) -> StorageResult<(Vec<i64>, Vec<i64>)> {
        let owned = self.owned.clone();
        self.db
            .read(move |c| {
                let floor: Option<i64> = crate::storage::optional(c.query_row(
                    "SELECT floor FROM id_floor WHERE tbl = 'sagas'",
                    [],
                    |r| r.get(0),
                ))?;
                let Some(floor) = floor else {
                    return Ok((Vec::new(), Vec::new()));
                };
                let (mut lost, mut kept) = (Vec::new(), Vec::new());
                for id in ids {
                    if id >= floor || !owned.owns(id) {
                        continue;
                    }
                    let known: bool = c.query_row(
                        "SELECT EXISTS (SELECT 1 FROM sagas WHERE id = ?1)",
                        [id],
                        |r| r.get(0),
                    )?;
                    if known {
                        kept.push(id);
                    } else {
                        lost.push(id);
                    }
                }
                Ok((lost, kept))
            })
            .await
    }

    /// Cancels, by `system:restore`, a restored saga whose order was
    /// cancelled after the backup (the event log says so and the backup
    /// does not); `false` if it is cancelled already or cannot be.
    pub async fn cancel_after_restore(&self, id: SagaId) -> StorageResult<bool> {
        let def = self.def.clone();
        let cancelled = self
            .db
            .write(move |tx| {
                let Some(Stored::Saga(saga)) = sagas::get_saga(tx, id)? else {
                    return Ok(false);
                };
                let mut saga = *saga;
                if saga.order_status == crate::domain::OrderStatus::Cancelled {
                    return Ok(false);
                }
                let now = Millis::now();
                let transition =
                    match saga.apply_by(&def, &Event::Cancel, now, Some("system:restore")) {
                        Ok(t) if t.changed() => t,
                        Ok(_) => return Ok(false),
                        Err(refused) => {
                            tracing::warn!(order = id.get(), %refused, "an order the log shows cancelled after the backup cannot be cancelled");
                            return Ok(false);
                        }
                    };
                let next_seq = sagas::last_history_seq(tx, id)?;
                sagas::persist(tx, &def, &saga, &transition, next_seq, now, true)?;
                Ok(true)
            })
            .await?;
        self.db.notify_outbox();
        Ok(cancelled)
    }

    /// Makes an order's saga again under its own id, from its start (and
    /// cancels it at once when `cancel`), in one transaction; `false` if it
    /// exists. Only before recovery (no actor acts for it yet).
    pub async fn recreate(
        &self,
        order: OrderDetails,
        admit_within: std::time::Duration,
        cancel: bool,
    ) -> StorageResult<bool> {
        let def = self.def.clone();
        let created = self
            .db
            .write(move |tx| {
                let id = order.order_id.get();
                let exists: bool = tx.query_row(
                    "SELECT EXISTS (SELECT 1 FROM sagas WHERE id = ?1)",
                    [id],
                    |r| r.get(0),
                )?;
                if exists {
                    return Ok(false);
                }
                let now = Millis::now();
                let (mut saga, mut transition) =
                    start_saga(tx, &def, order, admit_within, now, Some("system:restore"))?;
                if cancel {
                    match saga.apply_by(&def, &Event::Cancel, now, Some("system:restore")) {
                        Ok(cancelled) => {
                            transition.commands.extend(cancelled.commands);
                            transition.history.extend(cancelled.history);
                        }
                        Err(refused) => tracing::warn!(
                            order = id,
                            %refused,
                            "a re-driven order the log shows cancelled cannot be cancelled"
                        ),
                    }
                }
                sagas::persist(tx, &def, &saga, &transition, 0, now, true)?;
                Ok(true)
            })
            .await?;
        self.db.notify_outbox();
        Ok(created)
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
        let (key, request) = (key.clone(), keys::request_fingerprint(draft));
        let customer = draft.customer_id;
        self.db
            .read(move |c| keys::key_use(c, customer, &key, &request))
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
                let next_seq = sagas::last_history_seq(tx, saga.id)?;
                sagas::persist(
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
        self.db.read(move |c| sagas::get_saga(c, id)).await
    }

    /// Several sagas at once (those whose timers are due after a
    /// recovery); an id with no row is left out.
    pub async fn load_many(&self, ids: Vec<SagaId>) -> StorageResult<Vec<Stored>> {
        self.db
            .read(move |c| {
                let mut found = Vec::with_capacity(ids.len());
                for id in ids {
                    if let Some(stored) = sagas::get_saga(c, id)? {
                        found.push(stored);
                    }
                }
                Ok(found)
            })
            .await
    }

    /// What recovery needs of the owned partitions' sagas without loading
    /// any of them: how many are in flight, and when each one that waits on
    /// a timer is due (two index scans; no body is read). The sagas of other
    /// partitions in this file (a process restarted with fewer partitions)
    /// are their owner's.
    pub async fn dormant(&self) -> StorageResult<Dormant> {
        let owned = self.owned.clone();
        self.db
            .read(move |c| {
                let mut in_flight = 0;
                let mut stmt =
                    c.prepare("SELECT id FROM sagas WHERE state IN ('Running', 'Compensating')")?;
                let mut rows = stmt.query([])?;
                while let Some(row) = rows.next()? {
                    if owned.owns(row.get(0)?) {
                        in_flight += 1;
                    }
                }
                let mut wakes = Vec::new();
                let mut stmt =
                    c.prepare("SELECT wakes_at, id FROM sagas WHERE wakes_at IS NOT NULL")?;
                let mut rows = stmt.query([])?;
                while let Some(row) = rows.next()? {
                    let (at, id): (i64, i64) = (row.get(0)?, row.get(1)?);
                    if owned.owns(id) {
                        let id =
                            OrderId::new(id).map_err(|e| StorageError::Invalid(e.to_string()))?;
                        wakes.push((Millis(at), id));
                    }
                }
                Ok(Dormant { in_flight, wakes })
            })
            .await
    }

    /// Marks these sagas `Failed` (quarantined: their body does not
    /// decode) and takes them off the wake list's column, so that the state
    /// filters show them as what they are and no restart wakes them again.
    /// Answers how many of them were in flight (`Running` or
    /// `Compensating`) until now.
    pub async fn quarantine(&self, bad: &[Quarantined]) -> StorageResult<usize> {
        let ids: Vec<i64> = bad.iter().map(|q| q.id.get()).collect();
        self.db
            .write(move |tx| {
                let mut were_in_flight = 0;
                for id in ids {
                    were_in_flight += tx
                        .prepare_cached(
                            "UPDATE sagas SET state = 'Failed', step = NULL
                             WHERE id = ?1 AND state IN ('Running', 'Compensating')",
                        )?
                        .execute([id])?;
                    tx.prepare_cached(
                        "UPDATE sagas SET state = 'Failed', wakes_at = NULL, step = NULL WHERE id = ?1",
                    )?
                    .execute([id])?;
                }
                Ok(were_in_flight)
            })
            .await
    }

    /// The largest saga id so far (the end of the quarantine audit).
    pub async fn last_id(&self) -> StorageResult<i64> {
        self.db
            .read(|c| Ok(c.query_row("SELECT coalesce(max(id), 0) FROM sagas", [], |r| r.get(0))?))
            .await
    }

    /// One step of the audit that follows start-up (recovery reads no
    /// body): the sagas of owned partitions with ids in `ids` that recovery
    /// counted or would wake (in flight, or with a timer) and whose stored
    /// body no longer decodes are quarantined. A window of row ids, read
    /// `NOT INDEXED` (along the rowid, never sorting), so each step reads a
    /// bounded number of rows in a short read transaction.
    pub async fn quarantine_undecodable(
        &self,
        ids: std::ops::RangeInclusive<i64>,
    ) -> StorageResult<Audit> {
        let owned = self.owned.clone();
        let (bad, next) = self
            .db
            .read(move |c| {
                let mut stmt = c.prepare_cached(&format!(
                    "SELECT {} FROM sagas NOT INDEXED
                     WHERE id >= ?1 AND id <= ?2
                       AND (state IN ('Running', 'Compensating') OR wakes_at IS NOT NULL)",
                    sagas::ROW
                ))?;
                let mut rows = stmt.query(params![ids.start(), ids.end()])?;
                let mut bad = Vec::new();
                while let Some(row) = rows.next()? {
                    if let Stored::Quarantined(q) = sagas::decode(row)?
                        && owned.owns(q.id.get())
                    {
                        bad.push(q);
                    }
                }
                // Where the next step starts: ids have gaps (a restored
                // folder's jump by its id floor), which are not walked.
                let next: Option<i64> = c
                    .prepare_cached("SELECT min(id) FROM sagas WHERE id > ?1")?
                    .query_row([ids.end()], |r| r.get(0))?;
                Ok((bad, next))
            })
            .await?;
        let were_in_flight = if bad.is_empty() {
            0
        } else {
            self.quarantine(&bad).await?
        };
        Ok(Audit {
            quarantined: bad,
            were_in_flight,
            next,
        })
    }
}

/// What one step of [`SagaStore::quarantine_undecodable`] found.
#[derive(Debug, Default)]
pub struct Audit {
    pub quarantined: Vec<Quarantined>,
    /// How many of them recovery had counted in flight.
    pub were_in_flight: usize,
    /// The first id after the window (`None`: none).
    pub next: Option<i64>,
}

/// The owned partitions' sagas as recovery finds them (see
/// [`SagaStore::dormant`]).
#[derive(Debug, Default)]
pub struct Dormant {
    /// Sagas in flight (running or compensating).
    pub in_flight: usize,
    /// Every saga that waits on a timer, with when its earliest is due.
    pub wakes: Vec<(Millis, SagaId)>,
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
