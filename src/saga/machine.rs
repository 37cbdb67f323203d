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
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
        let mut run = Run {
            saga: self,
            def,
            now,
            cause: event.describe(),
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

/// One application of an event, with the bookkeeping it needs.
struct Run<'a> {
    saga: &'a mut Saga,
    def: &'a SagaDefinition,
    now: Millis,
    cause: String,
    out: Transition,
}

impl Run<'_> {
    fn handle(&mut self, event: &Event) -> Result<(), Refusal> {
        match event {
            Event::Start => {
                let untouched = self.saga.state == SagaState::Running
                    && self
                        .saga
                        .steps
                        .iter()
                        .all(|s| s.status == StepStatus::Pending);
                if untouched {
                    self.note(None, None);
                    self.advance();
                }
            }
            Event::Reply {
                step,
                attempt,
                outcome,
            } => {
                if let Some(i) = self.saga.steps.iter().position(|s| &s.name == step) {
                    self.on_reply(i, *attempt, outcome);
                }
            }
            Event::Timeout { step, attempt } => self.on_timeout(*step, *attempt),
            Event::Cancel => {
                if !self.saga.order_status.is_cancellable()
                    || !matches!(self.saga.state, SagaState::Running | SagaState::Completed)
                {
                    return Err(Refusal::NotCancellable(self.saga.order_status));
                }
                self.begin_compensation(OrderStatus::Cancelled, "cancelled by the kitchen manager");
            }
            Event::Abandon { reason } => {
                // Only an order whose payment has not succeeded is abandoned:
                // once paid, it is established whatever its caller thinks.
                let paid = self
                    .saga
                    .steps
                    .first()
                    .is_some_and(|s| s.status == StepStatus::Done);
                if self.saga.state == SagaState::Running && !paid {
                    self.begin_compensation(OrderStatus::Rejected, reason);
                }
            }
            Event::Progress { progress } => self.on_progress(*progress)?,
            Event::Retry => {
                if self.saga.state != SagaState::Failed {
                    return Err(Refusal::NotFailed(self.saga.state));
                }
                self.saga.reason = self.saga.cause.clone();
                self.set_state(SagaState::Compensating);
                for i in 0..self.saga.steps.len() {
                    if self.stuck(i) {
                        self.saga.steps[i].attempts = 0;
                        self.saga.steps[i].error = None;
                        self.send(i, Direction::Undo);
                    }
                }
                self.drive_compensation();
            }
        }
        Ok(())
    }

    fn on_reply(&mut self, i: usize, attempt: u32, outcome: &ReplyOutcome) {
        let step = &self.saga.steps[i];
        match outcome {
            ReplyOutcome::Accepted => {
                if step.status == StepStatus::Running && step.effect == Effect::Unknown {
                    let s = &mut self.saga.steps[i];
                    s.effect = Effect::Applied;
                    s.deadline = None;
                    self.note(Some(i), Some("accepted; waiting to be completed".into()));
                    if self.compensating() {
                        self.drive_compensation();
                    }
                }
            }
            ReplyOutcome::Done => match (step.status, step.effect) {
                (StepStatus::Running, _) => {
                    self.finish_step(i, StepStatus::Done, Effect::Applied, None);
                    match self.saga.state {
                        SagaState::Running => {
                            if i == 0 {
                                self.saga.admitted = true;
                            }
                            if let Some(status) = self.def.steps[i].marks_order {
                                self.saga.order_status = status;
                            }
                            self.advance();
                        }
                        SagaState::Compensating | SagaState::Failed => self.drive_compensation(),
                        _ => {}
                    }
                }
                (StepStatus::Failed, Effect::Unknown) => {
                    // A late success after we gave up: it is compensated anyway.
                    self.saga.steps[i].effect = Effect::Applied;
                    self.note(Some(i), Some("late success; will be compensated".into()));
                    if self.compensating() {
                        self.drive_compensation();
                    }
                }
                _ => {}
            },
            ReplyOutcome::Failed { reason } => {
                if step.status == StepStatus::Running && step.effect == Effect::Unknown {
                    self.finish_step(i, StepStatus::Failed, Effect::None, Some(reason.clone()));
                    match self.saga.state {
                        SagaState::Running => {
                            let why = format!("{} failed: {reason}", self.saga.steps[i].name);
                            self.begin_compensation(OrderStatus::Rejected, &why);
                        }
                        SagaState::Compensating => self.drive_compensation(),
                        _ => {}
                    }
                } else if step.status == StepStatus::Failed && step.effect == Effect::Unknown {
                    // A late refusal after we gave up: there is nothing to undo.
                    self.saga.steps[i].effect = Effect::None;
                    self.note(Some(i), Some(format!("late refusal: {reason}")));
                    if self.compensating() {
                        self.drive_compensation();
                    }
                }
            }
            ReplyOutcome::Compensated => {
                if step.status == StepStatus::Compensating {
                    // Also a late answer to a compensation given up on: it
                    // resumes whatever that one held back.
                    self.finish_step(i, StepStatus::Compensated, step.effect, None);
                    if self.compensating() {
                        self.drive_compensation();
                    }
                }
            }
            ReplyOutcome::CompensationFailed { reason } => {
                let awaited = step.deadline.is_some();
                if step.status == StepStatus::Compensating && step.attempts == attempt && awaited {
                    self.saga.steps[i].error = Some(reason.clone());
                    self.retry_or_give_up(i, reason);
                }
            }
            ReplyOutcome::DeadLettered { reason } => {
                // Recorded for inspection; the step's timeout decides what
                // happens next (a retry, or giving up and compensating).
                let waiting = matches!(step.status, StepStatus::Running | StepStatus::Compensating);
                let detail = format!("dead-lettered: {reason}");
                if waiting && step.error.as_deref() != Some(detail.as_str()) {
                    self.saga.steps[i].error = Some(detail.clone());
                    self.note(Some(i), Some(detail));
                }
            }
            ReplyOutcome::Delivered if step.reported == Some(Progress::Delivered) => {
                let s = &mut self.saga.steps[i];
                s.reported = None;
                s.deadline = None;
                self.note(Some(i), Some("delivered to the customer".into()));
            }
            ReplyOutcome::Delivered => {
                let delivered_ok =
                    matches!(self.saga.state, SagaState::Running | SagaState::Completed)
                        && self.saga.order_status.is_cancellable()
                        && step.status == StepStatus::Done;
                if delivered_ok {
                    self.saga.order_status = OrderStatus::Delivered;
                    self.note(Some(i), Some("delivered to the customer".into()));
                }
            }
        }
    }

    fn on_timeout(&mut self, i: usize, attempt: u32) {
        let Some(step) = self.saga.steps.get(i) else {
            return;
        };
        if step.attempts != attempt || step.deadline.is_none_or(|d| d > self.now) {
            return;
        }
        if let Some(progress) = step.reported {
            // The worker has not confirmed a person's report: send it again
            // (same message id; the worker answers a repeat from its inbox).
            self.note(
                Some(i),
                Some(format!(
                    "no confirmation of `{}`; sent again",
                    progress.as_str()
                )),
            );
            self.report(i, progress);
            return;
        }
        match (step.status, step.effect) {
            (StepStatus::Running, Effect::Unknown) => {
                let policy = self.def.steps[i].retry;
                if self.saga.state == SagaState::Running && attempt < policy.max_attempts {
                    self.note(
                        Some(i),
                        Some(format!("attempt {attempt} timed out; retrying")),
                    );
                    self.send(i, Direction::Do);
                    return;
                }
                let why = format!(
                    "{}: no answer after {attempt} attempt(s)",
                    self.saga.steps[i].name
                );
                self.finish_step(i, StepStatus::Failed, Effect::Unknown, Some(why.clone()));
                match self.saga.state {
                    SagaState::Running => self.begin_compensation(OrderStatus::Rejected, &why),
                    SagaState::Compensating => self.drive_compensation(),
                    _ => {}
                }
            }
            (StepStatus::Compensating, _) => {
                let why = format!("no answer to compensation attempt {attempt}");
                self.retry_or_give_up(i, &why);
            }
            _ => {}
        }
    }

    /// After a compensation attempt failed: try again with backoff, or mark
    /// the saga `Failed` once the policy's attempts are used up.
    fn retry_or_give_up(&mut self, i: usize, why: &str) {
        let policy = self.def.steps[i].compensation_retry;
        let attempts = self.saga.steps[i].attempts;
        if attempts < policy.max_attempts {
            self.note(Some(i), Some(format!("{why}; retrying")));
            self.send(i, Direction::Undo);
            return;
        }
        let reason = format!(
            "compensation of {} failed after {attempts} attempt(s): {why}",
            self.saga.steps[i].name
        );
        // The step stays `Compensating`, stuck (no attempt awaited) until a
        // late answer or an operator's retry; the others go on as far as
        // they may, and the saga is `Failed` once nothing else can move.
        let s = &mut self.saga.steps[i];
        s.error = Some(reason.clone());
        s.deadline = None;
        self.note(Some(i), Some(reason));
        self.drive_compensation();
    }

    /// Runs the next forward step, or completes the saga.
    fn advance(&mut self) {
        match self
            .saga
            .steps
            .iter()
            .position(|s| s.status != StepStatus::Done)
        {
            None => self.set_state(SagaState::Completed),
            Some(i) if self.saga.steps[i].status == StepStatus::Pending => {
                let s = &mut self.saga.steps[i];
                s.status = StepStatus::Running;
                s.effect = Effect::Unknown;
                s.started_at = Some(self.now);
                s.attempts = 0;
                self.send(i, Direction::Do);
                self.note(Some(i), None);
            }
            Some(_) => {}
        }
    }

    fn begin_compensation(&mut self, ending: OrderStatus, reason: &str) {
        self.saga.order_status = ending;
        self.saga.cause = Some(reason.to_owned());
        self.saga.reason = Some(reason.to_owned());
        self.set_state(SagaState::Compensating);
        self.drive_compensation();
    }

    /// Starts every compensation that may start now, in reverse step order,
    /// then settles the saga's state. A step whose compensation blocks holds
    /// back the earlier ones while it is in flight or stuck; one that does
    /// not block (the coupon) never does.
    fn drive_compensation(&mut self) {
        for i in (0..self.saga.steps.len()).rev() {
            let blocks = self.def.steps[i].compensation_blocks;
            if self.in_flight(i) || self.stuck(i) {
                if blocks {
                    break;
                }
                continue;
            }
            let s = &self.saga.steps[i];
            if matches!(
                (s.status, s.effect),
                (StepStatus::Running, _)
                    | (StepStatus::Done, _)
                    | (StepStatus::Failed, Effect::Unknown)
            ) {
                let s = &mut self.saga.steps[i];
                s.status = StepStatus::Compensating;
                s.attempts = 0;
                s.finished_at = None;
                s.reported = None;
                self.send(i, Direction::Undo);
                self.note(Some(i), None);
                if blocks {
                    break;
                }
            }
        }
        self.settle();
    }

    /// The saga's state once compensations are driven: `Compensated` when
    /// everything is settled, `Compensating` while an answer is awaited,
    /// `Failed` (with the stuck step's reason) when nothing can move without
    /// a late answer or an operator.
    fn settle(&mut self) {
        let target = if self.all_settled() {
            SagaState::Compensated
        } else if (0..self.saga.steps.len()).any(|i| self.in_flight(i)) {
            SagaState::Compensating
        } else {
            SagaState::Failed
        };
        if target == self.saga.state {
            return;
        }
        self.saga.reason = match target {
            // The stuck step that holds the others back (one whose
            // compensation blocks) says most about what an operator must fix.
            SagaState::Failed => {
                let stuck = |blocking: bool| {
                    (0..self.saga.steps.len()).rev().find(|i| {
                        self.stuck(*i) && self.def.steps[*i].compensation_blocks == blocking
                    })
                };
                stuck(true)
                    .or_else(|| stuck(false))
                    .and_then(|i| self.saga.steps[i].error.clone())
                    .or_else(|| self.saga.cause.clone())
            }
            _ => self.saga.cause.clone(),
        };
        self.set_state(target);
    }

    fn compensating(&self) -> bool {
        matches!(self.saga.state, SagaState::Compensating | SagaState::Failed)
    }

    /// An answer is awaited for step `i` (its outcome, or its compensation).
    fn in_flight(&self, i: usize) -> bool {
        let s = &self.saga.steps[i];
        matches!((s.status, s.effect), (StepStatus::Running, Effect::Unknown))
            || (s.status == StepStatus::Compensating && s.deadline.is_some())
    }

    /// Step `i`'s compensation was given up on: no attempt is awaited.
    fn stuck(&self, i: usize) -> bool {
        let s = &self.saga.steps[i];
        s.status == StepStatus::Compensating && s.deadline.is_none()
    }

    /// A person's progress of a manual step: accepted only while the step
    /// waits for it (cooked, picked up) or, for a delivery, once the saga is
    /// `Completed` and the order still open. `Delivered` closes the order at
    /// once, so a cancel judged after it is refused, and one judged before
    /// it refuses it.
    fn on_progress(&mut self, progress: Progress) -> Result<(), Refusal> {
        let Some(i) = self
            .def
            .steps
            .iter()
            .position(|s| s.worker == progress.worker())
        else {
            return Err(Refusal::NotInProgress(format!(
                "this saga has no {} step",
                progress.worker()
            )));
        };
        let (state, order) = (self.saga.state, self.saga.order_status);
        let step = &self.saga.steps[i];
        let waits = match progress {
            Progress::Cooked | Progress::PickedUp => {
                state == SagaState::Running
                    && step.status == StepStatus::Running
                    && step.effect == Effect::Applied
            }
            // Only once every forward step is done: a delivered order can no
            // longer be compensated, so nothing may be left that could fail.
            Progress::Delivered => state == SagaState::Completed && order.is_cancellable(),
        };
        if !waits {
            return Err(Refusal::NotInProgress(format!(
                "order {} is {order} ({}), its {} step is {:?}: it cannot take `{}` now",
                self.saga.id,
                state.as_str(),
                step.name,
                step.status,
                progress.as_str()
            )));
        }
        if progress == Progress::Delivered {
            self.saga.order_status = OrderStatus::Delivered;
        }
        self.note(Some(i), Some(format!("{} reported", progress.as_str())));
        self.report(i, progress);
        Ok(())
    }

    /// Sends a person's progress of step `i` to its worker and waits for the
    /// worker's confirmation until the step's timeout, then sends it again.
    fn report(&mut self, i: usize, progress: Progress) {
        let deadline = self.now.plus(self.def.steps[i].timeout);
        let s = &mut self.saga.steps[i];
        s.reported = Some(progress);
        s.deadline = Some(deadline);
        self.out
            .commands
            .push(Command::Progress { step: i, progress });
        self.out.commands.push(Command::ArmTimer {
            step: i,
            attempt: s.attempts,
            at: deadline,
        });
    }

    /// True when no step is in flight and none waits for compensation.
    fn all_settled(&self) -> bool {
        self.saga.steps.iter().all(|s| match (s.status, s.effect) {
            (StepStatus::Pending, _) | (StepStatus::Compensated, _) => true,
            (StepStatus::Failed, e) => e == Effect::None,
            _ => false,
        })
    }

    /// Emits the next attempt of step `i` in `direction`, with its backoff
    /// delay and its timeout.
    fn send(&mut self, i: usize, direction: Direction) {
        let def = &self.def.steps[i];
        let policy = match direction {
            Direction::Do => def.retry,
            Direction::Undo => def.compensation_retry,
        };
        let s = &mut self.saga.steps[i];
        s.attempts += 1;
        let delay = policy.delay_before(s.attempts);
        let at = self.now.plus(delay);
        let deadline = at.plus(def.timeout);
        s.attempt_at = Some(at);
        s.deadline = Some(deadline);
        self.out.commands.push(Command::Send {
            step: i,
            direction,
            attempt: s.attempts,
            delay,
        });
        self.out.commands.push(Command::ArmTimer {
            step: i,
            attempt: s.attempts,
            at: deadline,
        });
    }

    fn finish_step(&mut self, i: usize, status: StepStatus, effect: Effect, error: Option<String>) {
        let s = &mut self.saga.steps[i];
        s.status = status;
        s.effect = effect;
        s.finished_at = Some(self.now);
        s.deadline = None;
        s.reported = None;
        if error.is_some() {
            s.error = error.clone();
        }
        self.note(Some(i), error);
    }

    fn set_state(&mut self, to: SagaState) {
        let from = self.saga.state;
        debug_assert!(from.can_become(to), "{from:?} -> {to:?}");
        self.saga.state = to;
        self.out.history.push(HistoryEntry {
            at: self.now,
            event: self.cause.clone(),
            from: Some(from),
            to,
            step: None,
            step_status: None,
            detail: self
                .saga
                .reason
                .clone()
                .filter(|_| to != SagaState::Completed),
        });
    }

    /// Records a step-level change (or, with no step, the event itself).
    fn note(&mut self, step: Option<usize>, detail: Option<String>) {
        let (name, status) = match step {
            Some(i) => (
                Some(self.saga.steps[i].name.clone()),
                Some(self.saga.steps[i].status),
            ),
            None => (None, None),
        };
        self.out.history.push(HistoryEntry {
            at: self.now,
            event: self.cause.clone(),
            from: None,
            to: self.saga.state,
            step: name,
            step_status: status,
            detail,
        });
    }
}
