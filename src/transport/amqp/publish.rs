//! Publishing: persistent messages with pipelined publisher confirms, the
//! event log's batch entries, dead letters with their reason.

use futures_util::future::join_all;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation};

use super::{AmqpTransport, CONFIRM_TIMEOUT, string_arg, unavailable};
use crate::transport::{DeadLetter, Outgoing, Route, TransportError, event_log};

impl AmqpTransport {
    pub(super) fn properties(m: &Outgoing, headers: Option<FieldTable>) -> BasicProperties {
        let mut props = BasicProperties::default()
            .with_message_id(m.message_id.clone().into())
            .with_correlation_id(m.correlation_id.clone().into())
            .with_type(m.message_type.clone().into())
            .with_content_type("application/json".into())
            .with_app_id("hearty".into())
            .with_delivery_mode(2)
            .with_timestamp(crate::domain::Millis::now().0.max(0) as u64 / 1000);
        if let Some(h) = headers {
            props = props.with_headers(h);
        }
        props
    }

    pub(super) async fn publish_one(
        channel: &Channel,
        exchange: String,
        routing_key: String,
        mandatory: bool,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<lapin::PublisherConfirm, TransportError> {
        let publish = channel.basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory,
                ..BasicPublishOptions::default()
            },
            body,
            props,
        );
        match tokio::time::timeout(CONFIRM_TIMEOUT, publish).await {
            Err(_) => Err(TransportError::Timeout),
            Ok(r) => r.map_err(unavailable),
        }
    }

    /// Publishes a dead letter (a copy with its reason) and waits for the confirm.
    pub(crate) async fn publish_dead_letter(
        &self,
        letter: DeadLetter,
    ) -> Result<(), TransportError> {
        let live = self
            .live()
            .ok_or_else(|| TransportError::Unavailable("reconnecting to RabbitMQ".into()))?;
        let exchange = self.inner.topology.dead_letter_exchange();
        let mut headers = FieldTable::default();
        headers.insert("x-hearty-reason".into(), string_arg(&letter.reason));
        let out = Outgoing {
            message_id: letter.message_id.unwrap_or_default(),
            correlation_id: letter.correlation_id.unwrap_or_default(),
            message_type: letter.message_type.unwrap_or_default(),
            route: Route::Reply(0),
            body: letter.body,
        };
        let props = Self::properties(&out, Some(headers));
        let confirm = Self::publish_one(
            &live.publisher,
            exchange.clone(),
            String::new(),
            true,
            &out.body,
            props,
        )
        .await?;
        settle_confirm(format!("dead letter via {exchange}"), confirm).await
    }

    /// Publishes a batch (see `Transport::publish`): every message back to
    /// back, then all confirms awaited together — pipelined, never one
    /// publish then one wait. The events also go to the event log, a batch
    /// per entry (see `event_log`): an event counts as published once both
    /// its own message and its entry are confirmed.
    pub(super) async fn publish_batch(
        &self,
        batch: Vec<Outgoing>,
    ) -> Vec<Result<(), TransportError>> {
        let Some(live) = self.live() else {
            let gone = || {
                Err(TransportError::Unavailable(
                    "reconnecting to RabbitMQ".into(),
                ))
            };
            return batch.iter().map(|_| gone()).collect();
        };
        let ch = &live.publisher;
        let epoch = *self.inner.epoch.lock().unwrap_or_else(|p| p.into_inner());
        let mut pending = Vec::with_capacity(batch.len());
        for m in &batch {
            let (exchange, key) = self.inner.topology.address(&m.route);
            // Commands and replies must reach a queue; events may have no
            // subscriber yet.
            let mandatory = !matches!(m.route, Route::Event(_));
            let what = format!("{} via {exchange}/{key}", m.message_id);
            let headers = epoch.filter(|_| mandatory).map(|e| {
                let mut h = FieldTable::default();
                h.insert(
                    super::EPOCH_HEADER.into(),
                    AMQPValue::LongLongInt(e.position()),
                );
                h.insert(
                    super::REGISTRY_HEADER.into(),
                    AMQPValue::LongLongInt(e.registry()),
                );
                h
            });
            let props = Self::properties(m, headers);
            let sent = Self::publish_one(ch, exchange, key, mandatory, &m.body, props).await;
            pending.push(settled(what, sent));
        }
        let logged = self.log_entries(ch, &batch).await;
        let (mut results, log_results) = futures_util::join!(join_all(pending), join_all(logged));
        for (members, r) in log_results {
            if let Err(e) = r {
                for i in members {
                    if results[i].is_ok() {
                        results[i] = Err(e.clone());
                    }
                }
            }
        }
        results
    }

    /// Appends the batch's events to the event log, up to
    /// `event_log::MAX_BATCH` per entry: each entry's confirm, with the
    /// indexes of its events in the batch.
    async fn log_entries(
        &self,
        ch: &Channel,
        batch: &[Outgoing],
    ) -> Vec<impl Future<Output = (Vec<usize>, Result<(), TransportError>)> + use<>> {
        let events: Vec<(usize, &Outgoing)> = batch
            .iter()
            .enumerate()
            .filter(|(_, m)| matches!(m.route, Route::Event(_)))
            .collect();
        let log = self.inner.topology.log_exchange();
        let mut logged = Vec::new();
        for chunk in events.chunks(event_log::MAX_BATCH) {
            let members: Vec<&Outgoing> = chunk.iter().map(|(_, m)| *m).collect();
            let entry = Outgoing {
                message_id: format!("log.{}+{}", members[0].message_id, members.len()),
                correlation_id: members[0].correlation_id.clone(),
                message_type: event_log::BATCH_TYPE.to_owned(),
                route: Route::Event(String::new()),
                body: event_log::encode(&members),
            };
            let what = format!("{} via {log}", entry.message_id);
            let props = Self::properties(&entry, None);
            let sent =
                Self::publish_one(ch, log.clone(), String::new(), true, &entry.body, props).await;
            let indexes: Vec<usize> = chunk.iter().map(|(i, _)| *i).collect();
            let confirmed = settled(what, sent);
            logged.push(async move { (indexes, confirmed.await) });
        }
        logged
    }
}

/// The broker's confirm of one publish, once it comes.
async fn settled(
    what: String,
    sent: Result<lapin::PublisherConfirm, TransportError>,
) -> Result<(), TransportError> {
    settle_confirm(what, sent?).await
}

pub(super) async fn settle_confirm(
    what: String,
    confirm: lapin::PublisherConfirm,
) -> Result<(), TransportError> {
    match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await {
        Err(_) => Err(TransportError::Timeout),
        Ok(Err(e)) => Err(unavailable(e)),
        Ok(Ok(Confirmation::Ack(None))) | Ok(Ok(Confirmation::NotRequested)) => Ok(()),
        Ok(Ok(Confirmation::Ack(Some(_)))) => Err(TransportError::Unroutable(what)),
        Ok(Ok(Confirmation::Nack(_))) => Err(TransportError::Nacked(what)),
    }
}
