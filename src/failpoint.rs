//! Failpoints for fault-injection tests, enabled by configuration
//! (`HEARTY_FAILPOINTS=name=action,...`), never by test-only code paths.
//!
//! Actions: `abort` ends the process at once (no destructors, no flush: a
//! crash), `panic` panics where the failpoint stands. `@N` limits it to the
//! first N hits (`pay-handler=panic@1`).
//!
//! Failpoints in the code: `<worker>-handler` (a worker's handler, before
//! its transaction), `<worker>-progress` (a person's progress, after the
//! worker's latency, just before its transaction), `orchestrator-after-commit` (a saga transition is
//! committed, its commands not yet published), `outbox-after-confirm` (the
//! broker confirmed, the outbox rows are not yet deleted),
//! `reply-before-ack` (a reply is applied and committed, not yet acked).

use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

static ENABLED: OnceLock<HashMap<String, Failpoint>> = OnceLock::new();

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Abort,
    Panic,
}

#[derive(Debug)]
struct Failpoint {
    action: Action,
    /// Hits left; `u64::MAX` = unlimited.
    left: AtomicU64,
}

/// Parses and installs the failpoint list; only the first call counts.
pub fn configure(spec: &str) -> Result<(), String> {
    let map = parse(spec)?;
    let _ = ENABLED.set(map);
    Ok(())
}

fn parse(spec: &str) -> Result<HashMap<String, Failpoint>, String> {
    let mut map = HashMap::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, rest) = item.split_once('=').ok_or_else(|| {
            format!("failpoint `{item}` must look like name=abort or name=panic@1")
        })?;
        let (action, times) = match rest.split_once('@') {
            Some((a, n)) => (
                a,
                n.parse::<u64>()
                    .map_err(|_| format!("failpoint `{name}`: `{n}` is not a count"))?,
            ),
            None => (rest, u64::MAX),
        };
        let action = match action {
            "abort" => Action::Abort,
            "panic" => Action::Panic,
            other => return Err(format!("failpoint `{name}`: unknown action `{other}`")),
        };
        map.insert(
            name.to_owned(),
            Failpoint {
                action,
                left: AtomicU64::new(times),
            },
        );
    }
    Ok(map)
}

/// Validates a failpoint list (for configuration parsing).
pub fn validate(spec: &str) -> Result<String, String> {
    parse(spec).map(|_| spec.to_owned())
}

/// Triggers the failpoint `name` if it is enabled and has hits left.
pub fn hit(name: &str) {
    let Some(fp) = ENABLED.get().and_then(|m| m.get(name)) else {
        return;
    };
    let took = fp
        .left
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| match n {
            0 => None,
            u64::MAX => Some(u64::MAX),
            n => Some(n - 1),
        })
        .is_ok();
    if !took {
        return;
    }
    match fp.action {
        Action::Abort => {
            eprintln!("failpoint {name}: aborting the process");
            std::process::abort();
        }
        Action::Panic => panic!("failpoint {name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counts_and_refuses_nonsense() {
        let m = parse("a=panic@2, b=abort").expect("valid");
        assert_eq!(m["a"].left.load(Ordering::SeqCst), 2);
        assert_eq!(m["b"].action, Action::Abort);
        assert!(parse("a=explode").is_err());
        assert!(parse("a=panic@x").is_err());
        assert!(parse("nonsense").is_err());
    }
}
