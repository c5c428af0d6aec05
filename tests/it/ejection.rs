//! Instance health as a user meets it: dead instances leave the rotation after a few failures
//! and come back once they answer; too many dead is a panic; active checks take a failing
//! instance out before any client meets it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;

use crate::support::cairn::{http_get, Cairn, ADMIN};
use crate::support::etcd::Etcd;
use crate::support::http::{curl, python_client, PyUpstream};
use crate::support::upstream::{greeting, Blackhole, Tagged};
use crate::support::{eventually, free_port};

const SOON: Duration = Duration::from_secs(10);

/// Opens `n` connections to `listen`, `concurrency` at a time, and counts who greeted each.
/// Panics if any connection was closed without a greeting.
pub(crate) async fn greetings(
    listen: SocketAddr,
    n: usize,
    concurrency: usize,
) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    let mut left = n;
    while left > 0 {
        let batch = left.min(concurrency);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..batch {
            set.spawn(greeting(listen));
        }
        while let Some(got) = set.join_next().await {
            let name = got
                .expect("a greeting task")
                .unwrap_or_else(|| panic!("a connection among {n} was lost"));
            *counts.entry(name).or_default() += 1;
        }
        left -= batch;
    }
    counts
}

/// The `/services` entry of instance `id` of `service`.
fn instance<'a>(doc: &'a Value, service: &str, id: &str) -> &'a Value {
    doc["services"][service]["instances"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["id"] == id))
        .unwrap_or_else(|| panic!("no instance {service}/{id} in {doc}"))
}

fn states(doc: &Value, service: &str) -> Vec<(String, String)> {
    doc["services"][service]["instances"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| {
                    let id = i["id"].as_str().unwrap_or_default().to_string();
                    (id, i["state"].as_str().unwrap_or_default().to_string())
                })
                .collect()
        })
        .unwrap_or_default()
}

fn connect_failures(listen: SocketAddr, service: &str) -> String {
    format!("cairn_listener_connect_failures_total{{listen=\"{listen}\",service=\"{service}\"}}")
}

/// Failures seen so far on a listener; absent (none yet) counts as zero.
async fn failures(cairn: &Cairn, listen: SocketAddr, service: &str) -> f64 {
    let series = connect_failures(listen, service);
    let (_, body) = cairn.get("/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(&series).and_then(|v| v.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

#[tokio::test]
async fn blackholed_and_refusing_instances_are_ejected_then_readmitted_once_they_answer() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    // TCP service "t": three live instances, one blackholed, one refusing.
    let mut live_t = Vec::new();
    for name in ["t0", "t1", "t2"] {
        let up = Tagged::start(name).await;
        kv.put(format!("/services/t/{name}"), up.addr.to_string(), None)
            .await
            .unwrap();
        live_t.push(up);
    }
    let hole_t = Blackhole::start().await;
    let refused_t: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    kv.put("/services/t/x-hole", hole_t.addr.to_string(), None)
        .await
        .unwrap();
    kv.put("/services/t/x-refused", refused_t.to_string(), None)
        .await
        .unwrap();
    // HTTP service "h": the same, with real HTTP upstreams.
    let mut live_h = Vec::new();
    for name in ["h0", "h1", "h2"] {
        let up = PyUpstream::start(name);
        kv.put(format!("/services/h/{name}"), up.addr.to_string(), None)
            .await
            .unwrap();
        live_h.push(up);
    }
    let hole_h = Blackhole::start().await;
    let refused_h = free_port();
    kv.put("/services/h/x-hole", hole_h.addr.to_string(), None)
        .await
        .unwrap();
    kv.put(
        "/services/h/x-refused",
        format!("127.0.0.1:{refused_h}"),
        None,
    )
    .await
    .unwrap();

    // Ejection as by default (5 failures, 30 s): long enough for the 2000 connections below.
    let judged = "connect_timeout = \"300ms\"\n";
    let config = format!(
        "[etcd]\nendpoints = [\"{}\"]\n\n{ADMIN}\n[[service]]\nname = \"t\"\nlisten = \"127.0.0.1:0\"\n{judged}\n[[service]]\nname = \"h\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"http\"\n{judged}",
        etcd.endpoint()
    );
    let cairn = Cairn::start(&config).await;
    let ids = ["t0", "t1", "t2", "x-hole", "x-refused"];
    cairn.wait_instances("t", &ids, SOON).await;
    cairn
        .wait_instances("h", &["h0", "h1", "h2", "x-hole", "x-refused"], SOON)
        .await;
    let (t, h) = (cairn.listen_of("t"), cairn.listen_of("h"));

    // The first few failures: every client still gets an answer, and both bad instances leave.
    eventually(
        Duration::from_secs(30),
        "both bad instances of each service are ejected",
        || async {
            greetings(t, 10, 10).await;
            for _ in 0..10 {
                let (status, body) = http_get(h, "/").await.expect("a response");
                assert_eq!(status, 200, "{body}");
            }
            let doc = cairn.services().await;
            let out = |s: &str| {
                ["x-hole", "x-refused"]
                    .iter()
                    .all(|id| instance(&doc, s, id)["state"] == "ejected")
            };
            (out("t") && out("h")).then_some(())
        },
    )
    .await;

    // From now on no connection waits for a connect timeout: no connect fails at all.
    let (before_t, before_h) = (
        failures(&cairn, t, "t").await,
        failures(&cairn, h, "h").await,
    );
    let served = greetings(t, 1000, 20).await;
    assert_eq!(served.values().sum::<usize>(), 1000);
    assert!(served.keys().all(|k| k.starts_with('t')), "{served:?}");
    let gets = python_client(h, 1000, &[]);
    assert_eq!(gets.len(), 1000);
    assert!(
        gets.iter()
            .all(|r| r.status == 200 && r.body.starts_with('h')),
        "{:?}",
        gets.iter().find(|r| r.status != 200)
    );
    assert_eq!(
        failures(&cairn, t, "t").await,
        before_t,
        "a TCP connection tried an ejected instance"
    );
    assert_eq!(
        failures(&cairn, h, "h").await,
        before_h,
        "an HTTP request tried an ejected instance"
    );

    let doc = cairn.services().await;
    for service in ["t", "h"] {
        for id in ["x-hole", "x-refused"] {
            let i = instance(&doc, service, id);
            assert_eq!(
                (&i["state"], &i["usable"]),
                (&Value::from("ejected"), &Value::from(false)),
                "{i}"
            );
            assert!(
                i["ejected_seconds_left"]
                    .as_u64()
                    .is_some_and(|s| (1..=33).contains(&s)),
                "{i}"
            );
        }
        assert_eq!(doc["services"][service]["usable"], 3, "{doc}");
        assert_eq!(
            cairn
                .metric(&format!("cairn_instances_usable{{service=\"{service}\"}}"))
                .await,
            3.0
        );
        assert!(
            cairn
                .metric(&format!(
                    "cairn_instance_ejections_total{{service=\"{service}\"}}"
                ))
                .await
                >= 2.0
        );
    }
    assert_eq!(
        cairn.log().matches("instance ejected").count(),
        4,
        "{}",
        cairn.log()
    );

    // They recover: the blackhole starts answering, something listens on the refused ports.
    // (The HTTP blackhole stays dead: on probation it fails once and is ejected again.)
    let _back = [
        hole_t.recover("x-hole"),
        Tagged::start_at("x-refused", refused_t).await,
    ];
    let _back_h = PyUpstream::start_with("x-refused", &["--port", &refused_h.to_string()]);
    let readmitted = eventually(
        Duration::from_secs(40),
        "the recovered instances are readmitted",
        || async {
            let served = greetings(t, 5, 1).await;
            let (status, _) = http_get(h, "/").await.expect("a response");
            assert_eq!(status, 200);
            let doc = cairn.services().await;
            let t_ok = states(&doc, "t").iter().all(|(_, s)| s == "healthy");
            let h_ok = instance(&doc, "h", "x-refused")["state"] == "healthy";
            (t_ok && h_ok).then_some((served, doc))
        },
    )
    .await;
    let doc = readmitted.1;
    assert_eq!(doc["services"]["t"]["usable"], 5, "{doc}");
    let again = greetings(t, 50, 1).await;
    assert_eq!(again.len(), 5, "every instance serves again: {again:?}");
    eventually(
        Duration::from_secs(10),
        "the dead HTTP instance is ejected again",
        || async {
            let (status, _) = http_get(h, "/").await.expect("a response");
            assert_eq!(status, 200);
            let doc = cairn.services().await;
            (instance(&doc, "h", "x-hole")["state"] == "ejected"
                && doc["services"]["h"]["ejections"].as_u64() >= Some(3))
            .then_some(())
        },
    )
    .await;
    let log = cairn.log();
    assert!(log.matches("instance readmitted").count() >= 3, "{log}");
}

#[tokio::test]
async fn with_three_of_four_dead_every_instance_is_tried_and_the_live_one_answers() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let live = Tagged::start("live").await;
    kv.put("/services/p/live", live.addr.to_string(), None)
        .await
        .unwrap();
    for id in ["dead-1", "dead-2", "dead-3"] {
        kv.put(
            format!("/services/p/{id}"),
            format!("127.0.0.1:{}", free_port()),
            None,
        )
        .await
        .unwrap();
    }
    let config = format!(
        "[etcd]\nendpoints = [\"{}\"]\n\n{ADMIN}\n[[service]]\nname = \"p\"\nlisten = \"127.0.0.1:0\"\nretries = 3\n[service.outlier]\nconsecutive_failures = 1\nmax_ejection_percent = 100\n",
        etcd.endpoint()
    );
    let cairn = Cairn::start(&config).await;
    cairn
        .wait_instances("p", &["dead-1", "dead-2", "dead-3", "live"], SOON)
        .await;
    let p = cairn.listen(0);
    // Every connection is answered, however many instances it tries first.
    let served = greetings(p, 100, 1).await;
    assert_eq!(served.get("live"), Some(&100), "{served:?}");
    let doc = cairn.services().await;
    assert_eq!(doc["services"]["p"]["panic"], true, "{doc}");
    assert_eq!(doc["services"]["p"]["usable"], 4, "{doc}");
    // In the panic every instance stays in rotation: the dead ones keep being tried.
    let before = failures(&cairn, p, "p").await;
    greetings(p, 40, 1).await;
    let tried = failures(&cairn, p, "p").await - before;
    assert!(
        tried >= 20.0,
        "only {tried} connects to the dead instances in 40 connections"
    );
}

#[tokio::test]
async fn active_checks_take_a_failing_instance_out_and_bring_it_back() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let ups: Vec<PyUpstream> = ["a", "b", "c"]
        .iter()
        .map(|n| PyUpstream::start(n))
        .collect();
    for (name, up) in ["a", "b", "c"].iter().zip(&ups) {
        kv.put(format!("/services/web/{name}"), up.addr.to_string(), None)
            .await
            .unwrap();
    }
    let mut tagged = Vec::new();
    for name in ["ta", "tb", "tc"] {
        tagged.push(Tagged::start(name).await);
    }
    for up in &tagged {
        kv.put(
            format!("/services/raw/{}", up.name),
            up.addr.to_string(),
            None,
        )
        .await
        .unwrap();
    }
    let every = "interval = \"200ms\"\ntimeout = \"150ms\"\nrise = 2\nfall = 3\n";
    let config = format!(
        "[etcd]\nendpoints = [\"{}\"]\n\n{ADMIN}\n[[service]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"http\"\n[service.health]\nhttp = \"/healthz\"\n{every}\n[[service]]\nname = \"raw\"\nlisten = \"127.0.0.1:0\"\n[service.health]\ntcp = true\n{every}",
        etcd.endpoint()
    );
    let cairn = Cairn::start(&config).await;
    cairn.wait_instances("web", &["a", "b", "c"], SOON).await;
    cairn.wait_instances("raw", &["ta", "tb", "tc"], SOON).await;

    // "b" starts failing its check; no client request is needed to notice.
    let fail = curl(&[
        "-sS",
        "-X",
        "POST",
        &format!("http://{}/healthz/fail", ups[1].addr),
    ]);
    assert!(fail.status.success());
    eventually(
        Duration::from_secs(10),
        "b is out on failing checks",
        || async {
            let doc = cairn.services().await;
            let b = instance(&doc, "web", "b");
            (b["state"] == "failing_checks" && b["usable"] == false).then_some(())
        },
    )
    .await;
    let gets = python_client(cairn.listen_of("web"), 60, &[]);
    assert!(
        gets.iter().all(|r| r.status == 200 && r.body != "b\n"),
        "b still served"
    );
    assert!(
        cairn
            .metric("cairn_health_checks_total{service=\"web\",result=\"failed\"}")
            .await
            >= 3.0
    );

    // It passes again: back after `rise` passes.
    let pass = curl(&[
        "-sS",
        "-X",
        "POST",
        &format!("http://{}/healthz/pass", ups[1].addr),
    ]);
    assert!(pass.status.success());
    eventually(Duration::from_secs(10), "b is back", || async {
        let doc = cairn.services().await;
        (instance(&doc, "web", "b")["state"] == "healthy").then_some(())
    })
    .await;
    let gets = python_client(cairn.listen_of("web"), 30, &[]);
    assert!(
        gets.iter().filter(|r| r.body == "b\n").count() >= 5,
        "b serves again"
    );

    // A TCP check notices an instance that stopped listening, then its return.
    let gone = tagged.remove(1);
    let addr = gone.addr;
    gone.stop();
    eventually(
        Duration::from_secs(10),
        "tb is out on failing checks",
        || async {
            let doc = cairn.services().await;
            (instance(&doc, "raw", "tb")["state"] == "failing_checks").then_some(())
        },
    )
    .await;
    let served = greetings(cairn.listen_of("raw"), 30, 5).await;
    assert!(!served.contains_key("tb"), "{served:?}");
    let _back = Tagged::start_at("tb", addr).await;
    eventually(Duration::from_secs(10), "tb is back", || async {
        let doc = cairn.services().await;
        (instance(&doc, "raw", "tb")["state"] == "healthy").then_some(())
    })
    .await;
    let log = cairn.log();
    assert!(
        log.contains("instance failing health checks: out of rotation"),
        "{log}"
    );
    assert!(
        log.contains("instance passing health checks again"),
        "{log}"
    );
}
