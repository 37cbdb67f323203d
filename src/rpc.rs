//! Requests to the owners of partitions: how a process reads (and adds to)
//! the state of a role it does not run, over RabbitMQ request/reply.
//!
//! A request goes to the `<ns>.rpc` exchange with the routing key of a
//! (role, partition), `pay.p3`; only the owner's lease queue is bound to
//! that key (ownership.rs), so only the owner answers, by direct reply-to.
//! When the owner runs in the same process, it is asked directly: no
//! broker hop.
//!
//! A list is gathered owner by owner: every answer says which partitions
//! its owner holds (its answer covers all of them), so the asker goes on
//! with the first partition not covered yet. One owner of every partition
//! (the zero-setup shape) answers in one step.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::{FoodId, Money, OrderId, WorkerKind};
use crate::partition::{OwnerRole, Partition, PartitionCount};
use crate::shutdown::Shutdown;
use crate::storage::{Db, Page, StorageError};
use crate::transport::consume::consume_each;
use crate::transport::{QueueName, Received, Topology, Transport, TransportError};
use crate::workers::{coupon, delivery, kitchen, pay};

/// The deepest page (`offset + limit`) gathered from several owners: each
/// answers that many rows and the asker merges them.
pub const MAX_GATHERED: i64 = 100_000;

/// The largest answer an owner sends (a broker refuses messages above its
/// `max_message_size`, 128 MiB by default).
pub const MAX_ANSWER_BYTES: usize = 32 * 1024 * 1024;

/// How many rows each owner must answer for `page` of a gathered list.
pub fn gathered_depth(page: Page) -> Result<i64, String> {
    let wanted = page.offset.saturating_add(page.limit);
    if wanted > MAX_GATHERED {
        return Err(format!(
            "offset + limit may be at most {MAX_GATHERED} while the partitions have several owners; \
             page with a filter or a smaller offset"
        ));
    }
    Ok(wanted)
}

/// How long an asker waits for an owner's answer.
pub const ANSWER_WAIT: Duration = Duration::from_secs(5);

/// A question to a worker's owner of a partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "query", rename_all = "camelCase")]
pub enum Query {
    /// The owner's records (payments, tickets, ...), by id: the first
    /// `limit`; the asker merges owners and applies its offset.
    #[serde(rename_all = "camelCase")]
    Records {
        limit: i64,
        #[serde(default)]
        offset: i64,
        order_id: Option<i64>,
    },
    /// The record of one order, if the owner has it.
    #[serde(rename_all = "camelCase")]
    Record { order_id: i64 },
    /// The kitchen's catalog items, by id: the first `limit`.
    Foods {
        limit: i64,
        #[serde(default)]
        offset: i64,
    },
    /// One catalog item.
    Food { id: i64 },
    /// Adds a catalog item, with an id in one of the owner's partitions.
    #[serde(rename_all = "camelCase")]
    CreateFood {
        name: String,
        stock: i64,
        price_cents: i64,
    },
}

/// An owner's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Answer {
    /// The partitions its owner holds: the answer covers all of them.
    pub owned: Vec<u16>,
    /// The records as the API shows them, or why the owner could not answer.
    pub result: Result<Value, String>,
}

/// Why an owner could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("no process owns {0} right now")]
    NoOwner(String),
    #[error("the owner of {0} did not answer in time")]
    Timeout(String),
    #[error("the owner of {0} failed: {1}")]
    Failed(String, String),
    #[error("asking the owner of {0}: {1}")]
    Transport(String, TransportError),
    #[error("{0}")]
    TooDeep(String),
}

impl AskError {
    /// A transport failure of a request for `what`.
    pub fn from_transport(what: String, e: TransportError) -> Self {
        match e {
            TransportError::Unroutable(_) => AskError::NoOwner(what),
            TransportError::Timeout => AskError::Timeout(what),
            e => AskError::Transport(what, e),
        }
    }
}

/// How long a request waits for a partition to have an owner again — an
/// owner restarting in place, or a standby taking over — before the API
/// answers 503 `owner_unavailable`. A rolling restart of an owner takes a
/// few seconds; a request meanwhile is late, not failed.
pub const OWNER_WAIT: Duration = Duration::from_secs(15);

/// Runs `ask` again while nobody owns its partition (nothing was delivered,
/// so asking again does nothing twice), for at most [`OWNER_WAIT`].
pub async fn waiting_for_owner<T, F, Fut>(mut ask: F) -> Result<T, AskError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, AskError>>,
{
    use backon::BackoffBuilder;
    let deadline = tokio::time::Instant::now() + OWNER_WAIT;
    let mut delays = backon::ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(1))
        .without_max_times()
        .build();
    loop {
        match ask().await {
            Err(AskError::NoOwner(what)) => {
                let wait = delays.next().unwrap_or(Duration::from_secs(1));
                if tokio::time::Instant::now() + wait > deadline {
                    return Err(AskError::NoOwner(what));
                }
                tracing::debug!(owner = %what, ?wait, "no owner yet; waiting for one");
                tokio::time::sleep(wait).await;
            }
            answered => return answered,
        }
    }
}

/// A worker role run by this process: its database and partitions.
#[derive(Clone)]
pub struct LocalWorker {
    pub db: Db,
    pub owned: BTreeSet<u16>,
}

/// Answers `query` from a worker's database (on the owner's side, or
/// directly when the owner is this process).
pub async fn answer(
    kind: WorkerKind,
    local: &LocalWorker,
    count: PartitionCount,
    query: Query,
) -> Result<Value, StorageError> {
    let json = |v: Result<Value, serde_json::Error>| {
        v.map_err(|e| StorageError::Invalid(format!("encoding an answer: {e}")))
    };
    let db = &local.db;
    match query {
        Query::Records {
            limit,
            offset,
            order_id,
        } => {
            let page = Page {
                limit: limit.max(0),
                offset: offset.max(0),
            };
            let order = order_id.and_then(|o| OrderId::new(o).ok());
            let v = db
                .read(move |c| {
                    Ok(match kind {
                        WorkerKind::Pay => serde_json::to_value(pay::list(c, page, order)?),
                        WorkerKind::Kitchen => {
                            serde_json::to_value(kitchen::list_tickets(c, page, order)?)
                        }
                        WorkerKind::Delivery => {
                            serde_json::to_value(delivery::list(c, page, order)?)
                        }
                        WorkerKind::Coupon => serde_json::to_value(coupon::list(c, page, order)?),
                    })
                })
                .await?;
            json(v)
        }
        Query::Record { order_id } => {
            let Ok(id) = OrderId::new(order_id) else {
                return Ok(Value::Null);
            };
            let v = db
                .read(move |c| {
                    Ok(match kind {
                        WorkerKind::Pay => serde_json::to_value(pay::get(c, id)?),
                        WorkerKind::Kitchen => serde_json::to_value(kitchen::get_ticket(c, id)?),
                        WorkerKind::Delivery => serde_json::to_value(delivery::get(c, id)?),
                        WorkerKind::Coupon => serde_json::to_value(coupon::get(c, id)?),
                    })
                })
                .await?;
            json(v)
        }
        Query::Foods { limit, offset } => {
            let page = Page {
                limit: limit.max(0),
                offset: offset.max(0),
            };
            let v = db
                .read(move |c| Ok(serde_json::to_value(kitchen::list_foods(c, page)?)))
                .await?;
            json(v)
        }
        Query::Food { id } => {
            let Ok(id) = FoodId::new(id) else {
                return Ok(Value::Null);
            };
            let v = db
                .read(move |c| Ok(serde_json::to_value(kitchen::get_food(c, id)?)))
                .await?;
            json(v)
        }
        Query::CreateFood {
            name,
            stock,
            price_cents,
        } => {
            let parts: Vec<Partition> = count
                .all()
                .filter(|p| local.owned.contains(&p.index()))
                .collect();
            let owned = crate::partition::Owned::new(count, &parts);
            let created = db
                .write(move |tx| {
                    Ok(kitchen::create_food(
                        tx,
                        &name,
                        stock,
                        Money::from_cents(price_cents),
                        &owned,
                    )?)
                })
                .await?;
            db.notify_outbox();
            json(serde_json::to_value(created))
        }
    }
}

/// Serves the requests for one worker kind's partition until shutdown:
/// the owner's side.
pub async fn serve(
    kind: WorkerKind,
    partition: Partition,
    local: LocalWorker,
    count: PartitionCount,
    amqp: Arc<dyn Transport>,
    shutdown: Shutdown,
) -> Result<(), TransportError> {
    let owned: Vec<u16> = local.owned.iter().copied().collect();
    serve_requests(
        OwnerRole::Worker(kind),
        partition,
        amqp,
        shutdown,
        move |body: Vec<u8>| {
            let (local, owned) = (local.clone(), owned.clone());
            async move {
                let result = match serde_json::from_slice::<Query>(&body) {
                    Ok(q) => answer(kind, &local, count, q)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(format!("undecodable request: {e}")),
                };
                let body = serde_json::to_vec(&Answer {
                    owned: owned.clone(),
                    result,
                })
                .unwrap_or_default();
                if body.len() <= MAX_ANSWER_BYTES {
                    return body;
                }
                let result = Err(
                    "the answer is too large to send between processes; ask for a smaller page"
                        .to_owned(),
                );
                serde_json::to_vec(&Answer { owned, result }).unwrap_or_default()
            }
        },
    )
    .await
}

/// Consumes the requests of `role`'s `partition` (its lease queue) until
/// shutdown, answering each with `handle(body)` by direct reply-to.
pub async fn serve_requests<F, Fut>(
    role: OwnerRole,
    partition: Partition,
    amqp: Arc<dyn Transport>,
    shutdown: Shutdown,
    handle: F,
) -> Result<(), TransportError>
where
    F: Fn(Vec<u8>) -> Fut + Clone + 'static,
    Fut: std::future::Future<Output = Vec<u8>> + 'static,
{
    consume_each(
        amqp.clone(),
        QueueName::Lease(role, partition),
        shutdown,
        move |d, _failures| {
            let (amqp, handle) = (amqp.clone(), handle.clone());
            async move { serve_one(d, &amqp, handle).await }
        },
    )
    .await
}

/// Requests this process is answering as an owner (received, answer not
/// yet sent): an owner handing over waits for them.
static REQUESTS_IN_FLIGHT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

pub fn requests_in_flight() -> i64 {
    REQUESTS_IN_FLIGHT.load(std::sync::atomic::Ordering::SeqCst)
}

/// Counts one request as in flight until dropped.
struct Answering;

impl Answering {
    fn start() -> Self {
        REQUESTS_IN_FLIGHT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Answering
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        REQUESTS_IN_FLIGHT.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

async fn serve_one<F, Fut>(mut d: Received, amqp: &Arc<dyn Transport>, handle: F)
where
    F: Fn(Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = Vec<u8>>,
{
    let _answering = Answering::start();
    let (Some(reply_to), Some(correlation)) = (d.reply_to.clone(), d.correlation_id.clone()) else {
        crate::transport::poison::dead_letter(d, "a request without reply-to").await;
        return;
    };
    let body = handle(std::mem::take(&mut d.body)).await;
    let answered = match amqp.requests() {
        Some(r) => r.respond(&reply_to, &correlation, body).await,
        None => Err(TransportError::Unavailable(
            "this transport carries no requests".into(),
        )),
    };
    if let Err(e) = answered {
        tracing::warn!(error = %e, "cannot answer a request");
    }
    // Requests are not redelivered: an asker that got no answer asks again.
    let _ = d.ack().await;
}

/// Asks the owners of the workers' partitions, locally or over RabbitMQ.
#[derive(Clone)]
pub struct Owners {
    count: PartitionCount,
    local: HashMap<WorkerKind, LocalWorker>,
    transport: Arc<dyn Transport>,
    /// Where the next new thing goes.
    turns: crate::partition::RoundRobin,
}

impl Owners {
    pub fn new(
        count: PartitionCount,
        local: HashMap<WorkerKind, LocalWorker>,
        transport: Arc<dyn Transport>,
    ) -> Self {
        Owners {
            count,
            local,
            transport,
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

    /// Asks the owner of `kind`'s `partition`.
    pub async fn ask(
        &self,
        kind: WorkerKind,
        partition: Partition,
        query: Query,
    ) -> Result<Answer, AskError> {
        let what = format!("{kind} {partition}");
        if let Some(local) = self
            .local
            .get(&kind)
            .filter(|l| l.owned.contains(&partition.index()))
        {
            let result = answer(kind, local, self.count, query)
                .await
                .map_err(|e| e.to_string());
            return Ok(Answer {
                owned: local.owned.iter().copied().collect(),
                result,
            });
        }
        let Some(amqp) = self.transport.requests() else {
            return Err(AskError::NoOwner(what));
        };
        let body = serde_json::to_vec(&query).unwrap_or_default();
        let key = Topology::rpc_key(OwnerRole::Worker(kind), partition);
        match amqp.request(&key, body, ANSWER_WAIT).await {
            Ok(raw) => serde_json::from_slice(&raw)
                .map_err(|e| AskError::Failed(what, format!("undecodable answer: {e}"))),
            Err(e) => Err(AskError::from_transport(what, e)),
        }
    }

    /// Like [`Owners::ask`], waiting a while for an owner when nobody owns
    /// the partition right now (over RabbitMQ; an in-process owner is
    /// always there).
    pub async fn ask_waiting(
        &self,
        kind: WorkerKind,
        partition: Partition,
        query: Query,
    ) -> Result<Answer, AskError> {
        if self.transport.requests().is_none() {
            return self.ask(kind, partition, query).await;
        }
        waiting_for_owner(|| self.ask(kind, partition, query.clone())).await
    }

    /// Creates something any owner of `kind` may take: the next partition
    /// in turn, and the one after it while nobody owns a partition (nothing
    /// was delivered there).
    pub async fn create(&self, kind: WorkerKind, query: Query) -> Result<Value, AskError> {
        let mut last = None;
        // Each partition once, from this creation's turn on.
        let first = i64::from(self.next_partition().index());
        for k in 0..i64::from(self.count.get()) {
            let partition = self.count.of(first + k);
            match self.ask(kind, partition, query.clone()).await {
                Err(e @ AskError::NoOwner(_)) => last = Some(e),
                Err(e) => return Err(e),
                Ok(answer) => {
                    return answer
                        .result
                        .map_err(|e| AskError::Failed(format!("{kind} {partition}"), e));
                }
            }
        }
        Err(last.unwrap_or_else(|| AskError::NoOwner(format!("any {kind}"))))
    }

    /// The owner's result, or why there is none.
    pub async fn one(
        &self,
        kind: WorkerKind,
        partition: Partition,
        query: Query,
    ) -> Result<Value, AskError> {
        let what = format!("{kind} {partition}");
        self.ask_waiting(kind, partition, query)
            .await?
            .result
            .map_err(|e| AskError::Failed(what, e))
    }

    /// Asks every owner of `kind` once, and answers their results.
    pub async fn all(&self, kind: WorkerKind, query: Query) -> Result<Vec<Value>, AskError> {
        let mut uncovered: BTreeSet<u16> = self.count.all().map(Partition::index).collect();
        let mut results = Vec::new();
        while let Some(&next) = uncovered.iter().next() {
            let partition = self
                .count
                .all()
                .nth(usize::from(next))
                .unwrap_or_else(|| unreachable!("partition {next} is below the count"));
            let answer = self.ask_waiting(kind, partition, query.clone()).await?;
            uncovered.remove(&next);
            for p in &answer.owned {
                uncovered.remove(p);
            }
            results.push(
                answer
                    .result
                    .map_err(|e| AskError::Failed(format!("{kind} {partition}"), e))?,
            );
        }
        Ok(results)
    }

    /// The records of every owner merged into one page ordered by id (see
    /// `Orchestrators::page`: one owner of everything answers the page
    /// itself).
    pub async fn page(
        &self,
        kind: WorkerKind,
        query: impl Fn(i64, i64) -> Query,
        page: Page,
    ) -> Result<Vec<Value>, AskError> {
        let first = self.count.of(1);
        let answer = self
            .ask_waiting(kind, first, query(page.limit, page.offset))
            .await?;
        if answer.owned.len() == usize::from(self.count.get()) {
            let body = answer
                .result
                .map_err(|e| AskError::Failed(format!("{kind} {first}"), e))?;
            return Ok(match body {
                Value::Array(items) => items,
                _ => Vec::new(),
            });
        }
        let wanted = gathered_depth(page).map_err(AskError::TooDeep)?;
        let lists = self.all(kind, query(wanted, 0)).await?;
        Ok(merge_page(lists, page))
    }
}

/// Merges owners' lists (each ordered by id), dropping repeats, and cuts
/// the page out.
pub fn merge_page(lists: Vec<Value>, page: Page) -> Vec<Value> {
    let mut rows: Vec<Value> = lists
        .into_iter()
        .flat_map(|l| match l {
            Value::Array(items) => items,
            _ => Vec::new(),
        })
        .collect();
    let id = |v: &Value| v["id"].as_i64().unwrap_or(i64::MAX);
    rows.sort_by_key(id);
    rows.dedup_by_key(|v| id(v));
    rows.into_iter()
        .skip(usize::try_from(page.offset).unwrap_or(usize::MAX))
        .take(usize::try_from(page.limit).unwrap_or(usize::MAX))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pages_merge_across_owners() {
        let a = json!([{"id": 1}, {"id": 4}, {"id": 5}]);
        let b = json!([{"id": 2}, {"id": 4}, {"id": 7}]);
        let page = Page {
            limit: 3,
            offset: 1,
        };
        let ids: Vec<i64> = merge_page(vec![a, b], page)
            .iter()
            .map(|v| v["id"].as_i64().expect("id"))
            .collect();
        assert_eq!(ids, vec![2, 4, 5]);
    }

    #[test]
    fn queries_have_a_wire_form() {
        let q = Query::Records {
            limit: 5,
            offset: 0,
            order_id: Some(3),
        };
        let text = serde_json::to_string(&q).expect("json");
        assert_eq!(
            text,
            r#"{"query":"records","limit":5,"offset":0,"orderId":3}"#
        );
        assert_eq!(serde_json::from_str::<Query>(&text).expect("back"), q);
    }
}
