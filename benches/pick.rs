//! The cost of one pick for every policy at 1 to 100 000 instances, from one thread and from two
//! at once (each thread's time per pick). Expected flat in the instance count: every table a
//! pick reads is built with the snapshot.
//!
//! `equal` runs give every instance weight 1 (round robin is then a plain rotation, random a
//! plain draw); `weighted` runs give weights 1 to 5, which read the weighted tables.

#![allow(clippy::disallowed_types, clippy::disallowed_methods)] // a bench measures wall time

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cairn::instance::Instance;
use cairn::registry::{Endpoint, Format};
use cairn::snapshot::{Policy, ServiceCell, Store};
use cairn::Balance;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

fn instances(n: usize, weighted: bool) -> Vec<Instance> {
    (0..n)
        .map(|i| {
            let mut endpoint = Endpoint::new(
                format!("10.{}.{}.{}:8080", i >> 16, (i >> 8) & 0xff, i & 0xff)
                    .parse()
                    .expect("a valid address"),
                Format::Plain,
            );
            if weighted {
                endpoint.weight = (i % 5) as u32 + 1;
            }
            Instance {
                id: format!("i-{i:06}"),
                endpoint,
            }
        })
        .collect()
}

/// A hash key per pick, different each time, as a stream of clients would bring.
fn key(keys: &AtomicU64) -> u64 {
    keys.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
}

/// `iters` picks. The clock reading a pick takes is read once for them all: cairn reads its
/// clock once per connection or request whatever the policy (to time the attempt) and hands
/// the pick that reading, so the clock is no cost of the policy.
fn picks(cell: &ServiceCell, balance: Balance, keys: &AtomicU64, iters: u64) -> Duration {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = Instant::now();
    let now = start
        .duration_since(*ORIGIN.get_or_init(Instant::now))
        .as_nanos() as u64;
    for _ in 0..iters {
        let k = (balance == Balance::Hash).then(|| key(keys));
        black_box(cell.pick(black_box(k), black_box(now)));
    }
    start.elapsed()
}

fn pick(c: &mut Criterion) {
    let policies = [
        Balance::RoundRobin,
        Balance::Random,
        Balance::LeastRequest,
        Balance::Ewma,
        Balance::Hash,
    ];
    for weighted in [false, true] {
        let mut group = c.benchmark_group(if weighted {
            "pick/weighted"
        } else {
            "pick/equal"
        });
        for n in [1usize, 10, 100, 1_000, 10_000, 100_000] {
            let store = Store::new();
            let cell = store.cell("svc");
            store.publish("svc", instances(n, weighted));
            for balance in policies {
                cell.configure(Policy {
                    balance,
                    ..Policy::default()
                });
                let keys = AtomicU64::new(1);
                group.bench_with_input(
                    BenchmarkId::new(format!("{}/1-thread", balance.as_str()), n),
                    &balance,
                    |b, &balance| b.iter_custom(|iters| picks(&cell, balance, &keys, iters)),
                );
                group.bench_with_input(
                    BenchmarkId::new(format!("{}/2-threads", balance.as_str()), n),
                    &balance,
                    |b, &balance| {
                        b.iter_custom(|iters| {
                            std::thread::scope(|s| {
                                let both: Vec<_> = (0..2)
                                    .map(|_| s.spawn(|| picks(&cell, balance, &keys, iters)))
                                    .collect();
                                both.into_iter()
                                    .map(|t| t.join().expect("a bench thread"))
                                    .max()
                                    .unwrap_or_default()
                            })
                        })
                    },
                );
            }
        }
        group.finish();
    }
}

criterion_group!(benches, pick);
criterion_main!(benches);
