//! The deployment files are valid and agree with the service: the compose
//! file against the Compose specification (`check-jsonschema`), the
//! Kubernetes manifests offline (`kubernetes-validate`), and what they say
//! about probes and stopping matches what the service does.
//!
//! `.ci/run` installs both tools in a venv and names them in
//! `HEARTY_CHECK_JSONSCHEMA` and `HEARTY_KUBERNETES_VALIDATE`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml_ng::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The tool named by `var`, else on PATH; `None` outside CI (said loudly).
fn validator(var: &str, name: &str) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(p) => Some(PathBuf::from(p)),
        None => common::deploy::tool(name),
    }
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(Path::new(ROOT).join("deploy/k8s"))
        .expect("deploy/k8s")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn documents() -> Vec<Value> {
    let mut docs = Vec::new();
    for file in manifests() {
        let text = std::fs::read_to_string(&file).expect("read");
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v = <Value as serde::Deserialize>::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            docs.push(v);
        }
    }
    docs
}

#[test]
fn the_compose_file_follows_the_compose_specification() {
    let Some(tool) = validator("HEARTY_CHECK_JSONSCHEMA", "check-jsonschema") else {
        return;
    };
    let out = Command::new(tool)
        .args(["--builtin-schema", "vendor.compose-spec"])
        .arg(Path::new(ROOT).join("docker-compose.yml"))
        .output()
        .expect("run check-jsonschema");
    assert!(
        out.status.success(),
        "docker-compose.yml: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_kubernetes_manifests_validate() {
    let Some(tool) = validator("HEARTY_KUBERNETES_VALIDATE", "kubernetes-validate") else {
        return;
    };
    let out = Command::new(tool)
        .arg("--strict")
        .args(manifests())
        .output()
        .expect("run kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    // Only the operator's custom resource may lack a schema.
    for line in text
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
    {
        assert!(line.contains("RabbitmqCluster"), "{line}");
    }
}

/// The drain and the grace period agree; every workload probes the health
/// endpoints the service has; every stateful role is a StatefulSet with a
/// volume claim; the broker has three replicas.
#[test]
fn the_manifests_agree_with_the_service() {
    let docs = documents();
    let kind = |d: &Value| d["kind"].as_str().unwrap_or("").to_owned();
    let drain: u64 = docs
        .iter()
        .find(|d| kind(d) == "ConfigMap")
        .and_then(|d| d["data"]["HEARTY_DRAIN"].as_str())
        .and_then(|s| s.strip_suffix('s'))
        .and_then(|s| s.parse().ok())
        .expect("HEARTY_DRAIN in seconds in the ConfigMap");
    let mut stateful = Vec::new();
    for d in &docs {
        let k = kind(d);
        if k != "Deployment" && k != "StatefulSet" {
            continue;
        }
        let name = d["metadata"]["name"].as_str().unwrap_or("?").to_owned();
        let pod = &d["spec"]["template"]["spec"];
        let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
        // The drain, then up to 45 s for requests in flight, then the stop.
        assert!(
            grace >= drain + 45 + 10,
            "{name}: grace {grace} s < drain {drain} s + 45 s of requests + 10 s to stop"
        );
        let container = &pod["containers"][0];
        assert_eq!(
            container["readinessProbe"]["httpGet"]["path"].as_str(),
            Some("/health/ready"),
            "{name}"
        );
        assert_eq!(
            container["livenessProbe"]["httpGet"]["path"].as_str(),
            Some("/health/live"),
            "{name}"
        );
        if k == "StatefulSet" {
            assert!(
                d["spec"]["volumeClaimTemplates"][0]["metadata"]["name"].as_str() == Some("data"),
                "{name}: its own volume"
            );
            stateful.push(name);
        }
    }
    stateful.sort();
    assert_eq!(
        stateful,
        ["coupon", "delivery", "kitchen", "orchestrator", "pay"],
        "every stateful role is a StatefulSet"
    );
    let rabbit = docs
        .iter()
        .find(|d| kind(d) == "RabbitmqCluster")
        .expect("a RabbitmqCluster");
    assert_eq!(rabbit["spec"]["replicas"].as_u64(), Some(3));
    assert!(
        docs.iter().any(|d| kind(d) == "HorizontalPodAutoscaler"
            && d["spec"]["scaleTargetRef"]["name"].as_str() == Some("api")),
        "the API autoscales"
    );
}

/// No secret that works is in the manifests (the operator creates them),
/// no container runs as root or may gain privileges, the ingress speaks
/// TLS, and each role logs in to the broker as its own user.
#[test]
fn the_manifests_ship_no_secret_and_run_unprivileged() {
    let docs = documents();
    let kind = |d: &Value| d["kind"].as_str().unwrap_or("").to_owned();
    assert!(
        !docs.iter().any(|d| kind(d) == "Secret"),
        "no Secret in the repository: the operator creates them"
    );
    let mut pods = 0;
    for d in &docs {
        let k = kind(d);
        if !matches!(k.as_str(), "Deployment" | "StatefulSet" | "Job") {
            continue;
        }
        pods += 1;
        let name = d["metadata"]["name"].as_str().unwrap_or("?").to_owned();
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(
            pod["securityContext"]["runAsNonRoot"].as_bool(),
            Some(true),
            "{name} runs as non-root"
        );
        for c in pod["containers"].as_sequence().expect("containers") {
            let sc = &c["securityContext"];
            assert_eq!(
                sc["allowPrivilegeEscalation"].as_bool(),
                Some(false),
                "{name}"
            );
            assert_eq!(
                sc["capabilities"]["drop"][0].as_str(),
                Some("ALL"),
                "{name}"
            );
            for e in c["env"].as_sequence().into_iter().flatten() {
                let var = e["name"].as_str().unwrap_or("");
                let literal = e["value"].as_str().unwrap_or("");
                if var.contains("TOKEN") || var.contains("KEY") || var.contains("PASSWORD") {
                    assert!(
                        e["valueFrom"]["secretKeyRef"].is_mapping(),
                        "{name}: {var} comes from a Secret"
                    );
                }
                if var == "HEARTY_AMQP_URL" {
                    let role = c["env"]
                        .as_sequence()
                        .into_iter()
                        .flatten()
                        .find(|e| e["name"].as_str() == Some("HEARTY_ROLES"))
                        .and_then(|e| e["value"].as_str())
                        .unwrap_or("?");
                    for node in literal.split(',') {
                        assert!(
                            node.starts_with(&format!(
                                "amqp://hearty-{role}:$(HEARTY_BROKER_PASSWORD)@"
                            )),
                            "{name} logs in as its role's user: {node}"
                        );
                    }
                }
            }
        }
    }
    assert!(pods >= 8, "every workload checked");
    let ingress = docs
        .iter()
        .find(|d| kind(d) == "Ingress")
        .expect("an Ingress");
    assert!(
        ingress["spec"]["tls"][0]["secretName"].is_string(),
        "the ingress terminates TLS"
    );
    let dockerfile =
        std::fs::read_to_string(Path::new(ROOT).join("Dockerfile")).expect("Dockerfile");
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the image names its user");
    assert!(
        !user.starts_with("root") && !user.starts_with('0'),
        "{user}"
    );
}
