//! Real `hearty serve` processes over the real RabbitMQ, for the fault and
//! chaos suites: a namespace and data directory per test, deleted at the end.
#![allow(dead_code)] // Each test binary uses its own part of these helpers.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{LazyLock, mpsc};
use std::time::{Duration, Instant};

use hearty::partition::PartitionCount;
use hearty::transport::amqp::{AmqpSettings, AmqpTransport, Retention, Scope};
use hearty::transport::nodes::BrokerNodes;
use hearty::transport::{Outgoing, QueueName, Topology, Transport};
use serde_json::{Value, json};

pub mod deploy;
pub mod management;
pub mod rabbit;

/// The manager's static token of this test run (random: no secret that
/// works is written down).
static TOKEN: LazyLock<String> = LazyLock::new(|| format!("test-{:032x}", rand::random::<u128>()));

/// The signing key every process of this test run shares.
static AUTH_KEY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{:032x}{:032x}",
        rand::random::<u128>(),
        rand::random::<u128>()
    )
});

/// The manager's token of this test run.
pub fn token() -> &'static str {
    &TOKEN
}

/// The signing key of this test run.
pub fn auth_key() -> &'static str {
    &AUTH_KEY
}

/// Settings every test process gets: the run's secrets, no rate limits and
/// room for many connections (a test's clients all come from one
/// address), unless a test sets its own.
fn test_settings(cmd: &mut Command) {
    cmd.env("HEARTY_MANAGER_TOKEN", token())
        .env("HEARTY_AUTH_KEY", auth_key())
        .env("HEARTY_RATE_ORDERS", "off")
        .env("HEARTY_RATE_ADDRESS", "off")
        .env("HEARTY_RATE_SIGNUPS", "off")
        .env("HEARTY_RATE_REVIEWS", "off")
        .env("HEARTY_MAX_CONNECTIONS_PER_ADDRESS", "4096");
}

/// Starts a zero-setup `hearty serve` (in-process transport, SQLite under
/// `data`, port chosen by the system), with none of the caller's `HEARTY_*`
/// settings but `env`; answers the child and its base URL once the service
/// says where it listens.
pub fn serve_zero_setup(data: &std::path::Path, env: &[(&str, &str)]) -> (Child, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hearty"));
    for (k, _) in std::env::vars() {
        if k.starts_with("HEARTY_") {
            cmd.env_remove(k);
        }
    }
    test_settings(&mut cmd);
    cmd.args(["serve", "--http-addr", "127.0.0.1:0"])
        .env("HEARTY_DATA_DIR", data)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("spawn hearty");
    let stdout = child.stdout.take().expect("stdout");
    let addr = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("Hearty listening on http://")
                .map(str::to_owned)
        })
        .expect("the service says where it listens");
    (child, format!("http://{addr}"))
}

pub fn amqp_url() -> String {
    std::env::var("HEARTY_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A namespace and data directory shared by a test's processes; the
/// namespace is deleted when the test ends, even on panic.
pub struct Cluster {
    pub namespace: String,
    /// The broker's URL (or the comma-separated nodes of a cluster).
    pub url: String,
    pub dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .rt
            .block_on(AmqpTransport::delete_namespace(&self.url, &self.namespace));
    }
}

/// One `hearty serve` process.
pub struct Service {
    child: Child,
    pub base: String,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A spawned `hearty serve` that may not listen yet.
pub struct Spawned {
    child: Option<Child>,
    addr: mpsc::Receiver<String>,
}

impl Spawned {
    /// The service once it listens, or `None` if it did not within `wait`
    /// (the process is then still running: a standby).
    pub fn listening(self, wait: Duration) -> Option<Service> {
        // Dropped without a service, the process is killed.
        let addr = self.addr.recv_timeout(wait).ok()?;
        Some(self.into_service(addr))
    }

    /// Whether it listens already (without waiting).
    pub fn try_listening(&mut self) -> Option<String> {
        self.addr.try_recv().ok()
    }

    /// Whether the process still runs (a standby does; a refused start
    /// does not).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Becomes a service at `addr` (from [`Spawned::try_listening`]).
    pub fn into_service(mut self, addr: String) -> Service {
        Service {
            child: self.child.take().expect("a spawned child"),
            base: format!("http://{addr}"),
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Service {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (bounded) for the process to exit by itself: its status.
    pub fn exited(&mut self, wait: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + wait;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the process still runs (false after it aborted itself).
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and the process must exit cleanly.
    pub fn terminate(mut self) {
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
    pub fn new() -> Option<Self> {
        Self::on(&amqp_url())
    }

    /// A cluster of processes on the broker at `url` (one node or several).
    pub fn on(url: &str) -> Option<Self> {
        Self::on_with(url, Retention::LOG_DEFAULT)
    }

    /// A cluster whose event log is declared with `log_retention` (the
    /// processes of a test that bounds it must be started with the same
    /// `HEARTY_LOG_*` settings).
    pub fn with_log_retention(log_retention: Retention) -> Option<Self> {
        Self::on_with(&amqp_url(), log_retention)
    }

    fn on_with(url: &str, log_retention: Retention) -> Option<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let namespace = format!("hearty-fault-{:016x}", rand::random::<u64>());
        let probe = rt.block_on(AmqpTransport::connect(&AmqpSettings {
            nodes: BrokerNodes::parse(url).expect("HEARTY_TEST_AMQP_URL"),
            namespace: namespace.clone(),
            prefetch: 1,
            connection_name: "fault test probe".into(),
            quorum_queues: BrokerNodes::parse(url).is_ok_and(|n| n.is_cluster()),
            adopt_queue_type: false,
            connect_wait: Duration::from_millis(500),
            partitions: PartitionCount::default(),
            scope: Scope::everything(),
            log_retention,
        }));
        match probe {
            Ok(t) => rt.block_on(t.close()),
            Err(e) if std::env::var_os("CI").is_none() => {
                eprintln!(
                    "\n!!! SKIPPED: RabbitMQ is not reachable at {} ({e}). In CI this is a failure.\n",
                    url
                );
                return None;
            }
            Err(e) => panic!("RabbitMQ is not reachable: {e}"),
        }
        Some(Cluster {
            namespace,
            url: url.to_owned(),
            dir: tempfile::tempdir().expect("tempdir"),
            rt,
            // Idle connections are dropped well before the service's 5 s
            // keep-alive closes them: a POST is never sent on a connection
            // the server is closing at that moment (it could not be retried).
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .pool_idle_timeout(Duration::from_secs(2))
                .build()
                .expect("client"),
        })
    }

    /// The URL of the broker's first node.
    pub fn first_node(&self) -> String {
        BrokerNodes::parse(&self.url)
            .map(|n| n.get(0).to_owned())
            .unwrap_or_else(|_| self.url.clone())
    }

    pub fn rt_block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The offset of the event log's first retained entry (`None`: empty).
    pub fn log_head(&self) -> Option<i64> {
        self.rt.block_on(async {
            let t = AmqpTransport::connect(&AmqpSettings {
                nodes: BrokerNodes::parse(&self.url).expect("HEARTY_TEST_AMQP_URL"),
                namespace: self.namespace.clone(),
                prefetch: 1,
                connection_name: "test log head".into(),
                quorum_queues: false,
                adopt_queue_type: true,
                connect_wait: Duration::from_millis(500),
                partitions: PartitionCount::default(),
                scope: Scope::default(),
                log_retention: Retention::LOG_DEFAULT,
            })
            .await
            .expect("connect");
            let head = hearty::transport::EventLog::head(&t)
                .await
                .expect("log head");
            t.close().await;
            head
        })
    }

    /// Ready messages in each of the namespace's queues (passive declare).
    pub fn queue_depths(&self) -> Vec<(String, u32)> {
        use lapin::options::QueueDeclareOptions;
        self.rt.block_on(async {
            let conn = lapin::Connection::connect(
                &self.first_node(),
                lapin::ConnectionProperties::default(),
            )
            .await
            .expect("connect");
            let mut out = Vec::new();
            let topology = Topology::new(&self.namespace, PartitionCount::default());
            let names = QueueName::all(PartitionCount::default())
                .into_iter()
                .filter(|q| !matches!(q, QueueName::View(_)))
                .map(|q| topology.queue(q));
            for name in names {
                let ch = conn.create_channel().await.expect("channel");
                let declared = ch
                    .queue_declare(
                        name.clone().into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..QueueDeclareOptions::default()
                        },
                        lapin::types::FieldTable::default(),
                    )
                    .await
                    .expect("passive declare");
                out.push((name, declared.message_count()));
            }
            let _ = conn.close(200, "bye".into()).await;
            out
        })
    }

    /// The folder of the processes running `roles` with `env`: every kind
    /// of process has its own (shared-nothing, as on separate machines), and
    /// a restart of the same kind finds its data again.
    pub fn data_dir_of(&self, roles: &str, env: &[(&str, &str)]) -> PathBuf {
        if let Some((_, dir)) = env.iter().find(|(k, _)| *k == "HEARTY_DATA_DIR") {
            return PathBuf::from(dir);
        }
        let partitions = env
            .iter()
            .find(|(k, _)| *k == "HEARTY_PARTITIONS")
            .map_or("all", |(_, v)| v);
        let name: String = format!("{roles}-{partitions}")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        self.dir.path().join("data").join(name)
    }

    /// The SQLite files a process has open (from `/proc`).
    pub fn open_databases(pid: u32) -> Vec<PathBuf> {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = fds
            .filter_map(Result::ok)
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .filter(|p| p.extension().is_some_and(|e| e == "db"))
            .collect();
        files.sort();
        files.dedup();
        files
    }

    /// Starts `hearty serve` with `roles` and extra settings; returns once
    /// it listens.
    pub fn start(&self, roles: &str, env: &[(&str, &str)]) -> Service {
        self.spawn(roles, env)
            .listening(Duration::from_secs(60))
            .unwrap_or_else(|| panic!("`hearty serve` ({roles}) did not start"))
    }

    /// The command of a `hearty serve` of this cluster (own data folder
    /// unless `env` sets HEARTY_DATA_DIR).
    pub fn command(&self, roles: &str, env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hearty"));
        for (k, _) in std::env::vars() {
            if k.starts_with("HEARTY_") {
                cmd.env_remove(k);
            }
        }
        test_settings(&mut cmd);
        cmd.arg("serve")
            .env("HEARTY_ROLES", roles)
            .env("HEARTY_AMQP_URL", &self.url)
            .env("HEARTY_NAMESPACE", &self.namespace)
            .env("HEARTY_DATA_DIR", self.data_dir_of(roles, env))
            .env("HEARTY_HTTP_ADDR", "127.0.0.1:0")
            .env(
                "HEARTY_SAGA_FILE",
                concat!(env!("CARGO_MANIFEST_DIR"), "/sagas/order_fulfilment.toml"),
            )
            .env("RUST_LOG", "warn")
            .env("RUST_BACKTRACE", "0");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Spawns `hearty serve` without waiting for it (a standby does not
    /// listen until it owns its partitions).
    pub fn spawn(&self, roles: &str, env: &[(&str, &str)]) -> Spawned {
        let mut cmd = self.command(roles, env);
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
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
        Spawned {
            child: Some(child),
            addr: rx,
        }
    }

    /// Runs `hearty serve` expecting it to refuse to start: its exit
    /// status and what it printed on stderr.
    pub fn refused(&self, roles: &str, env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
        let mut cmd = self.command(roles, env);
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn hearty");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                return (status, err);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("`hearty serve` ({roles}) did not refuse to start");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A request as the manager.
    pub fn request(
        &self,
        method: reqwest::Method,
        url: String,
        body: Option<Value>,
    ) -> (u16, Value, Option<String>) {
        self.request_as(method, url, body, Some(token()))
    }

    /// A request as the holder of `token` (`None`: anonymous).
    pub fn request_as(
        &self,
        method: reqwest::Method,
        url: String,
        body: Option<Value>,
        token: Option<&str>,
    ) -> (u16, Value, Option<String>) {
        self.rt.block_on(async {
            let send = || {
                let mut req = self.client.request(method.clone(), url.clone());
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                if let Some(b) = &body {
                    req = req.json(b);
                }
                req.send()
            };
            // A pooled connection the server closed as idle at the moment it
            // was reused fails before anything was sent: a GET is asked again.
            let res = match send().await {
                Err(e) if method == reqwest::Method::GET && e.is_request() => {
                    send().await.expect("request")
                }
                other => other.expect("request"),
            };
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

    pub fn get(&self, svc: &Service, path: &str) -> Value {
        let (status, v, _) =
            self.request(reqwest::Method::GET, format!("{}{path}", svc.base), None);
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }

    pub fn post(&self, svc: &Service, path: &str, body: Value) -> (u16, Value, Option<String>) {
        self.request(
            reqwest::Method::POST,
            format!("{}{path}", svc.base),
            Some(body),
        )
    }

    pub fn metric(&self, svc: &Service, name: &str) -> f64 {
        let (_, v, _) = self.request(reqwest::Method::GET, format!("{}/metrics", svc.base), None);
        let text = v.as_str().map(str::to_owned).unwrap_or_default();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or_else(|| panic!("no metric {name} in {text}"))
    }

    /// The seed's customer and a cake with `stock`: the customer's token.
    pub fn seed(&self, api: &Service, stock: i64) -> String {
        let (s, v, _) = self.post(
            api,
            "/customers",
            json!({"name": "yang", "phone": "01011", "address": "korea11", "age": "27"}),
        );
        assert_eq!(s, 201, "{v}");
        let customer = v["token"]
            .as_str()
            .expect("the customer's token")
            .to_owned();
        let (s, v, _) = self.post(
            api,
            "/foodCatalogs",
            json!({"name": "cake", "stock": stock.to_string(), "price": "4.0"}),
        );
        assert_eq!(s, 201, "{v}");
        customer
    }

    pub fn order(&self, api: &Service, qty: i64) -> (u16, Value, Option<String>) {
        self.post(
            api,
            "/orders",
            json!({"qty": qty.to_string(), "foodcaltalogid": "1", "customerid": "1"}),
        )
    }

    pub fn wait(&self, what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn saga(&self, api: &Service, id: i64) -> Value {
        self.get(api, &format!("/sagas/{id}"))
    }

    pub fn wait_state(&self, api: &Service, id: i64, state: &str) -> Value {
        let mut last = Value::Null;
        self.wait(&format!("saga {id} to be {state}"), || {
            last = self.saga(api, id);
            last["state"] == state
        });
        last
    }

    pub fn status_of(&self, api: &Service, collection: &str, id: i64) -> Option<String> {
        let v = self.get(api, &format!("/{collection}?orderId={id}"));
        v.as_array()
            .and_then(|a| a.first())
            .and_then(|r| r["status"].as_str())
            .map(str::to_owned)
    }

    pub fn stock(&self, api: &Service) -> i64 {
        self.get(api, "/foodCatalogs/1")["stock"]
            .as_i64()
            .expect("stock")
    }

    pub fn publish(&self, msg: Outgoing) {
        self.publish_at_epoch(msg, None);
    }

    /// Publishes `msg` as an owner at `epoch` would (stamped with it).
    pub fn publish_at_epoch(&self, msg: Outgoing, epoch: Option<hearty::partition::Epoch>) {
        self.rt.block_on(async {
            let t = AmqpTransport::connect(&AmqpSettings {
                nodes: BrokerNodes::parse(&self.url).expect("HEARTY_TEST_AMQP_URL"),
                namespace: self.namespace.clone(),
                prefetch: 1,
                connection_name: "fault test publisher".into(),
                quorum_queues: BrokerNodes::parse(&self.url).is_ok_and(|n| n.is_cluster()),
                adopt_queue_type: false,
                connect_wait: Duration::from_millis(500),
                partitions: PartitionCount::default(),
                scope: Scope::everything(),
                log_retention: Retention::LOG_DEFAULT,
            })
            .await
            .expect("connect");
            if let Some(e) = epoch {
                t.set_epoch(e);
            }
            let results = t.publish(vec![msg]).await;
            assert!(results.iter().all(Result::is_ok), "{results:?}");
            t.close().await;
        });
    }

    /// Takes one message off the dead-letter queue: (message id, reason).
    pub fn dead_letter(&self) -> Option<(String, String)> {
        use lapin::options::BasicGetOptions;
        self.rt.block_on(async {
            let conn = lapin::Connection::connect(
                &self.first_node(),
                lapin::ConnectionProperties::default(),
            )
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
