//! The order saga end to end: the seed's flow, a declined payment and an
//! out-of-stock order.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{Options, TestApp};
use crate::on_both_transports;

async fn seed_flow_completes(app: &TestApp) {
    let customer = app.seed_customer().await;
    let food = app.seed_food(100).await;
    let (status, order) = app.order(customer, food, 10).await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    assert_eq!(order["status"], "Paid", "{order}");
    assert_eq!(order["amount"], 40.0);
    let id = order["id"].as_i64().expect("order id");

    let saga = app.wait_state(id, "Completed").await;
    assert_eq!(saga["id"], id);
    assert_eq!(saga["orderId"], id);
    assert_eq!(saga["definition"]["name"], "order_fulfilment");
    let steps = saga["steps"].as_array().expect("steps");
    let names: Vec<&str> = steps
        .iter()
        .map(|s| s["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names, ["pay", "kitchen", "delivery", "coupon"]);
    for s in steps {
        assert_eq!(s["status"], "Done", "{s}");
        assert_eq!(s["attempts"], 1, "{s}");
        assert!(
            s["startedAt"].is_string() && s["finishedAt"].is_string(),
            "{s}"
        );
    }
    let history = saga["history"].as_array().expect("history");
    assert!(history.iter().all(|h| h["at"].is_string()));
    let states: Vec<&Value> = history
        .iter()
        .filter(|h| !h["from"].is_null())
        .map(|h| &h["to"])
        .collect();
    assert_eq!(
        states,
        [&Value::from("Completed")],
        "the only state change is Running -> Completed"
    );

    let (_, o) = app.get(&format!("/orders/{id}")).await;
    assert_eq!(o["status"], "Dispatched");
    assert_eq!(o["sagaState"], "Completed");
    assert_eq!(
        app.record_status("pays", id).await.as_deref(),
        Some("Approved")
    );
    assert_eq!(
        app.record_status("kitchens", id).await.as_deref(),
        Some("Cooked")
    );
    assert_eq!(
        app.record_status("deliveries", id).await.as_deref(),
        Some("Dispatched")
    );
    assert_eq!(
        app.record_status("coupons", id).await.as_deref(),
        Some("Issued")
    );
    assert_eq!(app.stock(food).await, 90);

    let mine = app
        .wait_view(
            &format!("/myOrders?customerId={customer}"),
            id,
            "complete",
            |m| {
                m["status"] == "Dispatched"
                    && m["sagaState"] == "Completed"
                    && m["payStatus"] == "Approved"
                    && m["kitchenStatus"] == "Cooked"
                    && m["deliveryStatus"] == "Dispatched"
                    && m["couponStatus"] == "Issued"
            },
        )
        .await;
    assert_eq!(mine["foodName"], "cake");
    assert_eq!(mine["qty"], 10);
    assert_eq!(mine["amount"], 40.0);
    let view = app
        .wait_view("/foodCatalogViews", food, "90 left", |f| f["stock"] == 90)
        .await;
    assert_eq!(view["name"], "cake");
    let (_, other) = app.get("/myOrders?customerId=999").await;
    assert_eq!(
        other,
        serde_json::json!([]),
        "another customer's orders are not mine"
    );
    let (_, completed) = app.get("/sagas?state=Completed").await;
    assert_eq!(completed.as_array().map(Vec::len), Some(1));
    let (_, running) = app.get("/sagas?state=Running").await;
    assert_eq!(running.as_array().map(Vec::len), Some(0));
}

on_both_transports!(seed_flow, Options::default(), seed_flow_completes);

async fn declined_payment_establishes_nothing(app: &TestApp) {
    let customer = app.seed_customer().await;
    let food = app.seed_food(1000).await;
    // 300 × 4.0 = 1200 > the default limit of 1000.
    let (status, body) = app.order(customer, food, 300).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{body}");
    assert_eq!(body["error"], "payment_declined");
    assert!(
        body["detail"].as_str().unwrap_or("").contains("declined"),
        "{body}"
    );
    let id = body["orderId"].as_i64().expect("order id");
    let saga = app.wait_state(id, "Compensated").await;
    assert_eq!(saga["orderStatus"], "Rejected");
    assert_eq!(saga["steps"][0]["status"], "Failed");
    for later in 1..4 {
        assert_eq!(saga["steps"][later]["status"], "Pending", "{saga}");
    }
    assert_eq!(
        app.record_status("pays", id).await.as_deref(),
        Some("Declined")
    );
    assert_eq!(app.record("kitchens", id).await, None);
    assert_eq!(app.record("deliveries", id).await, None);
    assert_eq!(app.record("coupons", id).await, None);
    assert_eq!(app.stock(food).await, 1000, "stock untouched");
}

on_both_transports!(
    declined,
    Options::default(),
    declined_payment_establishes_nothing
);

async fn out_of_stock_establishes_nothing(app: &TestApp) {
    let customer = app.seed_customer().await;
    let food = app.seed_food(5).await;
    let (status, body) = app.order(customer, food, 6).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"], "out_of_stock");
    let (_, orders) = app.get("/orders").await;
    assert_eq!(orders, Value::Array(vec![]), "no order was created");
    let (_, pays) = app.get("/pays").await;
    assert_eq!(pays, Value::Array(vec![]), "nobody was charged");
    assert_eq!(app.stock(food).await, 5);
}

on_both_transports!(
    out_of_stock,
    Options::default(),
    out_of_stock_establishes_nothing
);

async fn the_same_idempotency_key_returns_the_same_order(app: &TestApp) {
    let customer = app.seed_customer().await;
    let food = app.seed_food(100).await;
    let body = serde_json::json!({"qty": "10", "foodcaltalogid": food.to_string(), "customerid": customer.to_string()});
    let post = |key: &'static str| {
        app.client
            .post(format!("{}/orders", app.base))
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
    };
    let first = post("order-abc-1").await.expect("POST");
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.expect("json");
    let again = post("order-abc-1").await.expect("POST");
    assert_eq!(
        again.status(),
        StatusCode::CREATED,
        "a retry is answered like the original"
    );
    let again: Value = again.json().await.expect("json");
    assert_eq!(first["id"], again["id"]);
    let other = post("order-abc-2").await.expect("POST");
    assert_eq!(other.status(), StatusCode::CREATED);
    let other: Value = other.json().await.expect("json");
    assert_ne!(other["id"], first["id"], "another key is another order");
    let (_, orders) = app.get("/orders").await;
    assert_eq!(orders.as_array().map(Vec::len), Some(2));
    app.wait_state(first["id"].as_i64().expect("id"), "Completed")
        .await;
    app.wait_state(other["id"].as_i64().expect("id"), "Completed")
        .await;
    let (_, pays) = app.get("/pays").await;
    assert_eq!(
        pays.as_array().map(Vec::len),
        Some(2),
        "charged once per key"
    );
    assert_eq!(app.stock(food).await, 80);
    let bad = app
        .client
        .post(format!("{}/orders", app.base))
        .header("Idempotency-Key", "x".repeat(201))
        .json(&body)
        .send()
        .await
        .expect("POST");
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

on_both_transports!(
    idempotency_key,
    Options::default(),
    the_same_idempotency_key_returns_the_same_order
);

#[actix_web::test]
async fn the_seed_flow_runs_on_quorum_queues() {
    let opts = Options {
        quorum_queues: true,
        ..Options::default()
    };
    if let Some(app) = crate::helpers::spawn_app(crate::helpers::Broker::RabbitMq, opts).await {
        seed_flow_completes(&app).await;
        app.stop().await;
    }
}
