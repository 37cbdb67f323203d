//! The parts of a process that its roles add to and that stop with it: the
//! shutdown signals, the outbox relays, the threads (arbiters) and the
//! databases.

use std::sync::Arc;

use crate::shutdown::{Shutdown, ShutdownTrigger};
use crate::storage::{Db, outbox};
use crate::transport::Transport;

pub(super) struct Parts {
    /// Stops HTTP, consumers and request servers.
    pub trigger: ShutdownTrigger,
    pub shutdown: Shutdown,
    /// Stops the outbox relays, last, after the in-flight work committed
    /// its messages.
    pub relay_trigger: ShutdownTrigger,
    /// Each resolves when a database's relays have ended.
    pub relays: Vec<tokio::sync::oneshot::Receiver<()>>,
    /// The threads of workers, views and relays.
    pub arbiters: Vec<actix::Arbiter>,
    /// Every database this process uses (readiness checks them).
    pub dbs: Vec<Db>,
    /// Set by a part that cannot go on (the event log lost what a read
    /// model still needed): the process stops, saying why.
    pub fatal: tokio::sync::watch::Sender<Option<String>>,
}

impl Parts {
    pub fn new() -> Self {
        let (trigger, shutdown) = ShutdownTrigger::new();
        let (relay_trigger, _) = ShutdownTrigger::new();
        Parts {
            trigger,
            shutdown,
            relay_trigger,
            relays: Vec::new(),
            arbiters: Vec::new(),
            dbs: Vec::new(),
            fatal: tokio::sync::watch::Sender::new(None),
        }
    }

    /// Runs `db`'s outbox relays (one per lane) on `arbiter`.
    pub fn relay(&mut self, arbiter: &actix::Arbiter, db: Db, transport: Arc<dyn Transport>) {
        let (done, ended) = tokio::sync::oneshot::channel();
        let shutdown = self.relay_trigger.subscribe();
        arbiter.spawn(async move {
            let lanes = outbox::Lane::ALL.map(|lane| {
                outbox::run_relay(db.clone(), transport.clone(), shutdown.clone(), lane)
            });
            futures_util::future::join_all(lanes).await;
            let _ = done.send(());
        });
        self.relays.push(ended);
    }
}
