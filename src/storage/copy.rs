//! Consistent copies of a live SQLite file, made with SQLite's online
//! backup API: one read transaction copies every page at once, so the copy
//! is the database as one committed transaction left it, while the owner
//! goes on writing (in WAL mode a reader does not block the writer).

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

/// Copies the database at `src` (which another process may be writing) to
/// a new file `dst`, fsynced. `dst` must not exist.
pub fn copy_live(src: &Path, dst: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(!dst.exists(), "{} exists already", dst.display());
    let from = Connection::open_with_flags(
        src,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {}", src.display()))?;
    from.busy_timeout(Duration::from_secs(30))?;
    copy_from(&from, src, dst)
}

/// Copies the database `from` is open on (in its read transaction, if it
/// has one) to the new file `dst`.
fn copy_from(from: &Connection, src: &Path, dst: &Path) -> anyhow::Result<()> {
    let mut to = Connection::open(dst).with_context(|| format!("creating {}", dst.display()))?;
    {
        // All pages in one step: one read transaction, so a write of the
        // owner meanwhile neither restarts nor tears the copy.
        let backup = Backup::new(from, &mut to)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            match backup
                .step(-1)
                .with_context(|| format!("copying {}", src.display()))?
            {
                StepResult::Done => break,
                // Not with every page in one step; kept for completeness.
                StepResult::More => {}
                StepResult::Busy | StepResult::Locked if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => anyhow::bail!("copying {}: {other:?}", src.display()),
            }
        }
    }
    // The copy as one file (no -wal beside it), checked.
    to.pragma_update(None, "journal_mode", "DELETE")?;
    let check: String = to.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    anyhow::ensure!(
        check == "ok",
        "the copy of {} fails its check: {check}",
        src.display()
    );
    drop(to);
    std::fs::File::open(dst)?.sync_all()?;
    Ok(())
}

/// Copies several databases (which an owner may be writing) as of one
/// moment: every file's write lock is taken (`BEGIN IMMEDIATE`: a commit in
/// progress finishes first, the next ones wait), a read transaction is
/// opened on each — their snapshots now agree — and the locks are let go
/// at once; the copies are then made from those snapshots while the owner
/// commits again. The owner waits only for that instant.
pub fn copy_live_together(srcs: &[&Path], dsts: &[&Path]) -> anyhow::Result<()> {
    anyhow::ensure!(srcs.len() == dsts.len(), "one target per source");
    for dst in dsts {
        anyhow::ensure!(!dst.exists(), "{} exists already", dst.display());
    }
    let open = |p: &Path, flags: OpenFlags| -> anyhow::Result<Connection> {
        let c = Connection::open_with_flags(p, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .with_context(|| format!("opening {}", p.display()))?;
        c.busy_timeout(Duration::from_secs(30))?;
        Ok(c)
    };
    // Each lock is waited for briefly; if one is not had soon, every lock
    // is let go and all are taken again (the owner's writers give up after
    // 10 s: holding one file's lock long while waiting for another's would
    // fail the owner's commits).
    let mut attempt = 0u32;
    let lockers = loop {
        attempt += 1;
        let mut held = Vec::new();
        let mut busy = None;
        for src in srcs {
            let c = open(src, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
            c.busy_timeout(Duration::from_millis(500))?;
            match c.execute_batch("BEGIN IMMEDIATE") {
                Ok(()) => held.push(c),
                Err(e) => {
                    busy = Some((src, e));
                    break;
                }
            }
        }
        match busy {
            None => break held,
            Some((src, e)) if attempt >= 40 => {
                return Err(e).with_context(|| format!("holding the commits of {}", src.display()));
            }
            Some(_) => {
                for c in held {
                    let _ = c.execute_batch("ROLLBACK");
                }
                std::thread::sleep(Duration::from_millis(100 * u64::from(attempt.min(10))));
            }
        }
    };
    let mut readers = Vec::new();
    for src in srcs {
        let c = open(src, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        c.execute_batch("BEGIN")?;
        // A read transaction starts at its first read: its snapshot.
        c.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
            r.get::<_, i64>(0)
        })?;
        readers.push(c);
    }
    for c in lockers {
        c.execute_batch("ROLLBACK")?;
    }
    for ((from, src), dst) in readers.iter().zip(srcs).zip(dsts) {
        copy_from(from, src, dst)?;
    }
    Ok(())
}

/// Syncs a folder, so the names just written or renamed in it survive a
/// crash.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_is_a_committed_state_while_the_writer_goes_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("live.db");
        let writer = Connection::open(&src).expect("open");
        writer
            .execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t (n INTEGER);")
            .expect("schema");
        for n in 0..100 {
            writer
                .execute("INSERT INTO t VALUES (?1)", [n])
                .expect("insert");
        }
        // A transaction open (uncommitted) in the writer is not in the copy.
        writer
            .execute_batch("BEGIN; INSERT INTO t VALUES (1000);")
            .expect("begin");
        let dst = dir.path().join("copy.db");
        copy_live(&src, &dst).expect("copied");
        writer.execute_batch("COMMIT").expect("commit");
        let copy = Connection::open(&dst).expect("open copy");
        let count: i64 = copy
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .expect("count");
        assert_eq!(count, 100);
        assert!(copy_live(&src, &dst).is_err(), "never overwrites");
    }

    #[test]
    fn files_copied_together_are_of_one_moment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
        let writers: Vec<Connection> = [&a, &b]
            .iter()
            .map(|p| {
                let c = Connection::open(p).expect("open");
                c.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t (n INTEGER);")
                    .expect("schema");
                c
            })
            .collect();
        for w in &writers {
            w.execute("INSERT INTO t VALUES (1)", []).expect("insert");
        }
        // A writer that commits to both files as fast as it can while the
        // copies are made: each copy must hold as many rows as the other.
        let (a2, b2) = (a.clone(), b.clone());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let busy = std::thread::spawn(move || {
            let (wa, wb) = (
                Connection::open(&a2).expect("a"),
                Connection::open(&b2).expect("b"),
            );
            for c in [&wa, &wb] {
                c.busy_timeout(Duration::from_secs(30)).expect("timeout");
            }
            let mut n = 1;
            while !stopped.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                // Both files change in one step of the writer: a, then b.
                wa.execute("INSERT INTO t VALUES (?1)", [n]).expect("a");
                wb.execute("INSERT INTO t VALUES (?1)", [n]).expect("b");
            }
        });
        std::thread::sleep(Duration::from_millis(50));
        let (ca, cb) = (dir.path().join("ca.db"), dir.path().join("cb.db"));
        copy_live_together(&[&a, &b], &[&ca, &cb]).expect("copied");
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        busy.join().expect("writer");
        let count = |p: &Path| -> i64 {
            Connection::open(p)
                .expect("open")
                .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                .expect("count")
        };
        let (na, nb) = (count(&ca), count(&cb));
        // b is written after a: at any moment a holds as many rows as b, or
        // one more; never fewer, never two more.
        assert!(na == nb || na == nb + 1, "a {na}, b {nb}");
        assert!(na > 1, "the copies were made while the writer ran");
        drop(writers);
    }
}
