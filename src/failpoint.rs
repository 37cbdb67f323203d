//! Failpoints for fault-injection tests, enabled by configuration
//! (`HEARTY_FAILPOINTS=name=action,...`), never by test-only code paths.
//!
//! Actions: `abort` ends the process at once (like a power cut for the
//! process: no destructors, no flush), `panic` panics in the current task.

use std::collections::HashMap;
use std::sync::OnceLock;

static ENABLED: OnceLock<HashMap<String, Action>> = OnceLock::new();

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Abort,
    Panic,
}

/// Parses and installs the failpoint list; only the first call counts.
pub fn configure(spec: &str) -> Result<(), String> {
    let mut map = HashMap::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, action) = item
            .split_once('=')
            .ok_or_else(|| format!("failpoint `{item}` must look like name=abort"))?;
        let action = match action {
            "abort" => Action::Abort,
            "panic" => Action::Panic,
            other => return Err(format!("failpoint `{name}`: unknown action `{other}`")),
        };
        map.insert(name.to_owned(), action);
    }
    let _ = ENABLED.set(map);
    Ok(())
}

/// Triggers the failpoint `name` if it is enabled.
pub fn hit(name: &str) {
    let Some(action) = ENABLED.get().and_then(|m| m.get(name)) else {
        return;
    };
    match action {
        Action::Abort => {
            eprintln!("failpoint {name}: aborting the process");
            std::process::abort();
        }
        Action::Panic => panic!("failpoint {name}"),
    }
}
