//! The food catalog view: `id, name, price, stock` per item, from
//! `catalog.*` events.

use rusqlite::{Connection, params};
use serde_json::{Value, json};

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

pub fn list(c: &Connection, page: Page) -> rusqlite::Result<Vec<Value>> {
    let mut stmt = c.prepare_cached(
        "SELECT id, name, price_cents, stock FROM food_views ORDER BY id LIMIT ?1 OFFSET ?2",
    )?;
    stmt.query_map(params![page.limit, page.offset], |r| {
        Ok(json!({
            "id": r.get::<_, i64>(0)?,
            "name": r.get::<_, String>(1)?,
            "price": Money::from_cents(r.get(2)?).as_decimal(),
            "priceCents": r.get::<_, i64>(2)?,
            "stock": r.get::<_, i64>(3)?,
        }))
    })?
    .collect()
}
