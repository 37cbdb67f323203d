//! The worker actor: applies each command to its database in one
//! transaction with its inbox row and its replies, under a supervisor.

use std::sync::Arc;

use actix::prelude::*;
use futures_util::FutureExt;
use rusqlite::Connection;

use super::{Applied, Faults, WorkerLogic};
use crate::config::FailureCount;
use crate::domain::{Millis, WorkerKind};
use crate::messages::{ReplyOutcome, ReplySender, WorkerCommand, WorkerReply};
use crate::metrics::{METRICS, inc};
use crate::storage::{Db, StorageError, inbox, outbox};
use crate::transport::{Outgoing, Route};

/// A worker actor: applies commands to its database.
pub struct WorkerActor {
    kind: WorkerKind,
    logic: Arc<dyn WorkerLogic>,
    db: Db,
    faults: Faults,
}

impl WorkerActor {
    pub fn new(kind: WorkerKind, logic: Arc<dyn WorkerLogic>, db: Db, faults: Faults) -> Self {
        WorkerActor {
            kind,
            logic,
            db,
            faults,
        }
    }
}

impl Actor for WorkerActor {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        tracing::info!(worker = %self.kind, "worker started");
    }
}

/// A worker actor runs under an actix `Supervisor`: when a handler panics
/// the actor is stopped and restarted with the same mailbox.
impl Supervised for WorkerActor {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        inc(&METRICS.actor_restarts_total);
        tracing::warn!(worker = %self.kind, "worker actor restarting after a failure");
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
        let kind = self.kind;
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
                        apply_in_tx(kind, logic.as_ref(), faults, tx, &cmd)
                            .map_err(StorageError::from)
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
    kind: WorkerKind,
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
            || super::apply(logic, tx, cmd, Millis::now()),
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
            // `apply` turns it into a tombstone and `Compensated`.
            Applied::NoRecord => unreachable!("answered by workers::apply"),
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
            sender: cmd
                .partition_key(kind)
                .map(|key| ReplySender { worker: kind, key }),
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
