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

use crate::domain::{
    CouponStatus, CustomerId, DeliveryStatus, FoodId, KitchenStatus, Millis, Money, OrderId,
    OrderStatus, PayStatus, Qty,
};
use crate::saga::machine::SagaState;
use crate::storage::outbox;
use crate::transport::{Outgoing, Route};

/// The contract's version; bumped on an incompatible change. Version 2:
/// every payload is typed and amounts are integer cents.
pub const SCHEMA_VERSION: u32 = 2;

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
    pub const ALL: [Entity; 7] = [
        Entity::Order,
        Entity::Pay,
        Entity::Kitchen,
        Entity::Delivery,
        Entity::Coupon,
        Entity::Catalog,
        Entity::Review,
    ];

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

/// A field that may be `null` but must be there: a missing (or renamed)
/// field is an error, never a silent `None`.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d)
}

/// An order after a change (`order.*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderData {
    pub order_id: OrderId,
    pub customer_id: CustomerId,
    pub food_catalog_id: FoodId,
    pub qty: Qty,
    pub amount_cents: Money,
    pub status: OrderStatus,
    pub saga_state: SagaState,
    #[serde(deserialize_with = "present")]
    pub reason: Option<String>,
}

/// A payment after a change (`pay.*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PayData {
    pub order_id: OrderId,
    pub customer_id: CustomerId,
    pub amount_cents: Money,
    pub status: PayStatus,
    #[serde(deserialize_with = "present")]
    pub reason: Option<String>,
}

/// A kitchen ticket after a change (`kitchen.*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TicketData {
    pub order_id: OrderId,
    pub food_catalog_id: FoodId,
    pub qty: Qty,
    pub status: KitchenStatus,
    #[serde(deserialize_with = "present")]
    pub reason: Option<String>,
}

/// A delivery after a change (`delivery.*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryData {
    pub order_id: OrderId,
    pub customer_id: CustomerId,
    pub status: DeliveryStatus,
    pub picked_up: bool,
}

/// A coupon after a change (`coupon.*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CouponData {
    pub order_id: OrderId,
    pub customer_id: CustomerId,
    pub status: CouponStatus,
    pub code: String,
}

/// A catalog item after a change (`catalog.*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FoodData {
    pub id: FoodId,
    pub name: String,
    pub stock: i64,
    pub price_cents: Money,
}

/// A review as posted (`review.created`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReviewData {
    pub id: i64,
    pub username: String,
    pub productname: String,
    pub content: String,
    #[serde(deserialize_with = "present")]
    pub rating: Option<i64>,
    pub created_at: String,
}

/// What an event says, by entity: on the wire `"entity": "...", "data": {...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "entity", content = "data", rename_all = "camelCase")]
pub enum Payload {
    Order(OrderData),
    Pay(PayData),
    Kitchen(TicketData),
    Delivery(DeliveryData),
    Coupon(CouponData),
    Catalog(FoodData),
    Review(ReviewData),
}

impl Payload {
    /// The entity's id: the order's for order, pay, kitchen, delivery and
    /// coupon; the item's for catalog; the review's for review.
    pub fn entity_id(&self) -> i64 {
        match self {
            Payload::Order(d) => d.order_id.get(),
            Payload::Pay(d) => d.order_id.get(),
            Payload::Kitchen(d) => d.order_id.get(),
            Payload::Delivery(d) => d.order_id.get(),
            Payload::Coupon(d) => d.order_id.get(),
            Payload::Catalog(d) => d.id.get(),
            Payload::Review(d) => d.id,
        }
    }

    pub fn entity(&self) -> Entity {
        match self {
            Payload::Order(_) => Entity::Order,
            Payload::Pay(_) => Entity::Pay,
            Payload::Kitchen(_) => Entity::Kitchen,
            Payload::Delivery(_) => Entity::Delivery,
            Payload::Coupon(_) => Entity::Coupon,
            Payload::Catalog(_) => Entity::Catalog,
            Payload::Review(_) => Entity::Review,
        }
    }
}

/// One domain event on the wire. Producers and consumers share this type:
/// nothing is read by string key, and an event that does not decode (or
/// names another contract version) is dead-lettered with the reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DomainEvent {
    /// [`SCHEMA_VERSION`] of the producer.
    pub schema: u32,
    /// The routing key: `order.paid`, `pay.refunded`, ...
    #[serde(rename = "type")]
    pub event_type: String,
    /// The entity's id (an order id for order, pay, kitchen, delivery and
    /// coupon; the item's id for catalog; the review's id for review).
    pub entity_id: i64,
    /// Grows by one with every change of the entity.
    pub version: i64,
    pub at: Millis,
    /// `entity` and `data`: the entity after the change.
    #[serde(flatten)]
    pub payload: Payload,
}

impl DomainEvent {
    pub fn new(what: &str, version: i64, payload: Payload) -> Self {
        DomainEvent {
            schema: SCHEMA_VERSION,
            event_type: format!("{}.{what}", payload.entity().as_str()),
            entity_id: payload.entity_id(),
            version,
            at: Millis::now(),
            payload,
        }
    }

    pub fn entity(&self) -> Entity {
        self.payload.entity()
    }

    /// Parses an event off the wire, refusing what this contract does not
    /// describe: another schema version, a type of another entity.
    pub fn decode(body: &[u8]) -> Result<Self, String> {
        let event: DomainEvent =
            serde_json::from_slice(body).map_err(|e| format!("undecodable event: {e}"))?;
        if event.schema != SCHEMA_VERSION {
            return Err(format!(
                "event schema {} is not {SCHEMA_VERSION}",
                event.schema
            ));
        }
        let prefix = format!("{}.", event.entity().as_str());
        if !event.event_type.starts_with(&prefix) {
            return Err(format!(
                "event type `{}` is not one of entity `{}`",
                event.event_type,
                event.entity().as_str()
            ));
        }
        let id = event.payload.entity_id();
        if id != event.entity_id {
            return Err(format!(
                "event of entity {} carries the data of {id}",
                event.entity_id
            ));
        }
        if let Payload::Review(r) = &event.payload
            && r.rating.is_some_and(|x| !(1..=5).contains(&x))
        {
            return Err(format!("review rating {:?} is not 1 to 5", r.rating));
        }
        Ok(event)
    }

    /// Its id, also its AMQP message id: `<type>.<entityId>.v<version>`, so
    /// a re-published event keeps its id.
    pub fn id(&self) -> String {
        format!("{}.{}.v{}", self.event_type, self.entity_id, self.version)
    }

    /// Its outgoing message.
    pub fn message(&self) -> Outgoing {
        Outgoing {
            message_id: self.id(),
            correlation_id: self.entity_id.to_string(),
            message_type: self.event_type.clone(),
            route: Route::Event(self.event_type.clone()),
            // Typed fields of strings and numbers always serialize.
            body: serde_json::to_vec(self).unwrap_or_default(),
        }
    }
}

/// Writes an event to the outbox inside the caller's transaction.
/// In a folder restored from a backup, its version is raised above every
/// version published before the restore (`storage::event_version_base`).
pub fn emit(tx: &Connection, event: &DomainEvent) -> rusqlite::Result<()> {
    let base = crate::storage::event_version_base(tx)?;
    if base == 0 {
        return outbox::enqueue(tx, &event.message(), Millis::now());
    }
    let mut raised = event.clone();
    raised.version = raised.version.saturating_add(base);
    outbox::enqueue(tx, &raised.message(), Millis::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(id: i64) -> OrderId {
        OrderId::new(id).expect("valid")
    }

    /// One sample of every payload.
    fn samples() -> Vec<Payload> {
        let customer = CustomerId::new(1).expect("valid");
        let food = FoodId::new(2).expect("valid");
        let qty = Qty::new(3).expect("valid");
        vec![
            Payload::Order(OrderData {
                order_id: order(7),
                customer_id: customer,
                food_catalog_id: food,
                qty,
                amount_cents: Money::from_cents(1200),
                status: OrderStatus::Paid,
                saga_state: SagaState::Running,
                reason: None,
            }),
            Payload::Pay(PayData {
                order_id: order(7),
                customer_id: customer,
                amount_cents: Money::from_cents(1200),
                status: PayStatus::Approved,
                reason: None,
            }),
            Payload::Kitchen(TicketData {
                order_id: order(7),
                food_catalog_id: food,
                qty,
                status: KitchenStatus::Cooked,
                reason: None,
            }),
            Payload::Delivery(DeliveryData {
                order_id: order(7),
                customer_id: customer,
                status: DeliveryStatus::Dispatched,
                picked_up: true,
            }),
            Payload::Coupon(CouponData {
                order_id: order(7),
                customer_id: customer,
                status: CouponStatus::Issued,
                code: "C-7".into(),
            }),
            Payload::Catalog(FoodData {
                id: food,
                name: "cake".into(),
                stock: 97,
                price_cents: Money::from_cents(400),
            }),
            Payload::Review(ReviewData {
                id: 1,
                username: "yang".into(),
                productname: "cake".into(),
                content: "good".into(),
                rating: Some(5),
                created_at: "2026-11-27T00:00:00.000Z".into(),
            }),
        ]
    }

    #[test]
    fn routing_keys_and_ids_read_well() {
        let e = DomainEvent::new("cancelled", 3, samples().swap_remove(2));
        assert_eq!(e.event_type, "kitchen.cancelled");
        let m = e.message();
        assert_eq!(m.message_id, "kitchen.cancelled.7.v3");
        assert_eq!(m.route, Route::Event("kitchen.cancelled".into()));
        let back = DomainEvent::decode(&m.body).expect("round trip");
        assert_eq!(back, e);
        let text = String::from_utf8_lossy(&m.body);
        assert!(text.contains("\"type\":\"kitchen.cancelled\""), "{text}");
        assert!(text.contains("\"entity\":\"kitchen\""), "{text}");
    }

    #[test]
    fn every_payload_round_trips() {
        for p in samples() {
            let e = DomainEvent::new("x", 1, p);
            assert_eq!(DomainEvent::decode(&e.message().body), Ok(e));
        }
    }

    #[test]
    fn malformed_events_are_refused_not_defaulted() {
        let good = DomainEvent::new("paid", 1, samples().swap_remove(0));
        let mut v = serde_json::to_value(&good).expect("json");
        let cases = [
            ("a renamed field", {
                let mut v = v.clone();
                let d = v["data"].as_object_mut().expect("data");
                let amount = d.remove("amountCents").expect("field");
                d.insert("amount".into(), amount);
                v
            }),
            ("an unknown entity", {
                let mut v = v.clone();
                v["entity"] = "invoice".into();
                v
            }),
            ("a float amount", {
                let mut v = v.clone();
                v["data"]["amountCents"] = serde_json::json!(12.5);
                v
            }),
            ("another schema version", {
                let mut v = v.clone();
                v["schema"] = 1.into();
                v
            }),
            ("a missing optional field", {
                let mut v = v.clone();
                v["data"].as_object_mut().expect("data").remove("reason");
                v
            }),
            ("data of another entity", {
                let mut v = v.clone();
                v["entityId"] = 8.into();
                v
            }),
            ("a type of another entity", {
                let mut v = v.clone();
                v["type"] = "pay.refunded".into();
                v
            }),
        ];
        for (what, bad) in cases {
            let body = serde_json::to_vec(&bad).expect("json");
            assert!(DomainEvent::decode(&body).is_err(), "{what} was accepted");
        }
        v["data"]["status"] = "Paid".into();
        assert!(DomainEvent::decode(&serde_json::to_vec(&v).expect("json")).is_ok());
    }

    /// `docs/events.md` lists, per entity, exactly the fields its payload
    /// has: the document cannot drift from the types.
    #[test]
    fn the_event_document_matches_the_types() {
        let doc = include_str!("../docs/events.md");
        for p in samples() {
            let entity = p.entity().as_str();
            let data = serde_json::to_value(&p).expect("json")["data"].clone();
            let mut fields: Vec<String> =
                data.as_object().expect("object").keys().cloned().collect();
            fields.sort();
            let row = doc
                .lines()
                .find(|l| l.starts_with(&format!("| `{entity}.")))
                .unwrap_or_else(|| panic!("docs/events.md has no row for `{entity}.*`"));
            let listed = row.rsplit('|').nth(1).expect("a data column").trim();
            let mut documented: Vec<String> = listed
                .trim_matches('`')
                .split(',')
                .map(|f| f.trim().to_owned())
                .collect();
            documented.sort();
            assert_eq!(documented, fields, "docs/events.md row for `{entity}.*`");
        }
    }
}
