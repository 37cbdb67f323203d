//! Saga inspection answers "why is it stuck?", over HTTP and the CLI.

use reqwest::StatusCode;

use crate::helpers::{Options, TestApp, token};
use crate::on_both_transports;

async fn a_saga_says_what_it_waits_on(app: &TestApp) {
    let customer = app.seed_customer().await;
    let food = app.seed_food(100).await;
    let (s, order) = app.order(customer, food, 1).await;
    assert_eq!(s, StatusCode::CREATED, "{order}");
    let id = order["id"].as_i64().expect("id");
    // The kitchen takes 600 ms: its command is in flight.
    let saga = app.saga(id).await;
    let waiting = &saga["waitingOn"];
    assert_eq!(waiting["step"], "kitchen", "{saga:#}");
    assert_eq!(waiting["direction"], "forward");
    assert_eq!(waiting["attempts"], 1);
    assert!(
        waiting["since"].is_string() && waiting["timesOutAt"].is_string(),
        "{waiting}"
    );
    let flight = saga["inFlight"].as_array().expect("inFlight");
    let kitchen = flight
        .iter()
        .find(|m| m["messageId"] == format!("order-{id}.kitchen.do"))
        .unwrap_or_else(|| panic!("the kitchen command is in flight: {flight:?}"));
    // The kitchen's queue of the food's partition (8 partitions).
    assert_eq!(
        kitchen["queue"],
        format!("{}.kitchen.commands.p{}", app.namespace, food % 8)
    );
    assert!(
        kitchen["managementUrl"]
            .as_str()
            .unwrap_or("")
            .contains("/#/queues/%2F/")
    );
    // Once completed it waits on nothing, and once its last messages (the
    // order's events) left the outbox nothing of it is in flight.
    let done = app
        .wait_saga(id, "completed with nothing in flight", |v| {
            v["state"] == "Completed" && v["inFlight"] == serde_json::json!([])
        })
        .await;
    assert!(done["waitingOn"].is_null(), "{done:#}");
}

on_both_transports!(
    waiting_on,
    Options {
        kitchen_latency: Some("600ms"),
        ..Options::default()
    },
    a_saga_says_what_it_waits_on
);

async fn the_cli_prints_the_same(app: &TestApp) {
    let customer = app.seed_customer().await;
    let food = app.seed_food(100).await;
    let (s, _) = app.order(customer, food, 1).await;
    assert_eq!(s, StatusCode::CREATED);
    app.wait_record("kitchens", 1, "Accepted").await;
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hearty"))
            .args(args)
            .args(["--url", &app.base])
            .env("HEARTY_TOKEN", token())
            .output()
            .expect("run hearty");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let list = run(&["sagas", "list", "--state", "Running"]);
    assert!(
        list.lines().any(|l| l.trim_start().starts_with("1 ")
            && l.contains("Running")
            && l.contains("kitchen")),
        "{list}"
    );
    let show = run(&["sagas", "show", "1"]);
    assert!(
        show.contains("saga 1 (order_fulfilment v1): Running"),
        "{show}"
    );
    assert!(show.contains("waiting on: kitchen (forward)"), "{show}");
    assert!(show.contains("pay replied done"), "{show}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hearty"))
        .args(["sagas", "show", "999", "--url", &app.base])
        .env("HEARTY_TOKEN", token())
        .output()
        .expect("run hearty");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));
    // Without a token: the server's 401, said as such.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hearty"))
        .args(["sagas", "list", "--url", &app.base])
        .env_remove("HEARTY_TOKEN")
        .output()
        .expect("run hearty");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

on_both_transports!(
    cli,
    Options {
        kitchen_manual: true,
        ..Options::default()
    },
    the_cli_prints_the_same
);
