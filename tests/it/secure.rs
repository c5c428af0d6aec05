//! A production etcd: TLS with client certificates, users whose tokens expire every two seconds,
//! and an etcd wiped under a running cairn.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{GetOptions, Permission};

use crate::support::cairn::{run, Cairn, ADMIN};

/// One routed service, so that cairn lists (and its readiness waits for) the registry.
const ROUTED: &str = "\n[[service]]\nname = \"svc\"\nlisten = \"127.0.0.1:0\"\n";
use crate::support::etcd::Etcd;
use crate::support::eventually;
use crate::support::pki::Pki;
use crate::support::upstream::{greeting, Tagged};

const SOON: Duration = Duration::from_secs(10);

fn tls_section(pki: &Pki) -> String {
    format!(
        "[etcd.tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        pki.ca.display(),
        pki.client_cert.display(),
        pki.client_key.display()
    )
}

#[tokio::test]
async fn discovery_registration_and_the_tools_work_over_mtls() {
    let pki = Arc::new(Pki::generate());
    let etcd = Etcd::start_secure(Arc::clone(&pki), &[]).await;
    let up = Tagged::start("secure").await;
    let mut kv = etcd.client().await;
    kv.put("/services/s/a", up.addr.to_string(), None)
        .await
        .unwrap();
    let cairn = Cairn::start(&format!(
        "[etcd]\nendpoints = [\"{}\"]\n{}\n{ADMIN}\n[[service]]\nname = \"s\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[register]]\nservice = \"r\"\nid = \"me\"\naddr = \"10.0.0.1:80\"\n",
        etcd.endpoint(),
        tls_section(&pki)
    ))
    .await;
    cairn.wait_instances("s", &["a"], SOON).await;
    assert_eq!(greeting(cairn.listen(0)).await.as_deref(), Some("secure"));
    eventually(SOON, "the registration is written", || {
        let mut kv = kv.clone();
        async move {
            let r = kv.get("/services/r/me", None).await.ok()?;
            (!r.kvs().is_empty()).then_some(())
        }
    })
    .await;
    let (status, out, err) = run(&[
        "list",
        "--endpoints",
        &etcd.endpoint(),
        "--ca-file",
        pki.ca.to_str().unwrap(),
        "--cert-file",
        pki.client_cert.to_str().unwrap(),
        "--key-file",
        pki.client_key.to_str().unwrap(),
    ]);
    assert!(status.success(), "{err}");
    assert!(out.contains("s        a") || out.contains(" a "), "{out}");
}

#[tokio::test]
async fn a_certificate_that_fails_verification_is_one_clear_line() {
    let pki = Arc::new(Pki::generate());
    let etcd = Etcd::start_secure(Arc::clone(&pki), &[]).await;
    let (status, _, err) = run(&[
        "list",
        "--endpoints",
        &etcd.endpoint(),
        "--ca-file",
        pki.other_ca.to_str().unwrap(),
        "--cert-file",
        pki.client_cert.to_str().unwrap(),
        "--key-file",
        pki.client_key.to_str().unwrap(),
    ]);
    assert!(!status.success());
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // cairn run keeps trying, and names the member that fails verification. It routes a
    // service, so its readiness waits on that service's list.
    let cairn = Cairn::start(&format!(
        "[etcd]\nendpoints = [\"{}\"]\n[etcd.tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n{ADMIN}{ROUTED}",
        etcd.endpoint(),
        pki.other_ca.display(),
        pki.client_cert.display(),
        pki.client_key.display()
    ))
    .await;
    let member = etcd.endpoint();
    eventually(SOON, "the member is named with the reason", || async {
        cairn
            .log()
            .lines()
            .any(|l| {
                l.contains("does not answer")
                    && l.contains(&member)
                    && l.to_lowercase().contains("certificate")
            })
            .then_some(())
    })
    .await;
    assert_eq!(cairn.get("/readyz").await.0, 503);
    let up = format!("cairn_etcd_member_up{{endpoint=\"{member}\"}}");
    assert_eq!(cairn.metric(&up).await, 0.0);
}

#[tokio::test]
async fn check_reads_every_tls_file_and_refuses_mixed_schemes() {
    let pki = Pki::generate();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    for (text, want) in [
        (
            "[etcd]\nendpoints = [\"https://127.0.0.1:2379\"]\n[etcd.tls]\nca_file = \"/nonexistent/ca.pem\"\n".to_string(),
            "etcd.tls.ca_file: cannot read /nonexistent/ca.pem",
        ),
        (
            format!("[etcd]\nendpoints = [\"https://127.0.0.1:2379\"]\n[etcd.tls]\nca_file = \"{}\"\n", not_pem.display()),
            "holds no PEM certificate",
        ),
        (
            format!("[etcd]\nendpoints = [\"https://127.0.0.1:2379\"]\n[etcd.tls]\ncert_file = \"{}\"\n", pki.client_cert.display()),
            "etcd.tls.cert_file: a client certificate needs key_file too",
        ),
        (
            "[etcd]\nendpoints = [\"https://127.0.0.1:2379\", \"http://127.0.0.1:2380\"]\n".to_string(),
            "etcd.endpoints: endpoints mix http:// and https://",
        ),
        (
            format!("[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n[etcd.tls]\nca_file = \"{}\"\n", pki.ca.display()),
            "are http://",
        ),
        (
            "[etcd]\nusername = \"cairn\"\npassword = \"hunter2\"\n".to_string(),
            "etcd.password: a password is never written in the config",
        ),
    ] {
        std::fs::write(&path, &text).unwrap();
        let (status, _, err) = run(&["check", "-c", path.to_str().unwrap()]);
        assert!(!status.success(), "accepted:\n{text}");
        assert!(err.contains(want), "wanted {want:?} in: {err}");
        assert!(!err.contains("hunter2"), "a password leaked: {err}");
    }
}

#[tokio::test]
async fn every_tls_file_is_decoded_whole_by_check_and_by_run() {
    let pki = Pki::generate();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let empty_cert = dir.path().join("empty-cert.pem");
    std::fs::write(
        &empty_cert,
        "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let bad_key = dir.path().join("bad-key.pem");
    std::fs::write(
        &bad_key,
        "-----BEGIN PRIVATE KEY-----\naGVsbG8gd29ybGQ=\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let tls = |ca: &std::path::Path, cert: &std::path::Path, key: &std::path::Path| {
        format!(
            "[etcd]\nendpoints = [\"https://127.0.0.1:2379\"]\n[etcd.tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            ca.display(),
            cert.display(),
            key.display()
        )
    };
    // The file of issue 23: a PEM block with a line of text in it.
    let text_cert = dir.path().join("text-cert.pem");
    std::fs::write(
        &text_cert,
        "-----BEGIN CERTIFICATE-----\nhello\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    for (text, field, file, why) in [
        (
            tls(&pki.ca, &text_cert, &pki.client_key),
            "etcd.tls.cert_file",
            &text_cert,
            "is not readable PEM",
        ),
        (
            tls(&pki.ca, &empty_cert, &pki.client_key),
            "etcd.tls.cert_file",
            &empty_cert,
            "is not an X.509 certificate",
        ),
        (
            tls(&pki.ca, &pki.client_cert, &bad_key),
            "etcd.tls.key_file",
            &bad_key,
            "cannot be used for TLS",
        ),
        (
            tls(&pki.ca, &pki.client_cert, &pki.server_key),
            "etcd.tls.key_file",
            &pki.server_key,
            "is not the key of the certificate",
        ),
        (
            tls(&pki.client_cert, &pki.client_cert, &pki.client_key),
            "etcd.tls.ca_file",
            &pki.client_cert,
            "holds no CA certificate",
        ),
    ] {
        std::fs::write(&path, &text).unwrap();
        let file = file.display().to_string();
        // check refuses it, and so does run, before connecting.
        for command in ["check", "run"] {
            let (status, _, err) = run(&[command, "-c", path.to_str().unwrap()]);
            assert_eq!(status.code(), Some(1), "{command} accepted:\n{text}\n{err}");
            assert!(
                err.contains(field) && err.contains(&file) && err.contains(why),
                "{command}: wanted {field}, {file} and {why:?} in: {err}"
            );
            assert_eq!(err.trim().lines().count(), 1, "{err}");
        }
    }
    // The command line's TLS flags are read the same way.
    let (status, _, err) = run(&[
        "list",
        "--endpoints",
        "https://127.0.0.1:2379",
        "--ca-file",
        pki.client_cert.to_str().unwrap(),
    ]);
    assert!(!status.success());
    assert!(
        err.contains("--ca-file") && err.contains("holds no CA certificate"),
        "{err}"
    );
}

#[tokio::test]
async fn a_member_that_fails_verification_is_named_with_the_cause_not_transport_error() {
    let pki = Arc::new(Pki::generate());
    let etcd = Etcd::start_secure(Arc::clone(&pki), &[]).await;
    let member = etcd.endpoint();
    let cairn = Cairn::start(&format!(
        "[etcd]\nendpoints = [\"{member}\"]\n[etcd.tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n{ADMIN}{ROUTED}",
        pki.other_ca.display(),
        pki.client_cert.display(),
        pki.client_key.display()
    ))
    .await;
    // The registry list fails: the warning names where and why, once.
    let line = eventually(SOON, "the list failure is logged", || async {
        cairn
            .log()
            .lines()
            .find(|l| l.contains("listing the registry failed"))
            .map(str::to_string)
    })
    .await;
    assert!(line.contains(&format!("etcd at {member}")), "{line}");
    assert!(line.to_lowercase().contains("certificate"), "{line}");
    assert!(!line.contains("transport error: transport error"), "{line}");
}

/// etcd with auth, a 2 s token lifetime, and users: `cairn` (readwrite on /services/). etcd
/// drops a client that stops answering its pings within about 2 s.
async fn auth_etcd() -> Etcd {
    let mut etcd = Etcd::start_with(&[
        "--auth-token-ttl=2",
        "--grpc-keepalive-interval=1s",
        "--grpc-keepalive-timeout=1s",
    ])
    .await;
    etcd.enable_auth().await;
    let c = etcd.client().await;
    let mut auth = c.auth_client();
    auth.role_add("rw").await.unwrap();
    auth.role_grant_permission("rw", Permission::read_write("/services/").with_prefix())
        .await
        .unwrap();
    auth.user_add("cairn", "cairn-password", None)
        .await
        .unwrap();
    auth.user_grant_role("cairn", "rw").await.unwrap();
    etcd
}

/// A cairn authenticating as `cairn`, with a TCP service `s` and `extra` config.
async fn cairn_as_user(etcd: &Etcd, dir: &std::path::Path, extra: &str) -> Cairn {
    let password = dir.join("pw");
    std::fs::write(&password, "cairn-password\n").unwrap();
    let cairn = Cairn::start(&format!(
        "[etcd]\nendpoints = [\"{}\"]\nusername = \"cairn\"\npassword_file = \"{}\"\n{ADMIN}\n\
         [[service]]\nname = \"s\"\nlisten = \"127.0.0.1:0\"\n\n{extra}",
        etcd.endpoint(),
        password.display()
    ))
    .await;
    cairn.wait_ready().await;
    cairn
}

#[tokio::test]
async fn expiring_tokens_neither_stop_routing_nor_the_lease() {
    let etcd = auth_etcd().await;
    let dir = tempfile::tempdir().unwrap();
    let kv = etcd.client().await;
    let up = Tagged::start("up").await;
    let cairn = cairn_as_user(
        &etcd,
        dir.path(),
        "[[register]]\nservice = \"r\"\nid = \"me\"\naddr = \"10.0.0.1:80\"\nttl = \"3s\"\n",
    )
    .await;
    let lease_of = |mut kv: etcd_client::Client| async move {
        let r = kv.get("/services/r/me", None).await.ok()?;
        r.kvs().first().map(|k| k.lease())
    };
    let first = eventually(SOON, "the registration is written", || lease_of(kv.clone())).await;
    // Changes made after the token has expired several times over are still routed.
    for i in 0..3 {
        tokio::time::sleep(Duration::from_secs(4)).await;
        kv.clone()
            .put(format!("/services/s/i{i}"), up.addr.to_string(), None)
            .await
            .unwrap();
        let want: Vec<String> = (0..=i).map(|j| format!("i{j}")).collect();
        let want: Vec<&str> = want.iter().map(String::as_str).collect();
        cairn.wait_instances("s", &want, SOON).await;
    }
    assert_eq!(greeting(cairn.listen(0)).await.as_deref(), Some("up"));
    assert_eq!(
        lease_of(kv.clone()).await,
        Some(first),
        "the lease was lost"
    );
    let ttl = kv
        .clone()
        .lease_time_to_live(first, None)
        .await
        .unwrap()
        .ttl();
    assert!(ttl > 0, "the lease is not kept alive");
    assert!(
        !cairn.log().contains("cairn-password"),
        "the password reached the log"
    );
}

#[tokio::test]
async fn a_watch_reopened_after_its_token_expired_authenticates_again_and_resumes() {
    let etcd = auth_etcd().await;
    let dir = tempfile::tempdir().unwrap();
    let up = Tagged::start("up").await;
    let cairn = cairn_as_user(&etcd, dir.path(), "").await;
    // cairn freezes past its token's lifetime; etcd drops its connection meanwhile. Thawed, its
    // watch must reopen with a fresh token (etcd cancels a watch created with an expired one)
    // and resume from where it was. The first watch must be open before the freeze, or its
    // creation is what fails and nothing is reopened.
    eventually(SOON, "the first watch is open", || async {
        (cairn.metric("cairn_registry_connected").await == 1.0).then_some(())
    })
    .await;
    cairn.signal("STOP");
    tokio::time::sleep(Duration::from_secs(4)).await;
    cairn.signal("CONT");
    // The key is written only once the old stream is gone, so it can only arrive through the
    // reopened watch.
    eventually(SOON, "the watch is reopened", || async {
        (cairn.metric("cairn_discovery_watch_restarts_total").await >= 1.0).then_some(())
    })
    .await;
    etcd.client()
        .await
        .put("/services/s/after", up.addr.to_string(), None)
        .await
        .unwrap();
    cairn.wait_instances("s", &["after"], SOON).await;
    assert_eq!(
        cairn.metric("cairn_discovery_lists_total").await,
        1.0,
        "the watch listed again instead of resuming"
    );
}

#[tokio::test]
async fn wrong_credentials_are_one_line_naming_the_user_and_the_endpoint() {
    let etcd = auth_etcd().await;
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("pw");
    std::fs::write(&password, "wrong").unwrap();
    let (status, _, err) = run(&[
        "list",
        "--endpoints",
        &etcd.endpoint(),
        "--username",
        "cairn",
        "--password-file",
        password.to_str().unwrap(),
    ]);
    assert!(!status.success());
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("\"cairn\"") && err.contains(&etcd.endpoint()),
        "{err}"
    );
    assert!(err.contains("authentication failed"), "{err}");
    assert!(!err.contains("wrong"), "the password leaked: {err}");
}

#[tokio::test]
async fn a_wiped_etcd_is_detected_and_its_registry_served() {
    let mut etcd = Etcd::start().await;
    let a = Tagged::start("a").await;
    let b = Tagged::start("b").await;
    let mut kv = etcd.client().await;
    // Push the revision well above what the new etcd will have.
    for i in 0..20 {
        kv.put(
            format!("/services/s/old-{}", i % 2),
            a.addr.to_string(),
            None,
        )
        .await
        .unwrap();
    }
    let cairn = Cairn::start(&format!(
        "[etcd]\nendpoints = [\"{}\"]\n{ADMIN}\n[[service]]\nname = \"s\"\nlisten = \"127.0.0.1:0\"\n\n\
         [[register]]\nservice = \"r\"\nid = \"me\"\naddr = \"10.0.0.1:80\"\nttl = \"2s\"\n",
        etcd.endpoint()
    ))
    .await;
    cairn.wait_instances("s", &["old-0", "old-1"], SOON).await;

    etcd.restart_empty().await;
    let mut kv = etcd.client().await;
    kv.put("/services/s/new", b.addr.to_string(), None)
        .await
        .unwrap();
    cairn.wait_instances("s", &["new"], SOON).await;
    assert_eq!(greeting(cairn.listen(0)).await.as_deref(), Some("b"));
    assert!(cairn.log().contains("was replaced"), "{}", cairn.log());
    eventually(SOON, "the registration is written to the new etcd", || {
        let mut kv = kv.clone();
        async move {
            let r = kv
                .get("/services/r/", Some(GetOptions::new().with_prefix()))
                .await
                .ok()?;
            (!r.kvs().is_empty()).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn auth_bootstrap_sets_up_least_privilege_once_and_each_user_can_do_its_part() {
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().unwrap();
    let root_pw = dir.path().join("root.pw");
    std::fs::write(&root_pw, "root-secret\n").unwrap();
    let passwords = dir.path().join("passwords");
    std::fs::create_dir(&passwords).unwrap();
    let endpoint = etcd.endpoint();
    let bootstrap = || {
        run(&[
            "auth",
            "bootstrap",
            "--endpoints",
            &endpoint,
            "--username",
            "root",
            "--password-file",
            root_pw.to_str().unwrap(),
            "--password-dir",
            passwords.to_str().unwrap(),
            "--enable-auth",
        ])
    };
    let (status, out, err) = bootstrap();
    assert!(status.success(), "{err}");
    for line in [
        "created role cairn-proxy",
        "granted role cairn-proxy read on /services/",
        "created role cairn-registrar",
        "granted role cairn-registrar readwrite on /services/",
        "created user cairn-proxy with a generated password",
        "granted role cairn-proxy to user cairn-proxy",
        "enabled auth",
    ] {
        assert!(out.contains(line), "wanted {line:?} in:\n{out}");
    }
    let proxy_pw = passwords.join("cairn-proxy.password");
    let secret = std::fs::read_to_string(&proxy_pw).unwrap();
    assert!(!out.contains(secret.trim()), "a password was printed");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&proxy_pw).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Again: nothing changes, and it says so.
    let (status, out, err) = bootstrap();
    assert!(status.success(), "{err}");
    assert!(
        !out.contains("created") && !out.contains("granted role") && !out.contains("enabled auth"),
        "{out}"
    );
    assert!(
        out.contains("role cairn-proxy already grants read on /services/"),
        "{out}"
    );
    assert!(out.contains("auth is already enabled"), "{out}");

    // The proxy user routes.
    let mut kv = etcd_client::Client::connect(
        [etcd.endpoint()],
        Some(etcd_client::ConnectOptions::new().with_user("root", "root-secret")),
    )
    .await
    .unwrap();
    let up = Tagged::start("up").await;
    kv.put("/services/s/a", up.addr.to_string(), None)
        .await
        .unwrap();
    let cairn = Cairn::start(&format!(
        "[etcd]\nendpoints = [\"{}\"]\nusername = \"cairn-proxy\"\npassword_file = \"{}\"\n{ADMIN}\n[[service]]\nname = \"s\"\nlisten = \"127.0.0.1:0\"\n",
        etcd.endpoint(),
        proxy_pw.display()
    ))
    .await;
    cairn.wait_instances("s", &["a"], SOON).await;
    assert_eq!(greeting(cairn.listen(0)).await.as_deref(), Some("up"));

    // It cannot register; the registrar user can.
    let register = |user: &str, id: &str| {
        let password_file = passwords.join(format!("{user}.password"));
        crate::support::cairn::Proc::spawn(&[
            "register",
            "--endpoints",
            &endpoint,
            "--username",
            user,
            "--password-file",
            password_file.to_str().unwrap(),
            "--service",
            "reg",
            "--id",
            id,
            "--addr",
            "10.0.0.1:80",
        ])
    };
    let mut proxy = register("cairn-proxy", "p");
    let status = proxy.wait_exit(SOON).await;
    assert!(!status.success());
    let err = proxy.stderr();
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains("may not write under /services/") && last.contains("permission denied"),
        "{err}"
    );
    let _registrar = register("cairn-registrar", "r");
    eventually(SOON, "the registrar user registers", || {
        let mut kv = kv.clone();
        async move {
            let r = kv.get("/services/reg/r", None).await.ok()?;
            (!r.kvs().is_empty()).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn a_reload_to_a_user_that_cannot_write_the_registrations_is_refused() {
    let etcd = auth_etcd().await;
    let c = etcd.client().await;
    let mut auth = c.auth_client();
    auth.role_add("ro").await.unwrap();
    auth.role_grant_permission("ro", Permission::read("/services/").with_prefix())
        .await
        .unwrap();
    auth.user_add("reader", "reader-password", None)
        .await
        .unwrap();
    auth.user_grant_role("reader", "ro").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let registration =
        "[[register]]\nservice = \"r\"\nid = \"me\"\naddr = \"10.0.0.1:80\"\nttl = \"60s\"\n";
    let cairn = cairn_as_user(&etcd, dir.path(), registration).await;
    let lease_of = || async {
        let r = etcd.client().await.get("/services/r/me", None).await.ok()?;
        r.kvs().first().map(|k| k.lease())
    };
    let first = eventually(SOON, "the registration is written", lease_of).await;

    // The same etcd as a user that may read the registry but not write it: the registrar
    // could not move there, so the reload is refused and the lease stays.
    let reader_pw = dir.path().join("reader-pw");
    std::fs::write(&reader_pw, "reader-password\n").unwrap();
    let v1 = std::fs::read_to_string(cairn.dir().join("cairn.toml")).unwrap();
    let v2 = v1
        .replace("username = \"cairn\"", "username = \"reader\"")
        .replace(
            &dir.path().join("pw").display().to_string(),
            &reader_pw.display().to_string(),
        );
    assert_ne!(v1, v2);
    let refused = cairn
        .reload(&v2)
        .await
        .expect_err("a user that cannot write the registrations is taken");
    assert!(
        refused.to_lowercase().contains("permission denied"),
        "{refused}"
    );
    assert!(refused.contains(&etcd.endpoint()), "{refused}");
    assert_eq!(lease_of().await, Some(first), "the registration moved");
    // Without registrations, reading is all the reader needs.
    cairn
        .reload(&v2.replace(registration, ""))
        .await
        .expect("a reader with nothing to register is taken");
}
