//! Configuration: every setting is a `--flag` of `hearty serve` and a
//! `HEARTY_*` environment variable (names fixed by PRODUCT.md).

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;

use crate::domain::{Money, WorkerKind};
use crate::partition::{PartitionCount, PartitionSet};
use crate::saga::definition::parse_duration;

/// The roles a process can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// HTTP API and the orchestrator (they share the sagas database).
    Api,
    Orchestrator,
    Worker(WorkerKind),
    /// Read models.
    Views,
}

/// A set of roles, parsed from `all` or a comma list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roles(BTreeSet<Role>);

impl Roles {
    pub fn all() -> Self {
        let mut set: BTreeSet<Role> = [Role::Api, Role::Orchestrator, Role::Views].into();
        set.extend(WorkerKind::ALL.map(Role::Worker));
        Roles(set)
    }

    pub fn has(&self, role: Role) -> bool {
        self.0.contains(&role)
    }

    pub fn workers(&self) -> impl Iterator<Item = WorkerKind> + '_ {
        self.0.iter().filter_map(|r| match r {
            Role::Worker(k) => Some(*k),
            _ => None,
        })
    }
}

impl FromStr for Roles {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut set = BTreeSet::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "all" => return Ok(Roles::all()),
                "api" => {
                    set.insert(Role::Api);
                }
                "orchestrator" => {
                    set.insert(Role::Orchestrator);
                }
                "views" => {
                    set.insert(Role::Views);
                }
                other => {
                    let k: WorkerKind = other.parse().map_err(|_| {
                        format!(
                            "unknown role `{other}` (expected all, api, orchestrator, pay, kitchen, delivery, coupon or views)"
                        )
                    })?;
                    set.insert(Role::Worker(k));
                }
            }
        }
        if set.is_empty() {
            return Err("HEARTY_ROLES names no role".into());
        }
        Ok(Roles(set))
    }
}

impl fmt::Display for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self
            .0
            .iter()
            .map(|r| match r {
                Role::Api => "api".to_owned(),
                Role::Orchestrator => "orchestrator".to_owned(),
                Role::Views => "views".to_owned(),
                Role::Worker(k) => k.to_string(),
            })
            .collect();
        f.write_str(&names.join(","))
    }
}

/// How kitchen and delivery complete their step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// At once.
    #[default]
    Auto,
    /// When a person says so through the API.
    Manual,
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Mode::Auto),
            "manual" => Ok(Mode::Manual),
            other => Err(format!("unknown mode `{other}` (expected auto or manual)")),
        }
    }
}

/// An artificial latency: `400ms±220ms` (or `400ms+-220ms`, or `400ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Latency {
    pub base: Duration,
    pub jitter: Duration,
}

impl Latency {
    /// One sample, uniform in `base ± jitter`.
    pub fn sample(&self) -> Duration {
        if self.jitter.is_zero() {
            return self.base;
        }
        let lo = self.base.saturating_sub(self.jitter).as_micros() as u64;
        let hi = (self.base + self.jitter).as_micros() as u64;
        Duration::from_micros(rand::random_range(lo..=hi))
    }
}

impl FromStr for Latency {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (base, jitter) = match s.split_once('±').or_else(|| s.split_once("+-")) {
            Some((b, j)) => (b, Some(j)),
            None => (s, None),
        };
        let base = parse_duration(base).map_err(|e| format!("latency {e}"))?;
        let jitter = match jitter {
            Some(j) => parse_duration(j).map_err(|e| format!("latency jitter {e}"))?,
            None => Duration::ZERO,
        };
        Ok(Latency { base, jitter })
    }
}

/// A size in bytes: `1048576`, `512KiB`, `64MiB`, `2GiB` (or kB, MB, GB:
/// powers of ten).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 64MiB or 2GiB"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "`{s}` has unknown unit `{other}` (use B, KiB, MiB, GiB, kB, MB or GB)"
            ));
        }
    };
    let bytes = n
        .checked_mul(scale)
        .ok_or_else(|| format!("`{s}` is too large"))?;
    if bytes == 0 {
        return Err("a size must be > 0".into());
    }
    Ok(bytes)
}

fn parse_money(s: &str) -> Result<Money, String> {
    Money::parse_price(s).map_err(|e| format!("`{s}`: {e}"))
}

/// The manager's bearer token. Never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A fresh random token of 32 hex characters.
    pub fn generate() -> Self {
        let bytes: [u8; 16] = rand::random();
        Secret(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Any text: a secret is checked after parsing, where an error can name
/// the setting without repeating the value (a parser's error would).
impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

/// On the wire (a request's forwarded credential) a secret is its text.
impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// The shortest manager token accepted.
pub const MIN_MANAGER_TOKEN_LEN: usize = 16;

/// Settings of `hearty serve`.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// HTTP listen address.
    #[arg(long, env = "HEARTY_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: String,

    /// Folder for the SQLite files.
    #[arg(long, env = "HEARTY_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// RabbitMQ URL, or a comma-separated list of the nodes of one
    /// cluster; unset = in-process transport.
    // Checked at start-up (`app::start`), where a refusal can hide the password;
    // never shown by `--help`.
    #[arg(long, env = "HEARTY_AMQP_URL", hide_env_values = true)]
    pub amqp_url: Option<String>,

    /// Prefix of every exchange and queue.
    #[arg(long, env = "HEARTY_NAMESPACE", default_value = "hearty", value_parser = parse_namespace)]
    pub namespace: String,

    /// Comma list of api, orchestrator, pay, kitchen, delivery, coupon, views, or all.
    #[arg(long, env = "HEARTY_ROLES", default_value = "all")]
    pub roles: Roles,

    /// Partitions of the namespace; fixed once the namespace exists (a
    /// process started with another count refuses to start).
    #[arg(long, env = "HEARTY_PARTITION_COUNT", default_value = "8")]
    pub partition_count: PartitionCount,

    /// The partitions this process owns for each stateful role it runs:
    /// `all`, `0-3`, `4,5,6,7`.
    #[arg(long, env = "HEARTY_PARTITIONS", default_value = "all")]
    pub partitions: PartitionSet,

    /// The manager's static bearer token (scripts, the seed's commands);
    /// without a broker generated and printed when unset, with one disabled
    /// when unset (staff then use `hearty token`).
    #[arg(long, env = "HEARTY_MANAGER_TOKEN", hide_env_values = true)]
    pub manager_token: Option<Secret>,

    /// The key that signs and verifies the service's own tokens (at least
    /// 32 characters); every process of a deployment shares it. Without a
    /// broker: generated into the data folder when unset.
    #[arg(long, env = "HEARTY_AUTH_KEY", hide_env_values = true)]
    pub auth_key: Option<Secret>,

    /// An external identity provider's keys: a JWKS file or `http://` URL
    /// (its tokens carry `role`, and `customer_id` for a customer).
    #[arg(long, env = "HEARTY_AUTH_JWKS")]
    pub auth_jwks: Option<String>,

    /// The issuer (`iss`) the external provider's tokens must name.
    #[arg(long, env = "HEARTY_AUTH_ISSUER")]
    pub auth_issuer: Option<String>,

    /// The audience (`aud`) the external provider's tokens must name.
    #[arg(long, env = "HEARTY_AUTH_AUDIENCE")]
    pub auth_audience: Option<String>,

    /// How long a customer's token (answered at sign-up) is valid.
    #[arg(long, env = "HEARTY_CUSTOMER_TOKEN_TTL", default_value = "30d", value_parser = parse_duration)]
    pub customer_token_ttl: Duration,

    /// Orders one customer may place: `30/1m` (a burst of 30, then one every
    /// 2 s); `off` for none.
    #[arg(long, env = "HEARTY_RATE_ORDERS", default_value = "30/1m")]
    pub rate_orders: Rate,

    /// Orders and sign-ups from one client address.
    #[arg(long, env = "HEARTY_RATE_ADDRESS", default_value = "600/1m")]
    pub rate_address: Rate,

    /// Reviews one customer may write.
    #[arg(long, env = "HEARTY_RATE_REVIEWS", default_value = "10/1m")]
    pub rate_reviews: Rate,

    /// Sign-ups from one client address.
    #[arg(long, env = "HEARTY_RATE_SIGNUPS", default_value = "20/1m")]
    pub rate_signups: Rate,

    /// Proxies (addresses or CIDRs, comma-separated) whose
    /// `X-Forwarded-For` names the client; any other peer is the client.
    #[arg(long, env = "HEARTY_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: crate::net::Proxies,

    /// Connections the HTTP server keeps at once, in total.
    #[arg(long, env = "HEARTY_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,

    /// Connections one client address may keep at once (trusted proxies
    /// excepted).
    #[arg(
        long,
        env = "HEARTY_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = 128
    )]
    pub max_connections_per_address: usize,

    /// A second, internal listener for `/health/*` and `/metrics` (probes,
    /// Prometheus): no authentication and no connection caps, so a flood of
    /// the public port cannot fail a liveness probe. Bind it to a private
    /// address. Unset: none (they are on HEARTY_HTTP_ADDR only).
    #[arg(long, env = "HEARTY_OPS_ADDR")]
    pub ops_addr: Option<String>,

    /// How long a client may take to send a request's body (408 after).
    #[arg(long, env = "HEARTY_BODY_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub body_timeout: Duration,

    /// Kitchen completes tickets at once (auto) or when marked cooked (manual).
    #[arg(long, env = "HEARTY_KITCHEN_MODE", default_value = "auto")]
    pub kitchen_mode: Mode,

    /// Delivery picks up at once (auto) or when marked picked up (manual).
    #[arg(long, env = "HEARTY_DELIVERY_MODE", default_value = "auto")]
    pub delivery_mode: Mode,

    /// Payments above this amount are declined.
    #[arg(long, env = "HEARTY_PAY_DECLINE_ABOVE", default_value = "1000", value_parser = parse_money)]
    pub pay_decline_above: Money,

    /// Artificial latency of the pay worker, e.g. 400ms±220ms.
    #[arg(long, env = "HEARTY_PAY_LATENCY")]
    pub pay_latency: Option<Latency>,

    /// Artificial latency of the kitchen worker.
    #[arg(long, env = "HEARTY_KITCHEN_LATENCY")]
    pub kitchen_latency: Option<Latency>,

    /// Artificial latency of the delivery worker.
    #[arg(long, env = "HEARTY_DELIVERY_LATENCY")]
    pub delivery_latency: Option<Latency>,

    /// Artificial latency of the coupon worker.
    #[arg(long, env = "HEARTY_COUPON_LATENCY")]
    pub coupon_latency: Option<Latency>,

    /// Make compensations fail on purpose, e.g. `pay=3` (each refund fails
    /// three times, then succeeds) or `coupon=always`.
    #[arg(long, env = "HEARTY_FAIL_COMPENSATIONS", default_value = "", value_parser = parse_failure_spec)]
    pub fail_compensations: String,

    /// Publish every worker reply twice (fault injection: duplicates).
    #[arg(long, env = "HEARTY_DUPLICATE_REPLIES", default_value_t = false)]
    pub duplicate_replies: bool,

    /// Base URL of the RabbitMQ management UI (links in saga inspection).
    #[arg(
        long,
        env = "HEARTY_MANAGEMENT_URL",
        default_value = "http://localhost:15672"
    )]
    pub management_url: String,

    /// The saga definition file.
    #[arg(
        long,
        env = "HEARTY_SAGA_FILE",
        default_value = "sagas/order_fulfilment.toml"
    )]
    pub saga_file: PathBuf,

    /// Declare quorum queues (replicated, with a delivery limit): `true` or
    /// `false`; unset = quorum queues when HEARTY_AMQP_URL names more than
    /// one node. A namespace's queues cannot change type: use a new
    /// namespace (or delete the old queues) when switching.
    #[arg(long, env = "HEARTY_QUORUM_QUEUES")]
    pub quorum_queues: Option<bool>,

    /// On SIGTERM, how long a process serving the API keeps serving with
    /// `/health/ready` failing before it stops (the preStop pattern: the
    /// load balancer moves away first). `0s`: stop at once.
    #[arg(long, env = "HEARTY_DRAIN", default_value = "5s", value_parser = parse_duration)]
    pub drain: Duration,

    /// How long start-up waits for an unreachable broker before it fails.
    #[arg(long, env = "HEARTY_BROKER_WAIT", default_value = "30s", value_parser = parse_duration)]
    pub broker_wait: Duration,

    /// Unacknowledged messages per consumer.
    #[arg(long, env = "HEARTY_PREFETCH", default_value_t = 64)]
    pub prefetch: u16,

    /// How long a saga actor with nothing to wait for stays in memory before
    /// it is passivated (its state is in SQLite; its next event reloads it).
    #[arg(long, env = "HEARTY_PASSIVATE_AFTER", default_value = "5s", value_parser = parse_duration)]
    pub passivate_after: Duration,

    /// How long `POST /orders` waits for the payment before answering 503.
    #[arg(long, env = "HEARTY_ORDER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub order_timeout: Duration,

    /// How long the event log keeps an entry (RabbitMQ deletes whole
    /// segments older than this). Read models older than the log's head
    /// restore a snapshot (`HEARTY_SNAPSHOT_DIR`).
    #[arg(long, env = "HEARTY_LOG_MAX_AGE", default_value = "7d", value_parser = parse_duration)]
    pub log_max_age: Duration,

    /// The most the event log keeps on the broker's disk, e.g. `2GiB`.
    #[arg(long, env = "HEARTY_LOG_MAX_BYTES", default_value = "2GiB", value_parser = parse_bytes)]
    pub log_max_bytes: u64,

    /// The size of one segment of the event log: retention deletes whole
    /// segments, so the log holds between `MAX_BYTES - SEGMENT_BYTES` and
    /// `MAX_BYTES` (plus the segment being written).
    #[arg(long, env = "HEARTY_LOG_SEGMENT_BYTES", default_value = "64MiB", value_parser = parse_bytes)]
    pub log_segment_bytes: u64,

    /// A folder every process serving read models shares (a volume): each
    /// writes a snapshot of its read models there now and then, and a new
    /// one starts from the latest instead of the log's beginning. Unset: no
    /// snapshots (a process reads the whole retained log).
    #[arg(long, env = "HEARTY_SNAPSHOT_DIR")]
    pub snapshot_dir: Option<PathBuf>,

    /// How often a process serving read models writes a snapshot (when its
    /// read models moved since the latest one in `HEARTY_SNAPSHOT_DIR`).
    #[arg(long, env = "HEARTY_SNAPSHOT_EVERY", default_value = "5m", value_parser = parse_duration)]
    pub snapshot_every: Duration,

    /// Failpoints for fault-injection tests, e.g. `outbox-after-confirm=abort`.
    #[arg(long, env = "HEARTY_FAILPOINTS", default_value = "", value_parser = crate::failpoint::validate)]
    pub failpoints: String,
}

/// Secrets that were published with this repository at some time (in its
/// docs or deployment files): a process refuses to start with one.
pub const PUBLISHED: &[&str] = &[
    "change-me-manager-token",
    "change-me-please",
    "test-manager-token",
    "fault-test-token",
    "bench-manager-token",
];

/// Whether a secret is one the repository published.
pub fn is_published(secret: &str) -> bool {
    PUBLISHED.contains(&secret) || secret.contains("change-me")
}

/// A rate: `N/PERIOD` (`30/1m`: a burst of 30, refilled evenly over a
/// minute), or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate(pub Option<(std::num::NonZeroU32, Duration)>);

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "off" {
            return Ok(Rate(None));
        }
        let (n, period) = s.split_once('/').ok_or_else(|| {
            format!("`{s}` is not a rate (expected N/PERIOD, e.g. 30/1m, or off)")
        })?;
        let n: std::num::NonZeroU32 = n
            .trim()
            .parse()
            .map_err(|_| format!("`{n}` is not a positive count"))?;
        let period = parse_duration(period.trim()).map_err(|e| format!("rate period {e}"))?;
        if period.is_zero() {
            return Err("a rate's period must be > 0".into());
        }
        Ok(Rate(Some((n, period))))
    }
}

fn parse_failure_spec(s: &str) -> Result<String, String> {
    parse_failures(s).map(|_| s.to_owned())
}

/// How often an injected failure happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureCount {
    Times(u32),
    Always,
}

impl std::fmt::Display for FailureCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FailureCount::Times(n) => write!(f, "of {n}"),
            FailureCount::Always => f.write_str("of always"),
        }
    }
}

/// Parses `pay=3,coupon=always` into per-worker failure counts.
pub fn parse_failures(spec: &str) -> Result<Vec<(WorkerKind, FailureCount)>, String> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            let (worker, count) = item
                .split_once('=')
                .ok_or_else(|| format!("`{item}` must look like pay=3 or pay=always"))?;
            let worker: WorkerKind = worker.trim().parse().map_err(|e| format!("{e}"))?;
            let count = match count.trim() {
                "always" => FailureCount::Always,
                n => FailureCount::Times(
                    n.parse()
                        .map_err(|_| format!("`{n}` is not a count or `always`"))?,
                ),
            };
            Ok((worker, count))
        })
        .collect()
}

fn parse_namespace(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 100
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(s.to_owned())
    } else {
        Err("the namespace must be 1-100 letters, digits, `-`, `_` or `.`".into())
    }
}

impl Config {
    /// The settings with every default, as `hearty serve` with no flags
    /// and no environment would have them.
    pub fn defaults() -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: Config,
        }
        // Parsing an empty command line with only defaults cannot fail.
        Wrapper::try_parse_from(["hearty"])
            .map(|w| w.config)
            .unwrap_or_else(|e| unreachable!("defaults parse: {e}"))
    }

    pub fn latency_of(&self, kind: WorkerKind) -> Option<Latency> {
        match kind {
            WorkerKind::Pay => self.pay_latency,
            WorkerKind::Kitchen => self.kitchen_latency,
            WorkerKind::Delivery => self.delivery_latency,
            WorkerKind::Coupon => self.coupon_latency,
        }
    }

    pub fn db_path(&self, name: &str) -> PathBuf {
        self.data_dir.join(format!("{name}.db"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_their_units() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("5kB"), Ok(5_000));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("12parsecs").is_err());
        assert!(parse_bytes("99999999999GiB").is_err());
    }

    #[test]
    fn latency_forms() {
        let l: Latency = "400ms±220ms".parse().expect("valid");
        assert_eq!(l.base, Duration::from_millis(400));
        assert_eq!(l.jitter, Duration::from_millis(220));
        for _ in 0..100 {
            let s = l.sample();
            assert!(s >= Duration::from_millis(180) && s <= Duration::from_millis(620));
        }
        assert_eq!(
            "1s+-0ms".parse::<Latency>().expect("valid").base,
            Duration::from_secs(1)
        );
        assert!("soon".parse::<Latency>().is_err());
    }

    #[test]
    fn roles() {
        let r: Roles = "api, pay".parse().expect("valid");
        assert!(r.has(Role::Api) && r.has(Role::Worker(WorkerKind::Pay)));
        assert!(!r.has(Role::Worker(WorkerKind::Coupon)));
        assert_eq!(r.to_string(), "api,pay");
        assert!("cook".parse::<Roles>().is_err());
        assert!("all".parse::<Roles>().expect("valid").has(Role::Views));
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::generate();
        assert_eq!(s.expose().len(), 32);
        assert_eq!(format!("{s:?}"), "Secret(***)");
    }

    #[test]
    fn rates_parse() {
        assert_eq!("off".parse::<Rate>(), Ok(Rate(None)));
        let r: Rate = "30/1m".parse().expect("valid");
        let (n, p) = r.0.expect("a rate");
        assert_eq!((n.get(), p), (30, Duration::from_secs(60)));
        for bad in ["30", "0/1m", "x/1m", "30/0s", "30/soon"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    #[test]
    fn published_secrets_are_known() {
        assert!(is_published("change-me-manager-token"));
        assert!(is_published("please-change-me"));
        assert!(!is_published(Secret::generate().expose()));
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = Config::defaults();
        assert_eq!(c.http_addr, "127.0.0.1:8080");
        assert_eq!(c.namespace, "hearty");
        assert_eq!(c.pay_decline_above, Money::from_cents(100_000));
        assert_eq!(c.kitchen_mode, Mode::Auto);
        assert!(c.amqp_url.is_none());
    }
}
