//! A real three-node RabbitMQ cluster on this machine: three nodes of the
//! installed `rabbitmq-server`, each with its own node name, ports and
//! folders, run as the `rabbitmq` user and joined with `rabbitmqctl
//! join_cluster`. Stopped (by PID) and removed when dropped.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::deploy::{free_port, tool};

/// One node of the test cluster.
pub struct Node {
    /// `hearty-<tag>-<n>@localhost`.
    pub name: String,
    pub port: u16,
    dist_port: u16,
    dir: PathBuf,
}

pub struct RabbitCluster {
    pub nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

/// Runs `rabbitmqctl` against `node`; its output on failure.
fn ctl(node: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new("rabbitmqctl")
        .arg("-n")
        .arg(node)
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

impl Node {
    /// The AMQP URL of this node.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("node.pid")
    }

    /// Starts the node (detached, as the `rabbitmq` user) and waits until
    /// it runs.
    pub fn start(&self) {
        let plugins = self.dir.join("enabled_plugins");
        let env: Vec<(&str, String)> = vec![
            ("HOME", "/var/lib/rabbitmq".into()),
            ("RABBITMQ_NODENAME", self.name.clone()),
            ("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1".into()),
            ("RABBITMQ_NODE_PORT", self.port.to_string()),
            ("RABBITMQ_DIST_PORT", self.dist_port.to_string()),
            (
                "RABBITMQ_MNESIA_BASE",
                self.dir.join("mnesia").display().to_string(),
            ),
            (
                "RABBITMQ_LOG_BASE",
                self.dir.join("log").display().to_string(),
            ),
            ("RABBITMQ_PID_FILE", self.pid_file().display().to_string()),
            (
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                plugins.display().to_string(),
            ),
            // No config of the machine's own node (ports, plugins).
            (
                "RABBITMQ_CONFIG_FILE",
                self.dir.join("rabbitmq.conf").display().to_string(),
            ),
            (
                "RABBITMQ_ADVANCED_CONFIG_FILE",
                self.dir.join("advanced.config").display().to_string(),
            ),
        ];
        let status = Command::new("setpriv")
            .args([
                "--reuid=rabbitmq",
                "--regid=rabbitmq",
                "--init-groups",
                "--",
                "rabbitmq-server",
                "-detached",
            ])
            .envs(env)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("start rabbitmq-server");
        assert!(
            status.success(),
            "rabbitmq-server {} did not start",
            self.name
        );
        let deadline = Instant::now() + Duration::from_secs(120);
        while ctl(&self.name, &["await_startup", "--timeout", "5"]).is_err() {
            assert!(
                Instant::now() < deadline,
                "RabbitMQ node {} did not start",
                self.name
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The node's OS process id (from its pid file).
    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.pid_file())
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// SIGKILL: the node is gone without a goodbye.
    pub fn kill(&self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while std::path::Path::new(&format!("/proc/{pid}")).exists()
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = std::fs::remove_file(self.pid_file());
        }
    }
}

impl RabbitCluster {
    /// Three nodes joined into one cluster; `None` outside CI when
    /// RabbitMQ's server, `setpriv` or root are missing (said loudly).
    pub fn start() -> Option<RabbitCluster> {
        tool("rabbitmq-server")?;
        tool("setpriv")?;
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        if !root {
            assert!(
                std::env::var_os("CI").is_none(),
                "the cluster test needs root (to run the nodes as the rabbitmq user)"
            );
            eprintln!("\n!!! SKIPPED: the cluster test needs root. In CI this is a failure.\n");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("hearty-rabbit-")
            .tempdir()
            .expect("tempdir");
        let tag = format!("{:08x}", rand::random::<u32>());
        let mut nodes = Vec::new();
        for n in 1..=3 {
            let node_dir = dir.path().join(format!("node{n}"));
            std::fs::create_dir_all(node_dir.join("mnesia")).expect("mkdir");
            std::fs::create_dir_all(node_dir.join("log")).expect("mkdir");
            std::fs::write(node_dir.join("enabled_plugins"), "[].\n").expect("plugins");
            std::fs::write(
                node_dir.join("rabbitmq.conf"),
                "loopback_users.guest = false\n",
            )
            .expect("conf");
            std::fs::write(node_dir.join("advanced.config"), "[].\n").expect("advanced");
            nodes.push(Node {
                name: format!("hearty-{tag}-{n}@localhost"),
                port: free_port(),
                dist_port: free_port(),
                dir: node_dir,
            });
        }
        let chown = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(dir.path())
            .status()
            .expect("chown");
        assert!(chown.success());
        let chmod = Command::new("chmod")
            .arg("755")
            .arg(dir.path())
            .status()
            .expect("chmod");
        assert!(chmod.success());
        let cluster = RabbitCluster { nodes, _dir: dir };
        for node in &cluster.nodes {
            node.start();
        }
        let first = cluster.nodes[0].name.clone();
        for node in &cluster.nodes[1..] {
            for args in [
                vec!["stop_app"],
                vec!["join_cluster", first.as_str()],
                vec!["start_app"],
            ] {
                ctl(&node.name, &args)
                    .unwrap_or_else(|e| panic!("rabbitmqctl {args:?} on {}: {e}", node.name));
            }
        }
        let status = ctl(&first, &["cluster_status"]).expect("cluster_status");
        for node in &cluster.nodes {
            assert!(
                status.contains(&node.name),
                "{} joined: {status}",
                node.name
            );
        }
        Some(cluster)
    }

    /// How many client connections to node `i` carry `name` in their
    /// connection name (`hearty orchestrator (pid 1234)`). (The listing is
    /// the cluster's: each connection's process id names its node.)
    pub fn connections_named(&self, i: usize, name: &str) -> usize {
        let node = &self.nodes[i].name;
        // A connection's process id names its node: `<node.1234.56.0>`.
        let on_node = format!("<{node}.");
        ctl(node, &["list_connections", "pid", "client_properties"])
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with(&on_node) && l.contains(name))
            .count()
    }

    /// `HEARTY_AMQP_URL` for the cluster: every node, comma-separated.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(Node::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for RabbitCluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            node.kill();
        }
    }
}
