//! Partitions: how the state of every stateful role is split between
//! processes (PRODUCT.md, *Scale-out*).
//!
//! A namespace has a fixed number of partitions ([`PartitionCount`],
//! `HEARTY_PARTITION_COUNT`, recorded in the broker when the namespace is
//! first claimed). Every entity belongs to the partition of its key: sagas,
//! orders, payments, deliveries and coupons to the partition of their order
//! id; the kitchen's stock and tickets to the partition of the food id. The
//! partition of a key is `key mod count`, so it never changes and every
//! process computes the same one. A process owns the partitions of its
//! [`PartitionSet`] (`HEARTY_PARTITIONS`) for every stateful role it runs.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use crate::domain::WorkerKind;

/// A role whose state is partitioned: each of its partitions has one owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OwnerRole {
    Orchestrator,
    Worker(WorkerKind),
}

impl OwnerRole {
    pub fn as_str(self) -> &'static str {
        match self {
            OwnerRole::Orchestrator => "orchestrator",
            OwnerRole::Worker(k) => k.as_str(),
        }
    }
}

impl fmt::Display for OwnerRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The most partitions a namespace may have (each is a queue per role).
pub const MAX_PARTITIONS: u16 = 256;

/// One partition of a namespace, `0..count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Partition(u16);

impl Partition {
    pub fn index(self) -> u16 {
        self.0
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{}", self.0)
    }
}

/// A fencing token: the position, in the registry stream, of the takeover
/// that made a process the owner of its partitions, and which registry
/// (its incarnation: a stream deleted and declared again starts its
/// positions over). Within one registry a later takeover has a greater
/// position (the stream is one total order the cluster replicates), so a
/// stale owner can be told from the current one wherever the epoch is kept:
/// in the partition's database, and on the messages its owner sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Epoch {
    registry: i64,
    position: i64,
}

impl Epoch {
    pub fn new(registry: i64, position: i64) -> Self {
        Epoch { registry, position }
    }

    /// The incarnation of the registry the position is in.
    pub fn registry(self) -> i64 {
        self.registry
    }

    pub fn position(self) -> i64 {
        self.position
    }

    /// Whether `self` comes from a later takeover than `other`; `None` when
    /// they come from different registries (not comparable: the older
    /// registry is gone, so its epochs are all stale).
    pub fn is_after(self, other: Epoch) -> Option<bool> {
        (self.registry == other.registry).then_some(self.position > other.position)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (registry {:x})", self.position, self.registry)
    }
}

/// How many partitions a namespace has: 1 to [`MAX_PARTITIONS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PartitionCount(u16);

impl PartitionCount {
    pub fn new(n: u16) -> Result<Self, String> {
        if (1..=MAX_PARTITIONS).contains(&n) {
            Ok(PartitionCount(n))
        } else {
            Err(format!(
                "the partition count must be 1 to {MAX_PARTITIONS}, not {n}"
            ))
        }
    }

    pub fn get(self) -> u16 {
        self.0
    }

    /// The partition an entity with this key (order id, food id) belongs to.
    pub fn of(self, key: i64) -> Partition {
        // rem_euclid by a positive count is in 0..count, which fits u16.
        Partition(key.rem_euclid(i64::from(self.0)) as u16)
    }

    /// Every partition of the namespace.
    pub fn all(self) -> impl Iterator<Item = Partition> {
        (0..self.0).map(Partition)
    }

    /// The partition of a text key (an `Idempotency-Key`): of its 64-bit
    /// FNV-1a hash (the `fnv` crate), so every process sends a key to the
    /// same partition. Part of the wire contract: keys stored by an owner
    /// were routed by it.
    pub fn of_text(self, key: &str) -> Partition {
        use std::hash::Hasher as _;
        let mut h = fnv::FnvHasher::default();
        h.write(key.as_bytes());
        self.of(i64::try_from(h.finish() >> 1).unwrap_or(0))
    }

    /// A fresh random key of ours (`hearty-<32 hex>`) that [`Self::of_text`]
    /// places in `partition`: one in `count` random keys does, so this takes
    /// `count` tries on average.
    pub fn key_in(self, partition: Partition) -> String {
        loop {
            let key = format!("hearty-{:032x}", rand::random::<u128>());
            if self.of_text(&key) == partition {
                return key;
            }
        }
    }
}

impl Default for PartitionCount {
    fn default() -> Self {
        PartitionCount(8)
    }
}

impl fmt::Display for PartitionCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for PartitionCount {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let n: u16 = s
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not a partition count (1 to {MAX_PARTITIONS})"))?;
        PartitionCount::new(n)
    }
}

/// The partitions a process owns: `all`, or a list of numbers and ranges
/// (`0-3`, `4,5,6,7`, `0-1,6`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PartitionSet {
    #[default]
    All,
    Some(BTreeSet<u16>),
}

impl PartitionSet {
    /// The owned partitions of a namespace with `count` partitions; a
    /// number outside it is an error naming it.
    pub fn resolve(&self, count: PartitionCount) -> Result<Vec<Partition>, String> {
        match self {
            PartitionSet::All => Ok(count.all().collect()),
            PartitionSet::Some(set) => {
                if let Some(bad) = set.iter().find(|p| **p >= count.get()) {
                    return Err(format!(
                        "HEARTY_PARTITIONS names partition {bad}, but the namespace has {count} \
                         (0 to {})",
                        count.get() - 1
                    ));
                }
                Ok(set.iter().copied().map(Partition).collect())
            }
        }
    }
}

impl fmt::Display for PartitionSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PartitionSet::All => f.write_str("all"),
            PartitionSet::Some(set) => {
                let parts: Vec<String> = set.iter().map(u16::to_string).collect();
                f.write_str(&parts.join(","))
            }
        }
    }
}

impl FromStr for PartitionSet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "all" {
            return Ok(PartitionSet::All);
        }
        let number = |t: &str| {
            t.trim().parse::<u16>().map_err(|_| {
                format!("`{t}` in HEARTY_PARTITIONS is not a partition number (expected all, 0-3 or 4,5,6,7)")
            })
        };
        let mut set = BTreeSet::new();
        for item in s.split(',').map(str::trim) {
            if item.is_empty() {
                return Err(format!("HEARTY_PARTITIONS `{s}` has an empty item"));
            }
            match item.split_once('-') {
                Some((from, to)) => {
                    let (from, to) = (number(from)?, number(to)?);
                    if from > to {
                        return Err(format!("the range `{item}` is empty"));
                    }
                    set.extend(from..=to);
                }
                None => {
                    set.insert(number(item)?);
                }
            }
        }
        if set.len() > usize::from(MAX_PARTITIONS) {
            return Err(format!(
                "HEARTY_PARTITIONS names more than {MAX_PARTITIONS} partitions"
            ));
        }
        Ok(PartitionSet::Some(set))
    }
}

/// The partitions a process owns, as a question about keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owned {
    count: PartitionCount,
    set: BTreeSet<u16>,
}

impl Owned {
    pub fn new(count: PartitionCount, parts: &[Partition]) -> Self {
        Owned {
            count,
            set: parts.iter().map(|p| p.0).collect(),
        }
    }

    /// Every partition (the zero-setup shape).
    pub fn all(count: PartitionCount) -> Self {
        Owned {
            count,
            set: count.all().map(|p| p.0).collect(),
        }
    }

    pub fn count(&self) -> PartitionCount {
        self.count
    }

    /// Whether the entity with this key is in an owned partition.
    pub fn owns(&self, key: i64) -> bool {
        self.set.contains(&self.count.of(key).0)
    }

    pub fn contains(&self, p: Partition) -> bool {
        self.set.contains(&p.0)
    }

    pub fn indexes(&self) -> Vec<u16> {
        self.set.iter().copied().collect()
    }

    /// The id a new entity gets after `last`: the next one in an owned
    /// partition, so its owner is the one creating it (`last + 1` when
    /// every partition is owned).
    pub fn next_id(&self, last: i64) -> Option<i64> {
        (last.checked_add(1)?..=last.checked_add(i64::from(self.count.0))?)
            .find(|id| self.owns(*id))
    }
}

/// Where the next new thing goes, among partitions any owner may take: round
/// robin from partition 1, so one client creating one thing after another
/// gets ids 1, 2, 3, ... (each owner gives the next id in its partitions), as
/// the seed's scripts expect. Cheap to clone; clones share the turn.
#[derive(Debug, Clone)]
pub struct RoundRobin {
    count: PartitionCount,
    turn: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl RoundRobin {
    pub fn new(count: PartitionCount) -> Self {
        RoundRobin {
            count,
            turn: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1)),
        }
    }

    pub fn next(&self) -> Partition {
        let turn = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.count.of(i64::try_from(turn % 65_536).unwrap_or(1))
    }
}

/// The partitions as compact text: `0-3,6`.
pub fn describe(parts: &[Partition]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < parts.len() {
        let start = parts[i].0;
        let mut end = start;
        while i + 1 < parts.len() && parts[i + 1].0 == end + 1 {
            i += 1;
            end = parts[i].0;
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_spread_over_partitions() {
        let c = PartitionCount::new(8).expect("valid");
        assert_eq!(c.of(1), Partition(1));
        assert_eq!(c.of(8), Partition(0));
        assert_eq!(c.of(17), Partition(1));
        assert_eq!(c.of(-1), Partition(7));
        assert_eq!(c.all().count(), 8);
        assert!(PartitionCount::new(0).is_err());
        assert!("300".parse::<PartitionCount>().is_err());
        assert_eq!("8".parse::<PartitionCount>(), Ok(c));
    }

    #[test]
    fn text_keys_keep_their_partitions() {
        // The hash of a key decides which owner keeps it: it must never
        // change between versions. The reference: FNV-1a 64 as versions
        // before the `fnv` crate wrote it by hand.
        fn reference(key: &str) -> i64 {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for b in key.bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
            i64::try_from(h >> 1).unwrap_or(0)
        }
        let c = PartitionCount::new(8).expect("valid");
        for key in ["", "a", "order-key-1", "hearty-00ff", "ключ", "~!@#"] {
            assert_eq!(c.of_text(key), c.of(reference(key)), "{key}");
        }
        for p in c.all() {
            let key = c.key_in(p);
            assert!(key.starts_with("hearty-"));
            assert_eq!(c.of_text(&key), p);
        }
    }

    #[test]
    fn new_ids_fall_in_owned_partitions() {
        let c = PartitionCount::new(8).expect("valid");
        assert_eq!(Owned::all(c).next_id(0), Some(1));
        assert_eq!(Owned::all(c).next_id(41), Some(42));
        let upper = Owned::new(c, &[Partition(4), Partition(5), Partition(6), Partition(7)]);
        assert_eq!(upper.next_id(0), Some(4));
        assert_eq!(upper.next_id(7), Some(12));
        assert_eq!(Owned::new(c, &[]).next_id(0), None);
    }

    #[test]
    fn sets_parse_and_resolve() {
        let c = PartitionCount::new(8).expect("valid");
        let set: PartitionSet = "0-3".parse().expect("valid");
        assert_eq!(describe(&set.resolve(c).expect("fits")), "0-3");
        let set: PartitionSet = "4,5,6,7".parse().expect("valid");
        assert_eq!(describe(&set.resolve(c).expect("fits")), "4-7");
        let set: PartitionSet = "0-1, 6".parse().expect("valid");
        assert_eq!(describe(&set.resolve(c).expect("fits")), "0-1,6");
        assert_eq!(
            describe(&PartitionSet::All.resolve(c).expect("fits")),
            "0-7"
        );
        let err = "6-9"
            .parse::<PartitionSet>()
            .expect("parses")
            .resolve(c)
            .expect_err("9 is outside 8 partitions");
        assert!(err.contains("partition 8"), "{err}");
        for bad in ["", "x", "3-1", "1,,2", "-1"] {
            assert!(bad.parse::<PartitionSet>().is_err(), "{bad}");
        }
    }
}
