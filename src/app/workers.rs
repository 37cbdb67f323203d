//! The worker roles this process runs: each kind on its own thread
//! (arbiter) with its actor under a supervisor, its consumers (one per owned
//! partition), its outbox relay, and — when other processes share the
//! broker — the server of requests for its partitions.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use super::foundation::Foundation;
use super::parts::Parts;
use crate::cluster::owners::Owners;
use crate::cluster::serve;
use crate::config::Config;
use crate::domain::WorkerKind;
use crate::partition::{Owned, OwnerRole};
use crate::workers::requests::{LocalWorker, WorkerProtocol};
use crate::workers::{self, Faults, Knobs, WorkerActor};

/// How long an asker waits for a worker owner's answer.
const ANSWER_WAIT: Duration = Duration::from_secs(5);

/// Starts the workers of `config`; the owners of every worker's partitions
/// as the API reaches them (these, directly; the others over the broker).
pub(super) async fn start(
    config: &Config,
    base: &Foundation,
    parts: &mut Parts,
) -> anyhow::Result<Owners<WorkerProtocol>> {
    let mut owners = Owners::new(base.count, base.transport.clone(), ANSWER_WAIT);
    let failures = crate::config::parse_failures(&config.fail_compensations)
        .map_err(|e| anyhow::anyhow!(e))?;
    for kind in config.roles.workers() {
        let logic = workers::logic_for(kind, Knobs::from_config(config));
        let db = base
            .own_db(config, OwnerRole::Worker(kind), &workers::schema_of(kind))
            .await
            .with_context(|| format!("opening the {kind} database"))?;
        let faults = Faults {
            latency: config.latency_of(kind),
            compensation_failures: failures.iter().find(|(k, _)| *k == kind).map(|(_, c)| *c),
            duplicate_replies: config.duplicate_replies,
        };
        // Each worker kind runs on its own arbiter (thread): its actor, its
        // consumers and its outbox relay never compete with the
        // orchestrator's thread.
        let arbiter = actix::Arbiter::new();
        let worker_db = db.clone();
        let actor = actix::Supervisor::start_in_arbiter(&arbiter.handle(), move |_| {
            WorkerActor::new(kind, logic, worker_db, faults)
        });
        parts.relay(&arbiter, db.clone(), base.transport.clone());
        for &p in &base.owned {
            let (t, s, a, senders) = (
                base.transport.clone(),
                parts.shutdown.clone(),
                actor.clone(),
                base.count,
            );
            arbiter.spawn(async move {
                if let Err(e) = workers::consume(kind, p, a, t, senders, s).await {
                    tracing::error!(worker = %kind, partition = %p, error = %e, "consumer stopped");
                }
            });
        }
        let local = Arc::new(LocalWorker {
            kind,
            db: db.clone(),
            owned: Owned::new(base.count, &base.owned),
        });
        if base.shared() {
            serve_requests(kind, &local, &arbiter, base, parts);
        }
        owners = owners.with_local(OwnerRole::Worker(kind), local, &base.owned);
        parts.arbiters.push(arbiter);
        parts.dbs.push(db);
    }
    Ok(owners)
}

/// Answers the requests for this worker's partitions (from API processes).
fn serve_requests(
    kind: WorkerKind,
    local: &Arc<LocalWorker>,
    arbiter: &actix::Arbiter,
    base: &Foundation,
    parts: &Parts,
) {
    let owned: Vec<u16> = base.owned.iter().map(|p| p.index()).collect();
    for &p in &base.owned {
        let owner = serve::Owner::<WorkerProtocol> {
            executor: local.clone(),
            owned: owned.clone(),
            transport: base.transport.clone(),
            auth: base.auth.clone(),
        };
        let shutdown = parts.shutdown.clone();
        arbiter.spawn(async move {
            let role = OwnerRole::Worker(kind);
            if let Err(e) = serve::serve(role, p, owner, shutdown).await {
                tracing::error!(worker = %kind, partition = %p, error = %e, "request server stopped");
            }
        });
    }
}
