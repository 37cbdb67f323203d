//! Racing clients (issue 10): every case an adversarial review reproduced
//! against the release binary, as a test. Each failed before its fix.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{Broker, Options, TestApp, spawn_app, token};
use crate::invariants::{Answers, assert_invariants};
use crate::on_both_transports;

/// Defect 1: `POST /orders` while the manager cancels the next order id
/// over and over. The cancel used to reach a second actor started between
/// the saga's commit and its actor's start, and both drove the saga.
async fn place_racing_cancels_of_the_next_id(app: &TestApp) {
    let customer = app.seed_customer().await;
    let food = app.seed_food(1000).await;
    let mut answers = Answers::default();
    let mut last_id = 0;
    for _ in 0..12 {
        let next = last_id + 1;
        let placing = app.order(customer, food, 1);
        let cancelling = async {
            let mut accepted = false;
            for _ in 0..200 {
                let (s, _) = app
                    .delete_as(&format!("/kitchens/{next}"), Some(token()))
                    .await;
                if s == StatusCode::ACCEPTED {
                    accepted = true;
                    break;
                }
                tokio::task::yield_now().await;
            }
            accepted
        };
        let ((s, order), cancelled) = tokio::join!(placing, cancelling);
        let id = order["id"]
            .as_i64()
            .or_else(|| order["orderId"].as_i64())
            .expect("the order's id");
        last_id = id;
        match s {
            StatusCode::CREATED => answers.established.push(id),
            _ => answers.refused.push(id),
        }
        let saga = app
            .wait_saga(id, "settled", |v| {
                matches!(
                    v["state"].as_str(),
                    Some("Completed" | "Compensated" | "Failed")
                )
            })
            .await;
        if cancelled {
            let saga = app.wait_state(id, "Compensated").await;
            assert_eq!(saga["orderStatus"], "Cancelled", "{saga:#}");
        }
        // Two machines interleaving leave long histories that leave
        // `Compensated`; one saga's history is short and ends there.
        let lines = saga["history"].as_array().map(Vec::len).unwrap_or(0);
        assert!(lines < 30, "saga {id} history has {lines} lines: {saga:#}");
    }
    assert_invariants(app, &HashMap::from([(food, 1000)]), &answers).await;
}

on_both_transports!(
    cancel_racing_place_order,
    Options::default(),
    place_racing_cancels_of_the_next_id
);

/// Defect 2: a large total made every stored saga unreadable (the amount
/// went through a float) and the server unable to restart.
async fn large_amounts_are_exact(app: &TestApp) {
    let customer = app.seed_customer().await;
    let (s, food) = app.food_priced(1000, "999999.99").await;
    assert_eq!(s, StatusCode::CREATED, "{food}");
    let food = food["id"].as_i64().expect("id");
    let (s, body) = app.order(customer, food, 136).await;
    // Above the payment's decline limit: declined, at once, with a 402.
    assert_eq!(s, StatusCode::PAYMENT_REQUIRED, "{body}");
    let id = body["orderId"].as_i64().expect("orderId");
    app.wait_state(id, "Compensated").await;
    for path in ["/orders", "/sagas", "/myOrders"] {
        let (s, v) = app.get(path).await;
        assert_eq!(s, StatusCode::OK, "{path}: {v}");
    }
    let (s, order) = app.get(&format!("/orders/{id}")).await;
    assert_eq!(s, StatusCode::OK, "{order}");
    assert_eq!(order["amountCents"], 13_599_999_864_i64, "{order}");
    let mine = app
        .wait_view("/myOrders", id, "projected", |o| o["amountCents"].is_i64())
        .await;
    assert_eq!(mine["amountCents"], 13_599_999_864_i64, "{mine}");
    // A total beyond what an order may hold is refused at the door.
    let (s, big) = app.food_priced(10, "1000000000").await;
    assert_eq!(s, StatusCode::CREATED, "{big}");
    let big = big["id"].as_i64().expect("id");
    let (s, body) = app.order(customer, big, 2).await;
    assert_eq!(
        s,
        StatusCode::PAYMENT_REQUIRED,
        "2e9 is a valid total: {body}"
    );
    let (s, body) = app
        .post_as_manager(
            "/foodCatalogs",
            json!({"name": "x", "stock": 1, "price": "1000000000.01"}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    let (s, body) = app
        .post_as_manager(
            "/foodCatalogs",
            json!({"name": "x", "stock": 1, "price": 1e20}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    let (s, huge) = app.food_priced(2_000_000, "999999999.99").await;
    assert_eq!(s, StatusCode::CREATED, "{huge}");
    let huge = huge["id"].as_i64().expect("id");
    let (s, body) = app.order(customer, huge, 1_000_000).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"], "amount_too_large", "{body}");
}

on_both_transports!(large_amounts, Options::default(), large_amounts_are_exact);

/// Defect 2, second half: a stored saga that cannot be decoded is
/// quarantined; it never stops start-up or the lists.
#[actix_web::test]
async fn an_undecodable_saga_is_quarantined_not_fatal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let opts = Options {
        data_dir: Some(data.clone()),
        ..Options::default()
    };
    let Some(app) = spawn_app(Broker::InProcess, opts.clone()).await else {
        return;
    };
    let customer = app.seed_customer().await;
    let food = app.seed_food(100).await;
    let (s, first) = app.order(customer, food, 1).await;
    assert_eq!(s, StatusCode::CREATED, "{first}");
    let (s, second) = app.order(customer, food, 2).await;
    assert_eq!(s, StatusCode::CREATED, "{second}");
    let (s, third) = app.order(customer, food, 3).await;
    assert_eq!(s, StatusCode::CREATED, "{third}");
    let bad = first["id"].as_i64().expect("id");
    let blob = third["id"].as_i64().expect("id");
    app.wait_state(bad, "Completed").await;
    app.wait_state(blob, "Completed").await;
    app.stop().await;
    // Damage one saga (as an incompatible or broken writer would) and make
    // it look active, so recovery must count it; damage another worse (its
    // body not even text) and give it a timer long due, so that it is
    // loaded with the first batch of due sagas.
    let conn = rusqlite::Connection::open(data.join("orchestrator.db")).expect("open");
    conn.execute(
        "UPDATE sagas SET body = '{\"amount\": 1e400}', state = 'Running' WHERE id = ?1",
        [bad],
    )
    .expect("damage");
    conn.execute(
        "UPDATE sagas SET body = x'00ff', wakes_at = 1 WHERE id = ?1",
        [blob],
    )
    .expect("damage");
    drop(conn);
    let app = spawn_app(Broker::InProcess, opts).await.expect("restarts");
    let (s, sagas) = app.get("/sagas").await;
    assert_eq!(s, StatusCode::OK, "{sagas}");
    let quarantined = sagas
        .as_array()
        .and_then(|a| a.iter().find(|v| v["id"] == bad))
        .cloned()
        .expect("listed");
    assert_eq!(quarantined["state"], "Failed", "{quarantined}");
    assert_eq!(quarantined["quarantined"], true, "{quarantined}");
    assert!(
        quarantined["reason"]
            .as_str()
            .unwrap_or("")
            .contains("decode")
    );
    // Recovery reads no body; the audit after start-up marks it Failed
    // for the state filter a moment later.
    let failed = app
        .wait_view("/sagas?state=Failed", bad, "listed as Failed", |v| {
            v["quarantined"] == true
        })
        .await;
    assert_eq!(failed["state"], "Failed", "{failed}");
    let failed = app
        .wait_view("/sagas?state=Failed", blob, "listed as Failed", |v| {
            v["quarantined"] == true
        })
        .await;
    assert!(
        failed["reason"].as_str().unwrap_or("").contains("not text"),
        "{failed}"
    );
    let (s, failed) = app.get("/sagas?state=Failed").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(failed.as_array().map(Vec::len), Some(2), "{failed}");

    for path in [
        "/orders".to_owned(),
        format!("/orders/{bad}"),
        format!("/sagas/{bad}"),
    ] {
        let (s, v) = app.get(&path).await;
        assert_eq!(s, StatusCode::OK, "{path}: {v}");
    }
    let (s, v) = app
        .delete_as(&format!("/kitchens/{bad}"), Some(token()))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"], "saga_quarantined", "{v}");
    // The healthy order is untouched and still served.
    let other = second["id"].as_i64().expect("id");
    app.wait_state(other, "Completed").await;
    app.stop().await;
}

/// Defect 3: an idempotent replay of a completed order, racing the actor's
/// passivation, was taken for a payment timeout and cancelled the order.
async fn replays_never_touch_a_completed_order(app: &TestApp) {
    let customer = app.seed_customer().await;
    let food = app.seed_food(100).await;
    let (s, first) = app.order_with_key("k1", customer, food, 2).await;
    assert_eq!(s, StatusCode::CREATED, "{first}");
    let id = first["id"].as_i64().expect("id");
    app.wait_state(id, "Completed").await;
    for round in 0..25 {
        let replays = (0..8).map(|_| app.order_with_key("k1", customer, food, 2));
        for (s, body) in futures_util::future::join_all(replays).await {
            assert_eq!(s, StatusCode::CREATED, "round {round}: {body}");
            assert_eq!(body["id"], id, "the same order: {body}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let saga = app.saga(id).await;
    assert_eq!(saga["state"], "Completed", "{saga:#}");
    assert_eq!(
        app.record_status("pays", id).await.as_deref(),
        Some("Approved")
    );
    assert_eq!(app.stock(food).await, 98);
}

on_both_transports!(
    idempotent_replays_with_passivation,
    Options {
        passivate_after: Some("0ms"),
        ..Options::default()
    },
    replays_never_touch_a_completed_order
);

/// The key is bound to its request: another body under the same key is a
/// 422, not the first order.
async fn a_key_reused_for_another_request_is_refused(app: &TestApp) {
    let customer = app.seed_customer().await;
    let food = app.seed_food(100).await;
    let (s, first) = app.order_with_key("same-key", customer, food, 1).await;
    assert_eq!(s, StatusCode::CREATED, "{first}");
    app.wait_state(first["id"].as_i64().expect("id"), "Completed")
        .await;
    let (s, body) = app.order_with_key("same-key", customer, food, 5).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"], "idempotency_key_reused", "{body}");
    assert_eq!(body["orderId"], first["id"], "{body}");
    let res = app
        .client
        .post(format!("{}/orders", app.base))
        .header("Idempotency-Key", "same-key")
        .json(&json!({"garbage": true}))
        .send()
        .await
        .expect("POST");
    assert_eq!(
        res.status(),
        StatusCode::BAD_REQUEST,
        "a bad body is a 400 with or without a key"
    );
    assert_eq!(app.stock(food).await, 99, "only the first order took stock");
}

on_both_transports!(
    idempotency_key_reuse,
    Options::default(),
    a_key_reused_for_another_request_is_refused
);

/// A key whose order was turned away (503: payment did not answer) places
/// the order anew on retry instead of answering 503 for ever.
async fn a_turned_away_key_places_the_order_anew(app: &TestApp) {
    let customer = app.seed_customer().await;
    let food = app.seed_food(100).await;
    let (s, first) = app.order_with_key("slow", customer, food, 1).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{first}");
    let first_id = first["orderId"].as_i64().expect("orderId");
    app.wait_saga(first_id, "abandoned", |v| v["orderStatus"] == "Rejected")
        .await;
    let (s, second) = app.order_with_key("slow", customer, food, 1).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{second}");
    let second_id = second["orderId"].as_i64().expect("orderId");
    assert_ne!(second_id, first_id, "the retry placed a new order");
    let answers = Answers {
        established: vec![],
        refused: vec![first_id, second_id],
    };
    assert_invariants(app, &HashMap::from([(food, 100)]), &answers).await;
}

on_both_transports!(
    turned_away_key,
    Options {
        pay_latency: Some("600ms"),
        order_timeout: Some("150ms"),
        ..Options::default()
    },
    a_turned_away_key_places_the_order_anew
);

/// Defect 4: a failing coupon compensation (which does not block) held
/// back the refund and the stock.
async fn a_stuck_coupon_holds_back_nothing(app: &TestApp) {
    let customer = app.seed_customer().await;
    let food = app.seed_food(100).await;
    let (s, order) = app.order(customer, food, 3).await;
    assert_eq!(s, StatusCode::CREATED, "{order}");
    let id = order["id"].as_i64().expect("id");
    app.wait_state(id, "Completed").await;
    let (s, body) = app
        .delete_as(&format!("/kitchens/{id}"), Some(token()))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    let saga = app.wait_state(id, "Failed").await;
    assert!(
        saga["reason"].as_str().unwrap_or("").contains("coupon"),
        "{saga:#}"
    );
    app.wait_record("pays", id, "Refunded").await;
    app.wait_record("kitchens", id, "Cancelled").await;
    app.wait_record("deliveries", id, "Cancelled").await;
    assert_eq!(app.stock(food).await, 100, "the stock came back");
    assert_eq!(
        app.record_status("coupons", id).await.as_deref(),
        Some("Issued")
    );
}

on_both_transports!(
    stuck_coupon_compensation,
    Options {
        fail_compensations: Some("coupon=always"),
        fast_retries: true,
        saga_edit: Some((
            r#"compensation_retry = { max_attempts = 1000, initial_delay = "500ms""#,
            r#"compensation_retry = { max_attempts = 1, initial_delay = "10ms""#,
        )),
        ..Options::default()
    },
    a_stuck_coupon_holds_back_nothing
);

/// Defect 5: the manager's cancel and the delivery team's "delivered" at
/// the same moment both got 202, and the saga stuck with money taken.
async fn cancel_racing_delivered(app: &TestApp) {
    let customer = app.seed_customer().await;
    let food = app.seed_food(100).await;
    let mut answers = Answers::default();
    for _ in 0..10 {
        let (s, order) = app.order(customer, food, 1).await;
        assert_eq!(s, StatusCode::CREATED, "{order}");
        let id = order["id"].as_i64().expect("id");
        answers.established.push(id);
        app.wait_record("kitchens", id, "Accepted").await;
        app.wait_for_person(id).await;
        let (s, b) = app
            .post_as_manager(&format!("/kitchens/{id}/cooked"), json!({}))
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{b}");
        app.wait_record("deliveries", id, "Dispatched").await;
        app.wait_for_person(id).await;
        let (s, b) = app
            .post_as_manager(&format!("/deliveries/{id}/pickedUp"), json!({}))
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{b}");
        app.wait_state(id, "Completed").await;
        let (kitchen, delivery) = (
            format!("/kitchens/{id}"),
            format!("/deliveries/{id}/delivered"),
        );
        let cancel = app.delete_as(&kitchen, Some(token()));
        let delivered = app.post_as_manager(&delivery, json!({}));
        let ((c, cb), (d, db)) = tokio::join!(cancel, delivered);
        let won = [c, d]
            .iter()
            .filter(|s| **s == StatusCode::ACCEPTED)
            .count();
        assert_eq!(
            won, 1,
            "exactly one wins: cancel {c} {cb}, delivered {d} {db}"
        );
        if c == StatusCode::ACCEPTED {
            app.wait_state(id, "Compensated").await;
            app.wait_record("pays", id, "Refunded").await;
        } else {
            app.wait_record("deliveries", id, "Delivered").await;
            let saga = app.saga(id).await;
            assert_eq!(saga["orderStatus"], "Delivered", "{saga:#}");
        }
    }
    assert_invariants(app, &HashMap::from([(food, 100)]), &answers).await;
}

on_both_transports!(
    cancel_versus_delivered,
    Options {
        kitchen_manual: true,
        delivery_manual: true,
        ..Options::default()
    },
    cancel_racing_delivered
);
