//! "My orders": per order, the customer, the food, the quantity and amount,
//! and the status of the order, its payment, kitchen ticket, delivery and
//! coupon — from `order.*`, `pay.*`, `kitchen.*`, `delivery.*`, `coupon.*`
//! (and `catalog.*` for the food's name). Each part keeps its own version.

use rusqlite::{Connection, params};

use crate::domain::{CustomerId, Millis, Money};
use crate::events::{DomainEvent, Payload};
use crate::storage::Page;

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS my_orders (
    order_id         INTEGER PRIMARY KEY,
    customer_id      INTEGER,
    food_id          INTEGER,
    qty              INTEGER,
    amount_cents     INTEGER,
    status           TEXT,
    saga_state       TEXT,
    order_version    INTEGER NOT NULL DEFAULT 0,
    pay_status       TEXT,
    pay_version      INTEGER NOT NULL DEFAULT 0,
    kitchen_status   TEXT,
    kitchen_version  INTEGER NOT NULL DEFAULT 0,
    delivery_status  TEXT,
    delivery_picked_up INTEGER,
    delivery_version INTEGER NOT NULL DEFAULT 0,
    coupon_status    TEXT,
    coupon_code      TEXT,
    coupon_version   INTEGER NOT NULL DEFAULT 0,
    updated_at       INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS my_orders_customer ON my_orders (customer_id, order_id);
CREATE TABLE IF NOT EXISTS foods (
    id      INTEGER PRIMARY KEY,
    name    TEXT    NOT NULL,
    version INTEGER NOT NULL
);
";

pub fn apply(tx: &Connection, e: &DomainEvent) -> rusqlite::Result<()> {
    let now = Millis::now().0;
    if let Payload::Catalog(food) = &e.payload {
        tx.prepare_cached(
            "INSERT INTO foods (id, name, version) VALUES (?1, ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, version = excluded.version
             WHERE excluded.version > foods.version",
        )?
        .execute(params![food.id.get(), food.name, e.version])?;
        return Ok(());
    }
    if let Payload::Review(_) = e.payload {
        return Ok(());
    }
    tx.prepare_cached("INSERT OR IGNORE INTO my_orders (order_id, updated_at) VALUES (?1, ?2)")?
        .execute(params![e.entity_id, now])?;
    match &e.payload {
        Payload::Order(o) => {
            tx.prepare_cached(
                "UPDATE my_orders SET customer_id = ?2, food_id = ?3, qty = ?4, amount_cents = ?5,
                     status = ?6, saga_state = ?7, order_version = ?8, updated_at = ?9
                 WHERE order_id = ?1 AND order_version < ?8",
            )?
            .execute(params![
                e.entity_id,
                o.customer_id.get(),
                o.food_catalog_id.get(),
                o.qty.get(),
                o.amount_cents.cents(),
                o.status.as_str(),
                o.saga_state.as_str(),
                e.version,
                now
            ])?;
        }
        Payload::Pay(p) => part(tx, e, "pay", p.status.as_str())?,
        Payload::Kitchen(k) => part(tx, e, "kitchen", k.status.as_str())?,
        Payload::Delivery(d) => {
            tx.prepare_cached(
                "UPDATE my_orders SET delivery_status = ?2, delivery_picked_up = ?3, delivery_version = ?4, updated_at = ?5
                 WHERE order_id = ?1 AND delivery_version < ?4")?.execute(
                params![e.entity_id, d.status.as_str(), d.picked_up, e.version, now],
            )?;
        }
        Payload::Coupon(c) => {
            tx.prepare_cached(
                "UPDATE my_orders SET coupon_status = ?2, coupon_code = ?3, coupon_version = ?4, updated_at = ?5
                 WHERE order_id = ?1 AND coupon_version < ?4")?.execute(
                params![e.entity_id, c.status.as_str(), c.code, e.version, now],
            )?;
        }
        Payload::Catalog(_) | Payload::Review(_) => {}
    }
    Ok(())
}

/// Updates one part's status when the event is newer than what is there.
fn part(tx: &Connection, e: &DomainEvent, name: &str, status: &str) -> rusqlite::Result<()> {
    tx.execute(
        &format!(
            "UPDATE my_orders SET {name}_status = ?2, {name}_version = ?3, updated_at = ?4
             WHERE order_id = ?1 AND {name}_version < ?3"
        ),
        params![e.entity_id, status, e.version, Millis::now().0],
    )?;
    Ok(())
}

/// One order as "my orders" holds it: each part's status as its last
/// event said (absent until one arrived).
#[derive(Debug, Clone, PartialEq)]
pub struct MyOrderRow {
    pub order_id: i64,
    pub customer_id: Option<i64>,
    pub food_id: Option<i64>,
    pub food_name: Option<String>,
    pub qty: Option<i64>,
    pub amount: Option<Money>,
    pub status: Option<String>,
    pub saga_state: Option<String>,
    pub pay_status: Option<String>,
    pub kitchen_status: Option<String>,
    pub delivery_status: Option<String>,
    pub picked_up: Option<bool>,
    pub coupon_status: Option<String>,
    pub coupon_code: Option<String>,
    pub updated_at: Millis,
}

pub fn list(
    c: &Connection,
    page: Page,
    customer: Option<CustomerId>,
) -> rusqlite::Result<Vec<MyOrderRow>> {
    let mut stmt = c.prepare_cached(
        "SELECT o.order_id, o.customer_id, o.food_id, f.name, o.qty, o.amount_cents, o.status, o.saga_state,
                o.pay_status, o.kitchen_status, o.delivery_status, o.delivery_picked_up, o.coupon_status,
                o.coupon_code, o.updated_at
         FROM my_orders o LEFT JOIN foods f ON f.id = o.food_id
         WHERE (?1 IS NULL OR o.customer_id = ?1)
         ORDER BY o.order_id LIMIT ?2 OFFSET ?3",
    )?;
    stmt.query_map(
        params![customer.map(CustomerId::get), page.limit, page.offset],
        |r| {
            Ok(MyOrderRow {
                order_id: r.get(0)?,
                customer_id: r.get(1)?,
                food_id: r.get(2)?,
                food_name: r.get(3)?,
                qty: r.get(4)?,
                amount: r.get::<_, Option<i64>>(5)?.map(Money::from_cents),
                status: r.get(6)?,
                saga_state: r.get(7)?,
                pay_status: r.get(8)?,
                kitchen_status: r.get(9)?,
                delivery_status: r.get(10)?,
                picked_up: r.get(11)?,
                coupon_status: r.get(12)?,
                coupon_code: r.get(13)?,
                updated_at: Millis(r.get(14)?),
            })
        },
    )?
    .collect()
}
