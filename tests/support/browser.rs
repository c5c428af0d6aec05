//! A real browser for the status page: headless Chromium, which renders the page, runs its
//! script against a live cairn, and prints the resulting DOM.

use std::path::PathBuf;
use std::process::Command;

use super::etcd::which;
use super::patient;

/// The Chromium binary: `CAIRN_CHROMIUM`, or `chromium` / `chromium-browser` on PATH. A missing
/// browser fails the test: `bash scripts/setup` installs Debian's `chromium`.
pub fn chromium() -> PathBuf {
    if let Ok(path) = std::env::var("CAIRN_CHROMIUM") {
        return PathBuf::from(path);
    }
    ["chromium", "chromium-browser"]
        .iter()
        .find_map(|name| which(name))
        .expect("no chromium on PATH: run `bash scripts/setup` (it installs Debian's chromium)")
}

/// The DOM of `url` once its scripts ran for `budget_ms` of virtual time.
pub fn dump_dom(url: &str, budget_ms: u32) -> String {
    let profile = tempfile::tempdir().expect("a temp profile dir");
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--user-data-dir={}", profile.path().display()),
            &format!("--virtual-time-budget={budget_ms}"),
            &format!(
                "--timeout={}",
                patient(std::time::Duration::from_secs(20)).as_millis()
            ),
            "--dump-dom",
            url,
        ])
        .output()
        .expect("running chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
