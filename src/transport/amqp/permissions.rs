//! What each role's RabbitMQ user may do: RabbitMQ's own configure, write
//! and read permissions (regular expressions over exchange and queue names
//! of the virtual host), derived here from what each role declares,
//! publishes, binds and consumes — one place, which `hearty broker-users`
//! applies and the deployment files repeat (a test keeps them equal).
//!
//! RabbitMQ checks configure to declare or delete, write to publish to an
//! exchange or bind a queue, read to consume a queue or bind from an
//! exchange. So:
//!
//! - an **api** (or **views**) user configures nothing (the process checks
//!   passively that the namespace exists), writes only to the requests
//!   exchange, the event log's and the registry's exchanges and the
//!   dead-letter exchange, and reads only the two streams: it cannot publish
//!   a command or a worker's reply, nor read any work queue;
//! - a **worker** user declares, binds and reads only its own queues (and
//!   reads the registry), and publishes where its messages go: it cannot
//!   delete or unbind anything another role uses;
//! - the **orchestrator** user also declares what every role uses: the
//!   exchanges, the two streams and the dead-letter queue.
//!
//! Exchanges are never named like queues (a right to publish to one would
//! be a right to bind the other). Owners answer requests through the
//! default exchange (RabbitMQ's direct reply-to), which reaches every queue
//! by name: write on `amq.default` is the one right broader than a role's
//! messages (see ARCHITECTURE.md).

use crate::domain::WorkerKind;
use crate::transport::{QueueName, Topology};

/// A role as the broker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BrokerRole {
    Api,
    Views,
    Orchestrator,
    Worker(WorkerKind),
}

impl BrokerRole {
    pub const ALL: [BrokerRole; 7] = [
        BrokerRole::Api,
        BrokerRole::Views,
        BrokerRole::Orchestrator,
        BrokerRole::Worker(WorkerKind::Pay),
        BrokerRole::Worker(WorkerKind::Kitchen),
        BrokerRole::Worker(WorkerKind::Delivery),
        BrokerRole::Worker(WorkerKind::Coupon),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BrokerRole::Api => "api",
            BrokerRole::Views => "views",
            BrokerRole::Orchestrator => "orchestrator",
            BrokerRole::Worker(k) => k.as_str(),
        }
    }

    /// Whether the role declares (and so may configure) anything.
    pub fn declares(self) -> bool {
        matches!(self, BrokerRole::Orchestrator | BrokerRole::Worker(_))
    }
}

/// One user's permissions in the namespace's virtual host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    pub configure: String,
    pub write: String,
    pub read: String,
}

/// The names a set of permissions covers, as regular expressions.
#[derive(Debug, Default)]
struct Names(Vec<String>);

impl Names {
    /// A name exactly.
    fn name(&mut self, name: &str) -> &mut Self {
        self.0.push(escape(name));
        self
    }

    /// Every name starting with `prefix.` (a role's queues).
    fn under(&mut self, prefix: &str) -> &mut Self {
        self.0.push(format!("{}\\..*", escape(prefix)));
        self
    }

    fn names(&mut self, names: impl IntoIterator<Item = String>) -> &mut Self {
        for n in names {
            self.name(&n);
        }
        self
    }

    /// `^(?:a|b|...)$`, or `^$` (nothing).
    fn regex(&self) -> String {
        if self.0.is_empty() {
            return "^$".into();
        }
        let mut alternatives = self.0.clone();
        alternatives.sort();
        alternatives.dedup();
        format!("^(?:{})$", alternatives.join("|"))
    }
}

/// A name as a regular expression matching only itself.
fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The default exchange, as permissions name it.
const DEFAULT_EXCHANGE: &str = "amq.default";

/// The permissions of a user running `roles` in the namespace `t`.
pub fn of(t: &Topology, roles: &[BrokerRole]) -> Permissions {
    let (mut configure, mut write, mut read) =
        (Names::default(), Names::default(), Names::default());
    let ns = &t.namespace;
    let streams = [t.registry(), t.queue(QueueName::EventLog)];
    let shared = t.exchanges();
    for role in roles {
        match role {
            BrokerRole::Api | BrokerRole::Views => {
                // Reads the event log into its read models (a catch-up
                // marker appended, a bad event dead-lettered) and the
                // registry; the API asks owners.
                write.names([
                    t.log_exchange(),
                    t.registry_exchange(),
                    t.dead_letter_exchange(),
                ]);
                read.names(streams.clone());
                if *role == BrokerRole::Api {
                    write.name(&t.rpc_exchange());
                }
            }
            BrokerRole::Orchestrator | BrokerRole::Worker(_) => {
                let own = format!("{ns}.{}", role.as_str());
                // Its queues and the leases of its partitions: declared,
                // bound, consumed.
                configure.under(&own);
                write.under(&own);
                read.under(&own);
                // Publishes events (and their log entries), registry
                // records, dead letters, and answers requests by direct
                // reply-to; reads the registry; binds its leases to the
                // requests exchange.
                write
                    .names([
                        t.events_exchange(),
                        t.log_exchange(),
                        t.registry_exchange(),
                        t.dead_letter_exchange(),
                    ])
                    .name(DEFAULT_EXCHANGE);
                read.names([t.registry(), t.rpc_exchange()]);
                if *role == BrokerRole::Orchestrator {
                    // Declares what every role uses: the exchanges, the
                    // streams (bound to their exchanges; the binding older
                    // versions made from the events exchange removed) and
                    // the dead-letter queue; sends commands, asks workers'
                    // owners, binds its replies queues.
                    configure
                        .names(shared.clone())
                        .names(streams.clone())
                        .name(&t.queue(QueueName::DeadLetter));
                    write
                        .names(streams.clone())
                        .names([t.commands_exchange(), t.rpc_exchange()]);
                    read.names([
                        t.replies_exchange(),
                        t.dead_letter_exchange(),
                        t.log_exchange(),
                        t.registry_exchange(),
                        t.events_exchange(),
                    ]);
                    // Reads the event log after a restore from a backup, to
                    // re-drive the orders taken after it.
                    read.name(&t.queue(QueueName::EventLog));
                } else {
                    // Replies to the orchestrator; binds its command queues.
                    write.name(&t.replies_exchange());
                    read.name(&t.commands_exchange());
                }
            }
        }
    }
    Permissions {
        configure: configure.regex(),
        write: write.regex(),
        read: read.regex(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::PartitionCount;

    fn matches(pattern: &str, name: &str) -> bool {
        regex::Regex::new(pattern)
            .expect("a valid pattern")
            .is_match(name)
    }

    #[test]
    fn the_api_configures_nothing_and_reaches_no_work_queue() {
        let t = Topology::new("shop.eu", PartitionCount::default());
        let api = of(&t, &[BrokerRole::Api]);
        assert_eq!(api.configure, "^$");
        for forbidden in [
            "shop.eu.replies",
            "shop.eu.commands",
            "amq.default",
            "shop.eu.events",
        ] {
            assert!(!matches(&api.write, forbidden), "api writes {forbidden}");
        }
        for forbidden in [
            "shop.eu.pay.commands.p0",
            "shop.eu.orchestrator.replies.p3",
            "shop.eu.dead-letter",
            "shop.eu.pay.p0.owner",
        ] {
            assert!(!matches(&api.read, forbidden), "api reads {forbidden}");
        }
        assert!(matches(&api.write, "shop.eu.rpc"));
        assert!(matches(&api.read, "shop.eu.events.log"));
        // Appending to the registry is no right to unbind it: the stream is
        // not written (bound), and no exchange it hangs on is read.
        assert!(matches(&api.write, "shop.eu.registry.in"));
        assert!(!matches(&api.write, "shop.eu.registry"));
        assert!(!matches(&api.read, "shop.eu.registry.in"));
        // The namespace's dot is a dot.
        assert!(!matches(&api.write, "shopXeu.rpc"));
    }

    #[test]
    fn a_worker_reads_only_its_own_queues() {
        let t = Topology::new("hearty", PartitionCount::default());
        let pay = of(&t, &[BrokerRole::Worker(WorkerKind::Pay)]);
        assert!(matches(&pay.read, "hearty.pay.commands.p7"));
        assert!(matches(&pay.read, "hearty.pay.p7.owner"));
        assert!(!matches(&pay.read, "hearty.kitchen.commands.p7"));
        assert!(!matches(&pay.read, "hearty.orchestrator.replies.p7"));
        assert!(matches(&pay.write, "hearty.replies"));
        assert!(!matches(&pay.write, "hearty.commands"));
        assert!(!matches(&pay.configure, "hearty.kitchen.commands.p7"));
        // What every role uses is the orchestrator's to declare or delete.
        for shared in [
            "hearty.dead-letter",
            "hearty.events.log",
            "hearty.registry",
            "hearty.rpc",
        ] {
            assert!(!matches(&pay.configure, shared), "pay configures {shared}");
        }
        let orchestrator = of(&t, &[BrokerRole::Orchestrator]);
        assert!(matches(&orchestrator.write, "hearty.commands"));
        assert!(!matches(&orchestrator.write, "hearty.replies"));
        assert!(!matches(&orchestrator.read, "hearty.pay.commands.p0"));
    }
}
