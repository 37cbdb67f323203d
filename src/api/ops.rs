//! Health and metrics: served by every process, whatever its roles.

use std::sync::Arc;

use actix_web::dev::HttpServiceFactory;
use actix_web::{HttpResponse, web};
use serde_json::json;

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
}

pub fn routes() -> impl HttpServiceFactory {
    (
        super::resource("/health/live", "GET").route(web::get().to(live)),
        super::resource("/health/ready", "GET").route(web::get().to(ready)),
        super::resource("/metrics", "GET").route(web::get().to(metrics)),
    )
}

async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "live" }))
}

async fn ready(probes: web::Data<Probes>) -> HttpResponse {
    let mut storage_ok = true;
    let mut storage = Vec::new();
    for db in &probes.dbs {
        let ok = db.is_healthy().await;
        storage_ok &= ok;
        storage.push(json!({ "file": db.path().display().to_string(), "ok": ok }));
    }
    let broker_ok = probes.transport.is_ready();
    let body = json!({
        "status": if storage_ok && broker_ok { "ready" } else { "unavailable" },
        "storage": storage,
        "broker": { "kind": probes.transport.kind(), "ok": broker_ok },
        "circuitBreakers": probes
            .breakers
            .iter()
            .map(|b| (b.step.clone(), json!(b.state().as_str())))
            .collect::<serde_json::Map<_, _>>(),
    });
    if storage_ok && broker_ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "1"))
            .json(body)
    }
}

async fn metrics(probes: web::Data<Probes>) -> HttpResponse {
    let mut backlog = String::from(
        "# HELP hearty_outbox_backlog Messages committed and not yet confirmed by the broker.\n# TYPE hearty_outbox_backlog gauge\n",
    );
    for db in &probes.dbs {
        if let Ok(n) = outbox::backlog(db).await {
            let name = db
                .path()
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("db");
            backlog.push_str(&format!("hearty_outbox_backlog{{db=\"{name}\"}} {n}\n"));
        }
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(format!(
            "{}{}{}{backlog}",
            METRICS.render(),
            probes.breakers.render(),
            crate::metrics::render_step_latency()
        ))
}
