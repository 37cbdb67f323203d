//! The format of the event log's entries (RabbitMQ only).
//!
//! Domain events reach the stream `<ns>.events.log` in batches: every
//! relay pass appends the events it publishes as one entry, a JSON array of
//! the events with their message properties. One stream entry per event
//! cost the broker as much as the rest of a saga's messages together (a
//! stream append and a delivery per event, about ten per saga); one per
//! batch costs it once per relay pass. Entries written before batches
//! (one event each, with its properties on the AMQP message) are still
//! read.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::Outgoing;

/// The AMQP `type` of a batch entry.
pub const BATCH_TYPE: &str = "hearty.events.batch";

/// The AMQP `type` of a catch-up marker: an entry without events that a
/// starting reader appends and waits to read back; once it has, its read
/// models hold everything logged before it started.
pub const MARKER_TYPE: &str = "hearty.events.marker";

/// Most events in one entry.
pub const MAX_BATCH: usize = 256;

/// One event of a batch, as written.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Written<'a> {
    message_id: &'a str,
    correlation_id: &'a str,
    #[serde(rename = "type")]
    message_type: &'a str,
    /// The event's envelope as published (JSON), or its bytes as a string
    /// when they are not JSON, so the reader dead-letters them as sent.
    event: &'a RawValue,
}

/// One event of a batch, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub message_id: String,
    pub correlation_id: String,
    pub message_type: String,
    /// The event's envelope, as published.
    pub body: Vec<u8>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Read<'a> {
    message_id: String,
    correlation_id: String,
    #[serde(rename = "type")]
    message_type: String,
    #[serde(borrow)]
    event: &'a RawValue,
}

/// The body of one batch entry holding `events` (in their order).
pub fn encode(events: &[&Outgoing]) -> Vec<u8> {
    let raw: Vec<Box<RawValue>> = events
        .iter()
        .map(|m| {
            serde_json::from_slice::<&RawValue>(&m.body)
                .map(RawValue::to_owned)
                .unwrap_or_else(|_| {
                    let text = String::from_utf8_lossy(&m.body);
                    RawValue::from_string(serde_json::Value::from(text).to_string())
                        .expect("a JSON string is JSON")
                })
        })
        .collect();
    let written: Vec<Written<'_>> = events
        .iter()
        .zip(&raw)
        .map(|(m, event)| Written {
            message_id: &m.message_id,
            correlation_id: &m.correlation_id,
            message_type: &m.message_type,
            event,
        })
        .collect();
    serde_json::to_vec(&written).expect("batch entries serialize")
}

/// The events of one batch entry; `Err` names why the entry is unreadable.
pub fn decode(body: &[u8]) -> Result<Vec<Logged>, String> {
    let read: Vec<Read<'_>> =
        serde_json::from_slice(body).map_err(|e| format!("unreadable event batch: {e}"))?;
    Ok(read
        .into_iter()
        .map(|r| {
            // A string stands for bytes that were not JSON.
            let body = match serde_json::from_str::<String>(r.event.get()) {
                Ok(text) => text.into_bytes(),
                Err(_) => r.event.get().as_bytes().to_vec(),
            };
            Logged {
                message_id: r.message_id,
                correlation_id: r.correlation_id,
                message_type: r.message_type,
                body,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::Route;

    fn event(id: &str, body: &[u8]) -> Outgoing {
        Outgoing {
            message_id: id.into(),
            correlation_id: "7".into(),
            message_type: "order.paid".into(),
            route: Route::Event("order.paid".into()),
            body: body.to_vec(),
        }
    }

    #[test]
    fn a_batch_reads_back_as_written() {
        let a = event("order.paid.7.v4", br#"{"schema":2,"type":"order.paid"}"#);
        let b = event("odd", b"not json \xff");
        let c = event("text", br#""a json string""#);
        let read = decode(&encode(&[&a, &b, &c])).expect("decodes");
        assert_eq!(read.len(), 3);
        assert_eq!(read[0].message_id, "order.paid.7.v4");
        assert_eq!(read[0].correlation_id, "7");
        assert_eq!(read[0].message_type, "order.paid");
        assert_eq!(read[0].body, a.body);
        assert_eq!(read[1].body, "not json \u{fffd}".as_bytes());
        // A JSON string event is not an event; it reads back as its text,
        // which the reader then refuses as an event like any other.
        assert_eq!(read[2].body, b"a json string");
    }

    #[test]
    fn an_unreadable_batch_is_an_error() {
        assert!(decode(b"{}").is_err());
        assert!(decode(b"[{\"messageId\":1}]").is_err());
    }
}
