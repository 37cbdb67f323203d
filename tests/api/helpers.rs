//! `spawn_app` and typed request helpers: every test gets its own data
//! directory, its own RabbitMQ namespace (deleted afterwards, even when the
//! test panics) and its own HTTP port.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hearty::app::{Running, start};
use hearty::config::{Config, Mode, Rate, Secret};
use hearty::transport::amqp::AmqpTransport;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The manager's token of this test run (every test app's default client
/// sends it) and its signing key; random: no secret that works is written
/// down.
pub use crate::common::{auth_key, token};

/// A staff member's token (`manager`, `kitchen`, `delivery`), signed with
/// this run's key, as `hearty token --role ROLE` prints it.
pub fn staff_token(role: &str) -> String {
    let auth = hearty::auth::Authenticator::new(&Secret::new(auth_key()), None, None)
        .expect("the test key");
    let subject = format!("test-{role}");
    let role = role.parse().expect("a staff role");
    auth.staff_token(role, &subject, Duration::from_secs(3600))
        .expect("signed")
        .token
        .expose()
        .to_owned()
}

/// Which transport a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    InProcess,
    RabbitMq,
}

/// Knobs a test may turn.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub kitchen_manual: bool,
    pub delivery_manual: bool,
    pub pay_latency: Option<&'static str>,
    pub kitchen_latency: Option<&'static str>,
    pub delivery_latency: Option<&'static str>,
    pub coupon_latency: Option<&'static str>,
    pub fail_compensations: Option<&'static str>,
    /// Compensation retries in milliseconds instead of seconds.
    pub fast_retries: bool,
    /// Passivate idle saga actors this fast.
    pub passivate_after: Option<&'static str>,
    /// Declare quorum queues (RabbitMQ only).
    pub quorum_queues: bool,
    /// How long `POST /orders` waits for the payment (`HEARTY_ORDER_TIMEOUT`).
    pub order_timeout: Option<&'static str>,
    /// Run on this data directory (kept by the caller) instead of a fresh
    /// one: to restart the service on what an earlier one left.
    pub data_dir: Option<PathBuf>,
    /// Run on this namespace instead of a fresh one (with `data_dir`).
    pub namespace: Option<String>,
    /// Edit the saga file: replace the first text with the second.
    pub saga_edit: Option<(&'static str, &'static str)>,
    /// Rate limits as configured (`HEARTY_RATE_*`); by default off, so that
    /// tests placing many orders from one address are not limited.
    pub rates: Option<(&'static str, &'static str, &'static str)>,
    /// Connection caps (total, per address) instead of the defaults.
    pub connections: Option<(usize, usize)>,
    /// `HEARTY_BODY_TIMEOUT`.
    pub body_timeout: Option<&'static str>,
    /// An external identity provider: its JWKS (file or URL), issuer and
    /// audience.
    pub external: Option<(String, String, String)>,
    /// `HEARTY_TRUSTED_PROXIES`.
    pub trusted_proxies: Option<&'static str>,
    /// Serve probes and metrics on a listener of their own too.
    pub ops_listener: bool,
}

pub use crate::common::amqp_url;

/// Deletes a namespace's queues and exchanges when dropped.
pub struct NamespaceGuard {
    pub url: String,
    pub namespace: String,
}

impl Drop for NamespaceGuard {
    fn drop(&mut self) {
        let (url, ns) = (self.url.clone(), self.namespace.clone());
        // A fresh runtime on a fresh thread: Drop may run inside another runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                let _ = rt.block_on(AmqpTransport::delete_namespace(&url, &ns));
            }
        })
        .join();
    }
}

pub struct TestApp {
    pub base: String,
    /// Sends the manager's token with every request.
    pub client: reqwest::Client,
    /// Sends no credential unless a request names one.
    pub anonymous: reqwest::Client,
    /// Prefix of this test's exchanges and queues.
    pub namespace: String,
    /// This test's `HEARTY_DATA_DIR`.
    pub data_dir: PathBuf,
    running: Option<Running>,
    _guard: Option<NamespaceGuard>,
    _dir: tempfile::TempDir,
}

fn unique_namespace() -> String {
    let n: u64 = rand::random();
    format!("hearty-test-{n:016x}")
}

/// The shipped saga, with compensation retries of milliseconds (3
/// attempts) if `fast`, and with `edit` applied.
fn test_saga(dir: &std::path::Path, fast: bool, edit: Option<(&str, &str)>) -> PathBuf {
    let mut text = include_str!("../../sagas/order_fulfilment.toml").to_owned();
    if fast {
        text = text.replace(
            r#"compensation_retry = { max_attempts = 8, initial_delay = "200ms", factor = 2.0, max_delay = "10s" }"#,
            r#"compensation_retry = { max_attempts = 3, initial_delay = "50ms", factor = 2.0, max_delay = "200ms" }"#,
        );
    }
    if let Some((from, to)) = edit {
        assert!(text.contains(from), "the saga file has no `{from}`");
        text = text.replace(from, to);
    }
    let path = dir.join("test_saga.toml");
    std::fs::write(&path, text).expect("write the test saga");
    path
}

/// Starts the whole service in this process. Returns `None` (after saying
/// so loudly) when RabbitMQ is wanted but unreachable outside CI.
pub async fn spawn_app(broker: Broker, opts: Options) -> Option<TestApp> {
    let dir = tempfile::tempdir().expect("tempdir");
    let namespace = opts.namespace.clone().unwrap_or_else(unique_namespace);
    let mut config = Config::defaults();
    config.http_addr = "127.0.0.1:0".into();
    config.data_dir = opts
        .data_dir
        .clone()
        .unwrap_or_else(|| dir.path().join("data"));
    config.namespace = namespace.clone();
    config.manager_token = Some(Secret::new(token()));
    config.auth_key = Some(Secret::new(auth_key()));
    let rates = opts.rates.unwrap_or(("off", "off", "off"));
    config.rate_orders = rates.0.parse::<Rate>().expect("rate");
    config.rate_address = rates.1.parse::<Rate>().expect("rate");
    config.rate_signups = rates.2.parse::<Rate>().expect("rate");
    config.rate_reviews = Rate(None);
    if let Some((total, per_address)) = opts.connections {
        config.max_connections = total;
        config.max_connections_per_address = per_address;
    }
    if opts.ops_listener {
        config.ops_addr = Some("127.0.0.1:0".into());
    }
    if let Some(p) = opts.trusted_proxies {
        config.trusted_proxies = p.parse().expect("proxies");
    }
    if let Some(t) = opts.body_timeout {
        config.body_timeout = hearty::saga::definition::parse_duration(t).expect("duration");
    }
    if let Some((jwks, issuer, audience)) = &opts.external {
        config.auth_jwks = Some(jwks.clone());
        config.auth_issuer = Some(issuer.clone());
        config.auth_audience = Some(audience.clone());
    }
    config.amqp_url = None;
    // Fail (and skip outside CI) quickly when no broker runs.
    config.broker_wait = Duration::from_millis(500);
    config.kitchen_mode = if opts.kitchen_manual {
        Mode::Manual
    } else {
        Mode::Auto
    };
    config.delivery_mode = if opts.delivery_manual {
        Mode::Manual
    } else {
        Mode::Auto
    };
    config.pay_latency = opts.pay_latency.map(|l| l.parse().expect("latency"));
    config.kitchen_latency = opts.kitchen_latency.map(|l| l.parse().expect("latency"));
    config.delivery_latency = opts.delivery_latency.map(|l| l.parse().expect("latency"));
    config.coupon_latency = opts.coupon_latency.map(|l| l.parse().expect("latency"));
    config.fail_compensations = opts.fail_compensations.unwrap_or("").into();
    config.quorum_queues = Some(opts.quorum_queues);
    if let Some(t) = opts.order_timeout {
        config.order_timeout = hearty::saga::definition::parse_duration(t).expect("duration");
    }
    if let Some(p) = opts.passivate_after {
        config.passivate_after = hearty::saga::definition::parse_duration(p).expect("duration");
    }
    config.saga_file = if opts.fast_retries || opts.saga_edit.is_some() {
        test_saga(dir.path(), opts.fast_retries, opts.saga_edit)
    } else {
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/sagas/order_fulfilment.toml"
        ))
    };
    let mut guard = None;
    if broker == Broker::RabbitMq {
        let url = amqp_url();
        config.amqp_url = Some(url.clone());
        guard = Some(NamespaceGuard {
            url,
            namespace: namespace.clone(),
        });
    }
    let running = match start(config).await {
        Ok(r) => r,
        Err(e) if broker == Broker::RabbitMq && std::env::var_os("CI").is_none() => {
            eprintln!(
                "\n!!! SKIPPED: RabbitMQ is not reachable at {} ({e:#}); set HEARTY_TEST_AMQP_URL or start rabbitmq-server. In CI this is a failure.\n",
                amqp_url()
            );
            std::mem::forget(guard);
            return None;
        }
        Err(e) => panic!("the app did not start: {e:#}"),
    };
    let mut manager = reqwest::header::HeaderMap::new();
    manager.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {}", token()).parse().expect("header"),
    );
    Some(TestApp {
        base: format!("http://{}", running.http_addr),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_idle_timeout(Duration::from_secs(2))
            .default_headers(manager)
            .build()
            .expect("client"),
        anonymous: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_idle_timeout(Duration::from_secs(2))
            .build()
            .expect("client"),
        namespace,
        data_dir: opts.data_dir.unwrap_or_else(|| dir.path().join("data")),
        running: Some(running),
        _guard: guard,
        _dir: dir,
    })
}

/// A signed-up customer.
#[derive(Debug, Clone)]
pub struct Customer {
    pub id: i64,
    pub token: String,
}

/// Runs a test body on both transports.
#[macro_export]
macro_rules! on_both_transports {
    ($name:ident, $opts:expr, $body:path) => {
        mod $name {
            use super::*;

            #[actix_web::test]
            async fn in_process() {
                if let Some(app) =
                    $crate::helpers::spawn_app($crate::helpers::Broker::InProcess, $opts).await
                {
                    $body(&app).await;
                    app.stop().await;
                }
            }

            #[actix_web::test]
            async fn rabbitmq() {
                if let Some(app) =
                    $crate::helpers::spawn_app($crate::helpers::Broker::RabbitMq, $opts).await
                {
                    $body(&app).await;
                    app.stop().await;
                }
            }
        }
    };
}

async fn decode(res: reqwest::Response) -> (StatusCode, Value) {
    let status = res.status();
    let text = res.text().await.expect("body");
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"))
    };
    (status, value)
}

impl TestApp {
    /// The probes' own listener, when the test asked for one.
    pub fn ops_base(&self) -> Option<String> {
        self.running
            .as_ref()
            .and_then(|r| r.ops_addr)
            .map(|a| format!("http://{a}"))
    }

    pub fn transport(&self) -> std::sync::Arc<dyn hearty::transport::Transport> {
        self.running.as_ref().expect("running").transport()
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        decode(
            self.client
                .get(format!("{}{path}", self.base))
                .send()
                .await
                .expect("GET"),
        )
        .await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        decode(
            self.client
                .post(format!("{}{path}", self.base))
                .json(&body)
                .send()
                .await
                .expect("POST"),
        )
        .await
    }

    pub async fn post_as_manager(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.post(path, body).await
    }

    /// `GET` as `who` (a token; `None`: anonymous).
    pub async fn get_as(&self, path: &str, who: Option<&str>) -> (StatusCode, Value) {
        self.send_as(reqwest::Method::GET, path, None, who).await
    }

    /// `POST` as `who` (a token; `None`: anonymous).
    pub async fn post_as(&self, path: &str, body: Value, who: Option<&str>) -> (StatusCode, Value) {
        self.send_as(reqwest::Method::POST, path, Some(body), who)
            .await
    }

    /// Any request as `who` (a token; `None`: anonymous).
    pub async fn send_as(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        who: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .anonymous
            .request(method, format!("{}{path}", self.base));
        if let Some(t) = who {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("request");
        let status = res.status();
        let text = res.text().await.expect("body");
        // Pages and metrics are not JSON: their text.
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    /// Signs a customer up (anonymously, as a customer does): their id and
    /// token.
    pub async fn sign_up(&self, name: &str) -> Customer {
        let (s, v) = self
            .post_as(
                "/customers",
                json!({"name": name, "phone": "010-1234", "address": "seoul", "age": 30}),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        Customer {
            id: v["id"].as_i64().expect("id"),
            token: v["token"].as_str().expect("a token").to_owned(),
        }
    }

    /// `POST /orders` the seed's way, with an `Idempotency-Key`.
    pub async fn order_with_key(
        &self,
        key: &str,
        customer: i64,
        food: i64,
        qty: i64,
    ) -> (StatusCode, Value) {
        decode(
            self.client
                .post(format!("{}/orders", self.base))
                .header("Idempotency-Key", key)
                .json(&json!({"qty": qty.to_string(), "foodcaltalogid": food.to_string(), "customerid": customer.to_string()}))
                .send()
                .await
                .expect("POST"),
        )
        .await
    }

    /// A food with this price (text, as httpie sends it).
    pub async fn food_priced(&self, stock: i64, price: &str) -> (StatusCode, Value) {
        self.post_as_manager(
            "/foodCatalogs",
            json!({"name": "caviar", "stock": stock.to_string(), "price": price}),
        )
        .await
    }

    pub async fn delete_as(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        self.send_as(reqwest::Method::DELETE, path, None, token)
            .await
    }

    /// The seed's customer, sent the way httpie sends it (strings).
    pub async fn seed_customer(&self) -> i64 {
        let (s, v) = self
            .post(
                "/customers",
                json!({"name": "yang", "phone": "01011", "address": "korea11", "age": "27"}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["id"].as_i64().expect("id")
    }

    /// The seed's cake: stock 100 at 4.0.
    pub async fn seed_food(&self, stock: i64) -> i64 {
        let (s, v) = self
            .post_as_manager(
                "/foodCatalogs",
                json!({"name": "cake", "stock": stock.to_string(), "price": "4.0"}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["id"].as_i64().expect("id")
    }

    /// The seed's order command: `qty=10 foodcaltalogid=1 customerid=1`.
    pub async fn order(&self, customer: i64, food: i64, qty: i64) -> (StatusCode, Value) {
        self.post(
            "/orders",
            json!({"qty": qty.to_string(), "foodcaltalogid": food.to_string(), "customerid": customer.to_string()}),
        )
        .await
    }

    /// The kitchen's own stock (the write side: always current).
    pub async fn stock(&self, food: i64) -> i64 {
        let (_, v) = self.get(&format!("/foodCatalogs/{food}")).await;
        v["stock"].as_i64().expect("food in the catalog")
    }

    /// Polls a read model until `pred` holds for the entry with `id`; read
    /// models follow the write side through events, a moment later.
    pub async fn wait_view(
        &self,
        path: &str,
        id: i64,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, v) = self.get(path).await;
            let entry = v
                .as_array()
                .and_then(|a| a.iter().find(|e| e["id"] == id))
                .cloned()
                .unwrap_or(Value::Null);
            if pred(&entry) {
                return entry;
            }
            if Instant::now() > deadline {
                panic!("{path} entry {id} never became {what}: {v:#}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn saga(&self, id: i64) -> Value {
        let (s, v) = self.get(&format!("/sagas/{id}")).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    }

    /// Polls until `pred` holds for the saga; panics with the saga after a
    /// generous bound (a liveness bound, not a performance assertion).
    pub async fn wait_saga(&self, id: i64, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = self.saga(id).await;
            if pred(&v) {
                return v;
            }
            if Instant::now() > deadline {
                panic!("saga {id} never became {what}: {v:#}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until the saga itself knows that a manual step waits for a
    /// person (the worker's record shows it a moment earlier): only then
    /// does the saga take `cooked` / `pickedUp`.
    pub async fn wait_for_person(&self, id: i64) -> Value {
        self.wait_saga(id, "waiting for a person", |v| {
            v["waitingOn"]["waitingForAPerson"] == true
        })
        .await
    }

    pub async fn wait_state(&self, id: i64, state: &str) -> Value {
        self.wait_saga(id, state, |v| v["state"] == state).await
    }

    /// The record of one worker for an order, if any.
    pub async fn record(&self, collection: &str, order: i64) -> Option<Value> {
        let (s, v) = self.get(&format!("/{collection}?orderId={order}")).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v.as_array().and_then(|a| a.first().cloned())
    }

    pub async fn record_status(&self, collection: &str, order: i64) -> Option<String> {
        self.record(collection, order)
            .await
            .and_then(|r| r["status"].as_str().map(str::to_owned))
    }

    pub async fn wait_record(&self, collection: &str, order: i64, status: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.record_status(collection, order).await.as_deref() != Some(status) {
            if Instant::now() > deadline {
                panic!(
                    "{collection} of order {order} never became {status}: {:?}",
                    self.record(collection, order).await
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }
}
