//! Consuming a worker's queue of one partition: decode, apply, then ack;
//! a command that cannot be applied is handed back, and dead-lettered (the
//! saga told) once it failed too often.

use std::sync::Arc;

use actix::prelude::*;

use super::{Apply, NoteDeadLetter, WorkerActor};
use crate::cluster::epochs::Seen;
use crate::domain::{OrderId, WorkerKind};
use crate::messages::{ReplyOutcome, WorkerCommand, WorkerReply};
use crate::partition::{Partition, PartitionCount};
use crate::shutdown::Shutdown;
use crate::transport::consume::consume_each;
use crate::transport::poison::{FailureCounts, dead_letter, hand_back_or_dead_letter};
use crate::transport::{QueueName, Received, Transport};

/// Consumes a worker's queue of one partition until shutdown: decode,
/// apply, then ack.
pub async fn consume(
    kind: WorkerKind,
    partition: Partition,
    worker: Addr<WorkerActor>,
    transport: Arc<dyn Transport>,
    count: PartitionCount,
    shutdown: Shutdown,
) -> Result<(), crate::transport::TransportError> {
    // Judged in delivery order (see `cluster::epochs`); the database
    // serializes the effects of deliveries handled at once.
    let seen = Seen::new();
    consume_each(
        transport,
        QueueName::Worker(kind, partition),
        shutdown,
        |d, f| {
            let cmd = serde_json::from_slice::<WorkerCommand>(&d.body);
            // A command's sender is the orchestrator owner of its order.
            let verdict = match &cmd {
                Ok(c) => seen.admit(
                    "orchestrator",
                    count.of(c.order_id().get()),
                    d.epoch,
                    d.redelivered,
                ),
                Err(_) => Ok(()),
            };
            handle_delivery(worker.clone(), cmd, verdict, d, f)
        },
    )
    .await
}

async fn handle_delivery(
    worker: Addr<WorkerActor>,
    cmd: Result<WorkerCommand, serde_json::Error>,
    verdict: Result<(), String>,
    delivery: Received,
    failures: Arc<FailureCounts>,
) {
    let cmd: WorkerCommand = match cmd {
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
    // A replaced orchestrator owner's late copy: its successor sends the
    // same command (nothing to tell the saga).
    if let Err(reason) = verdict {
        dead_letter(delivery, &reason).await;
        return;
    }
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
            sender: None,
        };
        if let Err(e) = worker.send(NoteDeadLetter(reply)).await {
            tracing::warn!(error = %e, "cannot tell the saga about its dead letter");
        }
    }
}
