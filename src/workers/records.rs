//! What every worker's records share: one row per order in a table with a
//! version, read the same way (by order, or a page), and published as a
//! domain event of that version after each change.

use std::str::FromStr;

use rusqlite::{Connection, Row, params};

use crate::domain::{CustomerId, DomainError, OrderId};
use crate::events::{DomainEvent, Payload};
use crate::storage::{Page, optional};

/// The `CREATE TABLE` of a worker's records: the id (its order's), the
/// table's own `columns`, and the version and times every record has.
macro_rules! record_table {
    ($name:literal, $columns:literal) => {
        concat!(
            "CREATE TABLE IF NOT EXISTS ",
            $name,
            " (\n    id INTEGER PRIMARY KEY,\n",
            $columns,
            "    version INTEGER NOT NULL DEFAULT 1,\n",
            "    created_at INTEGER NOT NULL,\n",
            "    updated_at INTEGER NOT NULL\n);\n"
        )
    };
}
pub(crate) use record_table;

/// The id of a worker's record: its order's (or, for the catalog, its
/// food's).
pub(crate) trait RecordId: Copy {
    fn raw(self) -> i64;
}

impl RecordId for OrderId {
    fn raw(self) -> i64 {
        self.get()
    }
}

impl RecordId for crate::domain::FoodId {
    fn raw(self) -> i64 {
        self.get()
    }
}

/// A worker's table of records: one row per order (or food), its id the
/// order's (the food's), with a version.
pub(crate) struct Table<R, K = OrderId> {
    /// The table's name.
    pub name: &'static str,
    /// The columns `row` reads, in its order.
    pub columns: &'static str,
    /// Whether the table has a `customer_id` column (whose records a
    /// customer may read).
    pub per_customer: bool,
    /// One row as a record.
    pub row: fn(&Row<'_>) -> rusqlite::Result<R>,
    pub key: std::marker::PhantomData<K>,
}

impl<R, K: RecordId> Table<R, K> {
    /// The records, by id: a page, optionally only one, and (a table of
    /// customers' records) only one customer's.
    pub fn list(
        &self,
        c: &Connection,
        page: Page,
        only: Option<K>,
        customer: Option<CustomerId>,
    ) -> rusqlite::Result<Vec<R>> {
        let of_customer = if self.per_customer {
            "(?4 IS NULL OR customer_id = ?4)"
        } else {
            "(?4 IS NULL)"
        };
        let mut stmt = c.prepare_cached(&format!(
            "SELECT {} FROM {} WHERE (?1 IS NULL OR id = ?1) AND {of_customer}
             ORDER BY id LIMIT ?2 OFFSET ?3",
            self.columns, self.name
        ))?;
        let customer = customer.map(CustomerId::get);
        let args = params![only.map(K::raw), page.limit, page.offset, customer];
        stmt.query_map(args, self.row)?.collect()
    }

    /// One record, if there is one.
    pub fn get(&self, c: &Connection, id: K) -> rusqlite::Result<Option<R>> {
        optional(
            c.prepare_cached(&format!(
                "SELECT {} FROM {} WHERE id = ?1",
                self.columns, self.name
            ))?
            .query_row([id.raw()], self.row),
        )
    }

    /// The status of a record, if there is one.
    pub fn status<S: FromStr<Err = DomainError>>(
        &self,
        c: &Connection,
        id: K,
    ) -> rusqlite::Result<Option<S>> {
        let raw: Option<String> = optional(
            c.prepare_cached(&format!("SELECT status FROM {} WHERE id = ?1", self.name))?
                .query_row([id.raw()], |r| r.get(0)),
        )?;
        raw.map(|s| parsed(s.parse())).transpose()
    }

    /// Sets a record's status (a new version of it).
    pub fn set_status(
        &self,
        tx: &Connection,
        id: K,
        status: &str,
        now: crate::domain::Millis,
    ) -> rusqlite::Result<()> {
        tx.prepare_cached(&format!(
            "UPDATE {} SET status = ?2, updated_at = ?3, version = version + 1 WHERE id = ?1",
            self.name
        ))?
        .execute(params![id.raw(), status, now.0])?;
        Ok(())
    }

    /// The record as its domain event `<entity>.<what>`, of the version
    /// kept in its row (also used to rebuild read models).
    pub fn snapshot(&self, c: &Connection, id: K) -> rusqlite::Result<Option<DomainEvent>>
    where
        R: Snapshot,
    {
        let version: Option<i64> = optional(
            c.prepare_cached(&format!("SELECT version FROM {} WHERE id = ?1", self.name))?
                .query_row([id.raw()], |r| r.get(0)),
        )?;
        let (Some(version), Some(rec)) = (version, self.get(c, id)?) else {
            return Ok(None);
        };
        Ok(Some(DomainEvent::new(&rec.what(), version, rec.payload())))
    }

    /// Emits the record's current state as its domain event, in the
    /// transaction of the change.
    pub fn publish(&self, tx: &Connection, id: K) -> rusqlite::Result<()>
    where
        R: Snapshot,
    {
        emit(tx, self.snapshot(tx, id)?)
    }
}

/// A worker's record as the payload of its domain event.
pub(crate) trait Snapshot {
    fn payload(&self) -> Payload;

    /// What its event says the record is now: `approved`, `pickedUp`, ...
    fn what(&self) -> String;
}

/// Writes an event, if there is one, to the outbox of the transaction.
pub(crate) fn emit(tx: &Connection, event: Option<DomainEvent>) -> rusqlite::Result<()> {
    match event {
        Some(e) => crate::events::emit(tx, &e),
        None => Ok(()),
    }
}

/// A stored value parsed into its domain type; one that does not parse (an
/// unknown status, a non-positive id) is a damaged row, reported as a read
/// error rather than read as something else.
pub(crate) fn parsed<T>(v: Result<T, DomainError>) -> rusqlite::Result<T> {
    v.map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}
