//! The receiving side of fencing tokens: every command and reply carries
//! the epoch of the owner that published it (`x-hearty-epoch`), and a
//! receiver that has seen a newer epoch from the owner of the same (role,
//! partition) refuses an older one — a stale owner's relay publishing
//! after it was replaced — and dead-letters it with the reason.
//!
//! What a stale owner can publish was committed while it still owned the
//! partition (its database refuses every later commit, see
//! `storage::fence`), and the new owner publishes the same outbox rows
//! under its own epoch, so refusing the stale copy loses nothing; a
//! command or reply refused here is asked again by its saga's timer.
//! The highest epochs are kept in memory: after a restart the first
//! message of each sender sets them again.

use std::collections::HashMap;
use std::sync::Mutex;

use std::sync::Arc;

use crate::partition::{Partition, PartitionCount};

/// What a consumer judges senders with: the epochs heard so far, and the
/// partition count that says which partition's owner sent a message.
#[derive(Debug, Clone)]
pub struct Senders {
    pub seen: Arc<Seen>,
    pub count: PartitionCount,
}

/// The newest epoch seen per sending (role, partition).
#[derive(Debug, Default)]
pub struct Seen {
    newest: Mutex<HashMap<(&'static str, u16), i64>>,
}

impl Seen {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a message from the owner of `role` `partition` at `epoch`
    /// may be applied: `Err(reason)` when a newer owner has been heard from.
    /// A message without an epoch (from an earlier version, or a process
    /// that owns nothing) is not judged.
    pub fn admit(
        &self,
        role: &'static str,
        partition: Partition,
        epoch: Option<i64>,
    ) -> Result<(), String> {
        let Some(epoch) = epoch else { return Ok(()) };
        let mut newest = self.newest.lock().unwrap_or_else(|p| p.into_inner());
        let seen = newest.entry((role, partition.index())).or_insert(epoch);
        if epoch < *seen {
            return Err(format!(
                "stale epoch: sent by the owner of {role} {partition} at epoch {epoch}, which \
                 was replaced by the owner at epoch {seen}"
            ));
        }
        *seen = epoch;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::PartitionCount;

    #[test]
    fn an_older_epoch_is_refused_once_a_newer_one_was_heard() {
        let seen = Seen::new();
        let (p1, p2) = (
            PartitionCount::default().of(1),
            PartitionCount::default().of(2),
        );
        assert!(seen.admit("pay", p1, Some(10)).is_ok());
        assert!(seen.admit("pay", p1, Some(12)).is_ok());
        let why = seen.admit("pay", p1, Some(10)).expect_err("stale");
        assert!(
            why.contains("epoch 10") && why.contains("epoch 12"),
            "{why}"
        );
        assert!(
            seen.admit("pay", p1, Some(12)).is_ok(),
            "the same owner again"
        );
        // Other partitions and roles are other owners.
        assert!(seen.admit("pay", p2, Some(3)).is_ok());
        assert!(seen.admit("kitchen", p1, Some(3)).is_ok());
        // Unstamped messages are not judged.
        assert!(seen.admit("pay", p1, None).is_ok());
    }
}
