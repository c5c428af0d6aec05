//! `cairn check` as an operator runs it.

use std::process::Command;

use crate::support::cairn::bin;

fn check(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cairn.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(bin())
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let all =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), all)
}

#[test]
fn the_shipped_example_passes() {
    let out = Command::new(bin())
        .args([
            "check",
            "-c",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/cairn.toml"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_files_fail_with_one_line_naming_key_and_line() {
    let cases = [
        ("[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\ndial_timout = \"5s\"\n", ":3: etcd.dial_timout: unknown field `dial_timout`"),
        ("[etcd]\ndial_timeout = \"five\"\n", ":2: etcd.dial_timeout: invalid duration"),
        ("[[service]]\nname = \"a\"\nlisten = \"127.0.0.1\"\n", ":3: service[0].listen: invalid address"),
        ("[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:2\"\n", ":5: service[1].name: duplicate service name"),
        ("[[service]]\nname = \"a\"\nlisten = \"127.0.0.1:1\"\n[[service]]\nname = \"b\"\nlisten = \"127.0.0.1:1\"\n", ":6: service[1].listen: listen address 127.0.0.1:1 is already used"),
        ("[[service]\n", ":1:"),
    ];
    for (text, want) in cases {
        let (ok, out) = check(text);
        assert!(!ok, "accepted:\n{text}");
        assert!(
            out.contains(want),
            "for:\n{text}\nwanted {want:?} in: {out}"
        );
        assert_eq!(out.trim().lines().count(), 1, "not one line: {out}");
    }
}

#[test]
fn the_systemd_unit_verifies_and_reloads_with_sighup() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/cairn.service"
    ))
    .unwrap();
    for needed in [
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ExecStartPre=/usr/local/bin/cairn check -c /etc/cairn/cairn.toml",
        "StateDirectory=cairn",
        "LimitNOFILE=1048576",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "Restart=on-failure",
    ] {
        assert!(unit.contains(needed), "the unit lacks {needed}");
    }
    let Some(analyze) = crate::support::etcd::which("systemd-analyze") else {
        eprintln!("systemd-analyze is not installed: the unit's syntax is not checked");
        return;
    };
    // verify also checks that the programs exist: point it at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cairn.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/cairn", &bin())).unwrap();
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

#[test]
fn completions_and_manual_pages_come_from_the_flags() {
    let out = Command::new(bin())
        .args(["completions", "bash"])
        .output()
        .unwrap();
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for flag in ["--shutdown-grace", "--password-file", "--check-http"] {
        assert!(script.contains(flag), "the bash completion lacks {flag}");
    }
    let out = Command::new(bin()).args(["man"]).output().unwrap();
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && page.starts_with(".ie"), "{page}");
    assert!(page.contains("cairn\\-run(1)"), "{page}");
}
