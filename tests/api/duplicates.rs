//! A duplicated command and a duplicated reply each have exactly one effect.

use std::time::Duration;

use hearty::domain::WorkerKind;
use hearty::transport::{Outgoing, Route};
use reqwest::StatusCode;

use crate::helpers::{Options, TestApp};
use crate::on_both_transports;

async fn duplicates_have_one_effect(app: &TestApp) {
    let customer = app.seed_customer().await;
    let food = app.seed_food(100).await;
    let (status, order) = app.order(customer, food, 10).await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    let id = order["id"].as_i64().expect("id");
    let before = app.wait_state(id, "Completed").await;
    assert_eq!(app.stock(food).await, 90);

    // Replay the kitchen's command and the payment's reply, byte for byte
    // as the service sent them, each three times.
    let command = serde_json::json!({
        "kind": "step", "step": "kitchen", "direction": "do", "attempt": 1,
        "order": {"orderId": id, "customerId": customer, "foodId": food, "qty": 10, "amount": 40.0}
    });
    let reply = serde_json::json!({
        "orderId": id, "step": "pay", "inReplyTo": format!("order-{id}.pay.do"), "attempt": 1, "outcome": "done"
    });
    let mut batch = Vec::new();
    for _ in 0..3 {
        batch.push(Outgoing {
            message_id: format!("order-{id}.kitchen.do"),
            correlation_id: id.to_string(),
            message_type: "kitchen.accept".into(),
            route: Route::Command(WorkerKind::Kitchen, food),
            body: serde_json::to_vec(&command).expect("json"),
        });
        batch.push(Outgoing {
            message_id: format!("order-{id}.pay.do.reply.done"),
            correlation_id: id.to_string(),
            message_type: "reply.pay.done".into(),
            route: Route::Reply(id),
            body: serde_json::to_vec(&reply).expect("json"),
        });
    }
    let results = app.transport().publish(batch).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");

    // A second order goes through the same queues behind the duplicates.
    let (status, second) = app.order(customer, food, 10).await;
    assert_eq!(status, StatusCode::CREATED, "{second}");
    app.wait_state(second["id"].as_i64().expect("id"), "Completed")
        .await;
    // Give any straggler time to do damage, then look.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.stock(food).await,
        80,
        "the duplicated command took stock twice"
    );
    let (_, tickets) = app.get("/kitchens").await;
    assert_eq!(tickets.as_array().map(Vec::len), Some(2));
    let after = app.saga(id).await;
    assert_eq!(
        after["history"], before["history"],
        "a duplicated reply changed the saga"
    );
    assert_eq!(after["state"], "Completed");
}

on_both_transports!(
    duplicated_messages,
    Options::default(),
    duplicates_have_one_effect
);
