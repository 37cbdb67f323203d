//! The cluster: which process acts for each partition of every stateful
//! role (the partitions themselves are [`crate::partition`], below the
//! transport, which names queues by them), and how any process reaches the
//! owner of a partition.
//!
//! - [`ownership`]: one acting owner per (role, partition): the data folder's
//!   home, the registry stream, the broker leases and the takeover's epoch.
//! - [`epochs`]: consumers refuse a replaced owner's late copies of what its
//!   successor publishes.
//! - [`owners`]: the one client of every role's owners, asked in-process or
//!   over RabbitMQ the same way (owner wait, correlation, page merge).
//! - [`serve`]: the owner's side of those requests.

pub mod epochs;
pub mod owners;
pub mod ownership;
pub mod serve;
