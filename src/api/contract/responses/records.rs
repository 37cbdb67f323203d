//! Customers, reviews, the food catalog and the workers' records as the API
//! shows them. Money shows twice: the seed's decimal (`40.0`) and whole
//! cents; times as RFC 3339.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::sagas::time;
use crate::domain::{
    CouponStatus, CustomerId, DeliveryStatus, FoodId, KitchenStatus, Money, OrderId, PayStatus, Qty,
};
use crate::orchestrator::store::customers::Customer;
use crate::orchestrator::store::reviews::Review;
use crate::workers::coupon::Coupon;
use crate::workers::delivery::Delivery;
use crate::workers::kitchen::{Food, Ticket};
use crate::workers::pay::Payment;
use crate::workers::requests::Record;

/// A customer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CustomerRecord {
    pub id: CustomerId,
    pub name: String,
    pub phone: String,
    pub address: String,
    pub age: Option<i64>,
}

impl From<Customer> for CustomerRecord {
    fn from(c: Customer) -> Self {
        CustomerRecord {
            id: c.id,
            name: c.name,
            phone: c.phone,
            address: c.address,
            age: c.age,
        }
    }
}

/// A sign-up's answer: the customer, and the token that is their credential
/// (`Authorization: Bearer <token>`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignedUp {
    #[serde(flatten)]
    pub customer: CustomerRecord,
    pub token: String,
    /// When the token expires (RFC 3339).
    pub token_expires_at: String,
}

/// A product review.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReviewRecord {
    pub id: i64,
    pub username: String,
    pub productname: String,
    pub content: String,
    pub rating: Option<i64>,
    pub created_at: String,
}

impl From<Review> for ReviewRecord {
    fn from(r: Review) -> Self {
        ReviewRecord {
            id: r.id,
            username: r.username,
            productname: r.productname,
            content: r.content,
            rating: r.rating,
            created_at: r.created_at.to_rfc3339(),
        }
    }
}

/// A catalog item, with its current stock.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
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

impl From<Food> for FoodRecord {
    fn from(f: Food) -> Self {
        FoodRecord {
            id: f.id,
            name: f.name,
            stock: f.stock,
            price: f.price,
            price_cents: f.price,
        }
    }
}

/// A payment; its id is its order's.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PayRecord {
    pub id: OrderId,
    pub order_id: OrderId,
    pub customer_id: CustomerId,
    /// The decimal the seed shows (`40.0`).
    #[serde(serialize_with = "Money::serialize_decimal")]
    #[schema(value_type = f64)]
    pub amount: Money,
    /// The same amount in whole cents.
    pub amount_cents: Money,
    pub status: PayStatus,
    pub reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<Payment> for PayRecord {
    fn from(p: Payment) -> Self {
        PayRecord {
            id: p.order_id,
            order_id: p.order_id,
            customer_id: p.customer_id,
            amount: p.amount,
            amount_cents: p.amount,
            status: p.status,
            reason: p.reason,
            created_at: p.created_at.to_rfc3339(),
            updated_at: p.updated_at.to_rfc3339(),
        }
    }
}

/// A kitchen ticket; its id is its order's.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
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

impl From<Ticket> for TicketRecord {
    fn from(t: Ticket) -> Self {
        TicketRecord {
            id: t.order_id,
            order_id: t.order_id,
            food_catalog_id: t.food_id,
            qty: t.qty,
            status: t.status,
            reason: t.reason,
            created_at: t.created_at.to_rfc3339(),
            updated_at: t.updated_at.to_rfc3339(),
        }
    }
}

/// A delivery; its id is its order's.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryRecord {
    pub id: OrderId,
    pub order_id: OrderId,
    pub customer_id: CustomerId,
    pub status: DeliveryStatus,
    pub picked_up: bool,
    pub picked_up_at: Option<String>,
    pub delivered_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<Delivery> for DeliveryRecord {
    fn from(d: Delivery) -> Self {
        DeliveryRecord {
            id: d.order_id,
            order_id: d.order_id,
            customer_id: d.customer_id,
            status: d.status,
            picked_up: d.picked_up(),
            picked_up_at: time(d.picked_up_at),
            delivered_at: time(d.delivered_at),
            created_at: d.created_at.to_rfc3339(),
            updated_at: d.updated_at.to_rfc3339(),
        }
    }
}

/// A coupon; its id is its order's.
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CouponRecord {
    pub id: OrderId,
    pub order_id: OrderId,
    pub customer_id: CustomerId,
    pub code: String,
    pub status: CouponStatus,
    pub created_at: String,
    pub updated_at: String,
}

impl From<Coupon> for CouponRecord {
    fn from(c: Coupon) -> Self {
        CouponRecord {
            id: c.order_id,
            order_id: c.order_id,
            customer_id: c.customer_id,
            code: c.code,
            status: c.status,
            created_at: c.created_at.to_rfc3339(),
            updated_at: c.updated_at.to_rfc3339(),
        }
    }
}

/// A worker's record as the API shows it (each kind its own shape).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(untagged)]
pub enum RecordView {
    Pay(PayRecord),
    Ticket(TicketRecord),
    Delivery(DeliveryRecord),
    Coupon(CouponRecord),
}

impl From<Record> for RecordView {
    fn from(r: Record) -> Self {
        match r {
            Record::Payment(p) => RecordView::Pay(p.into()),
            Record::Ticket(t) => RecordView::Ticket(t.into()),
            Record::Delivery(d) => RecordView::Delivery(d.into()),
            Record::Coupon(c) => RecordView::Coupon(c.into()),
        }
    }
}
