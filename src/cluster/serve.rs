//! The owner's side of requests: a partition's lease queue receives the
//! requests for it (only the owner's lease queue is bound to the
//! partition's key on `<ns>.rpc`); each is executed by the owner's
//! [`Executor`] and answered by direct reply-to.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use super::owners::{Answer, Asked, Executor, Failure, MAX_ANSWER_BYTES, Protocol};
use crate::auth::{Authenticator, Caller};
use crate::partition::{OwnerRole, Partition};
use crate::shutdown::Shutdown;
use crate::transport::consume::consume_each;
use crate::transport::{QueueName, Received, Transport, TransportError};

/// Serves the requests for `role`'s `partition` until shutdown. `owned`:
/// every partition of `role` this process owns (each answer says so).
pub async fn serve<P: Protocol>(
    role: OwnerRole,
    partition: Partition,
    owner: Owner<P>,
    shutdown: Shutdown,
) -> Result<(), TransportError> {
    let transport = owner.transport.clone();
    consume_each(
        transport,
        QueueName::Lease(role, partition),
        shutdown,
        move |d, _failures| {
            let owner = owner.clone();
            async move { serve_one::<P>(d, &owner).await }
        },
    )
    .await
}

/// An owner as it serves requests.
pub struct Owner<P: Protocol> {
    pub executor: Arc<dyn Executor<P>>,
    /// Every partition of the role this process owns (each answer says so).
    pub owned: Vec<u16>,
    pub transport: Arc<dyn Transport>,
    /// Verifies the credential each request carries.
    pub auth: Arc<Authenticator>,
}

impl<P: Protocol> Clone for Owner<P> {
    fn clone(&self) -> Self {
        Owner {
            executor: self.executor.clone(),
            owned: self.owned.clone(),
            transport: self.transport.clone(),
            auth: self.auth.clone(),
        }
    }
}

/// Requests this process is answering as an owner (received, answer not
/// yet sent): an owner handing over waits for them.
static REQUESTS_IN_FLIGHT: AtomicI64 = AtomicI64::new(0);

pub fn requests_in_flight() -> i64 {
    REQUESTS_IN_FLIGHT.load(Ordering::SeqCst)
}

/// Counts one request as in flight until dropped.
struct Answering;

impl Answering {
    fn start() -> Self {
        REQUESTS_IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        Answering
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        REQUESTS_IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve_one<P: Protocol>(d: Received, owner: &Owner<P>) {
    let _answering = Answering::start();
    let (Some(reply_to), Some(correlation)) = (d.reply_to.clone(), d.correlation_id.clone()) else {
        crate::transport::poison::dead_letter(d, "a request without reply-to").await;
        return;
    };
    let result = match decode::<P>(&d).and_then(|asked| authenticated(&owner.auth, asked)) {
        Ok((caller, request)) => owner.executor.execute(caller, request).await,
        Err(failure) => Err(failure),
    };
    let body = encode(Answer {
        owned: owner.owned.clone(),
        result,
    });
    let answered = match owner.transport.requests() {
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

/// The caller a request's credential proves, with the request.
fn authenticated<R>(auth: &Authenticator, asked: Asked<R>) -> Result<(Caller, R), Failure> {
    let caller = match &asked.credential {
        None => Caller::anonymous(),
        Some(token) => auth
            .verify(token.expose())
            .map_err(|e| Failure::Unauthenticated(e.to_string()))?,
    };
    Ok((caller, asked.request))
}

/// The request, if it is one of this protocol and version.
fn decode<P: Protocol>(d: &Received) -> Result<Asked<P::Request>, Failure> {
    if d.message_type.as_deref() != Some(P::MESSAGE_TYPE) {
        return Err(Failure::Undecodable(format!(
            "a request of type {:?}: this owner answers {} (processes of another version?)",
            d.message_type.as_deref().unwrap_or(""),
            P::MESSAGE_TYPE
        )));
    }
    serde_json::from_slice(&d.body)
        .map_err(|e| Failure::Undecodable(format!("undecodable request: {e}")))
}

/// The answer's body; one too large to send says so instead.
fn encode<O: serde::Serialize>(answer: Answer<O>) -> Vec<u8> {
    let owned = answer.owned.clone();
    let body = serde_json::to_vec(&answer).unwrap_or_else(|e| {
        serde_json::to_vec(&Answer::<O> {
            owned: owned.clone(),
            result: Err(Failure::Busy(format!("cannot encode the answer: {e}"))),
        })
        .unwrap_or_default()
    });
    if body.len() <= MAX_ANSWER_BYTES {
        return body;
    }
    serde_json::to_vec(&Answer::<O> {
        owned,
        result: Err(Failure::TooLarge),
    })
    .unwrap_or_default()
}
