//! Fenced single ownership of every (role, partition): at most one process
//! acts for a partition of a stateful role at any moment, and an earlier
//! owner that still runs cannot store or send anything for it.
//!
//! 1. **The data folder's claim.** The broker's registry stream
//!    (`<ns>.registry`) records, for every (role, partition), the *home* —
//!    the identity of the data folder (`<HEARTY_DATA_DIR>/home`) that holds
//!    its state. A process claims its whole set in one record, and the
//!    first claim of a partition wins; a set naming a partition another
//!    folder holds binds none of its partitions. A process whose folder is
//!    another home refuses to start, naming the owner, so a partition's
//!    state is never re-created empty beside the real one. The same stream
//!    records the namespace's partition count (first record wins).
//! 2. **A lease on the broker.** An exclusive queue `<ns>.<role>.<p>.owner`
//!    per owned partition, declared before any database is opened: of the
//!    processes of one home (a standby on the same folder, or the folder's
//!    volume moved to another host) one holds them; the others wait as
//!    standbys. The broker drops a lease with its connection: a hung owner
//!    misses its heartbeats and loses it within seconds. An owner whose
//!    connection breaks, or whose lease queue is deleted under it, is fenced
//!    at once: it stops (see `app::run`).
//! 3. **An epoch (fencing token).** Having taken the leases, a process
//!    appends a takeover record to the registry; its position in the stream
//!    is the process's epoch, greater than every earlier owner's. It is
//!    written into the role's database before anything is recovered, and
//!    every transaction checks it (`storage::fence`): an earlier owner that
//!    wakes from a pause and tries to commit is refused and stops. This,
//!    not a lock of the host, is what makes a hung owner harmless, so a
//!    standby of the same partitions does not wait for one (only for a
//!    commit it hung in the middle of: SQLite's write lock).
//!
//! Partitioned queues also have `x-single-active-consumer`, so even a
//! consumer outside these rules would not get messages beside the owner.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::partition::Epoch;
use crate::partition::{OwnerRole, Partition, PartitionCount};
use crate::transport::{Lease, Leases, RegistryEntry, Topology};

/// One (role, partition) a process wants to own.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Claim {
    pub role: OwnerRole,
    pub partition: Partition,
}

impl std::fmt::Display for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.role, self.partition)
    }
}

/// How often a standby looks again, and how often it says it waits.
const STANDBY_POLL: Duration = Duration::from_millis(250);
const STANDBY_LOG_EVERY: u32 = 40;

/// The identity of a data folder, created on first use: the registry binds
/// partitions to it.
pub fn home_of(dir: &Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the data folder {}", dir.display()))?;
    let path = dir.join("home");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let id = format!("{:032x}", rand::random::<u128>());
    // Written aside and linked into place, which fails if the file exists:
    // of two processes creating it at once exactly one wins, and both read
    // the winner's id back. The folder is synced so the name survives a crash.
    let tmp = dir.join(format!(
        "home.{}.{:08x}.tmp",
        std::process::id(),
        rand::random::<u32>()
    ));
    let mut f = File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(id.as_bytes())?;
    f.sync_all()?;
    drop(f);
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("writing {}", path.display())),
    }
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    let id = std::fs::read_to_string(&path)?.trim().to_owned();
    if id.is_empty() {
        bail!(
            "{} is empty: restore it, or remove it to give the folder a new identity (its partitions' claims then refuse it)",
            path.display()
        );
    }
    Ok(id)
}

/// One (role, partition) as the registry records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Named {
    role: String,
    partition: u16,
}

impl From<&Claim> for Named {
    fn from(c: &Claim) -> Self {
        Named {
            role: c.role.as_str().to_owned(),
            partition: c.partition.index(),
        }
    }
}

/// A record of the registry stream.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "camelCase")]
enum Record {
    /// The namespace's partition count: the first one recorded holds. Its
    /// `registry` names this incarnation of the stream (a stream deleted and
    /// declared again starts its positions, and so its epochs, over; 0 for
    /// one recorded by an earlier version).
    #[serde(rename_all = "camelCase")]
    Namespace {
        partition_count: u16,
        by: String,
        #[serde(default)]
        registry: i64,
    },
    /// A data folder claims one (role, partition): the first claim holds.
    /// (Written by earlier versions; read as a set of one.)
    #[serde(rename_all = "camelCase")]
    Claim {
        role: String,
        partition: u16,
        home: String,
        by: String,
    },
    /// A data folder claims a set of (role, partition)s, all or none: a set
    /// naming one that another folder holds binds nothing, so a lost claim
    /// race leaves no partition bound to a process that did not start.
    #[serde(rename_all = "camelCase")]
    Claims {
        claims: Vec<Named>,
        home: String,
        by: String,
    },
    /// A process took the leases of `claims`: its position in the stream is
    /// its epoch (fencing token) for them.
    #[serde(rename_all = "camelCase")]
    Takeover {
        claims: Vec<Named>,
        home: String,
        by: String,
    },
    /// Marks how far a reader has to read to see everything before it.
    #[serde(rename_all = "camelCase")]
    Hello { by: String },
    /// What the registry said up to and including position `through`,
    /// restated now and then: the stream keeps a bounded tail (its retention
    /// deletes old segments), and a reader whose first record is not the
    /// stream's first starts from a summary it can complete.
    #[serde(rename_all = "camelCase")]
    Summary {
        through: i64,
        partition_count: u16,
        registry: i64,
        owners: Vec<Owner>,
        by: String,
    },
}

/// One binding of a summary: (role, partition) → home.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Owner {
    role: String,
    partition: u16,
    home: String,
    by: String,
}

/// After how many records since the latest summary a claiming process
/// writes another. The registry's retention (`Retention::REGISTRY`, 8 MiB)
/// holds tens of thousands of records: always many summaries.
const SUMMARY_EVERY: usize = 200;

/// What the registry says, read up to a point.
#[derive(Default)]
struct Registry {
    partition_count: Option<u16>,
    /// The incarnation of the stream (see [`Record::Namespace`]).
    incarnation: Option<i64>,
    owners: HashMap<(String, u16), (String, String)>,
    /// The latest takeover of each (role, partition): its epoch and taker.
    epochs: HashMap<(String, u16), (i64, String)>,
    /// The stream's retention dropped its beginning and no summary read
    /// completes what was dropped: the first position read. Nothing above
    /// is to be trusted then.
    gap: Option<i64>,
    /// Records read after the latest summary (or from the beginning).
    since_summary: usize,
    /// The position of the last record read.
    last: Option<i64>,
}

impl Registry {
    /// Folds the records read from the stream's first retained one. From
    /// position 0 every record is folded (summaries restate nothing new).
    /// From a later one (retention dropped the beginning), the fold starts
    /// at the first summary whose `through` is at or after the position
    /// before the first one read — it says everything up to there — and
    /// folds the records after `through`.
    fn fold(entries: &[RegistryEntry]) -> Registry {
        let mut r = Registry::default();
        let records: Vec<(i64, Option<Record>)> = entries
            .iter()
            .map(|e| {
                let record = serde_json::from_slice::<Record>(&e.body)
                    .map_err(|e| tracing::warn!(error = %e, "unreadable registry record; skipped"))
                    .ok();
                (e.offset, record)
            })
            .collect();
        r.last = records.last().map(|(o, _)| *o);
        r.since_summary = records
            .iter()
            .rev()
            .take_while(|(_, rec)| !matches!(rec, Some(Record::Summary { .. })))
            .count();
        let head = records.first().map_or(0, |(o, _)| *o);
        let mut after = -1;
        if head > 0 {
            let usable = records.iter().find_map(|(_, rec)| match rec {
                Some(Record::Summary {
                    through,
                    partition_count,
                    registry,
                    owners,
                    ..
                }) if crate::transport::stream_holds_from(*through + 1, head) => {
                    Some((*through, *partition_count, *registry, owners))
                }
                _ => None,
            });
            let Some((through, count, registry, owners)) = usable else {
                r.gap = Some(head);
                return r;
            };
            r.partition_count = Some(count);
            r.incarnation = Some(registry);
            for o in owners {
                r.owners.insert(
                    (o.role.clone(), o.partition),
                    (o.home.clone(), o.by.clone()),
                );
            }
            after = through;
        }
        for (offset, record) in records {
            if offset <= after {
                continue;
            }
            match record {
                Some(Record::Namespace {
                    partition_count,
                    registry,
                    ..
                }) => {
                    r.partition_count.get_or_insert(partition_count);
                    r.incarnation.get_or_insert(registry);
                }
                Some(Record::Claim {
                    role,
                    partition,
                    home,
                    by,
                }) => r.claim_all(&[Named { role, partition }], &home, &by),
                Some(Record::Claims { claims, home, by }) => r.claim_all(&claims, &home, &by),
                Some(Record::Takeover { claims, by, .. }) => {
                    for c in claims {
                        r.epochs.insert((c.role, c.partition), (offset, by.clone()));
                    }
                }
                Some(Record::Hello { .. } | Record::Summary { .. }) | None => {}
            }
        }
        r
    }

    /// This registry as a summary record, if it is complete.
    fn summary(&self) -> Option<Record> {
        let mut owners: Vec<Owner> = self
            .owners
            .iter()
            .map(|((role, partition), (home, by))| Owner {
                role: role.clone(),
                partition: *partition,
                home: home.clone(),
                by: by.clone(),
            })
            .collect();
        owners.sort_by(|a, b| (&a.role, a.partition).cmp(&(&b.role, b.partition)));
        Some(Record::Summary {
            through: self.last?,
            partition_count: self.partition_count?,
            registry: self.incarnation?,
            owners,
            by: who(),
        })
        .filter(|_| self.gap.is_none())
    }

    /// Binds every one of `claims` to `home`, unless one of them is bound
    /// to another home: then none.
    fn claim_all(&mut self, claims: &[Named], home: &str, by: &str) {
        let taken = claims.iter().any(|c| {
            self.owners
                .get(&(c.role.clone(), c.partition))
                .is_some_and(|(h, _)| h != home)
        });
        if taken {
            return;
        }
        for c in claims {
            self.owners
                .entry((c.role.clone(), c.partition))
                .or_insert_with(|| (home.to_owned(), by.to_owned()));
        }
    }
}

/// Who this process is, in records and manifests: its pid and host.
pub fn who() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "this host".into());
    format!("pid {} on {host}", std::process::id())
}

async fn read_all(amqp: &dyn Leases) -> anyhow::Result<Registry> {
    let marker = format!("hello.{:032x}", rand::random::<u128>());
    let hello = serde_json::to_vec(&Record::Hello { by: who() })?;
    amqp.append_registry(&hello, &marker)
        .await
        .context("writing to the registry stream")?;
    let entries = amqp
        .read_registry(&marker)
        .await
        .context("reading the registry stream")?;
    Ok(Registry::fold(&entries))
}

async fn append(amqp: &dyn Leases, record: &Record) -> anyhow::Result<String> {
    let id = format!("record.{:032x}", rand::random::<u128>());
    amqp.append_registry(&serde_json::to_vec(record)?, &id)
        .await
        .context("writing to the registry stream")?;
    Ok(id)
}

/// Checks the namespace's partition count and binds `claims` to `home` in
/// the registry (refusing a partition another folder holds), then takes the
/// leases of `claims`, waiting as a standby while another process holds one,
/// and records the takeover: its position is this process's epoch (`None`:
/// no claims, nothing to fence).
pub async fn claim_on_broker(
    amqp: &dyn Leases,
    topology: &Topology,
    count: PartitionCount,
    home: &str,
    claims: &[Claim],
) -> anyhow::Result<Option<Epoch>> {
    // The broker may be coming back (a restart, a node moving): reading and
    // writing the registry is retried for a while; a refusal is final.
    let deadline = tokio::time::Instant::now() + REGISTRY_PATIENCE;
    loop {
        match settle_registry(amqp, topology, count, home, claims).await {
            Ok(registry) => {
                summarise(amqp, &registry).await;
                break;
            }
            Err(Settle::Refused(e)) => return Err(e),
            Err(Settle::Broker(e)) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %format!("{e:#}"), "the registry is not reachable yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(Settle::Broker(e)) => return Err(e),
        }
    }
    if claims.is_empty() {
        return Ok(None);
    }
    take_leases(amqp, topology, claims).await?;
    let epoch = record_takeover(amqp, home, claims).await?;
    amqp.set_epoch(epoch);
    tracing::info!(%epoch, "took the partitions' leases");
    Ok(Some(epoch))
}

/// Appends the takeover of `claims` (whose leases this process holds) and
/// answers its position in the registry: greater than every earlier
/// takeover's, so the epoch of every earlier owner of these partitions.
async fn record_takeover(amqp: &dyn Leases, home: &str, claims: &[Claim]) -> anyhow::Result<Epoch> {
    let record = Record::Takeover {
        claims: claims.iter().map(Named::from).collect(),
        home: home.to_owned(),
        by: who(),
    };
    let id = append(amqp, &record).await?;
    let entries = amqp
        .read_registry(&id)
        .await
        .context("reading the registry stream")?;
    let (ours, before) = entries
        .split_last()
        .context("the registry stream ended before this process's takeover")?;
    let earlier = Registry::fold(before);
    let incarnation = earlier.incarnation.context(
        "the registry lost its namespace record while this process took over (it was deleted \
         meanwhile); start again",
    )?;
    for c in claims {
        if let Some((epoch, by)) = earlier
            .epochs
            .get(&(c.role.as_str().to_owned(), c.partition.index()))
        {
            tracing::info!(partition = %c, previous_epoch = epoch, previous_owner = %by, epoch = ours.offset, "taking over");
        }
    }
    Ok(Epoch::new(incarnation, ours.offset))
}

/// How long start-up retries the registry while the broker is unavailable.
const REGISTRY_PATIENCE: Duration = Duration::from_secs(60);

/// Why the registry did not settle.
enum Settle {
    /// It says no (another count, another folder): final.
    Refused(anyhow::Error),
    /// The broker did not answer: worth another try.
    Broker(anyhow::Error),
}

async fn settle_registry(
    amqp: &dyn Leases,
    topology: &Topology,
    count: PartitionCount,
    home: &str,
    claims: &[Claim],
) -> Result<Registry, Settle> {
    let namespace = topology.namespace.clone();
    // At most three rounds: record what is missing, then read again to
    // learn whose record came first.
    for _ in 0..3 {
        let registry = read_all(amqp).await.map_err(Settle::Broker)?;
        if let Some(head) = registry.gap {
            return Err(Settle::Refused(anyhow::anyhow!(
                "the registry stream of `{namespace}` starts at position {head} (its retention \
                 dropped the records before) and holds no summary of them: who owns what cannot \
                 be told. Was its retention lowered below a few thousand records?"
            )));
        }
        match registry.partition_count {
            None => {
                append(
                    amqp,
                    &Record::Namespace {
                        partition_count: count.get(),
                        by: who(),
                        // Positive and never 0 (an earlier version's).
                        registry: i64::from(rand::random::<u32>()) + 1,
                    },
                )
                .await
                .map_err(Settle::Broker)?;
                continue;
            }
            Some(n) if n != count.get() => {
                return Err(Settle::Refused(anyhow::anyhow!(
                    "the namespace `{namespace}` has {n} partitions (recorded when it was first \
                 used); this process was started with HEARTY_PARTITION_COUNT={count}. The count \
                 of a namespace never changes: start with {n}, or use another namespace"
                )));
            }
            Some(_) => {}
        }
        let mut missing = Vec::new();
        for c in claims {
            match registry
                .owners
                .get(&(c.role.as_str().to_owned(), c.partition.index()))
            {
                Some((owner, by)) if owner != home => {
                    return Err(Settle::Refused(anyhow::anyhow!(
                        "{c} of namespace `{namespace}` belongs to another data folder (home {owner}, \
                     first claimed by {by}); this folder's home is {home}. A partition's state \
                     lives in one folder: start this process with that folder, or leave {c} \
                     out of HEARTY_PARTITIONS"
                    )));
                }
                Some(_) => {}
                None => missing.push(c),
            }
        }
        if missing.is_empty() {
            return Ok(registry);
        }
        // One record for the whole set: if another folder claimed one of
        // them first, the set binds nothing and the next round says whose.
        append(
            amqp,
            &Record::Claims {
                claims: missing.into_iter().map(Named::from).collect(),
                home: home.to_owned(),
                by: who(),
            },
        )
        .await
        .map_err(Settle::Broker)?;
    }
    Err(Settle::Broker(anyhow::anyhow!(
        "the registry stream of `{namespace}` did not settle"
    )))
}

/// Restates the registry in a summary record once enough records followed
/// the latest one, so its bounded tail always holds a summary a reader can
/// start from. Best effort: another process's start writes one too.
async fn summarise(amqp: &dyn Leases, registry: &Registry) {
    if registry.since_summary < SUMMARY_EVERY {
        return;
    }
    let Some(summary) = registry.summary() else {
        return;
    };
    if let Err(e) = append(amqp, &summary).await {
        tracing::warn!(error = %format!("{e:#}"), "cannot write a summary of the registry");
    }
}

/// Takes the leases of `claims`, waiting as a standby while another
/// process holds one.
async fn take_leases(
    amqp: &dyn Leases,
    topology: &Topology,
    claims: &[Claim],
) -> anyhow::Result<()> {
    if claims.is_empty() {
        return Ok(());
    }
    let leases: Vec<Lease> = claims
        .iter()
        .map(|c| Lease {
            queue: topology.lease(c.role.as_str(), c.partition),
            routing_key: Topology::rpc_key(c.role, c.partition),
        })
        .collect();
    let mut polls = 0u32;
    loop {
        match amqp.try_lease(&leases).await {
            Ok(None) => return Ok(()),
            Ok(Some(held)) => {
                if polls.is_multiple_of(STANDBY_LOG_EVERY) {
                    tracing::warn!(
                        lease = %held,
                        "standby: another process of this data folder's home holds the lease; \
                         waiting to take over"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot take the leases yet"),
        }
        polls += 1;
        tokio::time::sleep(STANDBY_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_keeps_its_home() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = home_of(dir.path()).expect("created");
        assert_eq!(first.len(), 32);
        assert_eq!(home_of(dir.path()).expect("read"), first);
    }

    fn entries(bodies: Vec<Vec<u8>>) -> Vec<RegistryEntry> {
        bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| RegistryEntry {
                offset: i as i64,
                body,
            })
            .collect()
    }

    fn named(role: &str, partition: u16) -> Named {
        Named {
            role: role.into(),
            partition,
        }
    }

    #[test]
    fn a_claim_set_binds_all_or_nothing() {
        let rec = |r: &Record| serde_json::to_vec(r).expect("json");
        let r = Registry::fold(&entries(vec![
            rec(&Record::Claims {
                claims: vec![named("pay", 0), named("pay", 1)],
                home: "h1".into(),
                by: "a".into(),
            }),
            // Overlaps h1's set: binds nothing, not even pay 2.
            rec(&Record::Claims {
                claims: vec![named("pay", 1), named("pay", 2)],
                home: "h2".into(),
                by: "b".into(),
            }),
            rec(&Record::Claims {
                claims: vec![named("pay", 2), named("pay", 3)],
                home: "h3".into(),
                by: "c".into(),
            }),
            rec(&Record::Takeover {
                claims: vec![named("pay", 2)],
                home: "h3".into(),
                by: "c".into(),
            }),
            rec(&Record::Takeover {
                claims: vec![named("pay", 2), named("pay", 3)],
                home: "h3".into(),
                by: "d".into(),
            }),
        ]));
        assert_eq!(r.owners[&("pay".to_owned(), 1)].0, "h1");
        assert_eq!(r.owners[&("pay".to_owned(), 2)].0, "h3");
        assert_eq!(r.owners[&("pay".to_owned(), 3)].0, "h3");
        // The later takeover's position is the epoch.
        assert_eq!(r.epochs[&("pay".to_owned(), 2)], (4, "d".to_owned()));
    }

    #[test]
    fn the_first_record_holds() {
        let rec = |r: &Record| serde_json::to_vec(r).expect("json");
        let bodies = vec![
            rec(&Record::Namespace {
                partition_count: 8,
                by: "a".into(),
                registry: 7,
            }),
            rec(&Record::Namespace {
                partition_count: 4,
                by: "b".into(),
                registry: 9,
            }),
            rec(&Record::Claim {
                role: "pay".into(),
                partition: 3,
                home: "h1".into(),
                by: "a".into(),
            }),
            rec(&Record::Claim {
                role: "pay".into(),
                partition: 3,
                home: "h2".into(),
                by: "b".into(),
            }),
            b"not json".to_vec(),
        ];
        let r = Registry::fold(&entries(bodies));
        assert_eq!(r.partition_count, Some(8));
        assert_eq!(r.incarnation, Some(7));
        assert_eq!(r.owners[&("pay".to_owned(), 3)].0, "h1");
    }

    fn at(offsets_and_records: Vec<(i64, Record)>) -> Vec<RegistryEntry> {
        offsets_and_records
            .into_iter()
            .map(|(offset, r)| RegistryEntry {
                offset,
                body: serde_json::to_vec(&r).expect("json"),
            })
            .collect()
    }

    fn claims(home: &str, roles: &[(&str, u16)]) -> Record {
        Record::Claims {
            claims: roles.iter().map(|(r, p)| named(r, *p)).collect(),
            home: home.into(),
            by: home.into(),
        }
    }

    #[test]
    fn a_summary_restates_what_retention_dropped() {
        // The records a summary folded (through 2).
        let head = || {
            vec![
                (
                    0,
                    Record::Namespace {
                        partition_count: 8,
                        by: "a".into(),
                        registry: 7,
                    },
                ),
                (1, claims("h1", &[("pay", 0), ("pay", 1)])),
                (2, Record::Hello { by: "a".into() }),
            ]
        };
        let mut full = head();
        // Written concurrently with the summary below (which folded only
        // through 2): it must count for a reader of the tail.
        full.push((3, claims("h2", &[("pay", 2)])));
        // Refused at the time (pay 1 is h1's): binds nothing.
        full.push((4, claims("h3", &[("pay", 1), ("pay", 5)])));
        let whole = Registry::fold(&at(full));
        let summary = Registry::fold(&at(head())).summary().expect("complete");
        // Retention dropped 0..=2: the tail is 3, 4, the summary, 6.
        let tail = Registry::fold(&at(vec![
            (3, claims("h2", &[("pay", 2)])),
            (4, claims("h3", &[("pay", 1), ("pay", 5)])),
            (5, summary),
            (6, claims("h4", &[("pay", 2), ("pay", 6)])),
        ]));
        assert_eq!(tail.gap, None);
        assert_eq!(tail.partition_count, Some(8));
        assert_eq!(tail.incarnation, Some(7));
        for p in [0, 1, 2] {
            let key = ("pay".to_owned(), p);
            assert_eq!(tail.owners[&key].0, whole.owners[&key].0, "pay {p}");
        }
        assert_eq!(tail.owners[&("pay".to_owned(), 1)].0, "h1");
        assert_eq!(tail.owners[&("pay".to_owned(), 2)].0, "h2");
        assert!(!tail.owners.contains_key(&("pay".to_owned(), 5)));
        assert!(!tail.owners.contains_key(&("pay".to_owned(), 6)));
        assert_eq!(tail.since_summary, 1);
    }

    #[test]
    fn a_tail_without_a_summary_that_reaches_it_is_a_gap() {
        let summary = Record::Summary {
            through: 2,
            partition_count: 8,
            registry: 7,
            owners: vec![],
            by: "a".into(),
        };
        // The summary says everything through 2, but 3 is gone too (4 is
        // not the broker's own chunk at a segment's start: 5 is read first).
        let r = Registry::fold(&at(vec![(5, claims("h3", &[("pay", 1)])), (6, summary)]));
        assert_eq!(r.gap, Some(5));
        assert!(r.summary().is_none());
    }
}
