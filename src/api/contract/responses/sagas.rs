//! Orders and sagas as the API shows them: built from the orchestrator's
//! `Saga` (or a quarantined row) at the edge.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::{CustomerId, FoodId, Millis, Money, OrderId, OrderStatus, Qty};
use crate::messages::partition_key;
use crate::orchestrator::requests::SagaDetail;
use crate::orchestrator::store::{PendingMessage, Quarantined, Stored};
use crate::saga::definition::SagaDefinition;
use crate::saga::machine::{Effect, HistoryEntry, Saga, SagaState, Step, StepStatus};
use crate::transport::{QueueName, Route, Topology};

pub(super) fn time(m: Option<Millis>) -> Option<String> {
    m.map(Millis::to_rfc3339)
}

/// An order and its saga's state. A quarantined row (see ARCHITECTURE.md)
/// shows only what is known of it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    pub id: OrderId,
    pub order_id: OrderId,
    pub customer_id: Option<CustomerId>,
    pub food_catalog_id: Option<FoodId>,
    pub qty: Option<Qty>,
    /// The total as the seed shows it (`40.0`).
    pub amount: Option<f64>,
    /// The total in whole cents.
    pub amount_cents: Option<Money>,
    pub status: Option<OrderStatus>,
    pub saga_state: SagaState,
    pub reason: Option<String>,
    /// True when the stored saga could not be decoded.
    pub quarantined: bool,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&Saga> for Order {
    fn from(saga: &Saga) -> Self {
        Order {
            id: saga.id,
            order_id: saga.id,
            customer_id: Some(saga.order.customer_id),
            food_catalog_id: Some(saga.order.food_id),
            qty: Some(saga.order.qty),
            amount: Some(saga.order.amount.as_decimal()),
            amount_cents: Some(saga.order.amount),
            status: Some(saga.order_status),
            saga_state: saga.state,
            reason: saga.reason.clone(),
            quarantined: false,
            created_at: saga.created_at.to_rfc3339(),
            updated_at: saga.updated_at.to_rfc3339(),
        }
    }
}

impl From<&Quarantined> for Order {
    fn from(q: &Quarantined) -> Self {
        Order {
            id: q.id,
            order_id: q.id,
            customer_id: None,
            food_catalog_id: None,
            qty: None,
            amount: None,
            amount_cents: None,
            status: q.order_status,
            saga_state: SagaState::Failed,
            reason: Some(q.reason.clone()),
            quarantined: true,
            created_at: q.created_at.to_rfc3339(),
            updated_at: q.updated_at.to_rfc3339(),
        }
    }
}

impl From<&Stored> for Order {
    fn from(row: &Stored) -> Self {
        match row {
            Stored::Saga(saga) => Order::from(saga.as_ref()),
            Stored::Quarantined(q) => Order::from(q),
        }
    }
}

/// A saga definition's name and version.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DefinitionRef {
    pub name: String,
    pub version: u32,
}

/// One step of a saga.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepView {
    pub name: String,
    pub worker: Option<String>,
    pub action: Option<String>,
    pub compensation: Option<String>,
    pub status: StepStatus,
    pub attempts: u32,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub error: Option<String>,
    /// When the next attempt goes out, while a retry waits out its backoff.
    pub next_attempt_at: Option<String>,
    /// When the current attempt times out, while one is awaited.
    pub times_out_at: Option<String>,
    /// The worker's command queue for this order (its partition's), in the
    /// detailed view.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
}

/// One line of a saga's history.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryLine {
    pub at: String,
    pub event: String,
    pub from: Option<SagaState>,
    pub to: SagaState,
    pub step: Option<String>,
    pub step_status: Option<StepStatus>,
    pub detail: Option<String>,
    /// Who asked for it, for a person's or an operator's event
    /// (`manager:mia`, `kitchen:kim`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

impl From<&HistoryEntry> for HistoryLine {
    fn from(e: &HistoryEntry) -> Self {
        HistoryLine {
            at: e.at.to_rfc3339(),
            event: e.event.clone(),
            from: e.from,
            to: e.to,
            step: e.step.clone(),
            step_status: e.step_status,
            detail: e.detail.clone(),
            by: e.by.clone(),
        }
    }
}

/// "Why is it stuck?": the step the saga waits on.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WaitingOn {
    pub step: String,
    /// `forward` or `compensation`.
    pub direction: String,
    pub since: Option<String>,
    pub attempts: u32,
    pub next_attempt_at: Option<String>,
    pub times_out_at: Option<String>,
    pub waiting_for_a_person: bool,
    pub last_error: Option<String>,
}

/// A message of the saga on its way.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InFlightMessage {
    pub message_id: String,
    /// `awaiting reply` or `in the outbox`.
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub management_url: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub message_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_after: Option<String>,
}

/// A saga as inspection shows it. `history`, `waitingOn` and `inFlight`
/// come with `GET /sagas/{id}` only.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SagaView {
    pub id: OrderId,
    pub order_id: OrderId,
    pub definition: Option<DefinitionRef>,
    pub state: SagaState,
    pub order_status: Option<OrderStatus>,
    pub current_step: Option<String>,
    pub reason: Option<String>,
    pub steps: Vec<StepView>,
    /// True when the stored saga could not be decoded.
    pub quarantined: bool,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<HistoryLine>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_on: Option<Option<WaitingOn>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<Vec<InFlightMessage>>,
}

impl SagaView {
    /// The list form of a saga.
    pub fn of(def: &SagaDefinition, saga: &Saga) -> Self {
        let now = Millis::now();
        let steps = saga
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let d = def.steps.get(i);
                StepView {
                    name: s.name.clone(),
                    worker: d.map(|d| d.worker.as_str().to_owned()),
                    action: d.map(|d| d.action.clone()),
                    compensation: d.map(|d| d.compensation.clone()),
                    status: s.status,
                    attempts: s.attempts,
                    started_at: time(s.started_at),
                    finished_at: time(s.finished_at),
                    error: s.error.clone(),
                    next_attempt_at: time(s.attempt_at.filter(|a| *a > now)),
                    times_out_at: time(s.deadline),
                    queue: None,
                }
            })
            .collect();
        SagaView {
            id: saga.id,
            order_id: saga.id,
            definition: Some(DefinitionRef {
                name: saga.definition.clone(),
                version: saga.version,
            }),
            state: saga.state,
            order_status: Some(saga.order_status),
            current_step: saga.current_step().map(|s| s.name.clone()),
            reason: saga.reason.clone(),
            steps,
            quarantined: false,
            created_at: saga.created_at.to_rfc3339(),
            updated_at: saga.updated_at.to_rfc3339(),
            history: None,
            waiting_on: None,
            in_flight: None,
        }
    }

    /// The inspection form: history, what it waits on, what is on its way.
    pub fn detailed(
        def: &SagaDefinition,
        saga: &Saga,
        history: &[HistoryEntry],
        in_flight: Vec<InFlightMessage>,
    ) -> Self {
        SagaView {
            history: Some(history.iter().map(HistoryLine::from).collect()),
            waiting_on: Some(waiting_on(saga)),
            in_flight: Some(in_flight),
            ..SagaView::of(def, saga)
        }
    }

    /// The list form of a stored row.
    pub fn of_stored(def: &SagaDefinition, row: &Stored) -> Self {
        match row {
            Stored::Saga(s) => SagaView::of(def, s),
            Stored::Quarantined(q) => SagaView::quarantined(q),
        }
    }

    /// What `GET /sagas/{id}` shows: the detailed form, each step naming its
    /// partition's command queue.
    pub fn inspect(
        def: &SagaDefinition,
        detail: &SagaDetail,
        topology: &Topology,
        management_url: &str,
    ) -> Self {
        let saga = match &detail.stored {
            Stored::Saga(saga) => saga,
            Stored::Quarantined(q) => return SagaView::quarantined(q),
        };
        let in_flight = in_flight(def, saga, &detail.pending, topology, management_url);
        let mut view = SagaView::detailed(def, saga, &detail.history, in_flight);
        for (step, d) in view.steps.iter_mut().zip(&def.steps) {
            let route = Route::Command(d.worker, partition_key(d.worker, &saga.order));
            step.queue = QueueName::of(&route, topology.partitions).map(|q| topology.queue(q));
        }
        view
    }

    pub fn quarantined(q: &Quarantined) -> Self {
        SagaView {
            id: q.id,
            order_id: q.id,
            definition: None,
            state: SagaState::Failed,
            order_status: q.order_status,
            current_step: None,
            reason: Some(q.reason.clone()),
            steps: Vec::new(),
            quarantined: true,
            created_at: q.created_at.to_rfc3339(),
            updated_at: q.updated_at.to_rfc3339(),
            history: None,
            waiting_on: None,
            in_flight: None,
        }
    }
}

/// The step a saga waits on, if any.
fn waiting_on(saga: &Saga) -> Option<WaitingOn> {
    let s: &Step = saga
        .steps
        .iter()
        .rev()
        .find(|s| matches!(s.status, StepStatus::Running | StepStatus::Compensating))?;
    let now = Millis::now();
    Some(WaitingOn {
        step: s.name.clone(),
        direction: if s.status == StepStatus::Compensating {
            "compensation"
        } else {
            "forward"
        }
        .to_owned(),
        since: time(s.attempt_at.or(s.started_at)),
        attempts: s.attempts,
        next_attempt_at: time(s.attempt_at.filter(|a| *a > now)),
        times_out_at: time(s.deadline),
        waiting_for_a_person: s.status == StepStatus::Running && s.effect == Effect::Applied,
        last_error: s.error.clone(),
    })
}

/// The messages of a saga on their way: commands awaiting an answer (with
/// the queue to look at in the management UI) and outbox rows not yet
/// published.
fn in_flight(
    def: &SagaDefinition,
    saga: &Saga,
    pending: &[PendingMessage],
    topology: &Topology,
    management_url: &str,
) -> Vec<InFlightMessage> {
    let mut out = Vec::new();
    for (i, s) in saga.steps.iter().enumerate() {
        let direction = match (s.status, s.effect) {
            (StepStatus::Running, Effect::Unknown) => "do",
            (StepStatus::Compensating, _) => "undo",
            _ => continue,
        };
        let Some(d) = def.steps.get(i) else {
            continue;
        };
        let route = Route::Command(d.worker, partition_key(d.worker, &saga.order));
        let queue = QueueName::of(&route, topology.partitions)
            .map(|q| topology.queue(q))
            .unwrap_or_default();
        out.push(InFlightMessage {
            message_id: format!("order-{}.{}.{direction}", saga.id, s.name),
            state: "awaiting reply".into(),
            management_url: Some(format!(
                "{}/#/queues/%2F/{queue}",
                management_url.trim_end_matches('/')
            )),
            queue: Some(queue),
            message_type: None,
            publish_after: None,
        });
    }
    for m in pending {
        out.push(InFlightMessage {
            message_id: m.message_id.clone(),
            state: "in the outbox".into(),
            queue: None,
            management_url: None,
            message_type: Some(m.message_type.clone()),
            publish_after: Some(m.available_at.to_rfc3339()),
        });
    }
    out
}

/// `DELETE /kitchens/{id}` accepted: the saga compensates.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CancelAccepted {
    pub saga_id: OrderId,
    pub order_id: OrderId,
    pub status: OrderStatus,
    pub state: SagaState,
}

/// Manual progress accepted by the order's saga.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProgressAccepted {
    pub order_id: OrderId,
    /// `cooked`, `pickedUp` or `delivered`.
    pub progress: String,
}

/// `POST /sagas/{id}/retry` accepted.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryAccepted {
    pub saga_id: OrderId,
    pub state: SagaState,
}
