//! The nodes of one RabbitMQ cluster, as `HEARTY_AMQP_URL` names them: one
//! URL, or a comma-separated list of URLs of the nodes of one cluster.
//!
//! A process connects to one reachable node, trying them in turn, and moves
//! to the next when its node goes away (see `AmqpTransport`). With more
//! than one node, queues are quorum queues by default: they replicate
//! across the nodes, so the loss of one node loses no message.

use std::fmt;

/// How long one node may take to accept a connection before the next one
/// is tried.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerNodes(Vec<String>);

impl BrokerNodes {
    /// Reads `amqp://…` or `amqp://a,amqp://b,amqp://c`.
    /// A comma starts a new node only where an `amqp://` or `amqps://` URL
    /// follows it (a password may hold a comma). Every node must name the
    /// same virtual host: the namespace lives in one.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut nodes: Vec<String> = Vec::new();
        for part in raw.split(',') {
            match nodes.last_mut() {
                Some(last) if !is_url(part) => {
                    last.push(',');
                    last.push_str(part);
                }
                _ => nodes.push(part.to_owned()),
            }
        }
        for node in nodes.iter_mut() {
            // A list may end with a comma.
            *node = node.trim().trim_end_matches(',').trim_end().to_owned();
        }
        nodes.retain(|n| !n.is_empty());
        if nodes.is_empty() {
            return Err("names no RabbitMQ node".into());
        }
        for node in &nodes {
            if !is_url(node) {
                return Err(format!(
                    "`{}` is not an amqp:// or amqps:// URL (several nodes are separated by commas)",
                    redact(node)
                ));
            }
        }
        let vhosts: Vec<&str> = nodes.iter().map(|n| vhost(n)).collect();
        if vhosts.iter().any(|v| *v != vhosts[0]) {
            return Err(format!(
                "the nodes name different virtual hosts ({}): one namespace lives in one virtual host",
                vhosts.join(", ")
            ));
        }
        Ok(BrokerNodes(nodes))
    }

    /// More than one node: a cluster, whose queues should replicate.
    pub fn is_cluster(&self) -> bool {
        self.0.len() > 1
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a node is reached as RabbitMQ's `guest` user on another
    /// machine: a well-known password, which a deployment must not rely on
    /// (RabbitMQ itself refuses it unless told otherwise).
    pub fn uses_guest_remotely(&self) -> bool {
        // Without credentials the client logs in as guest.
        self.0
            .iter()
            .any(|n| user(n).unwrap_or("guest") == "guest" && !is_loopback(host(n)))
    }

    /// The URL of node `i` (modulo the number of nodes).
    pub fn get(&self, i: usize) -> &str {
        &self.0[i % self.0.len()]
    }

    /// Every node, from node `first` on, wrapping around.
    pub fn from(&self, first: usize) -> impl Iterator<Item = (usize, &str)> {
        let n = self.0.len();
        (0..n).map(move |k| {
            let i = (first + k) % n;
            (i, self.0[i].as_str())
        })
    }
}

impl fmt::Display for BrokerNodes {
    /// The nodes without their passwords.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown: Vec<String> = self.0.iter().map(|n| redact(n)).collect();
        f.write_str(&shown.join(","))
    }
}

/// Whether `s` starts an AMQP URL (the scheme in any case).
fn is_url(s: &str) -> bool {
    let s = s.trim_start().as_bytes();
    let starts =
        |scheme: &[u8]| s.len() >= scheme.len() && s[..scheme.len()].eq_ignore_ascii_case(scheme);
    starts(b"amqp://") || starts(b"amqps://")
}

/// The virtual host a URL names (its path, without the query), `/` when
/// it names none.
fn vhost(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    // After the credentials (a password may hold `/` or `?`), then without
    // the query.
    let after_at = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let after_at = after_at.split('?').next().unwrap_or(after_at);
    match after_at.split_once('/') {
        Some((_, path)) if !path.is_empty() && !path.eq_ignore_ascii_case("%2f") => path,
        _ => "/",
    }
}

/// The user a URL logs in as, if it names one.
fn user(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (creds, _) = rest.rsplit_once('@')?;
    creds.split(':').next()
}

/// The host a URL names (without credentials, port, path or brackets).
fn host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let after_at = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let authority = after_at.split(['/', '?']).next().unwrap_or(after_at);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    authority.split(':').next().unwrap_or(authority)
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A broker URL without its password, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_only_on_this_machine() {
        let nodes = |s: &str| BrokerNodes::parse(s).expect("parses");
        assert!(!nodes("amqp://guest:guest@127.0.0.1:5672/%2f").uses_guest_remotely());
        assert!(!nodes("amqp://guest:guest@localhost/%2f").uses_guest_remotely());
        assert!(!nodes("amqp://guest:guest@[::1]:5672").uses_guest_remotely());
        assert!(nodes("amqp://guest:guest@rabbit:5672/%2f").uses_guest_remotely());
        assert!(
            nodes("amqp://hearty:x@127.0.0.1,amqp://guest:guest@10.0.0.2").uses_guest_remotely()
        );
        assert!(!nodes("amqp://hearty-api:s3cret@rabbit:5672/%2f").uses_guest_remotely());
        // No credentials: the client's default is guest.
        assert!(!nodes("amqp://127.0.0.1").uses_guest_remotely());
        assert!(nodes("amqp://rabbit:5672").uses_guest_remotely());
    }

    #[test]
    fn one_url_or_a_list() {
        let one = BrokerNodes::parse("amqp://guest:guest@127.0.0.1:5672/%2f").expect("one");
        assert!(!one.is_cluster());
        let three =
            BrokerNodes::parse("amqp://a:5672, amqp://b:5673 ,amqp://c:5674,").expect("list");
        assert!(three.is_cluster());
        assert_eq!(three.len(), 3);
        let order: Vec<usize> = three.from(2).map(|(i, _)| i).collect();
        assert_eq!(order, [2, 0, 1]);
        assert_eq!(three.get(4), "amqp://b:5673");
    }

    #[test]
    fn a_comma_in_a_password_stays_in_its_url() {
        let nodes = BrokerNodes::parse("amqp://guest:gu,est@a:5672/%2f,amqp://guest:x@b:5672/%2f")
            .expect("two nodes");
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes.get(0), "amqp://guest:gu,est@a:5672/%2f");
        let one = BrokerNodes::parse("amqp://guest:gu,est-tail@127.0.0.1:5672/%2f").expect("one");
        assert!(!one.is_cluster());
    }

    #[test]
    fn odd_passwords_stay_whole() {
        let nodes = BrokerNodes::parse("amqp://u:a,,b@h/%2f,AMQP://u:p@k/%2f,").expect("two");
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes.get(0), "amqp://u:a,,b@h/%2f");
        assert_eq!(nodes.get(1), "AMQP://u:p@k/%2f");
        // A `/` or `?` in a password is not a vhost or a query.
        let e = BrokerNodes::parse("amqp://u:ab/cd?e@a/%2f,amqp://u:x@b/prod").expect_err("vhosts");
        assert!(!e.contains("cd"), "{e}");
        assert!(BrokerNodes::parse("amqp://u:ab/cd?e@a/%2f,amqp://u:x@b").is_ok());
    }

    #[test]
    fn every_node_names_the_same_virtual_host() {
        let e = BrokerNodes::parse("amqp://u:p@a/%2f,amqp://u:p@b/prod").expect_err("two vhosts");
        assert!(e.contains("virtual hosts"), "{e}");
        assert!(!e.contains(":p@"), "{e}");
        assert!(
            BrokerNodes::parse("amqp://a,amqp://b/%2f").is_ok(),
            "`/` either way"
        );
        assert!(BrokerNodes::parse("amqp://a?heartbeat=5,amqp://b").is_ok());
    }

    #[test]
    fn anything_else_is_refused_without_its_password() {
        assert!(BrokerNodes::parse(" , ").is_err());
        let e = BrokerNodes::parse("http://u:secret@b,amqp://a").expect_err("http");
        assert!(e.contains("u:***@b"), "{e}");
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn passwords_never_print() {
        assert_eq!(
            redact("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://localhost"), "amqp://localhost");
        let nodes = BrokerNodes::parse("amqp://u:p@a,amqp://u:p@b").expect("list");
        assert_eq!(nodes.to_string(), "amqp://u:***@a,amqp://u:***@b");
    }
}
