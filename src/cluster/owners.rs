//! The one client of the owners of partitions: every process asks the owner
//! of a (role, partition) through it, the same way whether the owner runs in
//! this process (asked directly: no broker hop) or in another (request/reply
//! over RabbitMQ to the owner's lease queue, see [`super::serve`]).
//!
//! It is the only place that knows routing: which partition a request goes
//! to, waiting a while for a partition with no owner (a restart, a standby
//! taking over), moving a creation on to the next partition when nobody owns
//! one, and gathering a list owner by owner. Requests and outcomes are typed
//! per role ([`Protocol`]); serde happens here, at the boundary, only.
//!
//! A list is gathered owner by owner: every answer says which partitions
//! its owner holds (its answer covers all of them), so the asker goes on
//! with the first partition not covered yet. One owner of every partition
//! (the zero-setup shape) answers in one step.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::config::Secret;
use crate::partition::{OwnerRole, Partition, PartitionCount, RoundRobin};
use crate::storage::{Page, StorageError};
use crate::transport::{Topology, Transport, TransportError};

/// The requests of one role's owners and their outcomes, as types.
pub trait Protocol: Send + Sync + 'static {
    type Request: Serialize + DeserializeOwned + Clone + Send + Sync + 'static;
    type Outcome: Serialize + DeserializeOwned + Send + 'static;
    /// The `type` of its requests on the wire, with the protocol's version:
    /// an owner refuses a request of another version instead of misreading it.
    const MESSAGE_TYPE: &'static str;
}

/// An owner in this process, which executes requests for its partitions,
/// deciding what `caller` may do and see.
pub trait Executor<P: Protocol>: Send + Sync + 'static {
    fn execute(
        &self,
        caller: Caller,
        request: P::Request,
    ) -> BoxFuture<'_, Result<P::Outcome, Failure>>;
}

/// A request on the wire: the caller's credential (the owner verifies it
/// again: it decides from who asks, not from what an asker says) and the
/// request.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Asked<R> {
    /// Never printed (`Secret`'s `Debug`).
    pub credential: Option<Secret>,
    pub request: R,
}

/// Why an owner could not answer a request it received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "failure", content = "detail", rename_all = "camelCase")]
pub enum Failure {
    /// Not now (its storage is busy, an actor is restarting): ask again
    /// shortly.
    #[error("{0}")]
    Busy(String),
    /// The answer is larger than processes send each other.
    #[error("the answer is too large to send between processes; ask for a smaller page")]
    TooLarge,
    /// The request (or the answer) could not be read: another version.
    #[error("{0}")]
    Undecodable(String),
    /// The owner did not accept the caller's credential.
    #[error("{0}")]
    Unauthenticated(String),
}

impl From<StorageError> for Failure {
    fn from(e: StorageError) -> Self {
        tracing::warn!(error = %e, "storage error in a request");
        Failure::Busy(format!("storage is busy or unavailable: {e}"))
    }
}

/// An owner's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Answer<O> {
    /// The partitions its owner holds: a list answer covers all of them.
    pub owned: Vec<u16>,
    pub result: Result<O, Failure>,
}

/// Why an owner could not be asked, or did not answer.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error("no process owns {0} right now")]
    NoOwner(String),
    #[error("the owner of {0} did not answer in time")]
    Timeout(String),
    #[error("the owner of {what} could not answer: {failure}")]
    Failed { what: String, failure: Failure },
    #[error("asking the owner of {0}: {1}")]
    Transport(String, TransportError),
    /// The page asked for is deeper than several owners' lists are merged.
    #[error("{0}")]
    TooDeep(String),
    /// The owner answered something this request does not answer.
    #[error("the owner of {0} answered something unexpected")]
    Unexpected(String),
}

impl AskError {
    /// A transport failure of a request for `what`.
    fn from_transport(what: String, e: TransportError) -> Self {
        match e {
            TransportError::Unroutable(_) => AskError::NoOwner(what),
            TransportError::Timeout => AskError::Timeout(what),
            e => AskError::Transport(what, e),
        }
    }
}

/// A request that got no answer: where it went, what it was, and why.
#[derive(Debug)]
pub struct Unanswered<R> {
    pub partition: Partition,
    pub request: R,
    pub error: AskError,
}

/// How long a request waits for a partition to have an owner again — an
/// owner restarting in place, or a standby taking over — before the API
/// answers 503 `owner_unavailable`. A rolling restart of an owner takes a
/// few seconds; a request meanwhile is late, not failed.
pub const OWNER_WAIT: Duration = Duration::from_secs(15);

/// The deepest page (`offset + limit`) gathered from several owners: each
/// answers that many rows and the asker merges them.
pub const MAX_GATHERED: i64 = 100_000;

/// The largest answer an owner sends (a broker refuses messages above its
/// `max_message_size`, 128 MiB by default).
pub const MAX_ANSWER_BYTES: usize = 32 * 1024 * 1024;

/// Something with an id that lists are ordered and merged by.
pub trait Keyed {
    fn key(&self) -> i64;
}

/// An owner of some partitions in this process.
struct Local<P: Protocol> {
    executor: Arc<dyn Executor<P>>,
    owned: Vec<u16>,
}

/// The owners of one protocol's roles: this process's, asked directly,
/// and everyone else's, asked over the transport.
pub struct Owners<P: Protocol> {
    count: PartitionCount,
    local: HashMap<OwnerRole, Local<P>>,
    transport: Arc<dyn Transport>,
    /// How long an asker waits for an answer (placing an order waits for its
    /// payment at the owner).
    answer_wait: Duration,
    /// Where the next new thing goes.
    turns: RoundRobin,
}

impl<P: Protocol> Owners<P> {
    pub fn new(
        count: PartitionCount,
        transport: Arc<dyn Transport>,
        answer_wait: Duration,
    ) -> Self {
        Owners {
            count,
            local: HashMap::new(),
            transport,
            answer_wait,
            turns: RoundRobin::new(count),
        }
    }

    /// This process owns `owned` of `role` and executes their requests with
    /// `executor`.
    pub fn with_local(
        mut self,
        role: OwnerRole,
        executor: Arc<dyn Executor<P>>,
        owned: &[Partition],
    ) -> Self {
        let owned = owned.iter().map(|p| p.index()).collect();
        self.local.insert(role, Local { executor, owned });
        self
    }

    pub fn count(&self) -> PartitionCount {
        self.count
    }

    /// The partition of an entity with this key (an order id, a food id).
    pub fn partition_of(&self, key: i64) -> Partition {
        self.count.of(key)
    }

    /// The partition for something new that any owner may take.
    pub fn next_partition(&self) -> Partition {
        self.turns.next()
    }

    /// Asks the owner of `role`'s `partition` once, telling "nobody owns it"
    /// (nothing was delivered) from "no answer" (it may have been done).
    pub async fn ask(
        &self,
        role: OwnerRole,
        partition: Partition,
        caller: &Caller,
        request: P::Request,
    ) -> Result<Answer<P::Outcome>, AskError> {
        if let Some(local) = self
            .local
            .get(&role)
            .filter(|l| l.owned.contains(&partition.index()))
        {
            let result = local.executor.execute(caller.clone(), request).await;
            return Ok(Answer {
                owned: local.owned.clone(),
                result,
            });
        }
        let what = format!("{role} {partition}");
        let Some(requests) = self.transport.requests() else {
            return Err(AskError::NoOwner(what));
        };
        let asked = Asked {
            credential: caller.credential().cloned(),
            request,
        };
        let body = serde_json::to_vec(&asked).map_err(|e| AskError::Failed {
            what: what.clone(),
            failure: Failure::Undecodable(format!("cannot encode the request: {e}")),
        })?;
        let key = Topology::rpc_key(role, partition);
        let raw = requests
            .request(&key, P::MESSAGE_TYPE, body, self.answer_wait)
            .await
            .map_err(|e| AskError::from_transport(what.clone(), e))?;
        serde_json::from_slice(&raw).map_err(|e| AskError::Failed {
            what,
            failure: Failure::Undecodable(format!("undecodable answer: {e}")),
        })
    }

    /// Like [`Owners::ask`], waiting a while for an owner when nobody owns
    /// the partition right now (over a shared broker; an in-process owner
    /// is always there).
    pub async fn ask_waiting(
        &self,
        role: OwnerRole,
        partition: Partition,
        caller: &Caller,
        request: P::Request,
    ) -> Result<Answer<P::Outcome>, AskError> {
        if self.transport.requests().is_none() {
            return self.ask(role, partition, caller, request).await;
        }
        waiting_for_owner(|| self.ask(role, partition, caller, request.clone())).await
    }

    /// The outcome of `request` at the owner of `role`'s `partition`,
    /// waiting a while for an owner.
    pub async fn one(
        &self,
        role: OwnerRole,
        partition: Partition,
        caller: &Caller,
        request: P::Request,
    ) -> Result<P::Outcome, AskError> {
        let answer = self.ask_waiting(role, partition, caller, request).await?;
        answer.result.map_err(|failure| AskError::Failed {
            what: format!("{role} {partition}"),
            failure,
        })
    }

    /// Something new that any owner of `role` may take: asked of the next
    /// partition in turn, and of the one after it while nobody owns a
    /// partition (nothing was delivered there, so nothing is done twice).
    /// `request` is made for the partition it goes to; an error says where
    /// the last request went and what it was.
    pub async fn anywhere(
        &self,
        role: OwnerRole,
        caller: &Caller,
        request: impl Fn(Partition) -> P::Request,
    ) -> Result<P::Outcome, Unanswered<P::Request>> {
        // Each partition once, from this creation's turn on (the turn is
        // shared with concurrent creations, so it is taken once).
        let first = i64::from(self.next_partition().index());
        let mut k = 0;
        loop {
            let partition = self.count.of(first + k);
            let sent = request(partition);
            let error = match self.ask(role, partition, caller, sent.clone()).await {
                Ok(answer) => match answer.result {
                    Ok(outcome) => return Ok(outcome),
                    Err(failure) => AskError::Failed {
                        what: format!("{role} {partition}"),
                        failure,
                    },
                },
                Err(e) => e,
            };
            k += 1;
            if !matches!(error, AskError::NoOwner(_)) || k == i64::from(self.count.get()) {
                return Err(Unanswered {
                    partition,
                    request: sent,
                    error,
                });
            }
        }
    }

    /// Asks every owner of `role` once; their outcomes.
    pub async fn all(
        &self,
        role: OwnerRole,
        caller: &Caller,
        request: P::Request,
    ) -> Result<Vec<P::Outcome>, AskError> {
        let mut uncovered: BTreeSet<u16> = self.count.all().map(Partition::index).collect();
        let mut outcomes = Vec::new();
        while let Some(&next) = uncovered.iter().next() {
            let partition = self.count.of(i64::from(next));
            let answer = self
                .ask_waiting(role, partition, caller, request.clone())
                .await?;
            uncovered.remove(&next);
            for p in &answer.owned {
                uncovered.remove(p);
            }
            outcomes.push(answer.result.map_err(|failure| AskError::Failed {
                what: format!("{role} {partition}"),
                failure,
            })?);
        }
        Ok(outcomes)
    }

    /// One page of a list that every owner of `role` holds a part of,
    /// ordered by id. An owner of every partition answers the page itself;
    /// several owners each answer their first `offset + limit` rows, merged
    /// here, which is served up to [`MAX_GATHERED`] rows deep. `rows` takes
    /// the list out of an outcome.
    pub async fn page<T: Keyed>(
        &self,
        role: OwnerRole,
        caller: &Caller,
        request: impl Fn(Page) -> P::Request,
        rows: impl Fn(P::Outcome) -> Option<Vec<T>>,
        page: Page,
    ) -> Result<Vec<T>, AskError> {
        let unexpected = || AskError::Unexpected(format!("{role}"));
        let first = self.count.of(1);
        let answer = self.ask_waiting(role, first, caller, request(page)).await?;
        if answer.owned.len() == usize::from(self.count.get()) {
            let outcome = answer.result.map_err(|failure| AskError::Failed {
                what: format!("{role} {first}"),
                failure,
            })?;
            return rows(outcome).ok_or_else(unexpected);
        }
        let deep = Page {
            limit: gathered_depth(page).map_err(AskError::TooDeep)?,
            offset: 0,
        };
        let mut lists = Vec::new();
        for outcome in self.all(role, caller, request(deep)).await? {
            lists.push(rows(outcome).ok_or_else(unexpected)?);
        }
        Ok(merge_page(lists, page))
    }
}

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

/// Merges owners' lists (each ordered by id), dropping repeats, and cuts
/// the page out.
pub fn merge_page<T: Keyed>(lists: Vec<Vec<T>>, page: Page) -> Vec<T> {
    let mut rows: Vec<T> = lists.into_iter().flatten().collect();
    rows.sort_by_key(Keyed::key);
    rows.dedup_by_key(|r| r.key());
    rows.into_iter()
        .skip(usize::try_from(page.offset).unwrap_or(usize::MAX))
        .take(usize::try_from(page.limit).unwrap_or(usize::MAX))
        .collect()
}

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

#[cfg(test)]
mod tests {
    use super::*;

    impl Keyed for i64 {
        fn key(&self) -> i64 {
            *self
        }
    }

    #[test]
    fn pages_merge_across_owners() {
        let page = Page {
            limit: 3,
            offset: 1,
        };
        let merged = merge_page(vec![vec![1, 4, 5], vec![2, 4, 7]], page);
        assert_eq!(merged, vec![2, 4, 5]);
    }

    #[test]
    fn deep_pages_are_refused_across_owners() {
        let fits = Page {
            limit: 100,
            offset: MAX_GATHERED - 100,
        };
        assert_eq!(gathered_depth(fits), Ok(MAX_GATHERED));
        let deeper = Page {
            offset: fits.offset + 1,
            ..fits
        };
        assert!(gathered_depth(deeper).is_err());
    }
}
