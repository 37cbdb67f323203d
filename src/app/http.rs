//! HTTP: the whole API when this process serves it (its state built from
//! the roles' handles), else only health and metrics; then a [`Running`]
//! handle of the whole process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpServer, web};
use anyhow::Context as _;

use super::Running;
use super::foundation::Foundation;
use super::parts::Parts;
use super::views::ReadModels;
use crate::api::{self, ApiState};
use crate::cluster::owners::Owners;
use crate::config::{Config, Role, Secret};
use crate::orchestrator::requests::OrchestratorProtocol;
use crate::transport::Topology;
use crate::workers::requests::WorkerProtocol;

pub(super) fn start(
    config: &Config,
    base: Foundation,
    parts: Parts,
    workers: Owners<WorkerProtocol>,
    orchestrators: Owners<OrchestratorProtocol>,
    views: Option<ReadModels>,
) -> anyhow::Result<Running> {
    let runs_api = config.roles.has(Role::Api);
    let caught_up = views.as_ref().and_then(|v| v.caught_up.clone());
    let api_state = match views {
        Some(views) if runs_api => Some(ApiState {
            orchestrators,
            workers,
            def: base.def.clone(),
            manager_token: manager_token(config),
            order_timeout: config.order_timeout,
            views: views.dbs,
            topology: Topology::new(&config.namespace, base.count),
            management_url: config.management_url.clone(),
        }),
        _ => None,
    };
    let manager_token = api_state.as_ref().map(|s| s.manager_token.clone());
    let draining = Arc::new(AtomicBool::new(false));
    let probes = web::Data::new(api::ops_probes(
        parts.dbs.clone(),
        base.transport.clone(),
        base.breakers.clone(),
        draining.clone(),
        caught_up,
    ));
    let (http_addr, server) = serve(config, probes, api_state.map(web::Data::new))?;
    tracing::info!(%http_addr, "listening");
    Ok(Running {
        http_addr,
        draining,
        order_timeout: config.order_timeout,
        drain: if runs_api {
            config.drain
        } else {
            std::time::Duration::ZERO
        },
        manager_token,
        server,
        parts,
        transport: base.transport,
        locks: base.locks,
    })
}

/// Binds HTTP and serves: the API with `api`, else health and metrics.
fn serve(
    config: &Config,
    probes: web::Data<api::Probes>,
    api: Option<web::Data<ApiState>>,
) -> anyhow::Result<(SocketAddr, ServerHandle)> {
    let server = HttpServer::new(move || {
        let app = App::new()
            .app_data(probes.clone())
            .wrap_fn(|req, srv| {
                // Work, not probes: a load balancer's health checks do not count.
                let path = req.path();
                if !path.starts_with("/health/") && path != "/metrics" {
                    crate::metrics::inc(&crate::metrics::METRICS.http_requests_total);
                }
                actix_web::dev::Service::call(srv, req)
            })
            .wrap(actix_web::middleware::Logger::new("%r %s %Dms").log_target("hearty::http"));
        let app = match &api {
            Some(state) => app.app_data(state.clone()).configure(api::routes),
            None => app.configure(api::ops_only),
        };
        app.default_service(api::fallback())
    })
    .workers(2)
    // A request in flight at the stop may be waiting for an owner (up to
    // `owners::OWNER_WAIT`, 15 s) and then for its answer (a placement: the
    // order timeout and 15 s): it gets this long to finish after the drain,
    // not cut short.
    .shutdown_timeout(45)
    .disable_signals()
    .bind(&config.http_addr)
    .with_context(|| format!("binding HTTP to {}", config.http_addr))?;
    let http_addr = server
        .addrs()
        .first()
        .copied()
        .context("HTTP bound to no address")?;
    let server = server.run();
    let handle = server.handle();
    actix::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    Ok((http_addr, handle))
}

/// The manager's token: configured, or generated and printed.
fn manager_token(config: &Config) -> Secret {
    config.manager_token.clone().unwrap_or_else(|| {
        let t = Secret::generate();
        println!(
            "Manager token (send as `Authorization: Bearer <token>`): {}",
            t.expose()
        );
        t
    })
}
