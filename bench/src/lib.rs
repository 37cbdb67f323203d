//! `hearty-bench`: drives orders over HTTP exactly as customers would and
//! measures, beside the broker's own ceiling in the same run:
//! throughput of completed sagas, `POST /orders` and order-to-`Completed`
//! latency at full and at half load, cancellation throughput, resident
//! memory per in-flight saga, and recovery time. See BENCHMARKS.md.

pub mod ceiling;
pub mod cpu;
pub mod history;
pub mod http;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use hearty::saga::definition::parse_duration;

/// A service under measurement, and who calls it: a manager (metrics,
/// inspection, cancellations) and the seeded customer (orders).
#[derive(Clone)]
struct Target {
    base: String,
    manager: String,
    /// The customer's token, from their sign-up.
    customer: Option<String>,
}

impl Target {
    fn staff(&self) -> anyhow::Result<http::Conn> {
        http::Conn::new(&self.base, Some(self.manager.clone()))
    }

    fn customer(&self) -> anyhow::Result<http::Conn> {
        http::Conn::new(&self.base, self.customer.clone())
    }
}

/// The settings of a service the benchmark starts: its secrets (made up for
/// this run) and no rate limits (every order comes from one customer at one
/// address).
fn service_settings(cmd: &mut Command, manager: &str, key: &str) {
    cmd.env("HEARTY_MANAGER_TOKEN", manager)
        .env("HEARTY_AUTH_KEY", key)
        .env("HEARTY_RATE_ORDERS", "off")
        .env("HEARTY_RATE_ADDRESS", "off")
        .env("HEARTY_RATE_SIGNUPS", "off")
        .env("HEARTY_RATE_REVIEWS", "off");
}

/// A random secret.
fn secret() -> String {
    format!(
        "{:032x}{:032x}",
        rand::random::<u128>(),
        rand::random::<u128>()
    )
}

/// Settings of `hearty-bench`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "hearty-bench",
    version,
    about = "Benchmark of Hearty: throughput, latency, the broker's ceiling, memory, recovery (BENCHMARKS.md)"
)]
pub struct BenchArgs {
    /// The `hearty` binary to start (default: the one next to this one,
    /// as `cargo build --release --workspace` leaves it).
    #[arg(long, env = "HEARTY_BIN")]
    pub hearty: Option<PathBuf>,
    /// Target a running service instead of starting one (memory and
    /// recovery are then skipped: they need to own the process).
    #[arg(long)]
    pub url: Option<String>,
    /// With --url: the service's manager token (metrics, inspection and
    /// cancellations need it). Its rate limits should be off
    /// (`HEARTY_RATE_ORDERS=off`, `HEARTY_RATE_ADDRESS=off`): every order
    /// comes from one customer.
    #[arg(long, env = "HEARTY_MANAGER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The RabbitMQ of the service and of the ceiling measurement.
    #[arg(
        long,
        env = "HEARTY_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Measurement window of each load phase.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Warm-up before the full-load window.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// In-flight sagas held for the memory and recovery measurements.
    #[arg(long, default_value_t = 100_000)]
    pub memory_sagas: usize,
    /// Manager cancellations for the compensation throughput.
    #[arg(long, default_value_t = 2_000)]
    pub cancellations: usize,
    /// Skip the memory and recovery phases.
    #[arg(long)]
    pub skip_memory: bool,
    /// The deployments measured under load: one process with every role,
    /// the partitioned layout (an API replica, orchestrator and pay owners
    /// of partitions 0-3 and 4-7, one process for the other workers; each
    /// its own folder, sharing nothing but RabbitMQ), or both, one after
    /// the other in the same run. With --url only the target is measured.
    #[arg(long, value_enum, default_value_t = Layout::Both)]
    pub layout: Layout,
    /// Only the memory and recovery phases (with --memory-sagas; JSON).
    #[arg(long, conflicts_with_all = ["skip_memory", "url", "history"])]
    pub memory_only: bool,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
    /// Only the bounded-log measurement: N orders of history in the event
    /// log, bounded to --history-log-bytes, then a new API replica's time
    /// to ready (JSON).
    #[arg(long)]
    pub history: Option<usize>,
    /// The event log's bound in the --history measurement.
    #[arg(long, default_value_t = 64 << 20)]
    pub history_log_bytes: u64,
    /// Its segment size.
    #[arg(long, default_value_t = 8 << 20)]
    pub history_segment_bytes: u64,
    /// The local broker's data folder (the log's size on disk is read
    /// there).
    #[arg(long, default_value = "/var/lib/rabbitmq/mnesia")]
    pub broker_data: PathBuf,
}

/// Which deployments `hearty-bench` starts and loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Layout {
    Single,
    Partitioned,
    Both,
}

impl Layout {
    fn single(self) -> bool {
        matches!(self, Layout::Single | Layout::Both)
    }

    fn partitioned(self) -> bool {
        matches!(self, Layout::Partitioned | Layout::Both)
    }
}

/// Percentiles of a latency sample, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub count: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    fn of(mut ms: Vec<f64>) -> Self {
        if ms.is_empty() {
            return Latency::default();
        }
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms[((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1];
        Latency {
            count: ms.len(),
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: ms[ms.len() - 1],
        }
    }
}

/// One load phase.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Load {
    pub offered_orders_per_sec: Option<f64>,
    pub completed_sagas_per_sec: f64,
    pub seconds: f64,
    pub post_orders_ms: Latency,
    pub order_to_completed_ms: Latency,
    pub errors: u64,
    /// CPU the load generator (its HTTP client) spent per request, in
    /// microseconds: what the measuring costs the shared machine.
    pub client_cpu_us_per_request: Option<f64>,
    /// CPU the service spent per completed saga, in milliseconds (every
    /// process of the deployment).
    pub service_cpu_ms_per_saga: Option<f64>,
    /// CPU the broker spent per completed saga (a local broker only).
    pub broker_cpu_ms_per_saga: Option<f64>,
}

/// Everything `hearty bench` measured.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub machine: Value,
    pub concurrency: usize,
    pub ceiling: ceiling::Ceiling,
    pub ceiling_with_sqlite_commit: ceiling::Ceiling,
    /// One process with every role (or the --url target).
    #[serde(flatten)]
    pub single: Option<Figures>,
    /// The partitioned layout, measured after the single process.
    pub partitioned: Option<Partitioned>,
    pub memory: Option<Value>,
    pub recovery: Option<Value>,
}

/// What one deployment did under load.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Figures {
    pub full_load: Load,
    pub half_load: Load,
    /// Completed sagas per second at full load ÷ the ceiling's sagas per
    /// second, measured in the same run.
    pub throughput_vs_ceiling: f64,
    pub cancellations_per_sec: Option<f64>,
}

/// The partitioned layout's figures, beside the single process's.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Partitioned {
    /// The processes: name, roles, partitions.
    pub processes: Vec<String>,
    #[serde(flatten)]
    pub figures: Figures,
    /// Its full-load throughput ÷ the single process's in the same run.
    pub vs_single: Option<f64>,
}

/// The partitioned layout: (name, roles, partitions) of each process.
const PARTITIONED: [(&str, &str, &str); 6] = [
    ("orchestrator-a", "orchestrator", "0-3"),
    ("orchestrator-b", "orchestrator", "4-7"),
    ("pay-a", "pay", "0-3"),
    ("pay-b", "pay", "4-7"),
    ("workers", "kitchen,delivery,coupon", "all"),
    ("api", "api", "all"),
];

/// Where completed sagas are counted: the orchestrators' own counters, or
/// (a --url target, whose owners may live in processes the benchmark
/// cannot see) the length of the API's list of completed sagas.
#[derive(Clone)]
enum Counted {
    Metrics(Vec<String>),
    Api,
}

/// A deployment under load: who calls it, where sagas are counted, and the
/// processes whose CPU is the service's.
struct UnderLoad {
    target: Target,
    counted: Counted,
    pids: Vec<u32>,
}

/// A `hearty serve` child process.
struct Service {
    child: Child,
    base: String,
    data_dir: PathBuf,
    manager: String,
}

impl Service {
    fn start(
        exe: &Path,
        amqp: &str,
        namespace: &str,
        data_dir: &Path,
        secrets: (&str, &str),
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new(exe);
        for (k, _) in std::env::vars() {
            if k.starts_with("HEARTY_") {
                cmd.env_remove(k);
            }
        }
        service_settings(&mut cmd, secrets.0, secrets.1);
        cmd.arg("serve")
            .env("HEARTY_AMQP_URL", amqp)
            .env("HEARTY_NAMESPACE", namespace)
            .env("HEARTY_DATA_DIR", data_dir)
            .env("HEARTY_HTTP_ADDR", "127.0.0.1:0")
            .env("HEARTY_PAY_DECLINE_ABOVE", "1000000000")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().context("starting hearty serve")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(a) = line.strip_prefix("Hearty listening on http://") {
                    let _ = tx.send(a.to_owned());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(120))
            .context("the service did not start")?;
        Ok(Service {
            child,
            base: format!("http://{addr}"),
            data_dir: data_dir.to_owned(),
            manager: secrets.0.to_owned(),
        })
    }

    fn target(&self) -> Target {
        Target {
            base: self.base.clone(),
            manager: self.manager.clone(),
            customer: None,
        }
    }

    /// Resident memory in KiB.
    fn rss_kib(&self) -> Option<u64> {
        rss_kib_of(self.child.id())
    }

    fn terminate(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg:<40} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_owned());
    pb
}

async fn get_json(conn: &mut http::Conn, path: &str) -> anyhow::Result<Value> {
    let r = conn.request("GET", path, None).await?;
    if r.status != 200 {
        bail!("GET {path}: {}", r.status);
    }
    Ok(serde_json::from_slice(&r.body)?)
}

/// Completed sagas so far, where `counted` says.
async fn completed(target: &Target, counted: &Counted) -> anyhow::Result<f64> {
    match counted {
        Counted::Api => {
            let list =
                get_json(&mut target.staff()?, "/sagas?state=Completed&limit=100000").await?;
            Ok(list.as_array().map_or(0, Vec::len) as f64)
        }
        Counted::Metrics(bases) => {
            let mut sum = 0.0;
            for base in bases {
                let mut conn = http::Conn::new(base, Some(target.manager.clone()))?;
                sum += metric(&mut conn, "hearty_sagas_completed_total").await?;
            }
            Ok(sum)
        }
    }
}

async fn metric(conn: &mut http::Conn, name: &str) -> anyhow::Result<f64> {
    let r = conn.request("GET", "/metrics", None).await?;
    let text = String::from_utf8_lossy(&r.body);
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .with_context(|| format!("no metric {name}"))
}

/// Signs the customer up (as a customer does: anonymously; their token
/// places the orders) and adds the food (as the manager).
async fn seed(target: &mut Target) -> anyhow::Result<()> {
    let mut anonymous = http::Conn::new(&target.base, None)?;
    let r = anonymous
        .request(
            "POST",
            "/customers",
            Some(br#"{"name":"bench","phone":"0","address":"here","age":30}"#),
        )
        .await?;
    anyhow::ensure!(r.status == 201, "customer: {}", r.status);
    let signed_up: Value = serde_json::from_slice(&r.body)?;
    // A service from before identity answers no token (and needs none):
    // the benchmark still measures it, beside this one.
    target.customer = signed_up["token"].as_str().map(str::to_owned);
    let r = target
        .staff()?
        .request(
            "POST",
            "/foodCatalogs",
            Some(br#"{"name":"cake","stock":1000000000,"price":4.0}"#),
        )
        .await?;
    anyhow::ensure!(r.status == 201, "food: {}", r.status);
    Ok(())
}

/// The seed's order, as its httpie command sends it, placed by customer 1
/// (the one `seed` signs up in a fresh namespace) with their own token.
const ORDER: &[u8] = br#"{"qty":"1","foodcaltalogid":"1","customerid":"1"}"#;

/// Closed loop: `concurrency` clients order back to back for `warmup +
/// window`; latencies of orders placed inside the window are kept.
async fn full_load(
    load: &UnderLoad,
    concurrency: usize,
    warmup: Duration,
    window: Duration,
) -> anyhow::Result<Load> {
    let target = &load.target;
    let requests = Arc::new(AtomicU64::new(0));
    let pb = bar(
        window.as_secs() + warmup.as_secs(),
        "full load (closed loop)",
    );
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + window;
    let lat = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(AtomicU64::new(0));
    let mut conn = target.staff()?;
    let mut clients = Vec::new();
    for _ in 0..concurrency {
        let (lat, errors, target) = (lat.clone(), errors.clone(), target.clone());
        let requests = requests.clone();
        clients.push(tokio::spawn(async move {
            let Ok(mut c) = target.customer() else {
                return;
            };
            while Instant::now() < end {
                let t = Instant::now();
                let answer = c.request("POST", "/orders", Some(ORDER)).await;
                if t >= measure_from {
                    requests.fetch_add(1, Ordering::Relaxed);
                }
                match answer {
                    Ok(r) if r.status == 201 => {
                        if t >= measure_from {
                            lat.lock().await.push(t.elapsed().as_secs_f64() * 1000.0);
                        }
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep_until(measure_from.into()).await;
    let completed_before = completed(target, &load.counted).await?;
    let window_start_wall = hearty::domain::Millis::now();
    let client_cpu = cpu::Meter::start(vec!["self".to_owned()]);
    let service_cpu = cpu::Meter::start(load.pids.iter().map(u32::to_string).collect());
    let broker_cpu = cpu::Meter::start(cpu::broker_pid().into_iter().collect());
    while Instant::now() < end {
        pb.set_position(start.elapsed().as_secs());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let completed_after = completed(target, &load.counted).await?;
    let window_end_wall = hearty::domain::Millis::now();
    let completed = completed_after - completed_before;
    let sent = requests.load(Ordering::Relaxed) as f64;
    let client_cpu_us_per_request = client_cpu.ms_per(sent).map(|ms| ms * 1e3);
    let service_cpu_ms_per_saga = service_cpu.ms_per(completed);
    let broker_cpu_ms_per_saga = broker_cpu.ms_per(completed);
    for c in clients {
        let _ = c.await;
    }
    pb.finish_and_clear();
    let seconds = window.as_secs_f64();
    let post = Latency::of(std::mem::take(&mut *lat.lock().await));
    let to_completed = completion_latencies(&mut conn, window_start_wall, window_end_wall).await?;
    Ok(Load {
        offered_orders_per_sec: None,
        completed_sagas_per_sec: completed / seconds,
        seconds,
        post_orders_ms: post,
        order_to_completed_ms: to_completed,
        errors: errors.load(Ordering::Relaxed),
        client_cpu_us_per_request,
        service_cpu_ms_per_saga,
        broker_cpu_ms_per_saga,
    })
}

/// Open loop: orders at a fixed rate for `window`.
async fn rate_load(load: &UnderLoad, rate: f64, window: Duration) -> anyhow::Result<Load> {
    let target = &load.target;
    let pb = bar(
        window.as_secs(),
        &format!("half load ({rate:.0} orders/s, open loop)"),
    );
    let lat = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(AtomicU64::new(0));
    let mut conn = target.staff()?;
    let completed_before = completed(target, &load.counted).await?;
    let wall_start = hearty::domain::Millis::now();
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.1));
    // A pool of idle connections, so the open loop does not pay for connects.
    let pool: Arc<Mutex<Vec<http::Conn>>> = Arc::default();
    let mut tasks = Vec::new();
    let mut next = start;
    while next < start + window {
        tokio::time::sleep_until(next.into()).await;
        next += interval;
        pb.set_position(start.elapsed().as_secs());
        let (lat, errors, pool, target) =
            (lat.clone(), errors.clone(), pool.clone(), target.clone());
        tasks.push(tokio::spawn(async move {
            let reused = pool.lock().await.pop();
            let Ok(mut c) = reused.map(Ok).unwrap_or_else(|| target.customer()) else {
                return;
            };
            let t = Instant::now();
            match c.request("POST", "/orders", Some(ORDER)).await {
                Ok(r) if r.status == 201 => {
                    lat.lock().await.push(t.elapsed().as_secs_f64() * 1000.0)
                }
                _ => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            pool.lock().await.push(c);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let seconds = start.elapsed().as_secs_f64();
    // Let the last sagas finish before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let completed_after = completed(target, &load.counted).await?;
    let wall_end = hearty::domain::Millis::now();
    pb.finish_and_clear();
    let to_completed = completion_latencies(&mut conn, wall_start, wall_end).await?;
    Ok(Load {
        offered_orders_per_sec: Some(rate),
        completed_sagas_per_sec: (completed_after - completed_before) / seconds,
        seconds,
        post_orders_ms: Latency::of(std::mem::take(&mut *lat.lock().await)),
        order_to_completed_ms: to_completed,
        errors: errors.load(Ordering::Relaxed),
        client_cpu_us_per_request: None,
        service_cpu_ms_per_saga: None,
        broker_cpu_ms_per_saga: None,
    })
}

/// Order-to-`Completed` times of sagas created in `[from, to]`, from their
/// `createdAt` and the time of their `Completed` history line.
async fn completion_latencies(
    conn: &mut http::Conn,
    from: hearty::domain::Millis,
    to: hearty::domain::Millis,
) -> anyhow::Result<Latency> {
    let sagas = get_json(conn, "/sagas?state=Completed&limit=100000").await?;
    let parse = |v: &Value| v.as_str().and_then(parse_rfc3339);
    let mut ms = Vec::new();
    for s in sagas.as_array().into_iter().flatten() {
        let (Some(created), Some(updated)) = (parse(&s["createdAt"]), parse(&s["updatedAt"]))
        else {
            continue;
        };
        if created >= from.0 && created <= to.0 {
            ms.push((updated - created) as f64);
        }
    }
    Ok(Latency::of(ms))
}

/// Milliseconds since the epoch of `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn parse_rfc3339(s: &str) -> Option<i64> {
    let (date, time) = s.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let ms: i64 = format!("{frac:0<3}")[..3].parse().ok()?;
    // Days from civil (Howard Hinnant).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000) + ms)
}

/// Cancels completed orders from `concurrency` clients; compensations/s.
async fn cancellations(
    target: &Target,
    concurrency: usize,
    want: usize,
) -> anyhow::Result<Option<f64>> {
    let mut conn = target.staff()?;
    let sagas = get_json(&mut conn, "/sagas?state=Completed&limit=100000").await?;
    let ids: Vec<i64> = sagas
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["id"].as_i64())
        .take(want)
        .collect();
    if ids.is_empty() {
        return Ok(None);
    }
    let pb = bar(ids.len() as u64, "cancellations");
    // Counted through the API (the owners' metrics live in their own
    // processes when the target is one replica of a partitioned deployment).
    let compensated = async |conn: &mut http::Conn| -> anyhow::Result<f64> {
        let list = get_json(conn, "/sagas?state=Compensated&limit=100000").await?;
        Ok(list.as_array().map_or(0, Vec::len) as f64)
    };
    let before = compensated(&mut conn).await?;
    let start = Instant::now();
    let queue = Arc::new(Mutex::new(ids.clone()));
    let mut clients = Vec::new();
    for _ in 0..concurrency {
        let (queue, target) = (queue.clone(), target.clone());
        clients.push(tokio::spawn(async move {
            let Ok(mut c) = target.staff() else {
                return;
            };
            loop {
                let Some(id) = queue.lock().await.pop() else {
                    return;
                };
                let _ = c.request("DELETE", &format!("/kitchens/{id}"), None).await;
            }
        }));
    }
    for c in clients {
        let _ = c.await;
    }
    let target = before + ids.len() as f64;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let now = compensated(&mut conn).await?;
        pb.set_position((now - before).max(0.0) as u64);
        if now >= target || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    pb.finish_and_clear();
    Ok(Some(ids.len() as f64 / start.elapsed().as_secs_f64()))
}

async fn wait_ready(base: &str, limit: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        if let Ok(mut c) = http::Conn::new(base, None)
            && let Ok(r) = c.request("GET", "/health/ready", None).await
            && r.status == 200
        {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            bail!("not ready within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Resident memory of process `pid` in KiB.
fn rss_kib_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// How long after loading (or recovering) memory is read: the service's
/// passivation time (5 s) and the allocator's decay of freed pages
/// (10 s dirty, then 10 s muzzy), with a margin.
fn settle() -> Duration {
    Duration::from_secs(30)
}

/// The allocator's own view (bytes the program holds vs. pages it keeps
/// resident), from the service's metrics.
async fn allocator(conn: &mut http::Conn) -> Value {
    json!({
        "allocatedBytes": metric(conn, "hearty_allocator_allocated_bytes").await.ok(),
        "residentBytes": metric(conn, "hearty_allocator_resident_bytes").await.ok(),
        "retainedBytes": metric(conn, "hearty_allocator_retained_bytes").await.ok(),
    })
}

/// Memory per in-flight saga and recovery time, with N sagas waiting for
/// the kitchen (manual mode).
async fn memory_and_recovery(
    exe: &Path,
    args: &BenchArgs,
    namespace: &str,
    dir: &Path,
) -> anyhow::Result<(Value, Value)> {
    let manual = [("HEARTY_KITCHEN_MODE", "manual")];
    let (manager, key) = (secret(), secret());
    let svc = Service::start(
        exe,
        &args.amqp_url,
        namespace,
        dir,
        (&manager, &key),
        &manual,
    )?;
    wait_ready(&svc.base, Duration::from_secs(60)).await?;
    let mut target = svc.target();
    seed(&mut target).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = svc.rss_kib().unwrap_or(0);
    let n = args.memory_sagas;
    let pb = bar(n as u64, "in-flight sagas (kitchen manual)");
    let left = Arc::new(AtomicU64::new(n as u64));
    let failed = Arc::new(AtomicBool::new(false));
    let placed = Arc::new(AtomicU64::new(0));
    let loading = Instant::now();
    // The highest resident memory while loading (sampled), beside the
    // figure once the actors have passivated.
    let peak = Arc::new(AtomicU64::new(idle));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling, pid) = (peak.clone(), sampling.clone(), svc.child.id());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib_of(pid) {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let mut clients = Vec::new();
    for _ in 0..args.concurrency {
        let (left, failed, target, pb) = (left.clone(), failed.clone(), target.clone(), pb.clone());
        let placed = placed.clone();
        clients.push(tokio::spawn(async move {
            let Ok(mut c) = target.customer() else {
                return;
            };
            while left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| l.checked_sub(1))
                .is_ok()
            {
                match c.request("POST", "/orders", Some(ORDER)).await {
                    Ok(r) if r.status == 201 => {
                        pb.inc(1);
                        placed.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => failed.store(true, Ordering::Relaxed),
                }
            }
        }));
    }
    for c in clients {
        let _ = c.await;
    }
    // Per saga placed (a refused order holds nothing).
    let n = placed.load(Ordering::Relaxed) as usize;
    let loading_secs = loading.elapsed().as_secs_f64();
    pb.finish_and_clear();
    let mut conn = target.staff()?;
    // Let the kitchen accept the last ones, the idle actors passivate and
    // the allocator hand their memory back.
    tokio::time::sleep(settle()).await;
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.await;
    let loaded = svc.rss_kib().unwrap_or(0);
    let live = metric(&mut conn, "hearty_saga_actors_live")
        .await
        .unwrap_or(-1.0);
    let in_flight = metric(&mut conn, "hearty_sagas_in_flight")
        .await
        .unwrap_or(-1.0);
    let per = |kib: u64| (kib as f64 - idle as f64) * 1024.0 / n.max(1) as f64;
    let peak = peak.load(Ordering::Relaxed).max(loaded);
    let memory = json!({
        "inFlightSagas": in_flight,
        "sagaActorsLive": live,
        "idleRssKiB": idle,
        "loadedRssKiB": loaded,
        "bytesPerInFlightSaga": per(loaded),
        "peakRssKiBWhileLoading": peak,
        "bytesPerInFlightSagaAtPeak": per(peak),
        "allocator": allocator(&mut conn).await,
        "sagasPerSecLoading": n as f64 / loading_secs,
        "secondsLoading": loading_secs,
        "someOrdersFailed": failed.load(Ordering::Relaxed),
    });
    // Recovery: crash the process holding them, start again, time
    // readiness, then memory at ready and once idle.
    let data_dir = svc.data_dir.clone();
    svc.kill();
    let t = Instant::now();
    let svc = Service::start(
        exe,
        &args.amqp_url,
        namespace,
        &data_dir,
        (&manager, &key),
        &manual,
    )?;
    let ready = wait_ready(&svc.base, Duration::from_secs(600)).await?;
    let ready_total = t.elapsed();
    let at_ready = svc.rss_kib().unwrap_or(0);
    let mut conn = svc.target().staff()?;
    let back = metric(&mut conn, "hearty_sagas_in_flight")
        .await
        .unwrap_or(-1.0);
    let live_at_ready = metric(&mut conn, "hearty_saga_actors_live")
        .await
        .unwrap_or(-1.0);
    tokio::time::sleep(settle()).await;
    let after_idle = svc.rss_kib().unwrap_or(0);
    let recovery = json!({
        "inFlightSagas": n,
        "secondsToReady": ready_total.as_secs_f64(),
        "secondsFromListeningToReady": ready.as_secs_f64(),
        "sagasInFlightAfterRecovery": back,
        "sagaActorsLiveAtReady": live_at_ready,
        "rssKiBAtReady": at_ready,
        "rssKiBAfterIdle": after_idle,
        "bytesPerInFlightSaga": per(after_idle),
        "allocator": allocator(&mut conn).await,
        "note": "ready is answered only after recovery; bytes per in-flight saga are over the first process's idle RSS, measured once idle (passivation and the allocator's decay have passed)",
    });
    svc.terminate();
    Ok((memory, recovery))
}

fn machine() -> Value {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(str::to_owned))
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    json!({ "cores": cores, "memory": mem, "cpu": cpu })
}

/// The `hearty` binary: the one named, or the one beside this binary.
fn hearty_binary(named: Option<&Path>) -> anyhow::Result<PathBuf> {
    let exe = match named {
        Some(p) => p.to_owned(),
        None => std::env::current_exe()?
            .parent()
            .context("this binary's folder")?
            .join("hearty"),
    };
    anyhow::ensure!(
        exe.is_file(),
        "{} does not exist: build it first (`cargo build --release --workspace`) or name it with --hearty",
        exe.display()
    );
    Ok(exe)
}

/// Runs the bounded-log measurement alone (`--history N`).
pub async fn run_history(args: &BenchArgs, orders: usize) -> anyhow::Result<Value> {
    let exe = hearty_binary(args.hearty.as_deref())?;
    let namespace = format!("bench-hist-{:08x}", rand::random::<u32>());
    let tmp = std::env::temp_dir().join(&namespace);
    std::fs::create_dir_all(&tmp)?;
    let bound = history::Bound {
        max_bytes: args.history_log_bytes,
        segment_bytes: args.history_segment_bytes,
    };
    let result = history::measure(
        &exe,
        &args.amqp_url,
        &namespace,
        &tmp,
        orders,
        &bound,
        &args.broker_data,
    )
    .await;
    let _ =
        hearty::transport::amqp::AmqpTransport::delete_namespace(&args.amqp_url, &namespace).await;
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// Runs the memory and recovery measurement alone (`--memory-only`).
pub async fn run_memory(args: &BenchArgs) -> anyhow::Result<Value> {
    let exe = hearty_binary(args.hearty.as_deref())?;
    let namespace = format!("bench-mem-{:08x}", rand::random::<u32>());
    let tmp = std::env::temp_dir().join(&namespace);
    std::fs::create_dir_all(&tmp)?;
    let result = memory_and_recovery(&exe, args, &namespace, &tmp.join("memory")).await;
    let _ =
        hearty::transport::amqp::AmqpTransport::delete_namespace(&args.amqp_url, &namespace).await;
    let _ = std::fs::remove_dir_all(&tmp);
    let (memory, recovery) = result?;
    Ok(json!({ "machine": machine(), "memory": memory, "recovery": recovery }))
}

/// Runs the whole benchmark.
pub async fn run(args: BenchArgs) -> anyhow::Result<Report> {
    let exe = hearty_binary(args.hearty.as_deref())?;
    let namespace = format!("bench-{:08x}", rand::random::<u32>());
    let tmp = std::env::temp_dir().join(&namespace);
    std::fs::create_dir_all(&tmp)?;
    let result = run_in(&exe, &args, &namespace, &tmp).await;
    let _ =
        hearty::transport::amqp::AmqpTransport::delete_namespace(&args.amqp_url, &namespace).await;
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

async fn run_in(
    exe: &Path,
    args: &BenchArgs,
    namespace: &str,
    tmp: &Path,
) -> anyhow::Result<Report> {
    let pb = bar(2, "broker ceiling (raw round trips)");
    let ceiling = ceiling::measure(
        &args.amqp_url,
        namespace,
        args.concurrency,
        args.duration.min(Duration::from_secs(10)),
        300,
        None,
    )
    .await?;
    pb.inc(1);
    let with_sqlite = ceiling::measure(
        &args.amqp_url,
        namespace,
        args.concurrency,
        args.duration.min(Duration::from_secs(10)),
        300,
        Some(&tmp.join("ceiling.db")),
    )
    .await?;
    pb.finish_and_clear();

    let (single, partitioned) = match &args.url {
        Some(u) => {
            let manager = args
                .token
                .clone()
                .context("--url needs the service's manager token (--token)")?;
            let mut load = UnderLoad {
                target: Target {
                    base: u.clone(),
                    manager,
                    customer: None,
                },
                counted: Counted::Api,
                pids: Vec::new(),
            };
            (Some(loaded(&mut load, args, &ceiling).await?), None)
        }
        None => {
            let single = match args.layout.single() {
                true => Some(single_process(exe, args, namespace, tmp, &ceiling).await?),
                false => None,
            };
            let partitioned = match args.layout.partitioned() {
                true => {
                    let ns = format!("{namespace}-part");
                    let figures = partitioned_layout(exe, args, &ns, tmp, &ceiling).await;
                    let _ = hearty::transport::amqp::AmqpTransport::delete_namespace(
                        &args.amqp_url,
                        &ns,
                    )
                    .await;
                    let figures = figures?;
                    let vs_single = single.as_ref().map(|s| {
                        figures.full_load.completed_sagas_per_sec
                            / s.full_load.completed_sagas_per_sec
                    });
                    Some(Partitioned {
                        processes: PARTITIONED
                            .iter()
                            .map(|(name, roles, parts)| format!("{name}: {roles} {parts}"))
                            .collect(),
                        figures,
                        vs_single,
                    })
                }
                false => None,
            };
            (single, partitioned)
        }
    };
    let (memory, recovery) = if args.url.is_none() && !args.skip_memory {
        let (m, r) =
            memory_and_recovery(exe, args, &format!("{namespace}-mem"), &tmp.join("memory"))
                .await?;
        let _ = hearty::transport::amqp::AmqpTransport::delete_namespace(
            &args.amqp_url,
            &format!("{namespace}-mem"),
        )
        .await;
        (Some(m), Some(r))
    } else {
        (None, None)
    };
    Ok(Report {
        machine: machine(),
        concurrency: args.concurrency,
        ceiling,
        ceiling_with_sqlite_commit: with_sqlite,
        single,
        partitioned,
        memory,
        recovery,
    })
}

/// One process with every role, loaded.
async fn single_process(
    exe: &Path,
    args: &BenchArgs,
    namespace: &str,
    tmp: &Path,
    ceiling: &ceiling::Ceiling,
) -> anyhow::Result<Figures> {
    let (manager, key) = (secret(), secret());
    let svc = Service::start(
        exe,
        &args.amqp_url,
        namespace,
        &tmp.join("load"),
        (&manager, &key),
        &[],
    )?;
    let mut load = UnderLoad {
        target: svc.target(),
        counted: Counted::Metrics(vec![svc.base.clone()]),
        pids: vec![svc.child.id()],
    };
    let figures = loaded(&mut load, args, ceiling).await;
    svc.terminate();
    figures
}

/// The partitioned layout ([`PARTITIONED`]), started in its own namespace,
/// loaded through its API replica.
async fn partitioned_layout(
    exe: &Path,
    args: &BenchArgs,
    namespace: &str,
    tmp: &Path,
    ceiling: &ceiling::Ceiling,
) -> anyhow::Result<Figures> {
    let (manager, key) = (secret(), secret());
    let mut services = Vec::new();
    for (name, roles, partitions) in PARTITIONED {
        let svc = Service::start(
            exe,
            &args.amqp_url,
            namespace,
            &tmp.join("partitioned").join(name),
            (&manager, &key),
            &[("HEARTY_ROLES", roles), ("HEARTY_PARTITIONS", partitions)],
        )?;
        wait_ready(&svc.base, Duration::from_secs(60)).await?;
        services.push((roles, svc));
    }
    let api = services
        .iter()
        .find(|(roles, _)| *roles == "api")
        .map(|(_, s)| s.target())
        .context("the layout has an API replica")?;
    let mut load = UnderLoad {
        target: api,
        counted: Counted::Metrics(
            services
                .iter()
                .filter(|(roles, _)| *roles == "orchestrator")
                .map(|(_, s)| s.base.clone())
                .collect(),
        ),
        pids: services.iter().map(|(_, s)| s.child.id()).collect(),
    };
    let figures = loaded(&mut load, args, ceiling).await;
    for (_, s) in services {
        s.terminate();
    }
    figures
}

/// Full load, half load and cancellations against one deployment.
async fn loaded(
    load: &mut UnderLoad,
    args: &BenchArgs,
    ceiling: &ceiling::Ceiling,
) -> anyhow::Result<Figures> {
    wait_ready(&load.target.base, Duration::from_secs(60)).await?;
    seed(&mut load.target).await?;
    let full = full_load(load, args.concurrency, args.warmup, args.duration).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let half = rate_load(
        load,
        (full.completed_sagas_per_sec / 2.0).max(1.0),
        args.duration,
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cancellations_per_sec =
        cancellations(&load.target, args.concurrency, args.cancellations).await?;
    Ok(Figures {
        throughput_vs_ceiling: full.completed_sagas_per_sec / ceiling.sagas_per_sec,
        full_load: full,
        half_load: half,
        cancellations_per_sec,
    })
}

/// The human-readable summary.
pub fn summary(r: &Report) -> String {
    let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2} ms"));
    let mut out = String::new();
    out.push_str(&format!("machine: {}\n\n", r.machine));
    out.push_str(&format!(
        "broker ceiling: {:.0} round trips/s → {:.0} 4-step sagas/s ({} clients, persistent, confirms); CPU per saga: broker {}, client {}\n",
        r.ceiling.round_trips_per_sec,
        r.ceiling.sagas_per_sec,
        r.concurrency,
        ms(r.ceiling.broker_cpu_ms_per_saga),
        ms(r.ceiling.client_cpu_ms_per_saga),
    ));
    out.push_str(&format!(
        "  with one SQLite commit per round trip: {:.0} round trips/s → {:.0} sagas/s\n",
        r.ceiling_with_sqlite_commit.round_trips_per_sec,
        r.ceiling_with_sqlite_commit.sagas_per_sec
    ));
    if let Some(f) = &r.single {
        out.push_str("single process (every role):\n");
        out.push_str(&figures_summary(f));
    }
    if let Some(p) = &r.partitioned {
        out.push_str(&format!(
            "partitioned layout ({}):\n",
            p.processes.join("; ")
        ));
        out.push_str(&figures_summary(&p.figures));
        if let Some(v) = p.vs_single {
            out.push_str(&format!("  {v:.2}× the single process's throughput\n"));
        }
    }
    if let (Some(m), Some(rc)) = (&r.memory, &r.recovery) {
        out.push_str(&memory_summary(m, rc));
    }
    out
}

/// The lines of one deployment's figures.
fn figures_summary(f: &Figures) -> String {
    let l = |x: &Latency| {
        format!(
            "p50 {:.1} / p95 {:.1} / p99 {:.1} / max {:.1} ms (n={})",
            x.p50, x.p95, x.p99, x.max, x.count
        )
    };
    let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2} ms"));
    let mut out = format!(
        "  throughput: {:.1} completed sagas/s over {:.0} s = {:.1}% of the ceiling (errors {})\n",
        f.full_load.completed_sagas_per_sec,
        f.full_load.seconds,
        f.throughput_vs_ceiling * 100.0,
        f.full_load.errors
    );
    out.push_str(&format!(
        "  full load  POST /orders:       {}\n",
        l(&f.full_load.post_orders_ms)
    ));
    out.push_str(&format!(
        "  full load  order → Completed:  {}\n",
        l(&f.full_load.order_to_completed_ms)
    ));
    out.push_str(&format!(
        "  half load ({:.0}/s) POST /orders: {}\n",
        f.half_load.offered_orders_per_sec.unwrap_or(0.0),
        l(&f.half_load.post_orders_ms)
    ));
    out.push_str(&format!(
        "  half load  order → Completed:  {}\n",
        l(&f.half_load.order_to_completed_ms)
    ));
    out.push_str(&format!(
        "  CPU per completed saga at full load: service {}, broker {}; load generator {} per request\n",
        ms(f.full_load.service_cpu_ms_per_saga),
        ms(f.full_load.broker_cpu_ms_per_saga),
        f.full_load
            .client_cpu_us_per_request
            .map_or("-".to_owned(), |v| format!("{v:.0} µs")),
    ));
    if let Some(c) = f.cancellations_per_sec {
        out.push_str(&format!("  cancellations: {c:.1} compensated sagas/s\n"));
    }
    out
}

/// The memory and recovery lines of the summary.
pub fn memory_summary(m: &Value, rc: &Value) -> String {
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    format!(
        "memory while loading: {:.0} bytes per in-flight saga once idle, {:.0} at the peak ({} sagas at {:.0}/s, RSS {} → {} KiB, peak {} KiB, {} actors live)\n\
         recovery: {} in-flight sagas ready in {:.2} s after SIGKILL; {} actors at ready; RSS {} KiB at ready, {} KiB idle: {:.0} bytes per in-flight saga\n",
        f(&m["bytesPerInFlightSaga"]),
        f(&m["bytesPerInFlightSagaAtPeak"]),
        m["inFlightSagas"],
        f(&m["sagasPerSecLoading"]),
        m["idleRssKiB"],
        m["loadedRssKiB"],
        m["peakRssKiBWhileLoading"],
        m["sagaActorsLive"],
        rc["sagasInFlightAfterRecovery"],
        f(&rc["secondsToReady"]),
        rc["sagaActorsLiveAtReady"],
        rc["rssKiBAtReady"],
        rc["rssKiBAfterIdle"],
        f(&rc["bytesPerInFlightSaga"]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let l = Latency::of((1..=100).map(f64::from).collect());
        assert_eq!(
            (l.p50, l.p95, l.p99, l.max, l.count),
            (50.0, 95.0, 99.0, 100.0, 100)
        );
        assert_eq!(Latency::of(vec![]).count, 0);
    }

    #[test]
    fn timestamps_round_trip() {
        let m = hearty::domain::Millis(1_795_000_000_123);
        assert_eq!(parse_rfc3339(&m.to_rfc3339()), Some(m.0));
    }
}
