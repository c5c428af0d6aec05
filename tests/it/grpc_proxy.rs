//! cairn through etcd's own grpc-proxy, in front of a three-member cluster: discovery and
//! registration, a proxy restart, and a compaction that overtakes cairn while the proxy is down.

use std::time::Duration;

use etcd_client::Client;

use crate::support::cairn::{config, Cairn};
use crate::support::etcd::{Cluster, GrpcProxy};
use crate::support::upstream::{greeting, Tagged};
use crate::support::{etcd_instances, eventually, head};

const SOON: Duration = Duration::from_secs(15);

/// The lease of `key` and the seconds it has left, once the key exists.
async fn registered(kv: &mut Client, key: &str) -> (i64, i64) {
    let lease = eventually(SOON, "the registration is in etcd", || {
        let mut kv = kv.clone();
        async move {
            let got = kv.get(key, None).await.ok()?;
            got.kvs().first().map(|kv| kv.lease())
        }
    })
    .await;
    assert_ne!(lease, 0, "{key} is written under a lease");
    let ttl = kv
        .lease_time_to_live(lease, None)
        .await
        .expect("asking the lease's TTL")
        .ttl();
    (lease, ttl)
}

#[tokio::test]
async fn cairn_discovers_and_registers_through_etcds_grpc_proxy() {
    let cluster = Cluster::start().await;
    let mut proxy = GrpcProxy::start(&cluster.endpoints()).await;
    let mut kv = cluster.client(0).await;
    let (one, two) = (
        Tagged::start("orders-1").await,
        Tagged::start("orders-2").await,
    );
    let three = Tagged::start("orders-3").await;
    kv.put("/services/orders/orders-1", one.addr.to_string(), None)
        .await
        .unwrap();
    let node = format!(
        "{}\n[[register]]\nservice = \"web\"\nid = \"node-1\"\naddr = \"10.0.5.1:80\"\nttl = \"5s\"\n",
        config(&proxy.endpoint(), &["orders"], "")
    );
    let cairn = Cairn::start(&node).await;
    cairn.wait_ready().await;
    assert_eq!(greeting(cairn.listen(0)).await.as_deref(), Some("orders-1"));
    let (lease, _) = registered(&mut kv, "/services/web/node-1").await;

    // A change written to a member reaches cairn through the proxy's watch.
    kv.put("/services/orders/orders-2", two.addr.to_string(), None)
        .await
        .unwrap();
    cairn
        .wait_instances("orders", &["orders-1", "orders-2"], SOON)
        .await;

    // Another node watches orders, cart and mail too (the proxy joins each to a watch it
    // already has, for this node and for a seed node) and three services nobody watches yet
    // (the proxy opens a watch on etcd for each). The proxy answers a joined create at once and
    // a new one when etcd does: each watch must still get its own service's changes.
    let seed = Cairn::start(&config(&proxy.endpoint(), &["cart", "mail"], "")).await;
    seed.wait_ready().await;
    let routed = ["users", "orders", "stock", "cart", "search", "mail"];
    let other = Cairn::start(&config(&proxy.endpoint(), &routed, "")).await;
    other.wait_ready().await;
    other
        .wait_instances("orders", &["orders-1", "orders-2"], SOON)
        .await;
    for service in routed {
        kv.put(format!("/services/{service}/late"), "10.0.5.9:80", None)
            .await
            .unwrap();
    }
    for service in routed.iter().filter(|s| **s != "orders") {
        other.wait_instances(service, &["late"], SOON).await;
    }
    other
        .wait_instances("orders", &["late", "orders-1", "orders-2"], SOON)
        .await;
    kv.delete("/services/orders/late", None).await.unwrap();
    drop((other, seed));
    cairn
        .wait_instances("orders", &["orders-1", "orders-2"], SOON)
        .await;

    // The proxy restarts: every stream through it breaks; cairn resumes its watch where it
    // was, and misses nothing written meanwhile.
    proxy.kill();
    kv.delete("/services/orders/orders-1", None).await.unwrap();
    proxy.restart().await;
    cairn.wait_instances("orders", &["orders-2"], SOON).await;
    assert_eq!(
        cairn.metric("cairn_discovery_lists_total").await,
        1.0,
        "resumed, not listed again:\n{}",
        cairn.log()
    );

    // Down again while etcd compacts past cairn's revision: through the proxy, cairn learns
    // that its watch cannot resume, lists again and ends with etcd's exact state.
    proxy.kill();
    kv.put("/services/orders/orders-1", one.addr.to_string(), None)
        .await
        .unwrap();
    kv.delete("/services/orders/orders-2", None).await.unwrap();
    kv.put("/services/orders/orders-3", three.addr.to_string(), None)
        .await
        .unwrap();
    let compacted = head(&mut kv).await;
    kv.compact(compacted, None).await.unwrap();
    proxy.restart().await;
    cairn
        .wait_instances("orders", &["orders-1", "orders-3"], SOON)
        .await;
    assert!(
        cairn.metric("cairn_discovery_lists_total").await >= 2.0,
        "the compaction was not noticed through the proxy:\n{}",
        cairn.log()
    );
    let want = etcd_instances(&mut kv, "orders").await;
    assert_eq!(cairn.instances("orders").await, want);
    let mut greeted: Vec<String> = Vec::new();
    for _ in 0..2 {
        greeted.extend(greeting(cairn.listen(0)).await);
    }
    greeted.sort();
    assert_eq!(greeted, ["orders-1", "orders-3"]);

    // The registration's keep-alives went through the proxy all along: longer than its TTL
    // later, the key is still there, on the same lease.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (still, ttl) = registered(&mut kv, "/services/web/node-1").await;
    assert_eq!(
        still, lease,
        "the same lease, kept alive through both restarts"
    );
    assert!(ttl > 0, "{ttl}");
}
