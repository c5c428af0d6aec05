//! Picking policies: which instance of a service a new connection or request goes to.
//!
//! A pick is one atomic operation (round robin) or one thread-local RNG draw (random); it takes no
//! lock and allocates nothing, so it costs the same at 1 or 10 000 instances.

use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Deserialize;

/// How an instance is chosen among a service's instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each pick takes the next instance in id order, shared by all connections of the service.
    RoundRobin,
    /// Each pick takes an instance uniformly at random.
    Random,
}

impl Balance {
    /// The index, below `len`, of the first instance to try.
    ///
    /// `counter` is the service's round-robin position; random picks leave it alone.
    ///
    /// # Panics
    /// If `len` is zero; callers check for an empty snapshot first.
    #[inline]
    pub fn start(self, len: usize, counter: &AtomicUsize) -> usize {
        match self {
            Balance::RoundRobin => counter.fetch_add(1, Ordering::Relaxed) % len,
            Balance::Random => rand::random_range(0..len),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_visits_every_index_in_turn() {
        let counter = AtomicUsize::new(0);
        let picks: Vec<usize> = (0..9)
            .map(|_| Balance::RoundRobin.start(3, &counter))
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn round_robin_survives_counter_wrap() {
        let counter = AtomicUsize::new(usize::MAX);
        assert_eq!(Balance::RoundRobin.start(4, &counter), usize::MAX % 4);
        assert_eq!(Balance::RoundRobin.start(4, &counter), 0);
    }

    #[test]
    fn random_stays_in_range_and_reaches_every_index() {
        let counter = AtomicUsize::new(0);
        let mut seen = [0u32; 5];
        for _ in 0..5_000 {
            seen[Balance::Random.start(5, &counter)] += 1;
        }
        // Each bucket expects 1 000; 800 is more than six standard deviations below.
        assert!(seen.iter().all(|n| *n > 800), "{seen:?}");
        assert_eq!(counter.load(Ordering::Relaxed), 0);
    }
}
