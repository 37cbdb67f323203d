//! Snapshots of the read models, so a process serving them does not need
//! the whole event log: the log is bounded (its retention deletes old
//! segments), and a new replica starts from the latest snapshot and reads
//! only the log's tail.
//!
//! A snapshot is a folder in the shared snapshot folder
//! (`HEARTY_SNAPSHOT_DIR/<namespace>/`): a consistent copy of each read
//! model's database (SQLite's online backup), each holding its own log
//! position, and a `manifest.json` naming them. It is written aside and
//! renamed into place, so a reader never sees half of one; the newest
//! [`KEEP`] are kept. Every process serving read models writes one every
//! `HEARTY_SNAPSHOT_EVERY` when its read models moved past the latest.
//!
//! At start-up ([`prepare`]) a process compares its own read models'
//! positions, the latest snapshot's and the log's first retained offset:
//! it restores the snapshot when that is further along (a new replica,
//! one that was away long), and refuses to start when neither reaches the
//! log's head (the events in between are gone: the read models would
//! silently miss them).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::domain::ViewKind;
use crate::shutdown::Shutdown;
use crate::storage::copy::{copy_live, sync_dir};
use crate::transport::{EventLog, LogFrom};

/// Snapshots kept in the shared folder (the newest, and the furthest
/// along).
pub const KEEP: usize = 3;

const MANIFEST: &str = "manifest.json";

/// What a snapshot holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// The log position of each read model in it (the offset of its next
    /// event).
    pub positions: std::collections::BTreeMap<String, i64>,
    /// The last entry of the log each read model had read (which log its
    /// position is in).
    #[serde(default)]
    pub anchors: std::collections::BTreeMap<String, super::Anchor>,
    /// Milliseconds since the epoch.
    pub taken_at: u64,
    pub by: String,
}

impl Manifest {
    /// Where the snapshot as a whole stands: its least position.
    pub fn position(&self) -> i64 {
        self.positions.values().copied().min().unwrap_or(0)
    }
}

/// One snapshot in the shared folder.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub path: PathBuf,
    pub manifest: Manifest,
}

/// The snapshot folder of one namespace.
pub struct Snapshots {
    dir: PathBuf,
}

impl Snapshots {
    pub fn new(root: &Path, namespace: &str) -> Self {
        Snapshots {
            dir: root.join(namespace),
        }
    }

    /// Every complete snapshot, the newest first (by when it was taken: a
    /// snapshot of a log since deleted and declared again may stand at a
    /// larger position than every current one).
    pub fn all(&self) -> Vec<Snapshot> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut found: Vec<Snapshot> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("views-"))
            .filter_map(|e| {
                let path = e.path();
                let text = std::fs::read(path.join(MANIFEST)).ok()?;
                let manifest: Manifest = serde_json::from_slice(&text)
                    .map_err(|err| tracing::warn!(snapshot = %path.display(), error = %err, "unreadable snapshot manifest; ignored"))
                    .ok()?;
                Some(Snapshot { path, manifest })
            })
            .collect();
        found.sort_by_key(|s| std::cmp::Reverse((s.manifest.taken_at, s.manifest.position())));
        found
    }

    pub fn latest(&self) -> Option<Snapshot> {
        self.all().into_iter().next()
    }

    /// Takes a snapshot of the read models in `data_dir`; then keeps the
    /// newest [`KEEP`].
    pub fn write(&self, data_dir: &Path) -> anyhow::Result<Snapshot> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let tag = format!("{}-{:08x}", std::process::id(), rand::random::<u32>());
        let tmp = self.dir.join(format!(".tmp-{tag}"));
        std::fs::create_dir(&tmp)?;
        let written = (|| {
            let mut positions = std::collections::BTreeMap::new();
            let mut anchors = std::collections::BTreeMap::new();
            for kind in ViewKind::ALL {
                let name = file_name(kind);
                let dst = tmp.join(&name);
                copy_live(&data_dir.join(&name), &dst)?;
                positions.insert(kind.as_str().to_owned(), position_in(&dst)?);
                if let Some(a) = anchor_in(&dst)? {
                    anchors.insert(kind.as_str().to_owned(), a);
                }
            }
            let manifest = Manifest {
                positions,
                anchors,
                taken_at: now_ms(),
                by: crate::cluster::ownership::who(),
            };
            let text = serde_json::to_vec_pretty(&manifest)?;
            std::fs::write(tmp.join(MANIFEST), text)?;
            std::fs::File::open(tmp.join(MANIFEST))?.sync_all()?;
            sync_dir(&tmp);
            let path = self
                .dir
                .join(format!("views-{:020}-{tag}", manifest.position()));
            std::fs::rename(&tmp, &path)?;
            sync_dir(&self.dir);
            anyhow::Ok(Snapshot { path, manifest })
        })();
        if written.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        let snapshot = written?;
        self.prune();
        Ok(snapshot)
    }

    /// Removes all but the newest [`KEEP`] snapshots (and leftovers of
    /// writes that died, after an hour). Another process may prune at the
    /// same time: a name already gone is fine.
    fn prune(&self) {
        let all = self.all();
        // The furthest along stays too, if the newest are all behind it (a
        // lagging replica's newer ones must not push it out).
        let newest_reach = all.iter().take(KEEP).map(|s| s.manifest.position()).max();
        let furthest = all
            .iter()
            .skip(KEEP)
            .max_by_key(|s| s.manifest.position())
            .filter(|s| Some(s.manifest.position()) > newest_reach)
            .map(|s| s.path.clone());
        for old in all.into_iter().skip(KEEP) {
            if Some(&old.path) != furthest.as_ref() {
                let _ = std::fs::remove_dir_all(&old.path);
            }
        }
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.filter_map(Result::ok) {
            let stale = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(3600));
            if stale && e.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// The file name of a read model's database.
fn file_name(kind: ViewKind) -> String {
    format!("views-{}.db", kind.as_str())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The one row of `table` in a read model's database file, read by `sql`
/// (`None`: no file, no such table yet, or no row).
fn read_row<T>(
    path: &Path,
    table: &str,
    sql: &str,
    row: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> anyhow::Result<Option<T>> {
    if !path.exists() {
        return Ok(None);
    }
    let c =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let has_table: bool = c.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
        [table],
        |r| r.get(0),
    )?;
    if !has_table {
        return Ok(None);
    }
    Ok(crate::storage::optional(c.query_row(sql, [], row))?)
}

/// The log position stored in a read model's database file (0: none yet,
/// or no file).
fn position_in(path: &Path) -> anyhow::Result<i64> {
    Ok(read_row(
        path,
        "log_position",
        "SELECT next_offset FROM log_position WHERE id = 1",
        |r| r.get::<_, i64>(0),
    )?
    .unwrap_or(0))
}

/// The last log entry a read model's database recorded having read.
fn anchor_in(path: &Path) -> anyhow::Result<Option<super::Anchor>> {
    read_row(
        path,
        "log_anchor",
        "SELECT log_offset, message_id FROM log_anchor WHERE id = 1",
        |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
    )
}

/// Whether each anchor is an entry of the log as it is now: the entry at
/// its offset has its message id. An anchor the log's retention has
/// deleted cannot be checked and counts as current (a log declared again
/// starts at offset 0 and keeps it for long).
async fn in_this_log(
    anchors: &[super::Anchor],
    log: &dyn EventLog,
    head: i64,
) -> anyhow::Result<bool> {
    for (offset, id) in anchors {
        if *offset < head {
            continue;
        }
        // Nothing at or after the offset: the log is shorter than it was.
        // Asked three times: a broker slow to deliver is no new log.
        let mut found = None;
        for _ in 0..3 {
            found = entry_from(log, LogFrom::Offset(*offset)).await?;
            if found.is_some() {
                break;
            }
        }
        if found.as_ref().is_none_or(|(o, i)| o != offset || i != id) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// How long start-up waits for the broker to answer about the log (it may
/// be restarting or moving to another node).
const BROKER_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// The log's first entry at or after `offset` (see `EventLog::entry_from`),
/// asked again while the broker is unavailable.
async fn entry_from(log: &dyn EventLog, offset: LogFrom) -> anyhow::Result<Option<super::Anchor>> {
    let deadline = tokio::time::Instant::now() + BROKER_PATIENCE;
    loop {
        match log.entry_from(offset).await {
            Ok(found) => return Ok(found),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "the event log cannot be read yet; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e).context("reading the event log"),
        }
    }
}

/// Where this folder's read models stand in the log: the least position.
fn local_position(data_dir: &Path) -> anyhow::Result<i64> {
    let mut least = i64::MAX;
    for kind in ViewKind::ALL {
        least = least.min(position_in(&data_dir.join(file_name(kind)))?);
    }
    Ok(least)
}

/// The anchors of this folder's read models.
fn local_anchors(data_dir: &Path) -> anyhow::Result<Vec<super::Anchor>> {
    let mut anchors = Vec::new();
    for kind in ViewKind::ALL {
        anchors.extend(anchor_in(&data_dir.join(file_name(kind)))?);
    }
    Ok(anchors)
}

/// Removes this folder's read models (they belong to a log that is gone).
fn discard(data_dir: &Path) -> anyhow::Result<()> {
    for kind in ViewKind::ALL {
        let name = file_name(kind);
        for suffix in ["", "-wal", "-shm"] {
            match std::fs::remove_file(data_dir.join(format!("{name}{suffix}"))) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).context("removing a read model of another log"),
            }
        }
    }
    sync_dir(data_dir);
    Ok(())
}

/// Replaces this folder's read models with `snapshot`'s (before they are
/// opened): each copied aside, then renamed over the old file, whose
/// `-wal`/`-shm` companions are removed first.
fn restore(snapshot: &Snapshot, data_dir: &Path) -> anyhow::Result<()> {
    for kind in ViewKind::ALL {
        let name = file_name(kind);
        let target = data_dir.join(&name);
        let aside = data_dir.join(format!("{name}.restoring"));
        let _ = std::fs::remove_file(&aside);
        copy_live(&snapshot.path.join(&name), &aside)?;
        for companion in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(data_dir.join(format!("{name}{companion}")));
        }
        std::fs::rename(&aside, &target)?;
    }
    sync_dir(data_dir);
    Ok(())
}

/// What start-up does with the read models.
#[derive(Debug, PartialEq, Eq)]
pub enum Start {
    /// Go on from this folder's own positions.
    Own,
    /// Restore the snapshot first.
    Restore,
}

/// Decides between this folder's read models (at `local`) and the latest
/// snapshot (at `snapshot`), given the log's first retained offset
/// (`head`); an error when neither reaches the log.
pub fn choose(local: i64, snapshot: Option<i64>, head: i64) -> Result<Start, String> {
    let holds = |p: i64| crate::transport::stream_holds_from(p, head);
    match snapshot {
        Some(s) if s > local && holds(s) => Ok(Start::Restore),
        _ if holds(local) => Ok(Start::Own),
        Some(s) => Err(format!(
            "the event log now starts at offset {head} (its retention deleted what came before); \
             this folder's read models stand at {local} and the latest snapshot at {s}: the events \
             in between are gone. A replica that is current writes a newer snapshot every \
             HEARTY_SNAPSHOT_EVERY: start this one after it did (or copy one from it into \
             HEARTY_SNAPSHOT_DIR). With no current replica and no snapshot left, the events the \
             log no longer holds are gone from the read models (DEPLOYMENT.md, *Running for \
             years*)"
        )),
        None => Err(format!(
            "the event log now starts at offset {head} (its retention deleted what came before); \
             this folder's read models stand at {local} and there is no snapshot (set \
             HEARTY_SNAPSHOT_DIR to the folder the read-model processes share): the events in \
             between are gone"
        )),
    }
}

/// Before the read models open: restores the latest snapshot if it is
/// further along than this folder's, and refuses to start when nothing
/// reaches the log's first retained entry. Read models (this folder's, or a
/// snapshot's) of a log that was deleted and declared again since are not
/// used: this folder's are removed, such a snapshot is passed over.
pub async fn prepare(config: &Config, log: &dyn EventLog) -> anyhow::Result<()> {
    let head = entry_from(log, LogFrom::First)
        .await
        .context("reading where the event log starts")?
        .map_or(0, |(offset, _)| offset);
    let mut local = local_position(&config.data_dir)?;
    if local > 0 && !in_this_log(&local_anchors(&config.data_dir)?, log, head).await? {
        tracing::warn!(
            position = local,
            "this folder's read models were read from an event log that has since been \
             deleted and declared again: starting them over"
        );
        discard(&config.data_dir)?;
        local = 0;
    }
    let mut latest = None;
    if let Some(root) = config.snapshot_dir.as_deref() {
        // The furthest along of those of this log.
        for s in Snapshots::new(root, &config.namespace).all() {
            let anchors: Vec<super::Anchor> = s.manifest.anchors.values().cloned().collect();
            if !in_this_log(&anchors, log, head).await? {
                tracing::warn!(snapshot = %s.path.display(), "a snapshot of an event log deleted since; passed over");
                continue;
            }
            let further = latest
                .as_ref()
                .is_none_or(|l: &Snapshot| s.manifest.position() > l.manifest.position());
            if further {
                latest = Some(s);
            }
        }
    }
    let choice = choose(local, latest.as_ref().map(|s| s.manifest.position()), head)
        .map_err(|e| anyhow::anyhow!(e))?;
    if let (Start::Restore, Some(snapshot)) = (choice, latest) {
        tracing::info!(
            snapshot = %snapshot.path.display(),
            position = snapshot.manifest.position(),
            own = local,
            log_head = head,
            "restoring the read models from a snapshot"
        );
        let data_dir = config.data_dir.clone();
        tokio::task::spawn_blocking(move || restore(&snapshot, &data_dir))
            .await
            .context("restoring a snapshot")??;
    }
    Ok(())
}

/// Writes a snapshot every `every` (with some jitter, so replicas do not
/// write at once) while this folder's read models moved since the latest
/// one and the latest is older than half the period, until shutdown.
pub async fn keep_writing(config: Config, mut shutdown: Shutdown) {
    let Some(root) = config.snapshot_dir.clone() else {
        return;
    };
    let every = config.snapshot_every;
    loop {
        let jitter = every.mul_f64(rand::random::<f64>() * 0.2);
        tokio::select! {
            _ = shutdown.recv() => return,
            _ = tokio::time::sleep(every + jitter) => {}
        }
        let (root, namespace, data_dir) = (
            root.clone(),
            config.namespace.clone(),
            config.data_dir.clone(),
        );
        let written = tokio::task::spawn_blocking(move || {
            let snapshots = Snapshots::new(&root, &namespace);
            let local = local_position(&data_dir)?;
            if let Some(latest) = snapshots.latest() {
                let young = now_ms().saturating_sub(latest.manifest.taken_at)
                    < u64::try_from(every.as_millis() / 2).unwrap_or(u64::MAX);
                // Nothing new since the latest, or it is recent.
                if latest.manifest.position() == local || young {
                    return Ok(None);
                }
            }
            snapshots.write(&data_dir).map(Some)
        })
        .await;
        match written {
            Ok(Ok(Some(s))) => {
                crate::metrics::inc(&crate::metrics::METRICS.view_snapshots_written_total);
                tracing::info!(snapshot = %s.path.display(), position = s.manifest.position(), "wrote a snapshot of the read models");
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot write a snapshot of the read models");
            }
            Err(e) => tracing::warn!(error = %e, "the snapshot writer failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_furthest_usable_start_is_chosen() {
        // A new replica: nothing local, a snapshot within the log.
        assert_eq!(choose(0, Some(500), 100), Ok(Start::Restore));
        // An untruncated log and no snapshot: replay it all.
        assert_eq!(choose(0, None, 0), Ok(Start::Own));
        // Its own read models are further along than the snapshot.
        assert_eq!(choose(900, Some(500), 100), Ok(Start::Own));
        // Its own fell out of retention, the snapshot did not.
        assert_eq!(choose(50, Some(500), 100), Ok(Start::Restore));
        // Both fell out: refused, naming the way out.
        assert!(choose(50, Some(80), 100).is_err_and(|e| e.contains("starts at offset 100")));
        // The head one past its position: the broker's own chunk at a
        // segment's start, nothing lost.
        assert_eq!(choose(99, None, 100), Ok(Start::Own));
        assert!(choose(98, None, 100).is_err());
        assert!(choose(0, None, 100).is_err_and(|e| e.contains("HEARTY_SNAPSHOT_DIR")));
    }

    fn model(dir: &Path, kind: ViewKind, position: i64) {
        let c = rusqlite::Connection::open(dir.join(file_name(kind))).expect("open");
        c.execute_batch(&crate::views::schema(kind))
            .expect("schema");
        c.execute(
            "INSERT INTO log_position (id, next_offset) VALUES (1, ?1)",
            [position],
        )
        .expect("position");
    }

    #[test]
    fn a_snapshot_round_trips_and_only_the_newest_are_kept() {
        let data = tempfile::tempdir().expect("tempdir");
        let shared = tempfile::tempdir().expect("tempdir");
        let snapshots = Snapshots::new(shared.path(), "ns");
        for (i, kind) in ViewKind::ALL.into_iter().enumerate() {
            model(data.path(), kind, 10 + i as i64);
        }
        let first = snapshots.write(data.path()).expect("written");
        assert_eq!(first.manifest.position(), 10);
        for _ in 0..KEEP + 1 {
            snapshots.write(data.path()).expect("written");
        }
        assert_eq!(snapshots.all().len(), KEEP);
        let fresh = tempfile::tempdir().expect("tempdir");
        restore(&snapshots.latest().expect("one"), fresh.path()).expect("restored");
        assert_eq!(local_position(fresh.path()).expect("read"), 10);
        assert_eq!(
            position_in(&fresh.path().join(file_name(ViewKind::Reviews))).expect("read"),
            12
        );
    }
}
