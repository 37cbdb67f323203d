//! Saga inspection, the operator's search and retry.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};

use super::contract::requests::{IdPath, SagaQuery, id_filter, page};
use super::contract::responses::{ErrorBody, RetryAccepted, SagaView};
use super::error::ApiError;
use super::{ApiState, ORCHESTRATOR, ok_json, outcome};
use crate::auth::Caller;
use crate::cluster::owners::Keyed;
use crate::domain::{CustomerId, FoodId, Millis, SagaId};
use crate::orchestrator::requests::{Outcome, Request};
use crate::orchestrator::search::{SagaSearch, TimeRange};
use crate::saga::definition::{SagaDefinition, parse_duration};
use crate::saga::machine::SagaState;

type State = web::Data<ApiState>;

fn saga_id(raw: i64) -> Result<SagaId, ApiError> {
    SagaId::new(raw).map_err(|_| ApiError::not_found(format!("no saga `{raw}`")))
}

/// Sagas by id, filtered by the operator's search, paged by `limit` and
/// `offset`, after the cursor `after` if given.
#[utoipa::path(
    get,
    path = "/sagas",
    operation_id = "listSagas",
    tag = "inspection",
    params(SagaQuery),
    responses(
        (status = 200, description = "sagas ordered by id; a full page names the next in its `Link` header (`rel=\"next\"`, with `after`)", body = [SagaView]),
        (status = 400, description = "bad query", body = ErrorBody),
        (status = 422, description = "a step the saga does not have", body = ErrorBody),
        (status = 503, description = "storage unavailable, or an owner of an earlier version that cannot search", body = ErrorBody),
    )
)]
pub async fn list(
    state: State,
    caller: Caller,
    req: HttpRequest,
    q: web::Query<SagaQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = page(q.limit, q.offset).map_err(ApiError::bad_request)?;
    let search = search_of(&q, &state.def)?;
    // A list by state alone is the request every owner version knows.
    let by_state_only = search
        == SagaSearch {
            state: search.state,
            ..SagaSearch::default()
        };
    let rows = state
        .orchestrators
        .page(
            ORCHESTRATOR,
            &caller,
            |page| match by_state_only {
                true => Request::Sagas {
                    page,
                    state: search.state,
                },
                false => Request::SearchSagas {
                    page,
                    search: search.clone(),
                },
            },
            Outcome::sagas,
            page,
        )
        .await?;
    let mut answer = HttpResponse::Ok();
    if i64::try_from(rows.len()) == Ok(page.limit)
        && let Some(last) = rows.last()
    {
        answer.insert_header((header::LINK, next_page(req.path(), &q, last.key())));
    }
    let views: Vec<SagaView> = rows
        .iter()
        .map(|row| SagaView::of_stored(&state.def, row))
        .collect();
    Ok(answer.json(&views))
}

/// The operator's search, from the query string.
fn search_of(q: &SagaQuery, def: &SagaDefinition) -> Result<SagaSearch, ApiError> {
    let bad = ApiError::bad_request;
    let state = match q.state.as_deref() {
        None => None,
        Some(s) => Some(s.parse::<SagaState>().map_err(|e| {
            bad(format!(
                "{e}; expected Running, Completed, Compensating, Compensated or Failed"
            ))
        })?),
    };
    if let Some(step) = &q.step
        && !def.steps.iter().any(|s| &s.name == step)
    {
        let steps: Vec<&str> = def.steps.iter().map(|s| s.name.as_str()).collect();
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_step",
            format!(
                "no step `{step}` in the saga; its steps are {}",
                steps.join(", ")
            ),
        ));
    }
    let customer = id_filter("customerId", q.customer_id, CustomerId::new).map_err(bad)?;
    let food = id_filter("foodId", q.food_id, FoodId::new).map_err(bad)?;
    let at = |raw: &Option<String>, what: &str| -> Result<Option<Millis>, ApiError> {
        raw.as_deref()
            .map(|s| {
                Millis::parse_rfc3339(s).ok_or_else(|| {
                    bad(format!(
                        "`{what}` must be a time in RFC 3339, e.g. 2026-12-07T20:00:00Z (a `+` of an offset is sent as %2B)"
                    ))
                })
            })
            .transpose()
    };
    let waiting_longer_than_ms = q
        .waiting_longer_than
        .as_deref()
        .map(|raw| {
            parse_duration(raw)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .map_err(|e| bad(format!("`waitingLongerThan`: {e}")))
        })
        .transpose()?;
    // `after=0`: from the start.
    let after = id_filter("after", q.after.filter(|&n| n != 0), SagaId::new).map_err(bad)?;
    Ok(SagaSearch {
        state,
        step: q.step.clone(),
        customer,
        food,
        created: TimeRange {
            from: at(&q.created_from, "createdFrom")?,
            to: at(&q.created_to, "createdTo")?,
        },
        updated: TimeRange {
            from: at(&q.updated_from, "updatedFrom")?,
            to: at(&q.updated_to, "updatedTo")?,
        },
        waiting_longer_than_ms,
        after,
    })
}

/// The `Link` to the page after `last`: this path with the search as it
/// was understood (each value percent-encoded) and `after` in place of any
/// `after` or `offset`.
fn next_page(path: &str, q: &SagaQuery, last: i64) -> String {
    let number = |n: Option<i64>| n.map(|n| n.to_string());
    let pairs = [
        ("state", q.state.clone()),
        ("step", q.step.clone()),
        ("customerId", number(q.customer_id)),
        ("foodId", number(q.food_id)),
        ("createdFrom", q.created_from.clone()),
        ("createdTo", q.created_to.clone()),
        ("updatedFrom", q.updated_from.clone()),
        ("updatedTo", q.updated_to.clone()),
        ("waitingLongerThan", q.waiting_longer_than.clone()),
        ("limit", number(q.limit)),
        ("after", Some(last.to_string())),
    ];
    let query: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| format!("{k}={}", percent_encoded(v))))
        .collect();
    format!("<{path}?{}>; rel=\"next\"", query.join("&"))
}

/// `raw` with every byte but RFC 3986's unreserved ones percent-encoded.
fn percent_encoded(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_page_link_carries_the_search_encoded() {
        let q: SagaQuery = serde_json::from_value(serde_json::json!({
            "step": "kitchen",
            "createdFrom": "2026-12-07T20:00:00+01:00",
            "waitingLongerThan": ">;rel=prev",
            "limit": 2,
            "offset": 4,
        }))
        .expect("query");
        assert_eq!(
            next_page("/sagas", &q, 17),
            "</sagas?step=kitchen&createdFrom=2026-12-07T20%3A00%3A00%2B01%3A00\
             &waitingLongerThan=%3E%3Brel%3Dprev&limit=2&after=17>; rel=\"next\""
        );
    }
}
