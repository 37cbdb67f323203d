//! Metrics, the OpenAPI document and Swagger UI.

use reqwest::StatusCode;

use crate::helpers::{Broker, Options, spawn_app};

#[actix_web::test]
async fn metrics_openapi_and_docs_are_served() {
    let app = spawn_app(Broker::InProcess, Options::default())
        .await
        .expect("app");
    let customer = app.seed_customer().await;
    let food = app.seed_food(100).await;
    let (s, _) = app.order(customer, food, 1).await;
    assert_eq!(s, StatusCode::CREATED);
    app.wait_state(1, "Completed").await;

    let metrics = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for needle in [
        "# TYPE hearty_sagas_started_total counter",
        "hearty_sagas_completed_total ",
        "hearty_dead_letters_total ",
        "hearty_actor_restarts_total ",
        "hearty_redeliveries_total ",
        "hearty_sagas_in_flight ",
        "hearty_circuit_breaker_state{step=\"pay\"} 0",
        "# TYPE hearty_step_duration_seconds histogram",
        "hearty_step_duration_seconds_count{outcome=\"done\",step=\"pay\"}",
        "hearty_step_duration_seconds_bucket{outcome=\"done\",step=\"coupon\",le=\"+Inf\"}",
        "hearty_outbox_backlog{db=\"orchestrator\"}",
    ] {
        assert!(metrics.contains(needle), "missing `{needle}` in\n{metrics}");
    }

    let (s, doc) = app.get("/openapi.json").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(doc["info"]["title"], "Hearty");
    assert!(
        doc["paths"]["/kitchens/{id}"]["delete"].is_object(),
        "{doc}"
    );
    let docs = app
        .client
        .get(format!("{}/docs/", app.base))
        .send()
        .await
        .expect("docs");
    assert_eq!(docs.status(), StatusCode::OK);
    let html = docs.text().await.expect("html");
    assert!(html.to_lowercase().contains("swagger"), "{html}");
    app.stop().await;
}
