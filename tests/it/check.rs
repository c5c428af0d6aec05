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
