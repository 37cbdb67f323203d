//! Customers, the food catalog, reviews, the read models of the catalog and
//! the reviews, and the workers' records.

use actix_web::{HttpRequest, HttpResponse, web};

use super::contract::requests::{
    IdPath, NewCustomer, NewFood, NewReview, PageQuery, RecordQuery, id_filter, page,
};
use super::contract::responses::ErrorBody;
use super::error::ApiError;
use super::service::Op;
use super::{ApiState, ok_json};
use crate::domain::WorkerKind;
use crate::domain::{CustomerId, FoodId, OrderId};
use crate::orchestrator::store::{CustomerRecord, ReviewRecord};
use crate::rpc::Query;
use crate::views::catalog::FoodView;
use crate::views::reviews::ReviewView;
use crate::workers::coupon::CouponRecord;
use crate::workers::delivery::DeliveryRecord;
use crate::workers::kitchen::{FoodRecord, TicketRecord};
use crate::workers::pay::PayRecord;

type State = web::Data<ApiState>;

/// An id of a path as a domain id; one that cannot be (0) names nothing.
fn path_id<T>(
    raw: i64,
    what: &str,
    make: impl Fn(i64) -> Result<T, crate::domain::DomainError>,
) -> Result<T, ApiError> {
    make(raw).map_err(|_| ApiError::not_found(format!("no {what} `{raw}`")))
}

/// Registers a customer.
#[utoipa::path(
    post,
    path = "/customers",
    operation_id = "createCustomer",
    tag = "customers",
    request_body = NewCustomer,
    responses(
        (status = 201, description = "created", body = CustomerRecord,
            links(("GetCustomer" = (operation_id = "getCustomer", parameters(("id" = "$response.body#/id")))))),
        (status = 400, description = "the body does not fit the schema", body = ErrorBody),
        (status = 413, description = "body larger than 64 KiB", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
        (status = 503, description = "storage unavailable", body = ErrorBody),
    )
)]
pub async fn create_customer(
    state: State,
    body: web::Json<NewCustomer>,
) -> Result<HttpResponse, ApiError> {
    let c = body.into_inner();
    c.check().map_err(ApiError::bad_request)?;
    let op = Op::CreateCustomer {
        age: c.age.map(|a| a.0),
        phone: c.phone.unwrap_or_default(),
        address: c.address.unwrap_or_default(),
        name: c.name,
    };
    // Any partition's owner takes a new customer, with an id of its own.
    Ok(state.orchestrators.create(op).await?.into_response())
}

/// Customers, by id.
#[utoipa::path(
    get,
    path = "/customers",
    operation_id = "listCustomers",
    tag = "customers",
    params(PageQuery),
    responses(
        (status = 200, description = "customers ordered by id", body = [CustomerRecord]),
        (status = 400, description = "bad query", body = ErrorBody),
        (status = 503, description = "storage unavailable", body = ErrorBody),
    )
)]
pub async fn list_customers(
    state: State,
    q: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = page(q.limit, q.offset).map_err(ApiError::bad_request)?;
    let list = state
        .orchestrators
        .page(|limit, offset| Op::Customers { limit, offset }, page)
        .await?;
    Ok(ok_json(&list))
}

/// One customer.
#[utoipa::path(
    get,
    path = "/customers/{id}",
    operation_id = "getCustomer",
    tag = "customers",
    params(IdPath),
    responses(
        (status = 200, description = "the customer", body = CustomerRecord),
        (status = 404, description = "no such customer", body = ErrorBody),
        (status = 503, description = "storage unavailable", body = ErrorBody),
    )
)]
pub async fn get_customer(state: State, path: web::Path<IdPath>) -> Result<HttpResponse, ApiError> {
    let id = path_id(path.id, "customer", CustomerId::new)?;
    let done = state
        .orchestrators
        .of(id.get(), Op::Customer { id: id.get() })
        .await?;
    Ok(done.into_response())
}

/// Adds an item to the kitchen's catalog (manager).
#[utoipa::path(
    post,
    path = "/foodCatalogs",
    operation_id = "createFood",
    tag = "catalog",
    request_body = NewFood,
    security(("manager" = [])),
    responses(
        (status = 201, description = "created", body = FoodRecord,
            links(("GetFood" = (operation_id = "getFood", parameters(("id" = "$response.body#/id")))))),
        (status = 400, description = "the body does not fit the schema", body = ErrorBody),
        (status = 401, description = "no manager token", body = ErrorBody),
        (status = 403, description = "wrong manager token", body = ErrorBody),
        (status = 413, description = "body larger than 64 KiB", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
        (status = 503, description = "storage unavailable", body = ErrorBody),
    )
)]
pub async fn create_food(
    state: State,
    req: HttpRequest,
    body: web::Json<NewFood>,
) -> Result<HttpResponse, ApiError> {
    state.require_manager(&req)?;
    let f = body.into_inner();
    f.check().map_err(ApiError::bad_request)?;
    let (stock, price) = (f.stock.0, f.price.0);
    // Any kitchen owner takes it, with an id in one of its partitions.
    let created = state
        .owners
        .create(
            WorkerKind::Kitchen,
            Query::CreateFood {
                name: f.name,
                stock,
                price_cents: price.cents(),
            },
        )
        .await?;
    Ok(HttpResponse::Created().json(created))
}

/// The kitchen's catalog, with its current stock.
#[utoipa::path(
    get,
    path = "/foodCatalogs",
    operation_id = "listFoods",
    tag = "catalog",
    params(PageQuery),
    responses(
        (status = 200, description = "items ordered by id", body = [FoodRecord]),
        (status = 400, description = "bad query", body = ErrorBody),
        (status = 503, description = "storage unavailable", body = ErrorBody),
    )
)]
pub async fn list_foods(state: State, q: web::Query<PageQuery>) -> Result<HttpResponse, ApiError> {
    let page = page(q.limit, q.offset).map_err(ApiError::bad_request)?;
    let list = state
        .owners
        .page(
            WorkerKind::Kitchen,
            |limit, offset| Query::Foods { limit, offset },
            page,
        )
        .await?;
    Ok(ok_json(&list))
}

/// One catalog item.
#[utoipa::path(
    get,
    path = "/foodCatalogs/{id}",
    operation_id = "getFood",
    tag = "catalog",
    params(IdPath),
    responses(
        (status = 200, description = "the item", body = FoodRecord),
        (status = 404, description = "no such item", body = ErrorBody),
        (status = 503, description = "storage unavailable", body = ErrorBody),
    )
)]
pub async fn get_food(state: State, path: web::Path<IdPath>) -> Result<HttpResponse, ApiError> {
    let id = path_id(path.id, "food catalog item", FoodId::new)?;
    let partition = state.owners.count().of(id.get());
    let found = state
        .owners
        .one(WorkerKind::Kitchen, partition, Query::Food { id: id.get() })
        .await?;
    if found.is_null() {
        return Err(ApiError::not_found(format!("no food catalog item {id}")));
    }
    Ok(ok_json(&found))
}

/// The catalog read model: `id, name, price, stock`. The seed's `DELETE`
/// reads it too: read models are never deleted over HTTP.
#[utoipa::path(
    get,
    path = "/foodCatalogViews",
    operation_id = "listFoodViews",
    tag = "read models",
    params(PageQuery),
    responses(
        (status = 200, description = "items ordered by id", body = [FoodView]),
        (status = 400, description = "bad query", body = ErrorBody),
        (status = 503, description = "storage unavailable", body = ErrorBody),
    )
)]
pub async fn food_views(state: State, q: web::Query<PageQuery>) -> Result<HttpResponse, ApiError> {
    read_food_views(state, q).await
}

/// The seed checks the stock with `http DELETE /foodCatalogViews`: read
/// models are never deleted over HTTP, so this reads the view like `GET`.
#[utoipa::path(
    delete,
    path = "/foodCatalogViews",
    operation_id = "seedDeleteFoodViews",
    tag = "read models",
    params(PageQuery),
    responses(
        (status = 200, description = "the view, unchanged", body = [FoodView]),
        (status = 400, description = "bad query", body = ErrorBody),
        (status = 503, description = "storage unavailable", body = ErrorBody),
    )
)]
pub async fn seed_delete_food_views(
    state: State,
    q: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    read_food_views(state, q).await
}

async fn read_food_views(state: State, q: web::Query<PageQuery>) -> Result<HttpResponse, ApiError> {
    let page = page(q.limit, q.offset).map_err(ApiError::bad_request)?;
    let list = state
        .views
        .catalog
        .read(move |c| Ok(crate::views::catalog::list(c, page)?))
        .await?;
    Ok(ok_json(&list))
}

/// Posts a review.
#[utoipa::path(
    post,
    path = "/reviews",
    operation_id = "createReview",
    tag = "reviews",
    request_body = NewReview,
    responses(
        (status = 201, description = "created", body = ReviewRecord),
        (status = 400, description = "the body does not fit the schema", body = ErrorBody),
        (status = 413, description = "body larger than 64 KiB", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
        (status = 503, description = "storage unavailable", body = ErrorBody),
    )
)]
pub async fn create_review(
    state: State,
    body: web::Json<NewReview>,
) -> Result<HttpResponse, ApiError> {
    let r = body.into_inner();
    r.check().map_err(ApiError::bad_request)?;
    let op = Op::CreateReview {
        rating: r.rating.map(|x| x.0),
        username: r.username,
        productname: r.productname,
        content: r.content,
    };
    Ok(state.orchestrators.create(op).await?.into_response())
}

/// Reviews, by id.
#[utoipa::path(
    get,
    path = "/reviews",
    operation_id = "listReviews",
    tag = "reviews",
    params(PageQuery),
    responses(
        (status = 200, description = "reviews ordered by id", body = [ReviewRecord]),
        (status = 400, description = "bad query", body = ErrorBody),
        (status = 503, description = "storage unavailable", body = ErrorBody),
    )
)]
pub async fn list_reviews(
    state: State,
    q: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = page(q.limit, q.offset).map_err(ApiError::bad_request)?;
    let list = state
        .orchestrators
        .page(|limit, offset| Op::Reviews { limit, offset }, page)
        .await?;
    Ok(ok_json(&list))
}

/// The review read model: per product, count, average rating, latest
/// reviews (also at the seed's `/reviewView`).
#[utoipa::path(
    get,
    path = "/reviewViews",
    operation_id = "listReviewViews",
    tag = "read models",
    params(PageQuery),
    responses(
        (status = 200, description = "products ordered by id", body = [ReviewView]),
        (status = 400, description = "bad query", body = ErrorBody),
        (status = 503, description = "storage unavailable", body = ErrorBody),
    )
)]
pub async fn review_views(
    state: State,
    q: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = page(q.limit, q.offset).map_err(ApiError::bad_request)?;
    let list = state
        .views
        .reviews
        .read(move |c| Ok(crate::views::reviews::list(c, page)?))
        .await?;
    Ok(ok_json(&list))
}

/// Declares the list and get endpoints of one worker's records.
macro_rules! worker_records {
    ($list:ident, $get:ident, $kind:ident, $record:ty, $path:literal, $path_id:literal,
     $list_op:literal, $get_op:literal, $tag:literal, $what:literal) => {
        #[doc = concat!("The ", $what, " records, by id (an order's id).")]
        #[utoipa::path(
                    get,
                    path = $path,
                    operation_id = $list_op,
                    tag = $tag,
                    params(RecordQuery),
                    responses(
                        (status = 200, description = "records ordered by id", body = [$record]),
                        (status = 400, description = "bad query", body = ErrorBody),
                        (status = 503, description = "storage unavailable", body = ErrorBody),
                    )
                )]
        pub async fn $list(
            state: State,
            q: web::Query<RecordQuery>,
        ) -> Result<HttpResponse, ApiError> {
            let page = page(q.limit, q.offset).map_err(ApiError::bad_request)?;
            let order =
                id_filter("orderId", q.order_id, OrderId::new).map_err(ApiError::bad_request)?;
            let order_id = order.map(OrderId::get);
            let list = state
                .owners
                .page(WorkerKind::$kind, |limit, offset| Query::Records { limit, offset, order_id }, page)
                .await?;
            Ok(ok_json(&list))
        }

        #[doc = concat!("The ", $what, " of order `id`.")]
        #[utoipa::path(
                    get,
                    path = $path_id,
                    operation_id = $get_op,
                    tag = $tag,
                    params(IdPath),
                    responses(
                        (status = 200, description = "the record", body = $record),
                        (status = 404, description = "none for this order", body = ErrorBody),
                        (status = 503, description = "storage unavailable", body = ErrorBody),
                    )
                )]
        pub async fn $get(state: State, path: web::Path<IdPath>) -> Result<HttpResponse, ApiError> {
            let id = path_id(path.id, $what, OrderId::new)?;
            let query = Query::Record { order_id: id.get() };
            // The kitchen keeps tickets by food: any of its owners may
            // have one; the others keep an order's record in its partition.
            let found = if WorkerKind::$kind == WorkerKind::Kitchen {
                state
                    .owners
                    .all(WorkerKind::$kind, query)
                    .await?
                    .into_iter()
                    .find(|v| !v.is_null())
                    .unwrap_or(serde_json::Value::Null)
            } else {
                let partition = state.owners.count().of(id.get());
                state.owners.one(WorkerKind::$kind, partition, query).await?
            };
            if found.is_null() {
                return Err(ApiError::not_found(format!(concat!("no ", $what, " {}"), id)));
            }
            Ok(ok_json(&found))
        }
    };
}

worker_records!(
    list_pays,
    get_pay,
    Pay,
    PayRecord,
    "/pays",
    "/pays/{id}",
    "listPays",
    "getPay",
    "payments",
    "payment"
);
worker_records!(
    list_kitchens,
    get_kitchen,
    Kitchen,
    TicketRecord,
    "/kitchens",
    "/kitchens/{id}",
    "listKitchens",
    "getKitchen",
    "kitchen",
    "kitchen ticket"
);
worker_records!(
    list_deliveries,
    get_delivery,
    Delivery,
    DeliveryRecord,
    "/deliveries",
    "/deliveries/{id}",
    "listDeliveries",
    "getDelivery",
    "deliveries",
    "delivery"
);
worker_records!(
    list_coupons,
    get_coupon,
    Coupon,
    CouponRecord,
    "/coupons",
    "/coupons/{id}",
    "listCoupons",
    "getCoupon",
    "coupons",
    "coupon"
);
