//! Message transport: one trait, two implementations.
//!
//! - [`amqp::AmqpTransport`]: RabbitMQ through lapin. Durable, namespaced
//!   topology; persistent messages; pipelined publisher confirms; manual acks
//!   with a prefetch. It also offers what only a broker shared by several
//!   processes can: [`Requests`] to partition owners, the [`Leases`] that
//!   make one process an owner, and the [`EventLog`].
//! - [`memory::MemoryTransport`]: in-process queues for the zero-setup
//!   default. Not durable by itself; the outboxes and saga recovery make up
//!   for that (see ARCHITECTURE.md).
//!
//! Callers never see AMQP types: they publish [`Outgoing`] messages to a
//! [`Route`] and consume [`Received`]s from a [`QueueName`].

pub mod amqp;
pub mod consume;
pub mod event_log;
pub mod memory;
pub mod nodes;
pub mod poison;

use std::fmt;

use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

use crate::domain::{ViewKind, WorkerKind};
use crate::partition::{OwnerRole, Partition, PartitionCount};

/// Where a message goes, independent of the broker.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Route {
    /// A worker's command queue, in the partition of the key: the order id,
    /// or the food id for the kitchen (see [`crate::partition`]).
    Command(WorkerKind, i64),
    /// The orchestrator's replies queue in the partition of the order id.
    Reply(i64),
    /// The domain-events topic exchange with a routing key like `order.paid`.
    Event(String),
}

impl Route {
    /// The compact text stored in outbox rows: `command:pay@7`, `reply@7`,
    /// `event:order.paid`.
    pub fn encode(&self) -> String {
        match self {
            Route::Command(k, key) => format!("command:{k}@{key}"),
            Route::Reply(key) => format!("reply@{key}"),
            Route::Event(key) => format!("event:{key}"),
        }
    }

    /// Reads an outbox row's route. Rows written before partitions
    /// (`command:pay`, `reply`) carry no key: they are placed by the
    /// message's correlation id (its order id), which a process owning
    /// every partition (the only shape before partitions) receives anyway.
    pub fn decode(raw: &str, correlation_id: &str) -> Option<Route> {
        let legacy_key = || correlation_id.parse::<i64>().unwrap_or(0);
        let keyed = |rest: &str| -> Option<(String, i64)> {
            match rest.split_once('@') {
                Some((name, key)) => Some((name.to_owned(), key.parse().ok()?)),
                None => Some((rest.to_owned(), legacy_key())),
            }
        };
        if let Some(key) = raw.strip_prefix("event:") {
            return Some(Route::Event(key.to_owned()));
        }
        if raw == "reply" {
            return Some(Route::Reply(legacy_key()));
        }
        if let Some(key) = raw.strip_prefix("reply@") {
            return key.parse().ok().map(Route::Reply);
        }
        let (kind, key) = keyed(raw.strip_prefix("command:")?)?;
        kind.parse().ok().map(|k| Route::Command(k, key))
    }
}

/// A queue a process consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueueName {
    /// A worker kind's commands of one partition.
    Worker(WorkerKind, Partition),
    /// The orchestrator's replies of one partition.
    Replies(Partition),
    DeadLetter,
    /// A read model's queue of domain events.
    View(ViewKind),
    /// The lease of a (role, partition): an exclusive queue of its owner's
    /// connection, which also receives the requests for that partition.
    Lease(OwnerRole, Partition),
    /// The stream of every domain event (RabbitMQ only), which each read
    /// model replica reads from its own offset.
    EventLog,
}

impl QueueName {
    /// Every queue of a namespace with `count` partitions.
    pub fn all(count: PartitionCount) -> Vec<QueueName> {
        let mut qs: Vec<QueueName> = Vec::new();
        for p in count.all() {
            qs.extend(WorkerKind::ALL.into_iter().map(|k| QueueName::Worker(k, p)));
            qs.push(QueueName::Replies(p));
        }
        qs.extend(ViewKind::ALL.map(QueueName::View));
        qs.push(QueueName::DeadLetter);
        qs
    }

    /// The queue a route's messages land in (events go to the views'
    /// queues through the topic exchange instead).
    pub fn of(route: &Route, count: PartitionCount) -> Option<QueueName> {
        match route {
            Route::Command(k, key) => Some(QueueName::Worker(*k, count.of(*key))),
            Route::Reply(key) => Some(QueueName::Replies(count.of(*key))),
            Route::Event(_) => None,
        }
    }
}

/// Whether a topic routing key matches a binding pattern (`*` = one word,
/// `#` = zero or more words), as RabbitMQ's topic exchanges do.
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    fn go(p: &[&str], k: &[&str]) -> bool {
        match (p.first(), k.first()) {
            (None, None) => true,
            (Some(&"#"), _) => go(&p[1..], k) || (!k.is_empty() && go(p, &k[1..])),
            (Some(&"*"), Some(_)) => go(&p[1..], &k[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &k[1..]),
            _ => false,
        }
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = key.split('.').collect();
    go(&p, &k)
}

/// The names every exchange and queue gets in one namespace. They are what
/// an operator reads in the RabbitMQ management UI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub namespace: String,
    pub partitions: PartitionCount,
}

impl Topology {
    pub fn new(namespace: &str, partitions: PartitionCount) -> Self {
        Topology {
            namespace: namespace.to_owned(),
            partitions,
        }
    }

    /// Direct exchange routing commands to worker queues by worker name
    /// and partition (`pay.p3`).
    pub fn commands_exchange(&self) -> String {
        format!("{}.commands", self.namespace)
    }

    /// Direct exchange routing worker replies to the orchestrator's
    /// partitions (`orchestrator.p3`).
    pub fn replies_exchange(&self) -> String {
        format!("{}.replies", self.namespace)
    }

    /// Topic exchange of domain events (`order.paid`, `kitchen.cancelled`, ...).
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.namespace)
    }

    /// Fanout exchange into the event log stream: the one way to append to
    /// it (publishers need no right on the default exchange, which reaches
    /// every queue).
    pub fn log_exchange(&self) -> String {
        format!("{}.log", self.namespace)
    }

    /// Fanout exchange into the registry stream. Its name is not the
    /// stream's: RabbitMQ's permissions match names, and a right to append
    /// must not be a right to unbind the stream.
    pub fn registry_exchange(&self) -> String {
        format!("{}.registry.in", self.namespace)
    }

    /// Every exchange of the namespace: commands, replies, events, dead
    /// letters, requests, the log's and the registry's (in this order).
    pub fn exchanges(&self) -> [String; 7] {
        [
            self.commands_exchange(),
            self.replies_exchange(),
            self.events_exchange(),
            self.dead_letter_exchange(),
            self.rpc_exchange(),
            self.log_exchange(),
            self.registry_exchange(),
        ]
    }

    /// Fanout exchange of messages that could not be processed.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dead-letter", self.namespace)
    }

    /// The stream recording the namespace's partition count and which data
    /// folder owns each (role, partition).
    pub fn registry(&self) -> String {
        format!("{}.registry", self.namespace)
    }

    /// The exclusive queue whose holder owns `role`'s `partition`: shown in
    /// the management UI with the owning connection.
    pub fn lease(&self, role: &str, partition: Partition) -> String {
        format!("{}.{role}.{partition}.owner", self.namespace)
    }

    /// Direct exchange of requests to the owners of partitions (`pay.p3`);
    /// answers come back by direct reply-to.
    pub fn rpc_exchange(&self) -> String {
        format!("{}.rpc", self.namespace)
    }

    /// The routing key of requests for `role`'s `partition`.
    pub fn rpc_key(role: OwnerRole, partition: Partition) -> String {
        format!("{role}.{partition}")
    }

    pub fn queue(&self, q: QueueName) -> String {
        match q {
            QueueName::Worker(k, p) => format!("{}.{k}.commands.{p}", self.namespace),
            QueueName::Replies(p) => format!("{}.orchestrator.replies.{p}", self.namespace),
            QueueName::DeadLetter => format!("{}.dead-letter", self.namespace),
            QueueName::View(v) => format!("{}.views.{}", self.namespace, v.as_str()),
            QueueName::Lease(role, p) => self.lease(role.as_str(), p),
            QueueName::EventLog => format!("{}.events.log", self.namespace),
        }
    }

    /// The routing key binding a partitioned queue to its exchange.
    pub fn binding_key(q: QueueName) -> Option<String> {
        match q {
            QueueName::Worker(k, p) => Some(format!("{k}.{p}")),
            QueueName::Replies(p) => Some(format!("orchestrator.{p}")),
            QueueName::DeadLetter
            | QueueName::View(_)
            | QueueName::Lease(..)
            | QueueName::EventLog => None,
        }
    }

    /// Exchange and routing key of a route.
    pub fn address(&self, route: &Route) -> (String, String) {
        match QueueName::of(route, self.partitions) {
            Some(q @ QueueName::Worker(..)) => (
                self.commands_exchange(),
                Self::binding_key(q).unwrap_or_default(),
            ),
            Some(q) => (
                self.replies_exchange(),
                Self::binding_key(q).unwrap_or_default(),
            ),
            None => match route {
                Route::Event(key) => (self.events_exchange(), key.clone()),
                _ => unreachable!("commands and replies have a queue"),
            },
        }
    }
}

/// A message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub message_id: String,
    /// The saga id, so one saga's messages can be found together.
    pub correlation_id: String,
    /// `pay.authorize`, `reply.pay.done`, `order.paid`, ...
    pub message_type: String,
    pub route: Route,
    /// JSON.
    pub body: Vec<u8>,
}

/// A received message. It must be settled with exactly one of
/// [`Received::ack`] or [`Received::dead_letter`]; dropping it unsettled
/// hands it back to the queue for redelivery.
pub struct Received {
    pub message_id: Option<String>,
    pub correlation_id: Option<String>,
    /// Where a request's answer goes (direct reply-to), if it is one.
    pub reply_to: Option<String>,
    pub message_type: Option<String>,
    pub body: Vec<u8>,
    /// True when the broker delivered this message before.
    pub redelivered: bool,
    /// Its offset, when it comes from a stream.
    pub stream_offset: Option<i64>,
    /// The epoch of the owner that sent it, when it says.
    pub epoch: Option<crate::partition::Epoch>,
    pub(crate) settle: Box<dyn Settle>,
}

impl fmt::Debug for Received {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Received")
            .field("message_id", &self.message_id)
            .field("message_type", &self.message_type)
            .field("redelivered", &self.redelivered)
            .finish_non_exhaustive()
    }
}

impl Received {
    /// Acknowledges the message: call only after its effects are committed.
    pub async fn ack(self) -> Result<(), TransportError> {
        self.settle.ack().await
    }

    /// Moves the message to the dead-letter queue with `reason` in its
    /// `x-hearty-reason` header.
    pub async fn dead_letter(self, reason: &str) -> Result<(), TransportError> {
        let Received {
            message_id,
            correlation_id,
            message_type,
            body,
            settle,
            ..
        } = self;
        settle
            .dead_letter(DeadLetter {
                message_id,
                correlation_id,
                message_type,
                body,
                reason: reason.to_owned(),
            })
            .await
    }

    /// Acknowledges this message and every earlier one of its consumer not
    /// settled yet (`multiple`): one frame for a batch. The earlier ones
    /// must be let go with [`Received::covered`].
    pub async fn ack_through(self) -> Result<(), TransportError> {
        self.settle.ack_through().await
    }

    /// Lets this message go as settled by a later [`Received::ack_through`]
    /// of the same consumer (nothing is sent for it).
    pub fn covered(self) {
        self.settle.covered();
    }

    /// Hands the message back to its queue for another try.
    pub async fn requeue(self) -> Result<(), TransportError> {
        self.settle.requeue().await
    }
}

/// A message on its way to the dead-letter queue.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub message_id: Option<String>,
    pub correlation_id: Option<String>,
    pub message_type: Option<String>,
    pub body: Vec<u8>,
    pub reason: String,
}

/// How one delivery is settled with its broker.
pub(crate) trait Settle: Send {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>>;
    fn ack_through(self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>>;
    fn covered(self: Box<Self>);
    fn requeue(self: Box<Self>) -> BoxFuture<'static, Result<(), TransportError>>;
    fn dead_letter(
        self: Box<Self>,
        letter: DeadLetter,
    ) -> BoxFuture<'static, Result<(), TransportError>>;
}

/// A transport failure: the operation may be retried.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    #[error("broker refused the message: {0}")]
    Nacked(String),
    #[error("no queue is bound for {0}")]
    Unroutable(String),
    #[error("timed out waiting for the broker")]
    Timeout,
}

/// Whether a stream whose first deliverable entry is at `head` still holds
/// every entry from `position` on. Retention deletes whole segments, and
/// RabbitMQ begins every segment but the first with a chunk of its own
/// bookkeeping that takes an offset and is never delivered: a reader whose
/// next offset is that chunk's sees the head one past it and has lost
/// nothing.
pub fn stream_holds_from(position: i64, head: i64) -> bool {
    position.saturating_add(1) >= head
}

/// The transport every role uses.
pub trait Transport: Send + Sync + 'static {
    /// Publishes a batch. The messages go out back to back and their confirms
    /// are awaited together; the result has one entry per message, `Ok` once
    /// the broker has taken responsibility for it.
    fn publish(&self, batch: Vec<Outgoing>) -> BoxFuture<'_, Vec<Result<(), TransportError>>>;

    /// Starts consuming a queue.
    fn consume(
        &self,
        queue: QueueName,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Received>, TransportError>>;

    /// Whether the transport can carry messages right now.
    fn is_ready(&self) -> bool;

    /// A short name for logs and health output.
    fn kind(&self) -> &'static str;

    /// Request/reply to the owners of partitions in other processes. `None`
    /// in-process: one process owns every partition and asks directly.
    fn requests(&self) -> Option<&dyn Requests> {
        None
    }

    /// The registry and the leases that make one process the owner of a
    /// partition among many. `None` in-process (one process owns all).
    fn leases(&self) -> Option<&dyn Leases> {
        None
    }

    /// The kept log of every domain event, read from an offset. `None`
    /// in-process (read models read their own queues).
    fn event_log(&self) -> Option<&dyn EventLog> {
        None
    }

    /// Closes the connection (and with it the leases) at the end of a stop.
    fn close(&self) -> BoxFuture<'_, ()> {
        futures_util::future::ready(()).boxed()
    }
}

/// Request/reply to the owner of a partition, over a broker several
/// processes share.
pub trait Requests: Send + Sync {
    /// Sends a request to the owner of the partition behind `routing_key`
    /// (`pay.p3`) and waits for its answer, at most `wait`. No owner bound
    /// (none running, or a standby only) is `Unroutable` at once: nothing was
    /// delivered. `message_type` says what protocol (and version) the
    /// body speaks.
    fn request<'a>(
        &'a self,
        routing_key: &'a str,
        message_type: &'a str,
        body: Vec<u8>,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Vec<u8>, TransportError>>;

    /// Answers a received request (see [`Received::reply_to`]).
    fn respond<'a>(
        &'a self,
        reply_to: &'a str,
        correlation_id: &'a str,
        body: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), TransportError>>;
}

/// One record of the registry stream and its position (offset) in it:
/// positions only grow, so they order the records of the whole cluster.
#[derive(Debug, Clone)]
pub struct RegistryEntry {
    pub offset: i64,
    pub body: Vec<u8>,
}

/// The lease of one (role, partition): an exclusive queue of its owner's
/// connection, bound to the requests exchange with the partition's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// `<ns>.pay.p3.owner`.
    pub queue: String,
    /// `pay.p3`.
    pub routing_key: String,
}

/// Who owns what among processes sharing a broker: the registry stream and
/// the leases (see `cluster::ownership`).
pub trait Leases: Send + Sync {
    /// Appends a record to the registry stream; `Ok` once confirmed.
    fn append_registry<'a>(
        &'a self,
        record: &'a [u8],
        id: &'a str,
    ) -> BoxFuture<'a, Result<(), TransportError>>;

    /// Every record of the registry, from its first up to and including the
    /// one with message id `until`, with its position in the stream.
    fn read_registry<'a>(
        &'a self,
        until: &'a str,
    ) -> BoxFuture<'a, Result<Vec<RegistryEntry>, TransportError>>;

    /// Takes `leases`, all or none, and keeps them on every later
    /// connection. Answers the queue of one another process holds, if any.
    fn try_lease<'a>(
        &'a self,
        leases: &'a [Lease],
    ) -> BoxFuture<'a, Result<Option<String>, TransportError>>;

    /// Resolves, with the reason, once this process no longer owns its
    /// partitions: it must stop acting.
    fn fenced(&self) -> BoxFuture<'_, String>;

    /// This process's epoch from now on: every command and reply it
    /// publishes carries it, so a receiver can refuse a stale owner's.
    fn set_epoch(&self, epoch: crate::partition::Epoch);

    /// The first step of handing the partitions over: no new requests reach
    /// the leases, the queued ones are answered (waiting while `busy`), at
    /// most `within`. The leases go with [`Transport::close`].
    fn stop_taking_requests<'a>(
        &'a self,
        within: Duration,
        busy: &'a (dyn Fn() -> bool + Send + Sync),
    ) -> BoxFuture<'a, ()>;
}

/// The event log: every domain event, kept in a stream, in batches.
pub trait EventLog: Send + Sync {
    /// Reads the log from offset `next` (kept up to date by the reader as it
    /// commits), again from there after a reconnection.
    fn read(&self, next: Arc<AtomicI64>) -> BoxStream<'static, Received>;

    /// Appends a catch-up marker named `id` (see `event_log::MARKER_TYPE`);
    /// `Ok` once confirmed.
    fn append_marker<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), TransportError>>;

    /// Puts a copy of an entry (or of one event of it) in the dead-letter
    /// queue with its reason; `Ok` once confirmed.
    fn dead_letter(&self, letter: DeadLetter) -> BoxFuture<'_, Result<(), TransportError>>;

    /// The offset of the log's first retained entry (retention deletes the
    /// oldest segments); `None` if the log holds nothing.
    fn head(&self) -> BoxFuture<'_, Result<Option<i64>, TransportError>> {
        self.entry_from(LogFrom::First)
            .map(|r| r.map(|e| e.map(|(o, _)| o)))
            .boxed()
    }

    /// The first entry at or after `from`, by offset and message id;
    /// `None` if none comes within a few seconds.
    fn entry_from(
        &self,
        from: LogFrom,
    ) -> BoxFuture<'_, Result<Option<(i64, String)>, TransportError>>;
}

/// Where in the log to look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFrom {
    /// Its first retained entry.
    First,
    Offset(i64),
    /// The first entry written at or after this time (seconds since the
    /// epoch; the broker's clock).
    Time(u64),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology() -> Topology {
        Topology::new("hearty", PartitionCount::default())
    }

    #[test]
    fn names_read_well() {
        let t = topology();
        let p3 = PartitionCount::default().of(3);
        assert_eq!(
            t.queue(QueueName::Worker(WorkerKind::Pay, p3)),
            "hearty.pay.commands.p3"
        );
        assert_eq!(
            t.queue(QueueName::Replies(p3)),
            "hearty.orchestrator.replies.p3"
        );
        assert_eq!(t.queue(QueueName::DeadLetter), "hearty.dead-letter");
        assert_eq!(t.events_exchange(), "hearty.events");
        assert_eq!(t.lease("pay", p3), "hearty.pay.p3.owner");
        // Food 11 of 8 partitions is in p3.
        assert_eq!(
            t.address(&Route::Command(WorkerKind::Kitchen, 11)),
            ("hearty.commands".to_owned(), "kitchen.p3".to_owned())
        );
        assert_eq!(
            t.address(&Route::Reply(19)),
            ("hearty.replies".to_owned(), "orchestrator.p3".to_owned())
        );
        assert_eq!(
            t.queue(QueueName::View(ViewKind::MyOrders)),
            "hearty.views.my-orders"
        );
        assert_eq!(
            QueueName::all(PartitionCount::default()).len(),
            8 * 5 + 3 + 1
        );
    }

    #[test]
    fn topic_patterns() {
        assert!(topic_matches("order.#", "order.paid"));
        assert!(topic_matches("#", "order.paid"));
        assert!(topic_matches("*.paid", "order.paid"));
        assert!(!topic_matches("order.*", "pay.approved"));
        assert!(!topic_matches("order.*", "order"));
        assert!(topic_matches("order.#", "order"));
    }

    #[test]
    fn routes_round_trip() {
        for r in [
            Route::Command(WorkerKind::Coupon, 7),
            Route::Reply(7),
            Route::Event("order.paid".into()),
        ] {
            assert_eq!(Route::decode(&r.encode(), "1"), Some(r));
        }
        assert_eq!(Route::decode("bogus", "1"), None);
        assert_eq!(Route::decode("command:pay@x", "1"), None);
        // Rows written before partitions are placed by their order id.
        assert_eq!(
            Route::decode("command:kitchen", "12"),
            Some(Route::Command(WorkerKind::Kitchen, 12))
        );
        assert_eq!(Route::decode("reply", "12"), Some(Route::Reply(12)));
    }
}
