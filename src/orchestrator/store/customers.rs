//! Customers: created by any orchestrator owner with an id in its
//! partitions, never deleted.

use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

use crate::cluster::owners::Keyed;
use crate::domain::{CustomerId, Millis};
use crate::partition::Owned;
use crate::storage::{Page, StorageError, StorageResult, next_owned_id, optional};

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS customers (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT    NOT NULL,
    phone      TEXT    NOT NULL,
    address    TEXT    NOT NULL,
    age        INTEGER,
    created_at INTEGER NOT NULL
);
";

/// A customer who signed up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Customer {
    pub id: CustomerId,
    pub name: String,
    pub phone: String,
    pub address: String,
    pub age: Option<i64>,
}

/// What a sign-up gives (checked at the edge).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewCustomer {
    pub name: String,
    pub phone: String,
    pub address: String,
    pub age: Option<i64>,
}

impl Keyed for Customer {
    fn key(&self) -> i64 {
        self.id.get()
    }
}

pub fn create(tx: &Connection, new: &NewCustomer, owned: &Owned) -> StorageResult<Customer> {
    let next = next_owned_id(tx, "customers", owned)?;
    tx.prepare_cached(
        "INSERT INTO customers (id, name, phone, address, age, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?.execute(
        params![next, new.name, new.phone, new.address, new.age, Millis::now().0],
    )?;
    let id = CustomerId::new(next).map_err(|e| StorageError::Invalid(e.to_string()))?;
    Ok(Customer {
        id,
        name: new.name.clone(),
        phone: new.phone.clone(),
        address: new.address.clone(),
        age: new.age,
    })
}

const COLUMNS: &str = "id, name, phone, address, age";

fn customer(r: &rusqlite::Row<'_>) -> rusqlite::Result<Customer> {
    Ok(Customer {
        id: CustomerId::new(r.get(0)?)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?,
        name: r.get(1)?,
        phone: r.get(2)?,
        address: r.get(3)?,
        age: r.get(4)?,
    })
}

pub fn list(c: &Connection, page: Page) -> StorageResult<Vec<Customer>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM customers ORDER BY id LIMIT ?1 OFFSET ?2"
    ))?;
    Ok(stmt
        .query_map(params![page.limit, page.offset], customer)?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

pub fn get(c: &Connection, id: CustomerId) -> StorageResult<Option<Customer>> {
    Ok(optional(c.query_row(
        &format!("SELECT {COLUMNS} FROM customers WHERE id = ?1"),
        [id.get()],
        customer,
    ))?)
}
