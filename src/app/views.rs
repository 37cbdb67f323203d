//! The read models: every process serving the API keeps its own, fed by the
//! events — over RabbitMQ it reads the event log once for all of them, from
//! their own offsets; in one process, from the in-process queues.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context as _;

use super::foundation::Foundation;
use super::parts::Parts;
use crate::api::ViewDbs;
use crate::config::Config;
use crate::domain::ViewKind;
use crate::views;

/// The read models of a process: their databases, and (over RabbitMQ) the
/// flag set once they caught up with the event log.
pub(super) struct ReadModels {
    pub dbs: ViewDbs,
    pub caught_up: Option<Arc<AtomicBool>>,
}

pub(super) fn start(
    config: &Config,
    base: &Foundation,
    parts: &mut Parts,
) -> anyhow::Result<ReadModels> {
    let open = |kind: ViewKind| {
        views::open(config, kind).with_context(|| format!("opening the {} view", kind.as_str()))
    };
    let dbs = ViewDbs {
        my_orders: open(ViewKind::MyOrders)?,
        catalog: open(ViewKind::Catalog)?,
        reviews: open(ViewKind::Reviews)?,
    };
    let models = vec![
        (ViewKind::MyOrders, dbs.my_orders.clone()),
        (ViewKind::Catalog, dbs.catalog.clone()),
        (ViewKind::Reviews, dbs.reviews.clone()),
    ];
    let arbiter = actix::Arbiter::new();
    for (kind, db) in &models {
        parts.dbs.push(db.clone());
        if !base.shared() {
            let (k, d, t, s) = (
                *kind,
                db.clone(),
                base.transport.clone(),
                parts.shutdown.clone(),
            );
            arbiter.spawn(async move {
                if let Err(e) = views::consume(k, d, t, s).await {
                    tracing::error!(view = k.as_str(), error = %e, "view consumer stopped");
                }
            });
        }
    }
    let mut caught_up = None;
    if base.shared() {
        arbiter.spawn(views::snapshot::keep_writing(
            config.clone(),
            parts.shutdown.clone(),
        ));
        let (t, s) = (base.transport.clone(), parts.shutdown.clone());
        let flag = Arc::new(AtomicBool::new(false));
        caught_up = Some(flag.clone());
        let fatal = parts.fatal.clone();
        arbiter.spawn(async move {
            if let Err(e) = views::consume_log(models, t, s, flag).await {
                tracing::error!(error = %format!("{e:#}"), "event log reader stopped");
                fatal.send_replace(Some(format!("the event log reader stopped: {e:#}")));
            }
        });
    }
    parts.arbiters.push(arbiter);
    Ok(ReadModels { dbs, caught_up })
}
