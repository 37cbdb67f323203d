//! A bounded event log over the real RabbitMQ: retention deletes the log's
//! head while orders keep arriving, read-model replicas write snapshots to
//! a shared folder, and a new replica starts from the latest snapshot and
//! the log's tail — with the same read models as the replica that saw it
//! all. Without a snapshot a new replica refuses to start, naming why.

mod common;

use std::time::Duration;

use common::{Cluster, Service};
use hearty::transport::amqp::Retention;
use hearty::views::snapshot::Snapshots;
use serde_json::Value;

/// Small enough that a few dozen orders roll the log's segments over.
const LOG: Retention = Retention {
    max_age: None,
    max_bytes: 48 << 10,
    segment_bytes: 8 << 10,
};

fn log_env() -> Vec<(&'static str, String)> {
    vec![
        ("HEARTY_LOG_MAX_BYTES", (LOG.max_bytes).to_string()),
        ("HEARTY_LOG_SEGMENT_BYTES", (LOG.segment_bytes).to_string()),
        ("HEARTY_SNAPSHOT_EVERY", "1s".to_owned()),
    ]
}

fn env<'a>(pairs: &'a [(&'static str, String)]) -> Vec<(&'a str, &'a str)> {
    pairs.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Every order the manager sees in `api`'s "my orders" read model: what
/// each part of it is (not when this replica applied it).
fn my_orders(c: &Cluster, api: &Service) -> Vec<Value> {
    let mut rows: Vec<Value> = c
        .get(api, "/myOrders?limit=100000")
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            serde_json::json!([
                r["orderId"],
                r["status"],
                r["sagaState"],
                r["payStatus"],
                r["kitchenStatus"],
                r["deliveryStatus"],
                r["couponStatus"]
            ])
        })
        .collect();
    rows.sort_by_key(|r| r[0].as_i64());
    rows
}

fn completed(rows: &[Value], id: i64) -> bool {
    rows.iter()
        .any(|r| r[0] == id && r[2] == "Completed" && r[6] == "Issued")
}

fn ready(c: &Cluster, api: &Service) {
    c.wait("the replica to be ready", || {
        c.request(
            reqwest::Method::GET,
            format!("{}/health/ready", api.base),
            None,
        )
        .0 == 200
    });
}

#[test]
fn a_new_replica_starts_from_a_snapshot_once_retention_dropped_the_log_head() {
    let Some(c) = Cluster::with_log_retention(LOG) else {
        return;
    };
    let shared = c.dir.path().join("snapshots");
    let mut with_snapshots = log_env();
    with_snapshots.push(("HEARTY_SNAPSHOT_DIR", shared.to_string_lossy().into_owned()));
    let owners = c.start("orchestrator,pay,kitchen,delivery,coupon", &env(&log_env()));
    let api = c.start("api", &env(&with_snapshots));
    c.seed(&api, 100_000);

    // Orders until retention has deleted the log's first segments.
    let mut placed = Vec::new();
    while c.log_head().unwrap_or(0) == 0 {
        assert!(placed.len() < 600, "the log's head never moved");
        for _ in 0..10 {
            let (s, v, _) = c.order(&api, 1);
            assert_eq!(s, 201, "{v}");
            placed.push(v["id"].as_i64().expect("id"));
        }
        for id in &placed[placed.len() - 10..] {
            c.wait_state(&api, *id, "Completed");
        }
    }
    let head = c.log_head().expect("a head");
    let last = *placed.last().expect("orders");
    c.wait(
        "the first replica's read model to show the last order",
        || completed(&my_orders(&c, &api), last),
    );
    // A snapshot that reaches the log's retained part.
    let snapshots = Snapshots::new(&shared, &c.namespace);
    c.wait("a snapshot past the log's head", || {
        snapshots
            .latest()
            .is_some_and(|s| s.manifest.position() >= head)
    });

    // A new replica without snapshots cannot have the deleted events: it
    // refuses to start and says so.
    let bare = c.dir.path().join("bare-replica");
    let bare_dir = bare.to_string_lossy().into_owned();
    let mut no_snapshots = log_env();
    no_snapshots.push(("HEARTY_DATA_DIR", bare_dir));
    let (status, stderr) = c.refused("api", &env(&no_snapshots));
    assert!(!status.success());
    assert!(
        stderr.contains("the event log now starts at offset"),
        "{stderr}"
    );

    // A new replica with the shared folder restores the latest snapshot,
    // reads the tail and shows exactly what the first replica shows.
    let fresh = c.dir.path().join("fresh-replica");
    let mut fresh_env = with_snapshots.clone();
    fresh_env.push(("HEARTY_DATA_DIR", fresh.to_string_lossy().into_owned()));
    let replica = c.start("api", &env(&fresh_env));
    ready(&c, &replica);
    let rows = my_orders(&c, &replica);
    assert_eq!(rows, my_orders(&c, &api));
    for id in &placed {
        assert!(
            completed(&rows, *id),
            "order {id} is not complete in the restored replica"
        );
    }

    // And it goes on from the tail: an order placed now reaches it.
    let (s, v, _) = c.order(&replica, 1);
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_i64().expect("id");
    c.wait_state(&replica, id, "Completed");
    c.wait("the restored replica to show the new order", || {
        completed(&my_orders(&c, &replica), id)
    });

    // The log is lost (deleted, declared again by the restarted owners):
    // the snapshots of the old log stand at larger positions than anything
    // the new one holds. A new replica passes them over and reads the new
    // log from its beginning (it does not skip the new log's first entries
    // as "already applied").
    drop(owners);
    assert!(
        common::management::delete_queue(&format!("{}.events.log", c.namespace)),
        "the log deleted"
    );
    let _owners = c.start("orchestrator,pay,kitchen,delivery,coupon", &env(&log_env()));
    let (s, v, _) = c.order(&replica, 1);
    assert_eq!(s, 201, "{v}");
    let after_loss = v["id"].as_i64().expect("id");
    c.wait_state(&replica, after_loss, "Completed");
    let newest = c.dir.path().join("after-log-loss");
    let mut newest_env = with_snapshots.clone();
    newest_env.push(("HEARTY_DATA_DIR", newest.to_string_lossy().into_owned()));
    let late = c.start("api", &env(&newest_env));
    ready(&c, &late);
    c.wait("the new replica to show the order of the new log", || {
        completed(&my_orders(&c, &late), after_loss)
    });
    std::thread::sleep(Duration::from_millis(10));
}
