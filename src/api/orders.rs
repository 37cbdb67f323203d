//! Orders: placing one (waiting for its payment), reading them, the
//! manager's cancellation and manual-mode progress.

use actix_web::{HttpRequest, HttpResponse, web};

use super::contract::requests::{CustomerQuery, IdPath, NewOrder, id_filter};
use super::contract::responses::{CancelAccepted, ErrorBody, MyOrder, Order, ProgressAccepted};
use super::error::ApiError;
use super::{ApiState, ORCHESTRATOR, ok_json, outcome, placing};
use crate::auth::Caller;
use crate::domain::{CustomerId, FoodId, IdempotencyKey, Money, OrderId, OrderStatus, Qty};
use crate::messages::{OrderDetails, Progress};
use crate::orchestrator::requests::{Outcome, Request};
use crate::saga::machine::SagaState;

type State = web::Data<ApiState>;

fn order_id(raw: i64) -> Result<OrderId, ApiError> {
    OrderId::new(raw).map_err(|_| ApiError::not_found(format!("no order `{raw}`")))
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
                .map_err(|e| ApiError::bad_request(e.to_string()))
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
        (status = 422, description = "unknown customer or food, no customer named (staff must name one), total too large, or the key was used for another request", body = ErrorBody),
        (status = 503, description = "payment or broker unavailable: no order established (a payment that went through is refunded); Retry-After", body = ErrorBody),
    )
)]
pub async fn place(
    state: State,
    caller: Caller,
    req: HttpRequest,
    body: web::Json<NewOrder>,
) -> Result<HttpResponse, ApiError> {
    let key = idempotency_key(&req)?;
    let draft = draft(&caller, body.into_inner())?;
    placing::place(&state, &caller, draft, key).await
}

/// The order a request asks for, its amount not known yet. A customer
/// orders for themself (`customerId` may be left out; another's is a 403); a
/// manager names the customer they order for (a phone order).
fn draft(caller: &Caller, body: NewOrder) -> Result<OrderDetails, ApiError> {
    let unprocessable = |error, detail: String| {
        ApiError::new(
            actix_web::http::StatusCode::UNPROCESSABLE_ENTITY,
            error,
            detail,
        )
    };
    let named = body
        .customer_id
        .map(|c| CustomerId::new(c.0).map_err(|e| unprocessable("unknown_customer", e.to_string())))
        .transpose()?;
    let customer_id = match (caller.customer(), named) {
        (Some(me), Some(other)) if other != me => return Err(outcome::forbidden_for_another()),
        (Some(me), _) => me,
        (None, Some(named)) => named,
        (None, None) => {
            return Err(unprocessable(
                "customer_required",
                "name the customer the order is for: `customerId` (a customer's own orders need not)"
                    .into(),
            ));
        }
    };
    Ok(OrderDetails {
        // Replaced by the id the orchestrator allocates.
        order_id: OrderId::new(i64::MAX).map_err(|e| ApiError::bad_request(e.to_string()))?,
        customer_id,
        food_id: FoodId::new(body.food_catalog_id.0)
            .map_err(|e| unprocessable("unknown_food", e.to_string()))?,
        qty: Qty::new(body.qty.0).map_err(|e| ApiError::bad_request(e.to_string()))?,
        amount: Money::from_cents(0),
    })
}

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
pub async fn list(
    state: State,
    caller: Caller,
    q: web::Query<CustomerQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = super::visible_page(&caller, q.limit, q.offset)?;
    let customer =
        id_filter("customerId", q.customer_id, CustomerId::new).map_err(ApiError::bad_request)?;
    let list = state
        .orchestrators
        .page(
            ORCHESTRATOR,
            &caller,
            |page| Request::Orders { page, customer },
            Outcome::orders,
            page,
        )
        .await?;
    Ok(ok_json(&list.iter().map(Order::from).collect::<Vec<_>>()))
}

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
pub async fn get(
    state: State,
    caller: Caller,
    path: web::Path<IdPath>,
) -> Result<HttpResponse, ApiError> {
    let id = order_id(path.id)?;
    match state
        .ask_orchestrator(&caller, id.get(), Request::Order { order: id })
        .await?
    {
        Outcome::Order(row) => Ok(ok_json(&Order::from(&row))),
        other => Err(outcome::other(other, &format!("order {id}"))),
    }
}

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
    caller: Caller,
    q: web::Query<CustomerQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = super::visible_page(&caller, q.limit, q.offset)?;
    let asked =
        id_filter("customerId", q.customer_id, CustomerId::new).map_err(ApiError::bad_request)?;
    // A customer's "my orders" are theirs, whatever filter they asked for;
    // everyone's are the manager's only (this read model is the API's own:
    // no owner decides for it).
    if caller.customer().is_none() && !caller.is_manager() {
        return Err(outcome::forbidden());
    }
    let customer = caller.customer().or(asked);
    let list = state
        .views
        .my_orders
        .read(move |c| Ok(crate::views::my_orders::list(c, page, customer)?))
        .await?;
    Ok(ok_json(
        &list.into_iter().map(MyOrder::from).collect::<Vec<_>>(),
    ))
}

/// `DELETE /kitchens/{id}`: the manager cancels order `id`.
#[utoipa::path(
    delete,
    path = "/kitchens/{id}",
    operation_id = "cancelOrder",
    tag = "orders",
    params(IdPath),
    responses(
        (status = 202, description = "cancelled: the saga compensates", body = CancelAccepted,
            links(("GetSaga" = (operation_id = "getSaga", parameters(("id" = "$request.path.id")))))),
        (status = 404, description = "no such order", body = ErrorBody),
        (status = 409, description = "delivered, cancelled, rejected or quarantined", body = ErrorBody),
        (status = 503, description = "orchestrator or storage unavailable", body = ErrorBody),
    )
)]
pub async fn cancel(
    state: State,
    caller: Caller,
    path: web::Path<IdPath>,
) -> Result<HttpResponse, ApiError> {
    let id = order_id(path.id)?;
    match state
        .ask_orchestrator(&caller, id.get(), Request::Cancel { order: id })
        .await?
    {
        Outcome::Accepted => Ok(HttpResponse::Accepted().json(CancelAccepted {
            saga_id: id,
            order_id: id,
            status: OrderStatus::Cancelled,
            state: SagaState::Compensating,
        })),
        Outcome::Refused(refusal) => Err(outcome::cancel_refused(id, refusal)),
        other => Err(outcome::other(other, &format!("order {id}"))),
    }
}

async fn progress(
    state: State,
    caller: Caller,
    raw: i64,
    progress: Progress,
) -> Result<HttpResponse, ApiError> {
    let id = order_id(raw)?;
    let asked = Request::Progress {
        order: id,
        progress,
    };
    match state.ask_orchestrator(&caller, id.get(), asked).await? {
        Outcome::Accepted => Ok(HttpResponse::Accepted().json(ProgressAccepted {
            order_id: id,
            progress: progress.as_str().to_owned(),
        })),
        Outcome::Refused(refusal) => Err(outcome::progress_refused(id, refusal)),
        other => Err(outcome::other(other, &format!("order {id}"))),
    }
}

macro_rules! progress_endpoint {
    ($fn:ident, $path:literal, $op:literal, $progress:expr, $what:literal) => {
        #[doc = $what]
        #[utoipa::path(
            post,
            path = $path,
            operation_id = $op,
            tag = "orders",
            params(IdPath),
                    responses(
                (status = 202, description = "taken by the order's saga", body = ProgressAccepted),
                (status = 404, description = "no such order", body = ErrorBody),
                (status = 409, description = "the step does not wait for it now", body = ErrorBody),
                (status = 503, description = "orchestrator or storage unavailable", body = ErrorBody),
            )
        )]
        pub async fn $fn(
            state: State,
            caller: Caller,
            path: web::Path<IdPath>,
        ) -> Result<HttpResponse, ApiError> {
            progress(state, caller, path.id, $progress).await
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
