//! The saga definition: a TOML file in `sagas/`, loaded and validated once at
//! start-up. Every validation error names the file and the line.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use serde::Deserialize;
use toml::Spanned;

use crate::domain::{OrderStatus, WorkerKind};

/// The breaker settings of one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerPolicy {
    pub consecutive_failures: u32,
    pub failure_ratio: f64,
    pub window: u32,
    pub min_calls: u32,
    pub cool_down: Duration,
}

/// A validated saga definition.
#[derive(Debug, Clone, PartialEq)]
pub struct SagaDefinition {
    /// Shown in `/sagas/{id}` together with the version.
    pub name: String,
    /// Bumped whenever the steps change meaning; stored with every saga.
    pub version: u32,
    /// The forward steps in order; compensation runs them in reverse.
    pub steps: Vec<StepDefinition>,
}

/// One step of a saga.
#[derive(Debug, Clone, PartialEq)]
pub struct StepDefinition {
    pub name: String,
    pub worker: WorkerKind,
    pub action: String,
    pub compensation: String,
    /// The order's status once this step is done, if it changes it.
    pub marks_order: Option<OrderStatus>,
    /// How long one attempt waits for the worker's first answer.
    pub timeout: Duration,
    /// False when earlier compensations need not wait for this one.
    pub compensation_blocks: bool,
    pub retry: RetryPolicy,
    pub compensation_retry: RetryPolicy,
    /// Turns new sagas away while this step's worker does not answer.
    pub circuit_breaker: Option<BreakerPolicy>,
}

/// Exponential backoff between attempts, computed with `backon`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Total attempts including the first; at least 1.
    pub max_attempts: u32,
    pub initial_delay: Duration,
    pub factor: f32,
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// The delay before attempt `attempt` (2 = the first retry). Jitter is left
    /// out on purpose so that the state machine stays deterministic.
    pub fn delay_before(&self, attempt: u32) -> Duration {
        if attempt <= 1 {
            return Duration::ZERO;
        }
        ExponentialBuilder::new()
            .with_min_delay(self.initial_delay)
            .with_factor(self.factor)
            .with_max_delay(self.max_delay)
            .without_max_times()
            .build()
            .nth(attempt as usize - 2)
            // Whole milliseconds: backon multiplies in floating point.
            .map(|d| Duration::from_millis(d.as_millis() as u64))
            .unwrap_or(self.max_delay)
    }
}

/// Why a saga file was refused.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    #[error("cannot read saga file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid saga file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl SagaDefinition {
    /// Reads and validates a saga file.
    pub fn load(path: &Path) -> Result<Self, DefinitionError> {
        let text = std::fs::read_to_string(path).map_err(|source| DefinitionError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|message| DefinitionError::Invalid {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses and validates the text of a saga file; the error names the line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let raw: RawSaga = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(0);
            format!("line {line}: {}", e.message())
        })?;
        let at = |span: std::ops::Range<usize>, msg: String| -> String {
            format!("line {}: {msg}", line_of(text, span.start))
        };

        if raw.name.get_ref().trim().is_empty() {
            return Err(at(raw.name.span(), "`name` must not be empty".into()));
        }
        if raw.steps.is_empty() {
            return Err("line 1: a saga needs at least one [[steps]] entry".into());
        }
        let mut names = HashSet::new();
        let mut steps = Vec::with_capacity(raw.steps.len());
        for s in raw.steps {
            let step = s.validate(&at)?;
            if !names.insert(step.name.clone()) {
                return Err(at(
                    s.name.span(),
                    format!("step `{}` is declared twice", step.name),
                ));
            }
            steps.push(step);
        }
        Ok(SagaDefinition {
            name: raw.name.into_inner(),
            version: raw.version,
            steps,
        })
    }

    /// The index of the step a worker runs, if any.
    pub fn step_of(&self, worker: WorkerKind) -> Option<usize> {
        self.steps.iter().position(|s| s.worker == worker)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSaga {
    name: Spanned<String>,
    version: u32,
    steps: Vec<RawStep>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    name: Spanned<String>,
    worker: Spanned<String>,
    action: Spanned<String>,
    compensation: Spanned<String>,
    marks_order: Option<Spanned<String>>,
    timeout: Spanned<String>,
    compensation_blocks: Option<bool>,
    retry: Spanned<RawRetry>,
    compensation_retry: Option<Spanned<RawRetry>>,
    circuit_breaker: Option<Spanned<RawBreaker>>,
}

impl RawStep {
    /// The step, checked; errors name their line (`at`).
    fn validate(
        &self,
        at: &impl Fn(std::ops::Range<usize>, String) -> String,
    ) -> Result<StepDefinition, String> {
        let name = self.name.get_ref().clone();
        let valid = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
        if name.is_empty() || !name.chars().all(valid) {
            return Err(at(
                self.name.span(),
                format!("step name `{name}` must be non-empty letters, digits, `_` or `-`"),
            ));
        }
        let (worker, action, compensation) = self.worker_and_actions(&name, at)?;
        let marks_order = match &self.marks_order {
            None => None,
            Some(m) => Some(
                m.get_ref()
                    .parse::<OrderStatus>()
                    .map_err(|e| at(m.span(), format!("step `{name}`: {e}")))?,
            ),
        };
        let timeout = parse_duration(self.timeout.get_ref())
            .map_err(|e| at(self.timeout.span(), format!("step `{name}`: timeout {e}")))?;
        if timeout.is_zero() {
            return Err(at(
                self.timeout.span(),
                format!("step `{name}`: timeout must be > 0"),
            ));
        }
        let retry = self
            .retry
            .get_ref()
            .validate()
            .map_err(|e| at(self.retry.span(), format!("step `{name}`: retry {e}")))?;
        let compensation_retry = match &self.compensation_retry {
            None => retry,
            Some(r) => r
                .get_ref()
                .validate()
                .map_err(|e| at(r.span(), format!("step `{name}`: compensation_retry {e}")))?,
        };
        let circuit_breaker = match &self.circuit_breaker {
            None => None,
            Some(b) => Some(
                b.get_ref()
                    .validate()
                    .map_err(|e| at(b.span(), format!("step `{name}`: circuit_breaker {e}")))?,
            ),
        };
        Ok(StepDefinition {
            name,
            worker,
            action: action.to_owned(),
            compensation: compensation.to_owned(),
            marks_order,
            timeout,
            compensation_blocks: self.compensation_blocks.unwrap_or(true),
            retry,
            compensation_retry,
            circuit_breaker,
        })
    }

    /// The step's worker, whose action and compensation it must name.
    fn worker_and_actions(
        &self,
        name: &str,
        at: &impl Fn(std::ops::Range<usize>, String) -> String,
    ) -> Result<(WorkerKind, &'static str, &'static str), String> {
        let worker: WorkerKind = self
            .worker
            .get_ref()
            .parse()
            .map_err(|e| at(self.worker.span(), format!("step `{name}`: {e}")))?;
        let (action, compensation) = crate::messages::actions_of(worker);
        if self.action.get_ref() != action {
            return Err(at(
                self.action.span(),
                format!(
                    "step `{name}`: the {worker} worker's action is `{action}`, not `{}`",
                    self.action.get_ref()
                ),
            ));
        }
        if self.compensation.get_ref() != compensation {
            return Err(at(
                self.compensation.span(),
                format!(
                    "step `{name}`: the {worker} worker's compensation is `{compensation}`, not `{}`",
                    self.compensation.get_ref()
                ),
            ));
        }
        Ok((worker, action, compensation))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBreaker {
    consecutive_failures: u32,
    failure_ratio: f64,
    window: u32,
    min_calls: u32,
    cool_down: String,
}

impl RawBreaker {
    fn validate(&self) -> Result<BreakerPolicy, String> {
        if self.consecutive_failures == 0 {
            return Err("consecutive_failures must be at least 1".into());
        }
        if !(self.failure_ratio > 0.0 && self.failure_ratio <= 1.0) {
            return Err("failure_ratio must be in (0, 1]".into());
        }
        if self.window == 0 || self.min_calls == 0 || self.min_calls > self.window {
            return Err("window and min_calls must be at least 1, min_calls at most window".into());
        }
        Ok(BreakerPolicy {
            consecutive_failures: self.consecutive_failures,
            failure_ratio: self.failure_ratio,
            window: self.window,
            min_calls: self.min_calls,
            cool_down: parse_duration(&self.cool_down)?,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    max_attempts: u32,
    initial_delay: String,
    factor: f32,
    max_delay: String,
}

impl RawRetry {
    fn validate(&self) -> Result<RetryPolicy, String> {
        if self.max_attempts == 0 {
            return Err("max_attempts must be at least 1".into());
        }
        if !(1.0..=10.0).contains(&self.factor) {
            return Err("factor must be between 1 and 10".into());
        }
        let initial_delay = parse_duration(&self.initial_delay)?;
        let max_delay = parse_duration(&self.max_delay)?;
        if max_delay < initial_delay {
            return Err("max_delay must not be below initial_delay".into());
        }
        Ok(RetryPolicy {
            max_attempts: self.max_attempts,
            initial_delay,
            factor: self.factor,
            max_delay,
        })
    }
}

/// Parses `250ms`, `5s`, `2m`.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{raw}` needs a unit: ms, s, m, h or d"))?;
    let (num, unit) = raw.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{raw}` is not a duration like 250ms, 5s or 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        "h" => Ok(Duration::from_secs(n.saturating_mul(3600))),
        "d" => Ok(Duration::from_secs(n.saturating_mul(86_400))),
        _ => Err(format!(
            "`{raw}` has unknown unit `{unit}` (use ms, s, m, h or d)"
        )),
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../../sagas/order_fulfilment.toml");

    #[test]
    fn shipped_definition_is_valid() {
        let def = SagaDefinition::parse(SHIPPED).expect("shipped saga is valid");
        let names: Vec<_> = def.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["pay", "kitchen", "delivery", "coupon"]);
        assert!(!def.steps[3].compensation_blocks);
        assert_eq!(def.steps[0].marks_order, Some(OrderStatus::Paid));
    }

    #[test]
    fn errors_name_the_line() {
        let bad = SHIPPED.replacen("worker = \"kitchen\"", "worker = \"chef\"", 1);
        let err = SagaDefinition::parse(&bad).expect_err("unknown worker");
        let line = SHIPPED
            .lines()
            .position(|l| l == "worker = \"kitchen\"")
            .expect("present")
            + 1;
        assert!(err.starts_with(&format!("line {line}:")), "{err}");
        assert!(err.contains("unknown worker `chef`"), "{err}");

        let bad = SHIPPED.replacen("timeout = \"5s\"", "timeout = \"5 parsecs\"", 1);
        let err = SagaDefinition::parse(&bad).expect_err("bad duration");
        assert!(err.contains("timeout"), "{err}");

        let err =
            SagaDefinition::parse("name = \"x\"\nversion = 1\nsteps = [\n").expect_err("syntax");
        assert!(err.starts_with("line "), "{err}");

        let bad = SHIPPED.replacen("name = \"kitchen\"", "name = \"pay\"", 1);
        let err = SagaDefinition::parse(&bad).expect_err("duplicate");
        assert!(err.contains("declared twice"), "{err}");
    }

    #[test]
    fn backoff_grows_and_caps() {
        let p = RetryPolicy {
            max_attempts: 10,
            initial_delay: Duration::from_millis(100),
            factor: 2.0,
            max_delay: Duration::from_millis(500),
        };
        assert_eq!(p.delay_before(1), Duration::ZERO);
        assert_eq!(p.delay_before(2), Duration::from_millis(100));
        assert_eq!(p.delay_before(3), Duration::from_millis(200));
        assert_eq!(p.delay_before(4), Duration::from_millis(400));
        assert_eq!(p.delay_before(9), Duration::from_millis(500));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5").is_err());
        assert_eq!(parse_duration("5h"), Ok(Duration::from_secs(5 * 3600)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert!(parse_duration("5w").is_err());
    }
}
