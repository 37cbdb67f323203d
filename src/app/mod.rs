//! Wires the roles of one process. [`start`] reads as the list of what a
//! process is: its foundation (definition, partitions, the transport and
//! its claims, the takeover's epoch), then each role it runs — workers, read
//! models, orchestrator — each started by its own function that returns a
//! handle, then HTTP (zero2prod's `Application::build`: a process with
//! several roles is the sum of per-role builders). Must run inside an
//! actix `System`.

mod foundation;
mod http;
mod orchestrator;
mod parts;
mod running;
mod views;
mod workers;

use std::path::Path;

use crate::config::{Config, Role};
use crate::saga::definition::SagaDefinition;
pub use running::Running;

/// The saga definition shipped with the binary, used when the configured
/// file is the default path and it does not exist (running outside the
/// repository).
const BUILTIN_SAGA: &str = include_str!("../../sagas/order_fulfilment.toml");

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

/// Starts every role of `config` and returns once HTTP listens.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let base = foundation::Foundation::build(&config).await?;
    let mut parts = parts::Parts::new();
    let workers = workers::start(&config, &base, &mut parts).await?;
    let views = if config.roles.has(Role::Api) || config.roles.has(Role::Views) {
        if let Some(log) = base.transport.event_log() {
            crate::views::snapshot::prepare(&config, log).await?;
        }
        Some(views::start(&config, &base, &mut parts)?)
    } else {
        None
    };
    let orchestrators = orchestrator::start(&config, &base, &mut parts).await?;
    http::start(&config, base, parts, workers, orchestrators, views)
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
    match fenced {
        None => {
            running.drain().await;
            running.stop().await;
            Ok(())
        }
        Some(why) => {
            running.stop_fenced().await;
            Err(anyhow::anyhow!("stopped: {why}"))
        }
    }
}
