//! Fault isolation with real processes over the real RabbitMQ: workers killed
//! with SIGKILL and restarted, the coupon worker down during a cancellation,
//! two pay workers competing, a panicking handler, poison messages, and the
//! payment circuit breaker tripping and recovering.
//!
//! Each test runs `hearty serve` processes with its own namespace and data
//! directory. Waits are liveness bounds (generous, for a slow shared
//! machine), never performance assertions.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hearty::domain::WorkerKind;
use hearty::transport::amqp::{AmqpSettings, AmqpTransport};
use hearty::transport::{Outgoing, Route, Transport};
use serde_json::{Value, json};

const TOKEN: &str = "fault-test-token";

fn amqp_url() -> String {
    std::env::var("HEARTY_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A namespace and data directory shared by a test's processes; the
/// namespace is deleted when the test ends, even on panic.
struct Cluster {
    namespace: String,
    dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.rt.block_on(AmqpTransport::delete_namespace(
            &amqp_url(),
            &self.namespace,
        ));
    }
}

/// One `hearty serve` process.
struct Service {
    child: Child,
    base: String,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Service {
    /// SIGKILL: no chance to clean up.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and the process must exit cleanly.
    fn terminate(mut self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(exit) = self.child.try_wait().expect("wait") {
                assert!(exit.success(), "graceful shutdown exited with {exit}");
                return;
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Cluster {
    /// `None` when RabbitMQ is unreachable outside CI (said loudly).
    fn new() -> Option<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let namespace = format!("hearty-fault-{:016x}", rand::random::<u64>());
        let probe = rt.block_on(AmqpTransport::connect(&AmqpSettings {
            url: amqp_url(),
            namespace: namespace.clone(),
            prefetch: 1,
            connection_name: "fault test probe".into(),
            quorum_queues: false,
        }));
        match probe {
            Ok(t) => rt.block_on(t.close()),
            Err(e) if std::env::var_os("CI").is_none() => {
                eprintln!(
                    "\n!!! SKIPPED: RabbitMQ is not reachable at {} ({e}). In CI this is a failure.\n",
                    amqp_url()
                );
                return None;
            }
            Err(e) => panic!("RabbitMQ is not reachable: {e}"),
        }
        Some(Cluster {
            namespace,
            dir: tempfile::tempdir().expect("tempdir"),
            rt,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client"),
        })
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts `hearty serve` with `roles` and extra settings; returns once
    /// it listens.
    fn start(&self, roles: &str, env: &[(&str, &str)]) -> Service {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hearty"));
        for (k, _) in std::env::vars() {
            if k.starts_with("HEARTY_") {
                cmd.env_remove(k);
            }
        }
        cmd.arg("serve")
            .env("HEARTY_ROLES", roles)
            .env("HEARTY_AMQP_URL", amqp_url())
            .env("HEARTY_NAMESPACE", &self.namespace)
            .env("HEARTY_DATA_DIR", self.data_dir())
            .env("HEARTY_HTTP_ADDR", "127.0.0.1:0")
            .env("HEARTY_MANAGER_TOKEN", TOKEN)
            .env(
                "HEARTY_SAGA_FILE",
                concat!(env!("CARGO_MANIFEST_DIR"), "/sagas/order_fulfilment.toml"),
            )
            .env("RUST_LOG", "warn")
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn hearty");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("Hearty listening on http://") {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("`hearty serve` ({roles}) did not start"));
        Service {
            child,
            base: format!("http://{addr}"),
        }
    }

    fn request(
        &self,
        method: reqwest::Method,
        url: String,
        body: Option<Value>,
    ) -> (u16, Value, Option<String>) {
        self.rt.block_on(async {
            let mut req = self.client.request(method, url).bearer_auth(TOKEN);
            if let Some(b) = body {
                req = req.json(&b);
            }
            let res = req.send().await.expect("request");
            let status = res.status().as_u16();
            let retry_after = res
                .headers()
                .get("Retry-After")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let text = res.text().await.expect("body");
            let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
            (status, v, retry_after)
        })
    }

    fn get(&self, svc: &Service, path: &str) -> Value {
        let (status, v, _) =
            self.request(reqwest::Method::GET, format!("{}{path}", svc.base), None);
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }

    fn post(&self, svc: &Service, path: &str, body: Value) -> (u16, Value, Option<String>) {
        self.request(
            reqwest::Method::POST,
            format!("{}{path}", svc.base),
            Some(body),
        )
    }

    fn metric(&self, svc: &Service, name: &str) -> f64 {
        let (_, v, _) = self.request(reqwest::Method::GET, format!("{}/metrics", svc.base), None);
        let text = v.as_str().map(str::to_owned).unwrap_or_default();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or_else(|| panic!("no metric {name} in {text}"))
    }

    /// The seed's customer and a cake with `stock`.
    fn seed(&self, api: &Service, stock: i64) {
        let (s, v, _) = self.post(
            api,
            "/customers",
            json!({"name": "yang", "phone": "01011", "address": "korea11", "age": "27"}),
        );
        assert_eq!(s, 201, "{v}");
        let (s, v, _) = self.post(
            api,
            "/foodCatalogs",
            json!({"name": "cake", "stock": stock.to_string(), "price": "4.0"}),
        );
        assert_eq!(s, 201, "{v}");
    }

    fn order(&self, api: &Service, qty: i64) -> (u16, Value, Option<String>) {
        self.post(
            api,
            "/orders",
            json!({"qty": qty.to_string(), "foodcaltalogid": "1", "customerid": "1"}),
        )
    }

    fn wait(&self, what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn saga(&self, api: &Service, id: i64) -> Value {
        self.get(api, &format!("/sagas/{id}"))
    }

    fn wait_state(&self, api: &Service, id: i64, state: &str) -> Value {
        let mut last = Value::Null;
        self.wait(&format!("saga {id} to be {state}"), || {
            last = self.saga(api, id);
            last["state"] == state
        });
        last
    }

    fn status_of(&self, api: &Service, collection: &str, id: i64) -> Option<String> {
        let v = self.get(api, &format!("/{collection}?orderId={id}"));
        v.as_array()
            .and_then(|a| a.first())
            .and_then(|r| r["status"].as_str())
            .map(str::to_owned)
    }

    fn stock(&self, api: &Service) -> i64 {
        self.get(api, "/foodCatalogViews")[0]["stock"]
            .as_i64()
            .expect("stock")
    }

    fn publish(&self, msg: Outgoing) {
        self.rt.block_on(async {
            let t = AmqpTransport::connect(&AmqpSettings {
                url: amqp_url(),
                namespace: self.namespace.clone(),
                prefetch: 1,
                connection_name: "fault test publisher".into(),
                quorum_queues: false,
            })
            .await
            .expect("connect");
            let results = t.publish(vec![msg]).await;
            assert!(results.iter().all(Result::is_ok), "{results:?}");
            t.close().await;
        });
    }

    /// Takes one message off the dead-letter queue: (message id, reason).
    fn dead_letter(&self) -> Option<(String, String)> {
        use lapin::options::BasicGetOptions;
        self.rt.block_on(async {
            let conn =
                lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
                    .await
                    .expect("connect");
            let ch = conn.create_channel().await.expect("channel");
            let got = ch
                .basic_get(
                    format!("{}.dead-letter", self.namespace).into(),
                    BasicGetOptions { no_ack: true },
                )
                .await
                .expect("basic.get");
            let out = got.map(|m| {
                let props = &m.delivery.properties;
                let id = props
                    .message_id()
                    .as_ref()
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                let reason = props
                    .headers()
                    .as_ref()
                    .and_then(|h| h.inner().get("x-hearty-reason").cloned())
                    .map(|v| match v {
                        lapin::types::AMQPValue::LongString(s) => s.to_string(),
                        other => format!("{other:?}"),
                    })
                    .unwrap_or_default();
                (id, reason)
            });
            let _ = conn.close(200, "bye".into()).await;
            out
        })
    }
}

fn saga_file_with(dir: &Path, from: &str, to: &str) -> PathBuf {
    let text = include_str!("../sagas/order_fulfilment.toml");
    assert!(text.contains(from), "the saga file has no `{from}`");
    let path = dir.join("saga.toml");
    std::fs::write(&path, text.replacen(from, to, 1)).expect("write saga");
    path
}

#[test]
fn killed_workers_lose_and_double_nothing() {
    let Some(c) = Cluster::new() else { return };
    let api = c.start("api", &[]);
    let mut workers = Some(c.start(
        "pay,kitchen,delivery,coupon",
        &[("HEARTY_KITCHEN_LATENCY", "30ms")],
    ));
    c.seed(&api, 100);
    let mut placed = Vec::new();
    for i in 0..12 {
        if i == 4 {
            // Mid-stream: SIGKILL the workers with order 4's later steps in
            // flight, and bring them back while orders keep coming.
            workers.take().expect("running").kill();
            std::thread::sleep(Duration::from_millis(500));
            workers = Some(c.start(
                "pay,kitchen,delivery,coupon",
                &[("HEARTY_KITCHEN_LATENCY", "30ms")],
            ));
        }
        if i == 8 {
            // And once more, gracefully.
            workers.take().expect("running").terminate();
            workers = Some(c.start("pay,kitchen,delivery,coupon", &[]));
        }
        let (s, v, _) = c.order(&api, 1);
        assert_eq!(s, 201, "order {i}: {v}");
        placed.push(v["id"].as_i64().expect("id"));
    }
    for id in &placed {
        c.wait_state(&api, *id, "Completed");
    }
    let pays = c.get(&api, "/pays");
    assert_eq!(
        pays.as_array().map(Vec::len),
        Some(placed.len()),
        "one payment per order"
    );
    assert!(
        pays.as_array()
            .expect("pays")
            .iter()
            .all(|p| p["status"] == "Approved")
    );
    assert_eq!(
        c.get(&api, "/kitchens").as_array().map(Vec::len),
        Some(placed.len())
    );
    assert_eq!(
        c.get(&api, "/coupons").as_array().map(Vec::len),
        Some(placed.len())
    );
    assert_eq!(
        c.stock(&api),
        100 - placed.len() as i64,
        "stock taken exactly once per order"
    );
    drop(workers);
}

#[test]
fn cancellation_with_the_coupon_worker_down_completes_when_it_returns() {
    let Some(c) = Cluster::new() else { return };
    let api = c.start("api", &[]);
    let _others = c.start("pay,kitchen,delivery", &[]);
    let coupon = c.start("coupon", &[]);
    c.seed(&api, 100);
    let (s, v, _) = c.order(&api, 10);
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_i64().expect("id");
    c.wait_state(&api, id, "Completed");
    coupon.kill();

    let (s, v, _) = c.request(
        reqwest::Method::DELETE,
        format!("{}/kitchens/{id}", api.base),
        None,
    );
    assert_eq!(s, 202, "{v}");
    c.wait("the refund, ticket and delivery cancellations", || {
        c.status_of(&api, "pays", id).as_deref() == Some("Refunded")
            && c.status_of(&api, "kitchens", id).as_deref() == Some("Cancelled")
            && c.status_of(&api, "deliveries", id).as_deref() == Some("Cancelled")
    });
    assert_eq!(
        c.stock(&api),
        100,
        "stock returned while the coupon worker is down"
    );
    let saga = c.saga(&api, id);
    assert_eq!(
        saga["state"], "Compensating",
        "waiting for the coupon: {saga:#}"
    );
    assert_eq!(c.status_of(&api, "coupons", id).as_deref(), Some("Issued"));

    let _coupon = c.start("coupon", &[]);
    let saga = c.wait_state(&api, id, "Compensated");
    assert_eq!(saga["orderStatus"], "Cancelled");
    assert_eq!(
        c.status_of(&api, "coupons", id).as_deref(),
        Some("Cancelled")
    );
}

#[test]
fn two_pay_workers_compete_on_one_queue() {
    let Some(c) = Cluster::new() else { return };
    let api = c.start("api", &[]);
    let _others = c.start("kitchen,delivery,coupon", &[]);
    let slow = [("HEARTY_PAY_LATENCY", "20ms"), ("HEARTY_PREFETCH", "1")];
    let pay_a = c.start("pay", &slow);
    let pay_b = c.start("pay", &slow);
    c.seed(&api, 100);
    let placed: Vec<i64> = (0..16)
        .map(|_| {
            let (s, v, _) = c.order(&api, 1);
            assert_eq!(s, 201, "{v}");
            v["id"].as_i64().expect("id")
        })
        .collect();
    for id in &placed {
        c.wait_state(&api, *id, "Completed");
    }
    let (a, b) = (
        c.metric(&pay_a, "hearty_worker_commands_total"),
        c.metric(&pay_b, "hearty_worker_commands_total"),
    );
    assert_eq!(
        a + b,
        placed.len() as f64,
        "each payment handled once: {a} + {b}"
    );
    assert!(
        a > 0.0 && b > 0.0,
        "both pay workers took work: {a} and {b}"
    );
    assert_eq!(
        c.get(&api, "/pays").as_array().map(Vec::len),
        Some(placed.len())
    );
}

#[test]
fn a_panicking_handler_restarts_only_its_actor() {
    let Some(c) = Cluster::new() else { return };
    let all = c.start("all", &[("HEARTY_FAILPOINTS", "pay-handler=panic@1")]);
    c.seed(&all, 100);
    let (s, v, _) = c.order(&all, 1);
    assert_eq!(
        s, 201,
        "the panicked command was redelivered and applied: {v}"
    );
    let id = v["id"].as_i64().expect("id");
    c.wait_state(&all, id, "Completed");
    assert!(c.metric(&all, "hearty_actor_restarts_total") >= 1.0);
    // The process, the other workers and later orders are unaffected.
    let (s, v, _) = c.order(&all, 1);
    assert_eq!(s, 201, "{v}");
    c.wait_state(&all, v["id"].as_i64().expect("id"), "Completed");
    assert_eq!(c.get(&all, "/pays").as_array().map(Vec::len), Some(2));
}

#[test]
fn poison_messages_are_dead_lettered_while_orders_keep_flowing() {
    let Some(c) = Cluster::new() else { return };
    // The first pay command fails five times: it is dead-lettered, not looped.
    let all = c.start("all", &[("HEARTY_FAILPOINTS", "pay-handler=panic@5")]);
    c.seed(&all, 100);
    c.publish(Outgoing {
        message_id: "garbage-1".into(),
        correlation_id: "none".into(),
        message_type: "pay.authorize".into(),
        route: Route::Command(WorkerKind::Pay),
        body: b"this is not JSON".to_vec(),
    });
    let (s, v, _) = c.order(&all, 1);
    // The order's own pay command was dead-lettered; its timeout re-sent it.
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_i64().expect("id");
    let saga = c.wait_state(&all, id, "Completed");
    let noted = saga["history"]
        .as_array()
        .expect("history")
        .iter()
        .any(|h| h["detail"].as_str().unwrap_or("").contains("dead-lettered"));
    assert!(noted, "the saga shows its dead letter: {saga:#}");
    let mut letters = Vec::new();
    while let Some(l) = c.dead_letter() {
        letters.push(l);
    }
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert!(
        letters
            .iter()
            .any(|(id, reason)| id == "garbage-1" && reason.contains("undecodable")),
        "{letters:?}"
    );
    assert!(
        letters
            .iter()
            .any(|(mid, reason)| *mid == format!("order-{id}.pay.do")
                && reason.contains("failed 5 times")),
        "{letters:?}"
    );
    assert!(c.metric(&all, "hearty_dead_letters_total") >= 2.0);
    // Other orders keep completing.
    for _ in 0..3 {
        let (s, v, _) = c.order(&all, 1);
        assert_eq!(s, 201, "{v}");
        c.wait_state(&all, v["id"].as_i64().expect("id"), "Completed");
    }
}

#[test]
fn the_payment_breaker_trips_under_latency_and_recovers() {
    let Some(c) = Cluster::new() else { return };
    // A pay timeout tighter than the payment's latency, one attempt, and a
    // breaker that opens after three timeouts in a row.
    let saga = saga_file_with(
        c.dir.path(),
        "timeout = \"5s\"\ncompensation_blocks = true\nretry = { max_attempts = 3,",
        "timeout = \"300ms\"\ncompensation_blocks = true\nretry = { max_attempts = 1,",
    );
    let saga = std::fs::read_to_string(&saga).expect("read").replacen(
        "circuit_breaker = { consecutive_failures = 5, failure_ratio = 0.5, window = 20, min_calls = 10, cool_down = \"5s\" }",
        "circuit_breaker = { consecutive_failures = 3, failure_ratio = 0.9, window = 20, min_calls = 10, cool_down = \"2s\" }",
        1,
    );
    let saga_path = c.dir.path().join("breaker_saga.toml");
    std::fs::write(&saga_path, saga).expect("write");
    let saga_env = saga_path.to_str().expect("utf-8").to_owned();
    let api = c.start("api", &[("HEARTY_SAGA_FILE", &saga_env)]);
    let _others = c.start("kitchen,delivery,coupon", &[]);
    let slow_pay = c.start("pay", &[("HEARTY_PAY_LATENCY", "1s")]);
    c.seed(&api, 100);

    let mut turned_away = Vec::new();
    let mut opened = false;
    for _ in 0..10 {
        let (s, v, retry_after) = c.order(&api, 1);
        assert_eq!(s, 503, "{v}");
        assert!(retry_after.is_some(), "503 carries Retry-After");
        if v["error"] == "circuit_open" {
            opened = true;
            break;
        }
        turned_away.push(
            v["orderId"]
                .as_i64()
                .expect("a saga was started and abandoned"),
        );
    }
    assert!(opened, "the breaker opened");
    assert!(turned_away.len() >= 3);
    let ready = c.get(&api, "/health/ready");
    assert_eq!(ready["circuitBreakers"]["pay"], "Open", "{ready}");
    assert_eq!(
        c.metric(&api, "hearty_circuit_breaker_state{step=\"pay\"}"),
        1.0
    );
    let before = c.get(&api, "/orders").as_array().map(Vec::len);
    let (s, v, _) = c.order(&api, 1);
    assert_eq!(
        (s, v["error"].as_str()),
        (503, Some("circuit_open")),
        "turned away at once"
    );
    assert_eq!(
        c.get(&api, "/orders").as_array().map(Vec::len),
        before,
        "no saga started while open"
    );

    // The payment system recovers; after the cool-down one trial goes through.
    slow_pay.kill();
    let _fast_pay = c.start("pay", &[]);
    let mut admitted = None;
    c.wait("a trial order to be admitted", || {
        let (s, v, _) = c.order(&api, 1);
        if s == 201 {
            admitted = v["id"].as_i64();
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
        false
    });
    let id = admitted.expect("admitted");
    c.wait_state(&api, id, "Completed");
    let ready = c.get(&api, "/health/ready");
    assert_eq!(ready["circuitBreakers"]["pay"], "Closed", "{ready}");

    // Nothing turned away was established: every late approval refunded.
    for id in turned_away {
        let saga = c.wait_state(&api, id, "Compensated");
        assert_eq!(saga["orderStatus"], "Rejected", "{saga:#}");
        c.wait(&format!("order {id}'s payment to be settled"), || {
            matches!(
                c.status_of(&api, "pays", id).as_deref(),
                None | Some("Refunded")
            )
        });
        assert_eq!(c.status_of(&api, "kitchens", id), None);
        assert_eq!(c.status_of(&api, "coupons", id), None);
    }
}
