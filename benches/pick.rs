//! The cost of one pick (arc-swap load, counter step or RNG draw, address copy) at 1 to 10 000
//! instances. Expected flat: the work does not depend on the number of instances.

use std::hint::black_box;

use cairn::instance::Instance;
use cairn::registry::{Endpoint, Format};
use cairn::snapshot::Store;
use cairn::Balance;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

fn instances(n: usize) -> Vec<Instance> {
    (0..n)
        .map(|i| Instance {
            id: format!("i-{i:05}"),
            endpoint: Endpoint::new(
                format!("10.{}.{}.{}:8080", i >> 16, (i >> 8) & 0xff, i & 0xff)
                    .parse()
                    .expect("a valid address"),
                Format::Plain,
            ),
        })
        .collect()
}

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for n in [1usize, 10, 100, 1_000, 10_000] {
        let store = Store::new();
        store.publish("svc", instances(n));
        let cell = store.cell("svc");
        for (name, balance) in [
            ("round_robin", Balance::RoundRobin),
            ("random", Balance::Random),
        ] {
            group.bench_with_input(BenchmarkId::new(name, n), &balance, |b, balance| {
                b.iter(|| black_box(cell.pick(*balance)))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, pick);
criterion_main!(benches);
