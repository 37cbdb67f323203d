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
    tx.execute(
        "INSERT INTO food_views (id, name, price_cents, stock, version) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, price_cents = excluded.price_cents,
             stock = excluded.stock, version = excluded.version
         WHERE excluded.version > food_views.version",
        params![
            food.id.get(),
            food.name,
            food.price_cents.cents(),
            food.stock,
            e.version
        ],
    )?;
    Ok(())
}

/// One item as the catalog view shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FoodView {
    pub id: i64,
    pub name: String,
    /// The price as the seed shows it (`4.0`).
    pub price: f64,
    /// The price in whole cents.
    pub price_cents: i64,
    pub stock: i64,
}

pub fn list(c: &Connection, page: Page) -> rusqlite::Result<Vec<FoodView>> {
    let mut stmt = c.prepare_cached(
        "SELECT id, name, price_cents, stock FROM food_views ORDER BY id LIMIT ?1 OFFSET ?2",
    )?;
    stmt.query_map(params![page.limit, page.offset], |r| {
        let cents: i64 = r.get(2)?;
        Ok(FoodView {
            id: r.get(0)?,
            name: r.get(1)?,
            price: Money::from_cents(cents).as_decimal(),
            price_cents: cents,
            stock: r.get(3)?,
        })
    })?
    .collect()
}
