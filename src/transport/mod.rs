//! Message transport: one trait, two implementations.
//!
//! - [`amqp::AmqpTransport`]: RabbitMQ through lapin. Durable, namespaced
//!   topology; persistent messages; pipelined publisher confirms; manual acks
//!   with a prefetch.
//! - [`memory::MemoryTransport`]: in-process queues for the zero-setup
//!   default. Not durable by itself; the outboxes and saga recovery make up
//!   for that (see ARCHITECTURE.md).
//!
//! Callers never see AMQP types: they publish [`Outgoing`] messages to a
//! [`Route`] and consume [`Delivery`]s from a [`QueueName`].

pub mod amqp;
pub mod consume;
pub mod memory;
pub mod poison;

use std::fmt;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

use crate::domain::{ViewKind, WorkerKind};

/// Where a message goes, independent of the broker.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Route {
    /// A worker's command queue.
    Command(WorkerKind),
    /// The orchestrator's replies queue.
    Reply,
    /// The domain-events topic exchange with a routing key like `order.paid`.
    Event(String),
}

impl Route {
    /// The compact text stored in outbox rows.
    pub fn encode(&self) -> String {
        match self {
            Route::Command(k) => format!("command:{k}"),
            Route::Reply => "reply".into(),
            Route::Event(key) => format!("event:{key}"),
        }
    }

    pub fn decode(raw: &str) -> Option<Route> {
        if raw == "reply" {
            return Some(Route::Reply);
        }
        if let Some(k) = raw.strip_prefix("command:") {
            return k.parse().ok().map(Route::Command);
        }
        raw.strip_prefix("event:")
            .map(|key| Route::Event(key.to_owned()))
    }
}

/// A queue a process consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueueName {
    Worker(WorkerKind),
    Replies,
    DeadLetter,
    /// A read model's queue of domain events.
    View(ViewKind),
}

impl QueueName {
    /// Every queue of a namespace.
    pub fn all() -> Vec<QueueName> {
        let mut qs: Vec<QueueName> = WorkerKind::ALL.into_iter().map(QueueName::Worker).collect();
        qs.push(QueueName::Replies);
        qs.extend(ViewKind::ALL.map(QueueName::View));
        qs.push(QueueName::DeadLetter);
        qs
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
}

impl Topology {
    pub fn new(namespace: &str) -> Self {
        Topology {
            namespace: namespace.to_owned(),
        }
    }

    /// Direct exchange routing commands to worker queues by worker name.
    pub fn commands_exchange(&self) -> String {
        format!("{}.commands", self.namespace)
    }

    /// Direct exchange routing worker replies to the orchestrator.
    pub fn replies_exchange(&self) -> String {
        format!("{}.replies", self.namespace)
    }

    /// Topic exchange of domain events (`order.paid`, `kitchen.cancelled`, ...).
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.namespace)
    }

    /// Fanout exchange of messages that could not be processed.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dead-letter", self.namespace)
    }

    pub fn queue(&self, q: QueueName) -> String {
        match q {
            QueueName::Worker(k) => format!("{}.{k}.commands", self.namespace),
            QueueName::Replies => format!("{}.orchestrator.replies", self.namespace),
            QueueName::DeadLetter => format!("{}.dead-letter", self.namespace),
            QueueName::View(v) => format!("{}.views.{}", self.namespace, v.as_str()),
        }
    }

    /// Exchange and routing key of a route.
    pub fn address(&self, route: &Route) -> (String, String) {
        match route {
            Route::Command(k) => (self.commands_exchange(), k.as_str().to_owned()),
            Route::Reply => (self.replies_exchange(), "orchestrator".to_owned()),
            Route::Event(key) => (self.events_exchange(), key.clone()),
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
/// [`Delivery::ack`] or [`Delivery::dead_letter`]; dropping it unsettled
/// hands it back to the queue for redelivery.
pub struct Delivery {
    pub message_id: Option<String>,
    pub correlation_id: Option<String>,
    pub message_type: Option<String>,
    pub body: Vec<u8>,
    /// True when the broker delivered this message before.
    pub redelivered: bool,
    pub(crate) settle: Box<dyn Settle>,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("message_id", &self.message_id)
            .field("message_type", &self.message_type)
            .field("redelivered", &self.redelivered)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// Acknowledges the message: call only after its effects are committed.
    pub async fn ack(self) -> Result<(), TransportError> {
        self.settle.ack().await
    }

    /// Moves the message to the dead-letter queue with `reason` in its
    /// `x-hearty-reason` header.
    pub async fn dead_letter(self, reason: &str) -> Result<(), TransportError> {
        let Delivery {
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

    /// Hands the message back to its queue for another try.
    pub async fn requeue(self) -> Result<(), TransportError> {
        self.settle.requeue().await
    }
}

/// A message on its way to the dead-letter queue.
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
    ) -> BoxFuture<'_, Result<BoxStream<'static, Delivery>, TransportError>>;

    /// Whether the transport can carry messages right now.
    fn is_ready(&self) -> bool;

    /// A short name for logs and health output.
    fn kind(&self) -> &'static str;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_well() {
        let t = Topology::new("hearty");
        assert_eq!(
            t.queue(QueueName::Worker(WorkerKind::Pay)),
            "hearty.pay.commands"
        );
        assert_eq!(t.queue(QueueName::Replies), "hearty.orchestrator.replies");
        assert_eq!(t.queue(QueueName::DeadLetter), "hearty.dead-letter");
        assert_eq!(t.events_exchange(), "hearty.events");
        assert_eq!(
            t.address(&Route::Command(WorkerKind::Kitchen)),
            ("hearty.commands".to_owned(), "kitchen".to_owned())
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
        assert_eq!(t_view(), "hearty.views.my-orders");
    }

    fn t_view() -> String {
        Topology::new("hearty").queue(QueueName::View(ViewKind::MyOrders))
    }

    #[test]
    fn routes_round_trip() {
        for r in [
            Route::Command(WorkerKind::Coupon),
            Route::Reply,
            Route::Event("order.paid".into()),
        ] {
            assert_eq!(Route::decode(&r.encode()), Some(r));
        }
        assert_eq!(Route::decode("bogus"), None);
    }
}
