//! SQLite access: one writer thread per database file, reads off the async
//! threads, and the durability settings every database shares.
//!
//! `Db::write` runs a closure inside one `IMMEDIATE` transaction on the
//! database's writer thread and commits it before answering; nothing async
//! ever blocks on SQLite.

pub mod copy;
pub mod fence;
pub mod inbox;
pub mod outbox;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use tokio::sync::{Notify, oneshot, watch};

use crate::partition::Epoch;

/// A storage failure. Callers treat it as "try again later": the message that
/// caused it is not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("the writer of {0} has stopped")]
    WriterGone(PathBuf),
    #[error("reader task failed: {0}")]
    Join(String),
    /// Another process took this one's partitions over: nothing it writes
    /// is stored any more, and it must stop (see [`fence`]).
    #[error("fenced: {0}")]
    Fenced(String),
    /// Another running process owns the database file (its pid, if it
    /// wrote it yet). `wait`: this one may wait for it as a standby (it is
    /// not another partition set beside a live owner).
    #[error("{message}")]
    Claimed {
        message: String,
        pid: String,
        wait: bool,
    },
    /// Another process held the file's write lock for longer than the busy
    /// timeout (10 s): nothing was written.
    #[error("{0} is locked by another process: {1}")]
    Busy(PathBuf, String),
}

pub type StorageResult<T> = Result<T, StorageError>;

impl StorageError {
    /// Whether another process held the file's write lock past the busy
    /// timeout (a hung owner in the middle of a commit): worth waiting for.
    pub fn is_busy(&self) -> bool {
        match self {
            StorageError::Busy(..) => true,
            StorageError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => {
                f.code == rusqlite::ErrorCode::DatabaseBusy
            }
            _ => false,
        }
    }
}

/// What the writer thread runs for one `write`: the caller's work inside the
/// shared transaction, answering whether it succeeded and a finisher that
/// delivers the result once the transaction's fate is known. Given no
/// connection, the work is not done, only answered (a fenced writer).
type Job = Box<dyn FnOnce(Option<&Connection>) -> (bool, Finisher) + Send>;
type Finisher = Box<dyn FnOnce(Result<(), CommitError>) + Send>;

/// Why a group commit stored nothing.
#[derive(Debug, Clone)]
enum CommitError {
    Failed(String),
    /// Another process holds the file's write lock (past the busy timeout).
    Busy(String),
    Fenced(String),
}

/// Most `write` calls committed together (group commit).
const MAX_BATCH: usize = 256;

/// A database file: one writer thread and a small pool of read connections.
#[derive(Clone)]
pub struct Db {
    inner: Arc<DbInner>,
}

struct DbInner {
    path: PathBuf,
    /// Jobs for the writer thread; dropping the last sender stops it.
    jobs: Mutex<Option<std::sync::mpsc::Sender<Job>>>,
    /// Idle read-only connections, reused across reads.
    readers: Mutex<Vec<Connection>>,
    /// Woken after a commit that added outbox rows.
    /// One per outbox lane (see `outbox::Lane`), so each relay is woken.
    outbox_ready: [Notify; 2],
    /// The writer thread, joined by `close`.
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// This process's fencing token here, once it took its partitions over.
    fencing: Arc<Fencing>,
}

/// The epoch the writer checks in every transaction, and whether a check
/// failed (then every later write is refused too).
#[derive(Default)]
struct Fencing {
    held: Mutex<Option<Arc<fence::Held>>>,
    fenced: watch::Sender<Option<String>>,
}

impl Fencing {
    fn fenced_why(&self) -> Option<String> {
        self.fenced.borrow().clone()
    }
}

/// The pragmas of every connection. `synchronous = FULL` in WAL mode makes a
/// commit durable across power loss before `write` answers. Every statement
/// on a hot path is prepared once per connection (`prepare_cached`): the
/// cache holds all of them.
fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_prepared_statement_cache_capacity(64);
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(())
}

/// An exclusive claim of one process on a database file: `<file>.owner`,
/// locked (`flock`) for the life of the process and naming its pid and
/// partitions. The kernel releases it when the process ends, however it
/// ends, so a restarted owner claims it again at once.
struct Owner {
    _file: Option<std::fs::File>,
}

/// Who claims an owned database: the partitions it acts for, and the
/// namespace whose leases of them it already holds (`None`: no broker). A
/// holder of the file's lock in the same namespace whose partitions it all
/// holds lost them: it is fenced by the epoch, not waited for.
#[derive(Debug, Clone, Copy)]
pub struct Claimant<'a> {
    pub partitions: &'a [u16],
    pub leased_in: Option<&'a str>,
}

fn claim(path: &Path, claimant: Claimant<'_>) -> StorageResult<Owner> {
    use std::io::{Read, Seek, Write};
    // Next to the real file, so a symlink to it claims the same.
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let lock_path = real.with_extension("db.owner");
    let invalid = |e: std::io::Error| {
        StorageError::Invalid(format!("cannot claim {}: {e}", lock_path.display()))
    };
    if let Some(dir) = lock_path.parent() {
        std::fs::create_dir_all(dir).map_err(invalid)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&lock_path)
        .map_err(invalid)?;
    match file.try_lock() {
        Ok(()) => {
            file.set_len(0).map_err(invalid)?;
            file.rewind().map_err(invalid)?;
            let parts: Vec<String> = claimant.partitions.iter().map(u16::to_string).collect();
            write!(
                file,
                "{} {} {}",
                std::process::id(),
                parts.join(","),
                claimant.leased_in.unwrap_or("-")
            )
            .map_err(invalid)?;
            Ok(Owner { _file: Some(file) })
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut content = String::new();
            let _ = file.read_to_string(&mut content);
            let mut words = content.split_whitespace();
            // The owner may not have written its pid yet.
            let pid = words.next().unwrap_or("").to_owned();
            let theirs: Vec<u16> = words
                .next()
                .unwrap_or("")
                .split(',')
                .filter_map(|p| p.parse().ok())
                .collect();
            // The holder's namespace ("-": it runs without a broker, and no
            // lease says it lost anything).
            let their_namespace = words.next().unwrap_or("");
            let same_namespace = claimant
                .leased_in
                .is_some_and(|ns| ns == their_namespace && ns != "-");
            let overlap = theirs.iter().any(|p| claimant.partitions.contains(p));
            let covers =
                !theirs.is_empty() && theirs.iter().all(|p| claimant.partitions.contains(p));
            if same_namespace && covers {
                // This process holds the leases of every partition the
                // holder claimed: the holder lost them all (it hangs, or is
                // cut off), and the epoch this process records refuses its
                // commits. (A process holding only some of them waits: two
                // processes never share a database.)
                tracing::warn!(
                    database = %path.display(),
                    holder_pid = %pid,
                    "taking over a database whose previous owner still runs without its leases; \
                     its commits are refused from now on (fencing epoch)"
                );
                return Ok(Owner { _file: None });
            }
            let who = match pid.as_str() {
                "" => "another running process".to_owned(),
                pid => format!("another running process (pid {pid})"),
            };
            let serving = if theirs.is_empty() {
                String::new()
            } else {
                let theirs: Vec<String> = theirs.iter().map(u16::to_string).collect();
                let namespace = match their_namespace {
                    "-" => " without a broker".to_owned(),
                    "" => String::new(),
                    ns => format!(" of namespace `{ns}`"),
                };
                format!(" for partitions {}{namespace}", theirs.join(","))
            };
            Err(StorageError::Claimed {
                message: format!(
                    "{} is owned by {who}{serving}: one process acts for a database at a time; \
                     start this one with the same partitions (a standby) or give it its own \
                     HEARTY_DATA_DIR",
                    path.display()
                ),
                pid,
                // Another partition set beside a live owner, or another
                // namespace's owner, is refused; a process of overlapping
                // partitions of the same namespace (or without a broker)
                // waits for the file.
                wait: claimant.leased_in.is_none()
                    || (claimant.leased_in == Some(their_namespace) && overlap)
                    || theirs.is_empty(),
            })
        }
        Err(std::fs::TryLockError::Error(e)) => Err(invalid(e)),
    }
}

/// The least id a table's next new row may take, beside its largest id:
/// set by `hearty restore` above every id the folder may have given out
/// after its backup.
pub const ID_FLOOR_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS id_floor (
    tbl   TEXT PRIMARY KEY,
    floor INTEGER NOT NULL
);";

/// The largest id `table` has given out, or its floor if higher: a folder
/// restored from a backup skips the ids its lost predecessor may have given
/// out (`id_floor`, written by `hearty restore`).
pub fn highest_id(tx: &Connection, table: &str) -> rusqlite::Result<i64> {
    tx.prepare_cached(&format!(
        "SELECT max(coalesce((SELECT max(id) FROM {table}), 0),
                    coalesce((SELECT floor FROM id_floor WHERE tbl = ?1), 0))"
    ))?
    .query_row([table], |r| r.get(0))
}

/// How much a restored folder adds to the versions of the events it emits
/// (0 before any restore): `hearty restore` raises it above every version
/// the folder may have published before, so the read models, which apply
/// only what is newer than what they have, take what the restored owner
/// says from then on (`events::emit`).
pub const EVENT_VERSIONS: &str = "_event_versions";

pub fn event_version_base(tx: &Connection) -> rusqlite::Result<i64> {
    // Set only by `hearty restore`, before the folder's process starts: read
    // once per database file by the thread that emits (its writer).
    thread_local! {
        static BASES: std::cell::RefCell<HashMap<String, i64>> =
            std::cell::RefCell::new(HashMap::new());
    }
    let Some(path) = tx.path().map(str::to_owned) else {
        return read_event_version_base(tx);
    };
    if let Some(base) = BASES.with(|b| b.borrow().get(&path).copied()) {
        return Ok(base);
    }
    let base = read_event_version_base(tx)?;
    BASES.with(|b| b.borrow_mut().insert(path, base));
    Ok(base)
}

fn read_event_version_base(tx: &Connection) -> rusqlite::Result<i64> {
    let found = tx
        .prepare_cached("SELECT floor FROM id_floor WHERE tbl = ?1")
        .and_then(|mut stmt| optional(stmt.query_row([EVENT_VERSIONS], |r| r.get::<_, i64>(0))));
    match found {
        Ok(base) => Ok(base.unwrap_or(0)),
        // A database made before id floors (or outside `Db`): no restore.
        Err(rusqlite::Error::SqliteFailure(_, Some(m))) if m.contains("no such table") => Ok(0),
        Err(e) => Err(e),
    }
}

/// The id of a new row of `table`: the next one after its largest id (or
/// its floor) that falls in one of `owned`'s partitions (rows are never
/// deleted, so ids are never reused). Two owners of disjoint partitions
/// never pick the same id.
pub fn next_owned_id(
    tx: &Connection,
    table: &str,
    owned: &crate::partition::Owned,
) -> rusqlite::Result<i64> {
    let last = highest_id(tx, table)?;
    owned.next_id(last).ok_or_else(|| {
        rusqlite::Error::ToSqlConversionFailure(
            format!("no id left for {table} in the owned partitions").into(),
        )
    })
}

impl Db {
    /// Opens a database that this process alone may act for: claims it
    /// first (see [`Owner`]), so a second process on the same file refuses
    /// to start instead of acting beside the first.
    /// The claim is held by the writer thread and given up when it ends
    /// (after `close`, once the queued writes are done, or with the process).
    pub fn open_owned(path: &Path, schema: &str, claimant: Claimant<'_>) -> StorageResult<Db> {
        let owner = claim(path, claimant)?;
        Db::open_with(path, schema, Some(owner))
    }

    /// Opens (creating if needed) a database file and applies `schema`.
    pub fn open(path: &Path, schema: &str) -> StorageResult<Db> {
        Db::open_with(path, schema, None)
    }

    fn open_with(path: &Path, schema: &str, owner: Option<Owner>) -> StorageResult<Db> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                StorageError::Invalid(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        configure(&conn)?;
        {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute_batch(schema)?;
            tx.execute_batch(outbox::SCHEMA)?;
            tx.execute_batch(fence::SCHEMA)?;
            tx.execute_batch(ID_FLOOR_SCHEMA)?;
            tx.commit()?;
        }
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let fencing = Arc::new(Fencing::default());
        let writer_fencing = fencing.clone();
        let name = format!(
            "sqlite-writer-{}",
            path.file_stem().and_then(|s| s.to_str()).unwrap_or("db")
        );
        let writer = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                writer_loop(&mut conn, &rx, &writer_fencing);
                // The last write is done: only now may another process own it.
                drop(owner);
            })
            .map_err(|e| StorageError::Invalid(format!("cannot start writer thread: {e}")))?;
        Ok(Db {
            inner: Arc::new(DbInner {
                path: path.to_owned(),
                jobs: Mutex::new(Some(tx)),
                readers: Mutex::new(Vec::new()),
                outbox_ready: [Notify::new(), Notify::new()],
                writer: Mutex::new(Some(writer)),
                fencing,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Records `epoch` as this process's for `partitions` (refused if a
    /// newer takeover holds one), and from then on checks it in every
    /// transaction: once another process takes a partition over, every
    /// write here fails with [`StorageError::Fenced`].
    pub async fn take_over(
        &self,
        epoch: Epoch,
        partitions: &[u16],
        owner: &str,
    ) -> StorageResult<()> {
        let held = fence::Held::new(epoch, partitions);
        let job = held.clone();
        let owner = owner.to_owned();
        self.write(move |tx| fence::take_over(tx, &job, &owner).map_err(StorageError::Fenced))
            .await?;
        *self
            .inner
            .fencing
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(held));
        tracing::info!(database = %self.inner.path.display(), %epoch, "took over the database's partitions");
        Ok(())
    }

    /// Resolves, with the reason, once a transaction found that another
    /// process took this one's partitions over.
    pub async fn fenced(&self) -> String {
        let mut rx = self.inner.fencing.fenced.subscribe();
        loop {
            if let Some(why) = rx.borrow_and_update().clone() {
                return why;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Runs `f` in a transaction on the writer thread and answers once it is
    /// committed (durably: `synchronous = FULL`). An error from `f` rolls
    /// back everything `f` did and nothing else.
    ///
    /// Group commit: the writer takes every `write` waiting in its queue (up
    /// to [`MAX_BATCH`]) into one transaction, each in its own savepoint, and
    /// answers all of them after the single commit. Under load this shares
    /// one fsync among many writes without answering any of them early.
    pub async fn write<T, F>(&self, f: F) -> StorageResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StorageResult<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let span = tracing::Span::current();
        let path = self.inner.path.clone();
        let job: Job = Box::new(move |conn| {
            let result = match conn {
                Some(conn) => {
                    let _entered = span.enter();
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(conn)))
                        .unwrap_or_else(|p| {
                            Err(StorageError::Invalid(format!(
                                "a write panicked: {}",
                                crate::panic_message(p.as_ref())
                            )))
                        })
                }
                None => Err(StorageError::Invalid(
                    "not written: its group commit failed before it".into(),
                )),
            };
            let ok = result.is_ok();
            let finish: Finisher = Box::new(move |committed| {
                let outcome = match (result, committed) {
                    (_, Err(CommitError::Fenced(why))) => Err(StorageError::Fenced(why)),
                    (_, Err(CommitError::Busy(e))) => Err(StorageError::Busy(path, e)),
                    (Ok(v), Ok(())) => Ok(v),
                    (Ok(_), Err(CommitError::Failed(e))) => {
                        Err(StorageError::Invalid(format!("commit failed: {e}")))
                    }
                    (Err(e), _) => Err(e),
                };
                // The caller may have gone away; the commit stands either way.
                let _ = reply.send(outcome);
            });
            (ok, finish)
        });
        let sent = {
            // A poisoned lock only means another thread panicked while
            // holding it; the sender inside is still usable.
            let guard = self.inner.jobs.lock().unwrap_or_else(|p| p.into_inner());
            guard.as_ref().map(|jobs| jobs.send(job).is_ok())
        };
        if sent != Some(true) {
            return Err(StorageError::WriterGone(self.inner.path.clone()));
        }
        answer
            .await
            .map_err(|_| StorageError::WriterGone(self.inner.path.clone()))?
    }

    /// Runs `f` on a read-only connection on the blocking pool.
    pub async fn read<T, F>(&self, f: F) -> StorageResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StorageResult<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let pooled = inner
                .readers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop();
            let conn = match pooled {
                Some(c) => c,
                None => open_reader(&inner.path)?,
            };
            let result = f(&conn);
            let mut pool = inner.readers.lock().unwrap_or_else(|p| p.into_inner());
            if pool.len() < 8 {
                pool.push(conn);
            }
            result
        })
        .await
        .map_err(|e| StorageError::Join(e.to_string()))?
    }

    /// Whether the database answers a trivial query.
    pub async fn is_healthy(&self) -> bool {
        self.read(|c| Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?))
            .await
            .is_ok()
    }

    /// Wakes the outbox relay: call after a commit that added outbox rows.
    pub fn notify_outbox(&self) {
        for n in &self.inner.outbox_ready {
            n.notify_one();
        }
    }

    pub(crate) async fn outbox_notified(&self, lane: outbox::Lane) {
        self.inner.outbox_ready[lane as usize].notified().await
    }

    /// Stops the writer thread once queued jobs are done, and waits for it
    /// (a few milliseconds: it only finishes what is queued). An owned
    /// database is free for another process when this returns.
    pub fn close(&self) {
        self.inner
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let writer = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(w) = writer {
            // A writer that panicked has already let go of everything.
            let _ = w.join();
        }
    }
}

/// The writer thread: batches waiting writes into one transaction.
fn writer_loop(conn: &mut Connection, rx: &std::sync::mpsc::Receiver<Job>, fencing: &Fencing) {
    while let Ok(first) = rx.recv() {
        let mut batch = std::collections::VecDeque::from([first]);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push_back(job),
                Err(_) => break,
            }
        }
        let mut finishers = Vec::with_capacity(batch.len());
        if let Some(why) = fencing.fenced_why() {
            // Fenced before: nothing is tried any more.
            for job in batch.drain(..) {
                let (_, finish) = job(None);
                finish(Err(CommitError::Fenced(why.clone())));
            }
            continue;
        }
        let held = fencing
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut fenced = None;
        let committed = (|| -> rusqlite::Result<()> {
            let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // The fencing token, inside the transaction that would commit:
            // one indexed read per group commit.
            if let Some(held) = &held
                && let Err(why) = fence::check(&tx, held)?
            {
                fenced = Some(why);
                return Err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                    Some("fenced".into()),
                ));
            }
            // A job leaves the batch only once its savepoint is open: on an
            // early error, the ones not run are still there to be answered.
            while !batch.is_empty() {
                let sp = tx.savepoint()?;
                let Some(job) = batch.pop_front() else { break };
                let (ok, finish) = job(Some(&sp));
                finishers.push(finish);
                // Some errors (SQLITE_FULL, IOERR, NOMEM, ...) make SQLite roll
                // back the whole transaction, not just the statement. Going on
                // would start a new transaction with the next savepoint and
                // commit it on release, so a later write would be stored while
                // this batch is answered as failed. Stop here instead: every
                // write of the batch so far is undone, and all are answered so.
                if sp.is_autocommit() {
                    return Err(rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                        Some("the transaction was rolled back by SQLite".into()),
                    ));
                }
                if ok {
                    sp.commit()?;
                } else {
                    // Dropping a savepoint rolls it back and releases it:
                    // only this write's changes are undone.
                    drop(sp);
                }
            }
            tx.commit()
        })();
        let committed = committed.map_err(|e| match (&fenced, &e) {
            (Some(why), _) => CommitError::Fenced(why.clone()),
            (None, rusqlite::Error::SqliteFailure(f, _))
                if f.code == rusqlite::ErrorCode::DatabaseBusy =>
            {
                CommitError::Busy(e.to_string())
            }
            (None, _) => CommitError::Failed(e.to_string()),
        });
        // Jobs an early error kept from running are answered with it.
        for job in batch.drain(..) {
            let (_, finish) = job(None);
            finishers.push(finish);
        }
        if let Some(why) = fenced {
            tracing::error!(database = ?conn.path(), reason = %why, "fenced: another process owns these partitions now; nothing more is written");
            fencing.fenced.send_replace(Some(why));
        } else if let Err(CommitError::Failed(e) | CommitError::Busy(e)) = &committed {
            tracing::warn!(error = %e, writes = finishers.len(), "group commit failed");
        }
        for finish in finishers {
            finish(committed.clone());
        }
    }
}

fn open_reader(path: &Path) -> StorageResult<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    configure(&conn)?;
    Ok(conn)
}

/// Reads an optional single row.
pub fn optional<T>(r: rusqlite::Result<T>) -> rusqlite::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(rusqlite::Error::QueryReturnedNoRows) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Paging of every list endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Page {
    pub limit: i64,
    pub offset: i64,
}

impl Default for Page {
    fn default() -> Self {
        Page {
            limit: 100,
            offset: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_commit_and_errors_roll_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(
            &dir.path().join("t.db"),
            "CREATE TABLE IF NOT EXISTS t (v INTEGER NOT NULL);",
        )
        .expect("opens");
        db.write(|tx| Ok(tx.execute("INSERT INTO t VALUES (1)", [])?))
            .await
            .expect("insert");
        let failed = db
            .write(|tx| {
                tx.execute("INSERT INTO t VALUES (2)", [])?;
                Err::<(), _>(StorageError::Invalid("boom".into()))
            })
            .await;
        assert!(failed.is_err());
        let count = db
            .read(|c| Ok(c.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))?))
            .await
            .expect("count");
        assert_eq!(count, 1);
        assert!(db.is_healthy().await);
    }

    /// Issue 10 (suspected case): a write whose error rolls back the whole
    /// transaction (as SQLITE_FULL or an I/O error may) must not let a later
    /// write of the batch commit on its own while the batch is answered as
    /// failed. The rollback is made deterministic here by the write itself.
    #[tokio::test]
    async fn a_transaction_wide_rollback_answers_exactly_what_is_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(
            &dir.path().join("r.db"),
            "CREATE TABLE IF NOT EXISTS t (v INTEGER NOT NULL);",
        )
        .expect("opens");
        for round in 0..20i64 {
            let writes = (0..30i64).map(|i| {
                let db = db.clone();
                let v = round * 100 + i;
                async move {
                    let r = db
                        .write(move |c| {
                            c.execute("INSERT INTO t VALUES (?1)", [v])?;
                            if i == 10 {
                                c.execute_batch("ROLLBACK")?;
                                return Err(StorageError::Invalid("disk full".into()));
                            }
                            Ok(())
                        })
                        .await;
                    (v, r.is_ok())
                }
            });
            let answers = futures_util::future::join_all(writes).await;
            for (v, ok) in answers {
                let stored = db
                    .read(move |c| {
                        Ok(
                            c.query_row("SELECT count(*) FROM t WHERE v = ?1", [v], |r| {
                                r.get::<_, i64>(0)
                            })?,
                        )
                    })
                    .await
                    .expect("count");
                assert_eq!(
                    stored == 1,
                    ok,
                    "write {v}: answered ok={ok}, stored={stored}"
                );
            }
        }
    }

    const LOW: Claimant<'static> = Claimant {
        partitions: &[0, 1, 2, 3],
        leased_in: Some("ns"),
    };

    #[tokio::test]
    async fn an_owned_database_has_one_owner_at_a_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("o.db");
        let schema = "CREATE TABLE IF NOT EXISTS t (v INTEGER);";
        let first = Db::open_owned(&path, schema, LOW).expect("first owner");
        // Without a broker, a second process waits for the file.
        let no_broker = Claimant {
            partitions: &[0, 1, 2, 3],
            leased_in: None,
        };
        let second = Db::open_owned(&path, schema, no_broker);
        assert!(matches!(
            &second,
            Err(StorageError::Claimed { wait: true, .. })
        ));
        let err = second.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("owned by another running process"), "{err}");
        assert!(
            err.contains(&std::process::id().to_string()),
            "names the owner: {err}"
        );
        assert!(err.contains("for partitions 0,1,2,3"), "{err}");
        // Another partition set is refused even holding its leases: one
        // process acts for a database.
        let high = Claimant {
            partitions: &[4, 5, 6, 7],
            leased_in: Some("ns"),
        };
        assert!(matches!(
            Db::open_owned(&path, schema, high),
            Err(StorageError::Claimed { wait: false, .. })
        ));
        // Holding only some of the holder's partitions, it waits (the
        // holder's other partitions may have gone to yet another process).
        let some = Claimant {
            partitions: &[0, 1],
            leased_in: Some("ns"),
        };
        assert!(matches!(
            Db::open_owned(&path, schema, some),
            Err(StorageError::Claimed { wait: true, .. })
        ));
        // A process holding the leases of the holder's partitions took
        // them over: the holder lost them, and is not waited for.
        // Another namespace's process is refused, whatever its partitions.
        let elsewhere = Claimant {
            partitions: &[0, 1, 2, 3],
            leased_in: Some("other"),
        };
        assert!(matches!(
            Db::open_owned(&path, schema, elsewhere),
            Err(StorageError::Claimed { wait: false, .. })
        ));
        let standby = Claimant {
            partitions: &[0, 1, 2, 3],
            leased_in: Some("ns"),
        };
        let took_over = Db::open_owned(&path, schema, standby).expect("taken over");
        took_over.close();
        first.close();
        drop(first);
        // The writer thread gives the claim up once it has stopped.
        let mut again = Db::open_owned(&path, schema, LOW);
        for _ in 0..100 {
            if again.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            again = Db::open_owned(&path, schema, LOW);
        }
        again.expect("free again once the owner is gone");
    }

    #[tokio::test]
    async fn a_newer_epoch_refuses_every_commit_of_the_older_owner() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f.db");
        let schema = "CREATE TABLE IF NOT EXISTS t (v INTEGER NOT NULL);";
        let insert = |v: i64| {
            move |c: &Connection| -> StorageResult<()> {
                c.execute("INSERT INTO t (v) VALUES (?1)", [v])?;
                Ok(())
            }
        };
        let old = Db::open(&path, schema).expect("old owner");
        old.take_over(Epoch::new(1, 10), &[0, 1], "old")
            .await
            .expect("old");
        old.write(insert(1)).await.expect("the owner commits");
        // A hung owner's successor, on the same file (a moved volume).
        let new = Db::open(&path, schema).expect("new owner");
        new.take_over(Epoch::new(1, 20), &[1, 2], "new")
            .await
            .expect("new");
        let refused = old.write(insert(2)).await;
        assert!(
            matches!(&refused, Err(StorageError::Fenced(why)) if why.contains("epoch 20 (registry 1)")),
            "{refused:?}"
        );
        let why = tokio::time::timeout(std::time::Duration::from_secs(5), old.fenced())
            .await
            .expect("the old owner learns it is fenced");
        assert!(why.contains("partition 1"), "{why}");
        // Every later write of the old owner is refused too, and it cannot
        // take the partitions back.
        assert!(matches!(
            old.write(insert(3)).await,
            Err(StorageError::Fenced(_))
        ));
        assert!(
            old.take_over(Epoch::new(1, 10), &[0, 1], "old")
                .await
                .is_err()
        );
        new.write(insert(4)).await.expect("the new owner commits");
        let stored: Vec<i64> = new
            .read(|c| {
                let mut stmt = c.prepare("SELECT v FROM t ORDER BY v")?;
                Ok(stmt
                    .query_map([], |r| r.get(0))?
                    .collect::<rusqlite::Result<Vec<i64>>>()?)
            })
            .await
            .expect("read");
        assert_eq!(
            stored,
            vec![1, 4],
            "nothing of the old owner after the takeover"
        );
    }

    #[tokio::test]
    async fn a_failing_write_in_a_group_commit_undoes_only_itself() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(
            &dir.path().join("g.db"),
            "CREATE TABLE IF NOT EXISTS t (v INTEGER NOT NULL UNIQUE);",
        )
        .expect("opens");
        // Many writes at once share transactions; every third one fails
        // after having written.
        let writes = (0..300i64).map(|i| {
            let db = db.clone();
            async move {
                db.write(move |c| {
                    c.execute("INSERT INTO t VALUES (?1)", [i])?;
                    if i % 3 == 0 {
                        return Err(StorageError::Invalid("refused".into()));
                    }
                    Ok(i)
                })
                .await
            }
        });
        let results = futures_util::future::join_all(writes).await;
        let ok = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, 200);
        let stored = db
            .read(|c| {
                Ok(
                    c.query_row("SELECT count(*), sum(v % 3 = 0) FROM t", [], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
                    })?,
                )
            })
            .await
            .expect("count");
        assert_eq!(stored, (200, 0), "exactly the successful writes are stored");
    }
}
