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
    let mut to = Connection::open(dst).with_context(|| format!("creating {}", dst.display()))?;
    {
        // All pages in one step: one read transaction, so a write of the
        // owner meanwhile neither restarts nor tears the copy.
        let backup = Backup::new(&from, &mut to)?;
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
}
