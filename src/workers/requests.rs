//! What the API asks the owners of the workers' partitions: their records
//! (payments, tickets, deliveries, coupons) and the kitchen's catalog, as
//! typed requests and outcomes ([`WorkerProtocol`]), and the owner's side
//! that answers them from its database ([`LocalWorker`]).

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::coupon::{COUPONS, Coupon};
use super::delivery::{DELIVERIES, Delivery};
use super::kitchen::{FOODS, Food, TICKETS, Ticket};
use super::pay::{PAYS, Payment};
use crate::auth::{Caller, StaffRole, Who};
use crate::cluster::owners::{Executor, Failure, Keyed, Protocol};
use crate::domain::{CustomerId, FoodId, Money, OrderId, WorkerKind};
use crate::partition::Owned;
use crate::storage::{Db, Page, StorageError};

/// The protocol of the workers' owners.
pub struct WorkerProtocol;

impl Protocol for WorkerProtocol {
    type Request = Request;
    type Outcome = Outcome;
    const MESSAGE_TYPE: &'static str = "rpc.worker.v2";
}

/// A question to the owner of a worker's partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "camelCase")]
pub enum Request {
    /// The owner's records by id (an order's): the page, or one order's.
    Records { page: Page, order: Option<OrderId> },
    /// The record of one order, if the owner has it.
    Record { order: OrderId },
    /// The kitchen's catalog items, by id.
    Foods { page: Page },
    /// One catalog item.
    Food { food: FoodId },
    /// Adds a catalog item, with an id in one of the owner's partitions.
    CreateFood {
        name: String,
        stock: i64,
        price: Money,
    },
}

/// A worker's record of an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Record {
    Payment(Payment),
    Ticket(Ticket),
    Delivery(Delivery),
    Coupon(Coupon),
}

impl Keyed for Record {
    fn key(&self) -> i64 {
        match self {
            Record::Payment(r) => r.order_id.get(),
            Record::Ticket(r) => r.order_id.get(),
            Record::Delivery(r) => r.order_id.get(),
            Record::Coupon(r) => r.order_id.get(),
        }
    }
}

impl Keyed for Food {
    fn key(&self) -> i64 {
        self.id.get()
    }
}

/// What the owner answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", content = "value", rename_all = "camelCase")]
pub enum Outcome {
    Records(Vec<Record>),
    Record(Option<Record>),
    Foods(Vec<Food>),
    Food(Option<Food>),
    FoodCreated(Food),
    /// The caller may not do this.
    Forbidden,
}

impl Outcome {
    /// The records of a `Records` answer.
    pub fn records(self) -> Option<Vec<Record>> {
        match self {
            Outcome::Records(rows) => Some(rows),
            _ => None,
        }
    }

    /// The items of a `Foods` answer.
    pub fn foods(self) -> Option<Vec<Food>> {
        match self {
            Outcome::Foods(rows) => Some(rows),
            _ => None,
        }
    }
}

/// A worker role run by this process: its database and partitions.
pub struct LocalWorker {
    pub kind: WorkerKind,
    pub db: Db,
    pub owned: Owned,
}

impl Executor<WorkerProtocol> for LocalWorker {
    fn execute(&self, caller: Caller, request: Request) -> BoxFuture<'_, Result<Outcome, Failure>> {
        self.answer(caller, request)
            .map(|r| r.map_err(Failure::from))
            .boxed()
    }
}

/// Whose records of `kind` a caller may read: every one's (`Some(None)`),
/// only their own (`Some(Some(customer))`), or none. A customer reads their
/// payments, deliveries and coupons; the kitchen its tickets; the delivery
/// team its deliveries; a manager everything.
fn readable(kind: WorkerKind, caller: &Caller) -> Option<Option<CustomerId>> {
    match (caller.who(), kind) {
        (
            Who::Staff {
                role: StaffRole::Manager,
                ..
            },
            _,
        )
        | (
            Who::Staff {
                role: StaffRole::Kitchen,
                ..
            },
            WorkerKind::Kitchen,
        )
        | (
            Who::Staff {
                role: StaffRole::Delivery,
                ..
            },
            WorkerKind::Delivery,
        ) => Some(None),
        (Who::Customer { id, .. }, WorkerKind::Pay | WorkerKind::Delivery | WorkerKind::Coupon) => {
            Some(Some(*id))
        }
        _ => None,
    }
}

impl LocalWorker {
    async fn answer(&self, caller: Caller, request: Request) -> Result<Outcome, StorageError> {
        let kind = self.kind;
        match request {
            Request::Records { page, order } => {
                let Some(customer) = readable(kind, &caller) else {
                    return Ok(Outcome::Forbidden);
                };
                let records = self
                    .db
                    .read(move |c| Ok(records(kind, c, page, order, customer)?))
                    .await?;
                Ok(Outcome::Records(records))
            }
            Request::Record { order } => {
                // Another customer's record is not found, not refused.
                let Some(customer) = readable(kind, &caller) else {
                    return Ok(Outcome::Record(None));
                };
                let page = Page {
                    limit: 1,
                    offset: 0,
                };
                let found = self
                    .db
                    .read(move |c| Ok(records(kind, c, page, Some(order), customer)?))
                    .await?;
                Ok(Outcome::Record(found.into_iter().next()))
            }
            Request::Foods { page } => {
                let foods = self
                    .db
                    .read(move |c| Ok(FOODS.list(c, page, None, None)?))
                    .await?;
                Ok(Outcome::Foods(foods))
            }
            Request::Food { food } => {
                let found = self.db.read(move |c| Ok(FOODS.get(c, food)?)).await?;
                Ok(Outcome::Food(found))
            }
            Request::CreateFood { .. } if !caller.is_manager() => Ok(Outcome::Forbidden),
            Request::CreateFood { name, stock, price } => {
                let owned = self.owned.clone();
                let created = self
                    .db
                    .write(move |tx| {
                        Ok(super::kitchen::create_food(
                            tx, &name, stock, price, &owned,
                        )?)
                    })
                    .await?;
                self.db.notify_outbox();
                Ok(Outcome::FoodCreated(created))
            }
        }
    }
}

/// A page of a worker's records (or one order's), optionally only one
/// customer's.
fn records(
    kind: WorkerKind,
    c: &rusqlite::Connection,
    page: Page,
    order: Option<OrderId>,
    customer: Option<CustomerId>,
) -> rusqlite::Result<Vec<Record>> {
    Ok(match kind {
        WorkerKind::Pay => wrap(PAYS.list(c, page, order, customer)?, Record::Payment),
        WorkerKind::Kitchen => wrap(TICKETS.list(c, page, order, customer)?, Record::Ticket),
        WorkerKind::Delivery => wrap(DELIVERIES.list(c, page, order, customer)?, Record::Delivery),
        WorkerKind::Coupon => wrap(COUPONS.list(c, page, order, customer)?, Record::Coupon),
    })
}

fn wrap<R>(rows: Vec<R>, as_record: fn(R) -> Record) -> Vec<Record> {
    rows.into_iter().map(as_record).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_wire_form() {
        let q = Request::Records {
            page: Page {
                limit: 5,
                offset: 0,
            },
            order: Some(OrderId::new(3).expect("valid")),
        };
        let text = serde_json::to_string(&q).expect("json");
        assert_eq!(
            text,
            r#"{"request":"records","page":{"limit":5,"offset":0},"order":3}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&text).expect("back"), q);
        // Ids parse on the way in: a request cannot name order 0.
        assert!(serde_json::from_str::<Request>(r#"{"request":"record","order":0}"#).is_err());
    }
}
