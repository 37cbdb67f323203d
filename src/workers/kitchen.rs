//! The kitchen worker: owns the food catalog and its stock, accepts tickets
//! (taking `qty` from stock), cooks them, cancels them (returning the stock).
//!
//! Owns `kitchen.db`: tables `food_catalog` and `kitchens` (one ticket per
//! order; its id is the order id).

use rusqlite::{Connection, Row, params};
use serde::Serialize;

use super::{Applied, WorkerLogic, order_id_of};
use crate::config::Mode;
use crate::domain::{FoodId, KitchenStatus, Millis, Money, OrderId, Qty, WorkerKind};
use crate::events::{DomainEvent, FoodData, Payload, TicketData};
use crate::messages::{Direction, Progress, ReplyOutcome, WorkerCommand};
use crate::storage::{Page, inbox, optional};

pub struct KitchenWorker {
    pub mode: Mode,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS food_catalog (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL,
    stock       INTEGER NOT NULL CHECK (stock >= 0),
    price_cents INTEGER NOT NULL CHECK (price_cents >= 0),
    version     INTEGER NOT NULL DEFAULT 1,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS kitchens (
    id          INTEGER PRIMARY KEY,
    food_id     INTEGER NOT NULL,
    qty         INTEGER NOT NULL,
    status      TEXT    NOT NULL,
    reason      TEXT,
    version     INTEGER NOT NULL DEFAULT 1,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
";

/// A catalog item as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FoodRecord {
    pub id: FoodId,
    pub name: String,
    pub stock: i64,
    /// The decimal the seed shows (`4.0`).
    #[serde(serialize_with = "Money::serialize_decimal")]
    #[schema(value_type = f64)]
    pub price: Money,
    /// The same price in whole cents: what events and clients compute with.
    pub price_cents: Money,
}

/// A kitchen ticket as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TicketRecord {
    pub id: OrderId,
    pub order_id: OrderId,
    pub food_catalog_id: FoodId,
    pub qty: Qty,
    pub status: KitchenStatus,
    pub reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

fn ticket_status(tx: &Connection, order: OrderId) -> rusqlite::Result<Option<KitchenStatus>> {
    let raw: Option<String> = optional(tx.query_row(
        "SELECT status FROM kitchens WHERE id = ?1",
        [order.get()],
        |r| r.get(0),
    ))?;
    Ok(raw.and_then(|s| s.parse().ok()))
}

fn set_ticket(
    tx: &Connection,
    order: OrderId,
    status: KitchenStatus,
    now: Millis,
) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE kitchens SET status = ?2, updated_at = ?3, version = version + 1 WHERE id = ?1",
        params![order.get(), status.as_str(), now.0],
    )?;
    publish_ticket(tx, order)
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
    fn kind(&self) -> WorkerKind {
        WorkerKind::Kitchen
    }

    fn schema(&self) -> &'static str {
        SCHEMA
    }

    fn apply(
        &self,
        tx: &Connection,
        cmd: &WorkerCommand,
        now: Millis,
    ) -> rusqlite::Result<Applied> {
        match cmd {
            WorkerCommand::Step {
                direction: Direction::Do,
                order,
                ..
            } => {
                let id = order.order_id;
                if inbox::is_buried(tx, id)? {
                    return Ok(Applied::Final(vec![ReplyOutcome::Failed {
                        reason: "the order was cancelled before the kitchen got it".into(),
                    }]));
                }
                if let Some(status) = ticket_status(tx, id)? {
                    return Ok(Applied::Final(replies_for(status)));
                }
                let stock: Option<i64> = optional(tx.query_row(
                    "SELECT stock FROM food_catalog WHERE id = ?1",
                    [order.food_id.get()],
                    |r| r.get(0),
                ))?;
                let qty = i64::from(order.qty.get());
                let refusal = match stock {
                    None => Some(format!("food {} is not in the catalog", order.food_id)),
                    Some(s) if s < qty => Some(format!("out of stock: {s} left, {qty} ordered")),
                    Some(_) => None,
                };
                if let Some(reason) = refusal {
                    tx.execute(
                        "INSERT INTO kitchens (id, food_id, qty, status, reason, created_at, updated_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
                        params![id.get(), order.food_id.get(), qty, KitchenStatus::Rejected.as_str(), reason, now.0],
                    )?;
                    publish_ticket(tx, id)?;
                    return Ok(Applied::Final(vec![ReplyOutcome::Failed { reason }]));
                }
                tx.execute(
                    "UPDATE food_catalog SET stock = stock - ?2, updated_at = ?3, version = version + 1 WHERE id = ?1",
                    params![order.food_id.get(), qty, now.0],
                )?;
                publish_food(tx, order.food_id, "stockChanged")?;
                let status = match self.mode {
                    Mode::Auto => KitchenStatus::Cooked,
                    Mode::Manual => KitchenStatus::Accepted,
                };
                tx.execute(
                    "INSERT INTO kitchens (id, food_id, qty, status, reason, created_at, updated_at)
                     VALUES (?1, ?2, ?3, ?4, NULL, ?5, ?5)",
                    params![id.get(), order.food_id.get(), qty, status.as_str(), now.0],
                )?;
                publish_ticket(tx, id)?;
                Ok(Applied::Final(replies_for(status)))
            }
            WorkerCommand::Step {
                direction: Direction::Undo,
                order,
                ..
            } => {
                let id = order.order_id;
                match ticket_status(tx, id)? {
                    Some(KitchenStatus::Accepted | KitchenStatus::Cooked) => {
                        let (food, qty): (i64, i64) = tx.query_row(
                            "SELECT food_id, qty FROM kitchens WHERE id = ?1",
                            [id.get()],
                            |r| Ok((r.get(0)?, r.get(1)?)),
                        )?;
                        tx.execute(
                            "UPDATE food_catalog SET stock = stock + ?2, updated_at = ?3, version = version + 1 WHERE id = ?1",
                            params![food, qty, now.0],
                        )?;
                        if let Ok(food) = FoodId::new(food) {
                            publish_food(tx, food, "stockChanged")?;
                        }
                        set_ticket(tx, id, KitchenStatus::Cancelled, now)?;
                    }
                    Some(_) => {}
                    None => inbox::bury(tx, id)?,
                }
                Ok(Applied::Final(vec![ReplyOutcome::Compensated]))
            }
            WorkerCommand::Progress {
                order_id,
                progress: Progress::Cooked,
                ..
            } => match ticket_status(tx, *order_id)? {
                Some(KitchenStatus::Accepted) => {
                    set_ticket(tx, *order_id, KitchenStatus::Cooked, now)?;
                    Ok(Applied::Final(vec![ReplyOutcome::Done]))
                }
                Some(KitchenStatus::Cooked) => Ok(Applied::Final(vec![ReplyOutcome::Done])),
                other => Ok(Applied::Ignored(format!(
                    "ticket {order_id} cannot be cooked: {other:?}"
                ))),
            },
            WorkerCommand::Progress { progress, .. } => Ok(Applied::Ignored(format!(
                "the kitchen does not take `{}`",
                progress.as_str()
            ))),
        }
    }
}

/// Adds an item to the catalog, with the next id that falls in one of this
/// kitchen's partitions (`owned`): its stock is owned where its id says.
pub fn create_food(
    tx: &Connection,
    name: &str,
    stock: i64,
    price: Money,
    owned: &crate::partition::Owned,
) -> rusqlite::Result<FoodRecord> {
    let now = Millis::now();
    let next = crate::storage::next_owned_id(tx, "food_catalog", owned)?;
    tx.execute(
        "INSERT INTO food_catalog (id, name, stock, price_cents, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
        params![next, name, stock, price.cents(), now.0],
    )?;
    let id = FoodId::new(next).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    publish_food(tx, id, "created")?;
    Ok(FoodRecord {
        id,
        name: name.to_owned(),
        stock,
        price,
        price_cents: price,
    })
}

/// Emits a ticket's current state as `kitchen.<status>`.
fn publish_ticket(tx: &Connection, id: OrderId) -> rusqlite::Result<()> {
    super::emit(tx, ticket_snapshot(tx, id)?)
}

/// Emits a catalog item's current state as `catalog.<what>`.
fn publish_food(tx: &Connection, id: FoodId, what: &str) -> rusqlite::Result<()> {
    let event = food_snapshot(tx, id)?.map(|mut e| {
        e.event_type = format!("catalog.{what}");
        e
    });
    super::emit(tx, event)
}

/// An order's kitchen ticket as a domain event (also used to rebuild views).
pub fn ticket_snapshot(c: &Connection, id: OrderId) -> rusqlite::Result<Option<DomainEvent>> {
    super::record_event(c, "kitchens", id.get(), get_ticket(c, id)?, |r| {
        r.status.as_str().to_ascii_lowercase()
    })
}

/// A catalog item as a domain event (`catalog.updated`; also used to rebuild views).
pub fn food_snapshot(c: &Connection, id: FoodId) -> rusqlite::Result<Option<DomainEvent>> {
    super::record_event(c, "food_catalog", id.get(), get_food(c, id)?, |_| {
        "updated".to_owned()
    })
}

impl super::Snapshot for TicketRecord {
    fn payload(&self) -> Payload {
        Payload::Kitchen(TicketData {
            order_id: self.order_id,
            food_catalog_id: self.food_catalog_id,
            qty: self.qty,
            status: self.status,
            reason: self.reason.clone(),
        })
    }
}

impl super::Snapshot for FoodRecord {
    fn payload(&self) -> Payload {
        Payload::Catalog(FoodData {
            id: self.id,
            name: self.name.clone(),
            stock: self.stock,
            price_cents: self.price_cents,
        })
    }
}

fn food(r: &Row<'_>) -> rusqlite::Result<FoodRecord> {
    Ok(FoodRecord {
        id: FoodId::new(r.get(0)?)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?,
        name: r.get(1)?,
        stock: r.get(2)?,
        price: Money::from_cents(r.get(3)?),
        price_cents: Money::from_cents(r.get(3)?),
    })
}

pub fn list_foods(c: &Connection, page: Page) -> rusqlite::Result<Vec<FoodRecord>> {
    let mut stmt = c.prepare_cached(
        "SELECT id, name, stock, price_cents FROM food_catalog ORDER BY id LIMIT ?1 OFFSET ?2",
    )?;
    stmt.query_map(params![page.limit, page.offset], food)?
        .collect()
}

pub fn get_food(c: &Connection, id: FoodId) -> rusqlite::Result<Option<FoodRecord>> {
    optional(c.query_row(
        "SELECT id, name, stock, price_cents FROM food_catalog WHERE id = ?1",
        [id.get()],
        food,
    ))
}

fn ticket(r: &Row<'_>) -> rusqlite::Result<TicketRecord> {
    let id = order_id_of(r.get(0)?)?;
    let status: String = r.get(3)?;
    Ok(TicketRecord {
        id,
        order_id: id,
        food_catalog_id: super::parsed(FoodId::new(r.get(1)?))?,
        qty: super::parsed(Qty::new(r.get(2)?))?,
        status: status.parse().unwrap_or(KitchenStatus::Rejected),
        reason: r.get(4)?,
        created_at: Millis(r.get(5)?).to_rfc3339(),
        updated_at: Millis(r.get(6)?).to_rfc3339(),
    })
}

const TICKET_COLUMNS: &str = "id, food_id, qty, status, reason, created_at, updated_at";

pub fn list_tickets(
    c: &Connection,
    page: Page,
    order: Option<OrderId>,
) -> rusqlite::Result<Vec<TicketRecord>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {TICKET_COLUMNS} FROM kitchens WHERE (?1 IS NULL OR id = ?1) ORDER BY id LIMIT ?2 OFFSET ?3"
    ))?;
    stmt.query_map(
        params![order.map(OrderId::get), page.limit, page.offset],
        ticket,
    )?
    .collect()
}

pub fn get_ticket(c: &Connection, id: OrderId) -> rusqlite::Result<Option<TicketRecord>> {
    optional(c.query_row(
        &format!("SELECT {TICKET_COLUMNS} FROM kitchens WHERE id = ?1"),
        [id.get()],
        ticket,
    ))
}
