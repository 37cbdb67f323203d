//! `hearty broker-users`: one RabbitMQ user per role, each with the
//! permissions `transport::amqp::permissions` derives, created (or updated)
//! through the management HTTP API with an administrator's credentials.
//! Each role's password comes from `HEARTY_BROKER_PASSWORD_<ROLE>`; none is
//! ever printed.

use anyhow::{Context, bail};

use crate::config::{Secret, is_published};
use crate::partition::PartitionCount;
use crate::transport::Topology;
use crate::transport::amqp::permissions::{self, BrokerRole};

/// Settings of `hearty broker-users`.
#[derive(Debug, Clone, clap::Args)]
pub struct BrokerUsers {
    /// The broker's management API.
    #[arg(
        long,
        env = "HEARTY_MANAGEMENT_URL",
        default_value = "http://127.0.0.1:15672"
    )]
    pub management_url: String,
    /// The virtual host of the namespace.
    #[arg(long, env = "HEARTY_BROKER_VHOST", default_value = "/")]
    pub vhost: String,
    /// The namespace the users work in (their names start with it).
    #[arg(long, env = "HEARTY_NAMESPACE", default_value = "hearty")]
    pub namespace: String,
    /// An administrator of the broker.
    #[arg(long, env = "HEARTY_BROKER_ADMIN_USER")]
    pub admin_user: Option<String>,
    #[arg(long, env = "HEARTY_BROKER_ADMIN_PASSWORD", hide_env_values = true, value_parser = any_secret)]
    pub admin_password: Option<Secret>,
    /// Print each user's permissions (as `rabbitmqctl set_permissions`)
    /// and change nothing.
    #[arg(long)]
    pub print: bool,
}

/// The administrator's password, whatever its length (the broker's own).
fn any_secret(s: &str) -> Result<Secret, String> {
    Ok(Secret::new(s))
}

/// The user of `role` in `namespace`: `hearty-api`, `hearty-pay`, ...
pub fn user_name(namespace: &str, role: BrokerRole) -> String {
    format!("{namespace}-{}", role.as_str())
}

/// The environment variable holding `role`'s password.
pub fn password_variable(role: BrokerRole) -> String {
    format!(
        "HEARTY_BROKER_PASSWORD_{}",
        role.as_str().to_ascii_uppercase()
    )
}

/// Creates or updates every role's user; answers what it did, one line per
/// user (no password).
pub fn broker_users(args: &BrokerUsers) -> anyhow::Result<String> {
    let topology = Topology::new(&args.namespace, PartitionCount::default());
    let mut out = String::new();
    if args.print {
        for role in BrokerRole::ALL {
            let p = permissions::of(&topology, &[role]);
            out.push_str(&format!(
                "rabbitmqctl set_permissions -p '{}' '{}' '{}' '{}' '{}'\n",
                args.vhost,
                user_name(&args.namespace, role),
                p.configure,
                p.write,
                p.read
            ));
        }
        return Ok(out);
    }
    let (Some(admin), Some(admin_password)) = (&args.admin_user, &args.admin_password) else {
        bail!(
            "HEARTY_BROKER_ADMIN_USER and HEARTY_BROKER_ADMIN_PASSWORD name the broker's administrator"
        );
    };
    let passwords = BrokerRole::ALL
        .into_iter()
        .map(|role| {
            let var = password_variable(role);
            let pw = std::env::var(&var).with_context(|| format!("{var} is not set"))?;
            if pw.chars().count() < 16 || is_published(&pw) {
                bail!("{var} must be a secret of your own, at least 16 characters (`openssl rand -base64 24`)");
            }
            Ok((role, Secret::new(pw)))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let client = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()?;
    let base = args.management_url.trim_end_matches('/');
    let vhost = percent_encode(&args.vhost);
    for (role, password) in passwords {
        let user = user_name(&args.namespace, role);
        let p = permissions::of(&topology, &[role]);
        put(
            &client,
            &format!("{base}/api/users/{}", percent_encode(&user)),
            (admin, admin_password),
            serde_json::json!({ "password": password.expose(), "tags": "" }),
        )
        .with_context(|| format!("creating the user {user}"))?;
        put(
            &client,
            &format!("{base}/api/permissions/{vhost}/{}", percent_encode(&user)),
            (admin, admin_password),
            serde_json::json!({ "configure": p.configure, "write": p.write, "read": p.read }),
        )
        .with_context(|| format!("setting the permissions of {user}"))?;
        out.push_str(&format!(
            "{user}: configure {} write {} read {}\n",
            p.configure, p.write, p.read
        ));
    }
    Ok(out)
}

fn put(
    client: &reqwest::blocking::Client,
    url: &str,
    (user, password): (&str, &Secret),
    body: serde_json::Value,
) -> anyhow::Result<()> {
    let res = client
        .put(url)
        .basic_auth(user, Some(password.expose()))
        .header("Content-Type", "application/json")
        .body(serde_json::to_vec(&body)?)
        .send()
        .with_context(|| format!("PUT {url}"))?;
    let status = res.status();
    if !status.is_success() {
        let text = res.text().unwrap_or_default();
        bail!(
            "PUT {url}: {status} {}",
            text.chars().take(300).collect::<String>()
        );
    }
    Ok(())
}

/// A path segment: everything but unreserved characters escaped.
fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
