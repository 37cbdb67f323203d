//! Concurrency fuzz (issue 10): seeded random interleavings of clients
//! placing orders (with and without `Idempotency-Key`, replays, reused keys),
//! the manager cancelling, people reporting cooked / picked up / delivered,
//! operators retrying — with passivation between 0 and 50 ms and random
//! worker latencies. Afterwards every per-order invariant of
//! [`crate::invariants`] holds, and what clients were told about their keys
//! is consistent.
//!
//! `cargo test` runs one fixed seed per transport. `HEARTY_FUZZ_SEED=<n>`
//! replays a seed; `HEARTY_FUZZ_RUNS=<n>` runs that many (random seeds
//! unless one is given), e.g.
//! `HEARTY_FUZZ_RUNS=20 cargo test --test api fuzz::in_process -- --nocapture`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Broker, Options, TestApp, spawn_app, token};
use crate::invariants::{Answers, assert_invariants};

/// The seed `cargo test` runs.
const FIXED_SEED: u64 = 0x0010_5eed;
const CLIENTS: u64 = 6;
const OPS_PER_CLIENT: usize = 25;
const KEYS: usize = 8;
const STOCK: i64 = 40;

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn latency(rng: &mut StdRng) -> Option<&'static str> {
    let base = rng.random_range(0..25u64);
    Some(leak(format!("{base}ms±{}ms", base / 2)))
}

/// What the clients learnt, shared between them.
#[derive(Default)]
struct Log {
    answers: Answers,
    /// The quantity each key is known to be bound to: the body of the first
    /// request with that key that the server answered for (not with 422).
    bound: HashMap<usize, i64>,
    /// Order ids answered 201 per key.
    created_by_key: HashMap<usize, HashSet<i64>>,
    /// Highest order id seen, to aim cancels and progress at real orders.
    max_id: i64,
    violations: Vec<String>,
}

/// The fixed request of key `k`: which food and how many.
fn key_request(k: usize, foods: &[i64]) -> (i64, i64) {
    (foods[k % foods.len()], 1 + (k as i64 % 3))
}

fn order_id(body: &Value) -> Option<i64> {
    body["id"].as_i64().or_else(|| body["orderId"].as_i64())
}

/// Records `POST /orders`' answer; `keyed` is the key and the quantity
/// sent with it.
fn note_placed(log: &mut Log, keyed: Option<(usize, i64)>, s: StatusCode, body: &Value) {
    let id = order_id(body);
    if let Some(id) = id {
        log.max_id = log.max_id.max(id);
    }
    if let Some((k, qty)) = keyed {
        let reused =
            s == StatusCode::UNPROCESSABLE_ENTITY && body["error"] == "idempotency_key_reused";
        match (log.bound.get(&k).copied(), reused) {
            (Some(bound), true) if bound == qty => log.violations.push(format!(
                "key {k} refused its own request (qty {qty}): {body}"
            )),
            (Some(bound), false) if bound != qty && id.is_some() => log.violations.push(format!(
                "key {k} bound to qty {bound} answered a request of qty {qty}: {s} {body}"
            )),
            (None, false) if id.is_some() => {
                log.bound.insert(k, qty);
            }
            _ => {}
        }
        if reused {
            return;
        }
    }
    match (s.as_u16(), id) {
        (201, Some(id)) => {
            log.answers.established.push(id);
            if let Some((k, _)) = keyed {
                log.created_by_key.entry(k).or_default().insert(id);
            }
        }
        // 503 "outcome not known yet" is the one answer that promises
        // nothing; every other refusal says nothing was established.
        (503, Some(_))
            if body["detail"]
                .as_str()
                .unwrap_or("")
                .contains("not known yet") => {}
        (402 | 409 | 503, Some(id)) => log.answers.refused.push(id),
        (409 | 503 | 422, None) => {}
        _ => log
            .violations
            .push(format!("POST /orders answered {s}: {body}")),
    }
}

async fn client(
    app: &TestApp,
    run: u64,
    seed: u64,
    customer: i64,
    foods: Vec<i64>,
    log: Arc<Mutex<Log>>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..OPS_PER_CLIENT {
        let target = {
            let max = log.lock().expect("log").max_id;
            rng.random_range(1..=max + 1)
        };
        match rng.random_range(0..14u32) {
            0..=2 => {
                let food = foods[rng.random_range(0..foods.len())];
                let qty = rng.random_range(1..4);
                let (s, body) = app.order(customer, food, qty).await;
                note_placed(&mut log.lock().expect("log"), None, s, &body);
            }
            3..=6 => {
                // A key's own request, or now and then another body under
                // the same key (which must be refused once the key is bound).
                let k = rng.random_range(0..KEYS);
                let (food, mut qty) = key_request(k, &foods);
                if rng.random_bool(0.25) {
                    qty += 10;
                }
                let (s, body) = app
                    .order_with_key(&format!("fuzz-{run}-{k}"), customer, food, qty)
                    .await;
                note_placed(&mut log.lock().expect("log"), Some((k, qty)), s, &body);
            }
            7..=8 => {
                let (s, body) = app
                    .delete_as(&format!("/kitchens/{target}"), Some(token()))
                    .await;
                if !matches!(s.as_u16(), 202 | 404 | 409) {
                    log.lock()
                        .expect("log")
                        .violations
                        .push(format!("cancel {target}: {s} {body}"));
                }
            }
            9..=11 => {
                let path = match rng.random_range(0..3u32) {
                    0 => format!("/kitchens/{target}/cooked"),
                    1 => format!("/deliveries/{target}/pickedUp"),
                    _ => format!("/deliveries/{target}/delivered"),
                };
                let (s, body) = app.post_as_manager(&path, json!({})).await;
                if !matches!(s.as_u16(), 202 | 404 | 409) {
                    log.lock()
                        .expect("log")
                        .violations
                        .push(format!("{path}: {s} {body}"));
                }
            }
            12 => {
                let (s, body) = app
                    .post_as_manager(&format!("/sagas/{target}/retry"), json!({}))
                    .await;
                if !matches!(s.as_u16(), 202 | 404 | 409) {
                    log.lock()
                        .expect("log")
                        .violations
                        .push(format!("retry {target}: {s} {body}"));
                }
            }
            _ => tokio::time::sleep(Duration::from_millis(rng.random_range(0..20))).await,
        }
    }
}

/// People finish what waits for them, so every saga can settle.
async fn finish_manual_work(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, running) = app.get("/sagas?state=Running&limit=100000").await;
        let ids: Vec<i64> = running
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|s| s["id"].as_i64())
            .collect();
        let (_, compensating) = app.get("/sagas?state=Compensating&limit=1").await;
        if ids.is_empty() && compensating.as_array().is_some_and(Vec::is_empty) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "sagas never settled: {running:#}"
        );
        for id in ids {
            app.post_as_manager(&format!("/kitchens/{id}/cooked"), json!({}))
                .await;
            app.post_as_manager(&format!("/deliveries/{id}/pickedUp"), json!({}))
                .await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn fuzz_once(broker: Broker, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let passivate = rng.random_range(0..=50u64);
    let slow_pay = rng.random_bool(0.25);
    let opts = Options {
        kitchen_manual: rng.random_bool(0.5),
        delivery_manual: rng.random_bool(0.5),
        pay_latency: if slow_pay {
            Some("120ms±100ms")
        } else {
            latency(&mut rng)
        },
        // With a slow payment some orders are turned away (503).
        order_timeout: slow_pay.then_some("100ms"),
        kitchen_latency: latency(&mut rng),
        delivery_latency: latency(&mut rng),
        coupon_latency: latency(&mut rng),
        passivate_after: Some(leak(format!("{passivate}ms"))),
        // Compensations that fail a few times (then succeed, within the
        // test saga's three attempts) or every time (a stuck saga that only
        // an operator's retry, which the clients also send, could resume).
        fail_compensations: [
            None,
            None,
            Some("pay=1"),
            Some("kitchen=2"),
            Some("delivery=1,coupon=1"),
        ][rng.random_range(0..5usize)],
        fast_retries: true,
        ..Options::default()
    };
    eprintln!("fuzz: seed {seed} on {broker:?} (HEARTY_FUZZ_SEED={seed} replays it): {opts:?}");
    let Some(app) = spawn_app(broker, opts).await else {
        return;
    };
    let customer = app.seed_customer().await;
    let foods = vec![app.seed_food(STOCK).await, app.seed_food(STOCK).await];
    let log = Arc::new(Mutex::new(Log::default()));
    let clients = (0..CLIENTS).map(|i| {
        client(
            &app,
            seed,
            seed.wrapping_mul(31).wrapping_add(i),
            customer,
            foods.clone(),
            log.clone(),
        )
    });
    futures_util::future::join_all(clients).await;
    finish_manual_work(&app).await;
    let log = std::mem::take(&mut *log.lock().expect("log"));
    let mut violations = log.violations;
    for (k, ids) in &log.created_by_key {
        if ids.len() > 1 {
            violations.push(format!("key {k} answered 201 for several orders: {ids:?}"));
        }
    }
    for v in &violations {
        eprintln!("fuzz: violation: {v}");
    }
    assert!(violations.is_empty(), "seed {seed}: {violations:#?}");
    let initial = foods.iter().map(|f| (*f, STOCK)).collect();
    assert_invariants(&app, &initial, &log.answers).await;
    eprintln!(
        "fuzz: seed {seed} ok ({} established, {} refused)",
        log.answers.established.len(),
        log.answers.refused.len()
    );
    app.stop().await;
}

/// Seeds to run: `HEARTY_FUZZ_SEED` or the fixed one, `HEARTY_FUZZ_RUNS`
/// times (random seeds after the first unless a seed is given).
fn seeds() -> Vec<u64> {
    let given = std::env::var("HEARTY_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok());
    let runs: usize = std::env::var("HEARTY_FUZZ_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    match (given, runs) {
        (Some(seed), runs) => vec![seed; runs],
        (None, 1) => vec![FIXED_SEED],
        (None, runs) => (0..runs).map(|_| rand::random()).collect(),
    }
}

#[actix_web::test]
async fn in_process() {
    for seed in seeds() {
        fuzz_once(Broker::InProcess, seed).await;
    }
}

#[actix_web::test]
async fn rabbitmq() {
    for seed in seeds() {
        fuzz_once(Broker::RabbitMq, seed).await;
    }
}
