//! The namespace's topology, declared at every (re)connection; idempotent.
//! The orchestrator declares the shared exchanges, the streams, its replies
//! queues and the dead-letter queue; a worker checks that those exist and
//! declares its own command queues; a process serving only the API (or only
//! read models) declares nothing and checks that the namespace exists. So
//! only the orchestrator's broker user may configure what every role uses
//! (see `permissions`).

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ExchangeKind};

use super::{is_missing_queue, string_arg};
use crate::domain::WorkerKind;
use crate::transport::{QueueName, Topology};

/// What a process declares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// The exchanges and the streams every role uses (the orchestrator
    /// declares them; the others check that they exist).
    pub shared: bool,
    /// The workers whose command queues this process consumes.
    pub workers: Vec<WorkerKind>,
    /// The orchestrator's replies queues and the dead-letter queue.
    pub replies: bool,
}

impl Scope {
    /// Everything: one process of every role.
    pub fn everything() -> Self {
        Scope {
            shared: true,
            workers: WorkerKind::ALL.to_vec(),
            replies: true,
        }
    }
}

/// Declares what `scope` says (exchanges, queues and bindings); idempotent.
/// With nothing shared to declare, checks that the namespace exists.
pub(super) async fn declare(
    connection: &Connection,
    ch: &Channel,
    t: &Topology,
    quorum: bool,
    scope: &Scope,
    log_retention: &Retention,
) -> lapin::Result<()> {
    if scope.shared {
        declare_exchanges(ch, t).await?;
        declare_streams(connection, ch, t, log_retention).await?;
    } else {
        check_exists(ch, t).await?;
    }
    declare_partitioned_queues(ch, t, quorum, scope).await?;
    if scope.replies {
        declare_dead_letters(connection, ch, t, quorum).await?;
    }
    Ok(())
}

/// The namespace's exchanges with their kinds (in `Topology::exchanges`'
/// order).
fn exchanges(t: &Topology) -> impl Iterator<Item = (String, ExchangeKind)> {
    const KINDS: [ExchangeKind; 7] = [
        ExchangeKind::Direct, // commands
        ExchangeKind::Direct, // replies
        ExchangeKind::Topic,  // events
        ExchangeKind::Fanout, // dead letters
        ExchangeKind::Direct, // requests
        ExchangeKind::Fanout, // the event log's
        ExchangeKind::Fanout, // the registry's
    ];
    t.exchanges().into_iter().zip(KINDS)
}

async fn declare_exchanges(ch: &Channel, t: &Topology) -> lapin::Result<()> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    for (name, kind) in exchanges(t) {
        ch.exchange_declare(name.into(), kind, durable, FieldTable::default())
            .await?;
    }
    Ok(())
}

/// Passive declarations (which need no right): the exchanges and streams
/// an owner declares. Missing ones are an error (`NOT_FOUND`): the process
/// tries again until an owner has declared them.
async fn check_exists(ch: &Channel, t: &Topology) -> lapin::Result<()> {
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    for (name, kind) in exchanges(t) {
        ch.exchange_declare(name.into(), kind, passive, FieldTable::default())
            .await?;
    }
    for stream in [t.registry(), t.queue(QueueName::EventLog)] {
        ch.queue_declare(
            stream.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    }
    Ok(())
}

/// The arguments of a work queue: dead letters go to the namespace's
/// dead-letter exchange; quorum queues (replicated, for clustered brokers)
/// have the broker itself dead-letter a message redelivered too often.
fn work_queue_args(t: &Topology, quorum: bool) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        string_arg(&t.dead_letter_exchange()),
    );
    if quorum {
        args.insert("x-queue-type".into(), string_arg("quorum"));
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongInt(crate::transport::poison::MAX_DELIVERIES as i32 * 2),
        );
    }
    args
}

/// One queue per (role, partition), consumed by one process at a time: the
/// owner holds the partition's lease; the single-active-consumer flag keeps
/// even a misbehaving second consumer from getting messages.
async fn declare_partitioned_queues(
    ch: &Channel,
    t: &Topology,
    quorum: bool,
    scope: &Scope,
) -> lapin::Result<()> {
    let mut args = work_queue_args(t, quorum);
    args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    for p in t.partitions.all() {
        let mut queues: Vec<(QueueName, String)> = scope
            .workers
            .iter()
            .map(|k| (QueueName::Worker(*k, p), t.commands_exchange()))
            .collect();
        if scope.replies {
            queues.push((QueueName::Replies(p), t.replies_exchange()));
        }
        for (q, exchange) in queues {
            let name = t.queue(q);
            ch.queue_declare(
                name.clone().into(),
                QueueDeclareOptions::durable(),
                args.clone(),
            )
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
    Ok(())
}

/// How much of a stream the broker keeps: RabbitMQ deletes a stream's
/// oldest segments once it is larger than `max_bytes` or they are older
/// than `max_age` (a segment at a time, never the one being written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_age: Option<std::time::Duration>,
    pub max_bytes: u64,
    pub segment_bytes: u64,
}

impl Retention {
    /// The event log's defaults (`HEARTY_LOG_*`): a week, at most 2 GiB in
    /// segments of 64 MiB.
    pub const LOG_DEFAULT: Retention = Retention {
        max_age: Some(std::time::Duration::from_secs(7 * 86_400)),
        max_bytes: 2 << 30,
        segment_bytes: 64 << 20,
    };

    /// The registry's: a few thousand records, which its periodic summary
    /// record (`cluster::ownership`) makes enough however long it lives.
    pub const REGISTRY: Retention = Retention {
        max_age: None,
        max_bytes: 8 << 20,
        segment_bytes: 1 << 20,
    };

    fn arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), string_arg("stream"));
        if let Some(age) = self.max_age {
            args.insert(
                "x-max-age".into(),
                string_arg(&format!("{}s", age.as_secs().max(1))),
            );
        }
        args.insert(
            "x-max-length-bytes".into(),
            AMQPValue::LongLongInt(i64::try_from(self.max_bytes).unwrap_or(i64::MAX)),
        );
        args.insert(
            "x-stream-max-segment-size-bytes".into(),
            AMQPValue::LongLongInt(i64::try_from(self.segment_bytes).unwrap_or(i64::MAX)),
        );
        args
    }
}

/// The registry, and the event log: every domain event, kept for a bounded
/// time and size, so each read-model replica reads it from its own offset
/// and a new one catches up from a snapshot by itself. Each is appended to
/// through its fanout exchange (the event log in batches, `event_log`); the
/// binding to the events exchange that versions before batches made is
/// removed, or every event would be in the log twice (harmless to the
/// versioned read models, but twice the broker's work).
async fn declare_streams(
    connection: &Connection,
    ch: &Channel,
    t: &Topology,
    log_retention: &Retention,
) -> lapin::Result<()> {
    let log = t.queue(QueueName::EventLog);
    for (name, exchange, retention) in [
        (t.registry(), t.registry_exchange(), &Retention::REGISTRY),
        (log.clone(), t.log_exchange(), log_retention),
    ] {
        declare_stream(connection, &name, retention).await?;
        ch.queue_bind(
            name.into(),
            exchange.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    }
    ch.queue_unbind(
        log.into(),
        t.events_exchange().into(),
        "#".into(),
        FieldTable::default(),
    )
    .await
}

/// Declares one stream with its retention. A stream declared before with
/// other arguments (an earlier version's, without retention, or other
/// settings) is kept as it is — a queue's arguments cannot change in place
/// — and the process says how to bound it: a policy, which does apply to an
/// existing stream.
async fn declare_stream(
    connection: &Connection,
    name: &str,
    retention: &Retention,
) -> lapin::Result<()> {
    // A refused declaration closes its channel: a channel of its own.
    let probe = connection.create_channel().await?;
    match probe
        .queue_declare(
            name.into(),
            QueueDeclareOptions::durable(),
            retention.arguments(),
        )
        .await
    {
        Ok(_) => {
            let _ = probe.close(200, "declared".into()).await;
            Ok(())
        }
        Err(e) if super::is_inequivalent(&e) => {
            tracing::warn!(
                stream = name,
                max_bytes = retention.max_bytes,
                "the stream exists with other retention arguments (declared by an earlier \
                 version or with other HEARTY_LOG_* settings); it keeps them. To bound it now: \
                 rabbitmqctl set_policy --apply-to queues <name> '^<stream>$' \
                 '{{\"max-length-bytes\":<bytes>,\"max-age\":\"7D\"}}'"
            );
            let check = connection.create_channel().await?;
            check
                .queue_declare(
                    name.into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            let _ = check.close(200, "checked".into()).await;
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The dead-letter queue. An existing one is kept as it is (versions before
/// clusters declared it classic even beside quorum queues). A new one on a
/// cluster is a quorum queue: a classic queue lives on one node, and with
/// that node down it could not even be declared.
async fn declare_dead_letters(
    connection: &Connection,
    ch: &Channel,
    t: &Topology,
    quorum: bool,
) -> lapin::Result<()> {
    let dead = t.queue(QueueName::DeadLetter);
    // A refused passive declare closes its channel: a channel of its own.
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
        Err(e) if is_missing_queue(e) => false,
        // It exists, as a classic queue on a node that is down (declared
        // before the cluster): the process starts anyway; dead letters
        // wait (their deliveries are handed back) until the node is back.
        Err(e) => {
            tracing::warn!(queue = %dead, error = %e, "the dead-letter queue is not available");
            return Ok(());
        }
    };
    if !exists {
        let mut args = FieldTable::default();
        if quorum {
            args.insert("x-queue-type".into(), string_arg("quorum"));
        }
        ch.queue_declare(dead.clone().into(), QueueDeclareOptions::durable(), args)
            .await?;
    }
    ch.queue_bind(
        dead.into(),
        t.dead_letter_exchange().into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map(|_| ())
}
