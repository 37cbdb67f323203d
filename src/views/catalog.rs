//! The food catalog view: `id, name, price, stock` per item, from
//! `catalog.*` events.

use rusqlite::{Connection, params};

use crate::domain::Money;
use crate::events::{DomainEvent, Payload};
use crate::storage::Page;

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS food_views (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL,
    price_cents INTEGER NOT NULL,
    stock       INTEGER NOT NULL,
    version     INTEGER NOT NULL
);
";

pub fn apply(tx: &Connection, e: &DomainEvent) -> rusqlite::Result<()> {
    let Payload::Catalog(food) = &e.payload else {
        return Ok(());
    };
    tx.prepare_cached(
        "INSERT INTO food_views (id, name, price_cents, stock, version) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, price_cents = excluded.price_cents,
             stock = excluded.stock, version = excluded.version
         WHERE excluded.version > food_views.version",
    )?
    .execute(params![
        food.id.get(),
        food.name,
        food.price_cents.cents(),
        food.stock,
        e.version
    ])?;
    Ok(())
}

/// One item as the catalog view holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct FoodViewRow {
    pub id: i64,
    pub name: String,
    pub price: Money,
    pub stock: i64,
}

pub fn list(c: &Connection, page: Page) -> rusqlite::Result<Vec<FoodViewRow>> {
    let mut stmt = c.prepare_cached(
        "SELECT id, name, price_cents, stock FROM food_views ORDER BY id LIMIT ?1 OFFSET ?2",
    )?;
    stmt.query_map(params![page.limit, page.offset], |r| {
        Ok(FoodViewRow {
            id: r.get(0)?,
            name: r.get(1)?,
            price: Money::from_cents(r.get(2)?),
            stock: r.get(3)?,
        })
    })?
    .collect()
}
