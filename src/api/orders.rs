//! Orders: placing one (waiting for its payment), reading them, the
//! manager's cancellation and manual-mode progress.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use super::body::{Body, Query, required};
use super::error::ApiError;
use super::{ApiState, ok_json};
use crate::domain::{CustomerId, FoodId, OrderId, Qty};
use crate::messages::{OrderDetails, Progress};
use crate::orchestrator::store::{IdempotencyKey, KeyUse, Stored};
use crate::orchestrator::{AwaitAdmission, OrchestratorError, PlaceOrder, ask, dispatch, store};
use crate::saga::machine::{Admission, Event, Refusal, Saga};
use crate::workers::kitchen;

type State = web::Data<ApiState>;
type Q = web::Query<std::collections::HashMap<String, String>>;

/// How long a client should wait before trying again after a 503.
const RETRY_AFTER_SECS: u64 = 5;

/// The order view: the order and its saga's state.
pub fn order_view(saga: &Saga) -> Value {
    store::order_json(saga)
}

/// The order view of a stored row; a quarantined one shows what is known.
fn stored_order_view(row: &Stored) -> Value {
    match row {
        Stored::Saga(saga) => order_view(saga),
        Stored::Quarantined(q) => json!({
            "id": q.id,
            "orderId": q.id,
            "status": q.order_status,
            "sagaState": "Failed",
            "quarantined": true,
            "reason": q.reason,
            "createdAt": q.created_at.to_rfc3339(),
            "updatedAt": q.updated_at.to_rfc3339(),
        }),
    }
}

fn order_id(raw: &str) -> Result<OrderId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::not_found(format!("no order `{raw}`")))
}

fn unprocessable(error: &'static str, detail: String) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, error, detail)
}

/// The client's `Idempotency-Key` header, if any.
fn idempotency_key(req: &HttpRequest) -> Result<Option<IdempotencyKey>, ApiError> {
    match req.headers().get("Idempotency-Key") {
        None => Ok(None),
        Some(v) => {
            let raw = v
                .to_str()
                .map_err(|_| ApiError::bad_request("Idempotency-Key must be visible ASCII"))?;
            IdempotencyKey::parse(raw)
                .map(Some)
                .map_err(ApiError::bad_request)
        }
    }
}

pub async fn place(
    state: State,
    req: HttpRequest,
    body: web::Json<serde_json::Value>,
) -> Result<HttpResponse, ApiError> {
    let key = idempotency_key(&req)?;
    let b = Body::new(body.into_inner())?;
    let customer = required(
        b.int(&["customerId", "customerid", "customer_id", "customerID"])?,
        "customerId",
    )?;
    let food = required(
        b.int(&[
            "foodCatalogId",
            "foodcaltalogid",
            "foodcatalogid",
            "foodCatalogid",
            "food_catalog_id",
        ])?,
        "foodCatalogId",
    )?;
    let qty = Qty::new(required(b.int(&["qty"])?, "qty")?)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let customer =
        CustomerId::new(customer).map_err(|e| unprocessable("unknown_customer", e.to_string()))?;
    let food = FoodId::new(food).map_err(|e| unprocessable("unknown_food", e.to_string()))?;
    let mut draft = OrderDetails {
        // Replaced by the id the orchestrator allocates.
        order_id: OrderId::new(i64::MAX).map_err(|e| ApiError::bad_request(e.to_string()))?,
        customer_id: customer,
        food_id: food,
        qty,
        amount: crate::domain::Money::from_cents(0),
    };
    if let Some(k) = &key {
        match state.sagas.key_use(k, &draft).await? {
            KeyUse::Fresh | KeyUse::TurnedAway => {}
            // A retry of an order we already took: answer for that order.
            KeyUse::Placed(id) => return respond(&state, id).await,
            KeyUse::OtherRequest(id) => return Err(key_reused(id)),
        }
    }

    let known = state
        .sagas
        .db()
        .read(move |c| store::get_customer(c, customer))
        .await?;
    if known.is_none() {
        return Err(unprocessable(
            "unknown_customer",
            format!("no customer {customer}"),
        ));
    }
    let item = state
        .kitchen
        .read(move |c| Ok(kitchen::get_food(c, food)?))
        .await?
        .ok_or_else(|| unprocessable("unknown_food", format!("no food catalog item {food}")))?;
    if !kitchen::in_stock(&item, qty) {
        return Err(ApiError::conflict(
            "out_of_stock",
            format!(
                "{} has {} left; {} ordered",
                item.name,
                item.stock,
                qty.get()
            ),
        ));
    }
    draft.amount = item
        .price
        .total(qty)
        .map_err(|e| unprocessable("amount_too_large", e.to_string()))?;
    if !state.transport.is_ready() {
        return Err(ApiError::unavailable(
            "the message broker is unavailable; try again shortly",
            RETRY_AFTER_SECS,
        ));
    }
    // The breaker turns the order away at once while payment is failing,
    // without touching the broker.
    let breaker = state.breakers.admission();
    if let Some(b) = breaker
        && let Err(wait) = b.try_acquire(crate::domain::Millis::now())
    {
        return Err(ApiError {
            error: "circuit_open",
            ..ApiError::unavailable(
                "payment is overloaded; try again shortly",
                wait.as_secs().max(1),
            )
        });
    }
    let placed = state
        .orchestrator
        .send(PlaceOrder { order: draft, key })
        .await
        .map_err(OrchestratorError::from)
        .and_then(|r| r);
    let id = match placed {
        Ok(id) => id,
        Err(e) => {
            // No saga started: the breaker's trial permit, if this was
            // one, goes back.
            breaker.inspect(|b| b.release());
            return Err(match e {
                OrchestratorError::KeyReused(id) => key_reused(id),
                e => e.into(),
            });
        }
    };
    respond(&state, id).await
}

fn key_reused(id: OrderId) -> ApiError {
    unprocessable(
        "idempotency_key_reused",
        format!("this Idempotency-Key was used for a different order request (order {id}); use a new key"),
    )
    .with_extra(json!({ "orderId": id }))
}

/// Waits for the payment's outcome of order `id` and answers for it. The
/// saga's actor abandons the order itself if the payment does not answer
/// within `order_timeout`, so a 503 means nothing was established.
async fn respond(state: &ApiState, id: OrderId) -> Result<HttpResponse, ApiError> {
    let wait = AwaitAdmission {
        within: state.order_timeout,
    };
    // The actor answers within `order_timeout` plus a commit; the margin
    // only guards against an actor that cannot commit at all.
    let bound = state.order_timeout + std::time::Duration::from_secs(10);
    let outcome = tokio::time::timeout(bound, ask(&state.orchestrator, id, wait)).await;
    let saga = match outcome {
        Ok(Ok(Some(saga))) => saga,
        Ok(Err(e @ OrchestratorError::Quarantined(..))) => return Err(e.into()),
        _ => {
            return Err(ApiError::unavailable(
                "the order's outcome is not known yet; retry with the same Idempotency-Key to learn it",
                RETRY_AFTER_SECS,
            )
            .with_extra(json!({ "orderId": id })));
        }
    };
    match saga.admission() {
        Admission::Established => Ok(HttpResponse::Created().json(order_view(&saga))),
        Admission::CancelledUnpaid(reason) => Err(ApiError::conflict(
            "order_cancelled",
            format!("the order was cancelled before it was paid: {reason}"),
        )
        .with_extra(json!({ "orderId": id }))),
        Admission::Declined(reason) => {
            Err(
                ApiError::new(StatusCode::PAYMENT_REQUIRED, "payment_declined", reason)
                    .with_extra(json!({ "orderId": id })),
            )
        }
        Admission::Unavailable(reason) => Err(ApiError::unavailable(
            format!("{reason}; nothing was established, try again shortly"),
            RETRY_AFTER_SECS,
        )
        .with_extra(json!({ "orderId": id }))),
        Admission::Pending => Err(ApiError::unavailable(
            "payment outcome unknown",
            RETRY_AFTER_SECS,
        )
        .with_extra(json!({ "orderId": id }))),
    }
}

pub async fn list(state: State, q: Q) -> Result<HttpResponse, ApiError> {
    let q = Query(q.into_inner());
    let page = q.page()?;
    let customer = q
        .int("customerId")?
        .map(|c| CustomerId::new(c).map_err(|e| ApiError::bad_request(e.to_string())))
        .transpose()?;
    let sagas = state
        .sagas
        .db()
        .read(move |c| store::list_sagas(c, page, None, customer))
        .await?;
    Ok(ok_json(
        &sagas.iter().map(stored_order_view).collect::<Vec<_>>(),
    ))
}

pub async fn get(state: State, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = order_id(&path)?;
    state
        .sagas
        .db()
        .read(move |c| store::get_saga(c, id))
        .await?
        .map(|s| ok_json(&stored_order_view(&s)))
        .ok_or_else(|| ApiError::not_found(format!("no order {id}")))
}

/// "My orders", from its read model: per order, the status of the order and
/// of each worker's record.
pub async fn my_orders(state: State, q: Q) -> Result<HttpResponse, ApiError> {
    let q = Query(q.into_inner());
    let page = q.page()?;
    let customer = q
        .int("customerId")?
        .map(|c| CustomerId::new(c).map_err(|e| ApiError::bad_request(e.to_string())))
        .transpose()?;
    let list = state
        .views
        .my_orders
        .read(move |c| Ok(crate::views::my_orders::list(c, page, customer)?))
        .await?;
    Ok(ok_json(&list))
}

/// `DELETE /kitchens/{id}`: the manager cancels order `id`.
pub async fn cancel(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    state.require_manager(&req)?;
    let id = order_id(&path)?;
    match dispatch(&state.orchestrator, id, Event::Cancel).await? {
        Ok(()) => Ok(HttpResponse::Accepted().json(json!({
            "sagaId": id,
            "orderId": id,
            "status": "Cancelled",
            "state": "Compensating",
        }))),
        Err(Refusal::NotCancellable(status)) => Err(ApiError::conflict(
            "not_cancellable",
            format!("order {id} is {status} and can no longer be cancelled"),
        )
        .with_extra(json!({ "orderId": id, "status": status }))),
        Err(other) => Err(ApiError::conflict("refused", other.to_string())),
    }
}

/// Manual-mode progress: the saga's actor judges it against its current
/// state and, if it fits, sends it to the worker in the same commit.
async fn progress(
    state: State,
    req: HttpRequest,
    raw: &str,
    progress: Progress,
) -> Result<HttpResponse, ApiError> {
    state.require_manager(&req)?;
    let id = order_id(raw)?;
    match dispatch(&state.orchestrator, id, Event::Progress { progress }).await? {
        Ok(()) => Ok(HttpResponse::Accepted().json(json!({
            "orderId": id,
            "progress": progress.as_str(),
        }))),
        Err(refusal) => Err(ApiError::conflict("not_in_progress", refusal.to_string())
            .with_extra(json!({ "orderId": id }))),
    }
}

pub async fn cooked(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    progress(state, req, &path, Progress::Cooked).await
}

pub async fn picked_up(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    progress(state, req, &path, Progress::PickedUp).await
}

pub async fn delivered(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    progress(state, req, &path, Progress::Delivered).await
}
