//! Time as milliseconds since the Unix epoch.

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch: the one clock format of storage and wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Millis(pub i64);

impl Millis {
    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            // The clock is after 1970 on every machine this runs on.
            .unwrap_or_default();
        Millis(d.as_millis() as i64)
    }

    pub fn plus(self, d: std::time::Duration) -> Self {
        Millis(self.0.saturating_add(d.as_millis() as i64))
    }

    /// Time left until `self`, zero when already past.
    pub fn until_from(self, now: Millis) -> std::time::Duration {
        std::time::Duration::from_millis((self.0 - now.0).max(0) as u64)
    }

    /// A time in RFC 3339 (`2026-12-07T20:00:00Z`, `…T21:00:00.5+01:00`,
    /// `t` and `z` in either case), to the millisecond; one without an
    /// offset is taken as UTC. `None` if it is not one.
    pub fn parse_rfc3339(raw: &str) -> Option<Self> {
        use time::format_description::well_known::Rfc3339;
        let raw = raw.to_ascii_uppercase();
        let at = time::OffsetDateTime::parse(&raw, &Rfc3339)
            .or_else(|_| time::OffsetDateTime::parse(&format!("{raw}Z"), &Rfc3339))
            .ok()?;
        i64::try_from(at.unix_timestamp_nanos() / 1_000_000)
            .ok()
            .map(Millis)
    }

    /// RFC 3339 in UTC with milliseconds, for humans and JSON.
    pub fn to_rfc3339(self) -> String {
        const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        );
        let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        // Formatting a valid date with this description cannot fail.
        at.format(FORMAT).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_and_refuses_what_it_is_not() {
        let m = Millis(1_795_000_000_123);
        assert_eq!(Millis::parse_rfc3339(&m.to_rfc3339()), Some(m));
        assert_eq!(
            Millis::parse_rfc3339("1970-01-01T01:00:00+01:00"),
            Some(Millis(0))
        );
        assert_eq!(
            Millis::parse_rfc3339("1970-01-01t00:00:01z"),
            Some(Millis(1_000))
        );
        assert_eq!(
            Millis::parse_rfc3339("1970-01-01T00:00:01.5"),
            Some(Millis(1_500)),
            "no offset: UTC"
        );
        for bad in ["", "yesterday", "2026-12-07", "2026-13-01T00:00:00Z"] {
            assert_eq!(Millis::parse_rfc3339(bad), None, "{bad}");
        }
    }
}
