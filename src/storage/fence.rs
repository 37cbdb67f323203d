//! Fencing tokens kept where the state is: every owned database records,
//! per partition, the epoch of the takeover that owns it now (`fence`), and
//! every transaction of its writer checks, inside the transaction, that the
//! partitions it acts for still carry this process's epoch.
//!
//! A takeover (see `cluster::ownership`) gets an epoch from the registry
//! stream's total order: greater than every earlier takeover's of the same
//! registry (a registry declared anew starts over, and every epoch of the
//! one before is stale). The new
//! owner writes it here before it recovers or consumes anything
//! ([`take_over`]). From that commit on, an older owner's transactions fail
//! their check ([`check`]) and roll back, and the old owner fences itself:
//! whatever it decided while it hung (a timer's retry, a compensation) is
//! never stored, and no outbox row of it is left for the new owner to
//! publish. SQLite serialises the writers of a file (`BEGIN IMMEDIATE`), so
//! every commit is either before the takeover (it was the owner's, and the
//! new owner recovers it) or after it (refused).

use rusqlite::{Connection, OptionalExtension, params};

use crate::domain::Millis;
use crate::partition::Epoch;

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS fence (
    partition INTEGER PRIMARY KEY,
    epoch     INTEGER NOT NULL,
    registry  INTEGER NOT NULL,
    owner     TEXT    NOT NULL,
    taken_at  INTEGER NOT NULL
);
";

/// What this process holds in a database: its epoch for its partitions.
#[derive(Debug, Clone)]
pub struct Held {
    pub epoch: Epoch,
    pub partitions: Vec<u16>,
    /// The check, prepared once: any of the partitions with another epoch.
    sql: String,
}

impl Held {
    pub fn new(epoch: Epoch, partitions: &[u16]) -> Held {
        let list = if partitions.is_empty() {
            // No partition: nothing can be taken from this process.
            "NULL".to_owned()
        } else {
            partitions
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        Held {
            epoch,
            partitions: partitions.to_vec(),
            sql: format!(
                "SELECT partition, epoch, registry, owner FROM fence \
                 WHERE partition IN ({list}) AND (epoch <> ?1 OR registry <> ?2) LIMIT 1"
            ),
        }
    }
}

/// Records `held`'s epoch for its partitions, refusing if a newer takeover
/// (of the same registry) already holds one of them: then this process is
/// the stale one. An epoch of another registry is older than any of the
/// current one (that registry is gone: deleted, or the folder was started
/// under a new namespace), and is replaced.
pub fn take_over(tx: &Connection, held: &Held, owner: &str) -> Result<(), String> {
    let now = Millis::now().0;
    for &p in &held.partitions {
        let current: Option<(i64, i64, String)> = tx
            .query_row(
                "SELECT epoch, registry, owner FROM fence WHERE partition = ?1",
                [p],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(|e| e.to_string())?;
        if let Some((position, registry, by)) = current {
            let stored = Epoch::new(registry, position);
            match stored.is_after(held.epoch) {
                Some(true) => {
                    return Err(format!(
                        "partition {p} was taken over at epoch {stored} by {by}, after this \
                         process's epoch {}",
                        held.epoch
                    ));
                }
                Some(false) => {}
                None => tracing::warn!(
                    partition = p,
                    previous = %stored,
                    epoch = %held.epoch,
                    "the registry that fenced this partition is gone; this takeover starts anew"
                ),
            }
        }
        tx.execute(
            "INSERT INTO fence (partition, epoch, registry, owner, taken_at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (partition) DO UPDATE SET
                 epoch = excluded.epoch, registry = excluded.registry,
                 owner = excluded.owner, taken_at = excluded.taken_at",
            params![p, held.epoch.position(), held.epoch.registry(), owner, now],
        )
        .map_err(|e| e.to_string())?;
    }
    // Partitions this folder owned before and this process does not: their
    // state waits here for a process of this folder that owns them.
    let mut stmt = tx
        .prepare("SELECT partition FROM fence ORDER BY partition")
        .map_err(|e| e.to_string())?;
    let others: Vec<u16> = stmt
        .query_map([], |r| r.get::<_, u16>(0))
        .map_err(|e| e.to_string())?
        .filter_map(Result::ok)
        .filter(|p| !held.partitions.contains(p))
        .collect();
    if !others.is_empty() {
        tracing::warn!(
            partitions = ?others,
            "this folder holds the state of partitions this process does not own: nothing acts \
             for them until a process of this folder does (start it with all of them in \
             HEARTY_PARTITIONS)"
        );
    }
    Ok(())
}

/// `Err(why)` when a partition of `held` carries another epoch now: another
/// process took it over, and this one must not commit for it.
pub fn check(tx: &Connection, held: &Held) -> rusqlite::Result<Result<(), String>> {
    let mut stmt = tx.prepare_cached(&held.sql)?;
    let other = stmt
        .query_row([held.epoch.position(), held.epoch.registry()], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                Epoch::new(r.get(2)?, r.get(1)?),
                r.get::<_, String>(3)?,
            ))
        })
        .optional()?;
    Ok(match other {
        None => Ok(()),
        Some((p, epoch, by)) => Err(format!(
            "partition {p} belongs to epoch {epoch} ({by}) now, not to this process's epoch {}",
            held.epoch
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let c = Connection::open_in_memory().expect("db");
        c.execute_batch(SCHEMA).expect("schema");
        c
    }

    #[test]
    fn a_newer_takeover_fences_the_older_owner() {
        let c = db();
        let old = Held::new(Epoch::new(1, 5), &[0, 1, 2, 3]);
        take_over(&c, &old, "old").expect("first owner");
        assert_eq!(check(&c, &old).expect("sql"), Ok(()));
        let new = Held::new(Epoch::new(1, 9), &[2, 3]);
        take_over(&c, &new, "new").expect("newer takes over");
        let why = check(&c, &old)
            .expect("sql")
            .expect_err("the old owner is fenced");
        assert!(why.contains("epoch 9 (registry 1) (new)"), "{why}");
        assert_eq!(check(&c, &new).expect("sql"), Ok(()));
        // The stale one cannot take the partitions back.
        assert!(take_over(&c, &old, "old").is_err());
    }

    #[test]
    fn a_new_registry_starts_over_and_fences_every_epoch_of_the_old_one() {
        let c = db();
        let old = Held::new(Epoch::new(1, 900), &[0, 1]);
        take_over(&c, &old, "old").expect("first owner");
        // The registry was deleted and declared again: positions restart.
        let new = Held::new(Epoch::new(2, 3), &[0, 1]);
        take_over(&c, &new, "new").expect("a new registry's takeover is not refused");
        assert!(
            check(&c, &old).expect("sql").is_err(),
            "the old epoch is fenced"
        );
        assert_eq!(check(&c, &new).expect("sql"), Ok(()));
        // Within the new registry, order holds again.
        assert!(take_over(&c, &Held::new(Epoch::new(2, 1), &[0]), "x").is_err());
    }

    #[test]
    fn without_partitions_nothing_is_checked() {
        let c = db();
        let none = Held::new(Epoch::new(1, 1), &[]);
        take_over(&c, &none, "x").expect("nothing to record");
        assert_eq!(check(&c, &none).expect("sql"), Ok(()));
    }
}
