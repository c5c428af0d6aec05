//! How long a service's instances take to answer (HTTP and gRPC: to the response head), as a
//! histogram `/metrics` exports per service. Lock-free: one atomic add per bucket, count and sum.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bucket upper bounds, in seconds: from a loopback answer to a slow backend's.
pub const BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Answer times of one service.
#[derive(Debug, Default)]
pub struct Timings {
    /// Answers per bucket (not cumulative); the last is above every bound.
    buckets: [AtomicU64; BOUNDS.len() + 1],
    /// The answers' total time, in nanoseconds.
    sum_ns: AtomicU64,
}

impl Timings {
    /// One answer took `ns`.
    pub fn observe(&self, ns: u64) {
        let seconds = ns as f64 / 1e9;
        let bucket = BOUNDS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BOUNDS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// The total in seconds, the count, and each bucket's upper bound (the last infinite) with
    /// its answers (not cumulative), as prometheus-client's encoder takes them.
    pub fn read(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets: Vec<(f64, u64)> = BOUNDS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(&self.buckets)
            .map(|(bound, n)| (bound, n.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        (sum, count, buckets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_land_in_the_first_bucket_that_holds_them() {
        let t = Timings::default();
        t.observe(300_000); // 0.3 ms
        t.observe(1_000_000); // 1 ms: on the bound, inside it
        t.observe(60_000_000); // 60 ms
        t.observe(20_000_000_000); // 20 s
        let (sum, count, buckets) = t.read();
        assert_eq!(count, 4);
        assert!((sum - 20.0613).abs() < 1e-9, "{sum}");
        let at = |bound: f64| buckets.iter().find(|(b, _)| *b == bound).unwrap().1;
        assert_eq!(at(0.0005), 1);
        assert_eq!(at(0.001), 1);
        assert_eq!(at(0.1), 1);
        assert_eq!(at(f64::INFINITY), 1);
        assert_eq!(buckets.len(), BOUNDS.len() + 1);
    }
}
