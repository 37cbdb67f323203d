//! The fault-injection suite: a seeded stream of orders and cancellations
//! against a shared-nothing deployment of real `hearty serve` processes over
//! the real RabbitMQ — two API replicas, two orchestrator owners, two pay
//! owners, the other workers, each with its own folder, and a duplicate
//! orchestrator owner started on purpose (a standby) — while, three times,
//! the whole deployment or one partition owner is SIGKILLed at a random
//! moment, an owner crashes at a failpoint (after a commit before
//! publishing, after a confirm before the outbox row is deleted, after
//! applying a reply before acking it), the broker goes away and comes back
//! (owners stop and are restarted), a partition owner hangs (SIGSTOP) past
//! its lease and wakes (its standby, if it has one, takes over meanwhile;
//! the woken owner must change nothing), the workers are killed, and every
//! reply is delivered twice with jittered delays.
//!
//! Then, with the system quiet, the invariants are checked and the suite
//! ends with an `N passed, N failed` line. Replay a run with
//! `HEARTY_CHAOS_SEED=<seed> cargo test --test chaos -- --nocapture`.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Cluster, Service};
use serde_json::{Value, json};

/// A small deterministic generator (splitmix64), so a seed replays a run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const OPS: usize = 48;
const INITIAL_STOCK: i64 = 10_000;
const FAILPOINTS: [&str; 3] = [
    "orchestrator-after-commit=abort@1",
    "outbox-after-confirm=abort@1",
    "reply-before-ack=abort@1",
];

/// One process of the deployment: its roles and settings (its own folder
/// follows from them, see `Cluster::data_dir_of`).
struct Spec {
    name: &'static str,
    roles: &'static str,
    env: Vec<(&'static str, &'static str)>,
}

/// The deployment: two API replicas, two orchestrator owners, two pay
/// owners, the other workers — every process its own folder — and a
/// duplicate of one orchestrator owner started on purpose, which must wait
/// as a standby and may only take over when the owner is gone. Any process
/// may be killed or abort itself; `ensure` restarts it (a supervisor).
struct Processes {
    specs: Vec<Spec>,
    running: Vec<Option<Service>>,
    /// The duplicate owner of `specs[DUPLICATED]`, while it waits.
    duplicate: Option<common::Spawned>,
    /// Failpoints for the next start of one orchestrator owner.
    failpoint: Option<(usize, &'static str)>,
    /// The duplicated owner hung: its duplicate may take over beside it
    /// (until the woken owner is gone).
    duplicate_excused: bool,
    /// Which API replica the next call goes to.
    turn: usize,
}

const WORKER_ENV: [(&str, &str); 4] = [
    ("HEARTY_DUPLICATE_REPLIES", "true"),
    ("HEARTY_PAY_LATENCY", "3ms±3ms"),
    ("HEARTY_KITCHEN_LATENCY", "5ms±5ms"),
    ("HEARTY_COUPON_LATENCY", "8ms±8ms"),
];

/// The index of the orchestrator owner that has a duplicate.
const DUPLICATED: usize = 2;

fn deployment(c: &Cluster) -> Processes {
    let api = |name, dir| Spec {
        name,
        roles: "api",
        env: vec![("HEARTY_ORDER_TIMEOUT", "20s"), ("HEARTY_DATA_DIR", dir)],
    };
    let owner = |name, roles, partitions| {
        let mut env = WORKER_ENV.to_vec();
        env.push(("HEARTY_PARTITIONS", partitions));
        env.push(("HEARTY_ORDER_TIMEOUT", "20s"));
        Spec { name, roles, env }
    };
    // Leaked once per test run: the folders of the two API replicas.
    let dir = |name: &str| -> &'static str {
        Box::leak(
            c.dir
                .path()
                .join(name)
                .to_string_lossy()
                .into_owned()
                .into_boxed_str(),
        )
    };
    let specs = vec![
        api("api-a", dir("api-a")),
        api("api-b", dir("api-b")),
        owner("orchestrator-low", "orchestrator", "0-3"),
        owner("orchestrator-high", "orchestrator", "4-7"),
        owner("pay-low", "pay", "0-3"),
        owner("pay-high", "pay", "4-7"),
        owner("workers", "kitchen,delivery,coupon", "all"),
    ];
    let running = specs.iter().map(|_| None).collect();
    Processes {
        specs,
        running,
        duplicate: None,
        failpoint: None,
        duplicate_excused: false,
        turn: 0,
    }
}

impl Processes {
    fn start(&self, c: &Cluster, i: usize, failpoint: Option<&str>) -> Service {
        let spec = &self.specs[i];
        let mut env = spec.env.clone();
        if let Some(f) = failpoint {
            eprintln!("chaos: starting {} with failpoint {f}", spec.name);
            env.push(("HEARTY_FAILPOINTS", f));
        }
        c.start(spec.roles, &env)
    }

    /// Starts the duplicate owner: same roles, partitions and folder.
    fn start_duplicate(&mut self, c: &Cluster) {
        let spec = &self.specs[DUPLICATED];
        self.duplicate = Some(c.spawn(spec.roles, &spec.env));
        eprintln!("chaos: started a duplicate of {}", spec.name);
    }

    /// Restarts whatever is not running.
    fn ensure(&mut self, c: &Cluster) {
        for i in 0..self.specs.len() {
            if self.running[i].as_mut().is_some_and(Service::is_alive) {
                continue;
            }
            if self.running[i].take().is_some() {
                eprintln!("chaos: {} exited by itself", self.specs[i].name);
            }
            if i == DUPLICATED
                && let Some(mut dup) = self.duplicate.take()
            {
                // The owner is gone: its duplicate takes over (it waits for
                // the leases, looking four times a second), or took over
                // already (the owner hung).
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    if let Some(addr) = dup.try_listening() {
                        eprintln!("chaos: the duplicate took {} over", self.specs[i].name);
                        self.running[i] = Some(dup.into_service(addr));
                        self.duplicate_excused = false;
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "the duplicate owner never took over"
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
                continue;
            }
            let fp = match self.failpoint {
                Some((j, f)) if j == i => {
                    self.failpoint = None;
                    Some(f)
                }
                _ => None,
            };
            self.running[i] = Some(self.start(c, i, fp));
        }
    }

    /// The duplicate has not started while its owner lives (unless the
    /// owner hung: then it must have).
    fn duplicate_waits(&mut self) -> bool {
        self.duplicate_excused
            || self
                .duplicate
                .as_mut()
                .is_none_or(|d| d.try_listening().is_none())
    }

    /// The next API replica's address.
    fn base(&mut self) -> String {
        self.turn += 1;
        let i = self.turn % 2;
        self.running[i]
            .as_ref()
            .map(|a| a.base.clone())
            .unwrap_or_default()
    }

    fn kill(&mut self, i: usize) {
        if let Some(s) = self.running[i].take() {
            s.kill();
            eprintln!("chaos: killed {}", self.specs[i].name);
        }
    }

    fn pids(&self) -> Vec<u32> {
        self.running.iter().flatten().map(Service::pid).collect()
    }
}

/// One HTTP call that may hit a dead process: `None` on a network error.
fn call(
    c: &Cluster,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
    key: Option<&str>,
) -> Option<(u16, Value)> {
    c.rt_block_on(async {
        let mut req = c
            .client()
            .request(method, url)
            .bearer_auth(common::token())
            .timeout(Duration::from_secs(30));
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.ok()?;
        let status = res.status().as_u16();
        let text = res.text().await.ok()?;
        Some((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    })
}

#[test]
fn chaos_loses_nothing_and_doubles_nothing() {
    let Some(c) = Cluster::new() else { return };
    let seed = std::env::var("HEARTY_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("chaos: seed {seed} (replay with HEARTY_CHAOS_SEED={seed})");
    let mut rng = Rng(seed);

    // The moments of each fault, drawn from the seed.
    let at = |rng: &mut Rng, lo: usize, hi: usize| lo + rng.below((hi - lo) as u64) as usize;
    let kills = [
        at(&mut rng, 3, 15),
        at(&mut rng, 16, 30),
        at(&mut rng, 31, 44),
    ];
    let failpoint_at = at(&mut rng, 5, 40);
    let failpoint = FAILPOINTS[rng.below(3) as usize];
    let outage_at = at(&mut rng, 10, 38);
    let worker_kill_at = at(&mut rng, 4, 44);
    let pause_at = at(&mut rng, 6, 42);
    let paused = 2 + rng.below(4) as usize;
    eprintln!(
        "chaos: kills at {kills:?}, failpoint {failpoint} at {failpoint_at}, broker outage at {outage_at}, worker kill at {worker_kill_at}, owner {paused} hangs at {pause_at}"
    );

    let procs = Arc::new(Mutex::new(deployment(&c)));
    procs.lock().expect("lock").ensure(&c);
    procs.lock().expect("lock").start_duplicate(&c);
    let base = procs.lock().expect("lock").base();
    let (s, _) = call(
        &c,
        reqwest::Method::POST,
        format!("{base}/customers"),
        Some(json!({"name": "yang", "phone": "01011", "address": "korea11", "age": "27"})),
        None,
    )
    .expect("customer");
    assert_eq!(s, 201);
    let (s, _) = call(
        &c,
        reqwest::Method::POST,
        format!("{base}/foodCatalogs"),
        Some(json!({"name": "cake", "stock": INITIAL_STOCK.to_string(), "price": "4.0"})),
        None,
    )
    .expect("food");
    assert_eq!(s, 201);

    let mut answered: BTreeMap<i64, i64> = BTreeMap::new(); // order id → qty, for every 201
    // Joined (and the broker started) even if the test panics.
    let mut outage = Outage(None);
    // Joined (and the process woken) even if the test panics.
    let mut hang = Hang(None);
    let started = Instant::now();
    for op in 0..OPS {
        if kills.contains(&op) {
            // SIGKILL the whole service a few milliseconds into the next call.
            let delay = Duration::from_millis(rng.below(40));
            let procs = procs.clone();
            let whole = rng.below(2) == 0;
            let owner = 2 + rng.below(4) as usize;
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                let mut p = procs.lock().expect("lock");
                if whole {
                    assert!(
                        p.duplicate_waits(),
                        "the duplicate started beside its owner"
                    );
                    for i in 0..p.specs.len() {
                        p.kill(i);
                    }
                    eprintln!("chaos: killed the whole deployment");
                } else {
                    // A partition owner mid-load.
                    p.kill(owner);
                }
            });
        }
        if op == failpoint_at {
            let mut p = procs.lock().expect("lock");
            // One orchestrator owner restarts with the failpoint armed (the
            // duplicate's owner excepted: it would take over instead).
            let i = 3;
            if let Some(a) = p.running[i].take() {
                a.terminate();
            }
            p.failpoint = Some((i, failpoint));
            p.ensure(&c);
        }
        if op == worker_kill_at {
            procs.lock().expect("lock").kill(6);
        }
        if op == pause_at {
            // A partition owner hangs past its lease (12 s: the broker drops
            // it after two missed 3 s heartbeats) while orders go on, then
            // wakes: it must stop by itself without changing anything.
            let mut p = procs.lock().expect("lock");
            if let Some(pid) = p.running[paused].as_ref().map(Service::pid) {
                if paused == DUPLICATED {
                    p.duplicate_excused = true;
                }
                let name = p.specs[paused].name;
                drop(p);
                let _ = std::process::Command::new("kill")
                    .args(["-STOP", &pid.to_string()])
                    .status();
                eprintln!("chaos: {name} hangs");
                hang.0 = Some((
                    pid,
                    std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_secs(12));
                        let _ = std::process::Command::new("kill")
                            .args(["-CONT", &pid.to_string()])
                            .status();
                        eprintln!("chaos: {name} wakes");
                    }),
                ));
            }
        }
        if op == outage_at {
            outage.0 = Some(std::thread::spawn(move || {
                let ctl = |arg: &str| {
                    std::process::Command::new("rabbitmqctl")
                        .arg(arg)
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .status()
                };
                match ctl("stop_app") {
                    Ok(s) if s.success() => {
                        eprintln!("chaos: broker stopped");
                        std::thread::sleep(Duration::from_millis(1500));
                        let ok = ctl("start_app").is_ok_and(|s| s.success());
                        eprintln!("chaos: broker started again ({ok})");
                    }
                    _ => eprintln!("chaos: rabbitmqctl unavailable; no broker outage in this run"),
                }
            }));
        }

        let cancel = !answered.is_empty() && rng.below(100) < 25;
        if cancel {
            let ids: Vec<i64> = answered.keys().copied().collect();
            let id = ids[rng.below(ids.len() as u64) as usize];
            retry_until(&c, &procs, |base| {
                call(
                    &c,
                    reqwest::Method::DELETE,
                    format!("{base}/kitchens/{id}"),
                    None,
                    None,
                )
                .filter(|(s, _)| *s == 202 || *s == 409 || *s == 404)
                .map(|_| ())
            });
        } else {
            let qty = 1 + rng.below(4) as i64;
            let key = format!("chaos-{seed}-{op}");
            let outcome = retry_until(&c, &procs, |base| {
                let (s, v) = call(
                    &c,
                    reqwest::Method::POST,
                    format!("{base}/orders"),
                    Some(json!({"qty": qty.to_string(), "foodcaltalogid": "1", "customerid": "1"})),
                    Some(&key),
                )?;
                match s {
                    201 => Some(v["id"].as_i64()),
                    // Not established, definitively (the order exists as Rejected).
                    402 | 409 => Some(None),
                    503 if v["orderId"].is_i64() => Some(None),
                    _ => None,
                }
            });
            if let Some(id) = outcome {
                answered.insert(id, qty);
            }
        }
    }
    drop(outage);
    drop(hang);
    eprintln!(
        "chaos: {} orders answered 201 in {:?}; waiting for quiet",
        answered.len(),
        started.elapsed()
    );

    // Quiet: everything running, every saga settled.
    let deadline = Instant::now() + Duration::from_secs(180);
    let sagas = loop {
        procs.lock().expect("lock").ensure(&c);
        let base = procs.lock().expect("lock").base();
        if let Some((200, v)) = call(
            &c,
            reqwest::Method::GET,
            format!("{base}/sagas?limit=100000"),
            None,
            None,
        ) {
            let all = v.as_array().cloned().unwrap_or_default();
            if all
                .iter()
                .all(|s| s["state"] == "Completed" || s["state"] == "Compensated")
            {
                break all;
            }
            if Instant::now() > deadline {
                let stuck: Vec<Value> = all
                    .iter()
                    .filter(|s| s["state"] != "Completed" && s["state"] != "Compensated")
                    .filter_map(|s| s["id"].as_i64())
                    .filter_map(|id| {
                        call(
                            &c,
                            reqwest::Method::GET,
                            format!("{base}/sagas/{id}"),
                            None,
                            None,
                        )
                        .map(|(_, v)| v)
                    })
                    .collect();
                panic!(
                    "chaos (seed {seed}): sagas never settled: {}",
                    serde_json::to_string_pretty(&stuck).unwrap_or_default()
                );
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let base = procs.lock().expect("lock").base();
    // Shared nothing: no SQLite file is open in two processes.
    let mut open: HashMap<std::path::PathBuf, u32> = HashMap::new();
    let mut shared = Vec::new();
    for pid in procs.lock().expect("lock").pids() {
        for db in Cluster::open_databases(pid) {
            if let Some(other) = open.insert(db.clone(), pid) {
                shared.push((db, other, pid));
            }
        }
    }
    // Asked again while an owner restarted at the end (fenced by the
    // broker's outage) is not back yet: what is read must be its answer.
    let get = |path: &str| -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match call(
                &c,
                reqwest::Method::GET,
                format!("{base}{path}"),
                None,
                None,
            ) {
                Some((200, v)) => return v,
                other => assert!(
                    Instant::now() < deadline,
                    "chaos (seed {seed}): GET {path} answered {other:?}"
                ),
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    let list = |path: &str| get(path).as_array().cloned().unwrap_or_default();
    let pays = list("/pays?limit=100000");
    let coupons = list("/coupons?limit=100000");
    let stock = list("/foodCatalogs")[0]["stock"].as_i64().unwrap_or(-1);
    let by_order = |records: &[Value]| -> HashMap<i64, Vec<String>> {
        let mut m: HashMap<i64, Vec<String>> = HashMap::new();
        for r in records {
            m.entry(r["orderId"].as_i64().unwrap_or(0))
                .or_default()
                .push(r["status"].as_str().unwrap_or("").to_owned());
        }
        m
    };
    let pay_of = by_order(&pays);
    let coupon_of = by_order(&coupons);
    let state_of: HashMap<i64, String> = sagas
        .iter()
        .map(|s| {
            (
                s["id"].as_i64().unwrap_or(0),
                s["state"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let completed: Vec<i64> = state_of
        .iter()
        .filter(|(_, s)| *s == "Completed")
        .map(|(id, _)| *id)
        .collect();

    let mut checks: Vec<(&str, Result<(), String>)> = Vec::new();
    let check = |ok: bool, detail: String| if ok { Ok(()) } else { Err(detail) };

    let missing: Vec<_> = answered
        .keys()
        .filter(|id| {
            !matches!(
                state_of.get(id).map(String::as_str),
                Some("Completed" | "Compensated")
            )
        })
        .collect();
    checks.push((
        "every order answered 201 exists and its saga is terminal",
        check(missing.is_empty(), format!("{missing:?}")),
    ));
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
    let wrong_refunds: Vec<_> = state_of
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
        "refunds equal compensated payments",
        check(wrong_refunds.is_empty(), format!("{wrong_refunds:?}")),
    ));
    let held: i64 = {
        let mut sum = 0;
        for id in &completed {
            let (_, order) = call(
                &c,
                reqwest::Method::GET,
                format!("{base}/orders/{id}"),
                None,
                None,
            )
            .unwrap_or((0, Value::Null));
            sum += order["qty"].as_i64().unwrap_or(0);
        }
        sum
    };
    checks.push((
        "stock is conserved",
        check(
            INITIAL_STOCK == stock + held,
            format!("initial {INITIAL_STOCK} != stock {stock} + held {held}"),
        ),
    ));
    let bad_coupons: Vec<_> = state_of
        .iter()
        .filter(|(id, s)| {
            let cs = coupon_of.get(id).cloned().unwrap_or_default();
            cs.len() > 1
                || (s.as_str() == "Completed" && cs != ["Issued"])
                || (s.as_str() != "Completed" && cs.iter().any(|c| c == "Issued"))
        })
        .collect();
    checks.push((
        "at most one coupon per order, none live for a cancelled order",
        check(bad_coupons.is_empty(), format!("{bad_coupons:?}")),
    ));
    let mut illegal = Vec::new();
    for id in state_of.keys() {
        let saga = get(&format!("/sagas/{id}"));
        let mut state = "Running".to_owned();
        for h in saga["history"].as_array().cloned().unwrap_or_default() {
            if let Some(from) = h["from"].as_str() {
                let to = h["to"].as_str().unwrap_or("");
                let legal = matches!(
                    (from, to),
                    ("Running", "Completed")
                        | ("Running", "Compensating")
                        | ("Completed", "Compensating")
                        | ("Compensating", "Compensated")
                        | ("Compensating", "Failed")
                        | ("Failed", "Compensating")
                        | ("Failed", "Compensated")
                );
                if !legal || from != state {
                    illegal.push((*id, from.to_owned(), to.to_owned()));
                }
                state = to.to_owned();
            }
        }
        if Some(&state) != state_of.get(id) {
            illegal.push((*id, state, "(final)".into()));
        }
    }
    checks.push((
        "every saga's history is a legal path",
        check(illegal.is_empty(), format!("{illegal:?}")),
    ));
    checks.push((
        "no SQLite file is open in two processes",
        check(
            shared.is_empty() && open.len() >= 10,
            format!("{shared:?} of {open:?}"),
        ),
    ));
    let leftovers = c.queue_depths();
    let busy: Vec<_> = leftovers.iter().filter(|(_, n)| *n > 0).collect();
    checks.push((
        "no message left in a queue or dead-lettered",
        check(busy.is_empty(), format!("{busy:?}")),
    ));

    let failed = checks.iter().filter(|(_, r)| r.is_err()).count();
    for (name, r) in &checks {
        match r {
            Ok(()) => eprintln!("chaos: ok      {name}"),
            Err(d) => eprintln!("chaos: FAILED  {name}: {d}"),
        }
    }
    eprintln!(
        "chaos (seed {seed}, {} sagas, {} completed):",
        state_of.len(),
        completed.len()
    );
    println!("{} passed, {failed} failed", checks.len() - failed);
    assert_eq!(failed, 0, "chaos invariants failed (seed {seed})");
    drop(procs);
}

/// The broker-outage thread: dropping it waits for the thread and makes
/// sure the broker runs again, even when the test panics.
struct Outage(Option<std::thread::JoinHandle<()>>);

/// A hung process and the thread that wakes it.
struct Hang(Option<(u32, std::thread::JoinHandle<()>)>);

impl Drop for Hang {
    fn drop(&mut self) {
        if let Some((pid, t)) = self.0.take() {
            let _ = t.join();
            let _ = std::process::Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status();
        }
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            let _ = t.join();
        }
        let _ = std::process::Command::new("rabbitmqctl")
            .arg("start_app")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Retries `attempt` (against the current API address) until it gives an
/// answer, restarting dead processes between tries.
fn retry_until<T>(
    c: &Cluster,
    procs: &Arc<Mutex<Processes>>,
    mut attempt: impl FnMut(&str) -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let base = {
            let mut p = procs.lock().expect("lock");
            p.ensure(c);
            p.base()
        };
        if let Some(v) = attempt(&base) {
            return v;
        }
        assert!(Instant::now() < deadline, "no definitive answer in time");
        std::thread::sleep(Duration::from_millis(200));
    }
}
