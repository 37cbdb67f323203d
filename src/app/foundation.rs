//! What every role of a process stands on, built first: the saga
//! definition, the partitions it owns, the transport with the partitions
//! claimed on the broker (a standby waits here for their leases) and the
//! takeover's epoch, and the orchestrator's database claimed and fenced
//! with that epoch.

use std::sync::Arc;

use anyhow::Context as _;

use crate::auth::{Authenticator, keys};
use crate::cluster::ownership::{self, Claim};
use crate::config::{Config, Role, Secret};
use crate::orchestrator::store;
use crate::partition::{self, Epoch, OwnerRole, Partition, PartitionCount};
use crate::saga::breaker::Breakers;
use crate::saga::definition::SagaDefinition;
use crate::storage::{Claimant, Db, StorageError};
use crate::transport::Transport;
use crate::transport::amqp::{AmqpSettings, AmqpTransport, Retention, Scope};
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
    /// This process's fencing token for its partitions, from the registry
    /// (`None`: no broker, or no partitions to own).
    pub epoch: Option<Epoch>,
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
        if config.log_max_bytes < config.log_segment_bytes.saturating_mul(2) {
            anyhow::bail!(
                "HEARTY_LOG_MAX_BYTES ({}) must be at least twice HEARTY_LOG_SEGMENT_BYTES ({}): \
                 retention deletes whole segments, so a log of one segment keeps nothing \
                 between two",
                config.log_max_bytes,
                config.log_segment_bytes
            );
        }
        let claims = claims_of(config, &owned);
        let home = ownership::home_of(&config.data_dir)?;
        let manager_token = manager_token(config);
        let auth = Arc::new(Authenticator::new(
            &keys::deployment_key(config)?,
            keys::external(config).await?,
            manager_token.clone(),
        )?);
        // The partitions' leases first: a second process for an owned
        // partition waits here, as a standby, before it opens a database.
        // Then the takeover's epoch, which fences every earlier owner.
        let (transport, epoch) = connect(config, count, &home, &claims).await?;
        if !claims.is_empty() {
            tracing::info!(partitions = %partition::describe(&owned), "owning partitions");
        }
        // One orchestrator per orchestrator.db (sagas must have one actor).
        let orchestrator_db = if config.roles.has(Role::Orchestrator) {
            Some(
                own_db(
                    config,
                    &owned,
                    epoch,
                    OwnerRole::Orchestrator,
                    &store::schema(),
                )
                .await
                .context("opening the orchestrator database")?,
            )
        } else {
            None
        };
        tracing::info!(transport = transport.kind(), namespace = %config.namespace, roles = %config.roles, "starting");
        Ok(Foundation {
            breakers: Breakers::for_definition(&def, count),
            def,
            count,
            owned,
            transport,
            orchestrator_db,
            epoch,
            auth,
            manager_token,
        })
    }

    /// Whether other processes share the broker (and ask this one's owners
    /// over it), as opposed to one process owning everything in-process.
    pub fn shared(&self) -> bool {
        self.transport.requests().is_some()
    }

    /// Opens the database of a stateful `role`, claimed and fenced (see
    /// [`own_db`]).
    pub async fn own_db(
        &self,
        config: &Config,
        role: OwnerRole,
        schema: &str,
    ) -> anyhow::Result<Db> {
        own_db(config, &self.owned, self.epoch, role, schema).await
    }
}

/// A previous owner hung in the middle of a commit holds the file's write
/// lock: its commit ends when it wakes (it was the owner's, made before this
/// takeover), and the takeover follows it. (SQLite itself waits 10 s per
/// try.)
async fn wait_for_write_lock(path: &std::path::Path) {
    tracing::warn!(
        database = %path.display(),
        "standby: a previous owner holds the database's write lock (it hangs mid-commit); \
         waiting to take over"
    );
    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
}

/// How long (polls of 500 ms) a process holding leases waits for a database
/// file whose holder claimed more partitions than it holds.
const SUBSET_STANDBY_POLLS: u32 = 120;

/// Opens the database of a stateful `role` as its one owner: claims its
/// file (a second process of another partition set on this folder refuses
/// to start; a previous owner of these partitions that lost their leases is
/// not waited for), then records this process's epoch in it, so that every
/// later commit of an earlier owner is refused.
async fn own_db(
    config: &Config,
    owned: &[Partition],
    epoch: Option<Epoch>,
    role: OwnerRole,
    schema: &str,
) -> anyhow::Result<Db> {
    let partitions: Vec<u16> = owned.iter().map(|p| p.index()).collect();
    let claimant = Claimant {
        partitions: &partitions,
        leased_in: epoch.map(|_| config.namespace.as_str()),
    };
    let mut polls = 0u32;
    let db = loop {
        match Db::open_owned(&config.db_path(role.as_str()), schema, claimant) {
            Ok(db) => break db,
            // Opening writes the schema: it waits for the lock too.
            Err(e) if epoch.is_some() && e.is_busy() => {
                wait_for_write_lock(&config.db_path(role.as_str())).await;
            }
            // Without a broker there is no lease to wait for: a second
            // process of this folder waits for the file as a standby; so
            // does one whose partitions overlap the holder's without
            // covering them (the holder hangs: one of them gets the file
            // once it is gone, and the other is then refused).
            Err(StorageError::Claimed {
                pid, wait: true, ..
            }) => {
                // Holding leases, it does not wait for good: a hung holder
                // may stay hung, and a standby of all its partitions needs
                // these leases (a supervisor starts this one again).
                if epoch.is_some() && polls >= SUBSET_STANDBY_POLLS {
                    anyhow::bail!(
                        "{} is still owned by pid {pid}, whose partitions this process holds only \
                         some of; giving its leases up (start it with the owner's partitions to \
                         take over from a hung owner)",
                        config.db_path(role.as_str()).display()
                    );
                }
                if polls.is_multiple_of(20) {
                    tracing::warn!(
                        database = %config.db_path(role.as_str()).display(),
                        owner_pid = %pid,
                        "standby: another process of this data folder owns it; waiting to take over"
                    );
                }
                polls += 1;
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    if let Some(epoch) = epoch {
        let owner = format!("{role} pid {}", std::process::id());
        loop {
            match db.take_over(epoch, &partitions, &owner).await {
                Ok(()) => break,
                Err(e) if e.is_busy() => wait_for_write_lock(&config.db_path(role.as_str())).await,
                Err(e) => {
                    return Err(e).with_context(|| format!("taking over the {role} database"));
                }
            }
        }
    }
    Ok(db)
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
) -> anyhow::Result<(Arc<dyn Transport>, Option<Epoch>)> {
    let Some(url) = &config.amqp_url else {
        return Ok((Arc::new(MemoryTransport::new(count)), None));
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
        log_retention: Retention {
            max_age: Some(config.log_max_age),
            max_bytes: config.log_max_bytes,
            segment_bytes: config.log_segment_bytes,
        },
    })
    .await
    .with_context(|| format!("connecting to RabbitMQ at {nodes}"))?;
    let epoch = ownership::claim_on_broker(&t, t.topology(), count, home, claims).await?;
    Ok((Arc::new(t), epoch))
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
