//! Placing an order from an API process: what an `Idempotency-Key` says
//! already, the customer and the food checked with their owners, then the
//! placement at the owner of the order's partition — which decides it and
//! waits for the payment. An answer lost on the way is learned again by the
//! order's key, which every order carries. What cannot have changed since
//! an owner said it (a customer exists; a food's price, and its stock when
//! far above the order, for a second) is not asked again (`known`).

use std::time::Instant;

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use serde_json::json;

use super::ApiState;
use super::error::ApiError;
use super::outcome::{self, RETRY_AFTER_SECS};
use crate::auth::Caller;
use crate::cluster::owners::{AskError, Unanswered};
use crate::domain::{FoodId, IdempotencyKey, Money, WorkerKind};
use crate::messages::OrderDetails;
use crate::orchestrator::requests::{Outcome, Request};
use crate::partition::{OwnerRole, Partition};
use crate::workers::kitchen::Food;
use crate::workers::requests::{Outcome as WorkerOutcome, Request as WorkerRequest};

const ORCHESTRATOR: OwnerRole = OwnerRole::Orchestrator;

fn unprocessable(error: &'static str, detail: String) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, error, detail)
}

/// Places `draft` (its amount not yet known) under the client's `key`, if
/// it sent one.
pub async fn place(
    state: &ApiState,
    caller: &Caller,
    mut draft: OrderDetails,
    key: Option<IdempotencyKey>,
) -> Result<HttpResponse, ApiError> {
    if let Some(key) = &key {
        let at = state.orchestrators.count().of_text(key.as_str());
        let replay = Request::Replay {
            key: key.clone(),
            order: draft,
        };
        let known = state
            .orchestrators
            .one(ORCHESTRATOR, at, caller, replay)
            .await?;
        if !matches!(known, Outcome::KeyFree) {
            // A retry of an order we already took: its answer.
            return answer(known);
        }
    }
    check_customer(state, caller, &draft).await?;
    draft.amount = priced(state, caller, &draft).await?;
    let admit_within_ms = u64::try_from(state.order_timeout.as_millis()).unwrap_or(u64::MAX);
    let place = |key: IdempotencyKey| Request::Place {
        order: draft,
        key,
        admit_within_ms,
    };
    let owners = &state.orchestrators;
    let (partition, key, why) = match key {
        // A key always goes to the same partition's owner, which keeps it
        // with its order: wait for that owner.
        Some(key) => {
            let at = owners.count().of_text(key.as_str());
            match owners
                .ask_waiting(ORCHESTRATOR, at, caller, place(key.clone()))
                .await
            {
                Ok(answer) => return answered(answer.result.map_err(|f| failed(at, f))),
                Err(e @ AskError::NoOwner(_)) => return Err(e.into()),
                Err(e) => (at, key, e),
            }
        }
        // Without one, the next partition whose owner is there takes it,
        // under a key of ours that falls in that partition (so the outcome
        // of a placement whose answer is lost can still be learned).
        None => {
            let ours = |p: Partition| place(ours(owners.count(), p));
            match owners.anywhere(ORCHESTRATOR, caller, ours).await {
                Ok(outcome) => return answer(outcome),
                Err(Unanswered {
                    error: e @ (AskError::NoOwner(_) | AskError::Failed { .. }),
                    ..
                }) => return Err(e.into()),
                Err(Unanswered {
                    partition,
                    request: Request::Place { key, .. },
                    error,
                }) => (partition, key, error),
                Err(Unanswered { error, .. }) => return Err(error.into()),
            }
        }
    };
    learn_outcome(state, caller, partition, key, draft, why).await
}

/// Our key in `partition`.
fn ours(count: crate::partition::PartitionCount, p: Partition) -> IdempotencyKey {
    IdempotencyKey::parse(&count.key_in(p))
        .unwrap_or_else(|e| unreachable!("our keys are visible ASCII: {e}"))
}

fn failed(at: Partition, failure: crate::cluster::owners::Failure) -> AskError {
    AskError::Failed {
        what: format!("{ORCHESTRATOR} {at}"),
        failure,
    }
}

fn answered(outcome: Result<Outcome, AskError>) -> Result<HttpResponse, ApiError> {
    answer(outcome?)
}

/// The answer of a placement (or of a replay that found one).
fn answer(outcome: Outcome) -> Result<HttpResponse, ApiError> {
    match outcome {
        Outcome::Placement(p) => outcome::placement(p),
        other => Err(outcome::other(other, "order")),
    }
}

/// Customers are never deleted: a customer seen here is still there when
/// the saga starts, so one its owner has confirmed is not asked about again.
async fn check_customer(
    state: &ApiState,
    caller: &Caller,
    draft: &OrderDetails,
) -> Result<(), ApiError> {
    let customer = draft.customer_id;
    if state.known_customers.contains(customer) {
        return Ok(());
    }
    let at = state.orchestrators.partition_of(customer.get());
    let found = state
        .orchestrators
        .one(ORCHESTRATOR, at, caller, Request::Customer { customer })
        .await?;
    match found {
        Outcome::Customer(_) => {
            state.known_customers.confirmed(customer);
            Ok(())
        }
        Outcome::NotFound => Err(unprocessable(
            "unknown_customer",
            format!("no customer {customer}"),
        )),
        other => Err(outcome::other(other, "customer")),
    }
}

/// Below this many units beyond the order's own in the kitchen's last
/// answer, the kitchen is asked again, however recent that answer: near the
/// end of a food's stock the answer (409 `out_of_stock`) is always the
/// kitchen's current one, as it was before answers were remembered.
pub const STOCK_SLACK: i64 = 1_000;

/// The order's total, once the kitchen has the food and enough of it (the
/// kitchen decides again when the ticket comes: stock may run out between).
/// The kitchen's answer of the last second stands in for asking it again
/// when it showed far more stock than the order needs ([`STOCK_SLACK`]);
/// the price in it is exact (a food's price never changes).
async fn priced(
    state: &ApiState,
    caller: &Caller,
    draft: &OrderDetails,
) -> Result<Money, ApiError> {
    let food = draft.food_id;
    let qty = i64::from(draft.qty.get());
    let item = match state.known_foods.get(food, Instant::now()) {
        Some(item) if item.stock >= qty.saturating_add(STOCK_SLACK) => item,
        _ => ask_kitchen(state, caller, food).await?,
    };
    if item.stock < qty {
        return Err(ApiError::conflict(
            "out_of_stock",
            format!("{} has {} left; {qty} ordered", item.name, item.stock),
        ));
    }
    state.known_foods.took(food, qty);
    item.price
        .total(draft.qty)
        .map_err(|e| unprocessable("amount_too_large", e.to_string()))
}

/// The kitchen's answer about `food`, remembered for the next orders.
async fn ask_kitchen(state: &ApiState, caller: &Caller, food: FoodId) -> Result<Food, ApiError> {
    let kitchen = OwnerRole::Worker(WorkerKind::Kitchen);
    let at = state.workers.partition_of(food.get());
    let asked = Instant::now();
    let found = state
        .workers
        .one(kitchen, at, caller, WorkerRequest::Food { food })
        .await?;
    match found {
        WorkerOutcome::Food(Some(item)) => {
            state.known_foods.answered(item.clone(), asked);
            Ok(item)
        }
        WorkerOutcome::Food(None) => Err(unprocessable(
            "unknown_food",
            format!("no food catalog item {food}"),
        )),
        _ => Err(ApiError::unavailable("the kitchen answered oddly", 1)),
    }
}

/// A placement went out but its answer did not come back: asks the owner
/// what became of the key (a few times, briefly). Its order's answer if it
/// was placed; a 503 that says no order stands if it was not (or was turned
/// away); else
/// a 503 that says the outcome is unknown and names the key to learn it by.
async fn learn_outcome(
    state: &ApiState,
    caller: &Caller,
    partition: Partition,
    key: IdempotencyKey,
    draft: OrderDetails,
    why: AskError,
) -> Result<HttpResponse, ApiError> {
    tracing::warn!(error = %why, "no answer to a placement; asking what became of it");
    for attempt in 0..3u64 {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(500 * attempt)).await;
        }
        let replay = Request::Replay {
            key: key.clone(),
            order: draft,
        };
        let asked = state
            .orchestrators
            .ask_waiting(ORCHESTRATOR, partition, caller, replay)
            .await;
        match asked.map(|a| a.result) {
            Ok(Ok(Outcome::KeyFree)) => {
                // Never placed, or turned away (its payment may have been
                // requested: a charge is refunded); either way no order
                // stands, and placing it again starts a new one.
                return Err(ApiError::unavailable(
                    "the order was not established: it could not be placed, or it was abandoned \
                     (a payment that went through is refunded); placing it again starts a new order",
                    RETRY_AFTER_SECS,
                ));
            }
            Ok(Ok(known)) => return answer(known),
            Ok(Err(failure)) => return Err(failed(partition, failure).into()),
            Err(e) => tracing::debug!(error = %e, "the owner does not answer yet"),
        }
    }
    Err(ApiError::unavailable(
        format!(
            "the order's outcome is not known yet; send the same request with `Idempotency-Key: {key}` to learn it"
        ),
        RETRY_AFTER_SECS,
    )
    .with_extra(json!({ "idempotencyKey": key })))
}
