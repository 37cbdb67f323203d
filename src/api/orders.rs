//! Orders: placing one (waiting for its payment), reading them, the
//! manager's cancellation and manual-mode progress.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};

use super::contract::requests::{CustomerQuery, IdPath, NewOrder, id_filter, page};
use super::contract::responses::{CancelAccepted, ErrorBody, Order, ProgressAccepted};
use super::error::ApiError;
use super::service::{Done, Op, RETRY_AFTER_SECS};
use super::{ApiState, ok_json};
use crate::domain::{CustomerId, FoodId, Money, OrderId, Qty, WorkerKind};
use crate::messages::{OrderDetails, Progress};
use crate::orchestrator::store::IdempotencyKey;
use crate::rpc::AskError;
use crate::rpc::Query;
use crate::views::my_orders::MyOrder;
use serde::Deserialize as _;
use serde_json::json;

type State = web::Data<ApiState>;

/// What placing an order needs of a catalog item (as the kitchen shows it).
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct CatalogItem {
    name: String,
    stock: i64,
    price_cents: i64,
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
    let orchestrators = &state.orchestrators;
    // A key always goes to the same partition's owner, which keeps it with
    // its order; without a key any partition may take the order.
    let partition = match &key {
        Some(k) => orchestrators.count().of(key_hash(k.as_str())),
        None => orchestrators.next_partition(),
    };
    if let Some(k) = &key {
        let replay = Op::Replay {
            key: k.as_str().to_owned(),
            order: draft,
        };
        let done = orchestrators.one(partition, replay).await?;
        if done.status != StatusCode::NO_CONTENT.as_u16() {
            // A retry of an order we already took: its answer.
            return Ok(done.into_response());
        }
    }
    // Customers are never deleted: a customer seen here is still there
    // when the saga starts.
    match orchestrators
        .of(customer.get(), Op::Customer { id: customer.get() })
        .await
    {
        Ok(_) => {}
        Err(e) if e.status == StatusCode::NOT_FOUND => {
            return Err(unprocessable(
                "unknown_customer",
                format!("no customer {customer}"),
            ));
        }
        Err(e) => return Err(e),
    }
    let found = state
        .owners
        .one(
            WorkerKind::Kitchen,
            state.owners.count().of(food.get()),
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
    let admit_within_ms = u64::try_from(state.order_timeout.as_millis()).unwrap_or(u64::MAX);
    // Without a client's key, the next partition whose owner is there takes
    // it (an unroutable request delivered nothing: safe to move on).
    let key_given = key.is_some();
    let tries = if key_given {
        1
    } else {
        orchestrators.count().get()
    };
    let mut partition = partition;
    let mut last = None;
    for _ in 0..tries {
        // The order always carries a key — the client's, or one of ours that
        // falls in this partition — so the outcome of a placement whose
        // answer is lost can still be learned.
        let key = key.as_ref().map_or_else(
            || our_key(orchestrators.count(), partition),
            |k| k.as_str().to_owned(),
        );
        let place = Op::PlaceOrder {
            order: draft,
            key: Some(key.clone()),
            admit_within_ms,
        };
        // With the client's key the partition is fixed: wait for its owner.
        // Without one, an unowned partition passes the order to the next.
        let asked = if key_given {
            orchestrators.ask_waiting(partition, place).await
        } else {
            orchestrators.ask(partition, place).await
        };
        match asked {
            Ok(answer) => {
                return answer
                    .result
                    .map(Done::into_response)
                    .map_err(ApiError::from);
            }
            Err(e @ AskError::NoOwner(_)) => {
                last = Some(e);
                // The next partition (each once; the shared turn would let
                // concurrent orders send this one back to unowned ones).
                partition = orchestrators.count().of(i64::from(partition.index()) + 1);
            }
            // Delivered, or maybe: the order may exist. Ask its owner.
            Err(e) => return learn_outcome(orchestrators, partition, key, draft, e).await,
        }
    }
    Err(last
        .unwrap_or_else(|| AskError::NoOwner("any orchestrator".into()))
        .into())
}

/// A key of our own for an order without one, whose hash falls in
/// `partition` (so a retry with it meets the owner that keeps it).
fn our_key(
    count: crate::partition::PartitionCount,
    partition: crate::partition::Partition,
) -> String {
    loop {
        let key = format!("hearty-{:032x}", rand::random::<u128>());
        if count.of(key_hash(&key)) == partition {
            return key;
        }
    }
}

/// A placement went out but its answer did not come back: asks the owner
/// what became of the key (a few times, briefly). Its order's answer if it
/// was placed; a 503 that says nothing was established if it was not; else
/// a 503 that says the outcome is unknown and names the key to learn it by.
async fn learn_outcome(
    orchestrators: &super::service::Orchestrators,
    partition: crate::partition::Partition,
    key: String,
    draft: OrderDetails,
    why: AskError,
) -> Result<HttpResponse, ApiError> {
    tracing::warn!(error = %why, "no answer to a placement; asking what became of it");
    for attempt in 0..3u64 {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(500 * attempt)).await;
        }
        let replay = Op::Replay {
            key: key.clone(),
            order: draft,
        };
        match orchestrators.ask_waiting(partition, replay).await {
            Ok(answer) => match answer.result {
                Ok(done) if done.status == StatusCode::NO_CONTENT.as_u16() => {
                    return Err(ApiError::unavailable(
                        "the order could not be placed now; nothing was established, try again",
                        RETRY_AFTER_SECS,
                    ));
                }
                Ok(done) => return Ok(done.into_response()),
                Err(e) => return Err(e.into()),
            },
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

/// A stable hash of an Idempotency-Key (FNV-1a): every API process sends
/// a key to the same partition.
fn key_hash(key: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    i64::try_from(h >> 1).unwrap_or(0)
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
pub async fn list(state: State, q: web::Query<CustomerQuery>) -> Result<HttpResponse, ApiError> {
    let page = page(q.limit, q.offset).map_err(ApiError::bad_request)?;
    let customer =
        id_filter("customerId", q.customer_id, CustomerId::new).map_err(ApiError::bad_request)?;
    let customer_id = customer.map(CustomerId::get);
    let list = state
        .orchestrators
        .page(
            |limit, offset| Op::Orders {
                limit,
                offset,
                customer_id,
            },
            page,
        )
        .await?;
    Ok(ok_json(&list))
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
pub async fn get(state: State, path: web::Path<IdPath>) -> Result<HttpResponse, ApiError> {
    let id = order_id(path.id)?;
    let done = state
        .orchestrators
        .of(id.get(), Op::Order { id: id.get() })
        .await?;
    Ok(done.into_response())
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
    let done = state
        .orchestrators
        .of(id.get(), Op::Cancel { id: id.get() })
        .await?;
    Ok(done.into_response())
}

async fn progress(
    state: State,
    req: HttpRequest,
    raw: i64,
    progress: Progress,
) -> Result<HttpResponse, ApiError> {
    state.require_manager(&req)?;
    let id = order_id(raw)?;
    let done = state
        .orchestrators
        .of(
            id.get(),
            Op::Progress {
                id: id.get(),
                progress,
            },
        )
        .await?;
    Ok(done.into_response())
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
