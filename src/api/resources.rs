//! Customers, the food catalog, and the workers' records.

use actix_web::{HttpRequest, HttpResponse, web};

use super::body::{Body, Query, required};
use super::error::ApiError;
use super::{ApiState, ok_json};
use crate::domain::{CustomerId, FoodId, Money, OrderId};
use crate::orchestrator::store;
use crate::workers::{coupon, delivery, kitchen, pay};

type State = web::Data<ApiState>;
type Q = web::Query<std::collections::HashMap<String, String>>;

fn parse_id<T: std::str::FromStr>(raw: &str, what: &str) -> Result<T, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::not_found(format!("no {what} `{raw}`")))
}

pub async fn create_customer(
    state: State,
    body: web::Json<serde_json::Value>,
) -> Result<HttpResponse, ApiError> {
    let b = Body::new(body.into_inner())?;
    let name = required(b.text(&["name"], 200)?, "name")?;
    let phone = b.text(&["phone"], 50)?.unwrap_or_default();
    let address = b.text(&["address"], 500)?.unwrap_or_default();
    let age = b.int(&["age"])?;
    if let Some(a) = age
        && !(0..=150).contains(&a)
    {
        return Err(ApiError::bad_request("`age` must be between 0 and 150"));
    }
    let created = state
        .sagas
        .db()
        .write(move |tx| store::create_customer(tx, &name, &phone, &address, age))
        .await?;
    Ok(HttpResponse::Created().json(created))
}

pub async fn list_customers(state: State, q: Q) -> Result<HttpResponse, ApiError> {
    let page = Query(q.into_inner()).page()?;
    let list = state
        .sagas
        .db()
        .read(move |c| store::list_customers(c, page))
        .await?;
    Ok(ok_json(&list))
}

pub async fn get_customer(state: State, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id: CustomerId = parse_id(&path, "customer")?;
    state
        .sagas
        .db()
        .read(move |c| store::get_customer(c, id))
        .await?
        .map(|c| ok_json(&c))
        .ok_or_else(|| ApiError::not_found(format!("no customer {id}")))
}

pub async fn create_food(
    state: State,
    req: HttpRequest,
    body: web::Json<serde_json::Value>,
) -> Result<HttpResponse, ApiError> {
    state.require_manager(&req)?;
    let b = Body::new(body.into_inner())?;
    let name = required(b.text(&["name"], 200)?, "name")?;
    let stock = required(b.int(&["stock"])?, "stock")?;
    if !(0..=1_000_000_000).contains(&stock) {
        return Err(ApiError::bad_request(
            "`stock` must be between 0 and 1000000000",
        ));
    }
    let price = required(b.decimal_text(&["price"])?, "price")?;
    let price =
        Money::parse_price(&price).map_err(|e| ApiError::bad_request(format!("`price`: {e}")))?;
    let created = state
        .kitchen
        .write(move |tx| Ok(kitchen::create_food(tx, &name, stock, price)?))
        .await?;
    Ok(HttpResponse::Created().json(created))
}

pub async fn list_foods(state: State, q: Q) -> Result<HttpResponse, ApiError> {
    let page = Query(q.into_inner()).page()?;
    let list = state
        .kitchen
        .read(move |c| Ok(kitchen::list_foods(c, page)?))
        .await?;
    Ok(ok_json(&list))
}

pub async fn get_food(state: State, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id: FoodId = parse_id(&path, "food catalog item")?;
    state
        .kitchen
        .read(move |c| Ok(kitchen::get_food(c, id)?))
        .await?
        .map(|f| ok_json(&f))
        .ok_or_else(|| ApiError::not_found(format!("no food catalog item {id}")))
}

/// The catalog read model: `id, name, price, stock`.
pub async fn food_views(state: State, q: Q) -> Result<HttpResponse, ApiError> {
    let page = Query(q.into_inner()).page()?;
    let list = state
        .views
        .catalog
        .read(move |c| Ok(crate::views::catalog::list(c, page)?))
        .await?;
    Ok(ok_json(&list))
}

pub async fn create_review(
    state: State,
    body: web::Json<serde_json::Value>,
) -> Result<HttpResponse, ApiError> {
    let b = Body::new(body.into_inner())?;
    let username = required(b.text(&["username", "userName"], 100)?, "username")?;
    let productname = required(b.text(&["productname", "productName"], 200)?, "productname")?;
    let content = required(b.text(&["content"], 5000)?, "content")?;
    let rating = b.int(&["rating"])?;
    if let Some(r) = rating
        && !(1..=5).contains(&r)
    {
        return Err(ApiError::bad_request("`rating` must be between 1 and 5"));
    }
    let created = state
        .sagas
        .db()
        .write(move |tx| store::create_review(tx, &username, &productname, &content, rating))
        .await?;
    state.sagas.db().notify_outbox();
    Ok(HttpResponse::Created().json(created))
}

pub async fn list_reviews(state: State, q: Q) -> Result<HttpResponse, ApiError> {
    let page = Query(q.into_inner()).page()?;
    let list = state
        .sagas
        .db()
        .read(move |c| store::list_reviews(c, page))
        .await?;
    Ok(ok_json(&list))
}

/// The review read model: per product, count, average rating, latest reviews.
pub async fn review_views(state: State, q: Q) -> Result<HttpResponse, ApiError> {
    let page = Query(q.into_inner()).page()?;
    let list = state
        .views
        .reviews
        .read(move |c| Ok(crate::views::reviews::list(c, page)?))
        .await?;
    Ok(ok_json(&list))
}

/// Paging and the `orderId` filter of a worker list.
fn worker_query(q: Q) -> Result<(crate::storage::Page, Option<OrderId>), ApiError> {
    let q = Query(q.into_inner());
    let order = match q.int("orderId")? {
        None => None,
        Some(raw) => {
            Some(OrderId::new(raw).map_err(|e| ApiError::bad_request(format!("`orderId`: {e}")))?)
        }
    };
    Ok((q.page()?, order))
}

/// Declares the list and get handlers of one worker's records.
macro_rules! worker_records {
    ($list:ident, $get:ident, $db:ident, $module:ident :: $list_fn:ident, $module2:ident :: $get_fn:ident, $what:literal) => {
        pub async fn $list(state: State, q: Q) -> Result<HttpResponse, ApiError> {
            let (page, order) = worker_query(q)?;
            let list = state
                .$db
                .read(move |c| Ok($module::$list_fn(c, page, order)?))
                .await?;
            Ok(ok_json(&list))
        }

        pub async fn $get(state: State, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
            let id: OrderId = parse_id(&path, $what)?;
            state
                .$db
                .read(move |c| Ok($module2::$get_fn(c, id)?))
                .await?
                .map(|r| ok_json(&r))
                .ok_or_else(|| ApiError::not_found(format!(concat!("no ", $what, " {}"), id)))
        }
    };
}

worker_records!(list_pays, get_pay, pay, pay::list, pay::get, "payment");
worker_records!(
    list_kitchens,
    get_kitchen,
    kitchen,
    kitchen::list_tickets,
    kitchen::get_ticket,
    "kitchen ticket"
);
worker_records!(
    list_deliveries,
    get_delivery,
    delivery,
    delivery::list,
    delivery::get,
    "delivery"
);
worker_records!(
    list_coupons,
    get_coupon,
    coupon,
    coupon::list,
    coupon::get,
    "coupon"
);
