//! Building the tables a snapshot's picks read: a smooth weighted round-robin schedule, an alias
//! table for weighted draws (Vose), and a Maglev table for hashing. Built once per snapshot, so a
//! pick costs the same whatever the instances' weights.

use std::cmp::{Ordering as Cmp, Reverse};
use std::collections::BinaryHeap;

use super::hash::hash;

/// The longest weighted round-robin schedule: weights are scaled down to fit, which keeps a
/// table at 256 KiB whatever the weights.
pub(super) const MAX_SCHEDULE: u64 = 65_536;

/// nginx's smooth weighted round robin costs one pass over the instances per slot; beyond this
/// many steps the schedule is built by deadlines instead (as smooth, cheaper at scale).
const SMOOTH_BUDGET: u64 = 1 << 22;

/// The smallest Maglev table: a prime, and at least ten slots per instance for an even spread.
const MAGLEV_MIN: usize = 65_537;

/// Alias method table for a weighted draw in O(1) (Vose), one slot per instance: the chance,
/// out of 2^32, that a draw landing on the slot keeps it, and where it goes otherwise. Both in
/// one pair, so a draw reads one cache line.
#[derive(Debug)]
pub(super) struct Alias {
    pub(super) slots: Box<[(u32, u32)]>,
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Weights divided by their common divisor, then scaled (keeping each at least 1) until they
/// sum to at most `MAX_SCHEDULE`.
fn reduced(weights: &[u32]) -> Vec<u64> {
    let g = weights
        .iter()
        .fold(0u64, |g, w| gcd(g, u64::from(*w)))
        .max(1);
    let mut w: Vec<u64> = weights.iter().map(|w| u64::from(*w) / g).collect();
    let total: u64 = w.iter().sum();
    if total > MAX_SCHEDULE {
        for x in &mut w {
            *x = (*x * MAX_SCHEDULE / total).max(1);
        }
    }
    w
}

/// A smooth weighted round-robin order: nginx's sequence (5, 1, 1 gives a a b a c a a) when it
/// is cheap to compute, else the equally smooth deadline order.
pub(super) fn schedule(weights: &[u32]) -> Box<[u32]> {
    let w = reduced(weights);
    let total: u64 = w.iter().sum();
    if total * w.len() as u64 <= SMOOTH_BUDGET {
        let mut current = vec![0i64; w.len()];
        let mut out = Vec::with_capacity(total as usize);
        for _ in 0..total {
            for (c, weight) in current.iter_mut().zip(&w) {
                *c += *weight as i64;
            }
            let best = (0..w.len())
                .max_by(|&a, &b| current[a].cmp(&current[b]).then(b.cmp(&a)))
                .unwrap_or(0);
            current[best] -= total as i64;
            out.push(best as u32);
        }
        return out.into();
    }
    Turns::new(&w).take(total as usize).collect()
}

/// One instance's next turn in deadline order.
#[derive(PartialEq, Eq)]
struct Turn {
    /// The turn falls at num / den.
    num: u64,
    den: u64,
    index: u32,
}

impl Ord for Turn {
    fn cmp(&self, other: &Self) -> Cmp {
        (u128::from(self.num) * u128::from(other.den))
            .cmp(&(u128::from(other.num) * u128::from(self.den)))
            .then(self.index.cmp(&other.index))
    }
}

impl PartialOrd for Turn {
    fn partial_cmp(&self, other: &Self) -> Option<Cmp> {
        Some(self.cmp(other))
    }
}

/// Instance positions in deadline order, endlessly: the k-th turn of instance i falls at
/// (2k + 1) / (2 w_i), so each takes turns in proportion to its weight, evenly spread, at
/// O(log n) a turn whatever the weights.
struct Turns(BinaryHeap<Reverse<Turn>>);

impl Turns {
    /// Turns for `weights`, each above zero.
    fn new(weights: &[u64]) -> Turns {
        Turns(
            weights
                .iter()
                .enumerate()
                .map(|(i, weight)| {
                    Reverse(Turn {
                        num: 1,
                        den: 2 * weight,
                        index: i as u32,
                    })
                })
                .collect(),
        )
    }
}

impl Iterator for Turns {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        let Reverse(turn) = self.0.pop()?;
        let index = turn.index;
        self.0.push(Reverse(Turn {
            num: turn.num + 2,
            ..turn
        }));
        Some(index)
    }
}

/// Vose's alias tables for drawing position i with probability w_i / sum(w).
pub(super) fn alias(weights: &[u32]) -> Alias {
    let n = weights.len();
    let total: f64 = weights.iter().map(|w| f64::from(*w)).sum();
    let mut scaled: Vec<f64> = weights
        .iter()
        .map(|w| f64::from(*w) * n as f64 / total)
        .collect();
    let mut keep = vec![u32::MAX; n];
    let mut other: Vec<u32> = (0..n as u32).collect();
    let (mut small, mut large): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| scaled[i] < 1.0);
    while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
        keep[s] = (scaled[s] * 4_294_967_296.0).min(u32::MAX as f64) as u32;
        other[s] = l as u32;
        scaled[l] -= 1.0 - scaled[s];
        if scaled[l] < 1.0 {
            large.pop();
            small.push(l);
        }
    }
    Alias {
        slots: keep.into_iter().zip(other).collect(),
    }
}

fn is_prime(n: usize) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

/// A weighted Maglev table: each instance fills free slots in its own pseudo-random order, in
/// turns proportional to its weight, so a table change moves about 1/N of the keys.
pub(super) fn maglev(weights: &[u32], ids: &[&str]) -> Box<[u32]> {
    let n = weights.len();
    let mut m = MAGLEV_MIN.max(n * 10);
    while !is_prime(m) {
        m += 1;
    }
    let offsets: Vec<usize> = ids
        .iter()
        .map(|id| (hash(id.as_bytes(), 0x6d61_676c) % m as u64) as usize)
        .collect();
    let skips: Vec<usize> = ids
        .iter()
        .map(|id| (hash(id.as_bytes(), 0x736b_6970) % (m as u64 - 1)) as usize + 1)
        .collect();
    let weights: Vec<u64> = weights.iter().map(|w| u64::from(*w).max(1)).collect();
    let mut next = vec![0usize; n];
    let mut ring = vec![u32::MAX; m];
    let mut filled = 0;
    // Instances fill slots in turns proportional to their weights, each from its own order.
    for i in Turns::new(&weights) {
        let i = i as usize;
        loop {
            let slot = (offsets[i] + next[i] * skips[i]) % m;
            next[i] += 1;
            if ring[slot] == u32::MAX {
                ring[slot] = i as u32;
                filled += 1;
                break;
            }
        }
        if filled == m {
            break;
        }
    }
    ring.into()
}
