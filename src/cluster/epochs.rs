//! The receiving side of fencing tokens: every command and reply carries
//! the epoch of the owner that published it (`x-hearty-epoch`,
//! `x-hearty-registry`), and a consumer refuses — dead-letters, with the
//! reason — a message that a replaced owner published after its successor
//! had already published to the same queue.
//!
//! Why only that, and why it loses nothing: a queue delivers in the order
//! the broker enqueued (first deliveries; a redelivery is not judged). A
//! first delivery from the owner at epoch E arriving after one from the
//! owner at a later epoch E' of the same (role, partition) was published
//! after E' published, so after E' took the partition over. The older
//! owner's relay only publishes rows it committed while it owned the
//! partition, and it deletes a row only after its confirm — a delete its
//! database refuses once E' took over. So that row was still in the
//! database when E' took over, and E' publishes it too (same message id),
//! under its own epoch: the refused copy is a duplicate. A message of the
//! older owner that reached the queue *before* its successor's is applied:
//! it was a legitimate decision, perhaps never sent again (its row deleted
//! after its confirm), and refusing it would lose it — a receiver cannot
//! tell it from a stale one by its epoch alone. The database's epoch check
//! (`storage::fence`) is what keeps a replaced owner from deciding anything
//! new; this check keeps its late copies out of the queues' consumers.
//!
//! Kept in memory per consumer (per queue): after a restart the first
//! message of each sender sets it again. Epochs of another registry (the
//! stream declared anew) are not comparable: the newer registry's replace
//! the older's.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::partition::{Epoch, Partition};

/// The newest epoch seen on one queue per sending (role, partition).
#[derive(Debug, Default)]
pub struct Seen {
    newest: Mutex<HashMap<(&'static str, u16), Epoch>>,
}

impl Seen {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a delivery from the owner of `role` `partition` at `epoch`
    /// may be applied: `Err(reason)` when its successor's messages came
    /// first on this queue. Call in delivery order. A redelivery, or a
    /// message without an epoch (from an earlier version, or a process that
    /// owns nothing), is not judged.
    pub fn admit(
        &self,
        role: &'static str,
        partition: Partition,
        epoch: Option<Epoch>,
        redelivered: bool,
    ) -> Result<(), String> {
        let Some(epoch) = epoch else { return Ok(()) };
        if redelivered {
            return Ok(());
        }
        let mut newest = self.newest.lock().unwrap_or_else(|p| p.into_inner());
        let seen = newest.entry((role, partition.index())).or_insert(epoch);
        // Another registry's epoch is not comparable: the latest wins.
        if epoch.is_after(*seen) == Some(false) && epoch != *seen {
            return Err(format!(
                "stale epoch: published by the owner of {role} {partition} at epoch {epoch} \
                 after its successor at epoch {seen} had published here; the successor \
                 publishes the same message"
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
    fn an_older_owners_message_after_its_successors_is_refused() {
        let seen = Seen::new();
        let count = PartitionCount::default();
        let (p1, p2) = (count.of(1), count.of(2));
        let (e10, e12) = (Epoch::new(1, 10), Epoch::new(1, 12));
        assert!(seen.admit("pay", p1, Some(e10), false).is_ok());
        assert!(seen.admit("pay", p1, Some(e12), false).is_ok());
        let why = seen.admit("pay", p1, Some(e10), false).expect_err("stale");
        assert!(
            why.contains("epoch 10") && why.contains("epoch 12"),
            "{why}"
        );
        assert!(
            seen.admit("pay", p1, Some(e12), false).is_ok(),
            "the same owner again"
        );
        // A redelivery was published before, whatever came since.
        assert!(seen.admit("pay", p1, Some(e10), true).is_ok());
        // Other partitions and roles are other owners.
        assert!(seen.admit("pay", p2, Some(Epoch::new(1, 3)), false).is_ok());
        assert!(
            seen.admit("kitchen", p1, Some(Epoch::new(1, 3)), false)
                .is_ok()
        );
        // Unstamped messages are not judged.
        assert!(seen.admit("pay", p1, None, false).is_ok());
        // A registry declared anew starts over: its epochs replace the old.
        assert!(seen.admit("pay", p1, Some(Epoch::new(2, 1)), false).is_ok());
        assert!(seen.admit("pay", p1, Some(Epoch::new(2, 2)), false).is_ok());
        assert!(
            seen.admit("pay", p1, Some(Epoch::new(2, 1)), false)
                .is_err()
        );
    }
}
