//! Hearty: an actor-based saga orchestrator for a breakfast-delivery business.
//!
//! An order runs the saga pay → kitchen → delivery → coupon. One orchestrator
//! actor per order drives it over a message transport (RabbitMQ, or
//! in-process) to worker actors, each owning its own SQLite database. A
//! kitchen manager can cancel an order; the saga then compensates what
//! already happened.
//!
//! # Layout
//!
//! - [`domain`]: identifiers, money, quantities, status vocabularies.
//! - [`saga`]: the saga definition (TOML in `sagas/`) and the pure state
//!   machine `(saga, event) -> (saga', commands)`.
//! - [`messages`]: the wire contract between orchestrator and workers.
//! - [`transport`]: one trait, RabbitMQ and in-process implementations.
//! - [`storage`]: SQLite (one writer thread per file), inbox and outbox.
//! - [`orchestrator`]: the saga actors, their registry and their store.
//! - [`workers`]: the pay, kitchen, delivery and coupon actors.
//! - [`api`]: the REST endpoints (actix-web).
//! - [`app`]: wires the roles of one process together; [`config`] its settings.

pub(crate) mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod domain;
pub(crate) mod events;
pub(crate) mod failpoint;
pub mod messages;
pub(crate) mod metrics;
pub(crate) mod orchestrator;
pub mod ownership;
pub mod partition;
pub(crate) mod rpc;
pub mod saga;
pub(crate) mod shutdown;
pub mod storage;
pub mod transport;
pub mod views;
pub(crate) mod workers;

/// The text of a caught panic, for logs and errors.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}
