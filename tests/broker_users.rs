//! One RabbitMQ user per role, on the real broker: `hearty broker-users`
//! creates them; a deployment of one process per role, each logged in as
//! its own user, takes an order to `Completed` on a namespace it declares
//! itself; and the API's user is refused by the broker when it tries what
//! only an owner may (publish a worker's reply, read a work queue, declare).

mod common;

use std::process::Command;
use std::time::Duration;

use common::Cluster;
use hearty::domain::WorkerKind;
use hearty::transport::amqp::AmqpTransport;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::json;

const ROLES: [&str; 7] = [
    "api",
    "views",
    "orchestrator",
    "pay",
    "kitchen",
    "delivery",
    "coupon",
];

fn management_url() -> String {
    std::env::var("HEARTY_TEST_MANAGEMENT_URL").unwrap_or_else(|_| "http://127.0.0.1:15672".into())
}

/// The administrator the test creates users with (the test broker's).
fn admin() -> (String, String) {
    (
        std::env::var("HEARTY_TEST_BROKER_ADMIN").unwrap_or_else(|_| "guest".into()),
        std::env::var("HEARTY_TEST_BROKER_ADMIN_PASSWORD").unwrap_or_else(|_| "guest".into()),
    )
}

/// Deletes the test's users when dropped, even on panic.
struct Users {
    names: Vec<String>,
}

impl Drop for Users {
    fn drop(&mut self) {
        let (user, password) = admin();
        let client = reqwest::blocking::Client::new();
        for name in &self.names {
            let _ = client
                .delete(format!("{}/api/users/{name}", management_url()))
                .basic_auth(&user, Some(&password))
                .send();
        }
    }
}

/// The AMQP URL of `user` on the test broker (whose URL names guest).
fn url_of(base: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = base.split_once("://").expect("a URL");
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    format!("{scheme}://{user}:{password}@{host}")
}

/// Whether the broker refused an operation for lack of permission.
fn refused(e: &lapin::Error) -> bool {
    e.to_string().contains("ACCESS_REFUSED")
}

#[test]
fn each_role_has_its_own_user_and_the_api_cannot_act_as_an_owner() {
    let management = reqwest::blocking::get(format!("{}/api/overview", management_url()));
    if management.is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "the RabbitMQ management API is needed in CI"
        );
        eprintln!("\n!!! SKIPPED: no RabbitMQ management API. In CI this is a failure.\n");
        return;
    }
    let Some(c) = Cluster::new() else { return };
    // The namespace is declared by the owners' own users, not the probe's.
    c.rt_block_on(AmqpTransport::delete_namespace(&c.url, &c.namespace))
        .expect("a fresh namespace");
    let passwords: Vec<(String, String)> = ROLES
        .iter()
        .map(|r| {
            (
                format!("HEARTY_BROKER_PASSWORD_{}", r.to_ascii_uppercase()),
                format!("{:032x}", rand::random::<u128>()),
            )
        })
        .collect();
    let _users = Users {
        names: ROLES
            .iter()
            .map(|r| format!("{}-{r}", c.namespace))
            .collect(),
    };
    let (admin_user, admin_password) = admin();
    let created = Command::new(env!("CARGO_BIN_EXE_hearty"))
        .arg("broker-users")
        .env("HEARTY_MANAGEMENT_URL", management_url())
        .env("HEARTY_NAMESPACE", &c.namespace)
        .env("HEARTY_BROKER_ADMIN_USER", &admin_user)
        .env("HEARTY_BROKER_ADMIN_PASSWORD", &admin_password)
        .envs(passwords.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("run hearty broker-users");
    let said = String::from_utf8_lossy(&created.stdout).into_owned()
        + &String::from_utf8_lossy(&created.stderr);
    assert!(created.status.success(), "{said}");
    for (_, password) in &passwords {
        assert!(
            !said.contains(password.as_str()),
            "a password printed: {said}"
        );
    }
    let url = |role: &str| {
        let var = format!("HEARTY_BROKER_PASSWORD_{}", role.to_ascii_uppercase());
        let password = &passwords
            .iter()
            .find(|(k, _)| *k == var)
            .expect("a password")
            .1;
        url_of(&c.url, &format!("{}-{role}", c.namespace), password)
    };

    // One process per role, each as its own user; the owners first (they
    // declare the namespace), the API after (it checks that it exists).
    let mut services = Vec::new();
    for role in ["orchestrator", "pay", "kitchen", "delivery", "coupon"] {
        services.push(c.start(role, &[("HEARTY_AMQP_URL", &url(role))]));
    }
    let api = c.start("api", &[("HEARTY_AMQP_URL", &url("api"))]);
    let customer = c.seed(&api, 10);
    let (status, order) = c.rt_block_on(async {
        let res = c
            .client()
            .post(format!("{}/orders", api.base))
            .bearer_auth(&customer)
            .json(&json!({"qty": "1", "foodcaltalogid": "1"}))
            .send()
            .await
            .expect("POST /orders");
        let status = res.status().as_u16();
        (status, res.json::<serde_json::Value>().await.expect("JSON"))
    });
    assert_eq!(status, 201, "{order}");
    let id = order["id"].as_i64().expect("id");
    c.wait_state(&api, id, "Completed");

    // The API's user, at the broker, as an attacker holding it would be.
    let api_url = url("api");
    c.rt_block_on(async {
        let conn = Connection::connect(&api_url, ConnectionProperties::default())
            .await
            .expect("the api user logs in");
        let topology = hearty::transport::Topology::new(
            &c.namespace,
            hearty::partition::PartitionCount::default(),
        );
        let p0 = hearty::partition::PartitionCount::default().of(0);
        // A forged worker reply, through the replies exchange...
        let ch = conn.create_channel().await.expect("channel");
        let forged = async {
            ch.basic_publish(
                topology.replies_exchange().into(),
                "orchestrator.p0".into(),
                BasicPublishOptions::default(),
                br#"{"forged":true}"#,
                BasicProperties::default().with_type("reply.pay.done".into()),
            )
            .await?
            .await
        }
        .await;
        let closed = match forged {
            Err(e) => refused(&e),
            // The refusal closes the channel right after the publish.
            Ok(_) => ch
                .basic_qos(1, Default::default())
                .await
                .is_err_and(|e| refused(&e)),
        };
        assert!(closed, "the api user published to the replies exchange");
        // ...or straight into the replies queue through the default exchange.
        let ch = conn.create_channel().await.expect("channel");
        let direct = async {
            ch.basic_publish(
                "".into(),
                topology
                    .queue(hearty::transport::QueueName::Replies(p0))
                    .into(),
                BasicPublishOptions::default(),
                b"{}",
                BasicProperties::default(),
            )
            .await?
            .await
        }
        .await;
        let closed = match direct {
            Err(e) => refused(&e),
            Ok(_) => ch
                .basic_qos(1, Default::default())
                .await
                .is_err_and(|e| refused(&e)),
        };
        assert!(
            closed,
            "the api user published through the default exchange"
        );
        // Reading a worker's commands.
        let ch = conn.create_channel().await.expect("channel");
        let read = ch
            .basic_consume(
                topology
                    .queue(hearty::transport::QueueName::Worker(WorkerKind::Pay, p0))
                    .into(),
                "thief".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await;
        assert!(
            read.as_ref().is_err_and(refused),
            "the api user consumed pay's commands: {:?}",
            read.err()
        );
        // Declaring anything.
        let ch = conn.create_channel().await.expect("channel");
        let declared = ch
            .queue_declare(
                format!("{}.stolen", c.namespace).into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await;
        assert!(
            declared.as_ref().is_err_and(refused),
            "{:?}",
            declared.err()
        );
        // A worker's user reads its own queue and no other.
        let pay = Connection::connect(&url("pay"), ConnectionProperties::default())
            .await
            .expect("the pay user logs in");
        let ch = pay.create_channel().await.expect("channel");
        let other = ch
            .basic_consume(
                topology
                    .queue(hearty::transport::QueueName::Worker(
                        WorkerKind::Kitchen,
                        p0,
                    ))
                    .into(),
                "nosy".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await;
        assert!(other.as_ref().is_err_and(refused), "{:?}", other.err());
        let _ = pay.close(200, "done".into()).await;
        let _ = conn.close(200, "done".into()).await;
    });
    // The order is still the one it was: nothing forged reached it.
    let saga = c.saga(&api, id);
    assert_eq!(saga["state"], "Completed", "{saga}");
    drop(api);
    drop(services);
    std::thread::sleep(Duration::from_millis(100));
}
