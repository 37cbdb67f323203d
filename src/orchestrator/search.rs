//! Which sagas an operator asks for: the filters of `GET /sagas`, in the
//! orchestrator's own words, executed by each owner against its partitions
//! and paged by a cursor (the last id seen), so a page across many owners
//! is each owner's next rows after that id, merged.

use serde::{Deserialize, Serialize};

use crate::domain::{CustomerId, FoodId, Millis, SagaId};
use crate::saga::machine::SagaState;

/// `[from, to)` in milliseconds since the epoch; either end open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeRange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Millis>,
}

impl TimeRange {
    pub fn is_open(&self) -> bool {
        self.from.is_none() && self.to.is_none()
    }
}

/// The sagas wanted: every filter given must hold (none: every saga).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SagaSearch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<SagaState>,
    /// The step the saga is busy with or stuck on (a step of the
    /// definition; a finished saga has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<CustomerId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub food: Option<FoodId>,
    #[serde(default, skip_serializing_if = "TimeRange::is_open")]
    pub created: TimeRange,
    #[serde(default, skip_serializing_if = "TimeRange::is_open")]
    pub updated: TimeRange,
    /// Sagas not finished (`Running`, `Compensating`, or `Failed` and
    /// waiting for an operator) whose last transition is at least this old,
    /// by the owner's clock (each attempt of a retried step is one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_longer_than_ms: Option<u64>,
    /// The cursor: only sagas with a larger id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<SagaId>,
}

impl SagaSearch {
    /// The latest `updated_at` a saga waiting longer than asked may have.
    pub fn waiting_since(&self, now: Millis) -> Option<Millis> {
        self.waiting_longer_than_ms
            .map(|ms| Millis(now.0.saturating_sub(i64::try_from(ms).unwrap_or(i64::MAX))))
    }
}

/// The states of a saga that still waits for something.
pub const WAITING: [SagaState; 3] = [
    SagaState::Running,
    SagaState::Compensating,
    SagaState::Failed,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_search_is_an_empty_object_on_the_wire() {
        assert_eq!(
            serde_json::to_string(&SagaSearch::default()).expect("json"),
            "{}"
        );
        let s = SagaSearch {
            step: Some("kitchen".into()),
            created: TimeRange {
                from: Some(Millis(5)),
                to: None,
            },
            ..SagaSearch::default()
        };
        let back: SagaSearch =
            serde_json::from_str(&serde_json::to_string(&s).expect("json")).expect("parse");
        assert_eq!(back, s);
    }

    #[test]
    fn waiting_is_measured_back_from_now() {
        let s = SagaSearch {
            waiting_longer_than_ms: Some(1_000),
            ..SagaSearch::default()
        };
        assert_eq!(s.waiting_since(Millis(5_000)), Some(Millis(4_000)));
        let huge = SagaSearch {
            waiting_longer_than_ms: Some(u64::MAX),
            ..SagaSearch::default()
        };
        assert_eq!(huge.waiting_since(Millis(5)), Some(Millis(5 - i64::MAX)));
    }
}
