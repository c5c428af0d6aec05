//! gRPC end to end: real grpcio servers registered in a real etcd, a real grpcio client
//! through cairn. Each call is balanced on its own, cairn's own failures are gRPC statuses,
//! deadlines hold, and messages and streams of any size pass.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::cairn::{Cairn, ADMIN};
use crate::support::etcd::Etcd;
use crate::support::grpc::{grpc_job, GrpcServer};
use crate::support::h2raw::{Answer, RawH2};
use crate::support::http::memory_kib;

const SOON: Duration = Duration::from_secs(10);

/// etcd with `instances` registered as `echo/<id>`, and cairn configured with `config` (after
/// `[etcd]` and `[admin]`), once it routes to every instance.
async fn behind_cairn(instances: &[(&str, SocketAddr)], config: &str) -> (Etcd, Cairn) {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    for (id, addr) in instances {
        kv.put(format!("/services/echo/{id}"), addr.to_string(), None)
            .await
            .unwrap();
    }
    let cairn = Cairn::start(&format!(
        "[etcd]\nendpoints = [\"{}\"]\n{ADMIN}\n{config}\n",
        etcd.endpoint()
    ))
    .await;
    let ids: Vec<&str> = instances.iter().map(|(id, _)| *id).collect();
    cairn.wait_instances("echo", &ids, SOON).await;
    (etcd, cairn)
}

/// The gRPC service `echo` every test routes, with `extra` settings.
fn echo(extra: &str) -> String {
    format!(
        "[[service]]\nname = \"echo\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"grpc\"\n{extra}\n"
    )
}

/// etcd, `servers` registered as `echo/<id>`, and cairn with a gRPC service `echo` and `extra`.
async fn setup(ids: &[&str], extra: &str) -> (Etcd, Vec<GrpcServer>, Cairn) {
    let servers: Vec<GrpcServer> = ids.iter().map(|id| GrpcServer::start(id)).collect();
    let instances: Vec<(&str, SocketAddr)> = ids
        .iter()
        .copied()
        .zip(servers.iter().map(|s| s.addr))
        .collect();
    let (etcd, cairn) = behind_cairn(&instances, &echo(extra)).await;
    (etcd, servers, cairn)
}

fn results(out: &Value) -> &Vec<Value> {
    out["results"].as_array().expect("results")
}

fn codes(out: &Value) -> Vec<i64> {
    results(out)
        .iter()
        .map(|r| r["code"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn unary_calls_on_one_connection_are_spread_over_every_instance() {
    let (_etcd, _servers, cairn) = setup(&["a", "b", "c"], "").await;
    let out = grpc_job(
        cairn.listen(0),
        json!({"calls": 300, "method": "Who", "metadata": [["x-echo", "hello"]]}),
    )
    .await;
    let mut per: HashMap<String, usize> = HashMap::new();
    for r in results(&out) {
        assert_eq!(r["code"], 0, "{r}");
        let id = r["response"].as_str().unwrap().to_string();
        // Metadata both ways and the trailers arrive intact.
        assert!(
            r["initial"]
                .as_array()
                .unwrap()
                .contains(&json!(["x-server", id])),
            "{r}"
        );
        assert!(
            r["initial"]
                .as_array()
                .unwrap()
                .contains(&json!(["x-echo", "hello"])),
            "{r}"
        );
        assert!(
            r["trailing"]
                .as_array()
                .unwrap()
                .contains(&json!(["x-trailer", id])),
            "{r}"
        );
        *per.entry(id).or_default() += 1;
    }
    assert_eq!(per.len(), 3, "{per:?}");
    for (id, n) in &per {
        assert!((85..=115).contains(n), "{id} got {n} of 300: {per:?}");
    }
}

#[tokio::test]
async fn cairns_own_failures_are_grpc_statuses_naming_the_service() {
    let (etcd, _servers, cairn) = setup(&["a"], "request_timeout = \"400ms\"").await;
    let listen = cairn.listen(0);
    let one = |job: Value| async move { grpc_job(listen, job).await["results"][0].clone() };

    // The instance's own status passes through untouched.
    let r = one(json!({"calls": 1, "method": "Fail", "payload": "5"})).await;
    assert_eq!(
        (r["code"].as_i64(), r["details"].as_str()),
        (Some(5), Some("failed on a"))
    );

    // No answer within request_timeout, the client setting no deadline: cairn answers 4.
    let r = one(json!({"calls": 1, "method": "Sleep", "payload": "1"})).await;
    assert_eq!(r["code"], 4, "{r}");
    assert!(r["details"].as_str().unwrap().contains("\"echo\""), "{r}");
    assert!(r["seconds"].as_f64().unwrap() < 0.9, "{r}");
    // The client's deadline reaches the instance, reduced by the time spent in cairn, and
    // capped by request_timeout; a call without one gets none (a stream may outlive
    // request_timeout once its headers came).
    let r = one(json!({"calls": 1, "method": "Left", "timeout": 0.3})).await;
    let left: f64 = r["response"].as_str().unwrap().parse().unwrap();
    assert!(left > 0.1 && left < 0.3, "{r}");
    let r = one(json!({"calls": 1, "method": "Left", "timeout": 5.0})).await;
    let left: f64 = r["response"].as_str().unwrap().parse().unwrap();
    assert!(left > 0.2 && left <= 0.4, "{r}");
    let r = one(json!({"calls": 1, "method": "Left"})).await;
    let left: f64 = r["response"].as_str().unwrap().parse().unwrap();
    assert!(left > 1e6, "{r}");

    // A refused connect: 14, naming the service and the instance.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let mut kv = etcd.client().await;
    kv.delete("/services/echo/a", None).await.unwrap();
    kv.put("/services/echo/dead", dead_addr.to_string(), None)
        .await
        .unwrap();
    cairn.wait_instances("echo", &["dead"], SOON).await;
    let r = one(json!({"calls": 1, "method": "Who"})).await;
    assert_eq!(r["code"], 14, "{r}");
    let details = r["details"].as_str().unwrap();
    assert!(
        details.contains("\"echo\"") && details.contains(&dead_addr.to_string()),
        "{r}"
    );

    // No instance: 14.
    kv.delete("/services/echo/dead", None).await.unwrap();
    cairn.wait_instances("echo", &[], SOON).await;
    let r = one(json!({"calls": 1, "method": "Who"})).await;
    assert_eq!(r["code"], 14, "{r}");
    assert!(
        r["details"].as_str().unwrap().contains("has no instances"),
        "{r}"
    );
}

#[tokio::test]
async fn a_gateway_routes_calls_by_authority_and_answers_an_unknown_service_with_12() {
    let server = GrpcServer::start("g");
    let (_etcd, cairn) = behind_cairn(
        &[("g", server.addr)],
        "[[gateway]]\nlisten = \"127.0.0.1:0\"\n",
    )
    .await;
    let gateway = cairn.gateway(0);
    // The channel's target names the authority: localhost is no service.
    let out = grpc_job(gateway, json!({"calls": 1, "method": "Who"})).await;
    let r = &results(&out)[0];
    assert_eq!(r["code"], 12, "{r}");
    assert!(r["details"].as_str().unwrap().contains("no service"), "{r}");
    let out = grpc_job(
        gateway,
        json!({"calls": 3, "method": "Who", "authority": "echo"}),
    )
    .await;
    assert_eq!(codes(&out), [0, 0, 0], "{out}");
}

#[tokio::test]
async fn large_messages_and_long_streams_pass_every_way() {
    let (_etcd, _servers, cairn) = setup(&["a"], "").await;
    let listen = cairn.listen(0);
    let big = 16 * 1024 * 1024;
    let out = grpc_job(listen, json!({"calls": 1, "method": "Echo", "size": big})).await;
    let r = &results(&out)[0];
    assert_eq!(r["code"], 0, "{}", r["details"]);
    assert_eq!(r["length"].as_u64(), Some(big as u64));

    let out = grpc_job(listen, json!({"stream": "Count", "payload": "10000"})).await;
    assert_eq!(
        (out["code"].as_i64(), out["messages"].as_i64()),
        (Some(0), Some(10000)),
        "{out}"
    );

    let out = grpc_job(
        listen,
        json!({"stream": "Sum", "messages": 1000, "size": 1000}),
    )
    .await;
    assert_eq!(
        (out["code"].as_i64(), out["response"].as_str()),
        (Some(0), Some("1000000")),
        "{out}"
    );

    let out = grpc_job(
        listen,
        json!({"stream": "Chat", "messages": 10000, "size": 100}),
    )
    .await;
    assert_eq!(
        (
            out["code"].as_i64(),
            out["messages"].as_i64(),
            out["bytes"].as_i64()
        ),
        (Some(0), Some(10000), Some(1_000_000)),
        "{out}"
    );
}

#[tokio::test]
async fn an_instance_killed_under_load_fails_only_the_calls_it_had() {
    let (_etcd, mut servers, cairn) = setup(&["a", "b", "c"], "").await;
    let listen = cairn.listen(0);
    let load = tokio::spawn(grpc_job(
        listen,
        json!({"calls": 3000, "method": "Who", "concurrency": 8}),
    ));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!load.is_finished(), "the load ended before the kill");
    servers[1].kill();
    let out = load.await.unwrap();
    let codes = codes(&out);
    let failed: Vec<_> = codes.iter().filter(|c| **c != 0).collect();
    // Only the calls in flight on the killed instance fail, as UNAVAILABLE.
    assert!(failed.iter().all(|c| **c == 14), "{failed:?}");
    assert!(failed.len() <= 8, "{} calls failed", failed.len());
    // The calls after the kill went to the others.
    let last: Vec<_> = results(&out)[2000..]
        .iter()
        .map(|r| r["response"].as_str().unwrap_or("-").to_string())
        .collect();
    assert!(last.iter().all(|id| id == "a" || id == "c"), "{last:?}");
}

#[tokio::test]
async fn a_grpc_health_check_takes_a_not_serving_instance_out_and_back() {
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().unwrap();
    let health = dir.path().join("b-health");
    let a = GrpcServer::start("a");
    let b = GrpcServer::start_with_health("b", Some(&health));
    let mut kv = etcd.client().await;
    for (id, s) in [("a", &a), ("b", &b)] {
        kv.put(format!("/services/echo/{id}"), s.addr.to_string(), None)
            .await
            .unwrap();
    }
    let cairn = Cairn::start(&format!(
        "[etcd]\nendpoints = [\"{}\"]\n{ADMIN}\n[[service]]\nname = \"echo\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"grpc\"\n[service.health]\ngrpc = \"\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\nrise = 1\nfall = 2\n",
        etcd.endpoint()
    ))
    .await;
    cairn.wait_instances("echo", &["a", "b"], SOON).await;
    let listen = cairn.listen(0);
    let served_by = |n: usize| async move {
        let out = grpc_job(listen, json!({"calls": n, "method": "Who"})).await;
        let mut ids: Vec<String> = results(&out)
            .iter()
            .map(|r| r["response"].as_str().unwrap_or("-").to_string())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    };
    assert_eq!(served_by(10).await, ["a", "b"]);
    // b says NOT_SERVING: out of rotation after `fall` checks, well within 2 s.
    std::fs::write(&health, "down").unwrap();
    crate::support::eventually(SOON, "b leaves the rotation", || async {
        (served_by(10).await == ["a"]).then_some(())
    })
    .await;
    let log = cairn.log();
    assert!(
        log.contains("instance failing health checks") && log.contains("NOT_SERVING"),
        "{log}"
    );
    std::fs::write(&health, "up").unwrap();
    crate::support::eventually(SOON, "b comes back", || async {
        (served_by(10).await == ["a", "b"]).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_grpc_server_registered_with_a_grpc_check_leaves_the_registry_when_not_serving() {
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().unwrap();
    let health = dir.path().join("health");
    let server = GrpcServer::start_with_health("r", Some(&health));
    let registering = format!(
        "[etcd]\nendpoints = [\"{}\"]\n{ADMIN}\n\
         [[register]]\nservice = \"echo\"\nid = \"r\"\naddr = \"{}\"\nttl = \"4s\"\n\
         [register.check]\ngrpc = \"{}\"\ninterval = \"200ms\"\nrise = 1\nfall = 2\n",
        etcd.endpoint(),
        server.addr,
        server.addr
    );
    let _registrar = Cairn::start(&registering).await;
    let proxy = Cairn::start(&format!(
        "[etcd]\nendpoints = [\"{}\"]\n{ADMIN}\n[[service]]\nname = \"echo\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"grpc\"\n",
        etcd.endpoint()
    ))
    .await;
    proxy.wait_instances("echo", &["r"], SOON).await;
    let out = grpc_job(proxy.listen(0), json!({"calls": 2, "method": "Who"})).await;
    assert_eq!(codes(&out), [0, 0], "{out}");
    std::fs::write(&health, "down").unwrap();
    proxy.wait_instances("echo", &[], SOON).await;
    let out = grpc_job(proxy.listen(0), json!({"calls": 1, "method": "Who"})).await;
    assert_eq!(codes(&out), [14], "{out}");
    std::fs::write(&health, "up").unwrap();
    proxy.wait_instances("echo", &["r"], SOON).await;
}

#[tokio::test]
async fn a_long_stream_passes_without_cairns_memory_growing_with_it() {
    let (_etcd, _servers, cairn) = setup(&["a"], "").await;
    let listen = cairn.listen(0);
    // Warm up: the connections and buffers one stream needs.
    let out = grpc_job(listen, json!({"stream": "Flood", "payload": "10 1048576"})).await;
    assert_eq!(out["code"], 0, "{out}");
    let (rss_before, peak_before) = memory_kib(cairn.pid());
    // 256 MiB in 1 MiB messages, one stream: flow control, not cairn's memory, holds it.
    let out = grpc_job(listen, json!({"stream": "Flood", "payload": "256 1048576"})).await;
    assert_eq!(
        (out["code"].as_i64(), out["bytes"].as_i64()),
        (Some(0), Some(256 * 1048576)),
        "{out}"
    );
    let (_, peak_after) = memory_kib(cairn.pid());
    assert!(
        peak_after < peak_before.max(rss_before) + 32 * 1024,
        "cairn's peak memory grew from {peak_before} KiB to {peak_after} KiB"
    );
}

#[tokio::test]
async fn a_gateway_sends_an_http11_request_for_a_grpc_service_over_http2() {
    let server = GrpcServer::start("a");
    let (_etcd, cairn) = behind_cairn(
        &[("a", server.addr)],
        &echo("[[gateway]]\nlisten = \"127.0.0.1:0\"\n"),
    )
    .await;
    // A plain HTTP/1.1 request (one cairn's own path would take) for a service whose
    // instances speak HTTP/2 only: it reaches them over HTTP/2, and the answer comes back.
    let got = crate::support::raw::exchange(
        cairn.gateway(0),
        b"POST /test.Echo/Who HTTP/1.1\r\nHost: echo\r\nContent-Type: application/grpc\r\nConnection: TE\r\nTE: trailers\r\nContent-Length: 5\r\n\r\n\0\0\0\0\0",
        Duration::from_millis(500),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got:?}");
    assert!(got.contains("x-server: a\r\n"), "{got:?}");
    assert!(got.contains("\0\0\0\0\u{1}a"), "{got:?}");
}

#[tokio::test]
async fn calls_past_an_instances_stream_limit_go_on_more_connections() {
    let server = GrpcServer::start_with("a", None, Some(2));
    let (_etcd, cairn) = behind_cairn(
        &[("a", server.addr)],
        &format!("[runtime]\nworkers = 1\n{}", echo("")),
    )
    .await;
    // Eight calls at once on one client connection, to an instance that takes two streams per
    // connection: four connections carry them side by side, none waits for another's end.
    let out = grpc_job(
        cairn.listen(0),
        json!({"calls": 8, "method": "Sleep", "payload": "0.5", "concurrency": 8}),
    )
    .await;
    assert_eq!(codes(&out), [0; 8], "{out}");
    let slowest = results(&out)
        .iter()
        .map(|r| r["seconds"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert!(
        slowest < 0.95,
        "calls waited for streams: the slowest took {slowest} s"
    );
    let mut peers: Vec<&str> = results(&out)
        .iter()
        .map(|r| r["response"].as_str().unwrap())
        .collect();
    peers.sort_unstable();
    peers.dedup();
    assert!(peers.len() >= 4, "{peers:?}");
}

/// etcd, a grpcio server `a` and a raw HTTP/2 instance `bad` answering `answer`, and cairn
/// balancing `echo` over both by round robin.
async fn beside_a_raw_instance(answer: Answer) -> (Etcd, GrpcServer, RawH2, Cairn) {
    let good = GrpcServer::start("a");
    let bad = RawH2::start(answer).await;
    let (etcd, cairn) = behind_cairn(
        &[("a", good.addr), ("bad", bad.addr)],
        &echo("balance = \"round_robin\"\n"),
    )
    .await;
    (etcd, good, bad, cairn)
}

/// How many Echo calls the grpcio server has answered.
async fn echoed(server: &GrpcServer) -> u64 {
    let out = grpc_job(server.addr, json!({"calls": 1, "method": "Tally"})).await;
    results(&out)[0]["response"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_call_an_instance_refused_unprocessed_goes_to_another_whole_and_once() {
    for answer in [Answer::Refuse, Answer::GoAwayBelow] {
        let (_etcd, good, bad, cairn) = beside_a_raw_instance(answer).await;
        // Bodies of one frame and of several (16 KiB frames): each refused call is sent again
        // whole.
        for size in [100, 40_000] {
            let out = grpc_job(
                cairn.listen(0),
                json!({"calls": 10, "method": "Echo", "size": size}),
            )
            .await;
            for r in results(&out) {
                assert_eq!(r["code"], 0, "{answer:?}: {r}");
                assert_eq!(r["length"], size, "{answer:?}: {r}");
            }
        }
        assert!(
            bad.calls() >= 5,
            "{answer:?}: the raw instance saw {} calls",
            bad.calls()
        );
        assert_eq!(
            echoed(&good).await,
            20,
            "{answer:?}: a call was duplicated or lost"
        );
        assert!(
            !cairn.log().contains("connect to instance failed"),
            "{answer:?}: a refusal was taken for a failed instance"
        );
    }
}

#[tokio::test]
async fn a_call_an_instance_may_have_processed_is_never_sent_again() {
    let (_etcd, good, bad, cairn) = beside_a_raw_instance(Answer::Reset).await;
    let out = grpc_job(
        cairn.listen(0),
        json!({"calls": 10, "method": "Echo", "payload": "once"}),
    )
    .await;
    let failed = codes(&out).iter().filter(|c| **c == 14).count();
    let passed = codes(&out).iter().filter(|c| **c == 0).count();
    assert_eq!(failed + passed, 10, "{out}");
    assert_eq!(failed, bad.calls(), "{out}");
    assert!(
        failed >= 3,
        "round robin sent {failed} of 10 to the resetting instance"
    );
    assert_eq!(
        echoed(&good).await,
        passed as u64,
        "a reset call was sent again"
    );
    let details = results(&out)
        .iter()
        .find(|r| r["code"] == 14)
        .map(|r| r["details"].as_str().unwrap().to_string())
        .unwrap();
    assert!(details.contains("echo"), "{details}");
}
