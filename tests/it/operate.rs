//! Running cairn for months: the runtime's size, reloads, the cache for a cold start.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::support::cairn::{config, Cairn, ADMIN};
use crate::support::etcd::Etcd;
use crate::support::eventually;
use crate::support::http::PyUpstream;
use crate::support::upstream::{greeting, Tagged};

const SOON: Duration = Duration::from_secs(10);

/// The threads of `pid` whose name starts with `prefix`.
fn threads_named(pid: u32, prefix: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("reading the process's threads")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

#[tokio::test]
async fn runtime_workers_sets_the_number_of_worker_threads() {
    let etcd = Etcd::start().await;
    for workers in [1, 3] {
        let mut text = config(&etcd.endpoint(), &["svc"], "");
        text.push_str(&format!("\n[runtime]\nworkers = {workers}\n"));
        let cairn = Cairn::start(&text).await;
        cairn.wait_ready().await;
        // The main thread is the first worker; each other one is a thread with a
        // single-threaded runtime of its own, and no work-stealing runtime runs at all.
        assert_eq!(threads_named(cairn.pid(), "cairn-worker"), workers - 1);
        assert_eq!(threads_named(cairn.pid(), "tokio-rt-worker"), 0);
        assert!(
            cairn.log().contains(&format!("workers={workers}")),
            "{}",
            cairn.log()
        );
    }
}

/// Sends `GET /` over one kept-alive connection until `stop`; every answer must be a 200.
/// Returns how many were answered, or what went wrong.
pub(crate) async fn keep_alive_load(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
) -> Result<usize, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let req = Request::get("/")
            .header("host", "web")
            .body(Empty::<Bytes>::new())
            .expect("a request");
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request {n}: {e}"))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("request {n}'s body: {e}"))?
            .to_bytes();
        if status != 200 {
            return Err(format!("request {n}: {status} {body:?}"));
        }
        n += 1;
    }
    Ok(n)
}

/// Exchanges a line every 5 ms over one relayed connection until `stop`; every line must come
/// back. Returns how many did.
async fn tcp_stream_load(addr: SocketAddr, stop: Arc<AtomicBool>) -> Result<usize, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    stream
        .read_line(&mut line)
        .await
        .map_err(|e| e.to_string())?;
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let sent = format!("line {n}\n");
        stream
            .get_mut()
            .write_all(sent.as_bytes())
            .await
            .map_err(|e| format!("line {n}: {e}"))?;
        line.clear();
        stream
            .read_line(&mut line)
            .await
            .map_err(|e| format!("line {n}: {e}"))?;
        if line != sent {
            return Err(format!("sent {sent:?}, got back {line:?}"));
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(n)
}

/// A config with an HTTP service `web` balanced by `balance`, the TCP services `tcp`, and
/// `more` appended.
fn reload_config(endpoint: &str, balance: &str, tcp: &[&str], more: &str) -> String {
    let mut c = format!(
        "[etcd]\nendpoints = [\"{endpoint}\"]\n\n{ADMIN}\n[[service]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"http\"\nbalance = \"{balance}\"\n"
    );
    for name in tcp {
        c.push_str(&format!(
            "\n[[service]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\n"
        ));
    }
    c.push_str(more);
    c
}

#[tokio::test]
async fn a_reload_under_load_changes_listeners_and_registrations_and_drops_nothing() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let web = [PyUpstream::start("w0"), PyUpstream::start("w1")];
    for (i, up) in web.iter().enumerate() {
        kv.put(format!("/services/web/w{i}"), up.addr.to_string(), None)
            .await
            .unwrap();
    }
    let echo = Tagged::start("e").await;
    for service in ["echo", "old", "new"] {
        kv.put(
            format!("/services/{service}/e"),
            echo.addr.to_string(),
            None,
        )
        .await
        .unwrap();
    }
    let endpoint = etcd.endpoint();
    let v1 = reload_config(&endpoint, "round_robin", &["echo", "old"], "");
    let registration =
        "\n[[register]]\nservice = \"reg\"\nid = \"r1\"\naddr = \"10.1.2.3:80\"\nttl = \"10s\"\n";
    let v2 = reload_config(&endpoint, "random", &["echo", "new"], registration);
    let cairn = Cairn::start(&v1).await;
    for service in ["web", "echo", "old"] {
        let ids: &[&str] = if service == "web" {
            &["w0", "w1"]
        } else {
            &["e"]
        };
        cairn.wait_instances(service, ids, SOON).await;
    }
    let web_addr = cairn.listen_of("web");
    let old_addr = cairn.listen_of("old");

    let stop = Arc::new(AtomicBool::new(false));
    let http: Vec<_> = (0..4)
        .map(|_| tokio::spawn(keep_alive_load(web_addr, Arc::clone(&stop))))
        .collect();
    let echo_stream = tokio::spawn(tcp_stream_load(cairn.listen_of("echo"), Arc::clone(&stop)));
    // A connection of the listener the reload removes: it keeps working while it drains.
    let old_stream = tokio::spawn(tcp_stream_load(old_addr, Arc::clone(&stop)));
    tokio::time::sleep(Duration::from_millis(300)).await;

    cairn.reload(&v2).await.expect("the new config is taken");
    let new_addr = cairn
        .listening("new")
        .expect("the added listener is logged");
    assert_eq!(greeting(new_addr).await.as_deref(), Some("e"));
    eventually(SOON, "the removed listener's port is closed", || async {
        TcpStream::connect(old_addr).await.is_err().then_some(())
    })
    .await;
    let doc = cairn.services().await;
    assert_eq!(doc["services"]["web"]["balance"], "random", "{doc}");
    let registered = || async {
        let got = etcd.client().await.get("/services/reg/r1", None).await;
        got.map(|g| g.kvs().first().map(|kv| (kv.value().to_vec(), kv.lease())))
    };
    eventually(SOON, "the added registration is in etcd", || async {
        let (value, lease) = registered().await.ok()??;
        (value == b"10.1.2.3:80" && lease != 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // And back: the listener comes back, the registration leaves etcd at once.
    cairn
        .reload(&v1)
        .await
        .expect("the first config is taken again");
    eventually(SOON, "the removed registration is deleted", || async {
        matches!(registered().await, Ok(None)).then_some(())
    })
    .await;
    let old_again = cairn.listening("old").expect("the listener is back");
    assert_eq!(greeting(old_again).await.as_deref(), Some("e"));

    // Back and forth a few more times under the same load.
    for _ in 0..5 {
        cairn.reload(&v2).await.expect("the new config is taken");
        cairn.reload(&v1).await.expect("the first config is taken");
    }

    // A broken file is refused with its line and key; the running config keeps serving.
    let refused = cairn
        .reload(&format!(
            "{v1}\n[[service]]\nname = \"bad\"\nlisten = \"127.0.0.1:0\"\nretries = -1\n"
        ))
        .await
        .expect_err("a broken config is refused");
    assert!(refused.contains("cairn.toml:"), "{refused}");
    assert!(refused.contains("retries"), "{refused}");
    tokio::time::sleep(Duration::from_millis(300)).await;

    stop.store(true, Ordering::Relaxed);
    let mut answered = 0;
    for h in http {
        answered += h
            .await
            .unwrap()
            .expect("no HTTP request failed across the reloads");
    }
    let exchanged = echo_stream
        .await
        .unwrap()
        .expect("the long-lived TCP stream survived the reloads");
    let drained = old_stream
        .await
        .unwrap()
        .expect("the removed listener's connection kept working while it drained");
    assert!(
        answered > 50 && exchanged > 50 && drained > 50,
        "{answered} {exchanged} {drained}"
    );
    assert_eq!(
        cairn
            .metric("cairn_config_reloads_total{result=\"success\"}")
            .await,
        12.0
    );
    assert_eq!(
        cairn
            .metric("cairn_config_reloads_total{result=\"failure\"}")
            .await,
        1.0
    );
    assert!(
        cairn
            .metric("cairn_config_last_reload_success_timestamp_seconds")
            .await
            > 1.7e9
    );
}

#[tokio::test]
async fn a_reload_that_changes_etcd_reconnects_and_the_registration_never_leaves() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let a = Tagged::start("a").await;
    kv.put("/services/svc/a", a.addr.to_string(), None)
        .await
        .unwrap();
    let registration =
        "\n[[register]]\nservice = \"me\"\nid = \"n1\"\naddr = \"10.0.0.1:80\"\nttl = \"2s\"\n";
    let v1 = format!("{}{registration}", config(&etcd.endpoint(), &["svc"], ""));
    let v2 = v1.replace("[etcd]\n", "[etcd]\ndial_timeout = \"4s\"\n");
    let cairn = Cairn::start(&v1).await;
    cairn.wait_instances("svc", &["a"], SOON).await;
    let lease_of = || async {
        let got = etcd
            .client()
            .await
            .get("/services/me/n1", None)
            .await
            .ok()?;
        got.kvs().first().map(|kv| kv.lease())
    };
    let first = eventually(SOON, "the registration is written", lease_of).await;
    let mut watch = etcd
        .client()
        .await
        .watch("/services/me/n1", None)
        .await
        .unwrap();

    cairn.reload(&v2).await.expect("the new [etcd] is taken");
    assert!(
        cairn.log().contains("etcd_reconnected=true"),
        "{}",
        cairn.log()
    );
    // The new discovery follows changes.
    let b = Tagged::start("b").await;
    kv.put("/services/svc/b", b.addr.to_string(), None)
        .await
        .unwrap();
    cairn.wait_instances("svc", &["a", "b"], SOON).await;
    // The key moved to the new registrar's lease, and outlives the old lease's TTL.
    let second = eventually(SOON, "the key is under a new lease", || async {
        lease_of().await.filter(|l| *l != first)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(lease_of().await, Some(second));
    // Never deleted in between.
    while let Ok(Ok(Some(resp))) =
        tokio::time::timeout(Duration::from_millis(200), watch.message()).await
    {
        for event in resp.events() {
            assert_ne!(
                event.event_type(),
                etcd_client::EventType::Delete,
                "the registration left etcd during the reload"
            );
        }
    }
}

/// A registration with a long TTL: only a revoke takes its key away within a test.
const LONG_REGISTRATION: &str =
    "\n[[register]]\nservice = \"me\"\nid = \"n1\"\naddr = \"10.0.0.1:80\"\nttl = \"60s\"\n";

/// The lease `/services/me/n1` is written under in `etcd`, if it is there.
async fn lease_of(etcd: &Etcd) -> Option<i64> {
    let got = etcd
        .client()
        .await
        .get("/services/me/n1", None)
        .await
        .ok()?;
    got.kvs().first().map(|kv| kv.lease())
}

/// Freezes `frozen`, points cairn's config at it and sends SIGHUP: the reload waits on an etcd
/// that accepts connections and never answers. Returns once the reload has begun.
async fn reload_into_frozen(cairn: &Cairn, config: &str, from: &Etcd, frozen: &Etcd) {
    frozen.signal("STOP");
    std::fs::write(
        cairn.dir().join("cairn.toml"),
        config.replace(&from.endpoint(), &frozen.endpoint()),
    )
    .unwrap();
    cairn.signal("HUP");
    eventually(SOON, "the reload begins", || async {
        cairn.log().contains("reloading the config").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn sigterm_during_a_reload_stuck_on_a_frozen_etcd_exits_at_once_and_revokes_the_lease() {
    let etcd = Etcd::start().await;
    let frozen = Etcd::start().await;
    let v1 = format!(
        "{}{LONG_REGISTRATION}",
        config(&etcd.endpoint(), &["svc"], "")
    );
    let mut cairn = Cairn::start_with_args(&v1, &["--shutdown-grace", "2s"]).await;
    eventually(SOON, "the registration is written", || lease_of(&etcd)).await;
    reload_into_frozen(&cairn, &v1, &etcd, &frozen).await;
    let asked = std::time::Instant::now();
    cairn.signal("TERM");
    let status = cairn.wait_exit(Duration::from_secs(30)).await;
    let took = asked.elapsed();
    frozen.signal("CONT");
    assert!(status.success(), "{status}: {}", cairn.log());
    // Within the 2 s grace (and well before the 10 s an etcd request may take).
    assert!(
        took < Duration::from_secs(3),
        "SIGTERM waited {took:?} for the reload; log:\n{}",
        cairn.log()
    );
    assert_eq!(
        lease_of(&etcd).await,
        None,
        "the lease was not revoked; log:\n{}",
        cairn.log()
    );
    assert!(
        cairn.log().contains("the reload is abandoned"),
        "{}",
        cairn.log()
    );
}

#[tokio::test]
async fn a_reload_that_drops_the_registrations_does_not_wait_on_a_frozen_etcd_to_revoke() {
    let etcd = Etcd::start().await;
    let v1 = format!(
        "{}{LONG_REGISTRATION}",
        config(&etcd.endpoint(), &["svc"], "")
    );
    let cairn = Cairn::start(&v1).await;
    eventually(SOON, "the registration is written", || lease_of(&etcd)).await;
    // etcd stops answering: the revoke of the lease would wait up to 3 s for it.
    etcd.signal("STOP");
    let committed = cairn.reload(&config(&etcd.endpoint(), &["svc"], "")).await;
    let log = cairn.log();
    etcd.signal("CONT");
    committed.unwrap_or_else(|e| panic!("the reload was refused: {e}"));
    assert!(
        !log.contains("revoking the lease timed out"),
        "the reload waited for the revoke:\n{log}"
    );
    // Nothing is lost: once etcd answers, the revoke in the background goes through.
    eventually(SOON, "the lease is revoked", || async {
        lease_of(&etcd).await.is_none().then_some(())
    })
    .await;
    eventually(SOON, "cairn logs the revoke", || async {
        (cairn.log())
            .contains("lease revoked, its keys deregistered")
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_reload_to_an_etcd_that_does_not_answer_is_refused_and_sighups_meanwhile_coalesce() {
    let etcd = Etcd::start().await;
    let frozen = Etcd::start().await;
    let v1 = format!(
        "{}{LONG_REGISTRATION}",
        config(&etcd.endpoint(), &["svc"], "")
    );
    let cairn = Cairn::start(&v1).await;
    let first = eventually(SOON, "the registration is written", || lease_of(&etcd)).await;

    // Nothing listens there: refused, naming the endpoint; the old etcd side goes on.
    let nowhere = format!("http://127.0.0.1:{}", crate::support::free_port());
    let refused = cairn
        .reload(&v1.replace(&etcd.endpoint(), &nowhere))
        .await
        .expect_err("an etcd nobody answers for is taken");
    assert!(refused.contains(&format!("etcd at {nowhere}")), "{refused}");
    let a = Tagged::start("a").await;
    etcd.client()
        .await
        .put("/services/svc/a", a.addr.to_string(), None)
        .await
        .unwrap();
    cairn.wait_instances("svc", &["a"], SOON).await;
    assert_eq!(lease_of(&etcd).await, Some(first), "the registration moved");

    // A reload waiting on a frozen etcd; two more SIGHUPs meanwhile make one more reload.
    reload_into_frozen(&cairn, &v1, &etcd, &frozen).await;
    cairn.signal("HUP");
    tokio::time::sleep(Duration::from_millis(100)).await;
    cairn.signal("HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    frozen.signal("CONT");
    let verdicts = || {
        cairn
            .log()
            .lines()
            .filter(|l| l.contains("config reloaded"))
            .count()
    };
    eventually(SOON, "two reloads end", || async {
        (verdicts() >= 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = cairn.log();
    assert_eq!(verdicts(), 2, "{log}");
    assert_eq!(
        log.matches("SIGHUP during a reload: the config is read again")
            .count(),
        1,
        "{log}"
    );
    // The new etcd serves the registration.
    eventually(SOON, "the registration is in the new etcd", || {
        lease_of(&frozen)
    })
    .await;
}

#[tokio::test]
async fn a_cold_start_with_etcd_down_routes_from_the_cache_until_etcd_answers() {
    let mut etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let a = Tagged::start("a").await;
    kv.put("/services/svc/a", a.addr.to_string(), None)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("registry.json");
    let text = format!(
        "{}\n[cache]\npath = \"{}\"\n",
        config(&etcd.endpoint(), &["svc"], "")
            .replace("[etcd]\n", "[etcd]\ndial_timeout = \"500ms\"\n"),
        cache.display()
    );
    let mut first = Cairn::start(&text).await;
    first.wait_instances("svc", &["a"], SOON).await;
    eventually(SOON, "the cache file is written", || async {
        let body = std::fs::read_to_string(&cache).ok()?;
        body.contains(&a.addr.to_string()).then_some(())
    })
    .await;
    first.signal("TERM");
    first.wait_exit(SOON).await;

    // The node restarts while etcd is away: it routes from the file.
    etcd.kill();
    let second = Cairn::start(&text).await;
    assert_eq!(
        eventually(SOON, "a connection is routed", || async {
            greeting(second.listen(0)).await
        })
        .await,
        "a"
    );
    let (status, body) = second.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("ready (from cache, "), "{body}");
    assert!(
        second.log().contains("routing from the cache file"),
        "{}",
        second.log()
    );
    assert_eq!(second.metric("cairn_registry_synced").await, 0.0);

    // etcd comes back with another registry: it replaces the file's.
    let b = Tagged::start("b").await;
    etcd.restart().await;
    let mut kv = etcd.client().await;
    kv.put("/services/svc/b", b.addr.to_string(), None)
        .await
        .unwrap();
    kv.delete("/services/svc/a", None).await.unwrap();
    second.wait_instances("svc", &["b"], SOON).await;
    eventually(SOON, "ready, current with etcd", || async {
        (second.get("/readyz").await == (200, "ready\n".to_string())).then_some(())
    })
    .await;
    assert!(
        second.log().contains("replaces the cache file's"),
        "{}",
        second.log()
    );
    eventually(SOON, "the file follows etcd again", || async {
        let body = std::fs::read_to_string(&cache).ok()?;
        (body.contains(&b.addr.to_string()) && !body.contains(&a.addr.to_string())).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_corrupt_cache_file_is_one_warning_and_ignored() {
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("registry.json");
    std::fs::write(&cache, "{\"version\": 1, \"writ").unwrap();
    let text = format!(
        "{}\n[cache]\npath = \"{}\"\n",
        config(&etcd.endpoint(), &["svc"], ""),
        cache.display()
    );
    let cairn = Cairn::start(&text).await;
    cairn.wait_ready().await;
    let log = cairn.log();
    assert_eq!(log.matches("the cache file is corrupt").count(), 1, "{log}");
    // Listed from etcd, and the file is written anew.
    eventually(SOON, "the cache file is rewritten", || async {
        let body = std::fs::read_to_string(&cache).ok()?;
        serde_json::from_str::<serde_json::Value>(&body).ok()
    })
    .await;
}
