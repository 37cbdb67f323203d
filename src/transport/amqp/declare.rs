//! The namespace's topology, declared at every (re)connection; idempotent.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ExchangeKind};

use super::{is_missing_queue, string_arg};
use crate::domain::WorkerKind;
use crate::transport::{QueueName, Topology};

/// Declares exchanges, queues and bindings; idempotent.
pub(super) async fn declare(
    connection: &Connection,
    ch: &Channel,
    t: &Topology,
    quorum: bool,
) -> lapin::Result<()> {
    declare_exchanges(ch, t).await?;
    declare_partitioned_queues(ch, t, quorum).await?;
    declare_streams(ch, t).await?;
    declare_dead_letters(connection, ch, t, quorum).await
}

async fn declare_exchanges(ch: &Channel, t: &Topology) -> lapin::Result<()> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    for (name, kind) in [
        (t.commands_exchange(), ExchangeKind::Direct),
        (t.replies_exchange(), ExchangeKind::Direct),
        (t.events_exchange(), ExchangeKind::Topic),
        (t.dead_letter_exchange(), ExchangeKind::Fanout),
        (t.rpc_exchange(), ExchangeKind::Direct),
    ] {
        ch.exchange_declare(name.into(), kind, durable, FieldTable::default())
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
async fn declare_partitioned_queues(ch: &Channel, t: &Topology, quorum: bool) -> lapin::Result<()> {
    let mut args = work_queue_args(t, quorum);
    args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    for p in t.partitions.all() {
        let mut queues: Vec<(QueueName, String)> = WorkerKind::ALL
            .into_iter()
            .map(|k| (QueueName::Worker(k, p), t.commands_exchange()))
            .collect();
        queues.push((QueueName::Replies(p), t.replies_exchange()));
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

/// The registry, and the event log: every domain event, kept, so each
/// read-model replica reads it from its own offset and a new one catches up
/// by itself. Publishers append to the log directly, in batches
/// (`event_log`); the binding to the events exchange that versions before
/// batches made is removed, or every event would be in the log twice
/// (harmless to the versioned read models, but twice the broker's work).
async fn declare_streams(ch: &Channel, t: &Topology) -> lapin::Result<()> {
    let mut stream = FieldTable::default();
    stream.insert("x-queue-type".into(), string_arg("stream"));
    let log = t.queue(QueueName::EventLog);
    for name in [t.registry(), log.clone()] {
        ch.queue_declare(name.into(), QueueDeclareOptions::durable(), stream.clone())
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
