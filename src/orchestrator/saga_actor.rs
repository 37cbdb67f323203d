//! The saga actor: owns one order's saga, applies events one at a time to the
//! pure state machine, persists each transition before acting on it, and
//! keeps the step timers.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::OrchestratorError;
use super::store::SagaStore;
use crate::domain::Millis;
use crate::metrics::{METRICS, inc};
use crate::saga::breaker::{Breakers, observe};
use crate::saga::definition::SagaDefinition;
use crate::saga::machine::{Command, Event, Refusal, Saga, SagaState, Transition};

/// One order's saga.
pub struct SagaActor {
    /// The last committed state; never ahead of the database.
    saga: Saga,
    def: Arc<SagaDefinition>,
    store: SagaStore,
    /// Callers of `POST /orders` waiting for the payment's outcome.
    waiters: Vec<oneshot::Sender<Saga>>,
    /// Step breakers, told of every answer and timeout.
    breakers: Breakers,
    /// The registry, told when this actor passivates.
    registry: Addr<super::Orchestrator>,
    /// Counts events, so an idle check knows whether anything happened since.
    activity: u64,
    /// How long it stays in memory with nothing to wait for.
    passivate_after: Duration,
    /// Callers about to send to it: it does not passivate while any is.
    interest: super::Interest,
}

impl SagaActor {
    pub fn new(
        saga: Saga,
        def: Arc<SagaDefinition>,
        store: SagaStore,
        breakers: Breakers,
        registry: Addr<super::Orchestrator>,
        passivate_after: Duration,
        interest: super::Interest,
    ) -> Self {
        SagaActor {
            saga,
            def,
            store,
            waiters: Vec::new(),
            breakers,
            registry,
            activity: 0,
            passivate_after,
            interest,
        }
    }

    fn arm(&self, commands: &[Command], ctx: &mut Context<Self>) {
        let now = Millis::now();
        for c in commands {
            let (event, at) = match *c {
                Command::ArmTimer { step, attempt, at } => (Event::Timeout { step, attempt }, at),
                Command::ArmAdmission { at } => {
                    let reason = "payment did not answer in time".to_owned();
                    (Event::Abandon { reason }, at)
                }
                _ => continue,
            };
            // A little slack so the deadline has surely passed.
            let after = at.until_from(now) + Duration::from_millis(5);
            ctx.run_later(after, move |_act, ctx| ctx.notify(SagaEvent::of(event)));
        }
    }

    fn after_commit(
        &mut self,
        before: SagaState,
        transition: &Transition,
        ctx: &mut Context<Self>,
    ) {
        inc(&METRICS.saga_transitions_total);
        self.arm(&transition.commands, ctx);
        if before != self.saga.state {
            match self.saga.state {
                SagaState::Completed => inc(&METRICS.sagas_completed_total),
                SagaState::Compensated => inc(&METRICS.sagas_compensated_total),
                SagaState::Failed => inc(&METRICS.sagas_failed_total),
                _ => {}
            }
            match (before.is_active(), self.saga.state.is_active()) {
                (true, false) => METRICS.sagas_in_flight.dec(),
                (false, true) => METRICS.sagas_in_flight.inc(),
                _ => {}
            }
            tracing::info!(saga = %self.saga.id, from = before.as_str(), to = self.saga.state.as_str(), "saga state changed");
        }
        if self.saga.admission().is_known() {
            for w in self.waiters.drain(..) {
                let _ = w.send(self.saga.clone());
            }
        }
        self.schedule_passivation(ctx);
    }
}

impl Actor for SagaActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        METRICS.saga_actors_live.inc();
        // Re-arm what the saga waits for: after a restart, or the first
        // step's timer of a new saga.
        let timers = self.saga.pending_timers();
        self.arm(&timers, ctx);
        self.schedule_passivation(ctx);
    }

    fn stopped(&mut self, ctx: &mut Self::Context) {
        METRICS.saga_actors_live.dec();
        // Tell the registry, so it forgets this address.
        self.registry
            .do_send(super::Passivated(self.saga.id, ctx.address()));
    }
}

impl SagaActor {
    /// An actor whose saga waits on no timer and no caller is stopped after
    /// `passivate_after` without events: its state is all in
    /// SQLite, and the registry loads it again on its next event. A saga
    /// waiting for a person (manual mode) or finished costs no memory.
    fn schedule_passivation(&mut self, ctx: &mut Context<Self>) {
        self.activity += 1;
        let seen = self.activity;
        ctx.run_later(self.passivate_after, move |act, ctx| {
            let quiet = act.activity == seen;
            if !quiet || !act.waiters.is_empty() || !act.saga.pending_timers().is_empty() {
                return;
            }
            if act.interest.is_idle() {
                ctx.stop();
            } else {
                // A caller is about to send: look again later.
                act.schedule_passivation(ctx);
            }
        });
    }
}

/// An event for this saga, and who asked for it (a person's or an
/// operator's event). Answers once the resulting transition is committed
/// (or with the refusal of a cancel/retry that does not fit).
#[derive(Message, Clone)]
#[rtype(result = "Result<Result<(), Refusal>, OrchestratorError>")]
pub struct SagaEvent {
    pub event: Event,
    pub by: Option<String>,
}

impl SagaEvent {
    /// An event nobody in particular asked for (a reply, a timer).
    pub fn of(event: Event) -> Self {
        SagaEvent { event, by: None }
    }
}

impl Handler<SagaEvent> for SagaActor {
    type Result = AtomicResponse<Self, Result<Result<(), Refusal>, OrchestratorError>>;

    fn handle(
        &mut self,
        SagaEvent { event, by }: SagaEvent,
        ctx: &mut Self::Context,
    ) -> Self::Result {
        let mut next = self.saga.clone();
        let now = Millis::now();
        let observed = observe(&self.saga, &event);
        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            crate::failpoint::hit("saga-apply");
            next.apply_by(&self.def, &event, now, by.as_deref())
        }));
        let transition = match applied {
            Ok(Ok(t)) => t,
            Ok(Err(refusal)) => return AtomicResponse::new(Box::pin(fut::ready(Ok(Err(refusal))))),
            Err(panic) => {
                // Isolate the fault: this saga's actor stops, the registry
                // reloads it from storage on its next event.
                let why = crate::panic_message(panic.as_ref());
                tracing::error!(saga = %self.saga.id, panic = %why, "saga actor panicked; restarting it");
                inc(&METRICS.actor_restarts_total);
                ctx.stop();
                return AtomicResponse::new(Box::pin(fut::ready(Err(
                    OrchestratorError::Panicked(why),
                ))));
            }
        };
        if !transition.changed() {
            if matches!(event, Event::Reply { .. }) {
                inc(&METRICS.replies_ignored_total);
            }
            return AtomicResponse::new(Box::pin(fut::ready(Ok(Ok(())))));
        }
        let store = self.store.clone();
        let order_changed =
            next.order_status != self.saga.order_status || next.state != self.saga.state;
        let (saved, persisted) = (next.clone(), transition.clone());
        let span = tracing::info_span!("saga", saga = %next.id);
        AtomicResponse::new(Box::pin(
            tracing::Instrument::instrument(
                async move { store.commit(&saved, &persisted, order_changed).await },
                span,
            )
            .into_actor(self)
            .map(move |committed, act, ctx| {
                if let Err(e) = committed {
                    tracing::warn!(saga = %act.saga.id, error = %e, "transition not committed");
                    if let Event::Timeout { .. } | Event::Abandon { .. } = event {
                        // Nobody redelivers what the actor told itself: try
                        // it again shortly.
                        ctx.run_later(Duration::from_secs(1), move |_a, ctx| {
                            ctx.notify(SagaEvent::of(event))
                        });
                    }
                    return Err(e.into());
                }
                if let Some((step, failed)) = observed
                    && let Some(b) = act.breakers.of_saga(step, act.saga.id.get())
                {
                    b.record(failed, Millis::now());
                }
                observe_latencies(&act.saga, &next);
                let before = act.saga.state;
                act.saga = next;
                act.after_commit(before, &transition, ctx);
                Ok(Ok(()))
            }),
        ))
    }
}

/// Wait until the payment's outcome is known; answers with the saga then.
///
/// The saga abandons the order itself when its `admit_by` passes (a timer
/// re-armed after a restart): it applies `Abandon` to its current state,
/// which turns the order away only if the payment has not succeeded. The
/// decision is the actor's, never a caller's read followed by a send.
#[derive(Message, Clone)]
#[rtype(result = "Option<Saga>")]
pub struct AwaitAdmission;

impl Handler<AwaitAdmission> for SagaActor {
    type Result = ResponseFuture<Option<Saga>>;

    fn handle(&mut self, _: AwaitAdmission, _ctx: &mut Self::Context) -> Self::Result {
        if self.saga.admission().is_known() {
            let saga = self.saga.clone();
            return Box::pin(async move { Some(saga) });
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.push(tx);
        Box::pin(async move { rx.await.ok() })
    }
}

/// The saga's current state.
#[derive(Message)]
#[rtype(result = "Saga")]
pub struct Snapshot;

impl Handler<Snapshot> for SagaActor {
    type Result = MessageResult<Snapshot>;

    fn handle(&mut self, _: Snapshot, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.saga.clone())
    }
}

/// Feeds the step latency histograms with the steps this transition finished.
fn observe_latencies(before: &Saga, after: &Saga) {
    use crate::saga::machine::StepStatus;
    for (b, a) in before.steps.iter().zip(&after.steps) {
        if a.status == b.status {
            continue;
        }
        let (outcome, from) = match a.status {
            StepStatus::Done => ("done", a.started_at),
            StepStatus::Failed => ("failed", a.started_at),
            StepStatus::Compensated => ("compensated", a.attempt_at),
            _ => continue,
        };
        if let (Some(from), Some(to)) = (from, a.finished_at) {
            crate::metrics::observe_step(&a.name, outcome, (to.0 - from.0).max(0) as u64);
        }
    }
}
