//! RabbitMQ through lapin.
//!
//! Topology of a namespace `ns` (all durable):
//!
//! | kind | name | routes |
//! |---|---|---|
//! | direct exchange | `ns.commands` | key `pay` → queue `ns.pay.commands`, … one per worker |
//! | direct exchange | `ns.replies` | key `orchestrator` → queue `ns.orchestrator.replies` |
//! | topic exchange | `ns.events` | domain events, `order.paid`, … |
//! | fanout exchange | `ns.dead-letter` | → queue `ns.dead-letter` |
//!
//! Every work queue names `ns.dead-letter` as its dead-letter exchange.
//! Messages are persistent and carry message id, correlation id (the saga id)
//! and type. One connection per process; one confirm-mode channel for
//! publishing, one channel with a prefetch per consumer.

use backon::{BackoffBuilder, ExponentialBuilder};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, join_all};
use futures_util::stream::{BoxStream, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};

use super::{
    DeadLetter, Delivery, Outgoing, QueueName, Route, Settle, Topology, Transport, TransportError,
};
use crate::domain::{ViewKind, WorkerKind};

/// How long a publish may wait for its confirm before it counts as failed
/// (the outbox keeps the row and tries again).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the connection's health is looked at.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// Settings of the AMQP transport.
#[derive(Debug, Clone)]
pub struct AmqpSettings {
    pub url: String,
    pub namespace: String,
    /// Unacknowledged deliveries per consumer.
    pub prefetch: u16,
    /// Shown in the management UI's connection list.
    pub connection_name: String,
    /// Declare quorum queues (with a delivery limit) instead of classic ones.
    pub quorum_queues: bool,
    /// How long the first connection may wait for the broker.
    pub connect_wait: Duration,
}

/// A RabbitMQ connection with the namespace's topology declared, which
/// reconnects (with backoff) whenever the broker goes away: it re-declares
/// the topology, re-applies the prefetch and re-subscribes every consumer.
/// Unconfirmed messages stay in the outboxes and are published again.
#[derive(Clone)]
pub struct AmqpTransport {
    inner: Arc<Inner>,
}

struct Inner {
    settings: AmqpSettings,
    topology: Topology,
    /// The live connection, `None` while reconnecting.
    live: std::sync::RwLock<Option<Live>>,
    /// Bumped at every (re)connection; consumers wait on it.
    generation: watch::Sender<u64>,
    closed: std::sync::atomic::AtomicBool,
}

#[derive(Clone)]
struct Live {
    connection: Arc<Connection>,
    /// The confirm-mode channel all publishes share.
    publisher: Channel,
}

fn unavailable(e: lapin::Error) -> TransportError {
    TransportError::Unavailable(e.to_string())
}

fn string_arg(v: &str) -> AMQPValue {
    AMQPValue::LongString(v.into())
}

async fn open(settings: &AmqpSettings, topology: &Topology) -> Result<Live, TransportError> {
    let connection = Connection::connect(
        &settings.url,
        ConnectionProperties::default()
            .with_connection_name(settings.connection_name.clone().into()),
    )
    .await
    .map_err(unavailable)?;
    let channel = connection.create_channel().await.map_err(unavailable)?;
    declare(&channel, topology, settings.quorum_queues)
        .await
        .map_err(unavailable)?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(unavailable)?;
    Ok(Live {
        connection: Arc::new(connection),
        publisher: channel,
    })
}

impl AmqpTransport {
    /// Connects and declares the topology. The first connection must
    /// succeed (a clear start-up error otherwise); later losses are repaired
    /// in the background.
    pub async fn connect(settings: &AmqpSettings) -> Result<Self, TransportError> {
        let topology = Topology::new(&settings.namespace);
        // Wait for a broker that is (re)starting, within `connect_wait`.
        let deadline = tokio::time::Instant::now() + settings.connect_wait;
        let mut delays = ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(2))
            .without_max_times()
            .build();
        let live = loop {
            match open(settings, &topology).await {
                Ok(live) => break live,
                Err(e) => {
                    let wait = delays.next().unwrap_or(Duration::from_secs(2));
                    if tokio::time::Instant::now() + wait > deadline {
                        return Err(e);
                    }
                    tracing::warn!(error = %e, ?wait, "RabbitMQ not reachable yet; retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        };
        let (generation, _) = watch::channel(1);
        let transport = AmqpTransport {
            inner: Arc::new(Inner {
                settings: settings.clone(),
                topology,
                live: std::sync::RwLock::new(Some(live)),
                generation,
                closed: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        tokio::spawn(transport.clone().watch_connection());
        Ok(transport)
    }

    fn live(&self) -> Option<Live> {
        self.inner
            .live
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn is_closed(&self) -> bool {
        self.inner.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Watches the connection and rebuilds it when it breaks.
    async fn watch_connection(self) {
        let backoff = ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(2))
            .without_max_times();
        loop {
            tokio::time::sleep(WATCH_INTERVAL).await;
            if self.is_closed() {
                return;
            }
            let healthy = self.live().is_some_and(|l| {
                l.connection.status().connected() && l.publisher.status().connected()
            });
            if healthy {
                continue;
            }
            *self.inner.live.write().unwrap_or_else(|p| p.into_inner()) = None;
            tracing::warn!("lost the connection to RabbitMQ; reconnecting");
            let mut delays = backoff.build();
            loop {
                if self.is_closed() {
                    return;
                }
                let attempt = tokio::time::timeout(
                    CONFIRM_TIMEOUT,
                    open(&self.inner.settings, &self.inner.topology),
                );
                match attempt.await.unwrap_or(Err(TransportError::Timeout)) {
                    Ok(live) => {
                        *self.inner.live.write().unwrap_or_else(|p| p.into_inner()) = Some(live);
                        self.inner.generation.send_modify(|g| *g += 1);
                        tracing::info!("reconnected to RabbitMQ");
                        break;
                    }
                    Err(e) => {
                        let wait = delays.next().unwrap_or(Duration::from_secs(2));
                        tracing::debug!(error = %e, ?wait, "RabbitMQ still unavailable");
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
    }

    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    /// Closes the connection cleanly and stops reconnecting.
    pub async fn close(&self) {
        self.inner
            .closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(l) = self.live() {
            // Closing an already closed connection is not worth reporting.
            let _ = l.connection.close(200, "shutdown".into()).await;
        }
    }

    /// Deletes every exchange and queue of a namespace (tests and tear-down).
    pub async fn delete_namespace(url: &str, namespace: &str) -> Result<(), TransportError> {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .map_err(unavailable)?;
        let ch = connection.create_channel().await.map_err(unavailable)?;
        let t = Topology::new(namespace);
        for q in all_queues() {
            ch.queue_delete(t.queue(q).into(), QueueDeleteOptions::default())
                .await
                .map_err(unavailable)?;
        }
        for ex in [
            t.commands_exchange(),
            t.replies_exchange(),
            t.events_exchange(),
            t.dead_letter_exchange(),
        ] {
            ch.exchange_delete(ex.into(), ExchangeDeleteOptions::default())
                .await
                .map_err(unavailable)?;
        }
        let _ = connection.close(200, "bye".into()).await;
        Ok(())
    }

    fn properties(m: &Outgoing, headers: Option<FieldTable>) -> BasicProperties {
        let mut props = BasicProperties::default()
            .with_message_id(m.message_id.clone().into())
            .with_correlation_id(m.correlation_id.clone().into())
            .with_type(m.message_type.clone().into())
            .with_content_type("application/json".into())
            .with_app_id("hearty".into())
            .with_delivery_mode(2)
            .with_timestamp(crate::domain::Millis::now().0.max(0) as u64 / 1000);
        if let Some(h) = headers {
            props = props.with_headers(h);
        }
        props
    }

    async fn publish_one(
        channel: &Channel,
        exchange: String,
        routing_key: String,
        mandatory: bool,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<lapin::PublisherConfirm, TransportError> {
        let publish = channel.basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory,
                ..BasicPublishOptions::default()
            },
            body,
            props,
        );
        match tokio::time::timeout(CONFIRM_TIMEOUT, publish).await {
            Err(_) => Err(TransportError::Timeout),
            Ok(r) => r.map_err(unavailable),
        }
    }

    /// Publishes a dead letter (a copy with its reason) and waits for the confirm.
    async fn publish_dead_letter(&self, letter: DeadLetter) -> Result<(), TransportError> {
        let live = self
            .live()
            .ok_or_else(|| TransportError::Unavailable("reconnecting to RabbitMQ".into()))?;
        let exchange = self.inner.topology.dead_letter_exchange();
        let mut headers = FieldTable::default();
        headers.insert("x-hearty-reason".into(), string_arg(&letter.reason));
        let out = Outgoing {
            message_id: letter.message_id.unwrap_or_default(),
            correlation_id: letter.correlation_id.unwrap_or_default(),
            message_type: letter.message_type.unwrap_or_default(),
            route: Route::Reply,
            body: letter.body,
        };
        let props = Self::properties(&out, Some(headers));
        let confirm = Self::publish_one(
            &live.publisher,
            exchange.clone(),
            String::new(),
            true,
            &out.body,
            props,
        )
        .await?;
        settle_confirm(format!("dead letter via {exchange}"), confirm).await
    }

    /// Forwards one subscription's deliveries into `tx`, subscribing again
    /// after every reconnection, until `tx` is dropped or the transport closes.
    async fn subscribe_forever(self, queue: QueueName, tx: mpsc::Sender<Delivery>) {
        let mut generations = self.inner.generation.subscribe();
        loop {
            if self.is_closed() || tx.is_closed() {
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
            match self.subscribe_once(&live, queue, &tx).await {
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
        tx: &mpsc::Sender<Delivery>,
    ) -> Result<(), TransportError> {
        // A broker that goes away mid-handshake may never answer: bound
        // every setup step, and give up this subscription as soon as the
        // transport has reconnected (the old connection's stream may never
        // end by itself).
        let mut generations = self.inner.generation.subscribe();
        generations.mark_unchanged();
        let setup = async {
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
            let consumer = ch
                .basic_consume(
                    name.into(),
                    tag.into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(unavailable)?;
            Ok::<_, TransportError>((ch, consumer))
        };
        let (ch, mut consumer) = tokio::time::timeout(CONFIRM_TIMEOUT, setup)
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
                    return Err(TransportError::Unavailable(
                        "the consumer was cancelled".into(),
                    ));
                }
            };
            let props = &d.properties;
            let text = |v: &Option<ShortString>| v.as_ref().map(|s| s.as_str().to_owned());
            let delivery = Delivery {
                message_id: text(props.message_id()),
                correlation_id: text(props.correlation_id()),
                message_type: text(props.kind()),
                body: d.data,
                redelivered: d.redelivered,
                settle: Box::new(AmqpSettle {
                    acker: Some(d.acker),
                    transport: self.clone(),
                }),
            };
            if tx.send(delivery).await.is_err() {
                let _ = ch.close(200, "consumer stopped".into()).await;
                return Ok(());
            }
        }
    }
}

async fn settle_confirm(
    what: String,
    confirm: lapin::PublisherConfirm,
) -> Result<(), TransportError> {
    match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await {
        Err(_) => Err(TransportError::Timeout),
        Ok(Err(e)) => Err(unavailable(e)),
        Ok(Ok(Confirmation::Ack(None))) | Ok(Ok(Confirmation::NotRequested)) => Ok(()),
        Ok(Ok(Confirmation::Ack(Some(_)))) => Err(TransportError::Unroutable(what)),
        Ok(Ok(Confirmation::Nack(_))) => Err(TransportError::Nacked(what)),
    }
}

fn all_queues() -> Vec<QueueName> {
    QueueName::all()
}

/// Declares exchanges, queues and bindings; idempotent.
async fn declare(ch: &Channel, t: &Topology, quorum: bool) -> lapin::Result<()> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    ch.exchange_declare(
        t.commands_exchange().into(),
        ExchangeKind::Direct,
        durable,
        FieldTable::default(),
    )
    .await?;
    ch.exchange_declare(
        t.replies_exchange().into(),
        ExchangeKind::Direct,
        durable,
        FieldTable::default(),
    )
    .await?;
    ch.exchange_declare(
        t.events_exchange().into(),
        ExchangeKind::Topic,
        durable,
        FieldTable::default(),
    )
    .await?;
    ch.exchange_declare(
        t.dead_letter_exchange().into(),
        ExchangeKind::Fanout,
        durable,
        FieldTable::default(),
    )
    .await?;

    let mut work_args = FieldTable::default();
    work_args.insert(
        "x-dead-letter-exchange".into(),
        string_arg(&t.dead_letter_exchange()),
    );
    if quorum {
        // Replicated queues for clustered brokers; the broker itself
        // dead-letters a message redelivered more than the limit.
        work_args.insert("x-queue-type".into(), string_arg("quorum"));
        work_args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongInt(crate::transport::poison::MAX_DELIVERIES as i32 * 2),
        );
    }
    let queue_opts = QueueDeclareOptions::durable();
    for k in WorkerKind::ALL {
        let q = t.queue(QueueName::Worker(k));
        ch.queue_declare(q.clone().into(), queue_opts, work_args.clone())
            .await?;
        ch.queue_bind(
            q.into(),
            t.commands_exchange().into(),
            k.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    }
    let replies = t.queue(QueueName::Replies);
    ch.queue_declare(replies.clone().into(), queue_opts, work_args.clone())
        .await?;
    ch.queue_bind(
        replies.into(),
        t.replies_exchange().into(),
        "orchestrator".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    for v in ViewKind::ALL {
        let q = t.queue(QueueName::View(v));
        ch.queue_declare(q.clone().into(), queue_opts, work_args.clone())
            .await?;
        for pattern in v.bindings() {
            ch.queue_bind(
                q.clone().into(),
                t.events_exchange().into(),
                (*pattern).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        }
    }
    let dead = t.queue(QueueName::DeadLetter);
    ch.queue_declare(dead.clone().into(), queue_opts, FieldTable::default())
        .await?;
    ch.queue_bind(
        dead.into(),
        t.dead_letter_exchange().into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    Ok(())
}

impl Transport for AmqpTransport {
    fn publish(&self, batch: Vec<Outgoing>) -> BoxFuture<'_, Vec<Result<(), TransportError>>> {
        async move {
            let Some(live) = self.live() else {
                return batch
                    .iter()
                    .map(|_| {
                        Err(TransportError::Unavailable(
                            "reconnecting to RabbitMQ".into(),
                        ))
                    })
                    .collect();
            };
            let ch = &live.publisher;
            // Publish everything back to back, then await all confirms:
            // the confirms are pipelined, never one publish then one wait.
            let mut pending = Vec::with_capacity(batch.len());
            for m in &batch {
                let (exchange, key) = self.inner.topology.address(&m.route);
                // Commands and replies must reach a queue; events may have
                // no subscriber yet.
                let mandatory = !matches!(m.route, Route::Event(_));
                let what = format!("{} via {exchange}/{key}", m.message_id);
                let sent = Self::publish_one(
                    ch,
                    exchange,
                    key,
                    mandatory,
                    &m.body,
                    Self::properties(m, None),
                )
                .await;
                pending.push((what, sent));
            }
            join_all(pending.into_iter().map(|(what, sent)| async move {
                match sent {
                    Ok(confirm) => settle_confirm(what, confirm).await,
                    Err(e) => Err(e),
                }
            }))
            .await
        }
        .boxed()
    }

    fn consume(
        &self,
        queue: QueueName,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Delivery>, TransportError>> {
        async move {
            // While reconnecting, the subscription starts once the broker is back.
            let (tx, rx) = mpsc::channel(usize::from(self.inner.settings.prefetch.max(1)));
            tokio::spawn(self.clone().subscribe_forever(queue, tx));
            Ok(tokio_stream_from(rx))
        }
        .boxed()
    }

    fn is_ready(&self) -> bool {
        self.live()
            .is_some_and(|l| l.connection.status().connected() && l.publisher.status().connected())
    }

    fn kind(&self) -> &'static str {
        "rabbitmq"
    }
}

/// A stream over a channel receiver.
fn tokio_stream_from(rx: mpsc::Receiver<Delivery>) -> BoxStream<'static, Delivery> {
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
        let acker = self.acker.take();
        async move {
            if let Some(a) = acker {
                a.ack(BasicAckOptions::default())
                    .await
                    .map_err(unavailable)?;
            }
            Ok(())
        }
        .boxed()
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
            if let Some(a) = acker {
                a.ack(BasicAckOptions::default())
                    .await
                    .map_err(unavailable)?;
            }
            Ok(())
        }
        .boxed()
    }
}
