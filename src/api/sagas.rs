//! Saga inspection and the operator's retry.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use super::body::Query;
use super::error::ApiError;
use super::{ApiState, ok_json};
use crate::domain::{Millis, SagaId};
use crate::orchestrator::{dispatch, store};
use crate::saga::definition::SagaDefinition;
use crate::saga::machine::{Effect, Event, HistoryEntry, Refusal, Saga, SagaState, StepStatus};

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

/// The inspection view of a quarantined row: what is known, and why.
fn quarantined_view(q: &store::Quarantined) -> Value {
    json!({
        "id": q.id,
        "orderId": q.id,
        "state": "Failed",
        "orderStatus": q.order_status,
        "quarantined": true,
        "reason": q.reason,
        "steps": [],
        "createdAt": q.created_at.to_rfc3339(),
        "updatedAt": q.updated_at.to_rfc3339(),
    })
}

fn stored_view(def: &SagaDefinition, row: &store::Stored) -> Value {
    match row {
        store::Stored::Saga(s) => saga_view(def, s, None),
        store::Stored::Quarantined(q) => quarantined_view(q),
    }
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
    let views: Vec<Value> = sagas.iter().map(|s| stored_view(&state.def, s)).collect();
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
            Err(q) => return Ok(ok_json(&quarantined_view(&q))),
        };
    let mut view = saga_view(&state.def, &saga, Some(&history));
    view["waitingOn"] = waiting_on(&saga);
    view["inFlight"] = in_flight(&state, &saga, &pending);
    Ok(ok_json(&view))
}

/// "Why is it stuck?": the step the saga waits on, since when, its attempts,
/// the next retry and the last error.
fn waiting_on(saga: &Saga) -> Value {
    let waiting = saga.steps.iter().rev().find(|s| {
        matches!(
            (s.status, s.effect),
            (StepStatus::Running, _) | (StepStatus::Compensating, _)
        )
    });
    let Some(s) = waiting else {
        return Value::Null;
    };
    let direction = if s.status == StepStatus::Compensating {
        "compensation"
    } else {
        "forward"
    };
    let now = Millis::now();
    json!({
        "step": s.name,
        "direction": direction,
        "since": time(s.attempt_at.or(s.started_at)),
        "attempts": s.attempts,
        "nextAttemptAt": s.attempt_at.filter(|a| *a > now).map(Millis::to_rfc3339),
        "timesOutAt": time(s.deadline),
        "waitingForAPerson": s.status == StepStatus::Running && s.effect == Effect::Applied,
        "lastError": s.error,
    })
}

/// The messages of this saga that are on their way: the commands awaiting an
/// answer (with the queue to look at in the management UI) and the outbox
/// rows not yet published.
fn in_flight(state: &ApiState, saga: &Saga, pending: &[store::PendingMessage]) -> Value {
    let mut out = Vec::new();
    for (i, s) in saga.steps.iter().enumerate() {
        let direction = match (s.status, s.effect) {
            (StepStatus::Running, Effect::Unknown) => "do",
            (StepStatus::Compensating, _) => "undo",
            _ => continue,
        };
        let Some(d) = state.def.steps.get(i) else {
            continue;
        };
        let queue = format!("{}.{}.commands", state.namespace, d.worker);
        out.push(json!({
            "messageId": format!("order-{}.{}.{direction}", saga.id, s.name),
            "queue": queue,
            "managementUrl": format!("{}/#/queues/%2F/{queue}", state.management_url.trim_end_matches('/')),
            "state": "awaiting reply",
        }));
    }
    for m in pending {
        out.push(json!({
            "messageId": m.message_id,
            "type": m.message_type,
            "state": "in the outbox",
            "publishAfter": m.available_at.to_rfc3339(),
        }));
    }
    Value::Array(out)
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
