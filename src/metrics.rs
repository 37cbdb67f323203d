//! Process-wide metrics in a `prometheus` registry, exposed in the
//! Prometheus text format at `/metrics`. The names are part of what
//! operators rely on: `hearty_<counter>_total`, `hearty_sagas_in_flight`,
//! `hearty_step_duration_seconds{step,outcome}`,
//! `hearty_circuit_breaker_state{step}`, `hearty_outbox_backlog{db}`, ...

use std::sync::LazyLock;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Declares the counters once, with their help texts.
macro_rules! metrics {
    ($($name:ident : $help:literal),+ $(,)?) => {
        /// Every metric of the process.
        pub struct Metrics {
            registry: Registry,
            $(pub $name: IntCounter,)+
            /// Sagas Running or Compensating, as this orchestrator counts them.
            pub sagas_in_flight: IntGauge,
            /// Messages received and not yet settled.
            pub deliveries_in_flight: IntGauge,
            /// Saga actors in memory.
            pub saga_actors_live: IntGauge,
            /// Step latencies per (step, outcome).
            pub step_duration: HistogramVec,
            /// 0 = closed, 1 = open, 2 = half-open, per step.
            pub breaker_state: IntGaugeVec,
            /// Each step's breaker per partition.
            pub breaker_partition_state: IntGaugeVec,
            /// Times each step's breaker opened.
            pub breaker_opened: IntCounterVec,
            /// Outbox rows committed and not yet confirmed, per database.
            pub outbox_backlog: IntGaugeVec,
            /// The allocator's figures, read at each scrape.
            pub allocator_allocated: IntGauge,
            pub allocator_resident: IntGauge,
            pub allocator_retained: IntGauge,
        }

        impl Metrics {
            fn new() -> prometheus::Result<Self> {
                let registry = Registry::new_custom(Some("hearty".into()), None)?;
                $(
                    let $name = IntCounter::new(stringify!($name), $help)?;
                    registry.register(Box::new($name.clone()))?;
                )+
                let gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
                    let g = IntGauge::new(name, help)?;
                    registry.register(Box::new(g.clone()))?;
                    Ok(g)
                };
                let step_duration = HistogramVec::new(
                    HistogramOpts::new(
                        "step_duration_seconds",
                        "Time from a step's command to its outcome, per step and outcome.",
                    )
                    .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
                    &["step", "outcome"],
                )?;
                registry.register(Box::new(step_duration.clone()))?;
                let breaker_state = IntGaugeVec::new(
                    Opts::new(
                        "circuit_breaker_state",
                        "The step's worst breaker over its partitions: 0 = closed, 1 = open, 2 = half-open.",
                    ),
                    &["step"],
                )?;
                registry.register(Box::new(breaker_state.clone()))?;
                let breaker_partition_state = IntGaugeVec::new(
                    Opts::new(
                        "circuit_breaker_partition_state",
                        "The step's breaker for one partition: 0 = closed, 1 = open, 2 = half-open.",
                    ),
                    &["step", "partition"],
                )?;
                registry.register(Box::new(breaker_partition_state.clone()))?;
                let breaker_opened = IntCounterVec::new(
                    Opts::new("circuit_breaker_opened_total", "Times the breaker opened."),
                    &["step"],
                )?;
                registry.register(Box::new(breaker_opened.clone()))?;
                let outbox_backlog = IntGaugeVec::new(
                    Opts::new(
                        "outbox_backlog",
                        "Messages committed and not yet confirmed by the broker.",
                    ),
                    &["db"],
                )?;
                registry.register(Box::new(outbox_backlog.clone()))?;
                Ok(Metrics {
                    $($name,)+
                    sagas_in_flight: gauge(
                        "sagas_in_flight",
                        "Sagas Running or Compensating (as this orchestrator counts them since it started).",
                    )?,
                    deliveries_in_flight: gauge(
                        "deliveries_in_flight",
                        "Messages received and not yet settled.",
                    )?,
                    saga_actors_live: gauge(
                        "saga_actors_live",
                        "Saga actors in memory (the rest are passivated in SQLite).",
                    )?,
                    allocator_allocated: gauge(
                        "allocator_allocated_bytes",
                        "Bytes the process has allocated and not freed (jemalloc).",
                    )?,
                    allocator_resident: gauge(
                        "allocator_resident_bytes",
                        "Bytes in pages the allocator keeps resident, freed ones not yet handed back included (jemalloc).",
                    )?,
                    allocator_retained: gauge(
                        "allocator_retained_bytes",
                        "Bytes of address space the allocator keeps mapped for reuse, not resident (jemalloc).",
                    )?,
                    step_duration,
                    breaker_state,
                    breaker_partition_state,
                    breaker_opened,
                    outbox_backlog,
                    registry,
                })
            }
        }
    };
}

metrics! {
    sagas_started_total: "Sagas started.",
    sagas_completed_total: "Sagas whose forward steps all completed.",
    sagas_compensated_total: "Sagas fully compensated.",
    sagas_failed_total: "Sagas stuck after a compensation exhausted its retries.",
    saga_transitions_total: "Persisted saga transitions.",
    replies_ignored_total: "Duplicate or late replies that changed nothing.",
    worker_commands_total: "Worker commands applied or answered from the inbox.",
    dead_letters_total: "Messages moved to the dead-letter queue.",
    redeliveries_total: "Deliveries the broker marked as redelivered.",
    events_projected_total: "Domain events applied to a read model.",
    event_log_gaps_total: "Times the event log no longer held entries a read model still needed (its retention deleted them).",
    view_snapshots_written_total: "Snapshots of the read models written to the shared snapshot folder.",
    http_requests_total: "HTTP requests this process received, besides /health/* and /metrics.",
    http_requests_refused_total: "HTTP requests refused before a handler: unauthenticated, forbidden or over a rate limit.",
    http_connections_refused_total: "TCP connections shut at once: over the total or per-address cap.",
    actor_restarts_total: "Actors restarted by their supervisor after a panic or fatal error.",
    owner_unavailable_total: "Requests answered 503 owner_unavailable: the owner of a partition could not be asked or could not answer.",
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    // Names and help texts are literals checked by `renders_every_metric`:
    // registering them cannot fail.
    Metrics::new().unwrap_or_else(|e| panic!("metrics registry: {e}"))
});

/// Adds one to a counter.
pub fn inc(counter: &IntCounter) {
    counter.inc();
}

/// The Prometheus text exposition of every metric.
pub fn render() -> String {
    if let Some(u) = crate::allocator::usage() {
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        METRICS.allocator_allocated.set(gauge(u.allocated));
        METRICS.allocator_resident.set(gauge(u.resident));
        METRICS.allocator_retained.set(gauge(u.retained));
    }
    let mut out = Vec::new();
    // Encoding gathered families into a Vec cannot fail.
    let _ = TextEncoder::new().encode(&METRICS.registry.gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// Deliveries being handled right now.
pub fn in_flight() -> i64 {
    METRICS.deliveries_in_flight.get()
}

/// Counts a delivery as in flight until dropped.
pub struct InFlight;

impl InFlight {
    pub fn start() -> Self {
        METRICS.deliveries_in_flight.inc();
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        METRICS.deliveries_in_flight.dec();
    }
}

/// Records one step outcome's latency: from a step's start to its answer,
/// or from a compensation's last attempt to its confirmation.
pub fn observe_step(step: &str, outcome: &'static str, ms: u64) {
    METRICS
        .step_duration
        .with_label_values(&[step, outcome])
        .observe(ms as f64 / 1000.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_metric() {
        inc(&METRICS.sagas_started_total);
        observe_step("pay", "done", 12);
        METRICS.breaker_state.with_label_values(&["pay"]).set(0);
        let text = render();
        for line in [
            "# TYPE hearty_sagas_started_total counter",
            "# TYPE hearty_sagas_in_flight gauge",
            "# TYPE hearty_step_duration_seconds histogram",
            "hearty_step_duration_seconds_bucket{outcome=\"done\",step=\"pay\",le=\"0.025\"}",
            "hearty_circuit_breaker_state{step=\"pay\"} 0",
        ] {
            assert!(text.contains(line), "missing `{line}` in:\n{text}");
        }
    }
}
