//! HTTP: the whole API when this process serves it (its state built from
//! the roles' handles), else only health and metrics; then a [`Running`]
//! handle of the whole process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpServer, web};
use anyhow::Context as _;

use super::Running;
use super::foundation::Foundation;
use super::parts::Parts;
use super::views::ReadModels;
use crate::api::guard::Guard;
use crate::api::{
    self, ApiState, FOOD_ANSWER_TTL, KNOWN_CUSTOMERS, KnownCustomers, KnownFoods, Limits,
};
use crate::cluster::owners::Owners;
use crate::config::{Config, Role};
use crate::net::Connections;
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
            auth: base.auth.clone(),
            customer_token_ttl: config.customer_token_ttl,
            order_timeout: config.order_timeout,
            views: views.dbs,
            topology: Topology::new(&config.namespace, base.count),
            management_url: config.management_url.clone(),
            known_customers: Arc::new(KnownCustomers::new(KNOWN_CUSTOMERS)),
            known_foods: Arc::new(KnownFoods::new(FOOD_ANSWER_TTL)),
        }),
        _ => None,
    };
    let manager_token = base.manager_token.clone();
    let draining = Arc::new(AtomicBool::new(false));
    let probes = web::Data::new(api::ops_probes(
        parts.dbs.clone(),
        base.transport.clone(),
        base.breakers.clone(),
        draining.clone(),
        caught_up,
    ));
    let guard = web::Data::new(Guard {
        auth: base.auth.clone(),
        limits: Limits::new(config),
        proxies: config.trusted_proxies.clone(),
        body_timeout: config.body_timeout,
    });
    forget_idle_limits(guard.clone().into_inner());
    let (ops, ops_addr) = match &config.ops_addr {
        Some(addr) => {
            let (handle, bound) = serve_ops(addr, probes.clone())?;
            (Some(handle), Some(bound))
        }
        None => (None, None),
    };
    let (http_addr, server) = serve(config, guard, probes, api_state.map(web::Data::new))?;
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
        ops,
        ops_addr,
        parts,
        transport: base.transport,
    })
}

/// Binds HTTP and serves: the API with `api`, else health and metrics;
/// every request through the guard, and no client address holding more
/// connections than its share.
fn serve(
    config: &Config,
    guard: web::Data<Guard>,
    probes: web::Data<api::Probes>,
    api: Option<web::Data<ApiState>>,
) -> anyhow::Result<(SocketAddr, ServerHandle)> {
    let connections = Connections::new(
        config.max_connections,
        config.max_connections_per_address,
        config.trusted_proxies.clone(),
    );
    let server = HttpServer::new(move || {
        let app = App::new()
            .app_data(probes.clone())
            .app_data(guard.clone())
            .wrap(actix_web::middleware::from_fn(api::guard::guard))
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
    .on_connect(move |io, extensions| connections.admit(io, extensions))
    // An idle connection, or one that does not send its headers, goes.
    .keep_alive(Duration::from_secs(5))
    .client_request_timeout(Duration::from_secs(5))
    .client_disconnect_timeout(Duration::from_secs(1))
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

/// The internal listener: `/health/*` and `/metrics` only, open (it is for
/// the probes and Prometheus of a private network), uncapped.
fn serve_ops(
    addr: &str,
    probes: web::Data<api::Probes>,
) -> anyhow::Result<(ServerHandle, SocketAddr)> {
    let server = HttpServer::new(move || {
        App::new()
            .app_data(probes.clone())
            .configure(api::ops_only)
            .default_service(api::fallback())
    })
    .workers(1)
    .disable_signals()
    .bind(addr)
    .with_context(|| format!("binding HEARTY_OPS_ADDR to {addr}"))?;
    let bound = server
        .addrs()
        .first()
        .copied()
        .context("HEARTY_OPS_ADDR bound to no address")?;
    tracing::info!(ops_addr = %bound, "probes and metrics listening");
    let server = server.run();
    let handle = server.handle();
    actix::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "the probes' listener stopped");
        }
    });
    Ok((handle, bound))
}

/// Forgets rate-limit counts that have refilled, once a minute.
fn forget_idle_limits(guard: Arc<Guard>) {
    actix::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            every.tick().await;
            guard.limits.forget_idle();
        }
    });
}
