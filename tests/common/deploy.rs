//! Real deployment tools around a [`Cluster`]: the HAProxy gateway of
//! `deploy/haproxy/haproxy.cfg`, `siege` as the seed used it, and the
//! invariants every deployment check ends with.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Cluster, Service};

/// An installed tool, or `None` outside CI (said loudly; in CI a missing
/// tool is a failure: `.ci/run` installs them).
pub fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "`{name}` is not installed (CI installs it: .ci/run)"
        );
        eprintln!("\n!!! SKIPPED: `{name}` is not installed. In CI this is a failure.\n");
    }
    found
}

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Whether something accepts connections on `port`.
fn listens(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

impl Cluster {
    /// Starts HAProxy with the gateway configuration of the compose file,
    /// on a port of its own, in front of `backends` (`127.0.0.1:port`);
    /// `None` when HAProxy is not installed (outside CI).
    pub fn gateway(&self, backends: &[String]) -> Option<Service> {
        let haproxy = tool("haproxy")?;
        let shipped = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/haproxy/haproxy.cfg"
        ))
        .expect("deploy/haproxy/haproxy.cfg");
        let port = free_port();
        // The shipped file, with this machine's addresses: the listening
        // port, and one `server` line per backend in place of the
        // container names (every option of the shipped lines is kept).
        let mut cfg = String::new();
        let mut servers_written = false;
        for line in shipped.lines() {
            let trimmed = line.trim_start();
            if trimmed.starts_with("bind :8080") {
                cfg.push_str(&format!("    bind 127.0.0.1:{port}\n"));
            } else if let Some(rest) = trimmed.strip_prefix("server ") {
                let options: Vec<&str> = rest.split_whitespace().skip(2).collect();
                if !servers_written {
                    for (i, b) in backends.iter().enumerate() {
                        cfg.push_str(&format!(
                            "    server api-{} {b} {}\n",
                            i + 1,
                            options.join(" ")
                        ));
                    }
                    servers_written = true;
                }
            } else if trimmed.starts_with("log ") {
                // Quiet in tests.
            } else {
                cfg.push_str(line);
                cfg.push('\n');
            }
        }
        assert!(
            servers_written,
            "the gateway configuration has server lines"
        );
        let path = self.dir.path().join(format!("haproxy-{port}.cfg"));
        std::fs::write(&path, cfg).expect("write haproxy.cfg");
        let check = Command::new(&haproxy)
            .args(["-c", "-q", "-f"])
            .arg(&path)
            .status()
            .expect("haproxy -c");
        assert!(check.success(), "the gateway configuration is valid");
        let child = Command::new(&haproxy)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !listens(port) {
            assert!(Instant::now() < deadline, "haproxy does not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Service {
            child,
            base: format!("http://127.0.0.1:{port}"),
        })
    }

    /// Waits until `svc` answers `/health/ready` with 200.
    pub fn wait_ready(&self, svc: &Service) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let ready = self.rt_block_on(async {
                self.client()
                    .get(format!("{}/health/ready", svc.base))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            });
            if ready {
                return;
            }
            assert!(Instant::now() < deadline, "{} never became ready", svc.base);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until no saga is running any more: their states by id.
    pub fn wait_all_terminal(&self, api: &Service) -> HashMap<i64, String> {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let sagas = self.get(api, "/sagas?limit=100000");
            let states: HashMap<i64, String> = sagas
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|s| {
                    (
                        s["id"].as_i64().unwrap_or(0),
                        s["state"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect();
            let running: Vec<_> = states
                .iter()
                .filter(|(_, s)| !matches!(s.as_str(), "Completed" | "Compensated"))
                .collect();
            if running.is_empty() {
                return states;
            }
            assert!(
                Instant::now() < deadline,
                "sagas still not terminal: {running:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The invariants of a quiet deployment whose only food (id 1) started
    /// with `initial_stock`: every saga terminal, nothing charged twice,
    /// payments match the sagas, stock conserved, at most one coupon per
    /// order and none live for a cancelled one, legal histories, no message
    /// left in a queue or dead-lettered. Named results, all checked.
    pub fn invariants(
        &self,
        api: &Service,
        initial_stock: i64,
    ) -> Vec<(&'static str, Result<(), String>)> {
        let states = self.wait_all_terminal(api);
        let list = |path: &str| self.get(api, path).as_array().cloned().unwrap_or_default();
        let by_order = |records: &[Value]| -> HashMap<i64, Vec<String>> {
            let mut m: HashMap<i64, Vec<String>> = HashMap::new();
            for r in records {
                m.entry(r["orderId"].as_i64().unwrap_or(0))
                    .or_default()
                    .push(r["status"].as_str().unwrap_or("").to_owned());
            }
            m
        };
        let pays = list("/pays?limit=100000");
        let pay_of = by_order(&pays);
        let coupon_of = by_order(&list("/coupons?limit=100000"));
        let completed: Vec<i64> = states
            .iter()
            .filter(|(_, s)| *s == "Completed")
            .map(|(id, _)| *id)
            .collect();
        let check = |ok: bool, detail: String| if ok { Ok(()) } else { Err(detail) };
        let mut checks = Vec::new();
        let doubled: Vec<_> = pay_of.iter().filter(|(_, v)| v.len() > 1).collect();
        checks.push((
            "no order is charged twice",
            check(doubled.is_empty(), format!("{doubled:?}")),
        ));
        let approved = pays.iter().filter(|p| p["status"] == "Approved").count();
        checks.push((
            "approved payments equal completed sagas",
            check(
                approved == completed.len(),
                format!("{approved} approved, {} completed", completed.len()),
            ),
        ));
        let wrong: Vec<_> = states
            .iter()
            .filter(|(id, s)| {
                let pay = pay_of.get(id).and_then(|v| v.first()).map(String::as_str);
                match s.as_str() {
                    "Completed" => pay != Some("Approved"),
                    _ => !matches!(pay, None | Some("Refunded") | Some("Declined")),
                }
            })
            .collect();
        checks.push((
            "every compensated payment is refunded",
            check(wrong.is_empty(), format!("{wrong:?}")),
        ));
        let orders = list("/orders?limit=100000");
        let held: i64 = orders
            .iter()
            .filter(|o| {
                o["id"]
                    .as_i64()
                    .is_some_and(|id| states.get(&id).is_some_and(|s| s == "Completed"))
            })
            .map(|o| o["qty"].as_i64().unwrap_or(0))
            .sum();
        let stock = self.stock(api);
        checks.push((
            "stock is conserved",
            check(
                initial_stock == stock + held,
                format!("initial {initial_stock} != stock {stock} + held {held}"),
            ),
        ));
        let bad_coupons: Vec<_> = states
            .iter()
            .filter(|(id, s)| {
                let cs = coupon_of.get(id).cloned().unwrap_or_default();
                cs.len() > 1
                    || (s.as_str() == "Completed" && cs != ["Issued"])
                    || (s.as_str() != "Completed" && cs.iter().any(|c| c == "Issued"))
            })
            .collect();
        checks.push((
            "one coupon per completed order, none live for a cancelled one",
            check(bad_coupons.is_empty(), format!("{bad_coupons:?}")),
        ));
        let busy: Vec<_> = self
            .queue_depths()
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect();
        checks.push((
            "no message left in a queue or dead-lettered",
            check(busy.is_empty(), format!("{busy:?}")),
        ));
        checks
    }
}

/// What a `siege` run reported (its summary) and the status codes it saw
/// (its verbose lines).
#[derive(Debug)]
pub struct Siege {
    pub transactions: u64,
    pub availability: f64,
    pub failed: u64,
    /// Every status code siege saw, with how often.
    pub codes: HashMap<u16, u64>,
    pub summary: Value,
}

impl Siege {
    /// Answers at or above 400.
    pub fn errors(&self) -> u64 {
        self.codes
            .iter()
            .filter(|(c, _)| **c >= 400)
            .map(|(_, n)| n)
            .sum()
    }
}

/// A `siege` run in the background, ordering the seed's breakfast (food 1,
/// customer 1, quantity 1) through `base` as that customer (`token`):
/// `clients` concurrent users with a random delay up to `delay` seconds
/// between requests, until [`SiegeRun::finish`].
pub struct SiegeRun {
    child: std::process::Child,
}

impl SiegeRun {
    pub fn start(base: &str, token: &str, clients: u32, delay: f64) -> Option<SiegeRun> {
        let siege = tool("siege")?;
        let target =
            format!(r#"{base}/orders POST {{"qty":"1","foodcaltalogid":"1","customerid":"1"}}"#);
        let child = Command::new(siege)
            .args([
                // No ~/.siege/siege.conf: the same run everywhere.
                "--rc=/dev/null",
                "--verbose",
                "--no-parser",
                &format!("--concurrent={clients}"),
                &format!("--delay={delay}"),
                "--time=10M",
                "--content-type=application/json",
                &format!("--header=Authorization: Bearer {token}"),
            ])
            .arg(target)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start siege");
        Some(SiegeRun { child })
    }

    /// Stops the siege (SIGINT: it prints its summary) and reads it.
    pub fn finish(mut self) -> Siege {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-INT", &pid]).status();
        let out = {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if self.child.try_wait().expect("wait").is_some() {
                    break;
                }
                assert!(Instant::now() < deadline, "siege does not stop");
                std::thread::sleep(Duration::from_millis(100));
            }
            let mut stdout = String::new();
            let mut stderr = String::new();
            use std::io::Read;
            if let Some(mut o) = self.child.stdout.take() {
                let _ = o.read_to_string(&mut stdout);
            }
            if let Some(mut e) = self.child.stderr.take() {
                let _ = e.read_to_string(&mut stderr);
            }
            format!("{stdout}\n{stderr}")
        };
        parse_siege(&out)
    }
}

impl Drop for SiegeRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads siege's verbose lines (`HTTP/1.1 201 0.05 secs: ...`, coloured)
/// and its summary (`Transactions: 419 hits`, `Availability: 100.00 %`).
fn parse_siege(out: &str) -> Siege {
    let mut codes: HashMap<u16, u64> = HashMap::new();
    let mut summary = serde_json::Map::new();
    for raw in out.lines() {
        // Without the colour escapes (`ESC[0;34m`).
        let mut line = String::new();
        let mut chars = raw.chars();
        while let Some(ch) = chars.next() {
            if ch == '\u{1b}' {
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            } else {
                line.push(ch);
            }
        }
        let mut words = line.split_whitespace();
        if words.next().is_some_and(|w| w.starts_with("HTTP/")) {
            if let Some(code) = words.next().and_then(|c| c.parse().ok()) {
                *codes.entry(code).or_default() += 1;
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':')
            && let Some(number) = value
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
        {
            summary.insert(name.trim().to_lowercase().replace(' ', "_"), number.into());
        }
    }
    let summary = Value::Object(summary);
    let transactions = summary["transactions"]
        .as_f64()
        .unwrap_or_else(|| panic!("no summary in siege's output:\n{out}"));
    Siege {
        transactions: transactions as u64,
        availability: summary["availability"].as_f64().unwrap_or(0.0),
        failed: summary["failed_transactions"]
            .as_f64()
            .map_or(u64::MAX, |f| f as u64),
        codes,
        summary,
    }
}
