//! Saga inspection and the operator's retry.

use actix_web::{HttpResponse, web};

use super::contract::requests::{IdPath, SagaQuery, page};
use super::contract::responses::{ErrorBody, RetryAccepted, SagaView};
use super::error::ApiError;
use super::{ApiState, ORCHESTRATOR, ok_json, outcome};
use crate::auth::Caller;
use crate::domain::SagaId;
use crate::orchestrator::requests::{Outcome, Request};
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
pub async fn list(
    state: State,
    caller: Caller,
    q: web::Query<SagaQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = page(q.limit, q.offset).map_err(ApiError::bad_request)?;
    let filter = match q.state.as_deref() {
        None => None,
        Some(s) => Some(s.parse::<SagaState>().map_err(|e| {
            ApiError::bad_request(format!(
                "{e}; expected Running, Completed, Compensating, Compensated or Failed"
            ))
        })?),
    };
    let rows = state
        .orchestrators
        .page(
            ORCHESTRATOR,
            &caller,
            |page| Request::Sagas {
                page,
                state: filter,
            },
            Outcome::sagas,
            page,
        )
        .await?;
    let views: Vec<SagaView> = rows
        .iter()
        .map(|row| SagaView::of_stored(&state.def, row))
        .collect();
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
pub async fn get(
    state: State,
    caller: Caller,
    path: web::Path<IdPath>,
) -> Result<HttpResponse, ApiError> {
    let id = saga_id(path.id)?;
    match state
        .ask_orchestrator(&caller, id.get(), Request::Saga { saga: id })
        .await?
    {
        Outcome::Saga(detail) => Ok(ok_json(&SagaView::inspect(
            &state.def,
            &detail,
            &state.topology,
            &state.management_url,
        ))),
        other => Err(outcome::other(other, &format!("saga {id}"))),
    }
}

/// Resumes a `Failed` saga (manager).
#[utoipa::path(
    post,
    path = "/sagas/{id}/retry",
    operation_id = "retrySaga",
    tag = "inspection",
    params(IdPath),
    responses(
        (status = 202, description = "resumed: the saga compensates again", body = RetryAccepted),
        (status = 404, description = "no such saga", body = ErrorBody),
        (status = 409, description = "the saga is not Failed, or quarantined", body = ErrorBody),
        (status = 503, description = "orchestrator or storage unavailable", body = ErrorBody),
    )
)]
pub async fn retry(
    state: State,
    caller: Caller,
    path: web::Path<IdPath>,
) -> Result<HttpResponse, ApiError> {
    let id = saga_id(path.id)?;
    match state
        .ask_orchestrator(&caller, id.get(), Request::Retry { saga: id })
        .await?
    {
        Outcome::Accepted => Ok(HttpResponse::Accepted().json(RetryAccepted {
            saga_id: id,
            state: SagaState::Compensating,
        })),
        Outcome::Refused(refusal) => Err(outcome::retry_refused(refusal)),
        other => Err(outcome::other(other, &format!("saga {id}"))),
    }
}
