//! Promises that must survive `kill -9` of the zero-setup process (its
//! in-process queues die with it): found by the adversarial review of issue
//! 10, each failed before its fix.
//!
//! - an order whose payment has not succeeded by its deadline is abandoned
//!   even if the process died in between (the deadline is stored);
//! - a person's report (here `delivered`) lost with the process is sent
//!   again until the worker confirms it.

mod common;

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A `hearty serve` process, killed (by PID) when dropped.
struct Hearty {
    child: Child,
    base: String,
}

impl Drop for Hearty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(data: &Path, env: &[(&str, &str)]) -> Hearty {
    let (child, base) = common::serve_zero_setup(data, env);
    Hearty { child, base }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn call(method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Value) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let mut req = client.request(method, url).bearer_auth(common::token());
    if let Some(b) = body {
        req = req.json(&b);
    }
    match req.send().await {
        Ok(res) => {
            let status = res.status().as_u16();
            (status, res.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

async fn get(base: &str, path: &str) -> Value {
    call(reqwest::Method::GET, format!("{base}{path}"), None)
        .await
        .1
}

async fn post(base: &str, path: &str, body: Value) -> (u16, Value) {
    call(reqwest::Method::POST, format!("{base}{path}"), Some(body)).await
}

/// Polls `what` until `pred` holds (a liveness bound, not a timing claim).
async fn eventually(
    what: &str,
    mut probe: impl AsyncFnMut() -> Value,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = probe().await;
        if pred(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} never held: {v:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Orders one cake for customer 1 and expects a 201; answers the order id.
async fn order_one(base: &str) -> i64 {
    let (s, v) = post(
        base,
        "/orders",
        json!({"customerId": 1, "foodCatalogId": 1, "qty": 1}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    v["id"].as_i64().expect("id")
}

/// Places `order` (whose payment is slow) and kills `hearty` under it:
/// the client gets no answer.
async fn order_and_die(hearty: Hearty, base: String, order: Value) {
    let placing = tokio::spawn(async move { post(&base, "/orders", order).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    drop(hearty);
    let (status, _) = placing.await.expect("join");
    assert_eq!(status, 0, "the client got no answer");
}

async fn seed(base: &str) {
    let (s, v) = post(base, "/customers", json!({"name": "yang"})).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = post(
        base,
        "/foodCatalogs",
        json!({"name": "cake", "stock": "10", "price": "4.0"}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
}

#[test]
fn an_unpaid_order_is_abandoned_even_across_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let env = [("HEARTY_PAY_LATENCY", "3s"), ("HEARTY_ORDER_TIMEOUT", "2s")];
    let rt = runtime();
    let first = start(&data, &env);
    rt.block_on(seed(&first.base));
    let base = first.base.clone();
    // The order waits for the slow payment; the process dies under it.
    rt.block_on(order_and_die(
        first,
        base,
        json!({"customerId": "1", "foodCatalogId": "1", "qty": "2"}),
    ));
    let second = start(&data, &env);
    let base = second.base.clone();
    rt.block_on(async {
        let saga = eventually(
            "the saga settles",
            async || get(&base, "/sagas/1").await,
            |v| matches!(v["state"].as_str(), Some("Compensated" | "Completed")),
        )
        .await;
        assert_eq!(saga["state"], "Compensated", "{saga:#}");
        assert_eq!(saga["orderStatus"], "Rejected", "{saga:#}");
        // A late approval of the re-sent payment is refunded.
        let pay = eventually(
            "the payment settles",
            async || get(&base, "/pays?orderId=1").await,
            |v| {
                v.as_array()
                    .is_some_and(|a| a.iter().all(|p| p["status"] != "Approved"))
            },
        )
        .await;
        let food = get(&base, "/foodCatalogs/1").await;
        assert_eq!(food["stock"], 10, "no stock taken: {food} {pay}");
    });
}

#[test]
fn a_delivered_report_lost_in_a_crash_is_sent_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let manual = [
        ("HEARTY_KITCHEN_MODE", "manual"),
        ("HEARTY_DELIVERY_MODE", "manual"),
    ];
    let rt = runtime();
    let first = start(&data, &manual);
    let base = first.base.clone();
    rt.block_on(async {
        seed(&base).await;
        order_one(&base).await;
        for (path, step) in [
            ("/kitchens/1/cooked", "kitchen"),
            ("/deliveries/1/pickedUp", "delivery"),
        ] {
            eventually(
                "the step waits for a person",
                async || get(&base, "/sagas/1").await,
                |v| v["waitingOn"]["step"] == step && v["waitingOn"]["waitingForAPerson"] == true,
            )
            .await;
            let (s, v) = post(&base, path, json!({})).await;
            assert_eq!(s, 202, "{path}: {v}");
        }
        eventually(
            "the saga completes",
            async || get(&base, "/sagas/1").await,
            |v| v["state"] == "Completed",
        )
        .await;
    });
    drop(first);
    // This process dies the moment its delivery worker takes the report:
    // the report is lost with its in-process queue.
    // (The latency lets the outbox relay of the orchestrator forget the
    // report first: only the in-process queue still held it.)
    let crashing = [
        manual[0],
        manual[1],
        ("HEARTY_DELIVERY_LATENCY", "500ms"),
        ("HEARTY_FAILPOINTS", "delivery-progress=abort"),
    ];
    let mut second = start(&data, &crashing);
    let base = second.base.clone();
    rt.block_on(async {
        let (s, v) = post(&base, "/deliveries/1/delivered", json!({})).await;
        assert_eq!(s, 202, "{v}");
    });
    let died = second.child.wait().expect("wait");
    assert!(!died.success(), "the failpoint ended the process");
    let third = start(&data, &manual);
    let base = third.base.clone();
    rt.block_on(async {
        let delivery = eventually(
            "the delivery is delivered",
            async || get(&base, "/deliveries/1").await,
            |v| v["status"] == "Delivered",
        )
        .await;
        let order = get(&base, "/orders/1").await;
        assert_eq!(order["status"], "Delivered", "{order} {delivery}");
        let pay = get(&base, "/pays/1").await;
        assert_eq!(pay["status"], "Approved", "{pay}");
    });
}

/// Found by review: a saga actor that panics (here on purpose, the first
/// three times it applies an event) drops the requests waiting on it; they
/// must be answered by the actor the registry loads next, not with a 503
/// for an order that then completes.
#[test]
fn a_panicking_saga_actor_does_not_turn_paid_orders_into_503s() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let rt = runtime();
    let hearty = start(&data, &[("HEARTY_FAILPOINTS", "saga-apply=panic@3")]);
    let base = hearty.base.clone();
    rt.block_on(async {
        seed(&base).await;
        for _ in 0..5 {
            let id = order_one(&base).await;
            let pay = get(&base, &format!("/pays/{id}")).await;
            assert_eq!(pay["status"], "Approved", "{pay}");
        }
    });
}

/// One sample of the service's `/metrics` (manager token).
async fn metric(base: &str, name: &str) -> f64 {
    let text = reqwest::Client::new()
        .get(format!("{base}/metrics"))
        .bearer_auth(common::token())
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in {text}"))
}

/// Issue 24: recovery reads no saga. Sagas waiting for a person come back
/// as a count (no actor, no memory) and move on at their next event; a
/// saga waiting on a timer gets its actor when the timer is due, and the
/// timer fires as it would have without the crash.
#[test]
fn a_restart_wakes_only_what_a_timer_needs_and_the_rest_moves_on_its_next_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let manual = [("HEARTY_KITCHEN_MODE", "manual")];
    let rt = runtime();
    let first = start(&data, &manual);
    let base = first.base.clone();
    let waiting: Vec<i64> = rt.block_on(async {
        seed(&base).await;
        let mut ids = Vec::new();
        for _ in 0..4 {
            ids.push(order_one(&base).await);
        }
        for id in &ids {
            eventually(
                "the order waits for the cook",
                async || get(&base, &format!("/sagas/{id}")).await,
                |v| v["waitingOn"]["waitingForAPerson"] == true,
            )
            .await;
        }
        ids
    });
    drop(first);
    // A second life places one more order whose payment outlasts its
    // deadline, and dies under it: that saga waits on its admission timer.
    let slow = [
        manual[0],
        ("HEARTY_PAY_LATENCY", "3s"),
        ("HEARTY_ORDER_TIMEOUT", "2s"),
    ];
    let second = start(&data, &slow);
    let base = second.base.clone();
    rt.block_on(order_and_die(
        second,
        base,
        json!({"customerId": 1, "foodCatalogId": 1, "qty": 1}),
    ));
    let third = start(&data, &slow);
    let base = third.base.clone();
    rt.block_on(async {
        // Every saga is counted in flight, none of those waiting for a
        // person has an actor (at most the timer's saga does).
        assert_eq!(metric(&base, "hearty_sagas_in_flight").await, 5.0);
        assert!(metric(&base, "hearty_saga_actors_live").await <= 1.0);
        let timed = eventually(
            "the timer's saga is abandoned when its deadline passes",
            async || get(&base, "/sagas/5").await,
            |v| matches!(v["state"].as_str(), Some("Compensated" | "Completed")),
        )
        .await;
        assert_eq!(timed["state"], "Compensated", "{timed:#}");
        for id in &waiting {
            let saga = get(&base, &format!("/sagas/{id}")).await;
            assert_eq!(saga["state"], "Running", "{saga:#}");
        }
        // The others move on at their next event, loaded then.
        let (s, v) = post(
            &base,
            &format!("/kitchens/{}/cooked", waiting[0]),
            json!({}),
        )
        .await;
        assert_eq!(s, 202, "{v}");
        eventually(
            "the cooked order completes",
            async || get(&base, &format!("/sagas/{}", waiting[0])).await,
            |v| v["state"] == "Completed",
        )
        .await;
        // The binary's allocator is jemalloc (on Linux), and it says what
        // it holds.
        if cfg!(target_os = "linux") {
            assert!(metric(&base, "hearty_allocator_allocated_bytes").await > 1e6);
            assert!(metric(&base, "hearty_allocator_resident_bytes").await > 1e6);
        }
    });
}
