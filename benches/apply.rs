//! The cost of applying one watch event to the snapshot store, with 10 to 10 000 instances in
//! the changed service. Each instance carries JSON metadata, so a writer that deep-cloned the
//! service's instances on every change would show it: the work should be one pass of reference
//! counts over the service, not a copy of its values.

use std::hint::black_box;
use std::sync::Arc;

use cairn::instance::Instance;
use cairn::registry::{Endpoint, Format};
use cairn::snapshot::{Store, StoreWriter};
use cairn::update::{Change, Sink, Update};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use serde_json::json;

fn instance(i: usize, port: u16) -> Arc<Instance> {
    let mut endpoint = Endpoint::new(
        format!("10.{}.{}.{}:{port}", i >> 16, (i >> 8) & 0xff, i & 0xff)
            .parse()
            .expect("a valid address"),
        Format::Json,
    );
    endpoint.zone = Some("eu-1a".into());
    endpoint.metadata = json!({"version": "1.4.2", "owner": "team-orders", "canary": false});
    Arc::new(Instance {
        id: format!("i-{i:05}"),
        endpoint,
    })
}

fn apply(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply");
    for n in [10usize, 1_000, 10_000] {
        let store = Store::new();
        let mut writer = StoreWriter::new(Arc::clone(&store));
        writer.apply(Update::Reset {
            revision: 1,
            instances: (0..n)
                .map(|i| ("svc".to_string(), instance(i, 8080)))
                .collect(),
        });
        // Two versions of the middle instance, put in turn so every event is a real change.
        let versions = [instance(n / 2, 8081), instance(n / 2, 8080)];
        let mut turn = 0usize;
        let mut revision = 1;
        group.bench_function(BenchmarkId::new("one_put", n), |b| {
            b.iter_batched(
                || {
                    turn += 1;
                    revision += 1;
                    Update::Changes {
                        revision,
                        changes: vec![Change::Put {
                            service: "svc".to_string(),
                            instance: Arc::clone(&versions[turn % 2]),
                            revision,
                        }],
                    }
                },
                |update| writer.apply(black_box(update)),
                BatchSize::SmallInput,
            )
        });
        assert_eq!(store.cell("svc").load().len(), n);
    }
    group.finish();
}

criterion_group!(benches, apply);
criterion_main!(benches);
