//! Saga inspection and the operator's retry.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use super::body::Query;
use super::error::ApiError;
use super::{ApiState, ok_json};
use crate::domain::{Millis, SagaId};
use crate::orchestrator::{dispatch, store};
use crate::saga::definition::SagaDefinition;
use crate::saga::machine::{Event, HistoryEntry, Refusal, Saga, SagaState};

type State = web::Data<ApiState>;

fn time(m: Option<Millis>) -> Value {
    m.map(|m| Value::String(m.to_rfc3339()))
        .unwrap_or(Value::Null)
}

/// The inspection view of a saga.
pub fn saga_view(def: &SagaDefinition, saga: &Saga, history: Option<&[HistoryEntry]>) -> Value {
    let steps: Vec<Value> = saga
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let d = def.steps.get(i);
            json!({
                "name": s.name,
                "worker": d.map(|d| d.worker.as_str()),
                "action": d.map(|d| d.action.as_str()),
                "compensation": d.map(|d| d.compensation.as_str()),
                "status": s.status,
                "attempts": s.attempts,
                "startedAt": time(s.started_at),
                "finishedAt": time(s.finished_at),
                "error": s.error,
                "nextAttemptAt": s.attempt_at.filter(|a| *a > Millis::now()).map(Millis::to_rfc3339),
                "timesOutAt": time(s.deadline),
            })
        })
        .collect();
    let mut v = json!({
        "id": saga.id,
        "orderId": saga.id,
        "definition": { "name": saga.definition, "version": saga.version },
        "state": saga.state,
        "orderStatus": saga.order_status,
        "currentStep": saga.current_step().map(|s| s.name.clone()),
        "reason": saga.reason,
        "steps": steps,
        "createdAt": saga.created_at.to_rfc3339(),
        "updatedAt": saga.updated_at.to_rfc3339(),
    });
    if let Some(h) = history {
        let entries: Vec<Value> = h
            .iter()
            .map(|e| {
                json!({
                    "at": e.at.to_rfc3339(),
                    "event": e.event,
                    "from": e.from,
                    "to": e.to,
                    "step": e.step,
                    "stepStatus": e.step_status,
                    "detail": e.detail,
                })
            })
            .collect();
        v["history"] = Value::Array(entries);
    }
    v
}

pub async fn list(
    state: State,
    q: web::Query<std::collections::HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let q = Query(q.into_inner());
    let page = q.page()?;
    let filter = match q.get("state") {
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
    let views: Vec<Value> = sagas
        .iter()
        .map(|s| saga_view(&state.def, s, None))
        .collect();
    Ok(ok_json(&views))
}

pub async fn get(state: State, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let id: SagaId = path
        .parse()
        .map_err(|_| ApiError::not_found(format!("no saga `{path}`")))?;
    let found = state
        .sagas
        .db()
        .read(move |c| {
            let saga = store::get_saga(c, id)?;
            let history = match &saga {
                Some(_) => store::history(c, id)?,
                None => Vec::new(),
            };
            Ok(saga.map(|s| (s, history)))
        })
        .await?;
    let (saga, history) = found.ok_or_else(|| ApiError::not_found(format!("no saga {id}")))?;
    Ok(ok_json(&saga_view(&state.def, &saga, Some(&history))))
}

pub async fn retry(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    state.require_manager(&req)?;
    let id: SagaId = path
        .parse()
        .map_err(|_| ApiError::not_found(format!("no saga `{path}`")))?;
    match dispatch(&state.orchestrator, id, Event::Retry).await? {
        Ok(()) => {
            Ok(HttpResponse::Accepted().json(json!({ "sagaId": id, "state": "Compensating" })))
        }
        Err(refusal @ Refusal::NotFailed(_)) => {
            Err(ApiError::conflict("not_failed", refusal.to_string()))
        }
        Err(other) => Err(ApiError::conflict("refused", other.to_string())),
    }
}
