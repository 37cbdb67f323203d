//! The event log reader: every domain event, kept in a RabbitMQ stream,
//! read once for all of a process's read models from the earliest of their
//! positions. Each batch of events is applied to each read model that
//! projects some of them, together with that read model's new position, in
//! one transaction per read model; then the batch is acked. A read model
//! skips what lies before its own position. So a new replica replays the
//! whole log, and a restarted one goes on where each read model committed,
//! applying nothing twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};

use super::{LOG_BATCH, POSITION_EVERY, binds, commit_batch, log_position};
use crate::domain::ViewKind;
use crate::events::DomainEvent;
use crate::metrics::{METRICS, inc};
use crate::shutdown::Shutdown;
use crate::storage::Db;
use crate::transport::event_log::{self, Logged};
use crate::transport::{DeadLetter, EventLog, Received, Transport};

/// Reads the event log into `models` until shutdown.
///
/// `caught_up` is set once the reader has read back a marker it appended
/// to the log when it started: from then on its read models hold
/// everything logged before the process started (the process is ready).
pub async fn consume_log(
    models: Vec<(ViewKind, Db)>,
    transport: Arc<dyn Transport>,
    shutdown: Shutdown,
    caught_up: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let Some(log) = transport.event_log() else {
        anyhow::bail!("this transport keeps no event log");
    };
    let marker = format!(
        "catch-up.{}.{:016x}",
        std::process::id(),
        rand::random::<u64>()
    );
    append_marker(transport.clone(), marker.clone());
    let mut positions = Vec::new();
    for (kind, db) in models {
        let from = log_position(&db).await;
        positions.push(Model {
            kind,
            db,
            from,
            saved_at: Instant::now(),
        });
    }
    let start = positions.iter().map(|m| m.from).min().unwrap_or(0);
    let mut reader = Reader {
        log,
        models: positions,
        next: Arc::new(AtomicI64::new(start)),
        marker,
        anchor: None,
        caught_up,
        shutdown,
    };
    reader.run().await
}

/// Appends this reader's catch-up marker, until the broker confirms it
/// (it may be reconnecting).
fn append_marker(transport: Arc<dyn Transport>, marker: String) {
    actix::spawn(async move {
        let Some(log) = transport.event_log() else {
            return;
        };
        let mut failures = 0u32;
        while let Err(e) = log.append_marker(&marker).await {
            failures += 1;
            if failures.is_multiple_of(20) {
                tracing::warn!(error = %e, failures, "cannot append the catch-up marker; not ready until it is");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
}

/// One read model as the reader feeds it.
struct Model {
    kind: ViewKind,
    db: Db,
    /// The offset of its next event (committed with what it applied).
    from: i64,
    /// When it last recorded its position.
    saved_at: Instant,
}

struct Reader<'a> {
    log: &'a dyn EventLog,
    models: Vec<Model>,
    /// The offset of the next entry to read (after a reconnection too).
    next: Arc<AtomicI64>,
    /// The id of this process's catch-up marker.
    marker: String,
    /// The last entry read (recorded with the positions).
    anchor: Option<super::Anchor>,
    caught_up: Arc<AtomicBool>,
    shutdown: Shutdown,
}

/// What the reader waits for next.
enum Next {
    Batch(Vec<Received>),
    /// Nothing came for a while.
    Idle,
    Shutdown,
}

/// What one batch of the log came to.
struct Sorted {
    /// The events each model projects, in the models' order.
    per_model: Vec<Vec<DomainEvent>>,
    /// Deliveries handled, to ack once the models committed.
    settled: Vec<Received>,
    /// The offset of the last entry not read before.
    last: Option<i64>,
    /// The last entry with a message id, by offset and id.
    anchor: Option<super::Anchor>,
    /// This reader's marker was in the batch.
    marker_read: bool,
}

impl Reader<'_> {
    /// Until shutdown (or the log's end); an error when the log no longer
    /// holds the entries the read models need next (retention deleted them
    /// while this process was behind: a restart restores a snapshot).
    async fn run(&mut self) -> anyhow::Result<()> {
        let mut deliveries = self.log.read(self.next.clone());
        loop {
            let batch = match self.next_batch(&mut deliveries).await {
                Next::Batch(batch) => batch,
                Next::Idle => {
                    self.catch_up_positions().await;
                    continue;
                }
                Next::Shutdown => return Ok(()),
            };
            let Some(sorted) = self.sort(batch).await? else {
                return Ok(());
            };
            self.commit(sorted).await;
        }
    }

    /// The log is quiet: every read model records that it has read up to
    /// here, so its position (which snapshots and restarts go by) does not
    /// lag behind the log for want of events of its own.
    async fn catch_up_positions(&mut self) {
        let next = self.next.load(Ordering::SeqCst);
        for m in &mut self.models {
            if m.from < next {
                commit_batch(m.kind, &m.db, Vec::new(), next, self.anchor.clone()).await;
                m.from = next;
                m.saved_at = Instant::now();
            }
        }
    }

    /// The deliveries at hand (at least one, waiting for it), up to
    /// [`LOG_BATCH`]; `Idle` when none came for [`POSITION_EVERY`].
    async fn next_batch(&mut self, deliveries: &mut BoxStream<'static, Received>) -> Next {
        let first = tokio::select! {
            _ = self.shutdown.recv() => return Next::Shutdown,
            () = tokio::time::sleep(POSITION_EVERY) => return Next::Idle,
            d = deliveries.next() => match d {
                Some(d) => d,
                None => return Next::Shutdown,
            },
        };
        let mut batch = vec![first];
        while batch.len() < LOG_BATCH {
            match deliveries.next().now_or_never() {
                Some(Some(d)) => batch.push(d),
                _ => break,
            }
        }
        Next::Batch(batch)
    }

    /// Sorts a batch's events to the models that project them; `None` if
    /// shut down while dead-lettering one. An entry past the expected one
    /// whose predecessors the log no longer holds is a gap (retention
    /// deleted them before they were applied): an error.
    async fn sort(&mut self, batch: Vec<Received>) -> anyhow::Result<Option<Sorted>> {
        let mut sorted = Sorted {
            per_model: self.models.iter().map(|_| Vec::new()).collect(),
            settled: Vec::new(),
            last: None,
            anchor: None,
            marker_read: false,
        };
        let next = self.next.load(Ordering::SeqCst);
        let mut expected = next;
        for d in batch {
            let Some(offset) = d.stream_offset else {
                sorted.settled.push(d);
                continue;
            };
            if offset > expected && self.lost(expected).await? {
                inc(&METRICS.event_log_gaps_total);
                anyhow::bail!(
                    "the event log lost entries from {expected} on before this process's read \
                     models applied them (its retention deleted them); restarting restores a \
                     snapshot (HEARTY_SNAPSHOT_DIR)"
                );
            }
            expected = expected.max(offset + 1);
            let is_marker = d.message_type.as_deref() == Some(event_log::MARKER_TYPE);
            // This reader's own marker counts wherever it is: a log behind
            // the read models' positions (recreated under them) must not
            // keep the process from ever being ready.
            if is_marker && d.message_id.as_deref() == Some(self.marker.as_str()) {
                sorted.marker_read = true;
                if offset < next {
                    tracing::warn!(
                        offset,
                        "the event log ends before this process's read models' positions: \
                         was it recreated? (start on new folders to rebuild them)"
                    );
                }
            }
            // Read again after a reconnection: already handled.
            if offset >= next {
                sorted.last = Some(offset);
                if let Some(id) = &d.message_id {
                    sorted.anchor = Some((offset, id.clone()));
                }
                if !is_marker {
                    let entries = log_entries(&d).map_err(|reason| (as_logged(&d), reason));
                    if self
                        .entry(entries, offset, &mut sorted.per_model)
                        .await
                        .is_none()
                    {
                        return Ok(None);
                    }
                }
            }
            sorted.settled.push(d);
        }
        Ok(Some(sorted))
    }

    /// Whether the log no longer holds offset `expected` (and so lost
    /// entries this reader needed): the broker skips offsets of its own
    /// bookkeeping, so a skip is a loss only when the log's first retained
    /// entry lies past `expected` too. Asked again while the broker does
    /// not answer; an error if it never does (better to stop than to
    /// guess).
    async fn lost(&self, expected: i64) -> anyhow::Result<bool> {
        let mut last = None;
        for _ in 0..120 {
            match self.log.head().await {
                Ok(Some(head)) => return Ok(!crate::transport::stream_holds_from(expected, head)),
                Ok(None) => last = Some("no entry came".to_owned()),
                Err(e) => last = Some(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        anyhow::bail!(
            "cannot tell whether the event log still holds offset {expected}: {}",
            last.unwrap_or_default()
        )
    }

    /// Sorts the events of one entry of the log; one that does not decode
    /// (or a whole entry that is no readable batch) is copied to the
    /// dead-letter queue, never defaulted into a read model (the log keeps
    /// it). `None` if shut down meanwhile.
    async fn entry(
        &mut self,
        entries: Result<Vec<Logged>, (Logged, String)>,
        offset: i64,
        per_model: &mut [Vec<DomainEvent>],
    ) -> Option<()> {
        let entries = match entries {
            Ok(entries) => entries,
            Err((whole, reason)) => return self.dead_letter(whole, &reason).await,
        };
        for entry in entries {
            let wanted: Vec<usize> = (0..self.models.len())
                .filter(|&i| {
                    let m = &self.models[i];
                    offset >= m.from && binds(m.kind, &entry.message_type)
                })
                .collect();
            if wanted.is_empty() {
                continue;
            }
            match DomainEvent::decode(&entry.body) {
                Ok(event) => wanted
                    .into_iter()
                    .for_each(|i| per_model[i].push(event.clone())),
                Err(reason) => self.dead_letter(entry, &reason).await?,
            }
        }
        Some(())
    }

    /// Commits each model's events with its new position, then acks the
    /// batch. Ready only once the events before the marker are committed.
    async fn commit(&mut self, sorted: Sorted) {
        if sorted.anchor.is_some() {
            self.anchor = sorted.anchor;
        }
        if let Some(last) = sorted.last {
            for (m, events) in self.models.iter_mut().zip(sorted.per_model) {
                // A read model with nothing in the batch still records where
                // it is now and then, so a restart does not replay the log
                // for it.
                let stale = m.saved_at.elapsed() > POSITION_EVERY && last + 1 > m.from;
                if !events.is_empty() || stale {
                    commit_batch(m.kind, &m.db, events, last + 1, self.anchor.clone()).await;
                    m.from = last + 1;
                    m.saved_at = Instant::now();
                }
            }
            self.next.store(last + 1, Ordering::SeqCst);
        }
        if sorted.marker_read && !self.caught_up.swap(true, Ordering::SeqCst) {
            tracing::info!("read models caught up with the event log");
        }
        ack_batch(sorted.settled).await;
    }

    /// Puts a copy of one event of the log (or of a whole entry), with its
    /// reason, in the dead-letter queue; tried again until the broker
    /// confirms it, since the reader's position moves past it afterwards.
    /// `None`: shut down first.
    async fn dead_letter(&mut self, entry: Logged, reason: &str) -> Option<()> {
        inc(&METRICS.dead_letters_total);
        tracing::warn!(msg = %entry.message_id, reason, "dead-lettering an event of the log");
        let letter = DeadLetter {
            message_id: Some(entry.message_id),
            correlation_id: Some(entry.correlation_id),
            message_type: Some(entry.message_type),
            body: entry.body,
            reason: reason.to_owned(),
        };
        loop {
            match self.log.dead_letter(letter.clone()).await {
                Ok(()) => return Some(()),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot dead-letter an event of the log; trying again");
                    tokio::select! {
                        _ = self.shutdown.recv() => return None,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }
}

/// The events of one entry of the log: a batch, or (written before
/// batches) one event with its properties on the message.
fn log_entries(d: &Received) -> Result<Vec<Logged>, String> {
    if d.message_type.as_deref() == Some(event_log::BATCH_TYPE) {
        return event_log::decode(&d.body);
    }
    Ok(vec![as_logged(d)])
}

/// An entry of the log taken whole, with its message's properties.
fn as_logged(d: &Received) -> Logged {
    Logged {
        message_id: d.message_id.clone().unwrap_or_default(),
        correlation_id: d.correlation_id.clone().unwrap_or_default(),
        message_type: d.message_type.clone().unwrap_or_default(),
        body: d.body.clone(),
    }
}

/// Acks a batch of one consumer in one frame (the last, `multiple`).
async fn ack_batch(mut settled: Vec<Received>) {
    if let Some(last) = settled.pop() {
        for d in settled {
            d.covered();
        }
        let _ = last.ack_through().await;
    }
}
