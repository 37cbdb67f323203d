//! Saga inspection and the operator's retry.

use actix_web::{HttpRequest, HttpResponse, web};

use super::contract::requests::{IdPath, SagaQuery, page};
use super::contract::responses::{ErrorBody, RetryAccepted, SagaView};
use super::error::ApiError;
use super::service::Op;
use super::{ApiState, ok_json};
use crate::domain::SagaId;
use crate::saga::machine::SagaState;

type State = web::Data<ApiState>;

fn saga_id(raw: i64) -> Result<SagaId, ApiError> {
    SagaId::new(raw).map_err(|_| ApiError::not_found(format!("no saga `{raw}`")))
}

/// Sagas, by id, optionally of one state.
#[utoipa::path(
    get,
    path = "/sagas",
    operation_id = "listSagas",
    tag = "inspection",
    params(SagaQuery),
    responses(
        (status = 200, description = "sagas ordered by id", body = [SagaView]),
        (status = 400, description = "bad query", body = ErrorBody),
        (status = 503, description = "storage unavailable", body = ErrorBody),
    )
)]
pub async fn list(state: State, q: web::Query<SagaQuery>) -> Result<HttpResponse, ApiError> {
    let page = page(q.limit, q.offset).map_err(ApiError::bad_request)?;
    let filter = match q.state.as_deref() {
        None => None,
        Some(s) => Some(s.parse::<SagaState>().map_err(|e| {
            ApiError::bad_request(format!(
                "{e}; expected Running, Completed, Compensating, Compensated or Failed"
            ))
        })?),
    };
    let views = state
        .orchestrators
        .page(
            |limit, offset| Op::Sagas {
                limit,
                offset,
                state: filter,
            },
            page,
        )
        .await?;
    Ok(ok_json(&views))
}

#[utoipa::path(
    get,
    path = "/sagas/{id}",
    operation_id = "getSaga",
    tag = "inspection",
    params(IdPath),
    responses(
        (status = 200, description = "the saga", body = SagaView),
        (status = 404, description = "no such saga", body = ErrorBody),
        (status = 503, description = "storage unavailable", body = ErrorBody),
    )
)]
pub async fn get(state: State, path: web::Path<IdPath>) -> Result<HttpResponse, ApiError> {
    let id = saga_id(path.id)?;
    let done = state
        .orchestrators
        .of(id.get(), Op::Saga { id: id.get() })
        .await?;
    Ok(done.into_response())
}

/// Resumes a `Failed` saga (manager).
#[utoipa::path(
    post,
    path = "/sagas/{id}/retry",
    operation_id = "retrySaga",
    tag = "inspection",
    params(IdPath),
    security(("manager" = [])),
    responses(
        (status = 202, description = "resumed: the saga compensates again", body = RetryAccepted),
        (status = 401, description = "no manager token", body = ErrorBody),
        (status = 403, description = "wrong manager token", body = ErrorBody),
        (status = 404, description = "no such saga", body = ErrorBody),
        (status = 409, description = "the saga is not Failed, or quarantined", body = ErrorBody),
        (status = 503, description = "orchestrator or storage unavailable", body = ErrorBody),
    )
)]
pub async fn retry(
    state: State,
    req: HttpRequest,
    path: web::Path<IdPath>,
) -> Result<HttpResponse, ApiError> {
    state.require_manager(&req)?;
    let id = saga_id(path.id)?;
    let done = state
        .orchestrators
        .of(id.get(), Op::Retry { id: id.get() })
        .await?;
    Ok(done.into_response())
}
