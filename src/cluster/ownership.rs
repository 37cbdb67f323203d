//! Fenced single ownership of every (role, partition): at most one process
//! acts for a partition of a stateful role at any moment.
//!
//! Three things enforce it, each covering what the others cannot:
//!
//! 1. **The data folder's claim.** The broker's registry stream
//!    (`<ns>.registry`) records, for every (role, partition), the *home* —
//!    the identity of the data folder (`<HEARTY_DATA_DIR>/home`) that holds
//!    its state. The first claim in the stream wins; a process whose folder
//!    is another home refuses to start, naming the owner, so a partition's
//!    state is never re-created empty beside the real one. The same stream
//!    records the namespace's partition count (first record wins).
//! 2. **A lock in the folder.** An exclusive `flock` on
//!    `<role>.<partition>.lock`: two processes on one folder (the same host)
//!    never both act; the second waits as a standby until the first ends.
//! 3. **A lease on the broker.** An exclusive queue `<ns>.<role>.<p>.owner`
//!    per owned partition, declared before any consumer starts and on every
//!    reconnection: two processes of the same home on different hosts (a
//!    volume moved to a new pod) never both consume; the second waits as a
//!    standby. A process that comes back from a lost connection to find its
//!    lease taken is fenced: it stops (see `app::run`).
//!
//! Partitioned queues also have `x-single-active-consumer`, so even a
//! consumer outside these rules would not get messages beside the owner.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::partition::{OwnerRole, Partition, PartitionCount};
use crate::transport::{Lease, Leases, Topology};

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
const STANDBY_POLL: Duration = Duration::from_millis(500);
const STANDBY_LOG_EVERY: u32 = 20;

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

/// The folder locks of a process's partitions, held until dropped (the
/// kernel releases them however the process ends).
pub struct FolderLocks {
    _files: Vec<File>,
}

fn lock_path(dir: &Path, claim: &Claim) -> PathBuf {
    dir.join(format!("{}.{}.lock", claim.role, claim.partition))
}

/// Locks every claim's file in `dir`, waiting as a standby while another
/// process of this folder holds one.
pub async fn lock_folder(dir: &Path, claims: &[Claim]) -> anyhow::Result<FolderLocks> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the data folder {}", dir.display()))?;
    let mut files = Vec::new();
    for claim in claims {
        let path = lock_path(dir, claim);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut polls = 0u32;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) => {
                    if polls.is_multiple_of(STANDBY_LOG_EVERY) {
                        let pid = std::fs::read_to_string(&path).unwrap_or_default();
                        tracing::warn!(
                            partition = %claim,
                            owner_pid = pid.trim(),
                            "standby: another process of this data folder owns it; waiting to take over"
                        );
                    }
                    polls += 1;
                    tokio::time::sleep(STANDBY_POLL).await;
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("locking {}", path.display()));
                }
            }
        }
        file.set_len(0)?;
        write!(file, "{}", std::process::id())?;
        files.push(file);
    }
    Ok(FolderLocks { _files: files })
}

/// A record of the registry stream.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "camelCase")]
enum Record {
    /// The namespace's partition count: the first one recorded holds.
    #[serde(rename_all = "camelCase")]
    Namespace { partition_count: u16, by: String },
    /// A data folder claims a (role, partition): the first claim holds.
    #[serde(rename_all = "camelCase")]
    Claim {
        role: String,
        partition: u16,
        home: String,
        by: String,
    },
    /// Marks how far a reader has to read to see everything before it.
    #[serde(rename_all = "camelCase")]
    Hello { by: String },
}

/// What the registry says, read up to a point.
#[derive(Default)]
struct Registry {
    partition_count: Option<u16>,
    owners: HashMap<(String, u16), (String, String)>,
}

impl Registry {
    fn fold(bodies: &[Vec<u8>]) -> Registry {
        let mut r = Registry::default();
        for body in bodies {
            match serde_json::from_slice::<Record>(body) {
                Ok(Record::Namespace {
                    partition_count, ..
                }) => {
                    r.partition_count.get_or_insert(partition_count);
                }
                Ok(Record::Claim {
                    role,
                    partition,
                    home,
                    by,
                }) => {
                    r.owners.entry((role, partition)).or_insert((home, by));
                }
                Ok(Record::Hello { .. }) => {}
                Err(e) => tracing::warn!(error = %e, "unreadable registry record; skipped"),
            }
        }
        r
    }
}

fn who() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "this host".into());
    format!("pid {} on {host}", std::process::id())
}

async fn read_all(amqp: &dyn Leases) -> anyhow::Result<Registry> {
    let marker = format!("hello.{:032x}", rand::random::<u128>());
    let hello = serde_json::to_vec(&Record::Hello { by: who() })?;
    amqp.append_registry(&hello, &marker)
        .await
        .context("writing to the registry stream")?;
    let bodies = amqp
        .read_registry(&marker)
        .await
        .context("reading the registry stream")?;
    Ok(Registry::fold(&bodies))
}

async fn append(amqp: &dyn Leases, record: &Record) -> anyhow::Result<()> {
    let id = format!("record.{:032x}", rand::random::<u128>());
    amqp.append_registry(&serde_json::to_vec(record)?, &id)
        .await
        .context("writing to the registry stream")
}

/// Checks the namespace's partition count and binds `claims` to `home` in
/// the registry (refusing a partition another folder holds), then takes the
/// leases of `claims`, waiting as a standby while another process holds one.
pub async fn claim_on_broker(
    amqp: &dyn Leases,
    topology: &Topology,
    count: PartitionCount,
    home: &str,
    claims: &[Claim],
) -> anyhow::Result<()> {
    // The broker may be coming back (a restart, a node moving): reading and
    // writing the registry is retried for a while; a refusal is final.
    let deadline = tokio::time::Instant::now() + REGISTRY_PATIENCE;
    loop {
        match settle_registry(amqp, topology, count, home, claims).await {
            Ok(()) => break,
            Err(Settle::Refused(e)) => return Err(e),
            Err(Settle::Broker(e)) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %format!("{e:#}"), "the registry is not reachable yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(Settle::Broker(e)) => return Err(e),
        }
    }
    take_leases(amqp, topology, claims).await
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
) -> Result<(), Settle> {
    let namespace = topology.namespace.clone();
    // At most three rounds: record what is missing, then read again to
    // learn whose record came first.
    let mut settled = false;
    for _ in 0..3 {
        let registry = read_all(amqp).await.map_err(Settle::Broker)?;
        match registry.partition_count {
            None => {
                append(
                    amqp,
                    &Record::Namespace {
                        partition_count: count.get(),
                        by: who(),
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
            settled = true;
            break;
        }
        for c in missing {
            append(
                amqp,
                &Record::Claim {
                    role: c.role.as_str().to_owned(),
                    partition: c.partition.index(),
                    home: home.to_owned(),
                    by: who(),
                },
            )
            .await
            .map_err(Settle::Broker)?;
        }
    }
    if !settled {
        return Err(Settle::Broker(anyhow::anyhow!(
            "the registry stream of `{namespace}` did not settle"
        )));
    }
    Ok(())
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

    #[test]
    fn the_first_record_holds() {
        let rec = |r: &Record| serde_json::to_vec(r).expect("json");
        let bodies = vec![
            rec(&Record::Namespace {
                partition_count: 8,
                by: "a".into(),
            }),
            rec(&Record::Namespace {
                partition_count: 4,
                by: "b".into(),
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
        let r = Registry::fold(&bodies);
        assert_eq!(r.partition_count, Some(8));
        assert_eq!(r.owners[&("pay".to_owned(), 3)].0, "h1");
    }

    #[tokio::test]
    async fn a_second_process_of_a_folder_waits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let claim = Claim {
            role: OwnerRole::Worker(crate::domain::WorkerKind::Pay),
            partition: PartitionCount::default().of(3),
        };
        let held = lock_folder(dir.path(), std::slice::from_ref(&claim))
            .await
            .expect("first");
        // flock locks belong to the open file: a second open in this process
        // conflicts like another process would.
        let second = tokio::time::timeout(
            Duration::from_millis(300),
            lock_folder(dir.path(), std::slice::from_ref(&claim)),
        )
        .await;
        assert!(second.is_err(), "the second waits while the first holds it");
        drop(held);
        lock_folder(dir.path(), &[claim])
            .await
            .expect("free once the first is gone");
    }
}
