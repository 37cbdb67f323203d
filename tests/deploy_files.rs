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
        // The kustomization lists the manifests; it is no object itself.
        .filter(|p| !p.ends_with("kustomization.yaml"))
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

/// A value of `deploy/k8s/settings.env` (the ConfigMap every pod reads).
fn setting(name: &str) -> Option<String> {
    let text = std::fs::read_to_string(Path::new(ROOT).join("deploy/k8s/settings.env"))
        .expect("deploy/k8s/settings.env");
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .map(str::to_owned)
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
    // Only the operators' custom resources may lack a schema.
    for line in text
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
    {
        assert!(
            ["RabbitmqCluster", "PodMonitor", "PrometheusRule"]
                .iter()
                .any(|k| line.contains(k)),
            "{line}"
        );
    }
}

/// The drain and the grace period agree; every workload probes the health
/// endpoints the service has; every stateful role is a StatefulSet with a
/// volume claim; the broker has three replicas.
#[test]
fn the_manifests_agree_with_the_service() {
    let docs = documents();
    let kind = |d: &Value| d["kind"].as_str().unwrap_or("").to_owned();
    let drain: u64 = setting("HEARTY_DRAIN")
        .as_deref()
        .and_then(|s| s.strip_suffix('s'))
        .and_then(|s| s.parse().ok())
        .expect("HEARTY_DRAIN in seconds in settings.env");
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
            stateful.push(env_of(d, "HEARTY_ROLES").unwrap_or("?").to_owned());
        }
    }
    stateful.sort();
    stateful.dedup();
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

fn kind_of(d: &Value) -> &str {
    d["kind"].as_str().unwrap_or("")
}

fn name_of(d: &Value) -> &str {
    d["metadata"]["name"].as_str().unwrap_or("?")
}

/// An environment variable of a pod's first container, as written.
fn env_of<'a>(d: &'a Value, var: &str) -> Option<&'a str> {
    d["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_sequence()?
        .iter()
        .find(|e| e["name"].as_str() == Some(var))
        .and_then(|e| e["value"].as_str())
}

/// Seconds a probe lets pass before it fails the pod.
fn probe_window(probe: &Value) -> u64 {
    probe["periodSeconds"].as_u64().unwrap_or(10) * probe["failureThreshold"].as_u64().unwrap_or(3)
}

/// What the issue of running for years asked of Kubernetes: a start-up
/// probe longer than the service's start-up waits; one StatefulSet of one
/// pod per partition set, the sets of each role covering the namespace's
/// partitions exactly once, with no shell picking them; `Parallel`, short
/// tolerations of a lost node, Guaranteed owners; spread over nodes; the
/// HPA alone sets the API's replicas; every PDB `maxUnavailable: 1`; the
/// kustomization names every manifest, the image and the settings.
#[test]
fn the_manifests_keep_their_promises() {
    use hearty::partition::{PartitionCount, PartitionSet};
    use std::collections::BTreeMap;
    let docs = documents();
    let count: u16 = setting("HEARTY_PARTITION_COUNT")
        .and_then(|c| c.parse().ok())
        .expect("HEARTY_PARTITION_COUNT");
    let count = PartitionCount::new(count).expect("a count");
    // Start-up may wait for the broker (HEARTY_BROKER_WAIT, 30 s), then for
    // a hung predecessor's lease (up to 9 s), then recover.
    let start_up_waits = 30 + 9;
    let mut partitions: BTreeMap<String, Vec<u16>> = BTreeMap::new();
    for d in docs.iter().filter(|d| kind_of(d) == "StatefulSet") {
        let name = name_of(d);
        let spec = &d["spec"];
        let pod = &spec["template"]["spec"];
        let container = &pod["containers"][0];
        assert_eq!(spec["replicas"].as_u64(), Some(1), "{name}: one pod");
        assert_eq!(
            spec["podManagementPolicy"].as_str(),
            Some("Parallel"),
            "{name}"
        );
        assert!(
            container["command"].is_null(),
            "{name}: no shell picks the partitions"
        );
        let set = env_of(d, "HEARTY_PARTITIONS").expect("HEARTY_PARTITIONS");
        assert_eq!(
            spec["template"]["metadata"]["labels"]["hearty.example.com/partitions"].as_str(),
            Some(set),
            "{name}: labelled with its set"
        );
        let role = env_of(d, "HEARTY_ROLES").expect("HEARTY_ROLES").to_owned();
        let owned = set
            .parse::<PartitionSet>()
            .and_then(|s| s.resolve(count))
            .expect("a partition set");
        partitions
            .entry(role)
            .or_default()
            .extend(owned.iter().map(|p| p.index()));
        let startup = &container["startupProbe"];
        assert_eq!(startup["httpGet"]["path"].as_str(), Some("/health/live"));
        assert!(
            probe_window(startup) > 2 * start_up_waits,
            "{name}: the start-up probe outlasts start-up"
        );
        let resources = &container["resources"];
        for r in ["cpu", "memory"] {
            assert!(
                resources["requests"][r].is_string()
                    && resources["requests"][r] == resources["limits"][r],
                "{name}: Guaranteed ({r} requests = limits)"
            );
        }
        for taint in [
            "node.kubernetes.io/unreachable",
            "node.kubernetes.io/not-ready",
        ] {
            let t = pod["tolerations"]
                .as_sequence()
                .into_iter()
                .flatten()
                .find(|t| t["key"].as_str() == Some(taint))
                .unwrap_or_else(|| panic!("{name}: tolerates {taint} briefly"));
            assert!(t["tolerationSeconds"].as_u64().is_some_and(|s| s <= 60));
        }
        assert!(
            pod["topologySpreadConstraints"]
                .as_sequence()
                .into_iter()
                .flatten()
                .any(|c| c["topologyKey"].as_str() == Some("kubernetes.io/hostname")),
            "{name}: spread over nodes"
        );
    }
    for (role, mut owned) in partitions {
        owned.sort_unstable();
        let all: Vec<u16> = (0..count.get()).collect();
        assert_eq!(owned, all, "{role}: every partition has one owner");
    }
    for d in docs.iter().filter(|d| kind_of(d) == "Deployment") {
        let name = name_of(d);
        let container = &d["spec"]["template"]["spec"]["containers"][0];
        assert!(container["startupProbe"].is_mapping(), "{name}");
        assert!(
            d["spec"]["template"]["spec"]["topologySpreadConstraints"].is_sequence(),
            "{name}: spread over nodes"
        );
        let autoscaled = docs.iter().any(|h| {
            kind_of(h) == "HorizontalPodAutoscaler"
                && h["spec"]["scaleTargetRef"]["name"].as_str() == Some(name)
        });
        if autoscaled {
            assert!(
                d["spec"]["replicas"].is_null(),
                "{name}: the HPA owns `replicas`"
            );
        }
        assert_eq!(
            env_of(d, "HEARTY_SNAPSHOT_DIR"),
            Some("/snapshots"),
            "{name}: read models start from snapshots"
        );
    }
    for d in docs.iter().filter(|d| kind_of(d) == "PodDisruptionBudget") {
        assert_eq!(
            d["spec"]["maxUnavailable"].as_u64(),
            Some(1),
            "{}",
            name_of(d)
        );
        assert!(d["spec"]["minAvailable"].is_null(), "{}", name_of(d));
    }
    let rabbit = docs
        .iter()
        .find(|d| kind_of(d) == "RabbitmqCluster")
        .expect("a RabbitmqCluster");
    assert!(
        rabbit["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            .is_sequence(),
        "one RabbitMQ node per Kubernetes node"
    );
    // The alerts the issue names, on metrics the service has.
    let rules = docs
        .iter()
        .find(|d| kind_of(d) == "PrometheusRule")
        .expect("a PrometheusRule");
    let exprs: Vec<&str> = rules["spec"]["groups"][0]["rules"]
        .as_sequence()
        .expect("rules")
        .iter()
        .filter_map(|r| r["expr"].as_str())
        .collect();
    let metrics = hearty::metrics::render();
    for needed in [
        "hearty_dead_letters_total",
        "hearty_owner_unavailable_total",
        "hearty_view_snapshots_written_total",
        "kube_pod_container_status_restarts_total",
        "rabbitmq_alarms_free_disk_space_watermark",
        "rabbitmq_alarms_memory_used_watermark",
        "kube_pod_status_ready",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(needed)),
            "an alert on {needed}"
        );
        if needed.starts_with("hearty_") {
            assert!(metrics.contains(needed), "the service has {needed}");
        }
    }
    // The kustomization: every manifest, the image by name, the settings.
    let k: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(Path::new(ROOT).join("deploy/k8s/kustomization.yaml"))
            .expect("kustomization.yaml"),
    )
    .expect("yaml");
    let mut listed: Vec<String> = k["resources"]
        .as_sequence()
        .expect("resources")
        .iter()
        .filter_map(|r| r.as_str().map(str::to_owned))
        .collect();
    listed.sort();
    let files: Vec<String> = manifests()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(listed, files, "the kustomization lists every manifest");
    assert_eq!(k["images"][0]["name"].as_str(), Some("hearty"));
    assert_eq!(
        k["configMapGenerator"][0]["name"].as_str(),
        Some("hearty-settings")
    );
    for d in &docs {
        for c in d["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .into_iter()
            .flatten()
        {
            assert_eq!(
                c["image"].as_str(),
                Some("hearty"),
                "{}: the image the kustomization sets",
                name_of(d)
            );
        }
    }
}

/// One RabbitMQ version: the compose file's, the Kubernetes cluster's and
/// the broker the tests run against.
#[test]
fn one_rabbitmq_version_everywhere() {
    let compose = std::fs::read_to_string(Path::new(ROOT).join("docker-compose.yml"))
        .expect("docker-compose.yml");
    let compose_image = compose
        .lines()
        .find_map(|l| {
            let image = l.trim().strip_prefix("image: ")?;
            // `${RABBITMQ_IMAGE:-default}`: the default is the pin.
            let image = image
                .strip_prefix("${RABBITMQ_IMAGE:-")
                .and_then(|i| i.strip_suffix('}'))
                .unwrap_or(image);
            image.strip_prefix("rabbitmq:")
        })
        .expect("the compose file's RabbitMQ image")
        .to_owned();
    let docs = documents();
    let k8s_image = docs
        .iter()
        .find(|d| kind_of(d) == "RabbitmqCluster")
        .and_then(|d| d["spec"]["image"].as_str())
        .and_then(|i| i.strip_prefix("rabbitmq:"))
        .expect("the RabbitmqCluster's pinned image")
        .to_owned();
    assert_eq!(compose_image, k8s_image);
    let version = compose_image
        .strip_suffix("-management")
        .unwrap_or(&compose_image);
    assert!(
        version.split('.').count() == 3,
        "pinned to a patch version: {version}"
    );
    // The tested broker (CI installs it; outside CI, when rabbitmqctl is there).
    let Some(ctl) = common::deploy::tool("rabbitmqctl") else {
        return;
    };
    let out = Command::new(ctl)
        .arg("version")
        .output()
        .expect("rabbitmqctl version");
    let tested = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(tested, version, "the tests run the pinned RabbitMQ");
}
