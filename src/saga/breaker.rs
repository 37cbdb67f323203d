//! A circuit breaker per saga step (configured in the saga file) and
//! partition: when the step's worker stops answering in time for a
//! partition, new sagas are turned away from that partition at once instead
//! of piling up, while the other partitions (other owners) go on.
//!
//! Closed → Open after `consecutive_failures` timeouts in a row, or once at
//! least `min_calls` of the last `window` outcomes are in and `failure_ratio`
//! of them failed. Open → HalfOpen after `cool_down`: one trial goes through.
//! The trial's success closes the breaker; its failure opens it again.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use crate::domain::Millis;
use crate::partition::{Partition, PartitionCount};
use crate::saga::definition::BreakerPolicy;

/// The breakers of a saga definition, by step index, then by partition.
#[derive(Debug, Clone, Default)]
pub struct Breakers {
    count: PartitionCount,
    steps: std::sync::Arc<Vec<Vec<CircuitBreaker>>>,
}

impl Breakers {
    pub fn for_definition(
        def: &crate::saga::definition::SagaDefinition,
        count: crate::partition::PartitionCount,
    ) -> Self {
        let steps = def
            .steps
            .iter()
            .map(|s| match s.circuit_breaker {
                Some(policy) => count
                    .all()
                    .map(|p| CircuitBreaker::new(&s.name, p.index(), policy))
                    .collect(),
                None => Vec::new(),
            })
            .collect();
        Breakers {
            count,
            steps: std::sync::Arc::new(steps),
        }
    }

    /// Step `i`'s breaker for the sagas of `partition`.
    pub fn step(&self, i: usize, partition: Partition) -> Option<&CircuitBreaker> {
        self.steps.get(i)?.get(usize::from(partition.index()))
    }

    /// Step `i`'s breaker for the saga (order) with this id.
    pub fn of_saga(&self, i: usize, id: i64) -> Option<&CircuitBreaker> {
        self.step(i, self.count.of(id))
    }

    /// The breaker guarding new sagas of `partition`: the first step's.
    pub fn admission(&self, partition: Partition) -> Option<&CircuitBreaker> {
        self.step(0, partition)
    }

    /// Every breaker, each step's partitions in order.
    pub fn iter(&self) -> impl Iterator<Item = &CircuitBreaker> {
        self.steps.iter().flatten()
    }

    /// Each step's worst state over its partitions (open, then half-open,
    /// then closed), for readiness and the per-step gauge.
    pub fn worst(&self) -> Vec<(String, BreakerState)> {
        self.steps
            .iter()
            .filter_map(|partitions| {
                let first = partitions.first()?;
                let worst =
                    partitions
                        .iter()
                        .map(CircuitBreaker::state)
                        .max_by_key(|s| match s {
                            BreakerState::Closed => 0,
                            BreakerState::HalfOpen => 1,
                            BreakerState::Open => 2,
                        })?;
                Some((first.step.clone(), worst))
            })
            .collect()
    }
}

/// What one event tells a step's breaker, judged on the saga before it.
pub fn observe(
    saga: &crate::saga::machine::Saga,
    event: &crate::saga::machine::Event,
) -> Option<(usize, bool)> {
    use crate::messages::ReplyOutcome;
    use crate::saga::machine::{Effect, Event, StepStatus};
    let waiting = |i: usize| {
        saga.steps
            .get(i)
            .is_some_and(|s| s.status == StepStatus::Running && s.effect == Effect::Unknown)
    };
    match event {
        Event::Timeout { step, attempt } => {
            (waiting(*step) && saga.steps[*step].attempts == *attempt).then_some((*step, true))
        }
        Event::Reply { step, outcome, .. } => {
            let i = saga.steps.iter().position(|s| &s.name == step)?;
            let answered = matches!(
                outcome,
                ReplyOutcome::Accepted | ReplyOutcome::Done | ReplyOutcome::Failed { .. }
            );
            (answered && waiting(i)).then_some((i, false))
        }
        _ => None,
    }
}

/// The breaker's state (exported as 0, 1, 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "Closed",
            BreakerState::Open => "Open",
            BreakerState::HalfOpen => "HalfOpen",
        }
    }

    pub fn gauge(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    /// Recent outcomes, `true` = failure.
    recent: VecDeque<bool>,
    consecutive: u32,
    opened_at: Millis,
    /// When the half-open trial was let through, while it is out. A lease:
    /// a trial that never reports (its saga abandoned or cancelled before
    /// the step answered) lapses after `cool_down`, so one lost trial can
    /// never hold the breaker half-open for good.
    trial_since: Option<Millis>,
    times_opened: u64,
}

/// One step's breaker for one partition. Shared by the placing of orders
/// (which asks) and the saga actors (which report outcomes).
#[derive(Debug)]
pub struct CircuitBreaker {
    pub step: String,
    pub partition: u16,
    policy: BreakerPolicy,
    inner: Mutex<Inner>,
}

impl CircuitBreaker {
    pub fn new(step: &str, partition: u16, policy: BreakerPolicy) -> Self {
        CircuitBreaker {
            step: step.to_owned(),
            partition,
            policy,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                recent: VecDeque::new(),
                consecutive: 0,
                opened_at: Millis(0),
                trial_since: None,
                times_opened: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The breaker's data stays consistent even if a holder panicked.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// May a new saga start? `Err(wait)` = no, try again after `wait`.
    pub fn try_acquire(&self, now: Millis) -> Result<(), Duration> {
        let mut b = self.lock();
        match b.state {
            BreakerState::Closed => Ok(()),
            BreakerState::Open => {
                let reopen = b.opened_at.plus(self.policy.cool_down);
                if now < reopen {
                    return Err(reopen.until_from(now));
                }
                b.state = BreakerState::HalfOpen;
                b.trial_since = Some(now);
                tracing::info!(step = %self.step, partition = self.partition, "circuit half-open: letting one trial through");
                Ok(())
            }
            BreakerState::HalfOpen => match b.trial_since {
                Some(since) if now < since.plus(self.policy.cool_down) => {
                    Err(since.plus(self.policy.cool_down).until_from(now))
                }
                _ => {
                    b.trial_since = Some(now);
                    Ok(())
                }
            },
        }
    }

    /// Gives back the trial permit taken at `since` (by `try_acquire(since)`)
    /// that was not used — and only that one: a later trial (this one's
    /// lapsed) keeps its permit.
    pub fn release(&self, since: Millis) {
        let mut b = self.lock();
        if b.state == BreakerState::HalfOpen && b.trial_since == Some(since) {
            b.trial_since = None;
        }
    }

    /// Reports one outcome of the step: `failed` = it did not answer in time.
    pub fn record(&self, failed: bool, now: Millis) {
        let mut b = self.lock();
        b.recent.push_back(failed);
        while b.recent.len() > self.policy.window as usize {
            b.recent.pop_front();
        }
        b.consecutive = if failed { b.consecutive + 1 } else { 0 };
        match (b.state, failed) {
            (BreakerState::HalfOpen, false) => {
                b.state = BreakerState::Closed;
                b.recent.clear();
                b.trial_since = None;
                tracing::info!(step = %self.step, partition = self.partition, "circuit closed");
            }
            (BreakerState::HalfOpen, true) => self.open(&mut b, now),
            (BreakerState::Closed, true) => {
                let calls = b.recent.len() as u32;
                let failures = b.recent.iter().filter(|f| **f).count() as f64;
                let ratio_trips = calls >= self.policy.min_calls
                    && failures / f64::from(calls.max(1)) >= self.policy.failure_ratio;
                if b.consecutive >= self.policy.consecutive_failures || ratio_trips {
                    self.open(&mut b, now);
                }
            }
            _ => {}
        }
    }

    fn open(&self, b: &mut Inner, now: Millis) {
        b.state = BreakerState::Open;
        b.opened_at = now;
        b.trial_since = None;
        b.times_opened += 1;
        crate::metrics::inc(
            &crate::metrics::METRICS
                .breaker_opened
                .with_label_values(&[&self.step]),
        );
        tracing::warn!(step = %self.step, partition = self.partition, "circuit open: turning new orders of this partition away");
    }

    pub fn state(&self) -> BreakerState {
        self.lock().state
    }

    pub fn times_opened(&self) -> u64 {
        self.lock().times_opened
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            consecutive_failures: 3,
            failure_ratio: 0.5,
            window: 10,
            min_calls: 6,
            cool_down: Duration::from_secs(5),
        }
    }

    #[test]
    fn opens_on_consecutive_failures_then_half_opens_and_closes() {
        let b = CircuitBreaker::new("pay", 0, policy());
        let t = Millis(1_000_000);
        for _ in 0..2 {
            b.record(true, t);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.record(true, t);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(
            b.try_acquire(t.plus(Duration::from_secs(1))),
            Err(Duration::from_secs(4))
        );
        assert_eq!(b.try_acquire(t.plus(Duration::from_secs(5))), Ok(()));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(
            b.try_acquire(t.plus(Duration::from_secs(5))).is_err(),
            "one trial at a time"
        );
        b.record(false, t.plus(Duration::from_secs(6)));
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.times_opened(), 1);
    }

    #[test]
    fn a_failed_trial_opens_it_again() {
        let b = CircuitBreaker::new("pay", 0, policy());
        let t = Millis(1_000_000);
        for _ in 0..3 {
            b.record(true, t);
        }
        let later = t.plus(Duration::from_secs(5));
        assert!(b.try_acquire(later).is_ok());
        b.record(true, later);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.try_acquire(later.plus(Duration::from_secs(1))).is_err());
    }

    /// Issue 10 (suspected case): a trial whose saga never reports (never
    /// delivered, abandoned, cancelled) must not hold the breaker half-open
    /// for ever.
    #[test]
    fn a_lost_trial_lapses_after_the_cool_down() {
        let b = CircuitBreaker::new("pay", 0, policy());
        let t = Millis(1_000_000);
        for _ in 0..3 {
            b.record(true, t);
        }
        let trial = t.plus(Duration::from_secs(5));
        assert!(b.try_acquire(trial).is_ok(), "the trial goes through");
        // ...and is never heard of again.
        assert!(b.try_acquire(trial.plus(Duration::from_secs(4))).is_err());
        assert!(
            b.try_acquire(trial.plus(Duration::from_secs(5))).is_ok(),
            "a new trial once the lost one lapsed"
        );
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.record(false, trial.plus(Duration::from_secs(6)));
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn opens_on_a_failure_ratio() {
        let b = CircuitBreaker::new("pay", 0, policy());
        let t = Millis(1_000_000);
        // Alternating: never 3 in a row, but 50% of 6 calls.
        for i in 0..6 {
            b.record(i % 2 == 1, t);
        }
        assert_eq!(b.state(), BreakerState::Open);
    }
}
