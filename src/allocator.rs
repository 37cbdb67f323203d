//! The process's memory allocator: jemalloc on Linux (set as the global
//! allocator by the `hearty` binary). Chosen because it hands the pages
//! of freed memory back to the system by itself, a few seconds after a
//! wave of sagas passivates (its decay, run by a background thread), and
//! because it says what it holds: the `hearty_allocator_*` metrics, read
//! at each scrape, separate the bytes the program uses from the pages the
//! allocator keeps (see BENCHMARKS.md, memory after recovery). It is
//! built unprefixed: the C code in the process (the bundled SQLite) calls
//! jemalloc's `malloc` too, so the figures are the whole process's heap.

/// What the allocator holds, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Bytes the program has allocated and not freed.
    pub allocated: u64,
    /// Bytes in pages the allocator keeps resident (allocated, its own
    /// metadata, and freed pages not yet handed back).
    pub resident: u64,
    /// Bytes of address space kept mapped for reuse (not resident).
    pub retained: u64,
}

#[cfg(all(target_os = "linux", not(target_env = "msvc")))]
mod imp {
    use super::Usage;
    use tikv_jemalloc_ctl::{background_thread, epoch, stats};

    pub fn usage() -> Option<Usage> {
        // The statistics are a snapshot taken when the epoch advances.
        epoch::advance().ok()?;
        Some(Usage {
            allocated: stats::allocated::read().ok()? as u64,
            resident: stats::resident::read().ok()? as u64,
            retained: stats::retained::read().ok()? as u64,
        })
    }

    pub fn return_freed_pages_in_background() {
        if let Err(e) = background_thread::write(true) {
            tracing::warn!(error = %e, "the allocator's background thread is not available: freed pages go back to the system only when threads allocate again");
        }
    }
}

#[cfg(not(all(target_os = "linux", not(target_env = "msvc"))))]
mod imp {
    use super::Usage;

    pub fn usage() -> Option<Usage> {
        None
    }

    pub fn return_freed_pages_in_background() {}
}

/// What the allocator holds now; `None` where it is not jemalloc. (Built
/// unprefixed, jemalloc is the C `malloc` of every binary that links this
/// library, the tests' too, even where Rust's global allocator is the
/// system's: the figures are the whole process's there as well.)
pub fn usage() -> Option<Usage> {
    imp::usage()
}

/// Starts jemalloc's background thread, which purges freed pages on its
/// decay schedule even while the process is idle (without it, purging
/// happens only on the allocating threads' next calls).
pub fn return_freed_pages_in_background() {
    imp::return_freed_pages_in_background();
}
