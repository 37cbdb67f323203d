//! Poison messages: a message that cannot be decoded, or that fails
//! [`MAX_DELIVERIES`] times, goes to the dead-letter queue with its reason
//! instead of blocking its queue or looping.

use crate::metrics::{METRICS, inc};
use crate::transport::Received;

/// Deliveries of one message that failed, per message id, in this process.
/// A message that fails [`MAX_DELIVERIES`] times is dead-lettered instead of
/// looping.
#[derive(Default)]
pub struct FailureCounts(std::sync::Mutex<std::collections::HashMap<String, u32>>);

/// How often a message may fail before it is dead-lettered.
pub const MAX_DELIVERIES: u32 = 5;

impl FailureCounts {
    pub fn record(&self, id: &str) -> u32 {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(id.to_owned()).or_insert(0);
        *n += 1;
        *n
    }

    pub fn forget(&self, id: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
}

/// Moves a delivery to the dead-letter queue, counting it.
pub async fn dead_letter(delivery: Received, reason: &str) {
    inc(&METRICS.dead_letters_total);
    tracing::warn!(msg = ?delivery.message_id, saga = ?delivery.correlation_id, reason, "dead-lettering");
    if let Err(e) = delivery.dead_letter(reason).await {
        tracing::warn!(error = %e, "cannot dead-letter; it will be redelivered");
    }
}

/// After a failed attempt at `delivery`: once the message has failed
/// [`MAX_DELIVERIES`] times it is dead-lettered and the reason returned;
/// before that it is handed back to its queue after a short, growing pause.
pub async fn hand_back_or_dead_letter(
    delivery: Received,
    failures: &FailureCounts,
    id: &str,
    error: &str,
) -> Option<String> {
    let count = failures.record(id);
    if count >= MAX_DELIVERIES {
        let reason = format!("failed {count} times; last error: {error}");
        dead_letter(delivery, &reason).await;
        failures.forget(id);
        return Some(reason);
    }
    tracing::warn!(msg = %id, error, attempt = count, "not applied; handing it back");
    tokio::time::sleep(std::time::Duration::from_millis(100 * u64::from(count))).await;
    let _ = delivery.requeue().await;
    None
}
