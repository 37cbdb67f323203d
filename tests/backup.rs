//! `hearty backup` of a live owner and `hearty restore` into a new folder,
//! end to end on the real broker: the backup is taken while the owner
//! serves; the owner is killed; its backup restored into a new folder comes
//! back as the owner of the same partitions (same home, a newer epoch);
//! what the backup holds is intact and consistent, what came after it is
//! re-driven from the event log under its own ids (a cancelled order
//! cancelled again), and no id it may have given out is given again.

mod common;

use std::path::Path;
use std::process::Command;

use common::Cluster;

fn hearty(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_hearty"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run hearty");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "hearty {args:?}: {text}");
    text
}

/// The epoch each partition of a database carries (its fence rows).
fn epochs(db: &Path) -> Vec<(i64, i64)> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open");
    let mut stmt = c
        .prepare("SELECT partition, epoch FROM fence ORDER BY partition")
        .expect("fence");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("epochs")
}

#[test]
fn a_live_owner_is_backed_up_and_restored_into_a_new_folder() {
    let Some(c) = Cluster::new() else { return };
    let folder = |name: &str| c.dir.path().join(name);
    let (live, backup, restored) = (folder("owner"), folder("backup"), folder("restored"));
    let roles = "orchestrator,pay,kitchen,delivery,coupon";
    let live_dir = live.to_string_lossy().into_owned();
    let owner = c.start(roles, &[("HEARTY_DATA_DIR", &live_dir)]);
    let api = c.start("api", &[]);
    c.seed(&api, 100);

    let place = |n: usize| -> Vec<i64> {
        let ids: Vec<i64> = (0..n)
            .map(|_| {
                let (s, v, _) = c.order(&api, 1);
                assert_eq!(s, 201, "{v}");
                v["id"].as_i64().expect("id")
            })
            .collect();
        for id in &ids {
            c.wait_state(&api, *id, "Completed");
        }
        ids
    };
    let before = place(5);

    // While the owner serves: an order in flight, and two clients ordering
    // back to back through the backup.
    let (s, v, _) = c.order(&api, 1);
    assert_eq!(s, 201, "{v}");
    let in_flight = v["id"].as_i64().expect("id");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (base, stop) = (api.base.clone(), stop.clone());
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::new();
                let mut placed = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let res = http
                        .post(format!("{base}/orders"))
                        .bearer_auth(common::token())
                        .json(&serde_json::json!({"qty": "1", "foodcaltalogid": "1", "customerid": "1"}))
                        .send();
                    if res.is_ok_and(|r| r.status() == 201) {
                        placed += 1;
                    }
                }
                placed
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let said = hearty(&[
        "backup",
        "--data-dir",
        &live.to_string_lossy(),
        "--to",
        &backup.to_string_lossy(),
    ]);
    assert!(said.contains("orchestrator.db"), "{said}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let during: i64 = clients.into_iter().map(|t| t.join().expect("client")).sum();
    assert!(during > 0, "orders were placed while the backup was taken");
    let backed_up_epochs = epochs(&backup.join("orchestrator.db"));
    assert!(!backed_up_epochs.is_empty(), "the backup keeps the epochs");
    c.wait_state(&api, in_flight, "Completed");
    let after = place(3);
    // One more, and one the backup holds, cancelled by the manager after
    // the backup.
    let cancelled = place(1)[0];
    let cancelled_kept = before[0];
    for id in [cancelled, cancelled_kept] {
        let (s, v, _) = c.request(
            reqwest::Method::DELETE,
            format!("{}/kitchens/{id}", api.base),
            None,
        );
        assert_eq!(s, 202, "{v}");
        c.wait_state(&api, id, "Compensated");
    }

    // The owner and its folder are lost.
    owner.kill();
    hearty(&[
        "restore",
        "--from",
        &backup.to_string_lossy(),
        "--data-dir",
        &restored.to_string_lossy(),
    ]);
    assert_eq!(
        std::fs::read_to_string(restored.join("home")).expect("home"),
        std::fs::read_to_string(live.join("home"))
            .expect("home")
            .trim(),
        "the restored folder is the same home: the registry gives it the partitions"
    );
    let restored_dir = restored.to_string_lossy().into_owned();
    let _owner = c.start(roles, &[("HEARTY_DATA_DIR", &restored_dir)]);

    // A newer epoch than the backup's: the lost owner (were it alive) is fenced.
    let now = epochs(&restored.join("orchestrator.db"));
    for ((p, old), (q, new)) in backed_up_epochs.iter().zip(&now) {
        assert_eq!(p, q);
        assert!(new > old, "partition {p}: epoch {new} after {old}");
    }
    // What the backup holds is there and finished (the order that was in
    // flight while it was taken too: its saga drove what its workers miss).
    for id in before.iter().skip(1).chain([&in_flight]) {
        c.wait_state(&api, *id, "Completed");
    }
    // What came after the backup is re-driven from the event log, under
    // its own ids: the orders complete again, the cancelled one is
    // cancelled again.
    for id in &after {
        c.wait_state(&api, *id, "Completed");
    }
    for id in [cancelled, cancelled_kept] {
        let saga = c.wait_state(&api, id, "Compensated");
        assert_eq!(saga["orderStatus"], "Cancelled", "{saga}");
    }
    // ... and its ids are never given again.
    let (s, v, _) = c.order(&api, 1);
    assert_eq!(s, 201, "{v}");
    let fresh = v["id"].as_i64().expect("id");
    c.wait_state(&api, fresh, "Completed");
    assert!(
        after.iter().all(|id| fresh > *id),
        "new id {fresh} after {after:?}"
    );
    // Every saga the backup holds completes (those taken mid-way too), and
    // the stock is what they took: the kitchen's records and the sagas are
    // of one moment.
    let sagas = c.get(&api, "/sagas?limit=1000");
    let ids: Vec<i64> = sagas
        .as_array()
        .expect("sagas")
        .iter()
        .filter_map(|s| s["id"].as_i64())
        .collect();
    let mut completed = 0;
    for id in &ids {
        if *id != cancelled && *id != cancelled_kept {
            c.wait_state(&api, *id, "Completed");
            completed += 1;
        }
    }
    let stock = c.get(&api, "/foodCatalogs/1")["stock"].as_i64();
    assert_eq!(stock, Some(100 - completed), "sagas {ids:?}");
    // The read models take what the restored owner says (its events'
    // versions are above everything published before the restore): the
    // catalog's view shows the real stock, "my orders" the cancellations.
    c.wait("the catalog view to show the restored stock", || {
        c.get(&api, "/foodCatalogViews")
            .as_array()
            .is_some_and(|v| v.iter().any(|f| f["stock"].as_i64() == stock))
    });
    c.wait("my orders to show the cancellations", || {
        let rows = c.get(&api, "/myOrders?limit=1000");
        [cancelled, cancelled_kept].iter().all(|id| {
            rows.as_array().is_some_and(|r| {
                r.iter()
                    .any(|o| o["orderId"] == *id && o["status"] == "Cancelled")
            })
        })
    });
    assert!(ids.contains(&cancelled) && after.iter().all(|id| ids.contains(id)));
}
