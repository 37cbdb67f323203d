//! Product reviews: created by any orchestrator owner with an id in its
//! partitions, each with its `review.created` event in the same
//! transaction.

use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

use crate::cluster::owners::Keyed;
use crate::domain::Millis;
use crate::events::{self, DomainEvent, Payload, ReviewData};
use crate::partition::Owned;
use crate::storage::{Page, StorageResult, next_owned_id};

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS reviews (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    username    TEXT    NOT NULL,
    productname TEXT    NOT NULL,
    content     TEXT    NOT NULL,
    rating      INTEGER,
    created_at  INTEGER NOT NULL
);
";

/// A product review.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Review {
    pub id: i64,
    pub username: String,
    pub productname: String,
    pub content: String,
    pub rating: Option<i64>,
    pub created_at: Millis,
}

/// What posting a review gives (checked at the edge).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewReview {
    pub username: String,
    pub productname: String,
    pub content: String,
    pub rating: Option<i64>,
}

impl Keyed for Review {
    fn key(&self) -> i64 {
        self.id
    }
}

fn review(r: &rusqlite::Row<'_>) -> rusqlite::Result<Review> {
    Ok(Review {
        id: r.get(0)?,
        username: r.get(1)?,
        productname: r.get(2)?,
        content: r.get(3)?,
        rating: r.get(4)?,
        created_at: Millis(r.get(5)?),
    })
}

fn event(rec: &Review) -> DomainEvent {
    let data = ReviewData {
        id: rec.id,
        username: rec.username.clone(),
        productname: rec.productname.clone(),
        content: rec.content.clone(),
        rating: rec.rating,
        created_at: rec.created_at.to_rfc3339(),
    };
    DomainEvent::new("created", 1, Payload::Review(data))
}

/// Stores a review and emits `review.created`, in one transaction.
pub fn create(tx: &Connection, new: &NewReview, owned: &Owned) -> StorageResult<Review> {
    let now = Millis::now();
    let next = next_owned_id(tx, "reviews", owned)?;
    tx.prepare_cached(
        "INSERT INTO reviews (id, username, productname, content, rating, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?.execute(
        params![next, new.username, new.productname, new.content, new.rating, now.0],
    )?;
    let rec = Review {
        id: next,
        username: new.username.clone(),
        productname: new.productname.clone(),
        content: new.content.clone(),
        rating: new.rating,
        created_at: now,
    };
    events::emit(tx, &event(&rec))?;
    Ok(rec)
}

const COLUMNS: &str = "id, username, productname, content, rating, created_at";

pub fn list(c: &Connection, page: Page) -> StorageResult<Vec<Review>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM reviews ORDER BY id LIMIT ?1 OFFSET ?2"
    ))?;
    Ok(stmt
        .query_map(params![page.limit, page.offset], review)?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Every review as its `review.created` event (to rebuild the read model).
pub fn snapshots(c: &Connection) -> StorageResult<Vec<DomainEvent>> {
    let mut stmt = c.prepare(&format!("SELECT {COLUMNS} FROM reviews ORDER BY id"))?;
    let reviews = stmt
        .query_map([], review)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(reviews.iter().map(event).collect())
}
