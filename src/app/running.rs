//! A running process: where it listens, and how it drains, stops and
//! learns that it was fenced off its partitions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::parts::Parts;
use crate::config::Secret;
use crate::transport::Transport;

/// A running process.
pub struct Running {
    /// Where HTTP listens (the real port when the configured one was 0).
    pub http_addr: SocketAddr,
    /// Readiness fails while set (see [`Running::drain`]).
    pub(super) draining: Arc<AtomicBool>,
    /// How long [`Running::drain`] keeps serving: the configured drain for
    /// a process serving the API, zero otherwise (an owner hands its
    /// partitions over by stopping promptly).
    pub(super) drain: Duration,
    /// How long placing an order may wait for its payment (an owner
    /// handing over lets such a request finish).
    pub(super) order_timeout: Duration,
    /// The manager's token (configured or generated).
    pub manager_token: Option<Secret>,
    pub(super) server: actix_web::dev::ServerHandle,
    /// The internal listener of probes and metrics, if any (stopped last:
    /// probes answer until the end), and where it listens.
    pub(super) ops: Option<actix_web::dev::ServerHandle>,
    pub ops_addr: Option<SocketAddr>,
    pub(super) parts: Parts,
    pub(super) transport: Arc<dyn Transport>,
}

impl Running {
    /// The transport of this process (tests publish raw messages with it).
    pub fn transport(&self) -> Arc<dyn Transport> {
        self.transport.clone()
    }

    /// The first half of a graceful stop of a process serving the API:
    /// `/health/ready` answers 503 from now on while every request is still
    /// served, for the drain period, so a load balancer (its health checks,
    /// or Kubernetes' endpoints) moves the traffic away before the process
    /// stops listening. Then [`Running::stop`].
    pub async fn drain(&self) {
        if self.drain.is_zero() {
            return;
        }
        self.draining.store(true, Ordering::SeqCst);
        tracing::info!(drain = ?self.drain, "draining: not ready any more, still serving");
        tokio::time::sleep(self.drain).await;
    }

    /// Graceful shutdown: stop taking requests and deliveries, let the
    /// work in flight finish (bounded), flush the outboxes, close the broker
    /// connection. Unacked deliveries go back to their queues.
    pub async fn stop(self) {
        if let Some(leases) = self.transport.leases() {
            // Partition owners: requests for their partitions wait for the
            // next owner from now on, and the ones queued get answered.
            // Placing an order waits for its payment (HEARTY_ORDER_TIMEOUT):
            // its answer gets that long, and more.
            let within = self.order_timeout + Duration::from_secs(10);
            let busy = || crate::cluster::serve::requests_in_flight() > 0;
            leases.stop_taking_requests(within, &busy).await;
        }
        let Parts {
            trigger,
            relay_trigger,
            relays,
            arbiters,
            dbs,
            ..
        } = self.parts;
        trigger.trigger();
        self.server.stop(true).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while crate::metrics::in_flight() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        relay_trigger.trigger();
        for relay in relays {
            let _ = relay.await;
        }
        for arbiter in &arbiters {
            arbiter.stop();
        }
        for db in &dbs {
            db.close();
        }
        // Closing the connection gives the leases up at once: a standby
        // takes the partitions over without waiting for a timeout.
        self.transport.close().await;
        drop(self.transport);
        if let Some(ops) = self.ops {
            ops.stop(true).await;
        }
    }

    /// The stop of a process that no longer owns its partitions: its
    /// connection is closed first, so nothing more leaves it (not even
    /// what its outboxes hold: the new owner publishes those), then the
    /// rest stops as in [`Running::stop`].
    pub async fn stop_fenced(self) {
        self.transport.close().await;
        self.stop().await;
    }

    /// Resolves when another process has taken this process's partitions
    /// (it lost the connection that held their leases, a lease was deleted,
    /// or a database found a newer epoch in a transaction): it must stop
    /// acting.
    pub async fn fenced(&self) -> String {
        let leases = async {
            match self.transport.leases() {
                Some(leases) => leases.fenced().await,
                None => std::future::pending().await,
            }
        };
        let dbs = self.parts.dbs.iter().map(|db| Box::pin(db.fenced()));
        let databases = async {
            if self.parts.dbs.is_empty() {
                std::future::pending().await
            } else {
                futures_util::future::select_all(dbs).await.0
            }
        };
        let mut fatal = self.parts.fatal.subscribe();
        let failed = async move {
            match fatal.wait_for(Option::is_some).await {
                Ok(why) => why.clone().unwrap_or_default(),
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            why = leases => format!("fenced off its partitions: {why}"),
            why = databases => format!("fenced off its partitions: {why}"),
            why = failed => why,
        }
    }
}
