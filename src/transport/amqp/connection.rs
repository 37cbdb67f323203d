//! The connection: to the first node of the cluster that answers, with a
//! heartbeat, rebuilt in the background whenever it breaks (unless it held
//! leases: then ownership ended with it).

use backon::{BackoffBuilder, ExponentialBuilder};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::ConfirmSelectOptions;
use lapin::{Connection, ConnectionProperties};

use tokio::sync::watch;

use super::declare::declare;
use super::leases::take_leases;
use super::{
    AmqpSettings, AmqpTransport, CONFIRM_TIMEOUT, Inner, Live, WATCH_INTERVAL, is_inequivalent,
    unavailable,
};
use crate::transport::nodes;
use crate::transport::{Lease, Topology, TransportError};

/// Why a connection could not be (re)opened.
pub(super) enum OpenError {
    Broker(TransportError),
    /// A lease of this process is held by another connection.
    Fenced(String),
}

impl From<TransportError> for OpenError {
    fn from(e: TransportError) -> Self {
        OpenError::Broker(e)
    }
}

/// The heartbeat asked of the broker, unless the URL names one. The broker
/// drops a connection that missed two heartbeats, and with it the leases it
/// held: a hung owner (paused, swapping, its host gone) loses its partitions
/// within 6-9 s, and a standby serves them about a second later, within
/// 10 s in all. A shorter one would fence owners whose process is merely
/// slow for a few seconds (each fence is a restart and a takeover).
pub const HEARTBEAT_SECS: u16 = 3;

/// The broker URL with the heartbeat of [`HEARTBEAT_SECS`] unless it names
/// one.
fn with_heartbeat(url: &str) -> String {
    if url.contains("heartbeat=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&heartbeat={HEARTBEAT_SECS}")
    } else {
        format!("{url}?heartbeat={HEARTBEAT_SECS}")
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
    leases: &[Lease],
    first_node: usize,
) -> Result<(Live, usize), OpenError> {
    let (connection, node) = connect_any(settings, first_node).await?;
    let mut channel = connection.create_channel().await.map_err(unavailable)?;
    if let Err(e) = declare(
        &connection,
        &channel,
        topology,
        settings.quorum_queues,
        &settings.scope,
        &settings.log_retention,
    )
    .await
    {
        // A namespace declared with the other queue type (before nodes were
        // added, or by an older version) keeps its queues unless the type
        // was configured: a queue's type cannot change in place.
        let other_type = is_inequivalent(&e);
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
        declare(
            &connection,
            &channel,
            topology,
            !settings.quorum_queues,
            &settings.scope,
            &settings.log_retention,
        )
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
                epoch: std::sync::Mutex::new(None),
            }),
        };
        tokio::spawn(transport.clone().watch_connection());
        Ok(transport)
    }

    /// Watches the connection and rebuilds it when it breaks.
    async fn watch_connection(self) {
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
                return self.fence(
                    "lost the connection that held this process's partition leases; \
                     ownership ended with it"
                        .to_owned(),
                );
            }
            tracing::warn!("lost the connection to RabbitMQ; reconnecting");
            if !self.reconnect().await {
                return;
            }
        }
    }

    /// Says this process no longer owns its partitions: it must stop.
    pub(super) fn fence(&self, why: String) {
        tracing::error!(reason = %why, "fenced");
        self.inner.fenced.send_replace(Some(why));
    }

    /// Opens a new connection, with backoff, from the next node on (the
    /// last one just went away). `false`: closed, or fenced meanwhile.
    async fn reconnect(&self) -> bool {
        let mut delays = ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(2))
            .without_max_times()
            .build();
        let patience =
            CONFIRM_TIMEOUT + nodes::CONNECT_TIMEOUT * self.inner.settings.nodes.len() as u32;
        while !self.is_closed() {
            let leases = self.leases();
            let next = self.inner.node.load(std::sync::atomic::Ordering::SeqCst) + 1;
            let attempt = open(&self.inner.settings, &self.inner.topology, &leases, next);
            match tokio::time::timeout(patience, attempt)
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
                    return true;
                }
                // Another process owns a partition of ours now: this one
                // must not act for it again. Stay disconnected (nothing is
                // consumed or published) and say so.
                Err(OpenError::Fenced(held)) => {
                    self.fence(format!(
                        "{held} is held by another process: it took over this process's \
                         partitions while this one was disconnected"
                    ));
                    return false;
                }
                Err(OpenError::Broker(e)) => {
                    let wait = delays.next().unwrap_or(Duration::from_secs(2));
                    tracing::debug!(error = %e, ?wait, "RabbitMQ still unavailable");
                    tokio::time::sleep(wait).await;
                }
            }
        }
        false
    }
}
