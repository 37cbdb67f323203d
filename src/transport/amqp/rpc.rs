//! Request/reply to the owners of partitions: requests go to the
//! `<ns>.rpc` exchange (only an owner's lease queue is bound to its key),
//! answers come back by direct reply-to, paired by correlation id.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation};

use super::publish::settle_confirm;
use super::{AmqpTransport, CONFIRM_TIMEOUT, unavailable};
use crate::transport::TransportError;

/// Requests waiting for their answers, by correlation id.
type Waiters =
    Arc<std::sync::Mutex<std::collections::HashMap<String, tokio::sync::oneshot::Sender<Reply>>>>;

/// What a request's waiter learns.
enum Reply {
    /// The owner's answer.
    Answer(Vec<u8>),
    /// The broker returned the request: no queue was bound for it, so it
    /// was delivered nowhere.
    Returned,
}

pub(super) struct RpcChannel {
    channel: Channel,
    waiters: Waiters,
    /// False once its answers stopped coming (the consumer ended).
    alive: Arc<std::sync::atomic::AtomicBool>,
}

/// Forgets a request's waiter however the request ends (answered, timed
/// out, or its caller gone).
struct Waiting {
    waiters: Waiters,
    id: String,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl AmqpTransport {
    /// Sends a request to the owner of the partition behind `routing_key`
    /// (`pay.p3`) and waits for its answer, at most `wait`. No owner bound
    /// (none running, or a standby only) is `Unroutable` at once.
    pub async fn request(
        &self,
        routing_key: &str,
        message_type: &str,
        body: Vec<u8>,
        wait: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        let (channel, waiters) = tokio::time::timeout(CONFIRM_TIMEOUT, self.rpc_channel())
            .await
            .map_err(|_| TransportError::Timeout)??;
        let id = format!("{:032x}", rand::random::<u128>());
        let (tx, rx) = tokio::sync::oneshot::channel();
        waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), tx);
        let _waiting = Waiting {
            waiters: waiters.clone(),
            id: id.clone(),
        };
        let props = BasicProperties::default()
            .with_correlation_id(id.clone().into())
            .with_reply_to("amq.rabbitmq.reply-to".into())
            .with_type(message_type.into())
            .with_content_type("application/json".into())
            .with_app_id("hearty".into())
            .with_expiration(wait.as_millis().to_string().into());
        let exchange = self.inner.topology.rpc_exchange();
        let what = format!("request via {exchange}/{routing_key}");
        let sent = Self::publish_one(
            &channel,
            exchange,
            routing_key.to_owned(),
            true,
            &body,
            props,
        )
        .await?;
        delivered(&id, &what, &waiters, sent).await?;
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(Reply::Answer(answer))) => Ok(answer),
            Ok(Ok(Reply::Returned)) => Err(TransportError::Unroutable(what)),
            Ok(Err(_)) => Err(TransportError::Unavailable(
                "the connection closed before the answer came".into(),
            )),
            Err(_) => Err(TransportError::Timeout),
        }
    }

    /// The request channel of the live connection, opened on first use.
    async fn rpc_channel(&self) -> Result<(Channel, Waiters), TransportError> {
        let generation = *self.inner.generation.borrow();
        let mut slot = self.inner.rpc.lock().await;
        if let Some((g, rpc)) = slot.as_ref()
            && *g == generation
            && rpc.channel.status().connected()
            && rpc.alive.load(std::sync::atomic::Ordering::SeqCst)
        {
            return Ok((rpc.channel.clone(), rpc.waiters.clone()));
        }
        let live = self
            .live()
            .ok_or_else(|| TransportError::Unavailable("reconnecting to RabbitMQ".into()))?;
        let channel = live
            .connection
            .create_channel()
            .await
            .map_err(unavailable)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(unavailable)?;
        // Direct reply-to: consume the pseudo-queue (no acks) on the channel
        // the requests go out on.
        let mut answers = channel
            .basic_consume(
                "amq.rabbitmq.reply-to".into(),
                format!("rpc.{}", std::process::id()).into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        let waiters: Waiters = Arc::default();
        let routed = waiters.clone();
        let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = alive.clone();
        tokio::spawn(async move {
            while let Some(Ok(d)) = answers.next().await {
                let id = d
                    .properties
                    .correlation_id()
                    .as_ref()
                    .map(|c| c.as_str().to_owned());
                let waiter =
                    id.and_then(|id| routed.lock().unwrap_or_else(|p| p.into_inner()).remove(&id));
                if let Some(w) = waiter {
                    let _ = w.send(Reply::Answer(d.data));
                }
            }
            // The channel is gone: every waiter learns at once, and the
            // next request opens another.
            flag.store(false, std::sync::atomic::Ordering::SeqCst);
            routed.lock().unwrap_or_else(|p| p.into_inner()).clear();
        });
        *slot = Some((
            generation,
            RpcChannel {
                channel: channel.clone(),
                waiters: waiters.clone(),
                alive,
            },
        ));
        Ok((channel, waiters))
    }

    /// Answers a request (a delivery with a reply-to address).
    pub async fn respond(
        &self,
        reply_to: &str,
        correlation_id: &str,
        body: Vec<u8>,
    ) -> Result<(), TransportError> {
        let live = self
            .live()
            .ok_or_else(|| TransportError::Unavailable("reconnecting to RabbitMQ".into()))?;
        let props = BasicProperties::default()
            .with_correlation_id(correlation_id.into())
            .with_content_type("application/json".into())
            .with_app_id("hearty".into());
        // Not mandatory: a requester that gave up is no error.
        let confirm = Self::publish_one(
            &live.publisher,
            String::new(),
            reply_to.to_owned(),
            false,
            &body,
            props,
        )
        .await?;
        settle_confirm(format!("answer to {reply_to}"), confirm).await
    }
}

/// Settles the confirm of request `id`: `Unroutable` if the broker returned
/// it (delivered nowhere: asking again, or elsewhere, does nothing twice).
/// But lapin hands a returned message to whichever confirm of the same
/// acknowledgement it meets first, so the return on this confirm may be
/// another request's, and this request's return may come on another's:
/// each is sent to the request it names (by correlation id), and a request
/// that learns nothing of the kind was delivered.
async fn delivered(
    id: &str,
    what: &str,
    waiters: &Waiters,
    sent: lapin::PublisherConfirm,
) -> Result<(), TransportError> {
    let returned = match tokio::time::timeout(CONFIRM_TIMEOUT, sent).await {
        Err(_) => return Err(TransportError::Timeout),
        Ok(Err(e)) => return Err(unavailable(e)),
        Ok(Ok(Confirmation::Nack(_))) => return Err(TransportError::Nacked(what.to_owned())),
        Ok(Ok(Confirmation::Ack(None) | Confirmation::NotRequested)) => return Ok(()),
        Ok(Ok(Confirmation::Ack(Some(returned)))) => returned,
    };
    let owner = returned
        .delivery
        .properties
        .correlation_id()
        .as_ref()
        .map(|c| c.as_str().to_owned());
    if owner.as_deref() == Some(id) {
        return Err(TransportError::Unroutable(what.to_owned()));
    }
    let other = owner.and_then(|o| waiters.lock().unwrap_or_else(|p| p.into_inner()).remove(&o));
    if let Some(other) = other {
        let _ = other.send(Reply::Returned);
    }
    Ok(())
}
