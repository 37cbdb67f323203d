//! The seed's deployment checks, with real tools on this machine: `siege`
//! ordering breakfast through HAProxy (the gateway of
//! `deploy/haproxy/haproxy.cfg`) in front of the stateless API replicas of
//! a shared-nothing deployment of `hearty serve` processes, each with its
//! own folder, while
//!
//! - every process of the deployment is restarted, one at a time (SIGTERM,
//!   start, wait ready): not one request fails;
//! - a third API replica and a second `views` process are started: no
//!   request fails and the new ones take work;
//! - the owner of half the kitchen's partitions moves to another "node"
//!   (its folder copied, as a StatefulSet pod comes back with its volume
//!   elsewhere) and an orchestrator owner hands over to its standby: no
//!   request fails;
//! - one node of a real three-node RabbitMQ cluster is SIGKILLed and
//!   restarted: no order lost, none doubled, every saga terminal.
//!
//! Each ends with the chaos invariants. The figures they print are the
//! ones in DEPLOYMENT.md (`cargo test --test deploy -- --nocapture`).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::deploy::{SiegeRun, free_port};
use common::rabbit::RabbitCluster;
use common::{Cluster, Service};
use serde_json::json;

/// One check at a time: each starts a dozen processes (and one, three
/// broker nodes) on a machine that may have two cores.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

const INITIAL_STOCK: i64 = 1_000_000;
/// siege's concurrent users.
const CLIENTS: u64 = 4;

/// One process of a deployment.
struct Proc {
    name: String,
    roles: String,
    env: Vec<(String, String)>,
    svc: Option<Service>,
}

/// A deployment of `hearty serve` processes on one namespace, each with its
/// own folder; API replicas on fixed ports (the gateway's backends).
struct Deployment<'a> {
    c: &'a Cluster,
    procs: Vec<Proc>,
    restarts: usize,
}

impl<'a> Deployment<'a> {
    fn new(c: &'a Cluster) -> Self {
        Deployment {
            c,
            procs: Vec::new(),
            restarts: 0,
        }
    }

    /// Adds (and starts) a process; API replicas get a fixed port.
    fn add(&mut self, name: &str, roles: &str, extra: &[(&str, &str)]) -> usize {
        let folder = self.c.dir.path().join("data").join(name);
        let mut env: Vec<(String, String)> = vec![
            ("HEARTY_DATA_DIR".into(), folder.display().to_string()),
            // Longer than the gateway's health check interval, short for tests.
            ("HEARTY_DRAIN".into(), "2s".into()),
        ];
        if roles.split(',').any(|r| r == "api") {
            env.push((
                "HEARTY_HTTP_ADDR".into(),
                format!("127.0.0.1:{}", free_port()),
            ));
        }
        for (k, v) in extra {
            env.retain(|(ek, _)| ek != k);
            env.push(((*k).into(), (*v).into()));
        }
        self.procs.push(Proc {
            name: name.into(),
            roles: roles.into(),
            env,
            svc: None,
        });
        let i = self.procs.len() - 1;
        self.start(i);
        i
    }

    fn start(&mut self, i: usize) {
        let p = &self.procs[i];
        let env: Vec<(&str, &str)> = p
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let svc = self.c.start(&p.roles, &env);
        self.c.wait_ready(&svc);
        self.procs[i].svc = Some(svc);
    }

    /// The index of the process called `name`.
    fn index(&self, name: &str) -> usize {
        self.procs
            .iter()
            .position(|p| p.name == name)
            .unwrap_or_else(|| panic!("no process {name}"))
    }

    /// The data folder of process `i`.
    fn folder(&self, i: usize) -> String {
        self.procs[i]
            .env
            .iter()
            .find(|(k, _)| k == "HEARTY_DATA_DIR")
            .map(|(_, v)| v.clone())
            .expect("every process has its folder")
    }

    fn svc(&self, name: &str) -> &Service {
        self.procs[self.index(name)].svc.as_ref().expect("running")
    }

    /// Where the API replicas listen (whether running or not).
    fn api_addresses(&self) -> Vec<String> {
        self.procs
            .iter()
            .filter(|p| p.roles.split(',').any(|r| r == "api"))
            .filter_map(|p| {
                p.env
                    .iter()
                    .find(|(k, _)| k == "HEARTY_HTTP_ADDR")
                    .map(|(_, v)| v.clone())
            })
            .collect()
    }

    /// SIGTERM (a clean exit is asserted), start again, wait ready.
    fn restart(&mut self, i: usize) {
        if let Some(svc) = self.procs[i].svc.take() {
            svc.terminate();
        }
        self.start(i);
        self.restarts += 1;
    }

    /// Starts again every process that exited by itself (an owner fenced
    /// off when its broker node died): what a supervisor (Kubernetes,
    /// systemd) does.
    fn revive_exited(&mut self) -> usize {
        let mut revived = 0;
        for i in 0..self.procs.len() {
            let exited = self.procs[i].svc.as_mut().is_some_and(|s| !s.is_alive());
            if exited {
                self.procs[i].svc = None;
                self.start(i);
                revived += 1;
            }
        }
        revived
    }

    /// No SQLite file is open in two processes.
    fn shared_files(&self) -> Vec<String> {
        let mut open: BTreeMap<std::path::PathBuf, u32> = BTreeMap::new();
        let mut shared = Vec::new();
        for p in &self.procs {
            if let Some(s) = &p.svc {
                for db in Cluster::open_databases(s.pid()) {
                    if let Some(other) = open.insert(db.clone(), s.pid()) {
                        shared.push(format!("{} ({other}, {})", db.display(), s.pid()));
                    }
                }
            }
        }
        shared
    }
}

/// The full shape: two of every stateless role, every owner split in two
/// partition sets where it matters.
fn full(d: &mut Deployment) {
    for (name, roles, parts) in [
        ("orchestrator-a", "orchestrator", "0-3"),
        ("orchestrator-b", "orchestrator", "4-7"),
        ("pay-a", "pay", "0-3"),
        ("pay-b", "pay", "4-7"),
        ("kitchen-a", "kitchen", "0-3"),
        ("kitchen-b", "kitchen", "4-7"),
        ("delivery", "delivery", "all"),
        ("coupon", "coupon", "all"),
    ] {
        d.add(name, roles, &[("HEARTY_PARTITIONS", parts)]);
    }
    d.add("views-1", "views", &[]);
    d.add("views-2", "views", &[]);
    d.add("api-1", "api", &[]);
    d.add("api-2", "api", &[]);
}

/// Asserts the invariants of the quiet deployment, and that it answered
/// `created` orders with 201 — one saga for each, plus at most `cut`
/// more: the requests in flight when siege was interrupted (placed, but
/// their answers no longer counted).
fn assert_invariants(c: &Cluster, d: &Deployment, api: &Service, created: u64, cut: u64) {
    let mut checks = c.invariants(api, INITIAL_STOCK);
    let states = c.wait_all_terminal(api);
    let sagas = states.len() as u64;
    checks.push((
        "one saga per order answered 201",
        if created <= sagas && sagas <= created + cut {
            Ok(())
        } else {
            Err(format!(
                "{sagas} sagas, {created} orders answered 201 (+{cut} cut short)"
            ))
        },
    ));
    let shared = d.shared_files();
    checks.push((
        "no SQLite file is open in two processes",
        if shared.is_empty() {
            Ok(())
        } else {
            Err(format!("{shared:?}"))
        },
    ));
    let failed: Vec<_> = checks.iter().filter(|(_, r)| r.is_err()).collect();
    for (name, r) in &checks {
        eprintln!(
            "invariant {}: {name} {r:?}",
            if r.is_ok() { "ok" } else { "FAILED" }
        );
    }
    assert!(failed.is_empty(), "invariants failed: {failed:?}");
}

/// siege saw no failed transaction and no answer but `201` (more than
/// `at_least` of them), availability 100 %: how many orders it placed.
fn assert_no_failed_request(result: &common::deploy::Siege, at_least: u64) -> u64 {
    assert!(result.transactions > at_least, "siege ran: {result:?}");
    assert_eq!(result.failed, 0, "failed transactions: {result:?}");
    assert_eq!(result.errors(), 0, "answers >= 400: {result:?}");
    assert!(
        (result.availability - 100.0).abs() < f64::EPSILON,
        "availability {}",
        result.availability
    );
    let created = result.codes.get(&201).copied().unwrap_or(0);
    assert_eq!(
        created, result.transactions,
        "every answer was a 201: {result:?}"
    );
    created
}

#[test]
fn a_rolling_restart_of_every_process_under_siege_fails_no_request() {
    let _serial = one_at_a_time();
    let Some(c) = Cluster::new() else { return };
    let mut d = Deployment::new(&c);
    full(&mut d);
    let Some(gateway) = c.gateway(&d.api_addresses()) else {
        return;
    };
    let customer = c.seed(&gateway, INITIAL_STOCK);
    let Some(siege) = SiegeRun::start(&gateway.base, &customer, CLIENTS as u32, 0.5) else {
        return;
    };
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    // Every process, one at a time, as a rolling deploy does: owners restart
    // in place (same folder), API replicas drain behind the gateway.
    for i in 0..d.procs.len() {
        eprintln!("restarting {}", d.procs[i].name);
        d.restart(i);
        // The gateway sees a restarted replica ready (two checks) before
        // the next one goes.
        std::thread::sleep(Duration::from_millis(1500));
    }
    std::thread::sleep(Duration::from_secs(3));
    let result = siege.finish();
    eprintln!(
        "rolling restart: {} restarts in {:.0} s under siege: {:?} codes {:?}",
        d.restarts,
        started.elapsed().as_secs_f64(),
        result.summary,
        result.codes
    );
    let created = assert_no_failed_request(&result, 50);
    assert_invariants(&c, &d, d.svc("api-1"), created, CLIENTS);
}

#[test]
fn a_replica_started_under_siege_takes_work_and_fails_no_request() {
    let _serial = one_at_a_time();
    let Some(c) = Cluster::new() else { return };
    let mut d = Deployment::new(&c);
    full(&mut d);
    // The gateway knows a third backend that is not running yet: it is
    // down until it answers its health check.
    let third = format!("127.0.0.1:{}", free_port());
    let mut backends = d.api_addresses();
    backends.push(third.clone());
    let Some(gateway) = c.gateway(&backends) else {
        return;
    };
    let customer = c.seed(&gateway, INITIAL_STOCK);
    let Some(siege) = SiegeRun::start(&gateway.base, &customer, CLIENTS as u32, 0.5) else {
        return;
    };
    std::thread::sleep(Duration::from_secs(3));
    d.add("api-3", "api", &[("HEARTY_HTTP_ADDR", third.as_str())]);
    d.add("views-3", "views", &[]);
    std::thread::sleep(Duration::from_secs(8));
    let result = siege.finish();
    eprintln!("scale out: {:?} codes {:?}", result.summary, result.codes);
    let created = assert_no_failed_request(&result, 20);
    let served = c.metric(d.svc("api-3"), "hearty_http_requests_total");
    let projected = c.metric(d.svc("views-3"), "hearty_events_projected_total");
    eprintln!("scale out: api-3 served {served} requests, views-3 projected {projected} events");
    // Probes are not counted: these are orders that came through it.
    assert!(served > 0.0, "the new replica took work: {served}");
    assert!(
        projected > 0.0,
        "the new read models caught up: {projected}"
    );
    assert_invariants(&c, &d, d.svc("api-1"), created, CLIENTS);
}

#[test]
fn partitions_move_to_another_owner_under_siege_without_a_failed_request() {
    let _serial = one_at_a_time();
    let Some(c) = Cluster::new() else { return };
    let mut d = Deployment::new(&c);
    full(&mut d);
    let Some(gateway) = c.gateway(&d.api_addresses()) else {
        return;
    };
    let customer = c.seed(&gateway, INITIAL_STOCK);
    // A standby for orchestrator-a: a second process on its folder.
    let folder = d.folder(d.index("orchestrator-a"));
    let standby = c.spawn(
        "orchestrator",
        &[("HEARTY_PARTITIONS", "0-3"), ("HEARTY_DATA_DIR", &folder)],
    );
    let Some(siege) = SiegeRun::start(&gateway.base, &customer, CLIENTS as u32, 0.5) else {
        return;
    };
    std::thread::sleep(Duration::from_secs(3));

    // The kitchen's partitions 0-3 (food 1 is in partition 1) move to
    // another "node": the owner stops, its volume is attached elsewhere
    // (here: the folder copied to a new place), a new process starts there.
    let kitchen = d.index("kitchen-a");
    let old_folder = d.folder(kitchen);
    let moved_at = Instant::now();
    d.procs[kitchen].svc.take().expect("running").terminate();
    let new_folder = c.dir.path().join("data").join("kitchen-a-moved");
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(&old_folder)
        .arg(&new_folder)
        .status()
        .expect("cp");
    assert!(copied.success());
    std::fs::remove_dir_all(&old_folder).expect("the old volume is gone");
    for (k, v) in d.procs[kitchen].env.iter_mut() {
        if k == "HEARTY_DATA_DIR" {
            *v = new_folder.display().to_string();
        }
    }
    d.start(kitchen);
    eprintln!(
        "kitchen partitions 0-3 moved in {:.1} s",
        moved_at.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(3));

    // orchestrator-a stops: its standby takes partitions 0-3 over.
    let handed_at = Instant::now();
    let owner = d.index("orchestrator-a");
    d.procs[owner].svc.take().expect("running").terminate();
    let standby = standby
        .listening(Duration::from_secs(60))
        .expect("the standby took the partitions over");
    c.wait_ready(&standby);
    eprintln!(
        "orchestrator partitions 0-3 handed to the standby in {:.1} s",
        handed_at.elapsed().as_secs_f64()
    );
    d.procs[owner].svc = Some(standby);
    std::thread::sleep(Duration::from_secs(3));
    let result = siege.finish();
    eprintln!("handover: {:?} codes {:?}", result.summary, result.codes);
    let created = assert_no_failed_request(&result, 20);
    assert_invariants(&c, &d, d.svc("api-1"), created, CLIENTS);
}

#[test]
fn losing_a_broker_node_loses_no_order_and_doubles_none() {
    let _serial = one_at_a_time();
    let Some(rabbit) = RabbitCluster::start() else {
        return;
    };
    let Some(c) = Cluster::on(&rabbit.url()) else {
        return;
    };
    let mut d = Deployment::new(&c);
    for (name, roles, parts) in [
        ("orchestrator-a", "orchestrator", "0-3"),
        ("orchestrator-b", "orchestrator", "4-7"),
        ("workers", "pay,kitchen,delivery,coupon", "all"),
    ] {
        d.add(name, roles, &[("HEARTY_PARTITIONS", parts)]);
    }
    d.add("api-1", "api", &[]);
    d.add("api-2", "api", &[]);
    let (a, b) = (d.index("api-1"), d.index("api-2"));
    let customer = c.seed(d.procs[a].svc.as_ref().expect("api-1"), INITIAL_STOCK);

    // Orders stream in, each with its own key, sent again (same key) until
    // answered 201: every order meant is placed, and never twice.
    let mut placed: BTreeMap<String, i64> = BTreeMap::new();
    let mut retried = 0u64;
    let started = Instant::now();
    let mut killed = None;
    let mut restarted = false;
    let mut revived = 0;
    let mut victim = 0;
    for n in 0..120u32 {
        let key = format!("node-loss-{n}");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            assert!(
                Instant::now() < deadline,
                "order {n} not placed within 120 s"
            );
            let api = d.procs[if n % 2 == 0 { a } else { b }]
                .svc
                .as_ref()
                .expect("api");
            let res = c.rt_block_on(async {
                c.client()
                    .post(format!("{}/orders", api.base))
                    .bearer_auth(&customer)
                    .header("Idempotency-Key", &key)
                    .json(&json!({"qty": "1", "foodcaltalogid": "1", "customerid": "1"}))
                    .send()
                    .await
            });
            let answer = match res {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let v: serde_json::Value = c.rt_block_on(r.json()).unwrap_or_default();
                    Some((status, v))
                }
                Err(_) => None,
            };
            match answer {
                Some((201, v)) => {
                    placed.insert(key.clone(), v["id"].as_i64().expect("id"));
                    break;
                }
                Some((s, v)) if (400..500).contains(&s) => panic!("order {n}: {s} {v}"),
                _ => {
                    retried += 1;
                    revived += d.revive_exited();
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
        if n == 30 {
            // The node an orchestrator owner is connected to: the loss must
            // move an owner, not only replicas.
            victim = (0..rabbit.nodes.len())
                .max_by_key(|&i| rabbit.connections_named(i, "hearty orchestrator"))
                .expect("nodes");
            assert!(
                rabbit.connections_named(victim, "hearty orchestrator") > 0,
                "an orchestrator owner is connected to some node"
            );
            eprintln!("SIGKILL {}", rabbit.nodes[victim].name);
            rabbit.nodes[victim].kill();
            killed = Some(Instant::now());
        }
        if n == 90 {
            rabbit.nodes[victim].start();
            eprintln!(
                "{} restarted ({:.0} s after its loss)",
                rabbit.nodes[victim].name,
                killed.map_or(0.0, |k| k.elapsed().as_secs_f64())
            );
            restarted = true;
        }
        revived += d.revive_exited();
    }
    assert!(killed.is_some() && restarted);
    let ids: std::collections::BTreeSet<i64> = placed.values().copied().collect();
    eprintln!(
        "broker node loss: {} orders placed in {:.0} s ({retried} answers other than 201 retried, \
         {revived} processes restarted after losing their node)",
        placed.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(placed.len(), 120, "every order placed");
    assert_eq!(ids.len(), 120, "no two keys share an order");
    revived += d.revive_exited();
    assert!(
        revived > 0,
        "the owner on the lost node stopped (fenced) and was started again"
    );
    let api = d.procs[a].svc.as_ref().expect("api-1");
    assert_invariants(&c, &d, api, 120, 0);
}
