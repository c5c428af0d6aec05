//! Scoped discovery against a real etcd: a node lists and watches only the services it routes,
//! a reload that adds one starts its watch alone, and a gateway keeps the whole prefix.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::cairn::{config, http_get, Cairn};
use crate::support::etcd::Etcd;
use crate::support::upstream::{greeting, Tagged};
use crate::support::{eventually, head, metric_in};

const SOON: Duration = Duration::from_secs(10);

/// One series of etcd's own `/metrics`.
async fn etcd_metric(etcd: &Etcd, series: &str) -> f64 {
    let addr: SocketAddr = etcd
        .endpoint()
        .trim_start_matches("http://")
        .parse()
        .expect("a loopback endpoint");
    let (_, page) = http_get(addr, "/metrics")
        .await
        .expect("etcd serves /metrics");
    metric_in(&page, series)
}

/// Waits until every watch of `cairn` is open: ready only means listed.
async fn all_open(cairn: &Cairn) {
    eventually(SOON, "every watch is open", || async {
        (cairn.metric("cairn_registry_connected").await == 1.0).then_some(())
    })
    .await;
}

/// The services `/services` shows, sorted.
async fn services(cairn: &Cairn) -> Vec<String> {
    let doc = cairn.services().await;
    let mut names: Vec<String> = doc["services"]
        .as_object()
        .expect("services is an object")
        .keys()
        .cloned()
        .collect();
    names.sort();
    names
}

/// Puts `count` instances of each of `services` (addresses nobody dials), one transaction per
/// service.
async fn fill(etcd: &Etcd, services: &[&str], count: usize) {
    let mut kv = etcd.client().await;
    for service in services {
        let ops: Vec<etcd_client::TxnOp> = (0..count)
            .map(|i| {
                etcd_client::TxnOp::put(
                    format!("/services/{service}/{service}-{i}"),
                    format!("10.9.{}.{}:80", i / 250, i % 250 + 1),
                    None,
                )
            })
            .collect();
        kv.txn(etcd_client::Txn::new().and_then(ops)).await.unwrap();
    }
}

#[tokio::test]
async fn a_routed_node_lists_and_watches_only_its_services() {
    let etcd = Etcd::start().await;
    let noise: Vec<String> = (0..40).map(|i| format!("noise{i}")).collect();
    let noise: Vec<&str> = noise.iter().map(String::as_str).collect();
    fill(&etcd, &noise, 25).await;
    let orders = Tagged::start("orders-1").await;
    let mut kv = etcd.client().await;
    kv.put("/services/orders/orders-1", orders.addr.to_string(), None)
        .await
        .unwrap();
    let watchers_before = etcd_metric(&etcd, "etcd_debugging_mvcc_watcher_total").await;
    let streams_before = etcd_metric(&etcd, "etcd_debugging_mvcc_watch_stream_total").await;

    let routed = ["orders", "noise1", "noise2"];
    let cairn = Cairn::start(&config(&etcd.endpoint(), &routed, "")).await;
    cairn.wait_ready().await;
    assert_eq!(greeting(cairn.listen(0)).await.as_deref(), Some("orders-1"));
    assert_eq!(
        services(&cairn).await,
        ["noise1", "noise2", "orders"],
        "only what it routes"
    );
    all_open(&cairn).await;
    assert_eq!(
        etcd_metric(&etcd, "etcd_debugging_mvcc_watcher_total").await - watchers_before,
        3.0,
        "one watch per routed service"
    );
    assert_eq!(
        etcd_metric(&etcd, "etcd_debugging_mvcc_watch_stream_total").await - streams_before,
        1.0,
        "all on one stream"
    );
    assert_eq!(cairn.metric("cairn_discovery_lists_total").await, 3.0);

    // A change elsewhere never reaches the node; one to orders does. Put in that order, so once
    // orders' change is seen the other would have been too, were it watched.
    kv.put("/services/noise3/late", "10.9.9.9:80", None)
        .await
        .unwrap();
    kv.put("/services/orders/orders-2", "10.9.9.8:80", None)
        .await
        .unwrap();
    cairn
        .wait_instances("orders", &["orders-1", "orders-2"], SOON)
        .await;
    assert_eq!(services(&cairn).await, ["noise1", "noise2", "orders"]);
    let doc = cairn.services().await;
    let rev = head(&mut kv).await;
    assert_eq!(
        doc["revision"],
        serde_json::json!(rev),
        "the newest revision a watch applied"
    );
}

#[tokio::test]
async fn a_reload_that_adds_a_service_routes_it_at_once_and_leaves_the_others_alone() {
    let etcd = Etcd::start().await;
    let (orders, users) = (
        Tagged::start("orders-1").await,
        Tagged::start("users-1").await,
    );
    let mut kv = etcd.client().await;
    kv.put("/services/orders/orders-1", orders.addr.to_string(), None)
        .await
        .unwrap();
    kv.put("/services/users/users-1", users.addr.to_string(), None)
        .await
        .unwrap();
    let cairn = Cairn::start(&config(&etcd.endpoint(), &["orders"], "")).await;
    cairn.wait_ready().await;
    assert_eq!(services(&cairn).await, ["orders"]);

    cairn
        .reload(&config(&etcd.endpoint(), &["orders", "users"], ""))
        .await
        .expect("reloaded");
    // The reload waited for users' first list: its new listener routes on the first try.
    let listen = cairn.listening("users").expect("users listens");
    assert_eq!(greeting(listen).await.as_deref(), Some("users-1"));
    assert_eq!(
        cairn.metric("cairn_discovery_lists_total").await,
        2.0,
        "users listed once; orders not again"
    );
    assert_eq!(
        cairn.metric("cairn_discovery_watch_restarts_total").await,
        0.0
    );
    assert!(cairn.log().contains("watches_started=1"), "{}", cairn.log());

    // Dropped from the config: its watch stops and its instances go with it.
    cairn
        .reload(&config(&etcd.endpoint(), &["users"], ""))
        .await
        .expect("reloaded");
    let doc = cairn.services().await;
    let left = doc["services"]["orders"]["instances"]
        .as_array()
        .map(Vec::len);
    assert!(matches!(left, None | Some(0)), "orders is emptied: {doc}");
    assert!(cairn.log().contains("watches_stopped=1"), "{}", cairn.log());
    kv.put("/services/users/users-2", "10.9.9.7:80", None)
        .await
        .unwrap();
    cairn
        .wait_instances("users", &["users-1", "users-2"], SOON)
        .await;
    assert_eq!(cairn.metric("cairn_discovery_lists_total").await, 2.0);
}

#[tokio::test]
async fn a_node_with_a_gateway_or_scope_all_holds_the_whole_prefix() {
    let etcd = Etcd::start().await;
    fill(&etcd, &["orders", "users", "stock"], 2).await;
    let watchers_before = etcd_metric(&etcd, "etcd_debugging_mvcc_watcher_total").await;
    let all = format!(
        "{}\n[discovery]\nscope = \"all\"\n",
        config(&etcd.endpoint(), &["orders"], "")
    );
    let cairn = Cairn::start(&all).await;
    cairn.wait_ready().await;
    all_open(&cairn).await;
    assert_eq!(services(&cairn).await, ["orders", "stock", "users"]);
    assert_eq!(
        etcd_metric(&etcd, "etcd_debugging_mvcc_watcher_total").await - watchers_before,
        1.0,
        "one watch of the whole prefix"
    );
    // Scoped by a reload: what it no longer watches is emptied, not left to go stale.
    cairn
        .reload(&config(&etcd.endpoint(), &["orders"], ""))
        .await
        .expect("reloaded");
    let doc = cairn.services().await;
    for gone in ["stock", "users"] {
        let left = doc["services"][gone]["instances"].as_array().map(Vec::len);
        assert!(matches!(left, None | Some(0)), "{gone} is emptied: {doc}");
    }
    assert_eq!(
        doc["services"]["orders"]["instances"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );

    let gateway = format!(
        "{}\n[[gateway]]\nlisten = \"127.0.0.1:0\"\n",
        config(&etcd.endpoint(), &[], "")
    );
    let cairn = Cairn::start(&gateway).await;
    cairn.wait_ready().await;
    assert_eq!(services(&cairn).await, ["orders", "stock", "users"]);
}
