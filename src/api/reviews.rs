//! Reviews: posting one, reading them, and their read model per product.

use actix_web::{HttpResponse, web};

use super::contract::requests::{NewReview as NewReviewBody, PageQuery, page};
use super::contract::responses::{ErrorBody, ReviewRecord, ReviewView};
use super::error::ApiError;
use super::{ApiState, ORCHESTRATOR, listed, ok_json, outcome};
use crate::auth::Caller;
use crate::orchestrator::requests::{Outcome, Request};
use crate::orchestrator::store::reviews::NewReview;

type State = web::Data<ApiState>;

/// Posts a review.
#[utoipa::path(
    post,
    path = "/reviews",
    operation_id = "createReview",
    tag = "reviews",
    request_body = NewReviewBody,
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
    caller: Caller,
    body: web::Json<NewReviewBody>,
) -> Result<HttpResponse, ApiError> {
    let r = body.into_inner();
    r.check().map_err(ApiError::bad_request)?;
    let review = NewReview {
        rating: r.rating.map(|x| x.0),
        username: r.username,
        productname: r.productname,
        content: r.content,
    };
    match state
        .create(&caller, Request::CreateReview { review })
        .await?
    {
        Outcome::Review(r) => Ok(HttpResponse::Created().json(ReviewRecord::from(r))),
        other => Err(outcome::other(other, "review")),
    }
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
    caller: Caller,
    q: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = page(q.limit, q.offset).map_err(ApiError::bad_request)?;
    let rows = Outcome::reviews;
    let request = |page| Request::Reviews { page };
    listed::<_, _, ReviewRecord>(
        &state.orchestrators,
        ORCHESTRATOR,
        &caller,
        request,
        rows,
        page,
    )
    .await
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
    caller: Caller,
    q: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = super::visible_page(&caller, q.limit, q.offset)?;
    let list = state
        .views
        .reviews
        .read(move |c| Ok(crate::views::reviews::list(c, page)?))
        .await?;
    Ok(ok_json(
        &list.into_iter().map(ReviewView::from).collect::<Vec<_>>(),
    ))
}
