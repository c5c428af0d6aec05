//! Config loading as an operator meets it: defaults, and every mistake named with its line and key.

use super::*;
use crate::balance::Balance;
use crate::proxy::{Limits, Protocol, RelayConfig, RouteConfig};

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("cairn.toml"))
}

#[test]
fn defaults_apply_to_a_minimal_file() {
    let c = parse("[[service]]\nname = \"orders\"\nlisten = \"127.0.0.1:7001\"\n").unwrap();
    assert_eq!(c.etcd, EtcdConfig::default());
    assert_eq!(c.admin, AdminConfig::default());
    let s = &c.services[0];
    assert_eq!(s.protocol, Protocol::Tcp);
    assert_eq!(s.route, RouteConfig::default());
    assert_eq!(s.route.policy.balance, Balance::RoundRobin);
    assert_eq!(s.route.connect_timeout, Duration::from_secs(1));
    assert_eq!(s.route.retries, 2);
    assert_eq!(s.route.request_timeout, Duration::from_secs(30));
    assert!(!s.route.rewrite_host);
    assert_eq!(s.limits, Limits::default());
    assert!(c.gateways.is_empty());
}

#[test]
fn the_shipped_example_is_valid() {
    let text = include_str!("../../config/cairn.toml");
    let c = parse(text).unwrap();
    assert_eq!(&*c.services[0].name, "orders");
}

#[test]
fn unknown_key_is_named_with_its_line() {
    let e =
        parse("[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\ntimeout = \"5s\"\n").unwrap_err();
    assert_eq!(e.line, Some(3), "{e}");
    assert!(e.message.contains("unknown field `timeout`"), "{e}");
}

#[test]
fn unknown_key_in_a_service_names_the_block() {
    let e = parse("[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nport = 3\n").unwrap_err();
    assert_eq!(e.line, Some(4), "{e}");
    assert!(e.to_string().contains("service[0]"), "{e}");
    assert!(e.message.contains("port"), "{e}");
}

#[test]
fn bad_duration_names_key_and_line() {
    let e = parse("[etcd]\n\ndial_timeout = \"5 parsecs\"\n").unwrap_err();
    assert_eq!(e.line, Some(3), "{e}");
    assert_eq!(e.key.as_deref(), Some("etcd.dial_timeout"), "{e}");
    assert!(e.message.contains("invalid duration"), "{e}");
}

#[test]
fn bad_address_names_key_and_line() {
    let e = parse("[[service]]\nname = \"a\"\nlisten = \"localhost:99999\"\n").unwrap_err();
    assert_eq!(e.line, Some(3), "{e}");
    assert_eq!(e.key.as_deref(), Some("service[0].listen"), "{e}");
}

#[test]
fn duplicate_names_and_listens_are_rejected() {
    let dup_name = "[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n\n[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:2\"\n";
    let e = parse(dup_name).unwrap_err();
    assert_eq!(e.line, Some(6), "{e}");
    assert!(
        e.message
            .contains("duplicate service name \"a\" (first defined at line 2)"),
        "{e}"
    );

    let dup_listen = "[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n\n[[service]]\nname = \"b\"\nlisten = \"127.0.0.1:1\"\n";
    let e = parse(dup_listen).unwrap_err();
    assert_eq!(e.line, Some(7), "{e}");
    assert!(
        e.message
            .contains("already used by service \"a\" at line 3"),
        "{e}"
    );

    let admin_clash =
        "[admin]\nlisten = \"127.0.0.1:9\"\n[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:9\"\n";
    let e = parse(admin_clash).unwrap_err();
    assert!(e.message.contains("[admin]"), "{e}");
}

#[test]
fn bad_enums_endpoints_and_prefix_are_rejected() {
    let e = parse("[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nbalance = \"fastest\"\n")
        .unwrap_err();
    assert_eq!(e.line, Some(4), "{e}");
    assert!(e.message.contains("fastest"), "{e}");
    let e = parse("[etcd]\nendpoints = [\"127.0.0.1:2379\"]\n").unwrap_err();
    assert!(e.message.contains("http://"), "{e}");
    let e = parse("[etcd]\nendpoints = []\n").unwrap_err();
    assert!(e.message.contains("at least one"), "{e}");
    let e = parse("[etcd]\nprefix = \"/services\"\n").unwrap_err();
    assert!(e.message.contains("end with '/'"), "{e}");
    let e = parse("[[service]]\nname = \"a/b\"\nlisten = \"127.0.0.1:1\"\n").unwrap_err();
    assert!(e.message.contains("'/'"), "{e}");
    let e =
        parse("[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nconnect_timeout = \"0s\"\n")
            .unwrap_err();
    assert!(e.message.contains("longer than zero"), "{e}");
}

#[test]
fn grpc_services_speak_http2_to_their_instances() {
    let c = parse(
        "[[service]]\nname = \"orders\"\nlisten = \"127.0.0.1:1\"\nprotocol = \"grpc\"\nrequest_timeout = \"2s\"\nidle_timeout = \"5s\"\n",
    )
    .unwrap();
    let s = &c.services[0];
    assert_eq!(s.protocol, Protocol::Grpc);
    assert!(s.route.h2);
    assert_eq!(s.limits.idle_timeout, Duration::from_secs(5));
    let http =
        parse("[[service]]\nname = \"web\"\nlisten = \"127.0.0.1:1\"\nprotocol = \"http\"\n")
            .unwrap();
    assert!(!http.services[0].route.h2);
    let e = parse(
        "[[service]]\nname = \"o\"\nlisten = \"127.0.0.1:1\"\nprotocol = \"grpc\"\ntcp_keepalive = \"5s\"\n",
    )
    .unwrap_err();
    assert!(e.to_string().contains("tcp_keepalive"), "{e}");
}

#[test]
fn grpc_health_checks_are_read_for_services_and_registrations() {
    let c = parse(
        "[[service]]\nname = \"o\"\nlisten = \"127.0.0.1:1\"\nprotocol = \"grpc\"\n[service.health]\ngrpc = \"orders.v1.Orders\"\n\n[[register]]\nservice = \"o\"\naddr = \"10.0.0.1:9000\"\n[register.check]\ngrpc = \"127.0.0.1:9000\"\ngrpc_service = \"orders.v1.Orders\"\n",
    )
    .unwrap();
    let h = c.services[0].health.as_ref().unwrap();
    assert_eq!(
        h.probe,
        crate::health::HealthProbe::Grpc("orders.v1.Orders".into())
    );
    let check = c.registrations[0].check.as_ref().unwrap();
    assert_eq!(
        check.probe.to_string(),
        "grpc 127.0.0.1:9000 \"orders.v1.Orders\""
    );
    for (text, want) in [
        (
            "[[service]]\nname = \"o\"\nlisten = \"127.0.0.1:1\"\n[service.health]\nhttp = \"/h\"\ngrpc = \"\"\n",
            "a check is one of",
        ),
        (
            "[[service]]\nname = \"o\"\nlisten = \"127.0.0.1:1\"\n[service.health]\ntcp = true\ngrpc = \"\"\n",
            "a check is one of",
        ),
        (
            "[[register]]\nservice = \"o\"\naddr = \"10.0.0.1:9000\"\n[register.check]\ntcp = \"127.0.0.1:9000\"\ngrpc_service = \"x\"\n",
            "set grpc = ",
        ),
        (
            "[[register]]\nservice = \"o\"\naddr = \"10.0.0.1:9000\"\n[register.check]\ntcp = \"127.0.0.1:9000\"\ngrpc = \"127.0.0.1:9000\"\n",
            "exactly one of tcp, http, exec or grpc",
        ),
    ] {
        let e = parse(text).unwrap_err().to_string();
        assert!(e.contains(want), "wanted {want:?} in {e}");
    }
}

#[test]
fn http_services_and_gateways_are_read() {
    let c = parse(
        "[[service]]\nname = \"web\"\nlisten = \"127.0.0.1:1\"\nprotocol = \"http\"\nrequest_timeout = \"2s\"\nrewrite_host = true\nmax_connections = 10\nidle_timeout = \"5s\"\nmax_header_bytes = 16384\n\n[[gateway]]\nlisten = \"127.0.0.1:2\"\nhost_suffix = \".SVC.local\"\n",
    )
    .unwrap();
    let s = &c.services[0];
    assert_eq!(s.protocol, Protocol::Http);
    assert_eq!(s.route.request_timeout, Duration::from_secs(2));
    assert!(s.route.rewrite_host);
    assert_eq!(
        s.limits,
        Limits {
            max_connections: 10,
            idle_timeout: Duration::from_secs(5),
            max_header_bytes: 16384
        }
    );
    let g = &c.gateways[0];
    assert_eq!(g.host_suffix.as_deref(), Some(".svc.local"));
    assert_eq!(g.limits, Limits::default());
}

#[test]
fn tcp_relays_have_an_optional_idle_timeout_and_keepalive() {
    let tcp = |extra: &str| {
        parse(&format!(
            "[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n{extra}"
        ))
    };
    let c = tcp("").unwrap();
    assert_eq!(
        c.services[0].relay,
        RelayConfig {
            idle_timeout: None,
            keepalive: Some(Duration::from_secs(60))
        }
    );
    let c = tcp("idle_timeout = \"2h\"\ntcp_keepalive = \"0s\"\n").unwrap();
    assert_eq!(
        c.services[0].relay,
        RelayConfig {
            idle_timeout: Some(Duration::from_secs(7200)),
            keepalive: None
        }
    );
    let e = tcp("tcp_keepalive = \"10h\"\n").unwrap_err();
    assert_eq!(e.key.as_deref(), Some("service[0].tcp_keepalive"), "{e}");
    let e = tcp("idle_timeout = \"100ms\"\n").unwrap_err();
    assert!(e.message.contains("at least 1s"), "{e}");
    let e = tcp("protocol = \"http\"\ntcp_keepalive = \"30s\"\n").unwrap_err();
    assert!(e.message.contains("only to protocol = \"tcp\""), "{e}");
}

#[test]
fn http_mistakes_are_rejected() {
    let e =
        parse("[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nmax_header_bytes = 16384\n")
            .unwrap_err();
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(4), Some("service[0].max_header_bytes")),
        "{e}"
    );
    assert!(e.message.contains("only to protocol = \"http\""), "{e}");
    let e =
        parse("[[gateway]]\nlisten = \"127.0.0.1:1\"\nhost_suffix = \"svc.local\"\n").unwrap_err();
    assert!(e.message.contains("must start with '.'"), "{e}");
    let e = parse("[[gateway]]\nlisten = \"127.0.0.1:1\"\nmax_header_bytes = 100\n").unwrap_err();
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(3), Some("gateway[0].max_header_bytes")),
        "{e}"
    );
    let e = parse("[[gateway]]\nlisten = \"127.0.0.1:1\"\nmax_connections = 0\n").unwrap_err();
    assert!(e.message.contains("outside 1..="), "{e}");
    let e = parse("[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n[[gateway]]\nlisten = \"127.0.0.1:1\"\n").unwrap_err();
    assert!(e.message.contains("already used by service \"a\""), "{e}");
    let e = parse("[[gateway]]\nlisten = \"127.0.0.1:1\"\nprefix = \"x\"\n").unwrap_err();
    assert!(e.message.contains("unknown field `prefix`"), "{e}");
    let e =
        parse("[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nretries = 17\n").unwrap_err();
    assert_eq!(e.line, Some(4), "{e}");
}

#[test]
fn missing_required_key_is_reported() {
    let e = parse("[[service]]\nname = \"a\"\n").unwrap_err();
    assert!(e.message.contains("missing field `listen`"), "{e}");
}

#[test]
fn invalid_toml_is_located() {
    let e = parse("[etcd\n").unwrap_err();
    assert_eq!(e.line, Some(1), "{e}");
}

#[test]
fn wrong_kinds_name_the_key_as_written() {
    let e =
        parse("[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\nretries = -1\n").unwrap_err();
    assert_eq!(e.key.as_deref(), Some("service[0].retries"), "{e}");
    assert_eq!(e.line, Some(4), "{e}");
    let e =
        parse("[[register]]\nservice = \"s\"\naddr = \"10.0.0.1:80\"\nttl = \"1s\"\n").unwrap_err();
    assert_eq!(e.key.as_deref(), Some("register[0].ttl"), "{e}");
    assert!(e.message.contains("at least 2s"), "{e}");
}

#[test]
fn port_zero_listeners_never_clash() {
    let c = parse(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\n[[gateway]]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    assert_eq!(c.services[0].listen.port(), 0);
}

proptest::proptest! {
    #[test]
    fn any_text_loads_or_fails_with_a_located_error(text in "\\PC{0,200}") {
        let _ = parse(&text);
    }

    #[test]
    fn plausible_files_load_or_fail_with_one_line(
        section in "(etcd|admin|\\[service\\]|\\[gateway\\]|\\[register\\]|register.check)",
        key in "(name|listen|endpoints|prefix|ttl|addr|idle_timeout|retries|max_connections|weight|tcp|interval)",
        value in "(\"[a-z0-9.:/ ]{0,20}\"|-?[0-9]{1,20}|\\[\\]|true|\"[0-9]{1,22}(ms|s|h)\")",
    ) {
        let text = format!("[{section}]\n{key} = {value}\n");
        if let Err(e) = parse(&text) {
            proptest::prop_assert_eq!(e.to_string().lines().count(), 1, "{}", e);
            proptest::prop_assert!(!e.to_string().contains("$__serde"), "{}", e);
        }
    }
}

#[test]
fn balancing_ejection_health_and_zone_are_read() {
    let text = r#"
[node]
zone = "eu-1a"

[[service]]
name = "orders"
listen = "127.0.0.1:7001"
protocol = "http"
balance = "hash"
hash_key = "header:X-User"
min_local = 3

[service.outlier]
consecutive_failures = 2
consecutive_5xx = 4
base_ejection_time = "10s"
max_ejection_time = "1m"
max_ejection_percent = 30

[service.health]
http = "/healthz"
interval = "2s"
timeout = "500ms"
rise = 1
fall = 2
"#;
    let c = parse(text).unwrap();
    assert_eq!(c.zone.as_deref(), Some("eu-1a"));
    let s = &c.services[0];
    assert_eq!(s.route.policy.balance, Balance::Hash);
    assert_eq!(
        s.route.hash_key,
        Some(crate::balance::HashKey::Header("x-user".into()))
    );
    assert_eq!(s.route.policy.min_local, 3);
    let o = s.route.policy.outlier;
    assert_eq!(
        (
            o.consecutive_failures,
            o.consecutive_5xx,
            o.max_ejection_percent
        ),
        (2, 4, 30)
    );
    assert_eq!((o.base_ejection_ms, o.max_ejection_ms), (10_000, 60_000));
    let h = s.health.as_ref().unwrap();
    assert_eq!(h.probe, crate::health::HealthProbe::Http("/healthz".into()));
    assert_eq!(
        (h.interval, h.timeout),
        (Duration::from_secs(2), Duration::from_millis(500))
    );
    assert_eq!((h.rise, h.fall), (1, 2));
    let p = s.route.policy(c.zone.clone());
    assert_eq!(p.zone.as_deref(), Some("eu-1a"));

    // Ejection on by default with Envoy's numbers, checks off, hash on the client's address.
    let plain = "[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n";
    let c = parse(plain).unwrap();
    assert_eq!(
        c.services[0].route.policy.outlier,
        crate::snapshot::Outlier::default()
    );
    assert!(c.services[0].health.is_none());
    let c = parse(&format!("{plain}balance = \"hash\"\n")).unwrap();
    assert_eq!(
        c.services[0].route.hash_key,
        Some(crate::balance::HashKey::ClientIp)
    );
    let c = parse(&format!("{plain}[service.health]\ntcp = true\n")).unwrap();
    let h = c.services[0].health.as_ref().unwrap();
    assert_eq!(
        (h.interval, h.timeout, h.rise, h.fall),
        (Duration::from_secs(5), Duration::from_secs(1), 2, 3)
    );
}

#[test]
fn balancing_mistakes_are_named() {
    let plain = "[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n";
    for (extra, says) in [
        (
            "hash_key = \"client_ip\"\n",
            "applies only to balance = \"hash\"",
        ),
        (
            "balance = \"hash\"\nhash_key = \"header:x\"\n",
            "needs protocol = \"http\"",
        ),
        (
            "protocol = \"http\"\nbalance = \"hash\"\nhash_key = \"ip\"\n",
            "must be \"client_ip\"",
        ),
        (
            "[service.outlier]\nmax_ejection_percent = 101\n",
            "outside 0..=100",
        ),
        (
            "[service.outlier]\nbase_ejection_time = \"2m\"\nmax_ejection_time = \"1m\"\n",
            "shorter than base_ejection_time",
        ),
        (
            "[service.outlier]\nbase_ejection_time = \"10ms\"\n",
            "at least 1s",
        ),
        (
            "[service.outlier]\nconsecutive_errors = 1\n",
            "unknown field",
        ),
        (
            "[service.health]\ntcp = true\nhttp = \"/h\"\n",
            "either tcp = true or http",
        ),
        ("[service.health]\nhttp = \"healthz\"\n", "must be a path"),
        ("[service.health]\nhttp = \"/a<b>\"\n", "must be a path"),
        (
            "[service.health]\ntcp = true\ninterval = \"1s\"\ntimeout = \"2s\"\n",
            "at most 1s",
        ),
        (
            "[service.health]\ntcp = true\nrise = 0\n",
            "outside 1..=1000",
        ),
    ] {
        let e = parse(&format!("{plain}{extra}")).unwrap_err();
        assert!(e.message.contains(says), "{extra}: {e}");
        assert!(e.line.is_some_and(|l| l >= 4), "{extra}: {e}");
    }
    let e = parse("[node]\nzone = \"eu 1\"\n").unwrap_err();
    assert!(
        e.message.contains("without spaces") && e.line == Some(2),
        "{e}"
    );
}

#[test]
fn runtime_workers_default_to_the_cores_and_are_bounded() {
    assert_eq!(parse("").unwrap().workers, cores());
    assert_eq!(parse("[runtime]\nworkers = 2\n").unwrap().workers, 2);
    let e = parse("[runtime]\nworkers = 0\n").unwrap_err();
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(2), Some("runtime.workers")),
        "{e}"
    );
    let e = parse("[runtime]\nthreads = 2\n").unwrap_err();
    assert!(e.message.contains("unknown field `threads`"), "{e}");
}

#[test]
fn the_cache_section_is_read_and_checked() {
    assert_eq!(parse("").unwrap().cache, None);
    let c = parse("[cache]\npath = \"/var/lib/cairn/registry.json\"\n").unwrap();
    let cache = c.cache.unwrap();
    assert_eq!(
        cache.path,
        std::path::PathBuf::from("/var/lib/cairn/registry.json")
    );
    assert_eq!(cache.max_age, Duration::from_secs(24 * 3600));
    let e = parse("[cache]\npath = \"/var/lib/cairn/\"\n").unwrap_err();
    assert_eq!(
        (e.line, e.key.as_deref()),
        (Some(2), Some("cache.path")),
        "{e}"
    );
    let e = parse("[cache]\npath = \"/x.json\"\nmax_age = \"1s\"\n").unwrap_err();
    assert_eq!(e.key.as_deref(), Some("cache.max_age"), "{e}");
    let e = parse("[cache]\nmax_age = \"1h\"\n").unwrap_err();
    assert!(e.message.contains("missing field `path`"), "{e}");
}
