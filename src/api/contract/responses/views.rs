//! The read models' rows as the API shows them.

use serde::Serialize;
use utoipa::ToSchema;

use super::records::ReviewRecord;
use crate::events::ReviewData;
use crate::views::catalog::FoodViewRow;
use crate::views::my_orders::MyOrderRow;
use crate::views::reviews::ReviewViewRow;

/// One order as "my orders" shows it: every part's status.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MyOrder {
    pub id: i64,
    pub order_id: i64,
    pub customer_id: Option<i64>,
    pub food_catalog_id: Option<i64>,
    pub food_name: Option<String>,
    pub qty: Option<i64>,
    /// The total as the seed shows it (`40.0`).
    pub amount: Option<f64>,
    /// The total in whole cents.
    pub amount_cents: Option<i64>,
    pub status: Option<String>,
    pub saga_state: Option<String>,
    pub pay_status: Option<String>,
    pub kitchen_status: Option<String>,
    pub delivery_status: Option<String>,
    pub picked_up: Option<bool>,
    pub coupon_status: Option<String>,
    pub coupon_code: Option<String>,
    pub updated_at: String,
}

impl From<MyOrderRow> for MyOrder {
    fn from(r: MyOrderRow) -> Self {
        MyOrder {
            id: r.order_id,
            order_id: r.order_id,
            customer_id: r.customer_id,
            food_catalog_id: r.food_id,
            food_name: r.food_name,
            qty: r.qty,
            amount: r.amount.map(|m| m.as_decimal()),
            amount_cents: r.amount.map(|m| m.cents()),
            status: r.status,
            saga_state: r.saga_state,
            pay_status: r.pay_status,
            kitchen_status: r.kitchen_status,
            delivery_status: r.delivery_status,
            picked_up: r.picked_up,
            coupon_status: r.coupon_status,
            coupon_code: r.coupon_code,
            updated_at: r.updated_at.to_rfc3339(),
        }
    }
}

/// One item as the catalog view shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
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

impl From<FoodViewRow> for FoodView {
    fn from(r: FoodViewRow) -> Self {
        FoodView {
            id: r.id,
            name: r.name,
            price: r.price.as_decimal(),
            price_cents: r.price.cents(),
            stock: r.stock,
        }
    }
}

/// One product as the review view shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReviewView {
    pub id: i64,
    pub productname: String,
    pub count: i64,
    pub average_rating: Option<f64>,
    /// The newest reviews first.
    #[schema(value_type = Vec<ReviewRecord>)]
    pub latest_reviews: Vec<ReviewData>,
}

impl From<ReviewViewRow> for ReviewView {
    fn from(r: ReviewViewRow) -> Self {
        ReviewView {
            id: r.id,
            productname: r.productname,
            count: r.count,
            average_rating: r.average_rating,
            latest_reviews: r.latest_reviews,
        }
    }
}
