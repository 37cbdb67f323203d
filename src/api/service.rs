//! The orchestrator's side of the API: every operation on sagas, orders,
//! customers and reviews, executed by the owner of the partition it
//! concerns. The HTTP handlers parse and check a request, then hand an
//! [`Op`] to [`Orchestrators`]: executed right here when this process owns
//! the partition (no broker hop), else sent over request/reply to the
//! owner's lease queue (`<ns>.orchestrator.p<k>.owner`), which runs the same
//! [`execute`]. So every API process answers alike, and every decision about
//! an order is still taken by its saga's actor, in the owner's process.

use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::contract::responses;
use super::contract::responses::{
    CancelAccepted, Order, ProgressAccepted, RetryAccepted, SagaView,
};
use super::error::ApiError;
use crate::domain::{CustomerId, OrderId, OrderStatus, SagaId};
use crate::messages::partition_key;
use crate::messages::{OrderDetails, Progress};
use crate::orchestrator::store::{self, IdempotencyKey, KeyUse, SagaStore, Stored};
use crate::orchestrator::{
    AwaitAdmission, Located, Orchestrator, OrchestratorError, PlaceOrder, ask, dispatch,
};
use crate::partition::{OwnerRole, Partition, PartitionCount};
use crate::saga::breaker::Breakers;
use crate::saga::definition::SagaDefinition;
use crate::saga::machine::{Admission, Event, Refusal, SagaState};
use crate::storage::Page;
use crate::transport::{QueueName, Route, Topology, Transport};

/// How long a client should wait before trying again after a 503.
pub const RETRY_AFTER_SECS: u64 = 5;

/// An orchestrator owned by this process: what executing an [`Op`] needs.
pub struct Local {
    pub orchestrator: Addr<Orchestrator>,
    pub sagas: SagaStore,
    pub def: Arc<SagaDefinition>,
    pub breakers: Breakers,
    pub transport: Arc<dyn Transport>,
    pub topology: Topology,
    pub management_url: String,
    /// How long placing an order waits for its payment.
    pub order_timeout: Duration,
}

/// One operation of the API on the orchestrator's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Op {
    /// What an Idempotency-Key says: the answer of its order, a 422 for
    /// another request, or 204 (go on and place it).
    Replay {
        key: String,
        order: OrderDetails,
    },
    #[serde(rename_all = "camelCase")]
    PlaceOrder {
        order: OrderDetails,
        key: Option<String>,
        admit_within_ms: u64,
    },
    Cancel {
        id: i64,
    },
    Progress {
        id: i64,
        progress: Progress,
    },
    Retry {
        id: i64,
    },
    Order {
        id: i64,
    },
    #[serde(rename_all = "camelCase")]
    Orders {
        limit: i64,
        #[serde(default)]
        offset: i64,
        customer_id: Option<i64>,
    },
    Saga {
        id: i64,
    },
    Sagas {
        limit: i64,
        #[serde(default)]
        offset: i64,
        state: Option<SagaState>,
    },
    Customer {
        id: i64,
    },
    Customers {
        limit: i64,
        #[serde(default)]
        offset: i64,
    },
    CreateCustomer {
        name: String,
        phone: String,
        address: String,
        age: Option<i64>,
    },
    Reviews {
        limit: i64,
        #[serde(default)]
        offset: i64,
    },
    CreateReview {
        username: String,
        productname: String,
        content: String,
        rating: Option<i64>,
    },
}

/// A successful answer: the HTTP status and body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Done {
    pub status: u16,
    pub body: Value,
}

impl Done {
    fn ok(body: impl Serialize) -> Result<Done, ApiError> {
        Done::with(StatusCode::OK, body)
    }

    fn with(status: StatusCode, body: impl Serialize) -> Result<Done, ApiError> {
        let body = serde_json::to_value(body)
            .map_err(|e| ApiError::unavailable(format!("encoding an answer: {e}"), 1))?;
        Ok(Done {
            status: status.as_u16(),
            body,
        })
    }

    /// The answer as an HTTP response.
    pub fn into_response(self) -> HttpResponse {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK);
        HttpResponse::build(status).json(self.body)
    }
}

/// An [`ApiError`] on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireError {
    pub status: u16,
    pub error: String,
    pub detail: String,
    pub retry_after: Option<u64>,
    pub extra: Option<Value>,
}

impl From<&ApiError> for WireError {
    fn from(e: &ApiError) -> Self {
        WireError {
            status: e.status.as_u16(),
            error: e.error.to_string(),
            detail: e.detail.clone(),
            retry_after: e.retry_after,
            extra: e.extra.clone(),
        }
    }
}

impl From<WireError> for ApiError {
    fn from(w: WireError) -> Self {
        ApiError {
            status: StatusCode::from_u16(w.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            error: w.error.into(),
            detail: w.detail,
            retry_after: w.retry_after,
            extra: w.extra,
        }
    }
}

/// The owner's answer on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    /// The partitions its owner holds (a list answer covers all of them).
    pub owned: Vec<u16>,
    pub result: Result<Done, WireError>,
}

fn unprocessable(error: &'static str, detail: String) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, error, detail)
}

fn key_reused(id: OrderId) -> ApiError {
    unprocessable(
        "idempotency_key_reused",
        format!("this Idempotency-Key was used for a different order request (order {id}); use a new key"),
    )
    .with_extra(json!({ "orderId": id }))
}

fn page_of(limit: i64, offset: i64) -> Page {
    Page {
        limit: limit.max(0),
        offset: offset.max(0),
    }
}

fn not_found_order(raw: i64) -> ApiError {
    ApiError::not_found(format!("no order {raw}"))
}

/// Executes `op` against the orchestrator this process owns.
pub async fn execute(local: &Local, op: Op) -> Result<Done, ApiError> {
    match op {
        Op::Replay { key, order } => {
            let key = IdempotencyKey::parse(&key).map_err(ApiError::bad_request)?;
            match local.sagas.key_use(&key, &order).await? {
                KeyUse::Fresh | KeyUse::TurnedAway => Done::with(StatusCode::NO_CONTENT, ()),
                KeyUse::Placed(id) => respond(local, id, None).await,
                KeyUse::OtherRequest(id) => Err(key_reused(id)),
            }
        }
        Op::PlaceOrder {
            order,
            key,
            admit_within_ms,
        } => place(local, order, key, Duration::from_millis(admit_within_ms)).await,
        Op::Cancel { id } => {
            let id = OrderId::new(id).map_err(|_| not_found_order(id))?;
            match dispatch(&local.orchestrator, id, Event::Cancel).await? {
                Ok(()) => Done::with(
                    StatusCode::ACCEPTED,
                    CancelAccepted {
                        saga_id: id,
                        order_id: id,
                        status: OrderStatus::Cancelled,
                        state: SagaState::Compensating,
                    },
                ),
                Err(Refusal::NotCancellable(status)) => Err(ApiError::conflict(
                    "not_cancellable",
                    format!("order {id} is {status} and can no longer be cancelled"),
                )
                .with_extra(json!({ "orderId": id, "status": status }))),
                Err(other) => Err(ApiError::conflict("refused", other.to_string())),
            }
        }
        Op::Progress { id, progress } => {
            let id = OrderId::new(id).map_err(|_| not_found_order(id))?;
            match dispatch(&local.orchestrator, id, Event::Progress { progress }).await? {
                Ok(()) => Done::with(
                    StatusCode::ACCEPTED,
                    ProgressAccepted {
                        order_id: id,
                        progress: progress.as_str().to_owned(),
                    },
                ),
                Err(refusal) => Err(ApiError::conflict("not_in_progress", refusal.to_string())
                    .with_extra(json!({ "orderId": id }))),
            }
        }
        Op::Retry { id } => {
            let id = SagaId::new(id).map_err(|_| ApiError::not_found(format!("no saga {id}")))?;
            match dispatch(&local.orchestrator, id, Event::Retry).await? {
                Ok(()) => Done::with(
                    StatusCode::ACCEPTED,
                    RetryAccepted {
                        saga_id: id,
                        state: SagaState::Compensating,
                    },
                ),
                Err(refusal @ Refusal::NotFailed(_)) => {
                    Err(ApiError::conflict("not_failed", refusal.to_string()))
                }
                Err(other) => Err(ApiError::conflict("refused", other.to_string())),
            }
        }
        Op::Order { id: raw } => {
            let id = OrderId::new(raw).map_err(|_| not_found_order(raw))?;
            let found = local
                .sagas
                .db()
                .read(move |c| store::get_saga(c, id))
                .await?;
            let row = found.ok_or_else(|| not_found_order(raw))?;
            Done::ok(order_view(&row))
        }
        Op::Orders {
            limit,
            offset,
            customer_id,
        } => {
            let customer = customer_id.and_then(|c| CustomerId::new(c).ok());
            let sagas = local
                .sagas
                .db()
                .read(move |c| store::list_sagas(c, page_of(limit, offset), None, customer))
                .await?;
            Done::ok(sagas.iter().map(order_view).collect::<Vec<_>>())
        }
        Op::Saga { id: raw } => saga_detail(local, raw).await,
        Op::Sagas {
            limit,
            offset,
            state,
        } => {
            let sagas = local
                .sagas
                .db()
                .read(move |c| store::list_sagas(c, page_of(limit, offset), state, None))
                .await?;
            let views: Vec<SagaView> = sagas
                .iter()
                .map(|row| match row {
                    Stored::Saga(s) => SagaView::of(&local.def, s),
                    Stored::Quarantined(q) => SagaView::quarantined(q),
                })
                .collect();
            Done::ok(views)
        }
        Op::Customer { id: raw } => {
            let id = CustomerId::new(raw)
                .map_err(|_| ApiError::not_found(format!("no customer {raw}")))?;
            local
                .sagas
                .db()
                .read(move |c| store::get_customer(c, id))
                .await?
                .map_or_else(
                    || Err(ApiError::not_found(format!("no customer {id}"))),
                    Done::ok,
                )
        }
        Op::Customers { limit, offset } => {
            let list = local
                .sagas
                .db()
                .read(move |c| store::list_customers(c, page_of(limit, offset)))
                .await?;
            Done::ok(list)
        }
        Op::CreateCustomer {
            name,
            phone,
            address,
            age,
        } => {
            let owned = local.sagas.owned().clone();
            let created = local
                .sagas
                .db()
                .write(move |tx| store::create_customer(tx, &name, &phone, &address, age, &owned))
                .await?;
            Done::with(StatusCode::CREATED, created)
        }
        Op::Reviews { limit, offset } => {
            let list = local
                .sagas
                .db()
                .read(move |c| store::list_reviews(c, page_of(limit, offset)))
                .await?;
            Done::ok(list)
        }
        Op::CreateReview {
            username,
            productname,
            content,
            rating,
        } => {
            let owned = local.sagas.owned().clone();
            let created = local
                .sagas
                .db()
                .write(move |tx| {
                    store::create_review(tx, &username, &productname, &content, rating, &owned)
                })
                .await?;
            local.sagas.db().notify_outbox();
            Done::with(StatusCode::CREATED, created)
        }
    }
}

/// The order view of a stored row; a quarantined one shows what is known.
fn order_view(row: &Stored) -> Order {
    match row {
        Stored::Saga(saga) => Order::from(saga.as_ref()),
        Stored::Quarantined(q) => Order::from(q),
    }
}

async fn saga_detail(local: &Local, raw: i64) -> Result<Done, ApiError> {
    let id = SagaId::new(raw).map_err(|_| ApiError::not_found(format!("no saga `{raw}`")))?;
    let found = local
        .sagas
        .db()
        .read(move |c| {
            let saga = match store::get_saga(c, id)? {
                None => return Ok(None),
                Some(Stored::Quarantined(q)) => return Ok(Some(Err(q))),
                Some(Stored::Saga(s)) => *s,
            };
            let history = store::history(c, id)?;
            let pending = store::pending_messages(c, id)?;
            Ok(Some(Ok((saga, history, pending))))
        })
        .await?;
    let (saga, history, pending) =
        match found.ok_or_else(|| ApiError::not_found(format!("no saga {id}")))? {
            Ok(found) => found,
            Err(q) => return Done::ok(SagaView::quarantined(&q)),
        };
    let in_flight = responses::in_flight(
        &local.def,
        &saga,
        &pending,
        &local.topology,
        &local.management_url,
    );
    let mut view = SagaView::detailed(&local.def, &saga, &history, in_flight);
    for (step, d) in view.steps.iter_mut().zip(&local.def.steps) {
        let route = Route::Command(d.worker, partition_key(d.worker, &saga.order));
        step.queue =
            QueueName::of(&route, local.topology.partitions).map(|q| local.topology.queue(q));
    }
    Done::ok(view)
}

async fn place(
    local: &Local,
    order: OrderDetails,
    key: Option<String>,
    admit_within: Duration,
) -> Result<Done, ApiError> {
    let key = key
        .as_deref()
        .map(IdempotencyKey::parse)
        .transpose()
        .map_err(ApiError::bad_request)?;
    if !local.transport.is_ready() {
        return Err(ApiError::unavailable(
            "the message broker is unavailable; try again shortly",
            RETRY_AFTER_SECS,
        ));
    }
    // The breaker turns the order away at once while payment is failing,
    // without touching the broker.
    let breaker = local.breakers.admission();
    if let Some(b) = breaker
        && let Err(wait) = b.try_acquire(crate::domain::Millis::now())
    {
        return Err(ApiError {
            error: "circuit_open".into(),
            ..ApiError::unavailable(
                "payment is overloaded; try again shortly",
                wait.as_secs().max(1),
            )
        });
    }
    let placed = local
        .orchestrator
        .send(PlaceOrder {
            order,
            key,
            admit_within,
        })
        .await
        .map_err(OrchestratorError::from)
        .and_then(|r| r);
    let (id, actor) = match placed {
        Ok((id, Some(actor))) => (id, Some(actor)),
        Ok((id, None)) => {
            // A concurrent request with the same key placed it: this one
            // started nothing, so its trial permit goes back.
            breaker.inspect(|b| b.release());
            (id, None)
        }
        Err(e) => {
            // No saga started: the breaker's trial permit, if this was
            // one, goes back.
            breaker.inspect(|b| b.release());
            return Err(match e {
                OrchestratorError::KeyReused(id) => key_reused(id),
                e => e.into(),
            });
        }
    };
    respond(local, id, actor).await
}

/// Waits for the order's admission and answers for it.
async fn respond(local: &Local, id: OrderId, actor: Option<Located>) -> Result<Done, ApiError> {
    // The saga answers by its `admit_by` plus a commit; the margin only
    // guards against an actor that cannot commit at all.
    let bound = local.order_timeout + Duration::from_secs(10);
    let wait = async {
        // The actor that placed it, if we hold it; else (or if it is gone,
        // or stopped with the wait unanswered: a panic) the actor the
        // registry loads. The outer bound ends this.
        if let Some(a) = &actor
            && let Ok(Some(saga)) = a.addr.send(AwaitAdmission).await
        {
            return Ok(Some(saga));
        }
        loop {
            match ask(&local.orchestrator, id, AwaitAdmission).await {
                Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
                other => return other,
            }
        }
    };
    let outcome = tokio::time::timeout(bound, wait).await;
    let saga = match outcome {
        Ok(Ok(Some(saga))) => saga,
        Ok(Err(e @ OrchestratorError::Quarantined(..))) => return Err(e.into()),
        _ => {
            return Err(ApiError::unavailable(
                "the order's outcome is not known yet; retry with the same Idempotency-Key to learn it",
                RETRY_AFTER_SECS,
            )
            .with_extra(json!({ "orderId": id })));
        }
    };
    match saga.admission() {
        Admission::Established => Done::with(StatusCode::CREATED, Order::from(&saga)),
        Admission::CancelledUnpaid(reason) => Err(ApiError::conflict(
            "order_cancelled",
            format!("the order was cancelled before it was paid: {reason}"),
        )
        .with_extra(json!({ "orderId": id }))),
        Admission::Declined(reason) => {
            Err(
                ApiError::new(StatusCode::PAYMENT_REQUIRED, "payment_declined", reason)
                    .with_extra(json!({ "orderId": id })),
            )
        }
        Admission::Unavailable(reason) => Err(ApiError::unavailable(
            format!("{reason}; nothing was established, try again shortly"),
            RETRY_AFTER_SECS,
        )
        .with_extra(json!({ "orderId": id }))),
        Admission::Pending => Err(ApiError::unavailable(
            "payment outcome unknown",
            RETRY_AFTER_SECS,
        )
        .with_extra(json!({ "orderId": id }))),
    }
}

/// The orchestrators of every partition, as the API reaches them.
#[derive(Clone)]
pub struct Orchestrators {
    count: PartitionCount,
    /// This process's orchestrator and the partitions it owns.
    local: Option<(Arc<Local>, Vec<u16>)>,
    transport: Arc<dyn Transport>,
    /// How long an answer may take (placing an order waits for its payment).
    pub order_timeout: Duration,
    /// Where the next new thing goes.
    turns: crate::partition::RoundRobin,
}

impl Orchestrators {
    pub fn new(
        count: PartitionCount,
        local: Option<(Arc<Local>, Vec<u16>)>,
        transport: Arc<dyn Transport>,
        order_timeout: Duration,
    ) -> Self {
        Orchestrators {
            count,
            local,
            transport,
            order_timeout,
            turns: crate::partition::RoundRobin::new(count),
        }
    }

    /// The partition for something new that any owner may take.
    pub fn next_partition(&self) -> Partition {
        self.turns.next()
    }

    pub fn count(&self) -> PartitionCount {
        self.count
    }

    /// Executes `op` at the owner of `partition`, waiting a while for one
    /// when nobody owns it right now.
    pub async fn call(&self, partition: Partition, op: Op) -> Result<Answer, ApiError> {
        self.ask_waiting(partition, op)
            .await
            .map_err(ApiError::from)
    }

    /// Like [`Orchestrators::ask`], waiting a while for an owner when
    /// nobody owns the partition right now (over RabbitMQ; an in-process
    /// owner is always there).
    pub async fn ask_waiting(
        &self,
        partition: Partition,
        op: Op,
    ) -> Result<Answer, crate::rpc::AskError> {
        if self.transport.requests().is_none() {
            return self.ask(partition, op).await;
        }
        crate::rpc::waiting_for_owner(|| self.ask(partition, op.clone())).await
    }

    /// Executes `op` at the owner of `partition`, telling "nobody owns it"
    /// (nothing was delivered) from "no answer" (it may have been done).
    pub async fn ask(&self, partition: Partition, op: Op) -> Result<Answer, crate::rpc::AskError> {
        if let Some((local, owned)) = &self.local
            && owned.contains(&partition.index())
        {
            let result = execute(local, op).await.map_err(|e| WireError::from(&e));
            return Ok(Answer {
                owned: owned.clone(),
                result,
            });
        }
        let what = format!("orchestrator {partition}");
        let Some(amqp) = self.transport.requests() else {
            return Err(crate::rpc::AskError::NoOwner(what));
        };
        let body = serde_json::to_vec(&op)
            .map_err(|e| crate::rpc::AskError::Failed(what.clone(), e.to_string()))?;
        let key = Topology::rpc_key(OwnerRole::Orchestrator, partition);
        // Placing an order waits for the payment at the owner.
        let wait = self.order_timeout + Duration::from_secs(15);
        let raw = amqp
            .request(&key, body, wait)
            .await
            .map_err(|e| crate::rpc::AskError::from_transport(what.clone(), e))?;
        serde_json::from_slice(&raw)
            .map_err(|e| crate::rpc::AskError::Failed(what, format!("undecodable answer: {e}")))
    }

    /// Creates something any owner may take (a customer, a review): the
    /// next partition in turn, and the one after it while nobody owns a
    /// partition (nothing was delivered there, so nothing is done twice).
    pub async fn create(&self, op: Op) -> Result<Done, ApiError> {
        let mut last = None;
        // Each partition once, from this creation's turn on (the turn is
        // shared with concurrent creations, so it is taken once).
        let first = i64::from(self.next_partition().index());
        for k in 0..i64::from(self.count.get()) {
            match self.ask(self.count.of(first + k), op.clone()).await {
                Err(e @ crate::rpc::AskError::NoOwner(_)) => last = Some(e),
                Err(e) => return Err(e.into()),
                Ok(answer) => return answer.result.map_err(ApiError::from),
            }
        }
        Err(last
            .unwrap_or_else(|| crate::rpc::AskError::NoOwner("any orchestrator".into()))
            .into())
    }

    /// Executes `op` at the owner of `partition`: its answer.
    pub async fn one(&self, partition: Partition, op: Op) -> Result<Done, ApiError> {
        self.call(partition, op)
            .await?
            .result
            .map_err(ApiError::from)
    }

    /// Executes `op` at the owner of the partition of `key` (an id).
    pub async fn of(&self, key: i64, op: Op) -> Result<Done, ApiError> {
        self.one(self.count.of(key), op).await
    }

    /// A list from every owner, merged into one page ordered by id. An
    /// owner of every partition answers the page itself; several owners each
    /// answer their first `offset + limit` rows, merged here, which is served
    /// up to [`crate::rpc::MAX_GATHERED`] rows deep.
    pub async fn page(
        &self,
        op: impl Fn(i64, i64) -> Op,
        page: Page,
    ) -> Result<Vec<Value>, ApiError> {
        let first = self.count.of(1);
        let answer = self.call(first, op(page.limit, page.offset)).await?;
        if answer.owned.len() == usize::from(self.count.get()) {
            let body = answer.result.map_err(ApiError::from)?.body;
            return Ok(match body {
                Value::Array(items) => items,
                _ => Vec::new(),
            });
        }
        let wanted = crate::rpc::gathered_depth(page).map_err(ApiError::bad_request)?;
        let mut uncovered: std::collections::BTreeSet<u16> =
            self.count.all().map(Partition::index).collect();
        let mut lists = Vec::new();
        while let Some(&next) = uncovered.iter().next() {
            let partition = self.count.of(i64::from(next));
            let answer = self.call(partition, op(wanted, 0)).await?;
            uncovered.remove(&next);
            for p in &answer.owned {
                uncovered.remove(p);
            }
            lists.push(answer.result.map_err(ApiError::from)?.body);
        }
        Ok(crate::rpc::merge_page(lists, page))
    }
}

/// Serves the requests for this process's orchestrator partition until
/// shutdown: the owner's side.
pub async fn serve(
    partition: Partition,
    local: Arc<Local>,
    owned: Vec<u16>,
    amqp: Arc<dyn Transport>,
    shutdown: crate::shutdown::Shutdown,
) -> Result<(), crate::transport::TransportError> {
    crate::rpc::serve_requests(
        OwnerRole::Orchestrator,
        partition,
        amqp,
        shutdown,
        move |body: Vec<u8>| {
            let (local, owned) = (local.clone(), owned.clone());
            async move {
                let result = match serde_json::from_slice::<Op>(&body) {
                    Ok(op) => execute(&local, op).await.map_err(|e| WireError::from(&e)),
                    Err(e) => Err(WireError::from(&ApiError::bad_request(format!(
                        "undecodable request: {e}"
                    )))),
                };
                let body = serde_json::to_vec(&Answer {
                    owned: owned.clone(),
                    result,
                })
                .unwrap_or_default();
                if body.len() <= crate::rpc::MAX_ANSWER_BYTES {
                    return body;
                }
                let too_big = ApiError::bad_request(
                    "the answer is too large to send between processes; ask for a smaller page",
                );
                serde_json::to_vec(&Answer {
                    owned,
                    result: Err(WireError::from(&too_big)),
                })
                .unwrap_or_default()
            }
        },
    )
    .await
}
