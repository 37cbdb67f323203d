//! The orchestrator role: its database upgraded, the registry actor on the
//! actix system thread, the sagas recovered, a replies consumer per owned
//! partition, the outbox relay on a thread of its own, and — when other
//! processes share the broker — the server of requests for its partitions.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use anyhow::Context as _;

use super::foundation::Foundation;
use super::parts::Parts;
use crate::cluster::owners::Owners;
use crate::cluster::serve;
use crate::config::Config;
use crate::orchestrator::executor::OrchestratorExecutor;
use crate::orchestrator::requests::OrchestratorProtocol;
use crate::orchestrator::store::SagaStore;
use crate::orchestrator::{Orchestrator, Recover, consume_replies};
use crate::partition::{Owned, OwnerRole};

/// Starts the orchestrator if `config` runs it; the owners of every
/// orchestrator partition as the API reaches them (this one, directly; the
/// others over the broker).
pub(super) async fn start(
    config: &Config,
    base: &Foundation,
    parts: &mut Parts,
) -> anyhow::Result<Owners<OrchestratorProtocol>> {
    // Placing an order waits for its payment at the owner.
    let answer_wait = config.order_timeout + Duration::from_secs(15);
    let owners = Owners::new(base.count, base.transport.clone(), answer_wait);
    let Some(db) = base.orchestrator_db.clone() else {
        return Ok(owners);
    };
    parts.dbs.push(db.clone());
    let sagas = SagaStore::new(
        db.clone(),
        base.def.clone(),
        Owned::new(base.count, &base.owned),
    );
    sagas
        .migrate()
        .await
        .context("upgrading the orchestrator database")?;
    let redriven = crate::orchestrator::redrive::after_restore(
        &config.data_dir,
        &sagas,
        base.transport.event_log(),
        config.order_timeout,
    )
    .await
    .context("re-driving the orders taken after the backup this folder was restored from")?;
    if redriven > 0 {
        tracing::warn!(redriven, "orders taken after the backup re-driven");
    }
    let orchestrator = Orchestrator::new(
        base.def.clone(),
        sagas.clone(),
        base.breakers.clone(),
        config.passivate_after,
    )
    .start();
    let relay = actix::Arbiter::new();
    parts.relay(&relay, db, base.transport.clone());
    parts.arbiters.push(relay);
    let recovered = orchestrator
        .send(Recover)
        .await
        .context("recovering sagas")??;
    if recovered > 0 {
        tracing::info!(recovered, "sagas in flight recovered");
    }
    // Recovery read no saga's body: find the undecodable ones now, in the
    // background, so the state filters show them as `Failed`.
    actix::spawn(crate::orchestrator::audit_after_start(sagas.clone()));
    for &p in &base.owned {
        let (o, t, s, senders) = (
            orchestrator.clone(),
            base.transport.clone(),
            parts.shutdown.clone(),
            base.count,
        );
        actix::spawn(async move {
            if let Err(e) = consume_replies(p, o, t, senders, s).await {
                tracing::error!(partition = %p, error = %e, "replies consumer stopped");
            }
        });
    }
    let executor = Arc::new(OrchestratorExecutor {
        orchestrator,
        sagas,
        breakers: base.breakers.clone(),
        transport: base.transport.clone(),
        order_timeout: config.order_timeout,
    });
    if base.shared() {
        serve_requests(&executor, base, parts);
    }
    Ok(owners.with_local(OwnerRole::Orchestrator, executor, &base.owned))
}

/// Answers the requests for this orchestrator's partitions (from API
/// processes).
fn serve_requests(executor: &Arc<OrchestratorExecutor>, base: &Foundation, parts: &Parts) {
    let owned: Vec<u16> = base.owned.iter().map(|p| p.index()).collect();
    for &p in &base.owned {
        let owner = serve::Owner::<OrchestratorProtocol> {
            executor: executor.clone(),
            owned: owned.clone(),
            transport: base.transport.clone(),
            auth: base.auth.clone(),
        };
        let shutdown = parts.shutdown.clone();
        actix::spawn(async move {
            let role = OwnerRole::Orchestrator;
            if let Err(e) = serve::serve(role, p, owner, shutdown).await {
                tracing::error!(partition = %p, error = %e, "request server stopped");
            }
        });
    }
}
