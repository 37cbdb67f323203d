//! The orchestrator's outcomes as HTTP: the one place that turns what an
//! order's saga decided into a status code and a body.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use serde_json::json;

use super::contract::responses::Order;
use super::error::ApiError;
use crate::domain::OrderId;
use crate::orchestrator::requests::{Outcome, Placement};
use crate::saga::machine::Refusal;

/// How long a client should wait before trying again after a 503.
pub const RETRY_AFTER_SECS: u64 = 5;

/// `POST /orders`: 201 once paid, else what became of the order.
pub fn placement(placement: Placement) -> Result<HttpResponse, ApiError> {
    let with_order = |e: ApiError, id: OrderId| e.with_extra(json!({ "orderId": id }));
    match placement {
        Placement::Established { saga } => {
            Ok(HttpResponse::Created().json(Order::from(saga.as_ref())))
        }
        Placement::Declined { order, reason } => Err(with_order(
            ApiError::new(StatusCode::PAYMENT_REQUIRED, "payment_declined", reason),
            order,
        )),
        Placement::CancelledUnpaid { order, reason } => Err(with_order(
            ApiError::conflict(
                "order_cancelled",
                format!("the order was cancelled before it was paid: {reason}"),
            ),
            order,
        )),
        Placement::TurnedAway {
            order,
            reason,
            payment_sent: false,
        } => Err(with_order(
            ApiError::unavailable(
                format!("{reason}; nothing was established, try again shortly"),
                RETRY_AFTER_SECS,
            ),
            order,
        )),
        Placement::TurnedAway {
            order,
            reason,
            payment_sent: true,
        } => Err(with_order(
            ApiError::unavailable(
                format!(
                    "{reason}; the order was abandoned, but the payment had been requested and its \
                     outcome is not known yet: if the customer was charged, the charge is refunded \
                     (GET /orders/{order} shows how it settled). Placing the order again starts a \
                     new one"
                ),
                RETRY_AFTER_SECS,
            ),
            order,
        )),
        Placement::Unknown { order } => Err(with_order(
            ApiError::unavailable(
                "the order's outcome is not known yet; retry with the same Idempotency-Key to learn it",
                RETRY_AFTER_SECS,
            ),
            order,
        )),
        Placement::PaymentOverloaded { retry_after_secs } => Err(ApiError {
            error: "circuit_open".into(),
            ..ApiError::unavailable("payment is overloaded; try again shortly", retry_after_secs)
        }),
        Placement::BrokerUnavailable => Err(ApiError::unavailable(
            "the message broker is unavailable; try again shortly",
            RETRY_AFTER_SECS,
        )),
    }
}

/// The idempotency key belongs to another request (this order).
pub fn key_reused(id: OrderId) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
        format!(
            "this Idempotency-Key was used for a different order request (order {id}); use a new key"
        ),
    )
    .with_extra(json!({ "orderId": id }))
}

/// A cancel the saga refused.
pub fn cancel_refused(id: OrderId, refusal: Refusal) -> ApiError {
    match refusal {
        Refusal::NotCancellable(status) => ApiError::conflict(
            "not_cancellable",
            format!("order {id} is {status} and can no longer be cancelled"),
        )
        .with_extra(json!({ "orderId": id, "status": status })),
        other => ApiError::conflict("refused", other.to_string()),
    }
}

/// Progress the saga refused.
pub fn progress_refused(id: OrderId, refusal: Refusal) -> ApiError {
    ApiError::conflict("not_in_progress", refusal.to_string()).with_extra(json!({ "orderId": id }))
}

/// A retry the saga refused.
pub fn retry_refused(refusal: Refusal) -> ApiError {
    match refusal {
        refusal @ Refusal::NotFailed(_) => ApiError::conflict("not_failed", refusal.to_string()),
        other => ApiError::conflict("refused", other.to_string()),
    }
}

/// The owner refused the caller: 403.
pub fn forbidden() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        "the caller may not do this",
    )
}

/// A customer naming another customer's id: 403.
pub fn forbidden_for_another() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        "a customer orders for themself: leave `customerId` out, or send your own",
    )
}

/// An outcome that answers none of what the handler asked: not found, a
/// quarantined saga, a key used for another request — or, if the owner
/// answered something this request cannot have, our trouble (503).
pub fn other(outcome: Outcome, what: &str) -> ApiError {
    match outcome {
        Outcome::NotFound => ApiError::not_found(format!("no {what}")),
        Outcome::Forbidden => forbidden(),
        Outcome::Quarantined { saga, reason } => ApiError::conflict(
            "saga_quarantined",
            format!("saga {saga} is quarantined: {reason}"),
        ),
        Outcome::KeyReused(id) => key_reused(id),
        unexpected => {
            tracing::warn!(?unexpected, what, "an owner answered something unexpected");
            ApiError::unavailable(format!("the owner of {what} answered oddly"), 1)
        }
    }
}
