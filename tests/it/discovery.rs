//! Discovery against a real etcd: sync, changes, leases, formats, garbage, outages, compaction.

use std::time::{Duration, Instant};

use etcd_client::PutOptions;
use serde_json::json;

use crate::support::cairn::{config, Cairn, SCOPE_ALL};
use crate::support::etcd::Etcd;
use crate::support::upstream::{greeting, Tagged};
use crate::support::{etcd_instances, eventually, head};

const SOON: Duration = Duration::from_secs(10);

#[tokio::test]
async fn initial_sync_makes_registered_instances_routable() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let up = Tagged::start("orders-1").await;
    kv.put("/services/orders/orders-1", up.addr.to_string(), None)
        .await
        .unwrap();
    // Not an instance: no id after the service.
    kv.put("/services/orders", "10.0.0.9:80", None)
        .await
        .unwrap();

    let cairn = Cairn::start(&config(&etcd.endpoint(), &["orders"], "")).await;
    cairn.wait_ready().await;
    let doc = cairn.services().await;
    assert_eq!(doc["synced"], json!(true));
    let rev = head(&mut kv).await;
    assert_eq!(doc["revision"], json!(rev), "{doc}");
    assert_eq!(
        doc["services"]["orders"]["instances"],
        json!([{
            "id": "orders-1", "addr": up.addr.to_string(), "weight": 1, "zone": null,
            "metadata": {}, "state": "healthy", "usable": true, "inflight": 0,
        }])
    );
    assert_eq!(greeting(cairn.listen(0)).await.as_deref(), Some("orders-1"));
}

#[tokio::test]
async fn readiness_waits_for_etcd_and_routing_starts_when_it_appears() {
    let mut etcd = Etcd::start().await;
    let up = Tagged::start("late-1").await;
    let endpoint = etcd.endpoint();
    etcd.kill();

    let cairn = Cairn::start(&config(&endpoint, &["late"], "")).await;
    assert_eq!(
        cairn.get("/readyz").await.0,
        503,
        "not ready before the first sync"
    );
    assert_eq!(
        greeting(cairn.listen(0)).await,
        None,
        "no instances yet: closed at once"
    );

    etcd.restart().await;
    etcd.client()
        .await
        .put("/services/late/late-1", up.addr.to_string(), None)
        .await
        .unwrap();
    cairn.wait_ready().await;
    cairn.wait_instances("late", &["late-1"], SOON).await;
    assert_eq!(greeting(cairn.listen(0)).await.as_deref(), Some("late-1"));
}

#[tokio::test]
async fn puts_and_deletes_reach_the_proxy() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let a = Tagged::start("a").await;
    let b = Tagged::start("b").await;
    let cairn = Cairn::start(&config(&etcd.endpoint(), &["svc"], "")).await;
    cairn.wait_ready().await;
    assert_eq!(greeting(cairn.listen(0)).await, None);

    kv.put("/services/svc/a", a.addr.to_string(), None)
        .await
        .unwrap();
    eventually(SOON, "a new instance receives connections", || async {
        (greeting(cairn.listen(0)).await.as_deref() == Some("a")).then_some(())
    })
    .await;

    kv.put("/services/svc/b", b.addr.to_string(), None)
        .await
        .unwrap();
    cairn.wait_instances("svc", &["a", "b"], SOON).await;
    kv.delete("/services/svc/a", None).await.unwrap();
    cairn.wait_instances("svc", &["b"], SOON).await;
    for _ in 0..6 {
        assert_eq!(
            greeting(cairn.listen(0)).await.as_deref(),
            Some("b"),
            "a deleted instance got a connection"
        );
    }
    // A changed value moves the instance.
    kv.put("/services/svc/b", a.addr.to_string(), None)
        .await
        .unwrap();
    eventually(SOON, "the changed address is used", || async {
        (greeting(cairn.listen(0)).await.as_deref() == Some("a")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_expired_lease_removes_its_instance() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let up = Tagged::start("leased").await;
    let lease = kv.lease_grant(2, None).await.unwrap().id();
    kv.put(
        "/services/l/leased",
        up.addr.to_string(),
        Some(PutOptions::new().with_lease(lease)),
    )
    .await
    .unwrap();
    kv.put("/services/l/static", up.addr.to_string(), None)
        .await
        .unwrap();
    let cairn = Cairn::start(&config(&etcd.endpoint(), &["l"], "")).await;
    cairn.wait_instances("l", &["leased", "static"], SOON).await;
    // Nobody keeps the lease alive: etcd expires it after 2 s (checked every 500 ms).
    cairn.wait_instances("l", &["static"], SOON).await;
}

#[tokio::test]
async fn all_three_value_formats_are_routable() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let plain = Tagged::start("plain").await;
    let json = Tagged::start("json").await;
    let endpoints = Tagged::start("endpoints").await;
    let cairn = Cairn::start(&config(&etcd.endpoint(), &["mixed"], "")).await;
    cairn.wait_ready().await;

    kv.put("/services/mixed/p", plain.addr.to_string(), None)
        .await
        .unwrap();
    kv.put(
        "/services/mixed/j",
        format!(
            r#"{{"addr":"{}","weight":3,"zone":"eu-1a","metadata":{{"version":"1.4.2"}}}}"#,
            json.addr
        ),
        None,
    )
    .await
    .unwrap();
    // Exactly what go.etcd.io/etcd/client/v3/naming/endpoints writes: the key ends in the address.
    kv.put(
        format!("/services/mixed/{}", endpoints.addr),
        format!(r#"{{"Op":0,"Addr":"{}","Metadata":null}}"#, endpoints.addr),
        None,
    )
    .await
    .unwrap();
    let e_id = endpoints.addr.to_string();
    let mut ids = vec!["j", "p", e_id.as_str()];
    ids.sort();
    cairn.wait_instances("mixed", &ids, SOON).await;

    let doc = cairn.services().await;
    let inst = doc["services"]["mixed"]["instances"].as_array().unwrap();
    let j = inst.iter().find(|i| i["id"] == "j").unwrap();
    assert_eq!(
        (j["weight"].clone(), j["zone"].clone()),
        (json!(3), json!("eu-1a"))
    );
    assert_eq!(j["metadata"], json!({"version": "1.4.2"}));

    // The JSON instance's weight 3 counts: it serves three of every five connections.
    let mut seen: Vec<String> = Vec::new();
    for _ in 0..5 {
        seen.push(greeting(cairn.listen(0)).await.expect("a greeting"));
    }
    seen.sort();
    assert_eq!(seen, ["endpoints", "json", "json", "json", "plain"]);
}

#[tokio::test]
async fn malformed_values_are_skipped_and_neighbours_keep_working() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let good = Tagged::start("good").await;
    kv.put("/services/m/good", good.addr.to_string(), None)
        .await
        .unwrap();
    kv.put("/services/m/garbage", "not an address", None)
        .await
        .unwrap();
    let cairn = Cairn::start(&config(&etcd.endpoint(), &["m"], "")).await;
    cairn.wait_instances("m", &["good"], SOON).await;
    assert_eq!(
        cairn.metric("cairn_registry_invalid_values_total").await,
        1.0
    );

    // Garbage arriving through the watch, of every kind, while routing goes on.
    let bad: [&[u8]; 6] = [
        b"{\"addr\":",
        b"\xff\xfe",
        b"10.0.0.1:0",
        b"{\"port\":80}",
        b"",
        b"[::1]:99999",
    ];
    for (i, v) in bad.iter().enumerate() {
        kv.put(format!("/services/m/bad-{i}"), v.to_vec(), None)
            .await
            .unwrap();
    }
    // A good instance overwritten with garbage stops being routable.
    let other = Tagged::start("other").await;
    kv.put("/services/m/other", other.addr.to_string(), None)
        .await
        .unwrap();
    cairn.wait_instances("m", &["good", "other"], SOON).await;
    kv.put("/services/m/other", "garbage:port", None)
        .await
        .unwrap();
    cairn.wait_instances("m", &["good"], SOON).await;
    assert_eq!(
        cairn.metric("cairn_registry_invalid_values_total").await,
        8.0
    );
    for _ in 0..4 {
        assert_eq!(greeting(cairn.listen(0)).await.as_deref(), Some("good"));
    }
    let log = cairn.log();
    assert!(
        log.contains("skipping unusable instance") && log.contains("/services/m/bad-3"),
        "{log}"
    );
}

#[tokio::test]
async fn routing_continues_while_etcd_is_down_and_catches_up_after() {
    let mut etcd = Etcd::start().await;
    let a = Tagged::start("a").await;
    let b = Tagged::start("b").await;
    etcd.client()
        .await
        .put("/services/s/a", a.addr.to_string(), None)
        .await
        .unwrap();
    let cairn = Cairn::start(&config(&etcd.endpoint(), &["s"], "")).await;
    cairn.wait_instances("s", &["a"], SOON).await;
    assert_eq!(cairn.get("/readyz").await, (200, "ready\n".to_string()));
    assert_eq!(cairn.metric("cairn_registry_connected").await, 1.0);
    assert!(
        cairn
            .metric("cairn_etcd_operations_total{operation=\"range\",status=\"ok\"}")
            .await
            >= 1.0
    );
    let member = format!("cairn_etcd_member_up{{endpoint=\"{}\"}}", etcd.endpoint());
    assert_eq!(cairn.metric(&member).await, 1.0);

    etcd.kill();
    let down = Instant::now();
    while down.elapsed() < Duration::from_secs(3) {
        assert_eq!(
            greeting(cairn.listen(0)).await.as_deref(),
            Some("a"),
            "routing stopped while etcd was down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cairn.get("/healthz").await.0, 200);
    // Still ready: routing from the last snapshot is the point. But it says so.
    let (status, body) = cairn.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("ready (stale ") && body.contains("etcd unreachable"),
        "{body}"
    );
    assert_eq!(cairn.metric("cairn_registry_connected").await, 0.0);
    assert!(cairn.metric("cairn_registry_stale_seconds").await >= 2.0);

    etcd.restart().await;
    let mut kv = etcd.client().await;
    kv.put("/services/s/b", b.addr.to_string(), None)
        .await
        .unwrap();
    kv.delete("/services/s/a", None).await.unwrap();
    cairn.wait_instances("s", &["b"], SOON).await;
    assert_eq!(greeting(cairn.listen(0)).await.as_deref(), Some("b"));
    assert!(cairn.metric("cairn_discovery_watch_restarts_total").await >= 1.0);
}

#[tokio::test]
async fn a_compaction_while_cairn_is_paused_ends_with_etcds_exact_state() {
    compacted_while_paused(false).await;
}

#[tokio::test]
async fn a_compaction_while_cairn_is_paused_ends_with_etcds_exact_state_with_scope_all() {
    compacted_while_paused(true).await;
}

/// A node routing `c` is paused while etcd compacts past its watch; it comes back to exactly
/// etcd's state. With scope "all" it also holds `other`, which it does not route; scoped to
/// the routed services (the default), it never does.
async fn compacted_while_paused(scope_all: bool) {
    // etcd drops a connection whose client stops answering pings within about 2 s, so a paused
    // cairn comes back to a closed stream and must resume from a compacted revision.
    let etcd = Etcd::start_with(&[
        "--grpc-keepalive-interval=1s",
        "--grpc-keepalive-timeout=1s",
    ])
    .await;
    let mut kv = etcd.client().await;
    for i in 0..5 {
        kv.put(format!("/services/c/i-{i}"), format!("10.0.0.{i}:80"), None)
            .await
            .unwrap();
    }
    let scope = if scope_all { SCOPE_ALL } else { "" };
    let cairn = Cairn::start(&format!("{}{scope}", config(&etcd.endpoint(), &["c"], ""))).await;
    cairn
        .wait_instances("c", &["i-0", "i-1", "i-2", "i-3", "i-4"], SOON)
        .await;
    assert_eq!(cairn.metric("cairn_discovery_lists_total").await, 1.0);

    cairn.signal("STOP");
    for i in 0..3 {
        kv.delete(format!("/services/c/i-{i}"), None).await.unwrap();
    }
    // About 6 MiB of events: more than the HTTP/2 windows and socket buffers hold, so etcd
    // cannot hand them all to the paused process and its watcher falls behind.
    let padding = "x".repeat(48 * 1024);
    for round in 0..120 {
        let value = format!(
            r#"{{"addr":"10.0.1.{}:80","metadata":{{"pad":"{padding}"}}}}"#,
            round % 250
        );
        kv.put("/services/c/i-4", value, None).await.unwrap();
    }
    kv.put("/services/c/i-4", "10.0.1.250:80", None)
        .await
        .unwrap();
    kv.put("/services/c/new", "10.0.2.1:80", None)
        .await
        .unwrap();
    kv.put("/services/other/x", "10.0.3.1:80", None)
        .await
        .unwrap();
    let head = head(&mut kv).await;
    kv.compact(head, None).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    cairn.signal("CONT");

    cairn
        .wait_instances("c", &["i-3", "i-4", "new"], SOON)
        .await;
    let want = etcd_instances(&mut kv, "c").await;
    assert_eq!(cairn.instances("c").await, want);
    if scope_all {
        cairn.wait_instances("other", &["x"], SOON).await;
    } else {
        let doc = cairn.services().await;
        assert!(doc["services"].get("other").is_none(), "{doc}");
    }
    assert!(
        cairn.metric("cairn_discovery_lists_total").await >= 2.0,
        "the compaction was not noticed, so this test did not exercise a re-list:\n{}",
        cairn.log()
    );
    assert_eq!(cairn.services().await["revision"], json!(head));
}

#[tokio::test]
async fn a_go_zero_key_outside_the_prefix_is_routed_through_its_service() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let product = Tagged::start("product").await;
    let stray = Tagged::start("stray").await;
    // go-zero: `<key>/<lease id in decimal>` with a plain host:port value, at the top level.
    let lease = kv.lease_grant(30, None).await.unwrap().id();
    kv.put(
        format!("product.rpc/{lease}"),
        product.addr.to_string(),
        Some(PutOptions::new().with_lease(lease)),
    )
    .await
    .unwrap();
    // Under the prefix, the same service name: ignored, the key is authoritative.
    kv.put("/services/product/stray", stray.addr.to_string(), None)
        .await
        .unwrap();
    let cairn = Cairn::start(&config(
        &etcd.endpoint(),
        &["product"],
        "key = \"product.rpc\"",
    ))
    .await;
    let id = lease.to_string();
    cairn.wait_instances("product", &[id.as_str()], SOON).await;
    for _ in 0..4 {
        assert_eq!(greeting(cairn.listen(0)).await.as_deref(), Some("product"));
    }
    // Changes under the key arrive like any other.
    kv.lease_revoke(lease).await.unwrap();
    cairn.wait_instances("product", &[], SOON).await;
    assert_eq!(greeting(cairn.listen(0)).await, None);
}

#[tokio::test]
async fn readiness_turns_503_once_etcd_is_away_for_max_stale() {
    let mut etcd = Etcd::start().await;
    // A routed service: readiness follows its watch (a node that watches nothing is never
    // behind).
    let cairn = Cairn::start(&format!(
        "[etcd]\nendpoints = [\"{}\"]\n[admin]\nlisten = \"127.0.0.1:0\"\nmax_stale = \"2s\"\n\n[[service]]\nname = \"s\"\nlisten = \"127.0.0.1:0\"\n",
        etcd.endpoint()
    ))
    .await;
    cairn.wait_ready().await;
    etcd.kill();
    eventually(SOON, "readiness turns 503", || async {
        let (status, body) = cairn.get("/readyz").await;
        (status == 503 && body.contains("max_stale")).then_some(())
    })
    .await;
    etcd.restart().await;
    cairn.wait_ready().await;
    assert_eq!(cairn.get("/readyz").await, (200, "ready\n".to_string()));
}

#[tokio::test]
async fn a_service_gone_from_etcd_for_a_minute_leaves_services_and_metrics() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let up = Tagged::start("x").await;
    for service in ["orders", "passing"] {
        kv.put(format!("/services/{service}/x"), up.addr.to_string(), None)
            .await
            .unwrap();
    }
    // "orders" has a listener; "passing" is only in the registry, held with scope "all".
    let cairn = Cairn::start(&format!(
        "{}{SCOPE_ALL}",
        config(&etcd.endpoint(), &["orders"], "")
    ))
    .await;
    cairn.wait_instances("passing", &["x"], SOON).await;
    cairn.wait_instances("orders", &["x"], SOON).await;
    let series = "cairn_service_instances{service=\"passing\"}";
    assert_eq!(cairn.metric(series).await, 1.0);
    kv.delete("/services/passing/x", None).await.unwrap();
    kv.delete("/services/orders/x", None).await.unwrap();
    let started = Instant::now();
    eventually(
        Duration::from_secs(100),
        "the empty service is forgotten",
        || async {
            let doc = cairn.services().await;
            doc["services"].get("passing").is_none().then_some(())
        },
    )
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(59),
        "forgotten after {:?}, before its minute was up",
        started.elapsed()
    );
    let (_, metrics) = cairn.get("/metrics").await;
    assert!(!metrics.contains("service=\"passing\""), "{metrics}");
    // The service a listener names stays, empty.
    let doc = cairn.services().await;
    assert_eq!(doc["services"]["orders"]["instances"], json!([]), "{doc}");
    // And one that comes back is routable again.
    kv.put("/services/passing/x", up.addr.to_string(), None)
        .await
        .unwrap();
    cairn.wait_instances("passing", &["x"], SOON).await;
}

#[tokio::test]
async fn one_service_can_be_asked_for_and_an_unknown_one_is_404() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    for (service, id) in [("orders", "o1"), ("users", "u1")] {
        kv.put(format!("/services/{service}/{id}"), "10.0.0.1:80", None)
            .await
            .unwrap();
    }
    let cairn = Cairn::start(&format!(
        "{}{SCOPE_ALL}",
        config(&etcd.endpoint(), &["orders"], "")
    ))
    .await;
    cairn.wait_instances("users", &["u1"], SOON).await;
    let (status, body) = cairn.get("/services?service=users").await;
    assert_eq!(status, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["services"].as_object().unwrap().len(), 1, "{doc}");
    assert_eq!(doc["services"]["users"]["instances"][0]["id"], "u1");
    let (status, body) = cairn.get("/services?service=nobody").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("nobody"), "{body}");
}
