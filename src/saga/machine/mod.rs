//! The saga as a pure state machine: `(saga, event, now) -> (saga', commands)`.
//!
//! Nothing here touches actors, brokers, clocks or disks, so every rule can be
//! tested exhaustively. The orchestrator actor persists the new state and the
//! commands in one SQLite transaction and only then carries the commands out.
//!
//! The rules, in short:
//! - forward steps run one at a time, in order; a step is done when its worker
//!   says `Done` (a worker may first say `Accepted`: the effect happened, the
//!   step waits for a person);
//! - a step that fails, or gets no answer after its retries, ends the forward
//!   path and the saga compensates, ending the order `Rejected`;
//! - a manager's cancel ends the forward path and the saga compensates,
//!   ending the order `Cancelled`;
//! - compensation runs in reverse order over every step that took effect (or
//!   may have: an attempt without an answer); a step still in flight is
//!   compensated once its outcome is known; a step whose compensation does not
//!   block lets the earlier ones go ahead;
//! - every duplicate, late or out-of-place reply is ignored.

mod rules;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::domain::{Millis, OrderStatus, SagaId};
use crate::messages::{Direction, OrderDetails, Progress, ReplyOutcome};
use crate::saga::definition::SagaDefinition;

/// The saga's overall state (exact strings of PRODUCT.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum SagaState {
    Running,
    Completed,
    Compensating,
    Compensated,
    Failed,
}

impl SagaState {
    pub const ALL: [SagaState; 5] = [
        SagaState::Running,
        SagaState::Completed,
        SagaState::Compensating,
        SagaState::Compensated,
        SagaState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SagaState::Running => "Running",
            SagaState::Completed => "Completed",
            SagaState::Compensating => "Compensating",
            SagaState::Compensated => "Compensated",
            SagaState::Failed => "Failed",
        }
    }

    /// Whether the saga still has work of its own to do. `Failed` waits for an
    /// operator, so it is not active, but it is not terminal either.
    pub fn is_active(self) -> bool {
        matches!(self, SagaState::Running | SagaState::Compensating)
    }

    /// The legal saga-level transitions; `history` only ever shows these.
    pub fn can_become(self, next: SagaState) -> bool {
        use SagaState::*;
        matches!(
            (self, next),
            (Running, Completed)
                | (Running, Compensating)
                | (Completed, Compensating)
                | (Compensating, Compensated)
                | (Compensating, Failed)
                | (Failed, Compensating)
                | (Failed, Compensated)
        )
    }
}

impl std::str::FromStr for SagaState {
    type Err = crate::domain::DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SagaState::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| crate::domain::DomainError::new(format!("unknown saga state `{s}`")))
    }
}

/// A step's status (exact strings of PRODUCT.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum StepStatus {
    Pending,
    Running,
    Done,
    Failed,
    Compensating,
    Compensated,
}

/// What the saga knows about a step's forward effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Effect {
    /// Nothing happened (not sent, or refused by the worker).
    None,
    /// The command went out and no outcome is known yet.
    Unknown,
    /// The worker confirmed the effect.
    Applied,
}

/// One step of a running saga.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    pub name: String,
    pub status: StepStatus,
    pub effect: Effect,
    /// Attempts of the current direction (forward, then compensation).
    pub attempts: u32,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    pub error: Option<String>,
    /// When the current attempt times out, while one is awaited.
    pub deadline: Option<Millis>,
    /// When the current attempt is (or was) sent; later than now while a
    /// retry waits out its backoff.
    pub attempt_at: Option<Millis>,
    /// A person's progress sent to the worker and not yet confirmed by it:
    /// sent again when `deadline` passes (a transport may lose it).
    #[serde(default)]
    pub reported: Option<Progress>,
}

/// A saga: an order's progress through its steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Saga {
    pub id: SagaId,
    pub definition: String,
    pub version: u32,
    pub state: SagaState,
    pub order_status: OrderStatus,
    pub order: OrderDetails,
    pub steps: Vec<Step>,
    /// What an operator reads: why the saga compensates, or, while it is
    /// `Failed`, which compensation is stuck and why.
    pub reason: Option<String>,
    /// Why the saga compensates (a cancel, a refused step); `reason` returns
    /// to it once a stuck compensation gets going again.
    #[serde(default)]
    pub cause: Option<String>,
    /// The first step (payment) completed while the saga ran forward: the
    /// order was established, whatever happens to it later.
    #[serde(default)]
    pub admitted: bool,
    /// When the order is abandoned if its payment has not succeeded by then
    /// (the caller of `POST /orders` stops waiting). Stored, so a restart
    /// keeps the promise that a caller who got no 201 is never charged.
    #[serde(default)]
    pub admit_by: Option<Millis>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// Something that happened to a saga.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Event {
    /// The order was placed: run the first step.
    Start,
    /// A worker answered.
    Reply {
        step: String,
        attempt: u32,
        outcome: ReplyOutcome,
    },
    /// The attempt `attempt` of step `step` got no answer in time.
    Timeout { step: usize, attempt: u32 },
    /// The kitchen manager cancels the order.
    Cancel,
    /// The caller gave up waiting for the order to be paid: do not establish it.
    Abandon { reason: String },
    /// An operator resumes a `Failed` saga.
    Retry,
    /// A person reports progress of a manual step (cooked, picked up,
    /// delivered). Judged here, against the saga's current state, and sent
    /// to the worker in the same commit: check and act are one step.
    Progress { progress: Progress },
}

impl Event {
    fn describe(&self) -> String {
        match self {
            Event::Start => "order placed".into(),
            Event::Reply { step, outcome, .. } => format!("{step} replied {}", outcome.as_str()),
            Event::Timeout { attempt, .. } => format!("attempt {attempt} timed out"),
            Event::Cancel => "cancelled by the kitchen manager".into(),
            Event::Abandon { reason } => format!("abandoned: {reason}"),
            Event::Retry => "retry requested by an operator".into(),
            Event::Progress { progress } => format!("{} reported", progress.as_str()),
        }
    }
}

/// Something the driver must do after persisting the transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Put a command for step `step` in the outbox, to go out after `delay`.
    Send {
        step: usize,
        direction: Direction,
        attempt: u32,
        delay: Duration,
    },
    /// Put a person's progress of step `step` in the outbox for its worker.
    Progress { step: usize, progress: Progress },
    /// Deliver `Event::Abandon` at `at` unless the payment succeeded.
    ArmAdmission { at: Millis },
    /// Deliver `Event::Timeout { step, attempt }` at `at`.
    ArmTimer {
        step: usize,
        attempt: u32,
        at: Millis,
    },
}

/// One line of a saga's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    pub at: Millis,
    /// What caused it.
    pub event: String,
    /// The saga state before and after.
    pub from: Option<SagaState>,
    pub to: SagaState,
    pub step: Option<String>,
    pub step_status: Option<StepStatus>,
    pub detail: Option<String>,
    /// Who asked for it (a person's or an operator's event: `manager:alice`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// The result of applying an event.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Transition {
    pub commands: Vec<Command>,
    pub history: Vec<HistoryEntry>,
}

impl Transition {
    /// False when the event changed nothing (a duplicate or late reply).
    pub fn changed(&self) -> bool {
        !self.history.is_empty()
    }
}

/// Why a request event was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "refusal", content = "detail", rename_all = "camelCase")]
pub enum Refusal {
    #[error("order is already {0} and can no longer be cancelled")]
    NotCancellable(OrderStatus),
    #[error("saga is {0:?}; only a Failed saga can be retried")]
    NotFailed(SagaState),
    #[error("{0}")]
    NotInProgress(String),
}

impl Saga {
    /// A new saga for an order, before its `Start` event.
    pub fn new(def: &SagaDefinition, order: OrderDetails, now: Millis) -> Self {
        Saga {
            id: order.order_id,
            definition: def.name.clone(),
            version: def.version,
            state: SagaState::Running,
            order_status: OrderStatus::Ordered,
            order,
            steps: def
                .steps
                .iter()
                .map(|s| Step {
                    name: s.name.clone(),
                    status: StepStatus::Pending,
                    effect: Effect::None,
                    attempts: 0,
                    started_at: None,
                    finished_at: None,
                    error: None,
                    deadline: None,
                    attempt_at: None,
                    reported: None,
                })
                .collect(),
            reason: None,
            cause: None,
            admitted: false,
            admit_by: None,
            created_at: now,
            updated_at: now,
        }
    }

    /// Applies an event. Replies and timeouts that no longer fit are ignored
    /// (an empty transition); cancel and retry requests that do not fit are
    /// refused.
    pub fn apply(
        &mut self,
        def: &SagaDefinition,
        event: &Event,
        now: Millis,
    ) -> Result<Transition, Refusal> {
        self.apply_by(def, event, now, None)
    }

    /// Applies an event someone asked for (a cancel, progress, a retry),
    /// recording who in the history lines it makes.
    pub fn apply_by(
        &mut self,
        def: &SagaDefinition,
        event: &Event,
        now: Millis,
        by: Option<&str>,
    ) -> Result<Transition, Refusal> {
        let mut run = rules::Run {
            saga: self,
            def,
            now,
            cause: event.describe(),
            by: by.map(str::to_owned),
            out: Transition::default(),
        };
        run.handle(event)?;
        let out = run.out;
        if out.changed() {
            self.updated_at = now;
        }
        Ok(out)
    }

    /// The step the saga is busy with (or stuck on), for inspection.
    pub fn current_step(&self) -> Option<&Step> {
        self.steps
            .iter()
            .rev()
            .find(|s| matches!(s.status, StepStatus::Running | StepStatus::Compensating))
            .or_else(|| {
                if self.state == SagaState::Running {
                    self.steps.iter().find(|s| s.status != StepStatus::Done)
                } else {
                    None
                }
            })
    }

    /// Timers to arm after loading the saga from storage.
    pub fn pending_timers(&self) -> Vec<Command> {
        let admission = self
            .admit_by
            .filter(|_| self.state == SagaState::Running && !self.admitted)
            .map(|at| Command::ArmAdmission { at });
        let steps = self.steps.iter().enumerate().filter_map(|(i, s)| {
            let waiting = matches!(
                (s.status, s.effect),
                (StepStatus::Running, Effect::Unknown) | (StepStatus::Compensating, _)
            ) || s.reported.is_some();
            match (waiting, s.deadline) {
                (true, Some(at)) => Some(Command::ArmTimer {
                    step: i,
                    attempt: s.attempts,
                    at,
                }),
                _ => None,
            }
        });
        admission.into_iter().chain(steps).collect()
    }

    /// Whether the first step's command (the payment) was ever sent: then a
    /// turned-away order may have been charged, and its compensation
    /// refunds it.
    pub fn payment_sent(&self) -> bool {
        self.steps.first().is_some_and(|s| s.attempts > 0)
    }

    /// The outcome of the first step (payment): what `POST /orders` waits
    /// for and answers.
    pub fn admission(&self) -> Admission {
        let Some(first) = self.steps.first() else {
            return Admission::Pending;
        };
        let why = || {
            self.reason
                .clone()
                .or_else(|| first.error.clone())
                .unwrap_or_else(|| "order was not established".into())
        };
        if self.admitted {
            return Admission::Established;
        }
        match self.state {
            SagaState::Running | SagaState::Completed => Admission::Pending,
            _ if self.order_status == OrderStatus::Cancelled => Admission::CancelledUnpaid(why()),
            _ if first.status == StepStatus::Failed && first.effect == Effect::None => {
                Admission::Declined(why())
            }
            _ => Admission::Unavailable(why()),
        }
    }
}

/// What became of an order's admission (its payment), as `POST /orders`
/// answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// The payment's outcome is not known yet.
    Pending,
    /// Paid: the order exists (201), whatever happened to it later.
    Established,
    /// The payment was refused (402); nothing was established.
    Declined(String),
    /// Cancelled by the manager before it was paid (409).
    CancelledUnpaid(String),
    /// Turned away because payment was unavailable (503): nothing was
    /// established, and a retry may place the order anew. Final: a rejected
    /// order stays rejected.
    Unavailable(String),
}

impl Admission {
    pub fn is_known(&self) -> bool {
        *self != Admission::Pending
    }
}
