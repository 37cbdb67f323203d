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
use crate::orchestrator::store::IdempotencyKey;
use crate::orchestrator::{AwaitAdmission, Locate, PlaceOrder, dispatch, store};
use crate::saga::machine::{Effect, Event, Refusal, Saga, StepStatus};
use crate::workers::kitchen;

type State = web::Data<ApiState>;
type Q = web::Query<std::collections::HashMap<String, String>>;

/// How long a client should wait before trying again after a 503.
const RETRY_AFTER_SECS: u64 = 5;

/// The order view: the order and its saga's state.
pub fn order_view(saga: &Saga) -> Value {
    store::order_json(saga)
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
    if let Some(k) = &key
        && let Some(id) = state.sagas.order_of_key(k).await?
    {
        // A retry of an order we already took: answer for that order.
        let actor = state
            .orchestrator
            .send(Locate(id))
            .await
            .map_err(crate::orchestrator::OrchestratorError::from)??;
        return respond(&state, id, actor).await;
    }
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
    if !state.transport.is_ready() {
        return Err(ApiError::unavailable(
            "the message broker is unavailable; try again shortly",
            RETRY_AFTER_SECS,
        ));
    }
    let draft = OrderDetails {
        // Replaced by the id the orchestrator allocates.
        order_id: OrderId::new(i64::MAX).map_err(|e| ApiError::bad_request(e.to_string()))?,
        customer_id: customer,
        food_id: food,
        qty,
        amount: item.price.times(qty),
    };
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
        .await;
    let (id, saga_actor) = match placed {
        Ok(Ok(placed)) => placed,
        Ok(Err(e)) => {
            breaker.inspect(|b| b.release());
            return Err(e.into());
        }
        Err(e) => {
            breaker.inspect(|b| b.release());
            return Err(crate::orchestrator::OrchestratorError::from(e).into());
        }
    };
    respond(&state, id, saga_actor).await
}

/// Waits for the payment's outcome of order `id` and answers for it.
async fn respond(
    state: &ApiState,
    id: OrderId,
    saga_actor: actix::Addr<crate::orchestrator::SagaActor>,
) -> Result<HttpResponse, ApiError> {
    let outcome = tokio::time::timeout(state.order_timeout, saga_actor.send(AwaitAdmission)).await;
    let saga = match outcome {
        Ok(Ok(Some(saga))) => saga,
        _ => {
            // No answer in time: make sure the order is never established.
            let reason = "payment did not answer in time".to_owned();
            let _ = dispatch(&state.orchestrator, id, Event::Abandon { reason }).await;
            return Err(ApiError::unavailable(
                "payment is unavailable right now; try again shortly",
                RETRY_AFTER_SECS,
            )
            .with_extra(json!({ "orderId": id })));
        }
    };
    match saga.admission() {
        Some(Ok(())) => Ok(HttpResponse::Created().json(order_view(&saga))),
        Some(Err(reason)) if saga.order_status == crate::domain::OrderStatus::Cancelled => {
            Err(ApiError::conflict(
                "order_cancelled",
                format!("the order was cancelled before it was paid: {reason}"),
            )
            .with_extra(json!({ "orderId": id })))
        }
        Some(Err(reason)) => {
            let pay = saga.steps.first();
            let declined =
                pay.is_some_and(|p| p.status == StepStatus::Failed && p.effect == Effect::None);
            if declined {
                Err(
                    ApiError::new(StatusCode::PAYMENT_REQUIRED, "payment_declined", reason)
                        .with_extra(json!({ "orderId": id })),
                )
            } else {
                Err(ApiError::unavailable(reason, RETRY_AFTER_SECS)
                    .with_extra(json!({ "orderId": id })))
            }
        }
        None => Err(ApiError::unavailable(
            "payment outcome unknown",
            RETRY_AFTER_SECS,
        )),
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
    Ok(ok_json(&sagas.iter().map(order_view).collect::<Vec<_>>()))
}

pub async fn get(state: State, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id = order_id(&path)?;
    state
        .sagas
        .db()
        .read(move |c| store::get_saga(c, id))
        .await?
        .map(|s| ok_json(&order_view(&s)))
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

async fn progress(
    state: State,
    req: HttpRequest,
    raw: &str,
    progress: Progress,
) -> Result<HttpResponse, ApiError> {
    state.require_manager(&req)?;
    let id = order_id(raw)?;
    let saga = state
        .sagas
        .db()
        .read(move |c| store::get_saga(c, id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no order {id}")))?;
    if !saga.order_status.is_cancellable()
        || !saga.state.is_active() && saga.state != crate::saga::machine::SagaState::Completed
    {
        return Err(ApiError::conflict(
            "not_in_progress",
            format!("order {id} is {} ({:?})", saga.order_status, saga.state),
        ));
    }
    let message_id = state.sagas.send_progress(id, progress).await?;
    Ok(HttpResponse::Accepted().json(json!({
        "orderId": id,
        "progress": progress.as_str(),
        "messageId": message_id,
    })))
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
