//! Leases: an exclusive queue per owned (role, partition), held by this
//! process's connection, bound to the requests exchange under the
//! partition's routing key; and the hand-over of a stopping owner.

use std::sync::Arc;
use std::time::Duration;

use lapin::Connection;
use lapin::options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;

use super::{AmqpTransport, is_locked, unavailable};
use crate::transport::{Lease, Topology, TransportError};

/// Declares `leases` as exclusive queues of `connection`, bound to the
/// requests exchange, all or none: `Err(Ok(name))` names one held by
/// another connection.
pub(super) async fn take_leases(
    connection: &Connection,
    topology: &Topology,
    leases: &[Lease],
) -> Result<(), Result<String, TransportError>> {
    let mut taken = Vec::new();
    for Lease {
        queue: name,
        routing_key: key,
    } in leases
    {
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

impl AmqpTransport {
    pub(super) fn leases(&self) -> Vec<Lease> {
        self.inner
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes the leases (exclusive queues) named, all or none, on the live
    /// connection, and keeps them on every later connection. Answers the
    /// name of one that another process holds, if any.
    pub async fn try_lease(&self, names: &[Lease]) -> Result<Option<String>, TransportError> {
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

    /// Stamps every command and reply published from now on with `epoch`.
    pub fn set_epoch(&self, epoch: crate::partition::Epoch) {
        *self.inner.epoch.lock().unwrap_or_else(|p| p.into_inner()) = Some(epoch);
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

    /// The first step of handing this process's partitions over: their
    /// lease queues no longer receive requests (unbound from the requests
    /// exchange, so a new request is unroutable at once and its asker waits
    /// for the next owner), and the requests already queued are answered —
    /// waited for until the lease queues are empty and `busy` (requests
    /// being answered) is false, twice in a row 100 ms apart, at most
    /// `within`. The leases themselves are held until
    /// [`AmqpTransport::close`].
    pub async fn stop_taking_requests(&self, within: Duration, busy: impl Fn() -> bool + Send) {
        let leases = self.leases();
        let Some(live) = self.live() else { return };
        if leases.is_empty() {
            return;
        }
        let Ok(ch) = live.connection.create_channel().await else {
            return;
        };
        for Lease {
            queue: name,
            routing_key: key,
        } in &leases
        {
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
            for Lease { queue: name, .. } in &leases {
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
}
