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
//! The vocabulary, used by everything above it:
//! - [`domain`]: identifiers, money, quantities, status vocabularies, time.
//! - [`saga`]: the saga definition (TOML in `sagas/`), the pure state
//!   machine `(saga, event) -> (saga', commands)`, the step breakers.
//! - [`messages`]: the wire contract between orchestrator and workers;
//!   [`events`]: the domain events the read models are fed with.
//! - [`partition`]: how every stateful role's state is split: partitions,
//!   the sets a process owns, and which partition a key belongs to.
//!
//! The machinery:
//! - [`transport`]: one trait (RabbitMQ and in-process), with request/reply,
//!   leases and the event log as capabilities of a shared broker.
//! - [`storage`]: SQLite (one writer thread per file), inbox and outbox.
//! - [`cluster`]: who owns each partition (fenced), and the one client that
//!   reaches the owner of a partition, in-process or over the broker.
//!
//! The roles, each the only one that knows its own state:
//! - [`orchestrator`]: the saga actors, their registry, their store, and
//!   the requests its owners answer.
//! - [`workers`]: the pay, kitchen, delivery and coupon actors, their
//!   records, and the requests their owners answer.
//! - [`views`]: the read models, fed only by events.
//! - [`api`]: the REST endpoints (actix-web): the only place that knows
//!   HTTP; it turns requests into owners' requests and their outcomes into
//!   answers.
//!
//! And the edges: [`app`] wires the roles of one process together, [`config`]
//! is its settings, [`auth`] who calls (tokens and keys; [`access`] what
//! they may call), [`net`] where they call from, [`cli`] the `hearty sagas`,
//! `token` and `broker-users` commands; [`metrics`],
//! [`shutdown`] and [`failpoint`] serve them all.

pub mod allocator;
pub(crate) mod api;
/// Who may call which route (the one table; README.md shows it).
pub use api::access;
pub mod app;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod domain;
pub mod events;
pub(crate) mod failpoint;
pub mod messages;
pub mod metrics;
pub mod net;
pub(crate) mod orchestrator;
pub mod partition;
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
