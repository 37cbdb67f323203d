//! `docker-compose.yml` and the code cannot drift apart: this reads the
//! file, makes the secrets with `deploy/make-secrets` (as `.env` would hold
//! them), runs its `broker-users` step, starts each of its Hearty services
//! as a `hearty serve` process with that service's environment — its own
//! broker user included — and its own folder per volume (Docker does not
//! run here; the broker is the local RabbitMQ), and runs the seed's flow,
//! as the seed's client sends it with the documented bearer headers,
//! through its gateway (HAProxy with the file the compose file mounts) and
//! the API replicas it declares.

mod common;

use std::collections::{BTreeMap, HashMap};

use common::{Cluster, Service};
use serde_json::json;
use serde_yaml_ng::Value;

/// A Hearty service of the compose file.
struct Declared {
    name: String,
    env: BTreeMap<String, String>,
    volumes: Vec<String>,
    published: bool,
}

/// `docker-compose.yml`, its merge keys resolved.
fn compose_file() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker-compose.yml"))
        .expect("docker-compose.yml");
    let mut doc: Value = serde_yaml_ng::from_str(&text).expect("valid YAML");
    doc.apply_merge().expect("merge keys resolve");
    doc
}

fn hearty_services() -> Vec<Declared> {
    let doc = compose_file();
    let services = doc["services"].as_mapping().expect("services");
    let mut out = Vec::new();
    for (name, svc) in services {
        let name = name.as_str().expect("service name").to_owned();
        let is_hearty =
            svc["image"].as_str() == Some("hearty:latest") || svc.get("build").is_some();
        // A one-shot step (`broker-users`) is not a service that serves.
        if !is_hearty || svc.get("command").is_some() {
            continue;
        }
        let mut env = BTreeMap::new();
        if let Some(m) = svc["environment"].as_mapping() {
            // Nested merges leave `<<` entries in maps of maps: resolve them.
            let mut v = Value::Mapping(m.clone());
            v.apply_merge().expect("merge");
            for (k, v) in v.as_mapping().expect("env map") {
                let value = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    other => panic!("{name}: unexpected value {other:?}"),
                };
                env.insert(k.as_str().expect("env name").to_owned(), value);
            }
        }
        let volumes = svc["volumes"]
            .as_sequence()
            .map(|vs| {
                vs.iter()
                    .filter_map(|v| v.as_str())
                    .filter_map(|v| v.split(':').next())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let published = svc["ports"].as_sequence().is_some_and(|p| !p.is_empty());
        out.push(Declared {
            name,
            env,
            volumes,
            published,
        });
    }
    out
}

/// What `deploy/make-secrets` prints, as `.env` holds it; the manager's
/// token and the signing key are this test run's.
fn secrets() -> HashMap<String, String> {
    let out = std::process::Command::new("sh")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/make-secrets"))
        .output()
        .expect("run deploy/make-secrets");
    assert!(out.status.success());
    let mut vars: HashMap<String, String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    for (k, v) in &vars {
        assert!(v.len() >= 32, "{k} is a long secret");
    }
    vars.insert("HEARTY_MANAGER_TOKEN".into(), common::token().into());
    vars.insert("HEARTY_AUTH_KEY".into(), common::auth_key().into());
    vars
}

/// `${VAR:?message}` and `${VAR}` replaced from `vars`, as Compose does;
/// an unset one is an error, as Compose's.
fn interpolate(value: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("a closing brace") + start;
        let inner = &rest[start + 2..end];
        let name = inner.split([':', '?', '-']).next().expect("a name");
        let v = vars
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not in deploy/make-secrets' output"));
        out.push_str(v);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// A compose broker URL made this machine's: the local broker for every
/// node, the test's namespace in the user's name.
fn localize_url(url: &str, local: &str, namespace: &str) -> String {
    let local_host = local
        .split_once("://")
        .map_or(local, |(_, r)| r)
        .rsplit_once('@')
        .map_or(local, |(_, h)| h)
        .split('/')
        .next()
        .expect("host");
    let mut out = url.to_owned();
    for n in 1..=3 {
        out = out.replace(&format!("rabbitmq-{n}:5672"), local_host);
    }
    out.replace("amqp://hearty-", &format!("amqp://{namespace}-"))
}

/// The management API and administrator of the local broker.
fn local_management() -> (String, String, String) {
    (
        std::env::var("HEARTY_TEST_MANAGEMENT_URL")
            .unwrap_or_else(|_| "http://127.0.0.1:15672".into()),
        std::env::var("HEARTY_TEST_BROKER_ADMIN").unwrap_or_else(|_| "guest".into()),
        std::env::var("HEARTY_TEST_BROKER_ADMIN_PASSWORD").unwrap_or_else(|_| "guest".into()),
    )
}

/// Deletes the users `broker-users` made, when dropped (even on panic).
struct Users(Vec<String>);

impl Drop for Users {
    fn drop(&mut self) {
        let (url, user, password) = local_management();
        let client = reqwest::blocking::Client::new();
        for name in &self.0 {
            let _ = client
                .delete(format!("{url}/api/users/{name}"))
                .basic_auth(&user, Some(&password))
                .send();
        }
    }
}

/// Runs the compose file's `broker-users` step against the local broker;
/// answers the users it made (to delete afterwards).
fn broker_users(namespace: &str, vars: &HashMap<String, String>) -> Users {
    let doc = compose_file();
    let step = &doc["services"]["broker-users"];
    assert_eq!(step["command"][0].as_str(), Some("broker-users"));
    let (url, admin, password) = local_management();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_hearty"));
    cmd.arg("broker-users");
    for (k, v) in step["environment"].as_mapping().expect("env") {
        let k = k.as_str().expect("name");
        cmd.env(k, interpolate(v.as_str().expect("a string"), vars));
    }
    cmd.env("HEARTY_MANAGEMENT_URL", url)
        .env("HEARTY_NAMESPACE", namespace)
        .env("HEARTY_BROKER_ADMIN_USER", admin)
        .env("HEARTY_BROKER_ADMIN_PASSWORD", password);
    let out = cmd.output().expect("run hearty broker-users");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Users(
        hearty::transport::amqp::permissions::BrokerRole::ALL
            .iter()
            .map(|r| format!("{namespace}-{}", r.as_str()))
            .collect(),
    )
}

fn roles(d: &Declared) -> Vec<String> {
    d.env
        .get("HEARTY_ROLES")
        .map(|r| r.split(',').map(|s| s.trim().to_owned()).collect())
        .unwrap_or_default()
}

#[test]
fn the_compose_file_declares_the_scale_out_shape() {
    let services = hearty_services();
    let with = |role: &str| {
        services
            .iter()
            .filter(|d| roles(d).iter().any(|r| r == role))
            .collect::<Vec<_>>()
    };
    assert!(with("api").len() >= 2, "at least two API replicas");
    let orchestrators = with("orchestrator");
    assert!(orchestrators.len() >= 2, "at least two orchestrator owners");
    let parts: Vec<&str> = orchestrators
        .iter()
        .map(|d| d.env.get("HEARTY_PARTITIONS").map_or("all", String::as_str))
        .collect();
    assert!(
        !parts.contains(&"all"),
        "orchestrator owners split the partitions: {parts:?}"
    );
    for role in ["pay", "kitchen", "delivery", "coupon", "views"] {
        assert!(!with(role).is_empty(), "a {role} process");
    }
    // The broker is a three-node cluster, and every process knows its nodes.
    for d in &services {
        let nodes = d
            .env
            .get("HEARTY_AMQP_URL")
            .map_or(0, |u| u.split(',').count());
        assert_eq!(nodes, 3, "{} is given the three RabbitMQ nodes", d.name);
    }
    // No secret that works is in the file: each comes from the operator's
    // `.env`, the broker has no guest and listens on this host only.
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker-compose.yml"))
        .expect("docker-compose.yml");
    assert!(!text.contains("guest:"), "no guest user");
    assert!(
        text.contains("RABBITMQ_DEFAULT_USER: hearty-admin"),
        "an administrator of the operator's"
    );
    for d in &services {
        for k in ["HEARTY_MANAGER_TOKEN", "HEARTY_AUTH_KEY"] {
            assert!(
                d.env
                    .get(k)
                    .is_some_and(|v| v.starts_with("${") && v.ends_with('}')),
                "{}: {k} comes from the operator's secrets",
                d.name
            );
        }
        let url = d.env.get("HEARTY_AMQP_URL").expect("a broker");
        let role = roles(d).join(",");
        assert!(
            url.contains(&format!(
                "amqp://hearty-{role}:${{HEARTY_BROKER_PASSWORD_{}",
                role.to_ascii_uppercase()
            )),
            "{} logs in as its role's own broker user: {url}",
            d.name
        );
    }
    let doc = compose_file();
    let all = doc["services"].as_mapping().expect("services");
    for (name, svc) in all {
        if svc["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("rabbitmq:"))
        {
            for port in svc["ports"].as_sequence().into_iter().flatten() {
                let port = port.as_str().expect("a port");
                assert!(
                    port.starts_with("127.0.0.1:"),
                    "{name:?} publishes {port} to every interface"
                );
            }
        }
    }
    let rabbits = all
        .values()
        .filter(|s| {
            s["image"]
                .as_str()
                // `${RABBITMQ_IMAGE:-rabbitmq:…}`: the pinned default.
                .is_some_and(|i| {
                    i.starts_with("rabbitmq:") || i.starts_with("${RABBITMQ_IMAGE:-rabbitmq:")
                })
        })
        .count();
    assert_eq!(rabbits, 3, "three RabbitMQ nodes");
    // The gateway: HAProxy on 8080 with the shipped configuration, the only
    // published HTTP port (the API replicas sit behind it).
    let gateway = &all["gateway"];
    assert!(
        gateway["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("haproxy:"))
    );
    assert_eq!(gateway["ports"][0].as_str(), Some("8080:8080"));
    assert!(
        gateway["volumes"][0]
            .as_str()
            .is_some_and(|v| v.starts_with("./deploy/haproxy/haproxy.cfg:")),
        "the gateway runs deploy/haproxy/haproxy.cfg"
    );
    assert!(
        services.iter().all(|d| !d.published),
        "API replicas are reached through the gateway"
    );
    // Shared nothing: no two services on one data volume, every one has
    // its own; only the read-model processes share one more, the
    // snapshots of their read models (HEARTY_SNAPSHOT_DIR).
    let mut owners: HashMap<&str, &str> = HashMap::new();
    for d in &services {
        assert!(!d.volumes.is_empty(), "{} has its own volume", d.name);
        for v in &d.volumes {
            if v == "view-snapshots" {
                assert!(
                    roles(d).iter().any(|r| r == "api" || r == "views"),
                    "{} is no read-model process",
                    d.name
                );
                assert_eq!(
                    d.env.get("HEARTY_SNAPSHOT_DIR").map(String::as_str),
                    Some("/snapshots"),
                    "{}",
                    d.name
                );
                continue;
            }
            if let Some(other) = owners.insert(v, &d.name) {
                panic!("{} and {} share the volume {v}", d.name, other);
            }
        }
    }
}

#[test]
fn the_compose_services_run_the_seed_flow() {
    let Some(c) = Cluster::new() else { return };
    // The namespace is declared by the owners' own broker users.
    c.rt_block_on(hearty::transport::amqp::AmqpTransport::delete_namespace(
        &c.url,
        &c.namespace,
    ))
    .expect("a fresh namespace");
    let vars = secrets();
    let _users = broker_users(&c.namespace, &vars);
    let services = hearty_services();
    let mut running: Vec<(String, Service, Option<String>)> = Vec::new();
    // The orchestrators first (they declare what every role uses), then
    // the rest (they check that it exists; compose orders them so).
    let mut ordered: Vec<&Declared> = services.iter().collect();
    ordered.sort_by_key(|d| !roles(d).iter().any(|r| r == "orchestrator"));
    for d in ordered {
        let folder = c.dir.path().join("volumes").join(&d.volumes[0]);
        let folder = folder.to_string_lossy().into_owned();
        // The container's broker address, namespace and folder are this
        // machine's: the local broker (as the service's own user), the
        // test's namespace, a folder per volume.
        let values: Vec<(String, String)> = d
            .env
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "HEARTY_NAMESPACE" | "HEARTY_DATA_DIR" | "HEARTY_SNAPSHOT_DIR"
                )
            })
            .map(|(k, v)| {
                let v = interpolate(v, &vars);
                let v = if k == "HEARTY_AMQP_URL" {
                    localize_url(&v, &c.url, &c.namespace)
                } else {
                    v
                };
                (k.clone(), v)
            })
            .collect();
        let mut env: Vec<(&str, &str)> = values
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        env.push(("HEARTY_DATA_DIR", &folder));
        // The shared snapshot volume: one folder for every service using it.
        let snapshots = c.dir.path().join("volumes").join("view-snapshots");
        let snapshots = snapshots.to_string_lossy().into_owned();
        if d.env.contains_key("HEARTY_SNAPSHOT_DIR") {
            env.push(("HEARTY_SNAPSHOT_DIR", &snapshots));
        }
        // Every container's probes listen on the same port: here, one each.
        let ops = format!("127.0.0.1:{}", common::deploy::free_port());
        if d.env.contains_key("HEARTY_OPS_ADDR") {
            env.retain(|(k, _)| *k != "HEARTY_OPS_ADDR");
            env.push(("HEARTY_OPS_ADDR", &ops));
        }
        // The gateway's backends listen on ports of their own.
        let is_api = roles(d).iter().any(|r| r == "api");
        let addr = format!("127.0.0.1:{}", common::deploy::free_port());
        if is_api {
            env.push(("HEARTY_HTTP_ADDR", &addr));
        }
        let roles = d
            .env
            .get("HEARTY_ROLES")
            .cloned()
            .unwrap_or_else(|| "all".into());
        let svc = c.start(&roles, &env);
        running.push((d.name.clone(), svc, is_api.then_some(addr)));
    }
    let apis: Vec<&Service> = running
        .iter()
        .filter(|(_, _, addr)| addr.is_some())
        .map(|(_, s, _)| s)
        .collect();
    assert!(apis.len() >= 2, "the API replicas run");
    let (first, second) = (apis[0], apis[1]);
    let backends: Vec<String> = running.iter().filter_map(|(_, _, a)| a.clone()).collect();
    for api in &apis {
        c.wait_ready(api);
    }
    // Writes through the gateway (when HAProxy is installed; CI has it).
    let gateway = c.gateway(&backends);
    let front = gateway.as_ref().unwrap_or(first);

    // The seed's flow, as its httpie commands send it (ids 1, 1, 1): the
    // customer signs up anonymously and orders with their token; the
    // manager adds the food.
    let (s, v, _) = c.request_as(
        reqwest::Method::POST,
        format!("{}/customers", front.base),
        Some(json!({"name": "yang", "phone": "01011", "address": "korea11", "age": "27"})),
        None,
    );
    assert_eq!((s, v["id"].as_i64()), (201, Some(1)), "{v}");
    let customer = v["token"]
        .as_str()
        .expect("the customer's token")
        .to_owned();
    let (s, v, _) = c.post(
        front,
        "/foodCatalogs",
        json!({"name": "cake", "stock": "100", "price": "4.0"}),
    );
    assert_eq!((s, v["id"].as_i64()), (201, Some(1)), "{v}");
    let (s, v, _) = c.request_as(
        reqwest::Method::POST,
        format!("{}/orders", front.base),
        Some(json!({"qty": "10", "foodcaltalogid": "1", "customerid": "1"})),
        Some(&customer),
    );
    assert_eq!(
        (s, v["id"].as_i64(), v["status"].as_str()),
        (201, Some(1), Some("Paid")),
        "{v}"
    );
    c.wait_state(second, 1, "Completed");
    for api in [first, second] {
        c.wait("the read models of every replica", || {
            let (_, mine, _) = c.request_as(
                reqwest::Method::GET,
                format!("{}/myOrders", api.base),
                None,
                Some(&customer),
            );
            let views = c.get(api, "/foodCatalogViews");
            mine[0]["couponStatus"] == "Issued" && views[0]["stock"] == 90
        });
    }
    // The manager cancels through the other replica: compensated, stock back.
    let (s, v, _) = c.request(
        reqwest::Method::DELETE,
        format!("{}/kitchens/1", front.base),
        None,
    );
    assert_eq!(s, 202, "{v}");
    c.wait_state(first, 1, "Compensated");
    assert_eq!(c.status_of(first, "pays", 1).as_deref(), Some("Refunded"));
    c.wait("the stock to come back", || {
        c.get(second, "/foodCatalogs/1")["stock"] == 100
    });
    let (s, v, _) = c.request_as(
        reqwest::Method::POST,
        format!("{}/reviews", first.base),
        Some(json!({"username": "yang", "productname": "cake", "content": "good"})),
        Some(&customer),
    );
    assert_eq!(s, 201, "{v}");
    c.wait("the review view", || {
        c.get(second, "/reviewView")
            .as_array()
            .is_some_and(|a| a.iter().any(|r| r["productname"] == "cake"))
    });
}
