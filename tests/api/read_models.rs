//! The CQRS read models: my orders, the catalog view and the review view
//! follow the write side through domain events, tolerate duplicated and
//! reordered events, and can be rebuilt from scratch.

use hearty::transport::{Outgoing, Route};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Options, TestApp, token};
use crate::on_both_transports;

async fn seed_cqrs_checks(app: &TestApp) {
    let customer = app.seed_customer().await;
    let food = app.seed_food(100).await;
    app.wait_view("/foodCatalogViews", food, "listed", |f| {
        f["stock"] == 100 && f["price"] == 4.0
    })
    .await;
    let (s, order) = app.order(customer, food, 10).await;
    assert_eq!(s, StatusCode::CREATED, "{order}");
    let id = order["id"].as_i64().expect("id");
    // My order shows payment and delivery status changing.
    app.wait_view("/myOrders", id, "dispatched and paid", |m| {
        m["payStatus"] == "Approved"
            && m["deliveryStatus"] == "Dispatched"
            && m["couponStatus"] == "Issued"
    })
    .await;
    app.wait_view("/foodCatalogViews", food, "90 left", |f| f["stock"] == 90)
        .await;
    let (s, _) = app
        .delete_as(&format!("/kitchens/{id}"), Some(token()))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    app.wait_view("/myOrders", id, "cancelled", |m| {
        m["status"] == "Cancelled"
            && m["payStatus"] == "Refunded"
            && m["deliveryStatus"] == "Cancelled"
    })
    .await;
    app.wait_view("/foodCatalogViews", food, "restocked", |f| {
        f["stock"] == 100
    })
    .await;

    // The seed's review command, then a rated one.
    let (s, r) = app
        .post(
            "/reviews",
            json!({"username": "yang", "productname": "cake", "content": "good"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    assert_eq!(r["productname"], "cake");
    let (s, _) = app
        .post(
            "/reviews",
            json!({"username": "kim", "productname": "cake", "content": "fine", "rating": "4"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = app
        .post(
            "/reviews",
            json!({"username": "lee", "productname": "cake", "content": "ok", "rating": 2}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, bad) = app
        .post(
            "/reviews",
            json!({"username": "x", "productname": "cake", "content": "?", "rating": 9}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");
    let (_, reviews) = app.get("/reviews").await;
    assert_eq!(reviews.as_array().map(Vec::len), Some(3));
    let view = app
        .wait_view("/reviewView", 1, "three reviews", |v| v["count"] == 3)
        .await;
    assert_eq!(view["productname"], "cake");
    assert_eq!(
        view["averageRating"], 3.0,
        "only rated reviews count: {view}"
    );
    let latest: Vec<&str> = view["latestReviews"]
        .as_array()
        .expect("latest")
        .iter()
        .filter_map(|r| r["username"].as_str())
        .collect();
    assert_eq!(latest, ["lee", "kim", "yang"], "newest first");
    let (_, alias) = app.get("/reviewViews").await;
    assert_eq!(alias[0]["count"], 3);
}

on_both_transports!(seed_cqrs, Options::default(), seed_cqrs_checks);

fn catalog_event(id: i64, version: i64, stock: i64) -> Outgoing {
    let event = json!({
        "schema": 2, "type": "catalog.stockChanged", "entity": "catalog", "entityId": id,
        "version": version, "at": 0,
        "data": {"id": id, "name": "toast", "stock": stock, "priceCents": 250}
    });
    Outgoing {
        message_id: format!("catalog.stockChanged.{id}.v{version}"),
        correlation_id: id.to_string(),
        message_type: "catalog.stockChanged".into(),
        route: Route::Event("catalog.stockChanged".into()),
        body: serde_json::to_vec(&event).expect("json"),
    }
}

async fn projections_ignore_duplicates_and_stale_events(app: &TestApp) {
    // Version 3, then a duplicate of it, then a late version 2.
    let results = app
        .transport()
        .publish(vec![
            catalog_event(77, 3, 30),
            catalog_event(77, 3, 30),
            catalog_event(77, 2, 20),
        ])
        .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    // A marker published after them: once it shows, they were all applied.
    let results = app.transport().publish(vec![catalog_event(78, 1, 1)]).await;
    assert!(results.iter().all(Result::is_ok));
    app.wait_view("/foodCatalogViews", 78, "projected", |f| f["stock"] == 1)
        .await;
    let v = app
        .wait_view("/foodCatalogViews", 77, "projected", |f| !f.is_null())
        .await;
    assert_eq!(v["stock"], 30, "the late, older event did not win: {v}");
    assert_eq!(v["price"], 2.5);
}

on_both_transports!(
    projection_versions,
    Options::default(),
    projections_ignore_duplicates_and_stale_events
);

async fn read_models_rebuild_from_scratch(app: &TestApp) {
    let customer = app.seed_customer().await;
    let food = app.seed_food(100).await;
    for qty in [3, 4] {
        let (s, _) = app.order(customer, food, qty).await;
        assert_eq!(s, StatusCode::CREATED);
    }
    let (s, _) = app
        .post(
            "/reviews",
            json!({"username": "yang", "productname": "cake", "content": "good", "rating": 5}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    app.wait_state(2, "Completed").await;
    app.wait_view("/myOrders", 2, "complete", |m| {
        m["couponStatus"] == "Issued"
    })
    .await;
    app.wait_view("/reviewViews", 1, "one review", |v| v["count"] == 1)
        .await;
    app.wait_view("/foodCatalogViews", food, "93 left", |f| f["stock"] == 93)
        .await;
    let before: Vec<Value> = futures_util::future::join_all(
        ["/myOrders", "/foodCatalogViews", "/reviewViews"]
            .map(|p| async move { app.get(p).await.1 }),
    )
    .await;

    // Damage the read models behind the service's back, then rebuild.
    for (file, table) in [
        ("views-my-orders.db", "my_orders"),
        ("views-catalog.db", "food_views"),
        ("views-reviews.db", "review_views"),
    ] {
        let c = rusqlite::Connection::open(app.data_dir.join(file)).expect("open view");
        c.execute(&format!("DELETE FROM {table}"), [])
            .expect("damage");
    }
    let (_, empty) = app.get("/myOrders").await;
    assert_eq!(empty, json!([]));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hearty"))
        .args(["views", "rebuild", "--data-dir"])
        .arg(&app.data_dir)
        .output()
        .expect("run hearty views rebuild");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after: Vec<Value> = futures_util::future::join_all(
        ["/myOrders", "/foodCatalogViews", "/reviewViews"]
            .map(|p| async move { app.get(p).await.1 }),
    )
    .await;
    for (b, a) in before.iter().zip(&after) {
        let strip = |v: &Value| {
            let mut v = v.clone();
            for e in v.as_array_mut().into_iter().flatten() {
                if let Some(o) = e.as_object_mut() {
                    o.remove("updatedAt");
                }
            }
            v
        };
        assert_eq!(strip(b), strip(a), "rebuilt read model differs");
    }
    // The write side was not touched.
    let (_, orders) = app.get("/orders").await;
    assert_eq!(orders.as_array().map(Vec::len), Some(2));
}

on_both_transports!(
    rebuild,
    Options::default(),
    read_models_rebuild_from_scratch
);

/// Whether the message `id` reaches the dead-letter queue within 30 s (the
/// messages taken off on the way are acked).
async fn dead_lettered(app: &TestApp, id: &str) -> bool {
    use futures_util::StreamExt;
    let mut dead = app
        .transport()
        .consume(hearty::transport::QueueName::DeadLetter)
        .await
        .expect("consume the dead-letter queue");
    let found = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(d) = dead.next().await {
            let ours = d.message_id.as_deref() == Some(id);
            let _ = d.ack().await;
            if ours {
                return true;
            }
        }
        false
    })
    .await;
    found == Ok(true)
}

/// A malformed event (a renamed field, as a producer on another contract
/// would send) is dead-lettered, never projected with a default.
async fn malformed_events_are_dead_lettered(app: &TestApp) {
    let mut bad = catalog_event(91, 1, 5);
    let mut body: serde_json::Value = serde_json::from_slice(&bad.body).expect("json");
    body["data"]["price"] = body["data"]["priceCents"].take();
    body["data"]
        .as_object_mut()
        .expect("data")
        .remove("priceCents");
    bad.body = serde_json::to_vec(&body).expect("json");
    bad.message_id = "catalog.stockChanged.91.v1.malformed".into();
    let results = app
        .transport()
        .publish(vec![bad, catalog_event(92, 1, 1)])
        .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    app.wait_view("/foodCatalogViews", 92, "projected", |f| f["stock"] == 1)
        .await;
    let (_, views) = app.get("/foodCatalogViews").await;
    assert!(
        views
            .as_array()
            .is_some_and(|a| a.iter().all(|v| v["id"] != 91)),
        "the malformed event was projected: {views}"
    );
    assert!(
        dead_lettered(app, "catalog.stockChanged.91.v1.malformed").await,
        "the malformed event is in the dead-letter queue"
    );
}

on_both_transports!(
    malformed_event,
    Options::default(),
    malformed_events_are_dead_lettered
);

/// The event log as older versions wrote it (one event per entry, its
/// properties on the message) is still read; an entry that is not a
/// readable batch goes to the dead-letter queue whole, and the reader goes
/// on past it.
#[actix_web::test]
async fn the_event_log_reads_single_events_and_dead_letters_an_unreadable_batch() {
    use lapin::options::BasicPublishOptions;
    use lapin::{BasicProperties, Connection, ConnectionProperties};
    let Some(app) =
        crate::helpers::spawn_app(crate::helpers::Broker::RabbitMq, Options::default()).await
    else {
        return;
    };
    let conn = Connection::connect(&crate::helpers::amqp_url(), ConnectionProperties::default())
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(Default::default())
        .await
        .expect("confirms");
    let log = format!("{}.events.log", app.namespace);
    let publish = |id: &str, kind: &str, body: Vec<u8>| {
        let ch = ch.clone();
        let (log, id, kind) = (log.clone(), id.to_owned(), kind.to_owned());
        async move {
            ch.basic_publish(
                "".into(),
                log.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &body,
                BasicProperties::default()
                    .with_message_id(id.into())
                    .with_type(kind.into())
                    .with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        }
    };
    publish(
        "not-a-batch",
        "hearty.events.batch",
        b"{\"events\":1}".to_vec(),
    )
    .await;
    let single = catalog_event(93, 1, 4);
    publish(&single.message_id, &single.message_type, single.body).await;
    app.wait_view(
        "/foodCatalogViews",
        93,
        "projected from a single-event entry",
        |f| f["stock"] == 4,
    )
    .await;
    assert!(
        dead_lettered(&app, "not-a-batch").await,
        "the unreadable entry is in the dead-letter queue"
    );
    let _ = conn.close(200, "bye".into()).await;
    app.stop().await;
}
