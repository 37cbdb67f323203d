//! The kitchen's food catalog (its owners keep the stock) and its read
//! model.

use actix_web::{HttpResponse, web};

use super::contract::requests::{IdPath, NewFood, PageQuery, page};
use super::contract::responses::{ErrorBody, FoodRecord, FoodView};
use super::error::ApiError;
use super::{ApiState, listed, ok_json, path_id};
use crate::auth::Caller;
use crate::domain::{FoodId, WorkerKind};
use crate::partition::OwnerRole;
use crate::workers::requests::{Outcome, Request};

type State = web::Data<ApiState>;

const KITCHEN: OwnerRole = OwnerRole::Worker(WorkerKind::Kitchen);

/// Adds an item to the kitchen's catalog (manager).
#[utoipa::path(
    post,
    path = "/foodCatalogs",
    operation_id = "createFood",
    tag = "catalog",
    request_body = NewFood,
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
    caller: Caller,
    body: web::Json<NewFood>,
) -> Result<HttpResponse, ApiError> {
    let f = body.into_inner();
    f.check().map_err(ApiError::bad_request)?;
    let create = |_| Request::CreateFood {
        name: f.name.clone(),
        stock: f.stock.0,
        price: f.price.0,
    };
    // Any kitchen owner takes it, with an id in one of its partitions.
    match state.workers.anywhere(KITCHEN, &caller, create).await {
        Ok(Outcome::FoodCreated(food)) => Ok(HttpResponse::Created().json(FoodRecord::from(food))),
        Ok(Outcome::Forbidden) => Err(super::outcome::forbidden()),
        Ok(_) => Err(ApiError::unavailable("the kitchen answered oddly", 1)),
        Err(unanswered) => Err(unanswered.error.into()),
    }
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
pub async fn list_foods(
    state: State,
    caller: Caller,
    q: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = page(q.limit, q.offset).map_err(ApiError::bad_request)?;
    let request = |page| Request::Foods { page };
    listed::<_, _, FoodRecord>(
        &state.workers,
        KITCHEN,
        &caller,
        request,
        Outcome::foods,
        page,
    )
    .await
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
pub async fn get_food(
    state: State,
    caller: Caller,
    path: web::Path<IdPath>,
) -> Result<HttpResponse, ApiError> {
    let id = path_id(path.id, "food catalog item", FoodId::new)?;
    let at = state.workers.partition_of(id.get());
    match state
        .workers
        .one(KITCHEN, at, &caller, Request::Food { food: id })
        .await?
    {
        Outcome::Food(Some(food)) => Ok(ok_json(&FoodRecord::from(food))),
        Outcome::Food(None) => Err(ApiError::not_found(format!("no food catalog item {id}"))),
        _ => Err(ApiError::unavailable("the kitchen answered oddly", 1)),
    }
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
pub async fn food_views(
    state: State,
    caller: Caller,
    q: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    read_food_views(state, caller, q).await
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
    caller: Caller,
    q: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    read_food_views(state, caller, q).await
}

async fn read_food_views(
    state: State,
    caller: Caller,
    q: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = super::visible_page(&caller, q.limit, q.offset)?;
    let list = state
        .views
        .catalog
        .read(move |c| Ok(crate::views::catalog::list(c, page)?))
        .await?;
    Ok(ok_json(
        &list.into_iter().map(FoodView::from).collect::<Vec<_>>(),
    ))
}
