//! Consuming: one channel with a prefetch per subscription, subscribed
//! again after every reconnection; deliveries settled with their broker.

use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, StreamExt};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use tokio::sync::mpsc;

use lapin::Channel;

use super::{AmqpTransport, CONFIRM_TIMEOUT, Live, WATCH_INTERVAL, is_missing_queue, unavailable};
use crate::transport::{DeadLetter, QueueName, Received, Settle, TransportError};

impl AmqpTransport {
    /// Forwards one subscription's deliveries into `tx`, subscribing again
    /// after every reconnection, until `tx` is dropped or the transport closes.
    pub(super) async fn subscribe_forever(
        self,
        queue: QueueName,
        tx: mpsc::Sender<Received>,
        from: Option<Arc<std::sync::atomic::AtomicI64>>,
    ) {
        let mut generations = self.inner.generation.subscribe();
        loop {
            if self.is_closed() || tx.is_closed() || self.inner.fenced.borrow().is_some() {
                return;
            }
            let Some(live) = self.live() else {
                // Reconnecting: wait for the next connection.
                tokio::select! {
                    _ = generations.changed() => {}
                    _ = tokio::time::sleep(WATCH_INTERVAL) => {}
                    _ = tx.closed() => return,
                }
                continue;
            };
            match self
                .subscribe_once(&live, queue, &tx, from.as_deref())
                .await
            {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(queue = %self.inner.topology.queue(queue), error = %e, "subscription lost; subscribing again");
                    tokio::time::sleep(WATCH_INTERVAL).await;
                }
            }
        }
    }

    /// One subscription on one channel. `Ok` = the receiver is gone.
    async fn subscribe_once(
        &self,
        live: &Live,
        queue: QueueName,
        tx: &mpsc::Sender<Received>,
        from: Option<&std::sync::atomic::AtomicI64>,
    ) -> Result<(), TransportError> {
        // A broker that goes away mid-handshake may never answer: bound
        // every setup step, and give up this subscription as soon as the
        // transport has reconnected (the old connection's stream may never
        // end by itself).
        let mut generations = self.inner.generation.subscribe();
        generations.mark_unchanged();
        let (ch, mut consumer) =
            tokio::time::timeout(CONFIRM_TIMEOUT, self.open_consumer(live, queue, from))
                .await
                .map_err(|_| TransportError::Timeout)??;
        loop {
            let next = tokio::select! {
                d = consumer.next() => d,
                _ = generations.changed() => {
                    return Err(TransportError::Unavailable("reconnected; subscribing on the new connection".into()));
                }
                _ = tx.closed() => {
                    let _ = ch.close(200, "consumer stopped".into()).await;
                    return Ok(());
                }
            };
            let d = match next {
                Some(Ok(d)) => d,
                Some(Err(e)) => return Err(unavailable(e)),
                None => {
                    if let QueueName::Lease(..) = queue {
                        self.lease_gone(live, queue);
                    }
                    return Err(TransportError::Unavailable(
                        "the consumer was cancelled".into(),
                    ));
                }
            };
            if tx.send(self.received(d)).await.is_err() {
                let _ = ch.close(200, "consumer stopped".into()).await;
                return Ok(());
            }
        }
    }

    /// A channel with the prefetch, consuming `queue` (a stream: from the
    /// offset `from` holds, where this reader left off).
    async fn open_consumer(
        &self,
        live: &Live,
        queue: QueueName,
        from: Option<&std::sync::atomic::AtomicI64>,
    ) -> Result<(Channel, lapin::Consumer), TransportError> {
        let ch = live
            .connection
            .create_channel()
            .await
            .map_err(unavailable)?;
        ch.basic_qos(
            self.inner.settings.prefetch.max(1),
            BasicQosOptions::default(),
        )
        .await
        .map_err(unavailable)?;
        let name = self.inner.topology.queue(queue);
        let tag = format!("{name}.{}.{}", std::process::id(), rand::random::<u32>());
        let mut args = FieldTable::default();
        if let Some(next) = from {
            let next = next.load(std::sync::atomic::Ordering::SeqCst);
            args.insert("x-stream-offset".into(), AMQPValue::LongLongInt(next));
        }
        let options = BasicConsumeOptions::default();
        let consumer = ch
            .basic_consume(name.into(), tag.into(), options, args)
            .await
            .map_err(|e| {
                if let QueueName::Lease(..) = queue
                    && is_missing_queue(&e)
                {
                    self.lease_gone(live, queue);
                }
                unavailable(e)
            })?;
        Ok((ch, consumer))
    }

    /// A lease's queue is gone while its connection lives (deleted under
    /// this process, by an operator or a tool): another process may hold
    /// the lease already, so this one is fenced at once rather than at its
    /// next reconnection.
    fn lease_gone(&self, live: &Live, queue: QueueName) {
        if self.is_closed() || !live.connection.status().connected() {
            return;
        }
        self.fence(format!(
            "the lease {} was deleted while this process held it",
            self.inner.topology.queue(queue)
        ));
    }

    /// A lapin delivery as a [`Received`] settled with this broker.
    fn received(&self, d: lapin::message::Delivery) -> Received {
        let props = &d.properties;
        let text = |v: &Option<ShortString>| v.as_ref().map(|s| s.as_str().to_owned());
        let header = |name: &str| super::int_header(props, name);
        let stream_offset = header("x-stream-offset");
        let epoch = header(super::EPOCH_HEADER)
            .zip(header(super::REGISTRY_HEADER))
            .map(|(position, registry)| crate::partition::Epoch::new(registry, position));
        Received {
            message_id: text(props.message_id()),
            correlation_id: text(props.correlation_id()),
            reply_to: text(props.reply_to()),
            message_type: text(props.kind()),
            body: d.data,
            redelivered: d.redelivered,
            stream_offset,
            epoch,
            settle: Box::new(AmqpSettle {
                acker: Some(d.acker),
                transport: self.clone(),
            }),
        }
    }
}

/// A stream over a channel receiver.
pub(super) fn tokio_stream_from(rx: mpsc::Receiver<Received>) -> BoxStream<'static, Received> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|d| (d, rx)) })
        .boxed()
}

/// Settles one RabbitMQ delivery. Dropped unsettled, it is nacked with
/// requeue so another consumer gets it.
struct AmqpSettle {
    acker: Option<lapin::Acker>,
    transport: AmqpTransport,
}

impl Drop for AmqpSettle {
    fn drop(&mut self) {
        if let Some(acker) = self.acker.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let _ = acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await;
            });
        }
    }
}

impl Settle for AmqpSettle {
    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>> {
        ack(self.acker.take(), BasicAckOptions::default()).boxed()
    }

    fn ack_through(mut self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>> {
        ack(self.acker.take(), BasicAckOptions { multiple: true }).boxed()
    }

    fn covered(mut self: Box<Self>) {
        // Settled by a later `multiple` ack: not handed back when dropped.
        self.acker = None;
    }

    fn requeue(mut self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>> {
        let acker = self.acker.take();
        async move {
            if let Some(a) = acker {
                a.nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await
                .map_err(unavailable)?;
            }
            Ok(())
        }
        .boxed()
    }

    fn dead_letter(
        mut self: Box<Self>,
        letter: DeadLetter,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        let acker = self.acker.take();
        let transport = self.transport.clone();
        async move {
            // Publish the copy with its reason first and ack the original
            // only once the copy is confirmed: a crash in between leaves a
            // duplicate in the dead-letter queue, never a lost message.
            if let Err(e) = transport.publish_dead_letter(letter).await {
                if let Some(a) = acker {
                    let _ = a
                        .nack(BasicNackOptions {
                            requeue: true,
                            ..BasicNackOptions::default()
                        })
                        .await;
                }
                return Err(e);
            }
            ack(acker, BasicAckOptions::default()).await
        }
        .boxed()
    }
}

/// Acks a delivery (if it is still unsettled).
async fn ack(acker: Option<lapin::Acker>, options: BasicAckOptions) -> Result<(), TransportError> {
    if let Some(a) = acker {
        a.ack(options).await.map_err(unavailable)?;
    }
    Ok(())
}
