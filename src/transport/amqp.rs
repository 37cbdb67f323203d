//! RabbitMQ through lapin.
//!
//! Topology of a namespace `ns` (all durable):
//!
//! | kind | name | routes |
//! |---|---|---|
//! | direct exchange | `ns.commands` | key `pay.p3` → queue `ns.pay.commands.p3`, … one per worker and partition |
//! | direct exchange | `ns.replies` | key `orchestrator.p3` → queue `ns.orchestrator.replies.p3`, … one per partition |
//! | topic exchange | `ns.events` | domain events, `order.paid`, … |
//! | fanout exchange | `ns.dead-letter` | → queue `ns.dead-letter` |
//! | stream | `ns.registry` | the partition count and which data folder owns each (role, partition) |
//! | exclusive queue | `ns.pay.p3.owner` | held by the process that owns pay's partition 3 |
//!
//! Every work queue names `ns.dead-letter` as its dead-letter exchange;
//! partitioned queues have a single active consumer.
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
    event_log,
    nodes::{self, BrokerNodes},
};
use crate::domain::WorkerKind;
use crate::partition::PartitionCount;

/// How long a publish may wait for its confirm before it counts as failed
/// (the outbox keeps the row and tries again).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the connection's health is looked at.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// Settings of the AMQP transport.
#[derive(Debug, Clone)]
pub struct AmqpSettings {
    /// The broker: one node, or the nodes of one cluster.
    pub nodes: BrokerNodes,
    pub namespace: String,
    /// Unacknowledged deliveries per consumer.
    pub prefetch: u16,
    /// Shown in the management UI's connection list.
    pub connection_name: String,
    /// Declare quorum queues (with a delivery limit) instead of classic ones.
    pub quorum_queues: bool,
    /// `quorum_queues` is only a default (not configured): a namespace
    /// whose queues exist with the other type keeps them.
    pub adopt_queue_type: bool,
    /// How long the first connection may wait for the broker.
    pub connect_wait: Duration,
    /// The namespace's partitions.
    pub partitions: PartitionCount,
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
    /// The index of the node the live connection goes to.
    node: std::sync::atomic::AtomicUsize,
    /// The leases (exclusive queues) this process holds: declared again on
    /// every new connection.
    leases: std::sync::Mutex<Vec<(String, String)>>,
    /// The channel requests go out on and answers come back to (direct
    /// reply-to), with the connection generation it belongs to.
    rpc: tokio::sync::Mutex<Option<(u64, RpcChannel)>>,
    /// Set when a lease was taken by another process while this one was
    /// disconnected: this process no longer owns its partitions.
    fenced: watch::Sender<Option<String>>,
}

#[derive(Clone)]
struct Live {
    connection: Arc<Connection>,
    /// The confirm-mode channel all publishes share.
    publisher: Channel,
}

/// Requests waiting for their answers, by correlation id.
type Waiters =
    Arc<std::sync::Mutex<std::collections::HashMap<String, tokio::sync::oneshot::Sender<Reply>>>>;

/// What a request's waiter learns.
enum Reply {
    /// The owner's answer.
    Answer(Vec<u8>),
    /// The broker returned the request: no queue was bound for it, so it
    /// was delivered nowhere.
    Returned,
}

struct RpcChannel {
    channel: Channel,
    waiters: Waiters,
    /// False once its answers stopped coming (the consumer ended).
    alive: Arc<std::sync::atomic::AtomicBool>,
}

/// Forgets a request's waiter however the request ends (answered, timed
/// out, or its caller gone).
struct Waiting {
    waiters: Waiters,
    id: String,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

fn unavailable(e: lapin::Error) -> TransportError {
    TransportError::Unavailable(e.to_string())
}

fn string_arg(v: &str) -> AMQPValue {
    AMQPValue::LongString(v.into())
}

/// Whether a broker error says an exclusive queue belongs to another
/// connection.
fn is_locked(e: &lapin::Error) -> bool {
    e.to_string().contains("RESOURCE_LOCKED")
}

/// Why a connection could not be (re)opened.
enum OpenError {
    Broker(TransportError),
    /// A lease of this process is held by another connection.
    Fenced(String),
}

impl From<TransportError> for OpenError {
    fn from(e: TransportError) -> Self {
        OpenError::Broker(e)
    }
}

/// Declares `leases` (queue name, request routing key) as exclusive queues
/// of `connection`, bound to the requests exchange, all or none:
/// `Err(Ok(name))` names one held by another connection.
async fn take_leases(
    connection: &Connection,
    topology: &Topology,
    leases: &[(String, String)],
) -> Result<(), Result<String, TransportError>> {
    let mut taken = Vec::new();
    for (name, key) in leases {
        // A refused declare closes its channel: one channel per lease.
        let ch = connection
            .create_channel()
            .await
            .map_err(|e| Err(unavailable(e)))?;
        let declared = ch
            .queue_declare(
                name.clone().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: false,
                    durable: false,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        let declared = match declared {
            Ok(_) => ch
                .queue_bind(
                    name.clone().into(),
                    topology.rpc_exchange().into(),
                    key.clone().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        };
        match declared {
            Ok(()) => {
                let _ = ch.close(200, "lease taken".into()).await;
                taken.push(name.clone());
            }
            Err(e) => {
                // Give back what this attempt took, so a standby does not
                // hold half of a set.
                if let Ok(ch) = connection.create_channel().await {
                    for t in &taken {
                        let _ = ch
                            .queue_delete(t.clone().into(), QueueDeleteOptions::default())
                            .await;
                    }
                    let _ = ch.close(200, "leases given back".into()).await;
                }
                return Err(if is_locked(&e) {
                    Ok(name.clone())
                } else {
                    Err(unavailable(e))
                });
            }
        }
    }
    Ok(())
}

/// The broker URL with a heartbeat of 10 s unless it names one: a cut
/// connection is noticed (and its leases dropped) within about 20 s rather
/// than the default minutes.
fn with_heartbeat(url: &str) -> String {
    if url.contains("heartbeat=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&heartbeat=10")
    } else {
        format!("{url}?heartbeat=10")
    }
}

/// Connects to the first node, from node `first` on, that accepts a
/// connection; returns it with that node's index.
async fn connect_any(
    settings: &AmqpSettings,
    first: usize,
) -> Result<(Connection, usize), TransportError> {
    let mut last = TransportError::Unavailable("no RabbitMQ node tried".into());
    for (i, url) in settings.nodes.from(first) {
        let url_with_heartbeat = with_heartbeat(url);
        let attempt = Connection::connect(
            &url_with_heartbeat,
            ConnectionProperties::default()
                .with_connection_name(settings.connection_name.clone().into()),
        );
        match tokio::time::timeout(nodes::CONNECT_TIMEOUT, attempt).await {
            Ok(Ok(c)) => {
                if settings.nodes.is_cluster() {
                    tracing::info!(node = %nodes::redact(url), "connected to RabbitMQ node");
                }
                return Ok((c, i));
            }
            Ok(Err(e)) => {
                tracing::debug!(node = %nodes::redact(url), error = %e, "RabbitMQ node refused");
                last = unavailable(e);
            }
            Err(_) => {
                tracing::debug!(node = %nodes::redact(url), "RabbitMQ node did not answer");
                last = TransportError::Timeout;
            }
        }
    }
    Err(last)
}

async fn open(
    settings: &AmqpSettings,
    topology: &Topology,
    leases: &[(String, String)],
    first_node: usize,
) -> Result<(Live, usize), OpenError> {
    let (connection, node) = connect_any(settings, first_node).await?;
    let mut channel = connection.create_channel().await.map_err(unavailable)?;
    if let Err(e) = declare(&connection, &channel, topology, settings.quorum_queues).await {
        // A namespace declared with the other queue type (before nodes were
        // added, or by an older version) keeps its queues unless the type
        // was configured: a queue's type cannot change in place.
        let other_type = e.to_string().contains("x-queue-type");
        if !(other_type && settings.adopt_queue_type) {
            return Err(unavailable(e).into());
        }
        let kept = if settings.quorum_queues {
            "classic"
        } else {
            "quorum"
        };
        tracing::warn!(
            kept,
            "the namespace's queues exist with the other type; keeping them \
             (set HEARTY_QUORUM_QUEUES, on a new namespace, to change it)"
        );
        channel = connection.create_channel().await.map_err(unavailable)?;
        declare(&connection, &channel, topology, !settings.quorum_queues)
            .await
            .map_err(unavailable)?;
    }
    // The leases before the connection is handed out: a connection that
    // cannot hold them never consumes (consumers subscribe on it after).
    match take_leases(&connection, topology, leases).await {
        Ok(()) => {}
        Err(Ok(held)) => {
            let _ = connection.close(200, "fenced".into()).await;
            return Err(OpenError::Fenced(held));
        }
        Err(Err(e)) => return Err(e.into()),
    }
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(unavailable)?;
    Ok((
        Live {
            connection: Arc::new(connection),
            publisher: channel,
        },
        node,
    ))
}

impl AmqpTransport {
    /// Connects and declares the topology. The first connection must
    /// succeed (a clear start-up error otherwise); later losses are repaired
    /// in the background.
    pub async fn connect(settings: &AmqpSettings) -> Result<Self, TransportError> {
        let topology = Topology::new(&settings.namespace, settings.partitions);
        // Wait for a broker that is (re)starting, within `connect_wait`.
        let deadline = tokio::time::Instant::now() + settings.connect_wait;
        let mut delays = ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(2))
            .without_max_times()
            .build();
        // Processes spread over the nodes of a cluster.
        let first = rand::random::<u32>() as usize % settings.nodes.len();
        let (live, node) = loop {
            match open(settings, &topology, &[], first).await {
                Ok(opened) => break opened,
                Err(OpenError::Fenced(held)) => {
                    unreachable!("no lease is asked for at first: {held}")
                }
                Err(OpenError::Broker(e)) => {
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
                node: std::sync::atomic::AtomicUsize::new(node),
                leases: std::sync::Mutex::new(Vec::new()),
                rpc: tokio::sync::Mutex::new(None),
                fenced: watch::channel(None).0,
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
            if !self.leases().is_empty() {
                // Ownership ends with the connection that held the leases:
                // the broker drops them with it, and a standby may take the
                // partitions over at once. This process must not act for
                // them any more (its timers would), so it stops; restarted,
                // it comes back as their owner or as a standby.
                let why = "lost the connection that held this process's partition leases; \
                           ownership ended with it"
                    .to_owned();
                tracing::error!(reason = %why, "fenced");
                self.inner.fenced.send_replace(Some(why));
                return;
            }
            tracing::warn!("lost the connection to RabbitMQ; reconnecting");
            let mut delays = backoff.build();
            loop {
                if self.is_closed() {
                    return;
                }
                let leases = self.leases();
                // The next node first: the last one just went away.
                let next = self.inner.node.load(std::sync::atomic::Ordering::SeqCst) + 1;
                let attempt = tokio::time::timeout(
                    CONFIRM_TIMEOUT
                        + nodes::CONNECT_TIMEOUT * self.inner.settings.nodes.len() as u32,
                    open(&self.inner.settings, &self.inner.topology, &leases, next),
                );
                match attempt
                    .await
                    .unwrap_or(Err(OpenError::Broker(TransportError::Timeout)))
                {
                    Ok((live, node)) => {
                        self.inner
                            .node
                            .store(node, std::sync::atomic::Ordering::SeqCst);
                        *self.inner.live.write().unwrap_or_else(|p| p.into_inner()) = Some(live);
                        self.inner.generation.send_modify(|g| *g += 1);
                        tracing::info!("reconnected to RabbitMQ");
                        break;
                    }
                    Err(OpenError::Fenced(held)) => {
                        // Another process owns a partition of ours now: this
                        // one must not act for it again. Stay disconnected
                        // (nothing is consumed or published) and say so.
                        let why = format!(
                            "{held} is held by another process: it took over this process's \
                             partitions while this one was disconnected"
                        );
                        tracing::error!(reason = %why, "fenced");
                        self.inner.fenced.send_replace(Some(why));
                        return;
                    }
                    Err(OpenError::Broker(e)) => {
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

    fn leases(&self) -> Vec<(String, String)> {
        self.inner
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes the leases (exclusive queues) named, all or none, on the live
    /// connection, and keeps them on every later connection. Answers the
    /// name of one that another process holds, if any.
    pub async fn try_lease(
        &self,
        names: &[(String, String)],
    ) -> Result<Option<String>, TransportError> {
        let generation = *self.inner.generation.borrow();
        let live = self
            .live()
            .ok_or_else(|| TransportError::Unavailable("reconnecting to RabbitMQ".into()))?;
        match take_leases(&live.connection, &self.inner.topology, names).await {
            Ok(()) => {
                let mut leases = self.inner.leases.lock().unwrap_or_else(|p| p.into_inner());
                // Taken on the connection that is still the live one: else
                // they went with the old one, and this must be tried again.
                let same = *self.inner.generation.borrow() == generation
                    && self
                        .live()
                        .is_some_and(|l| Arc::ptr_eq(&l.connection, &live.connection));
                if !same {
                    return Err(TransportError::Unavailable(
                        "the connection changed while taking the leases".into(),
                    ));
                }
                leases.extend(names.iter().cloned());
                Ok(None)
            }
            Err(Ok(held)) => Ok(Some(held)),
            Err(Err(e)) => Err(e),
        }
    }

    /// Resolves when this process has been fenced off (another process
    /// took one of its leases while it was disconnected), with the reason.
    pub async fn fenced(&self) -> String {
        let mut rx = self.inner.fenced.subscribe();
        loop {
            if let Some(why) = rx.borrow_and_update().clone() {
                return why;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Appends a catch-up marker named `id` to the event log (see
    /// `event_log::MARKER_TYPE`) and waits for the broker's confirm.
    pub async fn append_log_marker(&self, id: &str) -> Result<(), TransportError> {
        let live = self
            .live()
            .ok_or_else(|| TransportError::Unavailable("reconnecting to RabbitMQ".into()))?;
        let log = self.inner.topology.queue(QueueName::EventLog);
        let marker = Outgoing {
            message_id: id.to_owned(),
            correlation_id: String::new(),
            message_type: event_log::MARKER_TYPE.to_owned(),
            route: Route::Event(String::new()),
            body: b"[]".to_vec(),
        };
        let confirm = Self::publish_one(
            &live.publisher,
            String::new(),
            log.clone(),
            true,
            &marker.body,
            Self::properties(&marker, None),
        )
        .await?;
        settle_confirm(format!("{id} via {log}"), confirm).await
    }

    /// Reads the domain-event stream from offset `next` (kept up to date by
    /// the reader as it commits), again from there after a reconnection.
    pub fn read_event_log(
        &self,
        next: Arc<std::sync::atomic::AtomicI64>,
    ) -> BoxStream<'static, Delivery> {
        let (tx, rx) = mpsc::channel(usize::from(self.inner.settings.prefetch.max(1)));
        tokio::spawn(
            self.clone()
                .subscribe_forever(QueueName::EventLog, tx, Some(next)),
        );
        tokio_stream_from(rx)
    }

    /// Sends a request to the owner of the partition behind `routing_key`
    /// (`pay.p3`) and waits for its answer, at most `wait`. No owner bound
    /// (none running, or a standby only) is `Unroutable` at once.
    pub async fn request(
        &self,
        routing_key: &str,
        body: Vec<u8>,
        wait: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        let (channel, waiters) = tokio::time::timeout(CONFIRM_TIMEOUT, self.rpc_channel())
            .await
            .map_err(|_| TransportError::Timeout)??;
        let id = format!("{:032x}", rand::random::<u128>());
        let (tx, rx) = tokio::sync::oneshot::channel();
        waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), tx);
        let _waiting = Waiting {
            waiters: waiters.clone(),
            id: id.clone(),
        };
        let props = BasicProperties::default()
            .with_correlation_id(id.clone().into())
            .with_reply_to("amq.rabbitmq.reply-to".into())
            .with_content_type("application/json".into())
            .with_app_id("hearty".into())
            .with_expiration(wait.as_millis().to_string().into());
        let exchange = self.inner.topology.rpc_exchange();
        let sent = Self::publish_one(
            &channel,
            exchange.clone(),
            routing_key.to_owned(),
            true,
            &body,
            props,
        )
        .await;
        let what = format!("request via {exchange}/{routing_key}");
        // A returned request was delivered nowhere: asking again (or
        // elsewhere) does nothing twice. But lapin hands a returned message
        // to whichever confirm of the same acknowledgement it meets first,
        // so the return on this confirm may be another request's, and this
        // request's return may come on another's. Each is sent to the
        // request it names (by correlation id); a request that learns
        // nothing of the kind was delivered.
        match tokio::time::timeout(CONFIRM_TIMEOUT, sent?).await {
            Err(_) => return Err(TransportError::Timeout),
            Ok(Err(e)) => return Err(unavailable(e)),
            Ok(Ok(Confirmation::Nack(_))) => return Err(TransportError::Nacked(what)),
            Ok(Ok(Confirmation::Ack(None) | Confirmation::NotRequested)) => {}
            Ok(Ok(Confirmation::Ack(Some(returned)))) => {
                let owner = returned
                    .delivery
                    .properties
                    .correlation_id()
                    .as_ref()
                    .map(|c| c.as_str().to_owned());
                if owner.as_deref() == Some(id.as_str()) {
                    return Err(TransportError::Unroutable(what));
                }
                let other = owner
                    .and_then(|o| waiters.lock().unwrap_or_else(|p| p.into_inner()).remove(&o));
                if let Some(other) = other {
                    let _ = other.send(Reply::Returned);
                }
            }
        }
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(Reply::Answer(answer))) => Ok(answer),
            Ok(Ok(Reply::Returned)) => Err(TransportError::Unroutable(what)),
            Ok(Err(_)) => Err(TransportError::Unavailable(
                "the connection closed before the answer came".into(),
            )),
            Err(_) => Err(TransportError::Timeout),
        }
    }

    /// The request channel of the live connection, opened on first use.
    async fn rpc_channel(&self) -> Result<(Channel, Waiters), TransportError> {
        let generation = *self.inner.generation.borrow();
        let mut slot = self.inner.rpc.lock().await;
        if let Some((g, rpc)) = slot.as_ref()
            && *g == generation
            && rpc.channel.status().connected()
            && rpc.alive.load(std::sync::atomic::Ordering::SeqCst)
        {
            return Ok((rpc.channel.clone(), rpc.waiters.clone()));
        }
        let live = self
            .live()
            .ok_or_else(|| TransportError::Unavailable("reconnecting to RabbitMQ".into()))?;
        let channel = live
            .connection
            .create_channel()
            .await
            .map_err(unavailable)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(unavailable)?;
        // Direct reply-to: consume the pseudo-queue (no acks) on the channel
        // the requests go out on.
        let mut answers = channel
            .basic_consume(
                "amq.rabbitmq.reply-to".into(),
                format!("rpc.{}", std::process::id()).into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        let waiters: Waiters = Arc::default();
        let routed = waiters.clone();
        let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = alive.clone();
        tokio::spawn(async move {
            while let Some(Ok(d)) = answers.next().await {
                let id = d
                    .properties
                    .correlation_id()
                    .as_ref()
                    .map(|c| c.as_str().to_owned());
                let waiter =
                    id.and_then(|id| routed.lock().unwrap_or_else(|p| p.into_inner()).remove(&id));
                if let Some(w) = waiter {
                    let _ = w.send(Reply::Answer(d.data));
                }
            }
            // The channel is gone: every waiter learns at once, and the
            // next request opens another.
            flag.store(false, std::sync::atomic::Ordering::SeqCst);
            routed.lock().unwrap_or_else(|p| p.into_inner()).clear();
        });
        *slot = Some((
            generation,
            RpcChannel {
                channel: channel.clone(),
                waiters: waiters.clone(),
                alive,
            },
        ));
        Ok((channel, waiters))
    }

    /// Answers a request (a delivery with a reply-to address).
    pub async fn respond(
        &self,
        reply_to: &str,
        correlation_id: &str,
        body: Vec<u8>,
    ) -> Result<(), TransportError> {
        let live = self
            .live()
            .ok_or_else(|| TransportError::Unavailable("reconnecting to RabbitMQ".into()))?;
        let props = BasicProperties::default()
            .with_correlation_id(correlation_id.into())
            .with_content_type("application/json".into())
            .with_app_id("hearty".into());
        // Not mandatory: a requester that gave up is no error.
        let confirm = Self::publish_one(
            &live.publisher,
            String::new(),
            reply_to.to_owned(),
            false,
            &body,
            props,
        )
        .await?;
        settle_confirm(format!("answer to {reply_to}"), confirm).await
    }

    /// Publishes `record` to the registry stream and waits for its confirm.
    pub(crate) async fn append_registry(
        &self,
        record: &[u8],
        id: &str,
    ) -> Result<(), TransportError> {
        let live = self
            .live()
            .ok_or_else(|| TransportError::Unavailable("reconnecting to RabbitMQ".into()))?;
        let out = Outgoing {
            message_id: id.to_owned(),
            correlation_id: String::new(),
            message_type: "registry.record".into(),
            route: Route::Reply(0),
            body: record.to_vec(),
        };
        let queue = self.inner.topology.registry();
        let confirm = Self::publish_one(
            &live.publisher,
            String::new(),
            queue.clone(),
            true,
            &out.body,
            Self::properties(&out, None),
        )
        .await?;
        settle_confirm(format!("{id} via {queue}"), confirm).await
    }

    /// Reads the registry stream from its first record up to and including
    /// the one with message id `until`, answering every record's body.
    pub(crate) async fn read_registry(&self, until: &str) -> Result<Vec<Vec<u8>>, TransportError> {
        let live = self
            .live()
            .ok_or_else(|| TransportError::Unavailable("reconnecting to RabbitMQ".into()))?;
        let read = async {
            let ch = live
                .connection
                .create_channel()
                .await
                .map_err(unavailable)?;
            // A stream is read with a prefetch and acks (credit), from an offset.
            ch.basic_qos(500, BasicQosOptions::default())
                .await
                .map_err(unavailable)?;
            let mut args = FieldTable::default();
            args.insert("x-stream-offset".into(), string_arg("first"));
            let mut consumer = ch
                .basic_consume(
                    self.inner.topology.registry().into(),
                    format!("registry-reader.{}", std::process::id()).into(),
                    BasicConsumeOptions::default(),
                    args,
                )
                .await
                .map_err(unavailable)?;
            let mut bodies = Vec::new();
            // Bounded per record, not for the whole stream: a long registry
            // still reads, a broker that stops answering does not hang.
            while let Some(d) = tokio::time::timeout(CONFIRM_TIMEOUT, consumer.next())
                .await
                .map_err(|_| TransportError::Timeout)?
            {
                let d = d.map_err(unavailable)?;
                let done = d
                    .properties
                    .message_id()
                    .as_ref()
                    .is_some_and(|m| m.as_str() == until);
                d.acker
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(unavailable)?;
                bodies.push(d.data);
                if done {
                    let _ = ch.close(200, "registry read".into()).await;
                    return Ok(bodies);
                }
            }
            Err(TransportError::Unavailable(
                "the registry stream ended before its last record".into(),
            ))
        };
        read.await
    }

    /// The first step of handing this process's partitions over: their
    /// lease queues no longer receive requests (unbound from the requests
    /// exchange, so a new request is unroutable at once and its asker waits
    /// for the next owner), and the requests already queued are answered —
    /// waited for until the lease queues are empty and `busy` (requests
    /// being answered) is false, twice in a row 100 ms apart, at most
    /// `within`. The leases themselves are held until
    /// [`AmqpTransport::close`].
    pub async fn stop_taking_requests(&self, within: Duration, busy: impl Fn() -> bool) {
        let leases = self.leases();
        let Some(live) = self.live() else { return };
        if leases.is_empty() {
            return;
        }
        let Ok(ch) = live.connection.create_channel().await else {
            return;
        };
        for (name, key) in &leases {
            if let Err(e) = ch
                .queue_unbind(
                    name.clone().into(),
                    self.inner.topology.rpc_exchange().into(),
                    key.clone().into(),
                    FieldTable::default(),
                )
                .await
            {
                tracing::warn!(queue = %name, error = %e, "cannot stop the requests to a lease");
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + within;
        let mut quiet = 0;
        while quiet < 2 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut queued = 0;
            for (name, _) in &leases {
                match ch
                    .queue_declare(
                        name.clone().into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..QueueDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                {
                    Ok(q) => queued += q.message_count(),
                    Err(_) => return,
                }
            }
            quiet = if queued == 0 && !busy() { quiet + 1 } else { 0 };
        }
        let _ = ch.close(200, "requests handed over".into()).await;
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
        let nodes = BrokerNodes::parse(url).map_err(TransportError::Unavailable)?;
        let connection = Connection::connect(nodes.get(0), ConnectionProperties::default())
            .await
            .map_err(unavailable)?;
        let ch = connection.create_channel().await.map_err(unavailable)?;
        // Deleting a queue that does not exist is fine: cover every count.
        let t = Topology::new(
            namespace,
            PartitionCount::new(crate::partition::MAX_PARTITIONS)
                .unwrap_or_else(|e| unreachable!("{e}")),
        );
        let mut queues: Vec<String> = QueueName::all(t.partitions)
            .into_iter()
            .map(|q| t.queue(q))
            .collect();
        queues.push(t.registry());
        queues.push(t.queue(QueueName::EventLog));
        for q in queues {
            ch.queue_delete(q.into(), QueueDeleteOptions::default())
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
    pub(crate) async fn publish_dead_letter(
        &self,
        letter: DeadLetter,
    ) -> Result<(), TransportError> {
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
            route: Route::Reply(0),
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
    async fn subscribe_forever(
        self,
        queue: QueueName,
        tx: mpsc::Sender<Delivery>,
        from: Option<Arc<std::sync::atomic::AtomicI64>>,
    ) {
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
        tx: &mpsc::Sender<Delivery>,
        from: Option<&std::sync::atomic::AtomicI64>,
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
            let mut args = FieldTable::default();
            if let Some(next) = from {
                // A stream is read from an offset: where this reader left
                // off, again after every reconnection.
                let next = next.load(std::sync::atomic::Ordering::SeqCst);
                args.insert("x-stream-offset".into(), AMQPValue::LongLongInt(next));
            }
            let consumer = ch
                .basic_consume(
                    name.into(),
                    tag.into(),
                    BasicConsumeOptions::default(),
                    args,
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
            let stream_offset = props.headers().as_ref().and_then(|h| {
                h.inner().iter().find_map(|(k, v)| match (k.as_str(), v) {
                    ("x-stream-offset", AMQPValue::LongLongInt(o)) => Some(*o),
                    ("x-stream-offset", AMQPValue::LongInt(o)) => Some(i64::from(*o)),
                    _ => None,
                })
            });
            let delivery = Delivery {
                message_id: text(props.message_id()),
                correlation_id: text(props.correlation_id()),
                reply_to: text(props.reply_to()),
                message_type: text(props.kind()),
                body: d.data,
                redelivered: d.redelivered,
                stream_offset,
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

/// Declares exchanges, queues and bindings; idempotent.
async fn declare(
    connection: &Connection,
    ch: &Channel,
    t: &Topology,
    quorum: bool,
) -> lapin::Result<()> {
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
    ch.exchange_declare(
        t.rpc_exchange().into(),
        ExchangeKind::Direct,
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
    // One queue per (role, partition), consumed by one process at a time:
    // the owner holds the partition's lease; the single-active-consumer
    // flag keeps even a misbehaving second consumer from getting messages.
    let mut partitioned_args = work_args.clone();
    partitioned_args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    for p in t.partitions.all() {
        let mut queues: Vec<(QueueName, String)> = WorkerKind::ALL
            .into_iter()
            .map(|k| (QueueName::Worker(k, p), t.commands_exchange()))
            .collect();
        queues.push((QueueName::Replies(p), t.replies_exchange()));
        for (q, exchange) in queues {
            let name = t.queue(q);
            ch.queue_declare(name.clone().into(), queue_opts, partitioned_args.clone())
                .await?;
            ch.queue_bind(
                name.into(),
                exchange.into(),
                Topology::binding_key(q).unwrap_or_default().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        }
    }
    let mut stream_args = FieldTable::default();
    stream_args.insert("x-queue-type".into(), string_arg("stream"));
    ch.queue_declare(t.registry().into(), queue_opts, stream_args)
        .await?;
    // Every domain event, kept: each read-model replica reads it from its
    // own offset, so a new one catches up by itself. Publishers append to it
    // directly, in batches (`event_log`); the binding to the events exchange
    // that versions before batches made is removed, or every event would be
    // in the log twice (harmless to the versioned read models, but twice
    // the broker's work).
    let mut stream_args = FieldTable::default();
    stream_args.insert("x-queue-type".into(), string_arg("stream"));
    let log = t.queue(QueueName::EventLog);
    ch.queue_declare(log.clone().into(), queue_opts, stream_args)
        .await?;
    ch.queue_unbind(
        log.into(),
        t.events_exchange().into(),
        "#".into(),
        FieldTable::default(),
    )
    .await?;
    let dead = t.queue(QueueName::DeadLetter);
    // An existing dead-letter queue is kept as it is (versions before
    // clusters declared it classic even beside quorum queues). A new one on
    // a cluster is a quorum queue: a classic queue lives on one node, and
    // with that node down it could not even be declared.
    let probe = connection.create_channel().await?;
    let found = probe
        .queue_declare(
            dead.clone().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    let exists = match &found {
        Ok(_) => {
            let _ = probe.close(200, "checked".into()).await;
            true
        }
        // It exists, as a classic queue on a node that is down (declared
        // before the cluster): the process starts anyway; dead letters
        // wait (their deliveries are handed back) until the node is back.
        Err(e) if !e.to_string().contains("no queue") => {
            tracing::warn!(queue = %dead, error = %e, "the dead-letter queue is not available");
            return Ok(());
        }
        Err(_) => false,
    };
    if !exists {
        let mut dead_args = FieldTable::default();
        if quorum {
            dead_args.insert("x-queue-type".into(), string_arg("quorum"));
        }
        ch.queue_declare(dead.clone().into(), queue_opts, dead_args)
            .await?;
    }
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
            // The events also go to the event log, a batch per entry (see
            // `event_log`): an event counts as published once both its own
            // message and its batch are confirmed.
            let events: Vec<(usize, &Outgoing)> = batch
                .iter()
                .enumerate()
                .filter(|(_, m)| matches!(m.route, Route::Event(_)))
                .collect();
            let log = self.inner.topology.queue(QueueName::EventLog);
            let mut logged = Vec::new();
            for chunk in events.chunks(event_log::MAX_BATCH) {
                let members: Vec<&Outgoing> = chunk.iter().map(|(_, m)| *m).collect();
                let entry = Outgoing {
                    message_id: format!("log.{}+{}", members[0].message_id, members.len()),
                    correlation_id: members[0].correlation_id.clone(),
                    message_type: event_log::BATCH_TYPE.to_owned(),
                    route: Route::Event(String::new()),
                    body: event_log::encode(&members),
                };
                let what = format!("{} via {log}", entry.message_id);
                let sent = Self::publish_one(
                    ch,
                    String::new(),
                    log.clone(),
                    true,
                    &entry.body,
                    Self::properties(&entry, None),
                )
                .await;
                logged.push((
                    chunk.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
                    what,
                    sent,
                ));
            }
            let (mut results, log_results) = futures_util::join!(
                join_all(pending.into_iter().map(|(what, sent)| async move {
                    match sent {
                        Ok(confirm) => settle_confirm(what, confirm).await,
                        Err(e) => Err(e),
                    }
                })),
                join_all(logged.into_iter().map(|(members, what, sent)| async move {
                    let r = match sent {
                        Ok(confirm) => settle_confirm(what, confirm).await,
                        Err(e) => Err(e),
                    };
                    (members, r)
                }))
            );
            for (members, r) in log_results {
                if let Err(e) = r {
                    for i in members {
                        if results[i].is_ok() {
                            results[i] = Err(e.clone());
                        }
                    }
                }
            }
            results
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
            tokio::spawn(self.clone().subscribe_forever(queue, tx, None));
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

    fn ack_through(mut self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>> {
        let acker = self.acker.take();
        async move {
            if let Some(a) = acker {
                a.ack(BasicAckOptions { multiple: true })
                    .await
                    .map_err(unavailable)?;
            }
            Ok(())
        }
        .boxed()
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
