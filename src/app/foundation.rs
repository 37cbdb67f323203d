//! What every role of a process stands on, built first: the saga
//! definition, the partitions it owns (locked in its folder, a standby
//! waiting here), the orchestrator's database claimed, and the transport
//! with the partitions claimed on the broker.

use std::sync::Arc;

use anyhow::Context as _;

use crate::auth::{Authenticator, keys};
use crate::cluster::ownership::{self, Claim, FolderLocks};
use crate::config::{Config, Role, Secret};
use crate::orchestrator::store;
use crate::partition::{self, OwnerRole, Partition, PartitionCount};
use crate::saga::breaker::Breakers;
use crate::saga::definition::SagaDefinition;
use crate::storage::Db;
use crate::transport::Transport;
use crate::transport::amqp::{AmqpSettings, AmqpTransport, Scope};
use crate::transport::memory::MemoryTransport;
use crate::transport::nodes::BrokerNodes;

pub(super) struct Foundation {
    pub def: Arc<SagaDefinition>,
    pub count: PartitionCount,
    /// The partitions this process owns for each stateful role it runs.
    pub owned: Vec<Partition>,
    pub transport: Arc<dyn Transport>,
    /// Step breakers, fed by the saga actors, asked before placing.
    pub breakers: Breakers,
    /// The orchestrator's database, claimed, when this process runs it.
    pub orchestrator_db: Option<Db>,
    /// The data folder's locks of the owned partitions, released last.
    pub locks: FolderLocks,
    /// Verifies callers (at the API, and again at the owners).
    pub auth: Arc<Authenticator>,
    /// The manager's static token, when there is one.
    pub manager_token: Option<Secret>,
}

impl Foundation {
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        crate::failpoint::configure(&config.failpoints).map_err(|e| anyhow::anyhow!(e))?;
        refuse_published(config)?;
        let def = Arc::new(super::load_definition(&config.saga_file).with_context(|| {
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
        let claims = claims_of(config, &owned);
        let home = ownership::home_of(&config.data_dir)?;
        let locks = ownership::lock_folder(&config.data_dir, &claims).await?;
        // One orchestrator per orchestrator.db: claimed before anything else
        // starts, so a second process on the same data folder refuses to
        // start without having touched a queue (sagas must have one actor).
        let orchestrator_db = if config.roles.has(Role::Orchestrator) {
            Some(
                Db::open_owned(&config.db_path("orchestrator"), &store::schema())
                    .context("opening the orchestrator database")?,
            )
        } else {
            None
        };
        let manager_token = manager_token(config);
        let auth = Arc::new(Authenticator::new(
            &keys::deployment_key(config)?,
            keys::external(config).await?,
            manager_token.clone(),
        )?);
        let transport = connect(config, count, &home, &claims).await?;
        if !claims.is_empty() {
            tracing::info!(partitions = %partition::describe(&owned), "owning partitions");
        }
        tracing::info!(transport = transport.kind(), namespace = %config.namespace, roles = %config.roles, "starting");
        Ok(Foundation {
            breakers: Breakers::for_definition(&def),
            def,
            count,
            owned,
            transport,
            orchestrator_db,
            locks,
            auth,
            manager_token,
        })
    }

    /// Whether other processes share the broker (and ask this one's owners
    /// over it), as opposed to one process owning everything in-process.
    pub fn shared(&self) -> bool {
        self.transport.requests().is_some()
    }
}

/// Refuses to start with a manager token too short to be a secret, a
/// secret the repository published (a working secret is never shipped), or
/// with RabbitMQ's `guest` away from this machine. No error repeats a
/// secret.
fn refuse_published(config: &Config) -> anyhow::Result<()> {
    if config
        .manager_token
        .as_ref()
        .is_some_and(|t| t.expose().chars().count() < crate::config::MIN_MANAGER_TOKEN_LEN)
    {
        anyhow::bail!(
            "HEARTY_MANAGER_TOKEN must be at least {} characters (`openssl rand -hex 32`)",
            crate::config::MIN_MANAGER_TOKEN_LEN
        );
    }
    for (name, secret) in [
        ("HEARTY_MANAGER_TOKEN", config.manager_token.as_ref()),
        ("HEARTY_AUTH_KEY", config.auth_key.as_ref()),
    ] {
        if secret.is_some_and(|s| crate::config::is_published(s.expose())) {
            anyhow::bail!(
                "{name} is a value published with Hearty's repository: choose a secret of your own \
                 (`openssl rand -base64 48`)"
            );
        }
    }
    if let Some(url) = &config.amqp_url {
        let nodes = BrokerNodes::parse(url).map_err(|e| anyhow::anyhow!("HEARTY_AMQP_URL {e}"))?;
        if nodes.uses_guest_remotely() {
            anyhow::bail!(
                "HEARTY_AMQP_URL logs in as RabbitMQ's `guest` on another machine: give each role \
                 its own broker user (deploy/README.md)"
            );
        }
    }
    Ok(())
}

/// The manager's static token: configured; without a broker (one process,
/// zero-setup) generated and printed; with one, none (staff sign in with
/// tokens from `hearty token`, which every process verifies alike).
fn manager_token(config: &Config) -> Option<Secret> {
    if config.manager_token.is_some() || config.amqp_url.is_some() {
        return config.manager_token.clone();
    }
    let t = Secret::generate();
    println!(
        "Manager token (send as `Authorization: Bearer <token>`): {}",
        t.expose()
    );
    Some(t)
}

/// The transport: RabbitMQ with the namespace's partition count, this
/// folder's claims and the leases (a standby waits here) settled before any
/// consumer starts; or the in-process one.
async fn connect(
    config: &Config,
    count: PartitionCount,
    home: &str,
    claims: &[Claim],
) -> anyhow::Result<Arc<dyn Transport>> {
    let Some(url) = &config.amqp_url else {
        return Ok(Arc::new(MemoryTransport::new(count)));
    };
    let nodes = BrokerNodes::parse(url).map_err(|e| anyhow::anyhow!("HEARTY_AMQP_URL {e}"))?;
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
        scope: scope_of(config),
    })
    .await
    .with_context(|| format!("connecting to RabbitMQ at {nodes}"))?;
    ownership::claim_on_broker(&t, t.topology(), count, home, claims).await?;
    Ok(Arc::new(t))
}

/// What a process declares on the broker: the orchestrator the shared
/// exchanges and streams and its queues, a worker its own queues, a process
/// of the API or read models only nothing (its broker user may configure
/// nothing).
fn scope_of(config: &Config) -> Scope {
    let roles = &config.roles;
    let orchestrator = roles.has(Role::Orchestrator);
    Scope {
        shared: orchestrator,
        workers: roles.workers().collect(),
        replies: orchestrator,
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
