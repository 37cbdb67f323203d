//! Domain events: the versioned contract between the write side (the
//! orchestrator, the workers, the API's reviews) and the read models.
//!
//! Every state change of an order, payment, kitchen ticket, delivery,
//! coupon, catalog item or review is written to its service's outbox in the
//! transaction that makes the change, and published to the namespace's topic
//! exchange with a routing key `<entity>.<what happened>` (`order.paid`,
//! `kitchen.cancelled`, `catalog.stockChanged`, ...).
//!
//! An event carries a snapshot of the entity after the change and the
//! entity's version (it grows by one with every change), so a projection
//! applies an event only when it is newer than what it has: redelivered,
//! duplicated and reordered events are harmless. The full list of events and
//! fields is in `docs/events.md`.

use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::Millis;
use crate::storage::outbox;
use crate::transport::{Outgoing, Route};

/// The contract's version; bumped on an incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// The entities that publish events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Entity {
    Order,
    Pay,
    Kitchen,
    Delivery,
    Coupon,
    Catalog,
    Review,
}

impl Entity {
    pub fn as_str(self) -> &'static str {
        match self {
            Entity::Order => "order",
            Entity::Pay => "pay",
            Entity::Kitchen => "kitchen",
            Entity::Delivery => "delivery",
            Entity::Coupon => "coupon",
            Entity::Catalog => "catalog",
            Entity::Review => "review",
        }
    }
}

/// One domain event on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DomainEvent {
    /// [`SCHEMA_VERSION`] of the producer.
    pub schema: u32,
    /// The routing key: `order.paid`, `pay.refunded`, ...
    #[serde(rename = "type")]
    pub event_type: String,
    pub entity: Entity,
    /// The entity's id (an order id for order, pay, kitchen, delivery and
    /// coupon; the item's id for catalog; the review's id for review).
    pub entity_id: i64,
    /// Grows by one with every change of the entity.
    pub version: i64,
    pub at: Millis,
    /// The entity after the change (camelCase fields).
    pub data: Value,
}

impl DomainEvent {
    pub fn new(entity: Entity, what: &str, entity_id: i64, version: i64, data: Value) -> Self {
        DomainEvent {
            schema: SCHEMA_VERSION,
            event_type: format!("{}.{what}", entity.as_str()),
            entity,
            entity_id,
            version,
            at: Millis::now(),
            data,
        }
    }

    /// Its outgoing message: id `<type>.<entityId>.v<version>`, so a
    /// re-published event keeps its id.
    pub fn message(&self) -> Outgoing {
        Outgoing {
            message_id: format!("{}.{}.v{}", self.event_type, self.entity_id, self.version),
            correlation_id: self.entity_id.to_string(),
            message_type: self.event_type.clone(),
            route: Route::Event(self.event_type.clone()),
            // A struct of strings, numbers and JSON always serializes.
            body: serde_json::to_vec(self).unwrap_or_default(),
        }
    }
}

/// Writes an event to the outbox inside the caller's transaction.
pub fn emit(tx: &Connection, event: &DomainEvent) -> rusqlite::Result<()> {
    outbox::enqueue(tx, &event.message(), Millis::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keys_and_ids_read_well() {
        let e = DomainEvent::new(
            Entity::Kitchen,
            "cancelled",
            7,
            3,
            serde_json::json!({"status": "Cancelled"}),
        );
        assert_eq!(e.event_type, "kitchen.cancelled");
        let m = e.message();
        assert_eq!(m.message_id, "kitchen.cancelled.7.v3");
        assert_eq!(m.route, Route::Event("kitchen.cancelled".into()));
        let back: DomainEvent = serde_json::from_slice(&m.body).expect("round trip");
        assert_eq!(back, e);
        assert!(String::from_utf8_lossy(&m.body).contains("\"type\":\"kitchen.cancelled\""));
    }
}
