//! The kitchen worker: owns the food catalog and its stock, accepts tickets
//! (taking `qty` from stock), cooks them, cancels them (returning the stock).
//!
//! Owns `kitchen.db`: tables `food_catalog` and `kitchens` (one ticket per
//! order; its id is the order id).

use rusqlite::{Connection, Row, params};
use serde::{Deserialize, Serialize};

use super::records::{Snapshot, Table, emit, parsed, record_table};
use super::{Applied, Effect, WorkerLogic};
use crate::config::Mode;
use crate::domain::{FoodId, KitchenStatus, Millis, Money, OrderId, Qty};
use crate::events::{FoodData, Payload, TicketData};
use crate::messages::{OrderDetails, Progress, ReplyOutcome};

pub struct KitchenWorker {
    pub mode: Mode,
}

const FOODS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS food_catalog (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL,
    stock       INTEGER NOT NULL CHECK (stock >= 0),
    price_cents INTEGER NOT NULL CHECK (price_cents >= 0),
    version     INTEGER NOT NULL DEFAULT 1,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
";

/// The kitchen's tables: the catalog and the tickets.
pub const SCHEMA: &[&str] = &[FOODS_SCHEMA, TICKETS_SCHEMA];

/// The kitchen's tickets.
const TICKETS_SCHEMA: &str = record_table!(
    "kitchens",
    "    food_id     INTEGER NOT NULL,
    qty         INTEGER NOT NULL,
    status      TEXT    NOT NULL,
    reason      TEXT,
"
);

/// An item of the food catalog, with its stock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Food {
    pub id: FoodId,
    pub name: String,
    pub stock: i64,
    pub price: Money,
}

/// A kitchen ticket of an order: its id is its order's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ticket {
    pub order_id: OrderId,
    pub food_id: FoodId,
    pub qty: Qty,
    pub status: KitchenStatus,
    pub reason: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// The `kitchens` table: one ticket per order.
pub(crate) const TICKETS: Table<Ticket> = Table {
    name: "kitchens",
    columns: "id, food_id, qty, status, reason, created_at, updated_at",
    per_customer: false,
    row: ticket,
    key: std::marker::PhantomData,
};

/// The `food_catalog` table.
pub(crate) const FOODS: Table<Food, FoodId> = Table {
    name: "food_catalog",
    columns: "id, name, stock, price_cents",
    per_customer: false,
    row: food,
    key: std::marker::PhantomData,
};

fn ticket_status(tx: &Connection, order: OrderId) -> rusqlite::Result<Option<KitchenStatus>> {
    TICKETS.status(tx, order)
}

fn set_ticket(
    tx: &Connection,
    order: OrderId,
    status: KitchenStatus,
    now: Millis,
) -> rusqlite::Result<()> {
    TICKETS.set_status(tx, order, status.as_str(), now)?;
    TICKETS.publish(tx, order)
}

/// The replies of a ticket that exists already (a repeated accept).
fn replies_for(status: KitchenStatus) -> Vec<ReplyOutcome> {
    match status {
        KitchenStatus::Accepted => vec![ReplyOutcome::Accepted],
        // Accepted and cooked in one go (auto mode): one reply says both.
        KitchenStatus::Cooked => vec![ReplyOutcome::Done],
        KitchenStatus::Rejected | KitchenStatus::Cancelled => vec![ReplyOutcome::Failed {
            reason: format!("the ticket is {status}"),
        }],
    }
}

impl WorkerLogic for KitchenWorker {
    fn reached(&self) -> &'static str {
        "the kitchen got it"
    }

    fn forward(&self, tx: &Connection, order: &OrderDetails, now: Millis) -> Effect {
        let id = order.order_id;
        if let Some(status) = ticket_status(tx, id)? {
            return Ok(Applied::Final(replies_for(status)));
        }
        let qty = i64::from(order.qty.get());
        let refusal = match FOODS.get(tx, order.food_id)? {
            None => Some(format!("food {} is not in the catalog", order.food_id)),
            Some(f) if f.stock < qty => {
                Some(format!("out of stock: {} left, {qty} ordered", f.stock))
            }
            Some(_) => None,
        };
        let status = match (&refusal, self.mode) {
            (Some(_), _) => KitchenStatus::Rejected,
            (None, Mode::Auto) => KitchenStatus::Cooked,
            (None, Mode::Manual) => KitchenStatus::Accepted,
        };
        if refusal.is_none() {
            take_stock(tx, order.food_id, -qty, now)?;
        }
        tx.prepare_cached(
            "INSERT INTO kitchens (id, food_id, qty, status, reason, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
        )?
        .execute(params![
            id.get(),
            order.food_id.get(),
            qty,
            status.as_str(),
            refusal,
            now.0
        ])?;
        TICKETS.publish(tx, id)?;
        Ok(Applied::Final(match refusal {
            Some(reason) => vec![ReplyOutcome::Failed { reason }],
            None => replies_for(status),
        }))
    }

    fn compensate(&self, tx: &Connection, order: &OrderDetails, now: Millis) -> Effect {
        let id = order.order_id;
        let Some(ticket) = TICKETS.get(tx, id)? else {
            return Ok(Applied::NoRecord);
        };
        if matches!(
            ticket.status,
            KitchenStatus::Accepted | KitchenStatus::Cooked
        ) {
            take_stock(tx, ticket.food_id, i64::from(ticket.qty.get()), now)?;
            set_ticket(tx, id, KitchenStatus::Cancelled, now)?;
        }
        Ok(Applied::Final(vec![ReplyOutcome::Compensated]))
    }

    fn progress(&self, tx: &Connection, order: OrderId, progress: Progress, now: Millis) -> Effect {
        if progress != Progress::Cooked {
            return Ok(Applied::Ignored(format!(
                "the kitchen does not take `{}`",
                progress.as_str()
            )));
        }
        match ticket_status(tx, order)? {
            Some(KitchenStatus::Accepted) => {
                set_ticket(tx, order, KitchenStatus::Cooked, now)?;
                Ok(Applied::Final(vec![ReplyOutcome::Done]))
            }
            Some(KitchenStatus::Cooked) => Ok(Applied::Final(vec![ReplyOutcome::Done])),
            other => Ok(Applied::Ignored(format!(
                "ticket {order} cannot be cooked: {other:?}"
            ))),
        }
    }
}

/// Adds `change` to a food's stock (negative: takes it) and publishes it.
fn take_stock(tx: &Connection, food: FoodId, change: i64, now: Millis) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE food_catalog SET stock = stock + ?2, updated_at = ?3, version = version + 1 WHERE id = ?1",
    )?
    .execute(params![food.get(), change, now.0])?;
    publish_food(tx, food, "stockChanged")
}

/// Adds an item to the catalog, with the next id that falls in one of this
/// kitchen's partitions (`owned`): its stock is owned where its id says.
pub fn create_food(
    tx: &Connection,
    name: &str,
    stock: i64,
    price: Money,
    owned: &crate::partition::Owned,
) -> rusqlite::Result<Food> {
    let now = Millis::now();
    let next = crate::storage::next_owned_id(tx, "food_catalog", owned)?;
    tx.prepare_cached(
        "INSERT INTO food_catalog (id, name, stock, price_cents, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)")?.execute(
        params![next, name, stock, price.cents(), now.0],
    )?;
    let id = parsed(FoodId::new(next))?;
    publish_food(tx, id, "created")?;
    Ok(Food {
        id,
        name: name.to_owned(),
        stock,
        price,
    })
}

/// Emits a catalog item's current state as `catalog.<what>`.
fn publish_food(tx: &Connection, id: FoodId, what: &str) -> rusqlite::Result<()> {
    let event = FOODS.snapshot(tx, id)?.map(|mut e| {
        e.event_type = format!("catalog.{what}");
        e
    });
    emit(tx, event)
}

impl Snapshot for Ticket {
    fn payload(&self) -> Payload {
        Payload::Kitchen(TicketData {
            order_id: self.order_id,
            food_catalog_id: self.food_id,
            qty: self.qty,
            status: self.status,
            reason: self.reason.clone(),
        })
    }

    fn what(&self) -> String {
        self.status.as_str().to_ascii_lowercase()
    }
}

impl Snapshot for Food {
    fn payload(&self) -> Payload {
        Payload::Catalog(FoodData {
            id: self.id,
            name: self.name.clone(),
            stock: self.stock,
            price_cents: self.price,
        })
    }

    fn what(&self) -> String {
        "updated".to_owned()
    }
}

fn food(r: &Row<'_>) -> rusqlite::Result<Food> {
    Ok(Food {
        id: parsed(FoodId::new(r.get(0)?))?,
        name: r.get(1)?,
        stock: r.get(2)?,
        price: Money::from_cents(r.get(3)?),
    })
}

fn ticket(r: &Row<'_>) -> rusqlite::Result<Ticket> {
    Ok(Ticket {
        order_id: parsed(OrderId::new(r.get(0)?))?,
        food_id: parsed(FoodId::new(r.get(1)?))?,
        qty: parsed(Qty::new(r.get(2)?))?,
        status: parsed(r.get::<_, String>(3)?.parse())?,
        reason: r.get(4)?,
        created_at: Millis(r.get(5)?),
        updated_at: Millis(r.get(6)?),
    })
}
