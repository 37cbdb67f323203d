//! The review view: per product, the number of reviews, the average rating
//! and the latest reviews — from `review.*` events.

use rusqlite::{Connection, params};

use crate::events::{DomainEvent, Payload, ReviewData};
use crate::storage::Page;

/// How many recent reviews a product's view keeps.
const LATEST: usize = 5;

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS review_views (
    id           INTEGER PRIMARY KEY,
    productname  TEXT    NOT NULL UNIQUE,
    count        INTEGER NOT NULL,
    rating_sum   INTEGER NOT NULL,
    rating_count INTEGER NOT NULL,
    latest       TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS applied_reviews (
    review_id INTEGER PRIMARY KEY
);
";

pub fn apply(tx: &Connection, e: &DomainEvent) -> rusqlite::Result<()> {
    let Payload::Review(review) = &e.payload else {
        return Ok(());
    };
    // Reviews are created once: the review id alone makes this idempotent.
    let fresh = tx
        .prepare_cached("INSERT OR IGNORE INTO applied_reviews (review_id) VALUES (?1)")?
        .execute([e.entity_id])?
        == 1;
    if !fresh {
        return Ok(());
    }
    let product = review.productname.as_str();
    let rating = review.rating;
    let latest: Option<String> = crate::storage::optional(tx.query_row(
        "SELECT latest FROM review_views WHERE productname = ?1",
        [product],
        |r| r.get(0),
    ))?;
    // What this view stored itself; if it no longer decodes, fail (the
    // event is handed back, then dead-lettered) rather than drop reviews.
    let mut list: Vec<ReviewData> = latest
        .map(|l| serde_json::from_str(&l))
        .transpose()
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?
        .unwrap_or_default();
    list.insert(0, review.clone());
    list.sort_by_key(|r| std::cmp::Reverse(r.id));
    list.truncate(LATEST);
    let latest = serde_json::to_string(&list).unwrap_or_else(|_| "[]".into());
    tx.execute(
        // A product's id is its first review's id, whatever the order the
        // events come in (so a rebuild gives the same ids).
        "INSERT INTO review_views (id, productname, count, rating_sum, rating_count, latest)
         VALUES (?1, ?2, 1, ?3, ?4, ?5)
         ON CONFLICT (productname) DO UPDATE SET count = count + 1,
             rating_sum = rating_sum + excluded.rating_sum,
             rating_count = rating_count + excluded.rating_count,
             latest = excluded.latest,
             id = min(review_views.id, excluded.id)",
        params![
            e.entity_id,
            product,
            rating.unwrap_or(0),
            i64::from(rating.is_some()),
            latest
        ],
    )?;
    Ok(())
}

/// One product as the review view holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReviewViewRow {
    pub id: i64,
    pub productname: String,
    pub count: i64,
    pub average_rating: Option<f64>,
    /// The newest reviews first.
    pub latest_reviews: Vec<ReviewData>,
}

pub fn list(c: &Connection, page: Page) -> rusqlite::Result<Vec<ReviewViewRow>> {
    let mut stmt = c.prepare_cached(
        "SELECT id, productname, count, rating_sum, rating_count, latest FROM review_views
         ORDER BY id LIMIT ?1 OFFSET ?2",
    )?;
    stmt.query_map(params![page.limit, page.offset], |r| {
        let (sum, n): (i64, i64) = (r.get(3)?, r.get(4)?);
        let latest: String = r.get(5)?;
        Ok(ReviewViewRow {
            id: r.get(0)?,
            productname: r.get(1)?,
            count: r.get(2)?,
            average_rating: (n > 0).then(|| sum as f64 / n as f64),
            latest_reviews: serde_json::from_str(&latest)
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?,
        })
    })?
    .collect()
}
