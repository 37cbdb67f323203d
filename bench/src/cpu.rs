//! CPU time of processes, read from `/proc`: what the service, the broker
//! and the load generator each spend per saga, so that a throughput figure
//! comes with the cost that bounds it on a shared machine.

/// CPU seconds (user + system) a process has used so far: `self`, or a pid.
/// Linux's `/proc/<pid>/stat` counts in clock ticks of 1/100 s.
pub fn seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// The local broker's process (RabbitMQ's Erlang VM, `beam.smp`), when
/// exactly one runs on this machine: with none (a remote broker) or several
/// (other brokers beside it) its share is not reported rather than guessed.
pub fn broker_pid() -> Option<String> {
    let mut found = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "beam.smp")
        });
    let pid = found.next()?;
    found.next().is_none().then_some(pid)
}

/// CPU used by a set of processes from the moment it is started.
pub struct Meter {
    pids: Vec<String>,
    start: Option<f64>,
}

impl Meter {
    /// Starts measuring `pids` (none: nothing is measured).
    pub fn start(pids: Vec<String>) -> Self {
        let start = Self::total(&pids);
        Meter { pids, start }
    }

    fn total(pids: &[String]) -> Option<f64> {
        if pids.is_empty() {
            return None;
        }
        pids.iter().map(|p| seconds(p)).sum()
    }

    /// Milliseconds of CPU per unit of work since the start: `None` when a
    /// process could not be read or nothing was done.
    pub fn ms_per(&self, units: f64) -> Option<f64> {
        let (a, b) = self.start.zip(Self::total(&self.pids))?;
        (units > 0.0).then(|| (b - a) * 1e3 / units)
    }
}
