//! Fencing by epochs, over the real RabbitMQ and real `hearty serve`
//! processes: a hung owner is replaced while it hangs (no host lock to wait
//! for) and changes nothing when it wakes; a lease deleted under a live
//! owner fences it at once; a hung pay owner costs the other partitions
//! nothing; a process restarted with fewer partitions drives only those;
//! claims are all or nothing; one process per database.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::management::delete_queue;
use common::{Cluster, Service};
use serde_json::{Value, json};

/// Sends `signal` (`STOP`, `CONT`) to process `pid`.
fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// Resumes a process stopped with SIGSTOP however the test ends, so that
/// nothing of the test is left hanging.
struct Stopped(u32);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

/// Places `n` orders of one cake (each answered 201): their ids.
fn place(c: &Cluster, api: &Service, n: usize) -> Vec<i64> {
    (0..n)
        .map(|_| {
            let (s, v, _) = c.order(api, 1);
            assert_eq!(s, 201, "{v}");
            v["id"].as_i64().expect("id")
        })
        .collect()
}

/// The delivery team picks order `id` up and delivers it (each report
/// asked again while the saga cannot take it yet), and the saga completes.
fn deliver(c: &Cluster, api: &Service, id: i64) {
    for step in ["pickedUp", "delivered"] {
        c.wait(&format!("order {id} to take `{step}`"), || {
            let (s, v, _) = c.post(api, &format!("/deliveries/{id}/{step}"), json!({}));
            assert!(s == 202 || s == 409, "{step} of {id}: {s} {v}");
            s == 202
        });
    }
    c.wait_state(api, id, "Completed");
}

/// Every payment record by order id.
fn payments_by_order(c: &Cluster, api: &Service) -> HashMap<i64, Vec<Value>> {
    let mut by: HashMap<i64, Vec<Value>> = HashMap::new();
    for p in c
        .get(api, "/pays?limit=100000")
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        by.entry(p["orderId"].as_i64().expect("orderId"))
            .or_default()
            .push(p);
    }
    by
}

/// Each order was paid once and completed, and the stock went down by
/// exactly one cake per order.
fn assert_each_completed_once(c: &Cluster, api: &Service, ids: &[i64], stock_before: i64) {
    for id in ids {
        c.wait_state(api, *id, "Completed");
    }
    let pays = payments_by_order(c, api);
    for id in ids {
        let records = pays.get(id).cloned().unwrap_or_default();
        assert_eq!(
            records.len(),
            1,
            "order {id}: one payment record: {records:?}"
        );
        assert_eq!(
            records[0]["status"], "Approved",
            "order {id}: paid and not refunded: {records:?}"
        );
    }
    assert_eq!(
        c.stock(api),
        stock_before - ids.len() as i64,
        "one cake per order"
    );
}

#[test]
fn a_hung_owner_is_replaced_while_it_hangs_and_changes_nothing_when_it_wakes() {
    let Some(c) = Cluster::new() else { return };
    let api = c.start("api", &[]);
    // Orders wait at the delivery (manual), in the orchestrator's hands.
    let workers = [("HEARTY_DELIVERY_MODE", "manual")];
    let _workers = c.start("pay,kitchen,delivery,coupon", &workers);
    let mut owner = c.start("orchestrator", &[]);
    // A standby on the same folder (the same host, or the folder's volume
    // moved): it waits for the leases, not for a lock the owner holds.
    let mut standby = c.spawn("orchestrator", &[]);
    c.seed(&api, 1000);
    let stock_before = c.stock(&api);
    let waiting = place(&c, &api, 3);
    for id in &waiting {
        c.wait("the order to wait for its delivery", || {
            c.status_of(&api, "deliveries", *id).is_some()
        });
    }
    assert!(
        standby.try_listening().is_none(),
        "a standby while the owner answers"
    );

    // The owner hangs (SIGSTOP: its sockets stay open, it sends no
    // heartbeat). The broker drops its connection and leases; the standby
    // takes the partitions over while the owner still hangs.
    signal(owner.pid(), "STOP");
    let stopped = Stopped(owner.pid());
    let hung_at = Instant::now();
    let deadline = hung_at + Duration::from_secs(90);
    let addr = loop {
        if let Some(addr) = standby.try_listening() {
            break addr;
        }
        assert!(
            Instant::now() < deadline,
            "the standby never took over from the hung owner"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!(
        "fencing: the standby serves {:?} after the owner hung (HEARTY's target: 10 s)",
        hung_at.elapsed()
    );
    let _new_owner = standby.into_service(addr);
    // The new owner recovered the waiting sagas and drives them.
    for id in &waiting {
        deliver(&c, &api, *id);
    }
    let more = place(&c, &api, 2);
    for id in &more {
        deliver(&c, &api, *id);
    }

    // The old owner wakes: whatever it does (its timers fire, it finds its
    // connection gone) it must not act; it stops by itself.
    drop(stopped);
    let status = owner
        .exited(Duration::from_secs(60))
        .expect("the woken owner stops by itself");
    assert!(!status.success(), "a fenced stop is a failure: {status}");
    let all: Vec<i64> = waiting.iter().chain(&more).copied().collect();
    assert_each_completed_once(&c, &api, &all, stock_before);
    for id in &all {
        let saga = c.saga(&api, *id);
        assert_eq!(saga["state"], "Completed", "{saga}");
    }
}

#[test]
fn a_lease_deleted_under_a_live_owner_fences_it_at_once() {
    let Some(c) = Cluster::new() else { return };
    let api = c.start("api,orchestrator", &[]);
    let _others = c.start("kitchen,delivery,coupon", &[]);
    let mut first = c.start("pay", &[]);
    let standby = c.spawn("pay", &[]);
    c.seed(&api, 100);
    let stock_before = c.stock(&api);
    let before = place(&c, &api, 2);
    for id in &before {
        c.wait_state(&api, *id, "Completed");
    }
    // An operator deletes the owner's lease of pay p0 while it is
    // connected: the standby can declare it at once, so the owner must stop
    // acting at once, not at its next reconnection.
    assert!(
        delete_queue(&format!("{}.pay.p0.owner", c.namespace)),
        "rabbitmqctl deleted the lease"
    );
    let status = first
        .exited(Duration::from_secs(30))
        .expect("the owner whose lease was deleted stops by itself");
    assert!(!status.success(), "a fenced stop is a failure: {status}");
    let second = standby
        .listening(Duration::from_secs(60))
        .expect("the standby takes over");
    let after = place(&c, &api, 3);
    let all: Vec<i64> = before.iter().chain(&after).copied().collect();
    assert_each_completed_once(&c, &api, &all, stock_before);
    assert_eq!(
        c.metric(&second, "hearty_worker_commands_total"),
        3.0,
        "the new owner paid the orders placed after the takeover, and only those"
    );
}

/// The order saga with a tight payment timeout, one attempt, and a breaker
/// that opens after three timeouts in a row and stays open long.
fn impatient_saga(c: &Cluster) -> String {
    let text = std::fs::read_to_string("sagas/order_fulfilment.toml").expect("saga file");
    let text = text
        .replacen(
            "timeout = \"5s\"\ncompensation_blocks = true\nretry = { max_attempts = 3,",
            "timeout = \"400ms\"\ncompensation_blocks = true\nretry = { max_attempts = 1,",
            1,
        )
        .replacen(
            "circuit_breaker = { consecutive_failures = 5, failure_ratio = 0.5, window = 20, min_calls = 10, cool_down = \"5s\" }",
            "circuit_breaker = { consecutive_failures = 2, failure_ratio = 0.9, window = 20, min_calls = 10, cool_down = \"120s\" }",
            1,
        );
    assert!(
        text.contains("400ms") && text.contains("120s"),
        "the saga file changed shape"
    );
    let path = c.dir.path().join("impatient.toml");
    std::fs::write(&path, text).expect("write");
    path.to_string_lossy().into_owned()
}

#[test]
fn a_hung_pay_owner_costs_the_other_partitions_nothing() {
    let Some(c) = Cluster::new() else { return };
    let saga = impatient_saga(&c);
    let api = c.start("api,orchestrator", &[("HEARTY_SAGA_FILE", &saga)]);
    let _others = c.start("kitchen,delivery,coupon", &[]);
    let low = c.start("pay", &[("HEARTY_PARTITIONS", "0-3")]);
    let _high = c.start("pay", &[("HEARTY_PARTITIONS", "4-7")]);
    c.seed(&api, 1000);
    // The owner of pay 0-3 hangs.
    signal(low.pid(), "STOP");
    let _stopped = Stopped(low.pid());
    let partition = |id: i64| id.rem_euclid(8);
    let mut turned_away = Vec::new();
    let mut placed_high = 0;
    let mut circuit_open = 0;
    for _ in 0..40 {
        let (s, v, _) = c.order(&api, 1);
        match s {
            201 => {
                let id = v["id"].as_i64().expect("id");
                assert!(partition(id) >= 4, "paid by the hung owner? {v}");
                placed_high += 1;
            }
            503 if v["error"] == "circuit_open" => circuit_open += 1,
            503 => {
                let id = v["orderId"]
                    .as_i64()
                    .expect("a turned-away order names itself");
                assert!(partition(id) < 4, "turned away in a served partition: {v}");
                // The payment command had left: the order may have been
                // charged, and the answer must not say otherwise.
                let message = v["detail"].as_str().unwrap_or_default();
                assert!(
                    !message.contains("nothing was established") && message.contains("refunded"),
                    "{v}"
                );
                turned_away.push(id);
            }
            _ => panic!("unexpected answer {s}: {v}"),
        }
        if placed_high >= 8 && turned_away.len() >= 8 {
            break;
        }
    }
    assert_eq!(circuit_open, 0, "partitions 4-7 never turned an order away");
    assert!(
        turned_away.len() >= 8,
        "each of 0-3 timed out twice before its breaker opened: {turned_away:?}"
    );
    // With every breaker of 0-3 open, the next orders all go to 4-7.
    let next = place(&c, &api, 6);
    assert!(next.iter().all(|id| partition(*id) >= 4), "{next:?}");
    for p in 0..8 {
        let state = c.metric(
            &api,
            &format!("hearty_circuit_breaker_partition_state{{partition=\"{p}\",step=\"pay\"}}"),
        );
        assert_eq!(state, if p < 4 { 1.0 } else { 0.0 }, "partition {p}");
    }
}

#[test]
fn a_restart_with_fewer_partitions_drives_only_those() {
    let Some(c) = Cluster::new() else { return };
    let api = c.start("api", &[]);
    let _workers = c.start(
        "pay,kitchen,delivery,coupon",
        &[("HEARTY_DELIVERY_MODE", "manual")],
    );
    let folder = c.data_dir_of("orchestrator", &[]);
    let folder = folder.to_str().expect("utf-8 path").to_owned();
    let all = c.start("orchestrator", &[("HEARTY_DATA_DIR", &folder)]);
    c.seed(&api, 1000);
    let ids = place(&c, &api, 16);
    for id in &ids {
        c.wait("the order to wait for its delivery", || {
            c.status_of(&api, "deliveries", *id).is_some()
        });
    }
    all.terminate();
    // The same folder with half of its partitions.
    let low = [
        ("HEARTY_DATA_DIR", folder.as_str()),
        ("HEARTY_PARTITIONS", "0-3"),
    ];
    let half = c.start("orchestrator", &low);
    let (mine, theirs): (Vec<i64>, Vec<i64>) = ids.iter().partition(|id| id.rem_euclid(8) < 4);
    assert!(!mine.is_empty() && !theirs.is_empty(), "{ids:?}");
    assert_eq!(
        c.metric(&half, "hearty_sagas_in_flight"),
        mine.len() as f64,
        "recovered the sagas of its partitions only"
    );
    for id in &mine {
        deliver(&c, &api, *id);
    }
    // Another partition set on the same folder is refused (one process per
    // database), naming the owner and its partitions.
    let high = [
        ("HEARTY_DATA_DIR", folder.as_str()),
        ("HEARTY_PARTITIONS", "4-7"),
    ];
    let (status, err) = c.refused("orchestrator", &high);
    assert!(!status.success());
    assert!(
        err.contains("orchestrator.db is owned by another running process")
            && err.contains("for partitions 0,1,2,3"),
        "{err}"
    );
    // Started again with all of them, the folder drives the rest.
    half.terminate();
    let _all = c.start("orchestrator", &[("HEARTY_DATA_DIR", &folder)]);
    for id in &theirs {
        deliver(&c, &api, *id);
    }
}

#[test]
fn racing_claims_bind_all_or_nothing_and_roles_share_a_folder() {
    let Some(c) = Cluster::new() else { return };
    let folder = |name: &str| c.dir.path().join(name).to_string_lossy().into_owned();
    let (x, y, z) = (folder("x"), folder("y"), folder("z"));
    // Two folders claim overlapping sets at the same moment.
    let mut a = c.spawn(
        "pay",
        &[("HEARTY_DATA_DIR", &x), ("HEARTY_PARTITIONS", "0-5")],
    );
    let mut b = c.spawn(
        "pay",
        &[("HEARTY_DATA_DIR", &y), ("HEARTY_PARTITIONS", "2-7")],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let (winner, free) = loop {
        if a.try_listening().is_some() {
            break ("x", "6-7");
        }
        if b.try_listening().is_some() {
            break ("y", "0-1");
        }
        assert!(Instant::now() < deadline, "neither claim won");
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("fencing: folder {winner} won the race");
    // The loser refused to start, and bound none of its partitions: the
    // ones only it named are free for a third folder.
    let loser = if winner == "x" { &mut b } else { &mut a };
    let deadline = Instant::now() + Duration::from_secs(60);
    while loser.is_running() {
        assert!(Instant::now() < deadline, "the losing claim did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _third = c.start(
        "pay",
        &[("HEARTY_DATA_DIR", &z), ("HEARTY_PARTITIONS", free)],
    );
    // Two roles on one folder: each has its own database and claims.
    let kitchen = c.start(
        "kitchen",
        &[("HEARTY_DATA_DIR", &z), ("HEARTY_PARTITIONS", free)],
    );
    let ready = c.get(&kitchen, "/health/ready");
    assert_eq!(ready["status"], "ready", "{ready}");
}

#[test]
fn a_replaced_owners_late_command_is_dead_lettered_with_the_reason() {
    let Some(c) = Cluster::new() else { return };
    let api = c.start("api,orchestrator", &[]);
    let _workers = c.start("pay,kitchen,delivery,coupon", &[]);
    c.seed(&api, 100);
    // The epoch the owner of orchestrator p1 recorded in its database.
    let db = c
        .data_dir_of("api,orchestrator", &[])
        .join("orchestrator.db");
    let (registry, position): (i64, i64) = rusqlite::Connection::open(&db)
        .expect("orchestrator.db")
        .query_row(
            "SELECT registry, epoch FROM fence WHERE partition = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("the owner's epoch");
    // A successor of that owner (a later epoch of the same registry)
    // publishes to pay p1 (a report for an order that does not exist, so
    // it changes nothing).
    let successor = hearty::partition::Epoch::new(registry, position + 1_000);
    let report = hearty::messages::WorkerCommand::Progress {
        step: "pay".into(),
        order_id: hearty::domain::OrderId::new(9).expect("id"),
        progress: hearty::messages::Progress::PickedUp,
    };
    c.publish_at_epoch(
        hearty::transport::Outgoing {
            message_id: report.message_id(),
            correlation_id: "9".into(),
            message_type: "pay.pickedUp".into(),
            route: hearty::transport::Route::Command(hearty::domain::WorkerKind::Pay, 9),
            body: serde_json::to_vec(&report).expect("json"),
        },
        Some(successor),
    );
    // Order 1 is in p1 too: its payment command, published by the replaced
    // owner after its successor's reached the queue, is a late copy: it is
    // dead-lettered with the reason, never applied.
    let (s, v, _) = c.order(&api, 1);
    assert_eq!(
        v["id"].as_i64().or(v["orderId"].as_i64()),
        Some(1),
        "{s} {v}"
    );
    let mut letter = None;
    c.wait("the late command in the dead-letter queue", || {
        letter = c.dead_letter();
        letter.is_some()
    });
    let (id, reason) = letter.expect("a dead letter");
    assert_eq!(id, "order-1.pay.do");
    assert!(
        reason.contains("stale epoch") && reason.contains(&successor.to_string()),
        "{reason}"
    );
    let pays = payments_by_order(&c, &api);
    assert!(!pays.contains_key(&1), "nothing was charged: {pays:?}");
}

#[test]
fn an_owners_messages_queued_before_its_restart_are_applied() {
    let Some(c) = Cluster::new() else { return };
    let api = c.start("api", &[]);
    let folder = c.data_dir_of("orchestrator,pay,delivery,coupon", &[]);
    let folder = folder.to_str().expect("utf-8 path").to_owned();
    let owner_env = [("HEARTY_DATA_DIR", folder.as_str())];
    let owner = c.start("orchestrator,pay,delivery,coupon", &owner_env);
    // A slow kitchen taking one command at a time: commands wait in its
    // queues while the orchestrator restarts (and gets a new epoch).
    let _kitchen = c.start(
        "kitchen",
        &[
            ("HEARTY_PREFETCH", "1"),
            ("HEARTY_KITCHEN_LATENCY", "700ms"),
        ],
    );
    c.seed(&api, 100);
    let (s, v, _) = c.post(
        &api,
        "/foodCatalogs",
        json!({"name": "bread", "stock": "100", "price": "2.0"}),
    );
    assert_eq!(s, 201, "{v}");
    let order_of = |food: &str| {
        let (s, v, _) = c.post(
            &api,
            "/orders",
            json!({"qty": "1", "foodcaltalogid": food, "customerid": "1"}),
        );
        assert_eq!(s, 201, "{v}");
        v["id"].as_i64().expect("id")
    };
    // Cakes (the kitchen's partition of food 1), then a restart, then
    // bread (partition 2): the new epoch's commands reach the kitchen
    // through another queue before the old epoch's cakes are cooked.
    let mut ids: Vec<i64> = (0..6).map(|_| order_of("1")).collect();
    owner.terminate();
    let _owner = c.start("orchestrator,pay,delivery,coupon", &owner_env);
    ids.extend((0..3).map(|_| order_of("2")));
    for id in &ids {
        let saga = c.wait_state(&api, *id, "Completed");
        let history = saga["history"].to_string();
        assert!(
            !history.contains("timed out"),
            "order {id} waited for a timeout: {saga}"
        );
    }
    assert_eq!(c.dead_letter(), None, "no legitimate command was refused");
}

#[test]
fn a_folder_outlives_the_registry_that_fenced_it() {
    let Some(c) = Cluster::new() else { return };
    let first = c.start("all", &[]);
    c.seed(&first, 100);
    let before = place(&c, &first, 2);
    for id in &before {
        c.wait_state(&first, *id, "Completed");
    }
    first.terminate();
    // The registry is lost (deleted; or the folder started under a new
    // namespace): positions, and so epochs, start over.
    assert!(
        delete_queue(&format!("{}.registry", c.namespace)),
        "rabbitmqctl deleted the registry"
    );
    let again = c.start("all", &[]);
    let after = place(&c, &again, 2);
    for id in before.iter().chain(&after) {
        c.wait_state(&again, *id, "Completed");
    }
}
