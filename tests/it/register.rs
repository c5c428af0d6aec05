//! Registration against a real etcd: formats, leases, outages, repairs, health checks, the
//! registry tools, and one cairn registering while another proxies.

use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions, PutOptions};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use cairn::register::{Registrar, Registration};
use cairn::registry::{Endpoint, Format};

use crate::support::cairn::{run, Cairn, Proc, ADMIN};
use crate::support::etcd::Etcd;
use crate::support::http::{curl_status, PyUpstream};
use crate::support::{eventually, head};

const SOON: Duration = Duration::from_secs(10);

/// The value and lease of `key`, if it exists.
async fn read(kv: &mut Client, key: &str) -> Option<(String, i64)> {
    let resp = kv.get(key, None).await.ok()?;
    resp.kvs()
        .first()
        .map(|kv| (kv.value_str().unwrap_or_default().to_string(), kv.lease()))
}

async fn wait_present(kv: &mut Client, key: &str, deadline: Duration) -> (String, i64) {
    let mut kv = kv.clone();
    eventually(deadline, &format!("{key} is registered"), || {
        let mut kv = kv.clone();
        async move { read(&mut kv, key).await }
    })
    .await;
    read(&mut kv, key).await.expect("present")
}

async fn wait_absent(kv: &Client, key: &str, deadline: Duration) {
    eventually(deadline, &format!("{key} is gone"), || {
        let mut kv = kv.clone();
        async move { read(&mut kv, key).await.is_none().then_some(()) }
    })
    .await;
}

fn register_args<'a>(
    endpoint: &'a str,
    service: &'a str,
    id: &'a str,
    addr: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "register",
        "--endpoints",
        endpoint,
        "--service",
        service,
        "--id",
        id,
        "--addr",
        addr,
    ];
    args.extend_from_slice(extra);
    args
}

#[tokio::test]
async fn registrations_carry_the_right_value_in_each_format_under_a_live_lease() {
    let etcd = Etcd::start().await;
    let ep = etcd.endpoint();
    let mut kv = etcd.client().await;
    let _plain = Proc::spawn(&register_args(&ep, "orders", "o1", "10.0.0.5:8080", &[]));
    let _json = Proc::spawn(&register_args(
        &ep,
        "orders",
        "o2",
        "10.0.0.6:8080",
        &["--format", "json"],
    ));
    let _endpoints = Proc::spawn(&register_args(
        &ep,
        "orders",
        "o3",
        "10.0.0.7:8080",
        &["--format", "etcd-endpoints"],
    ));
    let (value, lease) = wait_present(&mut kv, "/services/orders/o1", SOON).await;
    assert_eq!(value, "10.0.0.5:8080");
    assert!(kv.lease_time_to_live(lease, None).await.unwrap().ttl() > 0);
    let (value, _) = wait_present(&mut kv, "/services/orders/o2", SOON).await;
    assert_eq!(
        serde_json::from_str::<Value>(&value).unwrap(),
        json!({"addr": "10.0.0.6:8080", "weight": 1})
    );
    let (value, _) = wait_present(&mut kv, "/services/orders/o3", SOON).await;
    assert_eq!(value, r#"{"Op":0,"Addr":"10.0.0.7:8080","Metadata":null}"#);

    // From a config: weight, zone and metadata, and one lease for every block.
    let config = format!(
        "[etcd]\nendpoints = [\"{ep}\"]\n{ADMIN}\n\
         [[register]]\nservice = \"users\"\nid = \"u1\"\naddr = \"10.0.1.1:9000\"\nformat = \"json\"\nweight = 3\nzone = \"eu-1a\"\nmetadata = {{ version = \"1.4.2\" }}\n\n\
         [[register]]\nservice = \"users\"\nid = \"u2\"\naddr = \"users-2.internal:9000\"\nformat = \"etcd-endpoints\"\nmetadata = {{ canary = true }}\n"
    );
    let _cairn = Cairn::start(&config).await;
    let (v1, l1) = wait_present(&mut kv, "/services/users/u1", SOON).await;
    assert_eq!(
        serde_json::from_str::<Value>(&v1).unwrap(),
        json!({"addr": "10.0.1.1:9000", "weight": 3, "zone": "eu-1a", "metadata": {"version": "1.4.2"}})
    );
    let (v2, l2) = wait_present(&mut kv, "/services/users/u2", SOON).await;
    assert_eq!(
        v2,
        r#"{"Op":0,"Addr":"users-2.internal:9000","Metadata":{"canary":true}}"#
    );
    assert_eq!(l1, l2, "registrations of one process share one lease");
}

#[tokio::test]
async fn kill_9_leaves_the_key_to_its_ttl_and_sigterm_removes_it_at_once() {
    let etcd = Etcd::start().await;
    let ep = etcd.endpoint();
    let mut kv = etcd.client().await;
    let killed = Proc::spawn(&register_args(
        &ep,
        "s",
        "k",
        "10.0.0.1:80",
        &["--ttl", "2s"],
    ));
    let (_, lease) = wait_present(&mut kv, "/services/s/k", SOON).await;
    let granted = kv.lease_time_to_live(lease, None).await.unwrap();
    assert_eq!(granted.granted_ttl(), 2, "the lease carries the asked ttl");
    killed.signal("KILL");
    // Nobody keeps the lease alive any more: etcd expires it (benches/reaction.rs times it).
    wait_absent(&kv, "/services/s/k", SOON).await;

    let mut stopped = Proc::spawn(&register_args(
        &ep,
        "s",
        "t",
        "10.0.0.1:80",
        &["--ttl", "10s"],
    ));
    wait_present(&mut kv, "/services/s/t", SOON).await;
    stopped.signal("TERM");
    let status = stopped.wait_exit(SOON).await;
    assert!(status.success(), "{status}");
    assert_eq!(
        read(&mut kv, "/services/s/t").await,
        None,
        "the key survived a graceful stop"
    );
}

#[tokio::test]
async fn a_registration_comes_back_after_an_etcd_outage_longer_than_its_ttl() {
    let mut etcd = Etcd::start().await;
    let ep = etcd.endpoint();
    let mut kv = etcd.client().await;
    let _reg = Proc::spawn(&register_args(
        &ep,
        "s",
        "r",
        "10.0.0.1:80",
        &["--ttl", "2s"],
    ));
    wait_present(&mut kv, "/services/s/r", SOON).await;

    etcd.kill();
    // The outage itself: longer than the 2 s ttl.
    tokio::time::sleep(Duration::from_secs(4)).await;
    etcd.restart().await;
    let mut kv = etcd.client().await;
    wait_present(&mut kv, "/services/s/r", SOON).await;
    // Present is not enough: the lease must be kept alive from now on, or the key expires.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (_, now) = read(&mut kv, "/services/s/r")
        .await
        .expect("the registration expired after etcd returned");
    assert!(kv.lease_time_to_live(now, None).await.unwrap().ttl() > 0);
}

#[tokio::test]
async fn a_revoked_lease_a_deleted_key_and_an_overwritten_key_all_come_back() {
    let etcd = Etcd::start().await;
    let ep = etcd.endpoint();
    let mut kv = etcd.client().await;
    let _reg = Proc::spawn(&register_args(
        &ep,
        "s",
        "x",
        "10.0.0.1:80",
        &["--ttl", "5s"],
    ));
    let (_, first) = wait_present(&mut kv, "/services/s/x", SOON).await;

    kv.lease_revoke(first).await.unwrap();
    let (_, second) = eventually(SOON, "the key is back under a new lease", || {
        let mut kv = kv.clone();
        async move {
            read(&mut kv, "/services/s/x")
                .await
                .filter(|(_, l)| *l != first)
        }
    })
    .await;
    assert!(kv.lease_time_to_live(second, None).await.unwrap().ttl() > 0);

    kv.delete("/services/s/x", None).await.unwrap();
    wait_present(&mut kv, "/services/s/x", SOON).await;

    kv.put("/services/s/x", "10.9.9.9:1", None).await.unwrap();
    eventually(SOON, "the overwritten key is restored", || {
        let mut kv = kv.clone();
        async move {
            (read(&mut kv, "/services/s/x").await == Some(("10.0.0.1:80".to_string(), second)))
                .then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn health_checks_deregister_after_fall_failures_and_register_after_rise_passes() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_addr = target.local_addr().unwrap();
    let flag = tempfile::NamedTempFile::new().unwrap();
    let config = format!(
        "[etcd]\nendpoints = [\"{}\"]\n{ADMIN}\n\
         [[register]]\nservice = \"hc\"\nid = \"tcp\"\naddr = \"{target_addr}\"\n\
         [register.check]\ntcp = \"{target_addr}\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 3\n\n\
         [[register]]\nservice = \"hc\"\nid = \"exec\"\naddr = \"10.0.0.2:80\"\n\
         [register.check]\nexec = [\"test\", \"-e\", \"{}\"]\ninterval = \"200ms\"\nrise = 1\nfall = 1\n",
        etcd.endpoint(),
        flag.path().display()
    );
    let cairn = Cairn::start(&config).await;
    wait_present(&mut kv, "/services/hc/tcp", SOON).await;
    wait_present(&mut kv, "/services/hc/exec", SOON).await;
    assert_eq!(
        cairn
            .metric("cairn_registration_registered{service=\"hc\",id=\"tcp\"}")
            .await,
        1.0
    );

    // The TCP target goes away: three failures in a row at 200 ms take at least 400 ms.
    drop(target);
    let down = Instant::now();
    wait_absent(&kv, "/services/hc/tcp", SOON).await;
    let took = down.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "deregistered before `fall` failures: {took:?}"
    );
    assert!(
        cairn.log().contains("health check failing, deregistering"),
        "{}",
        cairn.log()
    );

    let _target = TcpListener::bind(target_addr).await.unwrap();
    wait_present(&mut kv, "/services/hc/tcp", SOON).await;

    let path = flag.path().to_path_buf();
    drop(flag);
    wait_absent(&kv, "/services/hc/exec", SOON).await;
    std::fs::write(&path, b"").unwrap();
    wait_present(&mut kv, "/services/hc/exec", SOON).await;
    std::fs::remove_file(&path).unwrap();
}

#[tokio::test]
async fn one_cairn_registers_a_backend_and_another_proxies_to_it() {
    let etcd = Etcd::start().await;
    let backend = PyUpstream::start("backend");
    let registering = format!(
        "[etcd]\nendpoints = [\"{}\"]\n{ADMIN}\n\
         [[register]]\nservice = \"api\"\nid = \"node-a\"\naddr = \"{}\"\nttl = \"4s\"\n\
         [register.check]\nhttp = \"http://{}/\"\ninterval = \"300ms\"\nrise = 1\nfall = 2\n",
        etcd.endpoint(),
        backend.addr,
        backend.addr
    );
    let _a = Cairn::start(&registering).await;
    let proxying = format!(
        "[etcd]\nendpoints = [\"{}\"]\n{ADMIN}\n[[service]]\nname = \"api\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"http\"\n",
        etcd.endpoint(),
    );
    let b = Cairn::start(&proxying).await;
    b.wait_instances("api", &["node-a"], SOON).await;
    assert_eq!(
        curl_status(&[&format!("http://{}/", b.listen(0))]),
        (200, "backend\n".to_string())
    );

    // The backend stops answering: node A deregisters it after `fall` failed checks, and node B
    // takes it out of rotation (benches/reaction.rs times it).
    drop(backend);
    b.wait_instances("api", &[], SOON).await;
    let (code, body) = curl_status(&[&format!("http://{}/", b.listen(0))]);
    assert_eq!(
        (code, body.as_str()),
        (503, "cairn: service \"api\" has no instances\n")
    );
}

#[tokio::test]
async fn list_watch_and_deregister_show_and_change_the_registry() {
    let etcd = Etcd::start().await;
    let ep = etcd.endpoint();
    let mut kv = etcd.client().await;
    let lease = kv.lease_grant(30, None).await.unwrap().id();
    kv.put(
        "/services/orders/o1",
        "10.0.0.5:8080",
        Some(PutOptions::new().with_lease(lease)),
    )
    .await
    .unwrap();
    kv.put("/services/orders/o2", r#"{"addr":"10.0.0.6:8080"}"#, None)
        .await
        .unwrap();
    kv.put("/services/orders/bad", "garbage", None)
        .await
        .unwrap();
    kv.put("/services/users/u1", "10.0.1.1:80", None)
        .await
        .unwrap();

    let (status, out, err) = run(&["list", "--endpoints", &ep, "orders"]);
    assert!(status.success(), "{err}");
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["SERVICE", "ID", "ADDRESS", "FORMAT", "TTL"]);
    assert_eq!(rows.len(), 4, "{out}");
    assert_eq!(&rows[1][..2], ["orders", "bad"]);
    assert!(
        out.lines()
            .nth(1)
            .unwrap()
            .contains("invalid: address \"garbage\" has no port"),
        "{out}"
    );
    assert_eq!(&rows[2][..4], ["orders", "o1", "10.0.0.5:8080", "plain"]);
    let ttl: u64 = rows[2][4].trim_end_matches('s').parse().unwrap();
    assert!((25..=30).contains(&ttl), "{out}");
    assert_eq!(rows[3], ["orders", "o2", "10.0.0.6:8080", "json", "-"]);

    let watch = Proc::spawn(&["watch", "--endpoints", &ep, "orders"]);
    eventually(SOON, "cairn watch has listed the registry", || async {
        watch.stdout().contains("listed at revision").then_some(())
    })
    .await;
    kv.put("/services/orders/o3", "10.0.0.7:8080", None)
        .await
        .unwrap();
    kv.put("/services/users/u2", "10.0.1.2:80", None)
        .await
        .unwrap();
    kv.delete("/services/orders/o1", None).await.unwrap();
    eventually(SOON, "cairn watch printed the changes", || async {
        let out = watch.stdout();
        (out.contains("put     orders/o3  10.0.0.7:8080  plain")
            && out.contains("delete  orders/o1"))
        .then_some(())
    })
    .await;
    assert!(
        !watch.stdout().contains("users/"),
        "the service filter let users through:\n{}",
        watch.stdout()
    );

    let (status, out, err) = run(&[
        "deregister",
        "--endpoints",
        &ep,
        "--service",
        "orders",
        "--id",
        "o2",
    ]);
    assert!(status.success(), "{err}");
    assert_eq!(out, "deleted /services/orders/o2\n");
    assert_eq!(read(&mut kv, "/services/orders/o2").await, None);
    let (status, _, err) = run(&[
        "deregister",
        "--endpoints",
        &ep,
        "--service",
        "orders",
        "--id",
        "o2",
    ]);
    assert!(!status.success());
    assert!(err.contains("no instance at /services/orders/o2"), "{err}");
}

#[tokio::test]
async fn an_unreachable_etcd_at_start_is_retried_quietly_until_it_answers() {
    let mut etcd = Etcd::start().await;
    let ep = etcd.endpoint();
    etcd.kill();
    let reg = Proc::spawn(&register_args(&ep, "s", "late", "10.0.0.1:80", &[]));
    let warned = "registering failed; retrying in the background";
    eventually(SOON, "the failure is logged", || async {
        reg.stderr().contains(warned).then_some(())
    })
    .await;
    // It retries every second at most, and says so once, not once per attempt.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = reg.stderr();
    assert_eq!(log.matches(warned).count(), 1, "{log}");
    assert!(
        log.matches("registering failed").count() >= 3,
        "no retries: {log}"
    );
    etcd.restart().await;
    let mut kv = etcd.client().await;
    wait_present(&mut kv, "/services/s/late", SOON).await;
    eventually(SOON, "the recovery is logged", || async {
        reg.stderr()
            .contains("registering works again")
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_full_etcd_is_named_once_and_not_once_a_second() {
    // A tiny backend quota, filled: etcd raises its NOSPACE alarm and refuses lease grants.
    let etcd = Etcd::start_with(&["--quota-backend-bytes=262144"]).await;
    let kv = etcd.client().await;
    let big = "x".repeat(64 * 1024);
    let full = eventually(SOON, "etcd raises its space alarm", || {
        let mut kv = kv.clone();
        let big = big.clone();
        async move {
            // The backend's size moves at each commit (every 100 ms): keep writing until etcd
            // refuses, rather than for a fixed count.
            match kv.put("/filler", big, None).await {
                Err(e) if e.to_string().contains("space exceeded") => Some(()),
                Err(e) => panic!("filling etcd failed otherwise: {e}"),
                Ok(_) => None,
            }
        }
    });
    full.await;
    let reg = Proc::spawn(&register_args(
        &etcd.endpoint(),
        "s",
        "full",
        "10.0.0.1:80",
        &[],
    ));
    let warned = "registering failed; retrying in the background";
    eventually(SOON, "the failure is logged", || async {
        reg.stderr().contains(warned).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = reg.stderr();
    assert_eq!(log.matches(warned).count(), 1, "{log}");
    let line = log.lines().find(|l| l.contains(warned)).unwrap_or_default();
    assert!(
        line.contains("database space exceeded"),
        "the warning does not say what etcd said: {line}"
    );
}

#[tokio::test]
async fn bad_flags_and_keys_are_named_and_exit_non_zero() {
    let cases: [(&[&str], &str); 4] = [
        (
            &["register", "--service", "s", "--addr", "nonsense"],
            "--addr",
        ),
        (
            &[
                "register",
                "--service",
                "s",
                "--addr",
                "10.0.0.1:80",
                "--ttl",
                "1s",
            ],
            "--ttl",
        ),
        (
            &[
                "register",
                "--service",
                "s",
                "--addr",
                "10.0.0.1:80",
                "--check-tcp",
                "x",
            ],
            "--check-tcp",
        ),
        (
            &[
                "register",
                "--service",
                "s",
                "--addr",
                "10.0.0.1:80",
                "--format",
                "xml",
            ],
            "--format",
        ),
    ];
    for (args, flag) in cases {
        let (status, _, err) = run(args);
        assert!(!status.success(), "{args:?} was accepted");
        assert!(err.contains(flag), "{args:?}: {err}");
    }

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let keys = [
        ("[[register]]\nservice = \"s\"\naddr = \"10.0.0.1:80\"\nttl = \"1s\"\n", "register[0].ttl"),
        ("[[register]]\nservice = \"s\"\naddr = \"10.0.0.1\"\n", "register[0].addr"),
        ("[[register]]\nservice = \"s\"\naddr = \"10.0.0.1:80\"\nweight = 2\n", "register[0].weight"),
        ("[[register]]\nservice = \"s\"\naddr = \"10.0.0.1:80\"\n[register.check]\ninterval = \"1s\"\n", "register[0].check.tcp"),
        ("[[register]]\nservice = \"s\"\naddr = \"10.0.0.1:80\"\n[register.check]\nhttp = \"localhost/health\"\n", "register[0].check.http"),
        ("[[register]]\nservice = \"s\"\nid = \"a\"\naddr = \"10.0.0.1:80\"\nttl = \"5s\"\n[[register]]\nservice = \"s\"\nid = \"b\"\naddr = \"10.0.0.1:81\"\n", "register[1].ttl"),
    ];
    for (text, key) in keys {
        std::fs::write(&path, text).unwrap();
        let (status, _, err) = run(&["check", "-c", path.to_str().unwrap()]);
        assert!(!status.success(), "accepted:\n{text}");
        assert!(err.contains(key), "wanted {key} in: {err}");
    }
}

#[tokio::test]
async fn a_batch_registration_is_written_in_chunked_transactions_under_one_lease() {
    let etcd = Etcd::start().await;
    let mut kv = etcd.client().await;
    let before = head(&mut kv).await;
    let instances: Vec<Registration> = (0..300)
        .map(|i| {
            let addr = format!("10.1.{}.{}:8080", i / 250, i % 250 + 1)
                .parse()
                .unwrap();
            Registration::new(
                "batch",
                format!("b{i:03}"),
                Endpoint::new(addr, Format::Plain),
            )
        })
        .collect();
    let config = cairn::etcd::EtcdConfig {
        endpoints: vec![etcd.endpoint().parse().unwrap()],
        ..Default::default()
    };
    let conn = cairn::etcd::Etcd::connect(&config, cairn::etcd::EtcdMetrics::default())
        .await
        .unwrap();
    let registrar = Registrar::new(conn, "/services/", Duration::from_secs(10), instances).spawn();
    let status = registrar.status();
    eventually(SOON, "all 300 instances are registered", || async {
        (0..300).all(|i| status.is_registered(i)).then_some(())
    })
    .await;
    let got = kv
        .get("/services/batch/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(got.kvs().len(), 300);
    let leases: std::collections::HashSet<i64> = got.kvs().iter().map(|kv| kv.lease()).collect();
    assert_eq!(leases.len(), 1, "one lease for all");
    // One revision per transaction: 300 keys at 64 per transaction is 5 transactions.
    let after = got.header().unwrap().revision();
    assert_eq!(after - before, 5, "expected 5 chunked transactions");

    registrar.stop().await;
    let got = kv
        .get(
            "/services/batch/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!(
        got.count(),
        0,
        "stopping revokes the lease and every key with it"
    );
}
