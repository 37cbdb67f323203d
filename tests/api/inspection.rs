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

/// The ids of a list of sagas.
fn ids(list: &serde_json::Value) -> Vec<i64> {
    list.as_array()
        .unwrap_or_else(|| panic!("a list: {list}"))
        .iter()
        .map(|s| s["id"].as_i64().expect("id"))
        .collect()
}

/// `GET /sagas` with the `Link` of its next page, if it names one.
async fn page_of(app: &TestApp, path_and_query: &str) -> (Vec<i64>, Option<String>) {
    let res = app
        .client
        .get(format!("{}{path_and_query}", app.base))
        .send()
        .await
        .expect("GET /sagas");
    assert_eq!(res.status(), StatusCode::OK, "{path_and_query}");
    let next = res
        .headers()
        .get("link")
        .map(|l| l.to_str().expect("ascii").to_owned())
        .map(|l| {
            let (target, rel) = l.split_once(';').expect("<target>; rel");
            assert_eq!(rel.trim(), r#"rel="next""#, "{l}");
            target
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_owned()
        });
    let list: serde_json::Value = res.json().await.expect("JSON");
    (ids(&list), next)
}

async fn an_operator_searches_sagas(app: &TestApp) {
    let (alice, bob) = (app.seed_customer().await, app.seed_customer().await);
    let (cake, tea) = (app.seed_food(100).await, app.seed_food(100).await);
    let mut placed = Vec::new();
    for (customer, food) in [(alice, cake), (alice, cake), (bob, tea), (alice, tea)] {
        let (s, order) = app.order(customer, food, 1).await;
        assert_eq!(s, StatusCode::CREATED, "{order}");
        placed.push(order["id"].as_i64().expect("id"));
        // Distinct creation times, to cut a time range between them.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    for id in &placed {
        app.wait_record("kitchens", *id, "Accepted").await;
    }
    // The first one is cooked and goes on to the end.
    app.wait_for_person(placed[0]).await;
    let (s, body) = app
        .post_as_manager(
            &format!("/kitchens/{}/cooked", placed[0]),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{body}");
    app.wait_state(placed[0], "Completed").await;

    let get = |q: &'static str| async move {
        let (s, v) = app.get(&format!("/sagas{q}")).await;
        assert_eq!(s, StatusCode::OK, "{q}: {v}");
        ids(&v)
    };
    let q = |query: String| async move {
        let (s, v) = app.get(&format!("/sagas?{query}")).await;
        assert_eq!(s, StatusCode::OK, "{query}: {v}");
        ids(&v)
    };
    assert_eq!(get("").await, placed);
    assert_eq!(
        q(format!("customerId={alice}")).await,
        vec![placed[0], placed[1], placed[3]]
    );
    assert_eq!(q(format!("foodId={tea}")).await, vec![placed[2], placed[3]]);
    assert_eq!(
        q(format!("customerId={alice}&foodId={tea}")).await,
        vec![placed[3]]
    );
    // Waiting at the kitchen: the three not cooked; the finished one has no step.
    assert_eq!(get("?step=kitchen").await, placed[1..].to_vec());
    assert_eq!(get("?step=pay").await, Vec::<i64>::new());
    assert_eq!(get("?state=Completed").await, vec![placed[0]]);
    assert_eq!(
        get("?state=Running&step=kitchen&limit=1").await,
        vec![placed[1]]
    );
    // Time ranges: [from, to) over createdAt.
    let third = app.saga(placed[2]).await;
    let at = third["createdAt"].as_str().expect("createdAt").to_owned();
    assert_eq!(q(format!("createdFrom={at}")).await, placed[2..].to_vec());
    assert_eq!(q(format!("createdTo={at}")).await, placed[..2].to_vec());
    assert_eq!(
        get("?createdFrom=2999-01-01T00:00:00Z").await,
        Vec::<i64>::new()
    );
    assert_eq!(
        get("?updatedTo=2000-01-01T00:00:00Z").await,
        Vec::<i64>::new()
    );
    assert_eq!(
        get("?updatedFrom=2000-01-01T00:00:00%2B01:00").await,
        placed
    );
    // Waiting longer than: not finished and unchanged for that long.
    assert_eq!(get("?waitingLongerThan=0ms").await, placed[1..].to_vec());
    assert_eq!(get("?waitingLongerThan=1h").await, Vec::<i64>::new());

    // The cursor: pages of two, each naming the next, until one is short.
    let mut seen = Vec::new();
    let mut link = Some("/sagas?limit=2".to_owned());
    let mut pages = 0;
    while let Some(target) = link {
        let (page, next) = page_of(app, &target).await;
        assert!(page.len() <= 2, "{target}: {page:?}");
        seen.extend(page);
        link = next;
        pages += 1;
        assert!(pages <= 4, "the cursor ends");
    }
    assert_eq!(seen, placed, "every saga once, in order");
    assert_eq!(pages, 3, "2 + 2 + an empty last page");
    let (page, next) = page_of(app, &format!("/sagas?customerId={alice}&limit=2")).await;
    assert_eq!(page, vec![placed[0], placed[1]]);
    let next = next.expect("a full page names the next");
    assert!(
        next.starts_with("/sagas?") && next.contains(&format!("customerId={alice}")),
        "{next}"
    );
    assert_eq!(page_of(app, &next).await.0, vec![placed[3]]);

    // Bad searches are the caller's mistakes, said clearly.
    // A step the saga does not have is a 422 (well formed, names nothing).
    let (s, v) = app.get("/sagas?step=oven").await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(
        v["detail"]
            .as_str()
            .unwrap_or("")
            .contains("its steps are pay, kitchen, delivery, coupon"),
        "{v}"
    );
    // The cursor and an offset together: skip after the cursor.
    assert_eq!(
        get("?after=0&offset=1&limit=2").await,
        placed[1..3].to_vec()
    );
    for (query, says) in [
        ("createdFrom=yesterday", "RFC 3339"),
        ("updatedTo=2026-12-07", "RFC 3339"),
        ("waitingLongerThan=5", "unit"),
        ("after=-1", "`after`"),
        ("customerId=0", "positive"),
        ("state=Sleeping", "expected Running"),
    ] {
        let (s, v) = app.get(&format!("/sagas?{query}")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{query}: {v}");
        assert!(
            v["detail"].as_str().unwrap_or("").contains(says)
                || v["error"].as_str().unwrap_or("").contains(says),
            "{query}: {v}"
        );
    }
}

on_both_transports!(
    search,
    Options {
        kitchen_manual: true,
        ..Options::default()
    },
    an_operator_searches_sagas
);
