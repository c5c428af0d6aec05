//! One monotonic clock for the data plane, in milliseconds (nanoseconds for latencies) since
//! cairn started, so instance
//! states store times in a plain atomic. It follows tokio's clock, which tests can pause.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

/// What the clock counts from: the first time it is read.
static ORIGIN: OnceLock<Instant> = OnceLock::new();

fn origin() -> Instant {
    *ORIGIN.get_or_init(Instant::now)
}

/// Milliseconds since the clock was first read.
pub(crate) fn now_ms() -> u64 {
    origin().elapsed().as_millis() as u64
}

/// Nanoseconds since the clock was first read, for latencies.
pub(crate) fn now_ns() -> u64 {
    u64::try_from(origin().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The instant `ms` milliseconds after the clock's origin, to sleep until.
pub(crate) fn instant_at(ms: u64) -> Instant {
    origin() + Duration::from_millis(ms)
}
