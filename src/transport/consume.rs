//! The one consumer loop: receive, hand each delivery to its handler on a
//! task of its own, until shutdown. Workers, the orchestrator's replies and
//! the read models all consume through it; each handler owns its delivery
//! (acks after commit, hands back, or dead-letters it).

use std::future::Future;
use std::sync::Arc;

use futures_util::StreamExt;

use super::poison::FailureCounts;
use super::{QueueName, Received, Transport, TransportError};
use crate::metrics::{METRICS, inc};
use crate::shutdown::Shutdown;

/// Consumes `queue` until shutdown (or the queue's end). The broker's
/// prefetch bounds how many deliveries are in flight; the handler gets the
/// queue's failure counts for bounded redelivery.
pub async fn consume_each<F, Fut>(
    transport: Arc<dyn Transport>,
    queue: QueueName,
    mut shutdown: Shutdown,
    handle: F,
) -> Result<(), TransportError>
where
    F: Fn(Received, Arc<FailureCounts>) -> Fut,
    Fut: Future<Output = ()> + 'static,
{
    let mut deliveries = transport.consume(queue).await?;
    let failures = Arc::new(FailureCounts::default());
    loop {
        let delivery = tokio::select! {
            _ = shutdown.recv() => return Ok(()),
            d = deliveries.next() => match d {
                Some(d) => d,
                None => return Ok(()),
            },
        };
        if delivery.redelivered {
            inc(&METRICS.redeliveries_total);
        }
        let handled = handle(delivery, failures.clone());
        actix::spawn(async move {
            let _in_flight = crate::metrics::InFlight::start();
            handled.await;
        });
    }
}
