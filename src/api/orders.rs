//! Orders: placing one (waiting for its payment), reading them, the
//! manager's cancellation and manual-mode progress.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use super::contract::requests::{CustomerQuery, IdPath, NewOrder, id_filter, page};
use super::contract::responses::{CancelAccepted, ErrorBody, Order, ProgressAccepted};
use super::error::ApiError;
use super::{ApiState, ok_json};
use crate::domain::WorkerKind;
use crate::domain::{CustomerId, FoodId, Money, OrderId, OrderStatus, Qty};
use crate::messages::{OrderDetails, Progress};
use crate::orchestrator::store::{IdempotencyKey, KeyUse, Stored};
use crate::orchestrator::{
    AwaitAdmission, Located, OrchestratorError, PlaceOrder, ask, dispatch, store,
};
use crate::rpc::Query;
use crate::saga::machine::{Admission, Event, Refusal, SagaState};
use crate::views::my_orders::MyOrder;
use serde::Deserialize as _;

type State = web::Data<ApiState>;

/// What placing an order needs of a catalog item (as the kitchen shows it).
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct CatalogItem {
    name: String,
    stock: i64,
    price_cents: i64,
}

/// How long a client should wait before trying again after a 503.
const RETRY_AFTER_SECS: u64 = 5;

/// The order view of a stored row; a quarantined one shows what is known.
fn order_view(row: &Stored) -> Order {
    match row {
        Stored::Saga(saga) => Order::from(saga.as_ref()),
        Stored::Quarantined(q) => Order::from(q),
    }
}

fn order_id(raw: i64) -> Result<OrderId, ApiError> {
    OrderId::new(raw).map_err(|_| ApiError::not_found(format!("no order `{raw}`")))
}

fn unprocessable(error: &'static str, detail: String) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, error, detail)
}

/// The client's `Idempotency-Key` header, if any.
fn idempotency_key(req: &HttpRequest) -> Result<Option<IdempotencyKey>, ApiError> {
    if req.headers().get_all("Idempotency-Key").count() > 1 {
        return Err(ApiError::bad_request(
            "send one Idempotency-Key, not several",
        ));
    }
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

/// Places an order and waits for its payment.
#[utoipa::path(
    post,
    path = "/orders",
    operation_id = "placeOrder",
    tag = "orders",
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,200}$", description = "1 to 200 visible ASCII characters: the same key and body answer for the same order")),
    request_body = NewOrder,
    responses(
        (status = 201, description = "paid: the order is established", body = Order,
            links(
                ("GetOrder" = (operation_id = "getOrder", parameters(("id" = "$response.body#/id")))),
                ("GetSaga" = (operation_id = "getSaga", parameters(("id" = "$response.body#/id")))),
                ("GetPayment" = (operation_id = "getPay", parameters(("id" = "$response.body#/id")))),
                ("GetTicket" = (operation_id = "getKitchen", parameters(("id" = "$response.body#/id")))),
                ("CancelOrder" = (operation_id = "cancelOrder", parameters(("id" = "$response.body#/id")))),
                ("MarkCooked" = (operation_id = "markCooked", parameters(("id" = "$response.body#/id")))),
                ("MarkPickedUp" = (operation_id = "markPickedUp", parameters(("id" = "$response.body#/id")))),
                ("MarkDelivered" = (operation_id = "markDelivered", parameters(("id" = "$response.body#/id")))),
                ("GetDelivery" = (operation_id = "getDelivery", parameters(("id" = "$response.body#/id")))),
                ("GetCoupon" = (operation_id = "getCoupon", parameters(("id" = "$response.body#/id"))))
            )),
        (status = 400, description = "the body does not fit the schema", body = ErrorBody),
        (status = 402, description = "payment declined; nothing established", body = ErrorBody),
        (status = 409, description = "out of stock, or cancelled before it was paid", body = ErrorBody),
        (status = 413, description = "body larger than 64 KiB", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
        (status = 422, description = "unknown customer or food, total too large, or the key was used for another request", body = ErrorBody),
        (status = 503, description = "payment or broker unavailable; nothing established; Retry-After", body = ErrorBody),
    )
)]
pub async fn place(
    state: State,
    req: HttpRequest,
    body: web::Json<NewOrder>,
) -> Result<HttpResponse, ApiError> {
    let key = idempotency_key(&req)?;
    let body = body.into_inner();
    let customer = CustomerId::new(body.customer_id.0)
        .map_err(|e| unprocessable("unknown_customer", e.to_string()))?;
    let food = FoodId::new(body.food_catalog_id.0)
        .map_err(|e| unprocessable("unknown_food", e.to_string()))?;
    let qty = Qty::new(body.qty.0).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let mut draft = OrderDetails {
        // Replaced by the id the orchestrator allocates.
        order_id: OrderId::new(i64::MAX).map_err(|e| ApiError::bad_request(e.to_string()))?,
        customer_id: customer,
        food_id: food,
        qty,
        amount: Money::from_cents(0),
    };
    if let Some(k) = &key {
        match state.sagas.key_use(k, &draft).await? {
            KeyUse::Fresh | KeyUse::TurnedAway => {}
            // A retry of an order we already took: answer for that order.
            KeyUse::Placed(id) => return respond(&state, id, None).await,
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
    let partition = state.owners.count().of(food.get());
    let found = state
        .owners
        .one(
            WorkerKind::Kitchen,
            partition,
            Query::Food { id: food.get() },
        )
        .await?;
    let item = Option::<CatalogItem>::deserialize(found)
        .map_err(|e| ApiError::unavailable(format!("the kitchen answered oddly: {e}"), 1))?
        .ok_or_else(|| unprocessable("unknown_food", format!("no food catalog item {food}")))?;
    if item.stock < i64::from(qty.get()) {
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
    draft.amount = Money::from_cents(item.price_cents)
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
        .send(PlaceOrder {
            order: draft,
            key,
            admit_within: state.order_timeout,
        })
        .await
        .map_err(OrchestratorError::from)
        .and_then(|r| r);
    let (id, actor) = match placed {
        Ok((id, Some(actor))) => (id, Some(actor)),
        Ok((id, None)) => {
            // A concurrent request with the same key placed it: this one
            // started nothing, so its trial permit goes back.
            breaker.inspect(|b| b.release());
            (id, None)
        }
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
    respond(&state, id, actor).await
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
async fn respond(
    state: &ApiState,
    id: OrderId,
    actor: Option<Located>,
) -> Result<HttpResponse, ApiError> {
    // The saga answers by its `admit_by` (`order_timeout` after it was
    // placed) plus a commit; the margin only guards against an actor that
    // cannot commit at all.
    let bound = state.order_timeout + std::time::Duration::from_secs(10);
    let wait = async {
        // The actor that placed it, if we hold it; else (or if it is gone,
        // or stopped with the wait unanswered: a panic) the actor the
        // registry loads. The outer bound ends this.
        if let Some(a) = &actor
            && let Ok(Some(saga)) = a.addr.send(AwaitAdmission).await
        {
            return Ok(Some(saga));
        }
        loop {
            match ask(&state.orchestrator, id, AwaitAdmission).await {
                Ok(None) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
                other => return other,
            }
        }
    };
    let outcome = tokio::time::timeout(bound, wait).await;
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
        Admission::Established => Ok(HttpResponse::Created().json(Order::from(&saga))),
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

/// Orders, by id.
#[utoipa::path(
    get,
    path = "/orders",
    operation_id = "listOrders",
    tag = "orders",
    params(CustomerQuery),
    responses(
        (status = 200, description = "orders ordered by id", body = [Order]),
        (status = 400, description = "bad query", body = ErrorBody),
        (status = 503, description = "storage unavailable", body = ErrorBody),
    )
)]
pub async fn list(state: State, q: web::Query<CustomerQuery>) -> Result<HttpResponse, ApiError> {
    let page = page(q.limit, q.offset).map_err(ApiError::bad_request)?;
    let customer =
        id_filter("customerId", q.customer_id, CustomerId::new).map_err(ApiError::bad_request)?;
    let sagas = state
        .sagas
        .db()
        .read(move |c| store::list_sagas(c, page, None, customer))
        .await?;
    Ok(ok_json(&sagas.iter().map(order_view).collect::<Vec<_>>()))
}

/// One order.
#[utoipa::path(
    get,
    path = "/orders/{id}",
    operation_id = "getOrder",
    tag = "orders",
    params(IdPath),
    responses(
        (status = 200, description = "the order", body = Order),
        (status = 404, description = "no such order", body = ErrorBody),
        (status = 503, description = "storage unavailable", body = ErrorBody),
    )
)]
pub async fn get(state: State, path: web::Path<IdPath>) -> Result<HttpResponse, ApiError> {
    let id = order_id(path.id)?;
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
#[utoipa::path(
    get,
    path = "/myOrders",
    operation_id = "listMyOrders",
    tag = "read models",
    params(CustomerQuery),
    responses(
        (status = 200, description = "per order, every part's status", body = [MyOrder]),
        (status = 400, description = "bad query", body = ErrorBody),
        (status = 503, description = "storage unavailable", body = ErrorBody),
    )
)]
pub async fn my_orders(
    state: State,
    q: web::Query<CustomerQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = page(q.limit, q.offset).map_err(ApiError::bad_request)?;
    let customer =
        id_filter("customerId", q.customer_id, CustomerId::new).map_err(ApiError::bad_request)?;
    let list = state
        .views
        .my_orders
        .read(move |c| Ok(crate::views::my_orders::list(c, page, customer)?))
        .await?;
    Ok(ok_json(&list))
}

/// `DELETE /kitchens/{id}`: the manager cancels order `id`.
#[utoipa::path(
    delete,
    path = "/kitchens/{id}",
    operation_id = "cancelOrder",
    tag = "orders",
    params(IdPath),
    security(("manager" = [])),
    responses(
        (status = 202, description = "cancelled: the saga compensates", body = CancelAccepted,
            links(("GetSaga" = (operation_id = "getSaga", parameters(("id" = "$request.path.id")))))),
        (status = 401, description = "no manager token", body = ErrorBody),
        (status = 403, description = "wrong manager token", body = ErrorBody),
        (status = 404, description = "no such order", body = ErrorBody),
        (status = 409, description = "delivered, cancelled, rejected or quarantined", body = ErrorBody),
        (status = 503, description = "orchestrator or storage unavailable", body = ErrorBody),
    )
)]
pub async fn cancel(
    state: State,
    req: HttpRequest,
    path: web::Path<IdPath>,
) -> Result<HttpResponse, ApiError> {
    state.require_manager(&req)?;
    let id = order_id(path.id)?;
    match dispatch(&state.orchestrator, id, Event::Cancel).await? {
        Ok(()) => Ok(HttpResponse::Accepted().json(CancelAccepted {
            saga_id: id,
            order_id: id,
            status: OrderStatus::Cancelled,
            state: SagaState::Compensating,
        })),
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
    raw: i64,
    progress: Progress,
) -> Result<HttpResponse, ApiError> {
    state.require_manager(&req)?;
    let id = order_id(raw)?;
    match dispatch(&state.orchestrator, id, Event::Progress { progress }).await? {
        Ok(()) => Ok(HttpResponse::Accepted().json(ProgressAccepted {
            order_id: id,
            progress: progress.as_str().to_owned(),
        })),
        Err(refusal) => Err(ApiError::conflict("not_in_progress", refusal.to_string())
            .with_extra(json!({ "orderId": id }))),
    }
}

/// Declares a manual-progress endpoint.
macro_rules! progress_endpoint {
    ($fn:ident, $path:literal, $op:literal, $progress:expr, $what:literal) => {
        #[doc = $what]
        #[utoipa::path(
            post,
            path = $path,
            operation_id = $op,
            tag = "orders",
            params(IdPath),
            security(("manager" = [])),
            responses(
                (status = 202, description = "taken by the order's saga", body = ProgressAccepted),
                (status = 401, description = "no manager token", body = ErrorBody),
                (status = 403, description = "wrong manager token", body = ErrorBody),
                (status = 404, description = "no such order", body = ErrorBody),
                (status = 409, description = "the step does not wait for it now", body = ErrorBody),
                (status = 503, description = "orchestrator or storage unavailable", body = ErrorBody),
            )
        )]
        pub async fn $fn(
            state: State,
            req: HttpRequest,
            path: web::Path<IdPath>,
        ) -> Result<HttpResponse, ApiError> {
            progress(state, req, path.id, $progress).await
        }
    };
}

progress_endpoint!(
    cooked,
    "/kitchens/{id}/cooked",
    "markCooked",
    Progress::Cooked,
    "The kitchen cooked order `id` (manual mode)."
);
progress_endpoint!(
    picked_up,
    "/deliveries/{id}/pickedUp",
    "markPickedUp",
    Progress::PickedUp,
    "The delivery team picked order `id` up (manual mode)."
);
progress_endpoint!(
    delivered,
    "/deliveries/{id}/delivered",
    "markDelivered",
    Progress::Delivered,
    "The delivery team handed order `id` over; closes it for cancellation."
);
