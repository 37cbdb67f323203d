//! The in-process transport: one unbounded channel per queue, with the same
//! settle semantics as RabbitMQ (an unsettled delivery is redelivered).
//!
//! Used when `HEARTY_AMQP_URL` is unset. Messages live in memory only; a
//! crash loses what was queued, and recovery re-sends it (every saga re-sends
//! what it waits for, every worker answers a repeated command again).

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream, StreamExt};
use tokio::sync::{Mutex, mpsc};

use super::{
    DeadLetter, Outgoing, QueueName, Received, Route, Settle, Transport, TransportError,
    topic_matches,
};
use crate::domain::ViewKind;
use crate::partition::PartitionCount;

#[derive(Debug, Clone)]
struct Message {
    message_id: Option<String>,
    correlation_id: Option<String>,
    message_type: Option<String>,
    body: Vec<u8>,
    redelivered: bool,
}

type Receiver = Arc<Mutex<mpsc::UnboundedReceiver<Message>>>;

struct Queue {
    tx: mpsc::UnboundedSender<Message>,
    rx: Receiver,
}

/// In-process queues for every [`QueueName`].
#[derive(Clone)]
pub struct MemoryTransport {
    queues: Arc<HashMap<QueueName, Queue>>,
    partitions: PartitionCount,
}

impl MemoryTransport {
    /// The queues of a namespace with `partitions` partitions.
    pub fn new(partitions: PartitionCount) -> Self {
        let queues = QueueName::all(partitions)
            .into_iter()
            .map(|n| {
                let (tx, rx) = mpsc::unbounded_channel();
                (
                    n,
                    Queue {
                        tx,
                        rx: Arc::new(Mutex::new(rx)),
                    },
                )
            })
            .collect();
        MemoryTransport {
            queues: Arc::new(queues),
            partitions,
        }
    }

    fn sender(&self, q: QueueName) -> mpsc::UnboundedSender<Message> {
        // Every QueueName is created in `new`.
        self.queues[&q].tx.clone()
    }

    /// Messages waiting in a queue (for tests and health detail).
    pub fn depth(&self, q: QueueName) -> usize {
        // The receiver knows its length; while a consumer holds it, report 0.
        self.queues[&q]
            .rx
            .try_lock()
            .map(|rx| rx.len())
            .unwrap_or(0)
    }
}

impl Transport for MemoryTransport {
    fn publish(&self, batch: Vec<Outgoing>) -> BoxFuture<'_, Vec<Result<(), TransportError>>> {
        let results = batch
            .into_iter()
            .map(|m| {
                let queues: Vec<QueueName> = match &m.route {
                    Route::Command(..) | Route::Reply(_) => {
                        QueueName::of(&m.route, self.partitions)
                            .into_iter()
                            .collect()
                    }
                    // A topic exchange: every view bound to the key gets a copy.
                    Route::Event(key) => ViewKind::ALL
                        .into_iter()
                        .filter(|v| v.bindings().iter().any(|p| topic_matches(p, key)))
                        .map(QueueName::View)
                        .collect(),
                };
                for queue in queues {
                    self.sender(queue)
                        .send(Message {
                            message_id: Some(m.message_id.clone()),
                            correlation_id: Some(m.correlation_id.clone()),
                            message_type: Some(m.message_type.clone()),
                            body: m.body.clone(),
                            redelivered: false,
                        })
                        .map_err(|_| {
                            TransportError::Unavailable("in-process queue closed".into())
                        })?;
                }
                Ok(())
            })
            .collect();
        async move { results }.boxed()
    }

    fn consume(
        &self,
        queue: QueueName,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Received>, TransportError>> {
        // Requests between processes need a broker: in one process every
        // owner is local and asked directly.
        let Some(q) = self.queues.get(&queue) else {
            return async move {
                Err(TransportError::Unavailable(format!(
                    "the in-process transport has no queue {queue:?}"
                )))
            }
            .boxed();
        };
        let rx = q.rx.clone();
        let requeue = self.sender(queue);
        let dead = self.sender(QueueName::DeadLetter);
        async move {
            let deliveries = stream::unfold(rx, move |rx| {
                let requeue = requeue.clone();
                let dead = dead.clone();
                async move {
                    let msg = rx.lock().await.recv().await?;
                    let delivery = Received {
                        message_id: msg.message_id.clone(),
                        correlation_id: msg.correlation_id.clone(),
                        reply_to: None,
                        message_type: msg.message_type.clone(),
                        body: msg.body.clone(),
                        redelivered: msg.redelivered,
                        stream_offset: None,
                        epoch: None,
                        settle: Box::new(MemorySettle {
                            msg: Some(msg),
                            requeue,
                            dead,
                        }),
                    };
                    Some((delivery, rx))
                }
            });
            Ok(deliveries.boxed())
        }
        .boxed()
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "in-process"
    }
}

/// Settles an in-process delivery; dropping it unsettled requeues it.
struct MemorySettle {
    msg: Option<Message>,
    requeue: mpsc::UnboundedSender<Message>,
    dead: mpsc::UnboundedSender<Message>,
}

impl MemorySettle {
    fn give_back(&mut self) {
        if let Some(mut msg) = self.msg.take() {
            msg.redelivered = true;
            // Only fails when the transport is gone, and its messages with it.
            let _ = self.requeue.send(msg);
        }
    }
}

impl Drop for MemorySettle {
    fn drop(&mut self) {
        self.give_back();
    }
}

impl Settle for MemorySettle {
    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>> {
        self.msg = None;
        async { Ok(()) }.boxed()
    }

    fn ack_through(self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>> {
        // In-process deliveries are settled one by one.
        self.ack()
    }

    fn covered(mut self: Box<Self>) {
        self.msg = None;
    }

    fn requeue(mut self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>> {
        self.give_back();
        async { Ok(()) }.boxed()
    }

    fn dead_letter(
        mut self: Box<Self>,
        letter: DeadLetter,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        self.msg = None;
        // In-process dead letters keep no headers: the reason goes to the log.
        tracing::warn!(message_id = ?letter.message_id, reason = %letter.reason, "dead-lettered");
        let result = self
            .dead
            .send(Message {
                message_id: letter.message_id,
                correlation_id: letter.correlation_id,
                message_type: letter.message_type,
                body: letter.body,
                redelivered: false,
            })
            .map_err(|_| TransportError::Unavailable("in-process queue closed".into()));
        async move { result }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::WorkerKind;

    fn msg(id: &str) -> Outgoing {
        Outgoing {
            message_id: id.into(),
            correlation_id: "1".into(),
            message_type: "pay.authorize".into(),
            route: Route::Command(WorkerKind::Pay, 1),
            body: b"{}".to_vec(),
        }
    }

    #[tokio::test]
    async fn unsettled_deliveries_come_back() {
        let count = PartitionCount::default();
        let t = MemoryTransport::new(count);
        let queue = QueueName::Worker(WorkerKind::Pay, count.of(1));
        let results = t.publish(vec![msg("a"), msg("b")]).await;
        assert!(results.iter().all(Result::is_ok));
        let mut s = t.consume(queue).await.expect("consume");
        let a = s.next().await.expect("a");
        assert_eq!(a.message_id.as_deref(), Some("a"));
        drop(a);
        let b = s.next().await.expect("b");
        assert_eq!(b.message_id.as_deref(), Some("b"));
        b.ack().await.expect("ack");
        let again = s.next().await.expect("a again");
        assert_eq!(again.message_id.as_deref(), Some("a"));
        assert!(again.redelivered);
        again.dead_letter("poison").await.expect("dead letter");
        assert_eq!(t.depth(QueueName::DeadLetter), 1);
        assert_eq!(t.depth(queue), 0);
    }
}
