//! Saga inspection and the operator's retry.

use actix_web::{HttpRequest, HttpResponse, web};

use super::contract::requests::{IdPath, SagaQuery, page};
use super::contract::responses::{self, ErrorBody, RetryAccepted, SagaView};
use super::error::ApiError;
use super::{ApiState, ok_json};
use crate::domain::SagaId;
use crate::orchestrator::{dispatch, store};
use crate::saga::machine::{Event, Refusal, SagaState};

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
    let sagas = state
        .sagas
        .db()
        .read(move |c| store::list_sagas(c, page, filter, None))
        .await?;
    let views: Vec<SagaView> = sagas
        .iter()
        .map(|row| match row {
            store::Stored::Saga(s) => SagaView::of(&state.def, s),
            store::Stored::Quarantined(q) => SagaView::quarantined(q),
        })
        .collect();
    Ok(ok_json(&views))
}

/// One saga: its steps, its history, what it waits on and what is on its
/// way.
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
    let found = state
        .sagas
        .db()
        .read(move |c| {
            let saga = match store::get_saga(c, id)? {
                None => return Ok(None),
                Some(store::Stored::Quarantined(q)) => return Ok(Some(Err(q))),
                Some(store::Stored::Saga(s)) => *s,
            };
            let history = store::history(c, id)?;
            let pending = store::pending_messages(c, id)?;
            Ok(Some(Ok((saga, history, pending))))
        })
        .await?;
    let (saga, history, pending) =
        match found.ok_or_else(|| ApiError::not_found(format!("no saga {id}")))? {
            Ok(found) => found,
            Err(q) => return Ok(ok_json(&SagaView::quarantined(&q))),
        };
    let in_flight = responses::in_flight(
        &state.def,
        &saga,
        &pending,
        &state.topology,
        &state.management_url,
    );
    Ok(ok_json(&SagaView::detailed(
        &state.def, &saga, &history, in_flight,
    )))
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
    match dispatch(&state.orchestrator, id, Event::Retry).await? {
        Ok(()) => Ok(HttpResponse::Accepted().json(RetryAccepted {
            saga_id: id,
            state: SagaState::Compensating,
        })),
        Err(refusal @ Refusal::NotFailed(_)) => {
            Err(ApiError::conflict("not_failed", refusal.to_string()))
        }
        Err(other) => Err(ApiError::conflict("refused", other.to_string())),
    }
}
