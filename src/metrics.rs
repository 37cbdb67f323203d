//! Process-wide counters, rendered in the Prometheus text format at `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Declares the counters once, with their help texts.
macro_rules! counters {
    ($($name:ident : $help:literal),+ $(,)?) => {
        /// Every counter of the process.
        pub struct Metrics { $(pub $name: AtomicU64,)+ pub sagas_in_flight: AtomicI64, pub deliveries_in_flight: AtomicI64, pub saga_actors_live: AtomicI64 }

        /// The process's metrics.
        pub static METRICS: Metrics = Metrics { $($name: AtomicU64::new(0),)+ sagas_in_flight: AtomicI64::new(0), deliveries_in_flight: AtomicI64::new(0), saga_actors_live: AtomicI64::new(0) };

        impl Metrics {
            /// The Prometheus text exposition of every metric.
            pub fn render(&self) -> String {
                let mut out = String::new();
                $(
                    let _ = writeln!(out, "# HELP hearty_{} {}", stringify!($name), $help);
                    let _ = writeln!(out, "# TYPE hearty_{} counter", stringify!($name));
                    let _ = writeln!(out, "hearty_{} {}", stringify!($name), self.$name.load(Ordering::Relaxed));
                )+
                let _ = writeln!(out, "# HELP hearty_sagas_in_flight Sagas Running or Compensating (as this orchestrator counts them since it started).");
                let _ = writeln!(out, "# TYPE hearty_sagas_in_flight gauge");
                let _ = writeln!(out, "hearty_sagas_in_flight {}", self.sagas_in_flight.load(Ordering::Relaxed));
                let _ = writeln!(out, "# HELP hearty_saga_actors_live Saga actors in memory (the rest are passivated in SQLite).");
                let _ = writeln!(out, "# TYPE hearty_saga_actors_live gauge");
                let _ = writeln!(out, "hearty_saga_actors_live {}", self.saga_actors_live.load(Ordering::Relaxed));
                let _ = writeln!(out, "# HELP hearty_deliveries_in_flight Messages received and not yet settled.");
                let _ = writeln!(out, "# TYPE hearty_deliveries_in_flight gauge");
                let _ = writeln!(out, "hearty_deliveries_in_flight {}", self.deliveries_in_flight.load(Ordering::Relaxed));
                out
            }
        }
    };
}

counters! {
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
    actor_restarts_total: "Actors restarted by their supervisor after a panic or fatal error.",
}

/// Adds one to a counter.
pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Deliveries being handled right now.
pub fn in_flight() -> i64 {
    METRICS.deliveries_in_flight.load(Ordering::Relaxed)
}

/// Counts a delivery as in flight until dropped.
pub struct InFlight;

impl InFlight {
    pub fn start() -> Self {
        METRICS.deliveries_in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        METRICS.deliveries_in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Upper bounds (milliseconds) of the step latency histogram buckets.
const BUCKETS_MS: [u64; 12] = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS_MS.len()],
    count: u64,
    sum_ms: u64,
}

/// Step latencies per (step, outcome): from a step's start to its answer,
/// or from a compensation's last attempt to its confirmation.
static STEP_LATENCY: std::sync::Mutex<
    std::collections::BTreeMap<(String, &'static str), Histogram>,
> = std::sync::Mutex::new(std::collections::BTreeMap::new());

/// Records one step outcome's latency.
pub fn observe_step(step: &str, outcome: &'static str, ms: u64) {
    let mut all = STEP_LATENCY.lock().unwrap_or_else(|p| p.into_inner());
    let h = all.entry((step.to_owned(), outcome)).or_default();
    for (i, le) in BUCKETS_MS.iter().enumerate() {
        if ms <= *le {
            h.counts[i] += 1;
        }
    }
    h.count += 1;
    h.sum_ms += ms;
}

/// The step latency histograms in the Prometheus text format.
pub fn render_step_latency() -> String {
    let all = STEP_LATENCY.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP hearty_step_duration_seconds Time from a step's command to its outcome, per step and outcome."
    );
    let _ = writeln!(out, "# TYPE hearty_step_duration_seconds histogram");
    for ((step, outcome), h) in all.iter() {
        for (i, le) in BUCKETS_MS.iter().enumerate() {
            let _ = writeln!(
                out,
                "hearty_step_duration_seconds_bucket{{step=\"{step}\",outcome=\"{outcome}\",le=\"{}\"}} {}",
                *le as f64 / 1000.0,
                h.counts[i]
            );
        }
        let _ = writeln!(
            out,
            "hearty_step_duration_seconds_bucket{{step=\"{step}\",outcome=\"{outcome}\",le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(
            out,
            "hearty_step_duration_seconds_sum{{step=\"{step}\",outcome=\"{outcome}\"}} {}",
            h.sum_ms as f64 / 1000.0
        );
        let _ = writeln!(
            out,
            "hearty_step_duration_seconds_count{{step=\"{step}\",outcome=\"{outcome}\"}} {}",
            h.count
        );
    }
    out
}
