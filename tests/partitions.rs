//! Partitioned, fenced ownership over the real RabbitMQ, through real
//! `hearty serve` processes: one acting owner per (role, partition), a
//! duplicate waits as a standby or is refused, a cut-off owner is fenced.

mod common;

use std::time::Duration;

use common::management::{cut_connections_of, management_missing, wait_listed};
use common::{Cluster, Service};
use serde_json::Value;

/// Places `n` orders of one cake and waits until each is completed.
fn complete_orders(c: &Cluster, api: &Service, n: usize) -> Vec<i64> {
    let ids: Vec<i64> = (0..n)
        .map(|_| {
            let (s, v, _) = c.order(api, 1);
            assert_eq!(s, 201, "{v}");
            v["id"].as_i64().expect("id")
        })
        .collect();
    for id in &ids {
        c.wait_state(api, *id, "Completed");
    }
    ids
}

#[test]
fn a_duplicate_owner_waits_as_a_standby_and_takes_over() {
    let Some(c) = Cluster::new() else { return };
    let api = c.start("api,orchestrator", &[]);
    let _others = c.start("kitchen,delivery,coupon", &[]);
    let first = c.start("pay", &[]);
    // The same partitions from the same data folder: it must not act.
    let mut standby = c.spawn("pay", &[]);
    c.seed(&api, 100);
    complete_orders(&c, &api, 8);
    assert_eq!(
        c.metric(&first, "hearty_worker_commands_total"),
        8.0,
        "the owner handled every payment"
    );
    assert!(
        standby.try_listening().is_none(),
        "the standby does not start while the owner lives"
    );
    // The owner dies: the standby takes its partitions over.
    first.kill();
    let second = standby
        .listening(Duration::from_secs(60))
        .expect("the standby takes over");
    complete_orders(&c, &api, 4);
    assert_eq!(
        c.metric(&second, "hearty_worker_commands_total"),
        4.0,
        "the new owner handles what comes after"
    );
}

#[test]
fn partitions_of_another_folder_and_another_count_are_refused() {
    let Some(c) = Cluster::new() else { return };
    let _owner = c.start("pay", &[("HEARTY_PARTITIONS", "0-3")]);
    let other = c.dir.path().join("other");
    let other = other.to_str().expect("utf-8 path");
    let (status, err) = c.refused(
        "pay",
        &[("HEARTY_DATA_DIR", other), ("HEARTY_PARTITIONS", "2-5")],
    );
    assert!(!status.success());
    assert!(
        err.contains("pay p2") && err.contains("belongs to another data folder"),
        "names the partition and why: {err}"
    );
    // The partitions nobody holds are free for that folder.
    let _second = c.start(
        "pay",
        &[("HEARTY_DATA_DIR", other), ("HEARTY_PARTITIONS", "4-7")],
    );
    let third = c.dir.path().join("third");
    let (status, err) = c.refused(
        "kitchen",
        &[
            ("HEARTY_DATA_DIR", third.to_str().expect("utf-8 path")),
            ("HEARTY_PARTITION_COUNT", "4"),
        ],
    );
    assert!(!status.success());
    assert!(
        err.contains("has 8 partitions") && err.contains("HEARTY_PARTITION_COUNT=4"),
        "says the recorded count: {err}"
    );
}

#[test]
fn an_owner_cut_off_from_the_broker_is_fenced_when_another_took_over() {
    let Some(c) = Cluster::new() else { return };
    if management_missing() {
        return;
    }
    let api = c.start("api,orchestrator", &[]);
    let _others = c.start("kitchen,delivery,coupon", &[]);
    let mut first = c.start("pay", &[]);
    // The folder's volume reattached elsewhere (another host: no shared
    // lock): the same home, so the registry lets it in, and it waits on
    // the broker's lease as a standby.
    let moved = c.dir.path().join("moved");
    std::fs::create_dir_all(&moved).expect("mkdir");
    std::fs::copy(c.data_dir_of("pay", &[]).join("home"), moved.join("home")).expect("copy home");
    let mut standby = c.spawn(
        "pay",
        &[("HEARTY_DATA_DIR", moved.to_str().expect("utf-8 path"))],
    );
    c.seed(&api, 100);
    complete_orders(&c, &api, 2);
    assert!(
        standby.try_listening().is_none(),
        "a standby while the owner is connected"
    );
    // Cut the owner off until the standby wins the lease (the owner
    // reconnects at once, so it may win a round or two).
    let mut took_over = None;
    for _ in 0..40 {
        cut_connections_of(&c, first.pid());
        std::thread::sleep(Duration::from_millis(700));
        if let Some(addr) = standby.try_listening() {
            took_over = Some(addr);
            break;
        }
    }
    let addr = took_over.expect("the standby took the partitions over");
    let second = standby.into_service(addr);
    // The old owner came back to find its leases taken: it stops acting.
    let status = first
        .exited(Duration::from_secs(30))
        .expect("the fenced owner stops by itself");
    assert!(!status.success(), "a fenced stop is a failure: {status}");
    complete_orders(&c, &api, 3);
    assert_eq!(c.metric(&second, "hearty_worker_commands_total"), 3.0);
}

#[test]
fn api_replicas_over_partitioned_owners_answer_alike_and_survive_an_owner_kill() {
    let Some(c) = Cluster::new() else { return };
    // Shared nothing: every process its own folder; two stateless API
    // replicas, two orchestrator owners, two pay owners.
    let folder = |name: &str| c.dir.path().join(name).to_string_lossy().into_owned();
    let (dir_a, dir_b) = (folder("api-a"), folder("api-b"));
    let api_a = c.start("api", &[("HEARTY_DATA_DIR", &dir_a)]);
    let api_b = c.start("api", &[("HEARTY_DATA_DIR", &dir_b)]);
    let orch_low = [("HEARTY_PARTITIONS", "0-3")];
    let orch_high = [("HEARTY_PARTITIONS", "4-7")];
    let low = c.start("orchestrator", &orch_low);
    let _high = c.start("orchestrator", &orch_high);
    let _pay_low = c.start("pay", &[("HEARTY_PARTITIONS", "0-3")]);
    let _pay_high = c.start("pay", &[("HEARTY_PARTITIONS", "4-7")]);
    let _others = c.start("kitchen,delivery,coupon", &[]);
    c.seed(&api_a, 1000);
    let mut placed = Vec::new();
    for i in 0..16 {
        let api = if i % 2 == 0 { &api_a } else { &api_b };
        let (s, v, _) = c.order(api, 1);
        assert_eq!(s, 201, "{v}");
        placed.push(v["id"].as_i64().expect("id"));
    }
    // Both owners took orders: ids fall in both halves.
    assert!(placed.iter().any(|id| id % 8 < 4) && placed.iter().any(|id| id % 8 >= 4));
    // One owner dies mid-stream and comes back with its folder.
    low.kill();
    let mut answered = Vec::new();
    for i in 0..8 {
        let api = if i % 2 == 0 { &api_a } else { &api_b };
        let (s, v, _) = c.order(api, 1);
        // A partition without its owner answers 503; the others go on.
        assert!(s == 201 || s == 503, "{s}: {v}");
        if s == 201 {
            answered.push(v["id"].as_i64().expect("id"));
        }
    }
    let _low = c.start("orchestrator", &orch_low);
    placed.extend(answered);
    for id in &placed {
        c.wait_state(&api_b, *id, "Completed");
    }
    // Every replica answers the same lists, merged over both owners.
    let mut expected = placed.clone();
    expected.sort_unstable();
    for api in [&api_a, &api_b] {
        let orders = c.get(api, "/orders?limit=1000");
        let ids: Vec<i64> = orders
            .as_array()
            .expect("list")
            .iter()
            .map(|o| o["id"].as_i64().expect("id"))
            .collect();
        assert_eq!(ids, expected, "GET /orders on {}", api.base);
        let pays = c.get(api, "/pays?limit=1000");
        assert_eq!(pays.as_array().map(Vec::len), Some(expected.len()));
    }
    assert_eq!(
        c.get(&api_a, "/foodCatalogs/1")["stock"].as_i64(),
        Some(1000 - expected.len() as i64),
        "stock exact"
    );
    // The read models: every replica replays the event log into its own.
    let view_of = |api: &Service| {
        let mine = c.get(api, "/myOrders?limit=1000");
        let mut rows: Vec<(i64, String)> = mine
            .as_array()
            .expect("list")
            .iter()
            .map(|o| {
                (
                    o["orderId"].as_i64().unwrap_or(0),
                    o["couponStatus"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        rows.sort();
        rows
    };
    for api in [&api_a, &api_b] {
        c.wait(&format!("{}'s read model to catch up", api.base), || {
            let rows = view_of(api);
            rows.len() == expected.len() && rows.iter().all(|(_, coupon)| coupon == "Issued")
        });
    }
    // A replica started now (everything above is in the log) catches up by
    // itself, without copying files, and is not ready before it has: once
    // ready, its answers are complete at once.
    let dir_c = folder("api-c");
    let api_c = c.start("api", &[("HEARTY_DATA_DIR", &dir_c)]);
    c.wait_ready(&api_c);
    assert_eq!(
        view_of(&api_a),
        view_of(&api_c),
        "complete as soon as ready"
    );
    let stock_view = |api: &Service| c.get(api, "/foodCatalogViews")[0]["stock"].clone();
    c.wait("the catalog views to agree", || {
        stock_view(&api_c) == stock_view(&api_a) && stock_view(&api_b) == stock_view(&api_a)
    });

    // Merged across owners, a page is served up to 100000 rows deep.
    let (s, v, _) = c.request(
        reqwest::Method::GET,
        format!("{}/sagas?offset=200000&limit=1", api_a.base),
        None,
    );
    assert_eq!((s, v["error"].as_str()), (400, Some("bad_request")), "{v}");
    // The operator's search spans every owner, paged by its cursor: pages of
    // five after the last id seen, merged over both owners, each saga once.
    let mut walked = Vec::new();
    let mut after = 0;
    loop {
        let page = c.get(
            &api_b,
            &format!("/sagas?state=Completed&foodId=1&limit=5&after={after}"),
        );
        let ids: Vec<i64> = page
            .as_array()
            .expect("list")
            .iter()
            .map(|s| s["id"].as_i64().expect("id"))
            .collect();
        let Some(last) = ids.last() else { break };
        after = *last;
        walked.extend(ids);
    }
    assert_eq!(walked, expected, "the cursor across owners");

    // A cancellation through one replica, seen through the other.
    let id = expected[0];
    let (s, v, _) = c.request(
        reqwest::Method::DELETE,
        format!("{}/kitchens/{id}", api_a.base),
        None,
    );
    assert_eq!(s, 202, "{v}");
    c.wait_state(&api_b, id, "Compensated");
    // Shared nothing: no SQLite file is open in two processes.
    let mut seen = std::collections::HashMap::new();
    for pid in [
        api_a.pid(),
        api_b.pid(),
        api_c.pid(),
        _high.pid(),
        _low.pid(),
    ] {
        for db in Cluster::open_databases(pid) {
            if let Some(other) = seen.insert(db.clone(), pid) {
                panic!("{} is open in pids {other} and {pid}", db.display());
            }
        }
    }
}

#[test]
fn a_placement_whose_answer_is_lost_is_answered_for_what_happened() {
    let Some(c) = Cluster::new() else { return };
    if management_missing() {
        return;
    }
    let api = c.start("api", &[]);
    let _orchestrator = c.start("orchestrator", &[]);
    let _pay = c.start("pay", &[("HEARTY_PAY_LATENCY", "2s")]);
    let _others = c.start("kitchen,delivery,coupon", &[]);
    let customer = c.seed(&api, 100);
    wait_listed(&c, api.pid());
    // The API replica loses its broker connection while the owner is
    // placing the order (the payment takes 2 s): the request's answer is
    // lost with it.
    let base = api.base.clone();
    let placing = std::thread::spawn(move || {
        reqwest::blocking::Client::new()
            .post(format!("{base}/orders"))
            .bearer_auth(customer)
            .json(&serde_json::json!({"qty": "1", "foodcaltalogid": "1", "customerid": "1"}))
            .timeout(Duration::from_secs(60))
            .send()
            .map(|r| {
                (
                    r.status().as_u16(),
                    r.json::<Value>().unwrap_or(Value::Null),
                )
            })
    });
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        cut_connections_of(&c, api.pid()) > 0,
        "the replica's connection was cut"
    );
    let (status, body) = placing.join().expect("thread").expect("an answer");
    // It asked the owner what became of the order: the order's own answer,
    // never a bare 503 for an order that was in fact paid.
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_i64().expect("id");
    c.wait_state(&api, id, "Completed");
    assert_eq!(c.get(&api, "/orders").as_array().map(Vec::len), Some(1));
    // A page deeper than a merge across owners may go is a 400, not a
    // flood of rows from every owner (here one owner answers it itself).
    let (s, _, _) = c.request(
        reqwest::Method::GET,
        format!("{}/sagas?offset=1000000&limit=1", api.base),
        None,
    );
    assert_eq!(s, 200, "one owner of every partition pages by itself");
}

/// A namespace's queues keep their type: given several nodes (quorum
/// queues by default) a namespace declared with classic queues keeps them,
/// and a process told to use quorum queues there refuses to start, naming
/// the argument.
#[test]
fn a_namespace_keeps_its_queue_type_when_nodes_are_added() {
    let Some(c) = Cluster::new() else { return };
    // The probe of `Cluster::new` declared the namespace with one node.
    let two = format!("{},{}", c.url, c.url.replacen("127.0.0.1", "localhost", 1));
    let pay = c.start("pay", &[("HEARTY_AMQP_URL", &two)]);
    pay.terminate();
    let (status, err) = c.refused(
        "pay",
        &[
            ("HEARTY_AMQP_URL", two.as_str()),
            ("HEARTY_QUORUM_QUEUES", "true"),
            // The refusal is retried like an unreachable broker: briefly.
            ("HEARTY_BROKER_WAIT", "2s"),
        ],
    );
    assert!(!status.success());
    assert!(err.contains("x-queue-type"), "{err}");
    assert!(!err.contains("guest:guest"), "no password: {err}");
}

/// Creations racing past partitions without an owner: a request the broker
/// returned (no owner) is sent elsewhere, one it delivered is not — even
/// when RabbitMQ acknowledges many requests at once and the return comes
/// with another request's confirm. Every customer answered 201 exists
/// once, and nothing else was created.
#[test]
fn concurrent_creations_over_unowned_partitions_are_neither_lost_nor_doubled() {
    let Some(c) = Cluster::new() else { return };
    let _owner = c.start("orchestrator", &[("HEARTY_PARTITIONS", "0-3")]);
    let api = c.start("api", &[]);
    let statuses: Vec<u16> = c.rt_block_on(async {
        let sends = (0..400).map(|i| {
            let req = c
                .client()
                .post(format!("{}/customers", api.base))
                .json(&serde_json::json!({"name": format!("c{i}"), "phone": "010", "address": "seoul", "age": "30"}));
            async move { req.send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
        });
        futures_util::future::join_all(sends).await
    });
    let created = statuses.iter().filter(|s| **s == 201).count();
    // The other partitions get their owner, so the list can be gathered.
    let _other = c.start("orchestrator", &[("HEARTY_PARTITIONS", "4-7")]);
    c.wait("the second owner to serve", || {
        c.request(
            reqwest::Method::GET,
            format!("{}/customers?limit=1", api.base),
            None,
        )
        .0 == 200
    });
    let customers = c.get(&api, "/customers?limit=100000");
    let names: std::collections::BTreeSet<String> = customers
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|v| v["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        customers.as_array().map(Vec::len),
        Some(created),
        "one customer per 201 (statuses: {:?})",
        statuses.iter().filter(|s| **s != 201).collect::<Vec<_>>()
    );
    assert_eq!(names.len(), created, "no customer twice");
    assert_eq!(
        created,
        400,
        "every creation found an owner: {:?}",
        statuses.iter().filter(|s| **s != 201).collect::<Vec<_>>()
    );
}
