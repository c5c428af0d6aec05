//! The table a snapshot carries so that every policy picks in constant time (its parts are built
//! in `build`), and the pick itself.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::build::{alias, maglev, schedule, Alias};
use super::policy::Balance;

/// How picks are spread over a snapshot's pickable instances.
#[derive(Debug, Default)]
pub struct Table {
    /// Instance indices a pick may return, in id order.
    pickable: Box<[u32]>,
    /// Their weights, all above zero; empty when all are equal (least request then compares
    /// in-flight counts alone), which spares 4 bytes an instance on most services.
    weights: Box<[u32]>,
    /// Round-robin order, as positions in `pickable`; none for a plain rotation (equal weights).
    schedule: Option<Box<[u32]>>,
    /// Weighted draws; none for uniform ones (equal weights).
    alias: Option<Alias>,
    /// Maglev lookup table, as positions in `pickable` (hash policy only).
    ring: Option<Box<[u32]>>,
}

impl Table {
    /// The table for `balance` over `pickable` instances with `weights` (above zero) and `ids`
    /// (the hash policy places instances by id, so an address change keeps their keys).
    pub fn build(balance: Balance, pickable: Vec<u32>, weights: Vec<u32>, ids: &[&str]) -> Table {
        debug_assert_eq!(pickable.len(), weights.len());
        let equal = weights.windows(2).all(|w| w[0] == w[1]);
        let schedule = match balance {
            Balance::RoundRobin | Balance::Hash if !equal => Some(schedule(&weights)),
            _ => None,
        };
        let alias = match balance {
            Balance::Random | Balance::LeastRequest | Balance::Ewma if !equal => {
                Some(alias(&weights))
            }
            _ => None,
        };
        let ring = match balance {
            Balance::Hash if !pickable.is_empty() => Some(maglev(&weights, ids)),
            _ => None,
        };
        Table {
            pickable: pickable.into(),
            weights: if equal {
                Box::default()
            } else {
                weights.into()
            },
            schedule,
            alias,
            ring,
        }
    }

    /// The instance indices a pick may return.
    pub fn pickable(&self) -> &[u32] {
        &self.pickable
    }

    /// How many instances a pick may return.
    pub fn len(&self) -> usize {
        self.pickable.len()
    }

    /// Whether no instance may be picked.
    pub fn is_empty(&self) -> bool {
        self.pickable.is_empty()
    }

    /// Picks a position in [`Table::pickable`]: `counter` is the service's round-robin position,
    /// `key` the hash of the connection or request (the hash policy falls back to round robin
    /// without one), `load` the load at a position as the two-choice policies compare it (its
    /// connections or requests in flight; for `ewma`, its latency times those plus one). `None`
    /// when empty.
    ///
    /// A position rather than an instance index, so the caller can keep what a pick reads in
    /// one array in pickable order: at 100 000 instances every extra indirection is a cache
    /// miss.
    #[inline]
    pub fn pick(
        &self,
        balance: Balance,
        counter: &AtomicUsize,
        key: Option<u64>,
        load: impl Fn(usize) -> f64,
    ) -> Option<usize> {
        let n = self.pickable.len();
        if n == 0 {
            return None;
        }
        let position = match (balance, key) {
            (Balance::Hash, Some(key)) => self.lookup(key),
            (Balance::RoundRobin | Balance::Hash, _) => self.next(counter),
            (Balance::Random, _) => self.draw(),
            (Balance::LeastRequest, _) => self.lighter(self.draw(), self.draw(), &load),
            (Balance::Ewma, _) => {
                let a = self.draw();
                self.lighter(a, self.draw_other(a), &load)
            }
        };
        Some(position)
    }

    /// Of positions `a` and `b`, the one with less load per unit of weight (`a` on a tie).
    #[inline]
    fn lighter(&self, a: usize, b: usize, load: &impl Fn(usize) -> f64) -> usize {
        let weight = |p: usize| self.weights.get(p).map_or(1.0, |w| f64::from(*w));
        // Cross-multiplied, so no division.
        if load(b) * weight(a) < load(a) * weight(b) {
            b
        } else {
            a
        }
    }

    /// A draw other than `a` when there is another instance: without it, an instance drawn
    /// twice would be picked whatever its load, a ninth of the time among three.
    #[inline]
    fn draw_other(&self, a: usize) -> usize {
        let n = self.pickable.len();
        if n < 2 {
            return a;
        }
        if self.alias.is_none() {
            // Uniform: one of the n - 1 others, evenly.
            let r: u64 = rand::random();
            let other = (((r & 0xffff_ffff) * (n as u64 - 1)) >> 32) as usize;
            return if other >= a { other + 1 } else { other };
        }
        // Weighted: draw again (a few times at most: only a dominant weight repeats often).
        for _ in 0..8 {
            let b = self.draw();
            if b != a {
                return b;
            }
        }
        (a + 1) % n
    }

    #[inline]
    fn next(&self, counter: &AtomicUsize) -> usize {
        let step = counter.fetch_add(1, Ordering::Relaxed);
        match &self.schedule {
            None => step % self.pickable.len(),
            Some(s) => s[step % s.len()] as usize,
        }
    }

    #[inline]
    fn draw(&self) -> usize {
        let r: u64 = rand::random();
        let n = self.pickable.len() as u64;
        // Multiply-shift maps 32 random bits onto 0..n without a division.
        let slot = (((r & 0xffff_ffff) * n) >> 32) as usize;
        match &self.alias {
            None => slot,
            Some(a) => {
                let (keep, other) = a.slots[slot];
                if ((r >> 32) as u32) < keep {
                    slot
                } else {
                    other as usize
                }
            }
        }
    }

    #[inline]
    fn lookup(&self, key: u64) -> usize {
        match &self.ring {
            Some(ring) => ring[(key % ring.len() as u64) as usize] as usize,
            None => (key % self.pickable.len() as u64) as usize,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::build::MAX_SCHEDULE;
    use super::super::hash::hash;
    use super::*;

    fn table(balance: Balance, weights: &[u32]) -> Table {
        let ids: Vec<String> = (0..weights.len()).map(|i| format!("i{i}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        Table::build(
            balance,
            (0..weights.len() as u32).collect(),
            weights.to_vec(),
            &refs,
        )
    }

    fn spread(t: &Table, balance: Balance, picks: usize) -> Vec<usize> {
        let counter = AtomicUsize::new(0);
        let mut counts = vec![0; t.len()];
        for _ in 0..picks {
            counts[t.pick(balance, &counter, None, |_| 0.0).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn equal_weights_rotate_in_order_and_uneven_ones_follow_nginx() {
        let counter = AtomicUsize::new(0);
        let t = table(Balance::RoundRobin, &[1, 1, 1]);
        let seq: Vec<usize> = (0..6)
            .map(|_| {
                t.pick(Balance::RoundRobin, &counter, None, |_| 0.0)
                    .unwrap()
            })
            .collect();
        assert_eq!(seq, [0, 1, 2, 0, 1, 2]);
        let t = table(Balance::RoundRobin, &[5, 1, 1]);
        let counter = AtomicUsize::new(0);
        let seq: Vec<usize> = (0..7)
            .map(|_| {
                t.pick(Balance::RoundRobin, &counter, None, |_| 0.0)
                    .unwrap()
            })
            .collect();
        assert_eq!(seq, [0, 0, 1, 0, 2, 0, 0], "a a b a c a a");
    }

    #[test]
    fn large_schedules_are_smooth_and_proportional() {
        let weights: Vec<u32> = (0..5000).map(|i| 1 + (i % 3)).collect();
        let s = schedule(&weights);
        assert_eq!(s.len(), 5000 / 3 * 6 + 3);
        let mut counts = vec![0u32; weights.len()];
        for i in s.iter() {
            counts[*i as usize] += 1;
        }
        assert!(counts.iter().zip(&weights).all(|(c, w)| c == w));
        let heavy = weights
            .iter()
            .map(|w| u64::from(*w) * 40)
            .collect::<Vec<_>>();
        assert!(heavy.iter().sum::<u64>() > MAX_SCHEDULE);
        let scaled = schedule(&weights.iter().map(|w| w * 40).collect::<Vec<_>>());
        assert!(scaled.len() as u64 <= MAX_SCHEDULE + weights.len() as u64);
    }

    #[test]
    fn weights_1_2_7_split_every_policy_within_2_percent() {
        for balance in [
            Balance::RoundRobin,
            Balance::Random,
            Balance::LeastRequest,
            Balance::Ewma,
        ] {
            let t = table(balance, &[1, 2, 7]);
            let counts = spread(&t, balance, 10_000);
            for (c, want) in counts.iter().zip([1000, 2000, 7000]) {
                assert!((*c as i64 - want).abs() <= 200, "{balance:?}: {counts:?}");
            }
        }
    }

    #[test]
    fn least_request_prefers_the_less_loaded() {
        let t = table(Balance::LeastRequest, &[1, 1]);
        let counter = AtomicUsize::new(0);
        let picks: Vec<usize> = (0..100)
            .map(|_| {
                t.pick(Balance::LeastRequest, &counter, None, |i| {
                    if i == 0 {
                        10.0
                    } else {
                        0.0
                    }
                })
                .unwrap()
            })
            .collect();
        // Only a draw of instance 0 twice picks it: about a quarter of the time.
        let zeros = picks.iter().filter(|p| **p == 0).count();
        assert!(zeros < 45, "{zeros} of 100 went to the loaded instance");
    }

    #[test]
    fn ewma_never_picks_the_costliest_of_three_and_splits_the_rest_evenly() {
        for weights in [[1, 1, 1], [2, 2, 2]] {
            let t = table(Balance::Ewma, &weights);
            let counter = AtomicUsize::new(0);
            let mut counts = [0usize; 3];
            for _ in 0..3000 {
                let i = t
                    .pick(Balance::Ewma, &counter, None, |i| {
                        if i == 1 {
                            50.0
                        } else {
                            1.0
                        }
                    })
                    .unwrap();
                counts[i] += 1;
            }
            assert_eq!(counts[1], 0, "{weights:?}: {counts:?}");
            assert!(
                (1300..=1700).contains(&counts[0]),
                "{weights:?}: {counts:?}"
            );
        }
        // Weighted: a heavy instance with twice the load of a light one of a third its weight
        // still costs less per unit of weight.
        let t = table(Balance::Ewma, &[3, 1]);
        let counter = AtomicUsize::new(0);
        let heavy = (0..1000)
            .filter(|_| {
                t.pick(Balance::Ewma, &counter, None, |i| {
                    if i == 0 {
                        2.0
                    } else {
                        1.0
                    }
                })
                .unwrap()
                    == 0
            })
            .count();
        assert_eq!(heavy, 1000);
    }

    #[test]
    fn hashing_is_stable_and_moves_about_one_key_in_n() {
        let ids: Vec<String> = (0..10).map(|i| format!("i{i}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let all = Table::build(Balance::Hash, (0..10).collect(), vec![1; 10], &refs);
        let counter = AtomicUsize::new(0);
        let owner = |t: &Table, k: u64, ids: &[&str]| {
            ids[t
                .pick(
                    Balance::Hash,
                    &counter,
                    Some(hash(&k.to_be_bytes(), 0)),
                    |_| 0.0,
                )
                .unwrap()]
            .to_string()
        };
        // Instance 3 leaves: its picks keep their positions, by id.
        let rest: Vec<&str> = refs.iter().copied().filter(|id| *id != "i3").collect();
        let fewer = Table::build(Balance::Hash, (0..9).collect(), vec![1; 9], &rest);
        let mut moved = 0;
        for k in 0..10_000u64 {
            let before = owner(&all, k, &refs);
            assert_eq!(before, owner(&all, k, &refs), "the same key moved");
            let after = owner(&fewer, k, &rest);
            if before != "i3" && before != after {
                moved += 1;
            }
        }
        assert!(moved < 500, "{moved} keys of other instances moved");
        let counts = {
            let mut c = vec![0usize; 10];
            for k in 0..10_000u64 {
                let o = owner(&all, k, &refs);
                c[o[1..].parse::<usize>().unwrap()] += 1;
            }
            c
        };
        assert!(
            counts.iter().all(|c| (800..=1200).contains(c)),
            "{counts:?}"
        );
    }

    #[test]
    fn an_empty_table_picks_nothing() {
        let t = Table::default();
        assert!(t
            .pick(Balance::RoundRobin, &AtomicUsize::new(0), None, |_| 0.0)
            .is_none());
    }
}
