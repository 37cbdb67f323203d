//! The orchestrator: one [`SagaActor`] per order, a registry actor
//! ([`Orchestrator`]) that starts them and routes events to them, and the
//! consumer of the replies queue.
//!
//! Handling one reply, and where a crash leaves it:
//! 1. receive (unacked) — crash: redelivered;
//! 2. the saga actor applies it to its state machine and commits the new
//!    state, its history and its commands (outbox) in one transaction —
//!    crash before commit: redelivered, applied then;
//! 3. ack — crash before it: redelivered, and the state machine ignores a
//!    reply it has already applied;
//! 4. the outbox relay publishes the commands — crash before the confirm:
//!    published again at start-up; workers deduplicate by message id.

pub mod executor;
pub mod redrive;
mod replies;
pub mod requests;
pub mod saga_actor;
pub mod search;
pub mod store;

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;

use crate::domain::{IdempotencyKey, SagaId};
use crate::messages::OrderDetails;
use crate::metrics::{METRICS, inc};
use crate::partition::Owned;
use crate::saga::breaker::Breakers;
use crate::saga::definition::SagaDefinition;
use crate::saga::machine::{Event, Refusal, Saga};
use crate::storage::StorageError;
pub use replies::consume_replies;
pub use saga_actor::{AwaitAdmission, SagaActor, SagaEvent};
use store::{Created, Dormant, SagaStore, Stored};

/// Why the orchestrator could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    #[error("no saga {0}")]
    UnknownSaga(SagaId),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("saga actor unavailable: {0}")]
    Mailbox(#[from] MailboxError),
    #[error("saga actor panicked: {0}")]
    Panicked(String),
    #[error("saga {0} is quarantined: {1}")]
    Quarantined(SagaId, String),
    #[error("Idempotency-Key was already used for another request (order {0})")]
    KeyReused(SagaId),
}

/// A live saga actor and the count of callers about to send to it.
#[derive(Clone)]
struct Live {
    addr: Addr<SagaActor>,
    interest: Interest,
}

/// How many callers hold an actor's address to send to it. The actor does
/// not passivate while any does, so a request is not turned back by a
/// mailbox closing under it (and if one slips through, `ask` retries).
#[derive(Clone, Default)]
pub struct Interest(Arc<std::sync::atomic::AtomicUsize>);

impl Interest {
    pub fn is_idle(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst) == 0
    }

    fn hold(&self) -> InterestGuard {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        InterestGuard(self.clone())
    }
}

/// One caller's interest in an actor, given up when dropped.
pub struct InterestGuard(Interest);

impl Drop for InterestGuard {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A located actor: its address, held against passivation until dropped.
pub struct Located {
    pub addr: Addr<SagaActor>,
    _interest: InterestGuard,
}

/// The registry of saga actors.
pub struct Orchestrator {
    def: Arc<SagaDefinition>,
    store: SagaStore,
    /// Live saga actors by saga id; others are loaded on their next event.
    sagas: HashMap<SagaId, Live>,
    breakers: Breakers,
    /// Its own address, handed to the saga actors it starts.
    registry: Option<Addr<Orchestrator>>,
    /// How long an idle saga actor stays in memory.
    passivate_after: std::time::Duration,
    /// Sagas recovered without an actor, by when their earliest timer is
    /// due: a few dozen bytes each instead of a loaded saga (see
    /// [`Recover`]).
    wakes: std::collections::BTreeSet<(crate::domain::Millis, SagaId)>,
}

impl Orchestrator {
    pub fn new(
        def: Arc<SagaDefinition>,
        store: SagaStore,
        breakers: Breakers,
        passivate_after: std::time::Duration,
    ) -> Self {
        Orchestrator {
            def,
            store,
            sagas: HashMap::new(),
            breakers,
            registry: None,
            passivate_after,
            wakes: Default::default(),
        }
    }

    /// The one actor of `saga`: the live one if there is one, else a new
    /// one started from `saga`. Every actor is started here, inside the
    /// registry's own handler, so two can never exist for one saga: a
    /// second caller finds the first in `sagas`.
    fn actor_for(&mut self, saga: Saga) -> Live {
        if let Some(live) = self.sagas.get(&saga.id).filter(|l| l.addr.connected()) {
            return live.clone();
        }
        let id = saga.id;
        let interest = Interest::default();
        let addr = SagaActor::new(
            saga,
            self.def.clone(),
            self.store.clone(),
            self.breakers.clone(),
            // Set in `started`, before any message is handled.
            self.registry
                .clone()
                .unwrap_or_else(|| unreachable!("the registry is started")),
            self.passivate_after,
            interest.clone(),
        )
        .start();
        let live = Live { addr, interest };
        self.sagas.insert(id, live.clone());
        live
    }
}

impl Actor for Orchestrator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.registry = Some(ctx.address());
        ctx.run_later(WAKE_TICK, |act, ctx| act.wake_due(ctx));
    }
}

/// A saga actor stopped (passivated or failed): forget its address.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Passivated(pub SagaId, pub Addr<SagaActor>);

impl Handler<Passivated> for Orchestrator {
    type Result = ();

    fn handle(&mut self, Passivated(id, addr): Passivated, _ctx: &mut Self::Context) {
        if self.sagas.get(&id).is_some_and(|l| l.addr == addr) {
            self.sagas.remove(&id);
        }
    }
}

/// Start a new order's saga. Answers with its id once the saga and its
/// first command are committed and its actor runs (and the actor, held
/// against passivation, so the caller can wait on it without another trip
/// through the registry); with a key already used for the same request,
/// with that key's order (and no actor).
#[derive(Message)]
#[rtype(result = "Result<(SagaId, Option<Located>), OrchestratorError>")]
pub struct PlaceOrder {
    pub order: OrderDetails,
    /// A client's key: the same key returns the same order.
    pub key: Option<IdempotencyKey>,
    /// How long the payment may take before the saga abandons the order.
    pub admit_within: std::time::Duration,
    /// The owned partitions its id may fall in (those whose payment is
    /// not failing).
    pub within: Owned,
}

impl Handler<PlaceOrder> for Orchestrator {
    type Result = ResponseActFuture<Self, Result<(SagaId, Option<Located>), OrchestratorError>>;

    fn handle(&mut self, msg: PlaceOrder, _ctx: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        Box::pin(
            async move {
                store
                    .create(msg.order, msg.key, msg.admit_within, msg.within)
                    .await
            }
            .into_actor(self)
            .map(|created, act, _ctx| match created? {
                Created::New(saga) => {
                    inc(&METRICS.sagas_started_total);
                    METRICS.sagas_in_flight.inc();
                    let id = saga.id;
                    // The saga is committed, so a `Locate` handled since
                    // may have started its actor already: `actor_for`
                    // keeps that one. The actor arms the first timer.
                    let live = act.actor_for(*saga);
                    let located = Located {
                        addr: live.addr.clone(),
                        _interest: live.interest.hold(),
                    };
                    Ok((id, Some(located)))
                }
                Created::Existing(id) => Ok((id, None)),
                Created::KeyReused(id) => Err(OrchestratorError::KeyReused(id)),
            }),
        )
    }
}

/// Find (or load) a saga's actor.
#[derive(Message)]
#[rtype(result = "Result<Located, OrchestratorError>")]
pub struct Locate(pub SagaId);

impl Handler<Locate> for Orchestrator {
    type Result = AtomicResponse<Self, Result<Located, OrchestratorError>>;

    fn handle(&mut self, Locate(id): Locate, _ctx: &mut Self::Context) -> Self::Result {
        let located = |live: &Live| Located {
            addr: live.addr.clone(),
            _interest: live.interest.hold(),
        };
        if let Some(live) = self.sagas.get(&id).filter(|l| l.addr.connected()) {
            return AtomicResponse::new(Box::pin(fut::ready(Ok(located(live)))));
        }
        // Atomic: a second event for the same saga waits for this load
        // instead of starting a second actor.
        let store = self.store.clone();
        AtomicResponse::new(Box::pin(
            async move { store.load(id).await }
                .into_actor(self)
                .map(move |loaded, act, _ctx| match loaded? {
                    Some(Stored::Saga(saga)) => Ok(located(&act.actor_for(*saga))),
                    Some(Stored::Quarantined(q)) => {
                        Err(OrchestratorError::Quarantined(id, q.reason))
                    }
                    None => Err(OrchestratorError::UnknownSaga(id)),
                }),
        ))
    }
}

/// Sends an event to a saga through the registry; the saga's actor decides
/// it against its current state.
pub async fn dispatch(
    orchestrator: &Addr<Orchestrator>,
    saga: SagaId,
    event: Event,
) -> Result<Result<(), Refusal>, OrchestratorError> {
    ask(orchestrator, saga, SagaEvent::of(event)).await?
}

/// Like [`dispatch`], for an event a person asked for: the history records
/// who (`by`).
pub async fn dispatch_by(
    orchestrator: &Addr<Orchestrator>,
    saga: SagaId,
    event: Event,
    by: String,
) -> Result<Result<(), Refusal>, OrchestratorError> {
    let event = SagaEvent {
        event,
        by: Some(by),
    };
    ask(orchestrator, saga, event).await?
}

/// Sends `msg` to saga `saga`'s actor, loading it if needed.
///
/// An actor passivates only when idle, but a message may be on its way to
/// it then: the mailbox is closed before the message was handled, so the
/// message is sent again to the actor the registry loads afresh (the state
/// is all in SQLite). A message that was handled is never sent twice.
pub async fn ask<M>(
    orchestrator: &Addr<Orchestrator>,
    saga: SagaId,
    msg: M,
) -> Result<M::Result, OrchestratorError>
where
    M: Message + Clone + Send + 'static,
    M::Result: Send,
    SagaActor: Handler<M>,
{
    let mut tries = 0u64;
    loop {
        tries += 1;
        let located = orchestrator.send(Locate(saga)).await??;
        match located.addr.send(msg.clone()).await {
            Ok(result) => return Ok(result),
            Err(MailboxError::Closed) if tries < 50 => {
                // The actor stopped before handling the message: it is
                // being replaced; give the registry a moment to see it.
                tokio::time::sleep(std::time::Duration::from_millis(tries.min(10))).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Recover the owned partitions' sagas after a start: count those in
/// flight and put every one that waits on a timer on the wake list. No
/// saga is loaded: one gets its actor when its earliest timer is due (the
/// actor re-arms the rest and re-sends what it waits for) or at its next
/// event, whichever comes first; the others (waiting for a person, or for a
/// reply that will come) stay in SQLite until their next event. Answers the
/// number in flight.
#[derive(Message)]
#[rtype(result = "Result<usize, OrchestratorError>")]
pub struct Recover;

impl Handler<Recover> for Orchestrator {
    type Result = ResponseActFuture<Self, Result<usize, OrchestratorError>>;

    fn handle(&mut self, _: Recover, _ctx: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        Box::pin(
            async move { Ok::<_, OrchestratorError>(store.dormant().await?) }
                .into_actor(self)
                .map(|dormant, act, _ctx| {
                    let Dormant { in_flight, wakes } = dormant?;
                    METRICS.sagas_in_flight.set(in_flight as i64);
                    act.wakes.extend(wakes);
                    Ok(in_flight)
                }),
        )
    }
}

/// How often the registry looks for due entries of its wake list; how many
/// sagas it loads at most at a time; how soon it takes the next batch when
/// more are due (a recovery with many overdue timers wakes them at this
/// pace, the registry's mailbox served between batches, instead of all at
/// once).
const WAKE_TICK: std::time::Duration = std::time::Duration::from_millis(50);
const WAKE_BATCH: usize = 128;
const WAKE_BACKLOG_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

impl Orchestrator {
    /// Gives the sagas of the wake list whose timer is due their actor, one
    /// batch, then schedules the next look.
    fn wake_due(&mut self, ctx: &mut Context<Self>) {
        let now = crate::domain::Millis::now();
        let mut due = Vec::new();
        while due.len() < WAKE_BATCH {
            match self.wakes.first() {
                Some(&(at, id)) if at <= now => {
                    self.wakes.pop_first();
                    if !self.sagas.get(&id).is_some_and(|l| l.addr.connected()) {
                        due.push(id);
                    }
                }
                _ => break,
            }
        }
        if due.is_empty() {
            ctx.run_later(WAKE_TICK, |act, ctx| act.wake_due(ctx));
            return;
        }
        let store = self.store.clone();
        let ids = due.clone();
        // `wait`: no other message is handled until the actors run, so no
        // `Locate` starts one of these sagas from the same rows meanwhile,
        // and none passivates and changes its row between this load and
        // `actor_for` (as in `Locate`). One batch at a time: the next look
        // is scheduled when this one is done.
        ctx.wait(
            async move { store.load_many(ids).await }
                .into_actor(self)
                .map(move |loaded, act, ctx| {
                    match loaded {
                        Ok(rows) => {
                            let mut bad = Vec::new();
                            for row in rows {
                                match row {
                                    Stored::Saga(saga) => {
                                        act.actor_for(*saga);
                                    }
                                    Stored::Quarantined(q) => bad.push(q),
                                }
                            }
                            if !bad.is_empty() {
                                act.quarantine(bad, ctx);
                            }
                        }
                        Err(e) => {
                            // Try again shortly: a timer fires late, never not.
                            tracing::warn!(error = %e, sagas = due.len(), "loading sagas whose timers are due failed; retrying");
                            let later = crate::domain::Millis::now()
                                .plus(std::time::Duration::from_secs(1));
                            act.wakes.extend(due.into_iter().map(|id| (later, id)));
                        }
                    }
                    let backlog = act
                        .wakes
                        .first()
                        .is_some_and(|&(at, _)| at <= crate::domain::Millis::now());
                    let next = if backlog { WAKE_BACKLOG_PAUSE } else { WAKE_TICK };
                    ctx.run_later(next, |act, ctx| act.wake_due(ctx));
                }),
        );
    }

    /// Marks sagas whose body does not decode `Failed` (found when their
    /// timer came due), and counts them out of those in flight.
    fn quarantine(&mut self, bad: Vec<store::Quarantined>, ctx: &mut Context<Self>) {
        for q in &bad {
            tracing::error!(saga = %q.id, reason = %q.reason, "saga quarantined; it shows as Failed");
        }
        let store = self.store.clone();
        let ids: Vec<SagaId> = bad.iter().map(|q| q.id).collect();
        ctx.spawn(
            async move { store.quarantine(&bad).await }
                .into_actor(self)
                .map(move |marked, act, _ctx| match marked {
                    Ok(n) => METRICS.sagas_in_flight.sub(n as i64),
                    Err(e) => {
                        // Their timers' entries are gone: put them back, so
                        // the marking is tried again.
                        tracing::warn!(error = %e, "marking quarantined sagas failed; retrying");
                        let later =
                            crate::domain::Millis::now().plus(std::time::Duration::from_secs(1));
                        act.wakes.extend(ids.iter().map(|&id| (later, id)));
                    }
                }),
        );
    }
}

/// Rows of `sagas` the quarantine audit reads per step, and its pause
/// between steps (it runs beside the service, after start-up).
const AUDIT_WINDOW: i64 = 2_000;
const AUDIT_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

/// Finds, after start-up, the sagas whose stored body no longer decodes
/// (recovery reads no body) and quarantines them: `Failed` for the state
/// filters, off the wake list, out of `hearty_sagas_in_flight`. Walks the
/// ids up to the largest at its start once, a window at a time (jumping
/// over gaps in the ids); a failed step is tried again, never skipped.
pub async fn audit_after_start(store: SagaStore) {
    let end = loop {
        match store.last_id().await {
            Ok(end) => break end,
            Err(e) => {
                tracing::warn!(error = %e, "the quarantine audit cannot start yet");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    };
    let mut from = 1;
    while from <= end {
        let to = from.saturating_add(AUDIT_WINDOW - 1).min(end);
        match store.quarantine_undecodable(from..=to).await {
            Ok(found) => {
                METRICS.sagas_in_flight.sub(found.were_in_flight as i64);
                for q in found.quarantined {
                    tracing::error!(saga = %q.id, reason = %q.reason, "saga quarantined; it shows as Failed");
                }
                from = found.next.unwrap_or(i64::MAX);
                tokio::time::sleep(AUDIT_PAUSE).await;
            }
            Err(StorageError::Fenced(_)) => return,
            Err(e) => {
                tracing::warn!(error = %e, "a step of the quarantine audit failed; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}
