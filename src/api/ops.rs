//! Health and metrics: served by every process, whatever its roles.

use std::sync::Arc;

use super::contract::responses::{BrokerHealth, Live, Ready, StorageHealth};
use actix_web::dev::HttpServiceFactory;
use actix_web::{HttpResponse, web};

use crate::metrics::METRICS;
use crate::saga::breaker::Breakers;
use crate::storage::{Db, outbox};
use crate::transport::Transport;

/// What readiness checks: every database this process uses and the transport.
pub struct Probes {
    pub dbs: Vec<Db>,
    pub transport: Arc<dyn Transport>,
    /// Shown in the readiness detail and the metrics.
    pub breakers: Breakers,
    /// Set when the process is stopping: readiness fails at once, so a load
    /// balancer moves away while requests are still served (the drain).
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// The read models' catch-up with the event log, when this process
    /// reads it: not ready before, so a new replica never answers from
    /// read models that miss what was logged before it started.
    pub caught_up: Option<Arc<std::sync::atomic::AtomicBool>>,
}

pub fn routes() -> impl HttpServiceFactory {
    (
        super::resource("/health/live", "GET").route(web::get().to(live)),
        super::resource("/health/ready", "GET").route(web::get().to(ready)),
        super::resource("/metrics", "GET").route(web::get().to(metrics)),
    )
}

/// The process is alive.
#[utoipa::path(
    get,
    path = "/health/live",
    operation_id = "live",
    tag = "operations",
    responses((status = 200, description = "alive", body = Live))
)]
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(Live {
        status: "live".into(),
    })
}

/// Ready when every database answers and the broker is usable.
#[utoipa::path(
    get,
    path = "/health/ready",
    operation_id = "ready",
    tag = "operations",
    responses(
        (status = 200, description = "ready", body = Ready),
        (status = 503, description = "not ready (same body; Retry-After)", body = Ready),
    )
)]
pub async fn ready(probes: web::Data<Probes>) -> HttpResponse {
    let mut storage_ok = true;
    let mut storage = Vec::new();
    for db in &probes.dbs {
        let ok = db.is_healthy().await;
        storage_ok &= ok;
        storage.push(StorageHealth {
            database: db_name(db).to_owned(),
            ok,
        });
    }
    let broker_ok = probes.transport.is_ready();
    let draining = probes.draining.load(std::sync::atomic::Ordering::SeqCst);
    let current = probes
        .caught_up
        .as_ref()
        .is_none_or(|c| c.load(std::sync::atomic::Ordering::SeqCst));
    let ok = storage_ok && broker_ok && current && !draining;
    let body = Ready {
        status: if draining {
            "draining"
        } else if ok {
            "ready"
        } else if storage_ok && broker_ok {
            "catching_up"
        } else {
            "unavailable"
        }
        .into(),
        storage,
        broker: BrokerHealth {
            kind: probes.transport.kind().into(),
            ok: broker_ok,
        },
        circuit_breakers: probes
            .breakers
            .worst()
            .into_iter()
            .map(|(step, state)| (step, state.as_str().to_owned()))
            .collect(),
    };
    if ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "1"))
            .json(body)
    }
}

/// A database's name: its file's stem (`orchestrator.p0`).
fn db_name(db: &crate::storage::Db) -> &str {
    db.path()
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("db")
}

/// Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain"))
)]
pub async fn metrics(probes: web::Data<Probes>) -> HttpResponse {
    for db in &probes.dbs {
        if let Ok(n) = outbox::backlog(db).await {
            METRICS
                .outbox_backlog
                .with_label_values(&[db_name(db)])
                .set(n);
        }
    }
    for (step, state) in probes.breakers.worst() {
        METRICS
            .breaker_state
            .with_label_values(&[&step])
            .set(i64::from(state.gauge()));
        // Present from the start, at 0, before the breaker ever opens.
        METRICS.breaker_opened.with_label_values(&[&step]);
    }
    for b in probes.breakers.iter() {
        METRICS
            .breaker_partition_state
            .with_label_values(&[&b.step, &b.partition.to_string()])
            .set(i64::from(b.state().gauge()));
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(crate::metrics::render())
}
