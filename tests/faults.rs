//! Fault isolation with real processes over the real RabbitMQ: workers killed
//! with SIGKILL and restarted, the coupon worker down during a cancellation,
//! two pay workers competing, a panicking handler, poison messages, and the
//! payment circuit breaker tripping and recovering.
//!
//! Each test runs `hearty serve` processes with its own namespace and data
//! directory. Waits are liveness bounds (generous, for a slow shared
//! machine), never performance assertions.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::Cluster;
use hearty::domain::WorkerKind;
use hearty::transport::{Outgoing, Route};

fn saga_file_with(dir: &Path, from: &str, to: &str) -> PathBuf {
    let text = include_str!("../sagas/order_fulfilment.toml");
    assert!(text.contains(from), "the saga file has no `{from}`");
    let path = dir.join("saga.toml");
    std::fs::write(&path, text.replacen(from, to, 1)).expect("write saga");
    path
}

#[test]
fn killed_workers_lose_and_double_nothing() {
    let Some(c) = Cluster::new() else { return };
    let api = c.start("api,orchestrator", &[]);
    let mut workers = Some(c.start(
        "pay,kitchen,delivery,coupon",
        &[("HEARTY_KITCHEN_LATENCY", "30ms")],
    ));
    c.seed(&api, 100);
    let mut placed = Vec::new();
    for i in 0..12 {
        if i == 4 {
            // Mid-stream: SIGKILL the workers with order 4's later steps in
            // flight, and bring them back while orders keep coming.
            workers.take().expect("running").kill();
            std::thread::sleep(Duration::from_millis(500));
            workers = Some(c.start(
                "pay,kitchen,delivery,coupon",
                &[("HEARTY_KITCHEN_LATENCY", "30ms")],
            ));
        }
        if i == 8 {
            // And once more, gracefully.
            workers.take().expect("running").terminate();
            workers = Some(c.start("pay,kitchen,delivery,coupon", &[]));
        }
        let (s, v, _) = c.order(&api, 1);
        assert_eq!(s, 201, "order {i}: {v}");
        placed.push(v["id"].as_i64().expect("id"));
    }
    for id in &placed {
        c.wait_state(&api, *id, "Completed");
    }
    let pays = c.get(&api, "/pays");
    assert_eq!(
        pays.as_array().map(Vec::len),
        Some(placed.len()),
        "one payment per order"
    );
    assert!(
        pays.as_array()
            .expect("pays")
            .iter()
            .all(|p| p["status"] == "Approved")
    );
    assert_eq!(
        c.get(&api, "/kitchens").as_array().map(Vec::len),
        Some(placed.len())
    );
    assert_eq!(
        c.get(&api, "/coupons").as_array().map(Vec::len),
        Some(placed.len())
    );
    assert_eq!(
        c.stock(&api),
        100 - placed.len() as i64,
        "stock taken exactly once per order"
    );
    drop(workers);
}

#[test]
fn cancellation_with_the_coupon_worker_down_completes_when_it_returns() {
    let Some(c) = Cluster::new() else { return };
    let api = c.start("api,orchestrator", &[]);
    let _others = c.start("pay,kitchen,delivery", &[]);
    let coupon = c.start("coupon", &[]);
    c.seed(&api, 100);
    let (s, v, _) = c.order(&api, 10);
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_i64().expect("id");
    c.wait_state(&api, id, "Completed");
    coupon.kill();

    let (s, v, _) = c.request(
        reqwest::Method::DELETE,
        format!("{}/kitchens/{id}", api.base),
        None,
    );
    assert_eq!(s, 202, "{v}");
    c.wait("the refund, ticket and delivery cancellations", || {
        c.status_of(&api, "pays", id).as_deref() == Some("Refunded")
            && c.status_of(&api, "kitchens", id).as_deref() == Some("Cancelled")
            && c.status_of(&api, "deliveries", id).as_deref() == Some("Cancelled")
    });
    assert_eq!(
        c.stock(&api),
        100,
        "stock returned while the coupon worker is down"
    );
    let saga = c.saga(&api, id);
    assert_eq!(
        saga["state"], "Compensating",
        "waiting for the coupon: {saga:#}"
    );
    // The coupons live with their owner only: while it is down they cannot
    // be read, and the API says so (no stale copy).
    let (s, v, retry) = c.request(
        reqwest::Method::GET,
        format!("{}/coupons?orderId={id}", api.base),
        None,
    );
    assert_eq!(
        (s, v["error"].as_str()),
        (503, Some("owner_unavailable")),
        "{v}"
    );
    assert!(retry.is_some(), "503 carries Retry-After");

    let _coupon = c.start("coupon", &[]);
    let saga = c.wait_state(&api, id, "Compensated");
    assert_eq!(saga["orderStatus"], "Cancelled");
    assert_eq!(
        c.status_of(&api, "coupons", id).as_deref(),
        Some("Cancelled")
    );
}

#[test]
fn two_pay_owners_split_the_partitions() {
    let Some(c) = Cluster::new() else { return };
    let api = c.start("api,orchestrator", &[]);
    let _others = c.start("kitchen,delivery,coupon", &[]);
    let slow = [("HEARTY_PAY_LATENCY", "20ms"), ("HEARTY_PREFETCH", "1")];
    let pay_a = c.start("pay", &[slow[0], slow[1], ("HEARTY_PARTITIONS", "0-3")]);
    let pay_b = c.start("pay", &[slow[0], slow[1], ("HEARTY_PARTITIONS", "4,5,6,7")]);
    c.seed(&api, 100);
    let placed: Vec<i64> = (0..16)
        .map(|_| {
            let (s, v, _) = c.order(&api, 1);
            assert_eq!(s, 201, "{v}");
            v["id"].as_i64().expect("id")
        })
        .collect();
    for id in &placed {
        c.wait_state(&api, *id, "Completed");
    }
    let (a, b) = (
        c.metric(&pay_a, "hearty_worker_commands_total"),
        c.metric(&pay_b, "hearty_worker_commands_total"),
    );
    // A payment belongs to the partition of its order id (of 8).
    let in_a = placed.iter().filter(|id| *id % 8 < 4).count() as f64;
    assert_eq!(
        (a, b),
        (in_a, placed.len() as f64 - in_a),
        "each owner handled exactly its partitions' payments"
    );
    // The API asks both owners (over request/reply) and merges their pages.
    let pays = c.get(&api, "/pays");
    let ids: Vec<i64> = pays
        .as_array()
        .expect("list")
        .iter()
        .map(|p| p["id"].as_i64().expect("id"))
        .collect();
    let mut expected = placed.clone();
    expected.sort_unstable();
    assert_eq!(ids, expected, "every payment once, by id: {pays}");
    let page = c.get(&api, "/pays?limit=5&offset=3");
    assert_eq!(page.as_array().map(Vec::len), Some(5));
    assert_eq!(page[0]["id"], expected[3]);
    for id in &placed {
        let one = c.get(&api, &format!("/pays/{id}"));
        assert_eq!(one["status"], "Approved", "{one}");
    }
    // Shared nothing: no SQLite file is open in two processes.
    let mut seen = std::collections::HashMap::new();
    for svc in [&api, &_others, &pay_a, &pay_b] {
        for db in Cluster::open_databases(svc.pid()) {
            if let Some(other) = seen.insert(db.clone(), svc.pid()) {
                panic!("{} is open in pids {other} and {}", db.display(), svc.pid());
            }
        }
    }
    assert!(
        seen.len() >= 8,
        "the processes' databases were seen: {seen:?}"
    );
}

#[test]
fn a_panicking_handler_restarts_only_its_actor() {
    let Some(c) = Cluster::new() else { return };
    let all = c.start("all", &[("HEARTY_FAILPOINTS", "pay-handler=panic@1")]);
    c.seed(&all, 100);
    let (s, v, _) = c.order(&all, 1);
    assert_eq!(
        s, 201,
        "the panicked command was redelivered and applied: {v}"
    );
    let id = v["id"].as_i64().expect("id");
    c.wait_state(&all, id, "Completed");
    assert!(c.metric(&all, "hearty_actor_restarts_total") >= 1.0);
    // The process, the other workers and later orders are unaffected.
    let (s, v, _) = c.order(&all, 1);
    assert_eq!(s, 201, "{v}");
    c.wait_state(&all, v["id"].as_i64().expect("id"), "Completed");
    assert_eq!(c.get(&all, "/pays").as_array().map(Vec::len), Some(2));
}

#[test]
fn poison_messages_are_dead_lettered_while_orders_keep_flowing() {
    let Some(c) = Cluster::new() else { return };
    // The first pay command fails five times: it is dead-lettered, not looped.
    let all = c.start("all", &[("HEARTY_FAILPOINTS", "pay-handler=panic@5")]);
    c.seed(&all, 100);
    c.publish(Outgoing {
        message_id: "garbage-1".into(),
        correlation_id: "none".into(),
        message_type: "pay.authorize".into(),
        route: Route::Command(WorkerKind::Pay, 1),
        body: b"this is not JSON".to_vec(),
    });
    let (s, v, _) = c.order(&all, 1);
    // The order's own pay command was dead-lettered; its timeout re-sent it.
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_i64().expect("id");
    let saga = c.wait_state(&all, id, "Completed");
    let noted = saga["history"]
        .as_array()
        .expect("history")
        .iter()
        .any(|h| h["detail"].as_str().unwrap_or("").contains("dead-lettered"));
    assert!(noted, "the saga shows its dead letter: {saga:#}");
    let mut letters = Vec::new();
    while let Some(l) = c.dead_letter() {
        letters.push(l);
    }
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert!(
        letters
            .iter()
            .any(|(id, reason)| id == "garbage-1" && reason.contains("undecodable")),
        "{letters:?}"
    );
    assert!(
        letters
            .iter()
            .any(|(mid, reason)| *mid == format!("order-{id}.pay.do")
                && reason.contains("failed 5 times")),
        "{letters:?}"
    );
    assert!(c.metric(&all, "hearty_dead_letters_total") >= 2.0);
    // Other orders keep completing.
    for _ in 0..3 {
        let (s, v, _) = c.order(&all, 1);
        assert_eq!(s, 201, "{v}");
        c.wait_state(&all, v["id"].as_i64().expect("id"), "Completed");
    }
}

#[test]
fn the_payment_breaker_trips_under_latency_and_recovers() {
    let Some(c) = Cluster::new() else { return };
    // A pay timeout tighter than the payment's latency, one attempt, and a
    // breaker that opens after three timeouts in a row.
    let saga = saga_file_with(
        c.dir.path(),
        "timeout = \"5s\"\ncompensation_blocks = true\nretry = { max_attempts = 3,",
        "timeout = \"300ms\"\ncompensation_blocks = true\nretry = { max_attempts = 1,",
    );
    let saga = std::fs::read_to_string(&saga).expect("read").replacen(
        "circuit_breaker = { consecutive_failures = 5, failure_ratio = 0.5, window = 20, min_calls = 10, cool_down = \"5s\" }",
        "circuit_breaker = { consecutive_failures = 3, failure_ratio = 0.9, window = 20, min_calls = 10, cool_down = \"2s\" }",
        1,
    );
    let saga_path = c.dir.path().join("breaker_saga.toml");
    std::fs::write(&saga_path, saga).expect("write");
    let saga_env = saga_path.to_str().expect("utf-8").to_owned();
    // One partition: breakers are kept per partition (tests/fencing.rs has
    // several), and this one watches a single breaker trip and recover.
    let one = ("HEARTY_PARTITION_COUNT", "1");
    let api = c.start("api,orchestrator", &[("HEARTY_SAGA_FILE", &saga_env), one]);
    let _others = c.start("kitchen,delivery,coupon", &[one]);
    let slow_pay = c.start("pay", &[("HEARTY_PAY_LATENCY", "1s"), one]);
    c.seed(&api, 100);

    let mut turned_away = Vec::new();
    let mut opened = false;
    for _ in 0..10 {
        let (s, v, retry_after) = c.order(&api, 1);
        assert_eq!(s, 503, "{v}");
        assert!(retry_after.is_some(), "503 carries Retry-After");
        if v["error"] == "circuit_open" {
            opened = true;
            break;
        }
        turned_away.push(
            v["orderId"]
                .as_i64()
                .expect("a saga was started and abandoned"),
        );
    }
    assert!(opened, "the breaker opened");
    assert!(turned_away.len() >= 3);
    let ready = c.get(&api, "/health/ready");
    assert_eq!(ready["circuitBreakers"]["pay"], "Open", "{ready}");
    assert_eq!(
        c.metric(&api, "hearty_circuit_breaker_state{step=\"pay\"}"),
        1.0
    );
    let before = c.get(&api, "/orders").as_array().map(Vec::len);
    let (s, v, _) = c.order(&api, 1);
    assert_eq!(
        (s, v["error"].as_str()),
        (503, Some("circuit_open")),
        "turned away at once"
    );
    assert_eq!(
        c.get(&api, "/orders").as_array().map(Vec::len),
        before,
        "no saga started while open"
    );

    // The payment system recovers; after the cool-down one trial goes through.
    slow_pay.kill();
    let _fast_pay = c.start("pay", &[one]);
    let mut admitted = None;
    c.wait("a trial order to be admitted", || {
        let (s, v, _) = c.order(&api, 1);
        if s == 201 {
            admitted = v["id"].as_i64();
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
        false
    });
    let id = admitted.expect("admitted");
    c.wait_state(&api, id, "Completed");
    let ready = c.get(&api, "/health/ready");
    assert_eq!(ready["circuitBreakers"]["pay"], "Closed", "{ready}");

    // Nothing turned away was established: every late approval refunded.
    for id in turned_away {
        let saga = c.wait_state(&api, id, "Compensated");
        assert_eq!(saga["orderStatus"], "Rejected", "{saga:#}");
        c.wait(&format!("order {id}'s payment to be settled"), || {
            matches!(
                c.status_of(&api, "pays", id).as_deref(),
                None | Some("Refunded")
            )
        });
        assert_eq!(c.status_of(&api, "kitchens", id), None);
        assert_eq!(c.status_of(&api, "coupons", id), None);
    }
}
