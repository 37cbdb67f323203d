//! Workers: pay, kitchen, delivery and coupon. Each is an actix actor that
//! owns its SQLite database and consumes its own command queue.
//!
//! Handling one command, and where a crash leaves it:
//! 1. receive (unacked) — crash: the broker redelivers;
//! 2. one transaction: the effect, the inbox row (message id → replies), the
//!    replies in the outbox — crash before commit: nothing happened, redelivered;
//! 3. ack — crash before it: redelivered, the inbox answers with the stored
//!    replies and no second effect;
//! 4. the outbox relay publishes the replies — crash before the confirm: the
//!    relay publishes them again at start-up.

pub mod coupon;
pub mod delivery;
pub mod kitchen;
pub mod pay;

use std::sync::Arc;

use actix::prelude::*;
use futures_util::FutureExt;
use rusqlite::Connection;

use crate::events::DomainEvent;

use crate::config::{Config, FailureCount, Latency, Mode};
use crate::domain::{Millis, Money, OrderId, WorkerKind};
use crate::messages::{ReplyOutcome, WorkerCommand, WorkerReply};
use crate::metrics::{METRICS, inc};
use crate::partition::Partition;
use crate::shutdown::Shutdown;
use crate::storage::{Db, StorageError, inbox, outbox};
use crate::transport::consume::consume_each;
use crate::transport::poison::{FailureCounts, dead_letter, hand_back_or_dead_letter};
use crate::transport::{Outgoing, QueueName, Received, Route, Transport};

/// What applying a command came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// A definitive answer: recorded in the inbox with the command's id.
    Final(Vec<ReplyOutcome>),
    /// A passing failure (a compensation that could not be applied now): it
    /// is answered but not recorded, so the next attempt runs again.
    Transient(ReplyOutcome),
    /// Progress that does not fit the record's state; nothing is answered.
    Ignored(String),
}

/// The business rules of one worker kind, applied inside a transaction.
pub trait WorkerLogic: Send + Sync + 'static {
    fn kind(&self) -> WorkerKind;

    /// The worker's tables.
    fn schema(&self) -> &'static str;

    /// Applies a command that this worker has not seen before.
    fn apply(&self, tx: &Connection, cmd: &WorkerCommand, now: Millis)
    -> rusqlite::Result<Applied>;
}

/// The simulation knobs of PRODUCT.md.
#[derive(Debug, Clone, Copy)]
pub struct Knobs {
    pub kitchen_mode: Mode,
    pub delivery_mode: Mode,
    pub pay_decline_above: Money,
}

impl Knobs {
    pub fn from_config(c: &Config) -> Self {
        Knobs {
            kitchen_mode: c.kitchen_mode,
            delivery_mode: c.delivery_mode,
            pay_decline_above: c.pay_decline_above,
        }
    }
}

/// The logic of a worker kind.
pub fn logic_for(kind: WorkerKind, knobs: Knobs) -> Arc<dyn WorkerLogic> {
    match kind {
        WorkerKind::Pay => Arc::new(pay::PayWorker {
            decline_above: knobs.pay_decline_above,
        }),
        WorkerKind::Kitchen => Arc::new(kitchen::KitchenWorker {
            mode: knobs.kitchen_mode,
        }),
        WorkerKind::Delivery => Arc::new(delivery::DeliveryWorker {
            mode: knobs.delivery_mode,
        }),
        WorkerKind::Coupon => Arc::new(coupon::CouponWorker),
    }
}

/// The schema of a worker's database (its tables, its inbox).
pub fn schema_of(logic: &dyn WorkerLogic) -> String {
    format!("{}\n{}", logic.schema(), inbox::SCHEMA)
}

/// How a worker misbehaves on purpose (simulation knobs).
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Artificial latency before each command.
    pub latency: Option<Latency>,
    /// Each compensation fails this many times before it succeeds.
    pub compensation_failures: Option<FailureCount>,
    /// Publish every reply twice (same message id), as a broker may.
    pub duplicate_replies: bool,
}

/// A worker actor: applies commands to its database.
pub struct WorkerActor {
    logic: Arc<dyn WorkerLogic>,
    db: Db,
    faults: Faults,
}

impl WorkerActor {
    pub fn new(logic: Arc<dyn WorkerLogic>, db: Db, faults: Faults) -> Self {
        WorkerActor { logic, db, faults }
    }
}

impl Actor for WorkerActor {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        tracing::info!(worker = %self.logic.kind(), "worker started");
    }
}

/// A worker actor runs under an actix `Supervisor`: when a handler panics
/// the actor is stopped and restarted with the same mailbox.
impl Supervised for WorkerActor {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        inc(&METRICS.actor_restarts_total);
        tracing::warn!(worker = %self.logic.kind(), "worker actor restarting after a failure");
    }
}

/// Why a command was not applied; the delivery is handed back.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("handler panicked: {0}")]
    Panicked(String),
}

/// Apply one command and commit its effect, inbox row and replies.
#[derive(Message)]
#[rtype(result = "Result<(), WorkerError>")]
pub struct Apply(pub WorkerCommand);

impl Handler<Apply> for WorkerActor {
    type Result = ResponseActFuture<Self, Result<(), WorkerError>>;

    fn handle(&mut self, Apply(cmd): Apply, _ctx: &mut Self::Context) -> Self::Result {
        let logic = self.logic.clone();
        let db = self.db.clone();
        let faults = self.faults;
        let kind = logic.kind();
        let span = tracing::info_span!("worker", worker = %kind, saga = %cmd.order_id(), msg = %cmd.message_id());
        let work = tracing::Instrument::instrument(
            async move {
                crate::failpoint::hit(&format!("{kind}-handler"));
                if let Some(l) = faults.latency {
                    tokio::time::sleep(l.sample()).await;
                }
                if let WorkerCommand::Progress { .. } = cmd {
                    crate::failpoint::hit(&format!("{kind}-progress"));
                }
                let queued = db
                    .write(move |tx| {
                        apply_in_tx(logic.as_ref(), faults, tx, &cmd).map_err(StorageError::from)
                    })
                    .await?;
                inc(&METRICS.worker_commands_total);
                if queued {
                    db.notify_outbox();
                }
                Ok(())
            },
            span,
        );
        Box::pin(
            std::panic::AssertUnwindSafe(work)
                .catch_unwind()
                .into_actor(self)
                .map(move |result, _act, ctx| match result {
                    Ok(applied) => applied,
                    Err(panic) => {
                        let why = crate::panic_message(panic.as_ref());
                        tracing::error!(worker = %kind, panic = %why, "handler panicked; restarting the actor");
                        ctx.stop();
                        Err(WorkerError::Panicked(why))
                    }
                }),
        )
    }
}

/// Tell the saga that one of its commands was dead-lettered (through the
/// outbox, like every reply).
#[derive(Message)]
#[rtype(result = "Result<(), StorageError>")]
pub struct NoteDeadLetter(pub WorkerReply);

impl Handler<NoteDeadLetter> for WorkerActor {
    type Result = ResponseFuture<Result<(), StorageError>>;

    fn handle(
        &mut self,
        NoteDeadLetter(reply): NoteDeadLetter,
        _ctx: &mut Self::Context,
    ) -> Self::Result {
        let db = self.db.clone();
        Box::pin(async move {
            db.write(move |tx| Ok(outbox::enqueue(tx, &reply_message(&reply), Millis::now())?))
                .await?;
            db.notify_outbox();
            Ok(())
        })
    }
}

/// The transaction of one command: returns whether replies were queued.
fn apply_in_tx(
    logic: &dyn WorkerLogic,
    faults: Faults,
    tx: &Connection,
    cmd: &WorkerCommand,
) -> rusqlite::Result<bool> {
    let id = cmd.message_id();
    let attempt = match cmd {
        WorkerCommand::Step { attempt, .. } => *attempt,
        WorkerCommand::Progress { .. } => 0,
    };
    let outcomes = match inbox::replies_of(tx, &id)? {
        Some(stored) => {
            tracing::debug!("duplicate command; answering as before");
            serde_json::from_str::<Vec<ReplyOutcome>>(&stored)
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?
        }
        None => match injected_failure(faults, tx, cmd, &id)?.map_or_else(
            || logic.apply(tx, cmd, Millis::now()),
            |f| Ok(Applied::Transient(f)),
        )? {
            Applied::Final(outcomes) => {
                let json = serde_json::to_string(&outcomes)
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
                inbox::record(tx, &id, &json)?;
                outcomes
            }
            Applied::Transient(outcome) => vec![outcome],
            Applied::Ignored(why) => {
                tracing::info!(why, "progress ignored");
                Vec::new()
            }
        },
    };
    let now = Millis::now();
    for outcome in &outcomes {
        let reply = WorkerReply {
            order_id: cmd.order_id(),
            step: cmd.step().to_owned(),
            in_reply_to: id.clone(),
            attempt,
            outcome: outcome.clone(),
        };
        let message = reply_message(&reply);
        outbox::enqueue(tx, &message, now)?;
        if faults.duplicate_replies {
            outbox::enqueue(tx, &message, now)?;
        }
    }
    Ok(!outcomes.is_empty())
}

/// An injected compensation failure, if one is due for this command.
fn injected_failure(
    faults: Faults,
    tx: &Connection,
    cmd: &WorkerCommand,
    id: &str,
) -> rusqlite::Result<Option<ReplyOutcome>> {
    let (
        Some(limit),
        WorkerCommand::Step {
            direction: crate::messages::Direction::Undo,
            ..
        },
    ) = (faults.compensation_failures, cmd)
    else {
        return Ok(None);
    };
    let before = inbox::count_injected_failure(tx, id)?;
    let fail = match limit {
        FailureCount::Always => true,
        FailureCount::Times(n) => before < n,
    };
    Ok(fail.then(|| ReplyOutcome::CompensationFailed {
        reason: format!("injected failure {} ({limit})", before + 1),
    }))
}

/// The outgoing form of a reply.
pub fn reply_message(reply: &WorkerReply) -> Outgoing {
    Outgoing {
        message_id: reply.message_id(),
        correlation_id: reply.order_id.to_string(),
        message_type: reply.message_type(),
        route: Route::Reply(reply.order_id.get()),
        // A struct of strings and numbers always serializes.
        body: serde_json::to_vec(reply).unwrap_or_default(),
    }
}

/// Consumes a worker's queue of one partition until shutdown: decode,
/// apply, then ack.
pub async fn consume(
    kind: WorkerKind,
    partition: Partition,
    worker: Addr<WorkerActor>,
    transport: Arc<dyn Transport>,
    shutdown: Shutdown,
) -> Result<(), crate::transport::TransportError> {
    // The database serializes the effects of deliveries handled at once.
    consume_each(
        transport,
        QueueName::Worker(kind, partition),
        shutdown,
        |d, f| handle_delivery(worker.clone(), d, f),
    )
    .await
}

async fn handle_delivery(
    worker: Addr<WorkerActor>,
    delivery: Received,
    failures: Arc<FailureCounts>,
) {
    let cmd: WorkerCommand = match serde_json::from_slice(&delivery.body) {
        Ok(c) => c,
        Err(e) => {
            let reason = format!("undecodable command: {e}");
            note_dead_letter(
                &worker,
                delivery.correlation_id.as_deref(),
                delivery.message_id.clone(),
                &reason,
            )
            .await;
            dead_letter(delivery, &reason).await;
            return;
        }
    };
    let id = cmd.message_id();
    let error = match worker.send(Apply(cmd)).await {
        Ok(Ok(())) => {
            failures.forget(&id);
            if let Err(e) = delivery.ack().await {
                // The effect is committed; a redelivery is answered from the inbox.
                tracing::warn!(error = %e, "ack failed");
            }
            return;
        }
        Ok(Err(e)) => e.to_string(),
        Err(e) => format!("worker actor unavailable: {e}"),
    };
    let (correlation, message_id) = (delivery.correlation_id.clone(), delivery.message_id.clone());
    if let Some(reason) = hand_back_or_dead_letter(delivery, &failures, &id, &error).await {
        note_dead_letter(&worker, correlation.as_deref(), message_id, &reason).await;
    }
}

/// Tells the saga of a dead-lettered command, when the message says which.
async fn note_dead_letter(
    worker: &Addr<WorkerActor>,
    correlation: Option<&str>,
    message_id: Option<String>,
    reason: &str,
) {
    let order = correlation.and_then(|c| c.parse::<OrderId>().ok());
    let message_id = message_id.unwrap_or_default();
    // `order-7.pay.do` → step `pay`.
    let step = message_id.split('.').nth(1).map(str::to_owned);
    if let (Some(order_id), Some(step)) = (order, step) {
        let reply = WorkerReply {
            order_id,
            step,
            in_reply_to: message_id,
            attempt: 0,
            outcome: ReplyOutcome::DeadLettered {
                reason: reason.to_owned(),
            },
        };
        if let Err(e) = worker.send(NoteDeadLetter(reply)).await {
            tracing::warn!(error = %e, "cannot tell the saga about its dead letter");
        }
    }
}

/// A worker's record as a domain event `<entity>.<what>`, with the version
/// kept in the record's row of `table` (also used to rebuild read models).
pub(crate) fn record_event<R: Snapshot>(
    c: &Connection,
    table: &str,
    id: i64,
    record: Option<R>,
    what: impl FnOnce(&R) -> String,
) -> rusqlite::Result<Option<DomainEvent>> {
    let version: Option<i64> = crate::storage::optional(c.query_row(
        &format!("SELECT version FROM {table} WHERE id = ?1"),
        [id],
        |r| r.get(0),
    ))?;
    let (Some(version), Some(rec)) = (version, record) else {
        return Ok(None);
    };
    let what = what(&rec);
    Ok(Some(DomainEvent::new(&what, version, rec.payload())))
}

/// A worker's record as the payload of its domain event.
pub(crate) trait Snapshot {
    fn payload(&self) -> crate::events::Payload;
}

/// Writes an event, if there is one, to the outbox of the transaction.
pub(crate) fn emit(tx: &Connection, event: Option<DomainEvent>) -> rusqlite::Result<()> {
    match event {
        Some(e) => crate::events::emit(tx, &e),
        None => Ok(()),
    }
}

/// Reads a record's order id column, shared by the worker tables.
pub(crate) fn order_id_of(raw: i64) -> rusqlite::Result<OrderId> {
    parsed(OrderId::new(raw))
}

/// A stored value parsed into its domain type; one that does not parse is a
/// damaged row, reported as a read error.
pub(crate) fn parsed<T>(v: Result<T, crate::domain::DomainError>) -> rusqlite::Result<T> {
    v.map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}
