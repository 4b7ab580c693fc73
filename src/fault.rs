//! Crash seams of the crash tests: [`fault_point`] aborts the process at a named point when
//! [`FAULT_ENV`] names it. Only with the `failpoints` cargo feature (the tests' build); without
//! it every point compiles to nothing. A leaf: the sealer, retention and the archiver call it.

/// Environment variable of the crash tests: `POINT` or `POINT@N` makes the process abort
/// (no unwinding, no flush: like SIGKILL) the Nth time (default 1st) it reaches the named point
/// of the sealer, retention or the archiver. Unset in production.
pub const FAULT_ENV: &str = "AUDIT_MANAGER_TEST_SEALER_ABORT";

/// Aborts the process here when [`FAULT_ENV`] names this point (test seam, only with the
/// `failpoints` cargo feature; without it this does nothing).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn fault_point(_name: &str) {}

/// Aborts the process here when [`FAULT_ENV`] names this point (test seam).
#[cfg(feature = "failpoints")]
pub fn fault_point(name: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static HITS: AtomicU64 = AtomicU64::new(0);
    let Ok(spec) = std::env::var(FAULT_ENV) else {
        return;
    };
    let (point, nth) = match spec.split_once('@') {
        Some((p, n)) => (p.to_string(), n.parse::<u64>().unwrap_or(1)),
        None => (spec, 1),
    };
    if point == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 >= nth {
        eprintln!("{FAULT_ENV}: aborting at {name}");
        std::process::abort();
    }
}
