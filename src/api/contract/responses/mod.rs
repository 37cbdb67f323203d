//! Response bodies, as the API shows them. The domain (a `Saga`, a worker's
//! record, a read model's row) is turned into these at the edge; their
//! `ToSchema` is what `/openapi.json` says, so document and behaviour cannot
//! drift.
//!
//! - [`sagas`]: orders, sagas and what inspection shows of them;
//! - [`records`]: customers, reviews, the catalog and the workers' records;
//! - [`views`]: the read models' rows.

pub mod records;
pub mod sagas;
pub mod views;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::{OrderId, OrderStatus};
pub use records::*;
pub use sagas::*;
pub use views::*;

/// The one error shape: a stable code and a sentence.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// A stable, machine-readable code (`bad_request`, `not_found`,
    /// `out_of_stock`, `payment_declined`, `idempotency_key_reused`, ...).
    pub error: String,
    /// A sentence for people.
    pub detail: String,
    /// The order concerned, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<OrderId>,
    /// The order's status, when it explains the refusal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<OrderStatus>,
}

/// `GET /health/live`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Live {
    /// `live`.
    pub status: String,
}

/// One database's health.
#[derive(Debug, Serialize, ToSchema)]
pub struct StorageHealth {
    /// The database's name (`orchestrator.p0`): never a path of the host.
    pub database: String,
    pub ok: bool,
}

/// The broker's health.
#[derive(Debug, Serialize, ToSchema)]
pub struct BrokerHealth {
    /// `in-process` or `rabbitmq`.
    pub kind: String,
    pub ok: bool,
}

/// `GET /health/ready`: 200 when ready, 503 (same body) when not.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Ready {
    /// `ready`; `catching_up` (a new or restarted process whose read models
    /// have not yet read the event log up to its start); `unavailable`; or
    /// `draining` (stopping: still serving for the drain period, but no
    /// longer ready).
    pub status: String,
    pub storage: Vec<StorageHealth>,
    pub broker: BrokerHealth,
    /// Each step breaker's worst state over its partitions (`Closed`, `Open`,
    /// `HalfOpen`); `hearty_circuit_breaker_partition_state` has each one.
    pub circuit_breakers: std::collections::BTreeMap<String, String>,
}
