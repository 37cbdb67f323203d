//! Wires the roles of one process: transport, databases, actors, consumers,
//! outbox relays and the HTTP server. Must run inside an actix `System`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use actix::prelude::*;
use actix_web::{App, HttpServer, web};
use anyhow::Context as _;

use crate::api::{self, ApiState};
use crate::config::{Config, Role, Secret};
use crate::domain::{ViewKind, WorkerKind};
use crate::orchestrator::store::{self, SagaStore};
use crate::orchestrator::{Orchestrator, Recover, consume_replies};
use crate::ownership::Claim;
use crate::partition::{OwnerRole, Partition};
use crate::saga::breaker::Breakers;
use crate::saga::definition::SagaDefinition;
use crate::shutdown::{Shutdown, ShutdownTrigger};
use crate::storage::{Db, outbox};
use crate::transport::Transport;
use crate::transport::amqp::{AmqpSettings, AmqpTransport};
use crate::transport::memory::MemoryTransport;
use crate::transport::nodes::BrokerNodes;
use crate::views;
use crate::workers::{self, Faults, Knobs, WorkerActor};

/// The saga definition shipped with the binary, used when the configured
/// file is the default path and it does not exist (running outside the
/// repository).
const BUILTIN_SAGA: &str = include_str!("../sagas/order_fulfilment.toml");

/// Loads the saga definition; a bad file is a start-up error naming it.
pub fn load_definition(path: &Path) -> anyhow::Result<SagaDefinition> {
    let default = Path::new("sagas/order_fulfilment.toml");
    if path == default && !path.exists() {
        tracing::info!(
            "{} not found; using the built-in order saga",
            path.display()
        );
        return SagaDefinition::parse(BUILTIN_SAGA)
            .map_err(|e| anyhow::anyhow!("built-in saga definition: {e}"));
    }
    Ok(SagaDefinition::load(path)?)
}

/// A running process.
pub struct Running {
    /// Where HTTP listens (the real port when the configured one was 0).
    pub http_addr: SocketAddr,
    /// Readiness fails while set (see [`Running::drain`]).
    draining: Arc<std::sync::atomic::AtomicBool>,
    /// How long [`Running::drain`] keeps serving: the configured drain for
    /// a process serving the API, zero otherwise (an owner hands its
    /// partitions over by stopping promptly).
    drain: std::time::Duration,
    /// How long placing an order may wait for its payment (an owner
    /// handing over lets such a request finish).
    order_timeout: std::time::Duration,
    /// The manager's token (configured or generated).
    pub manager_token: Option<Secret>,
    server: actix_web::dev::ServerHandle,
    trigger: ShutdownTrigger,
    relay_trigger: ShutdownTrigger,
    relays: Vec<tokio::sync::oneshot::Receiver<()>>,
    /// The threads of workers, views and relays.
    arbiters: Vec<actix::Arbiter>,
    transport: Arc<dyn Transport>,
    dbs: Vec<Db>,
    /// The data folder's locks of the owned partitions, released last.
    locks: crate::ownership::FolderLocks,
}

impl Running {
    /// The transport of this process (tests publish raw messages with it).
    pub fn transport(&self) -> Arc<dyn Transport> {
        self.transport.clone()
    }

    /// The first half of a graceful stop of a process serving the API:
    /// `/health/ready` answers 503 from now on while every request is still
    /// served, for the drain period, so a load balancer (its health checks,
    /// or Kubernetes' endpoints) moves the traffic away before the process
    /// stops listening. Then [`Running::stop`].
    pub async fn drain(&self) {
        if self.drain.is_zero() {
            return;
        }
        self.draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
        tracing::info!(drain = ?self.drain, "draining: not ready any more, still serving");
        tokio::time::sleep(self.drain).await;
    }

    /// Graceful shutdown: stop taking requests and deliveries, let the
    /// work in flight finish (bounded), flush the outboxes, close the broker
    /// connection. Unacked deliveries go back to their queues.
    pub async fn stop(self) {
        if let Some(leases) = self.transport.leases() {
            // Partition owners: requests for their partitions wait for the
            // next owner from now on, and the ones queued get answered.
            // Placing an order waits for its payment (HEARTY_ORDER_TIMEOUT):
            // its answer gets that long, and more.
            let within = self.order_timeout + std::time::Duration::from_secs(10);
            leases
                .stop_taking_requests(within, &|| crate::rpc::requests_in_flight() > 0)
                .await;
        }
        self.trigger.trigger();
        self.server.stop(true).await;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while crate::metrics::in_flight() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        self.relay_trigger.trigger();
        for relay in self.relays {
            let _ = relay.await;
        }
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
        for db in &self.dbs {
            db.close();
        }
        // Closing the connection gives the leases up at once: a standby
        // takes the partitions over without waiting for a timeout.
        self.transport.close().await;
        drop(self.transport);
        drop(self.locks);
    }

    /// Resolves when another process has taken this one's partitions (it
    /// was cut off from the broker meanwhile): it must stop acting.
    pub async fn fenced(&self) -> String {
        match self.transport.leases() {
            Some(leases) => leases.fenced().await,
            None => std::future::pending().await,
        }
    }
}

/// The (role, partition) pairs a process owns: every owned partition of
/// each stateful role it runs.
fn claims_of(config: &Config, owned: &[Partition]) -> Vec<Claim> {
    let roles = &config.roles;
    let mut owners: Vec<OwnerRole> = Vec::new();
    if roles.has(Role::Orchestrator) {
        owners.push(OwnerRole::Orchestrator);
    }
    owners.extend(roles.workers().map(OwnerRole::Worker));
    owners
        .into_iter()
        .flat_map(|role| {
            owned.iter().map(move |p| Claim {
                role,
                partition: *p,
            })
        })
        .collect()
}

/// Starts every role of `config` and returns once HTTP listens.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    crate::failpoint::configure(&config.failpoints).map_err(|e| anyhow::anyhow!(e))?;
    let roles = &config.roles;
    let runs_api = roles.has(Role::Api);
    let runs_orchestrator = roles.has(Role::Orchestrator);
    let def =
        Arc::new(load_definition(&config.saga_file).with_context(|| {
            format!("loading the saga definition {}", config.saga_file.display())
        })?);

    let count = config.partition_count;
    let owned = config
        .partitions
        .resolve(count)
        .map_err(|e| anyhow::anyhow!(e))?;
    if config.amqp_url.is_none() && owned.len() != usize::from(count.get()) {
        anyhow::bail!(
            "without a broker (HEARTY_AMQP_URL unset) one process owns every partition: \
             HEARTY_PARTITIONS must be `all`"
        );
    }
    // Partitions first: a second process for an owned partition of this
    // folder waits here, as a standby, before it touches anything.
    let claims = claims_of(&config, &owned);
    let home = crate::ownership::home_of(&config.data_dir)?;
    let locks = crate::ownership::lock_folder(&config.data_dir, &claims).await?;

    // One orchestrator per orchestrator.db: claimed before anything else
    // starts, so a second process on the same data folder refuses to start
    // without having touched a queue (sagas must have one actor).
    let orchestrator_db = if runs_orchestrator {
        Some(
            Db::open_owned(&config.db_path("orchestrator"), store::SCHEMA)
                .context("opening the orchestrator database")?,
        )
    } else {
        None
    };

    let transport: Arc<dyn Transport> = match &config.amqp_url {
        Some(url) => {
            let nodes =
                BrokerNodes::parse(url).map_err(|e| anyhow::anyhow!("HEARTY_AMQP_URL {e}"))?;
            let t = AmqpTransport::connect(&AmqpSettings {
                // Replicated queues by default on a cluster.
                quorum_queues: config.quorum_queues.unwrap_or(nodes.is_cluster()),
                adopt_queue_type: config.quorum_queues.is_none(),
                nodes: nodes.clone(),
                namespace: config.namespace.clone(),
                prefetch: config.prefetch,
                connection_name: format!("hearty {} (pid {})", config.roles, std::process::id()),
                connect_wait: config.broker_wait,
                partitions: count,
            })
            .await
            .with_context(|| format!("connecting to RabbitMQ at {nodes}"))?;
            // The namespace's partition count, this folder's claims, then the
            // leases (a standby waits here): before any consumer starts.
            crate::ownership::claim_on_broker(&t, t.topology(), count, &home, &claims).await?;
            Arc::new(t)
        }
        None => Arc::new(MemoryTransport::new(count)),
    };
    let shared = transport.requests().is_some();
    if !claims.is_empty() {
        tracing::info!(partitions = %crate::partition::describe(&owned), "owning partitions");
    }
    tracing::info!(transport = transport.kind(), namespace = %config.namespace, roles = %config.roles, "starting");

    let (trigger, shutdown) = ShutdownTrigger::new();
    // Relays stop last, after the in-flight work committed its messages.
    let (relay_trigger, _) = ShutdownTrigger::new();
    let mut relays = Vec::new();
    let mut arbiters = Vec::new();
    let breakers = Breakers::for_definition(&def);
    let knobs = Knobs::from_config(&config);
    let mut dbs = Vec::new();

    // Worker databases: only the local workers open theirs. Everyone else
    // (the API) asks the owners: directly here, over RabbitMQ elsewhere.
    let mut local_workers = std::collections::HashMap::new();
    let owned_set: std::collections::BTreeSet<u16> = owned.iter().map(|p| p.index()).collect();
    let failures = crate::config::parse_failures(&config.fail_compensations)
        .map_err(|e| anyhow::anyhow!(e))?;
    for kind in WorkerKind::ALL {
        let local = roles.has(Role::Worker(kind));
        if !local {
            continue;
        }
        let logic = workers::logic_for(kind, knobs);
        let db = Db::open(
            &config.db_path(kind.as_str()),
            &workers::schema_of(logic.as_ref()),
        )
        .with_context(|| format!("opening the {kind} database"))?;
        if local {
            let faults = Faults {
                latency: config.latency_of(kind),
                compensation_failures: failures.iter().find(|(k, _)| *k == kind).map(|(_, c)| *c),
                duplicate_replies: config.duplicate_replies,
            };
            // Each worker kind runs on its own arbiter (thread): its actor,
            // its consumer and its outbox relay never compete with the
            // orchestrator's thread.
            let arbiter = actix::Arbiter::new();
            let worker_db = db.clone();
            let actor = actix::Supervisor::start_in_arbiter(&arbiter.handle(), move |_| {
                WorkerActor::new(logic, worker_db, faults)
            });
            relays.push(spawn_relay(
                &arbiter,
                db.clone(),
                transport.clone(),
                relay_trigger.subscribe(),
            ));
            for &p in &owned {
                let (t, s, a) = (transport.clone(), shutdown.clone(), actor.clone());
                arbiter.spawn(async move {
                    if let Err(e) = workers::consume(kind, p, a, t, s).await {
                        tracing::error!(worker = %kind, partition = %p, error = %e, "consumer stopped");
                    }
                });
            }
            arbiters.push(arbiter);
        }
        dbs.push(db.clone());
        let worker = crate::rpc::LocalWorker {
            db,
            owned: owned_set.clone(),
        };
        if shared {
            // Requests for this worker's partitions (from API processes).
            let arbiter = actix::Arbiter::new();
            for &p in &owned {
                let (w, a, s) = (worker.clone(), transport.clone(), shutdown.clone());
                arbiter.spawn(async move {
                    if let Err(e) = crate::rpc::serve(kind, p, w, count, a, s).await {
                        tracing::error!(worker = %kind, partition = %p, error = %e, "request server stopped");
                    }
                });
            }
            arbiters.push(arbiter);
        }
        local_workers.insert(kind, worker);
    }
    let owners = crate::rpc::Owners::new(count, local_workers, transport.clone());

    // Read models: every process serving the API keeps its own, fed by the
    // events (over RabbitMQ, it reads the event log once for all of them from
    // their own offsets; in one process, from the in-process queues), and
    // answers from them.
    let mut view_dbs = std::collections::HashMap::new();
    // Over RabbitMQ, set once the read models caught up with the event log.
    let mut caught_up = None;
    if runs_api || roles.has(Role::Views) {
        let arbiter = actix::Arbiter::new();
        let mut models = Vec::new();
        for kind in ViewKind::ALL {
            let db = views::open(&config, kind)
                .with_context(|| format!("opening the {} view", kind.as_str()))?;
            if !shared {
                let (d, t, s) = (db.clone(), transport.clone(), shutdown.clone());
                arbiter.spawn(async move {
                    if let Err(e) = views::consume(kind, d, t, s).await {
                        tracing::error!(view = kind.as_str(), error = %e, "view consumer stopped");
                    }
                });
            }
            models.push((kind, db.clone()));
            dbs.push(db.clone());
            view_dbs.insert(kind, db);
        }
        if shared {
            let (t, s) = (transport.clone(), shutdown.clone());
            let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
            caught_up = Some(flag.clone());
            arbiter.spawn(async move {
                if let Err(e) = views::consume_log(models, t, s, flag).await {
                    tracing::error!(error = %e, "event log reader stopped");
                }
            });
        }
        arbiters.push(arbiter);
    }

    let topology = crate::transport::Topology::new(&config.namespace, count);
    let mut local_orchestrator = None;
    if let Some(db) = orchestrator_db {
        dbs.push(db.clone());
        let sagas = SagaStore::new(
            db.clone(),
            def.clone(),
            crate::partition::Owned::new(count, &owned),
        );
        sagas
            .migrate()
            .await
            .context("upgrading the orchestrator database")?;
        let orchestrator = Orchestrator::new(
            def.clone(),
            sagas.clone(),
            breakers.clone(),
            config.passivate_after,
        )
        .start();
        let relay = actix::Arbiter::new();
        relays.push(spawn_relay(
            &relay,
            db.clone(),
            transport.clone(),
            relay_trigger.subscribe(),
        ));
        arbiters.push(relay);
        let recovered = orchestrator
            .send(Recover)
            .await
            .context("recovering sagas")??;
        if recovered > 0 {
            tracing::info!(recovered, "sagas recovered");
        }
        for &p in &owned {
            let (o, t, s) = (orchestrator.clone(), transport.clone(), shutdown.clone());
            actix::spawn(async move {
                if let Err(e) = consume_replies(p, o, t, s).await {
                    tracing::error!(partition = %p, error = %e, "replies consumer stopped");
                }
            });
        }
        let local = Arc::new(api::service::Local {
            orchestrator,
            sagas,
            def: def.clone(),
            breakers: breakers.clone(),
            transport: transport.clone(),
            topology: topology.clone(),
            management_url: config.management_url.clone(),
            order_timeout: config.order_timeout,
        });
        let indexes: Vec<u16> = owned.iter().map(|p| p.index()).collect();
        if shared {
            // Requests for this orchestrator's partitions (from API processes).
            for &p in &owned {
                let (l, o, a, s) = (
                    local.clone(),
                    indexes.clone(),
                    transport.clone(),
                    shutdown.clone(),
                );
                actix::spawn(async move {
                    if let Err(e) = api::service::serve(p, l, o, a, s).await {
                        tracing::error!(partition = %p, error = %e, "request server stopped");
                    }
                });
            }
        }
        local_orchestrator = Some((local, indexes));
    }

    let mut api_state = None;
    if runs_api {
        let token = config.manager_token.clone().unwrap_or_else(|| {
            let t = Secret::generate();
            println!(
                "Manager token (send as `Authorization: Bearer <token>`): {}",
                t.expose()
            );
            t
        });
        api_state = Some(ApiState {
            orchestrators: api::service::Orchestrators::new(
                count,
                local_orchestrator,
                transport.clone(),
                config.order_timeout,
            ),
            owners,
            manager_token: token,
            order_timeout: config.order_timeout,
            topology,
            management_url: config.management_url.clone(),
            views: api::ViewDbs {
                my_orders: view_dbs[&ViewKind::MyOrders].clone(),
                catalog: view_dbs[&ViewKind::Catalog].clone(),
                reviews: view_dbs[&ViewKind::Reviews].clone(),
            },
        });
    }

    let manager_token = api_state.as_ref().map(|s| s.manager_token.clone());
    let api_data = api_state.map(web::Data::new);
    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probes = web::Data::new(api::ops_probes(
        dbs.clone(),
        transport.clone(),
        breakers.clone(),
        draining.clone(),
        caught_up,
    ));
    let server = HttpServer::new(move || {
        let mut app = App::new()
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
        if let Some(state) = &api_data {
            app = app.app_data(state.clone()).configure(api::routes);
        } else {
            app = app.configure(api::ops_only);
        }
        app.default_service(api::fallback())
    })
    .workers(2)
    // A request in flight at the stop may be waiting for an owner (up to
    // `rpc::OWNER_WAIT`, 15 s) and then for its answer (a placement: the
    // order timeout and 15 s): it gets this long to finish after the
    // drain, not cut short.
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
        server: handle,
        trigger,
        relay_trigger,
        relays,
        arbiters,
        transport,
        dbs,
        locks,
    })
}

/// Runs the outbox relays (one per lane) on `arbiter`; the receiver
/// resolves when both have ended.
fn spawn_relay(
    arbiter: &actix::Arbiter,
    db: Db,
    transport: Arc<dyn Transport>,
    shutdown: Shutdown,
) -> tokio::sync::oneshot::Receiver<()> {
    let (done, ended) = tokio::sync::oneshot::channel();
    arbiter.spawn(async move {
        let lanes = outbox::Lane::ALL
            .map(|lane| outbox::run_relay(db.clone(), transport.clone(), shutdown.clone(), lane));
        futures_util::future::join_all(lanes).await;
        let _ = done.send(());
    });
    ended
}

/// Runs until `shutdown` resolves (SIGTERM/Ctrl-C in the binary).
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut shutdown = std::pin::pin!(shutdown);
    // A standby waits inside `start` for its partitions: a stop signal
    // ends the wait too.
    let running = tokio::select! {
        running = start(config) => running?,
        () = &mut shutdown => {
            tracing::info!("stopped before start-up finished");
            return Ok(());
        }
    };
    println!("Hearty listening on http://{}", running.http_addr);
    let fenced = tokio::select! {
        () = &mut shutdown => None,
        why = running.fenced() => Some(why),
    };
    tracing::info!("shutting down");
    if fenced.is_none() {
        running.drain().await;
    }
    running.stop().await;
    match fenced {
        None => Ok(()),
        Some(why) => Err(anyhow::anyhow!("stopped: fenced off its partitions: {why}")),
    }
}
