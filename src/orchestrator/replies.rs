//! The consumer of an orchestrator partition's replies queue: each worker's
//! reply goes to its saga's actor, which applies and commits it; only then
//! is the reply acked.

use std::sync::Arc;

use actix::Addr;

use super::{Orchestrator, OrchestratorError, dispatch};
use crate::cluster::epochs::Seen;
use crate::messages::WorkerReply;
use crate::partition::{Partition, PartitionCount};
use crate::saga::machine::Event;
use crate::shutdown::Shutdown;
use crate::transport::consume::consume_each;
use crate::transport::poison::{FailureCounts, dead_letter, hand_back_or_dead_letter};
use crate::transport::{QueueName, Received, Transport, TransportError};

/// Consumes the replies queue of one partition until shutdown.
pub async fn consume_replies(
    partition: Partition,
    orchestrator: Addr<Orchestrator>,
    transport: Arc<dyn Transport>,
    count: PartitionCount,
    shutdown: Shutdown,
) -> Result<(), TransportError> {
    // Judged in delivery order (see `cluster::epochs`).
    let seen = Seen::new();
    consume_each(
        transport,
        QueueName::Replies(partition),
        shutdown,
        |d, f| {
            let reply = serde_json::from_slice::<WorkerReply>(&d.body);
            let verdict = match &reply {
                Ok(WorkerReply {
                    sender: Some(from), ..
                }) => seen.admit(
                    from.worker.as_str(),
                    count.of(from.key),
                    d.epoch,
                    d.redelivered,
                ),
                _ => Ok(()),
            };
            handle_reply(orchestrator.clone(), reply, verdict, d, f)
        },
    )
    .await
}

async fn handle_reply(
    orchestrator: Addr<Orchestrator>,
    reply: Result<WorkerReply, serde_json::Error>,
    verdict: Result<(), String>,
    delivery: Received,
    failures: Arc<FailureCounts>,
) {
    let reply: WorkerReply = match reply {
        Ok(r) => r,
        Err(e) => {
            dead_letter(delivery, &format!("undecodable reply: {e}")).await;
            return;
        }
    };
    // A replaced worker owner's late copy: its successor sends the same.
    if let Err(reason) = verdict {
        dead_letter(delivery, &reason).await;
        return;
    }
    let id = reply.message_id();
    let (saga, step) = (reply.order_id, reply.step.clone());
    let event = Event::Reply {
        step: reply.step,
        attempt: reply.attempt,
        outcome: reply.outcome,
    };
    let error = match dispatch(&orchestrator, saga, event).await {
        Ok(_) => {
            failures.forget(&id);
            crate::failpoint::hit("reply-before-ack");
            if let Err(e) = delivery.ack().await {
                tracing::warn!(error = %e, "ack failed; the reply will be redelivered and ignored");
            }
            return;
        }
        Err(OrchestratorError::UnknownSaga(id)) => {
            dead_letter(delivery, &format!("reply for unknown saga {id}")).await;
            return;
        }
        Err(e @ OrchestratorError::Quarantined(..)) => {
            dead_letter(delivery, &format!("reply for a quarantined saga: {e}")).await;
            return;
        }
        Err(e) => e.to_string(),
    };
    if let Some(reason) = hand_back_or_dead_letter(delivery, &failures, &id, &error).await {
        // Best effort: the saga may be what fails.
        let note = Event::Reply {
            step,
            attempt: 0,
            outcome: crate::messages::ReplyOutcome::DeadLettered { reason },
        };
        let _ = dispatch(&orchestrator, saga, note).await;
    }
}
