//! The kitchen manager's cancellation at every stage of an order, racing
//! in-flight steps, twice, without a token, after delivery; compensations
//! that fail and are retried.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Options, TestApp, staff_token, token};
use crate::on_both_transports;

/// Places the seed's order and returns (order id, food id).
async fn place(app: &TestApp) -> (i64, i64) {
    let customer = app.seed_customer().await;
    let food = app.seed_food(100).await;
    let (status, order) = app.order(customer, food, 10).await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    (order["id"].as_i64().expect("id"), food)
}

async fn cancel(app: &TestApp, id: i64) -> Value {
    let (status, body) = app
        .delete_as(&format!("/kitchens/{id}"), Some(token()))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["sagaId"], id);
    body
}

/// After a cancellation: the saga is compensated, the order cancelled, the
/// stock back, and each worker's record is in `expected` (None = never created).
async fn assert_cancelled(app: &TestApp, id: i64, food: i64, expected: [Option<&str>; 4]) -> Value {
    let saga = app.wait_state(id, "Compensated").await;
    assert_eq!(saga["orderStatus"], "Cancelled", "{saga}");
    let (_, order) = app.get(&format!("/orders/{id}")).await;
    assert_eq!(order["status"], "Cancelled");
    for (collection, want) in ["pays", "kitchens", "deliveries", "coupons"]
        .into_iter()
        .zip(expected)
    {
        assert_eq!(
            app.record_status(collection, id).await.as_deref(),
            want,
            "{collection}: {saga:#}"
        );
    }
    assert_eq!(app.stock(food).await, 100, "stock returned");
    // A second cancel is refused, and never refunds twice.
    let (status, body) = app
        .delete_as(&format!("/kitchens/{id}"), Some(token()))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (_, pays) = app.get(&format!("/pays?orderId={id}")).await;
    assert_eq!(pays.as_array().map(Vec::len), Some(1));
    saga
}

async fn after_completion(app: &TestApp) {
    let (id, food) = place(app).await;
    app.wait_state(id, "Completed").await;
    let (s, _) = app.delete_as(&format!("/kitchens/{id}"), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = app
        .delete_as(&format!("/kitchens/{id}"), Some("wrong-token"))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // The kitchen may not cancel: that is the manager's.
    let (s, _) = app
        .delete_as(&format!("/kitchens/{id}"), Some(&staff_token("kitchen")))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(
        app.saga(id).await["state"],
        "Completed",
        "a refused cancel changed nothing"
    );
    cancel(app, id).await;
    let saga = assert_cancelled(
        app,
        id,
        food,
        [
            Some("Refunded"),
            Some("Cancelled"),
            Some("Cancelled"),
            Some("Cancelled"),
        ],
    )
    .await;
    // Reverse order, each step exactly once.
    let order: Vec<&str> = saga["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter(|h| h["stepStatus"] == "Compensated")
        .filter_map(|h| h["step"].as_str())
        .collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["coupon", "delivery", "kitchen", "pay"],
        "{order:?}"
    );
    let pos = |s: &str| order.iter().position(|x| *x == s).expect("compensated");
    assert!(
        pos("delivery") < pos("kitchen") && pos("kitchen") < pos("pay"),
        "{order:?}"
    );
    app.wait_view("/myOrders", id, "cancelled everywhere", |m| {
        m["status"] == "Cancelled"
            && m["sagaState"] == "Compensated"
            && m["payStatus"] == "Refunded"
            && m["kitchenStatus"] == "Cancelled"
            && m["deliveryStatus"] == "Cancelled"
            && m["couponStatus"] == "Cancelled"
    })
    .await;
    app.wait_view("/foodCatalogViews", food, "restocked", |f| {
        f["stock"] == 100
    })
    .await;
}

on_both_transports!(
    cancel_after_completion,
    Options::default(),
    after_completion
);

async fn when_kitchen_accepted(app: &TestApp) {
    let (id, food) = place(app).await;
    app.wait_record("kitchens", id, "Accepted").await;
    assert_eq!(app.stock(food).await, 90);
    cancel(app, id).await;
    assert_cancelled(
        app,
        id,
        food,
        [Some("Refunded"), Some("Cancelled"), None, None],
    )
    .await;
}

on_both_transports!(
    cancel_when_kitchen_accepted,
    Options {
        kitchen_manual: true,
        ..Options::default()
    },
    when_kitchen_accepted
);

async fn when_cooked(app: &TestApp) {
    let (id, food) = place(app).await;
    app.wait_record("kitchens", id, "Accepted").await;
    app.wait_for_person(id).await;
    let (s, body) = app
        .post_as_manager(&format!("/kitchens/{id}/cooked"), json!({}))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    app.wait_saga(id, "Cooked", |v| v["orderStatus"] == "Cooked")
        .await;
    app.wait_record("deliveries", id, "Dispatched").await;
    cancel(app, id).await;
    assert_cancelled(
        app,
        id,
        food,
        [Some("Refunded"), Some("Cancelled"), Some("Cancelled"), None],
    )
    .await;
}

on_both_transports!(
    cancel_when_cooked,
    Options {
        kitchen_manual: true,
        delivery_manual: true,
        ..Options::default()
    },
    when_cooked
);

async fn when_dispatched_with_coupon_in_flight(app: &TestApp) {
    let (id, food) = place(app).await;
    app.wait_record("deliveries", id, "Dispatched").await;
    app.wait_for_person(id).await;
    let (s, body) = app
        .post_as_manager(&format!("/deliveries/{id}/pickedUp"), json!({}))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    // The coupon worker is slow: its step is in flight when the cancel lands.
    app.wait_saga(id, "dispatched", |v| v["orderStatus"] == "Dispatched")
        .await;
    cancel(app, id).await;
    assert_cancelled(
        app,
        id,
        food,
        [
            Some("Refunded"),
            Some("Cancelled"),
            Some("Cancelled"),
            Some("Cancelled"),
        ],
    )
    .await;
}

on_both_transports!(
    cancel_when_dispatched,
    Options {
        delivery_manual: true,
        coupon_latency: Some("300ms"),
        ..Options::default()
    },
    when_dispatched_with_coupon_in_flight
);

async fn racing_the_kitchen(app: &TestApp) {
    let (id, food) = place(app).await;
    // The kitchen takes 300 ms: the cancel arrives while it cooks.
    cancel(app, id).await;
    let saga = assert_cancelled(
        app,
        id,
        food,
        [Some("Refunded"), Some("Cancelled"), None, None],
    )
    .await;
    assert_eq!(saga["steps"][1]["status"], "Compensated", "{saga:#}");
    assert_eq!(
        saga["steps"][2]["status"], "Pending",
        "the forward path stopped"
    );
}

on_both_transports!(
    cancel_racing_the_kitchen,
    Options {
        kitchen_latency: Some("300ms"),
        ..Options::default()
    },
    racing_the_kitchen
);

async fn after_delivery(app: &TestApp) {
    let (id, _food) = place(app).await;
    app.wait_record("deliveries", id, "Dispatched").await;
    let (s, _) = app
        .post_as_manager(&format!("/deliveries/{id}/delivered"), json!({}))
        .await;
    assert_eq!(
        s,
        StatusCode::CONFLICT,
        "delivered before picked up is refused by the saga"
    );
    app.wait_for_person(id).await;
    let (s, _) = app
        .post_as_manager(&format!("/deliveries/{id}/pickedUp"), json!({}))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    app.wait_state(id, "Completed").await;
    let (s, _) = app
        .post_as_manager(&format!("/deliveries/{id}/delivered"), json!({}))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    app.wait_saga(id, "Delivered", |v| v["orderStatus"] == "Delivered")
        .await;
    let (status, body) = app
        .delete_as(&format!("/kitchens/{id}"), Some(token()))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        app.record_status("pays", id).await.as_deref(),
        Some("Approved")
    );
    // The saga closed the order at once; the worker records it a moment later.
    app.wait_record("deliveries", id, "Delivered").await;
}

on_both_transports!(
    cancel_after_delivery,
    Options {
        delivery_manual: true,
        ..Options::default()
    },
    after_delivery
);

async fn refund_fails_twice_then_succeeds(app: &TestApp) {
    let (id, food) = place(app).await;
    app.wait_state(id, "Completed").await;
    cancel(app, id).await;
    let saga = assert_cancelled(
        app,
        id,
        food,
        [
            Some("Refunded"),
            Some("Cancelled"),
            Some("Cancelled"),
            Some("Cancelled"),
        ],
    )
    .await;
    assert_eq!(saga["steps"][0]["attempts"], 3, "{saga:#}");
}

on_both_transports!(
    compensation_fails_then_succeeds,
    Options {
        fail_compensations: Some("pay=2"),
        fast_retries: true,
        ..Options::default()
    },
    refund_fails_twice_then_succeeds
);

async fn refund_keeps_failing_until_retried(app: &TestApp) {
    let (id, food) = place(app).await;
    app.wait_state(id, "Completed").await;
    cancel(app, id).await;
    // Three attempts (the test saga's limit) all fail: the saga is stuck.
    let saga = app.wait_state(id, "Failed").await;
    assert_eq!(saga["currentStep"], "pay", "{saga:#}");
    assert!(
        saga["reason"]
            .as_str()
            .unwrap_or("")
            .contains("compensation of pay failed"),
        "{saga:#}"
    );
    assert_eq!(saga["steps"][0]["status"], "Compensating");
    assert!(saga["steps"][0]["error"].is_string());
    assert_eq!(
        app.record_status("pays", id).await.as_deref(),
        Some("Approved")
    );
    let (_, failed) = app.get("/sagas?state=Failed").await;
    assert_eq!(failed.as_array().map(Vec::len), Some(1));
    let (s, _) = app
        .post_as(&format!("/sagas/{id}/retry"), json!({}), None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // The fourth attempt still fails, the fifth succeeds.
    let (s, body) = app
        .post_as_manager(&format!("/sagas/{id}/retry"), json!({}))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    assert_cancelled(
        app,
        id,
        food,
        [
            Some("Refunded"),
            Some("Cancelled"),
            Some("Cancelled"),
            Some("Cancelled"),
        ],
    )
    .await;
    let (s, _) = app
        .post_as_manager(&format!("/sagas/{id}/retry"), json!({}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "only a Failed saga can be retried");
}

on_both_transports!(
    compensation_exhausted_then_retried,
    Options {
        fail_compensations: Some("pay=4"),
        fast_retries: true,
        ..Options::default()
    },
    refund_keeps_failing_until_retried
);

async fn racing_the_payment(app: &TestApp) {
    let customer = app.seed_customer().await;
    let food = app.seed_food(100).await;
    // The payment takes 400 ms; the manager cancels order 1 meanwhile.
    let canceller = async {
        loop {
            let (status, body) = app.delete_as("/kitchens/1", Some(token())).await;
            if status != StatusCode::NOT_FOUND {
                return (status, body);
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    let ((order_status, order), (cancel_status, cancel_body)) =
        tokio::join!(app.order(customer, food, 10), canceller);
    assert_eq!(cancel_status, StatusCode::ACCEPTED, "{cancel_body}");
    assert_eq!(order_status, StatusCode::CONFLICT, "{order}");
    assert_eq!(order["error"], "order_cancelled");
    // The approval that arrives after the cancel is refunded.
    assert_cancelled(app, 1, food, [Some("Refunded"), None, None, None]).await;
}

on_both_transports!(
    cancel_racing_the_payment,
    Options {
        pay_latency: Some("400ms"),
        ..Options::default()
    },
    racing_the_payment
);

async fn racing_the_delivery(app: &TestApp) {
    let (id, food) = place(app).await;
    app.wait_saga(id, "dispatching", |v| v["steps"][2]["status"] == "Running")
        .await;
    // The delivery takes 300 ms: the cancel arrives while it dispatches.
    cancel(app, id).await;
    let saga = assert_cancelled(
        app,
        id,
        food,
        [Some("Refunded"), Some("Cancelled"), Some("Cancelled"), None],
    )
    .await;
    assert_eq!(
        saga["steps"][3]["status"], "Pending",
        "the forward path stopped"
    );
}

on_both_transports!(
    cancel_racing_the_delivery,
    Options {
        delivery_latency: Some("300ms"),
        ..Options::default()
    },
    racing_the_delivery
);

async fn passivated_sagas_come_back_on_their_next_event(app: &TestApp) {
    let (id, food) = place(app).await;
    app.wait_record("kitchens", id, "Accepted").await;
    app.wait_for_person(id).await;
    // The saga waits for a person: its actor passivates (50 ms here).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (s, body) = app
        .post_as_manager(&format!("/kitchens/{id}/cooked"), json!({}))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    app.wait_state(id, "Completed").await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // Completed and passivated: a cancel loads it again.
    cancel(app, id).await;
    assert_cancelled(
        app,
        id,
        food,
        [
            Some("Refunded"),
            Some("Cancelled"),
            Some("Cancelled"),
            Some("Cancelled"),
        ],
    )
    .await;
}

on_both_transports!(
    passivation,
    Options {
        kitchen_manual: true,
        passivate_after: Some("50ms"),
        ..Options::default()
    },
    passivated_sagas_come_back_on_their_next_event
);
