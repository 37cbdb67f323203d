//! A database written by version 1 (amounts as decimals, keys without their
//! request, no `wakes_at`) keeps working after the upgrade: found by the
//! review of issue 10, where every old saga was quarantined and an old key
//! charged a second time.

use reqwest::StatusCode;

use crate::helpers::{Broker, Options, spawn_app, token};

/// Turns this version's `orchestrator.db` back into version 1's layout, as
/// the previous release wrote it.
fn downgrade(db: &std::path::Path) {
    let c = rusqlite::Connection::open(db).expect("open");
    let rows: Vec<(i64, String)> = c
        .prepare("SELECT id, body FROM sagas")
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("rows");
    for (id, body) in rows {
        let mut v: serde_json::Value = serde_json::from_str(&body).expect("json");
        let cents = v["order"]["amount"].as_i64().expect("cents");
        v["order"]["amount"] = serde_json::json!(cents as f64 / 100.0);
        for field in ["admitted", "cause", "admit_by", "admitBy"] {
            v.as_object_mut().expect("object").remove(field);
        }
        for s in v["steps"].as_array_mut().expect("steps") {
            s.as_object_mut().expect("step").remove("reported");
        }
        c.execute(
            "UPDATE sagas SET body = ?2 WHERE id = ?1",
            rusqlite::params![id, v.to_string()],
        )
        .expect("update");
    }
    c.execute_batch(
        "CREATE TABLE idempotency_keys (key TEXT PRIMARY KEY, saga_id INTEGER NOT NULL, created_at INTEGER NOT NULL);
         INSERT INTO idempotency_keys
             SELECT substr(key, instr(key, '/') + 1), saga_id, created_at FROM order_keys;
         DROP TABLE order_keys;
         DROP INDEX IF EXISTS sagas_wakes;
         ALTER TABLE sagas DROP COLUMN wakes_at;
         DROP INDEX IF EXISTS sagas_food;
         DROP INDEX IF EXISTS sagas_step;
         ALTER TABLE sagas DROP COLUMN food_id;
         ALTER TABLE sagas DROP COLUMN step;
         PRAGMA user_version = 0;",
    )
    .expect("downgrade");
}

/// A stopped service's folder (kitchen manual): a customer, a food, and an
/// order under each key (with its quantity), each accepted by the kitchen.
struct Folder {
    _dir: tempfile::TempDir,
    data: std::path::PathBuf,
    opts: Options,
    customer: i64,
    food: i64,
    orders: Vec<i64>,
}

impl Folder {
    async fn with_orders(keys: &[(&str, i64)]) -> Option<Folder> {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let opts = Options {
            data_dir: Some(data.clone()),
            kitchen_manual: true,
            ..Options::default()
        };
        let app = spawn_app(Broker::InProcess, opts.clone()).await?;
        let customer = app.seed_customer().await;
        let food = app.seed_food(100).await;
        let mut orders = Vec::new();
        for (key, qty) in keys {
            let (s, order) = app.order_with_key(key, customer, food, *qty).await;
            assert_eq!(s, StatusCode::CREATED, "{order}");
            orders.push(order["id"].as_i64().expect("id"));
        }
        for id in &orders {
            app.wait_record("kitchens", *id, "Accepted").await;
        }
        app.stop().await;
        Some(Folder {
            _dir: dir,
            data,
            opts,
            customer,
            food,
            orders,
        })
    }
}

#[actix_web::test]
async fn a_version_1_database_upgrades_in_place() {
    let Some(old) = Folder::with_orders(&[("k1", 2), ("k2", 3)]).await else {
        return;
    };
    let (opts, customer, food) = (old.opts.clone(), old.customer, old.food);
    let (first, second) = (old.orders[0], old.orders[1]);
    downgrade(&old.data.join("orchestrator.db"));

    let app = spawn_app(Broker::InProcess, opts).await.expect("restarts");
    let (s, orders) = app.get("/orders").await;
    assert_eq!(s, StatusCode::OK, "{orders}");
    for o in orders.as_array().expect("list") {
        assert_eq!(o["quarantined"], false, "{o}");
        assert_eq!(o["status"], "Paid", "{o}");
    }
    // The operator's search finds the old sagas by their food and step
    // (layout 4's columns, filled by the upgrade).
    let ids = |v: &serde_json::Value| -> Vec<i64> {
        v.as_array()
            .expect("list")
            .iter()
            .filter_map(|s| s["id"].as_i64())
            .collect()
    };
    let (s, by_food) = app.get(&format!("/sagas?foodId={food}")).await;
    assert_eq!(s, StatusCode::OK, "{by_food}");
    assert_eq!(ids(&by_food), vec![first, second], "{by_food}");
    let (_, at_kitchen) = app.get("/sagas?step=kitchen").await;
    assert!(ids(&at_kitchen).contains(&second), "{at_kitchen}");
    // The old key still answers for its order, without a second charge.
    let (s, again) = app.order_with_key("k1", customer, food, 2).await;
    assert_eq!(s, StatusCode::CREATED, "{again}");
    assert_eq!(again["id"], first, "{again}");
    // A paid order of the old version can still be cancelled: refund and stock.
    let (s, body) = app
        .delete_as(&format!("/kitchens/{second}"), Some(token()))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    app.wait_state(second, "Compensated").await;
    app.wait_record("pays", second, "Refunded").await;
    assert_eq!(
        app.stock(food).await,
        98,
        "order 2's three are back, order 1's two taken"
    );
    let (_, pays) = app.get("/pays").await;
    assert_eq!(
        pays.as_array().map(Vec::len),
        Some(2),
        "no new payment: {pays}"
    );
    app.stop().await;
}

/// Turns this version's `orchestrator.db` back into layout 3 (the release
/// before the operator's search): no `food_id`, no `step`.
fn back_to_layout_3(db: &std::path::Path) {
    let c = rusqlite::Connection::open(db).expect("open");
    c.execute_batch(
        "DROP INDEX IF EXISTS sagas_food;
         DROP INDEX IF EXISTS sagas_step;
         DROP INDEX IF EXISTS sagas_created;
         ALTER TABLE sagas DROP COLUMN food_id;
         ALTER TABLE sagas DROP COLUMN step;
         PRAGMA user_version = 3;",
    )
    .expect("back to layout 3");
}

/// Found by the review of the search: the upgrade from layout 3 scoped
/// every idempotency key to its customer a second time, and a retry across
/// the upgrade placed (and charged) a second order.
#[actix_web::test]
async fn a_layout_3_database_upgrades_with_its_keys_intact() {
    let Some(old) = Folder::with_orders(&[("k1", 2)]).await else {
        return;
    };
    let (opts, customer, food, first) = (old.opts.clone(), old.customer, old.food, old.orders[0]);
    back_to_layout_3(&old.data.join("orchestrator.db"));

    let app = spawn_app(Broker::InProcess, opts.clone())
        .await
        .expect("restarts");
    // The retry finds its order: no second payment.
    let (s, again) = app.order_with_key("k1", customer, food, 2).await;
    assert_eq!(s, StatusCode::CREATED, "{again}");
    assert_eq!(again["id"], first, "{again}");
    let (_, pays) = app.get("/pays").await;
    assert_eq!(pays.as_array().map(Vec::len), Some(1), "{pays}");
    // The search's columns are filled in.
    let (_, by_food) = app.get(&format!("/sagas?foodId={food}&step=kitchen")).await;
    assert_eq!(by_food.as_array().map(Vec::len), Some(1), "{by_food}");
    app.stop().await;
    // A second start of the upgraded folder changes nothing.
    let app = spawn_app(Broker::InProcess, opts).await.expect("restarts");
    let (s, again) = app.order_with_key("k1", customer, food, 2).await;
    assert_eq!(
        (s, &again["id"]),
        (StatusCode::CREATED, &serde_json::json!(first)),
        "{again}"
    );
    app.stop().await;
}
