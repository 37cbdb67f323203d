//! The two streams: the registry (who owns what) and the event log
//! (every domain event, in batches) — appends confirmed by the broker, and
//! reads from an offset.

use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::mpsc;

use super::publish::settle_confirm;
use super::subscribe::tokio_stream_from;
use super::{AmqpTransport, CONFIRM_TIMEOUT, int_header, string_arg, unavailable};
use crate::transport::{
    Outgoing, QueueName, Received, RegistryEntry, Route, TransportError, event_log,
};

/// How long reading the log's first entry waits before it calls the log
/// empty.
const LOG_HEAD_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

impl AmqpTransport {
    /// Appends a catch-up marker named `id` to the event log (see
    /// `event_log::MARKER_TYPE`) and waits for the broker's confirm.
    pub async fn append_log_marker(&self, id: &str) -> Result<(), TransportError> {
        let live = self
            .live()
            .ok_or_else(|| TransportError::Unavailable("reconnecting to RabbitMQ".into()))?;
        let log = self.inner.topology.log_exchange();
        let marker = Outgoing {
            message_id: id.to_owned(),
            correlation_id: String::new(),
            message_type: event_log::MARKER_TYPE.to_owned(),
            route: Route::Event(String::new()),
            body: b"[]".to_vec(),
        };
        let confirm = Self::publish_one(
            &live.publisher,
            log.clone(),
            String::new(),
            true,
            &marker.body,
            Self::properties(&marker, None),
        )
        .await?;
        settle_confirm(format!("{id} via {log}"), confirm).await
    }

    /// Reads the domain-event stream from offset `next` (kept up to date by
    /// the reader as it commits), again from there after a reconnection.
    pub fn read_event_log(
        &self,
        next: Arc<std::sync::atomic::AtomicI64>,
    ) -> BoxStream<'static, Received> {
        let (tx, rx) = mpsc::channel(usize::from(self.inner.settings.prefetch.max(1)));
        tokio::spawn(
            self.clone()
                .subscribe_forever(QueueName::EventLog, tx, Some(next)),
        );
        tokio_stream_from(rx)
    }

    /// The first entry of the event log at or after `from`, by offset and
    /// message id; `None` if none comes within [`LOG_HEAD_WAIT`].
    pub async fn read_log_entry(
        &self,
        from: crate::transport::LogFrom,
    ) -> Result<Option<(i64, String)>, TransportError> {
        use crate::transport::LogFrom;
        let offset = match from {
            LogFrom::Offset(o) => Some(o),
            _ => None,
        };
        let live = self
            .live()
            .ok_or_else(|| TransportError::Unavailable("reconnecting to RabbitMQ".into()))?;
        let (ch, mut consumer) = open_stream(
            &live,
            self.inner.topology.queue(QueueName::EventLog),
            from,
            1,
            "log-entry",
        )
        .await?;
        let deadline = tokio::time::Instant::now() + LOG_HEAD_WAIT;
        let found = loop {
            let next = tokio::time::timeout_at(deadline, consumer.next()).await;
            let d = match next {
                Err(_) | Ok(None) => break None,
                Ok(Some(d)) => d.map_err(unavailable)?,
            };
            let at = int_header(&d.properties, "x-stream-offset").ok_or_else(|| {
                TransportError::Unavailable(
                    "an entry of the event log came without its stream offset".into(),
                )
            })?;
            let _ = d.acker.ack(BasicAckOptions::default()).await;
            // A stream is read from the start of the chunk holding the
            // offset asked: what lies before it is skipped.
            if offset.is_some_and(|o| at < o) {
                continue;
            }
            let id = d
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.to_string())
                .unwrap_or_default();
            break Some((at, id));
        };
        let _ = ch.close(200, "log entry read".into()).await;
        Ok(found)
    }

    /// Publishes `record` to the registry stream and waits for its confirm.
    pub(crate) async fn append_registry(
        &self,
        record: &[u8],
        id: &str,
    ) -> Result<(), TransportError> {
        let live = self
            .live()
            .ok_or_else(|| TransportError::Unavailable("reconnecting to RabbitMQ".into()))?;
        let out = Outgoing {
            message_id: id.to_owned(),
            correlation_id: String::new(),
            message_type: "registry.record".into(),
            route: Route::Reply(0),
            body: record.to_vec(),
        };
        let exchange = self.inner.topology.registry_exchange();
        let confirm = Self::publish_one(
            &live.publisher,
            exchange.clone(),
            String::new(),
            true,
            &out.body,
            Self::properties(&out, None),
        )
        .await?;
        settle_confirm(format!("{id} via {exchange}"), confirm).await
    }

    /// Reads the registry stream from its first record up to and including
    /// the one with message id `until`, answering every record's body and
    /// position (its stream offset).
    pub(crate) async fn read_registry(
        &self,
        until: &str,
    ) -> Result<Vec<RegistryEntry>, TransportError> {
        let live = self
            .live()
            .ok_or_else(|| TransportError::Unavailable("reconnecting to RabbitMQ".into()))?;
        let read = async {
            let (ch, mut consumer) = open_stream(
                &live,
                self.inner.topology.registry(),
                crate::transport::LogFrom::First,
                500,
                "registry-reader",
            )
            .await?;
            let mut bodies = Vec::new();
            // Bounded per record, not for the whole stream: a long registry
            // still reads, a broker that stops answering does not hang.
            while let Some(d) = tokio::time::timeout(CONFIRM_TIMEOUT, consumer.next())
                .await
                .map_err(|_| TransportError::Timeout)?
            {
                let d = d.map_err(unavailable)?;
                let done = d
                    .properties
                    .message_id()
                    .as_ref()
                    .is_some_and(|m| m.as_str() == until);
                d.acker
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(unavailable)?;
                let offset = int_header(&d.properties, "x-stream-offset").ok_or_else(|| {
                    TransportError::Unavailable(
                        "a registry record came without its stream offset".into(),
                    )
                })?;
                bodies.push(RegistryEntry {
                    offset,
                    body: d.data,
                });
                if done {
                    let _ = ch.close(200, "registry read".into()).await;
                    return Ok(bodies);
                }
            }
            Err(TransportError::Unavailable(
                "the registry stream ended before its last record".into(),
            ))
        };
        read.await
    }
}

/// A consumer of `stream` from `from`, on a channel of its own: a stream is
/// read with a prefetch and acks (credit), from an offset.
async fn open_stream(
    live: &super::Live,
    stream: String,
    from: crate::transport::LogFrom,
    prefetch: u16,
    tag: &str,
) -> Result<(lapin::Channel, lapin::Consumer), TransportError> {
    use crate::transport::LogFrom;
    let ch = live
        .connection
        .create_channel()
        .await
        .map_err(unavailable)?;
    ch.basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(unavailable)?;
    let spec = match from {
        LogFrom::First => string_arg("first"),
        LogFrom::Offset(o) => lapin::types::AMQPValue::LongLongInt(o),
        LogFrom::Time(secs) => lapin::types::AMQPValue::Timestamp(secs),
    };
    let mut args = FieldTable::default();
    args.insert("x-stream-offset".into(), spec);
    let consumer = ch
        .basic_consume(
            stream.into(),
            format!("{tag}.{}", std::process::id()).into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await
        .map_err(unavailable)?;
    Ok((ch, consumer))
}
