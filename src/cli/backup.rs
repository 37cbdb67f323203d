//! `hearty backup` and `hearty restore`: a consistent copy of a live
//! owner's folder, and a new folder made of one.
//!
//! **Backup** copies every database of the folder as of **one moment**
//! (`copy_live_together`: the owner's commits are held for the instant it
//! takes to open a read transaction on each file, then each is copied with
//! SQLite's online backup while the owner goes on), with the folder's
//! `home` (the identity the registry binds its partitions to) and a
//! manifest naming each file with its partitions' epochs. One moment for
//! all files: a saga and its workers' records agree in the backup as they
//! did in the folder (what was in flight between them is re-sent under the
//! same message ids, or is still queued on the broker).
//!
//! **Restore** makes a new folder of a backup (never over an existing
//! one): the files, the `home`, and an id floor in every table that gives
//! out ids, far above the largest in the backup — the owner may have given
//! out ids after the backup, which must never name another order. The
//! process started on the folder takes its partitions over with a new
//! epoch (a backup's epochs are always older).
//!
//! What happened after the backup is not in it: the restored owner
//! re-drives the orders from the event log (`orchestrator::redrive`);
//! customers and reviews created after it are gone (DEPLOYMENT.md,
//! *Backups*).

use std::path::Path;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::storage::copy::{copy_live, copy_live_together, sync_dir};

/// The databases of a folder, in the order a backup copies them.
const FILES: [&str; 8] = [
    "pay.db",
    "kitchen.db",
    "delivery.db",
    "coupon.db",
    "orchestrator.db",
    "views-my-orders.db",
    "views-catalog.db",
    "views-reviews.db",
];

/// The tables that give out ids (`storage::next_owned_id`).
const ID_TABLES: [&str; 4] = ["sagas", "customers", "reviews", "food_catalog"];

/// How far above the backup's largest id a restored folder starts: more
/// than an owner gives out between two backups (a day at 1,000 orders a
/// second is 86.4 million).
pub const DEFAULT_ID_GAP: i64 = 1_000_000_000;

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub taken_at: String,
    pub home: Option<String>,
    pub files: Vec<Copied>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Copied {
    pub name: String,
    pub bytes: u64,
    /// The fencing epoch of each partition the database holds:
    /// `(partition, "registry/position")`.
    pub epochs: Vec<(i64, String)>,
}

/// Copies the folder `data_dir` (an owner may be serving from it) into the
/// new folder `to`.
pub fn backup(data_dir: &Path, to: &Path) -> anyhow::Result<Manifest> {
    if to.exists() && std::fs::read_dir(to)?.next().is_some() {
        bail!(
            "{} is not empty: a backup goes to a new folder",
            to.display()
        );
    }
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    let sources: Vec<(&str, std::path::PathBuf)> = FILES
        .iter()
        .map(|name| (*name, data_dir.join(name)))
        .filter(|(_, p)| p.exists())
        .collect();
    if sources.is_empty() {
        bail!("{} holds no Hearty database", data_dir.display());
    }
    let paths: Vec<&Path> = sources.iter().map(|(_, p)| p.as_path()).collect();
    let copies: Vec<std::path::PathBuf> = sources.iter().map(|(n, _)| to.join(n)).collect();
    let targets: Vec<&Path> = copies.iter().map(std::path::PathBuf::as_path).collect();
    copy_live_together(&paths, &targets)?;
    let mut files = Vec::new();
    for (name, _) in &sources {
        let dst = to.join(name);
        files.push(Copied {
            name: (*name).to_owned(),
            bytes: std::fs::metadata(&dst)?.len(),
            epochs: epochs_in(&dst)?,
        });
    }
    let home = match std::fs::read_to_string(data_dir.join("home")) {
        Ok(h) => {
            std::fs::write(to.join("home"), h.trim())?;
            Some(h.trim().to_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).context("reading the folder's home"),
    };
    let manifest = Manifest {
        taken_at: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        home,
        files,
    };
    std::fs::write(
        to.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest)?,
    )?;
    std::fs::File::open(to.join("manifest.json"))?.sync_all()?;
    sync_dir(to);
    Ok(manifest)
}

/// Makes the new folder `data_dir` of the backup `from`, with every id
/// table's floor `gap` above its largest id.
pub fn restore(from: &Path, data_dir: &Path, gap: i64) -> anyhow::Result<Manifest> {
    let manifest: Manifest = serde_json::from_slice(
        &std::fs::read(from.join("manifest.json"))
            .with_context(|| format!("{} is no backup (no manifest.json)", from.display()))?,
    )
    .context("reading the backup's manifest")?;
    if data_dir.exists() && std::fs::read_dir(data_dir)?.next().is_some() {
        bail!(
            "{} is not empty: a restore makes a new folder (stop the owner, move its folder \
             aside, restore, start the owner on the restored folder)",
            data_dir.display()
        );
    }
    std::fs::create_dir_all(data_dir)?;
    for file in &manifest.files {
        let dst = data_dir.join(&file.name);
        copy_live(&from.join(&file.name), &dst)?;
        raise_id_floors(&dst, gap)?;
    }
    if manifest.files.iter().any(|f| f.name == "orchestrator.db") {
        // Its owner re-drives, before it recovers anything, the orders the
        // event log knows and the backup does not (`orchestrator::redrive`).
        std::fs::write(
            data_dir.join(crate::orchestrator::redrive::MARKER),
            &manifest.taken_at,
        )?;
    }
    if let Some(home) = &manifest.home {
        let path = data_dir.join("home");
        std::fs::write(&path, home)?;
        std::fs::File::open(&path)?.sync_all()?;
    }
    sync_dir(data_dir);
    Ok(manifest)
}

fn epochs_in(db: &Path) -> anyhow::Result<Vec<(i64, String)>> {
    let c = rusqlite::Connection::open(db)?;
    if !has_table(&c, "fence")? {
        return Ok(Vec::new());
    }
    let mut stmt = c.prepare("SELECT partition, registry, epoch FROM fence ORDER BY partition")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            format!("{}/{}", r.get::<_, i64>(1)?, r.get::<_, i64>(2)?),
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn has_table(c: &rusqlite::Connection, table: &str) -> rusqlite::Result<bool> {
    c.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
        [table],
        |r| r.get(0),
    )
}

/// How far a restore raises the versions of the events the folder emits:
/// above any version an entity reached (a food's version grows with every
/// order of it).
const EVENT_VERSION_GAP: i64 = 1_000_000_000_000;

fn raise_id_floors(db: &Path, gap: i64) -> anyhow::Result<()> {
    let c = rusqlite::Connection::open(db)?;
    c.execute_batch(crate::storage::ID_FLOOR_SCHEMA)?;
    let base = crate::storage::event_version_base(&c)?;
    c.execute(
        "INSERT INTO id_floor (tbl, floor) VALUES (?1, ?2)
         ON CONFLICT (tbl) DO UPDATE SET floor = excluded.floor",
        rusqlite::params![
            crate::storage::EVENT_VERSIONS,
            base.saturating_add(EVENT_VERSION_GAP)
        ],
    )?;
    for table in ID_TABLES {
        if !has_table(&c, table)? {
            continue;
        }
        // From the larger of the table's largest id and the floor the
        // backup already carries (a backup of a restored folder that gave
        // out ids above its floor before it was lost).
        let largest = crate::storage::highest_id(&c, table)?;
        c.execute(
            "INSERT INTO id_floor (tbl, floor) VALUES (?1, ?2)
             ON CONFLICT (tbl) DO UPDATE SET floor = max(floor, excluded.floor)",
            rusqlite::params![table, largest.saturating_add(gap)],
        )?;
    }
    Ok(())
}
