//! `docker-compose.yml` and the code cannot drift apart: this reads the
//! file, starts each of its Hearty services as a `hearty serve` process
//! with that service's environment and its own folder per volume (Docker
//! does not run here; the broker is the local RabbitMQ), and runs the seed's
//! flow through its gateway (HAProxy with the file the compose file mounts)
//! and the API replicas it declares.

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
        if !is_hearty {
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
    let doc = compose_file();
    let all = doc["services"].as_mapping().expect("services");
    let rabbits = all
        .values()
        .filter(|s| {
            s["image"]
                .as_str()
                .is_some_and(|i| i.starts_with("rabbitmq:"))
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
    // Shared nothing: no two services on one volume, every one has its own.
    let mut owners: HashMap<&str, &str> = HashMap::new();
    for d in &services {
        assert!(!d.volumes.is_empty(), "{} has its own volume", d.name);
        for v in &d.volumes {
            if let Some(other) = owners.insert(v, &d.name) {
                panic!("{} and {} share the volume {v}", d.name, other);
            }
        }
    }
}

#[test]
fn the_compose_services_run_the_seed_flow() {
    let Some(c) = Cluster::new() else { return };
    let services = hearty_services();
    let mut running: Vec<(String, Service, Option<String>)> = Vec::new();
    // Owners first, API replicas last (they ask the owners).
    let mut ordered: Vec<&Declared> = services.iter().collect();
    ordered.sort_by_key(|d| roles(d).iter().any(|r| r == "api"));
    for d in ordered {
        let folder = c.dir.path().join("volumes").join(&d.volumes[0]);
        let folder = folder.to_string_lossy().into_owned();
        let mut env: Vec<(&str, &str)> = d
            .env
            .iter()
            .filter(|(k, _)| {
                // The container's broker address, namespace and folder are
                // this machine's: the local broker, the test's namespace,
                // a folder per volume.
                !matches!(
                    k.as_str(),
                    "HEARTY_AMQP_URL"
                        | "HEARTY_NAMESPACE"
                        | "HEARTY_DATA_DIR"
                        | "HEARTY_MANAGER_TOKEN"
                )
            })
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        env.push(("HEARTY_DATA_DIR", &folder));
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

    // The seed's flow, as its httpie commands send it (ids 1, 1, 1).
    let (s, v, _) = c.post(
        front,
        "/customers",
        json!({"name": "yang", "phone": "01011", "address": "korea11", "age": "27"}),
    );
    assert_eq!((s, v["id"].as_i64()), (201, Some(1)), "{v}");
    let (s, v, _) = c.post(
        front,
        "/foodCatalogs",
        json!({"name": "cake", "stock": "100", "price": "4.0"}),
    );
    assert_eq!((s, v["id"].as_i64()), (201, Some(1)), "{v}");
    let (s, v, _) = c.post(
        front,
        "/orders",
        json!({"qty": "10", "foodcaltalogid": "1", "customerid": "1"}),
    );
    assert_eq!(
        (s, v["id"].as_i64(), v["status"].as_str()),
        (201, Some(1), Some("Paid")),
        "{v}"
    );
    c.wait_state(second, 1, "Completed");
    for api in [first, second] {
        c.wait("the read models of every replica", || {
            let mine = c.get(api, "/myOrders");
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
    let (s, v, _) = c.post(
        first,
        "/reviews",
        json!({"username": "yang", "productname": "cake", "content": "good"}),
    );
    assert_eq!(s, 201, "{v}");
    c.wait("the review view", || {
        c.get(second, "/reviewView")
            .as_array()
            .is_some_and(|a| a.iter().any(|r| r["productname"] == "cake"))
    });
}
