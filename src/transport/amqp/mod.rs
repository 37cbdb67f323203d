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

mod connection;
mod declare;
mod leases;
pub mod permissions;
mod publish;
mod rpc;
mod streams;
mod subscribe;

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::AMQPValue;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::{mpsc, watch};

use super::{
    DeadLetter, EventLog, Lease, Leases, Outgoing, QueueName, Received, RegistryEntry, Requests,
    Topology, Transport, TransportError, nodes::BrokerNodes,
};
use crate::partition::PartitionCount;
pub use declare::{Retention, Scope};

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
    /// What this process declares (see `declare`).
    pub scope: Scope,
    /// How much of the event log the broker keeps (applied by the process
    /// that declares it: the orchestrator).
    pub log_retention: Retention,
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
    leases: std::sync::Mutex<Vec<Lease>>,
    /// The channel requests go out on and answers come back to (direct
    /// reply-to), with the connection generation it belongs to.
    rpc: tokio::sync::Mutex<Option<(u64, rpc::RpcChannel)>>,
    /// Set when a lease was taken by another process while this one was
    /// disconnected: this process no longer owns its partitions.
    fenced: watch::Sender<Option<String>>,
    /// This process's epoch, once it took its partitions over, carried by
    /// every command and reply it publishes.
    epoch: std::sync::Mutex<Option<crate::partition::Epoch>>,
}

/// The headers that carry the sender's epoch on commands and replies: its
/// position, and the registry it is a position in.
pub const EPOCH_HEADER: &str = "x-hearty-epoch";
pub const REGISTRY_HEADER: &str = "x-hearty-registry";

#[derive(Clone)]
struct Live {
    connection: Arc<Connection>,
    /// The confirm-mode channel all publishes share.
    publisher: Channel,
}

fn unavailable(e: lapin::Error) -> TransportError {
    TransportError::Unavailable(e.to_string())
}

/// An integer header of a delivery (`x-stream-offset`, the epoch headers),
/// whichever integer type the broker or the publisher gave it.
fn int_header(props: &lapin::BasicProperties, name: &str) -> Option<i64> {
    match props.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::Timestamp(v) => i64::try_from(*v).ok(),
        _ => None,
    }
}

fn string_arg(v: &str) -> AMQPValue {
    AMQPValue::LongString(v.into())
}

/// The broker's answer to a refused operation, when it is one (a channel
/// error such as RESOURCE_LOCKED, NOT_FOUND, PRECONDITION_FAILED), with the
/// broker's sentence.
fn refusal(e: &lapin::Error) -> Option<(AMQPSoftError, &str)> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(p) => match p.kind() {
            AMQPErrorKind::Soft(soft) => Some((soft.clone(), p.get_message().as_str())),
            AMQPErrorKind::Hard(_) => None,
        },
        _ => None,
    }
}

/// Whether a refusal says a lease (an exclusive queue) belongs to another
/// connection.
fn is_locked(e: &lapin::Error) -> bool {
    matches!(refusal(e), Some((AMQPSoftError::RESOURCELOCKED, _)))
}

/// Whether a declaration was refused because the queue exists with other
/// arguments (another queue type: a namespace's queues keep their type).
fn is_inequivalent(e: &lapin::Error) -> bool {
    matches!(refusal(e), Some((AMQPSoftError::PRECONDITIONFAILED, _)))
}

/// Whether a passive declaration found no such queue. RabbitMQ answers
/// NOT_FOUND also for a classic queue whose home node is down, so the
/// broker's sentence (`no queue '…' in vhost '…'`) tells the two apart.
fn is_missing_queue(e: &lapin::Error) -> bool {
    matches!(refusal(e), Some((AMQPSoftError::NOTFOUND, message)) if message.contains("no queue"))
}

impl AmqpTransport {
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
        for ex in t.exchanges() {
            ch.exchange_delete(ex.into(), ExchangeDeleteOptions::default())
                .await
                .map_err(unavailable)?;
        }
        let _ = connection.close(200, "bye".into()).await;
        Ok(())
    }
}

impl Transport for AmqpTransport {
    fn publish(&self, batch: Vec<Outgoing>) -> BoxFuture<'_, Vec<Result<(), TransportError>>> {
        self.publish_batch(batch).boxed()
    }

    fn consume(
        &self,
        queue: QueueName,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Received>, TransportError>> {
        async move {
            // While reconnecting, the subscription starts once the broker is back.
            let (tx, rx) = mpsc::channel(usize::from(self.inner.settings.prefetch.max(1)));
            tokio::spawn(self.clone().subscribe_forever(queue, tx, None));
            Ok(subscribe::tokio_stream_from(rx))
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

    fn requests(&self) -> Option<&dyn Requests> {
        Some(self)
    }

    fn leases(&self) -> Option<&dyn Leases> {
        Some(self)
    }

    fn event_log(&self) -> Option<&dyn EventLog> {
        Some(self)
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        AmqpTransport::close(self).boxed()
    }
}
impl Requests for AmqpTransport {
    fn request<'a>(
        &'a self,
        routing_key: &'a str,
        message_type: &'a str,
        body: Vec<u8>,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Vec<u8>, TransportError>> {
        AmqpTransport::request(self, routing_key, message_type, body, wait).boxed()
    }

    fn respond<'a>(
        &'a self,
        reply_to: &'a str,
        correlation_id: &'a str,
        body: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), TransportError>> {
        AmqpTransport::respond(self, reply_to, correlation_id, body).boxed()
    }
}

impl Leases for AmqpTransport {
    fn append_registry<'a>(
        &'a self,
        record: &'a [u8],
        id: &'a str,
    ) -> BoxFuture<'a, Result<(), TransportError>> {
        AmqpTransport::append_registry(self, record, id).boxed()
    }

    fn read_registry<'a>(
        &'a self,
        until: &'a str,
    ) -> BoxFuture<'a, Result<Vec<RegistryEntry>, TransportError>> {
        AmqpTransport::read_registry(self, until).boxed()
    }

    fn try_lease<'a>(
        &'a self,
        leases: &'a [Lease],
    ) -> BoxFuture<'a, Result<Option<String>, TransportError>> {
        AmqpTransport::try_lease(self, leases).boxed()
    }

    fn fenced(&self) -> BoxFuture<'_, String> {
        AmqpTransport::fenced(self).boxed()
    }

    fn set_epoch(&self, epoch: crate::partition::Epoch) {
        AmqpTransport::set_epoch(self, epoch);
    }

    fn stop_taking_requests<'a>(
        &'a self,
        within: Duration,
        busy: &'a (dyn Fn() -> bool + Send + Sync),
    ) -> BoxFuture<'a, ()> {
        AmqpTransport::stop_taking_requests(self, within, busy).boxed()
    }
}

impl EventLog for AmqpTransport {
    fn read(&self, next: Arc<std::sync::atomic::AtomicI64>) -> BoxStream<'static, Received> {
        self.read_event_log(next)
    }

    fn append_marker<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), TransportError>> {
        self.append_log_marker(id).boxed()
    }

    fn dead_letter(&self, letter: DeadLetter) -> BoxFuture<'_, Result<(), TransportError>> {
        self.publish_dead_letter(letter).boxed()
    }

    fn entry_from(
        &self,
        from: crate::transport::LogFrom,
    ) -> BoxFuture<'_, Result<Option<(i64, String)>, TransportError>> {
        self.read_log_entry(from).boxed()
    }
}
