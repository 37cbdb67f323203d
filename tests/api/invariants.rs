//! The per-order invariants that must hold once the system is quiet, read
//! only through the public HTTP API (the same view a user has).
//!
//! - every saga is `Completed` or `Compensated`, or visibly `Failed` with a
//!   reason an operator can act on;
//! - a `Completed` order is paid, cooked, dispatched and its coupon issued;
//! - a cancelled or rejected one is refunded or never charged, its ticket
//!   gone (stock back), its delivery and coupon cancelled or never made;
//! - a `Delivered` order is paid and its delivery delivered;
//! - stock = initial − quantities of the tickets still live;
//! - every answer a client got agrees with the end: a 201 order was paid, a
//!   refused one (402, 409, 503) is not charged;
//! - every saga's history is a legal path.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::TestApp;

/// What clients were told about orders.
#[derive(Debug, Default, Clone)]
pub struct Answers {
    /// Order ids answered 201 by `POST /orders` (or a replay of it).
    pub established: Vec<i64>,
    /// Order ids answered 402, 409 or 503 by `POST /orders`: never charged.
    pub refused: Vec<i64>,
}

fn by_order(list: &Value) -> HashMap<i64, Value> {
    list.as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|r| r["orderId"].as_i64().map(|id| (id, r)))
        .collect()
}

fn status(records: &HashMap<i64, Value>, id: i64) -> Option<String> {
    records
        .get(&id)
        .and_then(|r| r["status"].as_str())
        .map(str::to_owned)
}

/// Waits until no saga is `Running` or `Compensating` (a liveness bound,
/// not a performance assertion), then returns every saga.
pub async fn settled_sagas(app: &TestApp) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, sagas) = app.get("/sagas?limit=100000").await;
        let list = sagas.as_array().cloned().unwrap_or_default();
        let busy: Vec<&Value> = list
            .iter()
            .filter(|s| matches!(s["state"].as_str(), Some("Running" | "Compensating")))
            .collect();
        if busy.is_empty() {
            return list;
        }
        if Instant::now() > deadline {
            panic!("sagas never settled: {busy:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks every invariant; `initial_stock` maps food ids to their stock at
/// the start. Returns the broken ones, each with its evidence.
pub async fn broken_invariants(
    app: &TestApp,
    initial_stock: &HashMap<i64, i64>,
    answers: &Answers,
) -> Vec<String> {
    let sagas = settled_sagas(app).await;
    let get = |path: &'static str| async move { app.get(path).await.1 };
    let pays = by_order(&get("/pays?limit=100000").await);
    let kitchens = by_order(&get("/kitchens?limit=100000").await);
    let deliveries = by_order(&get("/deliveries?limit=100000").await);
    let coupons = by_order(&get("/coupons?limit=100000").await);
    let foods = get("/foodCatalogs?limit=100000").await;
    let mut broken = Vec::new();
    let mut state_of = HashMap::new();
    for saga in &sagas {
        let id = saga["id"].as_i64().unwrap_or(0);
        let state = saga["state"].as_str().unwrap_or("?").to_owned();
        let order = saga["orderStatus"].as_str().unwrap_or("?");
        let (pay, kitchen, delivery, coupon) = (
            status(&pays, id),
            status(&kitchens, id),
            status(&deliveries, id),
            status(&coupons, id),
        );
        let records =
            format!("pay {pay:?}, kitchen {kitchen:?}, delivery {delivery:?}, coupon {coupon:?}");
        let ok = match state.as_str() {
            "Completed" => {
                pay.as_deref() == Some("Approved")
                    && kitchen.as_deref() == Some("Cooked")
                    && matches!(delivery.as_deref(), Some("Dispatched" | "Delivered"))
                    && coupon.as_deref() == Some("Issued")
                    && matches!(order, "Dispatched" | "Delivered")
            }
            "Compensated" => {
                matches!(pay.as_deref(), None | Some("Refunded" | "Declined"))
                    && matches!(kitchen.as_deref(), None | Some("Cancelled" | "Rejected"))
                    && matches!(delivery.as_deref(), None | Some("Cancelled"))
                    && matches!(coupon.as_deref(), None | Some("Cancelled"))
                    && matches!(order, "Cancelled" | "Rejected")
            }
            "Failed" => saga["reason"].as_str().is_some_and(|r| !r.is_empty()),
            _ => false,
        };
        if !ok {
            broken.push(format!(
                "saga {id} is {state} (order {order}) with {records}"
            ));
        }
        if order == "Delivered"
            && (delivery.as_deref() != Some("Delivered") || pay.as_deref() != Some("Approved"))
        {
            broken.push(format!("order {id} is Delivered with {records}"));
        }
        if delivery.as_deref() == Some("Delivered") && order != "Delivered" {
            broken.push(format!(
                "order {id} is {order} but its delivery was delivered"
            ));
        }
        state_of.insert(id, state);
    }
    // Stock: initial = current + the quantities of live tickets.
    for (food, initial) in initial_stock {
        let stock = foods
            .as_array()
            .and_then(|a| a.iter().find(|f| f["id"] == *food))
            .and_then(|f| f["stock"].as_i64())
            .unwrap_or(-1);
        let held: i64 = kitchens
            .values()
            .filter(|k| k["foodCatalogId"] == *food)
            .filter(|k| matches!(k["status"].as_str(), Some("Accepted" | "Cooked")))
            .map(|k| k["qty"].as_i64().unwrap_or(0))
            .sum();
        if *initial != stock + held {
            broken.push(format!(
                "food {food}: initial stock {initial} != stock {stock} + held by live tickets {held}"
            ));
        }
    }
    for id in &answers.established {
        let pay = status(&pays, *id);
        if !matches!(pay.as_deref(), Some("Approved" | "Refunded")) {
            broken.push(format!(
                "order {id} was answered 201 but its payment is {pay:?}"
            ));
        }
    }
    for id in &answers.refused {
        let pay = status(&pays, *id);
        if pay.as_deref() == Some("Approved") {
            broken.push(format!(
                "order {id} was refused to its client but is charged"
            ));
        }
    }
    // Histories are legal paths.
    for (id, final_state) in &state_of {
        let saga = app.saga(*id).await;
        let mut state = "Running".to_owned();
        for h in saga["history"].as_array().cloned().unwrap_or_default() {
            if let (Some(from), Some(to)) = (h["from"].as_str(), h["to"].as_str()) {
                let legal = match (from.parse(), to.parse()) {
                    (Ok(f), Ok(t)) => hearty::saga::machine::SagaState::can_become(f, t),
                    _ => false,
                };
                if !legal || from != state {
                    broken.push(format!(
                        "saga {id}: illegal step {from} -> {to} (was {state})"
                    ));
                }
                state = to.to_owned();
            }
        }
        if &state != final_state {
            broken.push(format!(
                "saga {id}: history ends {state}, saga is {final_state}"
            ));
        }
    }
    broken
}

/// Asserts every invariant, printing each broken one.
pub async fn assert_invariants(
    app: &TestApp,
    initial_stock: &HashMap<i64, i64>,
    answers: &Answers,
) {
    let broken = broken_invariants(app, initial_stock, answers).await;
    for b in &broken {
        eprintln!("invariant broken: {b}");
    }
    assert!(
        broken.is_empty(),
        "{} invariant(s) broken: {broken:#?}",
        broken.len()
    );
}
