//! What anyone may ask the owner of an orchestrator partition — place an
//! order, cancel it, report progress, retry a saga, read sagas, orders,
//! customers and reviews — and what it answers, in the orchestrator's own
//! words ([`OrchestratorProtocol`]). The owner's side is [`super::executor`].

use serde::{Deserialize, Serialize};

use super::search::SagaSearch;
use super::store::customers::{Customer, NewCustomer};
use super::store::reviews::{NewReview, Review};
use super::store::{PendingMessage, Stored};
use crate::cluster::owners::{Keyed, Protocol};
use crate::domain::{CustomerId, IdempotencyKey, OrderId, SagaId};
use crate::messages::{OrderDetails, Progress};
use crate::saga::machine::{HistoryEntry, Refusal, Saga, SagaState};
use crate::storage::Page;

/// The protocol of the orchestrators' owners.
pub struct OrchestratorProtocol;

impl Protocol for OrchestratorProtocol {
    type Request = Request;
    type Outcome = Outcome;
    const MESSAGE_TYPE: &'static str = "rpc.orchestrator.v2";
}

/// One operation on the orchestrator's state, executed by the owner of the
/// partition it concerns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "camelCase")]
pub enum Request {
    /// What `key` says about this order request: the placement of the order
    /// it placed, or that it is free (place the order).
    Replay {
        key: IdempotencyKey,
        order: OrderDetails,
    },
    /// Place an order under `key` (the client's, or one of ours that falls in
    /// this partition), and wait for its payment.
    #[serde(rename_all = "camelCase")]
    Place {
        order: OrderDetails,
        key: IdempotencyKey,
        /// How long the payment may take before the saga abandons the order.
        admit_within_ms: u64,
    },
    /// The manager cancels an order.
    Cancel {
        order: OrderId,
    },
    /// A person reports progress on an order (manual mode).
    Progress {
        order: OrderId,
        progress: Progress,
    },
    /// An operator resumes a `Failed` saga.
    Retry {
        saga: SagaId,
    },
    Order {
        order: OrderId,
    },
    Orders {
        page: Page,
        customer: Option<CustomerId>,
    },
    Saga {
        saga: SagaId,
    },
    Sagas {
        page: Page,
        state: Option<SagaState>,
    },
    /// Sagas by any of the operator's filters, after a cursor (an owner of
    /// an earlier version does not know this request: it refuses it, and
    /// the plain list above still works through a rolling upgrade).
    SearchSagas {
        page: Page,
        search: SagaSearch,
    },
    Customer {
        customer: CustomerId,
    },
    Customers {
        page: Page,
    },
    CreateCustomer {
        customer: NewCustomer,
    },
    Reviews {
        page: Page,
    },
    CreateReview {
        review: NewReview,
    },
}

/// What an owner of an earlier version meant by `TurnedAway`: it did not
/// say whether the payment had left, so the cautious answer.
fn payment_may_have_left() -> bool {
    true
}

/// How an order's admission (its payment) came out, as its saga decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "placement", rename_all = "camelCase")]
pub enum Placement {
    /// Paid: the order exists, whatever happened to it since.
    Established { saga: Box<Saga> },
    /// The payment was refused; nothing was established.
    Declined { order: OrderId, reason: String },
    /// Cancelled by the manager before it was paid.
    CancelledUnpaid { order: OrderId, reason: String },
    /// The payment did not answer in time, so the saga turned the order
    /// away (compensating whatever a late payment did). `payment_sent`: the
    /// payment command had left, so the customer may have been charged
    /// (and is refunded); else nothing was established.
    TurnedAway {
        order: OrderId,
        reason: String,
        #[serde(default = "payment_may_have_left")]
        payment_sent: bool,
    },
    /// Its outcome is not known yet: ask again with its key.
    Unknown { order: OrderId },
    /// No saga was started: payment is failing (its breaker is open).
    PaymentOverloaded { retry_after_secs: u64 },
    /// No saga was started: the broker is unavailable.
    BrokerUnavailable,
}

/// A saga with what inspection shows of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SagaDetail {
    pub stored: Stored,
    /// Empty for a quarantined saga.
    pub history: Vec<HistoryEntry>,
    /// Its outbox rows not yet confirmed by the broker.
    pub pending: Vec<PendingMessage>,
}

/// What the owner answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "outcome", content = "value", rename_all = "camelCase")]
pub enum Outcome {
    /// `Place`, or `Replay` of a key that placed an order.
    Placement(Placement),
    /// `Replay`: no order was placed under the key (or it was turned away,
    /// which established nothing): place it.
    KeyFree,
    /// The key was used for another request (this order).
    KeyReused(OrderId),
    /// The saga took the cancel, progress or retry.
    Accepted,
    /// The saga refused it against its current state.
    Refused(Refusal),
    /// No such order, saga or customer (or not the caller's to see).
    NotFound,
    /// The caller may not do this.
    Forbidden,
    /// The saga's stored state cannot be decoded.
    Quarantined {
        saga: SagaId,
        reason: String,
    },
    Order(Stored),
    Orders(Vec<Stored>),
    Saga(Box<SagaDetail>),
    Sagas(Vec<Stored>),
    Customer(Customer),
    Customers(Vec<Customer>),
    Review(Review),
    Reviews(Vec<Review>),
}

/// Takes a list out of an outcome (`None`: it answered something else).
macro_rules! lists {
    ($($name:ident: $variant:ident($item:ty)),+ $(,)?) => {
        impl Outcome {
            $(
                pub fn $name(self) -> Option<Vec<$item>> {
                    match self {
                        Outcome::$variant(rows) => Some(rows),
                        _ => None,
                    }
                }
            )+
        }
    };
}

lists!(
    orders: Orders(Stored),
    sagas: Sagas(Stored),
    customers: Customers(Customer),
    reviews: Reviews(Review),
);

impl Keyed for Stored {
    fn key(&self) -> i64 {
        match self {
            Stored::Saga(s) => s.id.get(),
            Stored::Quarantined(q) => q.id.get(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_typed_ids() {
        let text = r#"{"request":"cancel","order":7}"#;
        let r: Request = serde_json::from_str(text).expect("parses");
        assert_eq!(
            r,
            Request::Cancel {
                order: OrderId::new(7).expect("valid")
            }
        );
        assert_eq!(serde_json::to_string(&r).expect("json"), text);
        for bad in [
            r#"{"request":"cancel","order":0}"#,
            r#"{"request":"replay","key":"","order":{}}"#,
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }
}
