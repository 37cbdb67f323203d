//! The rules of the saga state machine: how each event moves a saga, and
//! which commands and history lines that emits. Each rule is a method of
//! [`Run`], one application of one event.

use super::*;
use crate::domain::{Millis, OrderStatus};
use crate::messages::{Direction, Progress, ReplyOutcome};
use crate::saga::definition::SagaDefinition;

/// One application of an event, with the bookkeeping it needs.
pub(super) struct Run<'a> {
    pub(super) saga: &'a mut Saga,
    pub(super) def: &'a SagaDefinition,
    pub(super) now: Millis,
    pub(super) cause: String,
    /// Who asked for the event, for the history.
    pub(super) by: Option<String>,
    pub(super) out: Transition,
}

impl Run<'_> {
    pub(super) fn handle(&mut self, event: &Event) -> Result<(), Refusal> {
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
            by: self.by.clone(),
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
            by: self.by.clone(),
        });
    }
}
