//! The RabbitMQ management API of the test broker: which connections a
//! process has, cutting them (as a network cut would), deleting a queue.

use serde_json::Value;

use super::Cluster;

/// The management API (the test broker's; guest is allowed on localhost).
pub fn management_url() -> String {
    std::env::var("HEARTY_TEST_MANAGEMENT_URL").unwrap_or_else(|_| "http://127.0.0.1:15672".into())
}

/// Whether the management API (which these tests use to cut connections)
/// is missing: said loudly, and only allowed outside CI.
pub fn management_missing() -> bool {
    let probe = reqwest::blocking::get(format!("{}/api/overview", management_url()));
    if probe.is_ok() {
        return false;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "the RabbitMQ management API is not reachable at {}",
        management_url()
    );
    eprintln!("\n!!! SKIPPED: no RabbitMQ management API. In CI this is a failure.\n");
    true
}

/// The management API's names of the broker connections of process `pid`
/// (each is named `hearty <roles> (pid N)`).
pub async fn connections_of(client: &reqwest::Client, pid: u32) -> Vec<String> {
    let list: Value = client
        .get(format!("{}/api/connections", management_url()))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .expect("management API")
        .json()
        .await
        .expect("JSON");
    let suffix = format!("(pid {pid})");
    list.as_array()
        .into_iter()
        .flatten()
        .filter(|conn| {
            conn["client_properties"]["connection_name"]
                .as_str()
                .is_some_and(|n| n.ends_with(&suffix))
        })
        .filter_map(|conn| conn["name"].as_str().map(str::to_owned))
        .collect()
}

/// Waits (bounded) until the management API lists a connection of `pid`
/// (it learns of new connections a few seconds late).
pub fn wait_listed(c: &Cluster, pid: u32) {
    let client = reqwest::Client::new();
    c.wait("the management API to list the connection", || {
        c.rt_block_on(async { !connections_of(&client, pid).await.is_empty() })
    });
}

/// Closes the broker connections of the process `pid` (as a network cut
/// would); answers how many it closed.
pub fn cut_connections_of(c: &Cluster, pid: u32) -> usize {
    c.rt_block_on(async {
        let client = reqwest::Client::new();
        let mut closed = 0;
        for name in connections_of(&client, pid).await {
            let url = format!(
                "{}/api/connections/{}",
                management_url(),
                name.replace('>', "%3E")
                    .replace(' ', "%20")
                    .replace(':', "%3A")
            );
            let res = client
                .delete(url)
                .basic_auth("guest", Some("guest"))
                .send()
                .await
                .expect("management API");
            if res.status().is_success() {
                closed += 1;
            }
        }
        closed
    })
}

/// Deletes the queue `name` of the default vhost with `rabbitmqctl` (as an
/// operator might, under a live consumer); whether the broker did.
pub fn delete_queue(name: &str) -> bool {
    std::process::Command::new("rabbitmqctl")
        .args(["delete_queue", name])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
