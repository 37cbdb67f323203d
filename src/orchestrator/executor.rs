//! The owner's side of [`OrchestratorProtocol`]: executes each request
//! against this process's orchestrator and its store, and answers in the
//! orchestrator's own words. Every decision about an order is its saga
//! actor's, taken against its current state (`dispatch_by`), never a read
//! followed by a send; what a caller may do and see is decided here, at the
//! owner of the object (another customer's order is not found).

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use super::requests::{OrchestratorProtocol, Outcome, Placement, Request, SagaDetail};
use super::search::SagaSearch;
use super::store::reviews::NewReview;
use super::store::{KeyUse, SagaStore, Stored, customers, reviews, sagas};
use super::{
    AwaitAdmission, Located, Orchestrator, OrchestratorError, PlaceOrder, ask, dispatch_by,
};
use crate::auth::{Caller, StaffRole};
use crate::cluster::owners::{Executor, Failure};
use crate::domain::{IdempotencyKey, Millis, OrderId};
use crate::messages::{OrderDetails, Progress};
use crate::partition::Owned;
use crate::saga::breaker::{BreakerState, Breakers};
use crate::saga::machine::{Admission, Event, Saga};
use crate::storage::{Page, StorageResult};
use crate::transport::Transport;

/// The orchestrator this process owns, as requests reach it.
pub struct OrchestratorExecutor {
    pub orchestrator: Addr<Orchestrator>,
    pub sagas: SagaStore,
    pub breakers: Breakers,
    pub transport: Arc<dyn Transport>,
    /// How long placing an order waits for its payment.
    pub order_timeout: Duration,
}

impl Executor<OrchestratorProtocol> for OrchestratorExecutor {
    fn execute(&self, caller: Caller, request: Request) -> BoxFuture<'_, Result<Outcome, Failure>> {
        self.run(caller, request).boxed()
    }
}

/// Whether `caller` may ask the saga for `event`: the manager cancels and
/// retries; the kitchen reports cooked, the delivery team picked up and
/// delivered (a manager may report anything).
fn may_decide(caller: &Caller, event: &Event) -> bool {
    let role = caller.staff();
    match (role, event) {
        (Some(StaffRole::Manager), _) => true,
        (Some(StaffRole::Kitchen), Event::Progress { progress }) => *progress == Progress::Cooked,
        (Some(StaffRole::Delivery), Event::Progress { progress }) => {
            matches!(progress, Progress::PickedUp | Progress::Delivered)
        }
        _ => false,
    }
}

/// Whether `caller` may place (or replay) `order`: a customer for themself,
/// a manager on a customer's behalf.
fn may_place(caller: &Caller, order: &OrderDetails) -> bool {
    caller.is_manager() || caller.customer() == Some(order.customer_id)
}

/// The orchestrator's errors in its own words; trouble of its own is a
/// failure to answer now.
fn outcome_of(e: OrchestratorError) -> Result<Outcome, Failure> {
    match e {
        OrchestratorError::UnknownSaga(_) => Ok(Outcome::NotFound),
        OrchestratorError::Quarantined(saga, reason) => Ok(Outcome::Quarantined { saga, reason }),
        OrchestratorError::KeyReused(id) => Ok(Outcome::KeyReused(id)),
        OrchestratorError::Storage(e) => Err(e.into()),
        other => {
            tracing::warn!(error = %other, "orchestrator error in a request");
            Err(Failure::Busy(format!("the orchestrator is busy: {other}")))
        }
    }
}

impl OrchestratorExecutor {
    async fn run(&self, caller: Caller, request: Request) -> Result<Outcome, Failure> {
        match request {
            Request::Replay { order, .. } | Request::Place { order, .. }
                if !may_place(&caller, &order) =>
            {
                Ok(Outcome::Forbidden)
            }
            Request::Replay { key, order } => self.replay(key, order).await,
            Request::Place {
                order,
                key,
                admit_within_ms,
            } => {
                self.place(order, key, Duration::from_millis(admit_within_ms))
                    .await
            }
            Request::Cancel { order } => self.decide(&caller, order, Event::Cancel).await,
            Request::Progress { order, progress } => {
                let event = Event::Progress { progress };
                self.decide(&caller, order, event).await
            }
            Request::Retry { saga } => self.decide(&caller, saga, Event::Retry).await,
            Request::Saga { .. } | Request::Sagas { .. } | Request::SearchSagas { .. }
                if !caller.is_manager() =>
            {
                Ok(Outcome::Forbidden)
            }
            Request::Saga { saga } => self.detail(saga).await,
            Request::Order { order } => self.order(&caller, order).await,
            other => self.read_or_create(&caller, other).await,
        }
    }

    /// An order: a customer's own (another's is not found), or any for a
    /// manager.
    async fn order(&self, caller: &Caller, id: OrderId) -> Result<Outcome, Failure> {
        if caller.customer().is_none() && !caller.is_manager() {
            return Ok(Outcome::Forbidden);
        }
        let found = self.sagas.load(id).await?.filter(|row| match row {
            Stored::Saga(saga) => caller.sees_customer(saga.order.customer_id),
            // Whose it is cannot be told: only a manager sees it.
            Stored::Quarantined(_) => caller.is_manager(),
        });
        Ok(found.map_or(Outcome::NotFound, Outcome::Order))
    }

    /// The reads (a customer's own rows only), and the creations of
    /// customers and reviews.
    async fn read_or_create(&self, caller: &Caller, request: Request) -> Result<Outcome, Failure> {
        let db = self.sagas.db();
        let owned = self.sagas.owned().clone();
        // A customer's lists are theirs, whatever filter they asked for.
        let own = caller.customer();
        let reads_all = caller.is_manager();
        Ok(match request {
            Request::Orders { .. } | Request::Customers { .. } if own.is_none() && !reads_all => {
                Outcome::Forbidden
            }
            Request::Orders { page, customer } => {
                let search = SagaSearch {
                    customer: own.or(customer),
                    ..SagaSearch::default()
                };
                Outcome::Orders(self.search(search, page).await?)
            }
            Request::Sagas { page, state } => {
                let search = SagaSearch {
                    state,
                    ..SagaSearch::default()
                };
                Outcome::Sagas(self.search(search, page).await?)
            }
            Request::SearchSagas { page, search } => {
                Outcome::Sagas(self.search(search, page).await?)
            }
            Request::Customer { customer } if !caller.sees_customer(customer) => Outcome::NotFound,
            Request::Customer { customer } => db
                .read(move |c| customers::get(c, customer))
                .await?
                .map_or(Outcome::NotFound, Outcome::Customer),
            Request::Customers { page } => Outcome::Customers(match own {
                Some(me) if page.offset == 0 => db
                    .read(move |c| customers::get(c, me))
                    .await?
                    .into_iter()
                    .collect(),
                Some(_) => Vec::new(),
                None => db.read(move |c| customers::list(c, page)).await?,
            }),
            Request::CreateCustomer { customer } => Outcome::Customer(
                db.write(move |tx| customers::create(tx, &customer, &owned))
                    .await?,
            ),
            Request::Reviews { page } => {
                Outcome::Reviews(db.read(move |c| reviews::list(c, page)).await?)
            }
            Request::CreateReview { review } if !may_review(caller, &review) => Outcome::Forbidden,
            Request::CreateReview { review } => {
                let created = db
                    .write(move |tx| reviews::create(tx, &review, &owned))
                    .await?;
                db.notify_outbox();
                Outcome::Review(created)
            }
            Request::Replay { .. }
            | Request::Place { .. }
            | Request::Cancel { .. }
            | Request::Progress { .. }
            | Request::Retry { .. }
            | Request::Order { .. }
            | Request::Saga { .. } => unreachable!("handled by `run`"),
        })
    }

    /// An event someone asked for, decided by the saga's actor against its
    /// current state; its history records who asked.
    async fn decide(&self, caller: &Caller, id: OrderId, event: Event) -> Result<Outcome, Failure> {
        if !may_decide(caller, &event) {
            return Ok(Outcome::Forbidden);
        }
        match dispatch_by(&self.orchestrator, id, event, caller.actor()).await {
            Ok(Ok(())) => Ok(Outcome::Accepted),
            Ok(Err(refusal)) => Ok(Outcome::Refused(refusal)),
            Err(e) => outcome_of(e),
        }
    }

    /// The sagas of this owner's partitions that `search` asks for.
    async fn search(&self, search: SagaSearch, page: Page) -> StorageResult<Vec<Stored>> {
        self.sagas
            .db()
            .read(move |c| sagas::search_sagas(c, &search, page, Millis::now()))
            .await
    }

    async fn detail(&self, id: OrderId) -> Result<Outcome, Failure> {
        let found = self
            .sagas
            .db()
            .read(move |c| {
                let Some(stored) = sagas::get_saga(c, id)? else {
                    return Ok(None);
                };
                let (history, pending) = match stored {
                    Stored::Saga(_) => (sagas::history(c, id)?, sagas::pending_messages(c, id)?),
                    Stored::Quarantined(_) => (Vec::new(), Vec::new()),
                };
                Ok(Some(SagaDetail {
                    stored,
                    history,
                    pending,
                }))
            })
            .await?;
        Ok(found.map_or(Outcome::NotFound, |d| Outcome::Saga(Box::new(d))))
    }

    /// What an idempotency key says about this order request.
    async fn replay(&self, key: IdempotencyKey, order: OrderDetails) -> Result<Outcome, Failure> {
        match self.sagas.key_use(&key, &order).await? {
            KeyUse::Fresh | KeyUse::TurnedAway => Ok(Outcome::KeyFree),
            KeyUse::Placed(id) => self.admission(id, None).await,
            KeyUse::OtherRequest(id) => Ok(Outcome::KeyReused(id)),
        }
    }

    async fn place(
        &self,
        order: OrderDetails,
        key: IdempotencyKey,
        admit_within: Duration,
    ) -> Result<Outcome, Failure> {
        if !self.transport.is_ready() {
            return Ok(Outcome::Placement(Placement::BrokerUnavailable));
        }
        // The breakers turn the order away from the partitions whose payment
        // is failing, at once and without touching the broker; the order
        // gets an id in one of the others. Only when every owned partition's
        // breaker is open is it turned away.
        let now = Millis::now();
        let owned = self.sagas.owned();
        // Partitions whose breaker is closed take new orders; one whose
        // breaker may let a trial through gets this order as its trial
        // (one at a time: the permit is taken here, under the breaker's
        // lock); open ones none.
        let mut closed = Vec::new();
        let mut trial = None;
        let mut wait: Option<Duration> = None;
        for p in owned.count().all().filter(|p| owned.contains(*p)) {
            match self.breakers.admission(p) {
                None => closed.push(p),
                Some(b) if b.state() == BreakerState::Closed => closed.push(p),
                // One trial per order: the others stay for the next ones.
                Some(_) if trial.is_some() => {}
                Some(b) => match b.try_acquire(now) {
                    Ok(()) => trial = Some((p, b)),
                    Err(w) => wait = Some(wait.map_or(w, |x| x.min(w))),
                },
            }
        }
        let within = match trial {
            Some((p, _)) => vec![p],
            None => closed,
        };
        if within.is_empty() {
            return Ok(Outcome::Placement(Placement::PaymentOverloaded {
                retry_after_secs: wait.unwrap_or(Duration::from_secs(1)).as_secs().max(1),
            }));
        }
        let placed = self
            .orchestrator
            .send(PlaceOrder {
                order,
                key: Some(key),
                admit_within,
                within: Owned::new(owned.count(), &within),
            })
            .await
            .map_err(OrchestratorError::from)
            .and_then(|r| r);
        match placed {
            Ok((id, Some(actor))) => self.admission(id, Some(actor)).await,
            Ok((id, None)) => {
                // A concurrent request with the same key placed it: this
                // one started nothing, so its trial permit goes back.
                trial.inspect(|(_, b)| b.release(now));
                self.admission(id, None).await
            }
            Err(e) => {
                // No saga started: the trial permit, if any, goes back.
                trial.inspect(|(_, b)| b.release(now));
                outcome_of(e)
            }
        }
    }

    /// Waits for the order's admission (its payment) and answers for it.
    async fn admission(&self, id: OrderId, actor: Option<Located>) -> Result<Outcome, Failure> {
        // The saga answers by its `admit_by` plus a commit; the margin only
        // guards against an actor that cannot commit at all.
        let bound = self.order_timeout + Duration::from_secs(10);
        let saga = match tokio::time::timeout(bound, self.admitted(id, actor)).await {
            Ok(Ok(Some(saga))) => saga,
            Ok(Err(e @ OrchestratorError::Quarantined(..))) => return outcome_of(e),
            _ => return Ok(Outcome::Placement(Placement::Unknown { order: id })),
        };
        Ok(Outcome::Placement(match saga.admission() {
            Admission::Established => Placement::Established {
                saga: Box::new(saga),
            },
            Admission::CancelledUnpaid(reason) => Placement::CancelledUnpaid { order: id, reason },
            Admission::Declined(reason) => Placement::Declined { order: id, reason },
            Admission::Unavailable(reason) => Placement::TurnedAway {
                order: id,
                reason,
                payment_sent: saga.payment_sent(),
            },
            Admission::Pending => Placement::Unknown { order: id },
        }))
    }

    /// The saga once its admission is known: from the actor that placed it,
    /// if we hold it; else (or if it is gone, or stopped with the wait
    /// unanswered: a panic) from the actor the registry loads.
    async fn admitted(
        &self,
        id: OrderId,
        actor: Option<Located>,
    ) -> Result<Option<Saga>, OrchestratorError> {
        if let Some(a) = &actor
            && let Ok(Some(saga)) = a.addr.send(AwaitAdmission).await
        {
            return Ok(Some(saga));
        }
        loop {
            match ask(&self.orchestrator, id, AwaitAdmission).await {
                Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
                other => return other,
            }
        }
    }
}

/// Whether `caller` may post `review`: a customer as themself (the name
/// they signed up with), a manager as anyone.
fn may_review(caller: &Caller, review: &NewReview) -> bool {
    match caller.who() {
        crate::auth::Who::Customer { name, .. } => review.username == *name,
        _ => caller.is_manager(),
    }
}
